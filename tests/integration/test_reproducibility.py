"""Reproducibility: a snapshot plus the events up to a watermark give back the model.

The learner runs on the real stack (its loop, in this process): it learns a first part
of the events, is snapshotted at a batch boundary, then learns the rest as it arrives
and publishes an item matrix whose positions (the watermark a provenance record
carries) cover everything. The test restores the snapshot's state, replays the events
topic up to that watermark and compares with what the live learner had at the
watermark: the published item matrix and the user rows in Redis.

What it finds (and asserts):

- Replayed in the live learner's micro-batches, the model is the same bit for bit:
  item factors, biases, popularity and every user row. Everything that draws random
  numbers (new vectors, negative samples, prequential sampling) keeps its generator in
  the pickled state, and numpy's float32 arithmetic gives the same bits on one machine
  for the same operations on the same shapes.
- Replayed in other micro-batches, every count is the same (positions, events learned,
  per-user event counts, the movies known) but the factors are not, and not within any
  small tolerance: they differ by about 90% of their norm. The batch decides which
  events are learned together from the same parameters (``OnlineMF.learn_many`` learns
  a batch in waves), how the seeded sampler's draws are cut into negatives, and in
  which order the partitions' events interleave (hence which new row gets which initial
  vector). The live learner's batches are whatever Kafka's fetches returned; they are
  not recorded, so the test records them from the learner's per-batch commits. A replay
  without them (``snapshot restore``, or reading the topic afresh) reproduces the counts
  exactly and the factors only statistically.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from reelfeed.buildinfo import code_sha, package_versions
from reelfeed.infra import create_topics
from state import Checkpoint, ItemMatrix, KeySchema, LearnerRequest, ModelStore, SnapshotStore
from stream.codec import encode_event, event_key
from stream.events import Event
from stream.learn import LearnConfig, _messages, run_learner
from stream.learner import EventMessage, LearnerState, LearnProcessor
from stream.processor import SOURCE_HEADER
from tests.integration.test_learn_worker import events_of, expected_learning

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
PARAMS = {"n_factors": 16, "negatives": 4}


def partition_of(event: Event) -> int:
    """Events go to ``user % PARTITIONS``: tests know each partition's contents."""
    return event.user_id % PARTITIONS


async def produce_to_partitions(
    bootstrap: str, topic: str, events: Sequence[Event], first_source: int = 0, again: int = 0
) -> list[tuple[Event, bool]]:
    """Events as ingest publishes them (source header included), to known partitions;
    then the last ``again`` of them once more with the same source position, as ingest
    does after a crash. Returns what was sent, in order, with a duplicate flag."""
    sent = [(source, event, False) for source, event in enumerate(events, start=first_source)]
    sent += [(source, event, True) for source, event, _ in sent[len(sent) - again :]]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for source, event, _ in sent:
            await producer.send(
                topic,
                encode_event(event),
                key=event_key(event),
                partition=partition_of(event),
                headers=[(SOURCE_HEADER, f"movielog:0:{source}".encode())],
            )
        await producer.flush()
    finally:
        await producer.stop()
    return [(event, duplicate) for _, event, duplicate in sent]


def learn_config(kafka: str, redis_url: str, prefix: str, topic: str, datadir: Path) -> LearnConfig:
    return LearnConfig(
        kafka_bootstrap=kafka,
        redis_url=redis_url,
        redis_prefix=prefix,
        events_topic=topic,
        datadir=datadir,
        version="v1",
        model_params=PARAMS,
        publish_interval_s=0.3,
        # Checkpoints only when asked (and on the way out): the test places them.
        checkpoint_interval_s=3600.0,
        code_sha=code_sha({}),
        packages=package_versions(),
    )


@contextlib.asynccontextmanager
async def learner(config: LearnConfig) -> AsyncIterator[asyncio.Task[LearnerState]]:
    """The learn worker's loop, in this process; stopped (and checkpointed) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_learner(config, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def wait_for(
    condition: Callable[[], Awaitable[object]], timeout: float, task: asyncio.Task[LearnerState]
) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            if task.done():
                task.result()  # raises what stopped the learner
                raise AssertionError("the learner stopped")
            await asyncio.sleep(0.05)


async def matrix_at(store: ModelStore, positions: dict[str, int]) -> ItemMatrix | None:
    matrix = await store.load_matrix()
    return matrix if matrix is not None and matrix.positions == positions else None


def end_positions(topic: str, events: Sequence[Event]) -> dict[str, int]:
    counts = [0] * PARTITIONS
    for event in events:
        counts[partition_of(event)] += 1
    return {f"{topic}:{p}": counts[p] - 1 for p in range(PARTITIONS) if counts[p]}


class _Discard:
    """A ``ModelWriter`` that keeps nothing: the replay is compared in memory."""

    async def commit(self, users: object, items: object, positions: object) -> None:
        return None

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        return 0

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


async def read_messages(
    bootstrap: str, topic: str, positions: dict[str, int], watermark: dict[str, int]
) -> list[EventMessage]:
    """The topic after ``positions`` up to ``watermark``, by partition then offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    messages: list[EventMessage] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, positions.get(f"{topic}:{tp.partition}", -1) + 1)
        reached = dict(positions)
        async with asyncio.timeout(30):
            while any(reached.get(name, -1) < offset for name, offset in watermark.items()):
                for message in _messages(await consumer.getmany(timeout_ms=100)):
                    name = f"{message.topic}:{message.partition}"
                    if message.offset <= watermark.get(name, -1):
                        messages.append(message)
                        reached[name] = message.offset
    finally:
        await consumer.stop()
    return sorted(messages, key=lambda m: (m.partition, m.offset))


def cut(
    messages: Sequence[EventMessage], positions: dict[str, int], ends: Sequence[dict[str, int]]
) -> list[list[EventMessage]]:
    """The messages in the learner's batches, given the positions after each batch (a
    batch holds its partitions' messages in partition order, as ``_messages`` puts them)."""
    batches = []
    before = dict(positions)
    for after in ends:
        batch = [
            m
            for m in messages
            if before.get(f"{m.topic}:{m.partition}", -1)
            < m.offset
            <= after.get(f"{m.topic}:{m.partition}", -1)
        ]
        batches.append(batch)
        before = dict(after)
    return batches


async def replay(snapshot_state: bytes, batches: Sequence[Sequence[EventMessage]]) -> LearnerState:
    state = LearnerState.from_bytes(snapshot_state)
    processor = LearnProcessor(state, _Discard(), "replay")
    for batch in batches:
        await processor.process(batch)
    return state


def replay_user_rows(state: LearnerState, users: Sequence[int]) -> dict[int, np.ndarray]:
    model = state.model
    rows = {}
    for user in users:
        vector = model.user_vector(user)
        assert vector is not None
        row = np.empty(vector.shape[0] + 1, dtype="<f4")
        row[0] = model.user_events(user)
        row[1:] = vector
        rows[int(user)] = row
    return rows


async def test_replaying_a_snapshot_to_a_watermark_gives_the_live_factors(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = events_of(700, seed=31)
    third = len(events) // 3
    parts = [events[:third], events[third : 2 * third], events[2 * third :]]
    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: PARTITIONS})
    config = learn_config(kafka_bootstrap, redis_url, unique_name, topic, tmp_path)
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    snapshots = SnapshotStore(redis_client, keys)

    # Where each of the live learner's micro-batches ended: it commits every batch with
    # the positions it reached. Kafka's fetches decide these; the replay needs them.
    batch_ends: list[dict[str, int]] = []
    commit = ModelStore.commit

    async def recording_commit(
        self: ModelStore, users: Any, items: Any, positions: Mapping[str, int]
    ) -> None:
        if self.version == "v1" and self._keys.prefix == unique_name:
            batch_ends.append(dict(positions))
        await commit(self, users, items, positions)

    monkeypatch.setattr(ModelStore, "commit", recording_commit)

    async with learner(config) as task:
        await produce_to_partitions(kafka_bootstrap, topic, parts[0])
        first_end = end_positions(topic, parts[0])
        await wait_for(lambda: matrix_at(store, first_end), 60, task)
        # `reelfeed snapshot create`: the learner checkpoints between two batches.
        request = LearnerRequest("checkpoint")
        await snapshots.send("v1", request)

        async def answered() -> bool:
            checkpoint = await store.load_checkpoint()
            return checkpoint is not None and checkpoint.created >= request.sent

        await wait_for(answered, 30, task)
        checkpoint = await store.load_checkpoint()
        assert checkpoint is not None and checkpoint.positions == first_end
        snapshot = await snapshots.create("v1", checkpoint)

        # The rest arrives while the learner learns, in two bursts.
        await produce_to_partitions(kafka_bootstrap, topic, parts[1], first_source=third)
        await asyncio.sleep(0.05)
        await produce_to_partitions(kafka_bootstrap, topic, parts[2], first_source=2 * third)
        watermark = end_positions(topic, events)
        await wait_for(lambda: matrix_at(store, watermark), 60, task)
        live_matrix = await matrix_at(store, watermark)
        assert live_matrix is not None
    snapshot_state = await snapshots.state(snapshot.id)
    assert snapshot_state is not None

    messages = await read_messages(kafka_bootstrap, topic, snapshot.positions, watermark)
    after_snapshot = [
        ends for ends in batch_ends if sum(ends.values()) > sum(snapshot.positions.values())
    ]
    assert after_snapshot[-1] == watermark
    batches = cut(messages, snapshot.positions, after_snapshot)
    replayed = await replay(snapshot_state, batches)
    assert replayed.positions == watermark
    total, per_user = expected_learning(events)
    assert replayed.events_learned == total
    assert {u: replayed.model.user_events(u) for u in per_user} == dict(per_user)

    # Bit for bit: the item matrix the live learner published at the watermark...
    matrix = LearnProcessor(replayed, _Discard(), "replay").item_matrix()
    assert matrix.movie_ids == live_matrix.movie_ids
    assert matrix.factors.tobytes() == live_matrix.factors.tobytes()
    assert matrix.biases.tobytes() == live_matrix.biases.tobytes()
    assert live_matrix.popularity is not None and matrix.popularity is not None
    assert matrix.popularity.tobytes() == live_matrix.popularity.tobytes()
    # ...and every user row it committed to Redis.
    live_rows = await store.users(per_user)
    assert set(live_rows) == set(per_user)
    replay_rows = replay_user_rows(replayed, list(per_user))
    assert all(replay_rows[u].tobytes() == live_rows[u].tobytes() for u in per_user)

    # Other batches: the same counts, other factors (by far more than rounding).
    small = [messages[i : i + 97] for i in range(0, len(messages), 97)]
    assert [len(batch) for batch in small] != [len(batch) for batch in batches]
    rebatched = await replay(snapshot_state, small)
    assert rebatched.positions == watermark
    assert rebatched.events_learned == total
    assert {u: rebatched.model.user_events(u) for u in per_user} == dict(per_user)
    assert set(rebatched.model.item_ids) == set(replayed.model.item_ids)
    other = LearnProcessor(rebatched, _Discard(), "replay").item_matrix()
    order = [other.movie_ids.index(movie) for movie in matrix.movie_ids]
    difference = np.linalg.norm(other.factors[order] - matrix.factors) / np.linalg.norm(
        matrix.factors
    )
    print(f"relative difference of the item factors with other batches: {difference:.3f}")
    assert difference > 1e-3
