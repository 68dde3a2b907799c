"""Popularity lists held in memory: the answer when the model cannot give one.

The global list is the ingest worker's decayed popularity (``FeatureStore.popular``).
Unknown users whose profile the course user API gives get the list of their segment
(gender and age band) when there is one. Segment lists are read the same way, as the
popularity of a pseudo-genre named by :func:`segment_genre`: the ingest worker keeps
per-segment popularity by adding that name to a watch's genres when it knows the
viewer's profile, and the popularity script then decays and rescales segment lists
together with all the others. Until it does, segment lists are empty and unknown
users get the global list.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = [
    "AGE_BANDS",
    "SEGMENTS",
    "PopularList",
    "age_band",
    "segment_genre",
    "segment_of",
]

#: Age bands of the segments: (label, first age, last age).
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-17", 0, 17),
    ("18-24", 18, 24),
    ("25-34", 25, 34),
    ("35-44", 35, 44),
    ("45-54", 45, 54),
    ("55+", 55, 200),
)
_GENDERS = ("F", "M")
#: Every segment, ``"<gender>:<age band>"``.
SEGMENTS: tuple[str, ...] = tuple(f"{g}:{band}" for g in _GENDERS for band, _, _ in AGE_BANDS)


def age_band(age: int) -> str | None:
    """The band of an age, ``None`` for an impossible one.

    Examples
    --------
    >>> age_band(17), age_band(18), age_band(61), age_band(-1)
    ('0-17', '18-24', '55+', None)
    """
    for label, first, last in AGE_BANDS:
        if first <= age <= last:
            return label
    return None


def segment_of(gender: str, age: int) -> str | None:
    """The segment of a profile, ``None`` when it fits none.

    Examples
    --------
    >>> segment_of("F", 30), segment_of("m", 70), segment_of("X", 30)
    ('F:25-34', 'M:55+', None)
    """
    gender = gender.strip().upper()[:1]
    band = age_band(age)
    if gender not in _GENDERS or band is None:
        return None
    return f"{gender}:{band}"


def segment_genre(segment: str) -> str:
    """The pseudo-genre under which the ingest popularity of a segment is kept.

    Examples
    --------
    >>> segment_genre("F:25-34")
    'segment:F:25-34'
    """
    return f"segment:{segment}"


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
