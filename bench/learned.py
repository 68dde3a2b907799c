"""A model as the learner would have it after a day of the simulated site.

Benchmarks of the serving path need item factors, biases, popularity and user rows that
look like the ones the learn worker publishes: their norms, spreads and the ranking blend
decide how much of the catalog the server's pruning can skip (synthetic factors with the
server's fallback blend gave a far rosier picture than the model's own blend). This
module plays the default simulated site (``python -m sim``'s world: 27k movies, the
course's arrival pattern) offline for some simulated hours, with popularity lists as
recommendations, and runs every line through the same parser and ``LearnProcessor`` as
the ingest and learn workers, with the default model and the world's catalog genres.

It returns the item matrix the learner would publish (with its ``ranking`` parameters;
by default with every movie of the catalog, as after months of traffic) and the user rows
as the learner commits them to Redis (``state.user_row``: event count, then the vector).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sim.cli import build_parser, world_config
from sim.site import RecommendationOutcome, Site, SiteConfig
from sim.world import World
from state import Checkpoint, ItemMatrix
from stream.catalog import load_catalog_csv
from stream.codec import encode_event
from stream.events import Event, Rejected
from stream.learn import LearnConfig, new_state
from stream.learner import EventMessage, LearnProcessor
from stream.parser import LineValidator, ParseContext

__all__ = ["LearnedModel", "learn_simulated_site"]

_PARTITIONS = 2
_BATCH = 2_000
_START = 1.7e9


@dataclass(frozen=True)
class LearnedModel:
    matrix: ItemMatrix
    #: User id -> the row the learner keeps in Redis (``state.user_row``).
    user_rows: dict[int, npt.NDArray[np.float32]]
    lines: int
    events_learned: int
    seconds: float


class _Capture:
    """A learner's writer that keeps every user's last row."""

    def __init__(self) -> None:
        self.user_rows: dict[int, npt.NDArray[np.float32]] = {}

    async def commit(
        self,
        users: Mapping[int, npt.NDArray[np.float32]],
        items: Mapping[str, npt.NDArray[np.float32]],
        positions: Mapping[str, int],
        cut: object = None,
    ) -> None:
        self.user_rows.update(users)

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        return 1

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        return None


async def _learn(
    hours: float, arrivals_per_second: float, seed: int, whole_catalog: bool
) -> LearnedModel:
    started = time.perf_counter()
    world = World.build(world_config(build_parser().parse_args(["--seed", str(seed)])))
    with tempfile.TemporaryDirectory(prefix="reelfeed-learned-") as folder:
        catalog_csv = Path(folder) / "catalog.csv"
        world.write_catalog(catalog_csv)
        catalog = load_catalog_csv(catalog_csv)
    config = LearnConfig("-", "-", "bench", "events", Path("."), "bench", catalog=catalog)
    writer = _Capture()
    processor = LearnProcessor(
        new_state(config),
        writer,
        "bench",
        prequential_sample=0.0,
        publish_interval_s=float("inf"),
        checkpoint_interval_s=float("inf"),
    )
    popular = [world.movies[i].movie_id for i in world.popular_movies(20)]
    answer = RecommendationOutcome.answered(popular, 5.0)
    site = Site(
        world,
        SiteConfig(warm_start=False, ground_truth=False, arrivals_per_second=arrivals_per_second),
        _START,
        seed=seed,
    )
    validator = LineValidator(ParseContext())
    offsets = [0] * _PARTITIONS
    pending: list[EventMessage] = []
    lines = 0

    def keep(event: Event | Rejected) -> None:
        if isinstance(event, Rejected):
            return
        partition = event.user_id % _PARTITIONS
        source = f"movielog:0:{lines}".encode()
        pending.append(
            EventMessage("events", partition, offsets[partition], encode_event(event), source)
        )
        offsets[partition] += 1

    until = _START + hours * 3600
    while (due := site.next_due()) is not None and due <= until:
        step = site.advance(due)
        produced = list(step.lines)
        for call in step.calls:
            produced += site.complete(call, answer)
        for line in produced:
            lines += 1
            keep(validator.validate(line.render()))
        if len(pending) >= _BATCH:
            await processor.process(pending)
            pending = []
    await processor.process(pending)
    model = processor.state.model
    if not model.n_items:
        raise RuntimeError(f"{hours} simulated hours taught the model nothing")
    if whole_catalog:
        # A long-running site has seen every movie: give the ones this day missed the
        # rows the model makes at a movie's first sight (a fresh vector, its genres).
        model.add_items(movie.movie_id for movie in world.movies)
    return LearnedModel(
        processor.item_matrix(),
        writer.user_rows,
        lines,
        processor.state.events_learned,
        time.perf_counter() - started,
    )


def learn_simulated_site(
    hours: float = 24.0,
    arrivals_per_second: float = 20.0,
    seed: int = 0,
    whole_catalog: bool = True,
) -> LearnedModel:
    """The default model after ``hours`` of the simulated site (see the module's text);
    with ``whole_catalog``, every movie of the world is in its item matrix."""
    return asyncio.run(_learn(hours, arrivals_per_second, seed, whole_catalog))
