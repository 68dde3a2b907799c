"""The real services answer: a Redis round trip and a Kafka produce/consume."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from reelfeed.infra import create_topics

pytestmark = pytest.mark.integration


async def test_redis_round_trip(redis_client: aioredis.Redis, unique_name: str) -> None:
    key = f"{unique_name}:greeting"
    await redis_client.set(key, b"\x00binary\xff")
    assert await redis_client.get(key) == b"\x00binary\xff"
    assert await redis_client.incrby(f"{unique_name}:n", 41) == 41
    assert (await redis_client.info("server"))["tcp_port"] != 6379


async def test_kafka_produce_then_consume(kafka_bootstrap: str, unique_name: str) -> None:
    await asyncio.to_thread(create_topics, kafka_bootstrap, {unique_name: 3})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send(unique_name, f"line {i}".encode(), key=str(i % 7).encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        unique_name, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < 30:
                batch = await consumer.getmany(timeout_ms=500)
                received.extend(m.value for messages in batch.values() for m in messages)
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(f"line {i}".encode() for i in range(30))
    assert len(await consumer_partitions(kafka_bootstrap, unique_name)) == 3


async def consumer_partitions(bootstrap: str, topic: str) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        return {partition["partition"] for partition in description["partitions"]}
    finally:
        await admin.close()
