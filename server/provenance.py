"""Provenance: one Kafka record per answer, sent in the background.

An answer never waits for Kafka. The handler appends a small record to a bounded
buffer (a ``deque``) and returns; a background task wakes every ``linger_s``, turns
what accumulated into JSON and sends it as one batch per partition (aiokafka's batch
API: far less work per record than one ``send`` each). Records are keyed by user and
partitioned by ``user_id % partitions``, so one user's records stay in order.

When Kafka is down the server starts and serves all the same: the task retries the
connection with a growing pause, the buffer fills, and from then on every new record
pushes out the oldest one, counted in ``reelfeed_server_provenance_dropped_total
{reason="buffer_full"}``. Batches that Kafka refuses or times out are counted with
``reason="delivery"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from aiokafka import AIOKafkaProducer

from server.metrics import ServerMetrics

__all__ = [
    "KafkaProvenance",
    "NullProvenance",
    "ProvenanceRecord",
    "ProvenanceSink",
]

log = logging.getLogger(__name__)

_MAX_RECORDS_PER_ROUND = 2_000
#: Records encoded between two yields to the event loop: a round of a few hundred at
#: once (about 3.5 us each) held up every answer in flight for a millisecond or more.
_RECORDS_PER_SLICE = 100
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 10.0


class ProvenanceRecord(NamedTuple):
    """What made one answer: enough to find the model state that produced it.

    ``positions`` is the learner's consumed positions (its watermark) when it
    published the item matrix that scored the list; ``fallback`` says why the list
    came from popularity instead, or is ``None``. A named tuple rather than a frozen
    dataclass: one is built per answer, at a third of the cost.

    Examples
    --------
    >>> record = ProvenanceRecord("ab12", 1700000000.5, 42, "v1", 3, {"reelfeed.events:0": 99},
    ...                           ("m1", "m2"), 0.0012, None)
    >>> orjson.loads(record.to_json())["positions"]
    {'reelfeed.events:0': 99}
    """

    request_id: str
    time: float
    user_id: int
    version: str | None
    revision: int
    positions: Mapping[str, int] | None
    items: Sequence[str]
    latency_s: float
    fallback: str | None
    status: int = 200

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "time": self.time,
                "user_id": self.user_id,
                "version": self.version,
                "revision": self.revision,
                "positions": self.positions,
                "items": list(self.items),
                "latency_s": round(self.latency_s, 6),
                "fallback": self.fallback,
                "status": self.status,
            }
        )


class ProvenanceSink(Protocol):
    def emit(self, record: ProvenanceRecord) -> None:
        """Take a record; never blocks, never raises."""
        ...

    async def start(self) -> None: ...

    async def close(self, timeout: float) -> None: ...


class NullProvenance:
    """Keeps nothing (provenance turned off, or unit tests that do not look at it)."""

    def emit(self, record: ProvenanceRecord) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> None:
        return None


ProducerFactory = Callable[[], Any]


class KafkaProvenance:
    """Batched, buffered provenance records to a Kafka topic.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers.
    topic
        The topic (it must exist: the stack's brokers do not create topics on use).
    buffer_size
        Records held while Kafka is slow or down.
    linger_s
        Longest wait of a record before it is sent.
    metrics
        Where to count sent and dropped records, if anywhere.
    producer_factory
        Builds the (not yet started) aiokafka producer; for tests.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        buffer_size: int = 20_000,
        linger_s: float = 0.2,
        metrics: ServerMetrics | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._linger_s = linger_s
        self._buffer: deque[ProvenanceRecord] = deque(maxlen=buffer_size)
        self._metrics = metrics
        self._factory = producer_factory or self._default_producer
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = False
        #: Records delivered, and records lost by reason.
        self.sent = 0
        self.dropped: dict[str, int] = {"buffer_full": 0, "delivery": 0, "shutdown": 0}

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        return self._connected

    def emit(self, record: ProvenanceRecord) -> None:
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self._drop("buffer_full", 1)
        buffer.append(record)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float) -> None:
        """Send what is buffered (for at most ``timeout`` seconds), then stop."""
        self._closing = True
        task = self._task
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._buffer:
            self._drop("shutdown", len(self._buffer))
            self._buffer.clear()

    def _default_producer(self) -> Any:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id="reelfeed-server",
            acks=1,
            linger_ms=int(self._linger_s * 1000),
            max_batch_size=256 * 1024,
            request_timeout_ms=10_000,
            enable_idempotence=False,
        )

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if self._metrics is not None:
            self._metrics.provenance_dropped.labels(reason).inc(count)

    def _delivered(self, count: int) -> None:
        self.sent += count
        if self._metrics is not None:
            self._metrics.provenance_sent.inc(count)

    async def _run(self) -> None:
        producer: Any = None
        retry_s = _RETRY_MIN_S
        try:
            while True:
                if producer is None:
                    if self._closing:
                        return
                    producer, partitions = await self._connect()
                    if producer is None:
                        await asyncio.sleep(retry_s)
                        retry_s = min(retry_s * 2, _RETRY_MAX_S)
                        continue
                    retry_s = _RETRY_MIN_S
                if self._buffer:
                    await self._send_round(producer, partitions)
                elif self._closing:
                    with contextlib.suppress(Exception):
                        await producer.flush()
                    return
                else:
                    await asyncio.sleep(self._linger_s)
        finally:
            self._connected = False
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def _connect(self) -> tuple[Any, list[int]]:
        producer = self._factory()
        try:
            await producer.start()
            partitions = sorted(await producer.partitions_for(self._topic))
            if not partitions:
                raise LookupError(f"topic {self._topic} has no partitions")
        except Exception as exc:  # any failure means: retry later
            log.warning("provenance: Kafka not available (%r); buffering records", exc)
            with contextlib.suppress(Exception):
                await producer.stop()
            return None, []
        log.info("provenance: sending records to %s (%d partitions)", self._topic, len(partitions))
        self._connected = True
        return producer, partitions

    async def _send_round(self, producer: Any, partitions: list[int]) -> None:
        buffer = self._buffer
        take = min(len(buffer), _MAX_RECORDS_PER_ROUND)
        by_partition: dict[int, list[ProvenanceRecord]] = {}
        count = len(partitions)
        for _ in range(take):
            record = buffer.popleft()
            by_partition.setdefault(partitions[record.user_id % count], []).append(record)
        encoded = 0
        #: Records given to the producer (or counted as lost by ``_send_batch``).
        handed = 0
        try:
            for partition, records in by_partition.items():
                batch = producer.create_batch()
                pending = 0
                for record in records:
                    encoded += 1
                    if encoded % _RECORDS_PER_SLICE == 0:
                        await asyncio.sleep(0)  # let the answers waiting meanwhile go first
                    key = str(record.user_id).encode()
                    timestamp = int(record.time * 1000)
                    if batch.append(key=key, value=record.to_json(), timestamp=timestamp) is None:
                        await self._send_batch(producer, batch, partition, pending)
                        handed += pending
                        batch = producer.create_batch()
                        pending = 0
                        batch.append(key=key, value=record.to_json(), timestamp=timestamp)
                    pending += 1
                await self._send_batch(producer, batch, partition, pending)
                handed += pending
        except asyncio.CancelledError:
            # Stopped mid-round (``close`` ran out of time): the records taken from the
            # buffer and not given to the producer are lost, and counted like the
            # buffer's. A batch whose send was cancelled counts as lost even if Kafka
            # got it: no delivery callback was attached to it, so it is counted once.
            self._drop("shutdown", take - handed)
            raise

    async def _send_batch(self, producer: Any, batch: Any, partition: int, count: int) -> None:
        if count == 0:
            return
        try:
            future = await producer.send_batch(batch, self._topic, partition=partition)
        except Exception as exc:  # count the loss, keep serving
            log.warning("provenance: a batch of %d records was not accepted: %r", count, exc)
            self._drop("delivery", count)
            return
        future.add_done_callback(lambda done: self._on_delivery(done, count))

    def _on_delivery(self, done: asyncio.Future[Any], count: int) -> None:
        if done.cancelled() or done.exception() is not None:
            self._drop("delivery", count)
        else:
            self._delivered(count)
