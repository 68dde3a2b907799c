"""Failures on the real stack, with serving measured throughout.

Each test runs the three workers (ingest, learn, serve) on topics and a Redis prefix
of its own, feeds the raw topic at a steady pace, and asks ``/recommend`` over and
over from the first answer to the last check, counting every answer that is not a
200 (timeouts and refused connections included). Then it breaks something:

a. the learner is SIGKILLed while events flow, and restarted;
b. the stack's Redis data is lost (the learner and ingest die with it) and comes
   back from an exported snapshot file plus a replay of Kafka;
c. the Kafka broker (one started for this test) is restarted under load;
d. the Redis server (one started for this test) is down for a while: the workers
   must wait and carry on, not crash.

Whatever broke, every line's effect must arrive exactly once: the ingest counts
match the lines produced, and each user's count of learned events in Redis matches
what one uninterrupted pass over the lines gives. The counts of every scenario are
written to ``reports/failures.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from reelfeed.cli import main
from reelfeed.infra import (
    PROJECT_ROOT,
    KafkaBroker,
    RedisServer,
    StackLayout,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
)
from state import (
    FeatureStore,
    KeySchema,
    LearnerRequest,
    ModelStore,
    RoutingStore,
    SnapshotStore,
    VersionRegistry,
)
from stream.events import Event, Rejected
from stream.parser import DuplicateFilter, LineValidator, ParseContext
from tests.integration.test_learn_worker import PARAMS, expected_learning, final_state
from tests.integration.workers import WorkerProcess, free_port, user_key, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPORT = PROJECT_ROOT / "reports" / "failures.json"
USERS = 300
MOVIES = 120


# ------------------------------------------------------------------ the stream


def clean_lines(sessions: int, seed: int, start: datetime) -> list[bytes]:
    """Valid, distinct course lines: watches minute by minute, ratings, list requests.

    No noise and no exact duplicates, so that every line has an effect and a line sent
    twice by a retrying producer is recognisable (ingest refuses it as a duplicate).
    """
    rng = random.Random(seed)
    clock = start
    movies = [f"film+{n}+{1960 + n % 60}" for n in range(MOVIES)]
    next_minute: dict[tuple[int, str], int] = {}
    lines: list[bytes] = []

    def stamp() -> str:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(1, 200))
        return clock.strftime("%Y-%m-%dT%H:%M:%S") + f".{clock.microsecond // 1000:03d}"

    for _ in range(sessions):
        user = rng.randint(1, USERS)
        movie = movies[min(int(rng.paretovariate(1.1)) - 1, MOVIES - 1)]
        if rng.random() < 0.3:
            lines.append(
                f"{stamp()},{user},recommendation request 17645-team07.isri.cmu.edu:8082, "
                f"status 200, result: {', '.join(rng.sample(movies, 20))}, "
                f"{rng.randint(5, 90)} ms".encode()
            )
        first = next_minute.get((user, movie), 0)
        count = rng.randint(1, 30)
        lines.extend(
            f"{stamp()},{user},GET /data/m/{movie}/{minute}.mpg".encode()
            for minute in range(first, first + count)
        )
        next_minute[(user, movie)] = first + count
        if rng.random() < 0.3:
            lines.append(f"{stamp()},{user},GET /rate/{movie}={rng.randint(1, 5)}".encode())
    return lines


def events_of_lines(lines: list[bytes]) -> list[Event]:
    """What ingest makes of the lines; they must all be valid (checks the generator)."""
    validator = LineValidator(ParseContext(), DuplicateFilter())
    events = []
    for line in lines:
        result = validator.validate(line)
        assert not isinstance(result, Rejected), (line, result)
        events.append(result)
    return events


class Traffic:
    """Produces lines to the raw topic at a steady pace, as the site does.

    A chunk that fails (the broker is away) is sent again after a pause, like a site's
    retrying producer; a line that had in fact been written reaches ingest twice and is
    refused there as a duplicate. ``retried`` counts the lines sent again.
    """

    def __init__(
        self, bootstrap: str, topic: str, chunk: int = 40, interval_s: float = 0.1
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.chunk = chunk
        self.interval_s = interval_s
        self.sent = 0
        self.retried = 0
        self.failures: Counter[str] = Counter()

    async def produce(self, lines: list[bytes], deadline_s: float = 120.0) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            linger_ms=5,
            enable_idempotence=True,
            request_timeout_ms=15_000,
        )
        await producer.start()
        try:
            async with asyncio.timeout(deadline_s):
                for at in range(0, len(lines), self.chunk):
                    chunk = lines[at : at + self.chunk]
                    while True:
                        try:
                            sending = [
                                await producer.send(self.topic, line, key=user_key(line))
                                for line in chunk
                            ]
                            await asyncio.gather(*sending)
                            break
                        except KafkaError as exc:
                            self.failures[type(exc).__name__] += 1
                            self.retried += len(chunk)
                            await asyncio.sleep(0.5)
                    self.sent += len(chunk)
                    await asyncio.sleep(self.interval_s)
        finally:
            await producer.stop()


# ------------------------------------------------------------------ serving probe


@dataclass
class ServingProbe:
    """Asks ``/recommend`` in a bounded loop and counts every answer by outcome."""

    base_url: str
    users: list[int]
    concurrency: int = 2
    pause_s: float = 0.02
    timeout_s: float = 2.0
    max_requests: int = 40_000
    outcomes: Counter[str] = field(default_factory=Counter)
    empty_lists: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def non_200(self) -> int:
        return self.requests - self.outcomes["200"]

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                *(self._loop(session, stop, random.Random(n)) for n in range(self.concurrency))
            )

    async def _loop(
        self, session: aiohttp.ClientSession, stop: asyncio.Event, rng: random.Random
    ) -> None:
        while not stop.is_set() and self.requests < self.max_requests:
            user = rng.choice(self.users)
            started = time.perf_counter()
            try:
                async with session.get(f"{self.base_url}/recommend/{user}") as response:
                    body = await response.read()
                    self.outcomes[str(response.status)] += 1
                    if response.status == 200 and not body.strip():
                        self.empty_lists += 1
            except TimeoutError:
                self.outcomes["timeout"] += 1
            except aiohttp.ClientError as exc:
                self.outcomes[f"error:{type(exc).__name__}"] += 1
            self.latencies.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.pause_s)

    def summary(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies or [0.0])
        return {
            "requests": self.requests,
            "non_200": self.non_200,
            "outcomes": dict(self.outcomes),
            "empty_lists": self.empty_lists,
            "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 2),
            "latency_ms_p99": round(float(np.percentile(latencies, 99)) * 1000, 2),
            "latency_ms_max": round(float(latencies.max()) * 1000, 2),
        }


# ------------------------------------------------------------------ the workers


@dataclass
class Stack:
    """The three workers of one scenario, on its own topics and Redis prefix."""

    kafka: str
    redis_url: str
    prefix: str
    folder: Path
    events_partitions: int = 2
    port: int = field(default_factory=free_port)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return {kind: f"{self.prefix}.{kind}" for kind in ("raw", "events", "rejected", "recs")}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        topics = self.topics
        return {
            "REELFEED_KAFKA_BOOTSTRAP": self.kafka,
            "REELFEED_REDIS_URL": self.redis_url,
            "REELFEED_REDIS_PREFIX": self.prefix,
            "REELFEED_RAW_TOPIC": topics["raw"],
            "REELFEED_EVENTS_TOPIC": topics["events"],
            "REELFEED_REJECTED_TOPIC": topics["rejected"],
            "REELFEED_RECOMMENDATIONS_TOPIC": topics["recs"],
            "REELFEED_TOPIC_PARTITIONS": "2",
            "REELFEED_INGEST_APP_ID": f"{self.prefix}-ingest",
            "REELFEED_INGEST_METRICS_PORT": "0",
            "REELFEED_LEARN_METRICS_PORT": "0",
            "REELFEED_LEARN_VERSION": "v1",
            "REELFEED_LEARN_PARAMS": PARAMS,
            "REELFEED_LEARN_PUBLISH_INTERVAL": "0.5",
            "REELFEED_SERVER_PORT": str(self.port),
            **extra,
        }

    async def create_topics(self) -> None:
        topics = self.topics
        await asyncio.to_thread(
            create_topics,
            self.kafka,
            {
                topics["raw"]: 2,
                topics["events"]: self.events_partitions,
                topics["rejected"]: 1,
                topics["recs"]: 1,
            },
        )

    def start(self, role: str, name: str, **extra: str) -> WorkerProcess:
        worker = WorkerProcess(role, self.env(**extra), self.folder, name)
        worker.start()
        self.workers.append(worker)
        return worker

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every worker still running; their exit codes (0: clean)."""
        codes = {}
        for worker in reversed(self.workers):
            assert worker.process is not None
            if worker.process.poll() is None or worker.process.returncode != -9:
                codes[worker.log_path.stem] = worker.stop()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail(3000)}" for w in self.workers)


async def serving_up(base_url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(f"{base_url}/healthz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def serving_lists(base_url: str) -> bool:
    """Whether the server answers with a non-empty list (it has loaded something)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(f"{base_url}/recommend/1") as response,
        ):
            return response.status == 200 and bool((await response.read()).strip())
    except (aiohttp.ClientError, TimeoutError):
        return False


async def scrape_fallbacks(base_url: str) -> dict[str, float]:
    """The server's own count of popularity answers, by reason."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{base_url}/metrics") as response,
    ):
        text = await response.text()
    found = {}
    for line in text.splitlines():
        if line.startswith("reelfeed_server_fallbacks_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return found


@contextlib.asynccontextmanager
async def probing(stack: Stack, users: list[int]) -> Any:
    """Serve-probe from the server's first answer until the block ends."""
    server = next(w for w in stack.workers if w.role == "serve")
    await wait_until(lambda: serving_up(stack.base_url), 60, server)
    probe = ServingProbe(stack.base_url, users)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    try:
        yield probe
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def background(traffic: Traffic, lines: list[bytes]) -> Any:
    """Produce ``lines`` in a task while the block runs; cancel it if the block fails."""
    task = asyncio.create_task(traffic.produce(lines))
    try:
        yield traffic, task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ------------------------------------------------------------------ checks


async def learned_per_user(store: ModelStore) -> dict[int, int]:
    """Each user's count of learned events, as the learner committed it to Redis."""
    rows = await store.users(range(1, USERS + 1))
    return {user: int(row[0]) for user, row in rows.items()}


def learned_exactly(store: ModelStore, expected: Counter[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        with _redis_away_means_not_yet():
            return await learned_per_user(store) == dict(expected)
        return False

    return check


async def ingested(features: FeatureStore) -> int:
    counts = await features.counts()
    return sum(v for k, v in counts.items() if k != "watch_started")


def ingested_reaches(features: FeatureStore, lines: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        with _redis_away_means_not_yet():
            return await ingested(features) >= lines
        return False

    return check


def _redis_away_means_not_yet() -> contextlib.suppress:
    # The test's own connections to a Redis that restarted fail once each.
    return contextlib.suppress(redis.ConnectionError)


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Merge one scenario's figures into ``reports/failures.json``."""
    REPORT.parent.mkdir(exist_ok=True)
    try:
        report = orjson.loads(REPORT.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        report = {}
    report[scenario] = {
        **figures,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


async def record_failure(
    scenario: str,
    figures: dict[str, Any],
    exc: BaseException,
    store: ModelStore,
    features: FeatureStore,
    began: float,
) -> None:
    """Record how far a failed scenario got, so that a failure in CI can be read."""
    figures["failed"] = repr(exc)[:1000]
    figures["seconds"] = elapsed(began)
    with contextlib.suppress(Exception):
        figures["progress_at_failure"] = {
            "events_learned": sum((await learned_per_user(store)).values()),
            "lines_ingested": await ingested(features),
            "events_consumed": await positions_total(store),
        }
    record(scenario, figures)


def probe_users(seed: int) -> list[int]:
    rng = random.Random(seed)
    # Known users and some the stream never mentions (popularity answers them).
    return [rng.randint(1, USERS) for _ in range(200)] + [900_000 + n for n in range(20)]


async def positions_total(store: ModelStore) -> int:
    return sum(offset + 1 for offset in (await store.positions()).values())


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)


# ------------------------------------------------------------------ a. learner SIGKILL


async def test_learner_sigkill_mid_stream_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    lines = clean_lines(260, seed=31, start=datetime(2023, 10, 25, 7, 0, tzinfo=UTC))
    total, per_user = expected_learning(events_of_lines(lines))
    stack = Stack(kafka_bootstrap, redis_url, unique_name, tmp_path)
    await stack.create_topics()
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    features = FeatureStore(redis_client, keys, half_life_s=86_400)
    # Checkpoints only on request: the test decides where the last one lies.
    learn_env = {"REELFEED_LEARN_CHECKPOINT_INTERVAL": "3600"}
    stack.start("serve", "serve")
    stack.start("ingest", "ingest")
    first = stack.start("learn", "learn-first", **learn_env)
    figures: dict[str, Any] = {"lines": len(lines), "learning_events": total}
    try:
        async with (
            probing(stack, probe_users(1)) as probe,
            background(Traffic(kafka_bootstrap, stack.topics["raw"]), lines) as (
                traffic,
                producing,
            ),
        ):
            await wait_until(lambda: _above(positions_total(store), 600), 90, first)
            request = LearnerRequest("checkpoint")
            await SnapshotStore(redis_client, keys).send("v1", request)
            await wait_until(lambda: _checkpoint_after(store, request.sent), 30, first)
            checkpointed = await _checkpoint_total(store)
            # Learned and committed to Redis, but in no checkpoint: the kill takes the
            # learner's memory of these, and the restart must learn them again, once.
            await wait_until(lambda: _above(positions_total(store), checkpointed + 400), 60, first)
            assert not producing.done(), "the traffic ended before the kill: raise its length"
            first.kill()
            killed_at = await positions_total(store)
            figures["events_past_checkpoint_at_kill"] = killed_at - checkpointed
            figures["lines_sent_at_kill"] = traffic.sent
            assert await _checkpoint_total(store) == checkpointed < killed_at
            await asyncio.sleep(1.0)  # down for a moment, as under a supervisor
            restarted_at = time.monotonic()
            second = stack.start("learn", "learn-second", **learn_env)
            await producing
            await wait_until(learned_exactly(store, per_user), 120, second)
            figures["seconds_restart_to_caught_up"] = elapsed(restarted_at)
            await wait_until(ingested_reaches(features, len(lines)), 30, stack.workers[1])
        figures["serving"] = probe.summary()
        figures["server_fallbacks"] = await scrape_fallbacks(stack.base_url)
    except BaseException as exc:
        await record_failure("a_learner_sigkill", figures, exc, store, features, began)
        raise
    finally:
        codes = stack.stop_all()
    figures["seconds"] = elapsed(began)
    record("a_learner_sigkill", figures)
    assert all(code == 0 for code in codes.values()), (codes, stack.logs())
    state = await final_state(store)
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    assert await ingested(features) == len(lines)
    assert probe.non_200 == 0, f"non-200 answers while the learner was killed: {figures}"


async def _above(value: Awaitable[int], floor: int) -> bool:
    return await value > floor


async def _checkpoint_after(store: ModelStore, sent: float) -> bool:
    checkpoint = await store.load_checkpoint()
    return checkpoint is not None and checkpoint.created >= sent


async def _checkpoint_total(store: ModelStore) -> int:
    checkpoint = await store.load_checkpoint()
    assert checkpoint is not None
    return sum(offset + 1 for offset in checkpoint.positions.values())


# ------------------------------------------------------------------ d. Redis outage


async def test_redis_outage_pauses_the_workers_and_they_resume_exactly(
    kafka_bootstrap: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    # A Redis of this test's own, so that stopping it disturbs no other test.
    layout = StackLayout(f"redis-{unique_name}", tmp_path / "redis-stack", 0, 0, free_port())
    server = RedisServer(layout, persist=True)
    await asyncio.to_thread(server.start)
    client = aioredis.Redis.from_url(server.url)
    lines = clean_lines(260, seed=41, start=datetime(2023, 10, 26, 7, 0, tzinfo=UTC))
    stack = Stack(kafka_bootstrap, server.url, unique_name, tmp_path)
    try:
        await _redis_outage(stack, server, client, lines, began)
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)


async def _redis_outage(
    stack: Stack, server: RedisServer, client: aioredis.Redis, lines: list[bytes], began: float
) -> None:
    total, per_user = expected_learning(events_of_lines(lines))
    await stack.create_topics()
    keys = KeySchema(stack.prefix)
    store = ModelStore(client, keys, "v1")
    features = FeatureStore(client, keys, half_life_s=86_400)
    stack.start("serve", "serve")
    ingest = stack.start("ingest", "ingest")
    learner = stack.start("learn", "learn")
    figures: dict[str, Any] = {"lines": len(lines), "learning_events": total}
    try:
        async with (
            probing(stack, probe_users(2)) as probe,
            background(Traffic(stack.kafka, stack.topics["raw"]), lines) as (traffic, producing),
        ):
            await wait_until(lambda: _above(positions_total(store), 600), 90, learner)
            await wait_until(lambda: _has_matrix(store), 30, learner)
            # The outage hits a server that has loaded what Redis held, as in production.
            await wait_until(lambda: serving_lists(stack.base_url), 30)
            # Shut down cleanly, so it saves its data and comes back with it: an outage,
            # not a loss.
            await asyncio.to_thread(server.stop)
            down_at = time.monotonic()
            figures["lines_sent_at_outage"] = traffic.sent
            await asyncio.sleep(8)
            ingest.assert_alive()
            learner.assert_alive()
            assert not producing.done(), "the traffic ended during the outage: raise its length"
            await asyncio.to_thread(server.start)
            figures["outage_seconds"] = elapsed(down_at)
            back_at = time.monotonic()
            await producing
            await wait_until(learned_exactly(store, per_user), 120, learner)
            await wait_until(ingested_reaches(features, len(lines)), 60, ingest)
            figures["seconds_back_to_caught_up"] = elapsed(back_at)
        figures["serving"] = probe.summary()
        figures["server_fallbacks"] = await scrape_fallbacks(stack.base_url)
        figures["learner_waited"] = "Redis unreachable" in learner.log_tail(200_000)
        figures["ingest_waited"] = "Redis unreachable" in ingest.log_tail(200_000)
    except BaseException as exc:
        await record_failure("d_redis_outage", figures, exc, store, features, began)
        raise
    finally:
        codes = stack.stop_all()
    state = await final_state(store)
    applied = await ingested(features)
    rejected = await features.rejected_counts()
    figures["seconds"] = elapsed(began)
    record("d_redis_outage", figures)
    assert all(code == 0 for code in codes.values()), (codes, stack.logs())
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    assert applied == len(lines) and not rejected
    # Both met the outage (or the test proved nothing) and waited for Redis.
    assert figures["learner_waited"] and figures["ingest_waited"], stack.logs()
    assert probe.non_200 == 0, f"non-200 answers during the Redis outage: {figures}"


async def _has_matrix(store: ModelStore) -> bool:
    return await store.matrix_revision() > 0


# ------------------------------------------------------------------ c. broker restart


async def test_broker_restart_under_load_workers_reconnect_and_lose_nothing(
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    # A broker of this test's own: the session's broker serves the other tests.
    layout = StackLayout(
        f"kafka-{unique_name}", tmp_path / "kafka-stack", free_port(), free_port(), 0
    )
    lib = await asyncio.to_thread(resolve_kafka_jars, default_cache_dir(os.environ))
    broker = KafkaBroker(layout, lib, heap="512m")
    await asyncio.to_thread(broker.start, 90.0)
    figures: dict[str, Any] = {"broker_start_seconds": elapsed(began)}
    try:
        stack = Stack(broker.bootstrap, redis_url, unique_name, tmp_path)
        await _broker_restart(stack, broker, redis_client, figures, began)
    finally:
        await asyncio.to_thread(broker.stop)


async def _broker_restart(
    stack: Stack,
    broker: KafkaBroker,
    client: aioredis.Redis,
    figures: dict[str, Any],
    began: float,
) -> None:
    lines = clean_lines(300, seed=51, start=datetime(2023, 10, 27, 7, 0, tzinfo=UTC))
    total, per_user = expected_learning(events_of_lines(lines))
    figures.update({"lines": len(lines), "learning_events": total})
    await stack.create_topics()
    keys = KeySchema(stack.prefix)
    store = ModelStore(client, keys, "v1")
    features = FeatureStore(client, keys, half_life_s=86_400)
    stack.start("serve", "serve")
    ingest = stack.start("ingest", "ingest")
    learner = stack.start("learn", "learn")
    try:
        async with (
            probing(stack, probe_users(3)) as probe,
            background(Traffic(stack.kafka, stack.topics["raw"]), lines) as (traffic, producing),
        ):
            await wait_until(lambda: _above(positions_total(store), 600), 90, learner)
            await wait_until(lambda: _has_matrix(store), 30, learner)
            down_at = time.monotonic()
            figures["lines_sent_at_stop"] = traffic.sent
            await asyncio.to_thread(broker.stop)
            figures["broker_stop_seconds"] = elapsed(down_at)
            await asyncio.sleep(3)
            assert not producing.done(), "the traffic ended during the outage: raise its length"
            await asyncio.to_thread(broker.start, 90.0)
            figures["broker_down_seconds"] = elapsed(down_at)
            back_at = time.monotonic()
            await producing
            figures["traffic_retried_lines"] = traffic.retried
            figures["traffic_failures"] = dict(traffic.failures)
            await wait_until(ingested_reaches(features, len(lines)), 120, ingest)
            await wait_until(learned_exactly(store, per_user), 120, learner)
            figures["seconds_back_to_caught_up"] = elapsed(back_at)
        figures["serving"] = probe.summary()
        figures["server_fallbacks"] = await scrape_fallbacks(stack.base_url)
    except BaseException as exc:
        await record_failure("c_broker_restart", figures, exc, store, features, began)
        raise
    finally:
        codes = stack.stop_all()
    state = await final_state(store)
    applied = await ingested(features)
    rejected = await features.rejected_counts()
    figures["ingest_rejected"] = rejected
    figures["seconds"] = elapsed(began)
    record("c_broker_restart", figures)
    assert all(code == 0 for code in codes.values()), (codes, stack.logs())
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    # A line the site sent again after a failed send reaches ingest twice at most.
    assert applied == len(lines)
    assert set(rejected) <= {"duplicate"} and rejected.get("duplicate", 0) <= traffic.retried
    assert probe.non_200 == 0, f"non-200 answers while the broker restarted: {figures}"


# ------------------------------------------------------------------ b. Redis data lost


async def test_lost_redis_comes_back_from_a_snapshot_file_and_a_kafka_replay(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    lines = clean_lines(300, seed=61, start=datetime(2023, 10, 28, 7, 0, tzinfo=UTC))
    half = len(lines) // 2
    events = events_of_lines(lines)
    total, per_user = expected_learning(events)
    _, per_user_first = expected_learning(events[:half])
    stack = Stack(kafka_bootstrap, redis_url, unique_name, tmp_path)
    await stack.create_topics()
    keys = KeySchema(unique_name)
    store = ModelStore(redis_client, keys, "v1")
    features = FeatureStore(redis_client, keys, half_life_s=86_400)
    env = stack.env()

    async def cli(*argv: str) -> dict[str, Any]:
        # The command runs its own event loop: give it a thread of its own.
        code = await asyncio.to_thread(main, ["snapshot", *argv], env)
        captured = capsys.readouterr()
        assert code == 0, captured.err
        answer = orjson.loads(captured.out)
        assert isinstance(answer, dict)
        return answer

    stack.start("serve", "serve")
    ingest = stack.start("ingest", "ingest")
    learner = stack.start("learn", "learn")
    figures: dict[str, Any] = {"lines": len(lines), "learning_events": total}
    exported = tmp_path / "v1.snapshot"
    try:
        async with probing(stack, probe_users(4)) as probe:
            traffic = Traffic(kafka_bootstrap, stack.topics["raw"])
            await traffic.produce(lines[:half])
            await wait_until(learned_exactly(store, per_user_first), 90, learner)
            snapshot = await cli("create", "--version", "v1", "--note", "before the loss")
            assert snapshot["learner_answered"] is True
            exported_info = await cli("export", snapshot["id"], str(exported))
            figures["snapshot_bytes"] = exported_info["bytes"]

            await traffic.produce(lines[half:])
            await wait_until(learned_exactly(store, per_user), 90, learner)
            await wait_until(ingested_reaches(features, len(lines)), 60, ingest)
            before_rows = await store.users(range(1, USERS + 1))
            before_watched = await _watched(features)
            before_counts = await features.counts()

            # The loss: the learner and ingest die, and Redis forgets this stack.
            lost_at = time.monotonic()
            learner.kill()
            ingest.kill()
            figures["keys_lost"] = await _delete_prefix(redis_client, unique_name)

            # The recovery: the snapshot file, then Kafka replays the rest.
            imported = await cli("import", str(exported))
            restored = await cli("restore", imported["id"], "--version", "v1")
            assert restored["positions"] == snapshot["positions"]
            # Ingest under a new group reads the raw topic from its start; its features
            # (and their watermarks) went with Redis, so it applies every line again.
            ingest = stack.start(
                "ingest", "ingest-replay", REELFEED_INGEST_APP_ID=f"{unique_name}-replay"
            )
            learner = stack.start("learn", "learn-restored")
            await wait_until(learned_exactly(store, per_user), 120, learner)
            await wait_until(ingested_reaches(features, len(lines)), 120, ingest)
            figures["seconds_loss_to_recovered"] = elapsed(lost_at)
            after_rows = await store.users(range(1, USERS + 1))
            live = (await RoutingStore(redis_client, keys).get()).live
            version = await VersionRegistry(redis_client, keys).get("v1")
            figures["registry_restored_from_after_recovery"] = (
                None if version is None else version.restored_from
            )
            assert await _watched(features) == before_watched
            assert await features.counts() == before_counts
        figures["serving"] = probe.summary()
        figures["server_fallbacks"] = await scrape_fallbacks(stack.base_url)
    except BaseException as exc:
        await record_failure("b_redis_lost_snapshot_replay", figures, exc, store, features, began)
        raise
    finally:
        codes = stack.stop_all()
    state = await final_state(store)
    figures["factors_after_vs_before"] = _compare_rows(before_rows, after_rows)
    figures["seconds"] = elapsed(began)
    record("b_redis_lost_snapshot_replay", figures)
    assert all(code == 0 for code in codes.values()), (codes, stack.logs())
    # It started from the snapshot, not from an empty model replaying everything.
    restarted_log = learner.log_tail(200_000)
    assert "restored v1 from its checkpoint" in restarted_log, restarted_log
    assert "no checkpoint of v1" not in restarted_log, restarted_log
    assert live == "v1"
    assert state.events_learned == total
    assert {u: state.model.user_events(u) for u in per_user} == dict(per_user)
    assert before_rows.keys() == after_rows.keys()
    assert probe.non_200 == 0, f"non-200 answers while Redis was lost: {figures}"


async def _watched(features: FeatureStore) -> dict[int, dict[str, int]]:
    return {user: await features.watched(user) for user in range(1, USERS + 1)}


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> int:
    """What a FLUSHALL does to this stack, leaving the other tests' keys alone."""
    lost = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if lost:
        await client.delete(*lost)
    return len(lost)


def _compare_rows(before: dict[int, np.ndarray], after: dict[int, np.ndarray]) -> dict[str, Any]:
    """How far the replayed user factors are from the ones lost.

    The counts must match exactly; the factors match only up to the order of the
    updates, because the replay reads the events in other micro-batches than the live
    run did (a micro-batch is learned in waves that share parameters).
    """
    users = sorted(before.keys() & after.keys())
    old = np.stack([before[u][1:] for u in users]).astype(np.float64)
    new = np.stack([after[u][1:] for u in users]).astype(np.float64)
    cosine = (old * new).sum(axis=1) / (
        np.linalg.norm(old, axis=1) * np.linalg.norm(new, axis=1) + 1e-12
    )
    return {
        "users": len(users),
        "identical_users": int(sum(np.array_equal(before[u], after[u]) for u in users)),
        "max_abs_difference": round(float(np.abs(old - new).max()), 6),
        "median_cosine": round(float(np.median(cosine)), 6),
        "min_cosine": round(float(cosine.min()), 6),
    }


async def test_a_learner_started_while_redis_is_down_waits_for_it(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from reelfeed.infra import create_topics
    from stream.learn import LearnConfig, run_learner

    topic = f"{unique_name}.events"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 1})
    layout = StackLayout(f"redis-{unique_name}", tmp_path / "redis-stack", 0, 0, free_port())
    server = RedisServer(layout, persist=False)
    config = LearnConfig(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=layout.redis_url,
        redis_prefix=unique_name,
        events_topic=topic,
        datadir=tmp_path,
        version="v1",
        model_params=orjson.loads(PARAMS),
    )
    stop = asyncio.Event()
    learner = asyncio.create_task(run_learner(config, stop))
    try:
        await asyncio.sleep(3)
        assert not learner.done(), "the learner gave up while Redis was down"
        await asyncio.to_thread(server.start)
        client = aioredis.Redis.from_url(layout.redis_url)
        routing = RoutingStore(client, KeySchema(unique_name))

        async def live() -> bool:
            assert not learner.done(), learner.exception()
            return (await routing.get()).live == "v1"

        # The learner's backoff is at most 5 s; it registers and goes live once it can.
        await wait_until(live, timeout=30)
        await client.aclose()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(learner, 30)
        await asyncio.to_thread(server.stop)
