"""The simulator against the real Kafka broker and a tiny recommendation service."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from reelfeed.infra import create_topics
from sim.faults import FaultConfig
from sim.simulation import KafkaSink, Simulation, SimulationConfig
from sim.site import SiteConfig
from sim.world import World, WorldConfig
from tests.integration.workers import consume_all, free_port
from tests.sim.formats import match_any

pytestmark = pytest.mark.integration

WORLD = WorldConfig(catalog="synthetic", movies=500, users=5000, seed=2)


@pytest.fixture
async def fake_service() -> AsyncIterator[tuple[str, list[str]]]:
    """``GET /recommend/<uid>`` answering the same 20 ids to everyone."""
    world = World.build(WORLD)
    ids = [world.movies[i].movie_id for i in world.popular_movies(20)]

    async def recommend(request: web.Request) -> web.Response:
        return web.Response(text=",".join(ids))

    app = web.Application()
    app.router.add_get("/recommend/{user_id}", recommend)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", ids
    finally:
        await runner.cleanup()


async def test_lines_reach_the_topic_well_formed_and_keyed_by_user(
    kafka_bootstrap: str, unique_name: str, fake_service: tuple[str, list[str]]
) -> None:
    url, ids = fake_service
    topic = f"{unique_name}.movielog"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    config = SimulationConfig(
        world=WORLD,
        site=SiteConfig(
            speed=1200.0,
            lines_per_second=300.0,
            server_name=url.removeprefix("http://"),
        ),
        faults=FaultConfig(noise_rate=0.0),
    )
    simulation = Simulation(config, recommend=url, sink=KafkaSink(kafka_bootstrap, topic))
    summary = await simulation.run(duration_s=4.0)
    sent = simulation.lines_sent
    assert sent == summary["lines_sent"] and sent > 300
    assert summary["sink_errors"] == 0

    received = await consume_all(kafka_bootstrap, topic, expected=sent)
    assert len(received) == sent
    kinds: Counter[str] = Counter()
    for key, value, _ in received:
        found = match_any(value.decode())
        assert found is not None, value
        kind, match = found
        kinds[kind] += 1
        assert key == match.group(2).encode()
        if kind == "recommend":
            assert match.group(3) == config.site.server_name
            assert match.group(4).split(", ") == ids
    assert set(kinds) == {"watch", "rate", "recommend"}
    assert kinds["watch"] > kinds["recommend"] > 0
