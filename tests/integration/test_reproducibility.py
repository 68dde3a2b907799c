"""Reproducibility: a snapshot plus the events up to a watermark give back the model.

The learner runs on the real stack (its loop, in this process): it learns a first part
of the events, is snapshotted at a batch boundary, then learns the rest as it arrives
and publishes an item matrix whose positions (the watermark a provenance record
carries) cover everything. Then the snapshot is restored (``reelfeed snapshot
restore``) into the running learner, which replays the topic from the snapshot's
positions along the batch cuts it recorded while learning live, and the test compares
what it has at the watermark with what the live learner had there: the published item
matrix and the user rows in Redis.

What it finds (and asserts):

- Replayed along the recorded cuts, the model is the same bit for bit: item factors,
  biases, popularity and every user row. Everything that draws random numbers (new
  vectors, negative samples, prequential sampling) keeps its generator in the pickled
  state, and numpy's float32 arithmetic gives the same bits on one machine for the
  same operations on the same shapes.
- Replayed in other micro-batches, every count is the same (positions, events learned,
  per-user event counts, the movies known) but the factors are not, and not within any
  small tolerance: they differ by about 90% of their norm. The batch decides which
  events are learned together from the same parameters (``OnlineMF.learn_many`` learns
  a batch in waves), how the seeded sampler's draws are cut into negatives, and in
  which order the partitions' events interleave (hence which new row gets which initial
  vector). The live batches are whatever Kafka's fetches returned, which is why the
  learner records where each ended (``ModelStore.batch_cuts``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from reelfeed.buildinfo import code_sha, package_versions
from reelfeed.cli import main
from reelfeed.infra import create_topics
from state import Checkpoint, ItemMatrix, KeySchema, LearnerRequest, ModelStore, SnapshotStore
from stream import metrics
from stream.codec import encode_event, event_key
from stream.events import Event
from stream.learn import LearnConfig, _messages, run_learner
from stream.learner import EventMessage, LearnerState, LearnProcessor
from stream.processor import SOURCE_HEADER
from tests.integration.test_learn_worker import events_of, expected_learning, learn_env

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
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                if task.done():
                    task.result()  # raises what stopped the learner
                    raise AssertionError("the learner stopped")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not reached within {timeout} s; {_learner_seen()}") from None


_last_matrix_positions: dict[str, int] | None = None


async def matrix_at(store: ModelStore, positions: dict[str, int]) -> ItemMatrix | None:
    global _last_matrix_positions
    matrix = await store.load_matrix()
    _last_matrix_positions = None if matrix is None else dict(matrix.positions)
    return matrix if matrix is not None and matrix.positions == positions else None


def _learner_seen() -> str:
    """What the learner had when a wait ran out: the last published positions and its
    consumer lag per partition (from this process's metrics)."""
    lags = {
        sample.labels["partition"]: sample.value
        for family in metrics.LEARN_CONSUMER_LAG.collect()
        for sample in family.samples
        if sample.labels.get("version") == "v1"
    }
    return f"last published matrix positions {_last_matrix_positions}, consumer lag {lags}"


def end_positions(topic: str, events: Sequence[Event]) -> dict[str, int]:
    counts = [0] * PARTITIONS
    for event in events:
        counts[partition_of(event)] += 1
    return {f"{topic}:{p}": counts[p] - 1 for p in range(PARTITIONS) if counts[p]}


class _Discard:
    """A ``ModelWriter`` that keeps nothing: the replay is compared in memory."""

    async def commit(
        self, users: object, items: object, positions: object, cut: object = None
    ) -> None:
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


async def replay(snapshot_state: bytes, batches: Sequence[Sequence[EventMessage]]) -> LearnerState:
    state = LearnerState.from_bytes(snapshot_state)
    processor = LearnProcessor(state, _Discard(), "replay")
    for batch in batches:
        await processor.process(batch)
    return state


def same_matrix(one: ItemMatrix, other: ItemMatrix) -> bool:
    return (
        one.movie_ids == other.movie_ids
        and np.array_equal(one.factors, other.factors)
        and np.array_equal(one.biases, other.biases)
        and one.popularity is not None
        and other.popularity is not None
        and np.array_equal(one.popularity, other.popularity)
    )


async def test_restoring_a_snapshot_replays_to_the_live_factors_bit_for_bit(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
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
    total, per_user = expected_learning(events)

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

        # The rest arrives while the learner learns, in two bursts learned apart.
        await produce_to_partitions(kafka_bootstrap, topic, parts[1], first_source=third)
        second_end = end_positions(topic, events[: 2 * third])

        async def learned_second() -> bool:
            return await store.positions() == second_end

        await wait_for(learned_second, 60, task)
        await produce_to_partitions(kafka_bootstrap, topic, parts[2], first_source=2 * third)
        watermark = end_positions(topic, events)
        await wait_for(lambda: matrix_at(store, watermark), 60, task)
        live_matrix = await matrix_at(store, watermark)
        assert live_matrix is not None
        live_revision = live_matrix.revision
        live_rows = await store.users(per_user)
        assert set(live_rows) == set(per_user)

        # The live learner recorded where its batches after the snapshot ended.
        snapshot_state = await snapshots.state(snapshot.id)
        assert snapshot_state is not None
        at_snapshot = LearnerState.from_bytes(snapshot_state)
        recorded = await store.batch_cuts(at_snapshot.history, at_snapshot.batches)
        assert recorded[0].positions == snapshot.positions
        assert len(recorded) >= 3 and recorded[-1].positions == watermark

        # `reelfeed snapshot restore` while the learner runs: it reloads the snapshot
        # and replays from its positions, every event already on the topic.
        env = learn_env(kafka_bootstrap, redis_url, unique_name, topic)
        assert await asyncio.to_thread(main, ["snapshot", "restore", snapshot.id], env) == 0

        async def replayed_to_watermark() -> ItemMatrix | None:
            matrix = await matrix_at(store, watermark)
            return matrix if matrix is not None and matrix.revision > live_revision else None

        await wait_for(replayed_to_watermark, 60, task)
        replayed_matrix = await replayed_to_watermark()
        assert replayed_matrix is not None
        replayed_rows = await store.users(per_user)
    replayed = await final_state_of(store)
    assert replayed.positions == watermark
    assert replayed.events_learned == total
    assert {u: replayed.model.user_events(u) for u in per_user} == dict(per_user)
    # The replay stayed on the recorded line, and recorded nothing twice.
    assert (replayed.history, replayed.batches) == (at_snapshot.history, recorded[-1].batch)
    assert await store.batch_cuts(at_snapshot.history, at_snapshot.batches) == recorded

    # Bit for bit: the item matrix published at the watermark...
    assert same_matrix(replayed_matrix, live_matrix)
    # ...and every user row committed to Redis.
    assert set(replayed_rows) == set(per_user)
    assert all(np.array_equal(replayed_rows[u], live_rows[u]) for u in per_user)

    # Other batches: the same counts, other factors (by far more than rounding).
    messages = await read_messages(kafka_bootstrap, topic, snapshot.positions, watermark)
    small = [messages[i : i + 97] for i in range(0, len(messages), 97)]
    rebatched = await replay(snapshot_state, small)
    assert rebatched.positions == watermark
    assert rebatched.events_learned == total
    assert {u: rebatched.model.user_events(u) for u in per_user} == dict(per_user)
    other = LearnProcessor(rebatched, _Discard(), "replay").item_matrix()
    assert set(other.movie_ids) == set(live_matrix.movie_ids)
    order = [other.movie_ids.index(movie) for movie in live_matrix.movie_ids]
    difference = np.linalg.norm(other.factors[order] - live_matrix.factors) / np.linalg.norm(
        live_matrix.factors
    )
    print(f"relative difference of the item factors with other batches: {difference:.3f}")
    assert difference > 1e-3


async def final_state_of(store: ModelStore) -> LearnerState:
    """The state the learner checkpointed on its way out."""
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    return LearnerState.from_bytes(checkpoint.state)
