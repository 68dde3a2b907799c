"""Popularity counts and recency-decayed popularity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online_model.popularity import DecayedPopularity, Popularity


def test_counts_positive_feedback_only() -> None:
    model = Popularity()
    for item, y in [("a", 1.0), ("b", 1.0), ("b", 1.0), ("c", -1.0), ("c", 0.0)]:
        model.learn_one(0, item, y)
    assert model.item_ids == ["a", "b", "c"]
    assert model.popularity.tolist() == [1.0, 2.0, 0.0]
    assert model.recommend(1, k=3) == ["b", "a", "c"]


def test_ties_go_to_the_item_seen_first() -> None:
    model = Popularity()
    for item in ["z", "y", "x"]:
        model.learn_one(0, item)
    assert model.recommend(0, k=3) == ["z", "y", "x"]


def test_decay_halves_an_event_every_half_life() -> None:
    model = DecayedPopularity(half_life=10.0)
    model.learn_one(0, "old")
    for _ in range(10):
        model.learn_one(0, "filler", 0.0)
    assert model.popularity[0] == pytest.approx(0.5)
    model.learn_one(0, "new")
    assert model.recommend(0, k=2) == ["new", "old"]


def test_recent_trend_beats_old_fame() -> None:
    plain, decayed = Popularity(), DecayedPopularity(half_life=20.0)
    stream = ["classic"] * 50 + ["trend"] * 30
    for item in stream:
        plain.learn_one(0, item)
        decayed.learn_one(0, item)
    assert plain.recommend(0, k=1) == ["classic"]
    assert decayed.recommend(0, k=1) == ["trend"]


def test_values_stay_exact_across_rescales() -> None:
    model = DecayedPopularity(half_life=1.0)  # the scale doubles every event
    for step in range(2000):
        model.learn_one(0, "a" if step % 2 else "b")
    popularity = model.popularity
    assert np.isfinite(popularity).all()
    # Rows: b (seen first), a. a was learned last: 1 + 1/4 + 1/16 + ... = 4/3; b: half.
    assert model.item_ids == ["b", "a"]
    assert popularity.tolist() == pytest.approx([2 / 3, 4 / 3])


@pytest.mark.parametrize("half_life", [math.inf, 7.0, 1.0])
def test_learn_many_equals_learn_one_in_a_loop(half_life: float) -> None:
    rng = np.random.default_rng(0)
    items = [f"m{int(rng.integers(30))}" for _ in range(3000)]
    weights = rng.choice([1.0, 0.5, -1.0], size=3000)
    one = Popularity() if math.isinf(half_life) else DecayedPopularity(half_life)
    many = Popularity() if math.isinf(half_life) else DecayedPopularity(half_life)
    for item, y in zip(items, weights, strict=True):
        one.learn_one(0, item, float(y))
    for start in range(0, 3000, 700):
        many.learn_many([0] * 700, items[start : start + 700], weights[start : start + 700])
    assert many.item_ids == one.item_ids
    np.testing.assert_allclose(many.popularity, one.popularity, rtol=1e-9)
    assert many.recommend(0, k=30) == one.recommend(0, k=30)


def test_learn_many_counts_one_per_event_by_default() -> None:
    model = Popularity()
    model.learn_many([1, 2, 3], ["a", "b", "a"])
    assert model.popularity.tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="one value per item"):
        model.learn_many([1], ["a"], [1.0, 2.0])


def test_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="half_life"):
        DecayedPopularity(half_life=0.0)
