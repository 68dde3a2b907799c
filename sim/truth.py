"""Ground truth: how good each served list was for its user, by the users' hidden tastes.

For every list the site receives, ``TruthTracker`` computes what no real site can know:

- ``served``: the mean hidden match of the list's slots (an unknown id, an already
  watched movie and an empty slot count 0: none of them is something to watch);
- ``best``: the best possible mean match of a list of the same size for that user
  (unwatched movies only);
- ``popularity``: the mean match of the most-popular list (unwatched movies only), the
  baseline every recommender should beat;
- ``normalized``: ``(served - popularity) / (best - popularity)``: 0 is as good as the
  popularity list, 1 is perfect.

It also keeps the hidden match of what users then watched, by where they found it. The
aggregates are kept per model version (from a response header, when the server sends
one), so two versions served side by side can be compared online.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from sim.world import World

__all__ = ["ListQuality", "QualityTotals", "TruthTracker", "WatchTotals"]


@dataclass(frozen=True, slots=True)
class ListQuality:
    """The ground-truth quality of one served list.

    Examples
    --------
    >>> q = ListQuality(served=0.6, best=0.9, popularity=0.3, unknown=0, watched=1, size=20)
    >>> round(q.normalized, 3)
    0.5
    """

    served: float
    best: float
    popularity: float
    unknown: int
    watched: int
    size: int

    @property
    def normalized(self) -> float:
        spread = self.best - self.popularity
        if spread <= 1e-9:
            return 0.0
        return (self.served - self.popularity) / spread


@dataclass(slots=True)
class QualityTotals:
    """Running sums of list qualities (one per model version).

    Examples
    --------
    >>> totals = QualityTotals()
    >>> totals.add(ListQuality(0.5, 0.9, 0.3, unknown=0, watched=0, size=20))
    >>> totals.means()["served_match"], totals.means()["lists"]
    (0.5, 1)
    """

    lists: int = 0
    served: float = 0.0
    best: float = 0.0
    popularity: float = 0.0
    normalized: float = 0.0
    unknown_ids: int = 0
    watched_ids: int = 0
    served_ids: int = 0

    def add(self, quality: ListQuality) -> None:
        self.lists += 1
        self.served += quality.served
        self.best += quality.best
        self.popularity += quality.popularity
        self.normalized += quality.normalized
        self.unknown_ids += quality.unknown
        self.watched_ids += quality.watched
        self.served_ids += quality.size

    def means(self) -> dict[str, float | int]:
        n = max(self.lists, 1)
        return {
            "lists": self.lists,
            "served_match": round(self.served / n, 4),
            "best_match": round(self.best / n, 4),
            "popularity_match": round(self.popularity / n, 4),
            "normalized": round(self.normalized / n, 4),
            "unknown_ids": self.unknown_ids,
            "watched_ids": self.watched_ids,
            "mean_list_size": round(self.served_ids / n, 2),
        }


@dataclass(slots=True)
class WatchTotals:
    """Running sums of the hidden match of watched movies (one per source).

    Examples
    --------
    >>> WatchTotals(watches=2, match=1.5).means()
    {'watches': 2, 'match': 0.75}
    """

    watches: int = 0
    match: float = 0.0

    def means(self) -> dict[str, float | int]:
        return {"watches": self.watches, "match": round(self.match / max(self.watches, 1), 4)}


class TruthTracker:
    """Scores served lists and watches against the hidden tastes of a ``World``.

    Parameters
    ----------
    world
        The world whose hidden matches are the truth.
    list_size
        Slots of a list (the course asks for 20).

    Examples
    --------
    >>> from sim.world import WorldConfig
    >>> world = World.build(WorldConfig(catalog="synthetic", movies=300, users=10, seed=2))
    >>> truth = TruthTracker(world)
    >>> best = [world.movies[i].movie_id for i in world.best_movies(3, 20)]
    >>> round(truth.observe_list(3, best, watched=(), version="v1").normalized, 6)
    1.0
    >>> truth.observe_list(3, ["no+such+movie"], watched=(), version="v1").served
    0.0
    >>> truth.report()["by_version"]["v1"]["lists"]
    2
    """

    __slots__ = ("_versions", "_watches", "list_size", "world")

    def __init__(self, world: World, list_size: int = 20) -> None:
        if list_size <= 0:
            raise ValueError(f"list_size must be positive, got {list_size}")
        self.world = world
        self.list_size = list_size
        self._versions: dict[str, QualityTotals] = {}
        self._watches: dict[str, WatchTotals] = {}

    def assess(self, user_id: int, ids: Sequence[str], watched: Collection[int]) -> ListQuality:
        """The quality of ``ids`` served to ``user_id``, who has watched ``watched``."""
        matches = self.world.match_all(user_id)
        slots = list(ids[: self.list_size])
        rows = [self.world.index.get(movie_id) for movie_id in slots]
        unknown = sum(row is None for row in rows)
        already = 0
        useful = 0.0
        seen: set[int] = set()
        for row in rows:
            if row is None or row in seen:
                continue
            seen.add(row)
            if row in watched:
                already += 1
                continue
            useful += float(matches[row])
        best = self.world.best_movies(user_id, self.list_size, watched, matches=matches)
        popular = self.world.popular_movies(self.list_size, watched)
        return ListQuality(
            served=useful / self.list_size,
            best=float(matches[best].sum()) / self.list_size,
            popularity=float(matches[popular].sum()) / self.list_size,
            unknown=unknown,
            watched=already,
            size=len(slots),
        )

    def observe_list(
        self, user_id: int, ids: Sequence[str], watched: Collection[int], version: str
    ) -> ListQuality:
        """Assess a served list and add it to its version's totals."""
        quality = self.assess(user_id, ids, watched)
        self._versions.setdefault(version, QualityTotals()).add(quality)
        return quality

    def observe_watch(self, user_id: int, movie: int, source: str) -> float:
        """Record that ``user_id`` started ``movie`` (found via ``source``); its match."""
        match = self.world.match_one(user_id, movie)
        totals = self._watches.setdefault(source, WatchTotals())
        totals.watches += 1
        totals.match += match
        return match

    @property
    def versions(self) -> Mapping[str, QualityTotals]:
        return self._versions

    @property
    def watches(self) -> Mapping[str, WatchTotals]:
        return self._watches

    def report(self) -> dict[str, object]:
        """Everything as JSON-ready values: overall, per version, watches per source."""
        overall = QualityTotals()
        for totals in self._versions.values():
            overall.lists += totals.lists
            overall.served += totals.served
            overall.best += totals.best
            overall.popularity += totals.popularity
            overall.normalized += totals.normalized
            overall.unknown_ids += totals.unknown_ids
            overall.watched_ids += totals.watched_ids
            overall.served_ids += totals.served_ids
        return {
            "list_size": self.list_size,
            "overall": overall.means(),
            "by_version": {v: t.means() for v, t in sorted(self._versions.items())},
            "watched": {s: t.means() for s, t in sorted(self._watches.items())},
        }
