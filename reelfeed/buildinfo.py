"""Which code is running: the git commit and the versions of the packages that matter."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata

from reelfeed.infra import PROJECT_ROOT

__all__ = ["TRACKED_PACKAGES", "code_sha", "package_versions"]

#: Packages whose versions can change what a model learns or how it is served.
TRACKED_PACKAGES = (
    "reelfeed",
    "river",
    "numpy",
    "faust-streaming",
    "aiokafka",
    "redis",
    "aiohttp",
    "orjson",
)


def code_sha(environ: Mapping[str, str]) -> str:
    """The git commit of the running code (``REELFEED_CODE_SHA`` in images without git).

    A checkout with uncommitted changes gets ``-dirty`` appended: its models cannot be
    reproduced from the commit alone.
    """
    from_env = environ.get("REELFEED_CODE_SHA")
    if from_env:
        return from_env
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
