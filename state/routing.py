"""Which model version serves which user: the live version and an optional canary.

The routing is one Redis hash (``KeySchema.routing``) with the fields ``live``,
``canary``, ``share``, ``salt`` and ``revision``. Every change is one Lua script, so
that readers never see half of a switch (a canary without its share, a promotion
that left the old canary in place), and bumps ``revision``, so that a reader can tell
that something changed.

A user goes to the canary when the stable hash of ``"<salt>:<user id>"`` falls below
the canary's share. The hash is blake2b, never Python's ``hash()``, which is salted
per process: every server process, and the release controller that attributes
outcomes to the two arms, compute the same assignment. A new salt per release gives
every canary a fresh sample of users.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from state._replies import text as _text
from state.keys import KeySchema

__all__ = ["Routing", "RoutingConflict", "RoutingStore", "canary_bucket", "valid_version"]

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCALE = float(2**64)


def valid_version(version: str) -> bool:
    """Whether ``version`` can name a model version (it becomes part of Redis keys).

    Examples
    --------
    >>> valid_version("mf-2024.10"), valid_version(""), valid_version("a b"), valid_version("x:y")
    (True, False, False, False)
    """
    return _VERSION.fullmatch(version) is not None


def canary_bucket(salt: str, user_id: int) -> float:
    """The user's stable position in [0, 1) for a salt: under the share means canary.

    Examples
    --------
    >>> canary_bucket("r1", 42) == canary_bucket("r1", 42)
    True
    >>> 0.0 <= canary_bucket("r1", 42) < 1.0
    True
    >>> canary_bucket("r1", 42) == canary_bucket("r2", 42)
    False
    """
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class RoutingConflict(ValueError):
    """A routing change that contradicts the current routing (e.g. canary == live)."""


@dataclass(frozen=True, slots=True)
class Routing:
    """A snapshot of the routing.

    Examples
    --------
    >>> routing = Routing(live="v1", canary="v2", canary_share=0.25, salt="r7")
    >>> routing.versions
    ('v1', 'v2')
    >>> users = range(10_000)
    >>> share = sum(routing.version_for(u) == "v2" for u in users) / len(users)
    >>> 0.23 < share < 0.27
    True
    >>> Routing(live="v1").version_for(5), Routing().version_for(5)
    ('v1', None)
    """

    live: str | None = None
    canary: str | None = None
    canary_share: float = 0.0
    salt: str = ""
    #: Incremented by every change; 0 for a routing never written.
    revision: int = 0

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions that receive traffic (live first)."""
        return tuple(v for v in (self.live, self.canary) if v is not None)

    def version_for(self, user_id: int) -> str | None:
        """The version that serves ``user_id``; ``None`` when no version is live."""
        canary = self.canary
        if canary is not None and self.canary_share > 0.0:
            if canary_bucket(self.salt, user_id) < self.canary_share:
                return canary
        return self.live if self.live is not None else canary

    def to_json(self) -> dict[str, object]:
        return {
            "live": self.live,
            "canary": self.canary,
            "canary_share": self.canary_share,
            "salt": self.salt,
            "revision": self.revision,
        }

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> Routing:
        """Read the Redis hash (absent fields take their defaults)."""
        values = {_text(name): _text(value) for name, value in fields.items()}
        canary = values.get("canary") or None
        return cls(
            live=values.get("live") or None,
            canary=canary,
            canary_share=float(values.get("share") or 0.0) if canary else 0.0,
            salt=values.get("salt", "") if canary else "",
            revision=int(values.get("revision") or 0),
        )


# Each script: KEYS[1] the routing hash; returns the whole hash after the change, or an
# error reply starting with "CONFLICT" when the change contradicts the routing.
_SET_LIVE = """
local canary = redis.call('HGET', KEYS[1], 'canary')
if canary == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'canary', 'share', 'salt')
end
redis.call('HSET', KEYS[1], 'live', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'revision', 1)
return redis.call('HGETALL', KEYS[1])
"""

_SET_CANARY = """
local live = redis.call('HGET', KEYS[1], 'live')
if live == ARGV[1] then
  return redis.error_reply('CONFLICT the canary cannot be the live version')
end
redis.call('HSET', KEYS[1], 'canary', ARGV[1], 'share', ARGV[2], 'salt', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'revision', 1)
return redis.call('HGETALL', KEYS[1])
"""

_CLEAR_CANARY = """
redis.call('HDEL', KEYS[1], 'canary', 'share', 'salt')
redis.call('HINCRBY', KEYS[1], 'revision', 1)
return redis.call('HGETALL', KEYS[1])
"""

_PROMOTE = """
local canary = redis.call('HGET', KEYS[1], 'canary')
if not canary then
  return redis.error_reply('CONFLICT there is no canary to promote')
end
redis.call('HSET', KEYS[1], 'live', canary)
redis.call('HDEL', KEYS[1], 'canary', 'share', 'salt')
redis.call('HINCRBY', KEYS[1], 'revision', 1)
return redis.call('HGETALL', KEYS[1])
"""


class RoutingStore:
    """Reads and atomic changes of the routing, on a client it does not own.

    Parameters
    ----------
    client
        An async Redis client (decoding responses or not).
    keys
        The key schema of the stack.
    """

    def __init__(self, client: aioredis.Redis, keys: KeySchema) -> None:
        self._client = client
        self._key = keys.routing()
        self._set_live = client.register_script(_SET_LIVE)
        self._set_canary = client.register_script(_SET_CANARY)
        self._clear_canary = client.register_script(_CLEAR_CANARY)
        self._promote = client.register_script(_PROMOTE)

    async def get(self) -> Routing:
        return Routing.from_hash(await self._client.hgetall(self._key))

    async def set_live(self, version: str) -> Routing:
        """Make ``version`` live; if it was the canary, the canary ends in the same step."""
        _check_version(version)
        return await self._run(self._set_live, [version])

    async def set_canary(self, version: str, share: float, salt: str | None = None) -> Routing:
        """Send ``share`` of the users to ``version``, chosen by ``salt`` (new if ``None``).

        Raises
        ------
        RoutingConflict
            When ``version`` is the live version.
        """
        _check_version(version)
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ValueError(f"share must be in [0, 1], got {share!r}")
        if salt is None:
            salt = secrets.token_hex(8)
        elif not salt or len(salt) > 128:
            raise ValueError("salt must be 1 to 128 characters")
        return await self._run(self._set_canary, [version, repr(float(share)), salt])

    async def clear_canary(self) -> Routing:
        return await self._run(self._clear_canary, [])

    async def promote_canary(self) -> Routing:
        """Make the canary live and end the canary, in one step.

        Raises
        ------
        RoutingConflict
            When there is no canary.
        """
        return await self._run(self._promote, [])

    async def _run(self, script: AsyncScript, args: Sequence[str]) -> Routing:
        try:
            flat = await script(keys=[self._key], args=list(args))
        except ResponseError as exc:
            message = str(exc)
            if message.startswith("CONFLICT"):
                raise RoutingConflict(message.removeprefix("CONFLICT").strip()) from None
            raise
        pairs = cast(list[bytes | str], flat)
        return Routing.from_hash(dict(zip(pairs[::2], pairs[1::2], strict=True)))


def _check_version(version: str) -> None:
    if not valid_version(version):
        raise ValueError(
            f"version must be 1 to 64 letters, digits, '.', '_' or '-', got {version!r}"
        )
