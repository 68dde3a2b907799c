"""``reelfeed provenance`` on the real stack: a served list back to its model, code and data."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from reelfeed.buildinfo import code_sha, package_versions
from reelfeed.cli import main
from reelfeed.infra import create_topics
from server import ServerConfig, create_app
from state import KeySchema, ModelStore
from stream.events import Event, RateEvent, RecommendationEvent, WatchEvent
from tests.integration.test_learn_worker import events_of, expected_learning
from tests.integration.test_reproducibility import (
    PARAMS,
    PARTITIONS,
    end_positions,
    learn_config,
    learner,
    matrix_at,
    partition_of,
    produce_to_partitions,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_KINDS = {WatchEvent: "watch", RateEvent: "rate", RecommendationEvent: "recommendation"}


async def run(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str
) -> tuple[int, str, str]:
    # The command runs its own event loop: give it a thread of its own.
    code = await asyncio.to_thread(main, list(argv), env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def run_json(capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str) -> Any:
    code, out, err = await run(capsys, env, *argv)
    assert code == 0, err
    return orjson.loads(out)


def iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, UTC).isoformat(timespec="milliseconds")


async def serve_one(config: ServerConfig, user_id: int, revision: int) -> tuple[str, str]:
    """Ask the server (in this process) for the user's list until the model answers it;
    return the request id and the list. Leaving the app flushes its provenance records."""
    async with TestClient(TestServer(create_app(config))) as client:
        async with asyncio.timeout(30):
            while True:
                response = await client.get(f"/recommend/{user_id}")
                assert response.status == 200
                body = await response.text()
                if (
                    response.headers["X-Model-Revision"] == str(revision)
                    and "X-Fallback" not in response.headers
                ):
                    break
                await asyncio.sleep(0.2)
        # Other answers around it, so that the search has something to skip.
        for other in range(1, 40):
            assert (await client.get(f"/recommend/{other}")).status == 200
    return response.headers["X-Request-Id"], body


async def test_provenance_joins_a_served_list_with_its_model_lineage_and_data(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = events_of(450, seed=41)
    third = len(events) // 3
    parts = [events[:third], events[third : 2 * third], events[2 * third :]]
    topic, recommendations = f"{unique_name}.events", f"{unique_name}.recommendations"
    await asyncio.to_thread(
        create_topics, kafka_bootstrap, {topic: PARTITIONS, recommendations: PARTITIONS}
    )
    env = {
        "REELFEED_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REELFEED_REDIS_URL": redis_url,
        "REELFEED_REDIS_PREFIX": unique_name,
        "REELFEED_EVENTS_TOPIC": topic,
        "REELFEED_RECOMMENDATIONS_TOPIC": recommendations,
    }
    config = learn_config(kafka_bootstrap, redis_url, unique_name, topic, tmp_path)
    store = ModelStore(redis_client, KeySchema(unique_name), "v1")
    first_end = end_positions(topic, parts[0])
    skip_from = first_end[f"{topic}:0"] + 1
    async with learner(config) as task:
        await produce_to_partitions(kafka_bootstrap, topic, parts[0])
        await wait_for(lambda: matrix_at(store, first_end), 60, task)
        first = await run_json(capsys, env, "snapshot", "create", "--version", "v1")
        assert first["positions"] == first_end

        await produce_to_partitions(kafka_bootstrap, topic, parts[1], first_source=third)
        two_parts = end_positions(topic, parts[0] + parts[1])
        await wait_for(lambda: matrix_at(store, two_parts), 60, task)
        # Roll back to the first snapshot, past 5 messages of partition 0 (as if poisoned).
        before_restore = await store.matrix_revision()
        await run_json(
            capsys, env, "snapshot", "restore", first["id"], f"--skip-to={topic}:0={skip_from + 5}"
        )

        async def relearned() -> bool:
            return await store.matrix_revision() > before_restore and bool(
                await matrix_at(store, two_parts)
            )

        await wait_for(relearned, 60, task)
        second = await run_json(capsys, env, "snapshot", "create", "--version", "v1")
        assert second["positions"] == two_parts and second["parent"] == first["id"]

        sent = await produce_to_partitions(
            kafka_bootstrap, topic, parts[2], first_source=2 * third, again=6
        )
        in_partitions: list[list[tuple[Event, bool]]] = [[] for _ in range(PARTITIONS)]
        for event, duplicate in [(e, False) for e in parts[0] + parts[1]] + sent:
            in_partitions[partition_of(event)].append((event, duplicate))
        watermark = {f"{topic}:{p}": len(sent_to) - 1 for p, sent_to in enumerate(in_partitions)}
        await wait_for(lambda: matrix_at(store, watermark), 60, task)
    revision = await store.matrix_revision()

    user_id = next(iter(expected_learning(events)[1]))
    server = ServerConfig(
        port=0,
        redis_url=redis_url,
        redis_prefix=unique_name,
        kafka_bootstrap=kafka_bootstrap,
        recommendations_topic=recommendations,
    )
    request_id, served = await serve_one(server, user_id, revision)

    result = await run_json(capsys, env, "provenance", request_id)
    request = result["request"]
    assert request["request_id"] == request_id and request["user_id"] == user_id
    assert ",".join(request["items"]) == served.strip() and request["fallback"] is None
    assert request["record"]["topic"] == recommendations

    model = result["model"]
    assert model["version"] == "v1" and model["revision"] == revision
    assert model["config"] == {"seed": 0, **PARAMS}
    assert model["code_sha"] == code_sha({}) and model["packages"] == package_versions()
    assert model["consumer_group"] == config.group_id

    lineage = result["lineage"]
    assert lineage["restored_from"] == first["id"]
    assert [s["id"] for s in lineage["snapshots"]] == [first["id"]]
    replay_from = lineage["replay_from"]
    assert replay_from["id"] == second["id"] and replay_from["parent"] == first["id"]
    assert replay_from["replay"] == {
        name: [two_parts[name] + 1, offset] for name, offset in watermark.items()
    }

    data = result["data"]
    assert data["watermark"] == watermark and data["exact"] is True
    skipped = {0: (skip_from, skip_from + 4)}
    expected_kinds: Counter[str] = Counter()
    times: list[int] = []
    for partition, in_partition in enumerate(in_partitions):
        low, high = skipped.get(partition, (0, -1))
        kept = [sent for offset, sent in enumerate(in_partition) if not low <= offset <= high]
        learned = [event for event, duplicate in kept if not duplicate]
        kinds = Counter(_KINDS[type(e)] for e in learned)
        expected_kinds += kinds
        times += [e.time_us for e in learned]
        described = data["partitions"][partition]
        assert described["partition"] == partition
        assert described["from"] == 0 and described["to"] == len(in_partition) - 1
        assert described["skipped"] == ([list(skipped[partition])] if partition in skipped else [])
        assert described["messages"] == len(kept)
        assert described["events"] == dict(sorted(kinds.items()))
        duplicates = len(kept) - len(learned)
        assert described["dropped"] == ({"duplicate": duplicates} if duplicates else {})
        assert described["event_time"] == {
            "first": iso(min(e.time_us for e in learned)),
            "last": iso(max(e.time_us for e in learned)),
        }
    assert data["messages"] == len(events) + 6 - 5
    assert data["events"] == dict(sorted(expected_kinds.items()))
    assert data["dropped"] == {"duplicate": 6}
    assert data["event_time"] == {"first": iso(min(times)), "last": iso(max(times))}

    # The user's partition alone gives the same answer, reading fewer records.
    narrowed = await run_json(capsys, env, "provenance", request_id, f"--user={user_id}")
    assert {k: v for k, v in narrowed.items() if k != "search"} == {
        k: v for k, v in result.items() if k != "search"
    }
    assert narrowed["search"]["records_read"] <= result["search"]["records_read"]

    code, text, _ = await run(capsys, env, "provenance", request_id, "--text")
    assert code == 0
    with capsys.disabled():
        print(text)
    assert f"request {request_id}" in text
    assert f"model: v1, item matrix revision {revision}" in text
    assert f"restore {second['id']}" in text and first["id"] in text

    # An id that was never served: the search ends by itself, with an error.
    code, _, err = await run(capsys, env, "provenance", uuid.uuid4().hex)
    assert code == 1 and "no record of request" in err
