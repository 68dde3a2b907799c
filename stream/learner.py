"""The learner's state and its micro-batch step, apart from Kafka and Faust.

``LearnerState`` is everything a learner knows: the model, the watch progress, the
positions it consumed and, per source partition, the last source offset it learned
(ingest may publish an event twice after a crash; the second copy is dropped here).
It pickles whole: a checkpoint is this state at a batch boundary.

``LearnProcessor.process`` takes messages of ``reelfeed.events`` in partition order,
learns them as one micro-batch and commits what changed (user rows and positions) to
Redis in one transaction, with the batch's cut (where it ended) when asked to record
it; ``tick`` publishes the item matrix and checkpoints on their intervals.

Learning is deterministic given the state and the batches, but the batches are
whatever Kafka's fetches returned. ``BatchCutter`` cuts a replay along the recorded
cuts, so a replay (after a restore, or a restart from a checkpoint) learns the very
batches the first pass learned and ends with the same factors, bit for bit.
"""

from __future__ import annotations

import logging
import pickle
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
from river import stats

from online_model.mf import OnlineMF
from state import Checkpoint, ItemMatrix, user_row
from state.model_store import BatchCut
from stream import metrics
from stream.codec import EventDecodeError, decode_event
from stream.feedback import WatchProgress
from stream.processor import retry_while_unreachable

__all__ = [
    "BatchCutter",
    "EventMessage",
    "LearnProcessor",
    "LearnReport",
    "LearnerState",
    "ModelWriter",
    "PatientWriter",
    "parse_source",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One message of ``reelfeed.events`` and where it was read."""

    topic: str
    partition: int
    offset: int
    value: bytes
    #: The ingest source position header (``b"<topic>:<partition>:<offset>"``), if any.
    source: bytes | None = None


def parse_source(source: bytes | None) -> tuple[str, int] | None:
    """``b"movielog:3:120"`` -> ``("movielog:3", 120)``; ``None`` when absent or malformed.

    Examples
    --------
    >>> parse_source(b"movielog7:3:120")
    ('movielog7:3', 120)
    >>> parse_source(b"nonsense") is None
    True
    """
    if not source:
        return None
    head, _, offset = source.decode(errors="replace").rpartition(":")
    if not head or not offset.isdigit():
        return None
    return head, int(offset)


def new_history() -> str:
    """A fresh name for a line of batches."""
    return uuid.uuid4().hex


@dataclass
class LearnerState:
    """What a learner knows; pickled whole as its checkpoint."""

    model: OnlineMF
    progress: WatchProgress
    #: "<topic>:<partition>" of reelfeed.events -> last offset consumed.
    positions: dict[str, int] = field(default_factory=dict)
    #: "<events partition>|<source topic>:<source partition>" -> last source offset learned.
    source_marks: dict[str, int] = field(default_factory=dict)
    sample_rng: random.Random = field(default_factory=lambda: random.Random(0))
    events_learned: int = 0
    #: Prequential test points and hits, over the learner's life.
    prequential_tests: int = 0
    prequential_hits: int = 0
    #: Recent prequential hit rate, an exponentially weighted mean (about 200 tests).
    recent_hit_rate: stats.EWMean = field(default_factory=lambda: stats.EWMean(0.005))
    #: The line of batches this state is on, and how many batches of it it learned:
    #: with the recorded cuts, what a replay from this state must learn (``BatchCut``).
    history: str = field(default_factory=new_history)
    batches: int = 0

    def start_history(self) -> BatchCut:
        """Start a new line of batches here; return its first cut (batch 0)."""
        self.history = new_history()
        self.batches = 0
        return BatchCut(self.history, 0, dict(self.positions))

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes) -> LearnerState:
        # Checkpoints come from this project's own Redis on loopback: trusted.
        state = pickle.loads(blob)  # noqa: S301
        if not isinstance(state, cls):
            raise TypeError(f"a checkpoint holds a {type(state).__name__}, not a LearnerState")
        # A checkpoint from before batch cuts were recorded is on no recorded line.
        state.__dict__.setdefault("history", "")
        state.__dict__.setdefault("batches", 0)
        return state


@dataclass(frozen=True, slots=True)
class LearnReport:
    messages: int
    replayed: int
    duplicates: int
    undecodable: int
    learned: int
    users_committed: int
    #: Where the batch ended, when it moved the positions on.
    cut: BatchCut | None = None


class ModelWriter(Protocol):
    async def commit(
        self,
        users: Mapping[int, np.ndarray],
        items: Mapping[str, np.ndarray],
        positions: Mapping[str, int],
        cut: BatchCut | None = None,
    ) -> None: ...

    async def publish_matrix(self, matrix: ItemMatrix) -> int: ...

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...


class PatientWriter:
    """A ``ModelWriter`` that waits out an outage of the one it wraps.

    While ``errors`` are raised (the store is unreachable), each call is repeated with
    growing pauses: the learner stops between two batches with its state in memory,
    and goes on with nothing lost or learned twice when the store is back. Every
    write is safe to repeat: rows, positions and checkpoints are stored whole, and a
    matrix published twice only takes one more revision number.
    """

    def __init__(self, writer: ModelWriter, errors: tuple[type[BaseException], ...]) -> None:
        self._writer = writer
        self._errors = errors

    async def commit(
        self,
        users: Mapping[int, np.ndarray],
        items: Mapping[str, np.ndarray],
        positions: Mapping[str, int],
        cut: BatchCut | None = None,
    ) -> None:
        await retry_while_unreachable(
            lambda: self._writer.commit(users, items, positions, cut),
            "committing a batch",
            self._errors,
        )

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        return await retry_while_unreachable(
            lambda: self._writer.publish_matrix(matrix), "publishing the matrix", self._errors
        )

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        await retry_while_unreachable(
            lambda: self._writer.save_checkpoint(checkpoint), "checkpointing", self._errors
        )


@dataclass
class LearnProcessor:
    """Learns micro-batches into a ``LearnerState`` and writes the results.

    Parameters
    ----------
    state
        The learner's state (fresh, or loaded from a checkpoint).
    writer
        Where user rows, item matrices and checkpoints go.
    version
        The model version's name (a metric label).
    prequential_sample
        Share of first watches of known users tested before learning.
    publish_interval_s, checkpoint_interval_s
        How often ``tick`` publishes the item matrix and checkpoints the state.
    record_cuts
        Whether ``process`` hands each batch's cut to the writer's ``commit``.
    """

    state: LearnerState
    writer: ModelWriter
    version: str
    prequential_sample: float = 0.2
    publish_interval_s: float = 2.0
    checkpoint_interval_s: float = 60.0
    record_cuts: bool = False
    clock: Callable[[], float] = time.monotonic
    _last_publish: float = field(default=-1e18, init=False)
    _last_checkpoint: float = field(default=0.0, init=False)
    _dirty_items: bool = field(default=True, init=False)
    _dirty_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._last_checkpoint = self.clock()

    async def process(self, messages: Sequence[EventMessage], record: bool = True) -> LearnReport:
        """Learn the messages as one micro-batch and commit what changed.

        A batch that moves the positions on is the state's next batch on its line; its
        cut goes to the writer with the results when ``record_cuts`` and ``record`` (a
        replay along recorded cuts passes ``record=False``: they are recorded already).
        """
        started = time.perf_counter()
        state = self.state
        users: list[int] = []
        movies: list[str] = []
        weights: list[float] = []
        replayed = duplicates = undecodable = 0
        for message in messages:
            position_key = f"{message.topic}:{message.partition}"
            if message.offset <= state.positions.get(position_key, -1):
                replayed += 1
                continue
            state.positions[position_key] = message.offset
            source = parse_source(message.source)
            if source is not None:
                mark_key = f"{message.partition}|{source[0]}"
                if source[1] <= state.source_marks.get(mark_key, -1):
                    duplicates += 1
                    continue
                state.source_marks[mark_key] = source[1]
            try:
                event = decode_event(message.value)
            except EventDecodeError:
                undecodable += 1
                log.debug("undecodable event at %s:%d", position_key, message.offset)
                continue
            for learning in state.progress.learn(event):
                if learning.first_sight and learning.weight > 0:
                    self._maybe_test(learning.user_id, learning.movie_id)
                users.append(learning.user_id)
                movies.append(learning.movie_id)
                weights.append(learning.weight)
        if users:
            state.model.learn_many(users, movies, np.asarray(weights))
            state.events_learned += len(users)
        delta = state.model.pop_changes()
        rows = {
            cast(int, user): user_row(int(count), vector)
            for user, count, vector in zip(
                delta.user_ids, delta.user_event_counts, delta.user_vectors, strict=True
            )
        }
        cut = None
        if len(messages) > replayed:
            state.batches += 1
            cut = BatchCut(state.history, state.batches, dict(state.positions))
        if rows or cut is not None:
            recorded = cut if self.record_cuts and record else None
            await self.writer.commit(rows, {}, dict(state.positions), recorded)
        if delta.item_ids:
            self._dirty_items = True
        if len(messages) > replayed:
            self._dirty_state = True
        metrics.LEARN_EVENTS.labels(self.version).inc(len(users))
        metrics.LEARN_SKIPPED.labels(self.version, "replayed").inc(replayed)
        metrics.LEARN_SKIPPED.labels(self.version, "duplicate").inc(duplicates)
        metrics.LEARN_SKIPPED.labels(self.version, "undecodable").inc(undecodable)
        metrics.LEARN_BATCH_SECONDS.labels(self.version).observe(time.perf_counter() - started)
        return LearnReport(
            len(messages), replayed, duplicates, undecodable, len(users), len(rows), cut
        )

    def _maybe_test(self, user_id: int, movie_id: str) -> None:
        """Prequential test: was the movie in the user's top 20 before learning it?"""
        state = self.state
        if state.model.user_vector(user_id) is None:
            return
        if state.sample_rng.random() >= self.prequential_sample:
            return
        exclude = state.progress.started(user_id) - {movie_id}
        hit = movie_id in state.model.recommend(user_id, k=20, exclude=exclude)
        state.prequential_tests += 1
        state.prequential_hits += int(hit)
        metrics.LEARN_PREQUENTIAL_TESTS.labels(self.version).inc()
        if hit:
            metrics.LEARN_PREQUENTIAL_HITS.labels(self.version).inc()
        state.recent_hit_rate.update(float(hit))
        # The weighted mean starts at the first test's value: until it has seen about a
        # window's worth of tests, the plain mean is the better estimate.
        rate = (
            state.recent_hit_rate.get()
            if state.prequential_tests >= 200
            else state.prequential_hits / state.prequential_tests
        )
        metrics.LEARN_PREQUENTIAL_HIT_RATE.labels(self.version).set(rate)

    def item_matrix(self) -> ItemMatrix:
        model = self.state.model
        return ItemMatrix(
            movie_ids=tuple(str(item) for item in model.item_ids),
            factors=np.ascontiguousarray(model.item_matrix, dtype=np.float32),
            biases=np.ascontiguousarray(model.item_biases, dtype=np.float32),
            popularity=np.asarray(model.item_popularity, dtype=np.float32),
            positions=dict(self.state.positions),
            ranking=_ranking_params(model),
        )

    async def tick(self, force: bool = False) -> None:
        """Publish the item matrix and checkpoint, each when its interval has passed."""
        now = self.clock()
        if self._dirty_items and (force or now - self._last_publish >= self.publish_interval_s):
            if self.state.model.n_items:
                revision = await self.writer.publish_matrix(self.item_matrix())
                metrics.LEARN_MATRIX_REVISION.labels(self.version).set(revision)
            self._dirty_items = False
            self._last_publish = now
        if self._dirty_state and (
            force or now - self._last_checkpoint >= self.checkpoint_interval_s
        ):
            await self.checkpoint()

    async def checkpoint(self) -> None:
        started = time.perf_counter()
        blob = self.state.to_bytes()
        await self.writer.save_checkpoint(Checkpoint(blob, dict(self.state.positions), time.time()))
        self._dirty_state = False
        self._last_checkpoint = self.clock()
        metrics.LEARN_CHECKPOINT_SECONDS.labels(self.version).observe(time.perf_counter() - started)
        log.info(
            "checkpoint of %s: %d bytes, %d events learned, positions %s",
            self.version,
            len(blob),
            self.state.events_learned,
            self.state.positions,
        )


class BatchCutter:
    """Cuts consumed messages into the batches a recorded line of batches learned.

    Messages go in as they are consumed (any grouping, each partition in offset
    order); a batch comes out when every partition has reached the next cut, holding
    the messages up to the cut in the order the live learner had them (by partition,
    then offset). Messages past the cut wait for the next one; ``waiting`` names the
    partitions the consumer should pause meanwhile, so what is held stays within a
    fetch per partition.

    Parameters
    ----------
    cuts
        The recorded cuts still to replay, in order.
    positions
        The positions the replay starts from (older messages are dropped).

    Examples
    --------
    >>> m = lambda p, o: EventMessage("ev", p, o, b"")
    >>> cutter = BatchCutter([BatchCut("h", 1, {"ev:0": 1, "ev:1": 0})], {})
    >>> cutter.add([m(0, 0), m(0, 1), m(0, 2)])
    >>> cutter.ready(), sorted(cutter.waiting())
    ([], ['ev:0'])
    >>> cutter.add([m(1, 0)])
    >>> [[(x.partition, x.offset) for x in batch] for batch, _ in cutter.ready()]
    [[(0, 0), (0, 1), (1, 0)]]
    >>> cutter.replaying, [(x.partition, x.offset) for x in cutter.drain()]
    (False, [(0, 2)])
    """

    def __init__(self, cuts: Sequence[BatchCut], positions: Mapping[str, int]) -> None:
        self._cuts = deque(cuts)
        self._start = dict(positions)
        self._reached = dict(positions)
        self._held: dict[str, deque[EventMessage]] = {}

    @property
    def replaying(self) -> bool:
        """Whether recorded cuts remain to be replayed."""
        return bool(self._cuts)

    @property
    def next_cut(self) -> BatchCut | None:
        return self._cuts[0] if self._cuts else None

    def add(self, messages: Sequence[EventMessage]) -> None:
        for message in messages:
            name = f"{message.topic}:{message.partition}"
            if message.offset <= self._start.get(name, -1):
                continue
            self._held.setdefault(name, deque()).append(message)
            self._reached[name] = max(self._reached.get(name, -1), message.offset)

    def ready(self) -> list[tuple[list[EventMessage], BatchCut]]:
        """The batches whose cut every partition has reached, in order, with their cuts."""
        batches = []
        while self._cuts and all(
            self._reached.get(name, -1) >= offset
            for name, offset in self._cuts[0].positions.items()
        ):
            cut = self._cuts.popleft()
            batch: list[EventMessage] = []
            for name, held in self._held.items():
                end = cut.positions.get(name, -1)
                while held and held[0].offset <= end:
                    batch.append(held.popleft())
            batch.sort(key=lambda message: message.partition)
            batches.append((batch, cut))
        return batches

    def waiting(self) -> set[str]:
        """Partitions that reached the next cut: fetching more of them only piles up."""
        if not self._cuts:
            return set()
        cut = self._cuts[0].positions
        return {name for name, offset in self._reached.items() if offset >= cut.get(name, -1)}

    def drain(self) -> list[EventMessage]:
        """Stop replaying: the held messages, in the order a live batch has them."""
        self._cuts.clear()
        batch = [message for held in self._held.values() for message in held]
        self._held.clear()
        batch.sort(key=lambda message: message.partition)
        return batch


def _ranking_params(model: OnlineMF) -> dict[str, Any]:
    return {
        "popularity_weight": float(model.popularity_weight),
        "cold_start_events": float(model.cold_start_events),
        # The genre columns after the learned factors never change: the server bounds
        # the learned part alone and computes the genre part exactly (server.pruning).
        "side_columns": len(model.genres),
    }
