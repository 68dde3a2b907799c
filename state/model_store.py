"""Factors of a model version in Redis: written by its learner, read by the server.

The learner commits each micro-batch in one MULTI/EXEC transaction: the user rows
and item rows it changed, together with the positions it consumed up to. Its full
state is checkpointed now and then as one blob with the positions it covers; after a
crash it loads the checkpoint and replays from there, so no event is lost or applied
twice.

A user row is float32 ``[n_events, *factors]``: the event count drives the
popularity blend of the ranking. An item row is float32 ``[bias, *factors]``.

Each committed micro-batch also appends its *cut* to a capped list in the same
transaction: the history (line of batches) it belongs to, its number in that history
and the positions it ended at. A replay that follows the recorded cuts learns the same
batches, hence the same factors bit for bit (``stream.learner.BatchCutter``).

For serving, the learner also publishes the whole item matrix as one blob under a
new revision every few seconds; the server polls the revision number (one GET) and
loads the blob when it changed.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from state._replies import int_hash
from state._replies import text as _text
from state.keys import KeySchema
from state.pipe import pack_commands

__all__ = [
    "BatchCut",
    "Checkpoint",
    "ItemMatrix",
    "ModelStore",
    "UserContext",
    "user_contexts_from_replies",
    "user_contexts_request",
    "user_row",
]

_MAGIC = b"RFIM1"
_HEADER = struct.Struct("<5sI")
#: Published matrices kept besides the newest, for servers still loading one.
_KEEP_REVISIONS = 2
#: Batch cuts kept by default: at ten batches a second, more than five hours.
DEFAULT_CUTS_KEPT = 200_000
#: Cuts read from Redis per round trip.
_CUTS_PAGE = 5_000


@dataclass(frozen=True, slots=True, eq=False)
class ItemMatrix:
    """Item factors and biases with their movie ids, as the server scores with them.

    Examples
    --------
    >>> m = ItemMatrix(("a", "b"), np.ones((2, 3), np.float32), np.zeros(2, np.float32), 7)
    >>> ItemMatrix.from_bytes(m.to_bytes()).movie_ids, ItemMatrix.from_bytes(m.to_bytes()).revision
    (('a', 'b'), 7)
    """

    movie_ids: tuple[str, ...]
    factors: np.ndarray
    biases: np.ndarray
    revision: int = 0
    #: The learner's popularity of each movie (for the blend and cold start), if any.
    popularity: np.ndarray | None = None
    #: What the learner had consumed when it published this revision (provenance).
    positions: dict[str, int] | None = None
    #: Parameters of the ranking that go with these factors (e.g. the popularity blend).
    ranking: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        count = len(self.movie_ids)
        if self.factors.ndim != 2 or self.factors.shape[0] != count:
            raise ValueError(f"factors must be ({count}, k), got {self.factors.shape}")
        if self.biases.shape != (count,):
            raise ValueError(f"biases must be ({count},), got {self.biases.shape}")
        if self.popularity is not None and self.popularity.shape != (count,):
            raise ValueError(f"popularity must be ({count},), got {self.popularity.shape}")

    @property
    def dimensions(self) -> int:
        return int(self.factors.shape[1])

    def to_bytes(self) -> bytes:
        header = orjson.dumps(
            {
                "ids": self.movie_ids,
                "k": self.dimensions,
                "revision": self.revision,
                "popularity": self.popularity is not None,
                "positions": self.positions,
                "ranking": self.ranking,
            }
        )
        parts = [
            _HEADER.pack(_MAGIC, len(header)),
            header,
            np.ascontiguousarray(self.biases, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.factors, dtype="<f4").tobytes(),
        ]
        if self.popularity is not None:
            parts.append(np.ascontiguousarray(self.popularity, dtype="<f4").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ItemMatrix:
        magic, header_length = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise ValueError("not an item matrix blob")
        start = _HEADER.size
        header = orjson.loads(blob[start : start + header_length])
        ids = tuple(header["ids"])
        k = int(header["k"])
        body = start + header_length
        biases = np.frombuffer(blob, dtype="<f4", count=len(ids), offset=body)
        factors = np.frombuffer(
            blob, dtype="<f4", count=len(ids) * k, offset=body + 4 * len(ids)
        ).reshape(len(ids), k)
        popularity = None
        if header.get("popularity"):
            offset = body + 4 * len(ids) * (k + 1)
            popularity = np.frombuffer(blob, dtype="<f4", count=len(ids), offset=offset)
        return cls(
            ids,
            factors,
            biases,
            int(header["revision"]),
            popularity,
            header.get("positions"),
            header.get("ranking"),
        )


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the server needs about one user, read in one round trip."""

    vector: np.ndarray | None
    watched: frozenset[str]
    #: Events the model learned from this user (0 when it knows no vector).
    n_events: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A learner's whole state at a batch boundary, and the positions it covers."""

    state: bytes
    positions: dict[str, int]
    created: float


@dataclass(frozen=True, slots=True)
class BatchCut:
    """Where one of a learner's micro-batches ended.

    ``history`` names a line of batches (a learner's state carries the name of the line
    it is on), ``batch`` is the batch's number on it (0: where the line starts, before
    any batch) and ``positions`` are the learner's positions after it.

    Examples
    --------
    >>> cut = BatchCut("h1", 3, {"events:0": 41, "events:1": 7})
    >>> BatchCut.from_bytes(cut.to_bytes()) == cut
    True
    """

    history: str
    batch: int
    positions: dict[str, int]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"h": self.history, "n": self.batch, "p": self.positions})

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> BatchCut:
        entry = orjson.loads(raw)
        return cls(str(entry["h"]), int(entry["n"]), {k: int(v) for k, v in entry["p"].items()})


def _vector(raw: bytes | str | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(_bytes(raw), dtype="<f4")


def user_row(n_events: int, factors: np.ndarray) -> np.ndarray:
    """The stored form of a user: float32 ``[n_events, *factors]``."""
    row = np.empty(factors.shape[0] + 1, dtype="<f4")
    row[0] = n_events
    row[1:] = factors
    return row


def _bytes(raw: bytes | str) -> bytes:
    # This store's client never decodes responses; a str means a misconfigured client.
    if not isinstance(raw, bytes):
        raise TypeError("ModelStore needs a Redis client with decode_responses=False")
    return raw


class ModelStore:
    """Redis state of one model version.

    Parameters
    ----------
    client
        An async Redis client (not owned).
    keys
        The key schema of the stack.
    version
        The model version's name: its namespace.
    cuts_kept
        How many batch cuts the version keeps (the oldest go first).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        version: str,
        cuts_kept: int = DEFAULT_CUTS_KEPT,
    ) -> None:
        if cuts_kept < 1:
            raise ValueError(f"cuts_kept must be >= 1, got {cuts_kept}")
        self._client = client
        self._keys = keys
        self.version = version
        self.cuts_kept = cuts_kept

    async def commit(
        self,
        users: Mapping[int, np.ndarray],
        items: Mapping[str, np.ndarray],
        positions: Mapping[str, int],
        cut: BatchCut | None = None,
    ) -> None:
        """Write changed user vectors, item rows, positions and the batch's cut, all or
        nothing: a batch's cut is recorded exactly when its results are.

        Item rows are ``[bias, *factors]``.
        """
        keys, version = self._keys, self.version
        async with self._client.pipeline(transaction=True) as pipe:
            if cut is not None:
                pipe.rpush(keys.batch_cuts(version), cut.to_bytes())
                pipe.ltrim(keys.batch_cuts(version), -self.cuts_kept, -1)
            if users:
                pipe.mset(
                    {
                        keys.user_vector(version, user): np.asarray(vector, "<f4").tobytes()
                        for user, vector in users.items()
                    }
                )
            if items:
                pipe.hset(
                    keys.item_rows(version),
                    mapping={
                        movie: np.asarray(row, "<f4").tobytes() for movie, row in items.items()
                    },
                )
            if positions:
                pipe.hset(
                    keys.model_positions(version),
                    mapping={name: str(offset) for name, offset in positions.items()},
                )
            await pipe.execute()

    async def record_cut(self, cut: BatchCut) -> None:
        """Append a cut with no batch results (the start of a history)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(self._keys.batch_cuts(self.version), cut.to_bytes())
            pipe.ltrim(self._keys.batch_cuts(self.version), -self.cuts_kept, -1)
            await pipe.execute()

    async def batch_cuts(self, history: str, since: int = 0) -> list[BatchCut]:
        """The recorded cuts of ``history`` numbered ``since`` and later, in order.

        Read page by page; only the matching cuts are kept in memory. A commit repeated
        after a lost reply records its cut twice: the copy is left out.
        """
        key = self._keys.batch_cuts(self.version)
        cuts: list[BatchCut] = []
        start = 0
        while True:
            page = await self._client.lrange(key, start, start + _CUTS_PAGE - 1)
            for raw in page:
                cut = BatchCut.from_bytes(raw)
                if cut.history == history and cut.batch >= since and cut not in cuts[-1:]:
                    cuts.append(cut)
            if len(page) < _CUTS_PAGE:
                return cuts
            start += _CUTS_PAGE

    async def positions(self) -> dict[str, int]:
        raw = await self._client.hgetall(self._keys.model_positions(self.version))
        return int_hash(raw)

    async def users(self, user_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored vectors of the given users (absent ones are left out)."""
        ids = list(user_ids)
        if not ids:
            return {}
        raw = await self._client.mget([self._keys.user_vector(self.version, u) for u in ids])
        return {
            user: vector
            for user, blob in zip(ids, raw, strict=True)
            if (vector := _vector(blob)) is not None
        }

    async def item_rows(self) -> dict[str, np.ndarray]:
        """Every stored item row, ``[bias, *factors]``."""
        raw = await self._client.hgetall(self._keys.item_rows(self.version))
        return {
            _text(movie): np.frombuffer(_bytes(blob), dtype="<f4") for movie, blob in raw.items()
        }

    async def publish_matrix(self, matrix: ItemMatrix) -> int:
        """Store the matrix under the next revision, make it current, drop old ones."""
        keys, version = self._keys, self.version
        revision = int(await self._client.incr(keys.matrix_revision(version) + ":next"))
        blob = dataclasses.replace(matrix, revision=revision).to_bytes()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(keys.matrix(version, revision), blob)
            pipe.set(keys.matrix_revision(version), revision)
            if revision > _KEEP_REVISIONS:
                pipe.delete(keys.matrix(version, revision - _KEEP_REVISIONS - 1))
            await pipe.execute()
        return revision

    async def matrix_revision(self) -> int:
        """The current revision, 0 when none was published."""
        raw = await self._client.get(self._keys.matrix_revision(self.version))
        return int(raw) if raw is not None else 0

    async def load_matrix(self, revision: int | None = None) -> ItemMatrix | None:
        if revision is None:
            revision = await self.matrix_revision()
        if revision == 0:
            return None
        blob = await self._client.get(self._keys.matrix(self.version, revision))
        return None if blob is None else ItemMatrix.from_bytes(_bytes(blob))

    async def user_context(self, user_id: int) -> UserContext:
        """The user's vector and watched movies, in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._keys.user_vector(self.version, user_id))
            pipe.hkeys(self._keys.watched(user_id))
            row, watched = await pipe.execute()
        return _context(row, watched)

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        header = orjson.dumps({"positions": checkpoint.positions, "created": checkpoint.created})
        blob = struct.pack("<I", len(header)) + header + checkpoint.state
        await self._client.set(self._keys.checkpoint(self.version), blob)

    async def load_checkpoint(self) -> Checkpoint | None:
        blob = await self._client.get(self._keys.checkpoint(self.version))
        if blob is None:
            return None
        raw = _bytes(blob)
        (length,) = struct.unpack_from("<I", raw)
        header = orjson.loads(raw[4 : 4 + length])
        return Checkpoint(raw[4 + length :], dict(header["positions"]), float(header["created"]))


def user_contexts_request(
    keys: KeySchema, version: str, user_ids: Sequence[int]
) -> tuple[bytes, int]:
    """The commands that read the contexts of ``user_ids`` in ``version`` (one MGET of
    the vectors, one HKEYS per user), for a ``state.pipe.RedisPipe``, and how many
    replies they ask for; :func:`user_contexts_from_replies` reads the replies.

    Examples
    --------
    >>> payload, replies = user_contexts_request(KeySchema("rf"), "v1", [7])
    >>> replies, payload.count(b"rf:v:v1:u:7"), payload.count(b"rf:u:7:watched")
    (2, 1, 1)
    """
    commands = [("MGET", *[keys.user_vector(version, user) for user in user_ids])]
    commands += [("HKEYS", keys.watched(user)) for user in user_ids]
    return pack_commands(*commands), len(commands)


def user_contexts_from_replies(replies: Sequence[Any]) -> list[UserContext]:
    """The contexts in the replies to :func:`user_contexts_request`, in order.

    Examples
    --------
    >>> row = user_row(3, np.array([0.5, -1.0], dtype=np.float32)).tobytes()
    >>> known, unknown = user_contexts_from_replies([[row, None], [b"m1", b"m2"], []])
    >>> known.n_events, known.vector.tolist(), sorted(known.watched)
    (3, [0.5, -1.0], ['m1', 'm2'])
    >>> unknown
    UserContext(vector=None, watched=frozenset(), n_events=0)
    >>> user_contexts_from_replies([[None], ["m1"]])[0].watched  # a client that decodes
    frozenset({'m1'})
    """
    rows, watched = replies[0], replies[1:]
    return [_context(row, movies) for row, movies in zip(rows, watched, strict=True)]


def _context(row: bytes | str | None, watched: list[bytes | str]) -> UserContext:
    stored = _vector(row)
    try:  # bytes, as this store's clients reply: decoded without a Python call per id
        movies = frozenset(map(bytes.decode, watched))  # type: ignore[arg-type]
    except TypeError:  # str ids from a client that decodes replies
        movies = frozenset(map(_text, watched))
    if stored is None or stored.shape[0] < 2:
        return UserContext(None, movies)
    return UserContext(stored[1:], movies, int(stored[0]))
