"""One contract, every recommender: ours, both popularity baselines and river's BiasedMF."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable

import numpy as np

from online_model.base import Recommender

Factory = Callable[[int], Recommender]

EVENTS: list[tuple[int, str, float]] = [
    (user, f"movie{(user * 7 + step * 3) % 23}", 1.0 + (step % 3 == 0))
    for step in range(12)
    for user in range(10)
]


def _learn(model: Recommender, events: list[tuple[int, str, float]] = EVENTS) -> None:
    for user, item, y in events:
        # river's convention: learn_one returns None (not self).
        assert model.learn_one(user, item, y) is None  # type: ignore[func-returns-value]


def _known_items(events: list[tuple[int, str, float]] = EVENTS) -> set[Hashable]:
    return {item for _, item, _ in events}


def test_follows_the_protocol(factory: Factory) -> None:
    assert isinstance(factory(0), Recommender)


def test_learns_and_ranks(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    ranked = model.recommend(3, k=10)
    assert len(ranked) == 10
    assert len(set(ranked)) == 10
    assert set(ranked) <= _known_items()


def test_excluded_items_are_never_recommended(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    everything = model.recommend(3, k=100)
    excluded = set(everything[::2])
    ranked = model.recommend(3, k=100, exclude=excluded | {"never-seen"})
    assert not excluded & set(ranked)
    assert set(ranked) == set(everything) - excluded


def test_asking_for_more_than_the_catalog_returns_the_catalog(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    assert sorted(map(str, model.recommend(1, k=1000))) == sorted(map(str, _known_items()))


def test_an_empty_model_recommends_nothing(factory: Factory) -> None:
    assert factory(0).recommend("anyone", k=20) == []


def test_an_unseen_user_gets_a_valid_list(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    ranked = model.recommend("a user never seen", k=20, exclude={"movie1"})
    assert len(ranked) == 20
    assert len(set(ranked)) == 20
    assert "movie1" not in ranked
    assert set(ranked) <= _known_items()
    # Asking must not change the model (river's predict_one would insert the user).
    assert model.recommend("a user never seen", k=20, exclude={"movie1"}) == ranked


def test_same_seed_same_recommendations(factory: Factory) -> None:
    first, second = factory(7), factory(7)
    _learn(first)
    _learn(second)
    for user in (0, 5, "unseen"):
        assert first.recommend(user, k=15) == second.recommend(user, k=15)


def test_a_pickled_model_ranks_and_learns_like_the_original(factory: Factory) -> None:
    model = factory(3)
    _learn(model, EVENTS[:60])
    copy = pickle.loads(pickle.dumps(model))
    assert copy.recommend(4, k=15) == model.recommend(4, k=15)
    _learn(model, EVENTS[60:])
    _learn(copy, EVENTS[60:])
    for user in (0, 4, 9, "unseen"):
        assert copy.recommend(user, k=15) == model.recommend(user, k=15)


def test_ranking_does_not_depend_on_the_exclusion_container(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    excluded = ["movie3", "movie5"]
    as_list = model.recommend(2, k=10, exclude=excluded)
    assert model.recommend(2, k=10, exclude=set(excluded)) == as_list
    assert model.recommend(2, k=10, exclude=tuple(excluded)) == as_list


def test_k_zero_gives_an_empty_list(factory: Factory) -> None:
    model = factory(0)
    _learn(model)
    assert model.recommend(1, k=0) == []


def test_scores_stay_finite_after_many_events(factory: Factory) -> None:
    model = factory(1)
    rng = np.random.default_rng(0)
    events = [
        (int(rng.integers(30)), f"movie{int(rng.integers(40))}", float(rng.choice([1.0, 5.0])))
        for _ in range(3000)
    ]
    _learn(model, events)
    ranked = model.recommend(2, k=40)
    assert len(ranked) == len({item for _, item, _ in events})
