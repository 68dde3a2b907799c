"""Wire formats of the ``reelfeed.events`` and ``reelfeed.rejected`` topics.

Events travel as compact JSON arrays whose first element names the kind::

    ["w", time_us, user_id, movie_id, minute]
    ["r", time_us, user_id, movie_id, rating]
    ["q", time_us, user_id, server, status, [movie_id, ...], error_or_null, response_ms]

JSON keeps the topic readable with any Kafka tool, and orjson makes it as fast as a binary
format here; the round trip is exact (integers stay integers, floats use the shortest
representation that reads back to the same value). A new kind gets a new tag, so old
readers fail loudly on it instead of misreading it. Decoding checks the shape and the
types, not the parser's rules (those were applied before the event was written).

Refused lines travel as one JSON object each, for people and dashboards to read::

    {"line": ..., "reason": ..., "detail": ..., "topic": ..., "partition": ...,
     "offset": ..., "time": <microseconds since the epoch>}

``line`` is the line as text. A line that is not valid UTF-8 (it may be, being noise) is
written with U+FFFD in place of the bad bytes, and the exact bytes are added in base64
under ``line_base64``: readable in the common case, lossless in every case.
"""

from __future__ import annotations

import base64
import math

import orjson

from stream.events import Event, RateEvent, RecommendationEvent, Rejected, WatchEvent

__all__ = [
    "EventDecodeError",
    "decode_event",
    "describe_line",
    "encode_event",
    "encode_rejected",
    "event_key",
]

_WATCH = "w"
_RATE = "r"
_RECOMMENDATION = "q"


class EventDecodeError(ValueError):
    """A ``reelfeed.events`` message that is not an encoded event."""


def encode_event(event: Event) -> bytes:
    """Encode an event for ``reelfeed.events``.

    Integers must fit in 64 bits and ``response_ms`` must be finite, as they are in every
    event the parser makes; anything else raises (``TypeError`` or ``ValueError``).

    Examples
    --------
    >>> encode_event(WatchEvent(1698218457000000, 135941, "interstellar+2014", 134))
    b'["w",1698218457000000,135941,"interstellar+2014",134]'
    """
    if isinstance(event, WatchEvent):
        return orjson.dumps((_WATCH, event.time_us, event.user_id, event.movie_id, event.minute))
    if isinstance(event, RateEvent):
        return orjson.dumps((_RATE, event.time_us, event.user_id, event.movie_id, event.rating))
    if not math.isfinite(event.response_ms):
        # orjson would write null, and the round trip would break far from here.
        raise ValueError(f"response_ms must be finite, got {event.response_ms}")
    return orjson.dumps(
        (
            _RECOMMENDATION,
            event.time_us,
            event.user_id,
            event.server,
            event.status,
            event.movie_ids,
            event.error,
            event.response_ms,
        )
    )


def event_key(event: Event) -> bytes:
    """The Kafka key of an event: its user id, so one user's events stay in order.

    Examples
    --------
    >>> event_key(RateEvent(0, 42, "up+2009", 5))
    b'42'
    """
    return str(event.user_id).encode()


def _problem(data: bytes, what: str) -> EventDecodeError:
    shown = data if len(data) <= 80 else data[:80] + b"..."
    return EventDecodeError(f"not a reelfeed event ({what}): {shown!r}")


def _int(value: object, name: str, data: bytes) -> int:
    # bool is an int subclass; a JSON true is not a number here.
    if type(value) is not int:
        raise _problem(data, f"{name} must be an integer, got {type(value).__name__}")
    return value


def _str(value: object, name: str, data: bytes) -> str:
    if type(value) is not str:
        raise _problem(data, f"{name} must be a string, got {type(value).__name__}")
    return value


def _decode_recommendation(fields: list[object], data: bytes) -> RecommendationEvent:
    _, time_us, user_id, server, status, movie_ids, error, response_ms = fields
    if not isinstance(movie_ids, list):
        raise _problem(data, "movie_ids must be an array")
    if error is not None and type(error) is not str:
        raise _problem(data, "error must be a string or null")
    if isinstance(response_ms, bool) or not isinstance(response_ms, int | float):
        raise _problem(data, "response_ms must be a number")
    return RecommendationEvent(
        _int(time_us, "time_us", data),
        _int(user_id, "user_id", data),
        _str(server, "server", data),
        _int(status, "status", data),
        tuple(_str(movie_id, "movie_ids[]", data) for movie_id in movie_ids),
        error,
        float(response_ms),
    )


def decode_event(data: bytes) -> Event:
    """Decode a ``reelfeed.events`` message; raise ``EventDecodeError`` when it is not one.

    Examples
    --------
    >>> decode_event(b'["r",1695932423000000,42,"up+2009",4]')
    RateEvent(time_us=1695932423000000, user_id=42, movie_id='up+2009', rating=4)
    >>> decode_event(b'{"w": 1}')
    Traceback (most recent call last):
    ...
    stream.codec.EventDecodeError: not a reelfeed event (expected a JSON array): b'{"w": 1}'
    """
    try:
        fields = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _problem(data, f"invalid JSON: {exc}") from None
    if not isinstance(fields, list):
        raise _problem(data, "expected a JSON array")
    kind = fields[0] if fields else None
    if kind in (_WATCH, _RATE):
        if len(fields) != 5:
            raise _problem(data, f"kind {kind!r} has 5 fields, got {len(fields)}")
        time_us = _int(fields[1], "time_us", data)
        user_id = _int(fields[2], "user_id", data)
        movie_id = _str(fields[3], "movie_id", data)
        if kind == _WATCH:
            return WatchEvent(time_us, user_id, movie_id, _int(fields[4], "minute", data))
        return RateEvent(time_us, user_id, movie_id, _int(fields[4], "rating", data))
    if kind == _RECOMMENDATION:
        if len(fields) != 8:
            raise _problem(data, f"kind 'q' has 8 fields, got {len(fields)}")
        return _decode_recommendation(fields, data)
    raise _problem(data, f"unknown kind {kind!r}")


def describe_line(line: bytes) -> dict[str, str]:
    """A raw line as JSON fields: ``line`` as text, plus ``line_base64`` when not UTF-8.

    Examples
    --------
    >>> describe_line(b"2023-10-25T07:20:57,1,GET /rate/up+2009=9")
    {'line': '2023-10-25T07:20:57,1,GET /rate/up+2009=9'}
    >>> describe_line(b"bad \\xff byte")
    {'line': 'bad \\ufffd byte', 'line_base64': 'YmFkIP8gYnl0ZQ=='}
    """
    try:
        return {"line": line.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "line": line.decode("utf-8", errors="replace"),
            "line_base64": base64.b64encode(line).decode("ascii"),
        }


def encode_rejected(
    rejected: Rejected, topic: str, partition: int, offset: int, time_us: int
) -> bytes:
    """Encode a refused line for ``reelfeed.rejected``, with where it came from.

    Parameters
    ----------
    rejected
        The refusal, with the whole original line.
    topic, partition, offset
        The source message of the line.
    time_us
        When the source message was written (its Kafka timestamp), in microseconds.

    Examples
    --------
    >>> from stream.events import RejectReason
    >>> refused = Rejected(b"hello", RejectReason.UNPARSABLE, "expected <time>,...")
    >>> record = orjson.loads(encode_rejected(refused, "movielog7", 0, 12, 1698218457000000))
    >>> record["line"], record["reason"], record["offset"], record["time"]
    ('hello', 'unparsable', 12, 1698218457000000)
    """
    record: dict[str, object] = {
        **describe_line(rejected.line),
        "reason": rejected.reason.value,
        "detail": rejected.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "time": time_us,
    }
    return orjson.dumps(record)
