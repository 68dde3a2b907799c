"""Segment popularity end to end: the ingest worker (a real process, on the real broker
and Redis) asks a course user API for the viewers' profiles and keeps one popularity
list per segment; the server answers an unknown user of a segment with its list."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reelfeed.infra import create_topics
from server import create_app
from state import FeatureStore, KeySchema, ModelStore, RoutingStore, segment_genre
from tests.integration.test_ingest_worker import applied_reaches, topic_names, worker_env
from tests.integration.workers import (
    WorkerProcess,
    free_port,
    produce_lines,
    user_key,
    wait_until,
)
from tests.server.conftest import MemoryProvenance, make_matrix, quiet_config

pytestmark = pytest.mark.integration

#: Viewers with a profile: users 1-30 are women of 30, users 31-60 men of 60.
WOMEN = range(1, 31)
MEN = range(31, 61)
#: Viewers the API does not know (404): they make the global list differ.
STRANGERS = range(2001, 2061)
#: Users who never watch: the server's unknown users of each segment, and a stranger.
NEW_WOMAN, NEW_MAN, NEW_STRANGER = 501, 502, 2999


@dataclass
class _CourseApi:
    requests: list[int] = field(default_factory=list)

    async def user(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        self.requests.append(user_id)
        if user_id in WOMEN or user_id == NEW_WOMAN:
            age, gender = "30", "F"
        elif user_id in MEN or user_id == NEW_MAN:
            age, gender = "60", "M"
        else:
            return web.json_response({"message": "user not found"}, status=404)
        return web.json_response(
            {"user_id": str(user_id), "age": age, "occupation": "scientist", "gender": gender}
        )


@pytest.fixture
async def course_api() -> AsyncIterator[tuple[_CourseApi, str]]:
    api = _CourseApi()
    app = web.Application()
    app.router.add_get("/user/{user_id}", api.user)
    async with TestServer(app, host="127.0.0.1") as server:
        yield api, str(server.make_url("")).rstrip("/")


def _stamp(second: int) -> str:
    return f"2023-10-25T07:{20 + second // 60:02d}:{second % 60:02d}"


def _requests(users: list[int]) -> list[bytes]:
    return [
        f"{_stamp(i)},{user},recommendation request 17645-team07.isri.cmu.edu:8082, "
        f"status 200, result: x+1+2001, 40 ms".encode()
        for i, user in enumerate(users)
    ]


def _watches(audience: range, movies: list[str]) -> list[tuple[int, str]]:
    """The first movie is watched by every user, the second by two thirds, the third
    by a third: a clear order."""
    watches: list[tuple[int, str]] = []
    for rank, movie in enumerate(movies):
        share = len(audience) * (3 - rank) // 3
        watches.extend((user, movie) for user in list(audience)[:share])
    return watches


def _metric(port: int, name: str, labels: str) -> float:
    """A sample of the worker's metrics, 0 while the worker does not serve them yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[1])
    return 0.0


def _fetched(port: int, outcome: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        value = await asyncio.to_thread(
            _metric, port, "reelfeed_ingest_profile_fetches_total", f'outcome="{outcome}"'
        )
        return value >= count

    return reached


async def test_an_unknown_user_gets_the_list_of_their_segment(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    course_api: tuple[_CourseApi, str],
) -> None:
    api, api_url = course_api
    topics = topic_names(unique_name)
    await asyncio.to_thread(
        create_topics,
        kafka_bootstrap,
        {topics["raw"]: 2, topics["events"]: 2, topics["rejected"]: 1},
    )
    metrics_port = free_port()
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        unique_name,
        topics,
        REELFEED_USER_API_URL=api_url,
        REELFEED_INGEST_METRICS_PORT=str(metrics_port),
    )
    store = FeatureStore(redis_client, KeySchema(unique_name), half_life_s=86_400)
    worker = WorkerProcess("ingest", env, tmp_path, "ingest")

    # Every viewer first asks for recommendations, which makes the worker fetch their
    # profiles; their watches come once the profiles are in its memory.
    viewers = [*WOMEN, *MEN, *STRANGERS]
    requests = _requests(viewers)
    await produce_lines(kafka_bootstrap, topics["raw"], requests, user_key)
    worker.start()
    try:
        try:
            await wait_until(_fetched(metrics_port, "found", len(WOMEN) + len(MEN)), 90, worker)
            await wait_until(_fetched(metrics_port, "unknown", len(STRANGERS)), 30, worker)
        except TimeoutError:
            raise AssertionError(
                f"profiles not fetched; the API was asked for {sorted(api.requests)}; "
                f"counts {await store.counts()}; log: {worker.log_tail()}"
            ) from None

        women_movies = ["she+1+2001", "she+2+2002", "she+3+2003"]
        men_movies = ["he+1+2001", "he+2+2002", "he+3+2003"]
        global_movies = ["all+1+2001", "all+2+2002"]
        watches = (
            _watches(WOMEN, women_movies)
            + _watches(MEN, men_movies)
            + [(user, movie) for user in STRANGERS for movie in global_movies]
        )
        watch_lines = [
            f"{_stamp(len(requests) + i)},{user},GET /data/m/{movie}/0.mpg".encode()
            for i, (user, movie) in enumerate(watches)
        ]
        await produce_lines(kafka_bootstrap, topics["raw"], watch_lines, user_key)
        await wait_until(applied_reaches(store, len(requests) + len(watch_lines)), 60, worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert sorted(api.requests) == sorted(viewers)  # each profile was asked for once

    async def segment_list(segment: str) -> list[str]:
        return [movie for movie, _ in await store.popular(10, genre=segment_genre(segment))]

    assert await segment_list("F:25-34") == women_movies
    assert await segment_list("M:55+") == men_movies
    popular = [movie for movie, _ in await store.popular(20)]
    assert set(popular[:2]) == set(global_movies)
    assert set(popular) == {*women_movies, *men_movies, *global_movies}

    # The server, with a model live (the unknown-user path needs one) and the user API.
    await ModelStore(redis_client, KeySchema(unique_name), "v1").publish_matrix(
        make_matrix(n_items=50)
    )
    await RoutingStore(redis_client, KeySchema(unique_name)).set_live("v1")
    config = quiet_config(
        redis_url=redis_url,
        redis_prefix=unique_name,
        user_api_url=api_url,
        deadline_s=2.0,
        profile_wait_s=1.0,
    )
    app = create_app(config, provenance=MemoryProvenance())
    async with TestClient(TestServer(app)) as client:
        answers = {}
        for user in (NEW_WOMAN, NEW_MAN, NEW_STRANGER):
            response = await client.get(f"/recommend/{user}")
            assert response.status == 200
            assert response.headers.get("X-Fallback") == "unknown_user"
            answers[user] = (await response.text()).split(",")

    # A segment's own movies first, then the overall popularity fills the list.
    def filled(segment_movies: list[str]) -> list[str]:
        return list(dict.fromkeys(segment_movies + popular))[:20]

    assert answers[NEW_WOMAN] == filled(women_movies)
    assert answers[NEW_MAN] == filled(men_movies)
    assert answers[NEW_WOMAN][: len(women_movies)] == women_movies
    assert answers[NEW_STRANGER] == popular
