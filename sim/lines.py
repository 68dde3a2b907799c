"""The three movielog line kinds, written exactly as the course's streaming site writes them.

::

    <time>,<userid>,recommendation request <server>, status <code>, result: <recs>, <n> ms
    <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg
    <time>,<userid>,GET /rate/<movieid>=<rating>

The Fall 2023 stream (``data/course/raw``) stamps watch and rate lines to the second
(``2023-10-25T07:20:57``) and recommendation lines to the millisecond
(``2023-10-25T07:20:57.389``); both are UTC. Failed calls carry ``status 0`` and the Java
client's error text in ``result:`` (``java.net.ConnectException: Connection refused``,
``java.util.concurrent.TimeoutException: Request timeout to <host>/<ip>:<port> after 800 ms``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LineKind",
    "LogLine",
    "Record",
    "format_time",
    "rate_body",
    "recommendation_body",
    "watch_body",
]

LineKind = Literal["recommend", "watch", "rate"]

_ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"


def format_time(at: float, fraction: bool) -> str:
    """Format a Unix time as the stream does: ISO 8601 in UTC, optionally with milliseconds.

    Examples
    --------
    >>> format_time(1698218457.389, fraction=True)
    '2023-10-25T07:20:57.389'
    >>> format_time(1698218457.9996, fraction=False)
    '2023-10-25T07:20:57'
    """
    if not fraction:
        return time.strftime(_ISO_SECONDS, time.gmtime(int(at)))
    seconds, millis = divmod(int(round(at * 1000.0)), 1000)
    return time.strftime(_ISO_SECONDS, time.gmtime(seconds)) + f".{millis:03d}"


def watch_body(movie_id: str, minute: int) -> str:
    """``GET /data/m/<movieid>/<minute>.mpg``.

    Examples
    --------
    >>> watch_body("up+2009", 12)
    'GET /data/m/up+2009/12.mpg'
    """
    return f"GET /data/m/{movie_id}/{minute}.mpg"


def rate_body(movie_id: str, rating: int | str) -> str:
    """``GET /rate/<movieid>=<rating>``.

    Examples
    --------
    >>> rate_body("up+2009", 4)
    'GET /rate/up+2009=4'
    """
    return f"GET /rate/{movie_id}={rating}"


def recommendation_body(server: str, status: int, result: str, latency_ms: int) -> str:
    """``recommendation request <server>, status <code>, result: <result>, <n> ms``.

    Examples
    --------
    >>> recommendation_body("127.0.0.1:8082", 200, "up+2009, alien+1979", 12)
    'recommendation request 127.0.0.1:8082, status 200, result: up+2009, alien+1979, 12 ms'
    """
    return f"recommendation request {server}, status {status}, result: {result}, {latency_ms} ms"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the site's log before it is written: kind, time, user and request.

    Parameters
    ----------
    kind
        ``"recommend"``, ``"watch"`` or ``"rate"``.
    at
        Simulated Unix time of the event.
    user_id
        The acting user.
    body
        Everything after ``<time>,<userid>,``.
    fraction
        Whether the time carries milliseconds.
    actor
        Who produced it: ``"user"`` for the simulated population, else the attack's name.

    Examples
    --------
    >>> line = LogLine("rate", 1695932423.0, 42, rate_body("up+2009", 4), fraction=False)
    >>> line.render()
    b'2023-09-28T20:20:23,42,GET /rate/up+2009=4'
    >>> line.key
    b'42'
    """

    kind: LineKind
    at: float
    user_id: int
    body: str
    fraction: bool = False
    actor: str = "user"

    @property
    def key(self) -> bytes:
        """The Kafka key: the decimal user id."""
        return str(self.user_id).encode()

    @property
    def time_text(self) -> str:
        return format_time(self.at, self.fraction)

    def render(self) -> bytes:
        return f"{self.time_text},{self.user_id},{self.body}".encode()


@dataclass(frozen=True, slots=True)
class Record:
    """A message for the sink: Kafka key and value, the line kind and the fault injected.

    Examples
    --------
    >>> Record(b"42", b"2023-09-28T20:20:23,42,GET /rate/up+2009=4", "rate").fault is None
    True
    """

    key: bytes | None
    value: bytes
    kind: LineKind
    fault: str | None = None
    actor: str = "user"
