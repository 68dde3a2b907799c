"""Batched user contexts on the real Redis: ``ModelStore.user_contexts`` and the
server's coalescing of concurrent requests into one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from server.sources import RedisModelSource
from state import KeySchema, ModelStore, UserContext
from tests.server.conftest import seed_redis

pytestmark = pytest.mark.integration

#: Users with a vector (1-20), with watches only (900, 1000+), and unknown ones.
USERS = [1, 2, 3, 20, 900, 1000, 1005, 55_555, 1, 3]


def _same(left: UserContext, right: UserContext) -> bool:
    if (left.vector is None) != (right.vector is None):
        return False
    if left.vector is not None and right.vector is not None:
        if not np.array_equal(left.vector, right.vector):
            return False
    return left.watched == right.watched and left.n_events == right.n_events


async def test_user_contexts_match_one_by_one_reads(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    batch = await store.user_contexts(USERS)
    assert len(batch) == len(USERS)
    for user, context in zip(USERS, batch, strict=True):
        assert _same(context, await store.user_context(user)), user
    assert batch[0].n_events == 1 and batch[0].vector is not None
    assert batch[7] == UserContext(None, frozenset())
    assert await store.user_contexts([]) == []


async def test_an_error_reply_fails_the_batch_and_spoils_no_later_read(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    expected = await store.user_contexts(USERS)
    await redis_client.set(keys.watched(77), b"not a hash")  # HKEYS answers WRONGTYPE
    for _ in range(3):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.user_contexts([1, 77, 2])
    # No reply of the failed batch is left for a later read of the same connection.
    again = await store.user_contexts(USERS)
    assert all(_same(left, right) for left, right in zip(expected, again, strict=True))
    assert await redis_client.get(keys.watched(77)) == b"not a hash"


async def test_concurrent_requests_share_one_round_trip(
    redis_client: aioredis.Redis, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_redis(redis_client, unique_name)
    keys = KeySchema(unique_name)
    batches: list[list[int]] = []
    original = ModelStore.user_contexts

    async def counted(self: ModelStore, user_ids: Sequence[int]) -> list[UserContext]:
        batches.append(list(user_ids))
        return await original(self, user_ids)

    monkeypatch.setattr(ModelStore, "user_contexts", counted)
    source = RedisModelSource(redis_client, keys)
    contexts = await asyncio.gather(*(source.user_context("v1", user) for user in USERS))
    assert batches == [USERS]
    store = ModelStore(redis_client, keys, "v1")
    for user, context in zip(USERS, contexts, strict=True):
        assert _same(context, await store.user_context(user)), user

    # A lone request goes out at once, in a batch of its own.
    await source.user_context("v1", 2)
    assert batches[-1] == [2]
    # Without a version, the watched set alone (no batching).
    alone = await source.user_context(None, 900)
    assert alone == UserContext(None, frozenset({"movie+1", "movie+2"}))
    assert len(batches) == 2


async def test_a_caller_that_leaves_does_not_disturb_the_others(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    await seed_redis(redis_client, unique_name)
    source = RedisModelSource(redis_client, KeySchema(unique_name))
    leaving = asyncio.ensure_future(source.user_context("v1", 1))
    staying = [asyncio.ensure_future(source.user_context("v1", user)) for user in (2, 3)]
    leaving.cancel()
    results = await asyncio.gather(leaving, *staying, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r.n_events for r in results[1:] if isinstance(r, UserContext)] == [2, 3]


async def test_a_failed_round_trip_fails_each_caller(unique_name: str) -> None:
    # A client of a closed port: every round trip fails.
    broken = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        source = RedisModelSource(broken, KeySchema(unique_name))
        results = await asyncio.gather(
            *(source.user_context("v1", user) for user in (1, 2, 3)), return_exceptions=True
        )
        assert all(isinstance(r, aioredis.ConnectionError) for r in results), results
    finally:
        await broken.aclose()


async def test_a_stalled_round_trip_is_abandoned_after_its_limit(
    unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client has no socket timeout (see server.app): the round trip's own limit
    # frees the callers (and the connection) of a Redis that accepted and went quiet.
    async def stalled(self: ModelStore, user_ids: Sequence[int]) -> list[UserContext]:
        await asyncio.sleep(3600)
        return []

    monkeypatch.setattr(ModelStore, "user_contexts", stalled)
    client = aioredis.Redis(host="127.0.0.1", port=1)
    try:
        source = RedisModelSource(client, KeySchema(unique_name), round_trip_timeout_s=0.05)
        async with asyncio.timeout(5):
            results = await asyncio.gather(
                *(source.user_context("v1", user) for user in (1, 2)), return_exceptions=True
            )
        assert all(isinstance(r, TimeoutError) for r in results), results
    finally:
        await client.aclose()
