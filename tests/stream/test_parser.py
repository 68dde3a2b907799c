"""The movielog parser: real lines, every accepted variant, every reason to refuse, fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import (
    Event,
    RateEvent,
    RecommendationEvent,
    Rejected,
    RejectReason,
    WatchEvent,
)
from stream.parser import (
    DuplicateFilter,
    LineValidator,
    ParseContext,
    format_event,
    is_valid_movie_id,
    parse_line,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RAW = SHARED_DATA / "course" / "raw"

T = "2023-10-25T07:20:57"
T_US = 1698218457 * 1_000_000
SERVER = "17645-team07.isri.cmu.edu:8082"
REC = f"{T},5,recommendation request {SERVER}, status 200, result: "
MAX_TIME_US = 253402300799999999  # 9999-12-31T23:59:59.999999

# Lines as the course stream writes them, for mutation.
REALISTIC_LINES = [
    b"2023-10-25T07:20:57,135941,GET /data/m/interstellar+2014/134.mpg",
    b"2023-09-28T20:20:29,186590,GET /rate/home+among+strangers_+a+stranger+among+his+own+1974=5",
    b"2023-10-25T07:20:57.389,226993,recommendation request fall2023-comp585-4.cs.mcgill.ca:8082,"
    b" status 200, result: pulp+fiction+1994, whiplash+2014, up+2009, 351 ms",
    b"2020-10-23T14:32:43.149,23,recommendation request fall2020-comp598-1.cs.mcgill.ca:8082,"
    b" status 0, result: Connection refused: fall2020-comp598-1.cs.mcgill.ca/132.206.51.156:8082,"
    b" 1369 ms",
    b"2025-10-17T01:33:45.122692921,227244,GET /data/m/star+wars%3A+a+new+hope+1977/3.mpg\r\n",
]


def _raw_lines(name: str) -> list[bytes]:
    if not RAW.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return (RAW / name).read_bytes().splitlines()


# --- real lines -------------------------------------------------------------------------


def test_every_real_rate_line_is_a_rate_event() -> None:
    events = [parse_line(line) for line in _raw_lines("rate_lines_2023.log")]
    assert len(events) == 31
    assert all(isinstance(event, RateEvent) for event in events), events
    assert events[0] == RateEvent(
        1695932423 * 1_000_000, 303668, "how+to+train+your+dragon+2+2014", 4
    )


def test_every_real_watch_and_request_line_is_accepted() -> None:
    events = [parse_line(line) for line in _raw_lines("watch_and_request_lines_2023.log")]
    kinds = [type(event).__name__ for event in events]
    assert kinds.count("WatchEvent") == 17
    assert kinds.count("RecommendationEvent") == 1
    assert len(events) == 18


def test_the_real_recommendation_line_in_detail() -> None:
    lines = _raw_lines("watch_and_request_lines_2023.log")
    (request,) = [parse_line(line) for line in lines if b"recommendation request" in line]
    assert isinstance(request, RecommendationEvent)
    assert request.time_us == T_US + 389_000
    assert request.user_id == 226993
    assert request.server == "fall2023-comp585-4.cs.mcgill.ca:8082"
    assert request.status == 200
    assert len(request.movie_ids) == 20
    assert request.movie_ids[0] == "the+lord+of+the+rings+the+two+towers+2002"
    assert request.movie_ids[-1] == "harry+potter+and+the+order+of+the+phoenix+2007"
    assert request.error is None
    assert request.response_ms == 351.0


def test_real_lines_format_back_to_themselves() -> None:
    for line in _raw_lines("rate_lines_2023.log") + _raw_lines("watch_and_request_lines_2023.log"):
        event = parse_line(line)
        assert not isinstance(event, Rejected)
        assert format_event(event) == line


# --- accepted variants ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_text", "time_us"),
    [
        (T, T_US),
        (f"{T}.389", T_US + 389_000),
        (f"{T}.000001", T_US + 1),
        (f"{T}.123456", T_US + 123_456),
        (f"{T}.122692921", T_US + 122_692),  # nanoseconds are truncated
        ("2023-10-25 07:20:57", T_US),
        ("2024-02-29T00:00:00", 1709164800 * 1_000_000),
        ("1970-01-01T00:00:00", 0),
    ],
)
def test_accepted_timestamps(time_text: str, time_us: int) -> None:
    event = parse_line(f"{time_text},1,GET /rate/up+2009=4".encode())
    assert event == RateEvent(time_us, 1, "up+2009", 4)


@pytest.mark.parametrize(
    "movie_id",
    [
        "the+godfather+1972",
        "monsters_+inc.+2001",
        "ben-hur+1959",
        "m*a*s*h+1970",
        "star+wars%3A+a+new+hope+1977",
        "star+wars%3a+1977",
        "the+story+",  # no year
        "a++b+1999",  # dropped symbol
        "12345",  # integer ids of one offering
        "X",
    ],
)
def test_accepted_movie_ids_are_kept_as_written(movie_id: str) -> None:
    watch = parse_line(f"{T},1,GET /data/m/{movie_id}/0.mpg".encode())
    rate = parse_line(f"{T},1,GET /rate/{movie_id}=1".encode())
    assert watch == WatchEvent(T_US, 1, movie_id, 0)
    assert rate == RateEvent(T_US, 1, movie_id, 1)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"  ", b"\t\r\n", b" \n"])
def test_trailing_whitespace_is_ignored(ending: bytes) -> None:
    event = parse_line(f"{T},7,GET /data/m/up+2009/5.mpg".encode() + ending)
    assert event == WatchEvent(T_US, 7, "up+2009", 5)


def test_user_ids_at_the_limits() -> None:
    context = ParseContext(max_user_id=1000)
    assert parse_line(f"{T},0,GET /rate/up+2009=5".encode(), context) == RateEvent(
        T_US, 0, "up+2009", 5
    )
    assert parse_line(f"{T},1000,GET /rate/up+2009=5".encode(), context) == RateEvent(
        T_US, 1000, "up+2009", 5
    )
    assert parse_line(f"{T},007,GET /rate/up+2009=5".encode(), context) == RateEvent(
        T_US, 7, "up+2009", 5
    )


@pytest.mark.parametrize(
    ("result", "movie_ids", "error", "response_ms"),
    [
        ("a+1999, b+2000, 56 ms", ("a+1999", "b+2000"), None, 56.0),
        ("a+1999, b+2000, 56", ("a+1999", "b+2000"), None, 56.0),
        ("a+1999, b+2000, 56ms", ("a+1999", "b+2000"), None, 56.0),
        ("a+1999, 56.25 ms", ("a+1999",), None, 56.25),
        ("a+1999,b+2000,c+2001, 819 ms", ("a+1999", "b+2000", "c+2001"), None, 819.0),
        ("123, 456, 7 ms", ("123", "456"), None, 7.0),
        (", 3 ms", (), None, 3.0),
        (
            "Connection refused: fall2020-comp598-1.cs.mcgill.ca/132.206.51.156:8082, 1369 ms",
            (),
            "Connection refused: fall2020-comp598-1.cs.mcgill.ca/132.206.51.156:8082",
            1369.0,
        ),
        (
            "java.util.concurrent.TimeoutException: Request timeout to "
            "17645-team17.isri.cmu.edu/128.2.205.118:8082 after 800 ms, 815 ms",
            (),
            "java.util.concurrent.TimeoutException: Request timeout to "
            "17645-team17.isri.cmu.edu/128.2.205.118:8082 after 800 ms",
            815.0,
        ),
        ("Unexpected response status: 502, 12 ms", (), "Unexpected response status: 502", 12.0),
        ("good+1999, not an id, 5 ms", (), "good+1999, not an id", 5.0),
    ],
)
def test_accepted_recommendation_results(
    result: str, movie_ids: tuple[str, ...], error: str | None, response_ms: float
) -> None:
    event = parse_line(f"{REC}{result}".encode())
    assert event == RecommendationEvent(T_US, 5, SERVER, 200, movie_ids, error, response_ms)


@pytest.mark.parametrize("status", [0, 100, 200, 404, 502, 599])
def test_accepted_statuses(status: int) -> None:
    line = f"{T},5,recommendation request {SERVER}, status {status}, result: up+2009, 9 ms"
    event = parse_line(line.encode())
    assert isinstance(event, RecommendationEvent)
    assert event.status == status


def test_watch_within_runtime_and_slack_is_accepted() -> None:
    context = ParseContext(runtime_minutes={"up+2009": 96}, minute_slack=4)
    for minute in (0, 96, 100):
        line = f"{T},1,GET /data/m/up+2009/{minute}.mpg".encode()
        assert parse_line(line, context) == WatchEvent(T_US, 1, "up+2009", minute)


def test_catalog_accepts_known_movies_and_leaves_recommendations_alone() -> None:
    context = ParseContext(catalog=frozenset({"up+2009"}))
    assert isinstance(parse_line(f"{T},1,GET /rate/up+2009=3".encode(), context), RateEvent)
    served = parse_line(f"{REC}not+in+catalog+2000, 5 ms".encode(), context)
    assert isinstance(served, RecommendationEvent)
    assert served.movie_ids == ("not+in+catalog+2000",)


def test_a_time_near_now_is_accepted() -> None:
    context = ParseContext(now_us=T_US, max_future_us=1_000_000)
    line = f"{T}.999999,1,GET /rate/up+2009=3".encode()
    assert isinstance(parse_line(line, context), RateEvent)


# --- refusals ---------------------------------------------------------------------------


def _reason(line: str | bytes, context: ParseContext | None = None) -> RejectReason:
    raw = line.encode() if isinstance(line, str) else line
    result = parse_line(raw) if context is None else parse_line(raw, context)
    assert isinstance(result, Rejected), result
    assert result.line == raw
    assert result.detail
    return result.reason


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b" \r\n",
        b"hello",
        b"2023-10-25T07:20:57,1",
        f"{T},1,POST /data/m/up+2009/1.mpg".encode(),
        f"{T},1,GET /data/m/up+2009/1.mp4".encode(),
        f"{T},1,GET /data/m/up+2009.mpg".encode(),
        f"{T},1,GET /rate/up+2009".encode(),
        f"{T},1,get /rate/up+2009=4".encode(),
        f"{T},GET /rate/up+2009=4".encode(),  # missing user field
        f"{T},1,recommendation request {SERVER}".encode(),
        f"{T},1,recommendation request {SERVER}, status 200".encode(),
        f"{T},1,recommendation request bad server, status 200, result: a, 5 ms".encode(),
        f"{T},1,recommendation request , status 200, result: a, 5 ms".encode(),
        f"{T},1,GET /rate/up+2009=4".encode() + b"\xff",
        f"{T},1,GET /rate/up\x00+2009=4".encode(),
        f"{T},1,GET /rate/up+2009=4\x1b[31m".encode(),
        f"{T},1,GET /data/m/".encode() + b"a" * 70_000 + b"/1.mpg",
    ],
)
def test_unparsable(line: bytes) -> None:
    assert _reason(line) is RejectReason.UNPARSABLE


@pytest.mark.parametrize(
    "time_text",
    [
        "",
        "2023-10-25",
        "2023-10-25T07:20",
        "2023-10-25T07:20:57Z",
        "2023-10-25T07:20:57+00:00",
        "2023-10-25T07:20:57.",
        "2023-10-25T07:20:57.12",
        "2023-10-25T07:20:57.1234",
        "2023-10-25T07:20:57.1234567",
        "2023-10-25T07:20:57.12345678",
        "2023-10-25T07:20:57.12a",
        "2023-10-25t07:20:57",
        "2023-10-25_07:20:57",
        "2023-13-01T00:00:00",
        "2023-02-29T00:00:00",
        "2023-04-31T00:00:00",
        "2023-10-25T24:00:00",
        "2023-10-25T07:60:00",
        "2023-10-25T07:20:60",
        "1969-12-31T23:59:59",
        "20231025T072057",
        "1698218457",
        "2023-10-25T07:20:57.\u0661\u0662\u0663",  # Arabic-Indic digits
        "\u0662023-10-25T07:20:57",
    ],
)
def test_bad_timestamp(time_text: str) -> None:
    assert _reason(f"{time_text},1,GET /rate/up+2009=4") is RejectReason.BAD_TIMESTAMP


def test_future_timestamp() -> None:
    context = ParseContext(now_us=T_US - 301_000_000, max_future_us=300_000_000)
    assert _reason(f"{T},1,GET /rate/up+2009=4", context) is RejectReason.FUTURE_TIMESTAMP
    no_clock = ParseContext(now_us=None)
    assert isinstance(parse_line(f"{T},1,GET /rate/up+2009=4".encode(), no_clock), RateEvent)


@pytest.mark.parametrize(
    "user", ["", "-1", "abc", "1.5", "+5", " 5", "10000001", "9" * 40, "\u0661\u0662"]
)
def test_bad_user(user: str) -> None:
    assert _reason(f"{T},{user},GET /rate/up+2009=4") is RejectReason.BAD_USER


def test_user_above_the_configured_maximum() -> None:
    context = ParseContext(max_user_id=1000)
    assert _reason(f"{T},1001,GET /rate/up+2009=4", context) is RejectReason.BAD_USER


@pytest.mark.parametrize(
    "movie_id",
    [
        "",
        "up 2009",
        "up/2009",
        "+",
        "+_-.",
        "up%2",
        "up%zz+2009",
        "50%+off",
        "caf\u00e9+2001",
        "up+2009;drop",
        "up'2009",
        "a" * 257,
    ],
)
def test_bad_movie(movie_id: str) -> None:
    assert _reason(f"{T},1,GET /data/m/{movie_id}/3.mpg") is RejectReason.BAD_MOVIE
    assert _reason(f"{T},1,GET /rate/{movie_id}=3") is RejectReason.BAD_MOVIE


def test_movie_id_length_is_configurable() -> None:
    context = ParseContext(max_movie_id_length=5)
    assert _reason(f"{T},1,GET /rate/abcdef=3", context) is RejectReason.BAD_MOVIE
    assert isinstance(parse_line(f"{T},1,GET /rate/abcde=3".encode(), context), RateEvent)


def test_unknown_movie() -> None:
    context = ParseContext(catalog=frozenset({"up+2009"}))
    assert _reason(f"{T},1,GET /data/m/alien+1979/3.mpg", context) is RejectReason.UNKNOWN_MOVIE
    assert _reason(f"{T},1,GET /rate/alien+1979=3", context) is RejectReason.UNKNOWN_MOVIE


@pytest.mark.parametrize("rating", ["", "0", "6", "4.5", "four", "-3", "44", " 4", "\u0664"])
def test_bad_rating(rating: str) -> None:
    assert _reason(f"{T},1,GET /rate/up+2009={rating}") is RejectReason.BAD_RATING


@pytest.mark.parametrize("minute", ["", "-1", "abc", "1.5", "1234567", "\u0661"])
def test_bad_minute(minute: str) -> None:
    assert _reason(f"{T},1,GET /data/m/up+2009/{minute}.mpg") is RejectReason.BAD_MINUTE


def test_minute_past_the_runtime_with_a_mapping_or_a_function() -> None:
    line = f"{T},1,GET /data/m/up+2009/101.mpg"
    by_mapping = ParseContext(runtime_minutes={"up+2009": 96}, minute_slack=4)
    by_function = ParseContext(
        runtime_minutes=lambda movie_id: 96 if movie_id == "up+2009" else None, minute_slack=4
    )
    assert _reason(line, by_mapping) is RejectReason.BAD_MINUTE
    assert _reason(line, by_function) is RejectReason.BAD_MINUTE
    unknown_runtime = f"{T},1,GET /data/m/alien+1979/101.mpg".encode()
    assert isinstance(parse_line(unknown_runtime, by_function), WatchEvent)


@pytest.mark.parametrize("status", ["", "abc", "1000", "42", "99", "600", "-1", "2OO"])
def test_bad_status(status: str) -> None:
    line = f"{T},5,recommendation request {SERVER}, status {status}, result: up+2009, 9 ms"
    assert _reason(line) is RejectReason.BAD_STATUS


@pytest.mark.parametrize(
    "result", ["up+2009", "up+2009, fast", "up+2009, ", "up+2009, -5 ms", "a, 5 s", "a, 1e3 ms"]
)
def test_bad_response_time(result: str) -> None:
    assert _reason(f"{REC}{result}") is RejectReason.BAD_RESPONSE_TIME


def test_context_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="max_user_id"):
        ParseContext(max_user_id=-1)


# --- duplicates -------------------------------------------------------------------------


def test_duplicate_filter_forgets_the_oldest_line() -> None:
    duplicates = DuplicateFilter(capacity=3)
    assert [duplicates.seen(line) for line in (b"a", b"b", b"c", b"a")] == [
        False,
        False,
        False,
        True,
    ]
    assert duplicates.seen(b"d") is False  # forgets "a"
    assert duplicates.seen(b"a") is False
    assert len(duplicates) == 3
    duplicates.clear()
    assert len(duplicates) == 0
    assert duplicates.seen(b"c") is False


def test_duplicate_filter_capacity() -> None:
    off = DuplicateFilter(capacity=0)
    assert [off.seen(b"a"), off.seen(b"a")] == [False, False]
    assert off.capacity == 0
    with pytest.raises(ValueError, match="capacity"):
        DuplicateFilter(capacity=-1)


def test_validator_refuses_a_repeated_line_whatever_its_ending() -> None:
    validator = LineValidator(duplicates=DuplicateFilter(capacity=10))
    line = f"{T},1,GET /data/m/up+2009/3.mpg".encode()
    assert isinstance(validator.validate(line + b"\n"), WatchEvent)
    repeated = validator.validate(line + b"\r\n")
    assert isinstance(repeated, Rejected)
    assert repeated.reason is RejectReason.DUPLICATE
    assert repeated.line == line + b"\r\n"
    assert isinstance(validator.validate(line.replace(b"/3.", b"/4.")), WatchEvent)


def test_validator_keeps_the_reason_of_a_repeated_bad_line() -> None:
    validator = LineValidator()
    line = f"{T},1,GET /rate/up+2009=9".encode()
    reasons = [validator.validate(line) for _ in range(2)]
    assert all(isinstance(r, Rejected) and r.reason is RejectReason.BAD_RATING for r in reasons)
    assert len(validator.duplicates) == 0


def test_validator_clock_moves_with_set_now() -> None:
    validator = LineValidator(ParseContext(max_future_us=0))
    line = f"{T},1,GET /rate/up+2009=4".encode()
    validator.set_now(T_US - 1)
    assert isinstance(validator.validate(line), Rejected)
    validator.set_now(T_US)
    assert isinstance(validator.validate(line), RateEvent)
    assert validator.context.now_us == T_US


# --- properties -------------------------------------------------------------------------

_id_pieces = st.one_of(
    st.sampled_from(list("abcdefghijklmnopqrstuvwxyzAZ0123456789+_-.*")),
    st.from_regex(r"%[0-9A-Fa-f]{2}", fullmatch=True),
)
movie_ids = st.one_of(
    st.lists(_id_pieces, min_size=1, max_size=30).map("".join).filter(is_valid_movie_id),
    st.integers(min_value=0, max_value=10**12).map(str),
)
times_us = st.integers(min_value=0, max_value=MAX_TIME_US)
user_ids = st.integers(min_value=0, max_value=10_000_000)
servers = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{1,5})?", fullmatch=True)
statuses = st.one_of(st.just(0), st.integers(min_value=100, max_value=599))
response_times = st.one_of(
    st.integers(min_value=0, max_value=10**7).map(float),
    st.floats(min_value=0.001, max_value=1e7),
)
_printable = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"), include_characters=" "
)
error_texts = (
    st.text(_printable, min_size=1, max_size=80)
    .map(str.strip)
    .filter(lambda text: text and not all(is_valid_movie_id(p.strip()) for p in text.split(",")))
)


@st.composite
def recommendation_events(draw: st.DrawFn) -> RecommendationEvent:
    error = draw(st.one_of(st.none(), error_texts))
    served = () if error is not None else tuple(draw(st.lists(movie_ids, max_size=20)))
    return RecommendationEvent(
        draw(times_us),
        draw(user_ids),
        draw(servers),
        draw(statuses),
        served,
        error,
        draw(response_times),
    )


valid_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        WatchEvent, times_us, user_ids, movie_ids, st.integers(min_value=0, max_value=999_999)
    ),
    st.builds(RateEvent, times_us, user_ids, movie_ids, st.integers(min_value=1, max_value=5)),
    recommendation_events(),
)


@given(valid_events)
@settings(max_examples=500)
def test_every_valid_event_formats_to_a_line_that_parses_back(event: Event) -> None:
    assert parse_line(format_event(event)) == event


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_parse_line_never_raises_on_bytes(line: bytes) -> None:
    result = parse_line(line)
    assert isinstance(result, WatchEvent | RateEvent | RecommendationEvent | Rejected)


@given(st.text(max_size=200))
@settings(max_examples=500)
def test_parse_line_never_raises_on_text(text: str) -> None:
    result = parse_line(text.encode("utf-8", errors="surrogatepass"))
    assert isinstance(result, WatchEvent | RateEvent | RecommendationEvent | Rejected)


_mutations = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=400),
        st.one_of(st.sampled_from(list(b",./:=+-% \r\n\x00\xff0123456789")), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(line: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(line)
    for kind, position, byte in mutations:
        at = position % (len(data) + 1)
        if kind == "insert":
            data.insert(at, byte)
        elif data and kind == "replace":
            data[min(at, len(data) - 1)] = byte
        elif data and kind == "delete":
            del data[min(at, len(data) - 1)]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@given(st.sampled_from(REALISTIC_LINES), _mutations)
@settings(max_examples=1000)
def test_mutated_real_lines_never_raise_and_accepted_ones_are_stable(
    line: bytes, mutations: list[tuple[str, int, int]]
) -> None:
    result = parse_line(_mutate(line, mutations))
    if not isinstance(result, Rejected):
        assert parse_line(format_event(result)) == result
