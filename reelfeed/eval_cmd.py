"""``reelfeed eval``: prequential comparison of recommenders on a recorded stream.

Reads MovieLens ``ratings.csv`` (each rating is a watch of the whole movie plus a rating,
sorted by timestamp) or a movielog file of raw course lines, replays it test-then-train
over the chosen models (:mod:`online_model.evaluation` says exactly how), prints a JSON
report and optionally writes it to a file, with a plot of the metrics along the stream.

The implicit-feedback ALS baseline, the plot and the progress bar need the ``eval``
extra (``implicit``, ``matplotlib``, ``tqdm``); the other models need only the core.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import importlib
import itertools
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _read_movielog(path: Path, limit: int | None, runtime_minutes: float) -> _Stream:
    """Raw course lines through the ingest worker's own parser and validators."""
    from stream.events import RateEvent, Rejected, WatchEvent
    from stream.parser import LineValidator

    validator = LineValidator()
    interactions: list[Interaction] = []
    lines = skipped = 0
    refused: dict[str, int] = {}
    with path.open("rb") as handle:
        for raw in handle:
            lines += 1
            result = validator.validate(raw.rstrip(b"\r\n"))
            if isinstance(result, WatchEvent):
                share = min((result.minute + 1) / runtime_minutes, 1.0)
                interactions.append(
                    Interaction(
                        result.time_us / 1e6, result.user_id, result.movie_id, watched_share=share
                    )
                )
            elif isinstance(result, RateEvent):
                interactions.append(
                    Interaction(
                        result.time_us / 1e6,
                        result.user_id,
                        result.movie_id,
                        rating=float(result.rating),
                    )
                )
            else:
                skipped += 1  # recommendation requests and refused lines
                if isinstance(result, Rejected):
                    refused[result.reason.value] = refused.get(result.reason.value, 0) + 1
    interactions.sort(key=lambda interaction: interaction.time)
    total = len(interactions)
    if limit is not None:
        interactions = interactions[:limit]
    return _Stream(
        interactions,
        {
            "source": "movielog",
            "path": str(path),
            "lines": lines,
            "lines_skipped": skipped,
            "lines_refused": refused,
            "interactions_in_file": total,
            "reading": f"watch line minute m = share (m+1)/{runtime_minutes:g} of the movie "
            "(runtime assumed); rate line = rating; sorted by time",
        },
    )


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


def _candidates(args: argparse.Namespace) -> list[Candidate]:
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise EvalError(f"--models: unknown {unknown or names}; choose from {', '.join(MODELS)}")
    params = _parse_params(args.param)
    candidates: list[Candidate] = []
    for name in dict.fromkeys(names):
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


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison that ``args`` asks for and return the JSON-ready report."""
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    if args.warmup < 0:
        raise EvalError(f"--warmup must be >= 0, got {args.warmup}")
    if args.movielens is not None:
        stream = _read_movielens(Path(args.movielens), args.limit)
    else:
        stream = _read_movielog(Path(args.movielog), args.limit, args.runtime_minutes)
    candidates = _candidates(args)
    progress = _progress_bar(len(stream.interactions), not args.no_progress)
    started = time.perf_counter()
    try:
        with _single_threaded_blas():
            report = prequential(
                stream.interactions,
                candidates,
                k=args.k,
                batch_size=args.batch_size,
                window=args.window,
                warmup=args.warmup,
                progress=progress,
            )
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
    result["replay_seconds"] = round(seconds, 1)
    for candidate in candidates:
        result["models"][candidate.name].update(_model_details(candidate))
    if args.plot is not None:
        _plot(report, Path(args.plot), stream.description["source"])
        result["plot"] = str(args.plot)
    return result


def cmd_eval(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    """Handler of ``reelfeed eval``: print the report as JSON (and write ``--json``)."""
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
        help="prequential comparison of recommenders on MovieLens or a movielog file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movielens", metavar="PATH", help="MovieLens ratings.csv")
    source.add_argument("--movielog", metavar="PATH", help="file of raw movielog lines")
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
