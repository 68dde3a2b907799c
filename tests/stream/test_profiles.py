"""ProfileLookup against a real in-process HTTP server playing the course user API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from state import WatchUpdate
from stream.parser import DuplicateFilter, LineValidator, ParseContext
from stream.processor import IngestProcessor
from stream.profiles import ProfileLookup
from tests.integration.workers import free_port
from tests.stream.test_processor import FakeFeatures, FakePublisher, source


class _CourseApi:
    """``/user/<id>``: a profile (odd ids F, even M, age 20 + id), except a 404 from
    1000, garbage for 13, a "not found" message for 14, a rate limit for 429, and 500
    while ``failing``; ``delay_s`` before each answer."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.failing = False
        self.requests: list[int] = []
        self.running = 0
        self.most_running = 0

    async def user(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        self.requests.append(user_id)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        if self.failing:
            return web.Response(status=500, text="internal error")
        if user_id == 429:
            return web.Response(status=429, text="slow down")
        if user_id == 13:
            return web.Response(text="not json")
        if user_id == 14:  # the real API says so with a 200 at times
            return web.json_response({"message": "user not found"})
        if user_id >= 1000:
            return web.json_response({"message": "user not found"}, status=404)
        return web.json_response(
            {
                "user_id": str(user_id),  # string-typed numbers, as the course API has
                "age": str(20 + user_id),
                "occupation": "writer",
                "gender": "F" if user_id % 2 else "M",
            }
        )


@pytest.fixture
async def course_api() -> AsyncIterator[tuple[_CourseApi, str]]:
    api = _CourseApi()
    app = web.Application()
    app.router.add_get("/user/{user_id}", api.user)
    async with TestServer(app) as server:
        yield api, str(server.make_url(""))


def _count(name: str, label: str, value: str) -> float:
    return REGISTRY.get_sample_value(name, {label: value}) or 0.0


def _fetches(outcome: str) -> float:
    return _count("reelfeed_ingest_profile_fetches_total", "outcome", outcome)


def _lookups(result: str) -> float:
    return _count("reelfeed_ingest_profile_lookups_total", "result", result)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_miss_answers_at_once_and_the_profile_serves_later_lines(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    profiles = ProfileLookup(url)
    found, hits = _fetches("found"), _lookups("hit")
    try:
        assert profiles.segment(7) is None  # not known yet: a fetch starts
        assert profiles.segment(7) is None  # the same fetch, not a second one
        await profiles.wait_idle()
        assert profiles.segment(7) == "F:25-34"
        assert profiles.segment(8) is None
        await profiles.wait_idle()
        assert profiles.segment(8) == "M:25-34"
        assert profiles.segment(7) == "F:25-34"
        assert api.requests == [7, 8]
        assert _fetches("found") - found == 2
        assert _lookups("hit") - hits == 3
    finally:
        await profiles.close()


async def test_unknown_users_and_bad_answers_are_remembered_without_a_segment(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    clock = _Clock()
    profiles = ProfileLookup(url, unknown_ttl_s=600.0, failure_ttl_s=30.0, clock=clock)
    unknown, failed = _fetches("unknown"), _fetches("failed")
    try:
        users = (1234, 14, 13, 429)
        for user in users:
            assert profiles.segment(user) is None
        await profiles.wait_idle()
        for user in users:
            assert profiles.segment(user) is None
        assert sorted(api.requests) == [13, 14, 429, 1234]  # asked once each
        assert _fetches("unknown") - unknown == 2  # the 404 and the "not found" message
        assert _fetches("failed") - failed == 2  # not JSON, and the rate limit
        # Failures are asked again after their shorter time; the unknown users later.
        clock.now += 31.0
        for user in users:
            profiles.segment(user)
        await profiles.wait_idle()
        assert sorted(api.requests) == [13, 13, 14, 429, 429, 1234]
        clock.now += 600.0
        profiles.segment(1234)
        await profiles.wait_idle()
        assert api.requests.count(1234) == 2
    finally:
        await profiles.close()


async def test_fetches_in_flight_are_bounded_and_a_burst_waits_its_turn(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    api.delay_s = 0.3
    profiles = ProfileLookup(url, max_in_flight=3)
    misses = _lookups("miss")
    try:
        assert [profiles.segment(user) for user in range(1, 11)] == [None] * 10
        assert _lookups("miss") - misses == 10
        await asyncio.sleep(0.05)
        assert (profiles.in_flight, profiles.queued) == (3, 7)
        await profiles.wait_idle()
        assert sorted(api.requests) == list(range(1, 11))  # every user, once
        assert api.most_running == 3
        assert profiles.segment(10) == "M:25-34"
    finally:
        await profiles.close()


async def test_a_full_queue_leaves_new_users_for_their_next_line(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    profiles = ProfileLookup(url, max_in_flight=2, max_queued=4)
    saturated = _lookups("saturated")
    try:
        assert [profiles.segment(user) for user in range(1, 11)] == [None] * 10
        assert profiles.queued == 4
        assert _lookups("saturated") - saturated == 6
        await profiles.wait_idle()
        assert sorted(api.requests) == [1, 2, 3, 4]
        assert [profiles.segment(user) for user in range(1, 11)][:4] == [
            "F:18-24",
            "M:18-24",
            "F:18-24",
            "M:18-24",
        ]
        await profiles.wait_idle()
        assert sorted(api.requests) == list(range(1, 9))
        assert api.most_running == 2
    finally:
        await profiles.close()


async def test_a_failing_api_is_counted_and_retried_later(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    api.failing = True
    clock = _Clock()
    profiles = ProfileLookup(url, failure_ttl_s=30.0, clock=clock)
    failed = _fetches("failed")
    try:
        profiles.segment(7)
        await profiles.wait_idle()
        assert profiles.segment(7) is None
        assert _fetches("failed") - failed == 1
        assert api.requests == [7]  # a down API is not asked again for every line
        api.failing = False
        clock.now += 31.0
        assert profiles.segment(7) is None
        await profiles.wait_idle()
        assert profiles.segment(7) == "F:25-34"
    finally:
        await profiles.close()


async def test_a_slow_api_times_out_and_never_blocks_the_caller(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    api.delay_s = 1.0
    profiles = ProfileLookup(url, timeout_s=0.1)
    failed = _fetches("failed")
    try:
        started = time.perf_counter()
        for user in range(1, 6):
            assert profiles.segment(user) is None
        assert time.perf_counter() - started < 0.05
        started = time.perf_counter()
        await profiles.wait_idle()
        assert time.perf_counter() - started < 0.5  # the timeout, not the API's second
        assert _fetches("failed") - failed == 5
    finally:
        await profiles.close()


async def test_an_unreachable_api_is_counted_as_failed() -> None:
    profiles = ProfileLookup(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    failed = _fetches("failed")
    try:
        assert profiles.segment(7) is None
        await profiles.wait_idle()
        assert profiles.segment(7) is None
        assert _fetches("failed") - failed == 1
    finally:
        await profiles.close()


async def test_the_cache_keeps_the_most_recently_used_users(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    profiles = ProfileLookup(url, cache_size=2)
    try:
        for user in (1, 2):
            profiles.segment(user)
            await profiles.wait_idle()
        assert profiles.segment(1) == "F:18-24"  # 1 is now the most recently used
        profiles.segment(3)
        await profiles.wait_idle()
        assert len(profiles) == 2
        assert profiles.segment(1) == "F:18-24"
        assert profiles.segment(3) == "F:18-24"
        assert profiles.segment(2) is None  # evicted: asked again
        await profiles.wait_idle()
        assert api.requests == [1, 2, 3, 2]
    finally:
        await profiles.close()


async def test_close_cancels_fetches_and_the_lookup_works_again(
    course_api: tuple[_CourseApi, str],
) -> None:
    api, url = course_api
    api.delay_s = 5.0
    profiles = ProfileLookup(url)
    profiles.segment(7)
    await asyncio.sleep(0.05)
    await profiles.close()
    assert profiles.in_flight == 0 and len(profiles) == 0
    api.delay_s = 0.0
    profiles.segment(7)
    await profiles.wait_idle()
    assert profiles.segment(7) == "F:25-34"
    await profiles.close()


async def test_watches_count_for_the_viewer_segment_once_the_profile_is_known(
    course_api: tuple[_CourseApi, str],
) -> None:
    """The processor with a real lookup: a recommendation request warms the profile,
    the watch after it counts for the segment; an unknown user's watch does not."""
    api, url = course_api
    profiles = ProfileLookup(url)
    log: list[str] = []
    features = FakeFeatures(log)
    ingest = IngestProcessor(
        new_checker=lambda: LineValidator(ParseContext(), DuplicateFilter(100)),
        publisher=FakePublisher(log),
        features=features,
        genres_of=lambda movie: ("Animation",) if movie == "up+2009" else (),
        segment_of=profiles.segment,
    )
    request = (
        b"2023-10-25T07:20:50,7,recommendation request 17645-team07.isri.cmu.edu:8082,"
        b" status 200, result: up+2009, heat+1995, 56 ms"
    )
    try:
        await ingest.process(
            source([request, b"2023-10-25T07:20:51,1234,GET /data/m/heat+1995/0.mpg"])
        )
        await profiles.wait_idle()
        await ingest.process(
            source(
                [
                    b"2023-10-25T07:20:57,7,GET /data/m/up+2009/0.mpg",
                    b"2023-10-25T07:20:58,1234,GET /data/m/up+2009/0.mpg",
                    b"2023-10-25T07:20:59,7,GET /rate/up+2009=5",
                ],
                start=2,
            )
        )
        watches = [u for u in features.applied if isinstance(u, WatchUpdate)]
        assert [(w.user_id, w.genres) for w in watches] == [
            (1234, ()),
            (7, ("Animation", "segment:F:25-34")),
            (1234, ("Animation",)),
        ]
        assert sorted(api.requests) == [7, 1234]
    finally:
        await profiles.close()
