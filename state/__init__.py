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
from state.ingest_store import IngestStore
from state.keys import KeySchema

__all__ = [
    "ApplyResult",
    "FeatureStore",
    "FeatureUpdate",
    "IngestStore",
    "KeySchema",
    "RatingUpdate",
    "RejectUpdate",
    "RequestUpdate",
    "WatchUpdate",
]
