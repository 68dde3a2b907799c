"""Learn benchmark: one real learn worker process against the same events in-process.

Fills a fresh ``reelfeed.events``-style topic of the test stack's broker with typed
events as ingest publishes them (with source headers), and prints one JSON object with,
for each of two streams (``course_stream``: a synthetic course stream, mostly one watch
line per minute, few of which move the model; ``movielens_ratings``: every rating of
MovieLens latest-small as a rate event, each one a model update):

- ``worker``: events/s of ONE ``reelfeed learn`` process (the default model, the
  default batch size) draining that backlog, including its Redis write-behind: the
  rate at which its committed positions in Redis advance, from its first commit to its
  last, so the process's start-up is left out;
- ``in_process``: the same messages through ``LearnProcessor`` in this process, with a
  writer that drops everything (no Kafka, no Redis): the ceiling of the worker;
- ``model_only``: the learning updates of those events through ``OnlineMF.learn_many``
  alone, in batches of the same size.

Both learn the same events: the worker's final checkpoint must report the same number
of learned updates as the in-process run (``same_learning``).

Run: ``.venv/bin/python -m bench.learn [--sessions N]`` (honours
``TEST_STACK_PORT_OFFSET``; starts the test stack's Kafka and Redis if they are down).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from reelfeed.infra import (
    PROJECT_ROOT,
    KafkaBroker,
    RedisServer,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
    testing_stack,
)
from state import Checkpoint, ItemMatrix, KeySchema, ModelStore
from stream.codec import decode_event, encode_event
from stream.events import Event, RateEvent, Rejected
from stream.learn import LearnConfig, new_state
from stream.learner import EventMessage, LearnerState, LearnProcessor
from stream.parser import LineValidator, ParseContext
from stream.processor import SOURCE_HEADER
from tests.integration.workers import WorkerProcess, free_port, synthetic_stream

PARTITIONS = 2
RATINGS = PROJECT_ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small" / "ratings.csv"


def _course_events(sessions: int) -> list[Event]:
    """Ingest's output for a synthetic course stream: mostly one line per minute watched."""
    validator = LineValidator(ParseContext())
    parsed = (validator.validate(line) for line in synthetic_stream(sessions, seed=5))
    return [event for event in parsed if not isinstance(event, Rejected)]


def _rating_events(ratings: Path) -> list[Event]:
    """Every MovieLens rating as a rate event: each one is a learning update."""
    events: list[Event] = []
    with ratings.open(newline="") as lines:
        rows = csv.reader(lines)
        next(rows)
        for user, movie, rating, timestamp in rows:
            events.append(
                RateEvent(int(timestamp) * 1_000_000, int(user), movie, math.ceil(float(rating)))
            )
    events.sort(key=lambda event: event.time_us)
    return events


def _messages(topic: str, events: list[Event]) -> list[EventMessage]:
    """The events as the worker reads them: keyed by user into partitions, with sources."""
    offsets = [0] * PARTITIONS
    messages = []
    for source_offset, event in enumerate(events):
        partition = event.user_id % PARTITIONS
        messages.append(
            EventMessage(
                topic,
                partition,
                offsets[partition],
                encode_event(event),
                f"movielog:0:{source_offset}".encode(),
            )
        )
        offsets[partition] += 1
    return messages


class _DroppingWriter:
    """A ``ModelWriter`` that keeps nothing: the learner's work without Redis."""

    def __init__(self) -> None:
        self.revision = 0

    async def commit(
        self,
        users: Mapping[int, np.ndarray],
        items: Mapping[str, np.ndarray],
        positions: Mapping[str, int],
        cut: object = None,
    ) -> None:
        return None

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        self.revision += 1
        return self.revision

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


def _config(topic: str) -> LearnConfig:
    stack = testing_stack(os.environ)
    return LearnConfig(stack.kafka_bootstrap, stack.redis_url, "bench", topic, Path("."), "v1")


async def _in_process(topic: str, messages: list[EventMessage]) -> dict[str, float | int]:
    """The worker's loop without Kafka and Redis: batches in the order it would read them."""
    config = _config(topic)
    processor = LearnProcessor(
        new_state(config),
        _DroppingWriter(),
        "bench",
        prequential_sample=config.prequential_sample,
        publish_interval_s=config.publish_interval_s,
        checkpoint_interval_s=config.checkpoint_interval_s,
    )
    by_partition = [[m for m in messages if m.partition == p] for p in range(PARTITIONS)]
    batches: list[list[EventMessage]] = []
    half = config.batch_size // PARTITIONS
    for start in range(0, max(len(part) for part in by_partition), half):
        batches.append([m for part in by_partition for m in part[start : start + half]])
    started = time.perf_counter()
    for batch in batches:
        await processor.process(batch)
        await processor.tick()
    await processor.tick(force=True)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "events_per_s": round(len(messages) / seconds),
        "updates_learned": processor.state.events_learned,
        "batches": len(batches),
    }


def _model_only(topic: str, messages: list[EventMessage], batch_size: int) -> dict[str, float]:
    """Just ``OnlineMF.learn_many`` over the learning updates the events make."""
    state = new_state(_config(topic))

    updates = [
        learning
        for message in messages
        for learning in state.progress.learn(decode_event(message.value))
    ]
    model = state.model
    started = time.perf_counter()
    for start in range(0, len(updates), batch_size):
        chunk = updates[start : start + batch_size]
        model.learn_many(
            [u.user_id for u in chunk],
            [u.movie_id for u in chunk],
            np.asarray([u.weight for u in chunk]),
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "updates_per_s": round(len(updates) / seconds),
        "events_per_s": round(len(messages) / seconds),
    }


async def _fill(bootstrap: str, topic: str, messages: list[EventMessage]) -> None:
    await asyncio.to_thread(create_topics, bootstrap, {topic: PARTITIONS})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        for message in messages:
            await producer.send(
                topic,
                message.value,
                partition=message.partition,
                headers=[(SOURCE_HEADER, message.source or b"")],
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _learned(store: ModelStore) -> int:
    return sum(offset + 1 for offset in (await store.positions()).values())


async def _worker(
    name: str, topic: str, messages: list[EventMessage], folder: Path
) -> dict[str, float | int]:
    stack = testing_stack(os.environ)
    await _fill(stack.kafka_bootstrap, topic, messages)
    env = {
        "REELFEED_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "REELFEED_REDIS_URL": stack.redis_url,
        "REELFEED_REDIS_PREFIX": name,
        "REELFEED_EVENTS_TOPIC": topic,
        "REELFEED_TOPIC_PARTITIONS": str(PARTITIONS),
        "REELFEED_LEARN_VERSION": "v1",
        "REELFEED_LEARN_METRICS_PORT": str(free_port()),
        "REELFEED_LOG_LEVEL": "WARNING",
    }
    client = aioredis.Redis.from_url(stack.redis_url)
    store = ModelStore(client, KeySchema(name), "v1")
    worker = WorkerProcess("learn", env, folder, name)
    total = len(messages)
    worker.start()
    try:
        while (first_seen := await _learned(store)) == 0:
            worker.assert_alive()
            await asyncio.sleep(0.005)
        first = time.perf_counter()
        while await _learned(store) < total:
            worker.assert_alive()
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - first
    finally:
        worker.stop()
    checkpoint = await store.load_checkpoint()
    learned = -1 if checkpoint is None else LearnerState.from_bytes(checkpoint.state).events_learned
    async for key in client.scan_iter(match=f"{name}:*", count=1000):
        await client.delete(key)
    await client.aclose()
    return {
        "seconds": round(seconds, 2),
        "events_per_s": round((total - first_seen) / seconds),
        "events_timed": total - first_seen,
        "updates_learned": learned,
    }


async def _scenario(events: list[Event], folder: Path) -> dict[str, object]:
    name = f"bench{uuid.uuid4().hex[:8]}"
    topic = f"{name}.events"
    messages = _messages(topic, events)
    in_process = await _in_process(topic, messages)
    model_only = _model_only(topic, messages, _config(topic).batch_size)
    worker = await _worker(name, topic, messages, folder)
    return {
        "events": len(messages),
        "worker": worker,
        "in_process": in_process,
        "model_only": model_only,
        "worker_share_of_in_process": round(
            float(worker["events_per_s"]) / float(in_process["events_per_s"]), 3
        ),
        "same_learning": worker["updates_learned"] == in_process["updates_learned"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8000, help="synthetic viewing sessions")
    parser.add_argument(
        "--ratings", type=Path, default=RATINGS, help="MovieLens ratings.csv (skipped if absent)"
    )
    args = parser.parse_args()
    # The in-process run under the worker's conditions: one BLAS thread (stream/learn.py).
    threadpool_limits(1, user_api="blas")
    stack = testing_stack(os.environ)
    redis_server = RedisServer(stack, persist=False)
    broker = KafkaBroker(stack, resolve_kafka_jars(default_cache_dir(os.environ)))
    started = [redis_server.start(), broker.start()]
    load_before = os.getloadavg()
    scenarios = {"course_stream": _course_events(args.sessions)}
    if args.ratings.is_file():
        scenarios["movielens_ratings"] = _rating_events(args.ratings)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for scenario, events in scenarios.items():
                results[scenario] = asyncio.run(_scenario(events, Path(folder)))
    finally:
        if started[1]:
            broker.stop()
        if started[0]:
            redis_server.stop()
    report = {
        "benchmark": "learn",
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "partitions": PARTITIONS,
        "model": " ".join(repr(new_state(_config("events")).model).split()),
        "target_events_per_s": 20_000,
        **results,
    }
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
