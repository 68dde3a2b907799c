"""The validate report and the ``reelfeed validate`` command."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import orjson
import pytest

from reelfeed.settings import Settings
from reelfeed.validate import (
    add_validate_command,
    cmd_validate,
    context_with_catalog,
    validate_lines,
)
from stream.catalog import Catalog, load_catalog_csv
from stream.events import RejectReason
from stream.parser import ParseContext

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

T = "2023-10-25T07:20:57"
SAMPLE_LINES = [
    f"{T},1,GET /data/m/up+2009/1.mpg",  # 1 watch
    f"{T},1,GET /data/m/up+2009/2.mpg",  # 2 watch
    f"{T},1,GET /data/m/up+2009/1.mpg",  # 3 duplicate of line 1
    f"{T},2,GET /rate/up+2009=5",  # 4 rate
    f"{T},3,GET /rate/alien+1979=2",  # 5 rate
    f"{T},3,recommendation request s.example.org:8082, status 200, result: up+2009, 40 ms",  # 6
    "garbage",  # 7 unparsable
    f"{T},2,GET /rate/up+2009=7",  # 8 bad rating
    f"{T},99999999,GET /rate/up+2009=3",  # 9 bad user
    "2023-02-30T00:00:00,2,GET /rate/up+2009=3",  # 10 bad timestamp
    f"{T},2,GET /data/m/up 2009/1.mpg",  # 11 bad movie
    f"{T},2,GET /data/m/up+2009/-1.mpg",  # 12 bad minute
]
SAMPLE = "\n".join(SAMPLE_LINES).encode() + b"\n"
EXPECTED_VALID = {"watch": 2, "rate": 2, "recommendation": 1}
EXPECTED_REJECTED = {
    "duplicate": 1,
    "unparsable": 1,
    "bad_rating": 1,
    "bad_user": 1,
    "bad_timestamp": 1,
    "bad_movie": 1,
    "bad_minute": 1,
}


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in counts.items() if n}


def _run(argv: list[str], settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reelfeed")
    add_validate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args, settings or Settings(), {})
    return code


def test_report_counts_every_kind_and_reason() -> None:
    report = validate_lines(io.BytesIO(SAMPLE), ParseContext())
    assert report["lines"] == 12
    assert report["valid"] == EXPECTED_VALID
    assert _nonzero(report["rejected"]) == EXPECTED_REJECTED
    assert set(report["rejected"]) == {reason.value for reason in RejectReason}


def test_rejected_lines_are_written_with_their_line_numbers() -> None:
    rejected_out = io.BytesIO()
    validate_lines(io.BytesIO(SAMPLE), ParseContext(), rejected_out)
    records = [orjson.loads(line) for line in rejected_out.getvalue().splitlines()]
    assert [(r["line_number"], r["reason"]) for r in records] == [
        (3, "duplicate"),
        (7, "unparsable"),
        (8, "bad_rating"),
        (9, "bad_user"),
        (10, "bad_timestamp"),
        (11, "bad_movie"),
        (12, "bad_minute"),
    ]
    assert records[1]["line"] == "garbage"
    assert all(record["detail"] for record in records)


def test_report_of_nothing() -> None:
    report = validate_lines([], ParseContext())
    assert report["lines"] == 0
    assert sum(report["valid"].values()) == sum(report["rejected"].values()) == 0


def test_duplicate_capacity_is_the_window_of_the_duplicate_check() -> None:
    lines = [b"2023-10-25T07:20:57,1,GET /rate/a=1", b"2023-10-25T07:20:57,1,GET /rate/b=1"] * 2
    assert validate_lines(lines, ParseContext(), duplicate_capacity=1)["valid"]["rate"] == 4
    assert validate_lines(lines, ParseContext(), duplicate_capacity=2)["valid"]["rate"] == 2


def test_non_utf8_rejected_line_is_kept_in_base64() -> None:
    rejected_out = io.BytesIO()
    validate_lines([b"\xffnoise\r\n"], ParseContext(), rejected_out)
    record = orjson.loads(rejected_out.getvalue())
    assert record["reason"] == "unparsable"
    assert record["line"] == "\ufffdnoise"
    assert record["line_base64"] == "/25vaXNl"


def test_command_reads_a_file_and_writes_rejected_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "lines.log"
    source.write_bytes(SAMPLE)
    rejected = tmp_path / "rejected.jsonl"
    assert _run(["validate", str(source), "--rejected", str(rejected)]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["lines"] == 12
    assert report["valid"] == EXPECTED_VALID
    assert _nonzero(report["rejected"]) == EXPECTED_REJECTED
    assert len(rejected.read_bytes().splitlines()) == 7


def test_command_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SAMPLE)))
    assert _run(["validate", "-", "--max-user-id", "2"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["lines"] == 12
    # user 3 is now out of range: one rate and the recommendation move to bad_user
    assert report["valid"] == {"watch": 2, "rate": 1, "recommendation": 0}
    assert report["rejected"]["bad_user"] == 3


def test_command_checks_the_catalog_and_runtimes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "movies.csv"
    catalog.write_text("id,title,runtime\nup+2009,Up,1\n")
    source = tmp_path / "lines.log"
    source.write_bytes(SAMPLE)
    assert _run(["validate", str(source), "--catalog", str(catalog), "--minute-slack", "0"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["valid"] == {"watch": 1, "rate": 1, "recommendation": 1}
    assert report["rejected"]["unknown_movie"] == 1  # alien+1979
    assert report["rejected"]["bad_minute"] == 2  # minute 2 > runtime 1, and -1


def test_command_takes_its_defaults_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "movies.csv"
    catalog.write_text("movie_id,runtime\nup+2009,96\n")
    source = tmp_path / "lines.log"
    source.write_bytes(SAMPLE)
    settings = Settings().replace(max_user_id=2, catalog_path=catalog)
    assert _run(["validate", str(source)], settings) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["rejected"]["bad_user"] == 3
    assert report["rejected"]["unknown_movie"] == 0  # alien+1979 is refused for its user first
    assert _run(["validate", str(source), "--max-user-id", "10"], settings) == 0
    assert orjson.loads(capsys.readouterr().out)["rejected"]["unknown_movie"] == 1


def test_command_reports_unusable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["validate", str(tmp_path / "missing.log")]) == 2
    assert "missing.log" in capsys.readouterr().err
    source = tmp_path / "lines.log"
    source.write_bytes(SAMPLE)
    assert _run(["validate", str(source), "--catalog", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    bad_catalog = tmp_path / "movies.csv"
    bad_catalog.write_text("title\nUp\n")
    assert _run(["validate", str(source), "--catalog", str(bad_catalog)]) == 2
    assert "needs a movie_id or id column" in capsys.readouterr().err
    binary_catalog = tmp_path / "movies.bin"
    binary_catalog.write_bytes(b"movie_id\n\xff\xfe\n")
    assert _run(["validate", str(source), "--catalog", str(binary_catalog)]) == 2
    assert "catalog" in capsys.readouterr().err


def test_command_refuses_bad_options() -> None:
    with pytest.raises(SystemExit):
        _run(["validate", "-", "--max-user-id", "-5"])
    with pytest.raises(SystemExit):
        _run(["validate", "-", "--duplicate-capacity", "0"])


def test_handler_is_registered() -> None:
    parser = argparse.ArgumentParser()
    add_validate_command(parser.add_subparsers())
    assert parser.parse_args(["validate", "x"]).handler is cmd_validate


def test_catalog_context_keeps_the_other_settings() -> None:
    catalog = Catalog.from_rows([{"id": "up+2009", "runtime": "96"}])
    context = context_with_catalog(ParseContext(max_user_id=5), catalog)
    assert context.max_user_id == 5
    assert context.catalog is not None and "up+2009" in context.catalog
    assert "alien+1979" not in context.catalog
    assert context.runtime_of("up+2009") == 96
    assert context_with_catalog(ParseContext(), Catalog()) == ParseContext()


def test_real_catalog_and_real_lines() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    catalog = load_catalog_csv(SHARED_DATA / "course" / "catalog" / "movies_2024.csv")
    assert len(catalog) == 4985
    assert catalog.runtime("the+godfather+1972") == 175
    raw = SHARED_DATA / "course" / "raw"
    lines = [
        line
        for name in ("rate_lines_2023.log", "watch_and_request_lines_2023.log")
        for line in (raw / name).read_bytes().splitlines()
    ]
    report = validate_lines(lines, ParseContext())
    assert report["valid"] == {"watch": 17, "rate": 31, "recommendation": 1}
    assert sum(report["rejected"].values()) == 0
    with_catalog = validate_lines(lines, context_with_catalog(ParseContext(), catalog))
    assert with_catalog["lines"] == 49
    # The 2024 catalog lacks 18 movies of the 2023 stream; every real watch of a known
    # movie is within its runtime plus the default slack.
    assert with_catalog["valid"] == {"watch": 13, "rate": 17, "recommendation": 1}
    assert _nonzero(with_catalog["rejected"]) == {"unknown_movie": 18}
