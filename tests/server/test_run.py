"""run_server as a process: two workers sharing the port, metrics summed over both."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.integration.workers import free_port
from tests.processes import alive, started
from tests.server.conftest import seed_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_MAIN = """
import logging, sys, orjson
from server import ServerConfig, run_server
logging.basicConfig(level="INFO", format="%(process)d %(name)s %(message)s")
sys.exit(run_server(ServerConfig(**orjson.loads(sys.argv[1])), workers=int(sys.argv[2])))
"""


async def _get(url: str) -> tuple[int, str, dict[str, str]]:
    # A new connection per request, so that the kernel may pick either worker.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.text(), dict(response.headers)


async def test_two_workers_share_the_port_and_their_metrics(
    redis_url: str, redis_client: aioredis.Redis, unique_name: str, tmp_path: Path
) -> None:
    await seed_redis(redis_client, unique_name)
    port = free_port()
    config = {
        "port": port,
        "redis_url": redis_url,
        "redis_prefix": unique_name,
        "kafka_bootstrap": f"127.0.0.1:{free_port()}",  # Kafka down: served all the same
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _MAIN, orjson.dumps(config).decode(), "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60):
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if (await _get(f"{base}/readyz"))[0] == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        for user in range(40):
            status, body, headers = await _get(f"{base}/recommend/{user % 20 + 1}")
            assert status == 200 and len(body.split(",")) == 20
            # The model's lists, read under uvloop as in production: no fallback.
            assert "X-Fallback" not in headers and headers["X-Model-Version"] == "v1", headers
        # Each worker adds its counts to the shared files every half second (a scrape
        # flushes its own worker at once): after that, any worker's scrape has them all.
        await asyncio.sleep(1.0)
        for _ in range(6):
            _, text, _ = await _get(f"{base}/metrics")
            match = re.search(r'reelfeed_server_requests_total\{status="200"\} (\S+)', text)
            assert match is not None and float(match.group(1)) == 40.0, text
        # Both workers served: one "serving on" line per pid.
        await asyncio.sleep(0.1)
        serving = re.findall(r"server\.run\[(\d+)\]: serving on", log_path.read_text())
        assert len(set(serving)) == 2
        workers = [started(int(pid)) for pid in set(serving)]
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    assert code == 0, log_path.read_text()
    assert not [worker for worker in workers if alive(worker)]


def test_workers_must_be_positive() -> None:
    from server import ServerConfig, run_server

    with pytest.raises(ValueError):
        run_server(ServerConfig(), workers=0)
