"""Exact top-k by an upper bound per movie, compiled: most of a catalog is never scored.

A score is ``b_i + w * log_pop_i + <u, q_i>``. Split each item vector into a learned
part and the fixed side features that follow it (the model's genre columns: the same
few values for many movies), and the user vector the same way:

    <u, q_i> = <u_latent, q_latent_i> + <u_side, side_i>
             <= |u_latent| |q_latent_i| + <u_side, side_i>

The side term is exact and costs one small product per distinct side vector (a
"signature": 1,835 genre combinations among 27k movies), the latent term is bounded by
Cauchy-Schwarz. On the learned model of ``bench.learned`` the bound of all but about
one movie in a hundred is below the 20th best score, while a bound by the whole norm
(``server.scoring``'s blocks) rules out almost nothing: the side features give every
movie about the same norm.

:func:`pruned_top` walks the catalog once: the bound of each movie (a few loads and
adds); where it reaches the k-th best score so far, a coarse score from a one-byte copy
of the learned part (one cache line per movie) with its rounding error bounded; and the
exact score only where that reaches the floor too (about one movie in ten of those the
first bound lets through, on the learned model: the search reads rows of the catalog
mostly from memory, not from the CPU's caches, when it serves). A
first pass over the movies with the best ``b_i + w_floor * log_pop_i`` gives a floor to
start from. Scores and bounds are computed in float64 from the float32 arrays, so a
bound holds to within float64 rounding (a margin covers it); the lists equal
``RankingTable``'s up to its float32 rounding (items whose scores are equal to within
about 1e-7 relative may swap). It gives up (returns -1) when it would score more than
``max_scored`` movies, and the caller takes the full product instead.

:func:`pruned_top_many` searches for a batch of users in one compiled call: the
dispatch of a call with twenty arrays costs several microseconds, and the scratch
arrays are allocated once per batch. The side terms of all signatures are summed side
by side, one side column at a time over a dense (columns x signatures) matrix: summed
one signature after the other, each add waits for the one before (on the learned
model, the signatures' sparse entries took 8 us per user, the dense columns 3-5 us less).

Compiled with numba (cached on disk next to this file's bytecode, a second or two the
first time a process imports it); ``AVAILABLE`` is False when numba cannot be imported
and the server then scores without it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from itertools import chain

import numpy as np
import numpy.typing as npt

__all__ = ["AVAILABLE", "PruningIndex", "compile_kernel", "pruned_top", "pruned_top_many"]

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a server up
    AVAILABLE = False
else:
    AVAILABLE = True

#: A side part with more distinct rows than this share of the items is not worth it.
_MAX_SIGNATURE_SHARE = 0.25
#: Movies with the best ``b + w_floor * log_pop`` scored first, for a starting floor.
_FIRST_ITEMS = 64
#: Quantiles of the latent norms that split each signature's movies into bands.
_NORM_BANDS = (0.5, 0.9, 0.99)


def _compile(function):  # type: ignore[no-untyped-def]
    if not AVAILABLE:
        return function
    return njit(cache=True, nogil=True, fastmath=False)(function)


class PruningIndex:
    """What :func:`pruned_top` needs of one item matrix, prepared once per revision.

    Parameters
    ----------
    factors, biases, log_popularity
        The item matrix (float32), its biases, and ``popularity_log_scores``.
    side_columns
        How many trailing columns are fixed side features (0: none; the whole vector is
        bounded by its norm). Side parts with too many distinct rows are treated as 0.
    floor_weight
        The smallest blend weight a user can have (its first pass orders by it).
    keys
        What a search excludes the movies by, in catalog order (the server gives the
        movie ids; by default the catalog indices). The search compares their
        ``hash()`` values: see :func:`pruned_top_many`.

    Raises
    ------
    ValueError
        When two keys have the same hash (then no exclusion by hash can be exact).
    """

    def __init__(
        self,
        factors: npt.NDArray[np.float32],
        biases: npt.NDArray[np.float32],
        log_popularity: npt.NDArray[np.float32],
        side_columns: int,
        floor_weight: float,
        keys: Sequence[Hashable] | None = None,
    ) -> None:
        n_items, dimensions = factors.shape
        hashes = np.fromiter(
            map(hash, range(n_items) if keys is None else keys), dtype=np.int64, count=n_items
        )
        if np.unique(hashes).shape[0] != n_items:
            raise ValueError("two movies' keys have the same hash")
        side = side_columns if 0 < side_columns < dimensions else 0
        signatures = np.zeros((1, 0), dtype=np.float64)
        signature_of = np.zeros(n_items, dtype=np.int32)
        if side and n_items:
            tails = factors[:, dimensions - side :]
            unique, inverse = np.unique(tails, axis=0, return_inverse=True)
            if unique.shape[0] <= max(1, _MAX_SIGNATURE_SHARE * n_items):
                signatures = np.ascontiguousarray(unique, dtype=np.float64)
                signature_of = inverse.reshape(-1).astype(np.int32)
            else:
                side = 0
        self.latent_dimensions = dimensions - side
        self.factors = np.ascontiguousarray(factors, dtype=np.float32)
        self.biases = np.ascontiguousarray(biases, dtype=np.float32)
        self.log_popularity = np.ascontiguousarray(log_popularity, dtype=np.float32)
        latent = self.factors[:, : self.latent_dimensions].astype(np.float64)
        self.latent_norms = np.sqrt(np.einsum("ij,ij->i", latent, latent))
        # One row per side column, one column per signature: the float32 values as stored.
        self.side_matrix = np.ascontiguousarray(signatures.T, dtype=np.float32)
        offsets = self.biases.astype(np.float64) + floor_weight * self.log_popularity.astype(
            np.float64
        )
        first_items = np.argsort(-offsets, kind="stable")[:_FIRST_ITEMS]
        # Groups: movies of one signature and one band of latent norms (a few trained
        # movies must not loosen the bound of the many untrained ones), each sorted by
        # offset, best first: once the bound with the group's largest latent norm falls
        # below the floor, so does every later movie's.
        if n_items:
            edges = np.quantile(self.latent_norms, _NORM_BANDS)
            band = np.searchsorted(edges, self.latent_norms).astype(np.int64)
        else:
            band = np.zeros(0, dtype=np.int64)
        key = signature_of.astype(np.int64) * (len(_NORM_BANDS) + 1) + band
        groups, group_of = np.unique(key, return_inverse=True)
        group_of = group_of.reshape(-1)
        order = np.lexsort((-offsets, group_of)).astype(np.int64)
        self.order = order
        self.group_signature = (groups // (len(_NORM_BANDS) + 1)).astype(np.int64)
        self.group_starts = np.searchsorted(group_of[order], np.arange(len(groups) + 1))
        self.sorted_offsets = offsets[order]
        # The arrays the search reads, in that order too: the movies it visits in a
        # group, and their rows, lie next to each other in memory.
        self.factors = np.ascontiguousarray(self.factors[order])
        self.biases = self.biases[order]
        self.log_popularity = self.log_popularity[order]
        self.latent_norms = self.latent_norms[order]
        position_of = np.empty(n_items, dtype=np.int64)
        position_of[order] = np.arange(n_items)
        self.first_positions = position_of[first_items]
        #: The hash of each movie's key, by position: a search excludes by these.
        self.position_hashes = hashes[order]
        # A coarse copy of the learned parts, one byte per value and a scale per movie:
        # one cache line per movie instead of five or six. A movie whose bound passes
        # gets a coarse score first; its error is at most |u_latent| times the norm of
        # the movie's rounding error, so only the movies whose coarse score plus that
        # reaches the floor need their exact score (and their whole row from memory).
        latent = latent[order]
        largest = np.abs(latent).max(axis=1, initial=0.0)
        self.coarse_scale = np.where(largest > 0, largest / 127.0, 1.0)
        coarse = np.clip(np.rint(latent / self.coarse_scale[:, np.newaxis]), -127, 127)
        self.coarse = np.ascontiguousarray(coarse, dtype=np.int8)
        rounding = latent - coarse * self.coarse_scale[:, np.newaxis]
        self.coarse_error = np.sqrt(np.einsum("ij,ij->i", rounding, rounding))
        self.group_latent_max = np.zeros(len(groups))
        if n_items:
            self.group_latent_max = np.maximum.reduceat(self.latent_norms, self.group_starts[:-1])

    @property
    def side_columns(self) -> int:
        return int(self.factors.shape[1] - self.latent_dimensions)


def _compile_dot(function):  # type: ignore[no-untyped-def]
    if not AVAILABLE:
        return function
    # Reassociation lets LLVM sum in vector registers: float64 sums of float32 products
    # then differ in the last bits of a double, far inside the bound's margin.
    return njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(function)


@_compile_dot
def _dot(rows, i, user):  # type: ignore[no-untyped-def]
    """``<rows[i], user[:rows.shape[1]]>`` in float64 (float32 rows, or the int8 coarse
    copy: numba compiles one version for each)."""
    total = 0.0
    for d in range(rows.shape[1]):
        total += np.float64(rows[i, d]) * np.float64(user[d])
    return total


@_compile
def _side_scores(side_matrix, user, latent_dimensions, out):  # type: ignore[no-untyped-def]
    """The side term of each signature, in float64 like the scores it bounds. The sums
    of all signatures advance together, a side column at a time (the adds of one
    signature's sum do not wait for each other then); each signature's terms are still
    added in column order."""
    out[:] = 0.0
    for d in range(side_matrix.shape[0]):
        value = np.float64(user[latent_dimensions + d])
        row = side_matrix[d]
        for s in range(out.shape[0]):
            out[s] += np.float64(row[s]) * value


@_compile
def _is_excluded(excluded, count, key):  # type: ignore[no-untyped-def]
    """Whether ``key`` is among the first ``count`` values of ``excluded`` (sorted)."""
    low, high = 0, count
    while low < high:
        middle = (low + high) // 2
        if excluded[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low < count and excluded[low] == key


@_compile
def _kernel(  # type: ignore[no-untyped-def]
    factors,
    biases,
    log_popularity,
    latent_norms,
    coarse,
    coarse_scale,
    coarse_error,
    side_matrix,
    first_positions,
    order,
    position_hashes,
    group_starts,
    sorted_offsets,
    group_latent_max,
    group_signature,
    users,
    weights,
    excluded_counts,
    excluded_hashes,
    latent_dimensions,
    k,
    max_scored,
    out,
):
    """The search for each row of ``users``: in ``out``'s row, the list's length (-1:
    gave up, -2: the vector is not finite), then the list. The hashes of the movies a
    user excludes follow those of the users before it in ``excluded_hashes``,
    ``excluded_counts[u]`` of them; they are looked up only for the movies that would
    get an exact score (a few dozen per user)."""
    side_scores = np.empty(side_matrix.shape[1])
    first = np.empty(first_positions.shape[0])
    heap_scores = np.empty(k)
    heap_items = np.empty(k, dtype=np.int64)
    n_groups = group_starts.shape[0] - 1
    group_reach = np.empty(n_groups)
    open_groups = np.empty(n_groups, dtype=np.int64)
    excluded_end = 0
    for u in range(users.shape[0]):
        user = users[u]
        weight = weights[u]
        n_excluded = excluded_counts[u]
        excluded_start, excluded_end = excluded_end, excluded_end + n_excluded
        excluded = np.sort(excluded_hashes[excluded_start:excluded_end])
        finite = True
        for d in range(user.shape[0]):
            finite &= np.isfinite(user[d])
        if not finite:
            out[u, 0] = -2
            continue
        _side_scores(side_matrix, user, latent_dimensions, side_scores)
        latent_norm = 0.0
        for d in range(latent_dimensions):
            latent_norm += np.float64(user[d]) * np.float64(user[d])
        latent_norm = math.sqrt(latent_norm)
        # A starting floor: the k-th best exact score among the first items.
        found = 0
        for j in range(first_positions.shape[0]):
            at = first_positions[j]
            if n_excluded and _is_excluded(excluded, n_excluded, position_hashes[at]):
                continue
            offset = np.float64(biases[at]) + weight * np.float64(log_popularity[at])
            first[found] = offset + _dot(factors, at, user)
            found += 1
        floor = -np.inf
        if found >= k:
            floor = np.sort(first[:found])[found - k]
        # The top k so far, a min-heap on (score, -index): its root is the worst kept.
        size = 0
        scored = 0
        gave_up = False
        # First the groups whose best movie may reach the floor so far, listed without a
        # branch: most of them cannot (measured: 3 us less per user than a loop that
        # tests each group's first movie and breaks).
        n_open = 0
        for group in range(n_groups):
            reach = side_scores[group_signature[group]] + latent_norm * group_latent_max[group]
            group_reach[group] = reach
            upper = sorted_offsets[group_starts[group]] + reach
            open_groups[n_open] = group
            n_open += upper + 1e-9 * (1.0 + abs(upper)) >= floor
        for j in range(n_open):
            if gave_up:
                break
            group = open_groups[j]
            side_score = side_scores[group_signature[group]]
            reach = group_reach[group]
            for position in range(group_starts[group], group_starts[group + 1]):
                # The offsets fall along the group: the rest of it cannot reach the floor.
                upper = sorted_offsets[position] + reach
                if upper + 1e-9 * (1.0 + abs(upper)) < floor:
                    break
                offset = np.float64(biases[position]) + weight * np.float64(
                    log_popularity[position]
                )
                bound = offset + side_score + latent_norm * latent_norms[position]
                if bound + 1e-9 * (1.0 + abs(bound)) < floor:
                    continue
                scored += 1  # a coarse score at least
                if scored > max_scored:
                    gave_up = True
                    break
                bound = (
                    offset
                    + side_score
                    + coarse_scale[position] * _dot(coarse, position, user)
                    + latent_norm * coarse_error[position]
                )
                if bound + 1e-9 * (1.0 + abs(bound)) < floor:
                    continue
                if n_excluded and _is_excluded(excluded, n_excluded, position_hashes[position]):
                    continue
                score = offset + _dot(factors, position, user)
                i = order[position]  # the catalog index: the output; ties go to the lower
                if size < k:
                    # Sift up.
                    at = size
                    size += 1
                    while at > 0:
                        parent = (at - 1) // 2
                        ps, pi = heap_scores[parent], heap_items[parent]
                        if ps < score or (ps == score and pi > i):
                            break
                        heap_scores[at], heap_items[at] = ps, pi
                        at = parent
                    heap_scores[at], heap_items[at] = score, i
                    if size == k and heap_scores[0] > floor:
                        floor = heap_scores[0]
                    continue
                rs, ri = heap_scores[0], heap_items[0]
                if score < rs or (score == rs and i > ri):
                    continue  # not better than the worst kept
                # Replace the root and sift down.
                at = 0
                while True:
                    child = 2 * at + 1
                    if child >= k:
                        break
                    if child + 1 < k:
                        cs, ci = heap_scores[child], heap_items[child]
                        ds, di = heap_scores[child + 1], heap_items[child + 1]
                        if ds < cs or (ds == cs and di > ci):
                            child += 1
                    cs, ci = heap_scores[child], heap_items[child]
                    if score < cs or (score == cs and i > ci):
                        break
                    heap_scores[at], heap_items[at] = cs, ci
                    at = child
                heap_scores[at], heap_items[at] = score, i
                if heap_scores[0] > floor:
                    floor = heap_scores[0]
        if gave_up:
            out[u, 0] = -1
            continue
        # Best first, ties to the lower index: sort (-score, index) pairs.
        out[u, 0] = size
        row = out[u, 1:]
        ranked = np.argsort(-heap_scores[:size], kind="mergesort")
        for at in range(size):
            row[at] = heap_items[ranked[at]]
        start = 0
        while start < size:
            end = start + 1
            while end < size and heap_scores[ranked[end]] == heap_scores[ranked[start]]:
                end += 1
            if end - start > 1:
                row[start:end] = np.sort(row[start:end])
            start = end


def pruned_top_many(
    index: PruningIndex,
    users: npt.NDArray[np.float32],
    weights: Sequence[float],
    excluded: Sequence[Collection[Hashable]],
    k: int,
    max_scored: int,
) -> list[list[int] | None]:
    """:func:`pruned_top` for each row of ``users`` (with its blend weight and the keys
    of the movies it excludes), in one call of the compiled search; ``None`` for a user
    whose search gave up, or whose vector is not finite.

    Movies are excluded by the ``hash()`` of their keys: no dictionary look-up per
    watched movie (a cache miss or three each in a catalog-sized dict: 0.4 us, measured),
    and only the few dozen movies that reach an exact score are checked. Keys that are
    not in the catalog exclude nothing, unless one's hash equals a catalog key's: the
    index refuses catalogs with equal hashes, and for any other key the chance is
    ``2**-64`` per movie (str hashes are salted per process, so it cannot be aimed at).

    A call costs a few microseconds besides the search (each numpy call here costs
    about one): with few users per batch, as at a moderate load, that is a share of
    every answer, so the inputs and outputs take as few numpy calls as can be.
    """
    count = users.shape[0]
    if k <= 0:
        return [[] for _ in range(count)]
    counts = np.fromiter(map(len, excluded), dtype=np.int64, count=count)
    hashes = np.fromiter(map(hash, chain.from_iterable(excluded)), dtype=np.int64)
    out = np.empty((count, k + 1), dtype=np.int64)
    _kernel(
        index.factors,
        index.biases,
        index.log_popularity,
        index.latent_norms,
        index.coarse,
        index.coarse_scale,
        index.coarse_error,
        index.side_matrix,
        index.first_positions,
        index.order,
        index.position_hashes,
        index.group_starts,
        index.sorted_offsets,
        index.group_latent_max,
        index.group_signature,
        users if users.dtype == np.float32 else users.astype(np.float32),
        np.fromiter(weights, dtype=np.float64, count=count),
        counts,
        hashes,
        index.latent_dimensions,
        k,
        max_scored,
        out,
    )
    return [row[1 : 1 + row[0]] if row[0] >= 0 else None for row in out.tolist()]


def pruned_top(
    index: PruningIndex,
    user: npt.NDArray[np.float32],
    weight: float,
    excluded: Collection[Hashable],
    k: int,
    max_scored: int,
) -> npt.NDArray[np.int64] | None:
    """The top ``k`` catalog indices for ``user`` with blend ``weight``, none of the
    movies whose keys are in ``excluded`` (see :func:`pruned_top_many`); ``None`` when
    more than ``max_scored`` movies would need a score (or ``user`` is not finite)."""
    top = pruned_top_many(index, user.reshape(1, -1), [weight], [excluded], k, max_scored)[0]
    return None if top is None else np.array(top, dtype=np.int64)


def compile_kernel() -> None:
    """Compile the search (or load it from its on-disk cache) now, rather than at the
    first list: a process that is about to serve calls this where it may wait."""
    if AVAILABLE:
        zeros = np.zeros(4, np.float32)
        index = PruningIndex(np.eye(4, dtype=np.float32), zeros, zeros, 1, 0.0)
        pruned_top(index, np.ones(4, np.float32), 0.0, [1], 2, 4)
