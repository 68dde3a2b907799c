"""Popularity lists held in memory: the answer when the model cannot give one.

The global list is the ingest worker's decayed popularity (``FeatureStore.popular``).
Unknown users whose profile the course user API gives get the list of their segment
(gender and age band) when there is one. Segment lists are read the same way, as the
popularity of a pseudo-genre named by :func:`segment_genre`: the ingest worker keeps
per-segment popularity by adding that name to a watch's genres when it knows the
viewer's profile, and the popularity script then decays and rescales segment lists
together with all the others. While they are empty (no ingest worker with the user
API), unknown users get the global list. The segment names come from
:mod:`state.segments`, shared with the ingest worker, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from state.segments import AGE_BANDS, SEGMENTS, age_band, segment_genre, segment_of

__all__ = [
    "AGE_BANDS",
    "SEGMENTS",
    "PopularList",
    "age_band",
    "segment_genre",
    "segment_of",
]


@dataclass(frozen=True, slots=True, eq=False)
class PopularList:
    """Movie ids by decreasing popularity, with the default answer pre-joined.

    Examples
    --------
    >>> popular = PopularList(("a", "b", "c", "d"), list_length=2)
    >>> popular.line, popular.top(2, frozenset({"a"})), popular.top(3, (), ("b",))
    (b'a,b', ['b', 'c'], ['a', 'c', 'd'])
    >>> PopularList.empty(20).line
    b''
    """

    movie_ids: tuple[str, ...]
    list_length: int = 20
    line: bytes = field(init=False)
    head: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        head = self.movie_ids[: self.list_length]
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "line", ",".join(head).encode())

    @classmethod
    def empty(cls, list_length: int) -> PopularList:
        return cls((), list_length)

    @classmethod
    def of(cls, movie_ids: Iterable[str], list_length: int) -> PopularList:
        return cls(tuple(movie_ids), list_length)

    def __len__(self) -> int:
        return len(self.movie_ids)

    def top(
        self, k: int, watched: Collection[str] = (), already: Collection[str] = ()
    ) -> list[str]:
        """The ``k`` most popular movies that are neither watched nor already listed."""
        found: list[str] = []
        if k <= 0:
            return found
        for movie in self.movie_ids:
            if movie in watched or movie in already:
                continue
            found.append(movie)
            if len(found) == k:
                break
        return found
