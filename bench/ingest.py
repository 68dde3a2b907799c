"""Ingest benchmark: a real worker process on the real broker and Redis (test stack).

Prints one JSON object:

- ``throughput``: lines/s of the worker draining a backlog of synthetic course lines,
  against the same lines through the parser alone in this process (the ceiling);
- ``freshness``: seconds from producing a line at a steady rate to its effect being
  in Redis (the partition watermark passing its offset), p50/p99.

Run: ``.venv/bin/python -m bench.ingest [--sessions N] [--rate LINES_PER_S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from reelfeed.infra import (
    KafkaBroker,
    RedisServer,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
    testing_stack,
)
from state import FeatureStore, KeySchema
from stream.parser import LineValidator, ParseContext
from tests.integration.workers import (
    WorkerProcess,
    free_port,
    produce_lines,
    synthetic_stream,
    user_key,
)


def _env(name: str, topic: str) -> dict[str, str]:
    stack = testing_stack(os.environ)
    return {
        "REELFEED_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "REELFEED_REDIS_URL": stack.redis_url,
        "REELFEED_REDIS_PREFIX": name,
        "REELFEED_RAW_TOPIC": topic,
        "REELFEED_EVENTS_TOPIC": f"{topic}.events",
        "REELFEED_REJECTED_TOPIC": f"{topic}.rejected",
        "REELFEED_TOPIC_PARTITIONS": "2",
        "REELFEED_INGEST_APP_ID": f"{name}-ingest",
        "REELFEED_INGEST_METRICS_PORT": str(free_port()),
        "REELFEED_LOG_LEVEL": "WARNING",
    }


async def _applied(store: FeatureStore) -> int:
    return sum(v + 1 for v in (await store.watermarks()).values())


async def _throughput(sessions: int, folder: Path) -> dict[str, float | int]:
    lines = synthetic_stream(sessions, seed=1)
    validator = LineValidator(ParseContext())
    started = time.perf_counter()
    for line in lines:
        validator.validate(line)
    parser_rate = len(lines) / (time.perf_counter() - started)

    name = f"bench{uuid.uuid4().hex[:8]}"
    stack = testing_stack(os.environ)
    await asyncio.to_thread(
        create_topics,
        stack.kafka_bootstrap,
        {name: 2, f"{name}.events": 2, f"{name}.rejected": 1},
    )
    await produce_lines(stack.kafka_bootstrap, name, lines, user_key)
    client = aioredis.Redis.from_url(stack.redis_url)
    store = FeatureStore(client, KeySchema(name), 86_400)
    worker = WorkerProcess("ingest", _env(name, name), folder, name)
    worker.start()
    try:
        while await _applied(store) == 0:
            worker.assert_alive()
            await asyncio.sleep(0.01)
        first = time.perf_counter()
        while await _applied(store) < len(lines):
            worker.assert_alive()
            await asyncio.sleep(0.01)
        worker_rate = len(lines) / (time.perf_counter() - first)
    finally:
        worker.stop()
        await _drop(client, name)
        await client.aclose()
    return {
        "lines": len(lines),
        "worker_lines_per_s": round(worker_rate),
        "parser_only_lines_per_s": round(parser_rate),
        "worker_share_of_parser": round(worker_rate / parser_rate, 3),
    }


async def _freshness(rate: float, seconds: float, folder: Path) -> dict[str, float | int]:
    name = f"bench{uuid.uuid4().hex[:8]}"
    stack = testing_stack(os.environ)
    await asyncio.to_thread(
        create_topics, stack.kafka_bootstrap, {name: 1, f"{name}.events": 2, f"{name}.rejected": 1}
    )
    lines = synthetic_stream(int(rate * seconds), seed=2)[: int(rate * seconds)]
    client = aioredis.Redis.from_url(stack.redis_url)
    store = FeatureStore(client, KeySchema(name), 86_400)
    worker = WorkerProcess("ingest", _env(name, name), folder, name)
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=0)
    await producer.start()
    sent_at: dict[int, float] = {}
    delays: list[float] = []
    try:
        # Warm up: the worker has joined its group once its first line is applied.
        await (await producer.send(name, lines[0]))
        while await store.watermark(name, 0) < 0:
            worker.assert_alive()
            await asyncio.sleep(0.01)
        pending: list[int] = []
        interval = 1.0 / rate
        next_send = time.perf_counter()
        for line in lines[1:]:
            metadata = await (await producer.send(name, line))
            sent_at[metadata.offset] = time.perf_counter()
            pending.append(metadata.offset)
            watermark = await store.watermark(name, 0)
            now = time.perf_counter()
            while pending and pending[0] <= watermark:
                delays.append(now - sent_at[pending.pop(0)])
            next_send += interval
            await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
        deadline = time.perf_counter() + 30
        while pending and time.perf_counter() < deadline:
            watermark = await store.watermark(name, 0)
            now = time.perf_counter()
            while pending and pending[0] <= watermark:
                delays.append(now - sent_at[pending.pop(0)])
            await asyncio.sleep(0.005)
    finally:
        await producer.stop()
        worker.stop()
        await _drop(client, name)
        await client.aclose()
    quantiles = statistics.quantiles(delays, n=100)
    return {
        "lines_per_s": rate,
        "lines": len(delays),
        "p50_s": round(quantiles[49], 4),
        "p99_s": round(quantiles[98], 4),
        "max_s": round(max(delays), 4),
        "note": "includes up to one Redis poll of the benchmark itself per line",
    }


async def _drop(client: aioredis.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=200.0, help="lines/s for freshness")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    stack = testing_stack(os.environ)
    redis_server = RedisServer(stack, persist=False)
    broker = KafkaBroker(stack, resolve_kafka_jars(default_cache_dir(os.environ)))
    started = [redis_server.start(), broker.start()]
    try:
        with tempfile.TemporaryDirectory() as folder:
            report = {
                "benchmark": "ingest",
                "machine": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]},
                "throughput": asyncio.run(_throughput(args.sessions, Path(folder))),
                "freshness": asyncio.run(_freshness(args.rate, args.seconds, Path(folder))),
            }
    finally:
        if started[1]:
            broker.stop()
        if started[0]:
            redis_server.stop()
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
