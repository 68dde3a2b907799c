"""User segments (gender x age band): the keys of the per-segment popularity lists.

The ingest worker keeps the popularity of a segment as the popularity of a
pseudo-genre named by :func:`segment_genre`, and the server reads it back under the
same name to answer unknown users whose profile the course user API gives. Both
sides take the names from here, so that they always agree.
"""

from __future__ import annotations

__all__ = ["AGE_BANDS", "GENDERS", "SEGMENTS", "age_band", "segment_genre", "segment_of"]

#: Age bands of the segments: (label, first age, last age).
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-17", 0, 17),
    ("18-24", 18, 24),
    ("25-34", 25, 34),
    ("35-44", 35, 44),
    ("45-54", 45, 54),
    ("55+", 55, 200),
)
#: Genders of the course user API.
GENDERS: tuple[str, ...] = ("F", "M")
#: Every segment, ``"<gender>:<age band>"``.
SEGMENTS: tuple[str, ...] = tuple(f"{g}:{band}" for g in GENDERS for band, _, _ in AGE_BANDS)


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
    if gender not in GENDERS or band is None:
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
