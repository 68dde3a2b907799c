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
from state.model_store import ItemMatrix, ModelStore, UserContext

__all__ = [
    "ApplyResult",
    "FeatureStore",
    "FeatureUpdate",
    "ItemMatrix",
    "KeySchema",
    "ModelStore",
    "RatingUpdate",
    "RejectUpdate",
    "RequestUpdate",
    "UserContext",
    "WatchUpdate",
]
