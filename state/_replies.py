"""Redis replies as Python values: clients may or may not decode responses."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["int_hash", "text"]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def int_hash(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    """A hash reply whose values are integers."""
    return {text(name): int(value) for name, value in raw.items()}
