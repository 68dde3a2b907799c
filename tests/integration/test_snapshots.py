"""Snapshots on the real stack: freeze a learning version, export it, restore it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from reelfeed.cli import main
from reelfeed.infra import create_topics
from state import KeySchema, ModelStore, SnapshotStore, VersionRegistry
from tests.integration.test_learn_worker import (
    events_of,
    expected_learning,
    final_state,
    learn_env,
    learned_everything,
    produce_events,
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
