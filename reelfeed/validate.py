"""``reelfeed validate``: the data quality of a file of movielog lines, as JSON.

The report is made by the same ``LineValidator`` the ingest worker runs, duplicate filter
included, so its counts are what ingest would have accepted and refused.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO, TypedDict

import orjson

from reelfeed.settings import Settings
from stream.catalog import Catalog, load_catalog_csv
from stream.codec import describe_line
from stream.events import Event, RateEvent, RecommendationEvent, Rejected, RejectReason, WatchEvent
from stream.parser import (
    DEFAULT_DUPLICATE_CAPACITY,
    DuplicateFilter,
    LineValidator,
    ParseContext,
)

__all__ = [
    "CatalogError",
    "ValidationReport",
    "add_validate_command",
    "cmd_validate",
    "context_with_catalog",
    "validate_lines",
]

_DEFAULTS = ParseContext()

_KIND_NAMES: dict[type[Event], str] = {
    WatchEvent: "watch",
    RateEvent: "rate",
    RecommendationEvent: "recommendation",
}


class CatalogError(ValueError):
    """A catalog file that names no movies."""


class ValidationReport(TypedDict):
    """Counts of a validated stream; ``rejected`` lists every reason, zeros included."""

    lines: int
    valid: dict[str, int]
    rejected: dict[str, int]


def context_with_catalog(context: ParseContext, catalog: Catalog) -> ParseContext:
    """``context`` checking movies and runtimes against ``catalog``, as ingest does.

    An empty catalog leaves the context as it is (ingest treats it as no catalog).

    Examples
    --------
    >>> catalog = Catalog.from_rows([{"movie_id": "up+2009", "runtime": "96"}])
    >>> context = context_with_catalog(ParseContext(max_user_id=1000), catalog)
    >>> context.max_user_id, "up+2009" in context.catalog, context.runtime_of("up+2009")
    (1000, True, 96)
    """
    if not len(catalog):
        return context
    return dataclasses.replace(context, catalog=catalog, runtime_minutes=catalog.runtime)


def validate_lines(
    lines: Iterable[bytes],
    context: ParseContext,
    rejected_out: BinaryIO | None = None,
    *,
    duplicate_capacity: int = DEFAULT_DUPLICATE_CAPACITY,
) -> ValidationReport:
    """Validate lines as ingest would and count what is kept and what is refused.

    Parameters
    ----------
    lines
        Raw lines, with or without their line terminators.
    context
        The parsing context (limits, catalog, clock).
    rejected_out
        When given, receives one JSON object per refused line: ``line_number`` (from 1),
        ``reason``, ``detail``, ``line`` without its terminator (and ``line_base64``
        when it is not UTF-8).
    duplicate_capacity
        Size of the recent-lines memory of the duplicate check.

    Examples
    --------
    >>> report = validate_lines(
    ...     [b"2023-09-28T20:20:23,1,GET /rate/up+2009=4\\n"] * 2 + [b"noise\\n"],
    ...     ParseContext(),
    ... )
    >>> report["lines"], report["valid"]["rate"]
    (3, 1)
    >>> {reason: n for reason, n in report["rejected"].items() if n}
    {'unparsable': 1, 'duplicate': 1}
    """
    validator = LineValidator(context, DuplicateFilter(duplicate_capacity))
    valid = dict.fromkeys(_KIND_NAMES.values(), 0)
    rejected = dict.fromkeys((reason.value for reason in RejectReason), 0)
    line_count = 0
    for line_count, line in enumerate(lines, start=1):
        result = validator.validate(line)
        if isinstance(result, Rejected):
            rejected[result.reason.value] += 1
            if rejected_out is not None:
                record = {
                    "line_number": line_count,
                    "reason": result.reason.value,
                    "detail": result.detail,
                    **describe_line(result.line.rstrip(b"\r\n")),
                }
                rejected_out.write(orjson.dumps(record) + b"\n")
        else:
            valid[_KIND_NAMES[type(result)]] += 1
    return {"lines": line_count, "valid": valid, "rejected": rejected}


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_validate_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``validate PATH`` on the ``reelfeed`` command line; returns its parser.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="reelfeed")
    >>> _ = add_validate_command(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["validate", "-", "--max-user-id", "500"])
    >>> args.path, args.max_user_id, args.catalog, args.handler is cmd_validate
    ('-', 500, None, True)
    """
    validate = subparsers.add_parser(
        "validate",
        help="check a file of movielog lines as ingest would; print counts as JSON",
        description=(
            "Parse and validate movielog lines with ingest's own validator (duplicate "
            "filter included) and print the counts of valid and refused lines as JSON. "
            "Times more than five minutes past the current clock count as future times."
        ),
    )
    validate.add_argument("path", metavar="PATH", help="file of lines, or - for stdin")
    validate.add_argument(
        "--rejected", metavar="FILE", default=None, help="write refused lines here as JSON lines"
    )
    validate.add_argument(
        "--max-user-id",
        type=_non_negative_int,
        default=None,
        help="largest valid user id (default: the REELFEED_MAX_USER_ID setting)",
    )
    validate.add_argument(
        "--catalog",
        metavar="FILE",
        default=None,
        help="movie catalog CSV (movie_id or id column, optional runtime column) to refuse "
        "unknown movies and watches past a runtime (default: REELFEED_CATALOG_PATH, if set)",
    )
    validate.add_argument(
        "--minute-slack",
        type=_non_negative_int,
        default=_DEFAULTS.minute_slack,
        help="minutes a watch may run past the runtime (default: %(default)s)",
    )
    validate.add_argument(
        "--duplicate-capacity",
        type=_positive_int,
        default=DEFAULT_DUPLICATE_CAPACITY,
        help="recent lines remembered by the duplicate check (default: %(default)s)",
    )
    validate.set_defaults(handler=cmd_validate)
    return validate


def _context_from_args(args: argparse.Namespace, settings: Settings) -> ParseContext:
    # Defaults come from the settings the ingest worker reads, so that the report says
    # what ingest would do with the same environment.
    max_user_id = settings.max_user_id if args.max_user_id is None else args.max_user_id
    context = ParseContext(
        max_user_id=max_user_id,
        minute_slack=args.minute_slack,
        now_us=time.time_ns() // 1000,
    )
    catalog_path = settings.catalog_path if args.catalog is None else Path(args.catalog)
    if catalog_path is None:
        return context
    catalog = load_catalog_csv(catalog_path)
    if not len(catalog):
        raise CatalogError(f"{catalog_path}: no movies (it needs a movie_id or id column)")
    return context_with_catalog(context, catalog)


def cmd_validate(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    """Handler of ``reelfeed validate``: prints the report; 2 when a file cannot be used."""
    try:
        context = _context_from_args(args, settings)
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: CatalogError, not UTF-8
        sys.stderr.write(f"reelfeed validate: catalog: {exc}\n")
        return 2
    try:
        with contextlib.ExitStack() as files:
            source: BinaryIO = (
                sys.stdin.buffer if args.path == "-" else files.enter_context(open(args.path, "rb"))
            )
            rejected_out: BinaryIO | None = None
            if args.rejected is not None:
                rejected_out = files.enter_context(open(args.rejected, "wb"))
            report = validate_lines(
                source, context, rejected_out, duplicate_capacity=args.duplicate_capacity
            )
    except OSError as exc:
        sys.stderr.write(f"reelfeed validate: {exc}\n")
        return 2
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()
    return 0
