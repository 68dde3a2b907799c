"""The world: determinism by seed, power-law popularity, catalogs, users and their tastes."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.world import (
    GENRES,
    Demographics,
    World,
    WorldConfig,
    course_movie_id,
    load_course_catalog,
    load_movielens_catalog,
    split_movielens_title,
    synthetic_catalog,
)


def _world(seed: int, **changes: Any) -> World:
    config = WorldConfig(catalog="synthetic", movies=2000, users=5000, seed=seed)
    return World.build(replace(config, **changes))


def test_same_seed_same_world() -> None:
    first, second = _world(7), _world(7)
    assert first.movies == second.movies
    assert np.array_equal(first.features, second.features)
    for user_id in (1, 17, 4999):
        assert first.profile(user_id) == second.profile(user_id)
        assert np.array_equal(first.taste(user_id).weights, second.taste(user_id).weights)
        assert np.array_equal(first.match_all(user_id), second.match_all(user_id))


def test_other_seed_other_world() -> None:
    first, second = _world(7), _world(8)
    assert [m.movie_id for m in first.movies] != [m.movie_id for m in second.movies]
    assert not np.array_equal(first.taste(1).weights, second.taste(1).weights)


def test_a_user_is_the_same_whatever_was_asked_before() -> None:
    # Tastes are drawn from (seed, user id) alone, not from a shared stream.
    fresh, used = _world(3), _world(3)
    for user_id in range(1, 200):
        used.taste(user_id)
    assert np.array_equal(fresh.taste(150).weights, used.taste(150).weights)


def test_popularity_is_a_power_law_over_ranks() -> None:
    world = _world(1, movies=27_000)
    weights = world.popularity_weights[world.popular_order]
    assert np.all(np.diff(weights) <= 0)
    ranks = np.arange(1, len(weights) + 1)
    slope = np.polyfit(np.log(ranks[10:10_000]), np.log(weights[10:10_000]), 1)[0]
    assert slope == pytest.approx(-world.config.popularity_exponent, abs=0.02)
    # A heavy head: the top 1% of movies draw about a third of popularity-weighted picks.
    head = weights[: len(weights) // 100].sum()
    assert 0.25 < head < 0.45


def test_sampling_follows_popularity() -> None:
    world = _world(2, movies=500)
    rng = np.random.default_rng(0)
    counts = Counter(world.sample_popular(u) for u in rng.random(200_000))
    top = int(world.popular_order[0])
    assert counts[top] / 200_000 == pytest.approx(world.popularity_weights[top], rel=0.05)
    assert counts.most_common(1)[0][0] == top


def test_matches_are_probabilities_and_tastes_differ() -> None:
    world = _world(5)
    matches = np.stack([world.match_all(u) for u in range(1, 101)])
    assert matches.min() > 0.0 and matches.max() < 1.0
    # The best list for a user beats the popularity list by a wide margin, on average.
    popular = world.popular_movies(20)
    best = [matches[u - 1][world.best_movies(u, 20)].mean() for u in range(1, 101)]
    assert np.mean(best) > matches[:, popular].mean() + 0.25
    # Different users like different movies.
    tops = {tuple(world.best_movies(u, 5)) for u in range(1, 101)}
    assert len(tops) > 90


def test_best_movies_skips_excluded_and_is_sorted() -> None:
    world = _world(6)
    best = world.best_movies(9, 20)
    matches = world.match_all(9)
    assert np.all(np.diff(matches[best]) <= 0)
    assert matches[best[-1]] >= np.sort(matches)[-20]
    without = world.best_movies(9, 20, exclude=best[:5].tolist())
    assert not set(without.tolist()) & set(best[:5].tolist())


def test_favorite_genres_shape_the_match() -> None:
    world = _world(11)
    lifts = []
    for user_id in range(1, 201):
        taste = world.taste(user_id)
        columns = [GENRES.index(g) for g in taste.favorite_genres]
        liked = world.genre_matrix[:, columns].sum(axis=1) > 0
        matches = world.match_all(user_id)
        lifts.append(matches[liked].mean() - matches[~liked].mean())
    assert np.mean(lifts) > 0.1


def test_population_bounds_and_profiles() -> None:
    world = _world(1, users=20_000)
    assert world.profile(0) is None and world.profile(20_001) is None
    profiles = [world.profile(u) for u in range(1, 20_001)]
    assert all(p is not None for p in profiles)
    female = sum(p.gender == "F" for p in profiles if p is not None) / len(profiles)
    assert female == pytest.approx(Demographics().female_share, abs=0.01)
    ages = [p.age for p in profiles if p is not None]
    assert 8 <= min(ages) and max(ages) <= 90 and 27 <= float(np.median(ages)) <= 31
    top = Counter(p.occupation for p in profiles if p is not None).most_common(1)[0][0]
    assert top == "college/grad student"


def test_synthetic_ids_are_unique_and_course_shaped() -> None:
    movies = synthetic_catalog(5000, seed=1)
    ids = [m.movie_id for m in movies]
    assert len(set(ids)) == len(ids)
    assert all(course_movie_id(m.title, m.year) == m.movie_id or "+" in m.movie_id for m in movies)
    assert all(m.genres and set(m.genres) <= set(GENRES) for m in movies)


def test_world_draws_runtimes_it_does_not_know() -> None:
    world = _world(1, movies=1000)
    runtimes = np.array([m.runtime for m in world.movies])
    assert runtimes.min() >= 60 and runtimes.max() <= 220
    assert 85 <= np.median(runtimes) <= 115


def test_bad_configs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="users"):
        WorldConfig(users=-1)
    with pytest.raises(ValueError, match="movies"):
        WorldConfig(movies=0)
    with pytest.raises(ValueError, match="catalog"):
        World.build(WorldConfig(catalog="/nonexistent/file.csv", movies=10))


def test_course_falls_back_to_synthetic_without_the_data(tmp_path: Path) -> None:
    world = World.build(WorldConfig(catalog="course", movies=100, users=10, data_dir=tmp_path))
    assert world.source == "synthetic" and len(world.movies) == 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", "toy+story+1995"),
        ("Matrix, The (1999)", "the+matrix+1999"),
        ("Monsters, Inc. (2001)", "monsters_+inc.+2001"),
        ("Seven Samurai (Shichinin no samurai) (1954)", "seven+samurai+1954"),
        ("Léon: The Professional (a.k.a. The Professional) (1994)", "lon+the+professional+1994"),
        ("Babylon 5", "babylon+5+"),
    ],
)
def test_movielens_titles_become_course_ids(raw: str, expected: str) -> None:
    assert course_movie_id(*split_movielens_title(raw)) == expected


# -- the real files (skipped when ../shared/data is absent) --------------------------------


def test_course_movie_id_reproduces_every_course_catalog_id(data_dir: Path) -> None:
    path = data_dir / "course" / "catalog" / "movies_2024.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) > 4000
    for row in rows:
        year = row["release_date"][:4]
        expected = course_movie_id(row["title"], int(year) if year.isdigit() else None)
        assert expected == row["movie_id"], row["title"]


def test_course_catalog_loads_with_its_fields(data_dir: Path) -> None:
    movies = load_course_catalog(data_dir / "course" / "catalog" / "movies_2024.csv")
    by_id = {m.movie_id: m for m in movies}
    assert len(movies) == 4985 == len(by_id)
    rule = by_id["georgia+rule+2007"]
    assert rule.genres == ("Comedy", "Drama", "Romance")
    assert rule.runtime == 113 and rule.popularity == pytest.approx(7.281643)
    assert rule.production_companies == ("Universal Pictures", "Morgan Creek Productions")


def test_course_world_keeps_the_catalog_and_pads_it(data_dir: Path, course_world: World) -> None:
    assert course_world.source == "course" and len(course_world.movies) == 4985
    padded = World.build(WorldConfig(catalog="course", movies=6000, users=10, data_dir=data_dir))
    assert len(padded.movies) == 6000 and len(padded.index) == 6000
    # The course movies keep the head of the popularity ranking; the padding is the tail.
    course_rows = {padded.index[m.movie_id] for m in course_world.movies}
    assert set(padded.popular_order[:4985].tolist()) == course_rows
    trimmed = World.build(WorldConfig(catalog="course", movies=100, users=10, data_dir=data_dir))
    assert {m.movie_id for m in trimmed.movies} <= set(course_world.index)


def test_movielens_catalog_loads_with_popularity_from_ratings(data_dir: Path) -> None:
    folder = data_dir / "movielens" / "ml-latest-small"
    movies = load_movielens_catalog(folder / "movies.csv", folder / "ratings.csv")
    by_id = {m.movie_id: m for m in movies}
    assert len(movies) > 9000
    assert by_id["toy+story+1995"].genres == (
        "Adventure",
        "Animation",
        "Family",
        "Comedy",
        "Fantasy",
    )
    assert by_id["forrest+gump+1994"].popularity > by_id["toy+story+1995"].popularity > 100
    # Many MovieLens titles get exactly the id the course uses for them.
    course = {m.movie_id for m in load_course_catalog(data_dir / "course/catalog/movies_2024.csv")}
    assert len(course & set(by_id)) > 1500


def test_embedded_demographics_are_those_of_the_course_users(data_dir: Path) -> None:
    measured = Demographics.from_csv(data_dir / "course" / "catalog" / "users_2025.csv")
    embedded = Demographics()
    assert measured.occupations == embedded.occupations
    assert measured.female_share == embedded.female_share
    assert np.allclose(measured.age_percentiles, embedded.age_percentiles)
