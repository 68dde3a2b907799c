"""The whole service on the real stack, driven by the simulated site.

Half of the users (a stable hash) are served by the learning model ``v1``, the other
half by ``pop``, a version that never learns and therefore answers with popularity.
The simulator knows every user's hidden taste and reports how well each served list
matched it, per version: the personalized lists must match better, by a margin.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from reelfeed.infra import create_topics
from state import KeySchema, RoutingStore
from tests.integration.workers import WorkerProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM_SECONDS = 90


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known gap: on the simulated site the online model does not yet beat popularity "
        "(served match 0.178 vs 0.193 over 90 s; offline over 10 simulated days 0.112 vs "
        "0.109), although it beats it on MovieLens (Recall@20 0.134 vs 0.094)"
    ),
)
async def test_personalized_lists_match_tastes_better_than_popularity(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topics = {name: f"{unique_name}.{name}" for name in ("raw", "events", "rejected", "recs")}
    await asyncio.to_thread(
        create_topics,
        kafka_bootstrap,
        {topics["raw"]: 2, topics["events"]: 2, topics["rejected"]: 1, topics["recs"]: 1},
    )
    port = free_port()
    env = {
        "REELFEED_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": unique_name,
        "REELFEED_RAW_TOPIC": topics["raw"],
        "REELFEED_EVENTS_TOPIC": topics["events"],
        "REELFEED_REJECTED_TOPIC": topics["rejected"],
        "REELFEED_RECOMMENDATIONS_TOPIC": topics["recs"],
        "REELFEED_TOPIC_PARTITIONS": "2",
        "REELFEED_INGEST_APP_ID": f"{unique_name}-ingest",
        "REELFEED_INGEST_METRICS_PORT": "0",
        "REELFEED_LEARN_METRICS_PORT": "0",
        "REELFEED_LEARN_PARAMS": '{"n_factors": 32}',
        "REELFEED_LEARN_PUBLISH_INTERVAL": "1",
        "REELFEED_SERVER_PORT": str(port),
    }
    workers = [WorkerProcess(role, env, tmp_path, role) for role in ("ingest", "learn", "serve")]
    for worker in workers:
        worker.start()
    routing = RoutingStore(redis_client, KeySchema(unique_name))
    try:
        await wait_until(lambda: _live_is(routing, "v1"), 60, workers[1])
        await routing.set_canary("pop", 0.5, salt="e2e")
        simulator = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "sim",
                f"--bootstrap={kafka_bootstrap}",
                f"--topic={topics['raw']}",
                f"--recommend-url=http://127.0.0.1:{port}",
                "--no-api",
                "--catalog=synthetic",
                "--movies=400",
                "--users=400",
                "--speed=600",
                "--lines-per-second=400",
                f"--duration={SIM_SECONDS}",
                "--no-noise",
                "--seed=5",
            ],
            capture_output=True,
            timeout=SIM_SECONDS + 120,
        )
        for worker in workers:
            worker.assert_alive()
    finally:
        codes = [worker.stop() for worker in reversed(workers)]
    assert simulator.returncode == 0, simulator.stderr.decode()[-3000:]
    assert codes == [0, 0, 0], [w.log_tail() for w in workers]
    summary = orjson.loads(simulator.stdout)
    by_version = summary["truth"]["by_version"]
    personalized, popularity = by_version["v1"], by_version["pop"]
    print(orjson.dumps({"v1": personalized, "pop": popularity}).decode())
    assert personalized["lists"] >= 200 and popularity["lists"] >= 200
    # Mean hidden match (0..1) of the served lists: the stated margin is 0.02.
    assert personalized["served_match"] > popularity["served_match"] + 0.02


async def _live_is(routing: RoutingStore, version: str) -> bool:
    return (await routing.get()).live == version
