"""User profiles from the course user API, cached, never on the critical path for long.

``GET <user api>/user/<id>`` answers ``{user_id, age, occupation, gender}``. A profile
only picks the popularity list of an unknown user, so an answer waits for it at most a
few milliseconds (``ServerConfig.profile_wait_s``, within the request's deadline); a
lookup that takes longer goes on in the background and fills the cache for the user's
next request. Failures are cached too, for a shorter time, so that a down API is not
asked again on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from server.popularity import segment_of

__all__ = ["HttpProfiles", "NoProfiles", "ProfileSource", "UserProfile"]

log = logging.getLogger(__name__)

#: Failed lookups are retried after this many seconds at the latest.
_FAILURE_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What the course user API says about a user.

    Examples
    --------
    >>> UserProfile(7, 29, "writer", "F").segment
    'F:25-34'
    >>> UserProfile.from_json({"user_id": 7, "age": "29", "occupation": "writer", "gender": "F"})
    UserProfile(user_id=7, age=29, occupation='writer', gender='F')
    >>> UserProfile.from_json({"message": "user not found"}) is None
    True
    """

    user_id: int
    age: int
    occupation: str
    gender: str

    @property
    def segment(self) -> str | None:
        return segment_of(self.gender, self.age)

    @classmethod
    def from_json(cls, document: object) -> UserProfile | None:
        """Parse the API's JSON; ``None`` when it is not a profile."""
        if not isinstance(document, dict):
            return None
        try:
            return cls(
                int(document["user_id"]),
                int(document["age"]),
                str(document.get("occupation", "")),
                str(document["gender"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class ProfileSource(Protocol):
    async def lookup(self, user_id: int, wait: float) -> UserProfile | None:
        """The user's profile if known within ``wait`` seconds, else ``None``."""
        ...

    async def close(self) -> None: ...


class NoProfiles:
    """No user API configured: no profiles, no segments."""

    async def lookup(self, user_id: int, wait: float) -> UserProfile | None:
        return None

    async def close(self) -> None:
        return None


class HttpProfiles:
    """Profiles from the course user API, with a bounded cache and bounded concurrency.

    Parameters
    ----------
    session
        The HTTP client session (not owned).
    base_url
        The API's base URL, e.g. ``http://127.0.0.1:8080``.
    cache_size
        Profiles (and failures) kept in memory; the oldest go first.
    ttl_s
        How long a profile is reused.
    request_timeout_s
        Limit of one background lookup.
    max_in_flight
        Lookups running at once; beyond, new users are answered without a profile.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        cache_size: int = 100_000,
        ttl_s: float = 3600.0,
        request_timeout_s: float = 2.0,
        max_in_flight: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._cache_size = cache_size
        self._ttl_s = ttl_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._cache: dict[int, tuple[float, UserProfile | None]] = {}
        self._in_flight: dict[int, asyncio.Task[UserProfile | None]] = {}

    async def lookup(self, user_id: int, wait: float) -> UserProfile | None:
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        task = self._in_flight.get(user_id)
        if task is None:
            if len(self._in_flight) >= self._max_in_flight:
                return None
            task = asyncio.get_running_loop().create_task(self._fetch(user_id))
            self._in_flight[user_id] = task
            task.add_done_callback(lambda _: self._in_flight.pop(user_id, None))
        if wait <= 0:
            return None
        done, _ = await asyncio.wait((task,), timeout=wait)
        return task.result() if done else None

    async def close(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _fetch(self, user_id: int) -> UserProfile | None:
        profile: UserProfile | None = None
        try:
            async with self._session.get(
                f"{self._base_url}/user/{user_id}", timeout=self._timeout
            ) as response:
                if response.status == 200:
                    profile = UserProfile.from_json(orjson.loads(await response.read()))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            log.debug("user API lookup of %d failed: %r", user_id, exc)
        if profile is not None and profile.user_id != user_id:
            profile = None
        ttl = self._ttl_s if profile is not None else min(self._ttl_s, _FAILURE_TTL_S)
        cache = self._cache
        cache[user_id] = (self._clock() + ttl, profile)
        if len(cache) > self._cache_size:
            del cache[next(iter(cache))]
        return profile
