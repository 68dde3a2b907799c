"""The ingest features in the real Redis: counted once, decayed right, replay-safe."""

from __future__ import annotations

import math

import pytest
import redis.asyncio as aioredis

from state import (
    FeatureStore,
    KeySchema,
    RatingUpdate,
    RejectUpdate,
    RequestUpdate,
    WatchUpdate,
)

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_700_000_000.0


@pytest.fixture
def store(redis_client: aioredis.Redis, unique_name: str) -> FeatureStore:
    return FeatureStore(redis_client, KeySchema(unique_name), half_life_s=DAY)


def watch(offset: int, user: int, movie: str, minute: int, t: float = T0) -> WatchUpdate:
    return WatchUpdate(offset, user, movie, minute, t, ("Drama",))


async def test_a_watch_counts_once_and_keeps_the_furthest_minute(store: FeatureStore) -> None:
    minutes = [0, 1, 2, 5, 3, 4]
    result = await store.apply(
        "movielog", 0, [watch(i, 7, "heat+1995", m) for i, m in enumerate(minutes)]
    )
    assert (result.applied, result.skipped, result.watermark) == (6, 0, 5)
    assert await store.watched(7) == {"heat+1995": 5}
    assert await store.movie_stats("heat+1995") == {"watchers": 1}
    assert await store.counts() == {"watch": 6, "watch_started": 1}
    assert [movie for movie, _ in await store.popular(5)] == ["heat+1995"]
    assert [movie for movie, _ in await store.popular(5, genre="Drama")] == ["heat+1995"]


async def test_ratings_replace_and_keep_the_sum_right(store: FeatureStore) -> None:
    await store.apply(
        "movielog", 0, [RatingUpdate(0, 1, "up+2009", 4), RatingUpdate(1, 2, "up+2009", 2)]
    )
    await store.apply("movielog", 0, [RatingUpdate(2, 1, "up+2009", 5)])
    assert await store.ratings(1) == {"up+2009": 5}
    assert await store.movie_stats("up+2009") == {"ratings": 2, "rating_sum": 7}
    assert (await store.counts())["rate"] == 3


async def test_replayed_offsets_are_skipped(store: FeatureStore) -> None:
    batch = [
        watch(10, 1, "a", 0),
        RequestUpdate(11, 1),
        RejectUpdate(12, "bad_user"),
        RatingUpdate(13, 1, "a", 3),
    ]
    first = await store.apply("movielog", 3, batch)
    before = (await store.counts(), await store.rejected_counts(), await store.movie_stats("a"))
    again = await store.apply("movielog", 3, batch)
    assert (first.applied, again.applied, again.skipped) == (4, 0, 4)
    after = (await store.counts(), await store.rejected_counts(), await store.movie_stats("a"))
    assert after == before
    assert before[1] == {"bad_user": 1}

    # A batch that straddles the watermark applies only what lies above it.
    straddling = [*batch[2:], watch(14, 2, "a", 0), RejectUpdate(15, "bad_user")]
    result = await store.apply("movielog", 3, straddling)
    assert (result.applied, result.skipped, result.watermark) == (2, 2, 15)
    assert await store.rejected_counts() == {"bad_user": 2}
    assert await store.movie_stats("a") == {"watchers": 2, "ratings": 1, "rating_sum": 3}
    # Partitions are independent.
    assert await store.watermarks() == {"movielog:3": 15}
    assert await store.watermark("movielog", 0) == -1


async def test_popularity_decays_with_the_half_life(store: FeatureStore) -> None:
    # Two watchers of "old" at T0 weigh as much as one watcher of "new" a half-life later.
    await store.apply(
        "movielog",
        0,
        [watch(0, 1, "old", 0), watch(1, 2, "old", 0), watch(2, 3, "new", 0, T0 + DAY)],
    )
    scores = dict(await store.popular(10))
    assert scores["old"] == pytest.approx(scores["new"], rel=1e-12)
    await store.apply("movielog", 0, [watch(3, 4, "newest", 0, T0 + 2 * DAY)])
    assert [movie for movie, _ in await store.popular(1)] == ["newest"]


async def test_rescaling_keeps_order_and_ratios_over_many_half_lives(store: FeatureStore) -> None:
    updates = [watch(i, i, f"m{i % 3}", 0, T0 + i * 10 * DAY) for i in range(30)]
    for offset in range(0, 30, 7):
        await store.apply("movielog", 0, updates[offset : offset + 7])
    scores = dict(await store.popular(3))
    assert all(math.isfinite(score) and score > 0 for score in scores.values())
    # m2 was watched last (i = 29), m1 ten days before it, m0 twenty days before.
    assert [movie for movie, _ in await store.popular(3)] == ["m2", "m1", "m0"]
    assert scores["m1"] / scores["m2"] == pytest.approx(2.0**-10, rel=1e-6)
    genre = dict(await store.popular(3, genre="Drama"))
    assert genre["m1"] / genre["m2"] == pytest.approx(2.0**-10, rel=1e-6)


def test_half_life_must_be_positive(redis_client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="half_life_s"):
        FeatureStore(redis_client, KeySchema("x"), half_life_s=0)
