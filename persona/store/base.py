"""What a storage backend must do. Recorders move opaque bytes: sealing happens above them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from persona.store.schema import (
    BACKED_UP,
    COLUMNS_ADDED,
    PURGE_MARK,
    READ_MODELS,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    TABLES,
    TAG,
)

__all__ = ["BACKED_UP", "COLUMNS_ADDED", "PURGE_MARK", "READ_MODELS", "SCHEMA_REVISION", "SCHEMA_VERSION", "TABLES",
           "TAG"]  # (the schema's names, for the modules that read them here)


class RowTagger(Protocol):
    """What computes and checks row tags (persona.integrity.Tagger, made from the key file)."""

    def __call__(self, table: str, values: Sequence[object]) -> bytes: ...
    def matches(self, table: str, values: Sequence[object], tag: object) -> bool: ...


# Charging an answer to a token's privacy budget: ε and δ together or neither, never past
# either budget (a relative slack of 1e-9 absorbs the rounding of sums of charges). One
# statement for both backends, each putting in its placeholder ("?" or "%s"); the
# parameters come from `privacy_charge`.
SPEND_PRIVACY = (
    "UPDATE api_tokens SET epsilon_spent = epsilon_spent + {p}, delta_spent = delta_spent + {p}, tag = NULL"
    " WHERE name = {p} AND revoked_at IS NULL"
    " AND epsilon_spent + {p} <= epsilon_budget * (1 + 1e-9) AND delta_spent + {p} <= delta_budget * (1 + 1e-9)"
    " RETURNING epsilon_budget - epsilon_spent, delta_budget - delta_spent")


def privacy_charge(name: str, epsilon: float, delta: float) -> tuple[float, float, str, float, float]:
    """The parameters of SPEND_PRIVACY; a charge that is negative or not a finite number is refused."""
    if not (0 <= epsilon < float("inf") and 0 <= delta < float("inf")):  # NaN fails too
        raise ValueError("a privacy charge is two finite numbers, neither negative")
    return epsilon, delta, name, epsilon, delta

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


class Recorder(Protocol):
    """Storage of the log, keys, links, tombstones and quarantine.

    Mutating calls must run inside `transaction()`, which is atomic and serialises
    writers (the SQLite backend takes the write lock at its start). Backends translate
    their driver's errors into persona's: a duplicate event id is DuplicateEventError,
    a (stream, version) collision is ConcurrencyError.
    """

    commits: int  # transactions this connection committed
    tagger: RowTagger | None  # computes row tags (persona.integrity); set by Persona, with the key file

    def adopt_tags(self) -> int:
        """Tag every untagged row as it stands and note it in meta (persona.integrity): how many, meta's left out."""
        ...
    purges_at_once: bool  # erasure runs purge() itself (SQLite); else one purge serves a window (persona.purge)

    def transaction(self, *, durable: bool = False) -> AbstractContextManager[None]:
        """durable: the commit (and every one before it) survives a power cut once this returns,
        whatever the backend's usual trade-off (SQLite synchronous=NORMAL)."""
        ...
    def in_transaction(self) -> bool: ...
    def close(self) -> None: ...
    def data_version(self) -> int:
        """Changes whenever another connection commits."""
        ...

    # meta
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    # events: rows are (stream_no, version, event_key, type, recorded_at, payload, hash)
    def existing_event_keys(self, keys: Sequence[bytes]) -> set[bytes]: ...
    def insert_events(self, rows: Sequence[tuple[int, int, bytes, str, int, bytes, bytes]]) -> None: ...
    def last_position(self) -> int: ...
    def read_stream(self, stream_id: str, after_version: int = 0) -> Iterator[StoredEvent]: ...
    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]: ...
    def read_log(self, after_position: int, limit: int) -> list[tuple[int, int, int, bytes, str, int, bytes]]:
        """Replay's read: (position, stream_no, version, event_key, type, recorded_at, payload) in
        log order — no chain hash, and streams by number (ids from stream_names)."""
        ...
    def stream_names(self, stream_numbers: Sequence[int]) -> dict[int, str]: ...
    def read_streams(self, stream_numbers: Sequence[int]) -> Iterator[StoredEvent]:
        """Every event of these streams (by Head.no), stream by stream, each in version order."""
        ...
    def scan_chains(self) -> Iterator[StoredEvent]:
        """Every event, stream by stream, each stream in version order."""
        ...

    # streams and their wrapped data keys
    def heads(self, stream_ids: Iterable[str]) -> dict[str, Head]: ...
    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]: ...
    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None: ...
    def created_at(self, stream_id: str) -> int: ...
    def stream_ids(self) -> Iterator[str]: ...
    def wrapped_keys(self) -> Iterator[tuple[str, int, bytes]]: ...
    def rewrap(self, rows: Sequence[tuple[int, bytes, str]]) -> None: ...
    def kek_versions_in_use(self) -> set[int]: ...
    def system_key(self, name: str) -> tuple[int, bytes] | None: ...
    def system_keys(self) -> list[tuple[str, int, bytes]]: ...
    def put_system_key(self, name: str, kek_version: int, wrapped: bytes) -> None: ...

    # identity links: keyed hash -> profile id
    def resolve(self, hashes: Sequence[bytes]) -> dict[bytes, str]: ...
    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> None: ...
    def links_of(self, profile_id: str) -> list[tuple[bytes, str]]: ...

    # merges: streams found to be one person (see persona.identity)
    def persons_of(self, profile_ids: Sequence[str]) -> dict[str, str]: ...
    def members_of(self, person_ids: Sequence[str]) -> dict[str, list[str]]: ...
    def merge_edges(self, profile_ids: Sequence[str]) -> list[MergeEdge]: ...
    def add_merge(self, a: str, b: str, a_hash: bytes, b_hash: bytes, at: int) -> int: ...
    def undo_merges(self, edges: Sequence[int], at: int) -> None: ...
    def set_members(self, rows: Sequence[tuple[str, str]], singles: Sequence[str]) -> None: ...
    def drop_derived(self, profile_ids: Sequence[str]) -> None: ...
    def lagging_persons(self) -> list[str]:
        """Persons whose index row is missing or older than their streams."""
        ...

    # erasure
    def erase(self, profile_id: str, erased_at: int) -> dict[str, int]:
        """Delete the key, links, tagged quarantine and derived rows; write a tombstone. Returns counts."""
        ...

    def purge_tagged(self, hashes: Sequence[bytes]) -> int: ...
    def tombstone(self, profile_id: str) -> int | None: ...
    def tombstones(self) -> Iterator[tuple[str, int]]: ...
    def erasure_mark(self) -> int:
        """Changes whenever a profile is erased."""
    def checkpoint(self, wait_s: float = 5.0) -> bool:
        """Make deleted rows unrecoverable from the backend's own files: purge(rewrite=True)."""
        ...
    def purge_lock(self) -> AbstractContextManager[bool]:
        """Held while a purge runs (PostgreSQL: across processes): True if this connection has it."""
        ...
    def purge(self, wait_s: float = 5.0, *, rewrite: bool = False) -> str | None:
        """Remove what was deleted from the backend's files, outside a transaction: SQLite truncates
        its WAL (deleted cells are zeroed already); PostgreSQL vacuums the tables erasure deletes
        from, so no query or dead-row reader finds an erased row, and with `rewrite` writes them
        anew, so no page keeps its bytes either. Waits up to `wait_s` for readers that still see
        the deleted rows. None when done, else why not (never personal data)."""
        ...

    # quarantine
    def quarantine(self, rows: Sequence[tuple[int, str, int, str, int, bytes, bytes, int]],
                   tags: Sequence[Sequence[bytes]]) -> int:
        """Hold these records (recorded_at, origin, line, reason, size, sealed content, content hash,
        expires_at) with their identifier tags. A record already held (the same content hash: the
        same row of the same file) is held once, with the latest run's reason, time and expiry, and
        the tags of both runs. Returns how many were new."""
        ...

    def quarantined(self) -> list[QuarantinedRecord]: ...
    def quarantined_content(self, qid: int) -> bytes | None: ...
    def purge_quarantine(self, now: int) -> int: ...
    def drop_quarantined(self, ids: Sequence[int]) -> None:
        """Delete these quarantined records and their tags (an id not held is passed over)."""
        ...

    # snapshots and read models (disposable: rebuilt from the log)
    def snapshots_of(self, profile_id: str) -> dict[str, tuple[int, int, bytes]]: ...
    def snapshots_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int, bytes]]]: ...
    def read_after(self, wanted: Sequence[tuple[int, int]]) -> Iterator[StoredEvent]:
        """Events of several streams (Head.no), each after its own version, stream by stream."""
    def put_snapshots(self, rows: Sequence[tuple[str, str, int, int, bytes]]) -> None: ...
    def put_index(self, rows: Sequence[tuple[str, int, str]]) -> None: ...
    def index_rows(self, after: str = "", limit: int = -1) -> list[tuple[str, int, str, int | None, int | None,
                                                                     int | None]]: ...
    def index_size(self) -> int:
        """Rows in the profile index: the population a scan reads."""
        ...
    def profile_rows(self, profile_ids: Sequence[str]) -> list[ProfileRow]: ...
    def links_of_many(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes, str]]: ...
    def read_page(self, stream_id: str, before_version: int, limit: int,
                  types: Sequence[str] = ()) -> list[StoredEvent]: ...
    def read_page_across(self, stream_ids: Sequence[str], before_position: int, limit: int,
                         types: Sequence[str] = ()) -> list[StoredEvent]: ...
    def put_rfm(self, rows: Sequence[tuple[str, int, int, int]]) -> None: ...
    def change_rfm(self, rows: Sequence[tuple[str, int, int, int]], gone: Sequence[str]) -> None:
        """Set these profiles' scores (profile_id, r, f, m) and delete those of `gone`: the rest stay."""
    def rfm_scores(self) -> dict[str, dict[str, int]]: ...
    def rfm_of(self, profile_id: str) -> dict[str, int] | None: ...
    def clear_derived(self, projection: str | None = None) -> None: ...

    # models: the registry, who each version was trained on, and the predictions read model
    def next_model_version(self, name: str) -> int: ...
    def add_model(self, name: str, version: int, created_at: int, meta: str, sha256: str, blob: bytes,
                  people: Sequence[str]) -> None: ...
    def model_rows(self, name: str | None = None
                   ) -> list[tuple[str, int, int, str, int | None, str | None, str | None, str, str]]: ...
    def set_model_drift(self, name: str, version: int, drift: str) -> None: ...
    def model_meta(self) -> list[tuple[str, int, str, str | None]]:
        """(name, version, meta, drift) of every version."""
        ...
    def replace_model_meta(self, name: str, version: int, meta: str | None, drift: str | None) -> None:
        """Rewrite a version's meta and drift as they are (a backup seals them, a restore opens
        them): the row keeps its tag, which holds for the values as written."""
        ...
    def set_model_status(self, name: str, version: int, status: str) -> None: ...
    def model_blob(self, name: str, version: int) -> tuple[str, bytes] | None: ...
    def promote_model(self, name: str, version: int, at: int) -> None: ...
    def models_trained_on(self, profile_ids: Sequence[str]) -> list[tuple[str, int]]: ...
    def mark_models_stale(self, versions: Sequence[tuple[str, int]], reason: str) -> None: ...
    def put_predictions(self, rows: Sequence[tuple[str, str, int, int, str]], *, model: str | None = None
                        ) -> None: ...
    def predictions_of(self, profile_ids: Sequence[str]) -> list[tuple[str, str, int, int, str]]: ...

    # API access: tokens (hashes only) and the append-only audit log
    def put_token(self, row: tuple[str, bytes, str, int, float, float, float, str, str]) -> None:
        """row: (name, digest, scopes, created_at, rate_per_s, epsilon_budget, delta_budget, sources, types)."""
        ...
    def token_by_digest(self, digest: bytes) -> TokenRow | None: ...
    def tokens(self) -> list[TokenRow]: ...
    def revoke_token(self, name: str, now: int) -> bool: ...
    def spend_privacy(self, name: str, epsilon: float, delta: float) -> tuple[float, float] | None:
        """Charge ε and δ to an active token's budgets, both or neither (SPEND_PRIVACY): what
        remains of each, or None if either would be overdrawn."""
        ...
    def append_audit(self, rows: Sequence[tuple[int, str, str, str, str, str, str]]) -> None: ...
    def audit_rows(self, *, after: int = 0, limit: int = 1000, profile_id: str | None = None
                   ) -> list[tuple[int, int, str, str, str, str, str, str]]: ...

    # change feed
    def wait_for_events(self, after_position: int, timeout: float) -> int:
        """Block until the log grows past a position (or the timeout passes); the newest position."""
        ...

    # maintenance
    def backup(self, dest: Path, tables: Sequence[str]) -> None:
        """A consistent copy of these of TABLES into a new persona SQLite database at DEST (an
        empty file): what `persona backup` writes and `persona restore` reads."""
        ...
    def snapshot(self) -> AbstractContextManager[None]:
        """A consistent, read-only view of the whole store for the reads inside it."""
        ...
    def dump(self, table: str) -> Iterator[list[tuple[object, ...]]]:
        """Every row of one of TABLES, its columns in that order, in pages."""
        ...
    def load(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Rows as dump() gives them, numbers kept (inside a transaction, into an empty store; a
        meta key or an API token of the same name already there is replaced)."""
        ...
    def finish_load(self) -> None:
        """After load(): counters continue after the copied numbers."""
        ...
    def damage(self) -> list[str]:
        """What is wrong with the store's files as the backend checks them (never values)."""
        ...
    def schema_problems(self) -> list[str]:
        """How the store's schema differs from the one this code makes (never values)."""
        ...
    def counts(self) -> dict[str, int]: ...
