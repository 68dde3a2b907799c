"""OnlineMF beyond the common contract: hyperparameters, deltas, micro-batches, feedback."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from river import optim

from online_model.feedback import FeedbackWeights
from online_model.mf import OnlineMF


def _stream(seed: int, n_events: int = 1500) -> list[tuple[int, str, float]]:
    rng = np.random.default_rng(seed)
    return [
        (int(rng.integers(50)), f"m{int(rng.integers(80))}", float(rng.choice([1.0, 1.5, -0.25])))
        for _ in range(n_events)
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_factors", 0),
        ("learning_rate", 0.0),
        ("user_learning_rate", -1.0),
        ("l2", -0.1),
        ("negatives", 0),
        ("popular_negatives", 1.5),
        ("negative_pool_size", 0),
        ("max_norm", 0.0),
        ("popularity_half_life", 0.0),
        ("popularity_weight", -1.0),
        ("cold_start_events", -1.0),
    ],
)
def test_a_bad_hyperparameter_is_named(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        OnlineMF(**{name: value})  # type: ignore[arg-type]


def test_hyperparameters_are_stored_under_their_names_and_clone() -> None:
    model = OnlineMF(n_factors=6, negatives=3, l2=0.02, seed=11)
    assert (model.n_factors, model.negatives, model.l2, model.seed) == (6, 3, 0.02, 11)
    for user, item, y in _stream(0, 100):
        model.learn_one(user, item, y)
    fresh = model.clone()
    assert fresh.n_factors == 6 and fresh.n_users == 0 and fresh.n_learned == 0


def test_learning_rates_may_be_river_schedulers() -> None:
    model = OnlineMF(
        n_factors=4,
        learning_rate=optim.schedulers.InverseScaling(0.1),
        user_learning_rate=optim.schedulers.Constant(0.2),
        seed=1,
    )
    for user, item, y in _stream(1, 300):
        model.learn_one(user, item, y)
    assert np.isfinite(model.item_matrix).all()


def test_pop_changes_reports_each_changed_row_once() -> None:
    model = OnlineMF(n_factors=4, negatives=2, seed=0)
    empty = model.pop_changes()
    assert empty.is_empty and empty.n_items == 0
    model.learn_one("u1", "a", 1.0)
    model.learn_one("u2", "b", 1.0)
    delta = model.pop_changes()
    assert delta.user_ids == ("u1", "u2")
    assert delta.item_ids == ("a", "b")
    assert delta.item_indices.tolist() == [0, 1]
    assert delta.user_event_counts.tolist() == [1, 1]
    assert delta.user_vectors.shape == (2, 4) and delta.user_vectors.dtype == np.float32
    assert delta.item_vectors.shape == (2, 4) and delta.item_biases.shape == (2,)
    np.testing.assert_array_equal(delta.user_vectors[0], model.user_vector("u1"))
    np.testing.assert_array_equal(delta.item_vectors, model.item_matrix)
    assert model.pop_changes().is_empty

    model.learn_one("u2", "c", 1.0)
    delta = model.pop_changes()
    assert delta.user_ids == ("u2",)
    assert "c" in delta.item_ids and delta.n_items == 3
    # Sampled negatives moved too, and only rows that exist are reported.
    assert set(delta.item_indices.tolist()) <= {0, 1, 2}


def test_deltas_replayed_onto_arrays_rebuild_the_model_state() -> None:
    model = OnlineMF(n_factors=4, negatives=3, seed=2)
    users: dict[object, np.ndarray] = {}
    items = np.zeros((0, 4), dtype=np.float32)
    for start in range(0, 1500, 100):
        for user, item, y in _stream(2)[start : start + 100]:
            model.learn_one(user, item, y)
        delta = model.pop_changes()
        grown = np.zeros((delta.n_items, 4), dtype=np.float32)
        grown[: items.shape[0]] = items
        items = grown
        items[delta.item_indices] = delta.item_vectors
        users.update(zip(delta.user_ids, delta.user_vectors, strict=True))
    np.testing.assert_array_equal(items, model.item_matrix)
    for user_id, vector in users.items():
        np.testing.assert_array_equal(vector, model.user_vector(user_id))


def test_a_popularity_rescale_marks_every_item() -> None:
    model = OnlineMF(n_factors=2, negatives=1, popularity_half_life=1.0, seed=0)
    for step in range(10):
        model.learn_one("u", f"m{step}", 1.0)
    model.pop_changes()
    for _ in range(400):  # the decay scale doubles each event: it must rescale
        model.learn_one("v", "m0", 1.0)
    delta = model.pop_changes()
    assert delta.popularity_rescaled
    assert delta.item_ids == tuple(f"m{step}" for step in range(10))
    assert np.isfinite(model.item_popularity).all()
    assert model.item_popularity.argmax() == 0


def test_learn_many_learns_the_same_kind_of_model() -> None:
    events = _stream(3, 3000)
    one = OnlineMF(n_factors=8, negatives=4, seed=3)
    many = OnlineMF(n_factors=8, negatives=4, seed=3)
    for user, item, y in events:
        one.learn_one(user, item, y)
    for start in range(0, len(events), 250):
        batch = events[start : start + 250]
        many.learn_many([e[0] for e in batch], [e[1] for e in batch], [e[2] for e in batch])
    assert many.n_learned == one.n_learned == len(events)
    assert many.item_ids == one.item_ids
    for user in (0, 10, 49):
        assert many.user_events(user) == one.user_events(user)
    np.testing.assert_allclose(many.item_popularity, one.item_popularity, rtol=1e-9)
    assert np.isfinite(many.item_matrix).all()
    # Norms are capped the same way.
    assert np.linalg.norm(many.item_matrix, axis=1).max() <= many.max_norm + 1e-4


def test_learn_many_checks_lengths_and_accepts_an_empty_batch() -> None:
    model = OnlineMF(seed=0)
    with pytest.raises(ValueError, match="same length"):
        model.learn_many(["u"], ["a", "b"], [1.0, 1.0])
    model.learn_many([], [], [])
    assert model.n_learned == 0


def test_a_negative_weight_pushes_an_item_down() -> None:
    def rank_of_target(dislikes: int) -> int:
        model = OnlineMF(n_factors=8, negatives=4, popularity_weight=0.0, seed=4)
        for user, item, y in _stream(4, 2000):
            model.learn_one(user, item, abs(y))
        for _ in range(dislikes):
            model.learn_one(7, "m3", -1.0)
        return model.recommend(7, k=80).index("m3")

    assert rank_of_target(20) > rank_of_target(0)


def test_zero_weight_registers_without_learning() -> None:
    model = OnlineMF(n_factors=4, seed=0)
    model.learn_one("u", "a", 0.0)
    assert model.n_items == 1 and model.user_events("u") == 1
    assert model.item_popularity.tolist() == [0.0]
    vector = model.user_vector("u")
    assert vector is not None
    assert math.isclose(model.predict_one("u", "a"), float(vector @ model.item_matrix[0]))


def test_predict_one_never_inserts_unknown_ids() -> None:
    model = OnlineMF(n_factors=4, seed=0)
    model.learn_one("u", "a", 1.0)
    assert model.predict_one("nobody", "nothing") == 0.0
    assert model.predict_one("nobody", "a") == pytest.approx(float(model.item_biases[0]))
    assert model.n_users == 1 and model.n_items == 1
    assert model.rank("u", {"a", "nothing"})[0] in {"a", "nothing"}


def test_exported_arrays_are_read_only_views() -> None:
    model = OnlineMF(n_factors=4, seed=0)
    model.learn_one("u", "a", 1.0)
    with pytest.raises(ValueError):
        model.item_matrix[0, 0] = 1.0
    vector = model.user_vector("u")
    assert vector is not None
    vector[:] = 99.0  # a copy: the model is untouched
    assert model.user_vector("u")[0] != 99.0  # type: ignore[index]
    assert model.user_vector("nobody") is None and model.user_events("nobody") == 0


def test_pair_accuracy_rises_on_learnable_data() -> None:
    model = OnlineMF(n_factors=8, negatives=4, seed=0)
    for _ in range(30):
        for user in range(20):
            for item in range(5):
                model.learn_one(user, f"g{user % 4}m{item}", 1.0)
    assert model.pair_accuracy.get() > 0.7


def test_feedback_weights_are_a_hyperparameter() -> None:
    weights = FeedbackWeights(watch=2.0, like=1.0, dislike=1.0)
    model = OnlineMF(feedback=weights)
    assert model.feedback is weights
    assert model.feedback.weight(watched_share=0.5, rating=5) == 2.0
    assert pickle.loads(pickle.dumps(model)).feedback == weights
