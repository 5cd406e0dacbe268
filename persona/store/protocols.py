"""What a storage backend must do, one concern per protocol; `Recorder` is all of them.

A caller depends on the small interface it uses. Mutating calls run inside
`Connection.transaction()`, which is atomic and serialises writers (SQLite takes its write
lock at the start; PostgreSQL an advisory lock). Backends translate their driver's errors at
this boundary: a duplicate event id is DuplicateEventError, a (stream, version) collision is
ConcurrencyError, anything else the database refuses a StoreError (persona.errors).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from persona.store.rows import (
    ChunkRow,
    DeliveryRow,
    Head,
    LogChunk,
    MergeEdge,
    ProfileRow,
    QuarantinedRecord,
    RowTagger,
    StoredChunk,
    TokenRow,
)


class Connection(Protocol):
    """Transactions, consistent reads, the `meta` table and the row tags of one connection."""

    commits: int  # transactions this connection committed
    upgraded: bool  # opening it upgraded the store's format (schema.UPGRADABLE): its meta rows need their tags anew
    tagger: RowTagger | None  # computes row tags (persona.integrity); set by Persona, with the key file

    def transaction(self, *, durable: bool = False, concurrent: bool = False) -> AbstractContextManager[None]:
        """durable: the commit (and every one before it) survives a power cut once this returns,
        whatever the backend's usual trade-off (SQLite synchronous=NORMAL).

        concurrent: other connections' concurrent transactions may write while this one is
        open, because it guards what it writes itself: the streams it appends to or whose
        person it writes by `heads(..., lock=True)`, new identifiers by `insert_links` (which
        says whether another writer claimed one first), event ids and positions by
        `insert_chunks`. Any other transaction waits until no concurrent one is open, and they
        for it (PostgreSQL: the schema's write lock, shared or exclusive). SQLite has one
        writer at a time whatever is asked. A transaction nested in another is the outer one's
        kind."""
        ...
    def in_transaction(self) -> bool:
        """True inside `transaction()`: a nested one commits (or rolls back) with the outermost."""
        ...
    def beside_others(self) -> bool:
        """True inside a transaction that other connections may write beside (a concurrent one,
        on a backend that runs them at once): what it read unlocked may change before COMMIT."""
        ...
    def snapshot(self) -> AbstractContextManager[None]:
        """A consistent, read-only view of the whole store for the reads inside it."""
        ...
    def close(self) -> None: ...
    def data_version(self) -> int:
        """Changes whenever another connection commits."""
        ...
    def change_mark(self) -> Hashable | None:
        """A value read in one cheap step that differs between two reads whenever anything was
        written to the store in between, by this connection or any other, in any process; None
        where the backend has no such step cheaper than the reads it would spare."""
        ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def adopt_tags(self) -> int:
        """Tag every untagged row as it stands and note it in meta (persona.integrity): how many, meta's left out."""
        ...


class EventLog(Protocol):
    """The append-only log: chunks, each a stream's consecutive events sealed together
    (rows.StoredChunk), and the set of every event's idempotency key. Streams are named by their
    number (Head.no) where the caller holds it."""

    def existing_event_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys are in the log's key set, in any generation (persona.store.keyset)."""
        ...
    def keys_in(self, generation: int, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys one generation of the key set holds."""
        ...
    def key_set_problems(self, events_per_generation: Mapping[int, int]) -> list[str]:
        """What is wrong with the key set (for verify): each generation must hold as many keys as
        its positions hold events, no key may be in two, the generations the log has passed must be
        sealed, and each filter must be the one its keys make."""
        ...
    def insert_chunks(self, rows: Sequence[ChunkRow]) -> int:
        """Append chunks (rows.ChunkRow) at the next positions, in order, and their events' keys;
        returns the first chunk's position. DuplicateEventError if a key is in the log already;
        ConcurrencyError if a chunk does not continue its stream (the database refuses a gap or
        an overlap of versions)."""
        ...
    def last_position(self) -> int:
        """The position of the log's last event (0 when empty)."""
        ...
    def read_stream(self, stream_id: str, after_version: int = 0) -> Iterator[StoredChunk]:
        """The chunks holding a stream's events after a version, in version order (the first
        may start at or before it)."""
        ...
    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredChunk]:
        """Up to `limit` chunks holding events after a position, in log order."""
        ...
    def read_log(self, after_position: int, limit: int) -> list[LogChunk]:
        """Replay's read: up to `limit` chunks holding events after a position, in log order
        (rows.LogChunk: no chain hash, streams by number, ids from stream_names)."""
        ...
    def stream_names(self, stream_numbers: Sequence[int]) -> dict[int, str]: ...
    def read_streams(self, stream_numbers: Sequence[int]) -> Iterator[StoredChunk]:
        """Every chunk of these streams (by Head.no), stream by stream, each in version order."""
        ...
    def read_after(self, wanted: Sequence[tuple[int, int]]) -> Iterator[StoredChunk]:
        """The chunks of several streams (Head.no) holding events after each one's own version,
        stream by stream."""
        ...
    def read_page(self, stream_id: str, before_version: int, limit: int) -> list[StoredChunk]:
        """Up to `limit` chunks of one stream holding events older than `before_version`, newest first."""
        ...
    def read_page_across(self, stream_ids: Sequence[str], before_position: int, limit: int) -> list[StoredChunk]:
        """Up to `limit` chunks of several streams (a merged person) holding events before a
        position, newest first."""
        ...
    def scan_chains(self) -> Iterator[StoredChunk]:
        """Every chunk, stream by stream, each stream in version order."""
        ...
    def overlapping_chunks(self) -> int:
        """How many chunks start at or before the last position of the chunk before them in the
        log (0 unless a position was altered behind the store's back)."""
        ...
    def wait_for_events(self, after_position: int, timeout: float) -> int:
        """Block until the log grows past a position (or the timeout passes); the newest position."""
        ...


class Streams(Protocol):
    """Streams, where each stands, and the wrapped data keys (per stream, and the system's)."""

    def heads(self, stream_ids: Iterable[str], *, lock: bool = False) -> dict[str, Head]:
        """Where each stream stands. lock: in a transaction, hold these streams until it ends —
        another transaction's append to one, or its write of their person, waits (and then
        reads what this one wrote); the heads returned are as they stand once held."""
        ...
    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]:
        """rows: (profile_id, genesis hash, kek_version, wrapped DEK, created_at); returns stream numbers."""
        ...
    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None:
        """rows: (version, chain head, stream_no)."""
        ...
    def created_at(self, stream_id: str) -> int: ...
    def stream_ids(self) -> Iterator[str]: ...
    def wrapped_keys(self) -> Iterator[tuple[str, int, bytes]]: ...
    def rewrap(self, rows: Sequence[tuple[int, bytes, str]]) -> None: ...
    def kek_versions_in_use(self) -> set[int]: ...
    def system_key(self, name: str) -> tuple[int, bytes] | None: ...
    def system_keys(self) -> list[tuple[str, int, bytes]]: ...
    def put_system_key(self, name: str, kek_version: int, wrapped: bytes) -> None: ...


class Identities(Protocol):
    """Identity links (keyed hash -> profile id) and merges: streams found to be one person
    (persona.identity)."""

    def resolve(self, hashes: Sequence[bytes]) -> dict[bytes, str]: ...
    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> int:
        """rows: (subject hash, profile id, namespace, created_at) of identifiers not linked yet;
        how many were linked — fewer when another writer linked one of them first (it waits for
        that writer to commit, and leaves its link as it is)."""
        ...
    def links_of(self, profile_id: str) -> list[tuple[bytes, str]]: ...
    def links_of_many(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        """(profile_id, subject hash, namespace) of each profile's identifiers."""
        ...
    def persons_of(self, profile_ids: Sequence[str]) -> dict[str, str]:
        """Stream -> person id, for the streams that belong to a merged person."""
        ...
    def members_of(self, person_ids: Sequence[str]) -> dict[str, list[str]]:
        """Person id -> its streams (oldest first), for merged persons."""
        ...
    def merge_edges(self, profile_ids: Sequence[str]) -> list[MergeEdge]:
        """Every merge (active or undone) touching these streams."""
        ...
    def add_merge(self, a: str, b: str, a_hash: bytes, b_hash: bytes, at: int) -> int: ...
    def undo_merges(self, edges: Sequence[int], at: int) -> None: ...
    def set_members(self, rows: Sequence[tuple[str, str]], singles: Sequence[str]) -> None:
        """rows: (stream, person id) of merged persons; singles: streams that are their own person again."""
        ...
    def drop_derived(self, profile_ids: Sequence[str]) -> None:
        """Delete the index, RFM and prediction rows of these profile ids (streams now read as part of a person)."""
        ...
    def lagging_persons(self) -> list[str]:
        """Persons whose index row is missing or older than their streams (a crashed ingest
        committed batches it never indexed)."""
        ...


class Erasure(Protocol):
    """Erasure, tombstones, and making deleted rows unrecoverable from the backend's files."""

    purges_at_once: bool  # erasure runs purge() itself (SQLite); else one purge serves a window (persona.purge)

    def erase(self, profile_id: str, erased_at: int) -> dict[str, int]:
        """Delete the key, links, merges, tagged quarantine and derived rows (schema.ERASED_FROM);
        revoke the tokens minted for the profile; write a tombstone. Returns counts."""
        ...
    def purge_tagged(self, hashes: Sequence[bytes]) -> int:
        """Delete quarantined records carrying any of these identifier hashes."""
        ...
    def tombstone(self, profile_id: str) -> int | None: ...
    def tombstones(self) -> Iterator[tuple[str, int]]: ...
    def erasure_mark(self) -> int:
        """Changes whenever a profile is erased."""
        ...
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


class Quarantine(Protocol):
    """Records refused at ingest, held sealed with the keyed hashes of their identifiers."""

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


class ReadModels(Protocol):
    """Snapshots and read models: disposable, rebuilt from the log. Rows are written only for
    profiles that still hold a key (checked inside the writing transaction: an erasure committed
    by another process since they were computed wins), and never over newer ones."""

    def snapshots_of(self, profile_id: str) -> dict[str, tuple[int, int, bytes]]:
        """projection -> (projection version, stream version, sealed state)."""
        ...
    def snapshots_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int, bytes]]]:
        """profile -> projection -> (projection version, stream version, sealed state)."""
        ...
    def put_snapshots(self, rows: Sequence[tuple[str, str, int, int, bytes]]) -> None:
        """rows: (profile_id, projection, projection version, stream version, sealed state)."""
        ...
    def put_index(self, rows: Sequence[tuple[str, int, str]]) -> None:
        """rows: (profile_id, version, JSON document of the profile's read-model values)."""
        ...
    def index_rows(self, after: str = "", limit: int = -1) -> list[tuple[str, int, str, int | None, int | None,
                                                                     int | None]]:
        """Read-model rows with RFM scores (profile_id, version, doc, r, f, m) in profile id order,
        after an id; a negative limit reads them all."""
        ...
    def index_size(self) -> int:
        """Rows in the profile index: the population a scan reads."""
        ...
    def profile_rows(self, profile_ids: Sequence[str]) -> list[ProfileRow]:
        """What the API shows of each profile."""
        ...
    def answer_stamps(self, profile_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """What an answer about each profile depends on: (profile_id, version, updated_at, has_key,
        index_version, r, f, m, person_id, digest of its predictions, digest of its memberships)."""
        ...
    def put_rfm(self, rows: Sequence[tuple[str, int, int, int]]) -> None:
        """Replace every RFM score: (profile_id, r, f, m)."""
        ...
    def change_rfm(self, rows: Sequence[tuple[str, int, int, int]], gone: Sequence[str]) -> None:
        """Set these profiles' scores (profile_id, r, f, m) and delete those of `gone`: the rest stay."""
        ...
    def rfm_scores(self) -> dict[str, dict[str, int]]: ...
    def rfm_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """The RFM scores of those of these profiles that have any."""
        ...
    def index_versions(self, profile_ids: Sequence[str]) -> dict[str, int]:
        """The version of each of these profiles' index rows, for those that have one."""
        ...
    def rfm_of(self, profile_id: str) -> dict[str, int] | None: ...
    def clear_derived(self, projection: str | None = None) -> None:
        """Empty the profile index, RFM scores, predictions and the snapshots (of one projection, or
        all) before a rebuild."""
        ...


class ModelRegistry(Protocol):
    """The model registry, who each version was trained on, and the predictions read model."""

    def next_model_version(self, name: str) -> int: ...
    def add_model(self, name: str, version: int, created_at: int, meta: str, sha256: str, blob: bytes,
                  people: Sequence[str]) -> None:
        """A new version of a model, with who it was trained on."""
        ...
    def model_rows(self, name: str | None = None
                   ) -> list[tuple[str, int, int, str, int | None, str | None, str | None, str, str]]:
        """(name, version, created_at, status, promoted_at, stale, drift, meta, sha256), newest first per name."""
        ...
    def model_meta(self) -> list[tuple[str, int, str, str | None]]:
        """(name, version, meta, drift) of every version."""
        ...
    def replace_model_meta(self, name: str, version: int, meta: str | None, drift: str | None) -> None:
        """Rewrite a version's meta and drift as they are (a backup seals them, a restore opens
        them): the row keeps its tag, which holds for the values as written."""
        ...
    def set_model_drift(self, name: str, version: int, drift: str) -> None: ...
    def set_model_status(self, name: str, version: int, status: str) -> None: ...
    def model_blob(self, name: str, version: int) -> tuple[str, bytes] | None: ...
    def promote_model(self, name: str, version: int, at: int) -> None:
        """This version serves; the one that served before is kept as 'retired'."""
        ...
    def models_trained_on(self, profile_ids: Sequence[str]) -> list[tuple[str, int]]: ...
    def mark_models_stale(self, versions: Sequence[tuple[str, int]], reason: str) -> None: ...
    def put_predictions(self, rows: Sequence[tuple[str, str, int, int, str]], *, model: str | None = None,
                        tags: Sequence[bytes | None] | None = None) -> None:
        """rows: (profile_id, model, version, computed_at, doc). With `model`, its old rows go first.
        `tags`: each row's tag, computed already with this store's `tagger` (a batch does it where
        it made the rows, in parallel); else the rows are tagged here as they are inserted."""
        ...
    def predictions_of(self, profile_ids: Sequence[str], model: str | None = None
                       ) -> list[tuple[str, str, int, int, str]]:
        """The rows of these profiles (of one model, if given)."""

    def drop_prediction(self, profile_id: str, model: str) -> None:
        """One profile's row of one model (a list its person may no longer be shown)."""


class Segments(Protocol):
    """Live segments: named rules (their text only; persona.rules parses them), who is in each
    and since when, and every entry and exit in order of writing."""

    def segment_definitions(self) -> list[tuple[str, str, int, str]]:
        """(name, rule, created_at, created_by) of every segment, by name."""
        ...
    def add_segment(self, name: str, rule: str, created_at: int, created_by: str) -> bool:
        """False if a segment of that name exists (it is left as it is)."""
        ...
    def remove_segment(self, name: str) -> bool:
        """The segment, its members and its changes go; False if there was none."""
        ...
    def segment_sizes(self) -> dict[str, int]:
        """Members of each segment that has any."""
        ...
    def memberships(self, profile_ids: Sequence[str] | None = None, *, segments: Sequence[str] | None = None
                    ) -> list[tuple[str, str, int]]:
        """(segment, profile_id, since) of these profiles; with none given, every member of these
        segments (of every segment: None)."""
        ...
    def segment_members(self, name: str, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        """(profile_id, since) of a segment's members after an id, in id order."""
        ...
    def change_memberships(self, entered: Sequence[tuple[str, str]], left: Sequence[tuple[str, str]],
                           at: int) -> None:
        """(segment, profile_id) pairs entering (since `at`) and leaving, each noted as a change at `at`."""
        ...
    def segment_changes(self, after: int = 0, limit: int = 1000) -> list[tuple[int, int, str, str, bool]]:
        """(seq, at, segment, profile_id, entered) after a number, in order of writing."""
        ...
    def segment_daily_changes(self, since: int) -> list[tuple[str, int, int, int]]:
        """(segment, day since the epoch (UTC), entries, exits) per segment and day, from `since` (µs) on."""
        ...
    def last_segment_change(self) -> int:
        """The number of the latest change kept (0: none)."""
        ...
    def prune_segment_changes(self, before: int) -> int:
        """Forget the changes noted before an instant; how many."""
        ...
    def clear_memberships(self) -> None:
        """Empty the memberships and changes (a restore makes them anew)."""
        ...


class Destinations(Protocol):
    """Webhook destinations (their secrets sealed above the store), who each has received, and the
    deliveries: an outbox of POSTs, each pending until acknowledged, skipped or dead-lettered."""

    def destination_rows(self) -> list[tuple[str, str, bytes, str, str, str, str, bytes, int, str]]:
        """(name, host, sealed url, segments, fields, on_change, purpose, sealed secret, created_at,
        created_by), by name."""
        ...
    def add_destination(self, row: tuple[str, str, bytes, str, str, str, str, bytes, int, str]) -> bool:
        """False if one of that name exists."""
        ...
    def update_destination(self, name: str, host: str, url: bytes, secret: bytes) -> bool:
        """A new address and secret (both sealed); False if there is none of that name."""
        ...
    def remove_destination(self, name: str) -> bool:
        """The destination goes, with its deliveries and who it received; False if there was none."""
        ...
    def received_count(self, name: str) -> int:
        """How many people the destination holds (received, not erased since)."""
        ...
    def enqueue_deliveries(self, rows: Sequence[tuple[str, str, str, str, str, int, int]]) -> None:
        """rows: (key, destination, kind, profile_id, segment, created_at, due at): pending deliveries,
        each queued only if its profile still has a key (not erased)."""
        ...
    def enqueue_notices(self, rows: Sequence[tuple[str, str, str, int, int]]) -> None:
        """rows: (key, destination, profile_id, created_at, due at): pending deletion notices."""
        ...
    def due_deliveries(self, now: int, limit: int) -> list[DeliveryRow]:
        """Pending deliveries due by `now`, oldest first."""
        ...
    def lease_delivery(self, seq: int, now: int, until: int) -> int | None:
        """Claim a due delivery until an instant (another sender skips it meanwhile): its attempts
        so far, or None if it is no longer due (another sender has it, or it is gone)."""
        ...
    def hold_received(self, destination: str, profile_id: str, at: int) -> None:
        """The destination is about to receive the person: noted before the request goes, so that an
        erasure meanwhile notifies it (a digest of what it was sent comes with the answer)."""
        ...
    def finish_delivery(self, seq: int, leased_until: int, status: str, attempts: int, next_at: int, outcome: str,
                        done_at: int | None) -> bool:
        """The outcome of a leased attempt; False (nothing written) if the lease was lost meanwhile
        (another sender took it over) or the delivery is gone (its person erased)."""
        ...
    def delivery_states(self) -> list[tuple[str, str, int, int | None]]:
        """(destination, status, how many, latest done_at) of every destination's deliveries."""
        ...
    def deliveries(self, destination: str, status: str, limit: int = 100) -> list[DeliveryRow]: ...
    def deliveries_of(self, seqs: Sequence[int]) -> list[DeliveryRow]: ...
    def erasure_notices(self, profile_ids: Sequence[str]) -> list[DeliveryRow]:
        """The deletion notices of these profiles still pending."""
        ...
    def requeue_dead(self, destination: str, now: int) -> int:
        """A destination's dead letters, pending again from their first attempt; how many."""
        ...
    def prune_deliveries(self, before: int) -> int:
        """Forget the deliveries done before an instant (never a deletion notice); how many."""
        ...
    def received_by(self, profile_ids: Sequence[str]) -> list[tuple[str, str, int, bytes | None]]:
        """(destination, profile_id, first_at, digest of the fields last sent) of these profiles."""
        ...
    def note_received(self, rows: Sequence[tuple[str, str, int, bytes | None]]) -> None:
        """These destinations received these profiles (first_at kept; the digest replaced)."""
        ...
    def forget_received(self, profile_ids: Sequence[str]) -> int:
        """Who received these profiles, and their deliveries still to go but the deletion notices, go."""
        ...


class Access(Protocol):
    """API access: tokens (hashes only) and the append-only audit log."""

    def put_token(self, row: tuple[str, bytes, str, int, float, float, float, str, str, str, int | None]) -> None:
        """row: (name, digest, scopes, created_at, rate_per_s, epsilon_budget, delta_budget, sources, types,
        subject, expires_at)."""
        ...
    def token_by_digest(self, digest: bytes) -> TokenRow | None: ...
    def tokens(self) -> list[TokenRow]: ...
    def revoke_token(self, name: str, now: int) -> bool: ...
    def prune_minted(self, before: int) -> int:
        """Delete the tokens minted for one person that expired before an instant; how many."""
        ...
    def spend_privacy(self, name: str, epsilon: float, delta: float) -> tuple[float, float] | None:
        """Charge ε and δ to an active token's budgets, both or neither (SPEND_PRIVACY): what
        remains of each, or None if either would be overdrawn."""
        ...
    def append_audit(self, rows: Sequence[tuple[int, str, str, str, str, str, str]]) -> None:
        """rows: (at, writer, operation, profile_id, comma-separated fields, outcome, detail)."""
        ...
    def audit_latest(self, *, before: int | None = None, limit: int = 50, profile_id: str | None = None
                     ) -> list[tuple[int, int, str, str, str, str, str, str]]:
        """Entries below number `before` (all if None), the newest first; about `profile_id` if given."""
        ...
    def audit_ingests(self, *, within: int, limit: int = 20) -> list[tuple[int, int, str, str, str, str, str, str]]:
        """The ingest runs' entries (their counts) among the newest `within` entries, the newest first."""
        ...
    def audit_rows(self, *, after: int = 0, limit: int = 1000, profile_id: str | None = None
                   ) -> list[tuple[int, int, str, str, str, str, str, str]]:
        """(seq, at, writer, operation, profile_id, fields, outcome, detail) in order of writing."""
        ...


class Maintenance(Protocol):
    """Copies (dump and load, backups) and the checks of the store's own files and schema."""

    def backup(self, dest: Path, tables: Sequence[str]) -> None:
        """A consistent copy of these of TABLES into a new persona SQLite database at DEST (an
        empty file): what `persona backup` writes and `persona restore` reads."""
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


class Recorder(Connection, EventLog, Streams, Identities, Erasure, Quarantine, ReadModels, ModelRegistry, Segments,
               Destinations, Access, Maintenance, Protocol):
    """Everything a store does: what `persona.recorder` is. Depend on the smaller protocol you use."""
