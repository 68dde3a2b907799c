"""From what a user did to a signed preference weight that a recommender learns from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeedbackWeights"]


@dataclass(frozen=True, slots=True)
class FeedbackWeights:
    """How watches and ratings become the signed weight ``y`` of ``learn_one``.

    A watch is a positive whose weight grows with the share of the movie watched; a rating
    at or above ``like_rating`` adds ``like``; a rating at or below ``dislike_rating``
    subtracts ``dislike`` (a net negative weight teaches the model to rank the movie
    *below* other movies); ratings in between add nothing.

    Parameters
    ----------
    watch
        Weight of a fully watched movie.
    like_rating
        Lowest rating that counts as liking the movie.
    like
        Weight added by a liked rating.
    dislike_rating
        Highest rating that counts as disliking the movie.
    dislike
        Weight subtracted by a disliked rating.

    Examples
    --------
    >>> weights = FeedbackWeights()
    >>> weights.watch_weight(0.5), weights.rating_weight(5), weights.rating_weight(1)
    (0.5, 0.5, -0.25)
    >>> weights.weight(watched_share=1.0, rating=4.0)
    1.5
    >>> weights.weight(rating=3)
    0.0
    >>> FeedbackWeights(like_rating=2, dislike_rating=3)
    Traceback (most recent call last):
    ...
    ValueError: dislike_rating (3) must be below like_rating (2)
    """

    watch: float = 1.0
    like_rating: float = 4.0
    like: float = 0.5
    dislike_rating: float = 2.0
    dislike: float = 0.25

    def __post_init__(self) -> None:
        for name in ("watch", "like", "dislike"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.dislike_rating < self.like_rating:
            raise ValueError(
                f"dislike_rating ({self.dislike_rating}) must be below "
                f"like_rating ({self.like_rating})"
            )

    def watch_weight(self, watched_share: float) -> float:
        """Weight of having watched ``watched_share`` (clipped to [0, 1]) of a movie."""
        return self.watch * min(max(watched_share, 0.0), 1.0)

    def rating_weight(self, rating: float) -> float:
        """Signed weight of a rating."""
        if rating >= self.like_rating:
            return self.like
        if rating <= self.dislike_rating:
            return -self.dislike
        return 0.0

    def weight(self, watched_share: float | None = None, rating: float | None = None) -> float:
        """Signed weight of an event that may carry a watch, a rating, or both."""
        total = 0.0
        if watched_share is not None:
            total += self.watch_weight(watched_share)
        if rating is not None:
            total += self.rating_weight(rating)
        return total
