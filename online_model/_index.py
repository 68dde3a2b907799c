"""Private building blocks: dense ids, growable arrays, a lazily decayed counter."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["DecayedCounter", "IdIndex", "grow_rows"]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def grow_rows(array: npt.NDArray[_ScalarT], needed: int) -> npt.NDArray[_ScalarT]:
    """``array`` with room for at least ``needed`` rows (capacity doubles, new rows zero)."""
    capacity = array.shape[0]
    if needed <= capacity:
        return array
    new_capacity = max(needed, 2 * capacity, 16)
    grown: npt.NDArray[_ScalarT] = np.zeros((new_capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:capacity] = array
    return grown


class IdIndex:
    """Dense row numbers for ids, in order of first sight; rows are never reused."""

    __slots__ = ("ids", "rows")

    def __init__(self) -> None:
        self.ids: list[Hashable] = []
        self.rows: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def get(self, key: Hashable) -> int | None:
        return self.rows.get(key)

    def add(self, key: Hashable) -> tuple[int, bool]:
        """The row of ``key`` and whether it was just created."""
        row = self.rows.get(key)
        if row is not None:
            return row, False
        row = len(self.ids)
        self.rows[key] = row
        self.ids.append(key)
        return row, True


class DecayedCounter:
    """Per-row sums that fade by ``0.5`` every ``half_life`` ticks of an event clock.

    ``half_life=math.inf`` gives plain sums.

    Decaying every row on every tick would cost O(rows). Instead a global ``scale`` grows
    by ``2 ** (1 / half_life)`` per tick and new mass is added multiplied by it, so that the stored
    ``raw`` values are the decayed sums times ``scale``. Ratios between rows are exact at
    all times, which is all ranking needs. When ``scale`` gets large, everything is divided
    by it once (``rescaled`` tells the caller that every row changed).
    """

    __slots__ = ("half_life", "raw", "scale", "rescaled", "_growth")

    _RESCALE_AT = 1e100

    def __init__(self, half_life: float) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        self.half_life = float(half_life)
        self._growth = 2.0 ** (1.0 / self.half_life)
        self.raw = np.zeros(0, dtype=np.float64)
        self.scale = 1.0
        self.rescaled = False

    def ensure(self, n_rows: int) -> None:
        self.raw = grow_rows(self.raw, n_rows)

    def add_events(self, rows: npt.NDArray[np.intp], amounts: npt.NDArray[np.float64]) -> None:
        """Count a sequence of events: each one ticks the clock, then adds its amount."""
        n_events = rows.shape[0]
        # Chunks short enough that the scale cannot overflow inside one of them.
        chunk = n_events
        if self._growth > 1.0:
            chunk = max(1, int(np.log(self._RESCALE_AT) / np.log(self._growth)))
        for start in range(0, n_events, chunk):
            stop = min(start + chunk, n_events)
            steps = np.arange(1, stop - start + 1, dtype=np.float64)
            multipliers = self.scale * self._growth**steps
            np.add.at(self.raw, rows[start:stop], amounts[start:stop] * multipliers)
            self.scale = float(multipliers[-1])
            if self.scale > self._RESCALE_AT:
                self.raw /= self.scale
                self.scale = 1.0
                self.rescaled = True

    def add_event(self, row: int, amount: float) -> None:
        """Tick the clock once, then add ``amount`` to ``row``."""
        self.scale *= self._growth
        self.raw[row] += amount * self.scale
        if self.scale > self._RESCALE_AT:
            self.raw /= self.scale
            self.scale = 1.0
            self.rescaled = True

    def values(self, n_rows: int) -> npt.NDArray[np.float64]:
        """The decayed sums of the first ``n_rows`` rows, at today's clock."""
        return self.raw[:n_rows] / self.scale
