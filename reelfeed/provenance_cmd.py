"""``reelfeed provenance REQUEST_ID``: which model, code and data made a served list.

The server writes one record per answer to ``reelfeed.recommendations`` (request id,
time, user, model version, item-matrix revision and the learner's positions, its
*watermark*, when it published that matrix). This command finds the record and joins
it with what Redis and Kafka know:

- the version's registry record: its config, code git sha and package versions;
- its lineage at the time of the request: the restore in effect then (the registry
  keeps every restore), that snapshot's own parents, and the newest snapshot from
  which replaying ``(snapshot positions, watermark]`` reproduces the model;
- the data it had learned from: per partition of the events topic the offset range up
  to the watermark (without ranges skipped by ``restore --skip-to``), the number of
  messages and, read from the topic itself, the events by kind, the messages the
  learner drops (duplicates by ingest source position, undecodable ones) and the
  event-time range. Beyond ``--exact-limit`` messages only the ends of the ranges are
  read: the counts are then offset differences and the time range is approximate.

The search reads the recommendations topic backwards in chunks, newest first, and stops
by itself: at the record, at the start of the ``--since`` window, or after
``--max-records``. ``--user`` narrows it to the one partition that user's records go to.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from reelfeed.settings import Settings
from state import KeySchema, SnapshotRecord, SnapshotStore, VersionRecord, VersionRegistry
from stream.codec import EventDecodeError, decode_event
from stream.events import RateEvent, RecommendationEvent, WatchEvent
from stream.kafka_io import TopicUnreadable, topic_partitions
from stream.learner import parse_source
from stream.processor import SOURCE_HEADER

__all__ = ["add_provenance_command", "cmd_provenance", "find_record", "provenance", "render_text"]

#: Messages read per partition and step of the backward search.
_CHUNK = 20_000


class ProvenanceError(RuntimeError):
    """A provenance question that cannot be answered."""


@dataclass(frozen=True, slots=True)
class FoundRecord:
    """A provenance record and where it was found."""

    fields: dict[str, Any]
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class _PartitionData:
    """What one partition of the events topic contributed, up to the watermark."""

    topic: str
    partition: int
    first: int | None
    last: int
    #: The partition's first offset still on the broker.
    log_start: int
    skipped: list[tuple[int, int]] = field(default_factory=list)
    messages: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    #: Messages the learner does not learn from: "duplicate", "undecodable".
    dropped: dict[str, int] = field(default_factory=dict)
    first_event_us: int | None = None
    last_event_us: int | None = None


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class _Reader:
    """Reads offset ranges of partitions with one consumer outside any group."""

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self._bootstrap = bootstrap
        self._timeout_s = timeout_s

    async def __aenter__(self) -> _Reader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        try:
            return await topic_partitions(self._bootstrap, topic)
        except TopicUnreadable as exc:
            raise ProvenanceError(f"{exc} (does it exist?)") from None

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """``[log start, end)`` of each partition."""
        starts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        return {tp: (int(starts[tp]), int(ends[tp])) for tp in tps}

    async def offsets_after(
        self, tps: list[TopicPartition], when: float
    ) -> dict[TopicPartition, int]:
        """The first offset of each partition with a timestamp at or after ``when``."""
        found = await self._consumer.offsets_for_times({tp: int(when * 1000) for tp in tps})
        ends = await self._consumer.end_offsets(tps)
        return {tp: int(ends[tp]) if found[tp] is None else int(found[tp].offset) for tp in tps}

    async def read(self, tp: TopicPartition, start: int, end: int) -> list[Any]:
        """The messages ``start <= offset < end`` of one partition (fewer if deleted)."""
        if end <= start:
            return []
        consumer = self._consumer
        consumer.assign([tp])
        consumer.seek(tp, start)
        messages: list[Any] = []
        async with asyncio.timeout(self._timeout_s):
            while True:
                batch = (await consumer.getmany(tp, timeout_ms=500, max_records=10_000)).get(tp, [])
                if not batch:
                    # Nothing more to read: the range's end is behind us, or beyond the log.
                    if await consumer.position(tp) >= end:
                        break
                    continue
                messages.extend(message for message in batch if message.offset < end)
                if batch[-1].offset >= end - 1:
                    break
        return messages


async def find_record(
    reader: _Reader,
    topic: str,
    request_id: str,
    since: float | None,
    user_id: int | None,
    max_records: int,
) -> tuple[FoundRecord | None, int]:
    """Search the recommendations topic newest first; return the record and how many
    records were read."""
    tps = await reader.partitions(topic)
    if user_id is not None:
        # The server sends a user's records to partitions[user_id % count].
        tps = [tps[user_id % len(tps)]]
    bounds = await reader.bounds(tps)
    lowest = {tp: start for tp, (start, _) in bounds.items()}
    if since is not None:
        after = await reader.offsets_after(tps, since)
        lowest = {tp: max(lowest[tp], after[tp]) for tp in tps}
    upper = {tp: end for tp, (_, end) in bounds.items()}
    needle = b'"request_id":"' + request_id.encode() + b'"'
    scanned = 0
    while scanned < max_records and any(upper[tp] > lowest[tp] for tp in tps):
        for tp in tps:
            if upper[tp] <= lowest[tp]:
                continue
            start = max(lowest[tp], upper[tp] - _CHUNK)
            messages = await reader.read(tp, start, upper[tp])
            scanned += len(messages)
            for message in reversed(messages):
                value = message.value or b""
                if needle in value:
                    return FoundRecord(
                        orjson.loads(value), tp.topic, tp.partition, message.offset
                    ), scanned
            upper[tp] = start
    return None, scanned


def _skipped_ranges(
    record: VersionRecord, chain: list[SnapshotRecord], when: float
) -> dict[str, list[tuple[int, int]]]:
    """Offsets that restores with ``--skip-to`` jumped over, in the lineage in effect."""
    in_chain = {snapshot.id: snapshot for snapshot in chain}
    skipped: dict[str, list[tuple[int, int]]] = {}
    for entry in record.restores:
        snapshot = in_chain.get(str(entry["snapshot"]))
        if snapshot is None or float(entry["time"]) > when:
            continue
        for name, resumed_after in dict(entry["positions"]).items():
            had = snapshot.positions.get(name, -1)
            if int(resumed_after) > had:
                skipped.setdefault(name, []).append((had + 1, int(resumed_after)))
    return skipped


def _replay_from(
    snapshots: list[SnapshotRecord],
    version: str,
    watermark: Mapping[str, int],
    when: float,
    restore: Mapping[str, Any] | None,
) -> SnapshotRecord | None:
    """The newest snapshot of the model's history at ``when`` behind the watermark."""
    restored_at = None if restore is None else float(restore["time"])
    candidates = [
        snapshot
        for snapshot in snapshots
        if snapshot.version == version
        and snapshot.checkpoint_created <= when
        and snapshot.covers_at_most(watermark)
        # Before the restore in effect, the version had another history.
        and (
            restored_at is None
            or snapshot.checkpoint_created >= restored_at
            or (restore is not None and snapshot.id == restore["snapshot"])
        )
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (sum(s.positions.values()), s.checkpoint_created))


def _replay_ranges(
    snapshot: SnapshotRecord, restore: Mapping[str, Any] | None, watermark: Mapping[str, int]
) -> dict[str, list[int]]:
    """``[first, last]`` offsets to replay from ``snapshot`` up to the watermark.

    Examples
    --------
    >>> snap = SnapshotRecord("s1", "v1", {"ev:0": 20, "ev:1": 9}, 0.0, 0.0, 1)
    >>> _replay_ranges(snap, None, {"ev:0": 60, "ev:1": 30})
    {'ev:0': [21, 60], 'ev:1': [10, 30]}

    Restored from that very snapshot past a poisoned range, the learner went on after it:

    >>> skip = {"snapshot": "s1", "time": 1.0, "positions": {"ev:0": 25, "ev:1": 9}}
    >>> _replay_ranges(snap, skip, {"ev:0": 60, "ev:1": 30})
    {'ev:0': [26, 60], 'ev:1': [10, 30]}
    """
    resumed_after = dict(snapshot.positions)
    if restore is not None and restore["snapshot"] == snapshot.id:
        resumed_after.update(dict(restore["positions"]))
    return {
        name: [int(resumed_after.get(name, -1)) + 1, int(offset)]
        for name, offset in sorted(watermark.items())
    }


async def _learned_data(
    reader: _Reader,
    watermark: Mapping[str, int],
    skipped: Mapping[str, list[tuple[int, int]]],
    exact_limit: int,
) -> dict[str, Any]:
    partitions: list[_PartitionData] = []
    by_topic: dict[str, list[int]] = {}
    for name in watermark:
        topic, _, number = name.rpartition(":")
        by_topic.setdefault(topic, []).append(int(number))
    for topic, numbers in sorted(by_topic.items()):
        tps = [TopicPartition(topic, number) for number in sorted(numbers)]
        bounds = await reader.bounds(tps)
        for tp in tps:
            last = int(watermark[f"{topic}:{tp.partition}"])
            log_start = bounds[tp][0]
            # A version learns its topic from the beginning; when retention has already
            # deleted that beginning, where it started can no longer be told.
            first = 0 if log_start == 0 else None
            gaps = sorted(skipped.get(f"{topic}:{tp.partition}", []))
            data = _PartitionData(topic, tp.partition, first, last, log_start, gaps)
            partitions.append(data)
    total = sum(p.last - (p.first or 0) + 1 for p in partitions)
    exact = total <= exact_limit and all(p.first is not None for p in partitions)
    for data in partitions:
        tp = TopicPartition(data.topic, data.partition)
        start = data.log_start if data.first is None else data.first
        if exact:
            messages = await reader.read(tp, start, data.last + 1)
        else:
            # Too much to read: the ends of the range give the time range.
            messages = [*await reader.read(tp, start, start + 1)]
            messages += await reader.read(tp, data.last, data.last + 1)
        # The learner drops a message whose ingest source position it has seen: ingest
        # may publish an event twice after a crash. The same rule, from the same start.
        source_marks: dict[str, int] = {}
        for message in messages:
            if any(low <= message.offset <= high for low, high in data.skipped):
                continue
            if exact:
                data.messages += 1
                source = parse_source(dict(message.headers or ()).get(SOURCE_HEADER))
                if source is not None:
                    if source[1] <= source_marks.get(source[0], -1):
                        data.dropped["duplicate"] = data.dropped.get("duplicate", 0) + 1
                        continue
                    source_marks[source[0]] = source[1]
            try:
                event = decode_event(message.value or b"")
            except EventDecodeError:
                if exact:
                    data.dropped["undecodable"] = data.dropped.get("undecodable", 0) + 1
                continue
            if exact:
                kind = _KINDS.get(type(event), "other")
                data.kinds[kind] = data.kinds.get(kind, 0) + 1
            if data.first_event_us is None or event.time_us < data.first_event_us:
                data.first_event_us = event.time_us
            if data.last_event_us is None or event.time_us > data.last_event_us:
                data.last_event_us = event.time_us
        if not exact:
            data.messages = data.last - start + 1 - sum(h - lo + 1 for lo, h in data.skipped)
    return _data_summary(partitions, exact)


_KINDS: dict[type, str] = {
    WatchEvent: "watch",
    RateEvent: "rate",
    RecommendationEvent: "recommendation",
}


def _data_summary(partitions: list[_PartitionData], exact: bool) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for data in partitions:
        for kind, count in data.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
        for reason, count in data.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    firsts = [p.first_event_us for p in partitions if p.first_event_us is not None]
    lasts = [p.last_event_us for p in partitions if p.last_event_us is not None]
    return {
        "topics": sorted({p.topic for p in partitions}),
        "exact": exact,
        "messages": sum(p.messages for p in partitions),
        "events": dict(sorted(kinds.items())) if exact else None,
        "dropped": dict(sorted(dropped.items())) if exact else None,
        "event_time": {
            "first": _iso(min(firsts) / 1e6) if firsts else None,
            "last": _iso(max(lasts) / 1e6) if lasts else None,
        },
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "from": p.first,
                "to": p.last,
                "skipped": [list(gap) for gap in p.skipped],
                "messages": p.messages,
                "events": dict(sorted(p.kinds.items())) if exact else None,
                "dropped": dict(sorted(p.dropped.items())) if exact else None,
                "event_time": {
                    "first": None if p.first_event_us is None else _iso(p.first_event_us / 1e6),
                    "last": None if p.last_event_us is None else _iso(p.last_event_us / 1e6),
                },
            }
            for p in partitions
        ],
    }


def _snapshot_summary(snapshot: SnapshotRecord) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "version": snapshot.version,
        "kind": snapshot.kind,
        "taken": _iso(snapshot.checkpoint_created),
        "positions": snapshot.positions,
        "parent": snapshot.parent,
        "note": snapshot.note,
    }


async def provenance(
    request_id: str,
    settings: Settings,
    *,
    since: float | None = None,
    user_id: int | None = None,
    max_records: int = 5_000_000,
    exact_limit: int = 2_000_000,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Everything known about how the answer to ``request_id`` was made."""
    started = time.monotonic()
    client = aioredis.Redis.from_url(settings.redis_url)
    keys = KeySchema(settings.redis_prefix)
    try:
        async with _Reader(settings.kafka_bootstrap, timeout_s) as reader:
            found, scanned = await find_record(
                reader, settings.recommendations_topic, request_id, since, user_id, max_records
            )
            if found is None:
                raise ProvenanceError(
                    f"no record of request {request_id!r} among the {scanned} newest of "
                    f"{settings.recommendations_topic!r}"
                )
            record = found.fields
            when = float(record["time"])
            answer = {
                "request_id": record["request_id"],
                "time": _iso(when),
                "user_id": record["user_id"],
                "items": record["items"],
                "status": record.get("status"),
                "latency_s": record["latency_s"],
                "fallback": record["fallback"],
                "record": {
                    "topic": found.topic,
                    "partition": found.partition,
                    "offset": found.offset,
                },
            }
            result: dict[str, Any] = {
                "request": answer,
                "model": None,
                "lineage": None,
                "data": None,
            }
            version = record.get("version")
            watermark: dict[str, int] = dict(record.get("positions") or {})
            if version is not None:
                registered = await VersionRegistry(client, keys).get(version)
                model: dict[str, Any] = {"version": version, "revision": record["revision"]}
                if registered is None:
                    model["registered"] = False
                else:
                    model.update(
                        registered=True,
                        status_now=registered.status,
                        created=_iso(registered.created),
                        consumer_group=registered.consumer_group,
                        config=dict(registered.config),
                        code_sha=registered.code_sha,
                        packages=dict(registered.packages),
                    )
                result["model"] = model
                store = SnapshotStore(client, keys)
                restore = None if registered is None else registered.restore_before(when)
                chain = [] if restore is None else await store.lineage(str(restore["snapshot"]))
                replay_from = _replay_from(await store.list(), version, watermark, when, restore)
                result["lineage"] = {
                    "restored_from": None if restore is None else restore["snapshot"],
                    "restored_at": None if restore is None else _iso(float(restore["time"])),
                    "snapshots": [_snapshot_summary(snapshot) for snapshot in chain],
                    "replay_from": (
                        None
                        if replay_from is None
                        else {
                            **_snapshot_summary(replay_from),
                            "replay": _replay_ranges(replay_from, restore, watermark),
                        }
                    ),
                }
                if watermark:
                    skipped = {} if registered is None else _skipped_ranges(registered, chain, when)
                    result["data"] = {
                        "watermark": watermark,
                        **await _learned_data(reader, watermark, skipped, exact_limit),
                    }
    finally:
        await client.aclose()
    result["search"] = {"records_read": scanned, "seconds": round(time.monotonic() - started, 3)}
    return result


def render_text(result: Mapping[str, Any]) -> str:
    """The provenance as a few readable lines."""
    request = result["request"]
    lines = [
        f"request {request['request_id']} at {request['time']}: user {request['user_id']}, "
        f"{len(request['items'])} items, {request['latency_s'] * 1000:.1f} ms"
        + (f", fallback {request['fallback']}" if request["fallback"] else ""),
        f"  record: {request['record']['topic']}[{request['record']['partition']}]"
        f"@{request['record']['offset']}",
    ]
    model = result.get("model")
    if model is None:
        lines.append("model: none (popularity answered)")
        return "\n".join(lines) + "\n"
    lines.append(f"model: {model['version']}, item matrix revision {model['revision']}")
    if model.get("registered"):
        lines.append(f"  config: {orjson.dumps(model['config']).decode()}")
        lines.append(f"  code: {model['code_sha']}")
        packages = ", ".join(f"{name} {v}" for name, v in sorted(model["packages"].items()))
        lines.append(f"  packages: {packages}")
    else:
        lines.append("  (not in the registry)")
    lineage = result.get("lineage") or {}
    if lineage.get("restored_from"):
        chain = " <- ".join(s["id"] for s in lineage["snapshots"]) or lineage["restored_from"]
        lines.append(f"lineage: restored at {lineage['restored_at']} from {chain}")
    else:
        lines.append("lineage: learned from the beginning, never restored")
    replay = lineage.get("replay_from")
    if replay is not None:
        ranges = ", ".join(
            f"{name} {low}..{high}" for name, (low, high) in replay["replay"].items()
        )
        lines.append(f"reproduce: restore {replay['id']}, then replay {ranges}")
    data = result.get("data")
    if data is not None:
        when = data["event_time"]
        events = data["events"]
        counts = ", ".join(f"{n} {k}" for k, n in sorted(events.items())) if events else "?"
        if data.get("dropped"):
            counts += "; dropped " + ", ".join(
                f"{n} {reason}" for reason, n in sorted(data["dropped"].items())
            )
        lines.append(
            f"data: {data['messages']} messages of {', '.join(data['topics'])} ({counts}), "
            f"event time {when['first']} .. {when['last']}"
            + ("" if data["exact"] else " (ends of the ranges only)")
        )
        for part in data["partitions"]:
            start = "?" if part["from"] is None else part["from"]
            gaps = "".join(f", skipped {lo}..{hi}" for lo, hi in part["skipped"])
            lines.append(
                f"  {part['topic']}:{part['partition']} offsets {start}..{part['to']}{gaps}: "
                f"{part['messages']} messages"
            )
    return "\n".join(lines) + "\n"


def cmd_provenance(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    since = None if args.since is None else time.time() - args.since
    try:
        result = asyncio.run(
            provenance(
                args.request_id,
                settings,
                since=since,
                user_id=args.user,
                max_records=args.max_records,
                exact_limit=args.exact_limit,
            )
        )
    except (ProvenanceError, TimeoutError) as exc:
        sys.stderr.write(f"reelfeed provenance: {exc or 'Kafka did not answer in time'}\n")
        return 1
    if args.text:
        sys.stdout.write(render_text(result))
    else:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_provenance_command(commands: Any) -> None:
    parser = commands.add_parser(
        "provenance", help="which model, code and data made a served list (by request id)"
    )
    parser.add_argument("request_id", help="the X-Request-Id of the answer")
    parser.add_argument(
        "--since",
        type=float,
        default=None,
        metavar="SECONDS",
        help="search only the records of the last SECONDS (default: all, newest first)",
    )
    parser.add_argument("--user", type=int, default=None, help="the user the list was for")
    parser.add_argument(
        "--max-records", type=int, default=5_000_000, help="stop after reading this many"
    )
    parser.add_argument(
        "--exact-limit",
        type=int,
        default=2_000_000,
        help="read and count the learned events when there are at most this many messages",
    )
    parser.add_argument("--text", action="store_true", help="readable text instead of JSON")
    parser.set_defaults(handler=cmd_provenance)
