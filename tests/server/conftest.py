"""Fakes of the server's collaborators (through its Protocols) and app helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server import (
    ProvenanceRecord,
    ServerConfig,
    UserProfile,
    create_app,
)
from server.app import recommend_directly_on
from state import (
    FeatureStore,
    ItemMatrix,
    KeySchema,
    ModelStore,
    Routing,
    RoutingConflict,
    RoutingStore,
    UserContext,
    WatchUpdate,
    user_row,
)

TOKEN = "test-admin-token-0123456789"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The server's tests run on uvloop, the loop ``reelfeed serve`` runs on (its clock
    has a resolution of a millisecond, its transports are not asyncio's classes)."""
    return {"uvloop": uvloop.new_event_loop}


def make_matrix(
    n_items: int = 300, k: int = 8, revision: int = 1, seed: int = 0, prefix: str = "movie+"
) -> ItemMatrix:
    rng = np.random.default_rng(seed)
    return ItemMatrix(
        tuple(f"{prefix}{i}" for i in range(n_items)),
        (rng.standard_normal((n_items, k)) * 0.5).astype(np.float32),
        (rng.standard_normal(n_items) * 0.1).astype(np.float32),
        revision,
        rng.pareto(1.5, n_items).astype(np.float32),
        {"reelfeed.events:0": 100 * revision, "reelfeed.events:1": 7},
    )


async def seed_redis(
    client: aioredis.Redis, prefix: str
) -> tuple[ItemMatrix, dict[int, np.ndarray]]:
    """A published matrix and user vectors of v1, watches of users 1-3 and 900, v1 live.

    User ``u`` (1 to 20) has learned ``u`` events.
    """
    keys = KeySchema(prefix)
    store = ModelStore(client, keys, "v1")
    rng = np.random.default_rng(11)
    vectors = {user: rng.standard_normal(8).astype(np.float32) for user in range(1, 21)}
    rows = {user: user_row(user, vector) for user, vector in vectors.items()}
    await store.commit(rows, {}, {"reelfeed.events:0": 41})
    revision = await store.publish_matrix(make_matrix(n_items=400, k=8))
    matrix = await store.load_matrix(revision)
    assert matrix is not None
    features = FeatureStore(client, keys, 86_400.0)
    watches = [
        WatchUpdate(offset, user, f"movie+{movie}", 0, 1_700_000_000.0 + offset)
        for offset, (user, movie) in enumerate(
            [(1, m) for m in range(0, 60, 3)]
            + [(2, 5), (3, 7), (900, 1), (900, 2)]
            + [(1000 + i, m) for i in range(30) for m in range(i % 7 + 1)]
        )
    ]
    await features.apply("movielog", 0, watches)
    await RoutingStore(client, keys).set_live("v1")
    return matrix, vectors


class FakeModels:
    """Model versions in memory; can be slow or failing like a sick Redis."""

    def __init__(self) -> None:
        self.matrices: dict[str, ItemMatrix] = {}
        self.vectors: dict[tuple[str, int], np.ndarray] = {}
        self.watched: dict[int, set[str]] = {}
        #: Events the model learned per user (10 unless set).
        self.events: dict[int, int] = {}
        self.delay_s = 0.0
        self.error: Exception | None = None
        self.calls = 0

    async def matrix_revision(self, version: str) -> int:
        matrix = self.matrices.get(version)
        return 0 if matrix is None else matrix.revision

    async def load_matrix(self, version: str, revision: int) -> ItemMatrix | None:
        matrix = self.matrices.get(version)
        return matrix if matrix is not None and matrix.revision == revision else None

    async def user_context(self, version: str | None, user_id: int) -> UserContext:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        vector = None if version is None else self.vectors.get((version, user_id))
        events = self.events.get(user_id, 10) if vector is not None else 0
        return UserContext(vector, frozenset(self.watched.get(user_id, ())), events)


class FakePopularity:
    def __init__(self, movies: list[str] | None = None) -> None:
        self.lists: dict[str | None, list[str]] = {None: list(movies or [])}

    async def popular(self, count: int, genre: str | None = None) -> list[tuple[str, float]]:
        movies = self.lists.get(genre, [])[:count]
        return [(movie, float(len(movies) - i)) for i, movie in enumerate(movies)]


class FakeRouting:
    """The routing semantics of state.RoutingStore, in memory."""

    def __init__(self, routing: Routing | None = None) -> None:
        self.routing = routing or Routing()
        self.error: Exception | None = None

    def _change(self, **changes: Any) -> Routing:
        if self.error is not None:
            raise self.error
        self.routing = dataclasses.replace(
            self.routing, revision=self.routing.revision + 1, **changes
        )
        return self.routing

    async def get(self) -> Routing:
        if self.error is not None:
            raise self.error
        return self.routing

    async def set_live(self, version: str) -> Routing:
        if self.routing.canary == version:
            return self._change(live=version, canary=None, canary_share=0.0, salt="")
        return self._change(live=version)

    async def set_canary(self, version: str, share: float, salt: str | None = None) -> Routing:
        if self.routing.live == version:
            raise RoutingConflict("the canary cannot be the live version")
        return self._change(canary=version, canary_share=share, salt=salt or secrets.token_hex(8))

    async def clear_canary(self) -> Routing:
        return self._change(canary=None, canary_share=0.0, salt="")

    async def promote_canary(self) -> Routing:
        if self.routing.canary is None:
            raise RoutingConflict("there is no canary to promote")
        return self._change(live=self.routing.canary, canary=None, canary_share=0.0, salt="")


class FakeProfiles:
    def __init__(self, profiles: dict[int, UserProfile] | None = None) -> None:
        self.profiles = profiles or {}
        self.lookups: list[tuple[int, float]] = []

    async def lookup(self, user_id: int, wait: float) -> UserProfile | None:
        self.lookups.append((user_id, wait))
        return self.profiles.get(user_id)

    async def close(self) -> None:
        return None


class MemoryProvenance:
    def __init__(self) -> None:
        self.records: list[ProvenanceRecord] = []

    def emit(self, record: ProvenanceRecord) -> None:
        self.records.append(record)

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> None:
        return None


@dataclasses.dataclass
class Fakes:
    models: FakeModels
    popularity: FakePopularity
    routing: FakeRouting
    profiles: FakeProfiles
    provenance: MemoryProvenance


def quiet_config(**changes: Any) -> ServerConfig:
    """A config whose background polls never fire during a test (tests refresh by hand)."""
    values: dict[str, Any] = {
        "routing_poll_s": 3600.0,
        "matrix_poll_s": 3600.0,
        "popularity_poll_s": 3600.0,
        "admin_token": TOKEN,
    }
    values.update(changes)
    return ServerConfig(**values)


@pytest.fixture
def fakes() -> Fakes:
    return Fakes(
        FakeModels(),
        FakePopularity([f"pop{i}" for i in range(40)]),
        FakeRouting(),
        FakeProfiles(),
        MemoryProvenance(),
    )


AppFactory = Callable[..., web.Application]


@pytest.fixture
def make_app(fakes: Fakes) -> AppFactory:
    def factory(config: ServerConfig | None = None, **overrides: Any) -> web.Application:
        sources: dict[str, Any] = {
            "models": fakes.models,
            "popularity": fakes.popularity,
            "routing": fakes.routing,
            "profiles": fakes.profiles,
            "provenance": fakes.provenance,
        }
        sources.update(overrides)
        return create_app(config or quiet_config(), **sources)

    return factory


@pytest.fixture(params=["routed", "direct"])
async def client(
    make_app: AppFactory, request: pytest.FixtureRequest
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client of the app with fakes; each test runs through the router and through
    the direct ``/recommend`` path that ``server.run`` serves (they must not differ)."""
    app = make_app()
    async with TestClient(TestServer(app)) as test_client:
        if request.param == "direct":
            assert test_client.server.runner is not None
            recommend_directly_on(test_client.server.runner, app)
        yield test_client


@pytest.fixture
def live_server(make_app: AppFactory) -> Iterator[str]:
    """The app with fakes on a real socket, on its own loop in a thread (for sync clients)."""
    loop = asyncio.new_event_loop()
    app = make_app()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    bound: list[str] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        recommend_directly_on(runner, app)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        bound.append(f"http://{host}:{port}")
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    assert started.wait(10), "the live server did not start"
    try:
        yield bound[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
