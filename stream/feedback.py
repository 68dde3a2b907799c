"""From the minute-by-minute stream to learning events: who liked what, how much.

A user who streams a two-hour movie sends about 120 watch lines. The learner must
learn that once, with a weight that grows with the share watched: a watch becomes up
to three learning events, when the user starts it, passes half of it and nearly
finishes it, whose weights add up to the weight of the share reached. A rating is one
learning event, positive for a high rating and negative for a low one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from online_model.feedback import FeedbackWeights
from stream.events import Event, RateEvent, WatchEvent

__all__ = ["LearningEvent", "WatchProgress"]

#: Shares of a movie at which a watch is learned (again): started, half, (nearly) all.
_MILESTONES = (0.0, 0.5, 0.9)
#: Weight of each milestone's share: starting a movie shows intent, finishing it taste.
_MILESTONE_SHARE = (0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class LearningEvent:
    user_id: int
    movie_id: str
    weight: float
    #: True for the first event of a (user, movie): a prequential test point.
    first_sight: bool


class WatchProgress:
    """Remembers, per user, the movies started and the last milestone each reached.

    The memory holds the ``capacity`` most recently active users (a user who comes
    back after being forgotten has new watches learned again, which only adds weight).

    Parameters
    ----------
    feedback
        How shares and ratings become weights.
    runtime_of
        Runtime of a movie in minutes, ``None`` when unknown.
    default_runtime
        Runtime assumed for movies of unknown runtime.
    capacity
        Users remembered.

    Examples
    --------
    >>> progress = WatchProgress(FeedbackWeights(), lambda movie: 100)
    >>> [e.weight for e in progress.learn(WatchEvent(0, 1, "up+2009", 0))]
    [0.2]
    >>> progress.learn(WatchEvent(1, 1, "up+2009", 1))  # same milestone: nothing new
    []
    >>> [round(e.weight, 3) for e in progress.learn(WatchEvent(2, 1, "up+2009", 95))]
    [0.3, 0.5]
    >>> [e.weight for e in progress.learn(RateEvent(3, 1, "up+2009", 1))]
    [-0.25]
    >>> sorted(progress.started(1))
    ['up+2009']
    """

    def __init__(
        self,
        feedback: FeedbackWeights,
        runtime_of: Callable[[str], int | None],
        default_runtime: int = 100,
        capacity: int = 500_000,
    ) -> None:
        if default_runtime <= 0:
            raise ValueError(f"default_runtime must be > 0, got {default_runtime}")
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.feedback = feedback
        self.runtime_of = runtime_of
        self.default_runtime = default_runtime
        self.capacity = capacity
        self._users: OrderedDict[int, dict[str, int]] = OrderedDict()

    def started(self, user_id: int) -> frozenset[str]:
        """Movies the user started, as far as this memory knows."""
        return frozenset(self._users.get(user_id, ()))

    def _movies_of(self, user_id: int) -> dict[str, int]:
        movies = self._users.get(user_id)
        if movies is None:
            movies = self._users[user_id] = {}
            if len(self._users) > self.capacity:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        return movies

    def learn(self, event: Event) -> list[LearningEvent]:
        """The learning events that ``event`` adds (often none)."""
        if isinstance(event, RateEvent):
            movies = self._movies_of(event.user_id)
            first = event.movie_id not in movies
            movies.setdefault(event.movie_id, -1)
            weight = self.feedback.rating_weight(event.rating)
            return [LearningEvent(event.user_id, event.movie_id, weight, first)]
        if not isinstance(event, WatchEvent):
            return []
        movies = self._movies_of(event.user_id)
        reached = movies.get(event.movie_id, -1)
        runtime = self.runtime_of(event.movie_id) or self.default_runtime
        share = event.minute / runtime
        milestone = max(i for i, start in enumerate(_MILESTONES) if share >= start)
        if milestone <= reached:
            return []
        first = event.movie_id not in movies
        movies[event.movie_id] = milestone
        events = []
        for step in range(reached + 1, milestone + 1):
            before = _MILESTONE_SHARE[step - 1] if step > 0 else 0.0
            weight = self.feedback.watch_weight(
                _MILESTONE_SHARE[step]
            ) - self.feedback.watch_weight(before)
            events.append(LearningEvent(event.user_id, event.movie_id, weight, first and step == 0))
        return events
