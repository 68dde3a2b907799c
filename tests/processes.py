"""Whether a process the tests started is still running, by identity rather than pid.

Pids wrap around (at 32,768 on the CI machine) and a busy machine hands a stopped
process's pid to a new process or thread within seconds, so a test that remembers a bare
pid can find it "alive" again. A process is identified by its pid and its start time.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["alive", "started"]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()
    except OSError:
        return None


def started(pid: int) -> tuple[int, str]:
    """The identity of a running process: its pid and its start time (clock ticks)."""
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is not running"
    return pid, fields[19]


def alive(process: tuple[int, str]) -> bool:
    """Whether that very process still runs (a zombie does not)."""
    fields = _stat(process[0])
    return fields is not None and fields[0] != "Z" and fields[19] == process[1]
