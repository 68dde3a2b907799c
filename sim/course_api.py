"""The course's movie and user API, served from the simulated world (aiohttp).

``GET /user/<id>`` and ``GET /movie/<id>`` answer with the real API's JSON shapes and
types, as captured in ``data/course/api``: a user is
``{"user_id":..,"age":..,"occupation":..,"gender":"M"|"F"}``; a movie is TMDB-like, with
``adult`` ``"False"``, ``budget``/``revenue``/``popularity``/``vote_*`` as strings,
``homepage`` ``"null"``, ``belongs_to_collection`` ``{}``, lists of ``{id, name}`` objects.
An unknown id answers 404 with ``{"message":"user not found"}`` /
``{"message":"movie not found"}`` (the bodies course teams recorded).

The same app serves the simulator's own ``/metrics`` (Prometheus), ``/sim/status`` and
``/sim/truth`` (JSON). ``FaultConfig.api_error_rate`` and ``api_slow_rate`` make the
course endpoints fail with 500 or answer late.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Mapping
from typing import Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from sim.faults import FaultConfig
from sim.world import TMDB_GENRE_IDS, Movie, UserProfile, World

__all__ = [
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "SiteView",
    "create_api_app",
    "movie_document",
    "serve_api",
    "user_document",
]

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8080


class SiteView(Protocol):
    """What the API needs of a running simulation (``Simulation`` is one)."""

    def user(self, user_id: int) -> UserProfile | None: ...

    def status(self) -> dict[str, object]: ...

    def truth_report(self) -> dict[str, object]: ...


_COUNTRY_CODES: Mapping[str, str] = {
    "United States of America": "US",
    "United Kingdom": "GB",
    "France": "FR",
    "Germany": "DE",
    "Italy": "IT",
    "Japan": "JP",
    "Canada": "CA",
    "Spain": "ES",
    "Hong Kong": "HK",
    "Australia": "AU",
    "Sweden": "SE",
    "India": "IN",
    "Belgium": "BE",
    "Denmark": "DK",
    "China": "CN",
    "South Korea": "KR",
    "Finland": "FI",
    "Russia": "RU",
    "Mexico": "MX",
    "Netherlands": "NL",
    "Ireland": "IE",
    "Switzerland": "CH",
    "Norway": "NO",
    "Austria": "AT",
    "Czech Republic": "CZ",
    "Poland": "PL",
    "Brazil": "BR",
    "New Zealand": "NZ",
    "Hungary": "HU",
    "Taiwan": "TW",
    "Turkey": "TR",
    "Argentina": "AR",
    "Israel": "IL",
}

_LANGUAGE_CODES: Mapping[str, str] = {
    "English": "en",
    "Français": "fr",
    "Deutsch": "de",
    "Español": "es",
    "Italiano": "it",
    "日本語": "ja",
    "Pусский": "ru",
    "普通话": "zh",
    "svenska": "sv",
    "Português": "pt",
    "广州话 / 廣州話": "cn",
    "العربية": "ar",
    "हिन्दी": "hi",
    "Magyar": "hu",
    "한국어/조선말": "ko",
    "Polski": "pl",
    "Latin": "la",
    "suomi": "fi",
    "Dansk": "da",
    "עִבְרִית": "he",
    "Český": "cs",
    "ελληνικά": "el",
    "Norsk": "no",
    "فارسی": "fa",
    "ภาษาไทย": "th",
    "Nederlands": "nl",
    "Türkçe": "tr",
    "No Language": "xx",
    "Română": "ro",
    "Tiếng Việt": "vi",
}


def _stable_id(name: str) -> int:
    return zlib.crc32(name.encode()) % 100_000


def user_document(profile: UserProfile) -> dict[str, object]:
    """The ``/user/<id>`` JSON of a profile.

    Examples
    --------
    >>> user_document(UserProfile(21303, 27, "self-employed", "F"))
    {'user_id': 21303, 'age': 27, 'occupation': 'self-employed', 'gender': 'F'}
    """
    return {
        "user_id": profile.user_id,
        "age": profile.age,
        "occupation": profile.occupation,
        "gender": profile.gender,
    }


def movie_document(movie: Movie) -> dict[str, object]:
    """The ``/movie/<id>`` JSON of a movie, with the real API's keys, order and types.

    Examples
    --------
    >>> doc = movie_document(Movie("up+2009", "Up", ("Animation",), 96, 20.5, 7.8, 9000))
    >>> doc["adult"], doc["popularity"], doc["vote_count"], doc["genres"], doc["runtime"]
    ('False', '20.500000', '9000', [{'id': 16, 'name': 'Animation'}], 96)
    """
    return {
        "id": movie.movie_id,
        "tmdb_id": movie.tmdb_id,
        "imdb_id": movie.imdb_id,
        "title": movie.title,
        "original_title": movie.original_title or movie.title,
        "adult": "False",
        "belongs_to_collection": {},
        "budget": str(movie.budget),
        "genres": [{"id": TMDB_GENRE_IDS[g], "name": g} for g in movie.genres],
        "homepage": movie.homepage or "null",
        "original_language": movie.original_language,
        "overview": movie.overview,
        "popularity": f"{movie.popularity:.6f}",
        "poster_path": movie.poster_path,
        "production_companies": [
            {"name": name, "id": _stable_id(name)} for name in movie.production_companies
        ],
        "production_countries": [
            {"iso_3166_1": _COUNTRY_CODES.get(name, name[:2].upper()), "name": name}
            for name in movie.production_countries
        ],
        "release_date": movie.release_date or "null",
        "revenue": str(movie.revenue),
        "runtime": movie.runtime,
        "spoken_languages": [
            {"iso_639_1": _LANGUAGE_CODES.get(name, "xx"), "name": name}
            for name in movie.spoken_languages
        ],
        "status": movie.status,
        "tagline": "",
        "vote_average": f"{movie.vote_average:g}",
        "vote_count": str(movie.vote_count),
    }


_WORLD = web.AppKey("world", World)
_VIEW: web.AppKey[SiteView] = web.AppKey("view")
_FAULTS = web.AppKey("faults", FaultConfig)
_RANDOM = web.AppKey("random", random.Random)
_REGISTRY = web.AppKey("registry", CollectorRegistry)
_REQUESTS = web.AppKey("requests", Counter)


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


async def _maybe_fail(request: web.Request) -> None:
    """Apply the course API faults: a 500, or a late answer."""
    faults = request.app[_FAULTS]
    if faults.api_error_rate <= 0 and faults.api_slow_rate <= 0:
        return
    rng = request.app[_RANDOM]
    if rng.random() < faults.api_error_rate:
        raise web.HTTPInternalServerError(text="Internal Server Error")
    if rng.random() < faults.api_slow_rate:
        await asyncio.sleep(faults.api_slow_seconds)


async def _user(request: web.Request) -> web.Response:
    counter = request.app[_REQUESTS]
    try:
        await _maybe_fail(request)
    except web.HTTPInternalServerError:
        counter.labels("user", "500").inc()
        raise
    raw = request.match_info["user_id"]
    view = request.app[_VIEW]
    profile = view.user(int(raw)) if raw.isascii() and raw.isdigit() else None
    if profile is None:
        counter.labels("user", "404").inc()
        return _json({"message": "user not found"}, status=404)
    counter.labels("user", "200").inc()
    return _json(user_document(profile))


async def _movie(request: web.Request) -> web.Response:
    counter = request.app[_REQUESTS]
    try:
        await _maybe_fail(request)
    except web.HTTPInternalServerError:
        counter.labels("movie", "500").inc()
        raise
    movie = request.app[_WORLD].movie(request.match_info["movie_id"])
    if movie is None:
        counter.labels("movie", "404").inc()
        return _json({"message": "movie not found"}, status=404)
    counter.labels("movie", "200").inc()
    return _json(movie_document(movie))


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[_VIEW].status())


async def _truth(request: web.Request) -> web.Response:
    return _json(request.app[_VIEW].truth_report())


class _WorldView:
    """The view without a simulation: the world's population, nothing running."""

    def __init__(self, world: World) -> None:
        self.world = world

    def user(self, user_id: int) -> UserProfile | None:
        return self.world.profile(user_id)

    def status(self) -> dict[str, object]:
        return {
            "running": False,
            "movies": len(self.world.movies),
            "users": self.world.config.users,
        }

    def truth_report(self) -> dict[str, object]:
        return {}


def create_api_app(
    world: World,
    *,
    view: SiteView | None = None,
    faults: FaultConfig | None = None,
    registry: CollectorRegistry | None = None,
    seed: int = 0,
) -> web.Application:
    """The course API over ``world`` (and, with ``view``, the simulation's status).

    Parameters
    ----------
    world
        Movies and users to serve.
    view
        A running simulation: its users (attack accounts too), status and truth.
    faults
        API faults to inject (``api_error_rate``, ``api_slow_rate``).
    registry
        The Prometheus registry ``/metrics`` exposes (the simulation's); the API adds its
        request counter to it.
    seed
        Seed of the fault choices.

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=50, users=10))
    >>> sorted({r.resource.canonical for r in create_api_app(world).router.routes()})
    ['/metrics', '/movie/{movie_id}', '/sim/status', '/sim/truth', '/user/{user_id}']
    """
    app = web.Application()
    registry = registry or CollectorRegistry()
    app[_WORLD] = world
    app[_VIEW] = view if view is not None else _WorldView(world)
    app[_FAULTS] = faults or FaultConfig()
    app[_RANDOM] = random.Random(seed)
    app[_REGISTRY] = registry
    app[_REQUESTS] = Counter(
        "reelfeed_sim_api_requests",
        "Course API requests, by endpoint and status",
        ["endpoint", "status"],
        registry=registry,
    )
    app.router.add_get("/user/{user_id}", _user)
    app.router.add_get("/movie/{movie_id}", _movie)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/sim/status", _status)
    app.router.add_get("/sim/truth", _truth)
    return app


async def serve_api(
    app: web.Application, host: str = DEFAULT_API_HOST, port: int = DEFAULT_API_PORT
) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; return the runner (``await runner.cleanup()`` to stop) and
    the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, bound
