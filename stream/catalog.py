"""Movie metadata the ingest app uses when it is known: runtimes and genres.

The course's movie API responses, flattened into CSV by teams (see
``shared/data/course/catalog/movies_2024.csv``), carry ``movie_id`` (or ``id``),
``runtime`` in minutes and ``genres`` joined by ", ".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Catalog", "load_catalog_csv"]


@dataclass(frozen=True, slots=True)
class Catalog:
    """Known movies with their runtime (minutes, when known) and genres.

    Examples
    --------
    >>> catalog = Catalog.from_rows([{"movie_id": "heat+1995", "runtime": "170",
    ...                               "genres": "Action, Crime"}])
    >>> "heat+1995" in catalog, catalog.runtime("heat+1995"), catalog.genres("heat+1995")
    (True, 170, ('Action', 'Crime'))
    >>> catalog.runtime("unknown+2001") is None
    True
    """

    runtimes: Mapping[str, int] = field(default_factory=dict)
    genre_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __contains__(self, movie_id: object) -> bool:
        return movie_id in self.genre_map

    def __len__(self) -> int:
        return len(self.genre_map)

    def runtime(self, movie_id: str) -> int | None:
        return self.runtimes.get(movie_id)

    def genres(self, movie_id: str) -> tuple[str, ...]:
        return self.genre_map.get(movie_id, ())

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> Catalog:
        runtimes: dict[str, int] = {}
        genre_map: dict[str, tuple[str, ...]] = {}
        for row in rows:
            movie_id = (row.get("movie_id") or row.get("id") or "").strip()
            if not movie_id:
                continue
            genres = row.get("genres") or ""
            genre_map[movie_id] = tuple(g.strip() for g in genres.split(",") if g.strip())
            runtime = (row.get("runtime") or "").strip()
            # The API writes unknown runtimes as 0 or an empty string.
            if runtime.isdigit() and int(runtime) > 0:
                runtimes[movie_id] = int(runtime)
        return cls(runtimes, genre_map)


def load_catalog_csv(path: Path) -> Catalog:
    """Read a catalog CSV with a ``movie_id`` (or ``id``) column."""
    with path.open(newline="", encoding="utf-8") as handle:
        return Catalog.from_rows(csv.DictReader(handle))
