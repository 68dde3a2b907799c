"""The real-time driver, the HTTP client of /recommend, and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from sim.cli import main
from sim.faults import FaultConfig, RatingBurstConfig, WatchBotsConfig
from sim.simulation import (
    FunctionRecommender,
    HttpRecommender,
    ListSink,
    Simulation,
    SimulationConfig,
)
from sim.site import SiteConfig
from sim.world import World, WorldConfig
from tests.sim.formats import match_any

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(**site: Any) -> SimulationConfig:
    settings = SiteConfig(speed=3000.0, arrivals_per_second=5.0, warm_start=False)
    return SimulationConfig(
        world=WorldConfig(catalog="synthetic", movies=300, users=2000, seed=1),
        site=replace(settings, **site),
        faults=FaultConfig(noise_rate=0.0),
        start=1_698_218_457.0,
    )


@pytest.fixture
async def fake_service() -> AsyncIterator[tuple[str, list[str]]]:
    """A recommendation service on a free port: 20 ids and a version header; user 13 gets
    a 500, user 14 an answer after 2 s."""
    world = World.build(_config().world)
    ids = [m.movie_id for m in world.movies[:20]]

    async def recommend(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if user_id == "13":
            return web.Response(status=500, text="boom,\nreally")
        if user_id == "14":
            await asyncio.sleep(2.0)
        return web.Response(text=",".join(ids), headers={"X-Model-Version": "v2"})

    app = web.Application()
    app.router.add_get("/recommend/{user_id}", recommend)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", ids
    finally:
        await runner.cleanup()


async def test_http_recommender_outcomes(fake_service: tuple[str, list[str]]) -> None:
    url, ids = fake_service
    client = HttpRecommender(url, timeout_ms=300)
    try:
        ok = await client(7)
        assert ok.status == 200 and ok.ids == tuple(ids) and ok.version == "v2"
        assert 0 < ok.latency_ms < 300
        failed = await client(13)
        assert (failed.status, failed.label, failed.result_text) == (
            500,
            "http_error",
            "boom, really",
        )
        late = await client(14)
        port = url.rsplit(":", 1)[1]
        assert (late.status, late.label) == (0, "timeout")
        assert late.result_text == (
            "java.util.concurrent.TimeoutException: "
            f"Request timeout to 127.0.0.1/127.0.0.1:{port} after 300 ms"
        )
        assert late.latency_ms >= 290
    finally:
        await client.close()
    closed = HttpRecommender(f"http://127.0.0.1:{_free_port()}")
    try:
        refused = await closed(1)
    finally:
        await closed.close()
    assert (refused.status, refused.label) == (0, "refused")
    assert refused.result_text == "java.net.ConnectException: Connection refused"


async def test_simulation_calls_the_service_and_logs_its_answers(
    fake_service: tuple[str, list[str]],
) -> None:
    url, ids = fake_service
    sink = ListSink()
    config = _config(warm_start=True, arrivals_per_second=20.0)
    simulation = Simulation(config, recommend=url, sink=sink)
    summary = await simulation.run(duration_s=1.5)
    kinds = {record.kind for record in sink.records}
    assert kinds == {"watch", "rate", "recommend"}
    for record in sink.records:
        found = match_any(record.value.decode())
        assert found is not None, record.value
        assert record.key == found[1].group(2).encode()
        if found[0] == "recommend":
            assert found[1].group(3) == url.removeprefix("http://")  # the URL's host:port
            assert found[1].group(4) == ", ".join(ids)
    assert summary["lines_sent"] == len(sink.records)
    site = summary["site"]
    assert isinstance(site, dict) and site["requests"].get("ok", 0) > 10
    truth = simulation.truth_report()["by_version"]
    assert isinstance(truth, dict) and set(truth) == {"v2"}
    metrics = generate_latest(simulation.registry).decode()
    assert 'reelfeed_sim_recommend_requests_total{outcome="ok"}' in metrics
    assert 'reelfeed_sim_lines_total{actor="user",kind="watch"}' in metrics
    assert "reelfeed_sim_recommend_latency_seconds_bucket" in metrics
    assert 'reelfeed_sim_truth_list_match_count{list="served",version="v2"}' in metrics


async def test_run_stops_after_the_lines_asked_for_or_on_stop() -> None:
    sink = ListSink()
    simulation = Simulation(_config(), recommend=FunctionRecommender(lambda u: []), sink=sink)
    summary = await simulation.run(lines=123)
    assert summary["lines_sent"] == len(sink.records) == 123
    assert summary["running"] is False

    endless = Simulation(
        _config(warm_start=True), recommend=FunctionRecommender(lambda u: []), sink=ListSink()
    )
    task = asyncio.create_task(endless.run())
    await asyncio.sleep(0.3)
    assert endless.status()["running"] is True
    endless.stop()
    summary = await asyncio.wait_for(task, 5)
    assert summary["running"] is False and endless.lines_sent > 0


async def test_noise_and_attacks_reach_the_sink() -> None:
    config = replace(
        _config(),
        faults=FaultConfig(
            noise_rate=0.05,
            rating_burst=RatingBurstConfig(accounts=20, start_after_s=0.1, spread_s=0.2),
            watch_bots=WatchBotsConfig(bots=2),
        ),
    )
    sink = ListSink()
    simulation = Simulation(config, recommend=FunctionRecommender(lambda u: []), sink=sink)
    await simulation.run(duration_s=1.0)
    faults = {record.fault for record in sink.records} - {None}
    assert len(faults) >= 4
    actors = {record.actor for record in sink.records}
    assert actors == {"user", "rating_burst", "watch_bots"}
    account = next(r for r in sink.records if r.actor == "rating_burst").key
    assert account is not None and simulation.user(int(account)) is not None
    assert simulation.user(10**9) is None


def test_cli_writes_lines_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "movielog.txt"
    catalog = tmp_path / "catalog.csv"
    code = main(
        [
            "--output", str(output), "--no-api", "--duration", "1.5",
            "--catalog", "synthetic", "--movies", "300", "--users", "2000",
            "--speed", "600", "--lines-per-second", "300",
            "--recommend-url", f"http://127.0.0.1:{_free_port()}",
            "--export-catalog", str(catalog), "--log-level", "WARNING",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    lines = output.read_text().splitlines()
    assert summary["lines_sent"] == len(lines) > 100
    assert summary["site"]["requests"]["refused"] > 0
    assert any("java.net.ConnectException: Connection refused" in line for line in lines)
    assert len(catalog.read_text().splitlines()) == 301


@pytest.mark.parametrize(
    "argv",
    [
        ["--faults", "loud=1"],
        ["--attack", "meteor"],
        ["--attack", "rating-burst:accounts=0"],
        ["--recommend-url", "not a url"],
        ["--catalog", "/nonexistent.csv", "--output", "-"],
    ],
)
def test_cli_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--no-api", "--duration", "0"]) == 2
    assert capsys.readouterr().err.startswith("sim: ")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_m_sim_serves_the_api_and_stops_cleanly_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    port = _free_port()
    output = tmp_path / "lines.txt"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "sim", "--output", str(output),
            "--api-port", str(port), "--catalog", "synthetic", "--movies", "300",
            "--users", "2000", "--speed", "600", "--log-level", "WARNING",
            "--recommend-url", f"http://127.0.0.1:{_free_port()}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                status, body = _get(f"http://127.0.0.1:{port}/sim/status")
                if status == 200 and json.loads(body)["lines_sent"] > 0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        status, body = _get(f"http://127.0.0.1:{port}/user/1")
        assert status == 200 and set(json.loads(body)) == {"user_id", "age", "occupation", "gender"}
        assert _get(f"http://127.0.0.1:{port}/user/0")[0] == 404
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"reelfeed_sim_lines_total" in body
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["lines_sent"] == len(output.read_text().splitlines()) > 0
