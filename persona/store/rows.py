"""The rows a store hands out: plain tuples and frozen records, cheap to make by the million."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class RowTagger(Protocol):
    """What computes and checks row tags (persona.integrity.Tagger, made from the key file)."""

    def __call__(self, table: str, values: Sequence[object]) -> bytes: ...
    def matches(self, table: str, values: Sequence[object], tag: object) -> bool: ...


class StoredChunk(NamedTuple):
    """One row of the log: consecutive events of one stream, sealed together (a tuple: cheap to
    make by the million). A chunk of one event is sealed exactly as an event was before chunks
    (persona.eventlog), so a store of that format is a store of one-event chunks."""

    position: int  # global position of its first event; the next ones follow (the catch-up cursor)
    stream_id: str  # the profile id
    first_version: int  # versions first..last within the stream: 1..n, no gaps, no overlap
    last_version: int
    recorded_at: int  # microseconds since the epoch, UTC
    types: str  # the events' types, space-separated, in version order
    keys: bytes  # the events' idempotency keys (keyed hashes of their ids), KEY_SIZE bytes each
    payload: bytes  # nonce + AES-GCM ciphertext
    hash: bytes  # chain: H(previous hash, this row's header and payload)

    @property
    def size(self) -> int:
        """How many events it holds."""
        return self.last_version - self.first_version + 1

    @property
    def last_position(self) -> int:
        return self.position + self.last_version - self.first_version


# A chunk to insert: (stream_no, first_version, last_version, recorded_at, types, keys, payload, hash)
ChunkRow = tuple[int, int, int, int, str, bytes, bytes, bytes]
# A chunk as replay reads it: (position, stream_no, first_version, last_version, recorded_at, types, keys,
# payload): no chain hash, and the stream by number (ids from stream_names)
LogChunk = tuple[int, int, int, int, int, str, bytes, bytes]

KEY_SIZE = 16  # bytes of an event's idempotency key
CHUNK_CAP = 256  # events in one chunk at most: reading one event decrypts a bounded amount


@dataclass(frozen=True, slots=True)
class Head:
    """Where a stream stands, and its wrapped data key (None once erased)."""

    no: int  # the backend's stream number
    version: int
    hash: bytes
    kek_version: int | None
    wrapped: bytes | None


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    id: int
    recorded_at: int
    origin: str
    line: int
    reason: str
    size: int
    expires_at: int


class ProfileRow(NamedTuple):
    """A profile as the API reads it: head, last change, read-model row, RFM scores."""

    profile_id: str
    version: int
    updated_at: int | None  # when its latest event was recorded (µs)
    has_key: bool  # False once erased
    index_version: int | None
    index_doc: str | None
    r: int | None
    f: int | None
    m: int | None
    person_id: str | None = None  # the merged person this stream belongs to (None: its own person)


class MergeEdge(NamedTuple):
    """Two streams found to be one person, by the link of two identifiers (keyed hashes)."""

    edge: int
    a: str
    b: str
    a_hash: bytes
    b_hash: bytes
    merged_at: int
    undone_at: int | None


class TokenRow(NamedTuple):
    name: str
    digest: bytes
    scopes: str  # space-separated
    created_at: int
    revoked_at: int | None
    rate_per_s: float
    epsilon_budget: float
    epsilon_spent: float
    delta_budget: float
    delta_spent: float
    sources: str  # space-separated sources the token may write as ("": any, but claiming no precedence)
    types: str  # space-separated event types it may write ("": any but the privileged ones)
    subject: str = ""  # a minted token's person: it reads that profile only ("": not bound)
    expires_at: int | None = None  # µs: when a minted token stops working (None: never)


class DeliveryRow(NamedTuple):
    """A webhook delivery (persona.destinations): one POST to one destination, until acknowledged."""

    seq: int
    key: str  # its idempotency key: random, the same on every attempt, never reused (restores included)
    destination: str
    kind: str  # entered, left, changed, erased
    profile_id: str
    segment: str  # the segment entered or left ("" for the other kinds)
    created_at: int
    attempts: int
    next_at: int  # µs: when it is due (again)
    status: str  # pending, delivered, dead (given up after the attempts allowed), skipped
    outcome: str  # the last attempt's: "HTTP 204", "timeout", "refused" (never a body)
    done_at: int | None
