"""What the server reads and changes, as Protocols, with their Redis implementations.

Handlers and the refresher only see these Protocols, so unit tests pass fakes; the
Redis classes are thin adapters over the ``state`` stores.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio as aioredis

from state import (
    FeatureStore,
    ItemMatrix,
    KeySchema,
    ModelStore,
    Routing,
    RoutingStore,
    UserContext,
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
    """Model versions in Redis, one ``ModelStore`` per version.

    Concurrent ``user_context`` calls of a version are coalesced: the calls made
    within one pass of the event loop wait together for one pipelined round trip
    (``ModelStore.user_contexts``). Nothing waits on a timer, so a lone request goes
    out at once, while under load a round trip carries many users (measured with
    ``bench.serve``: fewer syscalls, pool checkouts and tasks per answer).

    A round trip that takes longer than ``round_trip_timeout_s`` fails (its callers
    have given up long before, at their own deadline; this frees the connection of a
    stalled Redis). The limit is on the whole round trip rather than the client's
    ``socket_timeout``, which redis-py applies to every reply of a pipeline with one
    ``asyncio.timeout`` each (measured: 5% of the server's CPU).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        coalesce: bool = True,
        round_trip_timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._keys = keys
        self._round_trip_timeout_s = round_trip_timeout_s
        self._stores: dict[str, ModelStore] = {}
        self._features = FeatureStore(client, keys, _READ_ONLY_HALF_LIFE_S)
        self._coalesce = coalesce
        #: Users waiting for the next round trip, by version, with their futures.
        self._pending: dict[str, list[tuple[int, asyncio.Future[UserContext]]]] = {}
        #: Round trips in flight (referenced so that they are not collected).
        self._fetches: set[asyncio.Task[None]] = set()

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
        if not self._coalesce:
            return await self._store(version).user_context(user_id)
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
        task = asyncio.get_running_loop().create_task(self._fetch(version, waiting))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(
        self, version: str, batch: list[tuple[int, asyncio.Future[UserContext]]]
    ) -> None:
        try:
            async with asyncio.timeout(self._round_trip_timeout_s):
                contexts = await self._store(version).user_contexts([user for user, _ in batch])
        except asyncio.CancelledError:  # shutdown: its callers are cancelled too
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # each caller falls back on its own
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), context in zip(batch, contexts, strict=True):
            if not future.done():
                future.set_result(context)


def redis_sources(
    client: aioredis.Redis, keys: KeySchema, round_trip_timeout_s: float = 5.0
) -> tuple[RedisModelSource, FeatureStore, RoutingStore]:
    """The Redis implementations of the three sources, on one client."""
    return (
        RedisModelSource(client, keys, round_trip_timeout_s=round_trip_timeout_s),
        FeatureStore(client, keys, _READ_ONLY_HALF_LIFE_S),
        RoutingStore(client, keys),
    )
