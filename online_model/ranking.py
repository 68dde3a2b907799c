"""Top-k ranking over an item matrix, with exclusions and a popularity blend.

Pure numpy, so that the server can import it without river. The learner exports plain
arrays (an item matrix, item biases, item popularity and the item id list); this module
turns them into recommendation lists:

``score_i = item_biases_i + <user_vector, item_matrix_i> + w(n) * log(popularity_i / max)``

where ``w(n)`` is the popularity blend weight of a user with ``n`` learned events: it starts
high for users the model barely knows and falls to a floor (:func:`blend_weight`). A user
the model has never seen is ranked by popularity alone. Ties are broken by the lower item
index, so lists are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "RankingTable",
    "blend_weight",
    "popularity_log_scores",
    "score_items",
    "top_k",
]

FloatArray = npt.NDArray[np.floating]
IndexArray = npt.NDArray[np.intp]

#: Items per group of the candidate bound of :func:`top_k`.
_GROUP_SIZE = 64

#: Floor of a normalised popularity before the log, so that an item nobody watched yet
#: scores log(1e-6) ~ -13.8 instead of minus infinity.
_POPULARITY_FLOOR = 1e-6


def top_k(
    scores: FloatArray,
    k: int,
    exclude: npt.ArrayLike | None = None,
) -> IndexArray:
    """Indices of the ``k`` highest scores, best first.

    Ties are broken by the lower index. Excluded indices and ``NaN`` scores are never
    returned, so fewer than ``k`` indices come back when the catalog is that small.
    ``scores`` is modified in place when ``exclude`` is given (pass a copy to keep it).

    Parameters
    ----------
    scores
        One score per item.
    k
        How many indices to return at most.
    exclude
        Item indices that must not be returned (out-of-range indices are ignored).

    Examples
    --------
    >>> import numpy as np
    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 3)
    array([1, 3, 2])
    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 3, exclude=[1, 7])
    array([3, 2, 4])
    >>> top_k(np.array([1.0, 2.0]), 5)
    array([1, 0])
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if exclude is not None:
        excluded = np.asarray(exclude, dtype=np.intp).ravel()
        excluded = excluded[(excluded >= 0) & (excluded < scores.shape[0])]
        scores[excluded] = -np.inf
    if k == 0 or scores.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    threshold = _candidate_threshold(scores, k)
    if threshold is None:
        candidates = np.flatnonzero(scores > -np.inf)
    else:
        candidates = np.flatnonzero(scores >= threshold)
    # Candidates come in index order, so a stable sort breaks ties by the lower index.
    order = np.argsort(-scores[candidates], kind="stable")[:k]
    return candidates[order]


def _candidate_threshold(scores: FloatArray, k: int) -> float | None:
    """A score that at least ``k`` items reach, found in a fraction of a full selection.

    Items are split into ``G`` groups (item ``i`` in group ``i % G``, so the group maxima
    are one elementwise maximum over ``_GROUP_SIZE`` rows). The ``k``-th largest group
    maximum is reached by at least ``k`` items (one per group), so every item of the top
    ``k``, and every item tied with the ``k``-th, scores at least that much. ``None`` for
    small catalogs, or when fewer than ``k`` groups hold a finite score.
    """
    n_groups = scores.shape[0] // _GROUP_SIZE
    if n_groups < 4 * k:
        return None
    maxima = np.fmax.reduce(scores[: n_groups * _GROUP_SIZE].reshape(_GROUP_SIZE, n_groups), axis=0)
    threshold = float(np.partition(maxima, n_groups - k)[n_groups - k])
    if math.isnan(threshold) or threshold == -math.inf:
        return None
    return threshold


def popularity_log_scores(popularity: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Normalised log popularity: 0 for the most popular item, negative below it.

    Popularity arrays from the learner carry an arbitrary common scale (decay is applied
    lazily), so only ratios matter; this removes the scale.

    Examples
    --------
    >>> popularity_log_scores([4.0, 2.0, 0.0]).round(3)
    array([  0.   ,  -0.693, -13.816], dtype=float32)
    >>> popularity_log_scores([])
    array([], dtype=float32)
    """
    values = np.asarray(popularity, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=np.float32)
    top = float(values.max())
    if not top > 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.log(np.maximum(values / top, _POPULARITY_FLOOR)).astype(np.float32)


def blend_weight(n_events: float, popularity_weight: float, cold_start_events: float) -> float:
    """Weight of popularity in the score of a user with ``n_events`` learned events.

    ``popularity_weight * (1 + cold_start_events / (1 + n_events))``: the floor is
    ``popularity_weight`` for users with a long history, and it is raised for users with
    few events, whose latent vector is still mostly its random start.

    Examples
    --------
    >>> blend_weight(0, 1.0, 10.0), blend_weight(9, 1.0, 10.0), blend_weight(999, 1.0, 0.0)
    (11.0, 2.0, 1.0)
    """
    return popularity_weight * (1.0 + cold_start_events / (1.0 + max(n_events, 0.0)))


def score_items(
    item_matrix: FloatArray,
    user_vector: FloatArray | None,
    *,
    item_biases: FloatArray | None = None,
    popularity_scores: FloatArray | None = None,
    popularity_weight: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Scores of every item for one user (a fresh float32 array, safe to modify).

    Parameters
    ----------
    item_matrix
        ``(n_items, n_factors)`` item factors.
    user_vector
        ``(n_factors,)`` user factors, or ``None`` for a user the model does not know:
        then only popularity counts (and biases are ignored, as they are part of the
        learned model of a known user's taste).
    item_biases
        ``(n_items,)`` item biases, if the model has them.
    popularity_scores
        ``(n_items,)`` output of :func:`popularity_log_scores`.
    popularity_weight
        Weight of ``popularity_scores`` (see :func:`blend_weight`).

    Examples
    --------
    >>> import numpy as np
    >>> items = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> score_items(items, np.array([2.0, 1.0], dtype=np.float32))
    array([2., 1.], dtype=float32)
    >>> score_items(items, None, popularity_scores=np.array([-1.0, 0.0]), popularity_weight=1.0)
    array([-1.,  0.], dtype=float32)
    """
    n_items = item_matrix.shape[0]
    if user_vector is None:
        if popularity_scores is None:
            return np.zeros(n_items, dtype=np.float32)
        return np.array(popularity_scores, dtype=np.float32, copy=True)
    scores = np.asarray(item_matrix @ user_vector, dtype=np.float32)
    if item_biases is not None:
        scores += item_biases
    if popularity_scores is not None and popularity_weight != 0.0:
        scores += np.float32(popularity_weight) * popularity_scores
    return scores


@dataclass(frozen=True, slots=True)
class RankingTable:
    """What the server needs to rank: the item side of a model, as plain arrays.

    Built once per published model revision and shared by all requests; per request, the
    server adds the user's vector, event count and watched movies.

    Parameters
    ----------
    item_ids
        The item id of each row of ``item_matrix``.
    item_matrix
        ``(n_items, n_factors)`` float32 item factors.
    item_biases
        ``(n_items,)`` item biases (zeros for a model without biases).
    popularity
        ``(n_items,)`` item popularity at any common scale (e.g. decayed counts).
    popularity_weight
        Floor of the popularity blend weight (see :func:`blend_weight`).
    cold_start_events
        How strongly the blend leans on popularity for users with few events.

    Examples
    --------
    >>> import numpy as np
    >>> table = RankingTable(
    ...     item_ids=("a", "b", "c"),
    ...     item_matrix=np.array([[1.0], [0.0], [-1.0]], dtype=np.float32),
    ...     item_biases=np.zeros(3, dtype=np.float32),
    ...     popularity=np.array([1.0, 5.0, 2.0]),
    ...     popularity_weight=0.1,
    ...     cold_start_events=0.0,
    ... )
    >>> table.recommend(None, k=2)  # unknown user: popularity
    ['b', 'c']
    >>> table.recommend(np.array([3.0], dtype=np.float32), n_events=50, watched={"a"}, k=2)
    ['b', 'c']
    >>> table.recommend(np.array([3.0], dtype=np.float32), n_events=50, k=5)
    ['a', 'b', 'c']
    """

    item_ids: tuple[Hashable, ...]
    item_matrix: npt.NDArray[np.float32]
    item_biases: npt.NDArray[np.float32]
    popularity: npt.NDArray[np.floating]
    popularity_weight: float = 0.0
    cold_start_events: float = 0.0
    _popularity_scores: npt.NDArray[np.float32] = field(init=False, repr=False)
    _index: Mapping[Hashable, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n_items = len(self.item_ids)
        if self.item_matrix.ndim != 2 or self.item_matrix.shape[0] != n_items:
            raise ValueError(
                f"item_matrix must have shape ({n_items}, n_factors), got {self.item_matrix.shape}"
            )
        for name in ("item_biases", "popularity"):
            shape = getattr(self, name).shape
            if shape != (n_items,):
                raise ValueError(f"{name} must have shape ({n_items},), got {shape}")
        object.__setattr__(self, "_popularity_scores", popularity_log_scores(self.popularity))
        object.__setattr__(self, "_index", {item: i for i, item in enumerate(self.item_ids)})

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def indices(self, items: Iterable[Hashable]) -> IndexArray:
        """Row indices of the known ``items`` (unknown ones are skipped)."""
        index = self._index
        return np.fromiter((index[item] for item in items if item in index), dtype=np.intp)

    def recommend_indices(
        self,
        user_vector: FloatArray | None,
        n_events: float = 0.0,
        exclude: npt.ArrayLike | None = None,
        k: int = 20,
    ) -> IndexArray:
        """Like :meth:`recommend`, with row indices in and out."""
        weight = blend_weight(n_events, self.popularity_weight, self.cold_start_events)
        scores = score_items(
            self.item_matrix,
            user_vector,
            item_biases=self.item_biases,
            popularity_scores=self._popularity_scores,
            popularity_weight=weight,
        )
        return top_k(scores, k, exclude)

    def recommend(
        self,
        user_vector: FloatArray | None,
        n_events: float = 0.0,
        watched: Collection[Hashable] = (),
        k: int = 20,
    ) -> list[Hashable]:
        """Up to ``k`` item ids for a user, best first, never one of ``watched``.

        Parameters
        ----------
        user_vector
            The user's factors, or ``None`` for a user the model does not know.
        n_events
            How many events the model learned from this user (drives the blend).
        watched
            Item ids to leave out (ids unknown to the table are ignored).
        k
            Length of the list (shorter when the catalog is).
        """
        exclude = self.indices(watched) if watched else None
        ids = self.item_ids
        return [ids[i] for i in self.recommend_indices(user_vector, n_events, exclude, k)]
