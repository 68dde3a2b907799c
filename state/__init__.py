"""Everything Redis: key schema, async stores, registry, snapshots, provenance."""

from state.features import (
    ApplyResult,
    FeatureStore,
    FeatureUpdate,
    RatingUpdate,
    RejectUpdate,
    RequestUpdate,
    WatchUpdate,
)
from state.keys import KeySchema

__all__ = [
    "ApplyResult",
    "FeatureStore",
    "FeatureUpdate",
    "KeySchema",
    "RatingUpdate",
    "RejectUpdate",
    "RequestUpdate",
    "WatchUpdate",
]
