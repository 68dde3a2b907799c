"""``reelfeed eval`` on real data: a smoke test on the first MovieLens ratings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reelfeed.eval_cmd import add_eval_command, cmd_eval
from reelfeed.settings import Settings

RATINGS = Path("movielens") / "ml-latest-small" / "ratings.csv"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reelfeed")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    code = cmd_eval(_parse(*argv), Settings.from_env({}), {})
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


def test_flags_are_registered() -> None:
    args = _parse("--movielens", "r.csv", "--models", "popularity", "--seed", "3", "--limit", "9")
    assert (args.movielens, args.models, args.seed, args.limit) == ("r.csv", "popularity", 3, 9)
    assert args.handler is cmd_eval
    with pytest.raises(SystemExit):
        _parse("--movielens", "a", "--movielog", "b")
    with pytest.raises(SystemExit):
        _parse("--movielog", "a", "--kafka-topic", "b")
    kafka = _parse("--kafka-topic", "movielog7", "--from-offsets", "0:5", "--to-time", "1700000000")
    assert (kafka.kafka_topic, kafka.from_offsets, kafka.to_time) == (
        "movielog7",
        "0:5",
        "1700000000",
    )
    assert kafka.bootstrap is None and kafka.jobs == 1


def test_models_in_parallel_jobs_score_as_in_one_replay(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--movielens", str(shared_data / RATINGS), "--limit", "3000", "--no-progress")
    models = ("--models", "popularity,reelfeed,decayed-popularity")
    _, alone, _ = _run(capsys, *argv, *models)
    _, in_jobs, _ = _run(capsys, *argv, *models, "--jobs", "2")
    assert (alone["jobs"], in_jobs["jobs"]) == (1, 2)
    alone_models, jobs_models = alone["models"], in_jobs["models"]
    assert isinstance(alone_models, dict) and isinstance(jobs_models, dict)
    assert list(jobs_models) == ["popularity", "reelfeed", "decayed-popularity"]
    figures = ("recall", "ndcg", "coverage", "recommended_items", "model")
    for name, model in alone_models.items():
        assert {f: model[f] for f in figures} == {f: jobs_models[name][f] for f in figures}


def test_core_models_on_the_first_movielens_ratings(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code, report, _ = _run(
        capsys,
        "--movielens",
        str(shared_data / RATINGS),
        "--limit",
        "3000",
        "--models",
        "popularity,decayed-popularity,river-biasedmf,reelfeed",
        "--param",
        "n_factors=16",
        "--json",
        str(out),
        "--no-progress",
    )
    assert code == 0
    assert json.loads(out.read_text()) == report
    assert report["events"] == 3000
    assert report["data"]["source"] == "movielens"  # type: ignore[index]
    models = report["models"]
    assert isinstance(models, dict)
    assert list(models) == ["popularity", "decayed-popularity", "river-biasedmf", "reelfeed"]
    for figures in models.values():
        assert 0.0 <= figures["recall"] <= 1.0
        assert 0.0 <= figures["ndcg"] <= figures["recall"]
        assert 0.0 < figures["coverage"] <= 1.0
        assert figures["us_per_event"] > 0
    assert "n_factors=16" in models["reelfeed"]["model"]


def test_als_and_the_plot(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("implicit")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    code, report, _ = _run(
        capsys,
        "--movielens",
        str(shared_data / RATINGS),
        "--limit",
        "2500",
        "--models",
        "als,als-foldin",
        "--als-every",
        "1000",
        "--window",
        "500",
        "--plot",
        str(plot),
        "--no-progress",
    )
    assert code == 0
    models = report["models"]
    assert isinstance(models, dict)
    assert models["als"]["retrains"] == 2
    assert models["als-foldin"]["retrain_every_events"] == 1000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_movielog_file_of_raw_course_lines(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = shared_data / "course" / "raw"
    log = tmp_path / "movielog.txt"
    log.write_text(
        (raw / "watch_and_request_lines_2023.log").read_text()
        + (raw / "rate_lines_2023.log").read_text()
        + "garbage line\n"
    )
    code, report, _ = _run(
        capsys, "--movielog", str(log), "--models", "popularity,reelfeed", "--no-progress"
    )
    assert code == 0
    data = report["data"]
    assert isinstance(data, dict)
    assert data["source"] == "movielog" and data["lines_skipped"] >= 1
    assert report["events"] == data["interactions_in_source"] > 0


def test_bad_requests_fail_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,2,4.0,10\n1,3,2.0,11\n")

    def error(*argv: str) -> str:
        code, _, err = _run(capsys, *argv)
        assert code == 2
        return err

    assert "unknown" in error("--movielens", str(ratings), "--models", "nope")
    assert "NAME=VALUE" in error("--movielens", str(ratings), "--param", "n_factors")
    assert "bogus" in error("--movielens", str(ratings), "--param", "bogus=1")
    assert "missing.csv" in error("--movielens", str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n")
    assert "header" in error("--movielens", str(bad))
