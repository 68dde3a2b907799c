"""The server on the real Redis: model lists, popularity, routing, Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from online_model.ranking import RankingTable
from server import create_app
from server.app import METRICS, REFRESHER
from state import FeatureStore, ItemMatrix, KeySchema, ModelStore, RoutingStore, user_row
from tests.integration.workers import free_port
from tests.server.conftest import (
    TOKEN,
    FakePopularity,
    MemoryProvenance,
    make_matrix,
    quiet_config,
    seed_redis,
)

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
K = 8  # the factors of seed_redis


#: A blend that depends on the user's event count, so that the count is checked too.
COLD_START_EVENTS = 5.0


def _reference(
    matrix: ItemMatrix, vector: np.ndarray, n_events: int, watched: set[str]
) -> list[str]:
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids,
        matrix.factors,
        matrix.biases,
        matrix.popularity,
        1.0,
        COLD_START_EVENTS,
    )
    return [str(m) for m in table.recommend(vector, n_events, watched, 20)]


@pytest.fixture
async def served(
    redis_url: str, redis_client: aioredis.Redis, unique_name: str
) -> AsyncIterator[tuple[Client, ItemMatrix, dict[int, np.ndarray]]]:
    matrix, vectors = await seed_redis(redis_client, unique_name)
    config = quiet_config(
        redis_url=redis_url, redis_prefix=unique_name, cold_start_events=COLD_START_EVENTS
    )
    app = create_app(config, provenance=MemoryProvenance())
    async with TestClient(TestServer(app)) as client:
        yield client, matrix, vectors


async def test_lists_follow_the_factors_and_exclude_watched(
    served: tuple[Client, ItemMatrix, dict[int, np.ndarray]], redis_client: aioredis.Redis
) -> None:
    client, matrix, vectors = served
    watched = {f"movie+{m}" for m in range(0, 60, 3)}
    response = await client.get("/recommend/1")
    items = (await response.text()).split(",")
    assert response.headers["X-Model-Version"] == "v1"
    assert response.headers["X-Model-Revision"] == str(matrix.revision)
    assert items == _reference(matrix, vectors[1], 1, watched)
    assert not set(items) & watched
    # Without the exclusions, the same user would have been offered watched movies.
    assert set(_reference(matrix, vectors[1], 1, set())) & watched


async def test_unknown_users_get_ingest_popularity_without_their_watched(
    served: tuple[Client, ItemMatrix, dict[int, np.ndarray]],
    unique_name: str,
    redis_client: aioredis.Redis,
) -> None:
    client, _, _ = served
    popular = await FeatureStore(redis_client, KeySchema(unique_name), 86_400.0).popular(50)
    response = await client.get("/recommend/900")
    assert response.headers["X-Fallback"] == "unknown_user"
    expected = [m for m, _ in popular if m not in {"movie+1", "movie+2"}][:20]
    assert (await response.text()).split(",") == expected


async def test_a_published_revision_and_a_canary_are_picked_up(
    served: tuple[Client, ItemMatrix, dict[int, np.ndarray]],
    redis_client: aioredis.Redis,
    unique_name: str,
) -> None:
    client, _, vectors = served
    keys = KeySchema(unique_name)
    revision = await ModelStore(redis_client, keys, "v1").publish_matrix(
        make_matrix(n_items=400, k=K, seed=5)
    )
    assert client.app is not None
    await client.app[REFRESHER].refresh_all()
    assert (await client.get("/recommend/4")).headers["X-Model-Revision"] == str(revision)

    v2 = ModelStore(redis_client, keys, "v2")
    await v2.commit({4: user_row(4, vectors[4])}, {}, {})
    assert (
        await client.put("/admin/canary", headers=AUTH, json={"version": "v2", "share": 1})
    ).status == 409  # noqa: E501
    await v2.publish_matrix(make_matrix(n_items=400, k=K, seed=6))
    response = await client.put("/admin/canary", headers=AUTH, json={"version": "v2", "share": 1})
    assert response.status == 200
    assert (await RoutingStore(redis_client, keys).get()).canary == "v2"
    assert (await client.get("/recommend/4")).headers["X-Model-Version"] == "v2"


async def test_closed_redis_port_answers_popularity_within_the_deadline() -> None:
    config = quiet_config(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    popularity = FakePopularity([f"pop{i}" for i in range(25)])
    app = create_app(config, popularity=popularity, provenance=MemoryProvenance())
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/readyz")).status == 200
        for user in range(5):
            started = time.perf_counter()
            response = await client.get(f"/recommend/{user}")
            assert time.perf_counter() - started < 0.05 + 0.25
            assert response.status == 200
            assert response.headers["X-Fallback"] in {"redis_error", "redis_unavailable"}
            assert (await response.text()).split(",") == [f"pop{i}" for i in range(20)]
        registry = app[METRICS].registry
        counted = sum(
            registry.get_sample_value("reelfeed_server_fallbacks_total", {"reason": reason}) or 0
            for reason in ("redis_error", "redis_unavailable")
        )
        assert counted == 5


class _Proxy:
    """A TCP proxy to Redis that can stall (a slow Redis) or refuse (a dead one)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.stalled = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await source.read(65536):
                    while self.stalled.is_set():
                        await asyncio.sleep(0.01)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()


async def test_redis_that_stalls_then_recovers(
    redis_client: aioredis.Redis, unique_name: str, redis_url: str
) -> None:
    matrix, vectors = await seed_redis(redis_client, unique_name)
    proxy = _Proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    config = quiet_config(
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",
        redis_prefix=unique_name,
        redis_retry_s=0.3,
        cold_start_events=COLD_START_EVENTS,
    )
    app = create_app(config, provenance=MemoryProvenance())
    try:
        async with TestClient(TestServer(app)) as client:
            assert "X-Fallback" not in (await client.get("/recommend/2")).headers
            proxy.stalled.set()
            reasons = []
            for _ in range(6):
                started = time.perf_counter()
                response = await client.get("/recommend/2")
                assert response.status == 200
                assert time.perf_counter() - started < 0.05 + 0.25
                reasons.append(response.headers["X-Fallback"])
                popular = (await response.text()).split(",")
            timeouts = reasons.index("redis_unavailable")
            assert timeouts in (3, 4)  # the first may come within two deadlines of a success
            assert reasons == ["redis_timeout"] * timeouts + ["redis_unavailable"] * (6 - timeouts)
            assert len(popular) == 20  # the in-memory popularity list
            proxy.stalled.clear()
            await asyncio.sleep(0.35)
            async with asyncio.timeout(5):
                while "X-Fallback" in (response := await client.get("/recommend/2")).headers:
                    await asyncio.sleep(0.05)
            assert (await response.text()).split(",") == _reference(
                matrix, vectors[2], 2, {"movie+5"}
            )
    finally:
        await proxy.close()
