"""`reelfeed up` then `reelfeed down` on a throw-away stack leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from reelfeed.cli import stack_down, stack_up
from reelfeed.infra import StackLayout
from reelfeed.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1]
    except OSError:
        return False
    return not state.startswith("Z")


def test_up_starts_everything_and_down_stops_it(tmp_path: Path) -> None:
    stack = StackLayout("throwaway", tmp_path / "stack", 29092, 29093, 26379)
    report = stack_up(stack, Settings(), os.environ)
    try:
        pids = [int(p) for p in (tmp_path / "stack").rglob("*.pid") for p in [p.read_text()]]
        assert len(pids) == 3, report  # kafka, redis, ingest worker
        assert all(_alive(pid) for pid in pids)
        assert redis.Redis(port=26379).ping()
        assert "movielog" in report["topics_created"]  # type: ignore[operator]
    finally:
        down = stack_down(stack)
    assert down["kafka_stopped"] and down["redis_stopped"], down
    assert down["workers_stopped"] == {"ingest": True}
    assert not any(_alive(pid) for pid in pids)
    assert list((tmp_path / "stack").rglob("*.pid")) == []
