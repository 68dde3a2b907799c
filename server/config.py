"""Configuration of the recommendation server: plain values, checked once at creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Every knob of the server; the composition root builds it from ``Settings``.

    Examples
    --------
    >>> config = ServerConfig(port=9000, admin_token="a-long-random-token")
    >>> config.host, config.port, config.deadline_s, config.list_length
    ('127.0.0.1', 9000, 0.05, 20)
    >>> ServerConfig(deadline_s=0)
    Traceback (most recent call last):
    ...
    ValueError: deadline_s must be a positive number, got 0
    """

    host: str = "127.0.0.1"
    port: int = 8082
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key (``KeySchema``).
    redis_prefix: str = "rf"
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Topic of the provenance records, one per answer.
    recommendations_topic: str = "reelfeed.recommendations"
    #: Bearer token of the admin endpoints; ``None`` turns them off (403).
    admin_token: str | None = None
    #: Base URL of the course user API (``GET <url>/user/<id>``); ``None``: no segments.
    user_api_url: str | None = None
    #: Largest user id accepted; larger ones get a 400.
    max_user_id: int = 10_000_000
    #: Length of a recommendation list.
    list_length: int = 20
    #: Hard limit on the Redis part of one answer (and the profile lookup), in seconds.
    deadline_s: float = 0.05
    #: Longest wait for an unknown user's profile before answering without its segment.
    profile_wait_s: float = 0.02
    #: Seconds between polls of the routing, of the item matrices, of the popularity.
    routing_poll_s: float = 1.0
    matrix_poll_s: float = 1.0
    popularity_poll_s: float = 2.0
    #: How many popular movies are held in memory (enough to skip a user's watched ones).
    popularity_pool: int = 500
    #: Popularity blend of the model's score (``online_model.ranking.blend_weight``):
    #: the published item matrix does not carry them, so they are the learner's defaults.
    popularity_weight: float = 1.0
    cold_start_events: float = 0.0
    #: Provenance records held while Kafka is slow or down; beyond, the oldest are dropped.
    provenance_buffer: int = 20_000
    #: Longest time a provenance record waits before it is sent, in seconds. Longer
    #: means fewer, larger produce requests: 0.2 instead of 0.05 measured 6-12% less
    #: CPU per answer at 64 connections (with the broker on the same two cores).
    provenance_linger_s: float = 0.2
    #: After this many Redis failures in a row, answers skip Redis for ``redis_retry_s``.
    redis_failures_to_open: int = 3
    redis_retry_s: float = 1.0
    #: redis-py's pool, for the refresher's polls and the admin calls; the answers'
    #: reads share one more connection per worker (``state.RedisPipe``).
    redis_max_connections: int = 256
    #: Profiles of the course user API kept in memory, and for how long.
    profile_cache_size: int = 100_000
    profile_ttl_s: float = 3600.0
    #: Seconds a stopping server gives in-flight requests and the provenance buffer.
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be a TCP port, got {self.port!r}")
        for name in (
            "max_user_id",
            "list_length",
            "popularity_pool",
            "provenance_buffer",
            "redis_failures_to_open",
            "redis_max_connections",
            "profile_cache_size",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in (
            "deadline_s",
            "routing_poll_s",
            "matrix_poll_s",
            "popularity_poll_s",
            "provenance_linger_s",
            "redis_retry_s",
            "profile_ttl_s",
            "shutdown_timeout_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("profile_wait_s", "popularity_weight", "cold_start_events"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.popularity_pool < self.list_length:
            raise ValueError("popularity_pool must be at least list_length")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("admin_token must be at least 16 characters (or None)")
