"""Entry points of the Faust worker processes: settings in, a running worker out."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

import faust
import orjson
from prometheus_client import start_http_server

from reelfeed.buildinfo import code_sha, package_versions
from reelfeed.infra import create_topics
from reelfeed.settings import Settings, SettingsError
from stream.catalog import Catalog, load_catalog_csv
from stream.ingest import IngestConfig, create_app
from stream.learn import LearnConfig
from stream.learn import create_app as create_learn_app
from stream.parser import ParseContext
from stream.relay import Relay, RelayConfig

__all__ = [
    "ingest_config",
    "learn_config",
    "relay_config",
    "run_ingest_worker",
    "run_learn_worker",
    "run_relay_worker",
]

log = logging.getLogger(__name__)


def _catalog(settings: Settings) -> Catalog:
    if settings.catalog_path is None:
        return Catalog()
    catalog = load_catalog_csv(settings.catalog_path)
    log.info("catalog: %d movies from %s", len(catalog), settings.catalog_path)
    return catalog


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        raw_topic=settings.raw_topic,
        events_topic=settings.events_topic,
        rejected_topic=settings.rejected_topic,
        datadir=settings.var_dir / "faust",
        app_id=settings.ingest_app_id,
        topic_partitions=settings.topic_partitions,
        batch_seconds=settings.ingest_batch_seconds,
        commit_interval_s=settings.ingest_commit_interval,
        session_timeout_s=settings.kafka_session_timeout,
        popularity_half_life_s=settings.popularity_half_life,
        parse_context=ParseContext(max_user_id=settings.max_user_id),
        catalog=_catalog(settings),
        user_api_url=settings.user_api_url,
    )


def _serve_metrics(settings: Settings, port: int) -> None:
    if port:
        start_http_server(port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)


def run_ingest_worker(settings: Settings) -> None:
    config = ingest_config(settings)
    # Topics the app writes must exist: the broker does not create topics on first use.
    create_topics(settings.kafka_bootstrap, settings.topics())
    _serve_metrics(settings, settings.ingest_metrics_port)
    app = create_app(config)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()


def learn_config(settings: Settings, environ: Mapping[str, str]) -> LearnConfig:
    return LearnConfig(
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        events_topic=settings.events_topic,
        datadir=settings.var_dir / "faust",
        version=settings.learn_version,
        model_params=orjson.loads(settings.learn_params),
        publish_interval_s=settings.learn_publish_interval,
        checkpoint_interval_s=settings.learn_checkpoint_interval,
        snapshot_interval_s=settings.snapshot_interval,
        snapshot_keep=settings.snapshot_keep,
        batch_cuts_kept=settings.learn_batch_cuts_kept,
        catalog=_catalog(settings),
        code_sha=code_sha(environ),
        packages=package_versions(),
    )


def run_learn_worker(settings: Settings, environ: Mapping[str, str]) -> None:
    config = learn_config(settings, environ)
    create_topics(settings.kafka_bootstrap, {config.events_topic: settings.topic_partitions})
    _serve_metrics(settings, settings.learn_metrics_port)
    app = create_learn_app(config)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()


def relay_config(settings: Settings) -> RelayConfig:
    if not settings.relay_bootstrap or not settings.relay_topic:
        raise SettingsError("the relay needs REELFEED_RELAY_BOOTSTRAP and REELFEED_RELAY_TOPIC")
    if settings.relay_start not in ("earliest", "latest"):
        raise SettingsError(
            f"REELFEED_RELAY_START={settings.relay_start!r}: must be earliest or latest"
        )
    return RelayConfig(
        source_bootstrap=settings.relay_bootstrap,
        source_topic=settings.relay_topic,
        target_bootstrap=settings.kafka_bootstrap,
        target_topic=settings.raw_topic,
        group_id=settings.relay_group,
        start="earliest" if settings.relay_start == "earliest" else "latest",
    )


def run_relay_worker(settings: Settings) -> None:
    """Copy the site's topic into the raw topic until SIGTERM or SIGINT."""
    config = relay_config(settings)
    create_topics(settings.kafka_bootstrap, {settings.raw_topic: settings.topic_partitions})
    _serve_metrics(settings, settings.relay_metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "relaying %s/%s -> %s/%s",
            config.source_bootstrap,
            config.source_topic,
            config.target_bootstrap,
            config.target_topic,
        )
        await Relay(config).run(stop)

    asyncio.run(main())
