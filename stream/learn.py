"""The learn Faust app: one per model version, learning ``reelfeed.events`` as it comes.

The app's task reads the events topic with its own consumer, assigned every partition
and positioned from the learner's checkpoint rather than from committed offsets: the
checkpoint is the only place where the model and the positions it has learned up to
are stored together, so starting from it neither loses nor repeats an event. Offsets
are still committed to the version's consumer group, so Kafka's tools show its lag.

Each batch's cut (the positions it ended at) is recorded in Redis with its results.
A learner that starts from a state (a checkpoint after a restart, a restored snapshot
after a reload) first replays along the cuts recorded after that state, so it learns
the same batches as the first pass and reaches the same factors bit for bit; then it
learns on, recording new cuts. A state that is on no recorded line (a first start, a
restore with ``--skip-to``, cuts trimmed away) starts a new line, checkpointed at once:
what was recorded after it belongs to a history that no longer is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from online_model.mf import OnlineMF
from state import (
    Checkpoint,
    KeySchema,
    LearnerRequest,
    ModelStore,
    RoutingStore,
    SnapshotStore,
    VersionRecord,
    VersionRegistry,
)
from state.model_store import DEFAULT_CUTS_KEPT, BatchCut
from stream import metrics
from stream.catalog import Catalog
from stream.feedback import WatchProgress
from stream.kafka_io import topic_partitions
from stream.learner import (
    BatchCutter,
    EventMessage,
    LearnerState,
    LearnProcessor,
    PatientWriter,
)
from stream.processor import SOURCE_HEADER, retry_while_unreachable

__all__ = ["LearnConfig", "create_app", "new_state", "restore_state", "run_learner"]

log = logging.getLogger(__name__)

#: Errors that mean Redis is away (down, restarting, loading its data): the learner
#: waits for it between two batches rather than crash and lose what it holds.
_REDIS_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
#: How long a stopping learner tries to write its last checkpoint; past it (Redis is
#: away), a restart replays from the previous checkpoint, which loses nothing.
_FINAL_FLUSH_S = 10.0


@dataclass(frozen=True, slots=True)
class LearnConfig:
    """What a learn app needs; ``reelfeed.workers`` builds it from settings."""

    kafka_bootstrap: str
    redis_url: str
    redis_prefix: str
    events_topic: str
    datadir: Path
    version: str
    model_params: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 2000
    batch_seconds: float = 0.1
    publish_interval_s: float = 2.0
    checkpoint_interval_s: float = 60.0
    commit_interval_s: float = 5.0
    prequential_sample: float = 0.2
    default_runtime: int = 100
    catalog: Catalog = field(default_factory=Catalog)
    seed: int = 0
    #: Who learns this version (git commit, package versions), for the registry.
    code_sha: str = "unknown"
    packages: Mapping[str, str] = field(default_factory=dict)
    #: Seconds between periodic snapshots (0: none), and how many of them to keep.
    snapshot_interval_s: float = 0.0
    snapshot_keep: int = 4
    #: Batch cuts kept in Redis (the oldest go first): a snapshot older than the
    #: oldest kept cut replays with other batches, reproducing its factors only
    #: statistically.
    batch_cuts_kept: int = DEFAULT_CUTS_KEPT

    @property
    def app_id(self) -> str:
        """``reelfeed-learn-<version>``; a stack with its own Redis prefix gets its own."""
        if self.redis_prefix == "rf":
            return f"reelfeed-learn-{self.version}"
        return f"reelfeed-learn-{self.redis_prefix.replace(':', '-')}-{self.version}"

    @property
    def group_id(self) -> str:
        """The group the learner commits its positions to (for Kafka's lag tools only)."""
        return f"{self.app_id}.positions"


def new_state(config: LearnConfig) -> LearnerState:
    params = {"seed": config.seed, **config.model_params}
    if len(config.catalog) and "item_genres" not in params:
        # The catalog's genres are side features of the items (not part of the
        # registered config: they come with the catalog, not with the version).
        params["item_genres"] = dict(config.catalog.genre_map)
    model = OnlineMF(**params)
    progress = WatchProgress(model.feedback, config.catalog.runtime, config.default_runtime)
    return LearnerState(model, progress, sample_rng=random.Random(config.seed))


async def restore_state(config: LearnConfig, store: ModelStore) -> LearnerState:
    """The state of the version's checkpoint, or a fresh one when it has none."""
    checkpoint = await store.load_checkpoint()
    if checkpoint is None:
        log.info("no checkpoint of %s: learning from the beginning", config.version)
        return new_state(config)
    state = LearnerState.from_bytes(checkpoint.state)
    log.info(
        "restored %s from its checkpoint: %d events learned, positions %s",
        config.version,
        state.events_learned,
        state.positions,
    )
    return state


def _messages(batch: Mapping[TopicPartition, list[Any]]) -> list[EventMessage]:
    messages = []
    for tp in sorted(batch, key=lambda tp: tp.partition):
        for record in batch[tp]:
            headers = dict(record.headers or ())
            messages.append(
                EventMessage(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.value or b"",
                    headers.get(SOURCE_HEADER),
                )
            )
    return messages


async def _register_and_restore(
    config: LearnConfig, client: aioredis.Redis, keys: KeySchema, store: ModelStore
) -> LearnerState:
    """Register the version (going live when nothing is), then load its checkpoint.

    Every step can be repeated: registering an existing version returns its record.
    """
    registry = VersionRegistry(client, keys)
    record = await registry.register(
        VersionRecord(
            name=config.version,
            config={"seed": config.seed, **config.model_params},
            code_sha=config.code_sha,
            packages=dict(config.packages),
            consumer_group=config.group_id,
        )
    )
    if dict(record.config) != {"seed": config.seed, **config.model_params}:
        raise RuntimeError(
            f"version {config.version!r} is registered with config {dict(record.config)}; "
            "a different config needs a new version name"
        )
    routing = RoutingStore(client, keys)
    if (await routing.get()).live is None:
        # A stack's first version serves: there is nothing else to serve with.
        await routing.set_live(config.version)
        log.info("no live version yet: %s goes live", config.version)
    return await restore_state(config, store)


async def run_learner(config: LearnConfig, stop: asyncio.Event | None = None) -> LearnerState:
    """Learn until cancelled (or ``stop`` is set); checkpoint on the way out."""
    client = aioredis.Redis.from_url(config.redis_url)
    keys = KeySchema(config.redis_prefix)
    store = ModelStore(client, keys, config.version, cuts_kept=config.batch_cuts_kept)
    # Redis may be down when the learner starts: wait for it rather than exit.
    state = await retry_while_unreachable(
        lambda: _register_and_restore(config, client, keys, store),
        "Redis at the learner's start",
        _REDIS_UNREACHABLE,
    )
    registry = VersionRegistry(client, keys)
    processor = LearnProcessor(
        state,
        PatientWriter(store, _REDIS_UNREACHABLE),
        config.version,
        prequential_sample=config.prequential_sample,
        publish_interval_s=config.publish_interval_s,
        checkpoint_interval_s=config.checkpoint_interval_s,
        record_cuts=True,
    )
    snapshots = SnapshotStore(client, keys)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka_bootstrap,
        group_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=config.batch_size,
    )
    await consumer.start()
    loop = asyncio.get_running_loop()
    last_commit = loop.time()
    next_snapshot = loop.time() + config.snapshot_interval_s
    snapshot_positions: dict[str, int] | None = None
    try:
        partitions = await topic_partitions(config.kafka_bootstrap, config.events_topic)
        consumer.assign(partitions)
        await _seek(consumer, partitions, state)
        cutter = await _replay_plan(config, store, processor)
        log.info(
            "learning %s from %s (%d partitions)",
            config.version,
            config.events_topic,
            len(partitions),
        )
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=int(config.batch_seconds * 1000), max_records=config.batch_size
            )
            messages = _messages(batch)
            if cutter.replaying:
                cutter = await _replay(config, store, processor, cutter, messages)
                if not messages and _beyond_the_topic(cutter, consumer, partitions):
                    await _diverge(config, store, processor, cutter, "is not on the topic")
                _pause(consumer, partitions, cutter.waiting())
            elif messages:
                await processor.process(messages)
            await processor.tick()
            for tp in partitions:
                highwater = consumer.highwater(tp)
                position = state.positions.get(f"{tp.topic}:{tp.partition}", -1)
                if highwater is not None:
                    metrics.LEARN_CONSUMER_LAG.labels(config.version, str(tp.partition)).set(
                        max(highwater - position - 1, 0)
                    )
            request = await retry_while_unreachable(
                lambda: snapshots.next_request(config.version),
                "reading requests",
                _REDIS_UNREACHABLE,
            )
            if request is not None:
                state = await _handle(request, config, store, processor, consumer, partitions)
                if request.op == "reload":
                    cutter = await _replay_plan(config, store, processor)
            if config.snapshot_interval_s > 0 and loop.time() >= next_snapshot:
                next_snapshot = loop.time() + config.snapshot_interval_s
                snapshot_positions = await _periodic_snapshot(
                    config, processor.state, snapshots, registry, snapshot_positions
                )
            if loop.time() - last_commit >= config.commit_interval_s:
                await _commit(consumer, state)
                last_commit = loop.time()
    finally:
        try:
            async with asyncio.timeout(_FINAL_FLUSH_S):
                await processor.tick(force=True)
                await processor.checkpoint()
        except TimeoutError:
            log.warning("%s stops without a last checkpoint: Redis is unreachable", config.version)
        try:
            await _commit(consumer, state)
        finally:
            await consumer.stop()
            await client.aclose()
    return state


async def _replay_plan(
    config: LearnConfig, store: ModelStore, processor: LearnProcessor
) -> BatchCutter:
    """What to replay from the processor's state: the cuts recorded after it on its line.

    The state is on its line when the cut of its last batch is recorded with its very
    positions, followed by the later ones without a gap; otherwise (a fresh state, a
    restore with ``--skip-to``, a cut trimmed away) a new line starts here and is
    checkpointed, so that a crash replays the cuts recorded on it rather than those of
    a history that no longer is. Past the last recorded cut, a replay records its
    batches on under the next numbers, which no other batch of the line has taken.
    """
    state = processor.state

    async def recorded() -> list[BatchCut]:
        return await store.batch_cuts(state.history, state.batches)

    cuts = await retry_while_unreachable(recorded, "reading batch cuts", _REDIS_UNREACHABLE)
    if (
        cuts
        and cuts[0].positions == state.positions
        and [cut.batch for cut in cuts] == list(range(state.batches, state.batches + len(cuts)))
    ):
        pending = cuts[1:]
        if pending:
            log.info(
                "%s replays %d recorded batches, up to %s",
                config.version,
                len(pending),
                pending[-1].positions,
            )
        return BatchCutter(pending, state.positions)
    log.info(
        "%s: batch %d of history %r is not recorded at positions %s; a new history starts",
        config.version,
        state.batches,
        state.history,
        state.positions,
    )
    await _new_history(store, processor)
    return BatchCutter([], state.positions)


async def _new_history(store: ModelStore, processor: LearnProcessor) -> None:
    """Start a new line of batches at the state's positions: record its batch 0 and
    checkpoint the state on it (in this order: a crash in between starts yet another)."""
    start = processor.state.start_history()
    await retry_while_unreachable(
        lambda: store.record_cut(start), "recording a batch cut", _REDIS_UNREACHABLE
    )
    await processor.checkpoint()


async def _replay(
    config: LearnConfig,
    store: ModelStore,
    processor: LearnProcessor,
    cutter: BatchCutter,
    messages: list[EventMessage],
) -> BatchCutter:
    """Learn the recorded batches these messages complete; past the last recorded
    cut, learn what is held as a new (recorded) batch."""
    cutter.add(messages)
    for batch, cut in cutter.ready():
        report = await processor.process(batch, record=False)
        if report.cut != cut:
            ended = None if report.cut is None else report.cut.positions
            await _diverge(config, store, processor, cutter, f"ended at {ended}")
            return cutter
    if not cutter.replaying:
        log.info("%s replayed the recorded batches; learning on", config.version)
        held = cutter.drain()
        if held:
            await processor.process(held)
    return cutter


async def _diverge(
    config: LearnConfig,
    store: ModelStore,
    processor: LearnProcessor,
    cutter: BatchCutter,
    why: str,
) -> None:
    """The replay cannot learn the recorded batches (events gone from the topic, or
    the topic made anew): what it learns from here is a new history, recorded as such."""
    log.warning(
        "%s: the recorded batch after %d of history %r %s; a new history starts",
        config.version,
        processor.state.batches,
        processor.state.history,
        why,
    )
    held = cutter.drain()
    await _new_history(store, processor)
    if held:
        await processor.process(held)


def _beyond_the_topic(
    cutter: BatchCutter, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> bool:
    """Whether the next cut lies past the end of a partition (its highwater is the
    offset the next message will take), so that waiting for it would never end."""
    cut = cutter.next_cut
    if cut is None:
        return False
    for tp in partitions:
        highwater = consumer.highwater(tp)
        position = cut.positions.get(f"{tp.topic}:{tp.partition}", -1)
        if highwater is not None and position >= highwater:
            return True
    return False


def _pause(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], waiting: set[str]) -> None:
    """Pause the partitions that reached the replay's next cut, resume the others."""
    paused = [tp for tp in partitions if f"{tp.topic}:{tp.partition}" in waiting]
    resumed = [tp for tp in partitions if f"{tp.topic}:{tp.partition}" not in waiting]
    if paused:
        consumer.pause(*paused)
    if resumed:
        consumer.resume(*resumed)


async def _seek(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], state: LearnerState
) -> None:
    """Position the consumer right after what the state has learned."""
    consumer.resume(*partitions)
    for tp in partitions:
        position = state.positions.get(f"{tp.topic}:{tp.partition}")
        if position is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, position + 1)


async def _handle(
    request: LearnerRequest,
    config: LearnConfig,
    store: ModelStore,
    processor: LearnProcessor,
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
) -> LearnerState:
    """Carry out a request between two batches; return the (possibly new) state."""
    if request.op == "checkpoint":
        await processor.checkpoint()
    elif request.op == "reload":
        # A snapshot was restored into the version's checkpoint: learn on from there.
        state = await restore_state(config, store)
        processor.state = state
        await _seek(consumer, partitions, state)
        state.model.mark_all_changed()
        await processor.process([])
        await processor.tick(force=True)
        log.info(
            "%s reloaded from its checkpoint; replaying from %s", config.version, state.positions
        )
    else:
        log.warning("unknown learner request %r ignored", request.op)
    return processor.state


async def _periodic_snapshot(
    config: LearnConfig,
    state: LearnerState,
    snapshots: SnapshotStore,
    registry: VersionRegistry,
    last_positions: dict[str, int] | None,
) -> dict[str, int] | None:
    """Snapshot the state (between two batches) unless it has not moved since the last
    one, then apply the retention; return the positions of the newest snapshot.

    A failure is logged and retried at the next interval: a missed snapshot must not
    stop the learning.
    """
    if state.positions == last_positions:
        return last_positions
    try:
        version = await registry.get(config.version)
        record = await snapshots.create(
            config.version,
            Checkpoint(state.to_bytes(), dict(state.positions), time.time()),
            parent=None if version is None else version.restored_from,
            note="periodic",
            kind="periodic",
        )
        pruned = await snapshots.prune(config.version, config.snapshot_keep)
    except redis.RedisError as exc:
        log.warning("periodic snapshot of %s failed: %r", config.version, exc)
        return last_positions
    log.info(
        "periodic snapshot %s of %s: %d bytes, positions %s; deleted %s",
        record.id,
        config.version,
        record.size,
        record.positions,
        pruned or "none",
    )
    return dict(record.positions)


async def _commit(consumer: AIOKafkaConsumer, state: LearnerState) -> None:
    offsets = {}
    for key, offset in state.positions.items():
        topic, _, partition = key.rpartition(":")
        offsets[TopicPartition(topic, int(partition))] = OffsetAndMetadata(offset + 1, "")
    if offsets:
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # only for visibility: never worth stopping the learner
            log.warning("committing learner offsets failed: %r", exc)


def create_app(config: LearnConfig) -> faust.App:
    """A Faust app whose one task runs the learner (``reelfeed learn``)."""
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.kafka_bootstrap}",
        datadir=str(config.datadir),
        broker_session_timeout=10.0,
        web_enabled=False,
        autodiscover=False,
    )

    async def learn() -> None:
        # One BLAS thread: the learner's products are one user against the catalog (the
        # prequential test), where OpenBLAS threads only hand work around, and on a busy
        # machine their spinning made each test several times slower (bench/learn.py).
        with threadpool_limits(1, user_api="blas"):
            await run_learner(config)

    app.task(learn)
    return app
