"""Features the ingest app keeps in Redis, applied exactly once per source offset.

Every batch of updates from one source partition goes through one Lua script, which
Redis runs atomically: it skips updates at or below the partition's stored watermark,
applies the rest and moves the watermark, all or nothing. A worker killed between its
Redis write and its Kafka commit therefore re-reads lines whose effects are already
in Redis, and the script drops them.

Popularity decays exponentially in event time with *forward decay*: a watch at time
``t`` adds ``2 ** ((t - landmark) / half_life)`` to the movie's score. Ranking by the
stored score is ranking by decayed popularity at any later time, with one write per
watch. When the weights grow large the script moves the landmark and rescales every
popularity set at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import orjson
import redis.asyncio as aioredis

from state._replies import int_hash as _int_hash
from state._replies import text as _text
from state.keys import KeySchema

__all__ = [
    "ApplyResult",
    "FeatureStore",
    "FeatureUpdate",
    "RatingUpdate",
    "RejectUpdate",
    "RequestUpdate",
    "WatchUpdate",
]


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """A user streamed ``minute`` of a movie; the first minute seen counts a watch."""

    offset: int
    user_id: int
    movie_id: str
    minute: int
    time_s: float
    genres: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RatingUpdate:
    offset: int
    user_id: int
    movie_id: str
    rating: int


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    """A recommendation request line: only counted here."""

    offset: int
    user_id: int


@dataclass(frozen=True, slots=True)
class RejectUpdate:
    offset: int
    reason: str


FeatureUpdate = WatchUpdate | RatingUpdate | RequestUpdate | RejectUpdate


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    skipped: int
    watermark: int


# KEYS: 1 watermarks, 2 counts, 3 rejected, 4 popularity, 5 landmark, 6 popularity keys
# ARGV: 1 watermark field, 2 half-life in seconds, 3 JSON array of updates
_APPLY_BATCH = """
local wm_field = ARGV[1]
local half_life = tonumber(ARGV[2])
local batch = cjson.decode(ARGV[3])
local watermark = tonumber(redis.call('HGET', KEYS[1], wm_field) or '-1')
local last = watermark
local applied, skipped = 0, 0
local landmark = tonumber(redis.call('GET', KEYS[5]) or '')
redis.call('SADD', KEYS[6], KEYS[4])

local function weight(t)
  if landmark == nil then
    landmark = t
    redis.call('SET', KEYS[5], string.format('%.17g', t))
  end
  local exponent = (t - landmark) / half_life
  if exponent > 64 then
    local factor = 2 ^ (-exponent)
    for _, key in ipairs(redis.call('SMEMBERS', KEYS[6])) do
      redis.call('ZUNIONSTORE', key, 1, key, 'WEIGHTS', string.format('%.17g', factor))
    end
    landmark = t
    redis.call('SET', KEYS[5], string.format('%.17g', t))
    exponent = 0
  end
  return 2 ^ exponent
end

for _, u in ipairs(batch) do
  local kind, offset = u[1], u[2]
  if offset <= watermark then
    skipped = skipped + 1
  else
    applied = applied + 1
    if offset > last then last = offset end
    if kind == 'w' then
      -- {'w', offset, watched key, movie, minute, stats key, time, genre keys}
      local movie, minute = u[4], u[5]
      local seen = redis.call('HGET', u[3], movie)
      if not seen then
        redis.call('HSET', u[3], movie, minute)
        redis.call('HINCRBY', u[6], 'watchers', 1)
        redis.call('HINCRBY', KEYS[2], 'watch_started', 1)
        local w = weight(u[7])
        redis.call('ZINCRBY', KEYS[4], string.format('%.17g', w), movie)
        for _, genre_key in ipairs(u[8]) do
          redis.call('ZINCRBY', genre_key, string.format('%.17g', w), movie)
          redis.call('SADD', KEYS[6], genre_key)
        end
      elseif minute > tonumber(seen) then
        redis.call('HSET', u[3], movie, minute)
      end
      redis.call('HINCRBY', KEYS[2], 'watch', 1)
    elseif kind == 'r' then
      -- {'r', offset, rated key, movie, rating, stats key}
      local previous = redis.call('HGET', u[3], u[4])
      redis.call('HSET', u[3], u[4], u[5])
      if previous then
        redis.call('HINCRBY', u[6], 'rating_sum', u[5] - tonumber(previous))
      else
        redis.call('HINCRBY', u[6], 'ratings', 1)
        redis.call('HINCRBY', u[6], 'rating_sum', u[5])
      end
      redis.call('HINCRBY', KEYS[2], 'rate', 1)
    elseif kind == 'q' then
      redis.call('HINCRBY', KEYS[2], 'recommendation', 1)
    elseif kind == 'x' then
      redis.call('HINCRBY', KEYS[3], u[3], 1)
    end
  end
end
if last > watermark then
  redis.call('HSET', KEYS[1], wm_field, last)
end
return {applied, skipped, last}
"""


class FeatureStore:
    """Reads and exactly-once writes of the ingest features, on a client it does not own.

    Parameters
    ----------
    client
        An async Redis client.
    keys
        The key schema (its prefix separates stacks and tests).
    half_life_s
        Half-life of the popularity decay, in seconds of event time.
    """

    def __init__(self, client: aioredis.Redis, keys: KeySchema, half_life_s: float) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s!r}")
        self._client = client
        self._keys = keys
        self._half_life_s = half_life_s
        self._apply_script = client.register_script(_APPLY_BATCH)

    def _encode(self, update: FeatureUpdate) -> list[object]:
        keys = self._keys
        match update:
            case WatchUpdate():
                return [
                    "w",
                    update.offset,
                    keys.watched(update.user_id),
                    update.movie_id,
                    update.minute,
                    keys.movie_stats(update.movie_id),
                    update.time_s,
                    [keys.genre_popularity(genre) for genre in update.genres],
                ]
            case RatingUpdate():
                return [
                    "r",
                    update.offset,
                    keys.rated(update.user_id),
                    update.movie_id,
                    update.rating,
                    keys.movie_stats(update.movie_id),
                ]
            case RequestUpdate():
                return ["q", update.offset]
            case RejectUpdate():
                return ["x", update.offset, update.reason]

    async def apply(
        self, topic: str, partition: int, updates: Sequence[FeatureUpdate]
    ) -> ApplyResult:
        """Apply the updates of one source partition, skipping offsets already applied.

        ``updates`` must be in offset order, as a partition delivers them.
        """
        if not updates:
            return ApplyResult(0, 0, await self.watermark(topic, partition))
        keys = self._keys
        payload = orjson.dumps([self._encode(update) for update in updates])
        applied, skipped, watermark = await self._apply_script(
            keys=[
                keys.ingest_watermarks(),
                keys.ingest_counts(),
                keys.ingest_rejected(),
                keys.popularity(),
                keys.popularity_landmark(),
                keys.popularity_keys(),
            ],
            args=[f"{topic}:{partition}", repr(self._half_life_s), payload],
        )
        return ApplyResult(int(applied), int(skipped), int(watermark))

    async def watermark(self, topic: str, partition: int) -> int:
        """The last source offset applied for a partition, -1 when none was."""
        value = await self._client.hget(self._keys.ingest_watermarks(), f"{topic}:{partition}")
        return int(value) if value is not None else -1

    async def watermarks(self) -> dict[str, int]:
        raw = await self._client.hgetall(self._keys.ingest_watermarks())
        return _int_hash(raw)

    async def watched(self, user_id: int) -> dict[str, int]:
        """Movies the user started, with the furthest minute reached."""
        raw = await self._client.hgetall(self._keys.watched(user_id))
        return _int_hash(raw)

    async def ratings(self, user_id: int) -> dict[str, int]:
        raw = await self._client.hgetall(self._keys.rated(user_id))
        return _int_hash(raw)

    async def movie_stats(self, movie_id: str) -> dict[str, int]:
        raw = await self._client.hgetall(self._keys.movie_stats(movie_id))
        return _int_hash(raw)

    async def popular(self, count: int, genre: str | None = None) -> list[tuple[str, float]]:
        """The most popular movies now, best first, with their (forward-decayed) scores."""
        key = self._keys.popularity() if genre is None else self._keys.genre_popularity(genre)
        raw = await self._client.zrevrange(key, 0, count - 1, withscores=True)
        return [(_text(movie), float(score)) for movie, score in cast(_ScoredMembers, raw)]

    async def counts(self) -> dict[str, int]:
        return _int_hash(await self._client.hgetall(self._keys.ingest_counts()))

    async def rejected_counts(self) -> dict[str, int]:
        return _int_hash(await self._client.hgetall(self._keys.ingest_rejected()))


_ScoredMembers = list[tuple[bytes | str, float]]
