"""Handler tests over the server's Protocols, with fakes: every path of /recommend,
the operations endpoints and the admin API."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from online_model.ranking import RankingTable
from server.app import METRICS, REFRESHER, STATE, answer_recommend_directly
from server.popularity import segment_genre
from server.profiles import UserProfile
from state import ItemMatrix, Routing
from tests.server.conftest import TOKEN, AppFactory, Fakes, make_matrix, quiet_config

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def refresh(client: Client) -> None:
    assert client.app is not None
    await client.app[REFRESHER].refresh_all()


def metric(client: Client, name: str, **labels: str) -> float:
    assert client.app is not None
    value = client.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def reference_list(fakes: Fakes, version: str, user_id: int, k: int = 20) -> list[str]:
    matrix = fakes.models.matrices[version]
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, 1.0, 0.0
    )
    vector = fakes.models.vectors[(version, user_id)]
    watched = fakes.models.watched.get(user_id, set())
    return [str(m) for m in table.recommend(vector, 0, watched, k)]


def with_model(fakes: Fakes, version: str = "v1", users: range = range(1, 6)) -> None:
    matrix = make_matrix(revision=3)
    fakes.models.matrices[version] = matrix
    rng = np.random.default_rng(7)
    for user in users:
        fakes.models.vectors[(version, user)] = rng.standard_normal(8).astype(np.float32)
    fakes.routing.routing = Routing(live=version, revision=1)


# ---------------------------------------------------------------- invalid ids


@pytest.mark.parametrize(
    "raw",
    ["abc", "-1", "1.5", "10000001", "1" * 30, "%20", "0x10", "+5", "١٢"],
)
async def test_invalid_user_id_is_a_400_with_a_one_line_reason(client: Client, raw: str) -> None:
    response = await client.get(f"/recommend/{raw}")
    assert response.status == 400
    text = await response.text()
    assert "\n" not in text.strip() and "user id" in text
    assert metric(client, "reelfeed_server_requests_total", status="400") == 1


async def test_the_direct_path_takes_plain_ids_and_leaves_the_rest_to_the_router(
    make_app: AppFactory, fakes: Fakes
) -> None:
    with_model(fakes)
    app = make_app()
    routed: list[str] = []
    async with TestClient(TestServer(app)) as client:
        await refresh(client)
        server = client.server.runner.server if client.server.runner else None
        assert server is not None
        router = server.request_handler

        async def counting(request: web.BaseRequest) -> web.StreamResponse:
            routed.append(f"{request.method} {request.raw_path}")
            return await router(request)

        server.request_handler = answer_recommend_directly(app, counting)
        direct = await client.get("/recommend/3")
        assert direct.status == 200 and routed == []
        assert (await direct.text()).split(",") == reference_list(fakes, "v1", 3)
        assert (await client.get("/recommend/00003")).status == 200
        assert (await client.get("/recommend/99999999999")).status == 400
        assert routed == []
        # Anything but a GET of prefix and digits goes through the router, as before.
        assert (await client.get("/recommend/3?x=1")).status == 200
        assert (await client.get(URL("/recommend/%33", encoded=True))).status == 200
        assert (await client.head("/recommend/3")).status == 405
        assert (await client.post("/recommend/3")).status == 405
        assert (await client.get("/recommend/3/")).status == 404
        assert (await client.get("/recommend/")).status == 404
        assert (await client.get("/healthz")).status == 200
        assert routed == [
            "GET /recommend/3?x=1",
            "GET /recommend/%33",
            "HEAD /recommend/3",
            "POST /recommend/3",
            "GET /recommend/3/",
            "GET /recommend/",
            "GET /healthz",
        ]
    assert [record.user_id for record in fakes.provenance.records] == [3, 3, 3, 3]


# ---------------------------------------------------------------- the model's list


async def test_model_list_excludes_watched_and_matches_the_ranking(
    client: Client, fakes: Fakes
) -> None:
    with_model(fakes)
    expected_before = reference_list(fakes, "v1", 3)
    fakes.models.watched[3] = set(expected_before[:5]) | {"unknown-movie"}
    await refresh(client)

    response = await client.get("/recommend/3")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    body = await response.text()
    items = body.split(",")
    assert " " not in body and len(items) == 20 and len(set(items)) == 20
    assert not set(items) & fakes.models.watched[3]
    assert items == reference_list(fakes, "v1", 3)
    assert response.headers["X-Model-Version"] == "v1"
    assert response.headers["X-Model-Revision"] == "3"
    assert "X-Fallback" not in response.headers
    assert len(response.headers["X-Request-Id"]) == 32
    assert metric(client, "reelfeed_server_fallbacks_total", reason="unknown_user") == 0
    assert metric(client, "reelfeed_server_model_requests_total", version="v1") == 1


async def test_the_matrix_carries_its_blend_and_side_columns_to_the_scorer(
    client: Client, fakes: Fakes
) -> None:
    with_model(fakes)
    plain = fakes.models.matrices["v1"]
    genres = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], np.float32)[np.arange(300) % 4]
    ranking = {"popularity_weight": 0.1, "cold_start_events": 1.0, "side_columns": 2}
    fakes.models.matrices["v1"] = matrix = ItemMatrix(
        plain.movie_ids,
        np.hstack([plain.factors[:, :6], genres]),
        plain.biases,
        plain.revision,
        plain.popularity,
        plain.positions,
        ranking,
    )
    fakes.models.events[2] = 4
    await refresh(client)
    assert client.app is not None
    scorer = client.app[STATE].models["v1"]
    assert scorer._pruning is not None and scorer._pruning.side_columns == 2
    assert matrix.popularity is not None
    table = RankingTable(
        matrix.movie_ids, matrix.factors, matrix.biases, matrix.popularity, 0.1, 1.0
    )
    response = await client.get("/recommend/2")
    vector = fakes.models.vectors[("v1", 2)]
    assert (await response.text()).split(",") == table.recommend(vector, 4, (), 20)


async def test_each_answer_emits_a_provenance_record_matching_its_headers(
    client: Client, fakes: Fakes
) -> None:
    with_model(fakes)
    await refresh(client)
    response = await client.get("/recommend/2")
    body = await response.text()
    (record,) = fakes.provenance.records
    assert record.request_id == response.headers["X-Request-Id"]
    assert (record.user_id, record.version, record.revision) == (2, "v1", 3)
    assert record.positions == fakes.models.matrices["v1"].positions
    assert ",".join(record.items) == body
    assert record.fallback is None and 0 < record.latency_s < 1
    document = orjson.loads(record.to_json())
    assert document["request_id"] == response.headers["X-Request-Id"]
    assert document["positions"] == {"reelfeed.events:0": 300, "reelfeed.events:1": 7}


async def test_a_small_catalog_is_filled_from_popularity(
    make_app: AppFactory, fakes: Fakes
) -> None:
    fakes.models.matrices["v1"] = make_matrix(n_items=5)
    fakes.models.vectors[("v1", 1)] = np.ones(8, np.float32)
    fakes.models.watched[1] = {"movie+0", "pop0"}
    fakes.routing.routing = Routing(live="v1")
    async with TestClient(TestServer(make_app())) as client:
        items = (await (await client.get("/recommend/1")).text()).split(",")
    assert len(items) == 20 and len(set(items)) == 20
    assert sorted(items[:4]) == ["movie+1", "movie+2", "movie+3", "movie+4"]
    assert items[4:] == [f"pop{i}" for i in range(1, 17)]


async def test_a_new_revision_is_used_after_the_poll(client: Client, fakes: Fakes) -> None:
    with_model(fakes)
    await refresh(client)
    before = await client.get("/recommend/1")
    fakes.models.matrices["v1"] = make_matrix(revision=4, seed=99)
    await refresh(client)
    after = await client.get("/recommend/1")
    assert (before.headers["X-Model-Revision"], after.headers["X-Model-Revision"]) == ("3", "4")
    assert (await after.text()).split(",") == reference_list(fakes, "v1", 1)


# ---------------------------------------------------------------- fallbacks


async def test_unknown_user_gets_popularity_without_watched(client: Client, fakes: Fakes) -> None:
    with_model(fakes)
    fakes.models.watched[77] = {"pop0", "pop2"}
    await refresh(client)
    response = await client.get("/recommend/77")
    items = (await response.text()).split(",")
    assert items == [f"pop{i}" for i in range(40) if i not in (0, 2)][:20]
    assert response.headers["X-Fallback"] == "unknown_user"
    assert response.headers["X-Model-Version"] == "v1"
    assert response.headers["X-Model-Revision"] == "0"
    assert metric(client, "reelfeed_server_fallbacks_total", reason="unknown_user") == 1


async def test_unknown_user_with_a_profile_gets_the_segment_list(
    make_app: AppFactory, fakes: Fakes
) -> None:
    with_model(fakes)
    fakes.popularity.lists[segment_genre("F:25-34")] = [f"seg{i}" for i in range(30)]
    fakes.profiles.profiles[50] = UserProfile(50, 31, "scientist", "F")
    fakes.profiles.profiles[51] = UserProfile(51, 70, "retired", "M")  # no list for M:55+
    async with TestClient(TestServer(make_app())) as client:
        await refresh(client)
        segment = await (await client.get("/recommend/50")).text()
        other = await (await client.get("/recommend/51")).text()
        stranger = await (await client.get("/recommend/52")).text()
    assert segment.split(",") == [f"seg{i}" for i in range(20)]
    assert other.split(",") == stranger.split(",") == [f"pop{i}" for i in range(20)]
    # The wait for a profile stays within the deadline.
    assert all(0 <= wait <= 0.02 for _, wait in fakes.profiles.lookups)


async def test_a_short_segment_list_is_filled_and_used_before_any_model(
    make_app: AppFactory, fakes: Fakes
) -> None:
    fakes.routing.routing = Routing(live="v9")  # routed, but nothing published
    fakes.popularity.lists[segment_genre("F:25-34")] = ["seg0", "pop3", "seg1"]
    fakes.profiles.profiles[50] = UserProfile(50, 31, "scientist", "F")
    async with TestClient(TestServer(make_app())) as client:
        await refresh(client)
        response = await client.get("/recommend/50")
        items = (await response.text()).split(",")
    assert response.headers["X-Fallback"] == "no_model"
    assert items == ["seg0", "pop3", "seg1"] + [f"pop{i}" for i in range(40) if i != 3][:17]


async def test_no_model_yet_means_popularity(client: Client, fakes: Fakes) -> None:
    fakes.routing.routing = Routing(live="v9")  # routed, but nothing published
    fakes.models.watched[4] = {"pop1"}
    await refresh(client)
    response = await client.get("/recommend/4")
    assert response.headers["X-Fallback"] == "no_model"
    assert (await response.text()).split(",")[:2] == ["pop0", "pop2"]


async def test_nothing_loaded_is_still_a_200_with_an_empty_line(
    make_app: AppFactory, fakes: Fakes
) -> None:
    fakes.popularity.lists[None] = []
    async with TestClient(TestServer(make_app())) as client:
        ready = await client.get("/readyz")
        response = await client.get("/recommend/1")
        assert ready.status == 503
        assert response.status == 200 and await response.text() == ""
        assert response.headers["X-Model-Version"] == "none"
        assert response.headers["X-Fallback"] == "no_model"


async def test_slow_redis_answers_within_the_deadline_and_opens_the_breaker(
    client: Client, fakes: Fakes
) -> None:
    with_model(fakes)
    await refresh(client)
    assert "X-Fallback" not in (await client.get("/recommend/1")).headers
    fakes.models.delay_s = 1.0
    reasons = []
    for _ in range(7):
        started = time.perf_counter()
        response = await client.get("/recommend/1")
        elapsed = time.perf_counter() - started
        assert response.status == 200
        assert elapsed < 0.05 + 0.25  # the 50 ms deadline, plus the test client's overhead
        assert (await response.text()).split(",") == [f"pop{i}" for i in range(20)]
        reasons.append(response.headers["X-Fallback"])
    # Once nothing succeeded for two deadlines, three timeouts in a row open the
    # breaker: Redis is skipped for a while and answers come at once.
    timeouts = reasons.index("redis_unavailable")
    assert timeouts in (3, 4)  # the first one may come within two deadlines of a success
    assert reasons == ["redis_timeout"] * timeouts + ["redis_unavailable"] * (7 - timeouts)
    assert metric(client, "reelfeed_server_fallbacks_total", reason="redis_timeout") == timeouts
    calls = fakes.models.calls
    response = await client.get("/recommend/1")
    assert response.headers["X-Fallback"] == "redis_unavailable"
    assert fakes.models.calls == calls


async def test_an_overloaded_server_does_not_open_the_breaker(client: Client, fakes: Fakes) -> None:
    # Calls miss the deadline while others succeed: single fallbacks, no outage.
    with_model(fakes)
    await refresh(client)
    for _ in range(6):
        fakes.models.delay_s = 1.0
        assert (await client.get("/recommend/1")).headers["X-Fallback"] == "redis_timeout"
        fakes.models.delay_s = 0.0
        assert "X-Fallback" not in (await client.get("/recommend/1")).headers


async def test_failing_redis_is_a_counted_fallback(client: Client, fakes: Fakes) -> None:
    with_model(fakes)
    await refresh(client)
    fakes.models.error = ConnectionError("Redis is down")
    response = await client.get("/recommend/1")
    assert response.status == 200 and response.headers["X-Fallback"] == "redis_error"
    assert metric(client, "reelfeed_server_fallbacks_total", reason="redis_error") == 1
    fakes.models.error = None
    response = await client.get("/recommend/1")
    assert "X-Fallback" not in response.headers


async def test_a_vector_that_does_not_fit_is_a_model_error(client: Client, fakes: Fakes) -> None:
    with_model(fakes)
    fakes.models.vectors[("v1", 1)] = np.ones(5, np.float32)
    await refresh(client)
    response = await client.get("/recommend/1")
    assert response.status == 200 and response.headers["X-Fallback"] == "model_error"


async def test_a_bug_below_the_handler_is_still_a_200(client: Client, fakes: Fakes) -> None:
    fakes.routing.routing = Routing(live="v1")
    await refresh(client)
    assert client.app is not None
    client.app[STATE].models = None  # type: ignore[assignment]  # break it on purpose
    response = await client.get("/recommend/1")
    assert response.status == 200 and response.headers["X-Fallback"] == "internal_error"


# ---------------------------------------------------------------- canary routing


async def test_canary_share_routes_a_stable_share_of_users(client: Client, fakes: Fakes) -> None:
    with_model(fakes, "v1", range(0, 400))
    with_model(fakes, "v2", range(0, 400))
    fakes.routing.routing = Routing(live="v1", canary="v2", canary_share=0.25, salt="r1")
    await refresh(client)
    versions = [
        (await client.get(f"/recommend/{user}")).headers["X-Model-Version"] for user in range(400)
    ]
    assert 0.15 < versions.count("v2") / 400 < 0.35
    again = [
        (await client.get(f"/recommend/{user}")).headers["X-Model-Version"] for user in range(400)
    ]
    assert again == versions
    assert client.app is not None
    assert fakes.routing.routing.version_for(7) == versions[7]


# ---------------------------------------------------------------- operations


async def test_health_ready_metrics_openapi(client: Client, fakes: Fakes) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/health")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200  # popularity is loaded
    assert (await ready.json())["popularity"] == 40
    await client.get("/recommend/1")
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.headers["Content-Type"].startswith("text/plain")
    for name in (
        'reelfeed_server_request_latency_seconds_bucket{le="0.05"}',
        'reelfeed_server_request_latency_seconds_bucket{le="0.0005"}',
        'reelfeed_server_requests_total{status="200"} 1.0',
        'reelfeed_server_fallbacks_total{reason="no_model"} 1.0',
        'reelfeed_server_model_requests_total{version="none"} 1.0',
        'reelfeed_server_provenance_dropped_total{reason="buffer_full"} 0.0',
    ):
        assert name in text, name
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.0.3" and "/recommend/{user_id}" in document["paths"]


# ---------------------------------------------------------------- admin


async def test_admin_is_off_without_a_token(make_app: AppFactory) -> None:
    async with TestClient(TestServer(make_app(quiet_config(admin_token=None)))) as client:
        for method, path in (("GET", "/admin/routing"), ("PUT", "/admin/live")):
            response = await client.request(method, path, headers=AUTH, json={"version": "v1"})
            assert response.status == 403


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ünïcödé"],
)
async def test_admin_needs_the_right_bearer_token(client: Client, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get("/admin/routing", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_routing_changes(client: Client, fakes: Fakes) -> None:
    with_model(fakes, "v1")
    with_model(fakes, "v2")
    fakes.routing.routing = Routing()
    await refresh(client)

    response = await client.put("/admin/live", headers=AUTH, json={"version": "v1"})
    assert response.status == 200
    body = await response.json()
    assert body["live"] == "v1" and body["loaded"] == {"v1": 3}
    assert (await client.get("/recommend/1")).headers["X-Model-Version"] == "v1"

    response = await client.put(
        "/admin/canary", headers=AUTH, json={"version": "v2", "share": 1, "salt": "s1"}
    )
    body = await response.json()
    assert (body["canary"], body["canary_share"], body["salt"]) == ("v2", 1.0, "s1")
    assert body["loaded"] == {"v1": 3, "v2": 3}  # loaded before it gets traffic
    assert (await client.get("/recommend/1")).headers["X-Model-Version"] == "v2"

    assert (
        await client.put("/admin/canary", headers=AUTH, json={"version": "v1", "share": 0.5})
    ).status == 409  # noqa: E501
    response = await client.post("/admin/promote", headers=AUTH)
    body = await response.json()
    assert (body["live"], body["canary"]) == ("v2", None)
    assert (await client.post("/admin/promote", headers=AUTH)).status == 409

    await client.put("/admin/canary", headers=AUTH, json={"version": "v1", "share": 0.1})
    response = await client.delete("/admin/canary", headers=AUTH)
    assert (await response.json())["canary"] is None
    routing = await (await client.get("/admin/routing", headers=AUTH)).json()
    assert routing["live"] == "v2" and routing["revision"] == fakes.routing.routing.revision


async def test_admin_refuses_a_version_without_a_matrix_unless_forced(
    client: Client, fakes: Fakes
) -> None:
    response = await client.put("/admin/live", headers=AUTH, json={"version": "ghost"})
    assert response.status == 409 and "force" in await response.text()
    response = await client.put(
        "/admin/live", headers=AUTH, json={"version": "ghost", "force": True}
    )
    assert response.status == 200
    # The live version has no matrix: its users get popularity, counted as no_model.
    assert (await client.get("/recommend/1")).headers["X-Fallback"] == "no_model"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/live", b"not json"),
        ("/admin/live", b"[1, 2]"),
        ("/admin/live", b'{"version": ""}'),
        ("/admin/live", b'{"version": "a:b"}'),
        ("/admin/live", b'{"version": 5}'),
        ("/admin/live", b'{"version": "v1", "force": "yes"}'),
        ("/admin/canary", b'{"version": "v2"}'),
        ("/admin/canary", b'{"version": "v2", "share": 1.5}'),
        ("/admin/canary", b'{"version": "v2", "share": true}'),
        ("/admin/canary", b'{"version": "v2", "share": "0.5"}'),
        ("/admin/canary", b'{"version": "v2", "share": 0.5, "salt": ""}'),
    ],
)
async def test_admin_rejects_malformed_bodies(client: Client, path: str, body: bytes) -> None:
    response = await client.put(path, headers=AUTH, data=body)
    assert response.status == 400


async def test_admin_says_503_when_the_store_is_down(client: Client, fakes: Fakes) -> None:
    fakes.routing.error = ConnectionError("down")
    assert (await client.get("/admin/routing", headers=AUTH)).status == 503
    response = await client.put("/admin/live", headers=AUTH, json={"version": "v1", "force": True})
    assert response.status == 503
    # Serving goes on.
    assert (await client.get("/recommend/1")).status == 200


async def test_background_polls_pick_up_routing_changes(make_app: AppFactory, fakes: Fakes) -> None:
    config = quiet_config(routing_poll_s=0.05, matrix_poll_s=0.05, popularity_poll_s=0.05)
    async with TestClient(TestServer(make_app(config))) as client:
        assert (await client.get("/recommend/1")).headers["X-Model-Version"] == "none"
        with_model(fakes)
        async with asyncio.timeout(5):
            while (await client.get("/recommend/1")).headers.get("X-Fallback") is not None:
                await asyncio.sleep(0.05)
        assert (await client.get("/recommend/1")).headers["X-Model-Revision"] == "3"
