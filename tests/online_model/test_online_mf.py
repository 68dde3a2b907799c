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
        ("genre_scale", 0.0),
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


def test_add_items_gives_new_items_rows_and_leaves_known_ones() -> None:
    model = OnlineMF(n_factors=4, seed=0)
    model.learn_one("u", "a", 1.0)
    known = model.item_matrix[0].copy()
    model.add_items(iter(["a", "b", "c", "b"]))
    assert model.item_ids == ["a", "b", "c"]
    assert np.array_equal(model.item_matrix[0], known)
    assert np.all(np.isfinite(model.item_matrix[1:])) and np.any(model.item_matrix[1:] != 0)
    assert model.item_popularity.tolist()[1:] == [0.0, 0.0]


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


# ---------------------------------------------------------------------- genre side features

_GENRES = {f"m{i}": ("Drama",) if i % 2 else ("Comedy", "Horror") for i in range(60)}


def _genre_stream(seed: int, n_events: int = 2000) -> list[tuple[int, str, float]]:
    """Users 0-19 watch dramas (odd movies), users 20-39 comedies (even ones)."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        user = int(rng.integers(40))
        movie = 2 * int(rng.integers(30)) + (1 if user < 20 else 0)
        events.append((user, f"m{movie}", 1.0))
    return events


def test_genre_columns_are_fixed_item_features_and_learned_user_affinities() -> None:
    model = OnlineMF(n_factors=4, negatives=4, item_genres=_GENRES, genre_scale=2.0, seed=0)
    assert model.genres == ("Comedy", "Drama", "Horror")
    assert model.n_dimensions == 7
    for user, item, y in _genre_stream(0, 300):
        model.learn_one(user, item, y)
    model.learn_one(99, "unlisted", 1.0)
    rows = {item: row for row, item in enumerate(model.item_ids)}
    genre_part = model.item_matrix[:, 4:]
    np.testing.assert_allclose(genre_part[rows["m1"]], [0.0, 2.0, 0.0])
    np.testing.assert_allclose(genre_part[rows["m2"]], [math.sqrt(2.0), 0.0, math.sqrt(2.0)])
    np.testing.assert_array_equal(genre_part[rows["unlisted"]], [0.0, 0.0, 0.0])
    # The learned part moved and stays capped; the genre part is what it was.
    assert np.linalg.norm(model.item_matrix[:, :4], axis=1).max() <= model.max_norm + 1e-4
    vector = model.user_vector(99)
    assert vector is not None and vector.shape == (7,)
    assert model.ranking_table().item_matrix.shape == (model.n_items, 7)


def test_a_new_user_starts_without_genre_preference_and_learns_one_from_a_watch() -> None:
    model = OnlineMF(n_factors=4, negatives=4, item_genres=_GENRES, seed=1)
    for user, item, y in _genre_stream(1, 600):
        model.learn_one(user, item, y)
    model.learn_one("new", "m3", 1.0)  # a drama
    affinities = model.user_vector("new")
    assert affinities is not None
    comedy, drama, horror = affinities[4:]
    assert drama > 0.0 and drama > comedy and drama > horror


@pytest.mark.parametrize("batch", [False, True])
def test_genre_affinities_separate_the_two_audiences(batch: bool) -> None:
    model = OnlineMF(n_factors=4, negatives=4, item_genres=_GENRES, seed=2)
    events = _genre_stream(2)
    if batch:
        for start in range(0, len(events), 200):
            chunk = events[start : start + 200]
            model.learn_many([e[0] for e in chunk], [e[1] for e in chunk], [e[2] for e in chunk])
    else:
        for user, item, y in events:
            model.learn_one(user, item, y)
    drama = 4 + model.genres.index("Drama")
    vectors = [model.user_vector(user) for user in range(40)]
    affinity = np.array([vector[drama] for vector in vectors if vector is not None])
    assert affinity[:20].min() > affinity[20:].max()
    # Three events of a drama watcher are enough for a list of dramas.
    for movie in ("m1", "m5", "m7"):
        model.learn_one("late", movie, 1.0)
    listed = model.recommend("late", k=10, exclude=["m1", "m5", "m7"])
    assert sum(int(str(movie)[1:]) % 2 for movie in listed) >= 8


def test_a_model_with_genres_pickles_and_clones() -> None:
    model = OnlineMF(n_factors=4, item_genres=_GENRES, seed=3)
    for user, item, y in _genre_stream(3, 200):
        model.learn_one(user, item, y)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.recommend(0, k=5) == model.recommend(0, k=5)
    fresh = model.clone()
    assert fresh.genres == model.genres and fresh.n_items == 0
