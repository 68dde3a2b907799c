"""The course API: the real JSON shapes and string-typed numbers, 404s, faults, metrics."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import test_utils, web
from prometheus_client import CollectorRegistry

from sim.course_api import create_api_app, movie_document, user_document
from sim.faults import FaultConfig
from sim.world import UserProfile, World

Client = test_utils.TestClient[web.Request, web.Application]

# The keys of a real /movie response, in order (data/course/api, Fall 2019).
MOVIE_KEYS = [
    "id", "tmdb_id", "imdb_id", "title", "original_title", "adult", "belongs_to_collection",
    "budget", "genres", "homepage", "original_language", "overview", "popularity",
    "poster_path", "production_companies", "production_countries", "release_date", "revenue",
    "runtime", "spoken_languages", "status", "tagline", "vote_average", "vote_count",
]  # fmt: skip


def _shape(value: object) -> object:
    """The type structure of a JSON value (list items and dict values reduced to types)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.fixture
async def client(small_world: World) -> AsyncIterator[Client]:
    app = create_api_app(small_world)
    async with test_utils.TestClient(test_utils.TestServer(app)) as test_client:
        yield test_client


async def test_user_shape(client: Client, small_world: World) -> None:
    response = await client.get("/user/42")
    assert response.status == 200 and response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["user_id", "age", "occupation", "gender"]
    profile = small_world.profile(42)
    assert profile is not None and body == user_document(profile)
    assert isinstance(body["user_id"], int) and isinstance(body["age"], int)
    assert body["gender"] in ("M", "F")


async def test_movie_shape_and_string_typed_numbers(
    client: Client,
    small_world: World,
) -> None:
    movie = small_world.movies[3]
    response = await client.get(f"/movie/{movie.movie_id}")
    assert response.status == 200
    body = await response.json()
    assert list(body) == MOVIE_KEYS
    assert body["id"] == movie.movie_id
    assert body["adult"] == "False" and body["homepage"] == "null"
    assert body["belongs_to_collection"] == {}
    for key in ("budget", "popularity", "revenue", "vote_average", "vote_count"):
        assert isinstance(body[key], str)
        float(body[key])
    assert isinstance(body["runtime"], int) and body["runtime"] == movie.runtime
    assert isinstance(body["tmdb_id"], int)
    assert [g["name"] for g in body["genres"]] == list(movie.genres)
    assert all(isinstance(g["id"], int) for g in body["genres"])


async def test_unknown_ids_answer_404_with_the_course_message(
    client: Client,
) -> None:
    for path, message in [
        ("/user/0", "user not found"),
        ("/user/99999999", "user not found"),
        ("/user/abc", "user not found"),
        ("/movie/no+such+movie+1900", "movie not found"),
    ]:
        response = await client.get(path)
        assert response.status == 404
        assert await response.json() == {"message": message}


async def test_api_faults_answer_500_or_late(small_world: World) -> None:
    failing = create_api_app(small_world, faults=FaultConfig(api_error_rate=1.0))
    async with test_utils.TestClient(test_utils.TestServer(failing)) as client:
        assert (await client.get("/user/1")).status == 500
        assert (await client.get(f"/movie/{small_world.movies[0].movie_id}")).status == 500
    slow = create_api_app(small_world, faults=FaultConfig(api_slow_rate=1.0, api_slow_seconds=0.3))
    async with test_utils.TestClient(test_utils.TestServer(slow)) as client:
        began = time.monotonic()
        assert (await client.get("/user/1")).status == 200
        assert time.monotonic() - began >= 0.3
    mixed = create_api_app(small_world, faults=FaultConfig(api_error_rate=0.2), seed=3)
    async with test_utils.TestClient(test_utils.TestServer(mixed)) as client:
        statuses = [(await client.get("/user/1")).status for _ in range(200)]
    assert 20 < statuses.count(500) < 60 and statuses.count(200) == 200 - statuses.count(500)


async def test_metrics_and_status(small_world: World) -> None:
    registry = CollectorRegistry()
    app = create_api_app(small_world, registry=registry)
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        await client.get("/user/1")
        await client.get("/user/0")
        metrics = await (await client.get("/metrics")).text()
        status = await (await client.get("/sim/status")).json()
    assert 'reelfeed_sim_api_requests_total{endpoint="user",status="200"} 1.0' in metrics
    assert 'reelfeed_sim_api_requests_total{endpoint="user",status="404"} 1.0' in metrics
    assert status == {"running": False, "movies": 3000, "users": 3000}


class _View:
    def user(self, user_id: int) -> UserProfile | None:
        return UserProfile(user_id, 30, "writer", "F") if user_id == 10**7 else None

    def status(self) -> dict[str, object]:
        return {"running": True}

    def truth_report(self) -> dict[str, object]:
        return {"overall": {"lists": 0}}


async def test_a_running_simulation_answers_for_its_accounts(small_world: World) -> None:
    app = create_api_app(small_world, view=_View())
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        assert (await (await client.get(f"/user/{10**7}")).json())["occupation"] == "writer"
        assert (await client.get("/user/1")).status == 404
        assert await (await client.get("/sim/status")).json() == {"running": True}
        assert await (await client.get("/sim/truth")).json() == {"overall": {"lists": 0}}


def test_shapes_match_the_real_api_responses(data_dir: Path, course_world: World) -> None:
    """Every key has the type the real API gave, for the movies the real file holds."""
    raw = json.loads((data_dir / "course/api/movie_api_responses_2019.json").read_text())
    compared = 0
    for movie_id, text in raw.items():
        movie = course_world.movie(movie_id)
        if movie is None:
            continue
        real = json.loads(text)
        ours = movie_document(movie)
        assert list(ours) == list(real) == MOVIE_KEYS
        for key in MOVIE_KEYS:
            if key == "belongs_to_collection" or not real[key] or not ours[key]:
                assert type(ours[key]) is type(real[key]), key
                continue
            assert _shape(ours[key]) == _shape(real[key]), (movie_id, key)
        assert ours["genres"] == real["genres"], movie_id
        compared += 1
    assert compared > 100
    users = json.loads((data_dir / "course/api/user_api_responses_2019.json").read_text())
    real_user = json.loads(next(iter(users.values())))
    ours_user = user_document(UserProfile(1, 20, "writer", "M"))
    assert _shape(ours_user) == _shape(real_user)
