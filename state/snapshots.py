"""Snapshots of model versions: frozen learner states with the positions they cover.

A snapshot is a copy of a version's checkpoint (taken at a batch boundary, so the
model and its Kafka positions match) with a record of where it came from. It can be
exported to a file that survives a lost Redis, imported back, and restored into a
version: the learner then reloads it and replays Kafka from its positions.

Snapshots are ``manual`` (an operator's ``reelfeed snapshot create``) or ``periodic``
(the learner's timer); retention (``SnapshotStore.prune``) deletes the oldest periodic
ones of a version beyond a count, leaves manual ones alone unless asked, and never
deletes one that later snapshots descend from.

Requests to a running learner (checkpoint now, reload) travel through a Redis list
per version; the learner pops them between batches.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import orjson
import redis.asyncio as aioredis

from state.keys import KeySchema
from state.model_store import Checkpoint

__all__ = ["SNAPSHOT_KINDS", "LearnerRequest", "SnapshotRecord", "SnapshotStore"]

_MAGIC = b"RFSNAP1\n"

#: Who took a snapshot: an operator, or the learner's timer.
SNAPSHOT_KINDS = ("manual", "periodic")


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """What a snapshot is: a version's state at some positions, and its lineage."""

    id: str
    version: str
    positions: dict[str, int]
    created: float
    checkpoint_created: float
    size: int
    #: The snapshot the version had been restored from when this one was taken.
    parent: str | None = None
    note: str = ""
    kind: str = "manual"

    def covers_at_most(self, positions: Mapping[str, int]) -> bool:
        """Whether every position of the snapshot is at or before ``positions``.

        Examples
        --------
        >>> snap = SnapshotRecord("s", "v1", {"ev:0": 5, "ev:1": 7}, 0.0, 0.0, 1)
        >>> snap.covers_at_most({"ev:0": 5, "ev:1": 9}), snap.covers_at_most({"ev:0": 4})
        (True, False)
        """
        return all(
            name in positions and offset <= positions[name]
            for name, offset in self.positions.items()
        )


@dataclass(frozen=True, slots=True)
class LearnerRequest:
    """Something a running learner should do between two batches."""

    op: str  # "checkpoint" or "reload"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    sent: float = field(default_factory=time.time)


class SnapshotStore:
    """Snapshots in Redis, on a client it does not own."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self._client = client
        self._keys = keys

    async def create(
        self,
        version: str,
        checkpoint: Checkpoint,
        parent: str | None = None,
        note: str = "",
        kind: str = "manual",
    ) -> SnapshotRecord:
        if kind not in SNAPSHOT_KINDS:
            raise ValueError(f"kind must be one of {SNAPSHOT_KINDS}, got {kind!r}")
        record = SnapshotRecord(
            id=f"{version}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}",
            version=version,
            positions=dict(checkpoint.positions),
            created=time.time(),
            checkpoint_created=checkpoint.created,
            size=len(checkpoint.state),
            parent=parent,
            note=note,
            kind=kind,
        )
        await self._store(record, checkpoint.state)
        return record

    async def _store(self, record: SnapshotRecord, state: bytes) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.snapshot(record.id), state)
            pipe.hset(self._keys.snapshots(), record.id, orjson.dumps(asdict(record)))
            await pipe.execute()

    async def get(self, snapshot_id: str) -> SnapshotRecord | None:
        raw = await self._client.hget(self._keys.snapshots(), snapshot_id)
        return None if raw is None else SnapshotRecord(**orjson.loads(raw))

    async def lineage(self, snapshot_id: str) -> list[SnapshotRecord]:
        """The snapshot, the one its version had been restored from, and so on back.

        Stops at a snapshot without a parent, at one that was deleted, or at a cycle.
        """
        chain: list[SnapshotRecord] = []
        seen: set[str] = set()
        current: str | None = snapshot_id
        while current is not None and current not in seen:
            seen.add(current)
            record = await self.get(current)
            if record is None:
                break
            chain.append(record)
            current = record.parent
        return chain

    async def prune(
        self, version: str, keep: int, kinds: tuple[str, ...] = ("periodic",)
    ) -> list[str]:
        """Delete the oldest snapshots of ``version`` of these kinds beyond the newest ``keep``.

        A snapshot that another one descends from (its ``parent``: a version was restored
        from it) is kept whatever its age: it is the lineage that provenance reports.
        Returns the ids deleted, oldest first.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        records = await self.list()
        parents = {record.parent for record in records}
        candidates = [
            record
            for record in records
            if record.version == version and record.kind in kinds and record.id not in parents
        ]
        doomed = candidates[: max(len(candidates) - keep, 0)]
        for record in doomed:
            await self.delete(record.id)
        return [record.id for record in doomed]

    async def list(self) -> list[SnapshotRecord]:
        raw = await self._client.hgetall(self._keys.snapshots())
        records = [SnapshotRecord(**orjson.loads(value)) for value in raw.values()]
        return sorted(records, key=lambda record: record.created)

    async def state(self, snapshot_id: str) -> bytes | None:
        raw = await self._client.get(self._keys.snapshot(snapshot_id))
        if raw is None or isinstance(raw, bytes):
            return raw
        raise TypeError("SnapshotStore needs a Redis client with decode_responses=False")

    async def delete(self, snapshot_id: str) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.snapshot(snapshot_id))
            pipe.hdel(self._keys.snapshots(), snapshot_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def export(self, snapshot_id: str) -> bytes:
        """The snapshot as one self-describing blob (its record, then its state)."""
        record = await self.get(snapshot_id)
        state = await self.state(snapshot_id)
        if record is None or state is None:
            raise KeyError(f"no snapshot {snapshot_id!r}")
        header = orjson.dumps(asdict(record))
        return _MAGIC + struct.pack("<I", len(header)) + header + state

    async def import_(self, blob: bytes) -> SnapshotRecord:
        if not blob.startswith(_MAGIC):
            raise ValueError("not a reelfeed snapshot file")
        start = len(_MAGIC)
        (length,) = struct.unpack_from("<I", blob, start)
        record = SnapshotRecord(**orjson.loads(blob[start + 4 : start + 4 + length]))
        state = blob[start + 4 + length :]
        if len(state) != record.size:
            raise ValueError(f"snapshot file is truncated: {len(state)} of {record.size} bytes")
        await self._store(record, state)
        return record

    async def send(self, version: str, request: LearnerRequest) -> None:
        await self._client.lpush(
            self._keys.learner_requests(version), orjson.dumps(asdict(request))
        )

    async def next_request(self, version: str) -> LearnerRequest | None:
        raw = await self._client.rpop(self._keys.learner_requests(version))
        if raw is None:
            return None
        if not isinstance(raw, bytes | str):
            raise TypeError(f"unexpected RPOP reply {raw!r}")
        return LearnerRequest(**orjson.loads(raw))
