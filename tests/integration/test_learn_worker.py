"""The learn worker as a real process: learns the events topic into Redis, exactly once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from online_model.feedback import FeedbackWeights
from reelfeed.infra import create_topics
from state import KeySchema, LearnerRequest, ModelStore, SnapshotStore, VersionRegistry
from state.model_store import BatchCut
from stream.codec import encode_event, event_key
from stream.events import Event, Rejected
from stream.feedback import WatchProgress
from stream.learn import LearnConfig, _replay_plan, new_state
from stream.learner import LearnerState, LearnProcessor
from stream.parser import parse_line
from stream.processor import SOURCE_HEADER
from tests.integration.workers import WorkerProcess, synthetic_stream, wait_until

pytestmark = pytest.mark.integration

PARAMS = '{"n_factors": 16, "negatives": 4}'


def learn_env(kafka: str, redis_url: str, prefix: str, topic: str, **extra: str) -> dict[str, str]:
    return {
        "REELFEED_KAFKA_BOOTSTRAP": kafka,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": prefix,
        "REELFEED_EVENTS_TOPIC": topic,
        "REELFEED_LEARN_VERSION": "v1",
        "REELFEED_LEARN_PARAMS": PARAMS,
        "REELFEED_LEARN_METRICS_PORT": "0",
        "REELFEED_LEARN_PUBLISH_INTERVAL": "0.5",
        **extra,
    }


def events_of(sessions: int, seed: int) -> list[Event]:
    parsed = [parse_line(line) for line in synthetic_stream(sessions, seed)]
    return [event for event in parsed if not isinstance(event, Rejected)]


async def produce_events(
    bootstrap: str, topic: str, events: list[Event], duplicates: int, first_offset: int = 0
) -> None:
    """Events as ingest publishes them, then some of them again with the same source.

    ``first_offset`` is the raw-line offset of the first event: successive calls must
    continue the source positions, or the learner rightly takes them for duplicates.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            (event, f"movielog:0:{offset}".encode())
            for offset, event in enumerate(events, start=first_offset)
        ]
        again = random.Random(3).sample(sent, duplicates)
        for event, source in [*sent, *again]:
            await producer.send(
                topic, encode_event(event), key=event_key(event), headers=[(SOURCE_HEADER, source)]
            )
        await producer.flush()
    finally:
        await producer.stop()


def expected_learning(events: list[Event]) -> tuple[int, Counter[int]]:
    progress = WatchProgress(FeedbackWeights(), lambda movie: None)
    per_user: Counter[int] = Counter()
    for event in events:
        for learning in progress.learn(event):
            per_user[learning.user_id] += 1
    return sum(per_user.values()), per_user


async def learned_everything(store: ModelStore, expected_messages: int) -> bool:
    positions = await store.positions()
    return sum(offset + 1 for offset in positions.values()) >= expected_messages


def until(check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    return check


async def final_state(store: ModelStore) -> LearnerState:
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    return LearnerState.from_bytes(checkpoint.state)


async def test_learner_learns_each_event_once_and_publishes_a_matrix(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    events = events_of(300, seed=11)
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    await produce_events(kafka_bootstrap, topic, events, duplicates=40)
    total, per_user = expected_learning(events)
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    worker = WorkerProcess(
        "learn", learn_env(kafka_bootstrap, redis_url, unique_name, topic), tmp_path, "learn"
    )
    worker.start()
    try:
        await wait_until(until(lambda: learned_everything(store, len(events) + 40)), 90, worker)
        await wait_until(until(lambda: _matrix_published(store)), 30, worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    state = await final_state(store)
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    matrix = await store.load_matrix()
    assert matrix is not None and matrix.factors.shape[1] == 16
    assert set(matrix.movie_ids) == {e.movie_id for e in events if hasattr(e, "minute")} | {
        e.movie_id for e in events if hasattr(e, "rating")
    }
    record = await VersionRegistry(redis_client, KeySchema(unique_name)).get("v1")
    assert record is not None and record.config == {"seed": 0, "n_factors": 16, "negatives": 4}
    assert record.code_sha != "unknown" and record.packages["river"]
    some_user = next(iter(per_user))
    context = await store.user_context(some_user)
    assert context.vector is not None and context.n_events == per_user[some_user]


async def _matrix_published(store: ModelStore) -> bool:
    return await store.matrix_revision() > 0


@pytest.mark.slow
async def test_sigkill_then_restart_learns_what_an_uninterrupted_run_learns(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    events = events_of(1200, seed=12)
    third = len(events) // 3
    parts = [events[:third], events[third : 2 * third], events[2 * third :]]
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    total, per_user = expected_learning(events)
    # Checkpoints only on request: the test decides where the last one lies.
    env = learn_env(
        kafka_bootstrap, redis_url, unique_name, topic, REELFEED_LEARN_CHECKPOINT_INTERVAL="3600"
    )
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    snapshots = SnapshotStore(redis_client, KeySchema(unique_name))
    first = WorkerProcess("learn", env, tmp_path, "first")
    first.start()
    try:
        await produce_events(kafka_bootstrap, topic, parts[0], duplicates=20)
        await wait_until(until(lambda: learned_everything(store, len(parts[0]) + 20)), 90, first)
        request = LearnerRequest("checkpoint")
        await snapshots.send("v1", request)
        await wait_until(until(lambda: _checkpoint_after(store, request.sent)), 30, first)
        # Learned and committed to Redis, but not in any checkpoint: the crash loses the
        # learner's memory of these, and the restart must learn them again, once.
        await produce_events(
            kafka_bootstrap, topic, parts[1], duplicates=0, first_offset=len(parts[0])
        )
        learned_before_kill = len(parts[0]) + 20 + len(parts[1])
        await wait_until(until(lambda: learned_everything(store, learned_before_kill)), 90, first)
    finally:
        first.kill()
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    assert sum(o + 1 for o in checkpoint.positions.values()) == len(parts[0]) + 20

    await produce_events(
        kafka_bootstrap, topic, parts[2], duplicates=0, first_offset=2 * len(parts[0])
    )
    second = WorkerProcess("learn", env, tmp_path, "second")
    second.start()
    try:
        await wait_until(until(lambda: learned_everything(store, len(events) + 20)), 90, second)
    finally:
        assert second.stop() == 0, second.log_tail()
    state = await final_state(store)
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)


async def _checkpoint_after(store: ModelStore, sent: float) -> bool:
    checkpoint = await store.load_checkpoint()
    return checkpoint is not None and checkpoint.created >= sent


@pytest.mark.slow
async def test_after_sigkill_the_restart_replays_the_recorded_batches_bit_for_bit(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """The killed learner committed user rows batch by batch past its last checkpoint;
    the restart learns those batches again along their recorded cuts, so it ends with
    the very rows the killed one had committed, and records none of them twice."""
    events = events_of(900, seed=13)
    half = len(events) // 2
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    env = learn_env(
        kafka_bootstrap, redis_url, unique_name, topic, REELFEED_LEARN_CHECKPOINT_INTERVAL="3600"
    )
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    snapshots = SnapshotStore(redis_client, KeySchema(unique_name))
    first = WorkerProcess("learn", env, tmp_path, "first")
    first.start()
    try:
        await produce_events(kafka_bootstrap, topic, events[:half], duplicates=0)
        await wait_until(until(lambda: learned_everything(store, half)), 90, first)
        request = LearnerRequest("checkpoint")
        await snapshots.send("v1", request)
        await wait_until(until(lambda: _checkpoint_after(store, request.sent)), 30, first)
        # In several fetches, so in several batches: each waits for the previous one.
        step = (len(events) - half) // 4 + 1
        for start in range(half, len(events), step):
            chunk = events[start : start + step]
            await produce_events(kafka_bootstrap, topic, chunk, duplicates=0, first_offset=start)
            reached = start + len(chunk)
            await wait_until(
                until(lambda reached=reached: learned_everything(store, reached)), 90, first
            )
    finally:
        first.kill()
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    at_checkpoint = LearnerState.from_bytes(checkpoint.state)
    lost = await store.batch_cuts(at_checkpoint.history, at_checkpoint.batches)
    assert lost[0].positions == checkpoint.positions and len(lost) >= 5
    total, per_user = expected_learning(events)
    killed_rows = await store.users(per_user)
    assert set(killed_rows) == set(per_user)

    second = WorkerProcess("learn", env, tmp_path, "second")
    second.start()
    try:

        async def checkpointed_everything() -> bool:
            # Positions in Redis are the killed learner's: ask for checkpoints instead.
            request = LearnerRequest("checkpoint")
            await snapshots.send("v1", request)
            await wait_until(until(lambda: _checkpoint_after(store, request.sent)), 30, second)
            checkpoint = await store.load_checkpoint()
            assert checkpoint is not None
            return sum(o + 1 for o in checkpoint.positions.values()) >= len(events)

        await wait_until(checkpointed_everything, 90, second)
    finally:
        assert second.stop() == 0, second.log_tail()
    state = await final_state(store)
    assert state.events_learned == total
    for user, row in killed_rows.items():
        vector = state.model.user_vector(user)
        assert vector is not None and state.model.user_events(user) == row[0]
        assert np.array_equal(vector.astype("<f4"), row[1:])
    assert (state.history, state.batches) == (at_checkpoint.history, lost[-1].batch)
    assert await store.batch_cuts(at_checkpoint.history, at_checkpoint.batches) == lost


async def test_batch_cuts_are_recorded_with_their_batch_capped_and_read_once(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1", cuts_kept=4)
    await store.record_cut(BatchCut("old", 0, {}))
    for batch in range(1, 6):
        cut = BatchCut("h", batch, {"events:0": 10 * batch})
        await store.commit({}, {}, cut.positions, cut)
    # A commit repeated after a lost reply records its cut twice; it is read once.
    await store.commit({}, {}, cut.positions, cut)
    assert await redis_client.llen(keys.batch_cuts("v1")) == 4
    assert await store.positions() == {"events:0": 50}
    assert [c.batch for c in await store.batch_cuts("h")] == [3, 4, 5]
    assert [c.batch for c in await store.batch_cuts("h", since=4)] == [4, 5]
    assert await store.batch_cuts("old") == []


async def test_a_state_off_its_recorded_line_starts_a_new_history(
    redis_client: aioredis.Redis, unique_name: str, tmp_path: Path
) -> None:
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    config = LearnConfig("unused:0", "redis://unused", unique_name, "events", tmp_path, "v1")
    state = new_state(config)
    state.positions = {"events:0": 10}
    state.batches = 2
    for batch, offset in [(2, 10), (3, 14), (4, 20)]:
        cut = BatchCut(state.history, batch, {"events:0": offset})
        await store.commit({}, {}, cut.positions, cut)
    processor = LearnProcessor(state, store, "v1", record_cuts=True)

    # On its line: the cuts after it are replayed.
    cutter = await _replay_plan(config, store, processor)
    assert cutter.next_cut == BatchCut(state.history, 3, {"events:0": 14})
    assert await store.load_checkpoint() is None

    # Restored past a poisoned range (`--skip-to`): the recorded batches no longer fit.
    line = state.history
    state.positions = {"events:0": 12}
    cutter = await _replay_plan(config, store, processor)
    assert not cutter.replaying
    assert state.history != line and state.batches == 0
    assert await store.batch_cuts(state.history) == [BatchCut(state.history, 0, state.positions)]
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    assert LearnerState.from_bytes(checkpoint.state).history == state.history
