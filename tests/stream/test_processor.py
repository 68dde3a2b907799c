"""IngestProcessor with fakes: ordering, replay, duplicate memory across jumps."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from state import ApplyResult, FeatureUpdate, RejectUpdate, WatchUpdate
from stream.codec import decode_event
from stream.events import WatchEvent
from stream.parser import DuplicateFilter, LineValidator, ParseContext
from stream.processor import IngestProcessor, OutgoingEvent, SourceLine

LINES = [
    b"2023-10-25T07:20:57,1,GET /data/m/up+2009/0.mpg",
    b"2023-10-25T07:20:58,1,GET /data/m/up+2009/1.mpg",
    b"2023-10-25T07:20:57,1,GET /data/m/up+2009/0.mpg",  # duplicate of offset 0
    b"2023-10-25T07:20:59,2,GET /rate/up+2009=9",
    b"2023-10-25T07:21:00,2,GET /rate/up+2009=5",
]


class FakePublisher:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: list[OutgoingEvent] = []
        self.rejected: list[bytes] = []

    async def publish(self, events: Sequence[OutgoingEvent], rejected: Sequence[bytes]) -> None:
        self.log.append("publish")
        self.events.extend(events)
        self.rejected.extend(rejected)


class FakeFeatures:
    """Keeps a watermark per partition and applies above it, like the Lua script."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.watermarks: dict[tuple[str, int], int] = {}
        self.applied: list[FeatureUpdate] = []

    async def watermark(self, topic: str, partition: int) -> int:
        return self.watermarks.get((topic, partition), -1)

    async def apply(
        self, topic: str, partition: int, updates: Sequence[FeatureUpdate]
    ) -> ApplyResult:
        self.log.append("apply")
        watermark = self.watermarks.get((topic, partition), -1)
        fresh = [u for u in updates if u.offset > watermark]
        self.applied.extend(fresh)
        last = max([watermark, *(u.offset for u in fresh)])
        self.watermarks[(topic, partition)] = last
        return ApplyResult(len(fresh), len(updates) - len(fresh), last)


def source(lines: Sequence[bytes], start: int = 0, partition: int = 0) -> list[SourceLine]:
    return [
        SourceLine("movielog", partition, start + i, line, 1_700_000_000_000_000)
        for i, line in enumerate(lines)
    ]


def processor(
    log: list[str], history: Sequence[bytes] = ()
) -> tuple[IngestProcessor, FakePublisher, FakeFeatures]:
    publisher, features = FakePublisher(log), FakeFeatures(log)

    async def preceding(topic: str, partition: int, start: int, end: int) -> list[bytes]:
        return list(history[start:end])

    return (
        IngestProcessor(
            new_checker=lambda: LineValidator(ParseContext(), DuplicateFilter(100)),
            publisher=publisher,
            features=features,
            preceding_lines=preceding,
            memory=100,
        ),
        publisher,
        features,
    )


async def test_events_are_published_before_their_effects_are_applied() -> None:
    log: list[str] = []
    ingest, publisher, features = processor(log)
    report = await ingest.process(source(LINES))
    assert log == ["publish", "apply"]
    assert (report.published_events, report.published_rejected, report.replayed) == (3, 2, 0)
    assert [type(u).__name__ for u in features.applied].count("RejectUpdate") == 2
    reasons = sorted(orjson.loads(r)["reason"] for r in publisher.rejected)
    assert reasons == ["bad_rating", "duplicate"]
    first = publisher.events[0]
    assert first.key == b"1" and first.source == b"movielog:0:0"
    assert isinstance(decode_event(first.value), WatchEvent)


async def test_lines_below_the_watermark_are_skipped_but_remembered() -> None:
    log: list[str] = []
    ingest, publisher, features = processor(log)
    features.watermarks[("movielog", 0)] = 1  # offsets 0 and 1 were handled before a crash
    report = await ingest.process(source(LINES))
    assert report.replayed == 2
    # Offset 2 repeats offset 0: still a duplicate, although offset 0 was not applied now.
    assert isinstance(features.applied[0], RejectUpdate)
    assert features.applied[0].reason == "duplicate"
    assert [e.source for e in publisher.events] == [b"movielog:0:4"]


async def test_a_jump_in_offsets_rebuilds_the_duplicate_memory_from_kafka() -> None:
    log: list[str] = []
    ingest, _, features = processor(log, history=LINES)
    # A restarted worker resumes at offset 2: the line there repeats offset 0.
    await ingest.process(source(LINES[2:], start=2))
    assert isinstance(features.applied[0], RejectUpdate)
    assert features.applied[0].reason == "duplicate"


async def test_partitions_are_applied_separately() -> None:
    log: list[str] = []
    ingest, _, features = processor(log)
    batch = source(LINES[:2], partition=0) + source(LINES[:2], partition=1)
    await ingest.process(batch)
    assert features.watermarks == {("movielog", 0): 1, ("movielog", 1): 1}
    assert all(isinstance(u, WatchUpdate) for u in features.applied)
    assert log == ["publish", "apply", "apply"]


async def test_watches_count_for_the_segment_known_when_they_are_applied() -> None:
    log: list[str] = []
    ingest, _, features = processor(log)
    asked: list[int] = []

    def segment_of(user_id: int) -> str | None:
        asked.append(user_id)
        return {1: "F:25-34"}.get(user_id)

    ingest.segment_of = segment_of
    features.watermarks[("movielog", 0)] = 0  # offset 0 was applied before a crash
    lines = [*LINES, b"2023-10-25T07:21:01,2,GET /data/m/up+2009/0.mpg"]
    await ingest.process(source(lines))
    watches = [u for u in features.applied if isinstance(u, WatchUpdate)]
    assert [(w.offset, w.genres) for w in watches] == [(1, ("segment:F:25-34",)), (5, ())]
    # Asked for the valid lines applied: not the replayed one, the duplicate, the bad rating.
    assert asked == [1, 2, 2]
