"""The ingest worker as a real process on the real broker and Redis."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from reelfeed.infra import create_topics
from state import FeatureStore, KeySchema
from stream.codec import decode_event
from stream.events import RateEvent, WatchEvent
from stream.processor import SOURCE_HEADER
from tests.integration.workers import (
    WorkerProcess,
    consume_all,
    free_port,
    produce_lines,
    synthetic_stream,
    user_key,
    wait_until,
)

pytestmark = pytest.mark.integration


def worker_env(
    kafka: str, redis_url: str, name: str, topics: dict[str, str], **extra: str
) -> dict[str, str]:
    return {
        "REELFEED_KAFKA_BOOTSTRAP": kafka,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": name,
        "REELFEED_RAW_TOPIC": topics["raw"],
        "REELFEED_EVENTS_TOPIC": topics["events"],
        "REELFEED_REJECTED_TOPIC": topics["rejected"],
        "REELFEED_TOPIC_PARTITIONS": "2",
        "REELFEED_INGEST_APP_ID": f"{name.replace(':', '-')}-ingest",
        "REELFEED_INGEST_METRICS_PORT": "0",
        **extra,
    }


def topic_names(name: str) -> dict[str, str]:
    return {kind: f"{name}.{kind}" for kind in ("raw", "events", "rejected")}


async def applied_lines(store: FeatureStore) -> int:
    counts = await store.counts()
    handled = sum(v for k, v in counts.items() if k != "watch_started")
    return handled + sum((await store.rejected_counts()).values())


def applied_reaches(store: FeatureStore, count: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return await applied_lines(store) >= count

    return reached


REAL_LINES = [
    b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg",
    b"2023-10-25T07:20:58,135941,GET /data/m/interstellar+2014/135.mpg",
    b"2023-10-25T07:20:58.123,29619,GET /data/m/seven+samurai+1954/103.mpg",
    b"2023-09-28T20:20:23,303668,GET /rate/how+to+train+your+dragon+2+2014=4",
    b"2023-10-25T07:21:00.123456,29619,recommendation request 17645-team07.isri.cmu.edu:8082,"
    b" status 200, result: up+2009, heat+1995, 56 ms",
    b"2023-10-25T07:21:01,29619,recommendation request 17645-team07.isri.cmu.edu:8082,"
    b" status 0, result: java.net.ConnectException: Connection refused, 12",
]
NOISE = [
    b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg",  # duplicate
    b"2023-09-28T20:20:23,-5,GET /rate/up+2009=4",
    b"2023-09-28T20:20:23,5,GET /rate/up+2009=9",
    b"not a line at all",
]


async def test_worker_turns_lines_into_events_refusals_and_features(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topics = topic_names(unique_name)
    await asyncio.to_thread(
        create_topics,
        kafka_bootstrap,
        {topics["raw"]: 1, topics["events"]: 2, topics["rejected"]: 1},
    )
    await produce_lines(kafka_bootstrap, topics["raw"], REAL_LINES + NOISE, user_key)
    worker = WorkerProcess(
        "ingest", worker_env(kafka_bootstrap, redis_url, unique_name, topics), tmp_path, "ingest"
    )
    store = FeatureStore(redis_client, KeySchema(unique_name), half_life_s=86_400)
    worker.start()
    try:
        await wait_until(applied_reaches(store, len(REAL_LINES) + len(NOISE)), 90, worker)
        assert await store.counts() == {
            "watch": 3,
            "watch_started": 2,
            "rate": 1,
            "recommendation": 2,
        }
        assert await store.rejected_counts() == {
            "duplicate": 1,
            "bad_user": 1,
            "bad_rating": 1,
            "unparsable": 1,
        }
        assert await store.watched(135941) == {"interstellar+2014": 135}
        assert await store.ratings(303668) == {"how+to+train+your+dragon+2+2014": 4}

        events = await consume_all(kafka_bootstrap, topics["events"], expected=len(REAL_LINES))
        assert len(events) == len(REAL_LINES)
        decoded = [decode_event(value) for _, value, _ in events]
        assert sum(isinstance(e, WatchEvent) for e in decoded) == 3
        assert sum(isinstance(e, RateEvent) for e in decoded) == 1
        for key, value, headers in events:
            assert key == str(decode_event(value).user_id).encode()
            assert dict(headers)[SOURCE_HEADER].startswith(f"{topics['raw']}:0:".encode())

        refused = await consume_all(kafka_bootstrap, topics["rejected"], expected=len(NOISE))
        records = [orjson.loads(value) for _, value, _ in refused]
        assert sorted(r["reason"] for r in records) == sorted(
            ["duplicate", "bad_user", "bad_rating", "unparsable"]
        )
        assert {r["line"] for r in records} == {line.decode() for line in NOISE}
        assert all(r["topic"] == topics["raw"] and r["offset"] >= len(REAL_LINES) for r in records)
    finally:
        assert worker.stop() == 0, worker.log_tail()


async def _dump(client: aioredis.Redis, prefix: str) -> dict[str, object]:
    """Every key under a prefix, with the prefix removed, as comparable values."""
    state: dict[str, object] = {}
    async for raw_key in client.scan_iter(match=f"{prefix}:*", count=5000):
        key = raw_key.decode()
        name = key[len(prefix) :]
        kind = (await client.type(key)).decode()
        if kind == "hash":
            state[name] = await client.hgetall(key)
        elif kind == "zset":
            state[name] = dict(await client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            state[name] = {m.decode().removeprefix(prefix) for m in await client.smembers(key)}
        else:
            state[name] = await client.get(key)
    return state


def _assert_same_state(
    left: dict[str, object], right: dict[str, object], half_life_s: float
) -> None:
    assert left.keys() == right.keys()
    # Popularity scores are relative to a landmark time, which depends on the order in
    # which partitions were first read: compare them on a common landmark.
    shift = 2.0 ** (
        (float(left[":pop:landmark"]) - float(right[":pop:landmark"])) / half_life_s  # type: ignore[arg-type]
    )
    for name, value in left.items():
        other = right[name]
        if name.startswith(":pop") and isinstance(value, dict):
            assert isinstance(other, dict) and value.keys() == other.keys(), name
            for member, score in value.items():
                assert math.isclose(score * shift, other[member], rel_tol=1e-9), (name, member)
        elif name == ":pop:landmark":
            continue  # compared through the scores, which are relative to it
        else:
            assert value == other, name


@pytest.mark.slow
async def test_sigkill_mid_stream_then_restart_matches_an_uninterrupted_run(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    lines = synthetic_stream(sessions=1500, seed=7)
    topics = topic_names(unique_name)
    await asyncio.to_thread(
        create_topics,
        kafka_bootstrap,
        {topics["raw"]: 2, topics["events"]: 2, topics["rejected"]: 1},
    )
    await produce_lines(kafka_bootstrap, topics["raw"], lines, user_key)
    reference, crashed = f"{unique_name}:ref", f"{unique_name}:crash"

    # The reference: one uninterrupted run.
    env = worker_env(kafka_bootstrap, redis_url, reference, topics)
    worker = WorkerProcess("ingest", env, tmp_path / "ref", "ingest")
    (tmp_path / "ref").mkdir()
    ref_store = FeatureStore(redis_client, KeySchema(reference), half_life_s=86_400)
    worker.start()
    try:
        await wait_until(applied_reaches(ref_store, len(lines)), 120, worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # The crash: offsets are committed rarely, so a SIGKILL leaves applied work
    # uncommitted and the restarted worker must read it again.
    metrics_port = free_port()
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        crashed,
        topics,
        REELFEED_INGEST_COMMIT_INTERVAL="3600",
        REELFEED_INGEST_METRICS_PORT=str(metrics_port),
    )
    (tmp_path / "crash").mkdir()
    store = FeatureStore(redis_client, KeySchema(crashed), half_life_s=86_400)
    first = WorkerProcess("ingest", env, tmp_path / "crash", "first")
    first.start()
    await wait_until(applied_reaches(store, len(lines) // 3), 120, first)
    first.kill()
    assert await applied_lines(store) < len(lines)

    second = WorkerProcess("ingest", env, tmp_path / "crash", "second")
    second.start()
    try:
        await wait_until(applied_reaches(store, len(lines)), 120, second)
        metrics_text = await asyncio.to_thread(_scrape, metrics_port)
    finally:
        assert second.stop() == 0, second.log_tail()
    replayed = _metric(metrics_text, "reelfeed_ingest_replayed_total")
    assert replayed > 0, "the restarted worker re-read nothing: the test proved nothing"

    _assert_same_state(
        await _dump(redis_client, reference), await _dump(redis_client, crashed), 86_400
    )
    counts = Counter(await store.rejected_counts())
    assert counts["duplicate"] > 0 and counts["bad_rating"] >= 0


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from the metrics")
