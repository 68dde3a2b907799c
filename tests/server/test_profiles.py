"""HttpProfiles against a real HTTP server playing the course user API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server import HttpProfiles, UserProfile


class _CourseApi:
    def __init__(self) -> None:
        self.delay_s = 0.0
        self.requests: list[int] = []

    async def user(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        self.requests.append(user_id)
        await asyncio.sleep(self.delay_s)
        if user_id >= 1000:
            return web.json_response({"message": "user not found"}, status=404)
        if user_id == 13:
            return web.Response(text="not json")
        age = str(20 + user_id)  # the course API has string-typed numbers at times
        gender = "F" if user_id % 2 else "M"
        return web.json_response(
            {"user_id": user_id, "age": age, "occupation": "writer", "gender": gender}
        )


@pytest.fixture
async def course_api() -> AsyncIterator[tuple[_CourseApi, str]]:
    api = _CourseApi()
    app = web.Application()
    app.router.add_get("/user/{user_id}", api.user)
    async with TestServer(app) as server:
        yield api, str(server.make_url(""))


async def test_profiles_are_fetched_once_and_cached(course_api: tuple[_CourseApi, str]) -> None:
    api, url = course_api
    async with aiohttp.ClientSession() as session:
        profiles = HttpProfiles(session, url)
        profile = await profiles.lookup(7, wait=1.0)
        assert profile == UserProfile(7, 27, "writer", "F") and profile.segment == "F:25-34"
        assert await profiles.lookup(7, wait=0.0) == profile
        assert await profiles.lookup(1234, wait=1.0) is None  # unknown: cached as such
        assert await profiles.lookup(1234, wait=1.0) is None
        assert await profiles.lookup(13, wait=1.0) is None  # not JSON
        assert api.requests == [7, 1234, 13]
        await profiles.close()


async def test_a_slow_api_never_holds_an_answer(course_api: tuple[_CourseApi, str]) -> None:
    api, url = course_api
    api.delay_s = 0.2
    async with aiohttp.ClientSession() as session:
        profiles = HttpProfiles(session, url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await profiles.lookup(8, wait=0.02) is None
        assert loop.time() - started < 0.1
        await asyncio.sleep(0.4)  # the lookup went on in the background
        assert await profiles.lookup(8, wait=0.0) == UserProfile(8, 28, "writer", "M")
        assert api.requests == [8]
        await profiles.close()


async def test_lookups_in_flight_are_bounded(course_api: tuple[_CourseApi, str]) -> None:
    api, url = course_api
    api.delay_s = 0.2
    async with aiohttp.ClientSession() as session:
        profiles = HttpProfiles(session, url, max_in_flight=3)
        results = await asyncio.gather(*(profiles.lookup(u, wait=0.0) for u in range(10)))
        assert results == [None] * 10
        await asyncio.sleep(0.05)
        assert len(api.requests) == 3
        await profiles.close()  # cancels what still runs
