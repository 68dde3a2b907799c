"""Scoring one published item matrix: the model's list for one user, in microseconds.

The ranking is ``online_model.ranking``'s: score ``b_i + <u, q_i> + w(n) * log
popularity_i``, top ``k`` with ties to the lower index, watched movies excluded.
:class:`ModelScorer` returns ``RankingTable.recommend``'s list for the same arrays (a
test checks it) while avoiding most of the work a server would repeat thousands of
times a second:

- **A bound per movie, compiled** (``server.pruning``, tried first): the learned part
  of each vector is bounded by Cauchy-Schwarz, the fixed genre columns that follow it
  are scored exactly per genre combination, and only the movies whose bound reaches
  the k-th best score so far get a score. On the default model learned on a simulated
  day (``bench.learned``) that is about one movie in a hundred. The users of a batch
  go through it in one call. It gives up beyond a quarter of the catalog (no user of
  that model comes near: the slowest scores a few thousand movies in ~250 us, where
  the full product costs ~800 us), and the steps below take over (for good, when it
  gave up for most of a revision's first 64 users).
- **Pruning by an upper bound on blocks.** With a popularity blend, most of a catalog cannot
  reach a user's top 20: ``b_i + w(n) * log popularity_i`` is far below the best
  scores, and ``<u, q_i> <= |u| |q_i|``. Items are stored sorted by ``c_i = b_i +
  w_min * log popularity_i`` (``w(n) >= w_min``, and the log is never positive, so
  ``c_i`` bounds that part of the score for every user) in blocks of 256 rows, each
  with the largest ``c_i`` and ``|q_i|`` in it. Per request, the first blocks (the
  largest ``c_i``) are scored in one product; a floor of their ``k``-th best score
  (the ``k``-th largest of group maxima) then rules out every later block whose bound
  ``max c + |u| max |q|`` stays below it (with a margin for float32 rounding), and the
  blocks up to the last one that may not are scored in a second product. Bounds fall
  with the block's rank, so the blocks to score are nearly always a prefix: two large
  products cost far less than one numpy call per block (measured: 31 instead of 75 us
  per user on the benchmark's data). On realistic data this scores about one item in
  twenty; when it would score more than a third of the blocks, the full product is
  used instead. Because BLAS sums a row's product in an order that depends on the
  row's position in the call, a score from a block can differ from the full
  product's in the last bit: the list is the same except between items whose scores
  are equal to within one float32 rounding (about 1e-7 relative).
- **No per-request allocation of catalog-sized arrays**: the blend term of users with
  a long history is computed once per revision, scores go into buffers owned by the
  scorer (requests are scored one at a time on the event loop).
- **Batches**: the users whose requests reach scoring in the same pass of the event
  loop, and whose lists the compiled bound did not find, are scored in one product
  (:meth:`ModelScorer.recommend_many`). A product of the whole catalog with one vector
  streams the matrix from memory for one user (about 140 us on 27k movies x 84
  dimensions on one core here), one with 32 vectors runs near the core's arithmetic
  peak (about 63 us per user); the bias and the blend ride in it as two more
  dimensions, and the candidates of each user are read from the groups whose maximum
  reaches its bound only. Fewer than four such users are scored one by one.
- **Sorting a few dozen candidates**: the candidates of the pruned product are the
  scored items that reach the floor, sorted by score and then catalog index. On the
  full product, the candidates are the
  items whose score reaches the ``k``-th largest of ``G`` group maxima (item ``i`` in
  group ``i % G``): ``k`` distinct groups hold an item at least that high, so every
  item of the top ``k``, and every item tied with the ``k``-th, is a candidate.
  Candidates keep their catalog order, so ``top_k`` breaks ties as on the full array.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from online_model.ranking import RankingTable, blend_weight, popularity_log_scores, top_k
from server.pruning import AVAILABLE as PRUNING_AVAILABLE
from server.pruning import PruningIndex, compile_kernel, pruned_top_many
from state import ItemMatrix

__all__ = ["ModelScorer", "ScoringError"]

log = logging.getLogger(__name__)

#: Items per group of the candidate bound on the full product.
_GROUP_SIZE = 64
#: Rows per block of the pruned product.
_BLOCK = 256
#: The pruned product gives up (and computes them all) beyond this share of blocks.
_MAX_PRUNED_SHARE = 1 / 3
#: Blocks scored before the first bound check: on realistic data the top 20 is almost
#: always within them, and one product of a few blocks costs about as much as one of one.
_FIRST_BLOCKS = 4
#: Rows per group of the k-th score's floor in the pruned product.
_GROUP_ROWS = 16
#: The compiled bound gives up beyond 1 / this share of the catalog (the batch product
#: is then cheaper), and never below this many movies.
_PRUNED_SHARE = 4
_MIN_PRUNED = 256
#: After this many users, a scorer whose compiled bound gave up for most of them stops
#: trying it (a matrix without side columns, or without the structure it relies on).
_PRUNING_TRIAL = 64
#: Users scored together in one matrix product at most (larger batches are split).
MAX_BATCH = 64
#: Fewer users than this are scored one by one (with pruning): below it, one product
#: for all of them saves too little to pay for the whole catalog.
_MIN_BATCH = 4


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
        side_columns: int = 0,
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
        #: For batches (allocated at the first): the catalog transposed, with biases and
        #: log popularity as two more rows, and the scores, one row per user.
        self._batch_catalog = np.empty((0, 0), dtype=np.float32)
        self._batch_scores: npt.NDArray[np.float32] | None = None
        self._group_offsets = np.empty(0, dtype=np.intp)
        order = np.lexsort((np.arange(n_items), -popularity.astype(np.float64)))
        self._popular_order = order
        #: Movie id -> its catalog index (watched movies of a batch are looked up here).
        self._index = {movie: item for item, movie in enumerate(self.movie_ids)}
        self._prepare_pruning()
        #: The compiled bound per movie (``server.pruning``), when numba is there.
        self._pruning: PruningIndex | None = None
        if PRUNING_AVAILABLE and n_items:
            try:
                self._pruning = PruningIndex(
                    factors,
                    biases,
                    self._popularity_scores,
                    side_columns,
                    self._floor_weight,
                    keys=self.movie_ids,
                )
            except ValueError:  # two ids with one hash: the steps below are exact
                log.warning("%s@%d: scoring without the compiled bound", version, self.revision)
        self._max_pruned = max(_MIN_PRUNED, n_items // _PRUNED_SHARE)
        self._pruning_tries = self._pruning_misses = 0
        if self._pruning is not None:
            # Here, where the server builds scorers in a thread, not at the first request.
            compile_kernel()

    def _prepare_pruning(self) -> None:
        n_items = self.n_items
        # c_i bounds bias + blend for every user: w(n) >= the floor weight, log <= 0.
        offsets = self._biases.astype(np.float64) + self._floor_weight * (
            self._popularity_scores.astype(np.float64)
        )
        norms = np.sqrt(np.einsum("ij,ij->i", self._factors, self._factors, dtype=np.float64))
        by_offset = np.argsort(-offsets, kind="stable")
        self._sorted_items = by_offset
        #: Movie id -> its row in the sorted arrays (watched movies are looked up here).
        self._sorted_position = {
            self.movie_ids[item]: position for position, item in enumerate(by_offset.tolist())
        }
        self._sorted_factors = np.ascontiguousarray(self._factors[by_offset])
        self._sorted_biases = np.ascontiguousarray(self._biases[by_offset])
        self._sorted_popularity = np.ascontiguousarray(self._popularity_scores[by_offset])
        self._sorted_floor_blend = np.ascontiguousarray(self._floor_blend[by_offset])
        starts = np.arange(0, n_items, _BLOCK, dtype=np.intp)
        self._n_blocks = int(starts.shape[0])
        # Whole blocks: the rows past the catalog stay -inf, out of every top k.
        self._sorted_scores = np.full(self._n_blocks * _BLOCK, -np.inf, dtype=np.float32)
        self._sorted_blend = np.empty(n_items, dtype=np.float32)
        self._group_maxima = np.empty(self._n_blocks * _BLOCK // _GROUP_ROWS, dtype=np.float32)
        self._block_offset = offsets[by_offset][starts]
        self._block_norm = _block_max(norms[by_offset], starts)
        self._block_bound = np.empty(self._n_blocks, dtype=np.float64)
        # For users whose blend weight is above the floor: max bias + w * max log pop.
        self._block_bias = _block_max(self._biases.astype(np.float64)[by_offset], starts)
        self._block_popularity = _block_max(
            self._popularity_scores.astype(np.float64)[by_offset], starts
        )
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
        squared_norm = self._squared_norm(vector)
        if self._pruning is not None and math.isfinite(squared_norm):
            found: list[list[str] | ScoringError] = [[]]
            if not self._compiled_tops([vector], [watched], k, [n_events], [0], found):
                items = found[0]
                assert not isinstance(items, ScoringError)
                return items
        return self._recommend_blocks(vector, watched, k, n_events, squared_norm)

    def _squared_norm(self, vector: npt.NDArray[np.float32]) -> float:
        """``|vector|^2`` (inf when it overflows float32); raises ``ScoringError`` for a
        vector that does not fit or is not finite."""
        if vector.shape != (self.dimensions,):
            raise ScoringError(f"user vector of shape {vector.shape} for k={self.dimensions}")
        # One reduction checks finiteness too: a NaN or an infinity makes it non-finite
        # (so may a finite vector whose square overflows float32: checked again then).
        squared_norm = float(np.dot(vector, vector))
        if not math.isfinite(squared_norm):
            if not np.isfinite(vector).all():
                raise ScoringError("user vector is not finite")
            squared_norm = math.inf  # scored in full: no bound holds
        return squared_norm

    def _recommend_blocks(
        self,
        vector: npt.NDArray[np.float32],
        watched: Collection[str],
        k: int,
        n_events: int,
        squared_norm: float,
    ) -> list[str]:
        """:meth:`recommend` without the compiled bound: pruned blocks, else in full."""
        weight = blend_weight(n_events, self._popularity_weight, self._cold_start_events)
        excluded = self.sorted_positions(watched)
        top = self._pruned_top(vector, weight, excluded, k, squared_norm)
        if top is None:
            top = self._full_top(vector, weight, self._sorted_items[excluded], k)
        ids = self.movie_ids
        return [ids[i] for i in top.tolist()]

    def recommend_many(
        self,
        vectors: Sequence[npt.NDArray[np.float32]],
        watched: Sequence[Collection[str]],
        k: int,
        n_events: Sequence[int],
    ) -> list[list[str] | ScoringError]:
        """:meth:`recommend` for several users at once, in one matrix product.

        Users whose lists the compiled bound finds (``server.pruning``, one after the
        other: its arrays stay in the CPU's caches) are not part of the product.

        One product of the catalog with many vectors costs far less per user than one
        product per vector (the catalog is read once, and BLAS blocks the work: measured
        2.5x on 12.6k movies x 84 dimensions with 16 users), and the blend, the
        exclusions, the candidate bound and the final sort are one numpy call each for
        the whole batch. The lists are :meth:`recommend`'s, up to float32 rounding: a
        product of several vectors may sum a score in another order than a product of
        one, so items whose scores are equal to within one rounding can swap. A user
        whose vector does not fit gets a :class:`ScoringError` in its place.
        """
        results: list[list[str] | ScoringError] = []
        fitting: list[int] = []
        dimensions = self.dimensions
        for index, vector in enumerate(vectors):
            if vector.shape != (dimensions,):
                results.append(
                    ScoringError(f"user vector of shape {vector.shape} for k={dimensions}")
                )
                continue
            results.append([])
            fitting.append(index)
        batch = fitting
        if self._pruning is not None and k > 0 and fitting:
            batch = self._compiled_tops(vectors, watched, k, n_events, fitting, results)
        if len(batch) < _MIN_BATCH or k <= 0:
            for index in batch:
                vector = vectors[index]
                try:
                    items = self._recommend_blocks(
                        vector, watched[index], k, n_events[index], self._squared_norm(vector)
                    )
                except ScoringError as exc:
                    results[index] = exc
                else:
                    results[index] = items
            return results
        weight, cold = self._popularity_weight, self._cold_start_events
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            matrix = np.stack([vectors[index] for index in chunk])
            finite = np.isfinite(matrix).all(axis=1)
            if not finite.all():
                fits = [bool(ok) for ok in np.asarray(finite)]
                for index, ok in zip(chunk, fits, strict=True):
                    if not ok:
                        results[index] = ScoringError("user vector is not finite")
                chunk = [index for index, ok in zip(chunk, fits, strict=True) if ok]
                matrix = matrix[finite]
                if not chunk:
                    continue
            tops = self._batch_top(
                matrix,
                [blend_weight(n_events[index], weight, cold) for index in chunk],
                [watched[index] for index in chunk],
                k,
            )
            ids = self.movie_ids
            for index, top in zip(chunk, tops, strict=True):
                results[index] = [ids[i] for i in top]
        return results

    def _batch_top(
        self,
        matrix: npt.NDArray[np.float32],
        weights: list[float],
        watched: list[Collection[str]],
        k: int,
    ) -> list[list[int]]:
        """The top ``k`` catalog indices for each row of ``matrix`` (one user each), as
        ``_full_top`` finds them for one user, with one numpy call per step for all.

        The bias and the popularity blend ride in the product: the catalog is kept
        transposed with two more rows (biases and log popularity), and each user's
        vector gets two more columns (1 and its blend weight).
        """
        n_items = self.n_items
        users = matrix.shape[0]
        if self._batch_scores is None:
            catalog = np.empty((self.dimensions + 2, n_items), dtype=np.float32)
            catalog[: self.dimensions] = self._factors.T
            catalog[self.dimensions] = self._biases
            catalog[self.dimensions + 1] = self._popularity_scores
            self._batch_catalog = catalog
            groups = self._buffer.shape[0] // _GROUP_SIZE
            self._group_offsets = np.arange(_GROUP_SIZE, dtype=np.intp) * groups
            # Padding columns stay -inf: they never reach a bound that would select them.
            self._batch_scores = np.full(
                (MAX_BATCH, self._buffer.shape[0]), -np.inf, dtype=np.float32
            )
        extended = np.empty((users, self.dimensions + 2), dtype=np.float32)
        extended[:, : self.dimensions] = matrix
        extended[:, self.dimensions] = 1.0
        extended[:, self.dimensions + 1] = weights
        padded = self._batch_scores[:users]
        scores = padded[:, :n_items]
        np.matmul(extended, self._batch_catalog, out=scores)
        index = self._index
        excluded_users: list[int] = []
        excluded_items: list[int] = []
        for user, movies in enumerate(watched):
            for item in map(index.get, movies):
                if item is not None:
                    excluded_users.append(user)
                    excluded_items.append(item)
        if excluded_items:
            scores[excluded_users, excluded_items] = -np.inf
        # The candidate bound of _top for every user: the k-th largest of the group
        # maxima (item i in group i % groups), which k distinct groups reach. Only the
        # groups whose maximum reaches it can hold a candidate: their items are read,
        # not the whole catalog's.
        groups = padded.shape[1] // _GROUP_SIZE
        if 0 < k < groups:
            maxima = padded.reshape(users, _GROUP_SIZE, groups).max(axis=1)
            bounds = np.partition(maxima, groups - k, axis=1)[:, groups - k]
            # A user whose bound is not finite (fewer than k groups with a finite score)
            # takes every item as a candidate, as top_k on the full array does.
            bounds[~np.isfinite(bounds)] = -np.inf
            owners, reached = (maxima >= bounds[:, np.newaxis]).nonzero()
            items = (reached[:, np.newaxis] + self._group_offsets).ravel()
            owners = np.repeat(owners, _GROUP_SIZE)
            values = padded[owners, items]
            candidates = values >= bounds[owners]
            owners, items, values = owners[candidates], items[candidates], values[candidates]
        else:
            owners, items = (scores > -np.inf).nonzero()
            values = scores[owners, items]
        scored = values > -np.inf  # excluded movies never come back, nor do NaN scores
        if not scored.all():
            owners, items, values = owners[scored], items[scored], values[scored]
        # By user, then best first, ties to the lower catalog index (as top_k).
        order = np.lexsort((items, -values, owners))
        owners, items = owners[order], items[order]
        ends = np.searchsorted(owners, np.arange(1, users + 1)).tolist()
        tops: list[list[int]] = []
        begin = 0
        for end in ends:
            tops.append(items[begin : min(end, begin + k)].tolist())
            begin = end
        return tops

    def _compiled_tops(
        self,
        vectors: Sequence[npt.NDArray[np.float32]],
        watched: Sequence[Collection[str]],
        k: int,
        n_events: Sequence[int],
        chosen: list[int],
        results: list[list[str] | ScoringError],
    ) -> list[int]:
        """The lists of the ``chosen`` users by ``server.pruning``, in one call, into
        ``results``; returns the users it gave up on (and those with a vector that is
        not finite, for the caller to report)."""
        assert self._pruning is not None
        weight, cold = self._popularity_weight, self._cold_start_events
        # One user, as at a moderate load: a view of its vector (np.stack costs 2 us).
        users = (
            vectors[chosen[0]].reshape(1, -1)
            if len(chosen) == 1
            else np.stack([vectors[at] for at in chosen])
        )
        tops = pruned_top_many(
            self._pruning,
            users,
            [blend_weight(n_events[at], weight, cold) for at in chosen],
            [watched[at] for at in chosen],
            k,
            self._max_pruned,
        )
        ids = self.movie_ids
        left: list[int] = []
        misses = 0
        for at, top in zip(chosen, tops, strict=True):
            if top is not None:
                results[at] = [ids[i] for i in top]
                continue
            left.append(at)
            # Not a miss of the bound when the vector is not finite (the caller says so).
            misses += bool(np.isfinite(vectors[at]).all())
        self._pruning_tries += len(chosen)
        self._pruning_misses += misses
        if self._pruning_tries >= _PRUNING_TRIAL and self._pruning_misses * 2 > self._pruning_tries:
            # On this matrix the bound rules out too little: stop paying for it.
            self._pruning = None
        return left

    def sorted_positions(self, movies: Collection[str]) -> list[int]:
        """Rows of the known ``movies`` in the scorer's sorted arrays (for ``_pruned_top``)."""
        position = self._sorted_position
        return [row for row in map(position.get, movies) if row is not None]

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
        excluded: list[int],
        k: int,
        squared_norm: float | None = None,
    ) -> npt.NDArray[np.intp] | None:
        """The top ``k`` from the blocks that can hold one; ``None`` when that would be
        too many blocks (then the full product is cheaper).

        ``excluded`` are sorted positions (:meth:`sorted_positions`). The blocks come in
        order of ``c_i``, and their bounds nearly so, so the blocks worth scoring are a
        prefix: the first blocks are scored in one product, and then, in a second one,
        every block up to the last whose bound reaches the ``k``-th score found. Few
        large products cost far less than one numpy call per block.
        """
        n_blocks = self._n_blocks
        if k <= 0 or n_blocks < 3:
            return None
        if squared_norm is None:
            squared_norm = float(np.dot(vector, vector))
        if not math.isfinite(squared_norm):
            return None
        norm = math.sqrt(squared_norm)
        offsets = self._block_offset
        if weight != self._floor_weight:
            offsets = np.minimum(offsets, self._block_bias + weight * self._block_popularity)
        bounds = np.multiply(self._block_norm, norm + self._norm_rounding, out=self._block_bound)
        bounds += offsets
        # Everything a bound adds in margins, moved to the other side of the comparison.
        slack = self._rounding * (1.0 + weight) + norm * self._norm_rounding
        n_items = self.n_items
        limit = n_blocks * _MAX_PRUNED_SHARE
        first = min(n_blocks, max(_FIRST_BLOCKS, -(-(k + len(excluded)) // _BLOCK)))
        end = min(first * _BLOCK, n_items)
        self._score_rows(0, end, vector, weight)
        scores = self._sorted_scores
        hidden = 0
        for row in excluded:
            if row < end:
                scores[row] = -np.inf
                hidden += 1
        if end - hidden < k:
            return None  # fewer than k movies to recommend in them: the full product decides
        floor = self._kth_floor(first * _BLOCK, k)
        if floor == -math.inf:
            return None
        beyond = (bounds[first:] >= floor - slack).nonzero()[0]
        if beyond.shape[0]:
            last = first + int(beyond[-1]) + 1
            if last > limit:
                return None
            start, end = end, min(last * _BLOCK, n_items)
            self._score_rows(start, end, vector, weight)
            for row in excluded:
                if start <= row < end:
                    scores[row] = -np.inf
            # Higher (or equal) over more rows: fewer candidates to sort.
            floor = self._kth_floor(last * _BLOCK, k)
        elif first > limit:
            return None
        # The floor is at most the k-th score of the scored rows: every movie of the
        # top k (and every tie of the k-th) is a candidate.
        candidates = (scores[:end] >= floor).nonzero()[0]
        items = self._sorted_items[candidates]
        # Best first, ties to the lower catalog index (as top_k on the full array).
        order = np.lexsort((items, -scores[candidates]))[:k]
        top: npt.NDArray[np.intp] = items[order]
        return top

    def _kth_floor(self, rows: int, k: int) -> float:
        """A score that at least ``k`` of the first ``rows`` sorted rows reach (a multiple
        of the block size, scored; the rows past the catalog are -inf padding).

        The ``k``-th largest of group maxima (``_GROUP_ROWS`` groups, row ``i`` in group
        ``i % groups``) is reached by ``k`` distinct groups: one elementwise maximum and
        a sort of a few dozen values instead of a selection over every row.
        """
        region = self._sorted_scores[:rows]
        groups = rows // _GROUP_ROWS
        if groups >= 2 * k:
            maxima = self._group_maxima[:groups]
            np.maximum.reduce(region.reshape(_GROUP_ROWS, groups), axis=0, out=maxima)
            maxima.sort()
            floor = float(maxima[groups - k])
            if floor != -math.inf:
                return floor
        return float(np.partition(region, rows - k)[rows - k])

    def _score_rows(
        self, start: int, end: int, vector: npt.NDArray[np.float32], weight: float
    ) -> None:
        """Scores of the sorted rows ``start:end``, as ``ranking.score_items`` computes them."""
        rows = slice(start, end)
        out = self._sorted_scores[rows]
        np.matmul(self._sorted_factors[rows], vector, out=out)
        out += self._sorted_biases[rows]
        if weight == self._floor_weight:
            out += self._sorted_floor_blend[rows]
        elif weight != 0.0:
            out += np.multiply(
                np.float32(weight), self._sorted_popularity[rows], out=self._sorted_blend[rows]
            )

    def _top(self, scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
        group_max = np.max(self._rows, axis=0, out=self._group_max)
        n_groups = group_max.shape[0]
        if 0 < k < n_groups:
            bound = np.partition(group_max, n_groups - k)[n_groups - k]
            if np.isfinite(bound):
                candidates = np.flatnonzero(scores >= bound)
                return candidates[top_k(scores[candidates], k)]
        return top_k(scores, k)
