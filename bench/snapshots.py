"""Snapshot benchmark: size, create and restore times of a learner of 100k users.

Builds a learner's state the way the learner does: course-like events (each user
starts a few movies drawn from a Zipf-like popularity over 27,000 movies, some watched
to the middle or the end, some rated) go through ``LearnProcessor`` with the default
model (64 factors), so the factors, the watch memory and the sampler's pool are what a
real learner holds. Then, against the test stack's Redis (started if it does not run):

- ``create``: what ``reelfeed snapshot create`` costs: the learner pickles its state and
  saves its checkpoint (``learner_checkpoint``; it learns nothing meanwhile), the command
  reads that checkpoint back and stores it as a snapshot (``command``); a periodic
  snapshot costs the learner's pickling plus the snapshot write (``periodic_learner``);
- ``restore``: ``reelfeed snapshot restore`` (``command``: read the snapshot, write the
  version's checkpoint), then the learner's reload (``learner_reload``: read and
  unpickle the checkpoint, write every user row and publish the item matrix), during
  which it learns nothing (the server serves on from the rows already in Redis);
- ``export``: the file of ``snapshot export``.

Baseline, in the same run: the model's numbers alone (user and item rows as float32,
what the server reads) written and read as one Redis value, and the state's size
compressed with zlib level 1 (what a compressed snapshot would weigh).

Each time is the median of ``--repeat`` runs. Prints one JSON object.

Run: ``.venv/bin/python -m bench.snapshots [--users 100000] [--movies 27000]``
(honours ``TEST_STACK_PORT_OFFSET``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis

from reelfeed.infra import RedisServer, testing_stack
from state import Checkpoint, KeySchema, ModelStore, SnapshotStore
from stream.codec import encode_event
from stream.events import Event, RateEvent, WatchEvent
from stream.learn import LearnConfig, new_state
from stream.learner import EventMessage, LearnerState, LearnProcessor

__all__ = ["main"]

_RUNTIME = 100
_BATCH = 2000
_TOPIC = "reelfeed.events"
_PARTITIONS = 4


def course_events(users: int, movies: int, movies_per_user: float, seed: int) -> list[Event]:
    """Per user: a few movies started (Zipf-like choice), some watched to the middle or
    the end, a third of them rated; users interleaved over time as on the site."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, movies + 1) ** 0.9
    weights /= weights.sum()
    started = rng.poisson(movies_per_user, users).clip(1, None)
    owners = np.repeat(np.arange(1, users + 1), started)
    titles = rng.choice(movies, size=owners.shape[0], p=weights)
    reach = rng.choice([1, _RUNTIME // 2, _RUNTIME - 5], size=owners.shape[0], p=[0.5, 0.2, 0.3])
    ratings = rng.integers(1, 6, size=owners.shape[0])
    rated = rng.random(owners.shape[0]) < 0.3
    events: list[Event] = []
    clock = 1_700_000_000_000_000
    for position in rng.permutation(owners.shape[0]).tolist():
        user, movie = int(owners[position]), f"movie+{int(titles[position])}+2000"
        for minute in (0, _RUNTIME // 2, _RUNTIME - 5):
            if minute > reach[position]:
                break
            clock += 1000
            events.append(WatchEvent(clock, user, movie, minute))
        if rated[position]:
            clock += 1000
            events.append(RateEvent(clock, user, movie, int(ratings[position])))
    return events


class _Discard:
    async def commit(
        self, users: object, items: object, positions: object, cut: object = None
    ) -> None:
        return None

    async def publish_matrix(self, matrix: object) -> int:
        return 0

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


async def build_state(events: list[Event]) -> tuple[LearnerState, float]:
    config = LearnConfig("", "", "", _TOPIC, Path(), "bench", default_runtime=_RUNTIME)
    state = new_state(config)
    # No prequential tests: they score every movie, and change nothing of the state's size.
    processor = LearnProcessor(state, _Discard(), "bench", prequential_sample=0.0)
    offsets = [0] * _PARTITIONS
    started = time.perf_counter()
    for start in range(0, len(events), _BATCH):
        batch = []
        for event in events[start : start + _BATCH]:
            partition = event.user_id % _PARTITIONS
            batch.append(EventMessage(_TOPIC, partition, offsets[partition], encode_event(event)))
            offsets[partition] += 1
        batch.sort(key=lambda message: message.partition)
        await processor.process(batch)
    return state, time.perf_counter() - started


async def timed(repeat: int, step: Callable[[], Awaitable[object]]) -> float:
    """Median seconds of ``step`` over ``repeat`` runs."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        await step()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds), 3)


async def measure(args: argparse.Namespace, redis_url: str) -> dict[str, object]:
    events = course_events(args.users, args.movies, args.movies_per_user, args.seed)
    state, learn_seconds = await build_state(events)
    model = state.model
    client = aioredis.Redis.from_url(redis_url)
    keys = KeySchema(f"bench{uuid.uuid4().hex[:8]}")
    store = ModelStore(client, keys, "v1")
    snapshots = SnapshotStore(client, keys)
    repeat = args.repeat
    try:
        blob = state.to_bytes()
        pickle_s = await timed(repeat, lambda: asyncio.to_thread(state.to_bytes))

        async def learner_checkpoint() -> None:
            await store.save_checkpoint(Checkpoint(state.to_bytes(), state.positions, time.time()))

        async def command_create() -> None:
            checkpoint = await store.load_checkpoint()
            assert checkpoint is not None
            await snapshots.create("v1", checkpoint)

        async def periodic() -> None:
            checkpoint = Checkpoint(state.to_bytes(), dict(state.positions), time.time())
            await snapshots.create("v1", checkpoint, kind="periodic")
            await snapshots.prune("v1", 1)

        checkpoint_s = await timed(repeat, learner_checkpoint)
        command_s = await timed(repeat, command_create)
        periodic_s = await timed(repeat, periodic)
        snapshot = (await snapshots.list())[-1]

        async def command_restore() -> None:
            state_blob = await snapshots.state(snapshot.id)
            assert state_blob is not None
            await store.save_checkpoint(Checkpoint(state_blob, snapshot.positions, time.time()))

        async def learner_reload() -> None:
            checkpoint = await store.load_checkpoint()
            assert checkpoint is not None
            restored = LearnerState.from_bytes(checkpoint.state)
            processor = LearnProcessor(restored, store, "v1")
            restored.model.mark_all_changed()
            await processor.process([])
            await processor.tick(force=True)

        unpickle_s = await timed(repeat, lambda: asyncio.to_thread(LearnerState.from_bytes, blob))
        restore_command_s = await timed(repeat, command_restore)
        reload_s = await timed(repeat, learner_reload)
        exported = await snapshots.export(snapshot.id)

        vectors = [model.user_vector(user) for user in range(1, args.users + 1)]
        numbers = b"".join(
            [
                np.stack([v for v in vectors if v is not None]).astype("<f4").tobytes(),
                np.ascontiguousarray(model.item_matrix).tobytes(),
                np.ascontiguousarray(model.item_biases).tobytes(),
            ]
        )
        numbers_key = f"{keys.prefix}:numbers"
        numbers_write_s = await timed(repeat, lambda: client.set(numbers_key, numbers))
        numbers_read_s = await timed(repeat, lambda: client.get(numbers_key))
        compressed = len(zlib.compress(blob, 1))
    finally:
        async for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
    return {
        "users": model.n_users,
        "movies": model.n_items,
        "n_factors": model.n_factors,
        "stream_events": len(events),
        "learned_events": state.events_learned,
        "learn_seconds": round(learn_seconds, 1),
        "size": {
            "snapshot_bytes": len(blob),
            "export_file_bytes": len(exported),
            "baseline_float32_rows_bytes": len(numbers),
            "baseline_zlib1_bytes": compressed,
        },
        "create_seconds": {
            "pickle": pickle_s,
            "learner_checkpoint": checkpoint_s,
            "command": command_s,
            "total": round(checkpoint_s + command_s, 3),
            "periodic_learner": periodic_s,
        },
        "restore_seconds": {
            "unpickle": unpickle_s,
            "command": restore_command_s,
            "learner_reload": reload_s,
            "total": round(restore_command_s + reload_s, 3),
        },
        "baseline_seconds": {"rows_set": numbers_write_s, "rows_get": numbers_read_s},
        "repeat": repeat,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--movies", type=int, default=27_000)
    parser.add_argument("--movies-per-user", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    redis_server = RedisServer(testing_stack(os.environ), persist=False)
    started = redis_server.start()
    try:
        result = asyncio.run(measure(args, redis_server.url))
    finally:
        if started:
            redis_server.stop()
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
