"""Real local infrastructure: an Apache Kafka broker (KRaft) and a Redis server.

Both run as plain background processes owned by a *stack*: a folder under ``var/``
that holds their configuration, data, logs and pid files. ``dev`` is what ``make up``
uses, ``test`` is what the test suite uses, on other ports, so the two never meet.

Kafka's jars are resolved once from Maven Central by ``ops/kafka/pom.xml`` into a
cache folder outside the checkout, so fresh clones reuse them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KAFKA_VERSION",
    "PROJECT_ROOT",
    "STACKS",
    "InfraError",
    "KafkaBroker",
    "ManagedProcess",
    "RedisServer",
    "StackLayout",
    "create_topics",
    "default_cache_dir",
    "resolve_kafka_jars",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.2"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_KAFKA_RECIPE = PROJECT_ROOT / "ops" / "kafka"


class InfraError(RuntimeError):
    """A local service could not be resolved, started or reached."""


@dataclass(frozen=True, slots=True)
class StackLayout:
    """Where one local stack keeps its files and which loopback ports it uses."""

    name: str
    root: Path
    kafka_port: int
    controller_port: int
    redis_port: int
    #: Monitoring of the stack; 0 means the stack runs without it.
    prometheus_port: int = 0
    alertmanager_port: int = 0
    #: Whether the stack runs the simulated site (the dev stack does).
    simulator: bool = False

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


STACKS: Mapping[str, StackLayout] = {
    "dev": StackLayout("dev", PROJECT_ROOT / "var" / "dev", 9092, 9093, 6379, 9090, 9095, True),
    "test": StackLayout("test", PROJECT_ROOT / "var" / "test", 19092, 19093, 16379),
}


def testing_stack(environ: Mapping[str, str]) -> StackLayout:
    """The test stack, moved by ``TEST_STACK_PORT_OFFSET`` so two suites can run at once.

    The variable belongs to the test harness, not to a reelfeed process: it has no
    ``REELFEED_`` prefix, which ``Settings.from_env`` keeps for settings.
    """
    base = STACKS["test"]
    offset = int(environ.get("TEST_STACK_PORT_OFFSET") or 0)
    if offset == 0:
        return base
    return StackLayout(
        f"test{offset}",
        base.root.with_name(f"test-{offset}"),
        base.kafka_port + offset,
        base.controller_port + offset,
        base.redis_port + offset,
    )


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reelfeed"


def resolve_kafka_jars(cache_dir: Path, version: str = KAFKA_VERSION) -> Path:
    """Return a folder holding the broker's jars, resolving them with Maven if needed."""
    lib = cache_dir / f"kafka-{version}" / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (mvn) is needed once to fetch Kafka's jars; install it")
    staging = lib.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving Apache Kafka %s jars from Maven Central into %s", version, lib)
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(_KAFKA_RECIPE / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
        f"-Dkafka.version={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        raise InfraError(f"mvn could not resolve Kafka {version}:\n{result.stdout}{result.stderr}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    marker.touch()
    return lib


class ManagedProcess:
    """A background process identified by a pid file and a marker in its command line.

    The markers (strings that all appear in its command line, such as a path inside
    the stack folder) make sure a recycled pid that now belongs to some other program
    is never taken for ours, nor signalled.
    """

    def __init__(self, name: str, folder: Path, *markers: str) -> None:
        self.name = name
        self.folder = folder
        self.markers = markers
        self.pid_file = folder / f"{name}.pid"
        self.log_file = folder / f"{name}.out"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if not all(marker.encode() in cmdline for marker in self.markers):
            return None
        # A zombie still has a cmdline; it is not running.
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def spawn(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start ``command`` detached, output appended to the log file; return its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        executable = shutil.which(command[0]) or command[0]
        # posix_spawn with a new session rather than subprocess.Popen: the process must
        # outlive this one, and Ctrl-C in the terminal must not reach it.
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (
                os.POSIX_SPAWN_OPEN,
                1,
                str(self.log_file),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o644,
            ),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(
            executable,
            list(command),
            dict(os.environ if env is None else env),
            file_actions=actions,
            setsid=True,
        )
        self.pid_file.write_text(f"{pid}\n")
        self._spawned = pid
        return pid

    def spawned_alive(self) -> bool:
        """Whether the child this object spawned still runs (no marker check: right
        after the spawn the child may not have exec'd its program yet)."""
        pid = getattr(self, "_spawned", None)
        if pid is None:
            return False
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``); False if none ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if self.pid() is None:
                break
            time.sleep(0.1)
        else:
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, pid, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _reap(pid: int) -> None:
    # Children of this very process must be waited for, or they stay zombies.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kraft_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes in unpadded url-safe base64, never starting
    with ``-`` (as Kafka's own ``Uuid.randomUuid``): the storage tool's command line
    would read such an id as an option (one format in 64 failed that way).

    >>> kraft_cluster_id(iter([b"\\xf8" + bytes(15), bytes(16)]).__next__)
    'AAAAAAAAAAAAAAAAAAAAAA'
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """A single-node KRaft broker (broker and controller in one JVM) on loopback."""

    def __init__(self, stack: StackLayout, lib_dir: Path, heap: str = "1g") -> None:
        self.stack = stack
        self.lib_dir = lib_dir
        self.heap = heap
        self.folder = stack.root / "kafka"
        self.data_dir = self.folder / "data"
        self.config_file = self.folder / "server.properties"
        self.process = ManagedProcess("kafka", self.folder, str(self.config_file))

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka_bootstrap

    def _write_config(self) -> None:
        overrides = {
            "controller.quorum.voters": f"1@127.0.0.1:{self.stack.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.stack.kafka_port},"
                f"CONTROLLER://127.0.0.1:{self.stack.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.stack.kafka_port}",
            "log.dirs": str(self.data_dir),
        }
        lines = []
        for line in (_KAFKA_RECIPE / "server.properties").read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key in overrides:
                line = f"{key}={overrides.pop(key)}"
            lines.append(line)
        lines.extend(f"{key}={value}" for key, value in overrides.items())
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("\n".join(lines) + "\n")

    def _java(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise InfraError("java (17 or newer) is needed to run the Kafka broker")
        return [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{_KAFKA_RECIPE / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.folder}",
            "-cp",
            f"{self.lib_dir}/*",
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = kraft_cluster_id()
        command = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_file)
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InfraError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 60.0) -> bool:
        """Start the broker unless ours already runs; True if this call started it."""
        if self.process.is_running():
            wait_for_kafka(self.bootstrap, timeout)
            return False
        _ensure_port_free(self.stack.kafka_port, "Kafka")
        _ensure_port_free(self.stack.controller_port, "the Kafka controller")
        self._write_config()
        self._format_storage()
        self.process.spawn(self._java("kafka.Kafka", str(self.config_file)))
        try:
            wait_for_kafka(self.bootstrap, timeout, alive=self.process.spawned_alive)
        except InfraError:
            tail = self.process.log_tail()
            self.process.stop(timeout=5)
            raise InfraError(f"Kafka did not come up on {self.bootstrap}:\n{tail}") from None
        return True

    def stop(self) -> bool:
        return self.process.stop(timeout=30)

    def wipe(self) -> None:
        """Delete the broker's data (it must be stopped)."""
        if self.process.is_running():
            raise InfraError("stop Kafka before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)


class RedisServer:
    """Debian's ``redis-server`` on loopback with its own port and data folder."""

    def __init__(self, stack: StackLayout, persist: bool = True) -> None:
        self.stack = stack
        self.persist = persist
        self.folder = stack.root / "redis"
        self.config_file = self.folder / "redis.conf"
        # Redis rewrites its process title to "redis-server 127.0.0.1:<port>", so the
        # config path cannot serve as marker; the binary name and the port can.
        self.process = ManagedProcess("redis", self.folder, "redis-server", str(stack.redis_port))

    @property
    def url(self) -> str:
        return self.stack.redis_url

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        base = (PROJECT_ROOT / "ops" / "redis" / "redis.conf").read_text()
        persistence = "save 300 1\nappendonly no\n" if self.persist else 'save ""\nappendonly no\n'
        self.config_file.write_text(
            f"{base}\nport {self.stack.redis_port}\ndir {self.folder}\n{persistence}"
        )

    def start(self, timeout: float = 15.0) -> bool:
        if self.process.is_running():
            wait_for_redis(self.url, timeout)
            return False
        binary = shutil.which("redis-server")
        if binary is None:
            raise InfraError(
                "redis-server is missing: run `make setup` (apt-get install redis-server)"
            )
        _ensure_port_free(self.stack.redis_port, "Redis")
        self._write_config()
        self.process.spawn([binary, str(self.config_file), "--port", str(self.stack.redis_port)])
        try:
            wait_for_redis(self.url, timeout, alive=self.process.spawned_alive)
        except InfraError:
            tail = self.process.log_tail()
            self.process.stop(timeout=5)
            raise InfraError(f"Redis did not come up on {self.url}:\n{tail}") from None
        return True

    def stop(self) -> bool:
        return self.process.stop(timeout=15)


def _ensure_port_free(port: int, what: str) -> None:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise InfraError(
                f"port {port} for {what} is taken by a process that is not this stack's"
            ) from None


_Probe = Callable[[], Coroutine[Any, Any, None]]


def _never_dead() -> bool:
    return True


def wait_for_kafka(bootstrap: str, timeout: float, alive: Callable[[], bool] = _never_dead) -> None:
    """Wait until the broker answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await client.start()
            await client.list_topics()
        finally:
            await client.close()

    _wait_until(probe, timeout, alive, f"Kafka at {bootstrap}")


def wait_for_redis(url: str, timeout: float, alive: Callable[[], bool] = _never_dead) -> None:
    import redis.asyncio as aioredis

    async def probe() -> None:
        client = aioredis.Redis.from_url(url, socket_timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    _wait_until(probe, timeout, alive, f"Redis at {url}")


def _wait_until(probe: _Probe, timeout: float, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout
    # Refused connections are expected while a service starts; aiokafka logs each at ERROR.
    quiet = logging.getLogger("aiokafka")
    previous_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _poll(probe, deadline, timeout, alive, what)
    finally:
        quiet.setLevel(previous_level)


def _poll(
    probe: _Probe, deadline: float, timeout: float, alive: Callable[[], bool], what: str
) -> None:
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise InfraError(f"{what}: the process exited while starting")
        try:
            asyncio.run(probe())
            return
        except Exception as exc:  # any failure to answer means: not ready yet
            last_error = exc
            time.sleep(0.2)
    raise InfraError(f"{what} did not answer within {timeout:.0f} s: {last_error!r}")


def create_topics(bootstrap: str, partitions: Mapping[str, int]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> list[str]:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await client.start()
        try:
            existing = set(await client.list_topics())
            wanted = [
                NewTopic(name, count, 1)
                for name, count in partitions.items()
                if name not in existing
            ]
            if wanted:
                await client.create_topics(wanted)
            return [topic.name for topic in wanted]
        finally:
            await client.close()

    return asyncio.run(run())
