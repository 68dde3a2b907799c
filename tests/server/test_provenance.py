"""Provenance records: on the real broker, and a server that goes on while Kafka is down."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from reelfeed.infra import create_topics
from server import KafkaProvenance, ProvenanceRecord, ServerMetrics
from state import Routing
from tests.integration.workers import consume_all, free_port
from tests.server.conftest import AppFactory, Fakes, make_matrix

pytestmark = pytest.mark.integration


def _record(user_id: int) -> ProvenanceRecord:
    return ProvenanceRecord(f"r{user_id}", 1.7e9, user_id, "v1", 1, None, ("m1",), 0.001, None)


async def test_kafka_down_fills_the_buffer_then_drops_the_oldest() -> None:
    metrics = ServerMetrics()
    sink = KafkaProvenance(
        f"127.0.0.1:{free_port()}", "reelfeed.recommendations", buffer_size=5, metrics=metrics
    )
    await sink.start()
    for user in range(8):
        sink.emit(_record(user))
    assert sink.buffered == 5 and sink.dropped["buffer_full"] == 3
    value = metrics.registry.get_sample_value(
        "reelfeed_server_provenance_dropped_total", {"reason": "buffer_full"}
    )
    assert value == 3
    await asyncio.sleep(0.2)
    assert not sink.connected
    await sink.close(timeout=0.2)
    assert sink.dropped["shutdown"] == 5 and sink.sent == 0


class _Batch(list[bytes]):
    """A batch with room for every record."""

    def append(self, key: bytes, value: bytes, timestamp: int) -> object:  # type: ignore[override]
        super().append(value)
        return object()


class _QuietProducer:
    """A producer whose broker accepted the connection and then went quiet."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()

    async def start(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: list[bytes], topic: str, partition: int) -> object:
        self.sending.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        return None


async def test_records_taken_for_a_send_that_never_ends_are_counted_at_shutdown() -> None:
    producer = _QuietProducer()
    sink = KafkaProvenance(
        "127.0.0.1:1", "reelfeed.recommendations", linger_s=0.01, producer_factory=lambda: producer
    )
    for user in range(250):
        sink.emit(_record(user))
    await sink.start()
    await asyncio.wait_for(producer.sending.wait(), 5)
    assert sink.buffered == 0  # all taken for the round in flight
    await sink.close(timeout=0.1)
    assert sink.sent == 0
    assert sink.dropped == {"buffer_full": 0, "delivery": 0, "shutdown": 250}


async def test_server_serves_while_kafka_is_down(make_app: AppFactory, fakes: Fakes) -> None:
    metrics = ServerMetrics()
    sink = KafkaProvenance(
        f"127.0.0.1:{free_port()}", "reelfeed.recommendations", buffer_size=4, metrics=metrics
    )
    async with TestClient(TestServer(make_app(provenance=sink, metrics=metrics))) as client:
        for user in range(10):
            assert (await client.get(f"/recommend/{user}")).status == 200
        assert sink.dropped["buffer_full"] == 6
        text = await (await client.get("/metrics")).text()
        assert 'reelfeed_server_provenance_dropped_total{reason="buffer_full"} 6.0' in text


async def test_records_on_the_real_broker_match_the_answers(
    kafka_bootstrap: str, unique_name: str, make_app: AppFactory, fakes: Fakes
) -> None:
    topic = f"{unique_name}.recommendations"
    await asyncio.to_thread(create_topics, kafka_bootstrap, {topic: 2})
    fakes.models.matrices["v1"] = make_matrix(revision=6)
    for user in range(1, 6):
        fakes.models.vectors[("v1", user)] = np.ones(8, np.float32) * user
    fakes.routing.routing = Routing(live="v1")
    sink = KafkaProvenance(kafka_bootstrap, topic, linger_s=0.01)
    answers: dict[str, tuple[int, str, dict[str, str]]] = {}
    async with TestClient(TestServer(make_app(provenance=sink))) as client:
        for user in (1, 2, 3, 4, 5, 777):
            response = await client.get(f"/recommend/{user}")
            answers[response.headers["X-Request-Id"]] = (
                user,
                await response.text(),
                dict(response.headers),
            )
        async with asyncio.timeout(30):
            while sink.sent < len(answers):
                await asyncio.sleep(0.05)
    messages = await consume_all(kafka_bootstrap, topic, expected=len(answers))
    assert len(messages) == len(answers)
    for key, value, _ in messages:
        record = orjson.loads(value)
        user, body, headers = answers[record["request_id"]]
        assert key == str(user).encode() and record["user_id"] == user
        assert ",".join(record["items"]) == body
        assert record["version"] == headers["X-Model-Version"] == "v1"
        assert str(record["revision"]) == headers["X-Model-Revision"]
        assert record["fallback"] == headers.get("X-Fallback")
        if record["fallback"] is None:
            assert record["positions"] == {"reelfeed.events:0": 600, "reelfeed.events:1": 7}
            assert record["revision"] == 6
        else:
            assert record["positions"] is None and record["revision"] == 0
        assert 0 < record["latency_s"] < 1
