"""`reelfeed up` then `reelfeed down` on a throw-away stack leaves no process behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from reelfeed.cli import stack_down, stack_up
from reelfeed.infra import StackLayout
from reelfeed.settings import Settings
from reelfeed.supervise import read_status, supervisor_process
from tests.integration.workers import free_port
from tests.processes import alive, started

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_starts_everything_restarts_a_dead_role_and_down_stops_it(tmp_path: Path) -> None:
    redis_port = free_port()
    stack = StackLayout("throwaway", tmp_path / "stack", free_port(), free_port(), redis_port)
    environ = {
        **os.environ,
        "REELFEED_INGEST_METRICS_PORT": str(free_port()),
        "REELFEED_LEARN_METRICS_PORT": str(free_port()),
        "REELFEED_SERVER_PORT": str(free_port()),
    }
    settings = Settings.from_env(environ)
    status = stack_up(stack, settings, environ)
    try:
        roles = status["roles"]
        assert isinstance(roles, dict) and set(roles) == {"ingest", "learn", "serve"}, status
        pids = [started(role["pid"]) for role in roles.values()]
        supervisor_pid = supervisor_process(stack).pid()
        assert supervisor_pid is not None
        supervisor = started(supervisor_pid)
        assert redis.Redis(port=redis_port).ping()

        # A role that dies is started again by the supervisor.
        os.kill(roles["ingest"]["pid"], 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = read_status(stack)
            if current and current["roles"]["ingest"]["restarts"] == 1:  # type: ignore[index]
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"ingest was not restarted: {read_status(stack)}")
        pids.append(started(current["roles"]["ingest"]["pid"]))  # type: ignore[index]
    finally:
        down = stack_down(stack, settings)
    assert down["supervisor_stopped"] is True, down
    assert down["leftovers_stopped"] == [], down
    assert not [process for process in [*pids, supervisor] if alive(process)]
    assert list((tmp_path / "stack").rglob("*.pid")) == []
