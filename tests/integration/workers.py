"""Helpers for tests that run real worker processes against the test stack."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

__all__ = [
    "WorkerProcess",
    "consume_all",
    "free_port",
    "produce_lines",
    "synthetic_stream",
    "user_key",
    "wait_until",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WorkerProcess:
    """``python -m reelfeed <role>`` as a child process with its own log file."""

    def __init__(self, role: str, env: Mapping[str, str], folder: Path, name: str) -> None:
        self.role = role
        self.env = {**os.environ, **env}
        self.folder = folder
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reelfeed", self.role, f"--var-dir={self.folder}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def assert_alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.log_tail()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no commit, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: a clean shutdown returns 0; one that hangs past ``timeout``
        is killed and returns -SIGKILL, so that the callers' cleanup goes on."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    worker: WorkerProcess | None = None,
    interval: float = 0.1,
) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            if worker is not None:
                worker.assert_alive()
            await asyncio.sleep(interval)


async def produce_lines(
    bootstrap: str, topic: str, lines: Iterable[bytes], key_of: Callable[[bytes], bytes | None]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for line in lines:
            await producer.send(topic, line, key=key_of(line))
        await producer.flush()
    finally:
        await producer.stop()


def user_key(line: bytes) -> bytes | None:
    """Key a line by its user field, as a site that partitions by user does."""
    parts = line.split(b",", 2)
    return parts[1] if len(parts) == 3 and parts[1] else None


async def consume_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 30
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Read a topic from the beginning until ``expected`` messages came (or timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    received: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(received) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    received.extend(
                        (m.key, m.value or b"", list(m.headers or ())) for m in messages
                    )
        # Anything beyond the expected count shows up within a short grace period.
        batch = await consumer.getmany(timeout_ms=500)
        for messages in batch.values():
            received.extend((m.key, m.value or b"", list(m.headers or ())) for m in messages)
    finally:
        await consumer.stop()
    return received


def synthetic_stream(sessions: int, seed: int) -> list[bytes]:
    """Course-like lines: users watch movies minute by minute, rate some, ask for lists;
    with injected noise (bad ids, ratings, minutes, garbage) and exact duplicates."""
    rng = random.Random(seed)
    clock = datetime(2023, 10, 25, 7, 0, tzinfo=UTC)
    movies = [f"movie+{n}+{1950 + n % 70}" for n in range(300)]
    lines: list[bytes] = []

    def stamp() -> str:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(1, 400))
        return clock.strftime("%Y-%m-%dT%H:%M:%S") + f".{clock.microsecond // 1000:03d}"

    for _ in range(sessions):
        user = rng.randint(1, 2000)
        movie = movies[min(int(rng.paretovariate(1.2)) - 1, len(movies) - 1)]
        if rng.random() < 0.5:
            ids = ", ".join(rng.sample(movies, 20))
            lines.append(
                f"{stamp()},{user},recommendation request 17645-team07.isri.cmu.edu:8082, "
                f"status 200, result: {ids}, {rng.randint(5, 300)} ms".encode()
            )
        for minute in range(rng.randint(1, 40)):
            lines.append(f"{stamp()},{user},GET /data/m/{movie}/{minute}.mpg".encode())
            if rng.random() < 0.02:
                lines.append(lines[-1])  # an exact duplicate
        if rng.random() < 0.3:
            lines.append(f"{stamp()},{user},GET /rate/{movie}={rng.randint(1, 5)}".encode())
        if rng.random() < 0.05:
            noise = rng.choice(
                [
                    f"{stamp()},-{user},GET /data/m/{movie}/1.mpg",
                    f"{stamp()},{user},GET /rate/{movie}=7",
                    f"{stamp()},{user},GET /data/m/{movie}/-3.mpg",
                    f"{stamp()},{user},GET /data/m//1.mpg",
                    "2023-13-45T99:00:00,1,GET /rate/x+2001=3",
                    "garbage \x00\x01 line",
                ]
            )
            lines.append(noise.encode())
    return lines
