"""Model factors in the real Redis: atomic commits, matrix revisions, user context."""

from __future__ import annotations

import numpy as np
import pytest
import redis.asyncio as aioredis

from state import (
    Checkpoint,
    FeatureStore,
    ItemMatrix,
    KeySchema,
    ModelStore,
    WatchUpdate,
    user_row,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: aioredis.Redis, unique_name: str) -> ModelStore:
    return ModelStore(redis_client, KeySchema(unique_name), "v1")


async def test_commit_then_read_back(store: ModelStore) -> None:
    vectors = {1: np.arange(4, dtype=np.float32), 2: -np.ones(4, dtype=np.float32)}
    rows = {"up+2009": np.array([0.5, 1, 2, 3, 4], dtype=np.float32)}
    await store.commit(vectors, rows, {"reelfeed.events:0": 41, "reelfeed.events:1": 7})
    read = await store.users([1, 2, 3])
    assert set(read) == {1, 2}
    np.testing.assert_array_equal(read[1], vectors[1])
    np.testing.assert_array_equal((await store.item_rows())["up+2009"], rows["up+2009"])
    assert await store.positions() == {"reelfeed.events:0": 41, "reelfeed.events:1": 7}


async def test_matrix_revisions_advance_and_old_ones_go(
    store: ModelStore, redis_client: aioredis.Redis, unique_name: str
) -> None:
    assert await store.matrix_revision() == 0
    assert await store.load_matrix() is None
    rng = np.random.default_rng(0)
    for expected in range(1, 6):
        matrix = ItemMatrix(
            ("a", "b", "c"),
            rng.normal(size=(3, 8)).astype(np.float32),
            rng.normal(size=3).astype(np.float32),
            popularity=np.array([3, 2, 1], dtype=np.float32),
            positions={"reelfeed.events:0": expected},
        )
        assert await store.publish_matrix(matrix) == expected
    loaded = await store.load_matrix()
    assert loaded is not None and loaded.revision == 5 and loaded.movie_ids == ("a", "b", "c")
    np.testing.assert_array_equal(loaded.factors, matrix.factors)
    np.testing.assert_array_equal(loaded.biases, matrix.biases)
    assert loaded.popularity is not None and loaded.popularity.tolist() == [3, 2, 1]
    assert loaded.positions == {"reelfeed.events:0": 5}
    kept = [key async for key in redis_client.scan_iter(match=f"{unique_name}:v:v1:matrix:[0-9]*")]
    assert sorted(int(k.rsplit(b":", 1)[1]) for k in kept) == [3, 4, 5]


async def test_user_context_joins_the_vector_and_the_watched_movies(
    store: ModelStore, redis_client: aioredis.Redis, unique_name: str
) -> None:
    features = FeatureStore(redis_client, KeySchema(unique_name), half_life_s=3600)
    await features.apply("movielog", 0, [WatchUpdate(0, 9, "heat+1995", 3, 1.7e9)])
    await store.commit({9: user_row(12, np.ones(2, dtype=np.float32))}, {}, {})
    context = await store.user_context(9)
    assert context.watched == frozenset({"heat+1995"})
    assert context.vector is not None and context.vector.tolist() == [1.0, 1.0]
    assert context.n_events == 12
    unknown = await store.user_context(10)
    assert unknown.vector is None and unknown.watched == frozenset()


def test_a_matrix_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="factors"):
        ItemMatrix(("a",), np.ones((2, 3), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="not an item matrix"):
        ItemMatrix.from_bytes(b"XXXXX\x00\x00\x00\x00")


async def test_checkpoint_round_trip(store: ModelStore) -> None:
    assert await store.load_checkpoint() is None
    await store.save_checkpoint(Checkpoint(b"\x80state", {"events:0": 9}, 1.5))
    loaded = await store.load_checkpoint()
    assert loaded == Checkpoint(b"\x80state", {"events:0": 9}, 1.5)
