"""The rows a store hands out: plain tuples and frozen records, cheap to make by the million."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class RowTagger(Protocol):
    """What computes and checks row tags (persona.integrity.Tagger, made from the key file)."""

    def __call__(self, table: str, values: Sequence[object]) -> bytes: ...
    def matches(self, table: str, values: Sequence[object], tag: object) -> bool: ...


class StoredEvent(NamedTuple):
    """One row of the log, as the backend keeps it (a tuple: cheap to make by the million)."""

    position: int  # global, increasing: the catch-up cursor
    stream_id: str  # the profile id
    version: int  # 1..n within the stream, no gaps
    event_key: bytes  # keyed hash of the event id: the idempotency key
    type: str
    recorded_at: int  # microseconds since the epoch, UTC
    payload: bytes  # nonce + AES-GCM ciphertext
    hash: bytes  # chain: H(previous hash, this row's header and payload)


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
