"""The contract every recommender follows, and the delta a learner hands to its writer."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["ModelDelta", "Recommender"]


@runtime_checkable
class Recommender(Protocol):
    """An online recommender: learns one event at a time, ranks the whole catalog.

    ``learn_one`` follows river's ``Ranker.learn_one`` (it returns ``None``). What ``y``
    means is up to the model: a signed preference weight for :class:`OnlineMF` (see
    :class:`~online_model.feedback.FeedbackWeights`), a count for popularity, a rating for
    a rating regressor.
    """

    def learn_one(
        self, user: Hashable, item: Hashable, y: float, x: dict[str, Any] | None = None
    ) -> None: ...

    def recommend(
        self, user: Hashable, k: int = 20, exclude: Collection[Hashable] = ()
    ) -> list[Hashable]:
        """Up to ``k`` known items, best first, none of them in ``exclude``."""
        ...


@dataclass(frozen=True, slots=True)
class ModelDelta:
    """Everything that changed in a model since the previous delta, as plain arrays.

    Item rows are numbered in order of first sight and never move, so a writer can store
    them by index; ``n_items`` is the catalog size after this delta. Popularity values
    share one arbitrary scale (only ratios matter); when the model rescales them,
    ``popularity_rescaled`` is true and ``item_indices`` holds every item.

    Attributes
    ----------
    user_ids
        Users whose vector or event count changed.
    user_vectors
        ``(len(user_ids), n_factors)`` float32.
    user_event_counts
        ``(len(user_ids),)`` int64: events learned from each user.
    item_ids
        Items whose vector, bias or popularity changed.
    item_indices
        ``(len(item_ids),)`` row of each item in the full item matrix.
    item_vectors
        ``(len(item_ids), n_factors)`` float32.
    item_biases
        ``(len(item_ids),)`` float32.
    item_popularity
        ``(len(item_ids),)`` float64 decayed popularity (common arbitrary scale).
    n_items
        Number of items the model knows.
    popularity_rescaled
        Whether every item's popularity changed scale.
    """

    user_ids: tuple[Hashable, ...]
    user_vectors: npt.NDArray[np.float32]
    user_event_counts: npt.NDArray[np.int64]
    item_ids: tuple[Hashable, ...]
    item_indices: npt.NDArray[np.intp]
    item_vectors: npt.NDArray[np.float32]
    item_biases: npt.NDArray[np.float32]
    item_popularity: npt.NDArray[np.float64]
    n_items: int
    popularity_rescaled: bool

    @property
    def is_empty(self) -> bool:
        return not self.user_ids and not self.item_ids
