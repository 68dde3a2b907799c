"""The prequential protocol of online_model.evaluation."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Any

import pytest

from online_model.evaluation import (
    Candidate,
    Interaction,
    feedback_target,
    interactions_from_tuples,
    prequential,
    rating_target,
    watch_count_target,
)
from online_model.feedback import FeedbackWeights
from online_model.popularity import Popularity


class Recorder:
    """Remembers what it was asked and taught; recommends a fixed list."""

    def __init__(self, answer: list[Hashable]) -> None:
        self.answer = answer
        self.asked: list[tuple[Hashable, frozenset[Hashable]]] = []
        self.learned: list[tuple[Hashable, Hashable, float]] = []

    def learn_one(
        self, user: Hashable, item: Hashable, y: float, x: dict[str, Any] | None = None
    ) -> None:
        self.learned.append((user, item, y))

    def recommend(
        self, user: Hashable, k: int = 20, exclude: Collection[Hashable] = ()
    ) -> list[Hashable]:
        self.asked.append((user, frozenset(exclude)))
        return [item for item in self.answer if item not in exclude][:k]


def _watch(t: float, user: int, item: str, share: float = 1.0) -> Interaction:
    return Interaction(t, user, item, watched_share=share)


def test_only_new_watches_of_known_users_are_scored() -> None:
    recorder = Recorder(["b", "c", "a"])
    stream = [
        _watch(0, 1, "a"),  # first event of user 1: not scored
        Interaction(1, 1, "b", rating=5.0),  # a rating: never scored
        _watch(2, 1, "b"),  # b was rated before: not new
        _watch(3, 1, "c"),  # scored, excluding a and b; hit at rank 1
        _watch(4, 1, "c", share=0.5),  # a repeat: not scored
        _watch(5, 2, "a"),  # first event of user 2
        _watch(6, 2, "z"),  # scored: miss
    ]
    report = prequential(stream, [Candidate("r", recorder, watch_count_target)], k=2)
    assert report.scored_events == 2
    assert recorder.asked == [(1, frozenset({"a", "b"})), (2, frozenset({"a"}))]
    score = report.models[0]
    assert score.recall == 0.5
    assert score.ndcg == pytest.approx(0.5)
    assert report.users == 2 and report.items == 4 and report.events == 7
    assert score.coverage == pytest.approx(2 / 4)  # c and b were recommended


def test_ndcg_discounts_by_rank() -> None:
    recorder = Recorder(["x", "y", "target"])
    stream = [_watch(0, 1, "first"), _watch(1, 1, "target")]
    score = prequential(stream, [Candidate("r", recorder, watch_count_target)], k=3).models[0]
    assert score.recall == 1.0
    assert score.ndcg == pytest.approx(0.5)  # 1 / log2(3 + 1)


def test_targets_see_the_new_share_of_a_repeated_watch() -> None:
    recorder = Recorder([])
    weights = FeedbackWeights(watch=1.0, like=0.5)
    stream = [
        _watch(0, 1, "a", share=0.25),
        _watch(1, 1, "a", share=0.75),
        _watch(2, 1, "a", share=0.5),  # nothing new
        Interaction(3, 1, "a", rating=5.0),
        Interaction(4, 1, "b", watched_share=1.0, rating=4.0),
    ]
    prequential(stream, [Candidate("r", recorder, feedback_target(weights))])
    assert recorder.learned == [(1, "a", 0.25), (1, "a", 0.5), (1, "a", 0.5), (1, "b", 1.5)]


def test_count_and_rating_targets() -> None:
    counter, rater = Recorder([]), Recorder([])
    stream = [
        _watch(0, 1, "a", share=0.1),
        _watch(1, 1, "a", share=0.9),
        Interaction(2, 1, "a", rating=2.0),
    ]
    prequential(
        stream,
        [Candidate("count", counter, watch_count_target), Candidate("rate", rater, rating_target)],
    )
    assert counter.learned == [(1, "a", 1.0)]
    assert rater.learned == [(1, "a", 2.0)]


def test_micro_batches_learn_late_but_score_the_same_events() -> None:
    stream = [_watch(t, t % 7, f"m{(t * 5) % 11}") for t in range(200)]
    one = prequential(stream, [Candidate("p", Popularity(), watch_count_target)])
    batched = prequential(stream, [Candidate("p", Popularity(), watch_count_target)], batch_size=50)
    assert batched.scored_events == one.scored_events
    assert batched.batch_size == 50


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__([])
        self.batches: list[int] = []

    def learn_many(self, users: list[Hashable], items: list[Hashable], ys: list[float]) -> None:
        self.batches.append(len(users))


def test_learn_many_is_used_in_batches() -> None:
    recorder = BatchRecorder()
    stream = [_watch(t, t % 5, f"m{t}") for t in range(100)]
    prequential(stream, [Candidate("r", recorder, watch_count_target)], batch_size=30)
    assert recorder.batches == [30, 30, 30, 10]
    assert recorder.learned == []


def test_curve_has_one_point_per_window() -> None:
    stream = [_watch(t, t % 3, f"m{t}") for t in range(100)]
    report = prequential(stream, [Candidate("p", Popularity(), watch_count_target)], window=10)
    assert len(report.models[0].curve) == report.scored_events // 10
    assert report.to_dict()["models"]["p"]["recall"] == 0.0


def test_progress_is_reported() -> None:
    seen: list[int] = []
    stream = [_watch(t, 1, f"m{t}") for t in range(25)]
    prequential(
        stream,
        [Candidate("p", Popularity(), watch_count_target)],
        progress=seen.append,
        progress_every=10,
    )
    assert seen == [10, 20, 25]


def test_bad_arguments_are_refused() -> None:
    candidate = Candidate("p", Popularity(), watch_count_target)
    with pytest.raises(ValueError, match="k"):
        prequential([], [candidate], k=0)
    with pytest.raises(ValueError, match="batch_size"):
        prequential([], [candidate], batch_size=0)
    with pytest.raises(ValueError, match="unique"):
        prequential([], [candidate, candidate])


def test_tuples_become_interactions() -> None:
    rows = [(1.0, 5, "heat", "watch", 0.5), (2.0, 5, "heat", "rate", 4)]
    assert list(interactions_from_tuples(rows)) == [
        Interaction(1.0, 5, "heat", watched_share=0.5),
        Interaction(2.0, 5, "heat", rating=4.0),
    ]
    with pytest.raises(ValueError, match="kind"):
        list(interactions_from_tuples([(1.0, 5, "heat", "like", 1.0)]))


def test_warmup_interactions_are_learned_but_not_scored() -> None:
    recorder = Recorder(["b"])
    stream = [_watch(0, 1, "a"), _watch(1, 1, "b"), _watch(2, 1, "c"), _watch(3, 1, "d")]
    report = prequential(stream, [Candidate("r", recorder, watch_count_target)], warmup=2)
    assert report.scored_events == 2
    assert len(recorder.learned) == 4
    assert "after the first 2 interactions" in report.protocol
    assert report.to_dict()["warmup"] == 2
    with pytest.raises(ValueError, match="warmup"):
        prequential([], [Candidate("r", recorder, watch_count_target)], warmup=-1)
