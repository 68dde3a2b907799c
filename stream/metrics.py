"""Prometheus metrics of the stream workers (one process runs one app).

Names follow ``reelfeed_<part>_<what>_<unit>``; docs/deploy.md lists them as the
contract the alert rules and the dashboard rely on.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "INGEST_BATCH_SECONDS",
    "LEARN_BATCH_SECONDS",
    "LEARN_CHECKPOINT_SECONDS",
    "LEARN_CONSUMER_LAG",
    "LEARN_EVENTS",
    "LEARN_MATRIX_REVISION",
    "LEARN_PREQUENTIAL_HITS",
    "LEARN_PREQUENTIAL_HIT_RATE",
    "LEARN_PREQUENTIAL_TESTS",
    "LEARN_SKIPPED",
    "INGEST_CONSUMER_LAG",
    "INGEST_EVENTS",
    "INGEST_LINES",
    "INGEST_REJECTED",
    "INGEST_REPLAYED",
    "PROFILE_FETCHES",
    "PROFILE_LOOKUPS",
    "RELAY_ERRORS",
    "RELAY_LINES",
    "RELAY_SOURCE_TIME",
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

LEARN_EVENTS = Counter(
    "reelfeed_learn_events_total", "Learning events applied to the model.", ["version"]
)
LEARN_SKIPPED = Counter(
    "reelfeed_learn_skipped_total",
    "Messages not learned: replayed below the checkpoint, duplicates, undecodable.",
    ["version", "reason"],
)
LEARN_BATCH_SECONDS = Histogram(
    "reelfeed_learn_batch_seconds",
    "Time to learn and commit one micro-batch.",
    ["version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LEARN_CHECKPOINT_SECONDS = Histogram(
    "reelfeed_learn_checkpoint_seconds",
    "Time to serialise and store a checkpoint of the learner.",
    ["version"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0),
)
LEARN_MATRIX_REVISION = Gauge(
    "reelfeed_learn_matrix_revision", "Revision of the last published item matrix.", ["version"]
)
LEARN_PREQUENTIAL_TESTS = Counter(
    "reelfeed_learn_prequential_tests_total",
    "Sampled first watches tested against the user's top 20 before learning.",
    ["version"],
)
LEARN_PREQUENTIAL_HITS = Counter(
    "reelfeed_learn_prequential_hits_total",
    "Tested first watches that were in the user's top 20.",
    ["version"],
)
LEARN_PREQUENTIAL_HIT_RATE = Gauge(
    "reelfeed_learn_prequential_hit_rate",
    "Recent prequential hit rate (Recall@20) of the learner, weighted to ~200 tests.",
    ["version"],
)
LEARN_CONSUMER_LAG = Gauge(
    "reelfeed_learn_consumer_lag",
    "Events between the learner's position and the end of the events topic.",
    ["version", "partition"],
)

RELAY_LINES = Counter("reelfeed_relay_lines_total", "Lines copied from the site's topic.")
RELAY_ERRORS = Counter(
    "reelfeed_relay_errors_total", "Failed attempts to copy a batch (retried), by stage.", ["stage"]
)
RELAY_SOURCE_TIME = Gauge(
    "reelfeed_relay_source_timestamp_seconds",
    "Kafka timestamp of the newest line copied from the site's topic.",
)

PROFILE_LOOKUPS = Counter(
    "reelfeed_ingest_profile_lookups_total",
    "Segment lookups of the ingest app, by result (hit, miss, saturated).",
    ["result"],
)
PROFILE_FETCHES = Counter(
    "reelfeed_ingest_profile_fetches_total",
    "User API requests of the ingest app, by outcome (found, unknown, failed).",
    ["outcome"],
)
