"""The command line: argument handling, settings errors, JSON output."""

from __future__ import annotations

import orjson
import pytest

from reelfeed.cli import _command_index, main
from reelfeed.settings import Settings, SettingsError


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
