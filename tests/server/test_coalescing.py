"""Batched user contexts on the real Redis: ``state.user_contexts_request`` on a
``RedisPipe`` and the server's coalescing of concurrent requests into one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from server.sources import RedisModelSource
from state import (
    KeySchema,
    ModelStore,
    RedisPipe,
    UserContext,
    user_contexts_from_replies,
    user_contexts_request,
)
from tests.server.conftest import seed_redis

pytestmark = pytest.mark.integration

#: Users with a vector (1-20), with watches only (900, 1000+), and unknown ones.
USERS = [1, 2, 3, 20, 900, 1000, 1005, 55_555, 1, 3]


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    pipe = RedisPipe(redis_url)
    yield pipe
    await pipe.close()


def _same(left: UserContext, right: UserContext) -> bool:
    if (left.vector is None) != (right.vector is None):
        return False
    if left.vector is not None and right.vector is not None:
        if not np.array_equal(left.vector, right.vector):
            return False
    return left.watched == right.watched and left.n_events == right.n_events


async def _contexts(pipe: RedisPipe, keys: KeySchema, users: list[int]) -> list[UserContext]:
    payload, replies = user_contexts_request(keys, "v1", users)
    return user_contexts_from_replies(await pipe.request(payload, replies))


async def test_user_contexts_match_one_by_one_reads(
    redis_client: aioredis.Redis, pipe: RedisPipe, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    batch = await _contexts(pipe, keys, USERS)
    assert len(batch) == len(USERS)
    for user, context in zip(USERS, batch, strict=True):
        assert _same(context, await store.user_context(user)), user
    assert batch[0].n_events == 1 and batch[0].vector is not None
    assert batch[7] == UserContext(None, frozenset())


async def test_an_error_reply_fails_the_batch_and_spoils_no_later_read(
    redis_client: aioredis.Redis, pipe: RedisPipe, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    keys = KeySchema(unique_name)
    expected = await _contexts(pipe, keys, USERS)
    await redis_client.set(keys.watched(77), b"not a hash")  # HKEYS answers WRONGTYPE
    for _ in range(3):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await _contexts(pipe, keys, [1, 77, 2])
    # No reply of the failed batch is left for a later read of the same connection.
    again = await _contexts(pipe, keys, USERS)
    assert all(_same(left, right) for left, right in zip(expected, again, strict=True))
    assert await redis_client.get(keys.watched(77)) == b"not a hash"


async def test_concurrent_requests_share_one_round_trip(
    redis_client: aioredis.Redis, pipe: RedisPipe, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    keys = KeySchema(unique_name)
    sent: list[int] = []
    original = pipe.request

    def counted(payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        sent.append(replies)
        return original(payload, replies)

    pipe.request = counted  # type: ignore[method-assign]
    source = RedisModelSource(redis_client, keys, pipe)
    contexts = await asyncio.gather(*(source.user_context("v1", user) for user in USERS))
    assert sent == [1 + len(USERS)]  # one MGET and one HKEYS per user
    store = ModelStore(redis_client, keys, "v1")
    for user, context in zip(USERS, contexts, strict=True):
        assert _same(context, await store.user_context(user)), user

    # A lone request goes out at once, in a request of its own.
    await source.user_context("v1", 2)
    assert sent[-1] == 2
    # Without a version, the watched set alone (not on the pipe).
    alone = await source.user_context(None, 900)
    assert alone == UserContext(None, frozenset({"movie+1", "movie+2"}))
    assert len(sent) == 2


async def test_a_caller_that_leaves_does_not_disturb_the_others(
    redis_client: aioredis.Redis, pipe: RedisPipe, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    source = RedisModelSource(redis_client, KeySchema(unique_name), pipe)
    leaving = asyncio.ensure_future(source.user_context("v1", 1))
    staying = [asyncio.ensure_future(source.user_context("v1", user)) for user in (2, 3)]
    await asyncio.sleep(0)  # all three are in the batch; one leaves before the reply
    leaving.cancel()
    results = await asyncio.gather(leaving, *staying, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r.n_events for r in results[1:] if isinstance(r, UserContext)] == [2, 3]


async def test_a_failed_round_trip_fails_each_caller(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    # A pipe to a closed port: every round trip fails, each caller with the reason.
    broken = RedisPipe("redis://127.0.0.1:1", connect_timeout_s=0.5)
    try:
        source = RedisModelSource(redis_client, KeySchema(unique_name), broken)
        results = await asyncio.gather(
            *(source.user_context("v1", user) for user in (1, 2, 3)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results), results
    finally:
        await broken.close()
