"""What the ingest app keeps in Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from state.keys import KeySchema

__all__ = ["IngestStore"]


class IngestStore:
    """Counters kept by the ingest app, on an async Redis client it does not own."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self._client = client
        self._keys = keys

    async def add_lines(self, count: int) -> int:
        return int(await self._client.incrby(self._keys.ingest_lines(), count))

    async def lines(self) -> int:
        value = await self._client.get(self._keys.ingest_lines())
        return int(value or 0)
