"""Everything Redis: key schema, async stores, registry, snapshots, provenance."""

from state.ingest_store import IngestStore
from state.keys import KeySchema

__all__ = ["IngestStore", "KeySchema"]
