"""The shared deadline timer of the per-answer Redis waits, and the batched metrics:
the same outcomes and figures as ``asyncio.timeout`` and per-call prometheus_client."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from server.config import ServerConfig
from server.metrics import LATENCY_BUCKETS, ServerMetrics
from server.service import Recommender, ServingState, _Deadlines
from state import Routing, UserContext
from tests.server.conftest import FakeModels, FakeProfiles


async def _waits(deadlines: _Deadlines, delay_s: float) -> str:
    pending = deadlines.start()
    try:
        await asyncio.sleep(delay_s)
        return "done"
    except asyncio.CancelledError:
        if not pending.timed_out():
            raise
        return "timeout"
    finally:
        pending.done = True


async def test_waits_past_the_deadline_time_out_and_the_others_finish() -> None:
    deadlines = _Deadlines(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(
        *(_waits(deadlines, delay) for delay in (0.0, 0.01, 1.0, 0.02, 2.0, 0.0))
    )
    assert outcomes == ["done", "done", "timeout", "done", "timeout", "done"]
    assert loop.time() - started < 0.5  # the slow ones were cut at 50 ms
    # Later waits get their own timer once the queue is empty again.
    assert await _waits(deadlines, 1.0) == "timeout"
    assert await _waits(deadlines, 0.0) == "done"


async def test_a_caller_that_leaves_is_cancelled_not_timed_out() -> None:
    deadlines = _Deadlines(0.5)
    task = asyncio.ensure_future(_waits(deadlines, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timed_out_answer_leaves_its_task_uncancelled() -> None:
    models = FakeModels()
    models.delay_s = 1.0
    state = ServingState(20)
    state.routing = Routing(live="v1")
    recommender = Recommender(
        state, models, FakeProfiles(), ServerMetrics(), ServerConfig(deadline_s=0.02)
    )
    answer = await recommender.recommend(7)
    assert answer.fallback == "redis_timeout"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    models.delay_s = 0.0
    assert (await recommender.recommend(7)).fallback == "no_model"
    assert isinstance(await models.user_context("v1", 7), UserContext)


async def test_timeouts_of_a_process_that_did_not_run_do_not_open_the_breaker() -> None:
    models = FakeModels()
    state = ServingState(20)
    state.routing = Routing(live="v1")
    config = ServerConfig(deadline_s=0.1, redis_failures_to_open=3, redis_retry_s=60.0)
    recommender = Recommender(state, models, FakeProfiles(), ServerMetrics(), config)

    async def stalled_answers() -> list[str | None]:
        models.delay_s = 1.0
        answers = [asyncio.ensure_future(recommender.recommend(user)) for user in range(5)]
        await asyncio.sleep(0)  # all five wait for Redis now
        time.sleep(0.6)  # the process does not run for six deadlines
        return [answer.fallback for answer in await asyncio.gather(*answers)]

    assert await stalled_answers() == ["redis_timeout"] * 5
    models.delay_s = 0.0
    # Redis is asked again (no model is loaded, so the list is popularity), not skipped.
    assert (await recommender.recommend(9)).fallback == "no_model"

    # The same five timeouts noticed in time open it: Redis did not answer.
    models.delay_s = 1.0
    await asyncio.sleep(0.25)  # two deadlines since the last success
    answers = await asyncio.gather(*(recommender.recommend(user) for user in range(5)))
    assert [answer.fallback for answer in answers] == ["redis_timeout"] * 5
    assert (await recommender.recommend(9)).fallback == "redis_unavailable"


def test_batched_metrics_equal_per_call_prometheus_client() -> None:
    rng = random.Random(5)
    latencies = [
        rng.choice([0.0, 0.0005, 0.01, 2.0]) if i % 7 == 0 else rng.random() / 20
        for i in range(3_000)
    ]
    reference = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    metrics = ServerMetrics()
    for i, latency in enumerate(latencies):
        reference.observe(latency)
        if i % 10 == 0:
            metrics.rejected(latency)
        else:
            metrics.answered(latency, "v1" if i % 3 else None)
    metrics.fallback("no_model")
    metrics.fallback("something_new")
    # Collecting the registry flushes what is pending.
    value = metrics.registry.get_sample_value
    name = "reelfeed_server_request_latency_seconds"
    for bound in (*LATENCY_BUCKETS, float("inf")):
        label = "+Inf" if bound == float("inf") else str(bound)
        expected = sum(1 for latency in latencies if latency <= bound)
        assert value(f"{name}_bucket", {"le": label}) == expected, bound
    assert value(f"{name}_count") == len(latencies)
    assert value(f"{name}_sum") == pytest.approx(sum(latencies))
    assert value("reelfeed_server_requests_total", {"status": "400"}) == 300
    assert value("reelfeed_server_requests_total", {"status": "200"}) == 2_700
    answered_v1 = sum(1 for i in range(3_000) if i % 10 and i % 3)
    assert value("reelfeed_server_model_requests_total", {"version": "v1"}) == answered_v1
    assert value("reelfeed_server_model_requests_total", {"version": "none"}) == 2_700 - answered_v1
    assert value("reelfeed_server_fallbacks_total", {"reason": "something_new"}) == 1
    # Nothing is counted twice.
    metrics.flush()
    assert value(f"{name}_count") == len(latencies)
    assert b'reelfeed_server_fallbacks_total{reason="no_model"} 1.0' in metrics.exposition()
