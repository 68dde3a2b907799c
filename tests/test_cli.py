"""The command line: argument handling, settings errors, JSON output."""

from __future__ import annotations

import orjson
import pytest

from reelfeed.cli import _command_index, main
from reelfeed.settings import Settings, SettingsError
from state import SnapshotRecord, VersionRecord


def test_version_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"], environ={}) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["kafka"].startswith("3.9.")


def test_a_bad_setting_stops_the_command_with_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"], environ={"REELFEED_SERVER_PORT": "99999"}) == 2
    assert "REELFEED_SERVER_PORT" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"], environ={})
    assert exit_info.value.code == 2


def test_infra_status_reports_the_test_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infra", "status", "--stack", "test"], environ={}) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["kafka"]["bootstrap"] == "127.0.0.1:19092"
    assert report["redis"]["url"] == "redis://127.0.0.1:16379/0"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REELFEED_NO_SUCH_THING": "1"}, "not a reelfeed setting"),
        ({"REELFEED_TOPIC_PARTITIONS": "0"}, "not positive"),
        ({"REELFEED_RAW_TOPIC": "  "}, "empty"),
    ],
)
def test_settings_fail_fast(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_settings_ignore_other_variables_and_cast() -> None:
    settings = Settings.from_env({"HOME": "/root", "REELFEED_TOPIC_PARTITIONS": "8"})
    assert settings.topic_partitions == 8
    assert settings == Settings().replace(topic_partitions=8)


def test_sim_flags_go_to_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "--help"], environ={})
    assert exit_info.value.code == 0
    assert "--lines-per-second" in capsys.readouterr().out


def test_only_the_subcommand_position_selects_the_simulator() -> None:
    assert _command_index(["--log-level", "DEBUG", "versions", "show", "sim"]) == 2
    assert _command_index(["sim", "--speed", "60"]) == 0
    assert _command_index(["--log-level=INFO"]) is None


def test_snapshot_settings_take_zero_as_off_and_refuse_negatives() -> None:
    assert Settings().snapshot_interval == 0.0
    assert Settings.from_env({"REELFEED_SNAPSHOT_INTERVAL": "0"}).snapshot_interval == 0.0
    assert Settings.from_env({"REELFEED_SNAPSHOT_INTERVAL": "300"}).snapshot_interval == 300.0
    with pytest.raises(SettingsError, match="REELFEED_SNAPSHOT_INTERVAL.*negative"):
        Settings.from_env({"REELFEED_SNAPSHOT_INTERVAL": "-5"})
    with pytest.raises(SettingsError, match="REELFEED_SNAPSHOT_KEEP.*not positive"):
        Settings.from_env({"REELFEED_SNAPSHOT_KEEP": "0"})


def _snapshot(
    name: str, taken: float, positions: dict[str, int], parent: str | None = None
) -> SnapshotRecord:
    return SnapshotRecord(name, "v1", positions, taken + 1, taken, 10, parent)


def test_provenance_replays_from_the_newest_snapshot_of_the_history_in_effect() -> None:
    from reelfeed.provenance_cmd import _replay_from

    before_restore = _snapshot("s-old", 10.0, {"ev:0": 50})
    restored = _snapshot("s-restored", 5.0, {"ev:0": 20})
    after_restore = _snapshot("s-after", 30.0, {"ev:0": 40}, parent="s-restored")
    too_new = _snapshot("s-late", 90.0, {"ev:0": 45}, parent="s-restored")
    beyond = _snapshot("s-beyond", 40.0, {"ev:0": 70}, parent="s-restored")
    snapshots = [restored, before_restore, after_restore, too_new, beyond]
    restore = {"snapshot": "s-restored", "time": 20.0, "positions": {"ev:0": 20}}
    watermark = {"ev:0": 60}
    # s-old is further along but belongs to the history the restore threw away; s-late
    # was taken after the request, s-beyond covers more than the request's model had.
    assert _replay_from(snapshots, "v1", watermark, 50.0, restore) == after_restore
    assert _replay_from(snapshots, "v1", watermark, 25.0, restore) == restored
    assert _replay_from(snapshots, "v1", watermark, 50.0, None) == before_restore
    assert _replay_from(snapshots, "v2", watermark, 50.0, None) is None


def test_provenance_finds_the_ranges_a_restore_skipped() -> None:
    from reelfeed.provenance_cmd import _skipped_ranges

    restored = _snapshot("s1", 5.0, {"ev:0": 20, "ev:1": 9})
    record = VersionRecord(
        "v1",
        {},
        "abc",
        {},
        restores=[
            {"snapshot": "s1", "time": 20.0, "positions": {"ev:0": 25, "ev:1": 9}},
            {"snapshot": "s1", "time": 70.0, "positions": {"ev:0": 30, "ev:1": 9}},
        ],
    )
    assert _skipped_ranges(record, [restored], 50.0) == {"ev:0": [(21, 25)]}
    assert _skipped_ranges(record, [], 50.0) == {}


def test_provenance_text_names_model_lineage_and_data() -> None:
    from reelfeed.provenance_cmd import render_text

    result = {
        "request": {
            "request_id": "ab12",
            "time": "2026-11-26T07:00:00.000+00:00",
            "user_id": 42,
            "items": ["m1", "m2"],
            "latency_s": 0.0021,
            "fallback": None,
            "record": {"topic": "reelfeed.recommendations", "partition": 2, "offset": 99},
        },
        "model": {
            "version": "v1",
            "revision": 7,
            "registered": True,
            "config": {"seed": 0},
            "code_sha": "abc123",
            "packages": {"river": "0.26.1"},
        },
        "lineage": {
            "restored_from": "s1",
            "restored_at": "2026-11-26T06:00:00.000+00:00",
            "snapshots": [{"id": "s1"}],
            "replay_from": {"id": "s2", "replay": {"ev:0": [41, 60]}},
        },
        "data": {
            "topics": ["ev"],
            "messages": 61,
            "exact": True,
            "events": {"watch": 50, "rate": 11},
            "event_time": {"first": "a", "last": "b"},
            "partitions": [
                {
                    "topic": "ev",
                    "partition": 0,
                    "from": 0,
                    "to": 60,
                    "skipped": [[21, 25]],
                    "messages": 56,
                }
            ],
        },
    }
    text = render_text(result)
    assert "request ab12" in text and "user 42, 2 items, 2.1 ms" in text
    assert "model: v1, item matrix revision 7" in text and "code: abc123" in text
    assert "restored at 2026-11-26T06:00:00.000+00:00 from s1" in text
    assert "reproduce: restore s2, then replay ev:0 41..60" in text
    assert "ev:0 offsets 0..60, skipped 21..25: 56 messages" in text
