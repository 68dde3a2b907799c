"""The course's movielog line formats as regular expressions (for full matches)."""

from __future__ import annotations

import re

__all__ = ["RATE", "RECOMMEND_FAILED", "RECOMMEND_OK", "TIME_MS", "TIME_S", "WATCH", "match_any"]

TIME_S = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
TIME_MS = TIME_S + r"\.\d{3}"
_MOVIE = r"[a-z0-9_.*+-]+"
_SERVER = r"[A-Za-z0-9._-]+:\d+"

WATCH = re.compile(rf"({TIME_S}),([1-9]\d*),GET /data/m/({_MOVIE})/(0|[1-9]\d*)\.mpg")
RATE = re.compile(rf"({TIME_S}),([1-9]\d*),GET /rate/({_MOVIE})=([1-5])")
RECOMMEND_OK = re.compile(
    rf"({TIME_MS}),([1-9]\d*),recommendation request ({_SERVER}), status 200, "
    rf"result: ((?:{_MOVIE}, )*{_MOVIE}), (0|[1-9]\d*) ms"
)
RECOMMEND_FAILED = re.compile(
    rf"({TIME_MS}),([1-9]\d*),recommendation request ({_SERVER}), status (\d{{1,3}}), "
    r"result: (.*), (0|[1-9]\d*) ms"
)


def match_any(text: str) -> tuple[str, re.Match[str]] | None:
    """The kind of a well-formed line and its match, or ``None``."""
    for kind, pattern in (("watch", WATCH), ("rate", RATE), ("recommend", RECOMMEND_OK)):
        found = pattern.fullmatch(text)
        if found is not None:
            return kind, found
    return None
