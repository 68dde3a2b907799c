"""Small direct reads of Kafka that a Faust stream does not offer."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["TopicUnreadable", "read_partition_range", "topic_partitions"]


class TopicUnreadable(RuntimeError):
    """The broker does not describe the topic (it does not exist, or is not readable)."""


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, in order; :class:`TopicUnreadable` when it has none."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description.get("error_code") or not description.get("partitions"):
        raise TopicUnreadable(
            f"topic {topic!r} cannot be read (error {description.get('error_code')})"
        )
    numbers = sorted(int(p["partition"]) for p in description["partitions"])
    return [TopicPartition(topic, number) for number in numbers]


async def read_partition_range(
    bootstrap: str, topic: str, partition: int, start: int, end: int, timeout_s: float = 30.0
) -> list[bytes]:
    """The values of messages ``start <= offset < end`` of one partition, in order.

    Reads outside any consumer group and commits nothing. Stops early (with what it
    has) when the broker has nothing more to give for a while, e.g. when retention
    already deleted the beginning of the range.
    """
    if end <= start:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        async with asyncio.timeout(timeout_s):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                messages = batch.get(tp, [])
                if not messages:
                    if await consumer.position(tp) >= end:
                        break
                    continue
                for message in messages:
                    if message.offset >= end:
                        return values
                    values.append(message.value or b"")
                if messages[-1].offset >= end - 1:
                    break
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return values
