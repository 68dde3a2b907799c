"""``reelfeed eval --kafka-topic``: a bounded range of raw lines on the real broker."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from reelfeed.eval_cmd import EvalError, add_eval_command, cmd_eval, run_eval
from reelfeed.infra import create_topics
from reelfeed.settings import Settings
from tests.integration.workers import synthetic_stream, user_key

pytestmark = pytest.mark.integration

MODELS = "popularity,decayed-popularity"
PARTITIONS = 3
#: Kafka timestamps of the two batches of lines (ms), far from the lines' own times.
FIRST_BATCH_MS = 1_700_000_000_000
SECOND_BATCH_MS = FIRST_BATCH_MS + 3_600_000


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reelfeed")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", "--models", MODELS, "--no-progress", *argv])


async def _eval(*argv: str) -> dict[str, Any]:
    # run_eval runs its own event loop for the Kafka read: keep it off the test's loop.
    return await asyncio.to_thread(run_eval, _args(*argv))


async def _produce(bootstrap: str, topic: str, lines: Sequence[bytes], timestamp_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for line in lines:
            await producer.send(topic, line, key=user_key(line), timestamp_ms=timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()


def _assert_same_replay(from_kafka: dict[str, Any], from_file: dict[str, Any]) -> None:
    """Both replays read the same lines and replayed the same interactions, in order."""
    for figure in ("events", "scored_events", "users", "items"):
        assert from_kafka[figure] == from_file[figure], figure
    for figure in ("lines", "lines_skipped", "lines_refused", "interactions_in_source"):
        assert from_kafka["data"][figure] == from_file["data"][figure], figure
    # Timings differ from run to run; the figures of a seeded replay do not.
    figures = ("recall", "ndcg", "coverage", "recommended_items")
    for name, model in from_kafka["models"].items():
        assert {f: model[f] for f in figures} == {f: from_file["models"][name][f] for f in figures}


@pytest.fixture
async def two_batches(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> tuple[str, Path, Path]:
    """A topic with two batches of course lines, and each batch as a movielog file."""
    topic = f"{unique_name}.movielog"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: PARTITIONS})
    lines = synthetic_stream(160, seed=21)
    first, second = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    await _produce(kafka_bootstrap, topic, first, FIRST_BATCH_MS)
    await _produce(kafka_bootstrap, topic, second, SECOND_BATCH_MS)
    first_file, second_file = tmp_path / "first.log", tmp_path / "second.log"
    first_file.write_bytes(b"\n".join(first) + b"\n")
    second_file.write_bytes(b"\n".join(second) + b"\n")
    return topic, first_file, second_file


async def test_a_whole_topic_replays_exactly_its_lines(
    kafka_bootstrap: str, two_batches: tuple[str, Path, Path], tmp_path: Path
) -> None:
    topic, first_file, second_file = two_batches
    both = tmp_path / "both.log"
    both.write_bytes(first_file.read_bytes() + second_file.read_bytes())

    from_kafka = await _eval("--kafka-topic", topic, "--bootstrap", kafka_bootstrap)
    from_file = await _eval("--movielog", str(both))

    data = from_kafka["data"]
    assert data["source"] == "kafka" and data["topic"] == topic
    assert data["records"] == data["lines"] == from_file["data"]["lines"]
    # The range was fixed at start: each partition from its beginning to its end offset.
    assert sum(end - start for start, end in data["offsets"].values()) == data["records"]
    assert all(start == 0 for start, _ in data["offsets"].values())
    assert from_kafka["events"] > 100 and from_kafka["scored_events"] > 0
    assert data["lines_refused"], "the synthetic stream carries noise and duplicates"
    _assert_same_replay(from_kafka, from_file)


async def test_a_time_range_replays_one_batch(
    kafka_bootstrap: str, two_batches: tuple[str, Path, Path]
) -> None:
    topic, first_file, second_file = two_batches
    source = ("--kafka-topic", topic, "--bootstrap", kafka_bootstrap)
    # Epoch seconds, and the same instant as ISO 8601 in another zone.
    first = await _eval(*source, "--to-time", str(SECOND_BATCH_MS / 1000))
    second = await _eval(*source, "--from-time", "2023-11-14T22:13:20-01:00")
    # The batches split every partition at one offset: one ends where the other starts.
    for partition, (start, end) in first["data"]["offsets"].items():
        assert start == 0 and second["data"]["offsets"][partition][0] == end
    _assert_same_replay(first, await _eval("--movielog", str(first_file)))
    _assert_same_replay(second, await _eval("--movielog", str(second_file)))


async def test_offset_ranges_per_partition_and_for_all(
    kafka_bootstrap: str, two_batches: tuple[str, Path, Path]
) -> None:
    topic, _, _ = two_batches
    source = ("--kafka-topic", topic, "--bootstrap", kafka_bootstrap)
    some = await _eval(*source, "--from-offsets", "0:2,1:0", "--to-offsets", "0:7,1:3,2:4")
    assert some["data"]["offsets"] == {"0": [2, 7], "1": [0, 3], "2": [0, 4]}
    assert some["data"]["records"] == some["data"]["lines"] == 5 + 3 + 4
    same_for_all = await _eval(*source, "--from-offsets", "5", "--to-offsets", "5")
    assert same_for_all["data"]["records"] == 0 and same_for_all["events"] == 0
    beyond = await _eval(*source, "--from-offsets", "2:1000000")
    start, end = beyond["data"]["offsets"]["2"]
    assert start == end and beyond["data"]["records"] == sum(
        stop - first for first, stop in beyond["data"]["offsets"].values()
    )


async def test_the_command_takes_the_broker_from_the_settings(
    kafka_bootstrap: str,
    two_batches: tuple[str, Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, _, _ = two_batches
    settings = Settings.from_env({"REELFEED_KAFKA_BOOTSTRAP": kafka_bootstrap})
    args = _args("--kafka-topic", topic, "--to-offsets", "2")
    assert await asyncio.to_thread(cmd_eval, args, settings, {}) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["bootstrap"] == kafka_bootstrap
    assert report["data"]["records"] == 2 * PARTITIONS


async def test_bad_ranges_fail_with_a_message(kafka_bootstrap: str, unique_name: str) -> None:
    with pytest.raises(EvalError, match="--from-offsets"):
        await _eval("--kafka-topic", "t", "--bootstrap", kafka_bootstrap, "--from-offsets", "x:1")
    with pytest.raises(EvalError, match="ISO 8601"):
        await _eval("--kafka-topic", "t", "--bootstrap", kafka_bootstrap, "--to-time", "soon")
    with pytest.raises(EvalError, match="need --kafka-topic"):
        await _eval("--movielog", "x.log", "--to-offsets", "3")
    with pytest.raises(EvalError, match="cannot be read"):
        await _eval("--kafka-topic", f"{unique_name}.absent", "--bootstrap", kafka_bootstrap)
