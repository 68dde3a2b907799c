"""Batch cuts: the learner records where its batches end and a replay follows them."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state import Checkpoint, ItemMatrix, KeySchema, ModelStore
from state.model_store import BatchCut
from stream.codec import encode_event
from stream.events import Rejected
from stream.learn import LearnConfig, new_state
from stream.learner import BatchCutter, EventMessage, LearnerState, LearnProcessor
from stream.parser import parse_line
from tests.integration.workers import synthetic_stream

TOPIC = "events"
PARTITIONS = 2


class RecordingWriter:
    """A ``ModelWriter`` that keeps every commit, with the cut it carried."""

    def __init__(self) -> None:
        self.commits: list[tuple[dict[str, int], BatchCut | None]] = []
        self.rows: dict[int, np.ndarray] = {}

    async def commit(
        self,
        users: Mapping[int, np.ndarray],
        items: Mapping[str, np.ndarray],
        positions: Mapping[str, int],
        cut: BatchCut | None = None,
    ) -> None:
        self.rows.update(users)
        self.commits.append((dict(positions), cut))

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        return 1

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


def message(partition: int, offset: int, value: bytes = b"") -> EventMessage:
    return EventMessage(TOPIC, partition, offset, value)


def topic_messages(sessions: int, seed: int) -> list[EventMessage]:
    """Encoded events spread over the partitions by user, as ingest publishes them."""
    offsets = [0] * PARTITIONS
    messages = []
    for source, line in enumerate(synthetic_stream(sessions, seed)):
        event = parse_line(line)
        if isinstance(event, Rejected):
            continue
        partition = event.user_id % PARTITIONS
        messages.append(
            EventMessage(
                TOPIC,
                partition,
                offsets[partition],
                encode_event(event),
                f"movielog:0:{source}".encode(),
            )
        )
        offsets[partition] += 1
    return messages


def fetches(messages: Sequence[EventMessage], seed: int) -> list[list[EventMessage]]:
    """The messages as some run of Kafka fetches returns them: each partition in offset
    order, the partitions advancing unevenly, each fetch sorted by partition."""
    rng = random.Random(seed)
    queues = {p: [m for m in messages if m.partition == p] for p in range(PARTITIONS)}
    batches = []
    while any(queues.values()):
        batch = []
        for partition, queue in queues.items():
            take = rng.randint(0, 40) if rng.random() < 0.8 else 0
            batch += queue[:take]
            queues[partition] = queue[take:]
        batches.append(sorted(batch, key=lambda m: m.partition))
    return [batch for batch in batches if batch]


def fresh_state() -> LearnerState:
    config = LearnConfig(
        "unused:0", "redis://unused", "t", TOPIC, Path("."), "v1", {"n_factors": 8}
    )
    return new_state(config)


def snapshot_of(state: LearnerState) -> LearnerState:
    return LearnerState.from_bytes(state.to_bytes())


def assert_same_model(one: LearnerState, other: LearnerState) -> None:
    a, b = one.model, other.model
    assert list(a.item_ids) == list(b.item_ids)
    assert np.array_equal(a.item_matrix, b.item_matrix)
    assert np.array_equal(a.item_biases, b.item_biases)
    assert np.array_equal(a.item_popularity, b.item_popularity)


def test_cutter_gives_the_batches_that_ended_at_the_cuts() -> None:
    cuts = [
        BatchCut("h", 1, {"events:0": 1}),
        BatchCut("h", 2, {"events:0": 1, "events:1": 2}),
        BatchCut("h", 3, {"events:0": 4, "events:1": 2}),
    ]
    cutter = BatchCutter(cuts, {})
    cutter.add([message(1, 0), message(1, 1), message(1, 2), message(1, 3)])
    assert cutter.ready() == []
    # Partition 1 is past the first cut (which holds none of it): pause it.
    assert cutter.waiting() == {"events:1"}
    cutter.add([message(0, 0), message(0, 1), message(0, 2)])
    ready = cutter.ready()
    assert [([(m.partition, m.offset) for m in batch], cut.batch) for batch, cut in ready] == [
        ([(0, 0), (0, 1)], 1),
        ([(1, 0), (1, 1), (1, 2)], 2),
    ]
    assert cutter.replaying and cutter.waiting() == {"events:1"}
    cutter.add([message(0, 3), message(0, 4), message(0, 5)])
    ((batch, cut),) = cutter.ready()
    assert [(m.partition, m.offset) for m in batch] == [(0, 2), (0, 3), (0, 4)]
    assert not cutter.replaying and cutter.waiting() == set()
    assert [(m.partition, m.offset) for m in cutter.drain()] == [(0, 5), (1, 3)]


def test_cutter_drops_what_the_state_has_learned() -> None:
    cutter = BatchCutter([BatchCut("h", 5, {"events:0": 3})], {"events:0": 1})
    cutter.add([message(0, 0), message(0, 1), message(0, 2), message(0, 3)])
    ((batch, _),) = cutter.ready()
    assert [m.offset for m in batch] == [2, 3]


@settings(max_examples=30, deadline=None)
@given(live_seed=st.integers(0, 10_000), replay_seed=st.integers(0, 10_000))
def test_cutter_rebuilds_the_live_batches_from_any_fetches(
    live_seed: int, replay_seed: int
) -> None:
    messages = [message(p, o) for p in range(PARTITIONS) for o in range(60 + 17 * p)]
    live = fetches(messages, live_seed)
    positions: dict[str, int] = {}
    cuts = []
    for number, batch in enumerate(live, start=1):
        for m in batch:
            positions[f"{m.topic}:{m.partition}"] = m.offset
        cuts.append(BatchCut("h", number, dict(positions)))
    cutter = BatchCutter(cuts, {})
    replayed = []
    for fetch in fetches(messages, replay_seed):
        # What the consumer would not return while a partition is paused comes later.
        cutter.add(fetch)
        replayed += [batch for batch, _ in cutter.ready()]
    assert replayed == live
    assert cutter.drain() == []


async def test_processor_numbers_its_batches_and_records_their_cuts() -> None:
    writer = RecordingWriter()
    state = fresh_state()
    start = state.start_history()
    processor = LearnProcessor(state, writer, "v1", record_cuts=True)
    batches = fetches(topic_messages(40, seed=5), seed=1)[:4]
    for batch in batches[:3]:
        report = await processor.process(batch)
        assert report.cut == BatchCut(start.history, state.batches, dict(state.positions))
    assert [cut for _, cut in writer.commits] == [
        BatchCut(start.history, n, positions) for n, (positions, _) in enumerate(writer.commits, 1)
    ]
    # Messages learned already move nothing: no batch, no cut.
    again = await processor.process(batches[2])
    assert again.cut is None and state.batches == 3 and len(writer.commits) == 3
    # A replay along recorded cuts learns the next batch without recording it again.
    replay = await processor.process(batches[3], record=False)
    assert replay.cut is not None and replay.cut.batch == 4
    assert writer.commits[-1] == (replay.cut.positions, None)


async def test_replay_along_the_recorded_cuts_gives_the_live_model_bit_for_bit() -> None:
    messages = topic_messages(120, seed=7)
    live_batches = fetches(messages, seed=2)
    assert len(live_batches) > 6
    writer = RecordingWriter()
    live = fresh_state()
    live.start_history()
    processor = LearnProcessor(live, writer, "v1", record_cuts=True)
    snapshot = None
    for number, batch in enumerate(live_batches):
        if number == 3:
            snapshot = live.to_bytes()
        await processor.process(batch)
    assert snapshot is not None
    recorded = [cut for _, cut in writer.commits if cut is not None]

    def replay_state() -> LearnerState:
        return LearnerState.from_bytes(snapshot)

    # The restored state follows the cuts recorded after its own, whatever the fetches.
    restored = replay_state()
    pending = [cut for cut in recorded if cut.history == restored.history]
    pending = pending[restored.batches :]
    replayer = LearnProcessor(restored, RecordingWriter(), "v1", record_cuts=True)
    cutter = BatchCutter(pending, restored.positions)
    after_snapshot = [m for batch in live_batches[3:] for m in batch]
    for fetch in fetches(after_snapshot, seed=99):
        cutter.add(fetch)
        for batch, cut in cutter.ready():
            assert (await replayer.process(batch, record=False)).cut == cut
    assert not cutter.replaying
    assert restored.positions == live.positions and restored.batches == live.batches
    assert_same_model(restored, live)
    assert writer.rows
    for user in writer.rows:
        assert restored.model.user_events(user) == live.model.user_events(user)
        assert np.array_equal(restored.model.user_vector(user), live.model.user_vector(user))

    # The same messages in the batches of other fetches: other factors.
    rebatched = replay_state()
    other = LearnProcessor(rebatched, RecordingWriter(), "v1")
    for fetch in fetches(after_snapshot, seed=99):
        await other.process(fetch)
    assert rebatched.events_learned == live.events_learned
    assert not np.array_equal(rebatched.model.item_matrix, live.model.item_matrix)


def test_a_checkpoint_from_before_cuts_is_on_no_recorded_history() -> None:
    state = fresh_state()
    del state.__dict__["history"], state.__dict__["batches"]
    restored = LearnerState.from_bytes(state.to_bytes())
    assert (restored.history, restored.batches) == ("", 0)


@pytest.mark.parametrize("kept", [0, -1])
def test_model_store_refuses_to_keep_no_cuts(kept: int) -> None:
    with pytest.raises(ValueError, match="cuts_kept"):
        ModelStore(None, KeySchema("t"), "v1", cuts_kept=kept)  # type: ignore[arg-type]
