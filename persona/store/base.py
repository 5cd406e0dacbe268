"""What a storage backend must do. Recorders move opaque bytes: sealing happens above them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the log, as the backend keeps it."""

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


class Recorder(Protocol):
    """Storage of the log, keys, links, tombstones and quarantine.

    Mutating calls must run inside `transaction()`, which is atomic and serialises
    writers (the SQLite backend takes the write lock at its start).
    """

    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...

    # meta
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    # events
    def existing_event_keys(self, keys: Sequence[bytes]) -> set[bytes]: ...
    def insert_events(self, rows: Sequence[tuple[int, int, bytes, str, int, bytes, bytes]]) -> None: ...
    def read_stream(self, stream_id: str, after_version: int = 0) -> Iterator[StoredEvent]: ...
    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]: ...
    def scan_chains(self) -> Iterator[StoredEvent]: ...

    # streams and keys
    def heads(self, stream_ids: Iterable[str]) -> dict[str, Head]: ...
    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]: ...
    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None: ...
    def stream_ids(self) -> Iterator[str]: ...
    def wrapped_keys(self) -> Iterator[tuple[str, int, bytes]]: ...
    def rewrap(self, rows: Sequence[tuple[int, bytes, str]]) -> None: ...

    # identity links
    def resolve(self, hashes: Sequence[bytes]) -> dict[bytes, str]: ...
    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> None: ...
    def links_of(self, profile_id: str) -> list[tuple[bytes, str]]: ...

    # erasure
    def erase(self, profile_id: str, erased_at: int) -> dict[str, int]: ...
    def tombstone(self, profile_id: str) -> int | None: ...
    def tombstones(self) -> Iterator[tuple[str, int]]: ...
    def checkpoint(self) -> bool: ...

    # quarantine
    def quarantine(self, rows: Sequence[tuple[int, str, int, str, int, bytes, bytes, int]],
                   tags: Sequence[Sequence[bytes]]) -> int: ...
    def quarantined(self) -> list[QuarantinedRecord]: ...
    def purge_quarantine(self, now: int) -> int: ...

    # maintenance
    def backup(self, dest: str) -> None: ...
    def counts(self) -> dict[str, int]: ...
