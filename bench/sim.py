"""Simulator benchmark: how many lines a second it sustains, and what the default costs.

Prints one JSON object:

- ``core``: lines/s of the pure site core driven offline (no clock, no I/O), with the
  noise injector and line rendering, as the ceiling of the Python side;
- ``kafka_ceiling``: lines/s of a bare aiokafka producer sending the same lines (the
  baseline: what any producer in this process gets from the broker);
- ``flat_out``: lines/s of a whole ``Simulation`` to Kafka, with HTTP calls to a local
  recommendation service, when asked for far more than it can give (and the same
  without the ground truth, which scores every served list against 27k movies);
- ``default``: the default pace (course catalog, 1M users, 60x, 200 lines/s) for
  ``--seconds``: lines/s reached and the CPU share of this process.

Run: ``.venv/bin/python -m bench.sim [--seconds 20]`` (uses the test stack's broker).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from reelfeed.infra import (
    KafkaBroker,
    create_topics,
    default_cache_dir,
    resolve_kafka_jars,
    testing_stack,
)
from sim.faults import FaultConfig, NoiseInjector
from sim.simulation import KafkaSink, Simulation, SimulationConfig
from sim.site import Site, SiteConfig
from sim.world import World, WorldConfig
from tests.integration.workers import free_port


def _core(world: World) -> tuple[float, list[bytes]]:
    popular = [world.movies[i].movie_id for i in world.popular_movies(20)]
    site = Site(world, SiteConfig(arrivals_per_second=5.0, warm_start=False), 1.7e9, seed=1)
    noise = NoiseInjector(FaultConfig().noise_rate, seed=1)
    began = time.perf_counter()
    lines = site.run_offline(1.7e9 + 12 * 3600, lambda user_id: popular)
    values = [record.value for line in lines for record in noise.apply(line)]
    return len(values) / (time.perf_counter() - began), values


async def _kafka_ceiling(bootstrap: str, topic: str, values: list[bytes]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await producer.start()
    try:
        began = time.perf_counter()
        for value in values:
            fields = value.split(b",", 2)
            await producer.send(topic, value, key=fields[1] if len(fields) == 3 else None)
        await producer.flush()
        return len(values) / (time.perf_counter() - began)
    finally:
        await producer.stop()


async def _service(ids: list[str]) -> tuple[web.AppRunner, str]:
    body = ",".join(ids)

    async def recommend(request: web.Request) -> web.Response:
        return web.Response(text=body)

    app = web.Application()
    app.router.add_get("/recommend/{user_id}", recommend)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _simulate(
    config: SimulationConfig, world: World, url: str, bootstrap: str, seconds: float
) -> dict[str, float]:
    topic = f"bench-sim-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topics, bootstrap, {topic: 4})
    simulation = Simulation(config, recommend=url, sink=KafkaSink(bootstrap, topic), world=world)
    cpu = time.process_time()
    summary = await simulation.run(duration_s=seconds)
    elapsed = float(summary["elapsed_s"])  # type: ignore[arg-type]
    return {
        "seconds": round(elapsed, 1),
        "lines": simulation.lines_sent,
        "lines_per_second": round(simulation.lines_sent / elapsed, 1),
        "cpu_share": round((time.process_time() - cpu) / elapsed, 3),
        "recommend_calls": sum(simulation.site.stats.requests.values()),
    }


async def _run(bootstrap: str, seconds: float) -> dict[str, object]:
    synthetic = World.build(WorldConfig(catalog="synthetic", movies=27_000, seed=1))
    core_rate, values = _core(synthetic)
    topic = f"bench-sim-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topics, bootstrap, {topic: 4})
    ceiling = await _kafka_ceiling(bootstrap, topic, values)
    ids = [synthetic.movies[i].movie_id for i in synthetic.popular_movies(20)]
    runner, url = await _service(ids)
    try:
        flat_out = await _simulate(
            SimulationConfig(
                site=SiteConfig(speed=100_000.0, arrivals_per_second=2000.0, warm_start=False)
            ),
            synthetic,
            url,
            bootstrap,
            seconds,
        )
        load_only = await _simulate(
            SimulationConfig(
                site=SiteConfig(
                    speed=100_000.0,
                    arrivals_per_second=2000.0,
                    warm_start=False,
                    ground_truth=False,
                )
            ),
            synthetic,
            url,
            bootstrap,
            seconds,
        )
        course = World.build(WorldConfig())
        default = await _simulate(SimulationConfig(), course, url, bootstrap, seconds)
    finally:
        await runner.cleanup()
    return {
        "core": {"lines": len(values), "lines_per_second": round(core_rate)},
        "kafka_ceiling": {"lines_per_second": round(ceiling)},
        "flat_out": flat_out,
        "flat_out_without_truth": load_only,
        "default": {"catalog": course.source, "target_lines_per_second": 200.0, **default},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    stack = testing_stack(os.environ)
    broker = KafkaBroker(stack, resolve_kafka_jars(default_cache_dir(os.environ)))
    started = broker.start()
    try:
        report = asyncio.run(_run(broker.bootstrap, args.seconds))
    finally:
        if started:
            broker.stop()
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
