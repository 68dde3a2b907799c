"""What the server reads and changes, as Protocols, with their Redis implementations.

Handlers and the refresher only see these Protocols, so unit tests pass fakes; the
Redis classes are thin adapters over the ``state`` stores.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis

from state import (
    FeatureStore,
    ItemMatrix,
    KeySchema,
    ModelStore,
    RedisPipe,
    Routing,
    RoutingStore,
    UserContext,
    user_contexts_from_replies,
    user_contexts_request,
)

__all__ = [
    "ModelSource",
    "PopularitySource",
    "RedisModelSource",
    "RoutingSource",
    "redis_sources",
]

#: FeatureStore needs a half-life to write popularity; the server only reads it.
_READ_ONLY_HALF_LIFE_S = 86_400.0


class ModelSource(Protocol):
    """Item matrices and user contexts of model versions."""

    async def matrix_revision(self, version: str) -> int: ...

    async def load_matrix(self, version: str, revision: int) -> ItemMatrix | None: ...

    async def user_context(self, version: str | None, user_id: int) -> UserContext:
        """The user's vector in ``version`` (``None`` without a version) and watched movies,
        in one round trip."""
        ...


class PopularitySource(Protocol):
    async def popular(self, count: int, genre: str | None = None) -> list[tuple[str, float]]: ...


class RoutingSource(Protocol):
    async def get(self) -> Routing: ...

    async def set_live(self, version: str) -> Routing: ...

    async def set_canary(self, version: str, share: float, salt: str | None = None) -> Routing: ...

    async def clear_canary(self) -> Routing: ...

    async def promote_canary(self) -> Routing: ...


class RedisModelSource:
    """Model versions in Redis, one ``ModelStore`` per version; user contexts on a pipe.

    Concurrent ``user_context`` calls of a version are coalesced: the calls made
    within one pass of the event loop share one request on ``pipe`` (an MGET of their
    vectors and an HKEYS of each one's watched movies). Nothing waits on a timer, so a
    lone request goes out at once, while under load a request carries many users
    (measured with ``bench.serve``: fewer syscalls and callbacks per answer). The pipe
    keeps many such requests in flight on one connection and gives up on a round trip
    longer than its limit (its callers have given up long before, at their own
    deadline; this frees the connection of a stalled Redis).
    """

    def __init__(self, client: aioredis.Redis, keys: KeySchema, pipe: RedisPipe) -> None:
        self._client = client
        self._keys = keys
        self._pipe = pipe
        self._stores: dict[str, ModelStore] = {}
        self._features = FeatureStore(client, keys, _READ_ONLY_HALF_LIFE_S)
        #: Users waiting for the next request, by version, with their futures.
        self._pending: dict[str, list[tuple[int, asyncio.Future[UserContext]]]] = {}

    def _store(self, version: str) -> ModelStore:
        store = self._stores.get(version)
        if store is None:
            store = self._stores[version] = ModelStore(self._client, self._keys, version)
        return store

    async def matrix_revision(self, version: str) -> int:
        return await self._store(version).matrix_revision()

    async def load_matrix(self, version: str, revision: int) -> ItemMatrix | None:
        return await self._store(version).load_matrix(revision)

    async def user_context(self, version: str | None, user_id: int) -> UserContext:
        if version is None:
            return UserContext(None, frozenset(await self._features.watched(user_id)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UserContext] = loop.create_future()
        pending = self._pending.get(version)
        if pending is None:
            pending = self._pending[version] = []
            loop.call_soon(self._flush, version)
        pending.append((user_id, future))
        return await future

    def _flush(self, version: str) -> None:
        batch = self._pending.pop(version, [])
        waiting = [(user, future) for user, future in batch if not future.done()]
        if not waiting:
            return
        payload, replies = user_contexts_request(self._keys, version, [user for user, _ in waiting])
        self._pipe.request(payload, replies).add_done_callback(partial(_deliver, waiting))


def _deliver(
    batch: list[tuple[int, asyncio.Future[UserContext]]], replies: asyncio.Future[list[Any]]
) -> None:
    """Hand each waiting caller its context, or the round trip's failure."""
    if replies.cancelled():
        for _, future in batch:
            future.cancel()
        return
    failure = replies.exception()
    if failure is None:
        try:
            contexts = user_contexts_from_replies(replies.result())
        except Exception as exc:  # a reply of another shape: each caller falls back
            failure = exc
        else:
            for (_, future), context in zip(batch, contexts, strict=True):
                if not future.done():
                    future.set_result(context)
            return
    for _, future in batch:
        if not future.done():
            future.set_exception(failure)


def redis_sources(
    client: aioredis.Redis, keys: KeySchema, pipe: RedisPipe
) -> tuple[RedisModelSource, FeatureStore, RoutingStore]:
    """The Redis implementations of the three sources, on one client (and the user
    contexts on ``pipe``)."""
    return (
        RedisModelSource(client, keys, pipe),
        FeatureStore(client, keys, _READ_ONLY_HALF_LIFE_S),
        RoutingStore(client, keys),
    )
