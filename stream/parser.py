"""Parse and validate movielog lines: bytes in, a typed event or a reasoned refusal out.

The course stream has three kinds of line::

    <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg
    <time>,<userid>,GET /rate/<movieid>=<rating>
    <time>,<userid>,recommendation request <server>, status <code>, result: <recs>, <n> ms

What is accepted
----------------
- ``<time>`` is ``YYYY-MM-DDTHH:MM:SS`` (or a space instead of ``T``), read as UTC, with no
  fraction or exactly 3, 6 or 9 fractional digits; nanoseconds are truncated to
  microseconds. Years before 1970 are refused, so times are never negative.
- ``<userid>`` is ASCII digits, at most ``ParseContext.max_user_id``.
- Movie ids are opaque and kept as written. Allowed: ASCII letters and digits, ``+ _ - . *``
  and ``%XX`` escapes (``%3A``); at least one letter or digit; at most
  ``ParseContext.max_movie_id_length`` characters. Everything else (spaces, slashes,
  commas, ``=``, control characters, a lone ``%``) is refused. This covers every id of the
  course catalogs (``m*a*s*h+1970``, ``monsters_+inc.+2001``, ``ben-hur+1959``) and the
  URL-encoded and integer ids of other offerings.
- ``<recs>`` is comma-separated ids (with or without a space after each comma). When any
  piece is not a valid id, the whole text is the site's error text
  (``Connection refused: ...``, ``...TimeoutException: Request timeout to ... after 800 ms``)
  and is kept in ``RecommendationEvent.error``. The response time is ``56 ms``, ``56ms`` or
  a bare ``56``, with an optional decimal fraction.
- Trailing whitespace (``\\r\\n``) is ignored; anything else unexpected refuses the line.

Checks run in a fixed order and the first failure names the reason: size, encoding and
shape (``unparsable``), time, future time, user, then the fields of the line's kind. The
catalog is checked for watch and rate lines only: a recommendation lists what a server
answered, and an unknown id there is evidence about that server, not noise to drop.

``parse_line`` is a pure function. ``LineValidator`` adds the one stateful check, the
exact duplicate of a recent line, through a bounded ``DuplicateFilter``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache

from stream.events import (
    Event,
    RateEvent,
    RecommendationEvent,
    Rejected,
    RejectReason,
    WatchEvent,
)

__all__ = [
    "DEFAULT_DUPLICATE_CAPACITY",
    "DuplicateFilter",
    "LineValidator",
    "ParseContext",
    "format_event",
    "is_valid_movie_id",
    "parse_line",
]

#: How many recent valid lines ``LineValidator`` remembers to spot exact duplicates.
DEFAULT_DUPLICATE_CAPACITY = 100_000

_WATCH_PREFIX = "GET /data/m/"
_RATE_PREFIX = "GET /rate/"
_REC_PREFIX = "recommendation request "

# The first class excludes letters and digits, so matching is linear (no backtracking).
_MOVIE_ID = re.compile(r"[+_.*%-]*[A-Za-z0-9][A-Za-z0-9+_.*%-]*")
_PERCENT_ESCAPES = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_SERVER = re.compile(r"[A-Za-z0-9._-]{1,253}(?::[0-9]{1,5})?")
_SECONDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})")
_RATINGS = {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
_MAX_USER_DIGITS = 18  # int() of longer digit strings is slow, and no id is that long
_MAX_MINUTE_DIGITS = 6
_MAX_RESPONSE_TIME_CHARS = 40


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What a line is checked against; one context serves many lines.

    Parameters
    ----------
    max_user_id
        Largest acceptable user id (the course has about a million users).
    catalog
        Known movie ids; ``None`` accepts any well-formed id.
    runtime_minutes
        Runtime of a movie in minutes, as a mapping or a function (``None`` = unknown).
    minute_slack
        Minutes a watch may run past the known runtime (runtimes differ between sources).
    now_us
        Current time in microseconds since the epoch; ``None`` skips the future check.
    max_future_us
        How far past ``now_us`` a line's time may be (clock skew between hosts).
    max_movie_id_length
        Longest acceptable movie id, in characters.
    max_line_bytes
        Longest acceptable line, in bytes; longer lines are refused without a look.

    Examples
    --------
    >>> context = ParseContext(max_user_id=1000, runtime_minutes={"up+2009": 96})
    >>> context.runtime_of("up+2009"), context.runtime_of("alien+1979")
    (96, None)
    >>> ParseContext(minute_slack=-1)
    Traceback (most recent call last):
    ...
    ValueError: minute_slack must be >= 0, got -1
    """

    max_user_id: int = 10_000_000
    catalog: Container[str] | None = None
    runtime_minutes: Mapping[str, int] | Callable[[str], int | None] | None = None
    minute_slack: int = 10
    now_us: int | None = None
    max_future_us: int = 300_000_000
    max_movie_id_length: int = 256
    max_line_bytes: int = 65_536

    def __post_init__(self) -> None:
        for name in (
            "max_user_id",
            "minute_slack",
            "max_future_us",
            "max_movie_id_length",
            "max_line_bytes",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def runtime_of(self, movie_id: str) -> int | None:
        """The known runtime of ``movie_id`` in minutes, or ``None``."""
        lookup = self.runtime_minutes
        if lookup is None:
            return None
        if callable(lookup):
            return lookup(movie_id)
        return lookup.get(movie_id)


_DEFAULT_CONTEXT = ParseContext()


def is_valid_movie_id(movie_id: str, max_length: int = 256) -> bool:
    """Whether ``movie_id`` has the shape of a movie id (see the module docstring).

    Examples
    --------
    >>> [is_valid_movie_id(m) for m in ("m*a*s*h+1970", "star+wars%3A+1977", "1234")]
    [True, True, True]
    >>> [is_valid_movie_id(m) for m in ("", "a b", "a/b", "+", "50%+off")]
    [False, False, False, False, False]
    """
    if not 0 < len(movie_id) <= max_length or _MOVIE_ID.fullmatch(movie_id) is None:
        return False
    return "%" not in movie_id or _PERCENT_ESCAPES.fullmatch(movie_id) is not None


@lru_cache(maxsize=4096)
def _epoch_seconds(text: str) -> int | None:
    # Lines arrive in time order, so consecutive lines share their second: the cache
    # makes the calendar arithmetic nearly free.
    match = _SECONDS.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    if year < 1970:
        return None
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    return (moment - _EPOCH) // _ONE_SECOND


def _parse_time_us(text: str) -> int | None:
    length = len(text)
    if length == 19:
        fraction_us = 0
    elif length in (23, 26, 29) and text[19] == ".":
        digits = text[20:]
        if not (digits.isascii() and digits.isdigit()):
            return None
        fraction_us = int(digits[:6].ljust(6, "0"))
    else:
        return None
    seconds = _epoch_seconds(text[:19])
    if seconds is None:
        return None
    return seconds * 1_000_000 + fraction_us


def _parse_response_ms(text: str) -> float | None:
    value = text.strip()
    if value.endswith("ms"):
        value = value[:-2].rstrip()
    if not value or len(value) > _MAX_RESPONSE_TIME_CHARS or not value.isascii():
        return None
    whole, dot, fraction = value.partition(".")
    if not whole.isdigit() or (dot and not fraction.isdigit()):
        return None
    return float(value)


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _check_movie(line: bytes, movie_id: str, context: ParseContext) -> Rejected | None:
    if not is_valid_movie_id(movie_id, context.max_movie_id_length):
        return Rejected(line, RejectReason.BAD_MOVIE, f"malformed movie id {_short(movie_id)}")
    if context.catalog is not None and movie_id not in context.catalog:
        return Rejected(
            line, RejectReason.UNKNOWN_MOVIE, f"{_short(movie_id)} is not in the catalog"
        )
    return None


def _parse_watch(
    line: bytes, request: str, time_us: int, user_id: int, context: ParseContext
) -> WatchEvent | Rejected:
    path = request[len(_WATCH_PREFIX) :]
    if not path.endswith(".mpg"):
        return Rejected(line, RejectReason.UNPARSABLE, "watch request does not end in .mpg")
    movie_id, slash, minute_text = path[:-4].rpartition("/")
    if not slash:
        return Rejected(line, RejectReason.UNPARSABLE, "expected /data/m/<movieid>/<minute>.mpg")
    refused = _check_movie(line, movie_id, context)
    if refused is not None:
        return refused
    if not (
        minute_text.isascii() and minute_text.isdigit() and len(minute_text) <= _MAX_MINUTE_DIGITS
    ):
        return Rejected(
            line, RejectReason.BAD_MINUTE, f"minute {_short(minute_text)} is not a small integer"
        )
    minute = int(minute_text)
    runtime = context.runtime_of(movie_id)
    if runtime is not None and minute > runtime + context.minute_slack:
        return Rejected(
            line,
            RejectReason.BAD_MINUTE,
            f"minute {minute} is past the runtime {runtime} + {context.minute_slack}",
        )
    return WatchEvent(time_us, user_id, movie_id, minute)


def _parse_rate(
    line: bytes, request: str, time_us: int, user_id: int, context: ParseContext
) -> RateEvent | Rejected:
    movie_id, equals, rating_text = request[len(_RATE_PREFIX) :].rpartition("=")
    if not equals:
        return Rejected(line, RejectReason.UNPARSABLE, "expected /rate/<movieid>=<rating>")
    refused = _check_movie(line, movie_id, context)
    if refused is not None:
        return refused
    rating = _RATINGS.get(rating_text)
    if rating is None:
        return Rejected(
            line, RejectReason.BAD_RATING, f"rating {_short(rating_text)} is not an integer 1-5"
        )
    return RateEvent(time_us, user_id, movie_id, rating)


def _parse_recommendation(
    line: bytes, request: str, time_us: int, user_id: int, context: ParseContext
) -> RecommendationEvent | Rejected:
    server, sep, rest = request[len(_REC_PREFIX) :].partition(", status ")
    if not sep:
        return Rejected(line, RejectReason.UNPARSABLE, "expected ', status <code>'")
    if _SERVER.fullmatch(server) is None:
        return Rejected(line, RejectReason.UNPARSABLE, f"malformed server {_short(server)}")
    status_text, sep, result = rest.partition(", result:")
    if not sep:
        return Rejected(line, RejectReason.UNPARSABLE, "expected ', result: <recs>'")
    if not (status_text.isascii() and status_text.isdigit() and len(status_text) <= 3):
        return Rejected(line, RejectReason.BAD_STATUS, f"status {_short(status_text)}")
    status = int(status_text)
    if status != 0 and not 100 <= status <= 599:
        return Rejected(line, RejectReason.BAD_STATUS, f"status {status} is not an HTTP status")
    result_text, comma, time_text = result.rpartition(",")
    if not comma:
        return Rejected(line, RejectReason.BAD_RESPONSE_TIME, "no response time after the result")
    response_ms = _parse_response_ms(time_text)
    if response_ms is None:
        return Rejected(
            line, RejectReason.BAD_RESPONSE_TIME, f"response time {_short(time_text.strip())}"
        )
    result_text = result_text.strip()
    if not result_text:
        return RecommendationEvent(time_us, user_id, server, status, (), None, response_ms)
    movie_ids = tuple(piece.strip() for piece in result_text.split(","))
    max_length = context.max_movie_id_length
    if all(is_valid_movie_id(movie_id, max_length) for movie_id in movie_ids):
        return RecommendationEvent(time_us, user_id, server, status, movie_ids, None, response_ms)
    return RecommendationEvent(time_us, user_id, server, status, (), result_text, response_ms)


_KindParser = Callable[[bytes, str, int, int, ParseContext], Event | Rejected]
_KINDS: tuple[tuple[str, _KindParser], ...] = (
    (_WATCH_PREFIX, _parse_watch),
    (_RATE_PREFIX, _parse_rate),
    (_REC_PREFIX, _parse_recommendation),
)


def _kind_parser(request: str) -> _KindParser | None:
    for prefix, parse_kind in _KINDS:
        if request.startswith(prefix):
            return parse_kind
    return None


def parse_line(line: bytes, context: ParseContext = _DEFAULT_CONTEXT) -> Event | Rejected:
    """Turn one movielog line into an event, or say why it is refused; never raises.

    Parameters
    ----------
    line
        The raw Kafka message value.
    context
        Limits, catalog and clock to check against.

    Returns
    -------
    Event | Rejected
        A ``WatchEvent``, ``RateEvent`` or ``RecommendationEvent``; or ``Rejected`` with
        the whole original line, a ``RejectReason`` and a short detail.

    Examples
    --------
    >>> parse_line(b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg\\r\\n")
    WatchEvent(time_us=1698218457000000, user_id=135941, movie_id='interstellar+2014', minute=134)
    >>> parse_line(b"2023-09-28T20:20:23.5,303668,GET /rate/up+2009=4").reason
    <RejectReason.BAD_TIMESTAMP: 'bad_timestamp'>
    """
    if len(line) > context.max_line_bytes:
        return Rejected(
            line, RejectReason.UNPARSABLE, f"line is longer than {context.max_line_bytes} bytes"
        )
    try:
        text = line.rstrip().decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(line, RejectReason.UNPARSABLE, "not UTF-8")
    if not text:
        return Rejected(line, RejectReason.UNPARSABLE, "empty line")
    if not text.isprintable():
        return Rejected(line, RejectReason.UNPARSABLE, "control character inside the line")
    time_text, _, rest = text.partition(",")
    user_text, sep, request = rest.partition(",")
    if not sep:
        return Rejected(line, RejectReason.UNPARSABLE, "expected <time>,<userid>,<request>")
    parse_kind = _kind_parser(request)
    if parse_kind is None:
        return Rejected(line, RejectReason.UNPARSABLE, f"unknown request {_short(request)}")
    time_us = _parse_time_us(time_text)
    if time_us is None:
        return Rejected(line, RejectReason.BAD_TIMESTAMP, f"time {_short(time_text)}")
    if context.now_us is not None and time_us > context.now_us + context.max_future_us:
        return Rejected(
            line,
            RejectReason.FUTURE_TIMESTAMP,
            f"{(time_us - context.now_us) / 1e6:.0f} s ahead of now",
        )
    if not (user_text.isascii() and user_text.isdigit() and len(user_text) <= _MAX_USER_DIGITS):
        return Rejected(
            line,
            RejectReason.BAD_USER,
            f"user id {_short(user_text)} is not a non-negative integer",
        )
    user_id = int(user_text)
    if user_id > context.max_user_id:
        return Rejected(
            line, RejectReason.BAD_USER, f"user id {user_id} is above {context.max_user_id}"
        )
    return parse_kind(line, request, time_us, user_id, context)


def _format_time(time_us: int) -> str:
    seconds, micros = divmod(time_us, 1_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if micros == 0:
        return text
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}"
    return f"{text}.{micros:06d}"


def _format_response_ms(response_ms: float) -> str:
    if response_ms.is_integer():
        return f"{int(response_ms)} ms"
    # Positional notation of the shortest repr: exact when read back, never "1e-05".
    return f"{Decimal(repr(response_ms)):f} ms"


def format_event(event: Event) -> bytes:
    """Write an event back as a course line (no line terminator).

    Times get no fraction, 3 or 6 fractional digits, whichever is exact. A valid event
    (one that ``parse_line`` could have produced) parses back to an equal event.

    Examples
    --------
    >>> format_event(RateEvent(1695932423000000, 303668, "up+2009", 4))
    b'2023-09-28T20:20:23,303668,GET /rate/up+2009=4'
    >>> parse_line(format_event(WatchEvent(1_500, 7, "alien+1979", 3)))
    WatchEvent(time_us=1500, user_id=7, movie_id='alien+1979', minute=3)
    """
    head = f"{_format_time(event.time_us)},{event.user_id},"
    if isinstance(event, WatchEvent):
        return f"{head}GET /data/m/{event.movie_id}/{event.minute}.mpg".encode()
    if isinstance(event, RateEvent):
        return f"{head}GET /rate/{event.movie_id}={event.rating}".encode()
    result = event.error if event.error is not None else ", ".join(event.movie_ids)
    return (
        f"{head}recommendation request {event.server}, status {event.status}, "
        f"result: {result}, {_format_response_ms(event.response_ms)}"
    ).encode()


class DuplicateFilter:
    """A bounded memory of recent lines that answers "seen this exact line lately?".

    It keeps the hashes of the last ``capacity`` distinct lines it was shown (first in,
    first out). Python's 64-bit (SipHash) hash of the bytes makes a false duplicate about
    as likely as ``capacity / 2**64`` per line, negligible next to the noise it removes.
    Hashes are salted per process, so the memory cannot be saved: a restarted worker
    rebuilds it by showing it the lines that preceded its starting offset.

    Parameters
    ----------
    capacity
        How many lines to remember; 0 turns the filter off.

    Examples
    --------
    >>> duplicates = DuplicateFilter(capacity=2)
    >>> [duplicates.seen(line) for line in (b"a", b"b", b"a", b"c", b"a")]
    [False, False, True, False, False]
    >>> len(duplicates)
    2
    """

    __slots__ = ("_capacity", "_hashes", "_order")

    def __init__(self, capacity: int = DEFAULT_DUPLICATE_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._hashes: set[int] = set()
        self._order: deque[int] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._order)

    def seen(self, line: bytes) -> bool:
        """True when ``line`` is among the remembered ones; otherwise remember it."""
        if not self._capacity:
            return False
        key = hash(line)
        if key in self._hashes:
            return True
        self._hashes.add(key)
        self._order.append(key)
        if len(self._order) > self._capacity:
            self._hashes.discard(self._order.popleft())
        return False

    def clear(self) -> None:
        """Forget every line."""
        self._hashes.clear()
        self._order.clear()


class LineValidator:
    """``parse_line`` plus the duplicate check: the one object ingest and ``validate`` use.

    A line is first parsed and checked; only a valid line is compared with recent valid
    lines (trailing whitespace aside), so a refused line keeps its own reason and noise
    does not push real lines out of the memory.

    Parameters
    ----------
    context
        The parsing context; replace its clock with ``set_now``.
    duplicates
        The recent-lines memory (default: ``DEFAULT_DUPLICATE_CAPACITY`` lines).

    Examples
    --------
    >>> validator = LineValidator(ParseContext(max_user_id=1000))
    >>> line = b"2023-09-28T20:20:23,42,GET /rate/up+2009=4"
    >>> validator.validate(line)
    RateEvent(time_us=1695932423000000, user_id=42, movie_id='up+2009', rating=4)
    >>> validator.validate(line + b"\\r\\n").reason
    <RejectReason.DUPLICATE: 'duplicate'>
    """

    __slots__ = ("context", "duplicates")

    def __init__(
        self,
        context: ParseContext = _DEFAULT_CONTEXT,
        duplicates: DuplicateFilter | None = None,
    ) -> None:
        self.context = context
        self.duplicates = DuplicateFilter() if duplicates is None else duplicates

    def set_now(self, now_us: int | None) -> None:
        """Move the clock of the future-time check (call once per batch, not per line)."""
        self.context = replace(self.context, now_us=now_us)

    def validate(self, line: bytes) -> Event | Rejected:
        """Parse ``line`` and refuse it when it repeats a recent valid line."""
        result = parse_line(line, self.context)
        if isinstance(result, Rejected):
            return result
        if self.duplicates.seen(line.rstrip()):
            return Rejected(line, RejectReason.DUPLICATE, "same line as a recent one")
        return result
