"""The site's behaviour: users arrive, ask for recommendations, watch, rate, come back.

``Site`` is the pure core: a deterministic state machine over *simulated* time (Unix
seconds), with no clock, network or asyncio of its own. A driver calls
``advance(now)``, which returns the log lines due by ``now`` and the recommendation calls
to make; it makes each call however it likes (HTTP in ``Simulation``, a plain function in
``run_offline``) and hands the outcome to ``complete``, which returns the recommendation
line and lets the user choose.

A visit::

    arrive ─▶ GET /recommend/<uid> ─▶ recommendation line
                 │ picks a listed movie (chance grows with its hidden match and falls
                 │ with its position), or one found elsewhere (popularity-weighted), or leaves
                 ▼
           one GET /data/m/<id>/<minute>.mpg line a minute, stopping early on a poor match
                 ▼
           sometimes GET /rate/<id>=<1-5> (a noisy function of the match)
                 ▼
           sometimes another visit; at the end, often a return days later

Arrivals are a Poisson process; a user due to return takes the next arrival, otherwise a
fresh user is drawn from the whole population, so within an hour almost every session is
a different user's, as on the course's site. ``lines_per_second`` is met by deriving the
arrival rate from a dry run of sessions, correcting it slowly from the measured rate, and
(``warm_start``) opening in the steady state, after a silent pre-roll of simulated hours.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from sim.lines import LogLine, rate_body, recommendation_body, watch_body
from sim.truth import TruthTracker
from sim.world import World

__all__ = [
    "Actor",
    "LATENCY_BUCKETS_MS",
    "RecommendationCall",
    "RecommendationOutcome",
    "Site",
    "SiteConfig",
    "SiteStats",
    "Step",
    "estimate_session_shape",
]

#: Upper bounds of the response-time histogram, in milliseconds.
LATENCY_BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 200, 400, 800, 1600)

WatchSource = Literal["recommended", "elsewhere"]


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Rates, timing and choice model of the simulated site.

    Parameters
    ----------
    speed
        Simulated seconds per real second (60: a 2-hour movie streams in 2 minutes).
    lines_per_second
        Target rate of user lines per real second (used when ``arrivals_per_second`` is
        ``None``).
    arrivals_per_second
        Fixed rate of arriving users per real second; ``None`` derives it.
    list_size
        How many listed movies a user considers (the course asks for 20).
    request_share
        Share of visits that start on the recommendation page.
    position_decay
        Chance of looking at the next item of a list, relative to the previous.
    accept_scale, accept_power
        A looked-at movie is picked with chance ``accept_scale * match ** accept_power``.
    elsewhere_probability
        Chance that a user who picked nothing from the list (or got none) finds a movie
        elsewhere, instead of leaving.
    rate_probability
        Chance of rating a finished movie (less for one abandoned early).
    continue_probability
        Chance of another visit after a movie; at most ``max_visits`` per session.
    return_probability, mean_return_days
        Chance that a user comes back after a session, and the mean delay (simulated days).
    conversion_window_s
        Simulated seconds after a list within which watching a listed movie converts it.
    server_name
        ``<server>`` of the recommendation line (host:port of the service); ``None``:
        ``127.0.0.1:8082``, or the host:port of the URL a ``Simulation`` calls.
    timeout_ms
        The site's timeout for ``/recommend``.
    watch_time_fraction
        Stamp watch and rate lines with milliseconds (the 2023 stream has whole seconds;
        recommendation lines always carry milliseconds).
    warm_start
        Begin with the sessions in progress that a running site would have.
    ground_truth
        Score every served list and watch against the hidden tastes (about 1.5 ms per
        list on 27k movies; turn off only to generate load beyond ~20k lines/s).

    Examples
    --------
    >>> SiteConfig(speed=0)
    Traceback (most recent call last):
    ...
    ValueError: speed must be positive, got 0
    """

    speed: float = 60.0
    lines_per_second: float = 200.0
    arrivals_per_second: float | None = None
    list_size: int = 20
    request_share: float = 0.9
    position_decay: float = 0.92
    accept_scale: float = 0.2
    accept_power: float = 3.0
    elsewhere_probability: float = 0.6
    rate_probability: float = 0.3
    continue_probability: float = 0.35
    max_visits: int = 4
    return_probability: float = 0.7
    mean_return_days: float = 3.0
    conversion_window_s: float = 1800.0
    server_name: str | None = None
    timeout_ms: int = 800
    watch_time_fraction: bool = False
    warm_start: bool = True
    ground_truth: bool = True

    def __post_init__(self) -> None:
        positive = ("speed", "lines_per_second", "list_size", "max_visits", "timeout_ms")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.arrivals_per_second is not None and not self.arrivals_per_second > 0:
            raise ValueError(
                f"arrivals_per_second must be positive, got {self.arrivals_per_second}"
            )
        for name in (
            "request_share",
            "position_decay",
            "accept_scale",
            "elsewhere_probability",
            "rate_probability",
            "continue_probability",
            "return_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.mean_return_days > 0 or not self.conversion_window_s > 0:
            raise ValueError("mean_return_days and conversion_window_s must be positive")


@dataclass(frozen=True, slots=True)
class RecommendationCall:
    """A ``GET /recommend/<user_id>`` the driver must make.

    Examples
    --------
    >>> RecommendationCall(call_id=1, user_id=42, at=1.7e9).user_id
    42
    """

    call_id: int
    user_id: int
    at: float


@dataclass(frozen=True, slots=True)
class RecommendationOutcome:
    """What a recommendation call returned, as the site logs it.

    ``status`` is the HTTP status, or 0 when no answer came (then ``error`` holds the
    Java client's text, as on the course's site). ``version`` is the model version the
    server named in a response header, when it did.

    Examples
    --------
    >>> RecommendationOutcome.answered(["up+2009", "alien+1979"], 12.3).result_text
    'up+2009, alien+1979'
    >>> RecommendationOutcome.refused(1.0).label
    'refused'
    >>> RecommendationOutcome.timed_out("10.0.0.1", "10.0.0.1", 8082, 800, 815.0).result_text
    'java.util.concurrent.TimeoutException: Request timeout to 10.0.0.1/10.0.0.1:8082 after 800 ms'
    """

    status: int
    ids: tuple[str, ...]
    latency_ms: float
    error: str = ""
    version: str | None = None
    label: str = "ok"

    @classmethod
    def answered(
        cls, ids: Sequence[str], latency_ms: float, version: str | None = None
    ) -> RecommendationOutcome:
        return cls(200, tuple(ids), latency_ms, version=version, label="ok" if ids else "empty")

    @classmethod
    def refused(cls, latency_ms: float) -> RecommendationOutcome:
        return cls(
            0, (), latency_ms, "java.net.ConnectException: Connection refused", None, "refused"
        )

    @classmethod
    def timed_out(
        cls, host: str, address: str, port: int, timeout_ms: int, latency_ms: float
    ) -> RecommendationOutcome:
        text = (
            "java.util.concurrent.TimeoutException: "
            f"Request timeout to {host}/{address}:{port} after {timeout_ms} ms"
        )
        return cls(0, (), latency_ms, text, None, "timeout")

    @classmethod
    def http_error(cls, status: int, body: str, latency_ms: float) -> RecommendationOutcome:
        return cls(status, (), latency_ms, " ".join(body.split())[:200], None, "http_error")

    @classmethod
    def failed(cls, text: str, latency_ms: float) -> RecommendationOutcome:
        return cls(0, (), latency_ms, text, None, "error")

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result_text(self) -> str:
        return ", ".join(self.ids) if self.ok else self.error


@dataclass(frozen=True, slots=True)
class Step:
    """What ``Site.advance`` produced: lines due by then, and calls to make.

    Examples
    --------
    >>> Step(lines=[], calls=[]).calls
    []
    """

    lines: list[LogLine]
    calls: list[RecommendationCall]


class Actor(Protocol):
    """Something besides the users that writes lines (an attack): polled by the site."""

    @property
    def name(self) -> str: ...

    @property
    def accounts(self) -> frozenset[int]: ...

    def next_due(self) -> float | None: ...

    def emit_until(self, now: float) -> list[LogLine]: ...


@dataclass(slots=True)
class SiteStats:
    """Counters of everything the site did (read by metrics, status and summaries).

    Examples
    --------
    >>> stats = SiteStats()
    >>> stats.observe_latency(12.0)
    >>> stats.latency_buckets[:3], stats.conversion_rate
    ([0, 0, 1], 0.0)
    """

    arrivals: int = 0
    fresh_users: int = 0
    returning_users: int = 0
    visits: int = 0
    sessions_ended: int = 0
    session_seconds: float = 0.0
    lines: dict[str, int] = field(default_factory=dict)
    attack_lines: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    latency_count: int = 0
    latency_sum_ms: float = 0.0
    watches: dict[str, int] = field(default_factory=dict)
    ratings: int = 0
    recommendations_closed: int = 0
    recommendations_converted: int = 0
    converted_by_version: dict[str, int] = field(default_factory=dict)
    closed_by_version: dict[str, int] = field(default_factory=dict)
    #: Lists answered per version, and those the user picked a movie from (the list's
    #: own effect, which conversion mixes with watches the user would have made anyway).
    lists_by_version: dict[str, int] = field(default_factory=dict)
    followed_by_version: dict[str, int] = field(default_factory=dict)
    recent_conversions: deque[bool] = field(default_factory=lambda: deque(maxlen=1000))

    def count_line(self, line: LogLine) -> None:
        table = self.lines if line.actor == "user" else self.attack_lines
        key = line.kind if line.actor == "user" else f"{line.actor}:{line.kind}"
        table[key] = table.get(key, 0) + 1

    def observe_latency(self, latency_ms: float) -> None:
        self.latency_count += 1
        self.latency_sum_ms += latency_ms
        for position, bound in enumerate(LATENCY_BUCKETS_MS):
            if latency_ms <= bound:
                self.latency_buckets[position] += 1
                break

    @property
    def conversion_rate(self) -> float:
        """Share of closed recommendation windows that converted (all of them)."""
        return self.recommendations_converted / max(self.recommendations_closed, 1)

    @property
    def recent_conversion_rate(self) -> float:
        """The same over the last 1,000 closed windows."""
        recent = self.recent_conversions
        return sum(recent) / len(recent) if recent else 0.0

    @property
    def user_lines(self) -> int:
        return sum(self.lines.values())

    def summary(self) -> dict[str, object]:
        return {
            "arrivals": self.arrivals,
            "fresh_users": self.fresh_users,
            "returning_users": self.returning_users,
            "visits": self.visits,
            "sessions_ended": self.sessions_ended,
            "mean_session_minutes": round(
                self.session_seconds / max(self.sessions_ended, 1) / 60.0, 1
            ),
            "lines": dict(sorted(self.lines.items())),
            "attack_lines": dict(sorted(self.attack_lines.items())),
            "requests": dict(sorted(self.requests.items())),
            "mean_latency_ms": round(self.latency_sum_ms / max(self.latency_count, 1), 1),
            "watches": dict(sorted(self.watches.items())),
            "ratings": self.ratings,
            "conversion": {
                "closed": self.recommendations_closed,
                "converted": self.recommendations_converted,
                "rate": round(self.conversion_rate, 4),
                "recent_rate": round(self.recent_conversion_rate, 4),
                "by_version": {
                    version: round(self.converted_by_version.get(version, 0) / max(closed, 1), 4)
                    for version, closed in sorted(self.closed_by_version.items())
                },
                "followed_by_version": {
                    version: round(self.followed_by_version.get(version, 0) / max(lists, 1), 4)
                    for version, lists in sorted(self.lists_by_version.items())
                },
            },
        }


_UNVERSIONED = "unknown"
_DEFAULT_SERVER = "127.0.0.1:8082"


class _Session:
    """One user's visit sequence; mutable state of the core (not a value)."""

    __slots__ = ("action", "movie", "minute", "source", "started_at", "stop", "user_id", "visits")

    def __init__(self, user_id: int, started_at: float) -> None:
        self.user_id = user_id
        self.started_at = started_at
        self.visits = 0
        self.action = "visit"
        self.movie = -1
        self.minute = 0
        self.stop = 0
        self.source: WatchSource = "elsewhere"


@dataclass(slots=True)
class _OpenList:
    at: float
    user_id: int
    ids: frozenset[str]
    version: str
    converted: bool = False


_ARRIVAL = 0
_SESSION = 1


class Site:
    """The simulated site's users, driven over simulated time.

    Parameters
    ----------
    world
        Movies and users.
    config
        Rates and behaviour.
    start
        Simulated Unix time at which the site opens.
    seed
        Seed of every behavioural choice.
    truth
        Where served lists are scored (default: a new ``TruthTracker``).

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=300, users=5000, seed=1))
    >>> site = Site(world, SiteConfig(arrivals_per_second=2.0), start=1.7e9, seed=1)
    >>> popular = [world.movies[i].movie_id for i in world.popular_movies(20)]
    >>> lines = site.run_offline(1.7e9 + 3600, lambda user_id: popular)
    >>> kinds = {line.kind for line in lines}
    >>> sorted(kinds)
    ['rate', 'recommend', 'watch']
    >>> site.stats.recommendations_closed > 0
    True
    """

    def __init__(
        self,
        world: World,
        config: SiteConfig,
        start: float,
        seed: int = 0,
        truth: TruthTracker | None = None,
    ) -> None:
        self.world = world
        self.config = config
        self.start = start
        self.now = start
        self.stats = SiteStats()
        self.truth = truth or TruthTracker(world, config.list_size)
        self._rng = random.Random(seed)
        self._heap: list[tuple[float, int, int, _Session | None]] = []
        self._seq = 0
        self._call_ids = 0
        self._awaiting: dict[int, _Session] = {}
        self._active: dict[int, _Session] = {}
        self._returns: list[tuple[float, int]] = []
        self._history: dict[int, set[int]] = {}
        self._open: deque[_OpenList] = deque()
        self._open_by_user: dict[int, list[_OpenList]] = {}
        self._actors: list[Actor] = []
        self._next_account = world.config.users + 1
        self._accounts: set[int] = set()
        self._examine = [config.position_decay**p for p in range(config.list_size)]
        self._server_name = config.server_name or _DEFAULT_SERVER
        if config.arrivals_per_second is not None:
            lines_per_session, seconds_per_session = 0.0, 0.0
            arrivals = config.arrivals_per_second
            self._controlled = False
        else:
            lines_per_session, seconds_per_session = estimate_session_shape(world, config, seed)
            arrivals = config.lines_per_second / max(lines_per_session, 1.0)
            self._controlled = True
        self.lines_per_session = lines_per_session
        self.seconds_per_session = seconds_per_session
        self._base_rate = arrivals / config.speed  # arrivals per simulated second
        self._rate = self._base_rate
        self._control_at = start + _CONTROL_PERIOD_S * config.speed
        self._control_lines = 0
        self._silent = False
        if config.warm_start:
            if seconds_per_session <= 0:
                _, seconds_per_session = estimate_session_shape(world, config, seed)
            self._pre_roll(_PRE_ROLL_SESSIONS * seconds_per_session)
        else:
            self._push(start + self._rng.expovariate(self._rate), _ARRIVAL, None)

    # -- public driving surface ------------------------------------------------------------

    @property
    def arrival_rate(self) -> float:
        """Current arrivals per real second."""
        return self._rate * self.config.speed

    @property
    def active_sessions(self) -> int:
        return len(self._active)

    @property
    def pending_calls(self) -> int:
        return len(self._awaiting)

    @property
    def accounts(self) -> frozenset[int]:
        """Ids of accounts created by actors (attacks), beyond the world's population."""
        return frozenset(self._accounts)

    def new_accounts(self, count: int) -> list[int]:
        """Reserve ``count`` fresh account ids (new users, as an attacker registers them)."""
        first = self._next_account
        self._next_account += count
        ids = list(range(first, first + count))
        self._accounts.update(ids)
        return ids

    def add_actor(self, actor: Actor) -> None:
        self._actors.append(actor)

    def watched(self, user_id: int) -> frozenset[int]:
        return frozenset(self._history.get(user_id, ()))

    def next_due(self) -> float | None:
        """Simulated time of the next thing to happen (``None``: nothing scheduled)."""
        due = self._heap[0][0] if self._heap else None
        for actor in self._actors:
            actor_due = actor.next_due()
            if actor_due is not None and (due is None or actor_due < due):
                due = actor_due
        return due

    def advance(self, now: float) -> Step:
        """Run everything due by ``now``; return its lines and the calls to make."""
        lines: list[LogLine] = []
        calls: list[RecommendationCall] = []
        self._run_until(now, lines, calls)
        if self._actors:
            for actor in self._actors:
                attack_lines = actor.emit_until(now)
                for line in attack_lines:
                    self.stats.count_line(line)
                lines.extend(attack_lines)
            lines.sort(key=lambda line: line.at)
        self.now = max(self.now, now)
        self._close_windows(now)
        self._control(now)
        return Step(lines, calls)

    def complete(
        self,
        call: RecommendationCall,
        outcome: RecommendationOutcome,
        now: float | None = None,
    ) -> list[LogLine]:
        """The answer to ``call`` arrived at ``now`` (default: ``call.at`` plus the latency,
        in simulated time): log it, and let the user choose."""
        session = self._awaiting.pop(call.call_id, None)
        if session is None:
            return []
        at = call.at + outcome.latency_ms / 1000.0 * self.config.speed if now is None else now
        stats = self.stats
        stats.requests[outcome.label] = stats.requests.get(outcome.label, 0) + 1
        stats.observe_latency(outcome.latency_ms)
        latency = max(int(round(outcome.latency_ms)), 0)
        line = LogLine(
            "recommend",
            at,
            call.user_id,
            recommendation_body(self._server_name, outcome.status, outcome.result_text, latency),
            fraction=True,
        )
        self._count(line)
        version = outcome.version or _UNVERSIONED
        listed = outcome.ids if outcome.ok else ()
        opened = _OpenList(at, call.user_id, frozenset(listed), version)
        self._open.append(opened)
        self._open_by_user.setdefault(call.user_id, []).append(opened)
        chosen: int | None = None
        if listed:
            watched = self._history.get(call.user_id, set())
            if self.config.ground_truth:
                self.truth.observe_list(call.user_id, listed, watched, version)
            chosen = self._choose_from_list(call.user_id, listed, watched)
            stats.lists_by_version[version] = stats.lists_by_version.get(version, 0) + 1
            if chosen is not None:
                stats.followed_by_version[version] = stats.followed_by_version.get(version, 0) + 1
        if chosen is not None:
            session.movie, session.source, session.action = chosen, "recommended", "start"
            self._push(at + self._rng.uniform(5.0, 90.0), _SESSION, session)
        elif self._rng.random() < self.config.elsewhere_probability:
            self._plan_elsewhere(session, at)
        else:
            self._end(session, at)
        return [line]

    def run_offline(
        self,
        until: float,
        recommend: Callable[[int], Sequence[str] | RecommendationOutcome],
        latency_ms: float = 5.0,
    ) -> list[LogLine]:
        """Drive the site to ``until`` with a plain function for recommendations.

        ``recommend(user_id)`` returns ids (answered in ``latency_ms``) or a full outcome.
        """
        lines: list[LogLine] = []
        while True:
            due = self.next_due()
            if due is None or due > until:
                break
            step = self.advance(due)
            lines.extend(step.lines)
            for call in step.calls:
                answer = recommend(call.user_id)
                outcome = (
                    answer
                    if isinstance(answer, RecommendationOutcome)
                    else RecommendationOutcome.answered(list(answer), latency_ms)
                )
                lines.extend(self.complete(call, outcome))
        self.advance(until)
        return lines

    # -- the user's choices ------------------------------------------------------------------

    def _choose_from_list(
        self, user_id: int, listed: Sequence[str], watched: set[int]
    ) -> int | None:
        rows = [self.world.index.get(movie_id) for movie_id in listed[: self.config.list_size]]
        known = [row for row in rows if row is not None]
        if not known:
            return None
        matches = self.world.match(user_id, known).tolist()
        config = self.config
        rng = self._rng
        position = -1
        match_of = iter(matches)
        for row in rows:
            position += 1
            if row is None:
                continue
            match = next(match_of)
            if row in watched:
                match *= 0.1
            chance = self._examine[position] * config.accept_scale * match**config.accept_power
            if rng.random() < chance:
                return row
        return None

    def _elsewhere(self, user_id: int) -> int:
        """A movie found outside the list: the best of three popularity-weighted finds."""
        rng = self._rng
        watched = self._history.get(user_id, set())
        candidates = [self.world.sample_popular(rng.random()) for _ in range(3)]
        fresh = [c for c in candidates if c not in watched] or candidates
        if len(fresh) == 1:
            return fresh[0]
        matches = self.world.match(user_id, fresh)
        return fresh[int(matches.argmax())]

    def _watch_length(self, user_id: int, movie: int) -> int:
        """Minutes watched: the whole runtime, or less when a poor match makes one quit.

        The chance of quitting each minute falls with the movie's standing among the
        user's matches (see ``World.standing``): a 100-minute movie in the user's top
        twentieth is finished about four times in five, one at the median about one time
        in eight. (A hazard of the absolute match, which is low for most movies, quit
        almost everything within minutes: fewer than 6% of watches went past 90%. Now,
        served popular lists, about half of them do.)
        """
        runtime = self.world.movies[movie].runtime
        standing = self.world.standing(user_id, movie)
        hazard = 0.04 * (1.0 - standing)
        if hazard <= 0:
            return runtime
        quit_after = 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - hazard))
        return max(1, min(runtime, quit_after))

    def _rating(self, user_id: int, movie: int, fraction: float) -> int:
        """1-5 stars: the movie's standing for the user, noisy, less when quit early.

        Stars follow the standing rather than the absolute match, which is low for most
        movies and made two ratings in three 1-star; real streams rate mostly 3-4.
        """
        standing = self.world.standing(user_id, movie)
        value = 0.5 + 4.0 * standing + self._rng.gauss(0.0, 0.6) - (1.0 - fraction)
        return max(1, min(5, int(round(value))))

    # -- the state machine ---------------------------------------------------------------------

    def _push(self, at: float, code: int, session: _Session | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, code, session))

    def _count(self, line: LogLine) -> None:
        self.stats.count_line(line)
        self._control_lines += 1

    def _pick_user(self, at: float) -> int:
        returns = self._returns
        while returns and returns[0][0] <= at:
            _, user_id = heapq.heappop(returns)
            if user_id not in self._active:
                self.stats.returning_users += 1
                return user_id
        users = self.world.config.users
        user_id = self._rng.randint(1, users)
        for _ in range(8):
            if user_id not in self._active:
                break
            user_id = self._rng.randint(1, users)
        self.stats.fresh_users += 1
        return user_id

    def _arrive(self, at: float, calls: list[RecommendationCall], lines: list[LogLine]) -> None:
        user_id = self._pick_user(at)
        if user_id in self._active:
            return  # a tiny population can be all busy; this arrival is lost
        self.stats.arrivals += 1
        session = _Session(user_id, at)
        self._active[user_id] = session
        self._act(session, at, lines, calls)

    def _act(
        self,
        session: _Session,
        at: float,
        lines: list[LogLine],
        calls: list[RecommendationCall],
    ) -> None:
        action = session.action
        if action == "minute":
            session.minute += 1
            self._emit_minute(session, at, lines)
        elif action == "visit":
            self._visit(session, at, calls)
        elif action == "start":
            self._start_watching(session, at, lines)
        elif action == "after":
            self._after_watching(session, at)
        elif action == "rate":
            movie = self.world.movies[session.movie]
            rating = self._rating(session.user_id, session.movie, session.stop / movie.runtime)
            line = LogLine(
                "rate",
                at,
                session.user_id,
                rate_body(movie.movie_id, rating),
                self.config.watch_time_fraction,
            )
            self._count(line)
            lines.append(line)
            self.stats.ratings += 1
            self._next_visit_or_end(session, at)

    def _visit(self, session: _Session, at: float, calls: list[RecommendationCall]) -> None:
        session.visits += 1
        self.stats.visits += 1
        if self._rng.random() < self.config.request_share and not self._silent:
            self._call_ids += 1
            call = RecommendationCall(self._call_ids, session.user_id, at)
            self._awaiting[call.call_id] = session
            calls.append(call)
        else:
            self._plan_elsewhere(session, at)

    def _plan_elsewhere(self, session: _Session, at: float) -> None:
        session.movie = self._elsewhere(session.user_id)
        session.source, session.action = "elsewhere", "start"
        self._push(at + self._rng.uniform(30.0, 300.0), _SESSION, session)

    def _start_watching(self, session: _Session, at: float, lines: list[LogLine]) -> None:
        user_id, movie = session.user_id, session.movie
        movie_id = self.world.movies[movie].movie_id
        self.stats.watches[session.source] = self.stats.watches.get(session.source, 0) + 1
        if self.config.ground_truth and not self._silent:
            self.truth.observe_watch(user_id, movie, session.source)
        window = self.config.conversion_window_s
        for opened in self._open_by_user.get(user_id, ()):
            if not opened.converted and movie_id in opened.ids and at - opened.at <= window:
                opened.converted = True
        self._history.setdefault(user_id, set()).add(movie)
        session.minute = 0
        session.stop = self._watch_length(user_id, movie)
        self._emit_minute(session, at, lines)

    def _emit_minute(self, session: _Session, at: float, lines: list[LogLine]) -> None:
        movie_id = self.world.movies[session.movie].movie_id
        line = LogLine(
            "watch",
            at,
            session.user_id,
            watch_body(movie_id, session.minute),
            self.config.watch_time_fraction,
        )
        self._count(line)
        lines.append(line)
        session.action = "minute" if session.minute + 1 < session.stop else "after"
        self._push(at + 60.0, _SESSION, session)

    def _after_watching(self, session: _Session, at: float) -> None:
        fraction = session.stop / self.world.movies[session.movie].runtime
        if self._rng.random() < self.config.rate_probability * (0.4 + 0.6 * fraction):
            session.action = "rate"
            self._push(at + self._rng.uniform(5.0, 120.0), _SESSION, session)
        else:
            self._next_visit_or_end(session, at)

    def _next_visit_or_end(self, session: _Session, at: float) -> None:
        config = self.config
        if session.visits < config.max_visits and self._rng.random() < config.continue_probability:
            session.action = "visit"
            self._push(at + self._rng.uniform(60.0, 900.0), _SESSION, session)
        else:
            self._end(session, at)

    def _end(self, session: _Session, at: float) -> None:
        self._active.pop(session.user_id, None)
        self.stats.sessions_ended += 1
        self.stats.session_seconds += at - session.started_at
        if self._rng.random() < self.config.return_probability:
            delay = self._rng.expovariate(1.0 / (self.config.mean_return_days * 86_400.0))
            heapq.heappush(self._returns, (at + delay, session.user_id))

    def _close_windows(self, now: float) -> None:
        window = self.config.conversion_window_s
        stats = self.stats
        while self._open and self._open[0].at + window <= now:
            opened = self._open.popleft()
            stats.recommendations_closed += 1
            stats.closed_by_version[opened.version] = (
                stats.closed_by_version.get(opened.version, 0) + 1
            )
            stats.recent_conversions.append(opened.converted)
            if opened.converted:
                stats.recommendations_converted += 1
                stats.converted_by_version[opened.version] = (
                    stats.converted_by_version.get(opened.version, 0) + 1
                )
            mine = self._open_by_user.get(opened.user_id)
            if mine is not None:
                mine.remove(opened)
                if not mine:
                    del self._open_by_user[opened.user_id]

    def _control(self, now: float) -> None:
        """Nudge the arrival rate toward ``lines_per_second`` (slowly: sessions are long)."""
        if not self._controlled or now < self._control_at:
            return
        period_real = _CONTROL_PERIOD_S
        measured = self._control_lines / period_real
        target = self.config.lines_per_second
        if measured > 0:
            factor = min(max((target / measured) ** 0.5, 0.8), 1.25)
            self._rate = min(max(self._rate * factor, self._base_rate / 4), self._base_rate * 4)
        self._control_lines = 0
        self._control_at = now + period_real * self.config.speed

    def _run_until(self, now: float, lines: list[LogLine], calls: list[RecommendationCall]) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, code, session = heapq.heappop(heap)
            if code == _ARRIVAL:
                self._arrive(at, calls, lines)
                self._push(at + self._rng.expovariate(self._rate), _ARRIVAL, None)
            elif session is not None:
                self._act(session, at, lines, calls)

    def _pre_roll(self, seconds: float) -> None:
        """Run the site silently for ``seconds`` before the start, so that it opens in
        its steady state: sessions in progress at every stage, some users with history.

        Pre-roll visits skip the recommendation page (there is no service to ask yet) and
        leave no trace in the counters, the conversions or the ground truth.
        """
        self._silent = True
        self._push(self.start - seconds + self._rng.expovariate(self._rate), _ARRIVAL, None)
        discarded: list[LogLine] = []
        calls: list[RecommendationCall] = []
        while self._heap and self._heap[0][0] <= self.start:
            self._run_until(min(self._heap[0][0] + 3600.0, self.start), discarded, calls)
            discarded.clear()
        self._silent = False
        self.stats = SiteStats()
        self._control_lines = 0


# Mean session durations the silent pre-roll lasts: about what it takes to reach the
# steady state (visits repeat, so a session's tail is long).
_PRE_ROLL_SESSIONS = 2.5

# Real seconds between two corrections of the arrival rate.
_CONTROL_PERIOD_S = 15.0


def estimate_session_shape(
    world: World, config: SiteConfig, seed: int = 0, sessions: int = 300
) -> tuple[float, float]:
    """Mean user lines and simulated seconds per session, from a dry run of ``sessions``
    sessions served the popularity list (deterministic by seed).

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=300, users=5000, seed=1))
    >>> lines, seconds = estimate_session_shape(world, SiteConfig(), sessions=50)
    >>> 10 < lines < 1000 and 600 < seconds < 6 * 3600
    True
    """
    dry_config = replace(config, arrivals_per_second=1e-9, warm_start=False, return_probability=0.0)
    dry = Site(world, dry_config, start=0.0, seed=seed ^ 0xD27)
    popular = [world.movies[i].movie_id for i in world.popular_movies(config.list_size)]
    calls: list[RecommendationCall] = []
    lines: list[LogLine] = []
    for _ in range(sessions):
        dry._arrive(0.0, calls, lines)
    answer = RecommendationOutcome.answered(popular, 20.0)
    for call in calls:
        dry.complete(call, answer)
    while dry.active_sessions:
        due = dry.next_due()
        if due is None:
            break
        for call in dry.advance(due).calls:
            dry.complete(call, answer)
    ended = max(dry.stats.sessions_ended, 1)
    return dry.stats.user_lines / ended, dry.stats.session_seconds / ended
