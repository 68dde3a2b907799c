"""Workers hand back connections above their share (``server.balance``)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import BALANCE
from server.balance import ConnectionBalance
from tests.server.conftest import AppFactory


async def test_a_worker_above_its_share_closes_that_many_connections(
    make_app: AppFactory,
) -> None:
    app = make_app()
    counts = [0, 1]
    balance = ConnectionBalance(counts, 0)
    app[BALANCE] = balance
    async with TestClient(TestServer(app)) as client:
        assert balance.update(8) == 2  # 8 and 1: the share is 5, one more is kept
        closing = []
        for user in range(5):
            response = await client.get(f"/recommend/{user + 1}")
            assert response.status == 200
            assert (await response.text()).count(",") == 19
            closing.append(response.headers.get("Connection", "").lower() == "close")
        assert closing == [True, True, False, False, False]
        assert balance.shed_total == 2
        # Balanced again: nothing more is closed.
        counts[1] = 4
        assert balance.update(5) == 0
        response = await client.get("/recommend/1")
        assert response.headers.get("Connection", "").lower() != "close"


def test_a_worker_must_be_one_of_the_counts() -> None:
    import pytest

    with pytest.raises(ValueError, match="not one of 2"):
        ConnectionBalance([0, 0], 2)
    with pytest.raises(ValueError, match="slack"):
        ConnectionBalance([0, 0], 0, slack=-1)


def test_an_app_without_a_balance_keeps_connections(make_app: AppFactory) -> None:
    assert BALANCE not in make_app()
    assert isinstance(make_app(), web.Application)


async def test_the_balance_task_exports_connections_and_closes() -> None:
    import asyncio
    import contextlib
    from types import SimpleNamespace

    from server.metrics import ServerMetrics
    from server.run import keep_balance

    metrics = ServerMetrics()
    counts = [0, 2]
    balance = ConnectionBalance(counts, 0)
    server = SimpleNamespace(connections=[object()] * 9)  # 9 and 2: share 6, one kept
    task = asyncio.get_running_loop().create_task(
        keep_balance(balance, server, metrics, interval_s=0.01)  # type: ignore[arg-type]
    )
    try:
        await asyncio.sleep(0.05)
        assert counts == [9, 2]
        assert metrics.registry.get_sample_value("reelfeed_server_connections") == 9
        assert [balance.shed() for _ in range(3)] == [True, True, False]
        server.connections = [object()] * 7
        await asyncio.sleep(0.05)
        value = metrics.registry.get_sample_value("reelfeed_server_connections_rebalanced_total")
        assert value == 2
        assert metrics.registry.get_sample_value("reelfeed_server_connections") == 7
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
