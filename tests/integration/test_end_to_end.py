"""The whole service on the real stack, driven by the simulated site.

Half of the users (a stable hash) are served by the learning model ``v1``, the other
half by ``pop``, a version that never learns and therefore answers with popularity.
The simulator knows every user's hidden taste and reports how well each served list
matched it, per version: the personalized lists must match better, by a margin.

Each arm's *lift* is the mean hidden match of its served lists minus that of the
world's popularity list for the same user at the same moment; it takes out the luck
of which users fall in which arm, so the margin is stated on it: v1's lift must exceed
pop's by ``LIFT_MARGIN``, and v1's lists must match better outright.

Measured with these settings (150 users, 100 s at 1800x, ~80k lines, 600-850 lists
per arm), v1 against pop, served match and lift:

- five runs on 2 shared cores: 0.243 vs 0.176 (lift +0.056 vs -0.009, difference
  0.065), 0.236 vs 0.184 (0.048), 0.235 vs 0.177 (0.049), 0.228 vs 0.172 (0.035),
  and 0.201 vs 0.169 (0.026, beside another test suite); 115-170 s each;
- the same world offline (``Site.run_offline`` with the model in-process): differences
  0.061 and 0.066 on two seeds; with the model as it was before genre features and
  the lighter popularity blend, 0.000 and 0.001 (on the stack, with 400 users over 15
  simulated hours, it lost outright: 0.178 vs 0.193).

The workers get the simulated world's catalog (``REELFEED_CATALOG_PATH``): ingest for
runtimes, the learner for runtimes and for the genres it gives the model as side
features of the items (see ``OnlineMF``).
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
from sim.world import World, WorldConfig
from state import KeySchema, RoutingStore
from tests.integration.workers import WorkerProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Real seconds of simulation: at 1800x, 50 simulated hours (about 80k lines).
REPORTS = Path(__file__).resolve().parents[2] / "reports"
SIM_SECONDS = 100
#: The simulated world, the same in the test (for the catalog) and in the simulator.
WORLD = WorldConfig(catalog="synthetic", movies=400, users=150, seed=5)
#: Smallest lift of v1 over the pop arm (each arm's lift: the mean hidden match of its
#: served lists minus that of the popularity list for the same user and moment); about
#: 8% of the popularity list's match (0.19), and 0.026-0.065 measured.
LIFT_MARGIN = 0.015


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
    world = World.build(WORLD)
    catalog = tmp_path / "catalog.csv"
    world.write_catalog(catalog)
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
        "REELFEED_LEARN_PARAMS": orjson.dumps({"n_factors": 32}).decode(),
        "REELFEED_CATALOG_PATH": str(catalog),
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
                f"--movies={WORLD.movies}",
                f"--users={WORLD.users}",
                "--speed=1800",
                "--lines-per-second=800",
                f"--duration={SIM_SECONDS}",
                "--no-noise",
                f"--seed={WORLD.seed}",
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
    # Conversion: the share of an arm's lists followed, within the window, by a watch of
    # a listed movie. Reported for the note, not asserted: with a few hundred lists per
    # arm its noise is larger than the difference the hidden match measures.
    conversion = summary["site"]["conversion"]["by_version"]
    followed = summary["site"]["conversion"]["followed_by_version"]
    report = {
        "truth": {"v1": personalized, "pop": popularity},
        "conversion": {"v1": conversion["v1"], "pop": conversion["pop"]},
        "followed": {"v1": followed["v1"], "pop": followed["pop"]},
    }
    print(orjson.dumps(report).decode())
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "end-to-end.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    assert personalized["lists"] >= 300 and popularity["lists"] >= 300
    lift = {
        version: figures["served_match"] - figures["popularity_match"]
        for version, figures in (("v1", personalized), ("pop", popularity))
    }
    figures = (
        f"v1 served {personalized['served_match']:.4f} (lift {lift['v1']:+.4f}, "
        f"{personalized['lists']} lists), pop served {popularity['served_match']:.4f} "
        f"(lift {lift['pop']:+.4f}, {popularity['lists']} lists)"
    )
    assert lift["v1"] > lift["pop"] + LIFT_MARGIN, figures
    assert personalized["served_match"] > popularity["served_match"], figures


async def _live_is(routing: RoutingStore, version: str) -> bool:
    return (await routing.get()).live == version
