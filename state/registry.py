"""The model-version registry: what each version is, and where it came from.

A version is a model configuration plus the code that learns it. Its record holds the
configuration, the git commit and package versions of the learner that registered
it, when, its consumer group and its status. Which version serves is not here but in
the routing (``state.routing``), switched atomically on its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from state.keys import KeySchema

__all__ = ["VersionRecord", "VersionRegistry"]

#: Statuses a version moves through.
STATUSES = ("candidate", "learning", "live", "canary", "retired")


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One model version.

    Examples
    --------
    >>> record = VersionRecord("v1", {"n_factors": 32}, "abc123", {"river": "0.26.1"})
    >>> VersionRecord.from_json(record.to_json()) == record
    True
    """

    name: str
    config: Mapping[str, Any]
    code_sha: str
    packages: Mapping[str, str]
    created: float = field(default_factory=time.time)
    consumer_group: str = ""
    status: str = "learning"
    #: Snapshot the version was restored from, if any (its lineage).
    restored_from: str | None = None
    #: Every restore, oldest first: ``{"snapshot", "time", "positions"}``, where
    #: ``positions`` are those the learner resumed after (past a skipped range, if any).
    restores: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> VersionRecord:
        fields = orjson.loads(raw)
        return cls(**fields)

    def restore_before(self, when: float) -> dict[str, Any] | None:
        """The last restore at or before ``when``: what the version was learning on from.

        Examples
        --------
        >>> record = VersionRecord("v1", {}, "abc", {}, restores=[
        ...     {"snapshot": "s1", "time": 10.0, "positions": {}},
        ...     {"snapshot": "s2", "time": 20.0, "positions": {}}])
        >>> record.restore_before(15.0)["snapshot"], record.restore_before(5.0)
        ('s1', None)
        """
        earlier = [entry for entry in self.restores if float(entry["time"]) <= when]
        return earlier[-1] if earlier else None


class VersionRegistry:
    """Model versions in Redis, on a client it does not own."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self._client = client
        self._keys = keys

    async def register(self, record: VersionRecord) -> VersionRecord:
        """Record a version unless it exists; return the stored record either way."""
        created = await self._client.hsetnx(self._keys.versions(), record.name, record.to_json())
        if created:
            return record
        existing = await self.get(record.name)
        assert existing is not None  # hsetnx refused: the field exists
        return existing

    async def get(self, name: str) -> VersionRecord | None:
        raw = await self._client.hget(self._keys.versions(), name)
        return None if raw is None else VersionRecord.from_json(raw)

    async def list(self) -> list[VersionRecord]:
        raw = await self._client.hgetall(self._keys.versions())
        records = [VersionRecord.from_json(value) for value in raw.values()]
        return sorted(records, key=lambda record: record.created)

    async def update(self, name: str, **changes: Any) -> VersionRecord:
        """Change fields of a version's record (its status, its lineage)."""
        record = await self.get(name)
        if record is None:
            raise KeyError(f"no model version {name!r}")
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {changes['status']!r}")
        updated = VersionRecord(**{**asdict(record), **changes})
        await self._client.hset(self._keys.versions(), name, updated.to_json())
        return updated

    async def record_restore(
        self, name: str, snapshot_id: str, positions: Mapping[str, int], when: float
    ) -> VersionRecord:
        """Add a restore to the version's history and make it its lineage, atomically.

        The record is read and rewritten under WATCH, so that two restores (or a restore
        and a status change) at the same moment cannot lose one another.
        """
        key = self._keys.versions()
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, name)
                    if raw is None:
                        raise KeyError(f"no model version {name!r}")
                    record = VersionRecord.from_json(raw)
                    entry = {"snapshot": snapshot_id, "time": when, "positions": dict(positions)}
                    updated = VersionRecord(
                        **{
                            **asdict(record),
                            "restored_from": snapshot_id,
                            "restores": [*record.restores, entry],
                        }
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pipe.hset(key, name, updated.to_json())
                    await pipe.execute()
                    return updated
                except aioredis.WatchError:
                    continue
