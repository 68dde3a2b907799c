"""The aiohttp application: factory, resources, handlers.

``create_app(config)`` wires the Redis-backed sources, the profile lookups, the
provenance producer and the background refresher; each is created and closed in
``cleanup_ctx`` and reached through an ``AppKey``. Tests pass fakes for any of them.

Only handlers raise ``web.HTTP*``. ``/recommend`` answers 400 for an invalid user id
and 200 for every valid one: failures below it become a popularity answer, counted by
reason, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo

from server.balance import ConnectionBalance
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.openapi import openapi_document
from server.profiles import HttpProfiles, NoProfiles, ProfileSource
from server.provenance import KafkaProvenance, ProvenanceRecord, ProvenanceSink
from server.service import Recommendation, Recommender, Refresher, ServingState
from server.sources import ModelSource, PopularitySource, RoutingSource, redis_sources
from state import KeySchema, RedisPipe, Routing, RoutingConflict, valid_version

__all__ = [
    "BALANCE",
    "CONFIG",
    "METRICS",
    "MODELS",
    "PROVENANCE",
    "RECOMMENDER",
    "REFRESHER",
    "ROUTING",
    "STATE",
    "answer_recommend_directly",
    "create_app",
    "parse_user_id",
    "recommend_directly_on",
]

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServerConfig)
#: The workers' connection balance (``server.run`` sets it when several share the port).
BALANCE = web.AppKey("balance", ConnectionBalance)
METRICS = web.AppKey("metrics", ServerMetrics)
STATE = web.AppKey("state", ServingState)
RECOMMENDER = web.AppKey("recommender", Recommender)
REFRESHER = web.AppKey("refresher", Refresher)
MODELS: web.AppKey[ModelSource] = web.AppKey("models")
ROUTING: web.AppKey[RoutingSource] = web.AppKey("routing")
PROVENANCE: web.AppKey[ProvenanceSink] = web.AppKey("provenance")
_POPULARITY: web.AppKey[PopularitySource] = web.AppKey("popularity")
_PROFILES: web.AppKey[ProfileSource] = web.AppKey("profiles")

_MAX_ID_DIGITS = 20
_TEXT_UTF8 = "text/plain; charset=utf-8"
#: Longest wait for Redis outside the answers' own deadline (admin calls, round trips).
_STORE_TIMEOUT_S = 5.0
#: Longest wait for a new Redis connection (redis-py's pool and the answers' pipe).
_CONNECT_TIMEOUT_S = 1.0
#: Seconds between flushes of the per-answer counts into the Prometheus values.
_METRICS_FLUSH_S = 0.5
_random_bits = random.getrandbits


def parse_user_id(raw: str, max_user_id: int) -> int | str:
    """The user id, or the reason it is not one.

    Examples
    --------
    >>> parse_user_id("42", 100), parse_user_id("0042", 100)
    (42, 42)
    >>> parse_user_id("-1", 100), parse_user_id("101", 100)
    ('user id must be a non-negative integer', 'user id must be at most 100')
    """
    if not (0 < len(raw) <= _MAX_ID_DIGITS and raw.isascii() and raw.isdigit()):
        return "user id must be a non-negative integer"
    user_id = int(raw)
    if user_id > max_user_id:
        return f"user id must be at most {max_user_id}"
    return user_id


def create_app(
    config: ServerConfig,
    *,
    models: ModelSource | None = None,
    popularity: PopularitySource | None = None,
    routing: RoutingSource | None = None,
    profiles: ProfileSource | None = None,
    provenance: ProvenanceSink | None = None,
    metrics: ServerMetrics | None = None,
    multiprocess_dir: Path | None = None,
    refresh: bool = True,
    freeze_gc: bool = False,
) -> web.Application:
    """Build the server's application.

    Parameters
    ----------
    config
        The server's configuration.
    models, popularity, routing
        Sources to use instead of the Redis ones at ``config.redis_url``.
    profiles
        Profile lookups instead of the user API at ``config.user_api_url``.
    provenance
        Where provenance records go instead of Kafka at ``config.kafka_bootstrap``.
    metrics
        The metrics (new ones by default).
    multiprocess_dir
        prometheus_client's multiprocess folder, when several workers share the port.
    refresh
        Whether to load at start and poll in the background (``False``: only when
        ``app[REFRESHER]`` is called).
    freeze_gc
        Whether to ``gc.freeze()`` after start and after each item-matrix load, for a
        process that only serves: the loaded matrices (tuples and dicts of 27k ids)
        then stay out of the cyclic garbage collector's passes, which otherwise walk
        them again and again (measured under load: about 40% less time in the
        collector). They are still freed by reference counting when replaced.
    """
    app = web.Application(client_max_size=64 * 1024)
    app[CONFIG] = config
    app[METRICS] = metrics if metrics is not None else ServerMetrics(multiprocess_dir)
    app[STATE] = ServingState(config.list_length)
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.append(_sources_ctx(models, popularity, routing))
    app.cleanup_ctx.append(_profiles_ctx(profiles))
    app.cleanup_ctx.append(_provenance_ctx(provenance))
    app.cleanup_ctx.append(_refresher_ctx(refresh, freeze_gc))
    app.router.add_get("/recommend/{user_id}", recommend, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/health", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
    app.router.add_get("/openapi.json", openapi_handler, allow_head=False)
    app.router.add_get("/admin/routing", get_routing, allow_head=False)
    app.router.add_put("/admin/live", put_live)
    app.router.add_put("/admin/canary", put_canary)
    app.router.add_delete("/admin/canary", delete_canary)
    app.router.add_post("/admin/promote", post_promote)
    return app


# ---------------------------------------------------------------- resources


_Ctx = Callable[[web.Application], AsyncIterator[None]]


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]

    async def flush_now_and_then() -> None:
        # Scrapes flush on their own; this keeps other workers' scrapes (which read
        # this process's multiprocess files) at most half a second behind.
        while True:
            await asyncio.sleep(_METRICS_FLUSH_S)
            metrics.flush()

    task = asyncio.get_running_loop().create_task(flush_now_and_then())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        metrics.flush()


def _sources_ctx(
    models: ModelSource | None, popularity: PopularitySource | None, routing: RoutingSource | None
) -> _Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        client: aioredis.Redis | None = None
        pipe: RedisPipe | None = None
        chosen_models, chosen_popularity, chosen_routing = models, popularity, routing
        if models is None or popularity is None or routing is None:
            # The deadline of each answer bounds Redis calls; no retries under it. No
            # socket_timeout: redis-py would put one asyncio.timeout on every reply of
            # the per-answer pipelines; every caller bounds its calls instead (the
            # answers' deadline, the round trip's limit, the refresher's and the admin
            # endpoints' timeouts).
            client = aioredis.Redis.from_url(
                config.redis_url,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),
                max_connections=config.redis_max_connections,
                # Given, redis-py does not read its version from the package metadata
                # for every new connection (half of a connection's setup, measured).
                driver_info=DriverInfo(lib_version=redis.__version__),
            )
            # The per-answer reads go on a connection of their own (see state.pipe).
            pipe = RedisPipe(
                config.redis_url,
                connect_timeout_s=_CONNECT_TIMEOUT_S,
                round_trip_timeout_s=_STORE_TIMEOUT_S,
            )
            redis_models, redis_popularity, redis_routing = redis_sources(
                client, KeySchema(config.redis_prefix), pipe
            )
            chosen_models = models or redis_models
            chosen_popularity = popularity or redis_popularity
            chosen_routing = routing or redis_routing
        assert chosen_models is not None
        assert chosen_popularity is not None
        assert chosen_routing is not None
        app[MODELS] = chosen_models
        app[ROUTING] = chosen_routing
        app[_POPULARITY] = chosen_popularity
        try:
            yield
        finally:
            if pipe is not None:
                await pipe.close()
            if client is not None:
                await client.aclose()

    return ctx


def _profiles_ctx(profiles: ProfileSource | None) -> _Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        session: aiohttp.ClientSession | None = None
        chosen = profiles
        if chosen is None:
            if config.user_api_url:
                session = aiohttp.ClientSession()
                chosen = HttpProfiles(
                    session,
                    config.user_api_url,
                    cache_size=config.profile_cache_size,
                    ttl_s=config.profile_ttl_s,
                )
            else:
                chosen = NoProfiles()
        app[_PROFILES] = chosen
        try:
            yield
        finally:
            await chosen.close()
            if session is not None:
                await session.close()

    return ctx


def _provenance_ctx(provenance: ProvenanceSink | None) -> _Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        sink = provenance
        if sink is None:
            sink = KafkaProvenance(
                config.kafka_bootstrap,
                config.recommendations_topic,
                buffer_size=config.provenance_buffer,
                linger_s=config.provenance_linger_s,
                metrics=app[METRICS],
            )
        app[PROVENANCE] = sink
        # Starts a background task: the server serves even while Kafka is down.
        await sink.start()
        try:
            yield
        finally:
            await sink.close(config.shutdown_timeout_s)

    return ctx


def _refresher_ctx(refresh: bool, freeze_gc: bool) -> _Ctx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config, state, metrics = app[CONFIG], app[STATE], app[METRICS]
        profiles = app[_PROFILES]
        refresher = Refresher(
            state,
            app[MODELS],
            app[_POPULARITY],
            app[ROUTING],
            config,
            metrics,
            segments=not isinstance(profiles, NoProfiles),
            on_models_changed=gc.freeze if freeze_gc else None,
        )
        app[REFRESHER] = refresher
        app[RECOMMENDER] = Recommender(state, app[MODELS], profiles, metrics, config)
        task = None
        if refresh:
            # One round before serving, so that a healthy stack answers from the model
            # at once; a failing Redis only delays readiness.
            await refresher.refresh_all()
            task = asyncio.get_running_loop().create_task(refresher.run())
        if freeze_gc:
            gc.freeze()
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return ctx


# ---------------------------------------------------------------- /recommend


async def recommend(request: web.Request) -> web.Response:
    return await _recommend(request.app, request.match_info["user_id"])


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RECOMMEND_PREFIX = "/recommend/"


def answer_recommend_directly(app: web.Application, handler: _Handler) -> _Handler:
    """``handler`` (a server's, for ``app``), with ``GET /recommend/<digits>`` answered
    without the application's router.

    The router's path to a handler (resolving the route, building and freezing its match
    info, the middleware and signal checks) costs about 18 us per request, a third of a
    fixed-line answer (measured: 51 against 33 us of CPU per answer for the same
    fixed-line handler behind an ``Application`` and behind a bare ``web.Server``,
    alternating runs). Only the most common request takes this path: a GET whose raw
    path is the prefix and decimal digits, no query, no escapes; it gets what the
    routed ``/recommend/{user_id}`` handler gives, by the same code. Everything else,
    including every malformed request, goes through the router as before.

    ``server.run`` installs it on its runner's server (``Server.request_handler``,
    read by each new connection).
    """
    prefix, skip = _RECOMMEND_PREFIX, len(_RECOMMEND_PREFIX)

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            path = request.raw_path
            if path.startswith(prefix):
                raw = path[skip:]
                if raw.isdigit() and raw.isascii():
                    return await _recommend(app, raw)
        return await handler(request)

    return dispatch


def recommend_directly_on(runner: web.BaseRunner, app: web.Application) -> None:
    """Install :func:`answer_recommend_directly` on ``runner``'s server (set up, not yet
    serving: each new connection reads the server's handler), as ``server.run`` does."""
    server = runner.server
    if server is None:
        raise RuntimeError("set the runner up before installing the direct /recommend")
    server.request_handler = answer_recommend_directly(app, server.request_handler)


async def _recommend(app: web.Application, raw_user_id: str) -> web.Response:
    started = time.perf_counter()
    user_id = parse_user_id(raw_user_id, app[CONFIG].max_user_id)
    if isinstance(user_id, str):
        app[METRICS].rejected(time.perf_counter() - started)
        raise web.HTTPBadRequest(text=user_id)
    try:
        answer = await app[RECOMMENDER].recommend(user_id)
    except Exception:  # a bug must still not cost the site its answer
        log.exception("recommendation for %d failed; answering from popularity", user_id)
        answer = _last_resort(app, user_id)
    # Unique, not secret: 128 bits of the process's Mersenne Twister (seeded from the OS
    # and reseeded in forked children by the random module), a third of os.urandom's cost.
    request_id = f"{_random_bits(128):032x}"
    latency = time.perf_counter() - started
    version = answer.version
    app[METRICS].answered(latency, version)
    app[PROVENANCE].emit(
        ProvenanceRecord(
            request_id,
            time.time(),
            user_id,
            version,
            answer.revision,
            answer.positions,
            answer.items,
            latency,
            answer.fallback,
        )
    )
    headers = {
        "X-Request-Id": request_id,
        "X-Model-Version": version or "none",
        "X-Model-Revision": str(answer.revision),
        "Content-Type": _TEXT_UTF8,
    }
    if answer.fallback is not None:
        headers["X-Fallback"] = answer.fallback
    response = web.Response(body=answer.line, headers=headers)
    balance = app.get(BALANCE)
    if balance is not None and balance.shed():
        response.force_close()  # the client connects again, maybe to a less busy worker
    return response


def _last_resort(app: web.Application, user_id: int) -> Recommendation:
    app[METRICS].fallback("internal_error")
    popular = app[STATE].popular
    return Recommendation(list(popular.head), popular.line, None, 0, None, "internal_error")


# ---------------------------------------------------------------- operations


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = time.monotonic()
    body = {
        "ready": state.ready,
        "models": {version: scorer.revision for version, scorer in state.models.items()},
        "popularity": len(state.popular),
        "routing": state.routing.to_json(),
        # How fresh each poll is: at most a few seconds while Redis answers.
        "refreshed_s_ago": {
            kind: None if at == 0.0 else round(now - at, 3)
            for kind, at in state.refreshed_at.items()
        },
    }
    return _json(body, status=200 if state.ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_handler(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    return _json(openapi_document(config.max_user_id, config.list_length))


# ---------------------------------------------------------------- admin


def _authorize(request: web.Request) -> None:
    token = request.app[CONFIG].admin_token
    if token is None:
        raise web.HTTPForbidden(text="admin endpoints are off: no admin token is configured")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), expected
    ):
        raise web.HTTPUnauthorized(
            text="a valid bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="reelfeed-admin"'},
        )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        document = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(document, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return document


def _version_field(body: dict[str, Any]) -> str:
    version = body.get("version")
    if not isinstance(version, str) or not valid_version(version):
        raise web.HTTPBadRequest(text="version must be 1 to 64 letters, digits, '.', '_' or '-'")
    return version


def _force_field(body: dict[str, Any]) -> bool:
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise web.HTTPBadRequest(text="force must be true or false")
    return force


async def _routing_change(
    request: web.Request, change: Callable[[RoutingSource], Awaitable[Routing]]
) -> web.Response:
    app = request.app
    try:
        async with asyncio.timeout(_STORE_TIMEOUT_S):
            routing = await change(app[ROUTING])
    except RoutingConflict as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    except Exception as exc:
        log.warning("routing change failed: %r", exc)
        raise web.HTTPServiceUnavailable(text="the routing store is not reachable") from None
    log.info("routing changed by %s: %s", request.remote, routing.to_json())
    try:
        # Load the versions' matrices before they get traffic here; other processes
        # do the same at their next routing poll.
        async with asyncio.timeout(_STORE_TIMEOUT_S):
            await app[REFRESHER].adopt(routing)
    except Exception as exc:
        log.warning("adopting the new routing failed (the poll retries): %r", exc)
        app[REFRESHER].apply_routing(routing)
    return _routing_response(app, routing)


async def _require_matrix(request: web.Request, version: str, force: bool) -> None:
    if force:
        return
    try:
        async with asyncio.timeout(_STORE_TIMEOUT_S):
            revision = await request.app[MODELS].matrix_revision(version)
    except Exception:
        raise web.HTTPServiceUnavailable(text="the model store is not reachable") from None
    if revision == 0:
        raise web.HTTPConflict(
            text=f"version {version} has no published item matrix (force: true routes it anyway)"
        )


async def get_routing(request: web.Request) -> web.Response:
    _authorize(request)
    try:
        async with asyncio.timeout(_STORE_TIMEOUT_S):
            routing = await request.app[ROUTING].get()
    except Exception:
        raise web.HTTPServiceUnavailable(text="the routing store is not reachable") from None
    return _routing_response(request.app, routing)


async def put_live(request: web.Request) -> web.Response:
    _authorize(request)
    body = await _body(request)
    version = _version_field(body)
    await _require_matrix(request, version, _force_field(body))
    return await _routing_change(request, lambda store: store.set_live(version))


async def put_canary(request: web.Request) -> web.Response:
    _authorize(request)
    body = await _body(request)
    version = _version_field(body)
    force = _force_field(body)
    share = body.get("share")
    if (
        isinstance(share, bool)
        or not isinstance(share, int | float)
        or not (math.isfinite(share) and 0 <= share <= 1)
    ):
        raise web.HTTPBadRequest(text="share must be a number from 0 to 1")
    salt = body.get("salt")
    if salt is not None and not (isinstance(salt, str) and 0 < len(salt) <= 128):
        raise web.HTTPBadRequest(text="salt must be a string of 1 to 128 characters")
    await _require_matrix(request, version, force)
    return await _routing_change(
        request, lambda store: store.set_canary(version, float(share), salt)
    )


async def delete_canary(request: web.Request) -> web.Response:
    _authorize(request)
    return await _routing_change(request, lambda store: store.clear_canary())


async def post_promote(request: web.Request) -> web.Response:
    _authorize(request)
    return await _routing_change(request, lambda store: store.promote_canary())


def _routing_response(app: web.Application, routing: Routing) -> web.Response:
    loaded = {version: scorer.revision for version, scorer in app[STATE].models.items()}
    return _json({**routing.to_json(), "loaded": loaded})


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
