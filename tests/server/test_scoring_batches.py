"""Concurrent requests are scored together: one ``recommend_many`` per pass of the loop,
each user with the list it would get alone; a misfit or a departed caller affects no one
else."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

import numpy as np
import pytest

from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.scoring import ModelScorer, ScoringError
from server.service import Recommender, ServingState
from state import ItemMatrix, Routing
from tests.server.conftest import FakeModels, FakeProfiles, make_matrix

USERS = list(range(1, 13))


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[Recommender, FakeModels, list[list[int]]]:
    matrix = make_matrix(n_items=500, k=8)
    models = FakeModels()
    models.matrices["v1"] = matrix
    rng = np.random.default_rng(3)
    for user in USERS:
        models.vectors[("v1", user)] = rng.standard_normal(8).astype(np.float32)
        models.watched[user] = {f"movie+{m}" for m in rng.integers(0, 500, 10)}
        models.events[user] = user
    state = ServingState(20)
    state.routing = Routing(live="v1")
    scorer = ModelScorer("v1", matrix, 0.1, 1.0)
    scorer._pruning = None  # every list from the batch product
    state.set_models({"v1": scorer})
    batches: list[list[int]] = []
    original = ModelScorer.recommend_many

    def counted(
        self: ModelScorer,
        vectors: Sequence[np.ndarray],
        watched: Sequence[Collection[str]],
        k: int,
        n_events: Sequence[int],
    ) -> list[list[str] | ScoringError]:
        batches.append(list(n_events))  # n_events == user id here
        return original(self, vectors, watched, k, n_events)

    monkeypatch.setattr(ModelScorer, "recommend_many", counted)
    recommender = Recommender(state, models, FakeProfiles(), ServerMetrics(), ServerConfig())
    return recommender, models, batches


def _alone(models: FakeModels, scorer: ModelScorer, user: int) -> list[str]:
    vector = models.vectors[("v1", user)]
    return scorer.recommend(vector, frozenset(models.watched[user]), 20, user)


async def test_concurrent_requests_are_scored_in_one_batch(
    setup: tuple[Recommender, FakeModels, list[list[int]]],
) -> None:
    recommender, models, batches = setup
    answers = await asyncio.gather(*(recommender.recommend(user) for user in USERS))
    assert batches == [USERS]
    scorer = ModelScorer("v1", models.matrices["v1"], 0.1, 1.0)
    for user, answer in zip(USERS, answers, strict=True):
        assert answer.fallback is None
        assert answer.items == _alone(models, scorer, user), user
        assert answer.line == ",".join(answer.items).encode()
    # A lone request is a batch of its own, answered the same.
    alone = await recommender.recommend(5)
    assert batches[-1] == [5] and alone.items == answers[4].items


async def test_a_vector_that_does_not_fit_falls_back_alone(
    setup: tuple[Recommender, FakeModels, list[list[int]]],
) -> None:
    recommender, models, batches = setup
    models.vectors[("v1", 3)] = np.ones(9, np.float32)
    answers = await asyncio.gather(*(recommender.recommend(user) for user in USERS))
    assert len(batches) == 1
    assert [a.fallback for a in answers] == ["model_error" if user == 3 else None for user in USERS]
    assert len(answers[2].items) == 20  # popularity, less what the user watched


async def test_a_caller_that_leaves_is_not_scored(
    setup: tuple[Recommender, FakeModels, list[list[int]]],
) -> None:
    recommender, models, batches = setup
    tasks = [asyncio.ensure_future(recommender.recommend(user)) for user in USERS]
    await asyncio.sleep(0)  # every task now waits for its list
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert batches == [USERS[1:]]
    assert all(r.fallback is None for r in results[1:] if not isinstance(r, BaseException))


async def test_lists_the_compiled_bound_finds_skip_the_product(
    setup: tuple[Recommender, FakeModels, list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    recommender, models, batches = setup
    # Small learned factors and two genre-like side columns (as the learned model's):
    # the compiled bound finds the lists.
    plain = models.matrices["v1"]
    genres = np.array([[0, 0], [2, 0], [0, 2]], np.float32)[np.arange(500) % 3]
    matrix = ItemMatrix(
        plain.movie_ids,
        np.hstack([plain.factors[:, :6] * 0.1, genres]),
        plain.biases,
        plain.revision,
        plain.popularity,
    )
    scorer = ModelScorer("v1", matrix, 0.1, 1.0, side_columns=2)
    recommender._state.set_models({"v1": scorer})
    products: list[int] = []
    original = ModelScorer._batch_top

    def counted(self: ModelScorer, matrix: np.ndarray, *rest: object) -> list[list[int]]:
        products.append(matrix.shape[0])
        return original(self, matrix, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelScorer, "_batch_top", counted)
    answers = await asyncio.gather(*(recommender.recommend(user) for user in USERS))
    assert batches == [USERS] and products == []
    alone = ModelScorer("v1", matrix, 0.1, 1.0)
    alone._pruning = None
    for user, answer in zip(USERS, answers, strict=True):
        assert answer.fallback is None
        assert answer.items == _alone(models, alone, user), user


async def test_a_failing_batch_falls_back_for_each_of_its_requests(
    setup: tuple[Recommender, FakeModels, list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    recommender, _, _ = setup

    def broken(self: ModelScorer, *args: object) -> list[list[str] | ScoringError]:
        raise RuntimeError("a bug in scoring")

    monkeypatch.setattr(ModelScorer, "recommend_many", broken)
    results = await asyncio.gather(
        *(recommender.recommend(user) for user in USERS), return_exceptions=True
    )
    # Each request sees the error (the app answers it from popularity: internal_error).
    assert all(isinstance(r, RuntimeError) for r in results), results
