"""One batch of raw lines: parse, publish typed events and refusals, apply features.

The order of the steps is what makes a crash harmless:

1. lines at or below the partition's feature watermark were fully handled before a
   crash (published, then applied): they are parsed again only to rebuild the
   duplicate memory, and otherwise skipped;
2. the remaining events and refusals are published to Kafka and acknowledged;
3. only then are their effects applied to Redis, atomically with the watermark.

A crash between 2 and 3 publishes some events twice; each carries its source
position in a header, so consumers drop the second copy. Effects in Redis are never
applied twice, and nothing is lost because the Kafka offset is committed after 3.

One effect is not a function of the lines alone: with a user API, a watch also counts
for the viewer's segment when the viewer's profile is in memory at that moment
(``IngestProcessor.segment_of``). Lines read again after a crash are still applied
once, but the profiles in memory then differ from the first run's (the cache starts
empty), so the segment lists of a replay can differ slightly from an uninterrupted
run. They are a best-effort signal for unknown users, never part of the exactly-once
state: the watched sets, counts, ratings and the global and genre popularity are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from state import (
    ApplyResult,
    FeatureUpdate,
    RatingUpdate,
    RejectUpdate,
    RequestUpdate,
    WatchUpdate,
    segment_genre,
)
from stream import metrics
from stream.codec import encode_event, encode_rejected, event_key
from stream.events import Event, RateEvent, RecommendationEvent, Rejected, WatchEvent

__all__ = [
    "SOURCE_HEADER",
    "BatchReport",
    "EventPublisher",
    "FeatureWriter",
    "IngestProcessor",
    "LineChecker",
    "OutgoingEvent",
    "SourceLine",
    "retry_while_unreachable",
    "source_header",
]

log = logging.getLogger(__name__)

SOURCE_HEADER = "reelfeed-source"

T = TypeVar("T")


async def retry_while_unreachable(
    call: Callable[[], Awaitable[T]],
    what: str,
    errors: tuple[type[BaseException], ...],
    first_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
) -> T:
    """Await ``call()`` again and again, with growing pauses, until it does not raise
    one of ``errors``; return its result.

    A worker whose Redis is unreachable waits here with its state in memory instead
    of crashing (the learner's crash stopped its process; ingest's left a stalled
    agent). ``call`` must be safe to repeat: a write whose reply was lost may have
    been applied, and is then applied again with the same result. Cancellation ends
    the wait at once.

    Examples
    --------
    >>> answers = iter([ConnectionError("down"), ConnectionError("down"), "ok"])
    >>> async def call() -> str:
    ...     answer = next(answers)
    ...     if isinstance(answer, Exception):
    ...         raise answer
    ...     return answer
    >>> asyncio.run(retry_while_unreachable(call, "a test", (ConnectionError,), 0.001))
    'ok'
    """
    delay = first_delay_s
    failed_at: float | None = None
    while True:
        try:
            result = await call()
        except errors as exc:
            if failed_at is None:
                failed_at = time.monotonic()
                log.warning("Redis unreachable while %s (%r): waiting for it", what, exc)
            else:
                log.debug("Redis still unreachable while %s (%r)", what, exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, max_delay_s)
            continue
        if failed_at is not None:
            log.info(
                "Redis answers again after %.1f s: %s goes on", time.monotonic() - failed_at, what
            )
        return result


@dataclass(frozen=True, slots=True)
class SourceLine:
    """A raw line and where it was read."""

    topic: str
    partition: int
    offset: int
    value: bytes
    #: When Kafka stored the message, in microseconds since the epoch.
    timestamp_us: int


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """A typed event on its way to ``reelfeed.events``, keyed by user."""

    key: bytes
    value: bytes
    source: bytes


@dataclass(frozen=True, slots=True)
class BatchReport:
    lines: int
    replayed: int
    published_events: int
    published_rejected: int


def source_header(topic: str, partition: int, offset: int) -> bytes:
    """The source position of an event: ``b"<topic>:<partition>:<offset>"``."""
    return f"{topic}:{partition}:{offset}".encode()


class LineChecker(Protocol):
    """Parses and validates lines of one partition, remembering recent ones."""

    def validate(self, line: bytes) -> Event | Rejected: ...

    def set_now(self, now_us: int | None) -> None: ...


class EventPublisher(Protocol):
    async def publish(self, events: Sequence[OutgoingEvent], rejected: Sequence[bytes]) -> None:
        """Send both lists and return once Kafka acknowledged every record."""


class FeatureWriter(Protocol):
    async def apply(
        self, topic: str, partition: int, updates: Sequence[FeatureUpdate]
    ) -> ApplyResult: ...

    async def watermark(self, topic: str, partition: int) -> int: ...


#: Reads the raw lines of a partition in ``[start, end)``, to rebuild duplicate memory.
PrecedingLines = Callable[[str, int, int, int], Awaitable[Sequence[bytes]]]


def to_update(
    result: Event | Rejected,
    offset: int,
    genres_of: Callable[[str], tuple[str, ...]],
    segment: str | None = None,
) -> FeatureUpdate:
    """What one parsed line changes in the features.

    A watch counts for the movie's genres and, when ``segment`` is given, for the
    viewer's segment, kept as the pseudo-genre ``state.segment_genre(segment)``.

    Examples
    --------
    >>> watch = WatchEvent(1_700_000_000_000_000, 7, "up+2009", 0)
    >>> to_update(watch, 12, lambda _movie: ("Animation",), "F:25-34").genres
    ('Animation', 'segment:F:25-34')
    >>> to_update(watch, 12, lambda _movie: ("Animation",)).genres
    ('Animation',)
    """
    match result:
        case WatchEvent():
            genres = genres_of(result.movie_id)
            if segment is not None:
                genres = (*genres, segment_genre(segment))
            return WatchUpdate(
                offset,
                result.user_id,
                result.movie_id,
                result.minute,
                result.time_us / 1e6,
                genres,
            )
        case RateEvent():
            return RatingUpdate(offset, result.user_id, result.movie_id, result.rating)
        case RecommendationEvent():
            return RequestUpdate(offset, result.user_id)
        case Rejected():
            return RejectUpdate(offset, result.reason.value)


def _kind(event: Event) -> str:
    match event:
        case WatchEvent():
            return "watch"
        case RateEvent():
            return "rate"
        case RecommendationEvent():
            return "recommendation"


@dataclass(slots=True)
class _PartitionMemory:
    checker: LineChecker
    next_offset: int


@dataclass
class IngestProcessor:
    """Turns batches of raw lines into events, refusals and features, exactly once.

    Parameters
    ----------
    new_checker
        Makes a fresh line checker (parser plus duplicate memory) for a partition.
    publisher, features
        Where events go (Kafka) and where their effects go (Redis).
    genres_of
        Genres of a movie, ``()`` when unknown.
    preceding_lines
        Reads the lines before a position, so that the duplicate memory of a partition
        is the same after a restart or a rebalance as in an uninterrupted run.
    memory
        How many preceding lines the duplicate memory covers (the checker's capacity).
    segment_of
        The segment of a user if known now, ``None`` otherwise; it must answer at once
        (``stream.profiles.ProfileLookup.segment``). It is asked for every valid line
        applied, so that a user's first lines (a recommendation request, say) start the
        profile fetch that their watches then use. ``None``: no segments. Which
        watches count for a segment depends on what is known when a line is applied,
        so segment lists are a best-effort signal, not exactly-once state: a replay
        after a crash may count a few watches with or without their segment where
        the first run did not.
    """

    new_checker: Callable[[], LineChecker]
    publisher: EventPublisher
    features: FeatureWriter
    genres_of: Callable[[str], tuple[str, ...]] = lambda _movie: ()
    preceding_lines: PrecedingLines | None = None
    memory: int = 0
    segment_of: Callable[[int], str | None] | None = None
    _partitions: dict[tuple[str, int], _PartitionMemory] = field(default_factory=dict)

    async def _checker_for(
        self, topic: str, partition: int, offset: int, now_us: int
    ) -> LineChecker:
        known = self._partitions.get((topic, partition))
        if known is not None and known.next_offset == offset:
            return known.checker
        # First line of this partition, or a jump (restart, rebalance, seek): rebuild the
        # memory from the lines that precede this one, as an uninterrupted run had it.
        checker = self.new_checker()
        checker.set_now(now_us)
        if self.preceding_lines is not None and self.memory > 0 and offset > 0:
            start = max(0, offset - self.memory)
            preceding = await self.preceding_lines(topic, partition, start, offset)
            for line in preceding:
                checker.validate(line)
            log.info(
                "rebuilt duplicate memory of %s[%d] from %d lines before offset %d",
                topic,
                partition,
                len(preceding),
                offset,
            )
        self._partitions[(topic, partition)] = _PartitionMemory(checker, offset)
        return checker

    async def process(self, lines: Sequence[SourceLine]) -> BatchReport:
        started = time.perf_counter()
        groups: dict[tuple[str, int], list[SourceLine]] = {}
        for line in lines:
            groups.setdefault((line.topic, line.partition), []).append(line)
        events: list[OutgoingEvent] = []
        rejected: list[bytes] = []
        updates: dict[tuple[str, int], list[FeatureUpdate]] = {}
        replayed = 0
        now_us = time.time_ns() // 1000
        for known in self._partitions.values():
            known.checker.set_now(now_us)
        for (topic, partition), group in groups.items():
            watermark = await self.features.watermark(topic, partition)
            partition_updates = updates.setdefault((topic, partition), [])
            for line in group:
                checker = await self._checker_for(topic, partition, line.offset, now_us)
                result = checker.validate(line.value)
                self._partitions[(topic, partition)].next_offset = line.offset + 1
                if line.offset <= watermark:
                    replayed += 1
                    continue
                segment = None
                if self.segment_of is not None and not isinstance(result, Rejected):
                    segment = self.segment_of(result.user_id)
                partition_updates.append(to_update(result, line.offset, self.genres_of, segment))
                if isinstance(result, Rejected):
                    rejected.append(
                        encode_rejected(result, topic, partition, line.offset, line.timestamp_us)
                    )
                    metrics.INGEST_REJECTED.labels(result.reason.value).inc()
                else:
                    events.append(
                        OutgoingEvent(
                            key=event_key(result),
                            value=encode_event(result),
                            source=source_header(topic, partition, line.offset),
                        )
                    )
                    metrics.INGEST_EVENTS.labels(_kind(result)).inc()
        await self.publisher.publish(events, rejected)
        for (topic, partition), partition_updates in updates.items():
            if partition_updates:
                await self.features.apply(topic, partition, partition_updates)
        metrics.INGEST_LINES.inc(len(lines) - replayed)
        metrics.INGEST_REPLAYED.inc(replayed)
        metrics.INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)
        return BatchReport(len(lines), replayed, len(events), len(rejected))
