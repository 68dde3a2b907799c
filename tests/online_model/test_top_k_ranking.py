"""online_model.ranking: top-k with exclusions and ties, the blend, the serving table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from online_model.mf import OnlineMF
from online_model.ranking import (
    RankingTable,
    blend_weight,
    popularity_log_scores,
    score_items,
    top_k,
)


def test_best_first() -> None:
    assert top_k(np.array([0.3, 0.9, 0.1, 0.5]), 3).tolist() == [1, 3, 0]


def test_ties_go_to_the_lower_index() -> None:
    scores = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    assert top_k(scores.copy(), 2).tolist() == [1, 3]
    assert top_k(scores.copy(), 4).tolist() == [1, 3, 5, 0]
    assert top_k(np.zeros(1000), 3).tolist() == [0, 1, 2]


def test_exclusions_are_skipped_and_out_of_range_ones_ignored() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert top_k(scores, 3, exclude=[0, 2, 99, -1]).tolist() == [1, 3, 4]


def test_k_larger_than_the_catalog_returns_all_that_is_left() -> None:
    assert top_k(np.array([1.0, 3.0, 2.0]), 10).tolist() == [1, 2, 0]
    assert top_k(np.array([1.0, 3.0, 2.0]), 10, exclude=[1]).tolist() == [2, 0]


def test_empty_catalog_and_k_zero() -> None:
    assert top_k(np.zeros(0), 20).tolist() == []
    assert top_k(np.array([1.0]), 0).tolist() == []
    assert top_k(np.array([1.0, 2.0]), 5, exclude=[0, 1]).tolist() == []


def test_nan_scores_are_never_returned() -> None:
    assert top_k(np.array([np.nan, 1.0, np.nan, 0.5]), 4).tolist() == [1, 3]


def test_negative_k_is_refused() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.zeros(3), -1)


@given(
    st.lists(st.integers(-3, 3), min_size=0, max_size=60),
    st.integers(0, 70),
    st.sets(st.integers(0, 70)),
)
def test_matches_a_full_stable_sort(values: list[int], k: int, excluded: set[int]) -> None:
    scores = np.array(values, dtype=np.float64)
    expected = [
        index
        for index in sorted(range(len(values)), key=lambda index: (-values[index], index))
        if index not in excluded
    ][:k]
    assert top_k(scores, k, exclude=sorted(excluded)).tolist() == expected


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(3100, 5000),
    st.sampled_from([3, 50, 10_000]),
)
def test_large_catalogs_take_the_candidate_path_and_agree(
    seed: int, k: int, n_items: int, distinct_values: int
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, distinct_values, size=n_items).astype(np.float32)
    scores[rng.integers(0, n_items, size=5)] = np.nan
    excluded = rng.integers(0, n_items, size=int(rng.integers(0, 300)))
    reference = scores.astype(np.float64)
    reference[excluded] = -np.inf
    valid = np.flatnonzero(reference > -np.inf)  # drops NaN and excluded items
    expected = valid[np.lexsort((valid, -reference[valid]))][:k]
    assert top_k(scores, k, exclude=excluded).tolist() == expected.tolist()


def test_a_catalog_of_minus_infinity_and_nan_returns_what_is_finite() -> None:
    scores = np.full(10_000, -np.inf)
    scores[::997] = np.nan
    scores[[5, 9000]] = [1.0, 2.0]
    assert top_k(scores, 20).tolist() == [9000, 5]


def test_popularity_log_scores_are_scale_free() -> None:
    counts = np.array([10.0, 5.0, 1.0, 0.0])
    assert np.allclose(popularity_log_scores(counts), popularity_log_scores(counts * 1e90))
    assert popularity_log_scores(counts)[0] == 0.0
    assert popularity_log_scores(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_blend_weight_falls_to_the_floor() -> None:
    weights = [blend_weight(n, 0.5, 10.0) for n in (0, 1, 10, 100, 10_000)]
    assert weights == sorted(weights, reverse=True)
    assert weights[0] == pytest.approx(5.5)
    assert weights[-1] == pytest.approx(0.5, abs=1e-3)


def test_score_items_adds_biases_and_popularity() -> None:
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    scores = score_items(
        items,
        np.array([1.0, 2.0], dtype=np.float32),
        item_biases=np.array([0.5, 0.0, -1.0], dtype=np.float32),
        popularity_scores=np.array([0.0, -1.0, -2.0], dtype=np.float32),
        popularity_weight=0.5,
    )
    assert scores.tolist() == [1.5, 1.5, 1.0]
    assert score_items(items, None).tolist() == [0.0, 0.0, 0.0]


def _table(**overrides: object) -> RankingTable:
    fields: dict[str, object] = {
        "item_ids": ("a", "b", "c"),
        "item_matrix": np.eye(3, dtype=np.float32),
        "item_biases": np.zeros(3, dtype=np.float32),
        "popularity": np.array([3.0, 2.0, 1.0]),
    }
    fields.update(overrides)
    return RankingTable(**fields)  # type: ignore[arg-type]


def test_table_validates_shapes() -> None:
    with pytest.raises(ValueError, match="item_matrix"):
        _table(item_matrix=np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="popularity"):
        _table(popularity=np.zeros(4))


def test_table_ranks_unknown_users_by_popularity_and_skips_watched() -> None:
    table = _table()
    assert table.recommend(None, k=3) == ["a", "b", "c"]
    assert table.recommend(None, watched={"a", "zzz"}, k=3) == ["b", "c"]
    user = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    assert table.recommend(user, n_events=100, k=1) == ["c"]


def test_an_empty_table_recommends_nothing() -> None:
    table = RankingTable(
        item_ids=(),
        item_matrix=np.zeros((0, 4), dtype=np.float32),
        item_biases=np.zeros(0, dtype=np.float32),
        popularity=np.zeros(0),
    )
    assert table.recommend(np.ones(4, dtype=np.float32), k=20) == []
    assert table.recommend(None, k=20) == []


def test_the_exported_table_ranks_exactly_like_the_model() -> None:
    model = OnlineMF(n_factors=8, negatives=4, seed=5)
    rng = np.random.default_rng(5)
    for _ in range(2000):
        model.learn_one(int(rng.integers(40)), f"m{int(rng.integers(60))}", 1.0)
    table = model.ranking_table()
    for user in (0, 7, 39, "new"):
        watched = {f"m{index}" for index in range(0, 60, 7)}
        expected = model.recommend(user, k=20, exclude=watched)
        served = table.recommend(
            model.user_vector(user), n_events=model.user_events(user), watched=watched, k=20
        )
        assert served == expected


def test_the_server_can_import_ranking_without_river() -> None:
    code = (
        "import sys, online_model.ranking as r; "
        "assert 'river' not in sys.modules, sorted(m for m in sys.modules if 'river' in m); "
        "print(r.top_k.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "top_k"
