"""``reelfeed snapshot ...``: create, list, show, delete, prune, export, import, restore."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from reelfeed.settings import Settings
from state import (
    Checkpoint,
    KeySchema,
    LearnerRequest,
    ModelStore,
    RoutingStore,
    SnapshotStore,
    VersionRegistry,
)
from state.snapshots import SNAPSHOT_KINDS
from stream.learner import LearnerState

__all__ = ["add_snapshot_command", "cmd_snapshot", "parse_offsets"]


class SnapshotError(RuntimeError):
    """A snapshot command that cannot be carried out."""


def parse_offsets(text: str) -> dict[str, int]:
    """``"reelfeed.events:0=120,reelfeed.events:1=88"`` -> positions (last offsets learned).

    Examples
    --------
    >>> parse_offsets("reelfeed.events:0=120, reelfeed.events:1=88")
    {'reelfeed.events:0': 119, 'reelfeed.events:1': 87}
    """
    positions = {}
    for part in text.split(","):
        key, _, offset = part.strip().partition("=")
        topic, _, partition = key.rpartition(":")
        if not topic or not partition.isdigit() or not offset.strip().isdigit():
            raise ValueError(f"expected <topic>:<partition>=<offset>, got {part.strip()!r}")
        # The learner resumes after its position: to resume *at* an offset, stop just before.
        positions[key] = int(offset) - 1
    return positions


async def _version(args: argparse.Namespace, client: aioredis.Redis, keys: KeySchema) -> str:
    if args.version:
        return str(args.version)
    live = (await RoutingStore(client, keys).get()).live
    if live is None:
        raise SnapshotError("no --version given and no version is live")
    return live


async def _create(args: argparse.Namespace, client: aioredis.Redis, keys: KeySchema) -> Any:
    version = await _version(args, client, keys)
    store = ModelStore(client, keys, version)
    snapshots = SnapshotStore(client, keys)
    started = time.time()
    request = LearnerRequest("checkpoint")
    await snapshots.send(version, request)
    answered = False
    deadline = time.monotonic() + args.timeout
    checkpoint = None
    while time.monotonic() < deadline:
        checkpoint = await store.load_checkpoint()
        if checkpoint is not None and checkpoint.created >= request.sent:
            answered = True
            break
        await asyncio.sleep(0.1)
    if checkpoint is None:
        raise SnapshotError(f"version {version!r} has no checkpoint: is its learner running?")
    record = await VersionRegistry(client, keys).get(version)
    parent = record.restored_from if record is not None else None
    snapshot = await snapshots.create(version, checkpoint, parent=parent, note=args.note)
    return {
        **asdict(snapshot),
        "learner_answered": answered,
        "seconds": round(time.time() - started, 3),
    }


async def _restore(args: argparse.Namespace, client: aioredis.Redis, keys: KeySchema) -> Any:
    snapshots = SnapshotStore(client, keys)
    record = await snapshots.get(args.snapshot)
    state_blob = await snapshots.state(args.snapshot)
    if record is None or state_blob is None:
        raise SnapshotError(f"no snapshot {args.snapshot!r}")
    started = time.time()
    version = args.version or record.version
    positions = dict(record.positions)
    if args.skip_to:
        state = LearnerState.from_bytes(state_blob)
        state.positions.update(parse_offsets(args.skip_to))
        positions = dict(state.positions)
        state_blob = state.to_bytes()
    await ModelStore(client, keys, version).save_checkpoint(
        Checkpoint(state_blob, positions, time.time())
    )
    registry = VersionRegistry(client, keys)
    if await registry.get(version) is not None:
        # The history of restores is what `reelfeed provenance` reads a lineage from.
        await registry.record_restore(version, record.id, positions, started)
    await snapshots.send(version, LearnerRequest("reload"))
    return {
        "restored": record.id,
        "into": version,
        "positions": positions,
        "seconds": round(time.time() - started, 3),
        "note": "the version's learner reloads between two batches and replays from there",
    }


async def _run(args: argparse.Namespace, settings: Settings) -> Any:
    client = aioredis.Redis.from_url(settings.redis_url)
    keys = KeySchema(settings.redis_prefix)
    snapshots = SnapshotStore(client, keys)
    try:
        action = args.action
        if action == "create":
            return await _create(args, client, keys)
        if action == "restore":
            return await _restore(args, client, keys)
        if action == "list":
            return [
                asdict(record)
                for record in await snapshots.list()
                if (args.version is None or record.version == args.version)
                and (args.kind is None or record.kind == args.kind)
            ]
        if action == "show":
            lineage = await snapshots.lineage(args.snapshot)
            if not lineage:
                raise SnapshotError(f"no snapshot {args.snapshot!r}")
            return {**asdict(lineage[0]), "lineage": [record.id for record in lineage]}
        if action == "delete":
            return {"deleted": await snapshots.delete(args.snapshot)}
        if action == "prune":
            version = await _version(args, client, keys)
            kinds = SNAPSHOT_KINDS if args.include_manual else ("periodic",)
            return {"version": version, "deleted": await snapshots.prune(version, args.keep, kinds)}
        if action == "export":
            blob = await snapshots.export(args.snapshot)
            Path(args.file).write_bytes(blob)
            return {"exported": args.snapshot, "file": args.file, "bytes": len(blob)}
        if action == "import":
            return asdict(await snapshots.import_(Path(args.file).read_bytes()))
        raise SnapshotError(f"unknown action {action!r}")
    finally:
        await client.aclose()


def cmd_snapshot(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    try:
        result = asyncio.run(_run(args, settings))
    except (SnapshotError, KeyError, ValueError) as exc:
        sys.stderr.write(f"reelfeed snapshot: {exc}\n")
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_snapshot_command(commands: Any) -> None:
    snapshot = commands.add_parser("snapshot", help="snapshots of model versions, and rollback")
    actions = snapshot.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="freeze a version at a batch boundary")
    create.add_argument("--version", default=None, help="default: the live version")
    create.add_argument("--timeout", type=float, default=30.0, help="wait for the learner")
    create.add_argument("--note", default="")
    listing = actions.add_parser("list", help="every snapshot, oldest first")
    listing.add_argument("--version", default=None, help="only this version's")
    listing.add_argument("--kind", choices=SNAPSHOT_KINDS, default=None)
    prune = actions.add_parser("prune", help="delete a version's oldest periodic snapshots")
    prune.add_argument("--version", default=None, help="default: the live version")
    prune.add_argument("--keep", type=int, required=True, help="how many to keep")
    prune.add_argument(
        "--include-manual", action="store_true", help="count and delete manual ones too"
    )
    for name, text in (("show", "one snapshot"), ("delete", "remove a snapshot")):
        action = actions.add_parser(name, help=text)
        action.add_argument("snapshot")
    export = actions.add_parser("export", help="write a snapshot to a file")
    export.add_argument("snapshot")
    export.add_argument("file")
    imported = actions.add_parser("import", help="read a snapshot file into Redis")
    imported.add_argument("file")
    restore = actions.add_parser("restore", help="roll a version back to a snapshot")
    restore.add_argument("snapshot")
    restore.add_argument("--version", default=None, help="default: the snapshot's version")
    restore.add_argument(
        "--skip-to",
        default=None,
        metavar="OFFSETS",
        help="resume at these offsets instead (e.g. past a poisoned range): "
        "reelfeed.events:0=1200,reelfeed.events:1=980",
    )
    snapshot.set_defaults(handler=cmd_snapshot)
