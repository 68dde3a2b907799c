"""Serving benchmark: ``GET /recommend/<uid>`` under wrk, against a minimal aiohttp server.

Puts 100k users (realistic watched sets) and an item matrix into the test stack's Redis
under a unique prefix. By default the model is the default one learned on a simulated
day of the streaming site (``bench.learned``: 84 dimensions, the model's own popularity
blend, every movie the day's traffic touched), its user rows repeated over the 100k
users; ``--data synthetic`` gives the older synthetic factors (27k movies, k=32, no
blend published: the server's 1.0 applies, which lets its pruning skip most of the
catalog). It starts the real server
(``server.run_server``) and a minimal aiohttp app that answers a fixed 20-id line
(same uvloop, no access log, same worker count), and drives each with wrk on loopback
(64 connections, user ids spread over all users by a Lua script). Prints one JSON
object: requests/s, p50 and p99 latency and CPU per request of both servers, the
throughput ratio, for 1 and 2 workers (``SO_REUSEPORT``), plus the server's fallback
and provenance counters, its latency at 4 connections (service time), and its latency
at 64 connections paced to about 6,000 requests/s (``--paced-rate``: each connection
waits an exponential time after each answer), where the closed loop's latency is set by
Little's law instead (64 / throughput). For each run
also the load average, wrk's CPU share and, per server process, the share of the run it
spent on a CPU and waiting for one: whether more workers can help on this machine.

Run: ``.venv/bin/python -m bench.serve [--seconds 10] [--workers 1 2] [--no-kafka]
[--data learned|synthetic] [--sim-hours 24]``.
Everything runs on this machine, so wrk competes with the server for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import redis.asyncio as aioredis

from bench.learned import learn_simulated_site
from reelfeed.infra import (
    KafkaBroker,
    RedisServer,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
    testing_stack,
)
from state import ItemMatrix, KeySchema, ModelStore, RoutingStore, user_row

USERS = 100_000
MOVIES = 27_000
FACTORS = 32
VERSION = "bench"
LINE = ",".join(f"movie+{i}+{1990 + i % 30}" for i in range(20))

#: Above this share of fallback answers a run measured popularity, not the model: exit 1.
_MAX_FALLBACK_SHARE = 0.01

_SERVER = """
import logging, sys, orjson
from server import ServerConfig, run_server
logging.basicConfig(level="WARNING")
sys.exit(run_server(ServerConfig(**orjson.loads(sys.argv[1])), workers=int(sys.argv[2])))
"""

# The baseline: the least an aiohttp server does per request, with the same setup.
_BASELINE = """
import multiprocessing, signal, sys, uvloop, asyncio
from aiohttp import web
LINE = sys.argv[3].encode()
async def handler(request):
    return web.Response(body=LINE, content_type="text/plain")
async def serve(port, reuse):
    app = web.Application()
    app.router.add_get("/recommend/{user_id}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse, backlog=1024).start()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)
    await stop.wait()
    await runner.cleanup()
def worker(port, reuse):
    uvloop.run(serve(port, reuse))
if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    if workers == 1:
        worker(port, False)
    else:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=worker, args=(port, True)) for _ in range(workers)]
        for p in procs: p.start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        for p in procs: p.terminate()
        for p in procs: p.join()
"""

_WRK_SCRIPT = """
local users = %d
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/recommend/" .. ((counter * 7919) %% users + 1))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_s": %%.3f, "errors": %%d, "non_2xx": %%d, ' ..
    '"p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


# Appended to the spread script for a paced run: each connection waits an exponential
# time (mean in ms) after each answer, so the 64 connections together send about a
# Poisson stream of requests instead of one the moment the last one was answered.
_PACED_SCRIPT = """
local mean_ms = %f
delay = function()
  return -math.log(1 - math.random()) * mean_ms
end
"""


def _paced(
    port: int,
    seconds: float,
    folder: Path,
    users_script: str,
    connections: int,
    rate: float,
    pgid: int,
) -> dict[str, float]:
    """wrk at about ``rate`` requests/s over ``connections``: latency at a given load
    rather than at saturation (where it is ``connections / throughput`` by Little's law).

    The wait after each answer is calibrated by a short run: a connection's cycle is
    its wait plus the answer's latency, so the wait is ``connections / rate`` less the
    mean latency measured at about that rate. wrk measures each latency from the
    moment it sends, so a stall of the server also delays the requests queued behind
    it rather than counting their wait (coordinated omission): the p99 of this run is
    a lower bound for an open stream of requests at that rate.
    """
    cycle_ms = connections / rate * 1000

    def run(wait_ms: float, run_seconds: float) -> dict[str, float]:
        script = folder / f"paced-{wait_ms:.3f}.lua"
        script.write_text(users_script + _PACED_SCRIPT % wait_ms)
        result = _wrk(port, run_seconds, script, connections)
        result.pop("wrk_cpu_s")
        return result

    probe = run(cycle_ms, 3)
    latency_ms = connections / probe["requests_per_s"] * 1000 - cycle_ms
    wait_ms = max(0.0, cycle_ms - max(0.0, latency_ms))
    cpu_before = _group_cpu_s(pgid)
    result = run(wait_ms, seconds)
    # Smaller batches than in the closed loop: each answer carries more of their cost.
    cpu_s = _group_cpu_s(pgid) - cpu_before
    result["cpu_us_per_request"] = round(cpu_s / result["requests"] * 1e6, 1)
    result["offered_per_s"] = rate
    result["mean_wait_ms"] = round(wait_ms, 3)
    return result


def _synthetic_model() -> tuple[ItemMatrix, list[np.ndarray]]:
    """Factors with a taste structure (users and movies mix a few latent genres), and no
    ranking parameters: the server's configured blend (1.0) applies. Kept to compare with
    figures measured before the learned data."""
    rng = np.random.default_rng(42)
    genres = rng.standard_normal((12, FACTORS)).astype(np.float32) * 0.6
    movie_mix = rng.dirichlet(np.full(12, 0.3), MOVIES).astype(np.float32)
    factors = movie_mix @ genres + rng.standard_normal((MOVIES, FACTORS)).astype(np.float32) * 0.1
    popularity = rng.pareto(1.1, MOVIES).astype(np.float32)
    biases = (0.3 * np.log1p(popularity)).astype(np.float32)
    movie_ids = tuple(f"movie+{i}+{1950 + i % 70}" for i in range(MOVIES))
    mix = rng.dirichlet(np.full(12, 0.3), USERS).astype(np.float32)
    vectors = mix @ genres + rng.standard_normal((USERS, FACTORS)).astype(np.float32) * 0.1
    events = rng.geometric(1 / 40, USERS)
    rows = [user_row(int(n), v) for n, v in zip(events, vectors, strict=True)]
    matrix = ItemMatrix(
        movie_ids, factors, biases, 0, popularity, {"reelfeed.events:0": 1, "reelfeed.events:1": 1}
    )
    return matrix, rows


def _learned_model(
    hours: float, cache: Path | None
) -> tuple[ItemMatrix, list[np.ndarray], dict[str, object]]:
    """The default model after ``hours`` of the simulated site (``bench.learned``); its
    user rows repeat over the benchmark's users. With ``cache``, the model is read from
    that file when it holds one of as many hours, and written there otherwise."""
    learned = None
    if cache is not None and cache.exists():
        kept = pickle.loads(cache.read_bytes())
        if kept.get("hours") == hours:
            learned = kept["model"]
    if learned is None:
        learned = learn_simulated_site(hours)
        if cache is not None:
            cache.write_bytes(pickle.dumps({"hours": hours, "model": learned}))
    rows = [learned.user_rows[user] for user in sorted(learned.user_rows)]
    about: dict[str, object] = {
        "simulated_hours": hours,
        "site_lines": learned.lines,
        "events_learned": learned.events_learned,
        "distinct_user_rows": len(rows),
        "ranking": learned.matrix.ranking,
        "learn_seconds": round(learned.seconds, 1),
    }
    return learned.matrix, rows, about


async def _seed(
    client: aioredis.Redis, prefix: str, matrix: ItemMatrix, rows: list[np.ndarray]
) -> dict[str, int]:
    keys = KeySchema(prefix)
    store = ModelStore(client, keys, VERSION)
    rng = np.random.default_rng(42)
    for start in range(0, USERS, 10_000):
        users = range(start + 1, min(start + 10_000, USERS) + 1)
        await store.commit({u: rows[(u - 1) % len(rows)] for u in users}, {}, {})
    await store.publish_matrix(matrix)
    movie_ids = matrix.movie_ids
    n_movies = len(movie_ids)
    assert matrix.popularity is not None
    popularity = np.asarray(matrix.popularity, dtype=np.float64)
    # Watched sets (as the ingest worker keeps them), skewed to popular movies.
    weights = (popularity + 1e-3 * popularity.max()) / (popularity + 1e-3 * popularity.max()).sum()
    watched_total = 0
    for start in range(0, USERS, 2_000):
        async with client.pipeline(transaction=False) as pipe:
            for user in range(start + 1, min(start + 2_000, USERS) + 1):
                count = int(rng.geometric(1 / 15))
                movies = rng.choice(n_movies, size=min(count, 300), p=weights)
                pipe.hset(keys.watched(user), mapping={movie_ids[m]: 1 for m in movies})
                watched_total += len(set(movies.tolist()))
            await pipe.execute()
    top = np.argsort(-popularity)[:2_000]
    await client.zadd(keys.popularity(), {movie_ids[i]: float(popularity[i]) for i in top})
    await RoutingStore(client, keys).set_live(VERSION)
    return {
        "users": USERS,
        "movies": n_movies,
        "dimensions": int(matrix.factors.shape[1]),
        "watched": watched_total,
    }


async def _drop(client: aioredis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=5_000):
        batch.append(key)
        if len(batch) >= 5_000:
            await client.delete(*batch)
            batch = []
    if batch:
        await client.delete(*batch)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        # Its own process group: stopping it stops the workers it started too.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, needs_model: bool) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read()
                if not needs_model or VERSION in orjson.loads(body).get("models", {}):
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")


def _wrk(port: int, seconds: float, script: Path, connections: int) -> dict[str, float]:
    """wrk's figures, with the CPU seconds wrk itself used (``wrk_cpu_s``)."""
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "2s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
    ]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(command, capture_output=True, text=True)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout}{run.stderr}")
    output = run.stdout
    line = next(ln for ln in output.splitlines() if ln.startswith("{"))
    result: dict[str, float] = orjson.loads(line)
    result["requests_per_s"] = round(result["requests"] / result["duration_s"], 1)
    # Only wrk was waited for in between: the children's usage grew by wrk's alone.
    result["wrk_cpu_s"] = round(
        children_after.ru_utime
        - children_before.ru_utime
        + children_after.ru_stime
        - children_before.ru_stime,
        3,
    )
    return result


def _check_answers(port: int) -> dict[str, object]:
    import urllib.request

    for user in (1, 500, 99_999):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommend/{user}") as response:
            items = response.read().decode().split(",")
            assert len(items) == 20, items
            fallback = response.headers.get("X-Fallback")
            if fallback is not None:  # the figures would measure the fallback, not the model
                raise RuntimeError(f"user {user} got a fallback answer ({fallback})")
    return {"model_answers_checked": 3}


def _server_counters(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    counters: dict[str, float] = {}
    pattern = r'^reelfeed_server_(fallbacks|provenance_dropped)_total\{reason="(\w+)"\} (\S+)'
    for kind, reason, value in re.findall(pattern, text, re.M):
        if float(value):
            counters[f"{kind}.{reason}"] = float(value)
    sent = re.search(r"^reelfeed_server_provenance_sent_total (\S+)", text, re.M)
    counters["provenance.sent"] = float(sent.group(1)) if sent else 0.0
    requests = re.search(r'^reelfeed_server_requests_total\{status="200"\} (\S+)', text, re.M)
    counters["requests"] = float(requests.group(1)) if requests else 0.0
    return counters


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every process in a process group."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _group_schedule_s(pgid: int) -> dict[int, tuple[float, float]]:
    """Per process of a group: seconds on a CPU, and seconds runnable but waiting for one
    (``/proc/<pid>/schedstat``): the second says whether a process lacked work or a CPU."""
    times: dict[int, tuple[float, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            running, waiting, _ = (stat.parent / "schedstat").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        times[int(stat.parent.name)] = (int(running) / 1e9, int(waiting) / 1e9)
    return times


def _measure(
    label: str,
    command: list[str],
    port: int,
    folder: Path,
    seconds: float,
    script: Path,
    connections: int,
    is_server: bool,
    paced_rate: float = 0.0,
) -> dict[str, object]:
    log = folder / f"{label}.log"
    with _process(command, log) as process:
        ready = "readyz" if is_server else "recommend/1"
        _wait_ready(f"http://127.0.0.1:{port}/{ready}", process, log, needs_model=is_server)
        extra: dict[str, object] = _check_answers(port) if is_server else {}
        _wrk(port, 2, script, connections)  # warm-up
        cpu_before = _group_cpu_s(process.pid)
        schedule_before = _group_schedule_s(process.pid)
        load = [round(x, 2) for x in os.getloadavg()]
        result: dict[str, object] = dict(_wrk(port, seconds, script, connections))
        cpu_s = _group_cpu_s(process.pid) - cpu_before
        schedule_after = _group_schedule_s(process.pid)
        duration = float(result["duration_s"])  # type: ignore[arg-type]
        # CPU per answer does not depend on what else runs on the machine; requests/s does.
        result["cpu_us_per_request"] = round(cpu_s / float(result["requests"]) * 1e6, 1)  # type: ignore[arg-type]
        result["load_average"] = load
        result["wrk_cpu_share"] = round(float(result.pop("wrk_cpu_s")) / duration, 3)  # type: ignore[arg-type]
        # Per busy process: the share of the run it spent on a CPU and waiting for one. A
        # worker waiting for a CPU much of the time is starved (wrk, Kafka, Redis and
        # anything else on the machine share its cores), not short of requests.
        result["processes"] = [
            {
                "cpu_share": round((running - schedule_before[pid][0]) / duration, 3),
                "cpu_wait_share": round((waiting - schedule_before[pid][1]) / duration, 3),
            }
            for pid, (running, waiting) in sorted(schedule_after.items())
            if pid in schedule_before and running - schedule_before[pid][0] > 0.01 * duration
        ]
        if is_server:
            extra["counters"] = _server_counters(port)
            # Service time: with wrk's closed loop at 64 connections, mean latency is
            # 64 / throughput (Little's law), so latency is also measured lightly loaded.
            light = _wrk(port, max(2.0, seconds / 2), script, 4)
            light.pop("wrk_cpu_s")
            extra["light_load_4_connections"] = {
                name: light[name] for name in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms")
            }
            if paced_rate > 0:
                extra[f"paced_{round(paced_rate)}_per_s"] = _paced(
                    port, seconds, folder, script.read_text(), connections, paced_rate, process.pid
                )
            # Over the whole run (warm-up to paced): a share of fallbacks above a trace
            # means the figures measure popularity answers (see main).
            counters = _server_counters(port)
            fallbacks = sum(v for k, v in counters.items() if k.startswith("fallbacks."))
            extra["fallback_share"] = round(fallbacks / max(counters["requests"], 1.0), 5)
        result.update(extra)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-kafka", action="store_true", help="provenance to a closed port")
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=6_000.0,
        help="also measure latency at about this many requests/s (0: not)",
    )
    parser.add_argument(
        "--data",
        choices=["learned", "synthetic"],
        default="learned",
        help="the default model learned on the simulated site, or the older synthetic factors",
    )
    parser.add_argument("--sim-hours", type=float, default=24.0, help="simulated hours learned")
    parser.add_argument(
        "--learned-cache", type=Path, help="a file to keep the learned model in between runs"
    )
    args = parser.parse_args(argv)

    stack = testing_stack(os.environ)
    redis_server = RedisServer(stack, persist=False)
    started_redis = redis_server.start()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    kafka = "none (closed port: records buffered, then dropped)"
    bootstrap = f"127.0.0.1:{_free_port()}"
    topic = f"{prefix}.recommendations"
    broker: KafkaBroker | None = None
    started_kafka = False
    if not args.no_kafka:
        # Started when it is not running (and stopped at the end), never silently left
        # out: without a broker the workers drop their records instead of sending them,
        # which costs them less CPU and flatters the figures.
        broker = KafkaBroker(stack, resolve_kafka_jars(default_cache_dir(os.environ)))
        started_kafka = broker.start()
        create_topics(stack.kafka_bootstrap, {topic: 4})
        bootstrap, kafka = stack.kafka_bootstrap, f"{stack.kafka_bootstrap} topic {topic}"

    data: dict[str, object] = {"kind": args.data}
    if args.data == "learned":
        matrix, rows, data["model"] = _learned_model(args.sim_hours, args.learned_cache)
    else:
        matrix, rows = _synthetic_model()

    async def seed() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await _seed(client, prefix, matrix, rows)
        finally:
            await client.aclose()

    async def drop() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await _drop(client, prefix)
        finally:
            await client.aclose()

    report: dict[str, object] = {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "kafka": kafka,
    }
    shares: dict[str, float] = {}
    try:
        seeding = time.monotonic()
        data.update(asyncio.run(seed()))
        report["data"] = data
        report["seed_seconds"] = round(time.monotonic() - seeding, 1)
        with tempfile.TemporaryDirectory(prefix="reelfeed-bench-") as tmp:
            folder = Path(tmp)
            script = folder / "spread.lua"
            script.write_text(_WRK_SCRIPT % USERS)
            runs: dict[str, object] = {}
            for workers in args.workers:
                port = _free_port()
                config = {
                    "port": port,
                    "redis_url": redis_server.url,
                    "redis_prefix": prefix,
                    "kafka_bootstrap": bootstrap,
                    "recommendations_topic": topic,
                }
                server = _measure(
                    f"server-{workers}",
                    [sys.executable, "-c", _SERVER, orjson.dumps(config).decode(), str(workers)],
                    port,
                    folder,
                    args.seconds,
                    script,
                    args.connections,
                    is_server=True,
                    paced_rate=args.paced_rate,
                )
                port = _free_port()
                baseline = _measure(
                    f"baseline-{workers}",
                    [sys.executable, "-c", _BASELINE, str(port), str(workers), LINE],
                    port,
                    folder,
                    args.seconds,
                    script,
                    args.connections,
                    is_server=False,
                )
                ratio = float(server["requests_per_s"]) / float(baseline["requests_per_s"])  # type: ignore[arg-type]
                shares[f"workers_{workers}"] = float(server["fallback_share"])  # type: ignore[arg-type]
                runs[f"workers_{workers}"] = {
                    "server": server,
                    "baseline_fixed_line": baseline,
                    "throughput_ratio": round(ratio, 3),
                }
                sys.stderr.write(
                    f"{workers} worker(s): {orjson.dumps(runs[f'workers_{workers}']).decode()}\n"
                )
            report["runs"] = runs
    finally:
        asyncio.run(drop())
        if started_redis:
            redis_server.stop()
        if broker is not None and started_kafka:
            broker.stop()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    if any(share > _MAX_FALLBACK_SHARE for share in shares.values()):
        sys.stderr.write(f"fallback answers above {_MAX_FALLBACK_SHARE:.0%}: {shares}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
