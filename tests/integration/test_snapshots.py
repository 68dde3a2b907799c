"""Snapshots on the real stack: freeze a learning version, export it, restore it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from functools import partial
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from reelfeed.cli import main
from reelfeed.infra import create_topics
from state import (
    Checkpoint,
    KeySchema,
    ModelStore,
    SnapshotRecord,
    SnapshotStore,
    VersionRegistry,
)
from stream.events import Event
from stream.learner import LearnerState
from tests.integration.test_learn_worker import (
    events_of,
    expected_learning,
    final_state,
    learn_env,
    learned_everything,
    produce_events,
)
from tests.integration.test_reproducibility import (
    PARTITIONS,
    end_positions,
    learn_config,
    learner,
    produce_to_partitions,
    wait_for,
)
from tests.integration.workers import WorkerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def cli(capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str) -> object:
    # The command runs its own event loop: give it a thread of its own.
    code = await asyncio.to_thread(main, ["snapshot", *argv], env)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return orjson.loads(captured.out)


async def test_snapshot_export_import_and_restore_replays_exactly_once(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = events_of(600, seed=21)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    env = learn_env(kafka_bootstrap, redis_url, unique_name, topic)
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    worker = WorkerProcess("learn", env, tmp_path, "learn")
    await produce_events(kafka_bootstrap, topic, first, duplicates=0)
    worker.start()
    try:
        await wait_until(lambda: learned_everything(store, len(first)), 90, worker)
        snapshot = await cli(capsys, env, "create", "--version", "v1", "--note", "half")
        assert isinstance(snapshot, dict) and snapshot["learner_answered"] is True
        assert sum(o + 1 for o in snapshot["positions"].values()) == len(first)

        # A lost Redis: the exported file brings the snapshot back.
        exported = tmp_path / "v1.snapshot"
        await cli(capsys, env, "export", snapshot["id"], str(exported))
        await cli(capsys, env, "delete", snapshot["id"])
        assert await cli(capsys, env, "list") == []
        imported = await cli(capsys, env, "import", str(exported))
        assert isinstance(imported, dict) and imported["id"] == snapshot["id"]

        await produce_events(kafka_bootstrap, topic, second, duplicates=0, first_offset=len(first))
        await wait_until(lambda: learned_everything(store, len(events)), 90, worker)

        # Roll back: the learner reloads the snapshot and learns the second half again.
        restored = await cli(capsys, env, "restore", snapshot["id"])
        assert isinstance(restored, dict) and restored["into"] == "v1"
        snapshots = SnapshotStore(redis_client, KeySchema(unique_name))

        async def reloaded() -> bool:
            # The learner logs the reload after it has put the restored positions back.
            return "reloaded from its checkpoint" in worker.log_tail(50_000)

        await wait_until(reloaded, 90, worker)
        await wait_until(lambda: learned_everything(store, len(events)), 90, worker)
        assert await snapshots.get(snapshot["id"]) is not None
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert "reloaded from its checkpoint" in worker.log_tail(20_000)
    state = await final_state(store)
    total, per_user = expected_learning(events)
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    record = await VersionRegistry(redis_client, KeySchema(unique_name)).get("v1")
    assert record is not None and record.restored_from == snapshot["id"]


async def test_periodic_snapshots_keep_the_newest_and_spare_manual_ones(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = events_of(400, seed=22)
    parts = [events[i::4] for i in range(4)]
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: PARTITIONS})
    keys = KeySchema(unique_name)
    snapshots = SnapshotStore(redis_client, keys)
    # An operator's snapshot, older than every periodic one: retention leaves it alone.
    manual = await snapshots.create("v1", Checkpoint(b"state", {}, time.time()), note="mine")
    config = dataclasses.replace(
        learn_config(kafka_bootstrap, redis_url, unique_name, topic, tmp_path),
        snapshot_interval_s=0.2,
        snapshot_keep=2,
    )
    seen: dict[str, SnapshotRecord] = {}

    async def periodic() -> list[SnapshotRecord]:
        records = [s for s in await snapshots.list() if s.kind == "periodic"]
        seen.update((s.id, s) for s in records)
        return records

    async def snapshotted(positions: dict[str, int]) -> bool:
        return any(s.positions == positions for s in await periodic())

    produced: list[Event] = []
    async with learner(config) as task:
        for part in parts:
            await produce_to_partitions(kafka_bootstrap, topic, part, first_source=len(produced))
            produced += part
            await wait_for(partial(snapshotted, end_positions(topic, produced)), 60, task)
        before_idle = set(seen)
        # Nothing new to learn: a second of timer ticks takes no snapshot of the same state.
        await asyncio.sleep(1.0)
        assert {s.id for s in await periodic()} <= before_idle
    kept = await periodic()
    assert len(seen) >= len(parts) and len(kept) == 2
    newest = sorted(seen.values(), key=lambda s: s.created)[-2:]
    assert [s.id for s in kept] == [s.id for s in newest]
    assert kept[-1].positions == end_positions(topic, events)
    assert await snapshots.get(manual.id) == manual
    # A periodic snapshot is a whole learner state at its positions.
    state_blob = await snapshots.state(kept[-1].id)
    assert state_blob is not None
    state = LearnerState.from_bytes(state_blob)
    assert state.positions == kept[-1].positions
    assert state.events_learned == expected_learning(events)[0]
    # `reelfeed snapshot prune`: manual snapshots go only when asked for.
    env = {"REELFEED_REDIS_URL": redis_url, "REELFEED_REDIS_PREFIX": unique_name}
    pruned = await cli(capsys, env, "prune", "--version", "v1", "--keep", "1")
    assert pruned == {"version": "v1", "deleted": [kept[0].id]}
    listed = await cli(capsys, env, "list", "--version", "v1", "--kind", "periodic")
    assert isinstance(listed, list) and [s["id"] for s in listed] == [kept[1].id]
    pruned = await cli(capsys, env, "prune", "--version", "v1", "--keep", "1", "--include-manual")
    assert pruned == {"version": "v1", "deleted": [manual.id]}


async def test_retention_keeps_a_snapshot_that_later_ones_descend_from(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    snapshots = SnapshotStore(redis_client, KeySchema(unique_name))

    async def periodic(parent: str | None = None) -> SnapshotRecord:
        checkpoint = Checkpoint(b"state", {"ev:0": 1}, time.time())
        return await snapshots.create("v1", checkpoint, parent=parent, kind="periodic")

    root = await periodic()
    # The version was restored from `root`: what it snapshots next descends from it.
    middle, newest = await periodic(root.id), await periodic(root.id)
    other_version = await snapshots.create(
        "v2", Checkpoint(b"state", {}, time.time()), kind="periodic"
    )
    assert await snapshots.prune("v1", keep=1) == [middle.id]
    assert [s.id for s in await snapshots.list()] == [root.id, newest.id, other_version.id]
    assert [s.id for s in await snapshots.lineage(newest.id)] == [newest.id, root.id]
