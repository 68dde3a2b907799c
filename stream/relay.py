"""Relay: copy the site's movielog topic from its broker into the stack's raw topic.

The course's broker lets a team read its ``movielog<N>`` topic, not create the topics
reelfeed writes (events, refusals, provenance). The relay reads the site's topic with
its own consumer group and produces every line, unchanged and in order, to the local
stack's raw topic, where ingest picks it up as it would the simulator's lines.

- **Keys.** The course's lines carry no key. The relay keys each line by its user field
  (the text between the first and second comma) so that one user's lines stay in one
  partition, in order, as the ingest worker's duplicate check and the learner expect. A
  line without a user field keeps its original key (ingest refuses it with a reason).
- **Nothing lost.** Offsets on the site's broker are committed only after the local
  broker acknowledged every line before them (``acks=all``), so a relay killed at any
  moment resumes where it can lose nothing; what it copied twice in that case, ingest's
  duplicate check drops.
- **Outages.** When either broker is unreachable, the relay keeps retrying with a
  bounded backoff instead of exiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from stream.metrics import RELAY_ERRORS, RELAY_LINES, RELAY_SOURCE_TIME

__all__ = ["Relay", "RelayConfig", "relay_key"]

log = logging.getLogger(__name__)

#: Longest pause between two attempts while a broker is unreachable.
_MAX_BACKOFF_S = 10.0


def relay_key(line: bytes, original: bytes | None) -> bytes | None:
    """The local key of a course line: its user field, or the original key without one.

    Examples
    --------
    >>> relay_key(b"2026-11-26T07:00:00,4521,GET /rate/up+2009=4", None)
    b'4521'
    >>> relay_key(b"garbage", b"k") is None, relay_key(b"garbage", b"k")
    (False, b'k')
    """
    parts = line.split(b",", 2)
    if len(parts) == 3 and parts[1].strip():
        return parts[1].strip()
    return original


@dataclass(frozen=True, slots=True)
class RelayConfig:
    source_bootstrap: str
    source_topic: str
    target_bootstrap: str
    target_topic: str
    group_id: str = "reelfeed-relay"
    #: Where a new group starts on the site's topic.
    start: Literal["earliest", "latest"] = "earliest"
    max_batch: int = 2_000


class Relay:
    """Copies lines from ``source_topic`` to ``target_topic`` until ``stop`` is set."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.copied = 0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._run_connected(stop)
                return
            except KafkaError as exc:
                RELAY_ERRORS.labels("connect").inc()
                log.warning("relay: %s; retrying in %.1f s", exc, backoff)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _run_connected(self, stop: asyncio.Event) -> None:
        config = self.config
        consumer = AIOKafkaConsumer(
            config.source_topic,
            bootstrap_servers=config.source_bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=config.start,
            max_poll_records=config.max_batch,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=config.target_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                while not stop.is_set():
                    batches = await consumer.getmany(timeout_ms=500, max_records=config.max_batch)
                    for partition, records in batches.items():
                        await self._copy(consumer, producer, partition, records, stop)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _copy(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        partition: TopicPartition,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        stop: asyncio.Event,
    ) -> None:
        """Produce one partition's batch, then commit past it; retry until it is copied."""
        backoff = 0.5
        while True:
            try:
                deliveries = [
                    await producer.send(
                        self.config.target_topic,
                        record.value,
                        key=relay_key(record.value or b"", record.key),
                    )
                    for record in records
                ]
                await asyncio.gather(*deliveries)
                break
            except KafkaError as exc:
                RELAY_ERRORS.labels("produce").inc()
                log.warning("relay: producing failed (%s); retrying in %.1f s", exc, backoff)
                if stop.is_set():
                    return  # not committed: the next run copies the batch again
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self.copied += len(records)
        RELAY_LINES.inc(len(records))
        RELAY_SOURCE_TIME.set(
            records[-1].timestamp / 1000 if records[-1].timestamp else time.time()
        )
        try:
            await consumer.commit({partition: records[-1].offset + 1})
        except KafkaError as exc:
            # The lines are copied; a failed commit only means they may be copied again.
            RELAY_ERRORS.labels("commit").inc()
            log.warning("relay: commit failed (%s); lines may be copied twice", exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
