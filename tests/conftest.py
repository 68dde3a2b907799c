"""Session fixtures: the real Kafka broker and Redis server of the ``test`` stack.

They start the services on the test ports unless this project's test stack already
runs them (then they are reused and left running), and stop what they started at the
end of the session, whether the tests passed or not.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from reelfeed.infra import (
    KafkaBroker,
    RedisServer,
    StackLayout,
    default_cache_dir,
    resolve_kafka_jars,
    testing_stack,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def compiled_scoring_kernel() -> None:
    """Compile the server's scoring kernel (``server.pruning``) into its on-disk cache
    before any test starts a server process: a fresh clone would otherwise compile it
    (about 8 s) inside whichever test first loads an item matrix, under its timeouts."""
    from server.pruning import compile_kernel

    compile_kernel()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data in ../shared/data; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_stack() -> StackLayout:
    return testing_stack(os.environ)


@pytest.fixture(scope="session")
def redis_url(test_stack: StackLayout) -> Iterator[str]:
    server = RedisServer(test_stack, persist=False)
    started = server.start()
    yield server.url
    if started:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(test_stack: StackLayout) -> Iterator[str]:
    broker = KafkaBroker(test_stack, resolve_kafka_jars(default_cache_dir(os.environ)))
    started = broker.start()
    yield broker.bootstrap
    if started:
        broker.stop()


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: for Redis prefixes, topics and consumer groups."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str, unique_name: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    # Leave the shared test server as we found it: drop this test's keys.
    async for key in client.scan_iter(match=f"{unique_name}:*", count=1000):
        await client.delete(key)
    await client.aclose()
