"""A real ingest worker process consumes lines produced to the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from reelfeed.infra import create_topics
from state import IngestStore, KeySchema

pytestmark = pytest.mark.integration

LINES = [
    b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg",
    b"2023-09-28T20:20:23,303668,GET /rate/how+to+train+your+dragon+2+2014=4",
] * 50


async def test_worker_process_consumes_produced_lines(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topic = f"{unique_name}.movielog"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for line in LINES:
            await producer.send(topic, line)
        await producer.flush()
    finally:
        await producer.stop()

    env = {
        **os.environ,
        "REELFEED_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": unique_name,
        "REELFEED_RAW_TOPIC": topic,
        "REELFEED_TOPIC_PARTITIONS": "2",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "reelfeed", "ingest", f"--var-dir={tmp_path}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    store = IngestStore(redis_client, KeySchema(unique_name))
    try:
        async with asyncio.timeout(90):
            while await store.lines() < len(LINES):
                assert worker.poll() is None, log_path.read_text()[-3000:]
                await asyncio.sleep(0.2)
        # Nothing is counted twice: the total stays put once all lines are in.
        await asyncio.sleep(1.0)
        assert await store.lines() == len(LINES)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(worker.wait, 60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]
