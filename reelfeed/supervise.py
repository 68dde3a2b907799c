"""Local process supervision for ``reelfeed up``: workers as background processes."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from reelfeed.infra import ManagedProcess
from reelfeed.settings import Settings

__all__ = ["WORKER_ROLES", "start_workers", "stop_workers"]

#: Worker roles in start order; `stop_workers` stops them in reverse.
WORKER_ROLES = ("ingest",)


def _process(role: str, var_dir: Path) -> ManagedProcess:
    # The absolute var dir in the command line tells our workers from anyone else's.
    return ManagedProcess(role, var_dir / "workers", f"--var-dir={var_dir.resolve()}")


def start_workers(settings: Settings, environ: Mapping[str, str]) -> dict[str, int]:
    env = dict(environ)
    env.update(
        {
            "REELFEED_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "REELFEED_REDIS_URL": settings.redis_url,
        }
    )
    started: dict[str, int] = {}
    for role in WORKER_ROLES:
        process = _process(role, settings.var_dir)
        pid = process.pid()
        if pid is None:
            command = [
                sys.executable,
                "-m",
                "reelfeed",
                role,
                f"--var-dir={settings.var_dir.resolve()}",
            ]
            pid = process.spawn(command, env=env)
        started[role] = pid
    return started


def stop_workers(var_dir: Path) -> dict[str, bool]:
    return {role: _process(role, var_dir).stop() for role in reversed(WORKER_ROLES)}
