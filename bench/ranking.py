"""Top-20 latency of online_model.ranking against a naive full sort, printed as JSON.

The serving shape of the course: about 27k movies, 32 (and 64) factors, a user who has
watched 200 of them. Three timings per shape, each the distribution over many requests:

- ``full_request``: what the server does per request with a ``RankingTable``: the
  matrix-vector product, biases, the popularity blend, exclusions and the top 20;
- ``top_k_only``: the selection alone, on precomputed scores (``top_k``);
- ``naive_argsort`` (the baseline): the same scores, then a full ``np.argsort``.

Run: ``.venv/bin/python bench/ranking.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from online_model.ranking import RankingTable, top_k

__all__ = ["main"]

N_ITEMS = 27_000
K = 20
N_WATCHED = 200


def _timings_us(function: Callable[[], object], repeat: int) -> dict[str, float]:
    for _ in range(min(repeat, 50)):  # warm caches and BLAS
        function()
    samples = np.empty(repeat)
    for index in range(repeat):
        started = time.perf_counter_ns()
        function()
        samples[index] = time.perf_counter_ns() - started
    samples /= 1e3
    return {
        "median_us": round(float(np.median(samples)), 1),
        "p90_us": round(float(np.percentile(samples, 90)), 1),
        "p99_us": round(float(np.percentile(samples, 99)), 1),
    }


def _naive(
    matrix: npt.NDArray[np.float32],
    user: npt.NDArray[np.float32],
    biases: npt.NDArray[np.float32],
    watched: npt.NDArray[np.intp],
) -> npt.NDArray[np.intp]:
    scores = matrix @ user + biases
    scores[watched] = -np.inf
    return np.argsort(-scores, kind="stable")[:K]


def _shape(n_factors: int, repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    matrix = rng.normal(0.0, 0.3, size=(N_ITEMS, n_factors)).astype(np.float32)
    biases = rng.normal(0.0, 0.5, size=N_ITEMS).astype(np.float32)
    popularity = rng.pareto(1.2, size=N_ITEMS)
    table = RankingTable(
        item_ids=tuple(f"movie+{index}+2001" for index in range(N_ITEMS)),
        item_matrix=matrix,
        item_biases=biases,
        popularity=popularity,
        popularity_weight=1.0,
        cold_start_events=5.0,
    )
    user = rng.normal(0.0, 0.5, size=n_factors).astype(np.float32)
    watched_rows = rng.choice(N_ITEMS, size=N_WATCHED, replace=False).astype(np.intp)
    watched_ids = [table.item_ids[row] for row in watched_rows]
    scores = (matrix @ user + biases).astype(np.float32)

    ours = table.recommend_indices(user, n_events=300, exclude=watched_rows, k=K)
    naive = _naive(matrix, user, biases, watched_rows)
    blended_free = top_k(scores.copy(), K, watched_rows)
    return {
        "n_items": N_ITEMS,
        "n_factors": n_factors,
        "k": K,
        "watched": N_WATCHED,
        "full_request": _timings_us(
            lambda: table.recommend(user, n_events=300, watched=watched_ids, k=K), repeat
        ),
        "full_request_indices": _timings_us(
            lambda: table.recommend_indices(user, n_events=300, exclude=watched_rows, k=K),
            repeat,
        ),
        "top_k_only": _timings_us(lambda: top_k(scores.copy(), K, watched_rows), repeat),
        "naive_argsort": _timings_us(lambda: _naive(matrix, user, biases, watched_rows), repeat),
        "same_list_as_naive": bool(np.array_equal(blended_free, naive)),
        "full_request_list_length": int(ours.shape[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000, help="requests per timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    report = {
        "benchmark": "online_model.ranking top-20",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "repeat": args.repeat,
        "shapes": [_shape(n_factors, args.repeat, rng) for n_factors in (32, 64)],
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
