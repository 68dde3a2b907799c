"""Faults and attacks, each on its own switch.

- **Stream noise** (on by default at a small rate, as the course injects it): a line's
  user id or time corrupted, a rating or minute out of range, a field left empty, a
  line cut short, or the same line written twice. ``NoiseInjector`` turns each
  ``LogLine`` into the records actually produced.
- **Course API faults** (off by default): ``/user`` and ``/movie`` answering 500, or late
  (read by ``sim.course_api``).
- **Attacks** (off by default): ``RatingBurst``, a burst of 5-star ratings for one movie
  from freshly created accounts; ``WatchBots``, accounts that watch one movie over and
  over. Both are site actors: ``Site.add_actor`` polls them for lines.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass

from sim.lines import LogLine, Record, format_time, rate_body, watch_body
from sim.world import World

__all__ = [
    "FaultConfig",
    "NOISE_KINDS",
    "NoiseInjector",
    "RatingBurst",
    "RatingBurstConfig",
    "WatchBots",
    "WatchBotsConfig",
    "pick_target_movie",
]

#: Every kind of stream noise ``NoiseInjector`` knows.
NOISE_KINDS: tuple[str, ...] = (
    "bad_minute",
    "bad_rating",
    "bad_time",
    "bad_user",
    "duplicate",
    "empty_field",
    "truncated",
)

# Which noise fits which line kind (a rating can only be broken on a rate line).
_APPLICABLE: dict[str, tuple[str, ...]] = {
    "watch": ("bad_minute", "bad_time", "bad_user", "duplicate", "empty_field", "truncated"),
    "rate": ("bad_rating", "bad_time", "bad_user", "duplicate", "empty_field", "truncated"),
    "recommend": ("bad_time", "bad_user", "duplicate", "empty_field", "truncated"),
}


@dataclass(frozen=True, slots=True)
class RatingBurstConfig:
    """A burst of 5-star ratings for one movie from new accounts.

    Parameters
    ----------
    movie_id
        The promoted movie; ``None`` picks an obscure one (deterministic by seed).
    accounts
        How many fresh accounts rate it.
    start_after_s
        Real seconds after the simulation starts.
    spread_s
        Real seconds over which the ratings arrive.
    watch_minutes
        Minutes each account watches first, to look like a viewer (0: rate only).

    Examples
    --------
    >>> RatingBurstConfig(accounts=50).watch_minutes
    1
    """

    movie_id: str | None = None
    accounts: int = 200
    start_after_s: float = 60.0
    spread_s: float = 30.0
    watch_minutes: int = 1

    def __post_init__(self) -> None:
        if self.accounts <= 0:
            raise ValueError(f"accounts must be positive, got {self.accounts}")
        if self.start_after_s < 0 or self.spread_s < 0 or self.watch_minutes < 0:
            raise ValueError("start_after_s, spread_s and watch_minutes must be >= 0")


@dataclass(frozen=True, slots=True)
class WatchBotsConfig:
    """Accounts that watch one movie over and over.

    Parameters
    ----------
    movie_id
        The movie; ``None`` picks an obscure one (deterministic by seed).
    bots
        How many accounts.
    start_after_s
        Real seconds after the simulation starts.
    loops
        Times each bot watches the movie; ``None``: forever.

    Examples
    --------
    >>> WatchBotsConfig(bots=2, loops=3).loops
    3
    """

    movie_id: str | None = None
    bots: int = 5
    start_after_s: float = 0.0
    loops: int | None = None

    def __post_init__(self) -> None:
        if self.bots <= 0:
            raise ValueError(f"bots must be positive, got {self.bots}")
        if self.start_after_s < 0:
            raise ValueError("start_after_s must be >= 0")
        if self.loops is not None and self.loops <= 0:
            raise ValueError(f"loops must be positive, got {self.loops}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Which faults are on; everything is off except the stream's light noise.

    Parameters
    ----------
    noise_rate
        Share of lines that get one kind of noise.
    noise_kinds
        The kinds to draw from (see ``NOISE_KINDS``).
    api_error_rate
        Share of course API requests answered with 500.
    api_slow_rate, api_slow_seconds
        Share of course API requests answered late, and by how much.
    rating_burst, watch_bots
        The attacks, when on.

    Examples
    --------
    >>> FaultConfig().noise_rate, FaultConfig().rating_burst is None
    (0.002, True)
    >>> FaultConfig(noise_kinds=("typo",))
    Traceback (most recent call last):
    ...
    ValueError: unknown noise kinds: typo
    """

    noise_rate: float = 0.002
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    api_error_rate: float = 0.0
    api_slow_rate: float = 0.0
    api_slow_seconds: float = 2.0
    rating_burst: RatingBurstConfig | None = None
    watch_bots: WatchBotsConfig | None = None

    def __post_init__(self) -> None:
        for name in ("noise_rate", "api_error_rate", "api_slow_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.api_slow_seconds < 0:
            raise ValueError(f"api_slow_seconds must be >= 0, got {self.api_slow_seconds}")
        unknown = sorted(set(self.noise_kinds) - set(NOISE_KINDS))
        if unknown:
            raise ValueError(f"unknown noise kinds: {', '.join(unknown)}")


class NoiseInjector:
    """Turns log lines into the records the site produces, with noise at ``rate``.

    Parameters
    ----------
    rate
        Share of lines that get noise.
    kinds
        The kinds of noise to draw from (each line gets one that fits its kind).
    seed
        Seed of the choices.

    Examples
    --------
    >>> from sim.lines import rate_body
    >>> line = LogLine("rate", 1695932423.0, 42, rate_body("up+2009", 4))
    >>> [r.value for r in NoiseInjector(rate=0.0).apply(line)]
    [b'2023-09-28T20:20:23,42,GET /rate/up+2009=4']
    >>> noisy = NoiseInjector(rate=1.0, kinds=("bad_rating",), seed=1).apply(line)
    >>> noisy[0].fault, noisy[0].value.startswith(b"2023-09-28T20:20:23,42,GET /rate/up+2009=")
    ('bad_rating', True)
    """

    __slots__ = ("_kinds", "_rng", "counts", "rate")

    def __init__(self, rate: float = 0.002, kinds: Iterable[str] = NOISE_KINDS, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        chosen = set(kinds)
        unknown = sorted(chosen - set(NOISE_KINDS))
        if unknown:
            raise ValueError(f"unknown noise kinds: {', '.join(unknown)}")
        self.rate = rate
        self._kinds = {
            kind: tuple(k for k in fits if k in chosen) for kind, fits in _APPLICABLE.items()
        }
        self._rng = random.Random(seed)
        self.counts: dict[str, int] = {}

    def apply(self, line: LogLine) -> list[Record]:
        """The records written for ``line``: itself, or a corrupted copy, or two copies."""
        value = line.render()
        if self.rate <= 0.0 or self._rng.random() >= self.rate:
            return [Record(line.key, value, line.kind, None, line.actor)]
        fits = self._kinds[line.kind]
        if not fits:
            return [Record(line.key, value, line.kind, None, line.actor)]
        kind = self._rng.choice(fits)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "duplicate":
            return [
                Record(line.key, value, line.kind, None, line.actor),
                Record(line.key, value, line.kind, kind, line.actor),
            ]
        return [Record(line.key, self._corrupt(line, kind), line.kind, kind, line.actor)]

    def _corrupt(self, line: LogLine, kind: str) -> bytes:
        rng = self._rng
        time_text, user_text, body = line.time_text, str(line.user_id), line.body
        if kind == "bad_user":
            user_text = rng.choice(
                [
                    f"-{user_text}",
                    f"{user_text}x",
                    "99999999999999999999",
                    f"user{user_text}",
                    "NaN",
                ]
            )
        elif kind == "bad_time":
            time_text = rng.choice(
                [
                    "2023-13-45T99:00:00",
                    time_text.replace("T", "X", 1),
                    str(int(line.at)),
                    time_text[:10],
                    format_time(line.at, line.fraction)[::-1],
                ]
            )
        elif kind == "bad_rating":
            movie_id = body[len("GET /rate/") :].rsplit("=", 1)[0]
            body = rate_body(movie_id, rng.choice(["0", "6", "7", "-1", "10", "five", "4.5"]))
        elif kind == "bad_minute":
            movie_id, _, _ = body[len("GET /data/m/") :].rpartition("/")
            minute = rng.choice(["-3", "-1", "99999", "1.5", "x"])
            body = f"GET /data/m/{movie_id}/{minute}.mpg"
        elif kind == "empty_field":
            target = rng.choice(
                ["time", "user", "movie"] if line.kind != "recommend" else ["time", "user"]
            )
            if target == "time":
                time_text = ""
            elif target == "user":
                user_text = ""
            elif line.kind == "watch":
                minute = body.rsplit("/", 1)[1]
                body = f"GET /data/m//{minute}"
            else:
                rating = body.rsplit("=", 1)[1]
                body = f"GET /rate/={rating}"
        elif kind == "truncated":
            whole = f"{time_text},{user_text},{body}"
            return whole[: rng.randint(1, max(1, len(whole) - 1))].encode()
        return f"{time_text},{user_text},{body}".encode()


def pick_target_movie(world: World, seed: int, movie_id: str | None = None) -> int:
    """The row of ``movie_id``, or an obscure movie (past the 80th percentile of
    popularity) chosen by seed."""
    if movie_id is not None:
        row = world.index.get(movie_id)
        if row is None:
            raise ValueError(f"unknown movie {movie_id!r}")
        return row
    order = world.popular_order
    tail = order[int(len(order) * 0.8) :] if len(order) >= 5 else order
    return int(tail[random.Random(seed).randrange(len(tail))])


class RatingBurst:
    """Fresh accounts that each watch a minute or two of one movie, then rate it 5.

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=100, users=10, seed=1))
    >>> burst = RatingBurst(
    ...     RatingBurstConfig(accounts=3, start_after_s=0, spread_s=1, watch_minutes=0),
    ...     world, start=0.0, speed=60.0, accounts=[11, 12, 13], seed=1)
    >>> lines = burst.emit_until(1e9)
    >>> sorted(line.user_id for line in lines), {line.body[-2:] for line in lines}
    ([11, 12, 13], {'=5'})
    >>> burst.next_due() is None
    True
    """

    def __init__(
        self,
        config: RatingBurstConfig,
        world: World,
        start: float,
        speed: float,
        accounts: list[int],
        seed: int = 0,
    ) -> None:
        if len(accounts) != config.accounts:
            raise ValueError(f"expected {config.accounts} account ids, got {len(accounts)}")
        self.config = config
        self.movie = world.movies[pick_target_movie(world, seed, config.movie_id)]
        self._accounts = frozenset(accounts)
        rng = random.Random(seed)
        begin = start + config.start_after_s * speed
        self._queue: list[tuple[float, int, str]] = []
        for user_id in accounts:
            at = begin + rng.uniform(0.0, config.spread_s * speed)
            for minute in range(config.watch_minutes):
                self._queue.append(
                    (at + 60.0 * minute, user_id, watch_body(self.movie.movie_id, minute))
                )
            rated_at = at + 60.0 * config.watch_minutes + rng.uniform(1.0, 30.0)
            self._queue.append((rated_at, user_id, rate_body(self.movie.movie_id, 5)))
        heapq.heapify(self._queue)

    @property
    def name(self) -> str:
        return "rating_burst"

    @property
    def accounts(self) -> frozenset[int]:
        return self._accounts

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def emit_until(self, now: float) -> list[LogLine]:
        lines = []
        while self._queue and self._queue[0][0] <= now:
            at, user_id, body = heapq.heappop(self._queue)
            if body.startswith("GET /rate/"):
                lines.append(LogLine("rate", at, user_id, body, actor=self.name))
            else:
                lines.append(LogLine("watch", at, user_id, body, actor=self.name))
        return lines


@dataclass(slots=True)
class _Bot:
    user_id: int
    at: float
    minute: int = 0
    loops_done: int = 0


class WatchBots:
    """Accounts that watch one movie from the first minute to the last, again and again.

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=100, users=10, seed=1))
    >>> bots = WatchBots(WatchBotsConfig(bots=2, loops=2), world, start=0.0, speed=60.0,
    ...                  accounts=[11, 12], seed=1)
    >>> lines = bots.emit_until(1e9)
    >>> len(lines) == 2 * 2 * bots.movie.runtime, {line.kind for line in lines}
    (True, {'watch'})
    """

    def __init__(
        self,
        config: WatchBotsConfig,
        world: World,
        start: float,
        speed: float,
        accounts: list[int],
        seed: int = 0,
    ) -> None:
        if len(accounts) != config.bots:
            raise ValueError(f"expected {config.bots} account ids, got {len(accounts)}")
        self.config = config
        self.movie = world.movies[pick_target_movie(world, seed + 1, config.movie_id)]
        self._accounts = frozenset(accounts)
        rng = random.Random(seed)
        begin = start + config.start_after_s * speed
        self._bots = [_Bot(user_id, begin + rng.uniform(0.0, 60.0)) for user_id in accounts]

    @property
    def name(self) -> str:
        return "watch_bots"

    @property
    def accounts(self) -> frozenset[int]:
        return self._accounts

    def next_due(self) -> float | None:
        live = [bot.at for bot in self._bots if not self._done(bot)]
        return min(live) if live else None

    def _done(self, bot: _Bot) -> bool:
        return self.config.loops is not None and bot.loops_done >= self.config.loops

    def emit_until(self, now: float) -> list[LogLine]:
        lines = []
        runtime = self.movie.runtime
        for bot in self._bots:
            while not self._done(bot) and bot.at <= now:
                lines.append(
                    LogLine(
                        "watch",
                        bot.at,
                        bot.user_id,
                        watch_body(self.movie.movie_id, bot.minute),
                        actor=self.name,
                    )
                )
                bot.at += 60.0
                bot.minute += 1
                if bot.minute >= runtime:
                    bot.minute = 0
                    bot.loops_done += 1
        lines.sort(key=lambda line: line.at)
        return lines
