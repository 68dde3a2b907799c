"""ModelScorer gives exactly RankingTable's lists, faster; PopularList and segments."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_model.ranking import RankingTable, blend_weight, popularity_log_scores
from server.popularity import SEGMENTS, PopularList, segment_of
from server.pruning import PruningIndex, pruned_top
from server.scoring import ModelScorer, ScoringError
from state import ItemMatrix


def _matrix(n_items: int, k: int, seed: int, ties: bool, with_popularity: bool) -> ItemMatrix:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_items, k)).astype(np.float32)
    biases = (rng.standard_normal(n_items) * 0.3).astype(np.float32)
    if ties:  # coarse values: many exactly equal scores
        factors = np.round(factors).astype(np.float32)
        biases = np.zeros(n_items, np.float32)
    popularity = rng.pareto(1.2, n_items).astype(np.float32) if with_popularity else None
    return ItemMatrix(tuple(f"m{i}" for i in range(n_items)), factors, biases, 1, popularity)


def _assert_same_ranking(
    got: list[str],
    expected: list[object],
    matrix: ItemMatrix,
    vector: np.ndarray,
    blend: np.ndarray,
    watched: set[str],
) -> None:
    """``got`` is a top-k as good as ``expected``: equal, or different only between
    items whose scores are equal to within float32 rounding."""
    if got == expected:
        return
    scores = matrix.factors.astype(np.float64) @ vector.astype(np.float64)
    scores += matrix.biases.astype(np.float64) + blend
    index = {movie: i for i, movie in enumerate(matrix.movie_ids)}
    assert len(got) == len(expected) and not set(got) & watched
    tolerance = 1e-4 * (1 + np.abs(scores).max())
    got_scores = scores[[index[m] for m in got]]
    kth = scores[index[str(expected[-1])]]
    assert (np.diff(got_scores) <= tolerance).all()  # best first
    assert (got_scores >= kth - tolerance).all()  # nothing below the k-th
    allowed = {m for m, i in index.items() if m not in watched and scores[i] > kth + tolerance}
    assert allowed <= set(got)  # everything clearly above the k-th is in


@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(1, 3000),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
    with_popularity=st.booleans(),
    list_length=st.integers(0, 40),
    watched_share=st.floats(0, 1),
    weight=st.sampled_from([0.0, 0.5, 1.0]),
    cold=st.sampled_from([0.0, 3.0]),
    n_events=st.integers(0, 10**6),
)
def test_scorer_matches_ranking_table(
    n_items: int,
    k: int,
    seed: int,
    ties: bool,
    with_popularity: bool,
    list_length: int,
    watched_share: float,
    weight: float,
    cold: float,
    n_events: int,
) -> None:
    matrix = _matrix(n_items, k, seed, ties, with_popularity)
    popularity = matrix.popularity if matrix.popularity is not None else np.zeros(n_items)
    table = RankingTable(matrix.movie_ids, matrix.factors, matrix.biases, popularity, weight, cold)
    scorer = ModelScorer("v", matrix, weight, cold)
    rng = np.random.default_rng(seed + 1)
    vector = rng.standard_normal(k).astype(np.float32)
    if ties:
        vector = np.round(vector).astype(np.float32)
    watched = {m for m in matrix.movie_ids if rng.random() < watched_share} | {"not-a-movie"}
    expected = table.recommend(vector, n_events, watched, list_length)
    got = scorer.recommend(vector, frozenset(watched), list_length, n_events)
    if ties:  # integer-valued products: every path computes the same floats
        assert got == expected
    blend = blend_weight(n_events, weight, cold) * popularity_log_scores(popularity).astype(float)
    _assert_same_ranking(got, expected, matrix, vector, blend, watched)
    # The scorer's buffers are reused: a second user is not affected by the first.
    again = scorer.recommend(vector, frozenset(), list_length, 0)
    blend = blend_weight(0, weight, cold) * popularity_log_scores(popularity).astype(float)
    _assert_same_ranking(
        again, table.recommend(vector, 0, (), list_length), matrix, vector, blend, set()
    )


@settings(max_examples=150, deadline=None)
@given(
    n_items=st.integers(1, 3000),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
    with_popularity=st.booleans(),
    list_length=st.integers(0, 40),
    users=st.integers(1, 12),
    watched_share=st.floats(0, 1),
    weight=st.sampled_from([0.0, 0.5, 1.0]),
    cold=st.sampled_from([0.0, 3.0]),
)
def test_a_batch_gets_each_users_list(
    n_items: int,
    k: int,
    seed: int,
    ties: bool,
    with_popularity: bool,
    list_length: int,
    users: int,
    watched_share: float,
    weight: float,
    cold: float,
) -> None:
    matrix = _matrix(n_items, k, seed, ties, with_popularity)
    popularity = matrix.popularity if matrix.popularity is not None else np.zeros(n_items)
    table = RankingTable(matrix.movie_ids, matrix.factors, matrix.biases, popularity, weight, cold)
    scorer = ModelScorer("v", matrix, weight, cold)
    rng = np.random.default_rng(seed + 1)
    vectors, watched, events = [], [], []
    for _ in range(users):
        vector = rng.standard_normal(k).astype(np.float32)
        if ties:
            vector = np.round(vector).astype(np.float32)
        kind = rng.random()
        if kind < 0.1:
            vector = np.ones(k + 1, np.float32)  # does not fit the matrix
        elif kind < 0.2:
            vector[0] = np.nan
        vectors.append(vector)
        watched.append(
            frozenset({m for m in matrix.movie_ids if rng.random() < watched_share} | {"x"})
        )
        events.append(int(rng.integers(0, 50)))
    lists = scorer.recommend_many(vectors, watched, list_length, events)
    assert len(lists) == users
    for vector, seen, n_events, got in zip(vectors, watched, events, lists, strict=True):
        if vector.shape != (k,) or not np.isfinite(vector).all():
            assert isinstance(got, ScoringError)
            continue
        assert isinstance(got, list)
        expected = table.recommend(vector, n_events, seen, list_length)
        blend = blend_weight(n_events, weight, cold) * popularity_log_scores(popularity)
        _assert_same_ranking(got, expected, matrix, vector, blend.astype(float), set(seen))


def test_a_large_batch_is_scored_in_parts_with_the_same_lists() -> None:
    matrix = _matrix(2_000, 8, 5, False, True)
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, 0.1, 1.0
    )
    scorer = ModelScorer("v", matrix, 0.1, 1.0)
    rng = np.random.default_rng(9)
    vectors = list(rng.standard_normal((150, 8)).astype(np.float32))
    watched = [frozenset(f"m{i}" for i in rng.integers(0, 2_000, 30)) for _ in range(150)]
    events = [int(n) for n in rng.integers(0, 20, 150)]
    lists = scorer.recommend_many(vectors, watched, 20, events)
    for vector, seen, n_events, got in zip(vectors, watched, events, lists, strict=True):
        expected = table.recommend(vector, n_events, seen, 20)
        blend = blend_weight(n_events, 0.1, 1.0) * popularity_log_scores(matrix.popularity)
        assert isinstance(got, list)
        _assert_same_ranking(got, expected, matrix, vector, blend.astype(float), set(seen))
    # Whatever the batch before it left in the buffers, a user's list stays the same.
    assert scorer.recommend_many(vectors[:5], watched[:5], 20, events[:5]) == lists[:5]


def _with_side_columns(matrix: ItemMatrix, side: int, kinds: int, seed: int) -> ItemMatrix:
    """The matrix with ``side`` genre-like columns appended: ``kinds`` distinct rows."""
    rng = np.random.default_rng(seed)
    rows = (rng.random((kinds, side)) < 0.3).astype(np.float32) * 2.0
    tails = rows[rng.integers(0, kinds, len(matrix.movie_ids))]
    factors = np.hstack([matrix.factors * 0.3, tails]).astype(np.float32)
    return ItemMatrix(matrix.movie_ids, factors, matrix.biases, 1, matrix.popularity)


@settings(max_examples=150, deadline=None)
@given(
    n_items=st.integers(1, 3000),
    k=st.integers(1, 10),
    side=st.integers(1, 6),
    kinds=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
    list_length=st.integers(0, 40),
    watched_share=st.floats(0, 1),
    weight=st.sampled_from([0.0, 0.1, 1.0]),
    cold=st.sampled_from([0.0, 1.0]),
    n_events=st.integers(0, 100),
)
def test_the_side_column_bound_keeps_the_lists(
    n_items: int,
    k: int,
    side: int,
    kinds: int,
    seed: int,
    ties: bool,
    list_length: int,
    watched_share: float,
    weight: float,
    cold: float,
    n_events: int,
) -> None:
    matrix = _with_side_columns(_matrix(n_items, k, seed, ties, True), side, kinds, seed)
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, weight, cold
    )
    scorer = ModelScorer("v", matrix, weight, cold, side_columns=side)
    rng = np.random.default_rng(seed + 2)
    vector = rng.standard_normal(k + side).astype(np.float32)
    if ties:
        vector = np.round(vector).astype(np.float32)
    watched = {m for m in matrix.movie_ids if rng.random() < watched_share} | {"x"}
    expected = table.recommend(vector, n_events, watched, list_length)
    got = scorer.recommend(vector, frozenset(watched), list_length, n_events)
    blend = blend_weight(n_events, weight, cold) * popularity_log_scores(matrix.popularity)
    _assert_same_ranking(got, expected, matrix, vector, blend.astype(float), watched)


def test_the_side_column_bound_scores_a_fraction_of_a_realistic_catalog() -> None:
    # Tastes in 32 learned dimensions plus 20 genre columns of a few hundred
    # combinations, the model's own blend (0.1 over 1 event): the bound of the whole
    # vector rules out almost nothing there, the split bound nearly everything.
    rng = np.random.default_rng(4)
    n_items, latent = 27_000, 32
    popularity = rng.pareto(1.1, n_items)
    base = ItemMatrix(
        tuple(f"m{i}" for i in range(n_items)),
        (rng.standard_normal((n_items, latent)) * 0.1).astype(np.float32),
        (0.3 * np.log1p(popularity)).astype(np.float32),
        1,
        popularity.astype(np.float32),
    )
    matrix = _with_side_columns(base, 20, 400, 4)
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, 0.1, 1.0
    )
    split = ModelScorer("v", matrix, 0.1, 1.0, side_columns=20)
    whole = ModelScorer("v", matrix, 0.1, 1.0)
    assert split._pruning is not None and whole._pruning is not None
    assert split._pruning.side_columns == 20 and whole._pruning.side_columns == 0
    within_a_twentieth = whole_within = 0
    for _ in range(30):
        vector = rng.standard_normal(latent + 20).astype(np.float32) * 0.5
        events = int(rng.integers(0, 30))
        watched = frozenset(f"m{i}" for i in rng.integers(0, n_items, 20))
        expected = table.recommend(vector, events, watched, 20)
        assert split.recommend(vector, watched, 20, events) == expected
        weight = blend_weight(events, 0.1, 1.0)
        top = pruned_top(split._pruning, vector, weight, watched, 20, n_items // 20)
        within_a_twentieth += top is not None
        whole_top = pruned_top(whole._pruning, vector, weight, watched, 20, n_items // 20)
        whole_within += whole_top is not None
    assert within_a_twentieth >= 27 and whole_within <= 3, (within_a_twentieth, whole_within)


def test_side_columns_with_as_many_rows_as_items_are_not_split() -> None:
    matrix = _matrix(400, 6, 1, False, True)
    scorer = ModelScorer("v", matrix, 0.1, 1.0, side_columns=3)  # random: all distinct
    assert scorer._pruning is not None and scorer._pruning.side_columns == 0


def test_the_compiled_search_excludes_movies_by_their_keys() -> None:
    matrix = _matrix(300, 4, 0, False, True)
    factors = np.asarray(matrix.factors, np.float32)
    biases = np.asarray(matrix.biases, np.float32)
    log_popularity = np.zeros(300, np.float32)
    by_index = PruningIndex(factors, biases, log_popularity, 0, 0.0)
    by_id = PruningIndex(factors, biases, log_popularity, 0, 0.0, keys=matrix.movie_ids)
    vector = np.ones(4, np.float32)
    everything = pruned_top(by_index, vector, 0.0, [], 10, 300)
    assert everything is not None
    best = everything.tolist()
    ids = [matrix.movie_ids[i] for i in best[:3]]
    for index, excluded in ((by_index, best[:3]), (by_id, ids + ["not-in-the-catalog"])):
        top = pruned_top(index, vector, 0.0, excluded, 10, 300)
        assert top is not None
        assert top.tolist()[:7] == best[3:]
    # Keys are compared by hash, so two keys with one hash cannot both be told apart.
    assert hash(-1) == hash(-2)
    with pytest.raises(ValueError, match="same hash"):
        PruningIndex(factors[:2], biases[:2], log_popularity[:2], 0, 0.0, keys=[-1, -2])


def test_scorer_refuses_what_it_cannot_score() -> None:
    matrix = _matrix(100, 4, 0, False, True)
    scorer = ModelScorer("v", matrix)
    with pytest.raises(ScoringError):
        scorer.recommend(np.ones(5, np.float32), frozenset(), 20)
    with pytest.raises(ScoringError):
        scorer.recommend(np.array([1, np.nan, 0, 0], np.float32), frozenset(), 20)
    broken = ItemMatrix(matrix.movie_ids, matrix.factors * np.inf, matrix.biases, 2)
    with pytest.raises(ScoringError):
        ModelScorer("v", broken)


def test_popular_ids_follow_the_learners_popularity() -> None:
    matrix = ItemMatrix(
        ("a", "b", "c"),
        np.zeros((3, 2), np.float32),
        np.zeros(3, np.float32),
        1,
        np.array([1.0, 3.0, 1.0], np.float32),
    )
    assert ModelScorer("v", matrix).popular_ids(3) == ("b", "a", "c")


def test_popular_list_skips_watched_and_listed() -> None:
    popular = PopularList.of((f"p{i}" for i in range(30)), 20)
    assert popular.line == ",".join(f"p{i}" for i in range(20)).encode()
    assert popular.top(3, frozenset({"p0", "p2"}), {"p1"}) == ["p3", "p4", "p5"]
    assert popular.top(0) == [] and PopularList.empty(20).top(5) == []


def test_every_profile_has_one_segment() -> None:
    assert len(SEGMENTS) == 12
    for age in range(0, 120):
        for gender in ("M", "F", "m", "f "):
            assert segment_of(gender, age) in SEGMENTS
    assert segment_of("", 30) is None and segment_of("M", -3) is None


@pytest.mark.parametrize("cold", [0.0, 5.0])
def test_most_of_a_realistic_catalog_is_pruned_and_lists_are_unchanged(cold: float) -> None:
    # Tastes as mixtures of a few latent genres, Zipf-like popularity (as bench/serve.py).
    rng = np.random.default_rng(3)
    genres = rng.standard_normal((12, 32)) * 0.6
    factors = rng.dirichlet(np.full(12, 0.3), 27_000) @ genres
    factors += rng.standard_normal((27_000, 32)) * 0.1
    popularity = rng.pareto(1.1, 27_000)
    matrix = ItemMatrix(
        tuple(f"m{i}" for i in range(27_000)),
        factors.astype(np.float32),
        (0.3 * np.log1p(popularity)).astype(np.float32),
        1,
        popularity.astype(np.float32),
    )
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, 1.0, cold
    )
    scorer = ModelScorer("v", matrix, 1.0, cold)
    pruned = 0
    for user in range(50):
        vector = rng.dirichlet(np.full(12, 0.3)) @ genres + rng.standard_normal(32) * 0.1
        vector = vector.astype(np.float32)
        watched = frozenset(f"m{i}" for i in rng.integers(0, 27_000, 200))
        events = int(rng.integers(0, 100))
        expected = table.recommend(vector, events, watched, 20)
        assert scorer.recommend(vector, watched, 20, events) == expected, user
        weight = blend_weight(events, 1.0, cold)
        excluded = scorer.sorted_positions(watched)
        pruned += scorer._pruned_top(vector, weight, excluded, 20) is not None
    assert pruned >= 45


def test_pruning_gives_way_to_the_full_product_when_it_cannot_prune() -> None:
    # Random high-dimensional factors and flat popularity: no block can be skipped.
    matrix = _matrix(5_000, 32, 8, False, False)
    table = RankingTable(matrix.movie_ids, matrix.factors, matrix.biases, np.zeros(5_000), 1.0)
    scorer = ModelScorer("v", matrix, 1.0)
    rng = np.random.default_rng(1)
    vector = rng.standard_normal(32).astype(np.float32)
    assert scorer._pruned_top(vector, 1.0, [], 20) is None
    assert scorer._pruning is not None
    assert pruned_top(scorer._pruning, vector, 1.0, [], 20, 5_000 // 16) is None
    assert scorer.recommend(vector, frozenset(), 20) == table.recommend(vector, 0, (), 20)
    # After a trial of users for whom the compiled bound gave up, it is no longer tried.
    for _ in range(70):
        vector = rng.standard_normal(32).astype(np.float32)
        assert scorer.recommend(vector, frozenset(), 20) == table.recommend(vector, 0, (), 20)
    assert scorer._pruning is None
