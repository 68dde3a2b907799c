"""Freshness benchmark: from a watch line on Kafka to that movie leaving the user's list.

Runs the real pieces on the test stack (Kafka 19092, Redis 16379, started when they do
not run): an ingest worker process (``python -m reelfeed ingest``) on unique topics and
a unique Redis prefix, and the server (``server.run_server``, one worker) on a free
port. Background traffic, course-like lines from ``tests.integration.workers.
synthetic_stream``, goes to the raw topic at a steady rate. Each probe takes a user the
stream never uses, reads its list, produces ``<time>,<user>,GET /data/m/<movie>/0.mpg``
for a movie of that list, and polls ``GET /recommend/<user>`` every ~10 ms until the
movie is gone; the delay is from just before the line is produced.

The baseline, in the same run: the same probes with no background traffic. Prints one
JSON object with p50/p99/max of both phases and the background rate achieved.

Run: ``.venv/bin/python -m bench.freshness [--rate 1000] [--probes 100] [--idle-probes 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
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
from tests.integration.workers import WorkerProcess, free_port, synthetic_stream, user_key

__all__ = ["main"]

TARGET_P99_S = 1.0
POLL_S = 0.01
PROBE_TIMEOUT_S = 10.0
#: Probe users: far above the synthetic stream's 1-2000.
FIRST_PROBE_USER = 5_000_000

_SERVER = """
import logging, sys, orjson
from server import ServerConfig, run_server
logging.basicConfig(level="WARNING")
sys.exit(run_server(ServerConfig(**orjson.loads(sys.argv[1])), workers=1))
"""


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


@contextlib.contextmanager
def _server(config: dict[str, object], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, orjson.dumps(config).decode()],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Background:
    """Synthetic lines to the raw topic at a steady rate, until stopped."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, rate: float) -> None:
        self._producer = producer
        self._topic = topic
        self._rate = rate
        self.sent = 0
        self.seconds = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        seed = 0
        lines: list[bytes] = []
        started = time.perf_counter()
        while not stop.is_set():
            due = int(self._rate * (time.perf_counter() - started)) - self.sent
            for _ in range(due):
                if not lines:
                    seed += 1
                    lines = synthetic_stream(sessions=500, seed=seed)[::-1]
                line = lines.pop()
                await self._producer.send(self._topic, line, key=user_key(line))
                self.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.005)
        self.seconds = time.perf_counter() - started


async def _items(session: aiohttp.ClientSession, url: str, user: int) -> list[str]:
    async with session.get(f"{url}/recommend/{user}") as response:
        response.raise_for_status()
        text = await response.text()
    return text.split(",") if text else []


async def _probe(
    session: aiohttp.ClientSession,
    producer: AIOKafkaProducer,
    url: str,
    topic: str,
    user: int,
) -> float:
    """Seconds from producing a watch of a listed movie to its leaving the list."""
    before = await _items(session, url, user)
    if not before:
        raise RuntimeError(f"user {user} got an empty list")
    movie = before[user % len(before)]
    line = f"{_stamp()},{user},GET /data/m/{movie}/0.mpg".encode()
    produced = time.perf_counter()
    await producer.send_and_wait(topic, line, key=user_key(line))
    while True:
        items = await _items(session, url, user)
        delay = time.perf_counter() - produced
        if movie not in items or delay > PROBE_TIMEOUT_S:
            return delay
        await asyncio.sleep(POLL_S)


def _summary(delays: list[float]) -> dict[str, object]:
    values = np.array(delays) * 1000
    return {
        "probes": len(delays),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p90_ms": round(float(np.percentile(values, 90)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
        "mean_ms": round(float(values.mean()), 1),
    }


@contextlib.asynccontextmanager
async def _producer(bootstrap: str, linger_ms: int) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def _wait_ready(session: aiohttp.ClientSession, url: str, worker: WorkerProcess) -> None:
    """Until the server holds more than a list of popular movies (so that a probe's
    watch cannot empty it); a fresh broker takes a while to start the worker's group."""
    seen: object = None
    try:
        async with asyncio.timeout(180):
            while True:
                worker.assert_alive()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/readyz") as response:
                        seen = orjson.loads(await response.read())
                        if response.status == 200 and seen["popularity"] > 20:  # type: ignore[index]
                            return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise RuntimeError(f"not ready: {seen}\n{worker.log_tail()}") from None


async def _run(args: argparse.Namespace, bootstrap: str, redis_url: str) -> dict[str, object]:
    name = f"fresh{uuid.uuid4().hex[:8]}"
    topics = {kind: f"{name}.{kind}" for kind in ("raw", "events", "rejected", "recs")}
    await asyncio.to_thread(
        create_topics,
        bootstrap,
        {topics["raw"]: 2, topics["events"]: 2, topics["rejected"]: 1, topics["recs"]: 2},
    )
    env = {
        "REELFEED_KAFKA_BOOTSTRAP": bootstrap,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": name,
        "REELFEED_RAW_TOPIC": topics["raw"],
        "REELFEED_EVENTS_TOPIC": topics["events"],
        "REELFEED_REJECTED_TOPIC": topics["rejected"],
        "REELFEED_TOPIC_PARTITIONS": "2",
        "REELFEED_INGEST_APP_ID": f"{name}-ingest",
        "REELFEED_INGEST_METRICS_PORT": "0",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "port": port,
        "redis_url": redis_url,
        "redis_prefix": name,
        "kafka_bootstrap": bootstrap,
        "recommendations_topic": topics["recs"],
    }
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="reelfeed-freshness-") as tmp:
        folder = Path(tmp)
        worker = WorkerProcess("ingest", env, folder, "ingest")
        worker.start()
        try:
            async with (
                _producer(bootstrap, 5) as background_producer,
                _producer(bootstrap, 0) as probe_producer,
                aiohttp.ClientSession() as session,
            ):
                # Some traffic first, so that there is a popularity list to probe.
                warm = synthetic_stream(sessions=1000, seed=0)
                for line in warm:
                    await background_producer.send(topics["raw"], line, key=user_key(line))
                await background_producer.flush()
                with _server(config, folder / "server.log") as server:
                    await _wait_ready(session, url, worker)
                    user = FIRST_PROBE_USER
                    # Unrecorded probes until the worker has caught up with the warm-up.
                    for _ in range(30):
                        caught_up = await _probe(session, probe_producer, url, topics["raw"], user)
                        user += 1
                        if caught_up < 0.5:
                            break
                    idle: list[float] = []
                    for _ in range(args.idle_probes):
                        idle.append(await _probe(session, probe_producer, url, topics["raw"], user))
                        user += 1
                        await asyncio.sleep(args.gap)
                    report["idle"] = _summary(idle)

                    stop = asyncio.Event()
                    background = Background(background_producer, topics["raw"], args.rate)
                    task = asyncio.create_task(background.run(stop))
                    await asyncio.sleep(args.settle)
                    loaded: list[float] = []
                    for _ in range(args.probes):
                        loaded.append(
                            await _probe(session, probe_producer, url, topics["raw"], user)
                        )
                        user += 1
                        await asyncio.sleep(args.gap)
                        worker.assert_alive()
                        if server.poll() is not None:
                            raise RuntimeError((folder / "server.log").read_text()[-3000:])
                    stop.set()
                    await task
                    summary = _summary(loaded)
                    summary["meets_target"] = float(summary["p99_ms"]) <= TARGET_P99_S * 1000  # type: ignore[arg-type]
                    report["under_background"] = summary
                    report["background"] = {
                        "target_lines_per_s": args.rate,
                        "achieved_lines_per_s": round(background.sent / background.seconds, 1),
                        "lines": background.sent,
                        "seconds": round(background.seconds, 1),
                    }
        finally:
            code = worker.stop()
            if code != 0:
                sys.stderr.write(worker.log_tail())
        client = aioredis.Redis.from_url(redis_url)
        try:
            async for key in client.scan_iter(match=f"{name}:*", count=5_000):
                await client.delete(key)
        finally:
            await client.aclose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="background lines/s")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--idle-probes", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between probes")
    parser.add_argument("--settle", type=float, default=3.0, help="background before probing")
    args = parser.parse_args(argv)

    stack = testing_stack(os.environ)
    redis_server = RedisServer(stack, persist=False)
    broker = KafkaBroker(stack, resolve_kafka_jars(default_cache_dir(os.environ)))
    started_redis = redis_server.start()
    started_kafka = broker.start()
    report: dict[str, object] = {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "poll_interval_ms": POLL_S * 1000,
        "target_p99_ms": TARGET_P99_S * 1000,
    }
    try:
        report.update(asyncio.run(_run(args, broker.bootstrap, redis_server.url)))
    finally:
        if started_kafka:
            broker.stop()
        if started_redis:
            redis_server.stop()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
