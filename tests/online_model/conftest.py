"""Shared helpers of the online_model tests: every recommender, and a synthetic stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from river import optim, reco

from online_model.base import Recommender
from online_model.evaluation import Interaction
from online_model.mf import OnlineMF
from online_model.popularity import DecayedPopularity, Popularity
from online_model.river_reco import RiverRecommender

Factory = Callable[[int], Recommender]
WorldBuilder = Callable[..., "TasteWorld"]


def _river_biased_mf(seed: int) -> Recommender:
    return RiverRecommender(
        reco.BiasedMF(
            n_factors=8,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
    )


#: Every recommender the contract suite covers, built from a seed.
RECOMMENDERS: dict[str, Factory] = {
    "online_mf": lambda seed: OnlineMF(n_factors=8, negatives=4, seed=seed),
    "popularity": lambda seed: Popularity(),
    "decayed_popularity": lambda seed: DecayedPopularity(half_life=50.0),
    "river_biased_mf": _river_biased_mf,
}


@pytest.fixture(params=sorted(RECOMMENDERS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return RECOMMENDERS[request.param]


@dataclass(frozen=True, slots=True)
class TasteWorld:
    """Users who each like one group of movies; ``events`` are their watches, interleaved."""

    events: tuple[Interaction, ...]
    taste_of_user: dict[int, int]
    group_of_item: dict[str, int]


def taste_world(
    seed: int,
    *,
    n_users: int = 150,
    n_groups: int = 5,
    items_per_group: int = 30,
    watches_per_user: int = 20,
    loyalty: float = 0.85,
) -> TasteWorld:
    """A small stream where taste, not popularity, predicts the next watch.

    Each group has a few popular movies (Zipf-like weights), so popularity is a fair
    opponent; a user's watches come from their own group with probability ``loyalty``
    and uniformly from the other groups otherwise; users' watches are interleaved.
    """
    rng = np.random.default_rng(seed)
    n_items = n_groups * items_per_group
    names = [f"g{index // items_per_group}m{index % items_per_group}" for index in range(n_items)]
    zipf = 1.0 / np.arange(1, items_per_group + 1)
    zipf /= zipf.sum()
    taste_of_user: dict[int, int] = {}
    queues: list[list[str]] = []
    for user in range(n_users):
        group = int(rng.integers(n_groups))
        taste_of_user[user] = group
        n_own = min(int(rng.binomial(watches_per_user, loyalty)), items_per_group)
        own = group * items_per_group + rng.choice(
            items_per_group, size=n_own, replace=False, p=zipf
        )
        elsewhere = np.setdiff1d(
            np.arange(n_items), group * items_per_group + np.arange(items_per_group)
        )
        other = rng.choice(elsewhere, size=watches_per_user - n_own, replace=False)
        picks = np.concatenate((own, other))
        rng.shuffle(picks)
        queues.append([names[index] for index in picks.tolist()])
    slots = np.repeat(np.arange(n_users), watches_per_user)
    rng.shuffle(slots)
    positions = [0] * n_users
    events: list[Interaction] = []
    for user in slots.tolist():
        item = queues[user][positions[user]]
        positions[user] += 1
        events.append(Interaction(float(len(events)), user, item, watched_share=1.0))
    group_of_item = {name: index // items_per_group for index, name in enumerate(names)}
    return TasteWorld(tuple(events), taste_of_user, group_of_item)


@pytest.fixture
def make_taste_world() -> WorldBuilder:
    return taste_world
