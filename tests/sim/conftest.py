"""Shared pieces of the simulator's tests: small worlds and the real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.world import World, WorldConfig

#: The shared real data, next to the checkout; tests that need it skip when it is absent.
DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_world() -> World:
    """3,000 synthetic movies and 3,000 users: big enough for behaviour, quick to build."""
    return World.build(WorldConfig(catalog="synthetic", movies=3000, users=3000, seed=4))


@pytest.fixture(scope="session")
def course_world(data_dir: Path) -> World:
    return World.build(WorldConfig(catalog="course", movies=None, users=10_000, data_dir=data_dir))
