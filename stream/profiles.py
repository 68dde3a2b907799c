"""Viewers' segments for the ingest worker, from the course user API, never waited for.

The ingest worker adds the viewer's segment (gender x age band, :mod:`state.segments`)
to the genres of a watch, so that the popularity script keeps one popularity list per
segment at no extra cost. ``GET <user api>/user/<id>`` answers ``{user_id, age,
occupation, gender}`` with string-typed numbers at times. Ingest must never wait for
it: :meth:`ProfileLookup.segment` answers from memory at once, and a user not in memory
is queued for a background fetch whose answer serves the user's later lines (so the
first lines of a new user count without a segment). A failing, slow or saturated API
only leaves watches without a segment, counted in the metrics below.

Metrics (``reelfeed_ingest_profile_*``):

- ``reelfeed_ingest_profile_lookups_total{result}``: lines that asked for a segment,
  ``hit`` (answered from memory, with or without a segment), ``miss`` (the user is
  queued or being fetched) or ``saturated`` (the queue is full: the user is asked
  for again at their next line);
- ``reelfeed_ingest_profile_fetches_total{outcome}``: user API requests, ``found``
  (a profile), ``unknown`` (a 404, or an answer that is not a profile) or ``failed``
  (connection error, timeout, any other status, a body that is not JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import aiohttp
import orjson

from state.segments import segment_of
from stream.metrics import PROFILE_FETCHES, PROFILE_LOOKUPS

__all__ = ["PROFILE_FETCHES", "PROFILE_LOOKUPS", "ProfileLookup", "segment_of_document"]

log = logging.getLogger(__name__)

# Bound once: a lookup is made for every valid line, and ``labels()`` costs a dict
# look-up and a lock each time.
_HIT = PROFILE_LOOKUPS.labels("hit")
_MISS = PROFILE_LOOKUPS.labels("miss")
_SATURATED = PROFILE_LOOKUPS.labels("saturated")
_FOUND = PROFILE_FETCHES.labels("found")
_UNKNOWN = PROFILE_FETCHES.labels("unknown")
_FAILED = PROFILE_FETCHES.labels("failed")

#: Marks a document that is not a profile (as opposed to a profile with no segment).
_NOT_A_PROFILE = object()


def segment_of_document(document: object, user_id: int) -> str | None | object:
    """The segment of a ``/user/<id>`` document: a segment, ``None`` for a profile that
    fits no segment, or the private marker for a document that is not ``user_id``'s
    profile.

    Examples
    --------
    >>> segment_of_document({"user_id": "7", "age": "29", "occupation": "x", "gender": "F"}, 7)
    'F:25-34'
    >>> segment_of_document({"user_id": 7, "age": 29, "gender": "?"}, 7) is None
    True
    >>> segment_of_document({"message": "user not found"}, 7) is None
    False
    """
    if not isinstance(document, dict):
        return _NOT_A_PROFILE
    try:
        if int(document["user_id"]) != user_id:
            return _NOT_A_PROFILE
        return segment_of(str(document["gender"]), int(document["age"]))
    except (KeyError, TypeError, ValueError):
        return _NOT_A_PROFILE


class ProfileLookup:
    """Segments of users from the course user API: an LRU in memory, filled in the
    background by a bounded number of concurrent fetches.

    A profile is kept as its segment, the only part ingest uses (``None`` when the
    profile fits no segment). Found profiles stay until the cache evicts them (they do
    not change); unknown users and failures are kept for a shorter time, so that a
    down API is not asked again for every line. Users not in memory wait in a bounded
    queue, so that a burst of new users (a backlog read after a restart, say) is
    fetched at the API's pace rather than dropped.

    Parameters
    ----------
    base_url
        The API's base URL, e.g. ``http://127.0.0.1:8080``.
    cache_size
        Users kept in memory (profiles, unknown users and failures); the least recently
        used go first.
    max_in_flight
        Fetches running at once.
    max_queued
        Users waiting for a fetch; beyond, a new user is left without a segment and
        queued at their next line.
    timeout_s
        Limit of one fetch, connection included.
    unknown_ttl_s, failure_ttl_s
        How long an unknown user, and a failed fetch, are remembered before the API is
        asked again.
    session
        An HTTP client session to use (not owned); by default the lookup opens its own
        on the first fetch and closes it in :meth:`close`.
    clock
        Monotonic seconds (tests pass a fake).

    Examples
    --------
    >>> profiles = ProfileLookup("http://127.0.0.1:8080", cache_size=1000)
    >>> ProfileLookup("http://127.0.0.1:8080", max_in_flight=0)
    Traceback (most recent call last):
    ...
    ValueError: max_in_flight must be positive, got 0
    """

    def __init__(
        self,
        base_url: str,
        *,
        cache_size: int = 200_000,
        max_in_flight: int = 16,
        max_queued: int = 10_000,
        timeout_s: float = 1.0,
        unknown_ttl_s: float = 3600.0,
        failure_ttl_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("cache_size", cache_size),
            ("max_in_flight", max_in_flight),
            ("max_queued", max_queued),
            ("timeout_s", timeout_s),
            ("unknown_ttl_s", unknown_ttl_s),
            ("failure_ttl_s", failure_ttl_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self._base_url = base_url.rstrip("/")
        self._cache_size = cache_size
        self._max_in_flight = max_in_flight
        self._max_queued = max_queued
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s)
        self._unknown_ttl_s = unknown_ttl_s
        self._failure_ttl_s = failure_ttl_s
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        #: user id -> (segment or None, monotonic time until which it holds).
        self._cache: OrderedDict[int, tuple[str | None, float]] = OrderedDict()
        #: Users waiting for a fetch, oldest first (a dict: ordered, no duplicates).
        self._queued: dict[int, None] = {}
        #: Users being fetched now.
        self._fetching: set[int] = set()
        #: Tasks that fetch queued users until the queue is empty.
        self._fetchers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def in_flight(self) -> int:
        """Fetches running now."""
        return len(self._fetching)

    @property
    def queued(self) -> int:
        """Users waiting for a fetch."""
        return len(self._queued)

    def segment(self, user_id: int) -> str | None:
        """The user's segment if it is in memory, else ``None`` (and a fetch is queued).

        Must be called on the event loop; it never waits.
        """
        cached = self._cache.get(user_id)
        if cached is not None:
            segment, until = cached
            if until > self._clock():
                self._cache.move_to_end(user_id)
                _HIT.inc()
                return segment
            del self._cache[user_id]
        if user_id in self._queued or user_id in self._fetching:
            _MISS.inc()
            return None
        if len(self._queued) >= self._max_queued:
            _SATURATED.inc()
            return None
        _MISS.inc()
        self._queued[user_id] = None
        if len(self._fetchers) < self._max_in_flight:
            fetcher = asyncio.get_running_loop().create_task(self._drain())
            self._fetchers.add(fetcher)
            fetcher.add_done_callback(self._fetchers.discard)
        return None

    async def wait_idle(self) -> None:
        """Wait until no user is queued or being fetched (tests; shutdown uses
        :meth:`close`)."""
        while self._fetchers:
            await asyncio.wait(list(self._fetchers))

    async def close(self) -> None:
        """Cancel the fetches, forget the queue and close the own session; the lookup
        can be used again afterwards (it opens a new session)."""
        fetchers = list(self._fetchers)
        for fetcher in fetchers:
            fetcher.cancel()
        for fetcher in fetchers:
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        self._queued.clear()
        self._fetching.clear()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _drain(self) -> None:
        while self._queued:
            user_id = next(iter(self._queued))
            del self._queued[user_id]
            self._fetching.add(user_id)
            try:
                await self._fetch(user_id)
            finally:
                self._fetching.discard(user_id)

    async def _fetch(self, user_id: int) -> None:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_in_flight)
            )
        found: str | None | object = _NOT_A_PROFILE
        failed = False
        try:
            async with session.get(
                f"{self._base_url}/user/{user_id}", timeout=self._timeout
            ) as response:
                if response.status == 200:
                    found = segment_of_document(orjson.loads(await response.read()), user_id)
                elif response.status != 404:  # a server error, a rate limit: ask again soon
                    failed = True
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            failed = True
            log.debug("user API lookup of %d failed: %r", user_id, exc)
        if failed:
            _FAILED.inc()
            self._remember(user_id, None, self._failure_ttl_s)
        elif found is _NOT_A_PROFILE:
            _UNKNOWN.inc()
            self._remember(user_id, None, self._unknown_ttl_s)
        else:
            _FOUND.inc()
            self._remember(user_id, found if isinstance(found, str) else None, math.inf)

    def _remember(self, user_id: int, segment: str | None, ttl_s: float) -> None:
        cache = self._cache
        cache[user_id] = (segment, self._clock() + ttl_s)
        cache.move_to_end(user_id)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
