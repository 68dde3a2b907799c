"""Running the server: worker processes on uvloop, several sharing the port.

``run_server`` spawns ``workers`` processes; with more than one, each binds the same
address with ``SO_REUSEPORT`` and the kernel spreads connections over them, and the
workers keep their shares of keep-alive connections even (``server.balance``). The parent
only forwards SIGTERM/SIGINT and stops all workers when one of them dies (the
supervisor, or compose's restart policy, then restarts the whole server).

Workers are spawned, not forked, and even a single worker runs in a child process, so
that each starts with a fresh interpreter and the right environment: numpy's BLAS
reads its thread count when it loads, and a multi-threaded BLAS is a disaster here
(measured: 3.2 ms instead of 0.25 ms of CPU per answer on a busy 2-core machine, the
threads spinning against each other and the other processes; one answer's matrix-
vector product is too small to gain from threads anyway); and prometheus_client
reads its multiprocess folder at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, MutableSequence
from multiprocessing.connection import wait
from pathlib import Path

import uvloop
from aiohttp import web

from server.app import BALANCE, METRICS, create_app, recommend_directly_on
from server.balance import ConnectionBalance
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.pruning import compile_kernel

__all__ = ["keep_balance", "run_server", "serve"]

log = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
#: Net allocations of containers between two young-generation collections (default 700).
_YOUNG_GC_THRESHOLD = 10_000
#: Seconds between two updates of a worker's connection count (``server.balance``).
_BALANCE_INTERVAL_S = 0.25
#: Variables a spawned worker gets, unless they are set already.
_WORKER_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


async def serve(
    config: ServerConfig,
    *,
    reuse_port: bool = False,
    multiprocess_dir: Path | None = None,
    stop: asyncio.Event | None = None,
    on_started: Callable[[int], None] | None = None,
    balance: ConnectionBalance | None = None,
) -> None:
    """Serve until ``stop`` is set, or SIGTERM/SIGINT arrives when ``stop`` is ``None``.

    ``on_started`` receives the bound port (useful with ``port=0``). With ``balance``,
    the worker publishes its connection count there and hands back connections above
    its share.
    """
    # A serving process allocates many short-lived containers per answer, and a
    # young-generation collection every 700 net allocations traverses every request in
    # flight each time. Measured at 5k answers/s: 570 young collections in 8 s and 4% of
    # the process's CPU in the collector; with 10,000, 9 collections and 0.4%. Cyclic
    # garbage, rare here, lives a little longer.
    gc.set_threshold(_YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    _compile_scoring()
    app = create_app(config, multiprocess_dir=multiprocess_dir, freeze_gc=True)
    if balance is not None:
        app[BALANCE] = balance
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_timeout_s
    )
    await runner.setup()
    recommend_directly_on(runner, app)
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=1024)
        await site.start()
        port = _bound_port(runner, config.port)
        log.info("serving on http://%s:%d (pid %d)", config.host, port, os.getpid())
        if on_started is not None:
            on_started(port)
        balancing = None
        if balance is not None and runner.server is not None:
            balancing = asyncio.get_running_loop().create_task(
                keep_balance(balance, runner.server, app[METRICS])
            )
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
        if balancing is not None:
            balancing.cancel()
    finally:
        await runner.cleanup()


async def keep_balance(
    balance: ConnectionBalance,
    server: web.Server,
    metrics: ServerMetrics,
    interval_s: float = _BALANCE_INTERVAL_S,
) -> None:
    """Publish this worker's connection count every ``interval_s`` (forever: cancel it),
    and export the count and the connections closed to balance the workers."""
    counted = 0
    while True:
        connections = len(server.connections)
        balance.update(connections)
        metrics.connections.set(connections)
        closed = balance.shed_total
        if closed > counted:
            metrics.connections_rebalanced.inc(closed - counted)
            counted = closed
        await asyncio.sleep(interval_s)


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return default


def run_server(config: ServerConfig, workers: int = 1) -> int:
    """Run the server in the foreground until SIGTERM or SIGINT (``reelfeed serve``).

    Parameters
    ----------
    config
        The server's configuration.
    workers
        Worker processes; more than one share the port with ``SO_REUSEPORT``.

    Returns
    -------
    int
        The exit status: 0 after a signal, 1 when a worker died.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    level = logging.getLogger().getEffectiveLevel()
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    # Once here, so that the workers load the compiled search from numba's cache on disk
    # instead of all compiling it at once (on a cold cache that took long enough for a
    # worker's first model load to time out: it answered from popularity until the next
    # poll). Where the cache cannot be written, each worker still compiles its own.
    _compile_scoring()
    with tempfile.TemporaryDirectory(prefix="reelfeed-server-metrics-") as folder:
        context = multiprocessing.get_context("spawn")
        processes: list[multiprocessing.process.BaseProcess] = []
        environment = dict(_WORKER_ENV)
        if workers > 1:
            environment["PROMETHEUS_MULTIPROC_DIR"] = folder
        shared = folder if workers > 1 else None
        # Each worker's connection count, for the others to see (server.balance).
        counts = context.RawArray("q", workers) if workers > 1 else None
        with _environment(environment):
            for index in range(workers):
                spawned = context.Process(
                    target=_worker_main,
                    args=(config, shared, level, counts, index),
                    name=f"reelfeed-server-{index}",
                    daemon=False,
                )
                spawned.start()
                processes.append(spawned)
        log.info(
            "%d server workers on http://%s:%d: pids %s",
            workers,
            config.host,
            config.port,
            [p.pid for p in processes],
        )
        try:
            while not stopping and all(p.is_alive() for p in processes):
                wait([p.sentinel for p in processes], timeout=0.5)
            if not stopping:
                dead = [p for p in processes if not p.is_alive()]
                log.error("worker %s exited with %s; stopping all", dead[0].name, dead[0].exitcode)
        finally:
            for worker in processes:
                if worker.is_alive() and worker.pid is not None:
                    os.kill(worker.pid, signal.SIGTERM)
            for worker in processes:
                worker.join(config.shutdown_timeout_s + 5)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        failed = [p.exitcode for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
        return 0 if stopping and not failed else 1


def _compile_scoring() -> None:
    """Compile the scoring search (``server.pruning``) before serving, not in the first
    model load, whose time is bounded."""
    started = time.perf_counter()
    compile_kernel()
    elapsed = time.perf_counter() - started
    if elapsed > 1.0:
        log.info("compiled the scoring search in %.1f s", elapsed)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the processes spawned inside; only unset ones are added."""
    added = [name for name in values if name not in os.environ or name.startswith("PROMETHEUS")]
    saved = {name: os.environ.get(name) for name in added}
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_main(
    config: ServerConfig,
    folder: str | None,
    level: int,
    counts: MutableSequence[int] | None = None,
    index: int = 0,
) -> None:
    logging.basicConfig(level=level, format=_LOG_FORMAT)
    multiprocess_dir = None if folder is None else Path(folder)
    balance = None if counts is None else ConnectionBalance(counts, index)
    uvloop.run(
        serve(
            config,
            reuse_port=folder is not None,
            multiprocess_dir=multiprocess_dir,
            balance=balance,
        )
    )
