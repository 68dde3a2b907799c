"""The simulated world: a movie catalog and users with hidden tastes, deterministic by seed.

Movies come from the course catalog (``data/course/catalog/movies_2024.csv``), from
MovieLens (``movies.csv``, titles turned into course-style ids), from any CSV of either
shape, or from a synthetic generator. Whatever the source, popularity follows a power law
over the catalog's popularity ranks, and a catalog smaller than the wanted size is padded
with synthetic long-tail movies (the course catalog holds 4,985 of the site's ~27k).

A user's taste is hidden: latent factors, genre affinities shaped by demographics, a
sensitivity to popularity and to quality, and a bias. The *match* of user ``u`` and movie
``m`` is ``sigmoid(w_u . x_m)`` in ``[0, 1]``, where ``x_m`` stacks the movie's factors,
genre vector, popularity and quality scores and ``w_u`` the user's weights on them. Users
are generated on demand from ``(seed, user_id)``, so a million of them cost nothing
until they show up.
"""

from __future__ import annotations

import bisect
import csv
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "Demographics",
    "GENRES",
    "Movie",
    "TMDB_GENRE_IDS",
    "Taste",
    "UserProfile",
    "World",
    "WorldConfig",
    "course_movie_id",
    "default_data_dir",
    "load_course_catalog",
    "load_movielens_catalog",
    "split_movielens_title",
    "synthetic_catalog",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: The course catalog's genres (TMDB's), most frequent first.
GENRES: tuple[str, ...] = (
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Action",
    "Crime",
    "Adventure",
    "Documentary",
    "Horror",
    "Science Fiction",
    "Fantasy",
    "Family",
    "Mystery",
    "History",
    "War",
    "Animation",
    "Music",
    "Foreign",
    "Western",
    "TV Movie",
)

#: TMDB's genre ids, as the course API's ``genres`` list carries them.
TMDB_GENRE_IDS: Mapping[str, int] = {
    "Action": 28,
    "Adventure": 12,
    "Animation": 16,
    "Comedy": 35,
    "Crime": 80,
    "Documentary": 99,
    "Drama": 18,
    "Family": 10751,
    "Fantasy": 14,
    "Foreign": 10769,
    "History": 36,
    "Horror": 27,
    "Music": 10402,
    "Mystery": 9648,
    "Romance": 10749,
    "Science Fiction": 878,
    "TV Movie": 10770,
    "Thriller": 53,
    "War": 10752,
    "Western": 37,
}

# Movies per genre in the course catalog of 2024 (4,985 movies): the synthetic mix.
_GENRE_COUNTS: Mapping[str, int] = {
    "Drama": 2847,
    "Comedy": 1354,
    "Romance": 923,
    "Thriller": 921,
    "Action": 796,
    "Crime": 648,
    "Adventure": 537,
    "Documentary": 370,
    "Horror": 361,
    "Science Fiction": 351,
    "Fantasy": 324,
    "Family": 320,
    "Mystery": 312,
    "History": 261,
    "War": 242,
    "Animation": 217,
    "Music": 192,
    "Foreign": 150,
    "Western": 131,
    "TV Movie": 46,
}

_MOVIELENS_GENRES: Mapping[str, tuple[str, ...]] = {
    "Action": ("Action",),
    "Adventure": ("Adventure",),
    "Animation": ("Animation",),
    "Children": ("Family",),
    "Comedy": ("Comedy",),
    "Crime": ("Crime",),
    "Documentary": ("Documentary",),
    "Drama": ("Drama",),
    "Fantasy": ("Fantasy",),
    "Film-Noir": ("Crime", "Mystery"),
    "Horror": ("Horror",),
    "Musical": ("Music",),
    "Mystery": ("Mystery",),
    "Romance": ("Romance",),
    "Sci-Fi": ("Science Fiction",),
    "Thriller": ("Thriller",),
    "War": ("War",),
    "Western": ("Western",),
}

_TRAILING_ARTICLES = ("The", "A", "An", "Les", "La", "Le", "L'", "Il", "El", "Das", "Der", "Die")


def default_data_dir() -> Path:
    """``../shared/data`` next to the checkout holding this package (it may be absent)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def course_movie_id(title: str, year: int | None) -> str:
    """The course's movie id of a title: lowercase words joined by ``+``, then ``+<year>``.

    A comma becomes ``_``; ``-``, ``.`` and ``*`` stay; other symbols and non-ASCII letters
    are dropped, so a word of symbols (or a double space) leaves ``++``; a missing year
    leaves a trailing ``+``. This reproduces every id of the 2024 course catalog.

    Examples
    --------
    >>> course_movie_id("Monsters, Inc.", 2001)
    'monsters_+inc.+2001'
    >>> course_movie_id("One Flew Over the Cuckoo's Nest", 1975)
    'one+flew+over+the+cuckoos+nest+1975'
    >>> course_movie_id("M*A*S*H", 1970), course_movie_id("Les Misérables", 1998)
    ('m*a*s*h+1970', 'les+misrables+1998')
    >>> course_movie_id("Tom & Jerry", None)
    'tom++jerry+'
    """
    words = []
    for word in title.lower().replace(",", "_").split(" "):
        words.append("".join(ch for ch in word if ch in _ID_CHARS))
    return "+".join(words) + "+" + ("" if year is None else str(year))


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.*")
_ML_YEAR = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ML_AKA = re.compile(r"\s*\([^()]*\)\s*$")


def split_movielens_title(raw: str) -> tuple[str, int | None]:
    """Split a MovieLens title into the display title and the year.

    MovieLens writes ``Matrix, The (1999)`` and appends alternative titles in
    parentheses: both are undone.

    Examples
    --------
    >>> split_movielens_title("Matrix, The (1999)")
    ('The Matrix', 1999)
    >>> split_movielens_title("Seven Samurai (Shichinin no samurai) (1954)")
    ('Seven Samurai', 1954)
    >>> split_movielens_title("Babylon 5")
    ('Babylon 5', None)
    """
    title = raw.strip()
    year: int | None = None
    found = _ML_YEAR.search(title)
    if found:
        year = int(found.group(1))
        title = title[: found.start()]
    while True:
        aka = _ML_AKA.search(title)
        if aka is None or aka.start() == 0:
            break
        title = title[: aka.start()]
    for article in _TRAILING_ARTICLES:
        suffix = f", {article}"
        if title.endswith(suffix):
            title = (
                f"{article} {title[: -len(suffix)]}"
                if not article.endswith("'")
                else (f"{article}{title[: -len(suffix)]}")
            )
            break
    return title.strip(), year


@dataclass(frozen=True, slots=True)
class Movie:
    """A movie of the catalog, with the fields the course API serves.

    Examples
    --------
    >>> Movie("up+2009", "Up", ("Animation", "Family"), runtime=96, popularity=20.5).year
    2009
    """

    movie_id: str
    title: str
    genres: tuple[str, ...]
    runtime: int
    popularity: float
    vote_average: float = 6.0
    vote_count: int = 0
    release_date: str = ""
    tmdb_id: int = 0
    imdb_id: str = ""
    original_title: str = ""
    original_language: str = "en"
    overview: str = ""
    budget: int = 0
    revenue: int = 0
    production_companies: tuple[str, ...] = ()
    production_countries: tuple[str, ...] = ()
    spoken_languages: tuple[str, ...] = ()
    poster_path: str = ""
    status: str = "Released"
    homepage: str = "null"

    @property
    def year(self) -> int | None:
        if self.release_date[:4].isdigit():
            return int(self.release_date[:4])
        tail = self.movie_id.rsplit("+", 1)[-1]
        return int(tail) if len(tail) == 4 and tail.isdigit() else None


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What the course API tells about a user.

    Examples
    --------
    >>> UserProfile(42, 27, "scientist", "F").gender
    'F'
    """

    user_id: int
    age: int
    occupation: str
    gender: str


@dataclass(frozen=True, slots=True)
class Demographics:
    """Distributions of age, occupation and gender to draw users from.

    The default is measured on the course's 2025 user records
    (``data/course/catalog/users_2025.csv``, 28,589 users); ``from_csv`` measures any file
    of the same shape.

    Parameters
    ----------
    age_percentiles
        Ages at the 0th, 5th, ..., 100th percentiles; ages are drawn by interpolation.
    occupations
        ``(occupation, count)`` pairs.
    female_share
        Share of users with gender ``F``.

    Examples
    --------
    >>> demo = Demographics()
    >>> demo.female_share, demo.occupations[0]
    (0.168, ('college/grad student', 6921))
    """

    age_percentiles: tuple[float, ...] = (
        8, 20, 25, 25, 26, 26, 27, 28, 28, 29, 29, 30, 31, 31, 32, 32, 33, 34, 34, 41, 90,
    )  # fmt: skip
    occupations: tuple[tuple[str, int], ...] = (
        ("college/grad student", 6921),
        ("executive/managerial", 5460),
        ("sales/marketing", 3839),
        ("scientist", 2751),
        ("other or not specified", 1936),
        ("self-employed", 1866),
        ("academic/educator", 1054),
        ("K-12 student", 1044),
        ("homemaker", 797),
        ("artist", 624),
        ("retired", 498),
        ("clerical/admin", 490),
        ("technician/engineer", 402),
        ("programmer", 294),
        ("tradesman/craftsman", 134),
        ("writer", 123),
        ("doctor/health care", 97),
        ("lawyer", 94),
        ("customer service", 92),
        ("unemployed", 67),
        ("farmer", 6),
    )
    female_share: float = 0.168

    def __post_init__(self) -> None:
        if len(self.age_percentiles) != 21:
            raise ValueError("age_percentiles must hold the 0th, 5th, ..., 100th percentiles")
        if not self.occupations:
            raise ValueError("occupations must not be empty")
        if not 0.0 <= self.female_share <= 1.0:
            raise ValueError(f"female_share must be in [0, 1], got {self.female_share}")

    @classmethod
    def from_csv(cls, path: Path) -> Demographics:
        """Measure the distributions of a users CSV (``user_id,age,occupation,gender``)."""
        ages: list[int] = []
        occupations: dict[str, int] = {}
        female = 0
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                ages.append(int(row["age"]))
                occupations[row["occupation"]] = occupations.get(row["occupation"], 0) + 1
                female += row["gender"] == "F"
        if not ages:
            raise ValueError(f"{path} holds no users")
        percentiles = np.percentile(np.array(ages, dtype=np.float64), np.arange(0, 101, 5))
        ranked = sorted(occupations.items(), key=lambda item: (-item[1], item[0]))
        return cls(
            age_percentiles=tuple(float(p) for p in percentiles),
            occupations=tuple(ranked),
            female_share=round(female / len(ages), 3),
        )

    def draw(self, user_id: int, uniforms: Sequence[float]) -> UserProfile:
        """A profile from three uniform numbers in ``[0, 1)``."""
        position = uniforms[0] * 20.0
        low = int(position)
        high = min(low + 1, 20)
        age = self.age_percentiles[low] + (position - low) * (
            self.age_percentiles[high] - self.age_percentiles[low]
        )
        cumulative = _cumulative([count for _, count in self.occupations])
        pick = bisect.bisect_right(cumulative, uniforms[1] * cumulative[-1])
        occupation = self.occupations[min(pick, len(self.occupations) - 1)][0]
        gender = "F" if uniforms[2] < self.female_share else "M"
        return UserProfile(user_id, int(round(age)), occupation, gender)


def _cumulative(weights: Iterable[float]) -> list[float]:
    total = 0.0
    out = []
    for weight in weights:
        total += weight
        out.append(total)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Taste:
    """A user's hidden taste: the weights that score every movie, and what shaped them.

    Examples
    --------
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=200, users=50, seed=1))
    >>> taste = world.taste(7)
    >>> taste.weights.shape == (world.features.shape[1],), len(taste.favorite_genres) >= 1
    (True, True)
    """

    user_id: int
    weights: FloatArray
    favorite_genres: tuple[str, ...]
    popularity_sensitivity: float


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """How to build a world.

    Parameters
    ----------
    catalog
        ``"course"``, ``"movielens"``, ``"synthetic"`` or the path of a CSV (course
        columns with ``movie_id``, or MovieLens' ``movieId,title,genres``). ``course``
        falls back to synthetic when the data folder is absent.
    movies
        Number of movies: a larger catalog keeps its most popular ones, a smaller one
        is padded with synthetic long-tail movies; ``None`` keeps the catalog as it is.
    users
        Size of the population: user ids are ``1..users``.
    factors
        Dimensions of the latent taste space.
    seed
        Everything random in the world derives from it.
    data_dir
        The shared data folder (default: ``default_data_dir()``).
    popularity_exponent
        Exponent of the power law of popularity over ranks (Zipf's ``s``).

    Examples
    --------
    >>> WorldConfig(users=0)
    Traceback (most recent call last):
    ...
    ValueError: users must be positive, got 0
    """

    catalog: str = "course"
    movies: int | None = 27_000
    users: int = 1_000_000
    factors: int = 16
    seed: int = 0
    data_dir: Path | None = None
    popularity_exponent: float = 0.8

    def __post_init__(self) -> None:
        if self.users <= 0:
            raise ValueError(f"users must be positive, got {self.users}")
        if self.movies is not None and self.movies <= 0:
            raise ValueError(f"movies must be positive, got {self.movies}")
        if self.factors <= 0:
            raise ValueError(f"factors must be positive, got {self.factors}")
        if self.popularity_exponent <= 0:
            raise ValueError(
                f"popularity_exponent must be positive, got {self.popularity_exponent}"
            )


def _split_list(text: str) -> tuple[str, ...]:
    if not text or text == "null":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int(text: str, default: int = 0) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return default


def _float(text: str, default: float = 0.0) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def load_course_catalog(path: Path) -> list[Movie]:
    """Read a course catalog CSV: the movie API's fields, lists joined with ``", "``.

    Rows without a ``movie_id`` and repeated ids are skipped; a runtime of 0 is kept as 0
    (the world draws one).
    """
    movies: list[Movie] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            movie_id = (row.get("movie_id") or row.get("id") or "").strip()
            if not movie_id or movie_id in seen:
                continue
            seen.add(movie_id)
            release = row.get("release_date") or ""
            movies.append(
                Movie(
                    movie_id=movie_id,
                    title=row.get("title") or movie_id,
                    genres=tuple(g for g in _split_list(row.get("genres", "")) if g in GENRES),
                    runtime=_int(row.get("runtime", "")),
                    popularity=_float(row.get("popularity", "")),
                    vote_average=_float(row.get("vote_average", ""), 6.0),
                    vote_count=_int(row.get("vote_count", "")),
                    release_date="" if release == "null" else release,
                    tmdb_id=_int(row.get("tmdb_id", "")),
                    imdb_id=row.get("imdb_id") or "",
                    original_title=row.get("original_title") or row.get("title") or "",
                    original_language=row.get("original_language") or "en",
                    overview=row.get("overview") or "",
                    budget=_int(row.get("budget", "")),
                    revenue=_int(row.get("revenue", "")),
                    production_companies=_split_list(row.get("production_companies", "")),
                    production_countries=_split_list(row.get("production_countries", "")),
                    spoken_languages=_split_list(row.get("spoken_languages", "")),
                    poster_path=row.get("poster_path") or "",
                    status=row.get("status") or "Released",
                    homepage=row.get("homepage") or "null",
                )
            )
    return movies


def load_movielens_catalog(movies_csv: Path, ratings_csv: Path | None = None) -> list[Movie]:
    """Read MovieLens' ``movies.csv``; popularity is the number of ratings when given.

    Titles become course-style ids (``course_movie_id``); MovieLens genres map onto the
    course's (``Children`` -> ``Family``, ``Sci-Fi`` -> ``Science Fiction``, ...). Runtimes
    are unknown (0): the world draws them.
    """
    counts: dict[str, int] = {}
    if ratings_csv is not None and ratings_csv.is_file():
        with ratings_csv.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                counts[row["movieId"]] = counts.get(row["movieId"], 0) + 1
    movies: list[Movie] = []
    seen: set[str] = set()
    with movies_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            title, year = split_movielens_title(row["title"])
            movie_id = course_movie_id(title, year)
            if movie_id in seen or not movie_id.strip("+"):
                continue
            seen.add(movie_id)
            genres: list[str] = []
            for raw in row.get("genres", "").split("|"):
                for genre in _MOVIELENS_GENRES.get(raw, ()):
                    if genre not in genres:
                        genres.append(genre)
            count = counts.get(row["movieId"], 0)
            movies.append(
                Movie(
                    movie_id=movie_id,
                    title=title,
                    genres=tuple(genres),
                    runtime=0,
                    popularity=float(count),
                    vote_count=count,
                    release_date=f"{year}-01-01" if year else "",
                    original_title=title,
                )
            )
    return movies


_TITLE_FIRST = (
    "the", "a", "last", "dark", "silent", "broken", "golden", "lost", "red", "hidden",
    "little", "long", "secret", "wild", "blue", "cold", "final", "midnight", "crimson",
    "electric", "empty", "burning", "quiet", "distant", "strange", "bright", "iron",
)  # fmt: skip
_TITLE_SECOND = (
    "harbor", "kingdom", "river", "night", "summer", "garden", "road", "city", "promise",
    "mountain", "station", "letter", "island", "storm", "window", "dream", "house", "war",
    "shadow", "winter", "heart", "frontier", "signal", "mirror", "voyage", "empire", "song",
)  # fmt: skip
_TITLE_THIRD = (
    "", "", "", "of the north", "in paris", "returns", "ii", "of fire", "and the sea",
    "at dawn", "of time", "on the run", "of the lost", "forever", "of gold", "rising",
)  # fmt: skip


def synthetic_catalog(
    count: int, seed: int, exponent: float = 1.0, first_rank: int = 0
) -> list[Movie]:
    """Invented movies with course-style ids, genre mixes like the course catalog's and
    popularity falling as a power law of rank (``first_rank`` continues a longer list).

    Examples
    --------
    >>> movies = synthetic_catalog(3, seed=0)
    >>> [m.popularity > n.popularity for m, n in zip(movies, movies[1:])]
    [True, True]
    >>> movies[0].movie_id == course_movie_id(movies[0].title, movies[0].year)
    True
    """
    rng = np.random.default_rng([seed, 0x5EED, first_rank])
    genre_names = list(_GENRE_COUNTS)
    genre_p = np.array([_GENRE_COUNTS[g] for g in genre_names], dtype=np.float64)
    genre_p /= genre_p.sum()
    years = rng.integers(1930, 2024, count).tolist()
    months = rng.integers(1, 13, count).tolist()
    days = rng.integers(1, 29, count).tolist()
    words = np.stack(
        [
            rng.integers(len(part), size=count)
            for part in (_TITLE_FIRST, _TITLE_SECOND, _TITLE_THIRD)
        ],
        axis=1,
    ).tolist()
    genre_counts = rng.choice([1, 2, 3, 4], count, p=[0.3, 0.38, 0.24, 0.08]).tolist()
    genre_draws = rng.choice(len(genre_names), (count, 4), p=genre_p).tolist()
    averages = np.clip(rng.normal(6.2, 0.9, count), 1.0, 9.5).round(1).tolist()
    extra_votes = rng.integers(0, 20, count).tolist()
    movies: list[Movie] = []
    used: set[str] = set()
    for offset in range(count):
        rank = first_rank + offset
        year = years[offset]
        first, second, third = words[offset]
        title = " ".join(
            w for w in (_TITLE_FIRST[first], _TITLE_SECOND[second], _TITLE_THIRD[third]) if w
        ).title()
        movie_id = course_movie_id(title, year)
        suffix = 2
        while movie_id in used:
            movie_id = course_movie_id(f"{title} {suffix}", year)
            suffix += 1
        used.add(movie_id)
        drawn = {genre_names[i] for i in genre_draws[offset][: genre_counts[offset]]}
        genres = tuple(sorted(drawn, key=GENRES.index))
        popularity = 250.0 / float(rank + 1) ** exponent
        movies.append(
            Movie(
                movie_id=movie_id,
                title=title,
                genres=genres,
                runtime=0,
                popularity=round(popularity, 6),
                vote_average=averages[offset],
                vote_count=int(popularity * 40) + extra_votes[offset],
                release_date=f"{year}-{months[offset]:02d}-{days[offset]:02d}",
                tmdb_id=900_000 + rank,
                imdb_id=f"tt9{rank:07d}",
                original_title=title,
                overview=f"A {' and '.join(g.lower() for g in genres) or 'film'} from {year}.",
                production_countries=("United States of America",),
                spoken_languages=("English",),
            )
        )
    return movies


def _load_catalog(config: WorldConfig) -> tuple[str, list[Movie]]:
    data_dir = config.data_dir or default_data_dir()
    source = config.catalog
    if source == "course":
        path = data_dir / "course" / "catalog" / "movies_2024.csv"
        if path.is_file():
            return "course", load_course_catalog(path)
        log.warning("course catalog %s is absent: using a synthetic catalog", path)
        return "synthetic", []
    if source == "movielens":
        folder = data_dir / "movielens" / "ml-latest-small"
        if (folder / "movies.csv").is_file():
            return "movielens", load_movielens_catalog(
                folder / "movies.csv", folder / "ratings.csv"
            )
        log.warning("MovieLens files in %s are absent: using a synthetic catalog", folder)
        return "synthetic", []
    if source == "synthetic":
        return "synthetic", []
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"catalog {source!r} is neither course, movielens, synthetic nor a file")
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    if "movie_id" in header or "id" in header:
        return str(path), load_course_catalog(path)
    if {"movieId", "title"} <= set(header):
        return str(path), load_movielens_catalog(path, path.with_name("ratings.csv"))
    raise ValueError(f"catalog {path}: expected a movie_id column or movieId,title,genres")


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-x))
    return out


def _standardize(values: FloatArray) -> FloatArray:
    spread = float(values.std())
    out: FloatArray = (values - values.mean()) / (spread if spread > 0 else 1.0)
    return out


# Demographic shifts of the chance that a genre is among a user's favorites.
_AGE_SHIFTS: tuple[tuple[int, int, Mapping[str, float]], ...] = (
    (0, 17, {"Animation": 4, "Family": 4, "Adventure": 2, "Fantasy": 2, "Comedy": 1.5,
             "War": 0.3, "History": 0.3, "Documentary": 0.3}),
    (18, 30, {"Action": 1.5, "Comedy": 1.3, "Horror": 1.5, "Science Fiction": 1.5}),
    (46, 200, {"Drama": 1.5, "History": 2, "War": 2, "Western": 2, "Documentary": 1.5,
               "Horror": 0.5, "Animation": 0.5}),
)  # fmt: skip
_GENDER_SHIFTS: Mapping[str, Mapping[str, float]] = {
    "F": {"Romance": 2, "Drama": 1.3, "Family": 1.3, "War": 0.6, "Western": 0.6},
    "M": {"Action": 1.4, "Science Fiction": 1.3, "War": 1.3, "Romance": 0.7},
}
_OCCUPATION_SHIFTS: Mapping[str, Mapping[str, float]] = {
    "college/grad student": {"Comedy": 1.3, "Animation": 1.5, "Horror": 1.3},
    "K-12 student": {"Comedy": 1.5, "Animation": 2, "Family": 1.5},
    "scientist": {"Science Fiction": 2, "Documentary": 1.5},
    "programmer": {"Science Fiction": 2, "Fantasy": 1.5},
    "technician/engineer": {"Science Fiction": 1.8, "Action": 1.3},
    "artist": {"Drama": 1.4, "Foreign": 2, "Music": 2},
    "writer": {"Drama": 1.4, "Foreign": 2, "Mystery": 1.5},
    "academic/educator": {"Documentary": 2, "History": 1.5},
    "retired": {"Western": 2, "War": 1.5, "History": 1.5},
    "homemaker": {"Romance": 1.5, "Family": 1.5},
}


class World:
    """Movies and users with hidden tastes; pure and deterministic by seed.

    Build one with ``World.build(config)``. ``features`` holds one row per movie (latent
    factors, normalized genre vector, popularity score, quality score, 1); a user's
    ``Taste.weights`` dot a row is the logit of their match.

    Examples
    --------
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=500, users=1000, seed=3))
    >>> len(world.movies), world.source
    (500, 'synthetic')
    >>> m = world.match(5, np.arange(500))
    >>> bool(((m > 0) & (m < 1)).all()), bool(np.allclose(m, world.match(5, np.arange(500))))
    (True, True)
    >>> world.profile(1001) is None, world.profile(5) == world.profile(5)
    (True, True)
    """

    __slots__ = (
        "_cumulative_popularity",
        "_genre_embeddings",
        "_taste_cache",
        "config",
        "features",
        "genre_matrix",
        "index",
        "movies",
        "popular_order",
        "popularity_weights",
        "source",
        "demographics",
    )

    def __init__(
        self,
        config: WorldConfig,
        movies: Sequence[Movie],
        source: str,
        demographics: Demographics | None = None,
    ) -> None:
        if not movies:
            raise ValueError("a world needs at least one movie")
        self.config = config
        self.source = source
        self.demographics = demographics or Demographics()
        self.movies: tuple[Movie, ...] = tuple(movies)
        self.index: dict[str, int] = {m.movie_id: i for i, m in enumerate(self.movies)}
        if len(self.index) != len(self.movies):
            raise ValueError("movie ids must be unique")
        rng = np.random.default_rng([config.seed, 0xC0FFEE])
        k = config.factors
        n = len(self.movies)
        genre_matrix = np.zeros((n, len(GENRES)), dtype=np.float64)
        for row, movie in enumerate(self.movies):
            for genre in movie.genres:
                genre_matrix[row, GENRES.index(genre)] = 1.0
        self.genre_matrix = genre_matrix
        counts = genre_matrix.sum(axis=1, keepdims=True)
        genre_mean = genre_matrix / np.maximum(counts, 1.0)
        # Factors lean on the movie's genres, so the latent space has genre structure.
        self._genre_embeddings = rng.normal(0.0, 1.0, (len(GENRES), k))
        genre_part = genre_mean @ self._genre_embeddings
        norms = np.linalg.norm(genre_part, axis=1, keepdims=True)
        genre_part = np.divide(genre_part, norms, out=np.zeros_like(genre_part), where=norms > 0)
        noise = rng.normal(0.0, 1.0 / math.sqrt(k), (n, k))
        factors = 0.7 * genre_part + 0.7 * noise
        # Popularity is a power law over the catalog's ranks (ties: more votes first).
        order = sorted(
            range(n), key=lambda i: (-self.movies[i].popularity, -self.movies[i].vote_count, i)
        )
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.array(order, dtype=np.int64)] = np.arange(n)
        weights = 1.0 / np.power(ranks + 1.0, config.popularity_exponent)
        self.popularity_weights: FloatArray = weights / weights.sum()
        self.popular_order: IntArray = np.array(order, dtype=np.int64)
        self._cumulative_popularity = np.cumsum(self.popularity_weights).tolist()
        popularity_score = _standardize(np.log(weights))
        votes = np.array([m.vote_count for m in self.movies], dtype=np.float64)
        average = np.array([m.vote_average for m in self.movies], dtype=np.float64)
        quality = _standardize((average * votes + 6.2 * 50.0) / (votes + 50.0))
        self.features: FloatArray = np.hstack(
            [factors, genre_mean, popularity_score[:, None], quality[:, None], np.ones((n, 1))]
        )
        self._taste_cache: OrderedDict[int, Taste] = OrderedDict()

    @classmethod
    def build(cls, config: WorldConfig) -> World:
        """Load or generate the catalog, fill in missing runtimes, pad or trim to size."""
        source, movies = _load_catalog(config)
        if config.movies is not None:
            if len(movies) > config.movies:
                movies = sorted(movies, key=lambda m: (-m.popularity, -m.vote_count))
                movies = movies[: config.movies]
            elif len(movies) < config.movies:
                movies = movies + _padding(movies, config)
        elif not movies:
            movies = synthetic_catalog(27_000, config.seed, config.popularity_exponent)
        rng = np.random.default_rng([config.seed, 0x7157])
        runtimes = np.clip(rng.lognormal(math.log(100.0), 0.22, len(movies)), 60, 220)
        movies = [
            m if m.runtime > 0 else replace(m, runtime=int(runtimes[i]))
            for i, m in enumerate(movies)
        ]
        return cls(config, movies, source)

    # -- users ---------------------------------------------------------------------------

    def has_user(self, user_id: int) -> bool:
        return 1 <= user_id <= self.config.users

    def profile(self, user_id: int) -> UserProfile | None:
        """The user's demographics, or ``None`` outside the population."""
        if not self.has_user(user_id):
            return None
        return self.draw_profile(user_id)

    def draw_profile(self, user_id: int) -> UserProfile:
        """Demographics of any id, inside the population or not (new accounts)."""
        rng = np.random.default_rng([self.config.seed, 0xD3, user_id])
        return self.demographics.draw(user_id, rng.random(3).tolist())

    def taste(self, user_id: int) -> Taste:
        """The user's hidden taste (cached; any positive id has one)."""
        cached = self._taste_cache.get(user_id)
        if cached is not None:
            self._taste_cache.move_to_end(user_id)
            return cached
        taste = self._draw_taste(user_id)
        self._taste_cache[user_id] = taste
        if len(self._taste_cache) > _TASTE_CACHE_SIZE:
            self._taste_cache.popitem(last=False)
        return taste

    def _draw_taste(self, user_id: int) -> Taste:
        profile = self.draw_profile(user_id)
        rng = np.random.default_rng([self.config.seed, 0x7A57E, user_id])
        k = self.config.factors
        chance = np.array([math.sqrt(_GENRE_COUNTS[g]) for g in GENRES], dtype=np.float64)
        for low, high, shifts in _AGE_SHIFTS:
            if low <= profile.age <= high:
                for genre, factor in shifts.items():
                    chance[GENRES.index(genre)] *= factor
        for shifts in (
            _GENDER_SHIFTS.get(profile.gender, {}),
            _OCCUPATION_SHIFTS.get(profile.occupation, {}),
        ):
            for genre, factor in shifts.items():
                chance[GENRES.index(genre)] *= factor
        chance /= chance.sum()
        n_favorites = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        favorites = rng.choice(len(GENRES), n_favorites, replace=False, p=chance)
        affinity = rng.normal(0.0, 0.4, len(GENRES))
        affinity[favorites] += 2.0
        others = np.setdiff1d(np.arange(len(GENRES)), favorites)
        dislikes = rng.choice(others, int(rng.integers(0, 3)), replace=False)
        affinity[dislikes] -= 1.5
        favorite_direction = self._genre_embeddings[favorites].sum(axis=0)
        favorite_direction /= max(float(np.linalg.norm(favorite_direction)), 1e-9)
        factors = 2.0 * (0.6 * favorite_direction + 0.8 * rng.normal(0.0, 1.0 / math.sqrt(k), k))
        popularity_sensitivity = float(rng.normal(0.15, 0.35))
        quality_sensitivity = float(rng.normal(0.15, 0.15))
        bias = float(rng.normal(-2.6, 0.4))
        weights = np.concatenate(
            [factors, affinity, [popularity_sensitivity, quality_sensitivity, bias]]
        )
        return Taste(
            user_id=user_id,
            weights=weights,
            favorite_genres=tuple(GENRES[int(g)] for g in favorites),
            popularity_sensitivity=popularity_sensitivity,
        )

    # -- matches -------------------------------------------------------------------------

    def match(self, user_id: int, movies: Sequence[int] | IntArray) -> FloatArray:
        """Hidden matches of a user with movies (row indices), each in ``[0, 1]``."""
        rows = self.features[np.asarray(movies, dtype=np.int64)]
        return _sigmoid(rows @ self.taste(user_id).weights)

    def match_one(self, user_id: int, movie: int) -> float:
        logit = float(self.features[movie] @ self.taste(user_id).weights)
        return 1.0 / (1.0 + math.exp(-logit))

    def match_all(self, user_id: int) -> FloatArray:
        """Hidden matches of a user with every movie."""
        # einsum, not @: a BLAS call this size wakes OpenBLAS's threads, which then spin
        # for a while; between sparse calls that spin costs most of the simulator's CPU.
        logits: FloatArray = np.einsum("ij,j->i", self.features, self.taste(user_id).weights)
        return _sigmoid(logits)

    def standing(self, user_id: int, movie: int) -> float:
        """Share of the catalog that the user matches less than ``movie``, in ``[0, 1]``.

        Users judge a movie against what else they could watch: whether they stay to the
        end and how they rate it depends on this standing, not on the absolute match (which
        a user's bias shifts for every movie alike).
        """
        logits = np.einsum("ij,j->i", self.features, self.taste(user_id).weights)
        below = int(np.count_nonzero(logits < logits[movie]))
        return below / max(len(self.movies) - 1, 1)

    def best_movies(
        self,
        user_id: int,
        count: int,
        exclude: Iterable[int] = (),
        matches: FloatArray | None = None,
    ) -> IntArray:
        """The ``count`` best-matching movies for the user, best first, skipping ``exclude``."""
        scores = (self.match_all(user_id) if matches is None else matches).copy()
        excluded = np.fromiter(exclude, dtype=np.int64)
        scores[excluded] = -1.0
        count = min(count, len(scores) - len(excluded))
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        top = np.argpartition(-scores, count - 1)[:count]
        return top[np.argsort(-scores[top], kind="stable")].astype(np.int64)

    def popular_movies(self, count: int, exclude: Iterable[int] = ()) -> IntArray:
        """The ``count`` most popular movies, skipping ``exclude``."""
        excluded = set(exclude)
        chosen = []
        for movie in self.popular_order:
            if int(movie) not in excluded:
                chosen.append(int(movie))
                if len(chosen) == count:
                    break
        return np.array(chosen, dtype=np.int64)

    def sample_popular(self, uniform: float) -> int:
        """A movie drawn by popularity weight, from a uniform number in ``[0, 1)``."""
        pick = bisect.bisect_right(self._cumulative_popularity, uniform)
        return min(pick, len(self.movies) - 1)

    def movie(self, movie_id: str) -> Movie | None:
        row = self.index.get(movie_id)
        return None if row is None else self.movies[row]

    def write_catalog(self, path: Path) -> int:
        """Write the catalog as a course-style CSV (what ``load_course_catalog`` reads)."""
        columns = (
            "movie_id", "tmdb_id", "imdb_id", "title", "original_title", "adult", "budget",
            "genres", "homepage", "original_language", "overview", "popularity",
            "poster_path", "production_companies", "production_countries", "release_date",
            "revenue", "runtime", "spoken_languages", "status", "vote_average", "vote_count",
        )  # fmt: skip
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for m in self.movies:
                writer.writerow(
                    [
                        m.movie_id, m.tmdb_id, m.imdb_id, m.title, m.original_title, "False",
                        m.budget, ", ".join(m.genres), m.homepage, m.original_language,
                        m.overview, m.popularity, m.poster_path,
                        ", ".join(m.production_companies), ", ".join(m.production_countries),
                        m.release_date or "null", m.revenue, m.runtime,
                        ", ".join(m.spoken_languages), m.status, m.vote_average, m.vote_count,
                    ]
                )  # fmt: skip
        return len(self.movies)


_TASTE_CACHE_SIZE = 50_000


def _padding(movies: list[Movie], config: WorldConfig) -> list[Movie]:
    """Synthetic long-tail movies that continue the catalog's popularity below its least
    popular movie."""
    assert config.movies is not None
    wanted = config.movies - len(movies)
    extra = synthetic_catalog(
        wanted, config.seed, config.popularity_exponent, first_rank=len(movies)
    )
    taken = {m.movie_id for m in movies}
    floor = min((m.popularity for m in movies), default=250.0)
    scale = (floor * 0.999) / max(extra[0].popularity, 1e-12) if movies else 1.0
    padded = []
    # A catalog whose tail has popularity 0 keeps its order by votes: the padding has none.
    votes = 1.0 if scale > 0 else 0.0
    for m in extra:
        movie_id = m.movie_id
        suffix = 2
        while movie_id in taken:
            movie_id = course_movie_id(f"{m.title} {suffix}", m.year)
            suffix += 1
        taken.add(movie_id)
        padded.append(
            replace(
                m,
                movie_id=movie_id,
                popularity=round(m.popularity * scale, 6),
                vote_count=int(m.vote_count * votes),
            )
        )
    return padded
