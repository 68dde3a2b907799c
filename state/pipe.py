"""One Redis connection that carries many pipelined requests at once.

redis-py checks a connection out of its pool for each pipeline, wraps it in retries,
timeouts and metrics, and parses each reply through several layers: about 150 us of
the client's CPU per round trip here, whatever the batch (measured with uvloop: 150-175
us for an MGET and an HKEYS, against 50-65 us on this connection, most of it the
socket's system calls). The server reads every user's context in such round trips, so
its hot read goes through a :class:`RedisPipe` instead: requests are written as they
come, replies are parsed by hiredis (Redis's own C parser, redis-py's parser too) and
handed to the waiting requests in order, as Redis answers them in order.

Failures end in the requests' futures, never elsewhere: a lost connection fails every
request in flight with ``ConnectionError`` (the next request connects again), a round
trip older than ``round_trip_timeout_s`` closes the connection and fails the requests
in flight with ``TimeoutError`` (a Redis that accepted and went quiet must not hold
them, nor a growing buffer), and an error reply fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError

__all__ = ["RedisPipe", "pack_commands"]

#: hiredis's stub types the argument as a tuple of one; it takes a command of any length.
_pack_command = cast("Callable[[tuple[str | bytes | int, ...]], bytes]", hiredis.pack_command)


def pack_commands(*commands: tuple[str | bytes | int, ...]) -> bytes:
    """The wire form of ``commands`` (RESP arrays of bulk strings), one after another.

    Examples
    --------
    >>> pack_commands(("GET", "k"), ("HKEYS", b"h"))
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*2\\r\\n$5\\r\\nHKEYS\\r\\n$1\\r\\nh\\r\\n'
    """
    return b"".join([_pack_command(command) for command in commands])


class _Request(NamedTuple):
    future: asyncio.Future[list[Any]]
    replies: list[Any]
    expected: int
    sent: float


def _fail_all(requests: Iterable[_Request], failure: Exception) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(failure)


class _Connection(asyncio.Protocol):
    """One connection: its transport, its parser, and the requests it owes replies."""

    def __init__(self, pipe: RedisPipe) -> None:
        self._pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.in_flight: deque[_Request] = deque()
        self._reader = hiredis.Reader(replyError=ResponseError)

    def send(self, payload: bytes, request: _Request) -> None:
        transport = self.transport
        if transport is None:  # lost meanwhile
            if not request.future.done():
                request.future.set_exception(ConnectionError("lost the connection to Redis"))
            return
        self.in_flight.append(request)
        transport.write(payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"lost the connection to Redis: {exc or 'closed'}"))

    def fail(self, failure: Exception) -> None:
        """Drop the connection and fail what it owes (its later replies would answer
        the wrong requests)."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        self._pipe._forget(self)
        in_flight, self.in_flight = self.in_flight, deque()
        _fail_all(in_flight, failure)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        in_flight = self.in_flight
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ConnectionError(f"Redis sent what is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not in_flight:
                self.fail(ConnectionError("Redis replied to no request"))
                return
            request = in_flight[0]
            request.replies.append(reply)
            if len(request.replies) < request.expected:
                continue
            in_flight.popleft()
            future = request.future
            if future.done():  # its caller left
                continue
            error = next((r for r in request.replies if isinstance(r, ResponseError)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(request.replies)


class RedisPipe:
    """Pipelined requests on one connection to the Redis at ``url``.

    Parameters
    ----------
    url
        ``redis://``, ``rediss://`` or ``unix://``, with user, password and database
        as redis-py reads them.
    connect_timeout_s
        Longest wait for a connection (and its AUTH and SELECT).
    round_trip_timeout_s
        Longest wait for a request's replies before the connection is given up.

    Examples
    --------
    A request is bytes (see :func:`pack_commands`) and the number of replies they ask
    for; its future gets the replies as hiredis parses them (bytes, not text). Every
    failure ends in that future:

    >>> async def after_close():
    ...     pipe = RedisPipe("redis://127.0.0.1:6379/0")
    ...     await pipe.close()
    ...     return await pipe.request(pack_commands(("PING",)), 1)
    >>> asyncio.run(after_close())
    Traceback (most recent call last):
    ...
    ConnectionError: the Redis pipe is closed
    """

    def __init__(
        self, url: str, *, connect_timeout_s: float = 1.0, round_trip_timeout_s: float = 5.0
    ) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._path: str | None = options.get("path")
        self._ssl = url.startswith("rediss://")
        login: list[bytes] = []
        password, username = options.get("password"), options.get("username")
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            login.append(_pack_command(auth))
        db = int(options.get("db") or 0)
        if db:
            login.append(_pack_command(("SELECT", db)))
        self._login = login
        self._connect_timeout_s = connect_timeout_s
        self._round_trip_timeout_s = round_trip_timeout_s
        self._connection: _Connection | None = None
        #: Requests waiting for the connection, with their bytes.
        self._queued: list[tuple[bytes, _Request]] = []
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def request(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Send ``payload`` (``replies`` commands); the future gets their replies.

        Not a coroutine: the bytes are written (or queued until the connection is up)
        before this returns. An error reply fails the future with ``ResponseError``
        once all of the request's replies are in.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self._closed:
            future.set_exception(ConnectionError("the Redis pipe is closed"))
            return future
        request = _Request(future, [], replies, loop.time())
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._round_trip_timeout_s, self._watch, loop)
        connection = self._connection
        if connection is not None:
            connection.send(payload, request)
        else:
            self._queued.append((payload, request))
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        return future

    async def close(self) -> None:
        """Close the connection; requests in flight fail with ``ConnectionError``."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._connection is not None:
            self._connection.fail(ConnectionError("the Redis pipe is closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _forget(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path is not None:
                    await loop.create_unix_connection(lambda: connection, self._path)
                else:
                    context = ssl.create_default_context() if self._ssl else None
                    await loop.create_connection(
                        lambda: connection, self._host, self._port, ssl=context
                    )
                if self._login:
                    login: asyncio.Future[list[Any]] = loop.create_future()
                    request = _Request(login, [], len(self._login), loop.time())
                    connection.send(b"".join(self._login), request)
                    await login
        except (Exception, asyncio.CancelledError) as exc:
            self._connecting = None
            failure: Exception
            if isinstance(exc, TimeoutError):
                failure = ConnectionError(
                    f"no connection to Redis within {self._connect_timeout_s} s"
                )
            elif isinstance(exc, Exception):  # refused, unreachable, AUTH or SELECT refused
                failure = exc
            else:
                failure = ConnectionError("the Redis pipe is closed")
            connection.fail(failure)
            queued, self._queued = self._queued, []
            _fail_all([request for _, request in queued], failure)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._connecting = None
        if connection.transport is not None:
            self._connection = connection
        queued, self._queued = self._queued, []
        for payload, request in queued:
            connection.send(payload, request)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        connection = self._connection
        if connection is None or not connection.in_flight:
            return
        oldest = connection.in_flight[0].sent
        if loop.time() - oldest >= self._round_trip_timeout_s:
            connection.fail(
                TimeoutError(f"no reply from Redis within {self._round_trip_timeout_s} s")
            )
            return
        self._watchdog = loop.call_at(oldest + self._round_trip_timeout_s, self._watch, loop)
