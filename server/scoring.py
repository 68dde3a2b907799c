"""Scoring one published item matrix: the model's list for one user, in microseconds.

The ranking is ``online_model.ranking``'s: score ``b_i + <u, q_i> + w(n) * log
popularity_i``, top ``k`` with ties to the lower index, watched movies excluded.
:class:`ModelScorer` returns ``RankingTable.recommend``'s list for the same arrays (a
test checks it) while avoiding most of the work a server would repeat thousands of
times a second:

- **Pruning by an upper bound.** With a popularity blend, most of a catalog cannot
  reach a user's top 20: ``b_i + w(n) * log popularity_i`` is far below the best
  scores, and ``<u, q_i> <= |u| |q_i|``. Items are stored sorted by ``c_i = b_i +
  w_min * log popularity_i`` (``w(n) >= w_min``, and the log is never positive, so
  ``c_i`` bounds that part of the score for every user) in blocks of 256 rows, each
  with the largest ``c_i`` and ``|q_i|`` in it. Per request, the blocks are scored in
  order of their bound ``max c + |u| max |q|`` until the ``k``-th best score found
  exceeds the bound of every block left (with a margin for float32 rounding). On
  realistic data this scores about one item in fifty instead of all of them; when it
  would score more than a third of the blocks, the full product is used instead.
  Because BLAS sums a row's product in an order that depends on the row's position
  in the call, a score from a block can differ from the full product's in the last
  bit: the list is the same except between items whose scores are equal to within
  one float32 rounding (about 1e-7 relative).
- **No per-request allocation of catalog-sized arrays**: the blend term of users with
  a long history is computed once per revision, scores go into buffers owned by the
  scorer (requests are scored one at a time on the event loop).
- **``top_k`` on a few dozen candidates**: on the full product, the candidates are the
  items whose score reaches the ``k``-th largest of ``G`` group maxima (item ``i`` in
  group ``i % G``): ``k`` distinct groups hold an item at least that high, so every
  item of the top ``k``, and every item tied with the ``k``-th, is a candidate.
  Candidates keep their catalog order, so ``top_k`` breaks ties as on the full array.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from online_model.ranking import RankingTable, blend_weight, popularity_log_scores, top_k
from state import ItemMatrix

__all__ = ["ModelScorer", "ScoringError"]

#: Items per group of the candidate bound on the full product.
_GROUP_SIZE = 64
#: Rows per block of the pruned product.
_BLOCK = 256
#: The pruned product gives up (and computes them all) beyond this share of blocks.
_MAX_PRUNED_SHARE = 1 / 3


_NO_ITEMS = np.empty(0, dtype=np.intp)


def _block_max(
    values: npt.NDArray[np.float64], starts: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """The largest value of each block that starts at ``starts``."""
    if not starts.size:
        return np.zeros(0)
    return np.maximum.reduceat(values, starts)


class ScoringError(ValueError):
    """An item matrix or a user vector that the server cannot score with."""


class ModelScorer:
    """The item side of one revision of a model version, ready to rank.

    Parameters
    ----------
    version
        The model version's name.
    matrix
        The published item matrix (its revision and positions are kept for provenance).
    popularity_weight, cold_start_events
        The popularity blend (see ``online_model.ranking.blend_weight``).

    Examples
    --------
    >>> import numpy as np
    >>> from state import ItemMatrix
    >>> matrix = ItemMatrix(
    ...     ("a", "b", "c"),
    ...     np.array([[1.0], [0.0], [-1.0]], np.float32),
    ...     np.zeros(3, np.float32),
    ...     revision=4,
    ...     popularity=np.array([1.0, 5.0, 2.0], np.float32),
    ... )
    >>> scorer = ModelScorer("v1", matrix, popularity_weight=0.1)
    >>> scorer.recommend(np.array([3.0], np.float32), frozenset({"a"}), 2)
    ['b', 'c']
    >>> scorer.revision, scorer.popular_ids(2)
    (4, ('b', 'c'))
    """

    def __init__(
        self,
        version: str,
        matrix: ItemMatrix,
        popularity_weight: float = 1.0,
        cold_start_events: float = 0.0,
    ) -> None:
        n_items = len(matrix.movie_ids)
        # Own, aligned copies: arrays read from a blob are views at whatever offset the
        # header left, and numpy does not hand unaligned arrays to BLAS (2.3x slower).
        factors = np.array(matrix.factors, dtype=np.float32, order="C", copy=True)
        biases = np.array(matrix.biases, dtype=np.float32, copy=True)
        popularity = (
            np.zeros(n_items, dtype=np.float32)
            if matrix.popularity is None
            else np.array(matrix.popularity, dtype=np.float32, copy=True)
        )
        for name, array in (("factors", factors), ("biases", biases), ("popularity", popularity)):
            if not np.isfinite(array).all():
                raise ScoringError(f"item matrix {version}@{matrix.revision}: {name} not finite")
        self.version = version
        self.revision = matrix.revision
        self.positions = matrix.positions
        self.movie_ids = matrix.movie_ids
        self.table = RankingTable(
            item_ids=matrix.movie_ids,
            item_matrix=factors,
            item_biases=biases,
            popularity=popularity,
            popularity_weight=popularity_weight,
            cold_start_events=cold_start_events,
        )
        self.dimensions = int(factors.shape[1])
        self._factors = factors
        self._biases = biases
        self._popularity_weight = popularity_weight
        self._cold_start_events = cold_start_events
        self._popularity_scores = popularity_log_scores(popularity)
        # The blend term of a user with a long history, computed once; users with few
        # events get theirs in a scratch buffer. Both are the same float32 operations
        # as ranking.score_items, so the lists are identical.
        self._floor_weight = blend_weight(math.inf, popularity_weight, cold_start_events)
        self._floor_blend = np.float32(self._floor_weight) * self._popularity_scores
        self._blend = np.empty(n_items, dtype=np.float32)
        groups = max(1, -(-n_items // _GROUP_SIZE))
        # Padding scores stay -inf: they never reach a bound that top_k would return.
        self._buffer = np.full(groups * _GROUP_SIZE, -np.inf, dtype=np.float32)
        self._scores = self._buffer[:n_items]
        self._rows = self._buffer.reshape(_GROUP_SIZE, groups)
        self._group_max = np.empty(groups, dtype=np.float32)
        order = np.lexsort((np.arange(n_items), -popularity.astype(np.float64)))
        self._popular_order = order
        self._prepare_pruning()

    def _prepare_pruning(self) -> None:
        n_items = self.n_items
        # c_i bounds bias + blend for every user: w(n) >= the floor weight, log <= 0.
        offsets = self._biases.astype(np.float64) + self._floor_weight * (
            self._popularity_scores.astype(np.float64)
        )
        norms = np.sqrt(np.einsum("ij,ij->i", self._factors, self._factors, dtype=np.float64))
        by_offset = np.argsort(-offsets, kind="stable")
        self._sorted_items = by_offset
        self._position = np.empty(n_items, dtype=np.intp)
        self._position[by_offset] = np.arange(n_items, dtype=np.intp)
        self._sorted_factors = np.ascontiguousarray(self._factors[by_offset])
        self._sorted_biases = np.ascontiguousarray(self._biases[by_offset])
        self._sorted_popularity = np.ascontiguousarray(self._popularity_scores[by_offset])
        self._sorted_floor_blend = np.ascontiguousarray(self._floor_blend[by_offset])
        self._sorted_scores = np.empty(n_items, dtype=np.float32)
        self._sorted_blend = np.empty(n_items, dtype=np.float32)
        starts = np.arange(0, n_items, _BLOCK, dtype=np.intp)
        self._block_offset = offsets[by_offset][starts]
        self._block_norm = _block_max(norms[by_offset], starts)
        # For users whose blend weight is above the floor: max bias + w * max log pop.
        self._block_bias = _block_max(self._biases.astype(np.float64)[by_offset], starts)
        self._block_popularity = _block_max(
            self._popularity_scores.astype(np.float64)[by_offset], starts
        )
        self._block_rows = [
            np.arange(start, min(start + _BLOCK, n_items), dtype=np.intp)
            for start in range(0, n_items, _BLOCK)
        ]
        # float32 rounding of a score is far below this share of the largest magnitude.
        self._rounding = 1e-5 * (1.0 + float(np.abs(offsets).max(initial=0.0)))
        self._norm_rounding = 1e-5 * float(norms.max(initial=0.0))

    @property
    def n_items(self) -> int:
        return len(self.movie_ids)

    def popular_ids(self, count: int) -> tuple[str, ...]:
        """The ``count`` items the learner saw most (its popularity), best first."""
        ids = self.movie_ids
        return tuple(ids[i] for i in self._popular_order[:count])

    def recommend(
        self,
        vector: npt.NDArray[np.float32],
        watched: Collection[str],
        k: int,
        n_events: int = 0,
    ) -> list[str]:
        """Up to ``k`` movie ids for a user's vector, best first, none of ``watched``.

        ``n_events`` (how many events the model learned from the user) sets the weight
        of popularity in the score, as in ``RankingTable.recommend``.

        Raises
        ------
        ScoringError
            When the vector does not fit the matrix or is not finite.
        """
        if vector.shape != (self.dimensions,) or not np.isfinite(vector).all():
            raise ScoringError(f"user vector of shape {vector.shape} for k={self.dimensions}")
        weight = blend_weight(n_events, self._popularity_weight, self._cold_start_events)
        excluded = self.table.indices(watched) if watched else _NO_ITEMS
        top = self._pruned_top(vector, weight, excluded, k)
        if top is None:
            top = self._full_top(vector, weight, excluded, k)
        ids = self.movie_ids
        return [ids[i] for i in top]

    def _full_top(
        self,
        vector: npt.NDArray[np.float32],
        weight: float,
        excluded: npt.NDArray[np.intp],
        k: int,
    ) -> npt.NDArray[np.intp]:
        """Every item's score, as ``ranking.score_items`` computes it, then the top ``k``."""
        scores = self._scores
        np.matmul(self._factors, vector, out=scores)
        scores += self._biases
        if weight == self._floor_weight:
            scores += self._floor_blend
        elif weight != 0.0:
            scores += np.multiply(np.float32(weight), self._popularity_scores, out=self._blend)
        if excluded.size:
            scores[excluded] = -np.inf
        return self._top(scores, k)

    def _pruned_top(
        self,
        vector: npt.NDArray[np.float32],
        weight: float,
        excluded: npt.NDArray[np.intp],
        k: int,
    ) -> npt.NDArray[np.intp] | None:
        """The top ``k`` from the blocks that can hold one; ``None`` when that would be
        too many blocks (then the full product is cheaper)."""
        n_blocks = len(self._block_rows)
        if k <= 0 or n_blocks < 3:
            return None
        norm = float(np.sqrt(np.dot(vector, vector)))
        offsets = self._block_offset
        if weight != self._floor_weight:
            offsets = np.minimum(offsets, self._block_bias + weight * self._block_popularity)
        bounds = offsets + (norm + self._norm_rounding) * self._block_norm
        bounds += self._rounding * (1.0 + weight) + norm * self._norm_rounding
        visit = np.argsort(-bounds, kind="stable")
        excluded_positions = self._position[excluded] if excluded.size else _NO_ITEMS
        first = min(n_blocks, -(-(k + excluded.size) // _BLOCK))
        scored = list(visit[:first])
        self._score_blocks(scored, vector, weight, excluded_positions)
        positions = np.concatenate([self._block_rows[b] for b in scored])
        values = self._sorted_scores[positions]
        valid = int(np.count_nonzero(values > -np.inf))
        if valid < k:
            return None
        threshold = np.partition(values, values.shape[0] - k)[values.shape[0] - k]
        rest = visit[first:]
        more = rest[bounds[rest] >= threshold]
        if first + more.shape[0] > n_blocks * _MAX_PRUNED_SHARE:
            return None
        if more.shape[0]:
            self._score_blocks(list(more), vector, weight, excluded_positions)
            positions = np.concatenate([positions, *(self._block_rows[b] for b in more)])
            values = self._sorted_scores[positions]
            threshold = np.partition(values, values.shape[0] - k)[values.shape[0] - k]
        keep = values >= threshold
        items: npt.NDArray[np.intp] = self._sorted_items[positions[keep]]
        in_catalog_order = np.argsort(items, kind="stable")
        items = items[in_catalog_order]
        top: npt.NDArray[np.intp] = items[top_k(values[keep][in_catalog_order], k)]
        return top

    def _score_blocks(
        self,
        blocks: list[np.intp],
        vector: npt.NDArray[np.float32],
        weight: float,
        excluded_positions: npt.NDArray[np.intp],
    ) -> None:
        scores, floor = self._sorted_scores, weight == self._floor_weight
        for block in blocks:
            rows = slice(int(block) * _BLOCK, min((int(block) + 1) * _BLOCK, self.n_items))
            out = scores[rows]
            np.matmul(self._sorted_factors[rows], vector, out=out)
            out += self._sorted_biases[rows]
            if floor:
                out += self._sorted_floor_blend[rows]
            elif weight != 0.0:
                out += np.multiply(
                    np.float32(weight), self._sorted_popularity[rows], out=self._sorted_blend[rows]
                )
        if excluded_positions.size:
            scores[excluded_positions] = -np.inf

    def _top(self, scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
        group_max = np.max(self._rows, axis=0, out=self._group_max)
        n_groups = group_max.shape[0]
        if 0 < k < n_groups:
            bound = np.partition(group_max, n_groups - k)[n_groups - k]
            if np.isfinite(bound):
                candidates = np.flatnonzero(scores >= bound)
                return candidates[top_k(scores[candidates], k)]
        return top_k(scores, k)
