"""The wire formats of reelfeed.events and reelfeed.rejected."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import (
    EventDecodeError,
    decode_event,
    describe_line,
    encode_event,
    encode_rejected,
    event_key,
)
from stream.events import (
    Event,
    RateEvent,
    RecommendationEvent,
    Rejected,
    RejectReason,
    WatchEvent,
)
from stream.parser import parse_line

# The codec carries any typed event, not only the ones the parser makes: 64-bit integers,
# any text that UTF-8 can carry, any finite float.
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

any_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(WatchEvent, int64, int64, texts, int64),
    st.builds(RateEvent, int64, int64, texts, int64),
    st.builds(
        RecommendationEvent,
        int64,
        int64,
        texts,
        int64,
        st.lists(texts, max_size=25).map(tuple),
        st.one_of(st.none(), texts),
        finite_floats,
    ),
)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), int64, finite_floats, texts),
    lambda children: st.lists(children, max_size=9),
    max_leaves=6,
)


@given(any_events)
@settings(max_examples=500)
def test_events_round_trip_exactly(event: Event) -> None:
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert type(decoded) is type(event)
    if isinstance(event, RecommendationEvent):
        assert isinstance(decoded, RecommendationEvent)
        assert type(decoded.response_ms) is float


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_decoding_garbage_bytes_raises_only_event_decode_error(data: bytes) -> None:
    try:
        decode_event(data)
    except EventDecodeError:
        pass


@given(any_events, st.integers(min_value=0, max_value=7), json_values)
@settings(max_examples=300)
def test_an_event_with_one_field_replaced_decodes_or_raises_event_decode_error(
    event: Event, index: int, value: Any
) -> None:
    fields = orjson.loads(encode_event(event))
    fields[index % len(fields)] = value
    try:
        decoded = decode_event(orjson.dumps(fields))
    except EventDecodeError:
        return
    assert decode_event(encode_event(decoded)) == decoded


def test_real_shaped_events_encode_compactly() -> None:
    line = b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg"
    event = parse_line(line)
    assert isinstance(event, WatchEvent)
    assert encode_event(event) == b'["w",1698218457000000,135941,"interstellar+2014",134]'
    served = RecommendationEvent(1, 2, "s:8082", 200, ("a+1", "b+2"), None, 56.0)
    assert encode_event(served) == b'["q",1,2,"s:8082",200,["a+1","b+2"],null,56.0]'
    failed = RecommendationEvent(1, 2, "s:8082", 0, (), "Connection refused: s", 1369.5)
    assert decode_event(encode_event(failed)) == failed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[", "invalid JSON"),
        (b'{"kind": "w"}', "expected a JSON array"),
        (b'"w"', "expected a JSON array"),
        (b"[]", "unknown kind None"),
        (b'["x", 1, 2, "m", 3]', "unknown kind 'x'"),
        (b'["w", 1, 2, "m"]', "has 5 fields, got 4"),
        (b'["q", 1, 2, "s", 200, [], null]', "has 8 fields, got 7"),
        (b'["w", 1.5, 2, "m", 3]', "time_us must be an integer, got float"),
        (b'["w", 1, true, "m", 3]', "user_id must be an integer, got bool"),
        (b'["r", 1, 2, 7, 3]', "movie_id must be a string, got int"),
        (b'["r", 1, 2, "m", "3"]', "rating must be an integer, got str"),
        (b'["w", 1, 2, "m", null]', "minute must be an integer, got NoneType"),
        (b'["q", 1, 2, "s", 200, "a,b", null, 5]', "movie_ids must be an array"),
        (b'["q", 1, 2, "s", 200, [1], null, 5]', "movie_ids[] must be a string"),
        (b'["q", 1, 2, "s", 200, [], 3, 5]', "error must be a string or null"),
        (b'["q", 1, 2, "s", 200, [], null, "5"]', "response_ms must be a number"),
        (b'["q", 1, 2, "s", 200, [], null, false]', "response_ms must be a number"),
    ],
)
def test_decoding_errors_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=f"^not a reelfeed event .*{re.escape(message)}"):
        decode_event(data)


def test_decode_error_is_a_value_error_and_shortens_long_input() -> None:
    with pytest.raises(ValueError, match=r"\.\.\.'$") as raised:
        decode_event(b"x" * 1000)
    assert isinstance(raised.value, EventDecodeError)
    assert len(str(raised.value)) < 200


def test_integer_response_time_decodes_as_float() -> None:
    event = decode_event(b'["q", 1, 2, "s", 200, [], null, 5]')
    assert isinstance(event, RecommendationEvent)
    assert event.response_ms == 5.0
    assert type(event.response_ms) is float


def test_events_that_cannot_round_trip_are_refused_at_encoding() -> None:
    with pytest.raises(ValueError, match="response_ms must be finite"):
        encode_event(RecommendationEvent(1, 2, "s", 200, (), None, float("nan")))
    with pytest.raises(TypeError):
        encode_event(WatchEvent(2**64, 1, "m", 1))


def test_event_key_is_the_user_id() -> None:
    assert event_key(WatchEvent(1, 135941, "m", 1)) == b"135941"
    assert event_key(RecommendationEvent(1, 0, "s", 200, (), None, 1.0)) == b"0"


def test_rejected_utf8_line_is_text() -> None:
    refused = Rejected(b"2023-10-25T07:20:57,1,GET /rate/up+2009=9", RejectReason.BAD_RATING, "9")
    record = orjson.loads(encode_rejected(refused, "movielog7", 3, 1234, 1698218457000000))
    assert record == {
        "line": "2023-10-25T07:20:57,1,GET /rate/up+2009=9",
        "reason": "bad_rating",
        "detail": "9",
        "topic": "movielog7",
        "partition": 3,
        "offset": 1234,
        "time": 1698218457000000,
    }


def test_rejected_binary_line_keeps_its_exact_bytes() -> None:
    line = b"2023-10-25T07:20:57,1,GET \xff\xfe /rate\r\n"
    refused = Rejected(line, RejectReason.UNPARSABLE, "not UTF-8")
    record = orjson.loads(encode_rejected(refused, "movielog7", 0, 1, 2))
    assert record["line"] == "2023-10-25T07:20:57,1,GET \ufffd\ufffd /rate\r\n"
    assert base64.b64decode(record["line_base64"]) == line
    assert record["reason"] == "unparsable"


@given(st.binary(max_size=200))
def test_describe_line_is_lossless(line: bytes) -> None:
    fields = describe_line(line)
    if "line_base64" in fields:
        assert base64.b64decode(fields["line_base64"]) == line
    else:
        assert fields["line"].encode("utf-8") == line
    orjson.dumps(fields)  # always serialisable
