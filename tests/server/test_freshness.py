"""Freshness on the real stack: a watch on Kafka leaves the user's list within 2 s.

A real ingest worker process reads the raw topic and keeps the watched sets and the
popularity in Redis; the server (in process, on the same Redis) answers from the
popularity list with the user's watched movies excluded. A watch line for a movie on
the list, produced to the raw topic, must take that movie off the user's next lists.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from reelfeed.infra import create_topics
from server import create_app
from state import FeatureStore, KeySchema
from tests.integration.test_ingest_worker import topic_names, worker_env
from tests.integration.workers import WorkerProcess, produce_lines, user_key, wait_until
from tests.server.conftest import MemoryProvenance, quiet_config

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

MOVIE = "the+freshness+test+2024"
USER = 424_242
#: Other movies and their watchers, so that the popularity list has more than MOVIE.
OTHERS = [f"movie+{n}+{1990 + n}" for n in range(25)]
DEADLINE_S = 2.0


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _watch(user: int, movie: str, minute: int = 0) -> bytes:
    return f"{_stamp()},{user},GET /data/m/{movie}/{minute}.mpg".encode()


async def _items(client: Client, user: int) -> list[str]:
    response = await client.get(f"/recommend/{user}")
    assert response.status == 200
    return (await response.text()).split(",")


async def test_a_watch_leaves_the_users_list_within_two_seconds(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topics = topic_names(unique_name)
    await asyncio.to_thread(
        create_topics,
        kafka_bootstrap,
        {topics["raw"]: 2, topics["events"]: 2, topics["rejected"]: 1},
    )
    # Other users' watches make MOVIE (watched most) and the others popular.
    warm_up = [_watch(1000 + n, MOVIE) for n in range(30)] + [
        _watch(2000 + n, movie) for n, movie in enumerate(OTHERS)
    ]
    await produce_lines(kafka_bootstrap, topics["raw"], warm_up, user_key)
    store = FeatureStore(redis_client, KeySchema(unique_name), half_life_s=86_400)
    worker = WorkerProcess(
        "ingest", worker_env(kafka_bootstrap, redis_url, unique_name, topics), tmp_path, "ingest"
    )
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:

        async def warmed_up() -> bool:
            popular = {movie for movie, _ in await store.popular(100)}
            return MOVIE in popular and set(OTHERS) <= popular

        await wait_until(warmed_up, 90, worker)
        assert await store.watched(USER) == {}

        config = quiet_config(redis_url=redis_url, redis_prefix=unique_name)
        app = create_app(config, provenance=MemoryProvenance())
        async with TestClient(TestServer(app)) as client:
            before = await _items(client, USER)
            assert MOVIE in before, before

            line = _watch(USER, MOVIE)
            produced = time.perf_counter()
            await producer.send_and_wait(topics["raw"], line, key=user_key(line))
            polls = 0
            while True:
                polls += 1
                items = await _items(client, USER)
                delay = time.perf_counter() - produced
                if MOVIE not in items:
                    break
                assert delay < DEADLINE_S, f"{MOVIE} still listed after {delay:.3f} s"
                worker.assert_alive()
                await asyncio.sleep(0.01)
            print(
                f"\nfreshness: {MOVIE} left user {USER}'s list {delay * 1000:.1f} ms after it"
                f" was produced ({polls} polls)"
            )
            assert delay < DEADLINE_S
            # The rest of the list is still there: only the watched movie left it.
            assert set(before) - set(items) == {MOVIE}
            assert await store.watched(USER) == {MOVIE: 0}
    finally:
        await producer.stop()
        assert worker.stop() == 0, worker.log_tail()
