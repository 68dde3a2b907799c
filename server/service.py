"""The recommendation logic, apart from HTTP: routing, model, fallbacks, refreshing.

Per request, :meth:`Recommender.recommend` reads only memory and makes one Redis round
trip (the user's vector and watched movies), bounded by a hard deadline. Everything
else (the routing, the item matrices, the popularity lists) is in memory, kept fresh
by :class:`Refresher`, which polls Redis in the background. Concurrent requests share
their round trip (``RedisModelSource``) and their scoring (:class:`_ScoringBatches`).

Which list a user gets:

======================================  ====================================  ============
situation                               list                                  fallback
======================================  ====================================  ============
routed version's matrix loaded, vector  the model's top-k, watched excluded,   ``None``
                                        filled from popularity if short
matrix loaded, no vector for the user   popularity of the user's segment (or   unknown_user
                                        global), watched excluded
no matrix loaded (or nothing routed)    global popularity, watched excluded    no_model
Redis timed out / failed / skipped      global popularity                      redis_timeout,
                                                                               redis_error,
                                                                               redis_unavailable
the vector does not fit the matrix      global popularity, watched excluded    model_error
an unexpected error (a bug)             global popularity (``server.app``)     internal_error
======================================  ====================================  ============

With nothing loaded at all (an empty Redis), the list is empty: still a 200, with an
empty line, and ``/readyz`` says 503 until a model or popularity is in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.popularity import SEGMENTS, PopularList, segment_genre
from server.profiles import ProfileSource
from server.scoring import ModelScorer, ScoringError
from server.sources import ModelSource, PopularitySource, RoutingSource
from state import Routing, UserContext

__all__ = ["Recommendation", "Recommender", "Refresher", "ServingState"]

log = logging.getLogger(__name__)

#: Movies taken from the learner's popularity when the ingest popularity is empty.
_LEARNER_POPULAR = 500
#: Resolution of the event loop's clock (uvloop's is a millisecond).
_CLOCK_RESOLUTION_S = 0.001


class Recommendation(NamedTuple):
    """One answer and what produced it.

    A named tuple rather than a frozen dataclass: it is built for every answer, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs three
    times as much.
    """

    items: list[str]
    line: bytes
    #: The version the user is routed to (``None`` when no version is live).
    version: str | None
    #: The item-matrix revision that scored the list (0 when none did).
    revision: int
    #: The learner's consumed positions of that revision.
    positions: Mapping[str, int] | None
    #: Why the list came from popularity, or ``None`` for the model's list.
    fallback: str | None


class ServingState:
    """What is in memory; the refresher replaces attributes, requests read them.

    Examples
    --------
    >>> state = ServingState(list_length=20)
    >>> state.ready, state.routing.live
    (False, None)
    >>> state.set_ingest_popular(PopularList(("m1", "m2")))
    >>> state.ready, state.popular.line
    (True, b'm1,m2')

    A popularity that Redis lost does not empty the answers:

    >>> state.set_ingest_popular(PopularList.empty(20))
    >>> state.popular.line
    b'm1,m2'
    """

    def __init__(self, list_length: int) -> None:
        self.list_length = list_length
        self.routing = Routing()
        self.models: dict[str, ModelScorer] = {}
        self.popular = PopularList.empty(list_length)
        self.segments: dict[str, PopularList] = {}
        self._ingest_popular = PopularList.empty(list_length)
        #: Monotonic time of the last successful poll of each kind (0: never).
        self.refreshed_at: dict[str, float] = {"routing": 0.0, "models": 0.0, "popularity": 0.0}

    @property
    def ready(self) -> bool:
        return bool(self.models) or len(self.popular) > 0

    def set_ingest_popular(self, popular: PopularList) -> None:
        if not len(popular) and len(self._ingest_popular):
            # Redis lost the popularity it had (flushed, restored, being rebuilt by a
            # replay): the last list known beats an empty answer.
            return
        self._ingest_popular = popular
        self._choose_popular()

    def set_models(self, models: dict[str, ModelScorer]) -> None:
        self.models = models
        self._choose_popular()

    def _choose_popular(self) -> None:
        # The ingest popularity when there is one; before the ingest worker ran, the
        # learner's own popularity of the live version.
        popular = self._ingest_popular
        if not len(popular):
            live = self.models.get(self.routing.live or "")
            if live is not None:
                popular = PopularList(
                    live.popular_ids(max(self.list_length, _LEARNER_POPULAR)), self.list_length
                )
        if len(popular):
            self.popular = popular


class _Breaker:
    """Skips Redis for a while when it is down or stalled, so that answers during an
    outage come at once instead of each waiting for a connection or the deadline.

    It opens after ``failures_to_open`` failures in a row. Timeouts count only while
    no call has succeeded for two deadlines: when the server itself is overloaded,
    some calls miss the deadline while others still succeed, and that is not an
    outage (those answers fall back one by one). Nor do timeouts noticed more than two
    deadlines late: then the process itself did not run (starved of CPU), and Redis's
    replies may be waiting unread behind the timer (a benchmark run with Redis healthy
    had its breaker opened so, and gave 3% of its answers from popularity). After
    ``retry_s`` one call probes Redis; its success closes the breaker, its failure
    opens it again.
    """

    def __init__(
        self,
        failures_to_open: int,
        retry_s: float,
        deadline_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._failures_to_open = failures_to_open
        self._retry_s = retry_s
        self._quiet_s = 2 * deadline_s
        self._clock = clock
        self._failures = 0
        #: Time of the last success; before the first call, of the first call.
        self._last_success: float | None = None
        self._open_until = 0.0
        self._probing = False

    def allows(self) -> bool:
        if self._last_success is None:
            self._last_success = self._clock()
        if self._open_until == 0.0:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def record(self, outcome: str) -> None:
        """``"ok"``, ``"timeout"``, ``"error"``, ``"cancelled"`` (the caller left), or
        ``"stalled"`` (a timeout noticed more than two deadlines late: this process did
        not run, e.g. starved of CPU, and Redis's replies may be waiting unread)."""
        self._probing = False
        if outcome == "ok":
            self._failures = 0
            self._open_until = 0.0
            self._last_success = self._clock()
            return
        if outcome in ("cancelled", "stalled"):
            return
        now = self._clock()
        last_success = now if self._last_success is None else self._last_success
        if outcome == "timeout" and now - last_success < self._quiet_s:
            return
        self._failures += 1
        if self._failures >= self._failures_to_open:
            if self._open_until == 0.0:
                log.warning(
                    "Redis failed %d times in a row; answering from popularity", self._failures
                )
            self._open_until = now + self._retry_s


class _Wait:
    """One task waiting under a deadline (see :class:`_Deadlines`)."""

    __slots__ = ("cancelling", "deadline", "done", "expired", "late", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        #: The task's pending cancellations when the wait began (as ``asyncio.timeout``).
        self.cancelling = task.cancelling()
        self.done = False
        self.expired = False
        #: Whether it expired more than two deadlines after its deadline: the process
        #: did not run meanwhile, so the wait says nothing about Redis.
        self.late = False

    def timed_out(self) -> bool:
        """After a ``CancelledError``: whether it was this deadline's (then absorbed)."""
        return self.expired and self.task.uncancel() <= self.cancelling


class _Deadlines:
    """Cancels the waits that outlive ``seconds``, with one timer for all of them.

    What ``asyncio.timeout`` does, for many waits of the same length at once: their
    deadlines come in the order the waits began, so a queue and one timer for its
    oldest pending wait replace a ``Timeout`` object and a timer per request (about
    10 us of CPU each under load, measured on Python 3.11 with uvloop). Finished waits
    leave the queue when the timer next fires.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._waits: deque[_Wait] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> _Wait:
        """A wait of the current task; set its ``done`` when it ends, whichever way."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs to run in a task")
        if loop is not self._loop:  # a new loop: the old one's timer never fires
            self._loop, self._timer = loop, None
            self._waits.clear()
        wait = _Wait(task, loop.time() + self._seconds)
        self._waits.append(wait)
        if self._timer is None:
            self._timer = loop.call_at(wait.deadline, self._expire, loop)
        return wait

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waits = self._waits
        # Within the loop clock's resolution (uvloop: 1 ms) counts as reached, or a timer
        # rounded a little early would be set again and again until the clock ticks.
        now = loop.time() + _CLOCK_RESOLUTION_S
        while waits:
            wait = waits[0]
            if not wait.done:
                if wait.deadline > now:
                    self._timer = loop.call_at(wait.deadline, self._expire, loop)
                    return
                wait.expired = True
                wait.late = now - wait.deadline > 2 * self._seconds
                wait.task.cancel()
            waits.popleft()


class _Scoring(NamedTuple):
    vector: npt.NDArray[np.float32]
    watched: frozenset[str]
    n_events: int
    future: asyncio.Future[list[str]]


class _ScoringBatches:
    """Scores together the users whose contexts arrived in one pass of the event loop.

    The contexts of concurrent requests come back from one Redis round trip (see
    ``RedisModelSource``), so their requests resume in the same pass; each asks for its
    list here, and the next pass scores everyone of a model together
    (``ModelScorer.recommend_many``): the compiled bound one user after the other, while
    its arrays are in the CPU's caches, and those it gives up on in one matrix product.
    A lone request waits one pass of the loop. (Calling the compiled bound at once from
    each request, between its HTTP and Redis work, measured no faster.)
    """

    def __init__(self, k: int) -> None:
        self._k = k
        self._pending: dict[ModelScorer, list[_Scoring]] = {}

    def recommend(
        self,
        model: ModelScorer,
        vector: npt.NDArray[np.float32],
        watched: frozenset[str],
        n_events: int,
    ) -> asyncio.Future[list[str]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        waiting = self._pending.get(model)
        if waiting is None:
            waiting = self._pending[model] = []
        waiting.append(_Scoring(vector, watched, n_events, future))
        return future

    def _flush(self) -> None:
        batches, self._pending = self._pending, {}
        for model, waiting in batches.items():
            # A request that left meanwhile (its client went away) is not scored.
            waiting = [entry for entry in waiting if not entry.future.done()]
            try:
                lists = model.recommend_many(
                    [entry.vector for entry in waiting],
                    [entry.watched for entry in waiting],
                    self._k,
                    [entry.n_events for entry in waiting],
                )
            except Exception as exc:  # a bug: every request of the batch falls back
                for entry in waiting:
                    entry.future.set_exception(exc)
                continue
            for entry, items in zip(waiting, lists, strict=True):
                if isinstance(items, ScoringError):
                    entry.future.set_exception(items)
                else:
                    entry.future.set_result(items)


class Recommender:
    """Answers one user: routing, one Redis round trip under a deadline, scoring, fallbacks.

    Parameters
    ----------
    state
        What the refresher keeps in memory.
    models
        User contexts (the one per-request read).
    profiles
        Profiles of unknown users (for their segment).
    metrics
        Where fallbacks are counted.
    config
        Deadline, list length, breaker.
    """

    def __init__(
        self,
        state: ServingState,
        models: ModelSource,
        profiles: ProfileSource,
        metrics: ServerMetrics,
        config: ServerConfig,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._state = state
        self._models = models
        self._profiles = profiles
        self._metrics = metrics
        self._k = config.list_length
        self._deadline_s = config.deadline_s
        self._profile_wait_s = min(config.profile_wait_s, config.deadline_s)
        self._clock = clock
        self._breaker = _Breaker(
            config.redis_failures_to_open, config.redis_retry_s, config.deadline_s, clock
        )
        self._deadlines = _Deadlines(config.deadline_s)
        self._scoring = _ScoringBatches(config.list_length)
        self._model_errors_logged: set[tuple[str, int]] = set()

    async def recommend(self, user_id: int) -> Recommendation:
        """The list for ``user_id``; never raises for a Redis or model failure."""
        started = self._clock()
        state = self._state
        version = state.routing.version_for(user_id)
        model = state.models.get(version) if version is not None else None
        context: UserContext | None = None
        reason: str | None = None
        breaker = self._breaker
        if breaker.allows():
            outcome = "cancelled"
            pending = self._deadlines.start()
            try:
                context = await self._models.user_context(version, user_id)
                outcome = "ok"
            except asyncio.CancelledError:
                if not pending.timed_out():
                    raise  # the caller left
                reason = outcome = "redis_timeout"
            except TimeoutError:  # the source's own limit
                reason = outcome = "redis_timeout"
            except Exception as exc:  # a failing store means a fallback, never a 500
                reason, outcome = "redis_error", "error"
                log.debug("user context of %d failed: %r", user_id, exc)
            finally:
                pending.done = True
                if outcome == "redis_timeout":
                    outcome = "stalled" if pending.late else "timeout"
                breaker.record(outcome)
        else:
            reason = "redis_unavailable"
        if context is None:
            popular = state.popular
            return self._fallback(popular.head, popular.line, version, reason or "redis_error")
        watched = context.watched
        if model is None:
            popular = await self._segment_popular(user_id, started)
            return self._popular(popular, watched, version, "no_model")
        vector = context.vector
        if vector is None:
            popular = await self._segment_popular(user_id, started)
            return self._popular(popular, watched, version, "unknown_user")
        try:
            items = await self._scoring.recommend(model, vector, watched, context.n_events)
        except ScoringError as exc:
            if (model.version, model.revision) not in self._model_errors_logged:
                self._model_errors_logged.add((model.version, model.revision))
                log.warning("cannot score with %s@%d: %s", model.version, model.revision, exc)
            return self._popular(state.popular, watched, version, "model_error")
        if len(items) < self._k:
            items += state.popular.top(self._k - len(items), watched, set(items))
        return Recommendation(
            items, ",".join(items).encode(), version, model.revision, model.positions, None
        )

    async def _segment_popular(self, user_id: int, started: float) -> PopularList:
        """The popularity of the user's segment when the profile comes in time, else all."""
        state = self._state
        if not state.segments:
            return state.popular
        remaining = self._deadline_s - (self._clock() - started)
        profile = await self._profiles.lookup(user_id, min(self._profile_wait_s, remaining))
        segment = profile.segment if profile is not None else None
        if segment is None:
            return state.popular
        return state.segments.get(segment, state.popular)

    def _popular(
        self, popular: PopularList, watched: frozenset[str], version: str | None, reason: str
    ) -> Recommendation:
        if not watched:
            return self._fallback(popular.head, popular.line, version, reason)
        items = popular.top(self._k, watched)
        return self._fallback(tuple(items), ",".join(items).encode(), version, reason)

    def _fallback(
        self, items: tuple[str, ...], line: bytes, version: str | None, reason: str
    ) -> Recommendation:
        self._metrics.fallback(reason)
        return Recommendation(list(items), line, version, 0, None, reason)


class Refresher:
    """Keeps the serving state fresh: routing, item matrices and popularity, polled.

    Parameters
    ----------
    state
        The state to update.
    models, popularity, routing
        Where to read from.
    config
        Poll intervals, popularity pool, blend parameters.
    metrics
        Gauges of what is loaded.
    segments
        Whether to load per-segment popularity (only useful with a user API).
    on_models_changed
        Called after new item matrices are in memory (the server freezes the garbage
        collector's view of them there: see ``create_app``).
    """

    def __init__(
        self,
        state: ServingState,
        models: ModelSource,
        popularity: PopularitySource,
        routing: RoutingSource,
        config: ServerConfig,
        metrics: ServerMetrics,
        segments: bool = False,
        on_models_changed: Callable[[], None] | None = None,
    ) -> None:
        self._state = state
        self._on_models_changed = on_models_changed
        self._models = models
        self._popularity = popularity
        self._routing = routing
        self._config = config
        self._metrics = metrics
        self._segments = segments
        self._failing: set[str] = set()
        self._lock = asyncio.Lock()

    async def refresh_routing(self) -> None:
        routing = await self._routing.get()
        if routing != self._state.routing:
            log.info("routing: %s", routing.to_json())
            await self.adopt(routing)
        self._state.refreshed_at["routing"] = time.monotonic()

    async def adopt(self, routing: Routing) -> None:
        """Switch to ``routing`` after loading the matrices of its new versions, so that
        their users do not get popularity while the next model poll is pending."""
        async with self._lock:
            models = await self._models_for(routing)
            self._state.routing = routing
            self._set_models(models)

    def apply_routing(self, routing: Routing) -> None:
        """Use ``routing`` now, as is (the matrices follow with the next model poll)."""
        self._state.routing = routing

    async def refresh_models(self) -> None:
        async with self._lock:
            self._set_models(await self._models_for(self._state.routing))
        self._state.refreshed_at["models"] = time.monotonic()

    async def _models_for(self, routing: Routing) -> dict[str, ModelScorer]:
        loaded = self._state.models
        models: dict[str, ModelScorer] = {}
        for version in routing.versions:
            current = loaded.get(version)
            revision = await self._models.matrix_revision(version)
            if revision == 0:
                continue
            if current is not None and current.revision == revision:
                models[version] = current
                continue
            scorer = await self._load(version, revision)
            if scorer is not None:
                models[version] = scorer
            elif current is not None:
                models[version] = current
        return models

    def _set_models(self, models: dict[str, ModelScorer]) -> None:
        state = self._state
        if models.keys() == state.models.keys() and all(
            models[v] is state.models[v] for v in models
        ):
            state.set_models(state.models)  # the live version may have changed
            return
        state.set_models(models)
        for version, scorer in models.items():
            self._metrics.model_revision.labels(version).set(scorer.revision)
        if self._on_models_changed is not None:
            self._on_models_changed()

    async def _load(self, version: str, revision: int) -> ModelScorer | None:
        matrix = await self._models.load_matrix(version, revision)
        if matrix is None:
            return None  # replaced meanwhile: the next poll sees the newer revision
        config = self._config
        # The learner publishes its blend with the factors; the configured one is only
        # for matrices that do not carry it.
        ranking = matrix.ranking or {}
        popularity_weight = float(ranking.get("popularity_weight", config.popularity_weight))
        cold_start_events = float(ranking.get("cold_start_events", config.cold_start_events))
        # Trailing fixed columns (the model's genres): the server's bound splits them off.
        side_columns = int(ranking.get("side_columns", 0))
        try:
            scorer = await asyncio.to_thread(
                ModelScorer, version, matrix, popularity_weight, cold_start_events, side_columns
            )
        except (ScoringError, ValueError) as exc:
            log.warning("item matrix %s@%d not loaded: %s", version, revision, exc)
            return None
        log.info(
            "item matrix %s@%d loaded: %d movies, k=%d",
            version,
            revision,
            scorer.n_items,
            scorer.dimensions,
        )
        return scorer

    async def refresh_popularity(self) -> None:
        state, pool, k = self._state, self._config.popularity_pool, self._config.list_length
        ranked = await self._popularity.popular(pool)
        state.set_ingest_popular(PopularList.of((movie for movie, _ in ranked), k))
        if self._segments:
            segments: dict[str, PopularList] = {}
            overall = [movie for movie, _ in ranked]
            for segment in SEGMENTS:
                ranked = await self._popularity.popular(pool, genre=segment_genre(segment))
                if ranked:
                    # A young segment's list is short: the overall popularity fills it.
                    movies = dict.fromkeys([movie for movie, _ in ranked] + overall)
                    segments[segment] = PopularList.of(movies, k)
            state.segments = segments
        self._metrics.popularity_items.set(len(state.popular))
        state.refreshed_at["popularity"] = time.monotonic()

    async def refresh_all(self) -> None:
        """One round of every poll (at start); failures are logged, not raised."""
        for name, step in self._steps():
            await self._attempt(name, step)

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        config = self._config
        intervals = {
            "routing": config.routing_poll_s,
            "models": config.matrix_poll_s,
            "popularity": config.popularity_poll_s,
        }
        async with asyncio.TaskGroup() as group:
            for name, step in self._steps():
                group.create_task(self._loop(name, step, intervals[name]))

    def _steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("routing", self.refresh_routing),
            ("models", self.refresh_models),
            ("popularity", self.refresh_popularity),
        ]

    async def _loop(self, name: str, step: Callable[[], Awaitable[None]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._attempt(name, step)

    async def _attempt(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(max(5.0, self._config.matrix_poll_s * 5)):
                await step()
        except Exception as exc:  # a failed poll keeps what is in memory
            if name not in self._failing:
                self._failing.add(name)
                log.warning("refreshing %s failed (keeping what is loaded): %r", name, exc)
            return
        if name in self._failing:
            self._failing.discard(name)
            log.info("refreshing %s works again", name)
