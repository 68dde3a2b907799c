"""``reelfeed eval``: prequential comparison of recommenders on a recorded stream.

Reads MovieLens ``ratings.csv`` (each rating is a watch of the whole movie plus a rating,
sorted by timestamp), or raw course lines from a movielog file or from a bounded range of
a Kafka topic (sorted by the lines' own times), replays it test-then-train over the
chosen models (:mod:`online_model.evaluation` says exactly how), prints a JSON report
and optionally writes it to a file, with a plot of the metrics along the stream.

The implicit-feedback ALS baseline, the plot and the progress bar need the ``eval``
extra (``implicit``, ``matplotlib``, ``tqdm``); the other models need only the core.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import concurrent.futures
import contextlib
import csv
import dataclasses
import importlib
import itertools
import multiprocessing
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from online_model.evaluation import (
    Candidate,
    Interaction,
    PrequentialReport,
    feedback_target,
    prequential,
    rating_target,
    watch_count_target,
)
from online_model.mf import OnlineMF
from online_model.popularity import DecayedPopularity, Popularity
from online_model.ranking import top_k
from online_model.river_reco import RiverRecommender
from reelfeed.settings import Settings

if TYPE_CHECKING:
    from stream.parser import LineValidator

__all__ = ["DEFAULT_MODELS", "EvalError", "MODELS", "add_eval_command", "cmd_eval", "run_eval"]

MODELS = ("popularity", "decayed-popularity", "river-biasedmf", "reelfeed", "als", "als-foldin")
DEFAULT_MODELS = MODELS

#: Half-life (in events) of the decayed-popularity baseline, and of the model's blend.
_DECAY_HALF_LIFE = 2000.0


class EvalError(Exception):
    """The eval command cannot run as asked (bad input, missing optional package)."""


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EvalError(
            f"{module} is needed for this (pip install 'reelfeed[eval]'): {exc}"
        ) from exc


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class _Stream:
    interactions: list[Interaction]
    description: dict[str, Any]


def _read_movielens(path: Path, limit: int | None) -> _Stream:
    interactions: list[Interaction] = []
    with path.open(newline="") as lines:
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None or header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise EvalError(f"{path}: expected a MovieLens ratings.csv header, got {header}")
        for user, movie, rating, timestamp in reader:
            interactions.append(
                Interaction(
                    time=float(timestamp),
                    user=int(user),
                    item=int(movie),
                    watched_share=1.0,
                    rating=float(rating),
                )
            )
    # Stable: ratings of the same second keep the file's order (by user, then movie id).
    interactions.sort(key=lambda interaction: interaction.time)
    total = len(interactions)
    if limit is not None:
        interactions = interactions[:limit]
    return _Stream(
        interactions,
        {
            "source": "movielens",
            "path": str(path),
            "rows_in_file": total,
            "reading": "each rating row = a watch of the whole movie (share 1.0) + a rating; "
            "sorted by timestamp, ties in file order",
        },
    )


def _line_validator() -> LineValidator:
    from stream.parser import LineValidator

    return LineValidator()


@dataclass(slots=True)
class _MovielogReading:
    """Raw course lines through the ingest worker's own parser and validators."""

    runtime_minutes: float
    interactions: list[Interaction] = field(default_factory=list)
    lines: int = 0
    skipped: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    validator: LineValidator = field(default_factory=_line_validator)

    def read(self, raw: bytes) -> None:
        from stream.events import RateEvent, Rejected, WatchEvent

        self.lines += 1
        result = self.validator.validate(raw.rstrip(b"\r\n"))
        if isinstance(result, WatchEvent):
            share = min((result.minute + 1) / self.runtime_minutes, 1.0)
            self.interactions.append(
                Interaction(
                    result.time_us / 1e6, result.user_id, result.movie_id, watched_share=share
                )
            )
        elif isinstance(result, RateEvent):
            self.interactions.append(
                Interaction(
                    result.time_us / 1e6,
                    result.user_id,
                    result.movie_id,
                    rating=float(result.rating),
                )
            )
        else:
            self.skipped += 1  # recommendation requests and refused lines
            if isinstance(result, Rejected):
                self.refused[result.reason.value] = self.refused.get(result.reason.value, 0) + 1

    def stream(self, limit: int | None, description: dict[str, Any]) -> _Stream:
        # Stable: lines of the same time keep the order they were read in.
        interactions = sorted(self.interactions, key=lambda interaction: interaction.time)
        total = len(interactions)
        if limit is not None:
            interactions = interactions[:limit]
        return _Stream(
            interactions,
            {
                **description,
                "lines": self.lines,
                "lines_skipped": self.skipped,
                "lines_refused": self.refused,
                "interactions_in_source": total,
                "reading": f"watch line minute m = share (m+1)/{self.runtime_minutes:g} of the "
                "movie (runtime assumed); rate line = rating; sorted by time",
            },
        )


def _read_movielog(path: Path, limit: int | None, runtime_minutes: float) -> _Stream:
    reading = _MovielogReading(runtime_minutes)
    with path.open("rb") as handle:
        for raw in handle:
            reading.read(raw)
    return reading.stream(limit, {"source": "movielog", "path": str(path)})


@dataclass(frozen=True, slots=True)
class _KafkaRange:
    """Which records of a topic to replay: per-partition bounds or broker timestamps.

    Offsets map a partition to an offset, or ``None`` (every partition) to one offset;
    ``from`` bounds are inclusive, ``to`` bounds exclusive, as Kafka's end offsets are.
    Times are milliseconds since the epoch, compared with the records' timestamps.
    """

    bootstrap: str
    topic: str
    from_offsets: Mapping[int | None, int] | None = None
    to_offsets: Mapping[int | None, int] | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    #: Give up when no record arrives for this long before the range is read.
    idle_timeout_s: float = 30.0


def _parse_offsets(flag: str, text: str) -> dict[int | None, int]:
    """``"0:120,1:80"`` -> ``{0: 120, 1: 80}``; ``"500"`` -> ``{None: 500}``.

    Examples
    --------
    >>> _parse_offsets("--from-offsets", "0:120, 1:80")
    {0: 120, 1: 80}
    >>> _parse_offsets("--to-offsets", "500")
    {None: 500}
    """
    offsets: dict[int | None, int] = {}
    try:
        if ":" not in text:
            offsets[None] = int(text)
        else:
            for pair in text.split(","):
                partition, _, offset = pair.strip().partition(":")
                offsets[int(partition)] = int(offset)
    except ValueError as exc:
        raise EvalError(f"{flag} takes OFFSET or PARTITION:OFFSET,..., got {text!r}") from exc
    if any(value < 0 for value in offsets.values()) or any(
        key is not None and key < 0 for key in offsets
    ):
        raise EvalError(f"{flag}: offsets and partitions must be >= 0, got {text!r}")
    return offsets


def _parse_time_ms(flag: str, text: str) -> int:
    """Seconds since the epoch, or an ISO 8601 time (UTC unless it says otherwise), in ms.

    Examples
    --------
    >>> _parse_time_ms("--from-time", "2023-10-25T07:00:00")
    1698217200000
    >>> _parse_time_ms("--to-time", "1698217200.5")
    1698217200500
    """
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise EvalError(f"{flag}: not an ISO 8601 time nor epoch seconds: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _kafka_range(args: argparse.Namespace) -> _KafkaRange:
    return _KafkaRange(
        bootstrap=args.bootstrap,
        topic=args.kafka_topic,
        from_offsets=None
        if args.from_offsets is None
        else _parse_offsets("--from-offsets", args.from_offsets),
        to_offsets=None
        if args.to_offsets is None
        else _parse_offsets("--to-offsets", args.to_offsets),
        from_ms=None if args.from_time is None else _parse_time_ms("--from-time", args.from_time),
        to_ms=None if args.to_time is None else _parse_time_ms("--to-time", args.to_time),
    )


def _bound(offsets: Mapping[int | None, int] | None, partition: int) -> int | None:
    if offsets is None:
        return None
    return offsets.get(partition, offsets.get(None))


async def _read_kafka_range(source: _KafkaRange, reading: _MovielogReading) -> dict[str, Any]:
    """Feed the range's records to ``reading``, partition by partition, in offset order.

    The end of each partition is fixed before reading (the ``to`` bound, or the end offset
    at start): lines produced meanwhile are not read, and the replay ends by itself.
    """
    from aiokafka import AIOKafkaConsumer

    from stream.kafka_io import TopicUnreadable, topic_partitions

    try:
        partitions = await topic_partitions(source.bootstrap, source.topic)
    except TopicUnreadable as exc:
        raise EvalError(str(exc)) from None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=source.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        firsts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        by_from_time = by_to_time = {}
        if source.from_ms is not None:
            by_from_time = await consumer.offsets_for_times(
                {tp: source.from_ms for tp in partitions}
            )
        if source.to_ms is not None:
            by_to_time = await consumer.offsets_for_times({tp: source.to_ms for tp in partitions})
        ranges: dict[Any, tuple[int, int]] = {}
        for tp in partitions:
            start, stop = firsts[tp], ends[tp]
            if source.from_ms is not None:
                found = by_from_time.get(tp)
                start = stop if found is None else max(start, found.offset)
            if source.to_ms is not None:
                found = by_to_time.get(tp)
                stop = stop if found is None else min(stop, found.offset)
            start = max(start, _bound(source.from_offsets, tp.partition) or 0)
            to_offset = _bound(source.to_offsets, tp.partition)
            if to_offset is not None:
                stop = min(stop, to_offset)
            ranges[tp] = (start, max(start, stop))
        values: dict[int, list[bytes]] = {tp.partition: [] for tp in partitions}
        assigned = pending = [tp for tp in partitions if ranges[tp][0] < ranges[tp][1]]
        if assigned:
            consumer.assign(assigned)
            for tp in assigned:
                consumer.seek(tp, ranges[tp][0])
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=int(source.idle_timeout_s * 1000))
            if not batch:
                raise EvalError(
                    f"no record of {source.topic} came within {source.idle_timeout_s:g} s; "
                    f"still to read: {[(tp.partition, ranges[tp]) for tp in pending]}"
                )
            for tp, records in batch.items():
                stop = ranges[tp][1]
                values[tp.partition].extend(
                    record.value or b"" for record in records if record.offset < stop
                )
            # Positions, not record counts: transaction markers and compaction leave gaps.
            pending = [tp for tp in pending if await consumer.position(tp) < ranges[tp][1]]
            consumer.pause(*(tp for tp in assigned if tp not in pending))
    finally:
        await consumer.stop()
    for partition in sorted(values):
        for value in values[partition]:
            reading.read(value)
    return {
        "source": "kafka",
        "bootstrap": source.bootstrap,
        "topic": source.topic,
        "offsets": {str(tp.partition): list(ranges[tp]) for tp in partitions},
        "records": sum(len(partition) for partition in values.values()),
        "order": "by the lines' own times; equal times by partition, then offset",
    }


def _read_kafka(source: _KafkaRange, limit: int | None, runtime_minutes: float) -> _Stream:
    reading = _MovielogReading(runtime_minutes)
    description = asyncio.run(_read_kafka_range(source, reading))
    return reading.stream(limit, description)


# ---------------------------------------------------------------------------- ALS baseline


@dataclass(slots=True)
class _FoldIn:
    """A user's normal equations against one fit's item factors, grown item by item."""

    fit: int
    n_items: int
    lhs: npt.NDArray[np.float64]
    rhs: npt.NDArray[np.float64]
    vector: npt.NDArray[np.float32] | None = None


class _PeriodicALS:
    """``implicit``'s ALS retrained from scratch every ``every`` events, as teams do.

    Between refits it ranks the users of the last fit with their fitted factors and
    everyone else with live popularity counts. With ``fold_in`` a user whose history grew
    since the fit gets a vector solved from the current history against the fitted item
    factors (implicit's own normal equations, kept up to date one item at a time), which
    is more than most teams do.
    """

    def __init__(
        self,
        every: int,
        *,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 1.0,
        iterations: int = 15,
        fold_in: bool = False,
        seed: int = 0,
    ) -> None:
        self.every = every
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.fold_in = fold_in
        self.seed = seed
        self.retrains = 0
        self.retrain_seconds = 0.0
        self._popularity = Popularity()
        self._user_items: dict[Hashable, dict[Hashable, float]] = {}
        self._events = 0
        self._fit_users: dict[Hashable, int] = {}
        self._fit_items: dict[Hashable, int] = {}
        self._fit_item_ids: list[Hashable] = []
        self._fit_history_sizes: dict[Hashable, int] = {}
        self._user_factors = np.zeros((0, factors), dtype=np.float32)
        self._item_factors = np.zeros((0, factors), dtype=np.float32)
        self._gram = np.zeros((factors, factors))
        self._fold_ins: dict[Hashable, _FoldIn] = {}

    def __repr__(self) -> str:
        return (
            f"implicit.als.AlternatingLeastSquares(factors={self.factors}, "
            f"regularization={self.regularization}, alpha={self.alpha}, "
            f"iterations={self.iterations}, random_state={self.seed}), refit every "
            f"{self.every} events{', fold-in of new history' if self.fold_in else ''}"
        )

    def learn_one(
        self, user: Hashable, item: Hashable, y: float, x: dict[str, Any] | None = None
    ) -> None:
        self._popularity.learn_one(user, item, y)
        items = self._user_items.setdefault(user, {})
        if item in items:
            self._fold_ins.pop(user, None)  # a changed value: solve again from scratch
        items[item] = items.get(item, 0.0) + y
        self._events += 1
        if self._events % self.every == 0:
            self._fit()

    def _fit(self) -> None:
        started = time.perf_counter()
        sparse = _optional("scipy.sparse")
        threadpoolctl = _optional("threadpoolctl")
        als = _optional("implicit.als")
        users = list(self._user_items)
        item_index: dict[Hashable, int] = {}
        rows: list[int] = []
        columns: list[int] = []
        values: list[float] = []
        for row, user in enumerate(users):
            for item, value in self._user_items[user].items():
                rows.append(row)
                columns.append(item_index.setdefault(item, len(item_index)))
                values.append(value)
        matrix = sparse.csr_matrix(
            (np.asarray(values, dtype=np.float32), (rows, columns)),
            shape=(len(users), len(item_index)),
        )
        # implicit warns (an error under pytest) unless BLAS runs single-threaded.
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = als.AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
            )
            model.fit(matrix, show_progress=False)
        self._user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self._item_factors = np.asarray(model.item_factors, dtype=np.float32)
        item_factors = self._item_factors.astype(np.float64)
        self._gram = item_factors.T @ item_factors
        self._gram[np.diag_indices_from(self._gram)] += self.regularization
        self._fit_users = {user: row for row, user in enumerate(users)}
        self._fit_items = item_index
        self._fit_item_ids = list(item_index)
        self._fit_history_sizes = {user: len(self._user_items[user]) for user in users}
        self._fold_ins = {}
        self.retrains += 1
        self.retrain_seconds += time.perf_counter() - started

    def _user_vector(self, user: Hashable) -> npt.NDArray[np.float32] | None:
        row = self._fit_users.get(user)
        history = self._user_items.get(user, {})
        if not self.fold_in or (row is not None and self._fit_history_sizes[user] == len(history)):
            return None if row is None else self._user_factors[row]
        return self._fold_in(user, history)

    def _fold_in(
        self, user: Hashable, history: Mapping[Hashable, float]
    ) -> npt.NDArray[np.float32] | None:
        """The user's ALS vector for the current history, against the fitted item factors.

        implicit solves ``(Y'Y + reg I + sum_i (c_i - 1) y_i y_i') x = sum_i c_i y_i`` with
        confidence ``c_i = alpha * value_i`` over the user's items ``i``; the sums only
        grow, so each new item costs one rank-one update.
        """
        state = self._fold_ins.get(user)
        if state is None or state.fit != self.retrains:
            state = _FoldIn(self.retrains, 0, np.zeros_like(self._gram), np.zeros(self.factors))
            self._fold_ins[user] = state
        if state.n_items == len(history) and (state.vector is not None or not history):
            return state.vector
        grew = False
        for item, value in itertools.islice(history.items(), state.n_items, None):
            column = self._fit_items.get(item)
            if column is None:
                continue
            vector = self._item_factors[column].astype(np.float64)
            confidence = self.alpha * value
            state.lhs += (confidence - 1.0) * np.outer(vector, vector)
            state.rhs += confidence * vector
            grew = True
        state.n_items = len(history)
        if grew:
            state.vector = np.linalg.solve(self._gram + state.lhs, state.rhs).astype(np.float32)
        return state.vector

    def recommend(
        self, user: Hashable, k: int = 20, exclude: Collection[Hashable] = ()
    ) -> list[Hashable]:
        vector = self._user_vector(user) if self.retrains else None
        if vector is None:
            return self._popularity.recommend(user, k, exclude)
        scores = self._item_factors @ vector
        items = self._fit_items
        excluded = [items[item] for item in exclude if item in items]
        ids = self._fit_item_ids
        return [ids[i] for i in top_k(scores, k, excluded)]


# ---------------------------------------------------------------------------- candidates


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise EvalError(f"--param takes NAME=VALUE, got {pair!r}")
        try:
            params[name.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError) as exc:
            raise EvalError(f"--param {pair!r}: not a Python literal") from exc
    return params


def _reelfeed_model(seed: int, params: Mapping[str, Any]) -> OnlineMF:
    try:
        return OnlineMF(seed=seed, **params)
    except TypeError as exc:
        raise EvalError(f"bad --param for the reelfeed model: {exc}") from exc


def _river_biasedmf(seed: int) -> RiverRecommender:
    river_optim = importlib.import_module("river.optim")
    river_reco = importlib.import_module("river.reco")
    # As shipped, with the settings of river's own BiasedMF example.
    return RiverRecommender(
        river_reco.BiasedMF(
            n_factors=10,
            bias_optimizer=river_optim.SGD(0.025),
            latent_optimizer=river_optim.SGD(0.025),
            latent_initializer=river_optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
    )


def _model_names(models: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in models.split(",") if name.strip()))
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise EvalError(f"--models: unknown {unknown or names}; choose from {', '.join(MODELS)}")
    return names


def _candidates(args: argparse.Namespace, names: Sequence[str]) -> list[Candidate]:
    params = _parse_params(args.param)
    candidates: list[Candidate] = []
    for name in names:
        if name == "popularity":
            candidates.append(Candidate(name, Popularity(), watch_count_target))
        elif name == "decayed-popularity":
            candidates.append(
                Candidate(name, DecayedPopularity(_DECAY_HALF_LIFE), watch_count_target)
            )
        elif name == "river-biasedmf":
            candidates.append(Candidate(name, _river_biasedmf(args.seed), rating_target))
        elif name == "reelfeed":
            model = _reelfeed_model(args.seed, params)
            candidates.append(Candidate(name, model, feedback_target(model.feedback)))
        else:
            als = _PeriodicALS(args.als_every, fold_in=name == "als-foldin", seed=args.seed)
            candidates.append(Candidate(name, als, watch_count_target))
    return candidates


# ---------------------------------------------------------------------------- outputs


def _plot(report: PrequentialReport, path: Path, title: str) -> None:
    matplotlib = _optional("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, (recall_axes, ndcg_axes) = pyplot.subplots(2, 1, sharex=True, figsize=(9, 7))
    for score in report.models:
        if not score.curve:
            continue
        events = [point[0] for point in score.curve]
        recall_axes.plot(events, [point[1] for point in score.curve], label=score.name)
        ndcg_axes.plot(events, [point[2] for point in score.curve], label=score.name)
    recall_axes.set_ylabel(f"Recall@{report.k}")
    ndcg_axes.set_ylabel(f"NDCG@{report.k}")
    ndcg_axes.set_xlabel("interactions replayed")
    recall_axes.set_title(f"{title}: prequential, per window of {report.window} scored events")
    recall_axes.legend(loc="upper left", fontsize="small")
    for axes in (recall_axes, ndcg_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


@dataclass(slots=True)
class _Progress:
    bar: Any
    done: int = 0

    def __call__(self, events: int) -> None:
        self.bar.update(events - self.done)
        self.done = events


def _progress_bar(total: int, enabled: bool) -> _Progress | None:
    if not enabled:
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (logs stay readable).
    bar = tqdm.tqdm(
        total=total, unit="ev", file=sys.stderr, desc="eval", mininterval=0.5, disable=None
    )
    return _Progress(bar)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """One BLAS thread while replaying, when threadpoolctl is there (the eval extra).

    Every product here is one user against the catalog: threads only add hand-offs, and
    on a busy machine their spinning makes the timings of every model noisy.
    """
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        yield
        return
    with threadpoolctl.threadpool_limits(1, "blas"):
        yield


def _model_details(candidate: Candidate) -> dict[str, Any]:
    details: dict[str, Any] = {"model": repr(candidate.model)}
    if isinstance(candidate.model, _PeriodicALS):
        details["retrain_every_events"] = candidate.model.every
        details["retrains"] = candidate.model.retrains
        details["retrain_seconds_total"] = round(candidate.model.retrain_seconds, 2)
    return details


def _replay(
    interactions: Sequence[Interaction],
    args: argparse.Namespace,
    names: Sequence[str],
    progress: _Progress | None = None,
) -> tuple[PrequentialReport, dict[str, dict[str, Any]]]:
    """Replay ``interactions`` over the models ``names`` (the unit of work of one job)."""
    candidates = _candidates(args, names)
    with _single_threaded_blas():
        report = prequential(
            interactions,
            candidates,
            k=args.k,
            batch_size=args.batch_size,
            window=args.window,
            warmup=args.warmup,
            progress=progress,
        )
    return report, {candidate.name: _model_details(candidate) for candidate in candidates}


def _replay_in_jobs(
    interactions: Sequence[Interaction], args: argparse.Namespace, names: Sequence[str]
) -> tuple[PrequentialReport, dict[str, dict[str, Any]]]:
    """The models split over ``args.jobs`` processes, the reports merged in ``names`` order.

    Each model's replay depends only on the stream, never on the other models, so the
    figures are those of a single replay; only the timings feel the other jobs.
    """
    shares = [list(names[job :: args.jobs]) for job in range(min(args.jobs, len(names)))]
    # spawn: a fork of a process with threads (pytest, asyncio) can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        futures = [pool.submit(_replay, interactions, args, share) for share in shares]
        parts = [future.result() for future in futures]
    scores = {score.name: score for report, _ in parts for score in report.models}
    details = {name: figures for _, part in parts for name, figures in part.items()}
    report = dataclasses.replace(parts[0][0], models=tuple(scores[name] for name in names))
    return report, details


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison that ``args`` asks for and return the JSON-ready report."""
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    if args.warmup < 0:
        raise EvalError(f"--warmup must be >= 0, got {args.warmup}")
    range_flags = (args.from_offsets, args.to_offsets, args.from_time, args.to_time)
    if args.kafka_topic is None and any(flag is not None for flag in range_flags):
        raise EvalError("--from-offsets/--to-offsets/--from-time/--to-time need --kafka-topic")
    if args.kafka_topic is not None and not args.bootstrap:
        raise EvalError("--kafka-topic needs --bootstrap HOST:PORT")
    names = _model_names(args.models)
    _candidates(args, names)  # bad names and parameters fail before the stream is read
    if args.movielens is not None:
        stream = _read_movielens(Path(args.movielens), args.limit)
    elif args.movielog is not None:
        stream = _read_movielog(Path(args.movielog), args.limit, args.runtime_minutes)
    else:
        stream = _read_kafka(_kafka_range(args), args.limit, args.runtime_minutes)
    started = time.perf_counter()
    if args.jobs > 1 and len(names) > 1:
        report, details = _replay_in_jobs(stream.interactions, args, names)
    else:
        progress = _progress_bar(len(stream.interactions), not args.no_progress)
        try:
            report, details = _replay(stream.interactions, args, names, progress)
        finally:
            if progress is not None:
                progress.bar.close()
    seconds = time.perf_counter() - started
    result = report.to_dict()
    if stream.interactions:
        stream.description["first_time"] = stream.interactions[0].time
        stream.description["last_time"] = stream.interactions[-1].time
    stream.description["limit"] = args.limit
    result["data"] = stream.description
    result["seed"] = args.seed
    result["jobs"] = min(args.jobs, len(names))
    result["replay_seconds"] = round(seconds, 1)
    for name, figures in details.items():
        result["models"][name].update(figures)
    if args.plot is not None:
        _plot(report, Path(args.plot), stream.description["source"])
        result["plot"] = str(args.plot)
    return result


def cmd_eval(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    """Handler of ``reelfeed eval``: print the report as JSON (and write ``--json``)."""
    if args.kafka_topic is not None and args.bootstrap is None:
        args.bootstrap = settings.kafka_bootstrap
    try:
        result = run_eval(args)
    except (EvalError, OSError) as exc:
        sys.stderr.write(f"reelfeed eval: {exc}\n")
        return 2
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.json is not None:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def add_eval_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``reelfeed`` command line; its handler is :func:`cmd_eval`."""
    parser = subparsers.add_parser(
        "eval",
        help="prequential comparison of recommenders on MovieLens, a movielog file or topic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movielens", metavar="PATH", help="MovieLens ratings.csv")
    source.add_argument("--movielog", metavar="PATH", help="file of raw movielog lines")
    source.add_argument(
        "--kafka-topic", metavar="TOPIC", help="Kafka topic of raw movielog lines (a range of it)"
    )
    kafka = parser.add_argument_group(
        "Kafka range",
        "With --kafka-topic: every partition from --from-* (default: its beginning) up to "
        "--to-* (default: its end when the command starts), then the replay stops. Offsets "
        "are OFFSET (every partition) or PARTITION:OFFSET,...; --to-offsets is exclusive. "
        "Times (ISO 8601, UTC unless stated, or epoch seconds) select by the records' "
        "Kafka timestamps, --to-time exclusive. Lines are replayed in the order of their "
        "own times across partitions.",
    )
    kafka.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap (default: the settings')"
    )
    kafka.add_argument("--from-offsets", metavar="OFFSETS")
    kafka.add_argument("--to-offsets", metavar="OFFSETS")
    kafka.add_argument("--from-time", metavar="TIME")
    kafka.add_argument("--to-time", metavar="TIME")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma list from {', '.join(MODELS)} (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the JSON report here")
    parser.add_argument("--plot", metavar="OUT", help="write a PNG of the metrics along the stream")
    parser.add_argument("--seed", type=int, default=0, help="seed of every model (default 0)")
    parser.add_argument("--limit", type=int, metavar="N", help="replay the first N interactions")
    parser.add_argument("--k", type=_positive_int, default=20, help="list length (default 20)")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=1, help="learn in micro-batches of N"
    )
    parser.add_argument(
        "--als-every",
        type=_positive_int,
        default=5000,
        metavar="N",
        help="refit ALS from scratch every N learned events (default %(default)s)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="hyperparameter of the reelfeed model (repeatable), e.g. negatives=8",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="learn the first N interactions without scoring them (e.g. a tuning split)",
    )
    parser.add_argument(
        "--window", type=_positive_int, default=2000, help="scored events per plot point"
    )
    parser.add_argument(
        "--runtime-minutes",
        type=float,
        default=100.0,
        help="movielog: assumed movie length for the watched share (default %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="replay the models in N processes (same figures; no progress bar) (default 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=cmd_eval)
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m reelfeed.eval_cmd ...``, until the lead wires ``eval`` into the CLI."""
    parser = argparse.ArgumentParser(prog="reelfeed")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    handler: Callable[[argparse.Namespace, Settings, Mapping[str, str]], int] = args.handler
    return handler(args, Settings(), {})


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
