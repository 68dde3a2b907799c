"""The ingest Faust app: raw movielog lines in, counted in Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import faust
import redis.asyncio as aioredis

from state import IngestStore, KeySchema

__all__ = ["IngestConfig", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    kafka_bootstrap: str
    redis_url: str
    redis_prefix: str
    raw_topic: str
    datadir: Path
    app_id: str = "reelfeed-ingest"
    topic_partitions: int = 4
    batch_size: int = 500
    batch_seconds: float = 0.2


def create_app(config: IngestConfig) -> faust.App:
    """Build the ingest app; a worker process runs it (``reelfeed ingest``)."""
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.kafka_bootstrap}",
        datadir=str(config.datadir),
        # The stream is the source of truth: a new consumer group starts at the beginning.
        consumer_auto_offset_reset="earliest",
        topic_partitions=config.topic_partitions,
        web_enabled=False,
        autodiscover=False,
    )
    raw_topic = app.topic(config.raw_topic, value_type=bytes, value_serializer="raw")
    redis_client = aioredis.Redis.from_url(config.redis_url)
    store = IngestStore(redis_client, KeySchema(config.redis_prefix))

    @app.agent(raw_topic)
    async def ingest(lines: faust.StreamT[bytes]) -> AsyncIterator[None]:
        log.info("ingesting %s -> redis prefix %s", config.raw_topic, config.redis_prefix)
        async for batch in lines.take(config.batch_size, within=config.batch_seconds):
            await store.add_lines(len(batch))
            yield None

    return app
