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
from state.model_store import (
    Checkpoint,
    ItemMatrix,
    ModelStore,
    UserContext,
    user_contexts_from_replies,
    user_contexts_request,
    user_row,
)
from state.pipe import RedisPipe
from state.registry import VersionRecord, VersionRegistry
from state.routing import Routing, RoutingConflict, RoutingStore, canary_bucket, valid_version
from state.segments import SEGMENTS, segment_genre, segment_of
from state.snapshots import LearnerRequest, SnapshotRecord, SnapshotStore

__all__ = [
    "ApplyResult",
    "Checkpoint",
    "FeatureStore",
    "FeatureUpdate",
    "ItemMatrix",
    "KeySchema",
    "LearnerRequest",
    "ModelStore",
    "RatingUpdate",
    "RedisPipe",
    "RejectUpdate",
    "RequestUpdate",
    "Routing",
    "RoutingConflict",
    "RoutingStore",
    "SEGMENTS",
    "SnapshotRecord",
    "SnapshotStore",
    "UserContext",
    "VersionRecord",
    "VersionRegistry",
    "WatchUpdate",
    "canary_bucket",
    "segment_genre",
    "segment_of",
    "user_contexts_from_replies",
    "user_contexts_request",
    "user_row",
    "valid_version",
]
