"""The Redis key schema: every key reelfeed writes is spelled here, and only here.

Layout (``p`` is the stack's prefix, ``rf`` by default)::

    p:ingest:wm                  hash "<topic>:<partition>" -> last source offset applied
    p:ingest:count               hash event kind -> events applied
    p:ingest:rejected            hash reject reason -> lines refused
    p:u:<user>:watched           hash movie -> furthest minute reached
    p:u:<user>:rated             hash movie -> rating (1-5), the latest one
    p:m:<movie>:stats            hash watchers / ratings / rating_sum
    p:pop                        zset movie -> forward-decayed popularity
    p:pop:g:<genre>              zset, the same restricted to one genre
    p:pop:landmark               the time (s) at which a popularity weight is 1
    p:pop:keys                   set of the popularity zsets (rescaled together)

    p:v:<version>:u:<user>       float32 user vector of a model version
    p:v:<version>:items          hash movie -> float32 [bias, factors...]
    p:v:<version>:positions      hash of consumed positions (see ModelStore)
    p:v:<version>:matrix:rev     revision number of the published item matrix
    p:v:<version>:matrix:<rev>   the item matrix as one blob (ItemMatrix.to_bytes)
    p:v:<version>:checkpoint     the learner's whole state + the positions it covers
    p:v:<version>:cuts           list of batch cuts, oldest first (JSON, see ModelStore)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySchema"]


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of Redis keys under one prefix (one stack, or one test).

    Examples
    --------
    >>> keys = KeySchema("rf")
    >>> keys.watched(42), keys.popularity(), keys.genre_popularity("Drama")
    ('rf:u:42:watched', 'rf:pop', 'rf:pop:g:Drama')
    """

    prefix: str = "rf"

    def ingest_watermarks(self) -> str:
        return f"{self.prefix}:ingest:wm"

    def ingest_counts(self) -> str:
        return f"{self.prefix}:ingest:count"

    def ingest_rejected(self) -> str:
        return f"{self.prefix}:ingest:rejected"

    def watched(self, user_id: int) -> str:
        return f"{self.prefix}:u:{user_id}:watched"

    def rated(self, user_id: int) -> str:
        return f"{self.prefix}:u:{user_id}:rated"

    def movie_stats(self, movie_id: str) -> str:
        return f"{self.prefix}:m:{movie_id}:stats"

    def popularity(self) -> str:
        return f"{self.prefix}:pop"

    def genre_popularity(self, genre: str) -> str:
        return f"{self.prefix}:pop:g:{genre}"

    def popularity_landmark(self) -> str:
        return f"{self.prefix}:pop:landmark"

    def popularity_keys(self) -> str:
        return f"{self.prefix}:pop:keys"

    def version_prefix(self, version: str) -> str:
        return f"{self.prefix}:v:{version}"

    def user_vector(self, version: str, user_id: int) -> str:
        return f"{self.prefix}:v:{version}:u:{user_id}"

    def item_rows(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:items"

    def model_positions(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:positions"

    def matrix_revision(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:matrix:rev"

    def matrix(self, version: str, revision: int) -> str:
        return f"{self.prefix}:v:{version}:matrix:{revision}"

    def checkpoint(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:checkpoint"

    def batch_cuts(self, version: str) -> str:
        """List of the learner's batch cuts (where each micro-batch ended), oldest first."""
        return f"{self.prefix}:v:{version}:cuts"

    def routing(self) -> str:
        """Hash of the serving routing: live, canary, share, salt, revision (state.routing)."""
        return f"{self.prefix}:routing"

    def versions(self) -> str:
        """Hash of the model-version registry: version -> JSON record."""
        return f"{self.prefix}:versions"

    def learner_requests(self, version: str) -> str:
        """List of requests to a version's learner (snapshot, reload), oldest at the right."""
        return f"{self.prefix}:v:{version}:requests"

    def snapshots(self) -> str:
        """Hash of snapshot metadata: snapshot id -> JSON record."""
        return f"{self.prefix}:snapshots"

    def snapshot(self, snapshot_id: str) -> str:
        """A snapshot's learner state (a checkpoint blob)."""
        return f"{self.prefix}:snapshot:{snapshot_id}"
