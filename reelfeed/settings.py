"""Settings of a reelfeed process, read once from the environment.

Library packages never read ``os.environ``: the entry point calls
``Settings.from_env(os.environ)``, which casts every value and fails fast with the
name of the bad key, then hands plain values down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PREFIX", "Settings", "SettingsError"]

PREFIX = "REELFEED_"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting in the environment is missing its expected shape."""


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port < 65536:
        raise ValueError(f"{port} is not a TCP port")
    return port


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{value} is not positive")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError(f"{value} is not positive")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError(f"{value} is negative")
    return value


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("empty")
    return raw.strip()


_CASTS: dict[type[Any] | str, Callable[[str], Any]] = {
    "int": _positive_int,
    "float": _positive_float,
    "str": _non_empty,
    "Path": Path,
}

#: Settings where 0 means "off" rather than being an error.
_ZERO_MEANS_OFF = frozenset({"snapshot_interval"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a reelfeed process; each maps to ``REELFEED_<NAME>``.

    Examples
    --------
    >>> s = Settings.from_env({"REELFEED_RAW_TOPIC": "movielog7", "REELFEED_SERVER_PORT": "9000"})
    >>> s.raw_topic, s.server_port, s.server_host
    ('movielog7', 9000, '127.0.0.1')
    >>> Settings.from_env({"REELFEED_SERVER_PORT": "http"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    reelfeed.settings.SettingsError: REELFEED_SERVER_PORT='http': invalid literal for int()...
    """

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key, so that several stacks can share one server.
    redis_prefix: str = "rf"
    raw_topic: str = "movielog"
    events_topic: str = "reelfeed.events"
    rejected_topic: str = "reelfeed.rejected"
    recommendations_topic: str = "reelfeed.recommendations"
    topic_partitions: int = 4
    server_host: str = "127.0.0.1"
    server_port: int = 8082
    #: Server processes sharing the port (SO_REUSEPORT).
    server_workers: int = 1
    #: Hard limit, in seconds, on the Redis part of an answer before popularity answers.
    server_deadline: float = 0.05
    #: Bearer token of the admin endpoints (16+ characters); unset turns them off.
    admin_token: str | None = None
    #: Base URL of the course user API, for the segment popularity of unknown users.
    user_api_url: str | None = None
    #: Address of the workers' Prometheus endpoints; a port of 0 turns one off.
    metrics_host: str = "127.0.0.1"
    ingest_metrics_port: int = 9201
    ingest_app_id: str = "reelfeed-ingest"
    #: Seconds before Kafka gives a silent consumer's partitions to another one; also
    #: how long a restarted worker may wait for the partitions of the one it replaces.
    kafka_session_timeout: float = 10.0
    #: Seconds between Kafka offset commits of the ingest app.
    ingest_commit_interval: float = 1.0
    #: A batch of raw lines closes after this many seconds even when not full.
    ingest_batch_seconds: float = 0.05
    learn_metrics_port: int = 9202
    #: The model version a learn worker learns (its Redis namespace and consumer group).
    learn_version: str = "v1"
    #: Hyperparameters of the version's model, as a JSON object (OnlineMF arguments).
    learn_params: str = "{}"
    #: Seconds between item-matrix publications (the server's staleness bound).
    learn_publish_interval: float = 2.0
    #: Seconds between checkpoints of the learner's whole state.
    learn_checkpoint_interval: float = 60.0
    #: Seconds between the periodic snapshots a learner takes of its version; 0: none.
    snapshot_interval: float = 0.0
    #: Periodic snapshots kept per version; older ones are deleted (manual ones never).
    #: Each is a whole learner state in Redis: about 60 MB per 100k users (bench.snapshots).
    snapshot_keep: int = 4
    #: Batch ends the learner keeps, so that a replay can follow the live batches and
    #: reproduce the factors bit for bit (about 5.5 h at 10 batches a second).
    learn_batch_cuts_kept: int = 200_000
    #: Half-life of the popularity decay, in seconds of event time.
    popularity_half_life: float = 86_400.0
    #: Largest user id accepted from the stream.
    max_user_id: int = 10_000_000
    #: Movie catalog CSV (course API fields: movie_id, runtime, genres); empty: none.
    catalog_path: Path | None = None
    #: The site's broker and topic to relay into ``raw_topic`` (e.g. the course's
    #: ``movielog<N>`` through an SSH tunnel); unset: no relay, and `reelfeed up` runs
    #: the simulated site instead.
    relay_bootstrap: str | None = None
    relay_topic: str | None = None
    relay_group: str = "reelfeed-relay"
    #: Where a new relay group starts on the site's topic: earliest or latest.
    relay_start: str = "earliest"
    relay_metrics_port: int = 9203
    #: Folder for process state: Faust's data dir, pid files, logs.
    var_dir: Path = Path("var/dev")
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``REELFEED_*`` variables; unknown ones are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            field = fields.get(name)
            if field is None:
                raise SettingsError(f"{key} is not a reelfeed setting")
            type_name = _type_name(field.type)
            optional = type_name.endswith(" | None")
            if optional and not raw.strip():
                values[name] = None
                continue
            cast = _CASTS[type_name.removesuffix(" | None")]
            if name.endswith("_port"):
                cast = _port
            elif name in _ZERO_MEANS_OFF:
                cast = _non_negative_float
            try:
                values[name] = cast(raw)
            except ValueError as exc:
                raise SettingsError(f"{key}={raw!r}: {exc}") from None
        return cls(**values)

    def topics(self) -> dict[str, int]:
        """The stack's topics with their partition counts (refusals need no parallelism)."""
        return {
            self.raw_topic: self.topic_partitions,
            self.events_topic: self.topic_partitions,
            self.rejected_topic: 1,
            self.recommendations_topic: self.topic_partitions,
        }

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _type_name(annotation: Any) -> str:
    # With `from __future__ import annotations` the field types are strings.
    return annotation if isinstance(annotation, str) else annotation.__name__
