"""The relay on the real broker: a site's unkeyed topic copied into a raw topic.

The "site's topic" is a topic of the test broker with no keys, spread over partitions by
the producer as the course's is; the relay must copy every line once, keyed by user, with
each user's lines in their original order, and resume where it stopped.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from reelfeed.infra import create_topics
from stream.relay import Relay, RelayConfig
from tests.integration.workers import (
    WorkerProcess,
    consume_all,
    produce_lines,
    synthetic_stream,
    wait_until,
)

pytestmark = pytest.mark.integration


def _by_user(lines: list[bytes]) -> dict[bytes, list[bytes]]:
    users: dict[bytes, list[bytes]] = defaultdict(list)
    for line in lines:
        parts = line.split(b",", 2)
        users[parts[1].strip() if len(parts) == 3 else b""].append(line)
    return users


async def _relay_until(config: RelayConfig, copied: int, timeout: float = 60) -> Relay:
    relay = Relay(config)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while relay.copied < copied:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return relay


async def test_relay_copies_every_line_keyed_by_user_in_order_and_resumes(
    kafka_bootstrap: str, unique_name: str
) -> None:
    source, target = f"{unique_name}.site", f"{unique_name}.raw"
    # One source partition gives the lines a total order to compare the copy with.
    await asyncio.to_thread(create_topics, kafka_bootstrap, {source: 1, target: 4})
    first = synthetic_stream(sessions=150, seed=3)
    await produce_lines(kafka_bootstrap, source, first, key_of=lambda line: None)
    config = RelayConfig(kafka_bootstrap, source, kafka_bootstrap, target, group_id=unique_name)

    await _relay_until(config, len(first))
    second = synthetic_stream(sessions=60, seed=4)
    await produce_lines(kafka_bootstrap, source, second, key_of=lambda line: None)
    resumed = await _relay_until(config, len(second))
    assert resumed.copied == len(second), "a restarted relay copied lines it had committed"

    copied = await consume_all(kafka_bootstrap, target, len(first) + len(second))
    values = [value for _, value, _ in copied]
    assert sorted(values) == sorted(first + second)
    for key, value, _ in copied:
        parts = value.split(b",", 2)
        if len(parts) == 3 and parts[1].strip():
            assert key == parts[1].strip()
    # A user's lines share a key, hence a partition, and keep their order in it.
    expected, got = _by_user(first + second), _by_user(values)
    expected.pop(b"", None), got.pop(b"", None)
    assert len(expected) > 50
    assert got == expected


async def test_relay_worker_killed_mid_copy_loses_nothing(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    source, target = f"{unique_name}.site", f"{unique_name}.raw"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {source: 2, target: 2})
    lines = synthetic_stream(sessions=400, seed=5)
    await produce_lines(kafka_bootstrap, source, lines, key_of=lambda line: None)
    env = {
        "REELFEED_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REELFEED_RAW_TOPIC": target,
        "REELFEED_TOPIC_PARTITIONS": "2",
        "REELFEED_RELAY_BOOTSTRAP": kafka_bootstrap,
        "REELFEED_RELAY_TOPIC": source,
        "REELFEED_RELAY_GROUP": unique_name,
        "REELFEED_RELAY_METRICS_PORT": "0",
    }
    worker = WorkerProcess("relay", env, tmp_path, "relay")
    worker.start()
    try:
        seen: list[bytes] = []

        async def some_copied() -> bool:
            got = await consume_all(kafka_bootstrap, target, 1, timeout=5)
            seen[:] = [value for _, value, _ in got]
            return bool(got)

        await wait_until(some_copied, timeout=60, worker=worker, interval=0.2)
        worker.kill()
        worker.start()
        # Lines copied twice count too: read until every line arrived or time runs out.
        wanted, copied = set(lines), []
        async with asyncio.timeout(90):
            while not wanted <= {value for _, value, _ in copied}:
                worker.assert_alive()
                copied = await consume_all(kafka_bootstrap, target, len(copied) + 1, timeout=30)
        worker.assert_alive()
    finally:
        assert worker.stop() == 0, worker.log_tail()
    values = [value for _, value, _ in copied]
    assert set(values) == set(lines), "a line was lost across the kill"
    # Lines copied twice are at most the batches in flight at the kill.
    assert len(values) - len(lines) <= 2 * 2_000
    users = _by_user(values)
    assert all(users[user] for user in _by_user(lines))


def test_a_stack_with_a_relay_runs_it_instead_of_the_simulator() -> None:
    from reelfeed.infra import STACKS
    from reelfeed.settings import Settings
    from reelfeed.supervise import stack_roles

    dev = STACKS["dev"]
    simulated = [role.name for role in stack_roles(dev, Settings())]
    relayed = Settings(relay_bootstrap="127.0.0.1:29092", relay_topic="movielog7")
    assert "sim" in simulated and "relay" not in simulated
    assert [role.name for role in stack_roles(dev, relayed)] == [
        "relay" if name == "sim" else name for name in simulated
    ]


def test_with_a_relay_the_local_prometheus_scrapes_it_too(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from reelfeed.infra import StackLayout
    from reelfeed.settings import Settings
    from reelfeed.supervise import prometheus_config

    stack = StackLayout("x", tmp_path, 1, 2, 3)
    packaged = prometheus_config(stack, Settings())
    assert packaged.name == "prometheus.local.yml"
    relayed = prometheus_config(stack, Settings(relay_bootstrap="h:1", relay_topic="movielog7"))
    assert relayed.parent == tmp_path
    text = relayed.read_text()
    assert "job_name: relay" in text and '"127.0.0.1:9203"' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    check = subprocess.run([promtool, "check", "config", str(relayed)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
