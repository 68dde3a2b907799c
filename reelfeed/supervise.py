"""Local process supervision for ``reelfeed up``.

``reelfeed up`` starts one background *supervisor* per stack. The supervisor starts
Kafka and Redis, then every role of the stack (workers, server, simulator,
Prometheus), restarts a role that dies (with a back-off), reaps its children, writes
its state to ``<stack>/status.json`` and, on SIGTERM (``reelfeed down``), stops the
roles in reverse order and the infrastructure last.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from reelfeed.infra import (
    KafkaBroker,
    ManagedProcess,
    RedisServer,
    StackLayout,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
)
from reelfeed.settings import Settings

__all__ = [
    "Role",
    "Supervisor",
    "read_status",
    "stack_roles",
    "stop_roles",
    "supervisor_process",
]

log = logging.getLogger(__name__)

#: At most this many restarts of one role within ``_RESTART_WINDOW_S``, then it stays down.
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Role:
    """A long-running process of the stack, identified by a marker in its command line."""

    name: str
    command: tuple[str, ...]
    marker: str
    url: str | None = None

    def process(self, stack: StackLayout) -> ManagedProcess:
        return ManagedProcess(self.name, stack.root / "roles", self.marker)


def _reelfeed_role(name: str, stack: StackLayout, url: str | None = None) -> Role:
    var_dir = f"--var-dir={stack.root.resolve()}"
    return Role(name, (sys.executable, "-m", "reelfeed", name, var_dir), var_dir, url)


def stack_roles(stack: StackLayout, settings: Settings) -> list[Role]:
    """The roles of a stack, in start order (stopped in reverse)."""
    roles = [
        _reelfeed_role("ingest", stack, f"http://127.0.0.1:{settings.ingest_metrics_port}/metrics"),
        _reelfeed_role("learn", stack, f"http://127.0.0.1:{settings.learn_metrics_port}/metrics"),
        _reelfeed_role("serve", stack, f"http://{settings.server_host}:{settings.server_port}"),
    ]
    if settings.relay_bootstrap:
        # A real site's stream: copy it in, and simulate nothing.
        url = f"http://127.0.0.1:{settings.relay_metrics_port}/metrics"
        roles.append(_reelfeed_role("relay", stack, url))
    elif stack.simulator:
        roles.append(_reelfeed_role("sim", stack, "http://127.0.0.1:8080/sim/status"))
    ops = Path(__file__).resolve().parent.parent / "ops"
    prometheus = shutil.which("prometheus")
    if prometheus is not None and stack.prometheus_port:
        data = stack.root / "prometheus"
        roles.append(
            Role(
                "prometheus",
                (
                    prometheus,
                    f"--config.file={prometheus_config(stack, settings)}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{stack.prometheus_port}",
                    "--storage.tsdb.retention.time=7d",
                ),
                str(data),
                f"http://127.0.0.1:{stack.prometheus_port}",
            )
        )
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if alertmanager is not None and stack.alertmanager_port:
        data = stack.root / "alertmanager"
        roles.append(
            Role(
                "alertmanager",
                (
                    alertmanager,
                    f"--config.file={ops / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={data}",
                    f"--web.listen-address=127.0.0.1:{stack.alertmanager_port}",
                    "--cluster.listen-address=",
                ),
                str(data),
                f"http://127.0.0.1:{stack.alertmanager_port}",
            )
        )
    return roles


def prometheus_config(stack: StackLayout, settings: Settings) -> Path:
    """The local Prometheus config; with a relay, a copy that scrapes the relay too."""
    local = Path(__file__).resolve().parent.parent / "ops" / "prometheus" / "prometheus.local.yml"
    if not settings.relay_bootstrap:
        return local
    text = local.read_text(encoding="utf-8")
    # The copy lives in the stack's folder: its rule file must be named by full path.
    text = text.replace("  - alerts.yml", f"  - {local.with_name('alerts.yml')}")
    text += (
        "\n  - job_name: relay\n    static_configs:\n"
        f'      - targets: ["127.0.0.1:{settings.relay_metrics_port}"]\n'
    )
    path = stack.root / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def simulated_catalog(folder: Path) -> Path:
    """The simulator's catalog as a CSV, for the workers' runtimes and genres.

    The world is the one ``python -m sim`` builds with its default arguments (the sim
    role's), so the workers know the same movies the simulated site streams.
    """
    from sim.cli import build_parser, world_config
    from sim.world import World

    path = folder / "catalog.csv"
    if not path.exists():
        world = World.build(world_config(build_parser().parse_args([])))
        partial = path.with_suffix(".partial")
        world.write_catalog(partial)
        partial.replace(path)
    return path


def supervisor_process(stack: StackLayout) -> ManagedProcess:
    return ManagedProcess("supervisor", stack.root, "supervise", str(stack.root.resolve()))


def read_status(stack: StackLayout) -> dict[str, object] | None:
    try:
        status: dict[str, object] = orjson.loads((stack.root / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return status


def stop_roles(stack: StackLayout, roles: Sequence[Role]) -> dict[str, bool]:
    """Stop the roles (by pid file), in reverse order; which ones were running."""
    return {role.name: role.process(stack).stop() for role in reversed(roles)}


@dataclass
class _Running:
    role: Role
    process: ManagedProcess
    pid: int
    restarts: list[float] = field(default_factory=list)
    gave_up: bool = False


class Supervisor:
    """Runs a stack in the foreground until SIGTERM or SIGINT."""

    def __init__(self, stack: StackLayout, settings: Settings, environ: Mapping[str, str]) -> None:
        self.stack = stack
        self.settings = settings
        self.environ = environ
        self.roles = stack_roles(stack, settings)
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._started = time.time()
        self._infra: dict[str, object] = {}

    def _role_env(self) -> dict[str, str]:
        env = dict(self.environ)
        env.update(
            {
                "REELFEED_KAFKA_BOOTSTRAP": self.stack.kafka_bootstrap,
                "REELFEED_REDIS_URL": self.stack.redis_url,
            }
        )
        simulated = self.stack.simulator and not self.settings.relay_bootstrap
        if simulated and self.settings.catalog_path is None:
            env["REELFEED_CATALOG_PATH"] = str(simulated_catalog(self.stack.root))
        return env

    def _write_status(self, state: str) -> None:
        status = {
            "state": state,
            "stack": self.stack.name,
            "supervisor_pid": os.getpid(),
            "since": self._started,
            "infra": self._infra,
            "roles": {
                name: {
                    "pid": running.pid,
                    "restarts": len(running.restarts),
                    "up": not running.gave_up,
                    "url": running.role.url,
                }
                for name, running in self._running.items()
            },
        }
        target = self.stack.root / "status.json"
        partial = target.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2))
        partial.replace(target)

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("supervisor: signal %d, stopping the stack", signum)
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.stack.root.mkdir(parents=True, exist_ok=True)
        self._write_status("starting")
        redis_server = RedisServer(self.stack, persist=True)
        broker = KafkaBroker(self.stack, resolve_kafka_jars(default_cache_dir(self.environ)))
        try:
            redis_server.start()
            broker.start()
            create_topics(broker.bootstrap, self.settings.topics())
            self._infra = {"kafka": broker.bootstrap, "redis": redis_server.url}
            env = self._role_env()
            for role in self.roles:
                process = role.process(self.stack)
                process.stop()  # a leftover of a supervisor that died: not our child
                pid = process.spawn(role.command, env=env)
                self._running[role.name] = _Running(role, process, pid)
            self._write_status("running")
            log.info("supervisor: stack %s running", self.stack.name)
            while not self._stopping:
                self._watch(env)
                time.sleep(0.5)
        finally:
            self._write_status("stopping")
            stop_roles(self.stack, self.roles)
            broker.stop()
            redis_server.stop()
            (self.stack.root / "status.json").unlink(missing_ok=True)
            log.info("supervisor: stack %s stopped", self.stack.name)
        return 0

    def _watch(self, env: Mapping[str, str]) -> None:
        changed = False
        for running in self._running.values():
            if running.gave_up or running.process.spawned_alive():
                continue
            if self._stopping:
                return
            now = time.monotonic()
            running.restarts = [t for t in running.restarts if now - t < _RESTART_WINDOW_S]
            if len(running.restarts) >= _MAX_RESTARTS:
                log.error("supervisor: %s keeps dying; leaving it down", running.role.name)
                running.gave_up = True
            else:
                log.warning("supervisor: %s exited; restarting it", running.role.name)
                running.restarts.append(now)
                time.sleep(min(2.0 ** len(running.restarts) * 0.25, 5.0))
                running.pid = running.process.spawn(running.role.command, env=env)
            changed = True
        if changed:
            self._write_status("running")
