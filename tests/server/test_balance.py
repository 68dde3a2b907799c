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
