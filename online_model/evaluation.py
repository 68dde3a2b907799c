"""Prequential (test-then-train) evaluation of several recommenders on one event stream.

Protocol (:data:`PROTOCOL` says the same in the JSON report):

1. Interactions are replayed in the order given (callers sort them by time).
2. An interaction that carries a watch is a *new watch* when the user had neither
   watched nor rated that movie before.
3. A new watch by a user with at least one earlier interaction, after the first
   ``warmup`` interactions, is *scored*: every model
   ranks ``k`` movies for the user, excluding every movie the user already watched or
   rated; a hit is the watched movie being in the list. With one relevant movie per
   scored event, Recall@k is the hit rate, and NDCG@k is ``1 / log2(1 + rank)`` for a hit
   at 1-based ``rank`` (0 for a miss).
4. Then every model learns the interaction, through its own *target*: the value it
   learns from (a signed preference weight, a count, a rating) or ``None`` to skip it.
   Watches repeat (one stream line per minute watched); a target sees the share of the
   movie watched *for the first time* by this interaction (its gain over the user's
   previous maximum), so that a movie counts once however it is split into lines.
5. Catalog coverage is the share of the movies seen in the stream that were recommended
   at least once.

With ``batch_size > 1`` models learn in micro-batches (``learn_many`` when they have it)
after every ``batch_size`` interactions, and score events with the model of the previous
batch, as a deployed learner does; the user histories used for exclusion stay exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from online_model.base import Recommender
from online_model.feedback import FeedbackWeights

__all__ = [
    "Candidate",
    "Interaction",
    "ModelScore",
    "PROTOCOL",
    "PrequentialReport",
    "feedback_target",
    "interactions_from_tuples",
    "prequential",
    "rating_target",
    "watch_count_target",
]

PROTOCOL = (
    "prequential test-then-train over interactions in time order; an interaction with a "
    "watch of a movie the user neither watched nor rated before, by a user with at least "
    "one earlier interaction, after the first {warmup} interactions, is scored: each "
    "model ranks top-{k} excluding every movie the user watched or rated before; "
    "Recall@{k} = hit rate (one relevant movie per scored event), NDCG@{k} = "
    "1/log2(1+rank) of the hit; then every model learns the interaction; coverage = "
    "share of the stream's movies recommended at least once"
)


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user action: a watch (``watched_share`` of the movie so far), a rating, or both.

    A MovieLens rating row is both: the user watched the movie (share 1.0) and rated it.
    """

    time: float
    user: Hashable
    item: Hashable
    watched_share: float | None = None
    rating: float | None = None


#: ``target(interaction, watched_gain, new_watch) -> value to learn, or None to skip``.
Target = Callable[[Interaction, float, bool], float | None]


def interactions_from_tuples(
    rows: Iterable[tuple[float, Hashable, Hashable, str, float]],
) -> Iterable[Interaction]:
    """``(time, user, movie, kind, value)`` tuples to interactions.

    ``kind`` is ``"watch"`` (``value``: share of the movie watched so far, in [0, 1]) or
    ``"rate"`` (``value``: the rating).

    Examples
    --------
    >>> list(interactions_from_tuples([(1.0, 7, "heat", "rate", 4)]))
    [Interaction(time=1.0, user=7, item='heat', watched_share=None, rating=4.0)]
    """
    for when, user, item, kind, value in rows:
        if kind == "watch":
            yield Interaction(when, user, item, watched_share=float(value))
        elif kind == "rate":
            yield Interaction(when, user, item, rating=float(value))
        else:
            raise ValueError(f"kind must be 'watch' or 'rate', got {kind!r}")


def feedback_target(weights: FeedbackWeights) -> Target:
    """Signed preference weight of the watched gain and the rating (for :class:`OnlineMF`)."""

    def target(interaction: Interaction, watched_gain: float, new_watch: bool) -> float | None:
        share = watched_gain if interaction.watched_share is not None else None
        weight = weights.weight(watched_share=share, rating=interaction.rating)
        return weight if weight != 0.0 else None

    return target


def watch_count_target(
    interaction: Interaction, watched_gain: float, new_watch: bool
) -> float | None:
    """1 for a new watch, nothing otherwise (for popularity counts and implicit ALS)."""
    return 1.0 if new_watch else None


def rating_target(interaction: Interaction, watched_gain: float, new_watch: bool) -> float | None:
    """The rating, if any (for rating regressors such as river's ``BiasedMF``)."""
    return interaction.rating


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model under evaluation, with the target it learns from."""

    name: str
    model: Recommender
    target: Target


@dataclass(frozen=True, slots=True)
class ModelScore:
    """Prequential figures of one model.

    ``curve`` holds, for consecutive windows of ``window`` scored events, the number of
    interactions replayed at the end of the window, and the window's Recall and NDCG.
    """

    name: str
    recall: float
    ndcg: float
    coverage: float
    recommended_items: int
    us_per_event: float
    learn_us_per_event: float
    rank_us_per_request: float
    curve: tuple[tuple[int, float, float], ...] = field(repr=False)

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {
            "name": self.name,
            "recall": round(self.recall, digits),
            "ndcg": round(self.ndcg, digits),
            "coverage": round(self.coverage, digits),
            "recommended_items": self.recommended_items,
            "us_per_event": round(self.us_per_event, 1),
            "learn_us_per_event": round(self.learn_us_per_event, 1),
            "rank_us_per_request": round(self.rank_us_per_request, 1),
        }


@dataclass(frozen=True, slots=True)
class PrequentialReport:
    """The result of one replay: the stream's figures and one :class:`ModelScore` per model."""

    k: int
    batch_size: int
    warmup: int
    events: int
    scored_events: int
    users: int
    items: int
    window: int
    models: tuple[ModelScore, ...]

    @property
    def protocol(self) -> str:
        return PROTOCOL.format(k=self.k, warmup=self.warmup)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "k": self.k,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "events": self.events,
            "scored_events": self.scored_events,
            "users": self.users,
            "items": self.items,
            "models": {score.name: score.to_dict() for score in self.models},
        }


class _Tally:
    """Running figures of one candidate."""

    __slots__ = (
        "hits",
        "gain",
        "window_hits",
        "window_gain",
        "recommended",
        "learn_ns",
        "rank_ns",
        "curve",
        "pending",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.gain = 0.0
        self.window_hits = 0
        self.window_gain = 0.0
        self.recommended: set[Hashable] = set()
        self.learn_ns = 0
        self.rank_ns = 0
        self.curve: list[tuple[int, float, float]] = []
        self.pending: tuple[list[Hashable], list[Hashable], list[float]] = ([], [], [])


def _learn_pending(model: Recommender, tally: _Tally) -> None:
    users, items, ys = tally.pending
    if not users:
        return
    started = time.perf_counter_ns()
    learn_many = getattr(model, "learn_many", None)
    if learn_many is not None and len(users) > 1:
        learn_many(users, items, ys)
    else:
        for user, item, y in zip(users, items, ys, strict=True):
            model.learn_one(user, item, y)
    tally.learn_ns += time.perf_counter_ns() - started
    tally.pending = ([], [], [])


def prequential(
    interactions: Iterable[Interaction],
    candidates: Sequence[Candidate],
    *,
    k: int = 20,
    batch_size: int = 1,
    window: int = 2000,
    warmup: int = 0,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
) -> PrequentialReport:
    """Replay ``interactions`` test-then-train over every candidate (see the module doc).

    Parameters
    ----------
    interactions
        Events in time order.
    candidates
        Models with their targets; names must be unique.
    k
        Length of the ranked lists.
    batch_size
        Learn every ``batch_size`` interactions (1: after each one).
    window
        Scored events per point of each model's curve.
    warmup
        Interactions at the start that are learned but never scored (e.g. the part of a
        stream that hyperparameters were tuned on).
    progress
        Called with the number of interactions replayed so far, every ``progress_every``.

    Examples
    --------
    >>> from online_model.popularity import Popularity
    >>> stream = [Interaction(t, user, item, watched_share=1.0) for t, (user, item) in
    ...           enumerate([(1, "a"), (2, "a"), (2, "b"), (1, "b"), (3, "b"), (3, "c")])]
    >>> report = prequential(stream, [Candidate("pop", Popularity(), watch_count_target)], k=1)
    >>> report.scored_events, report.models[0].recall, report.models[0].coverage
    (3, 0.3333333333333333, 0.6666666666666666)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")

    tallies = [_Tally() for _ in candidates]
    history: dict[Hashable, set[Hashable]] = {}
    best_share: dict[tuple[Hashable, Hashable], float] = {}
    items_seen: set[Hashable] = set()
    events = scored = 0
    perf_counter_ns = time.perf_counter_ns

    for interaction in interactions:
        user, item = interaction.user, interaction.item
        items_seen.add(item)
        user_history = history.get(user)
        new_watch = interaction.watched_share is not None and (
            user_history is None or item not in user_history
        )
        if new_watch and user_history and events >= warmup:
            scored += 1
            for candidate, tally in zip(candidates, tallies, strict=True):
                started = perf_counter_ns()
                ranked = candidate.model.recommend(user, k, user_history)
                tally.rank_ns += perf_counter_ns() - started
                tally.recommended.update(ranked)
                if item in ranked:
                    gain = 1.0 / math.log2(ranked.index(item) + 2)
                    tally.hits += 1
                    tally.window_hits += 1
                    tally.gain += gain
                    tally.window_gain += gain
                if scored % window == 0:
                    tally.curve.append(
                        (events + 1, tally.window_hits / window, tally.window_gain / window)
                    )
                    tally.window_hits, tally.window_gain = 0, 0.0

        watched_gain = 0.0
        if interaction.watched_share is not None:
            pair = (user, item)
            share = min(max(interaction.watched_share, 0.0), 1.0)
            previous = best_share.get(pair, 0.0)
            if share > previous:
                watched_gain = share - previous
                best_share[pair] = share
        if user_history is None:
            user_history = history[user] = set()
        user_history.add(item)

        events += 1
        for candidate, tally in zip(candidates, tallies, strict=True):
            y = candidate.target(interaction, watched_gain, new_watch)
            if y is None:
                continue
            users, items, ys = tally.pending
            users.append(user)
            items.append(item)
            ys.append(y)
        if events % batch_size == 0:
            for candidate, tally in zip(candidates, tallies, strict=True):
                _learn_pending(candidate.model, tally)
        if progress is not None and events % progress_every == 0:
            progress(events)

    for candidate, tally in zip(candidates, tallies, strict=True):
        _learn_pending(candidate.model, tally)
    if progress is not None and events % progress_every:
        progress(events)

    n_items = max(len(items_seen), 1)
    denominator = max(scored, 1)
    scores = tuple(
        ModelScore(
            name=candidate.name,
            recall=tally.hits / denominator,
            ndcg=tally.gain / denominator,
            coverage=len(tally.recommended & items_seen) / n_items,
            recommended_items=len(tally.recommended),
            us_per_event=(tally.learn_ns + tally.rank_ns) / 1e3 / max(events, 1),
            learn_us_per_event=tally.learn_ns / 1e3 / max(events, 1),
            rank_us_per_request=tally.rank_ns / 1e3 / denominator,
            curve=tuple(tally.curve),
        )
        for candidate, tally in zip(candidates, tallies, strict=True)
    )
    return PrequentialReport(
        k=k,
        batch_size=batch_size,
        warmup=warmup,
        events=events,
        scored_events=scored,
        users=len(history),
        items=len(items_seen),
        window=window,
        models=scores,
    )
