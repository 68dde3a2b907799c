"""Typed events of the movielog stream, and what becomes of a line that is refused.

Times are integer microseconds since the Unix epoch (UTC): exact, cheap to compare,
and the finest resolution worth keeping (the stream carries up to nanoseconds, which
no consumer needs). Movie ids are opaque strings, kept exactly as the stream wrote
them (``the+godfather+1972``, ``%3A``-encoded or integer ids alike).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Event",
    "RateEvent",
    "RecommendationEvent",
    "RejectReason",
    "Rejected",
    "WatchEvent",
]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """``GET /data/m/<movie_id>/<minute>.mpg``: the user streamed one minute of a movie."""

    time_us: int
    user_id: int
    movie_id: str
    minute: int


@dataclass(frozen=True, slots=True)
class RateEvent:
    """``GET /rate/<movie_id>=<rating>``: an explicit rating from 1 to 5."""

    time_us: int
    user_id: int
    movie_id: str
    rating: int


@dataclass(frozen=True, slots=True)
class RecommendationEvent:
    """``recommendation request <server>, status <code>, result: ..., <n> ms``.

    ``movie_ids`` holds the served list when the call succeeded; ``error`` holds the
    text the site wrote instead (``Connection refused: ...``, a timeout, a bad status).
    """

    time_us: int
    user_id: int
    server: str
    status: int
    movie_ids: tuple[str, ...]
    error: str | None
    response_ms: float


Event = WatchEvent | RateEvent | RecommendationEvent


class RejectReason(enum.StrEnum):
    """Why a line was refused; the value is the label used in metrics and reports."""

    UNPARSABLE = "unparsable"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    BAD_USER = "bad_user"
    BAD_MOVIE = "bad_movie"
    UNKNOWN_MOVIE = "unknown_movie"
    BAD_RATING = "bad_rating"
    BAD_MINUTE = "bad_minute"
    BAD_STATUS = "bad_status"
    BAD_RESPONSE_TIME = "bad_response_time"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused line, kept whole with the reason and a short human-readable detail."""

    line: bytes
    reason: RejectReason
    detail: str = ""
