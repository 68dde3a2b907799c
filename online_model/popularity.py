"""Popularity baselines: plain counts, and counts that fade with every new event."""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from online_model._index import DecayedCounter, IdIndex
from online_model.ranking import top_k

__all__ = ["DecayedPopularity", "Popularity"]


class _CountingRecommender:
    """Ranks items by a (possibly decayed) sum of positive feedback; same list for everyone."""

    def __init__(self, half_life: float) -> None:
        self._items = IdIndex()
        self._counts = DecayedCounter(half_life)

    @property
    def item_ids(self) -> list[Hashable]:
        """Known items, in order of first sight (the row order of :attr:`popularity`)."""
        return list(self._items.ids)

    @property
    def popularity(self) -> npt.NDArray[np.float64]:
        """Popularity of each known item (decayed to the current event)."""
        return self._counts.values(len(self._items))

    def learn_one(
        self, user: Hashable, item: Hashable, y: float = 1.0, x: dict[str, Any] | None = None
    ) -> None:
        """Count one event: ``y`` (1 for a plain count) is added when positive."""
        row, created = self._items.add(item)
        if created:
            self._counts.ensure(len(self._items))
        self._counts.add_event(row, max(float(y), 0.0))

    def learn_many(
        self,
        users: Sequence[Hashable],
        items: Sequence[Hashable],
        ys: npt.ArrayLike | None = None,
    ) -> None:
        """Count a micro-batch of events, in order (same result as calling ``learn_one``)."""
        rows = np.fromiter((self._items.add(item)[0] for item in items), dtype=np.intp)
        self._counts.ensure(len(self._items))
        if ys is None:
            amounts = np.ones(rows.shape[0], dtype=np.float64)
        else:
            amounts = np.maximum(np.asarray(ys, dtype=np.float64), 0.0)
        if amounts.shape != rows.shape:
            raise ValueError(f"ys must have one value per item, got shape {amounts.shape}")
        self._counts.add_events(rows, amounts)

    def recommend(
        self, user: Hashable, k: int = 20, exclude: Collection[Hashable] = ()
    ) -> list[Hashable]:
        """The ``k`` most popular items not in ``exclude`` (ties: first seen first)."""
        scores = self.popularity.copy()
        rows = self._items.rows
        excluded = [rows[item] for item in exclude if item in rows]
        ids = self._items.ids
        return [ids[i] for i in top_k(scores, k, excluded)]


class Popularity(_CountingRecommender):
    """Recommends the items with the most positive feedback so far, to everyone.

    Examples
    --------
    >>> model = Popularity()
    >>> for user, item in [(1, "a"), (2, "b"), (3, "b"), (1, "c")]:
    ...     model.learn_one(user, item)
    >>> model.recommend(user=4, k=2)
    ['b', 'a']
    >>> model.recommend(user=2, k=2, exclude={"b"})
    ['a', 'c']
    """

    def __init__(self) -> None:
        super().__init__(math.inf)

    def __repr__(self) -> str:
        return "Popularity()"


class DecayedPopularity(_CountingRecommender):
    """Popularity where each event's weight halves every ``half_life`` later events.

    Decay is counted in events, not wall-clock time, so that a replay, a quiet night and a
    busy evening all weigh the same amount of evidence the same way.

    Parameters
    ----------
    half_life
        Number of events after which an event counts half.

    Examples
    --------
    >>> model = DecayedPopularity(half_life=2)
    >>> for user, item in [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "c")]:
    ...     model.learn_one(user, item)
    >>> model.recommend(user=9, k=3)
    ['c', 'a', 'b']
    >>> model.popularity.round(3).tolist()  # a: 0.25 + 0.354, b: 0.5, c: 0.707 + 1
    [0.604, 0.5, 1.707]
    """

    def __init__(self, half_life: float = 2000.0) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        super().__init__(half_life)
        self.half_life = half_life

    def __repr__(self) -> str:
        return f"DecayedPopularity(half_life={self.half_life!r})"
