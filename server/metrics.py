"""Prometheus metrics of the server, per app (no global registry).

Names follow the contract in ``docs/deploy.md`` (``reelfeed_server_*``). With several
worker processes sharing the port, a scrape reaches one of them at random, so the
metrics must be the sum over all workers: :func:`server.run_server` then gives every
worker one folder for prometheus_client's multiprocess mode and each ``/metrics``
answer aggregates the files of all workers.

The per-answer metrics are counted in plain Python first and added to
prometheus_client's values in bulk (:meth:`ServerMetrics.flush`): whenever the
registry is collected, every half second from the server's background task, and every
few thousand answers (so with several workers, a scrape may miss the last half second
of the other workers' answers). prometheus_client takes a lock for each increment, and in
multiprocess mode writes an mmap'ed file: one answer's latency, status and version
cost 4.4 us that way, 10.5 us with several workers (measured), a list append here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["FALLBACK_REASONS", "LATENCY_BUCKETS", "ServerMetrics"]

#: Fine buckets around the 50 ms deadline of the course contract (the alert's limit).
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: Why an answer came from popularity instead of the model.
FALLBACK_REASONS: Final = (
    "no_model",
    "unknown_user",
    "redis_timeout",
    "redis_error",
    "redis_unavailable",
    "model_error",
    "internal_error",
)


#: Answers counted before they are flushed into prometheus_client's values at the latest.
_FLUSH_EVERY = 4_096


class _Flusher:
    """Registered first in the registry: its collection flushes the pending counts, so
    that the collectors after it (and ``get_sample_value``) see every answer."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no metrics of its own (and no collection at registration)

    def collect(self) -> Iterator[Metric]:
        self._metrics.flush()
        return iter(())


class ServerMetrics:
    """The server's metrics and their exposition.

    Parameters
    ----------
    multiprocess_dir
        prometheus_client's multiprocess folder when several workers share the port
        (the process must have been started with ``PROMETHEUS_MULTIPROC_DIR`` set to
        it); ``None`` for one process.

    Examples
    --------
    >>> metrics = ServerMetrics()
    >>> metrics.fallback("no_model")
    >>> b'reelfeed_server_fallbacks_total{reason="no_model"} 1.0' in metrics.exposition()
    True
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        self.registry.register(_Flusher(self))
        if multiprocess_dir is not None:
            # prometheus_client leaves this constructor unannotated.
            MultiProcessCollector(self.registry, str(multiprocess_dir))  # type: ignore[no-untyped-call]
        # In multiprocess mode the values live in files; the collector reads them all.
        into = None if multiprocess_dir is not None else self.registry
        self.request_latency = Histogram(
            "reelfeed_server_request_latency_seconds",
            "Time from receiving GET /recommend/<uid> to the answer being ready.",
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.requests = Counter(
            "reelfeed_server_requests",
            "GET /recommend requests answered, by HTTP status.",
            ["status"],
            registry=into,
        )
        self.fallbacks = Counter(
            "reelfeed_server_fallbacks",
            "Answers from popularity instead of the model, by reason.",
            ["reason"],
            registry=into,
        )
        self.model_requests = Counter(
            "reelfeed_server_model_requests",
            "Answers by the model version the user was routed to.",
            ["version"],
            registry=into,
        )
        self.provenance_sent = Counter(
            "reelfeed_server_provenance_sent",
            "Provenance records delivered to Kafka.",
            registry=into,
        )
        self.provenance_dropped = Counter(
            "reelfeed_server_provenance_dropped",
            "Provenance records lost: buffer full while Kafka was slow or down, or not delivered.",
            ["reason"],
            registry=into,
        )
        self.model_revision = Gauge(
            "reelfeed_server_model_revision",
            "Revision of the item matrix in memory, by model version.",
            ["version"],
            registry=into,
            multiprocess_mode="max",
        )
        self.connections = Gauge(
            "reelfeed_server_connections",
            "Open HTTP connections, summed over the workers.",
            registry=into,
            multiprocess_mode="livesum",
        )
        self.connections_rebalanced = Counter(
            "reelfeed_server_connections_rebalanced",
            "Connections closed after an answer to even out the workers' shares.",
            registry=into,
        )
        self.popularity_items = Gauge(
            "reelfeed_server_popularity_items",
            "Movies in the in-memory popularity list.",
            registry=into,
            multiprocess_mode="max",
        )
        self._ok = self.requests.labels("200")
        self._bad = self.requests.labels("400")
        self._fallbacks = {reason: self.fallbacks.labels(reason) for reason in FALLBACK_REASONS}
        self._by_version: dict[str, Counter] = {}
        for reason in ("buffer_full", "delivery"):
            self.provenance_dropped.labels(reason)
        # The histogram's own buckets and sum (prometheus_client has no bulk observe);
        # tests compare the flushed histogram with one fed by observe().
        self._bucket_values = self.request_latency._buckets
        self._latency_sum = self.request_latency._sum
        self._bounds = self.request_latency._upper_bounds
        #: Not yet flushed: latencies of all answers, answers by version, rejections,
        #: fallbacks by reason.
        self._latencies: list[float] = []
        self._answered: dict[str, int] = {}
        self._rejected = 0
        self._fallback_counts: dict[str, int] = {}

    def answered(self, latency_s: float, version: str | None) -> None:
        """Count a 200 answer of /recommend."""
        latencies = self._latencies
        latencies.append(latency_s)
        name = version or "none"
        answered = self._answered
        answered[name] = answered.get(name, 0) + 1
        if len(latencies) >= _FLUSH_EVERY:
            self.flush()

    def rejected(self, latency_s: float) -> None:
        """Count a 400 answer of /recommend (an invalid user id)."""
        self._latencies.append(latency_s)
        self._rejected += 1
        if len(self._latencies) >= _FLUSH_EVERY:
            self.flush()

    def fallback(self, reason: str) -> None:
        counts = self._fallback_counts
        counts[reason] = counts.get(reason, 0) + 1

    def flush(self) -> None:
        """Add what was counted since the last flush to prometheus_client's values."""
        latencies, self._latencies = self._latencies, []
        answered, self._answered = self._answered, {}
        fallbacks, self._fallback_counts = self._fallback_counts, {}
        rejected, self._rejected = self._rejected, 0
        if latencies:
            # As Histogram.observe: the first bucket whose upper bound is >= the value.
            counts = [0] * len(self._bounds)
            bounds = self._bounds
            for latency in latencies:
                counts[bisect_left(bounds, latency)] += 1
            for bucket, count in zip(self._bucket_values, counts, strict=True):
                if count:
                    bucket.inc(count)
            self._latency_sum.inc(sum(latencies))
        ok = sum(answered.values())
        if ok:
            self._ok.inc(ok)
        if rejected:
            self._bad.inc(rejected)
        for name, count in answered.items():
            child = self._by_version.get(name)
            if child is None:
                child = self._by_version[name] = self.model_requests.labels(name)
            child.inc(count)
        for reason, count in fallbacks.items():
            child = self._fallbacks.get(reason)
            if child is None:
                child = self._fallbacks[reason] = self.fallbacks.labels(reason)
            child.inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
