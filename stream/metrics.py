"""Prometheus metrics of the stream workers (one process runs one app).

Names follow ``reelfeed_<part>_<what>_<unit>``; docs/deploy.md lists them as the
contract the alert rules and the dashboard rely on.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "INGEST_BATCH_SECONDS",
    "INGEST_CONSUMER_LAG",
    "INGEST_EVENTS",
    "INGEST_LINES",
    "INGEST_REJECTED",
    "INGEST_REPLAYED",
]

INGEST_LINES = Counter(
    "reelfeed_ingest_lines_total", "Raw movielog lines consumed by the ingest app."
)
INGEST_EVENTS = Counter("reelfeed_ingest_events_total", "Valid events, by kind.", ["kind"])
INGEST_REJECTED = Counter("reelfeed_ingest_rejected_total", "Refused lines, by reason.", ["reason"])
INGEST_REPLAYED = Counter(
    "reelfeed_ingest_replayed_total",
    "Lines read again after a restart whose effects were already in Redis (skipped).",
)
INGEST_CONSUMER_LAG = Gauge(
    "reelfeed_ingest_consumer_lag",
    "Messages between the ingest app's position and the end of the raw topic.",
    ["partition"],
)
INGEST_BATCH_SECONDS = Histogram(
    "reelfeed_ingest_batch_seconds",
    "Time to parse, publish and apply one batch of raw lines.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
