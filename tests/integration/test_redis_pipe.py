"""``state.RedisPipe`` against the real Redis, and against servers that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

import pytest
import redis
import redis.asyncio as aioredis
import uvloop

from state import RedisPipe
from state.pipe import pack_commands

pytestmark = pytest.mark.integration

_Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _server(serve: _Serve) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"redis://127.0.0.1:{port}"


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    pipe = RedisPipe(redis_url)
    yield pipe
    await pipe.close()


async def test_requests_in_flight_get_their_own_replies_in_order(
    pipe: RedisPipe, redis_client: aioredis.Redis, unique_name: str
) -> None:
    keys = [f"{unique_name}:k{i}" for i in range(50)]
    await redis_client.mset({key: str(i) for i, key in enumerate(keys)})
    # Fifty requests written before any reply is read, of one and of two commands.
    futures = [
        pipe.request(pack_commands(("GET", key), ("STRLEN", key)), 2)
        if i % 2
        else pipe.request(pack_commands(("GET", key)), 1)
        for i, key in enumerate(keys)
    ]
    replies = await asyncio.gather(*futures)
    for i, reply in enumerate(replies):
        assert reply == ([str(i).encode(), len(str(i))] if i % 2 else [str(i).encode()])


async def test_a_lost_connection_fails_what_it_owes_and_the_next_request_reconnects(
    pipe: RedisPipe, redis_client: aioredis.Redis
) -> None:
    (first_id,) = await pipe.request(pack_commands(("CLIENT", "ID")), 1)
    blocked = pipe.request(pack_commands(("BLPOP", "reelfeed-test-never-pushed", 10)), 1)
    await asyncio.sleep(0.05)  # written and waiting in Redis
    assert await redis_client.client_kill_filter(_id=first_id) == 1
    with pytest.raises(ConnectionError, match="lost the connection"):
        await asyncio.wait_for(blocked, 5)
    assert not pipe.connected
    (second_id,) = await pipe.request(pack_commands(("CLIENT", "ID")), 1)
    assert second_id != first_id and pipe.connected


async def test_a_quiet_server_is_given_up_after_the_round_trip_limit() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server, url = await _server(quiet)
    pipe = RedisPipe(url, round_trip_timeout_s=0.2)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match="no reply from Redis within 0.2 s"):
            await asyncio.wait_for(pipe.request(pack_commands(("PING",)), 1), 5)
        assert 0.15 < asyncio.get_running_loop().time() - started < 2
        assert not pipe.connected
        with pytest.raises(TimeoutError):  # the next request connects again
            await asyncio.wait_for(pipe.request(pack_commands(("PING",)), 1), 5)
        assert len(accepted) == 2
    finally:
        await pipe.close()
        server.close()
        for writer in accepted:
            writer.close()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(b"hello\r\n", "not RESP"), (b"+OK\r\n+OK\r\n", "replied to no request")],
)
async def test_a_server_out_of_step_is_dropped(answer: bytes, reason: str) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # kept open: the pipe is the one to drop the connection
        await reader.read(100)
        writer.write(answer)
        await writer.drain()

    server, url = await _server(odd)
    pipe = RedisPipe(url)
    try:
        request = pipe.request(pack_commands(("PING",)), 1)
        if reason == "not RESP":
            with pytest.raises(ConnectionError, match=reason):
                await asyncio.wait_for(request, 5)
        else:  # the first reply answers the request; the second nobody
            assert await asyncio.wait_for(request, 5) == [b"OK"]
            for _ in range(100):
                if not pipe.connected:
                    break
                await asyncio.sleep(0.01)
            assert not pipe.connected
    finally:
        await pipe.close()
        server.close()
        for writer in accepted:
            writer.close()


async def test_a_closed_port_fails_the_request(unique_name: str) -> None:
    pipe = RedisPipe("redis://127.0.0.1:1", connect_timeout_s=0.5)
    try:
        with pytest.raises(ConnectionError):
            await pipe.request(pack_commands(("PING",)), 1)
    finally:
        await pipe.close()
    with pytest.raises(ConnectionError, match="closed"):
        await pipe.request(pack_commands(("PING",)), 1)


async def test_the_url_chooses_user_password_and_database(
    redis_url: str, redis_client: aioredis.Redis, unique_name: str
) -> None:
    user, secret = f"pipe-{unique_name}", "s3cret-for-this-test"
    await redis_client.acl_setuser(
        user, enabled=True, passwords=[f"+{secret}"], keys=["*"], commands=["+@all"]
    )
    address = urlparse(redis_url).netloc
    database = aioredis.Redis.from_url(f"redis://{address}/3")
    try:
        await database.set(f"{unique_name}:where", b"db3")
        pipe = RedisPipe(f"redis://{user}:{secret}@{address}/3")
        try:
            reply = await pipe.request(pack_commands(("GET", f"{unique_name}:where")), 1)
            assert reply == [b"db3"]
            assert await pipe.request(pack_commands(("ACL", "WHOAMI")), 1) == [user.encode()]
        finally:
            await pipe.close()
        wrong = RedisPipe(f"redis://{user}:not-the-password@{address}/3")
        try:
            with pytest.raises(redis.ResponseError, match="WRONGPASS"):
                await wrong.request(pack_commands(("PING",)), 1)
        finally:
            await wrong.close()
    finally:
        await database.delete(f"{unique_name}:where")
        await database.aclose()
        await redis_client.acl_deluser(user)


def test_on_uvloop_as_the_server_runs_it(redis_url: str) -> None:
    # uvloop's transports are not asyncio.Transport subclasses: the pipe must not care.
    async def scenario() -> list[object]:
        pipe = RedisPipe(redis_url)
        try:
            replies = await asyncio.gather(
                *(pipe.request(pack_commands(("ECHO", str(i))), 1) for i in range(20))
            )
            (client_id,) = await pipe.request(pack_commands(("CLIENT", "ID")), 1)
            await pipe.request(pack_commands(("CLIENT", "KILL", "ID", client_id)), 1)
            for _ in range(10):  # the loss is noticed; a later request reconnects
                try:
                    return [*replies, await pipe.request(pack_commands(("PING",)), 1)]
                except ConnectionError:
                    await asyncio.sleep(0.05)
            raise AssertionError("the pipe did not reconnect")
        finally:
            await pipe.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies = runner.run(scenario())
    assert replies == [[str(i).encode()] for i in range(20)] + [[b"PONG"]]
