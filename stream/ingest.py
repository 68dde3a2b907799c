"""The ingest Faust app: raw movielog lines in; typed events, refusals and features out.

The agent only batches messages and hands them to ``IngestProcessor``; everything
that decides anything is in ``stream.parser`` and ``stream.processor``. With a user
API configured, ``stream.profiles`` gives the processor the viewers' segments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import faust
import redis
import redis.asyncio as aioredis

from state import ApplyResult, FeatureStore, FeatureUpdate, KeySchema
from stream import metrics
from stream.catalog import Catalog
from stream.kafka_io import read_partition_range
from stream.parser import DEFAULT_DUPLICATE_CAPACITY, DuplicateFilter, LineValidator, ParseContext
from stream.processor import (
    SOURCE_HEADER,
    IngestProcessor,
    OutgoingEvent,
    SourceLine,
    retry_while_unreachable,
)
from stream.profiles import ProfileLookup

__all__ = ["IngestConfig", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """What the ingest app needs to know; ``reelfeed.workers`` builds it from settings."""

    kafka_bootstrap: str
    redis_url: str
    redis_prefix: str
    raw_topic: str
    events_topic: str
    rejected_topic: str
    datadir: Path
    app_id: str = "reelfeed-ingest"
    topic_partitions: int = 4
    batch_size: int = 2000
    #: A batch closes after this long even when not full: the latency/throughput knob.
    batch_seconds: float = 0.05
    commit_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    popularity_half_life_s: float = 86_400.0
    duplicate_memory: int = DEFAULT_DUPLICATE_CAPACITY
    parse_context: ParseContext = field(default_factory=ParseContext)
    catalog: Catalog = field(default_factory=Catalog)
    #: Base URL of the course user API; with it, watches also count for the viewer's
    #: segment (``stream.profiles``). ``None``: no segment popularity.
    user_api_url: str | None = None
    #: Users whose segment is kept in memory, and user API requests at once.
    profile_cache_size: int = 200_000
    profile_max_in_flight: int = 16
    #: Limit of one user API request, in seconds: a slow API only delays segments.
    profile_timeout_s: float = 1.0


class _ProducerPublisher:
    """Publishes through the app's Kafka producer and waits for the acknowledgements.

    It calls the transport producer directly: ``Topic.send`` wraps every message in
    futures and callbacks, which costs more than parsing and applying the line.
    """

    def __init__(self, app: faust.App, events_topic: str, rejected_topic: str) -> None:
        self._app = app
        self._events_topic = events_topic
        self._rejected_topic = rejected_topic

    async def publish(self, events: Sequence[OutgoingEvent], rejected: Sequence[bytes]) -> None:
        producer = self._app.producer
        pending = [
            await producer.send(
                self._events_topic,
                event.key,
                event.value,
                partition=None,
                timestamp=None,
                headers=[(SOURCE_HEADER, event.source)],
            )
            for event in events
        ]
        pending.extend(
            [
                await producer.send(
                    self._rejected_topic, None, line, partition=None, timestamp=None, headers=None
                )
                for line in rejected
            ]
        )
        if pending:
            await asyncio.gather(*pending)


#: Errors that mean Redis is away (down, restarting, loading its data), not a bug.
_REDIS_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class _PatientFeatures:
    """The feature store, waiting out a Redis outage instead of failing the batch.

    A failed batch crashes the agent. Faust restarts it without the batch in hand, and
    the restarted agent took no more lines in tests/integration/test_failures.py:
    ingest stood still with Redis back until the process was restarted. Waiting holds
    the batch (and the partition) until Redis answers. Both calls are safe to repeat:
    the watermark makes ``apply`` skip what was already applied.
    """

    def __init__(self, features: FeatureStore) -> None:
        self._features = features

    async def apply(
        self, topic: str, partition: int, updates: Sequence[FeatureUpdate]
    ) -> ApplyResult:
        return await retry_while_unreachable(
            lambda: self._features.apply(topic, partition, updates),
            f"applying features of {topic}[{partition}]",
            _REDIS_UNREACHABLE,
        )

    async def watermark(self, topic: str, partition: int) -> int:
        return await retry_while_unreachable(
            lambda: self._features.watermark(topic, partition),
            f"reading the watermark of {topic}[{partition}]",
            _REDIS_UNREACHABLE,
        )


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def create_app(config: IngestConfig) -> faust.App:
    """Build the ingest app; a worker process runs it (``reelfeed ingest``)."""
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.kafka_bootstrap}",
        datadir=str(config.datadir),
        # The stream is the source of truth: a new consumer group starts at the beginning.
        consumer_auto_offset_reset="earliest",
        topic_partitions=config.topic_partitions,
        broker_commit_interval=config.commit_interval_s,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=min(3.0, config.session_timeout_s / 3),
        web_enabled=False,
        autodiscover=False,
    )
    raw_topic = _raw_topic(app, config.raw_topic)
    publisher = _ProducerPublisher(app, config.events_topic, config.rejected_topic)
    redis_client = aioredis.Redis.from_url(config.redis_url)
    features = FeatureStore(
        redis_client, KeySchema(config.redis_prefix), config.popularity_half_life_s
    )
    context = config.parse_context
    if len(config.catalog):
        context = ParseContext(
            max_user_id=context.max_user_id,
            catalog=config.catalog,
            runtime_minutes=config.catalog.runtime,
            minute_slack=context.minute_slack,
            max_future_us=context.max_future_us,
        )

    async def preceding_lines(topic: str, partition: int, start: int, end: int) -> list[bytes]:
        return await read_partition_range(config.kafka_bootstrap, topic, partition, start, end)

    profiles: ProfileLookup | None = None
    if config.user_api_url:
        profiles = ProfileLookup(
            config.user_api_url,
            cache_size=config.profile_cache_size,
            max_in_flight=config.profile_max_in_flight,
            timeout_s=config.profile_timeout_s,
        )
    processor = IngestProcessor(
        new_checker=lambda: LineValidator(context, DuplicateFilter(config.duplicate_memory)),
        publisher=publisher,
        features=_PatientFeatures(features),
        genres_of=config.catalog.genres,
        preceding_lines=preceding_lines,
        # Only valid lines enter the duplicate memory, so read back more raw lines
        # than it holds: noise between them must not leave it short after a restart.
        memory=2 * config.duplicate_memory,
        segment_of=profiles.segment if profiles is not None else None,
    )

    @app.agent(raw_topic)
    async def ingest(lines: faust.StreamT[bytes]) -> AsyncIterator[None]:
        log.info(
            "ingesting %s into redis prefix %r, segments from %s",
            config.raw_topic,
            config.redis_prefix,
            config.user_api_url or "nowhere (no user API)",
        )
        # take_events is on the concrete Stream class, not on faust's StreamT protocol.
        stream = cast(faust.Stream[bytes], lines)
        try:
            async for batch in stream.take_events(config.batch_size, within=config.batch_seconds):
                source = [
                    SourceLine(
                        topic=event.message.topic,
                        partition=event.message.partition,
                        offset=event.message.offset,
                        value=event.message.value or b"",
                        timestamp_us=int(event.message.timestamp * 1_000_000),
                    )
                    for event in batch
                ]
                await processor.process(source)
                last_offsets = {event.message.tp: event.message.offset for event in batch}
                for tp, offset in last_offsets.items():
                    lag = app.consumer.highwater(tp) - offset - 1
                    metrics.INGEST_CONSUMER_LAG.labels(str(tp.partition)).set(max(lag, 0))
                yield None
        finally:
            # The agent stops (shutdown, or a crash Faust restarts it from): end the
            # profile fetches and the HTTP session; a restarted agent opens a new one.
            if profiles is not None:
                await profiles.close()

    return app
