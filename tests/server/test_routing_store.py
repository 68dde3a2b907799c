"""state.routing: the stable hash, and RoutingStore's atomic changes on the real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from state import KeySchema, Routing, RoutingConflict, RoutingStore, canary_bucket


@given(salt=st.text(min_size=1, max_size=20), user_id=st.integers(0, 10**7))
def test_bucket_is_stable_and_in_range(salt: str, user_id: int) -> None:
    bucket = canary_bucket(salt, user_id)
    assert 0.0 <= bucket < 1.0 and bucket == canary_bucket(salt, user_id)


def test_buckets_are_uniform_and_salts_reshuffle() -> None:
    users = range(20_000)
    a = [canary_bucket("release-1", u) < 0.1 for u in users]
    b = [canary_bucket("release-2", u) < 0.1 for u in users]
    assert 0.09 < sum(a) / len(users) < 0.11
    both = sum(x and y for x, y in zip(a, b, strict=True)) / len(users)
    assert 0.005 < both < 0.015  # independent samples: about 1%


def test_routing_without_canary_share_never_hashes_to_the_canary() -> None:
    routing = Routing(live="v1", canary="v2", canary_share=0.0, salt="s")
    assert {routing.version_for(u) for u in range(1000)} == {"v1"}
    assert Routing(canary="v2", canary_share=0.5, salt="s").version_for(3) == "v2"


@pytest.mark.integration
async def test_store_changes_are_atomic_and_counted(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    store = RoutingStore(redis_client, KeySchema(unique_name))
    assert await store.get() == Routing()

    routing = await store.set_live("v1")
    assert (routing.live, routing.canary, routing.revision) == ("v1", None, 1)

    routing = await store.set_canary("v2", 0.2, "salt-1")
    assert (routing.canary, routing.canary_share, routing.salt, routing.revision) == (
        "v2",
        0.2,
        "salt-1",
        2,
    )
    assert await store.get() == routing

    with pytest.raises(RoutingConflict):
        await store.set_canary("v1", 0.5)
    with pytest.raises(ValueError):
        await store.set_canary("v3", 1.5)
    with pytest.raises(ValueError):
        await store.set_live("bad version")

    fresh = await store.set_canary("v3", 0.5)  # a new salt per release by default
    assert fresh.salt and fresh.salt != "salt-1"

    routing = await store.promote_canary()
    assert (routing.live, routing.canary, routing.canary_share, routing.salt) == ("v3", None, 0, "")
    with pytest.raises(RoutingConflict):
        await store.promote_canary()

    await store.set_canary("v4", 0.1)
    routing = await store.set_live("v4")  # making the canary live ends the canary
    assert (routing.live, routing.canary) == ("v4", None)
    await store.set_canary("v5", 0.1)
    routing = await store.clear_canary()
    assert (routing.live, routing.canary, routing.revision) == ("v4", None, 8)


@pytest.mark.integration
async def test_concurrent_changes_lose_no_revision(
    redis_client: aioredis.Redis, unique_name: str
) -> None:
    store = RoutingStore(redis_client, KeySchema(unique_name))
    await asyncio.gather(*(store.set_live(f"v{i}") for i in range(50)))
    routing = await store.get()
    assert routing.revision == 50 and routing.live is not None
