"""Entry points of the Faust worker processes: settings in, a running worker out."""

from __future__ import annotations

import faust

from reelfeed.settings import Settings
from stream.ingest import IngestConfig, create_app

__all__ = ["ingest_config", "run_ingest_worker"]


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        raw_topic=settings.raw_topic,
        datadir=settings.var_dir / "faust",
        topic_partitions=settings.topic_partitions,
    )


def run_ingest_worker(settings: Settings) -> None:
    app = create_app(ingest_config(settings))
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), loop=None)
    worker.execute_from_commandline()
