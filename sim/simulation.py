"""The simulation in real time: the site core on an accelerated clock, HTTP calls to the
recommendation service, lines to Kafka.

``Simulation`` maps real time to simulated time (``speed`` simulated seconds per real
second), asks the pure ``Site`` for what is due, makes the recommendation calls
concurrently (``HttpRecommender``: ``GET <url>/recommend/<uid>`` with the site's 800 ms
timeout), passes every line through the ``NoiseInjector`` and hands the records to a
``LineSink``: ``KafkaSink`` (keyed by user id), ``FileSink`` or ``ListSink``.

By default the simulated clock starts far enough in the past that it does not pass the
wall clock within ``clock_lead_s`` real seconds: a consumer that refuses lines from the
future (as the course's noise teaches one to) accepts all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry

from sim.faults import FaultConfig, NoiseInjector, RatingBurst, WatchBots
from sim.lines import LogLine, Record
from sim.metrics import SimulationCollector
from sim.site import RecommendationCall, RecommendationOutcome, Site, SiteConfig
from sim.world import UserProfile, World, WorldConfig

__all__ = [
    "FileSink",
    "FunctionRecommender",
    "HttpRecommender",
    "KafkaSink",
    "LineSink",
    "ListSink",
    "Recommender",
    "Simulation",
    "SimulationConfig",
]

log = logging.getLogger(__name__)


class Recommender(Protocol):
    """Answers a user's recommendation request the way the site logs it."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __call__(self, user_id: int) -> RecommendationOutcome: ...


class LineSink(Protocol):
    """Where produced records go."""

    async def start(self) -> None: ...

    async def send(self, record: Record) -> None: ...

    async def close(self) -> None: ...


class FunctionRecommender:
    """A plain function as the recommendation service (tests, benchmarks).

    Examples
    --------
    >>> recommend = FunctionRecommender(lambda user_id: ["up+2009"], latency_ms=3.0)
    >>> asyncio.run(recommend(7)).result_text
    'up+2009'
    """

    def __init__(self, function: Callable[[int], Sequence[str]], latency_ms: float = 1.0):
        self.function = function
        self.latency_ms = latency_ms

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __call__(self, user_id: int) -> RecommendationOutcome:
        return RecommendationOutcome.answered(list(self.function(user_id)), self.latency_ms)


class HttpRecommender:
    """``GET <base_url>/recommend/<user_id>`` with the course site's timeout and error texts.

    A refused connection is logged as ``java.net.ConnectException: Connection refused``, a
    timeout as ``java.util.concurrent.TimeoutException: Request timeout to
    <host>/<address>:<port> after 800 ms`` (both with status 0), an HTTP error with its
    status and body. ``version_header`` names a response header whose value, when
    present, labels the ground truth and conversions by model version.

    Examples
    --------
    >>> recommend = HttpRecommender("http://127.0.0.1:8082")
    >>> recommend.server_name
    '127.0.0.1:8082'
    """

    def __init__(
        self,
        base_url: str,
        timeout_ms: int = 800,
        version_header: str | None = "X-Model-Version",
        max_connections: int = 256,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"recommend URL {base_url!r} is not http(s)://host[:port]")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.address = self.host
        self.timeout_ms = timeout_ms
        self.version_header = version_header
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def server_name(self) -> str:
        """``host:port``, as the recommendation line names the server."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        if self._session is not None:
            return
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            with contextlib.suppress(OSError):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.host, self.port, type=socket.SOCK_STREAM
                )
                if infos:
                    self.address = str(infos[0][4][0])
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_ms / 1000.0),
            connector=aiohttp.TCPConnector(limit=self.max_connections),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, user_id: int) -> RecommendationOutcome:
        if self._session is None:
            await self.start()
        assert self._session is not None
        loop = asyncio.get_running_loop()
        began = loop.time()

        def elapsed_ms() -> float:
            return (loop.time() - began) * 1000.0

        try:
            async with self._session.get(f"{self.base_url}/recommend/{user_id}") as response:
                body = await response.text(errors="replace")
                if response.status != 200:
                    return RecommendationOutcome.http_error(response.status, body, elapsed_ms())
                ids = [part.strip() for part in body.strip().split(",") if part.strip()]
                version = response.headers.get(self.version_header) if self.version_header else None
                return RecommendationOutcome.answered(ids, elapsed_ms(), version)
        except TimeoutError:
            return RecommendationOutcome.timed_out(
                self.host, self.address, self.port, self.timeout_ms, elapsed_ms()
            )
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                return RecommendationOutcome.refused(elapsed_ms())
            return RecommendationOutcome.failed(
                f"java.net.ConnectException: {exc.os_error.strerror or exc}", elapsed_ms()
            )
        except aiohttp.ClientError as exc:
            return RecommendationOutcome.failed(f"java.io.IOException: {exc}", elapsed_ms())


class ListSink:
    """Keeps every record in memory (tests).

    Examples
    --------
    >>> sink = ListSink()
    >>> asyncio.run(sink.send(Record(b"1", b"x", "watch")))
    >>> [r.value for r in sink.records]
    [b'x']
    """

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def start(self) -> None:
        return None

    async def send(self, record: Record) -> None:
        self.records.append(record)

    async def close(self) -> None:
        return None


class FileSink:
    """Writes one line per record to a file, or to standard output for ``"-"``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "movielog.txt"
    >>> async def write() -> None:
    ...     sink = FileSink(path)
    ...     await sink.start()
    ...     await sink.send(Record(b"1", b"2023-10-25T07:20:57,1,GET /rate/up+2009=4", "rate"))
    ...     await sink.close()
    >>> asyncio.run(write())
    >>> path.read_text()
    '2023-10-25T07:20:57,1,GET /rate/up+2009=4\\n'
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._handle: IO[bytes] | None = None
        self._owned = False

    async def start(self) -> None:
        if self._handle is None:
            self._owned = self.path != "-"
            self._handle = open(self.path, "ab") if self._owned else sys.stdout.buffer

    async def send(self, record: Record) -> None:
        assert self._handle is not None, "start the sink first"
        self._handle.write(record.value + b"\n")

    async def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.flush()
            if self._owned:
                handle.close()


class KafkaSink:
    """Produces records to a Kafka topic with aiokafka, keyed by user id.

    ``send`` waits only for room in the producer's buffer, not for delivery; failed
    deliveries are counted in ``errors``.
    """

    def __init__(self, bootstrap: str, topic: str, linger_ms: int = 20) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.linger_ms = linger_ms
        self.errors = 0
        self.delivered = 0
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=self.linger_ms, acks=1
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    def _done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
        else:
            self.delivered += 1

    async def send(self, record: Record) -> None:
        assert self._producer is not None, "start the sink first"
        future = await self._producer.send(self.topic, record.value, key=record.key)
        future.add_done_callback(self._done)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.flush()
            finally:
                await producer.stop()


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything a simulation needs to know.

    Parameters
    ----------
    world, site, faults
        The world, the site's behaviour and the faults.
    seed
        Seed of the site's choices, the noise and the attacks (the world has its own).
    start
        Simulated Unix time at the start; ``None``: ``clock_lead_s`` real seconds before
        the simulated clock would pass the wall clock.
    clock_lead_s
        See ``start``.
    version_header
        Response header naming the model version that answered (``None``: ignore).

    Examples
    --------
    >>> SimulationConfig().site.speed
    60.0
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    start: float | None = None
    clock_lead_s: float = 12 * 3600.0
    version_header: str | None = "X-Model-Version"


class Simulation:
    """The simulated site in real time.

    Parameters
    ----------
    config
        What to simulate.
    recommend
        The service's base URL (``http://127.0.0.1:8082``) or a ``Recommender``.
    sink
        Where the lines go.
    world
        A world already built from ``config.world`` (built here otherwise).

    Examples
    --------
    >>> config = SimulationConfig(
    ...     world=WorldConfig(catalog="synthetic", movies=200, users=1000),
    ...     site=SiteConfig(arrivals_per_second=20.0, speed=600.0))
    >>> sink = ListSink()
    >>> simulation = Simulation(config, recommend=FunctionRecommender(lambda u: []), sink=sink)
    >>> summary = asyncio.run(simulation.run(lines=50))
    >>> summary["lines_sent"], len(sink.records)
    (50, 50)
    """

    def __init__(
        self,
        config: SimulationConfig,
        *,
        recommend: str | Recommender,
        sink: LineSink,
        world: World | None = None,
    ) -> None:
        self.config = config
        self.world = world or World.build(config.world)
        self.sink = sink
        site_config = config.site
        if isinstance(recommend, str):
            http = HttpRecommender(recommend, site_config.timeout_ms, config.version_header)
            self.recommender: Recommender = http
            if site_config.server_name is None:
                site_config = replace(site_config, server_name=http.server_name)
        else:
            self.recommender = recommend
        speed = site_config.speed
        if config.start is not None:
            start = config.start
        else:
            start = time.time() - max(speed - 1.0, 0.0) * config.clock_lead_s
        self.site = Site(self.world, site_config, start=start, seed=config.seed)
        faults = config.faults
        self.noise = NoiseInjector(faults.noise_rate, faults.noise_kinds, seed=config.seed + 1)
        if faults.rating_burst is not None:
            accounts = self.site.new_accounts(faults.rating_burst.accounts)
            self.site.add_actor(
                RatingBurst(faults.rating_burst, self.world, start, speed, accounts, config.seed)
            )
        if faults.watch_bots is not None:
            accounts = self.site.new_accounts(faults.watch_bots.bots)
            self.site.add_actor(
                WatchBots(faults.watch_bots, self.world, start, speed, accounts, config.seed)
            )
        self.produced: dict[tuple[str, str], int] = {}
        self.lines_sent = 0
        self.registry = CollectorRegistry()
        self.registry.register(
            SimulationCollector(self.site, self.noise, self.produced, self._sink_errors)
        )
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._stop = asyncio.Event()
        self._limit: int | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._lag_s = 0.0

    # -- the view the course API and the command line read -----------------------------------

    def user(self, user_id: int) -> UserProfile | None:
        """Demographics of a user of the population or of an account an attack created."""
        profile = self.world.profile(user_id)
        if profile is None and user_id in self.site.accounts:
            return self.world.draw_profile(user_id)
        return profile

    def _sink_errors(self) -> int:
        return int(getattr(self.sink, "errors", 0))

    def _elapsed(self) -> float:
        if self._started_at is None:
            return 0.0
        end = self._finished_at if self._finished_at is not None else time.monotonic()
        return end - self._started_at

    def status(self) -> dict[str, object]:
        """A JSON-ready snapshot: clock, rates, sessions, requests, conversion."""
        elapsed = self._elapsed()
        stats = self.site.stats
        return {
            "running": self._started_at is not None and self._finished_at is None,
            "elapsed_s": round(elapsed, 3),
            "simulated_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.site.now)),
            "speed": self.config.site.speed,
            "world": {
                "source": self.world.source,
                "movies": len(self.world.movies),
                "users": self.world.config.users,
            },
            "lines_sent": self.lines_sent,
            "lines_per_second": round(self.lines_sent / elapsed, 1) if elapsed > 0 else 0.0,
            "target_lines_per_second": self.config.site.lines_per_second,
            "arrivals_per_second": round(self.site.arrival_rate, 3),
            "lag_s": round(max(self._lag_s, 0.0), 3),
            "active_sessions": self.site.active_sessions,
            "pending_calls": self.site.pending_calls,
            "noise": dict(sorted(self.noise.counts.items())),
            "sink_errors": self._sink_errors(),
            "site": stats.summary(),
        }

    def truth_report(self) -> dict[str, object]:
        return self.site.truth.report()

    def summary(self) -> dict[str, object]:
        """``status()`` plus the ground truth: what the command line prints at the end."""
        report = self.status()
        report["truth"] = self.truth_report()
        return report

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to finish (safe from a signal handler)."""
        self._stop.set()

    async def run(
        self, duration_s: float | None = None, lines: int | None = None
    ) -> dict[str, object]:
        """Run until ``duration_s`` real seconds passed, ``lines`` lines were sent, or
        ``stop()``; return the summary."""
        loop = asyncio.get_running_loop()
        self._limit = lines
        site = self.site
        speed = self.config.site.speed
        await self.sink.start()
        try:
            await self.recommender.start()
            began = loop.time()
            self._started_at = time.monotonic()
            self._finished_at = None
            log.info(
                "simulation started: %d movies (%s), %d users, speed %.0fx, %.2f arrivals/s",
                len(self.world.movies),
                self.world.source,
                self.world.config.users,
                speed,
                site.arrival_rate,
            )
            while not self._stop.is_set():
                elapsed = loop.time() - began
                if duration_s is not None and elapsed >= duration_s:
                    break
                # Behind schedule (more lines asked than the process can make), advance in
                # slices, so that stops and deadlines are still noticed on time.
                now = min(site.start + elapsed * speed, site.now + _TICK_S * speed)
                step = site.advance(now)
                await self._produce(step.lines)
                for call in step.calls:
                    task = asyncio.create_task(self._call(call, began))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
                self._lag_s = elapsed - (now - site.start) / speed
                due = site.next_due()
                wait = _TICK_S if due is None else min(max((due - now) / speed, 0.0), _TICK_S)
                if self._lag_s > _TICK_S:
                    wait = 0.0
                if duration_s is not None:
                    wait = min(wait, max(duration_s - elapsed, 0.0))
                if wait <= 0:
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
        finally:
            for task in list(self._calls):
                task.cancel()
            await asyncio.gather(*self._calls, return_exceptions=True)
            self._finished_at = time.monotonic()
            try:
                await self.recommender.close()
            finally:
                await self.sink.close()
        log.info("simulation stopped after %.1f s: %d lines", self._elapsed(), self.lines_sent)
        return self.summary()

    async def _call(self, call: RecommendationCall, began: float) -> None:
        outcome = await self.recommender(call.user_id)
        now = self.site.start + (asyncio.get_running_loop().time() - began) * self.config.site.speed
        await self._produce(self.site.complete(call, outcome, now))

    async def _produce(self, lines: list[LogLine]) -> None:
        for line in lines:
            for record in self.noise.apply(line):
                if self._limit is not None and self.lines_sent >= self._limit:
                    self._stop.set()
                    return
                await self.sink.send(record)
                self.lines_sent += 1
                key = (record.kind, record.actor)
                self.produced[key] = self.produced.get(key, 0) + 1
        if self._limit is not None and self.lines_sent >= self._limit:
            self._stop.set()


# Longest sleep of the driving loop: how quickly it notices a stop or a deadline.
_TICK_S = 0.05
