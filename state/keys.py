"""The Redis key schema: every key reelfeed writes is spelled here, and only here."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySchema"]


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of Redis keys under one prefix (one stack, or one test).

    Examples
    --------
    >>> KeySchema("rf").ingest_lines()
    'rf:ingest:lines'
    """

    prefix: str = "rf"

    def ingest_lines(self) -> str:
        """Counter of raw lines the ingest app has consumed."""
        return f"{self.prefix}:ingest:lines"
