"""The embedded default: one SQLite database in WAL mode, through sqlite-utils."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from persona.errors import (
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventError,
    StoreBusyError,
    StoreDamagedError,
    StoreError,
    UndecodableValueError,
)
from persona.store.base import (
    SPEND_PRIVACY,
    Head,
    MergeEdge,
    ProfileRow,
    QuarantinedRecord,
    RowTagger,
    StoredEvent,
    TokenRow,
    privacy_charge,
)
from persona.store.boundary import translating
from persona.store.schema import (
    ADOPTED,
    COLUMNS_ADDED,
    COUNTED,
    DERIVED_TABLES,
    RETAGGED,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    TABLES,
    TAGGED,
    TAGGED_ON_INSERT,
    UNTAGGED_INDEXES,
)

CHUNK = 500  # bound parameters per IN (...) query
POLL_S = 0.05  # how often wait_for_events looks for another connection's commit
# Events carry a small integer stream number (streams.stream_no) instead of the profile id:
# the (stream, version) index stays a quarter of the size, and appends dirty fewer pages.
_EVENT_SELECT = (
    "SELECT e.position, s.stream_id, e.version, e.event_key, e.type, e.recorded_at, e.payload, e.hash"
    " FROM events e JOIN streams s ON s.stream_no = e.stream_no"
)

_ACCESS_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'persona: the audit log is append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'persona: the audit log is append-only (DELETE refused)'); END;
"""

_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS events_are_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'persona: events are append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'persona: events are append-only (DELETE refused)'); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_written_once BEFORE INSERT ON tombstones
WHEN EXISTS (SELECT 1 FROM tombstones WHERE profile_id = NEW.profile_id)
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_final_update BEFORE UPDATE ON tombstones
BEGIN SELECT RAISE(ABORT, 'persona: tombstones are final (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_final_delete BEFORE DELETE ON tombstones
BEGIN SELECT RAISE(ABORT, 'persona: tombstones are final (DELETE refused)'); END;
"""


def _chunks(items: Sequence[bytes] | Sequence[str]) -> Iterator[Sequence[bytes] | Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _expand(sql: str, n: int) -> str:
    """Constant SQL with one `IN (?*)`, given n bound placeholders. Values are never interpolated."""
    return sql.replace("(?*)", "(" + ",".join("?" * n) + ")")


def _expand_pairs(sql: str, n: int) -> str:
    """Constant SQL with one `VALUES (?**)`, given n rows of two bound placeholders."""
    return sql.replace("(?**)", ",".join(["(?, ?)"] * n))


_SCAN_CHAINS = _EVENT_SELECT + " ORDER BY e.stream_no, e.version"
_READ_STREAM = _EVENT_SELECT + " WHERE s.stream_id = ? AND e.version > ? ORDER BY e.version"
_READ_STREAMS = _EVENT_SELECT + " WHERE e.stream_no IN (?*) ORDER BY e.stream_no, e.version"
_READ_PAGE = _EVENT_SELECT + " WHERE s.stream_id = ? AND e.version < ? ORDER BY e.version DESC LIMIT ?"
_READ_PAGE_TYPED = (
    _EVENT_SELECT + " WHERE s.stream_id = ? AND e.version < ? AND e.type IN (?*) ORDER BY e.version DESC LIMIT ?"
)
# One row per profile for the API: its head, last change, read-model row and RFM scores.
_PROFILE_ROWS = (
    "SELECT s.stream_id, s.version, e.recorded_at, k.profile_id IS NOT NULL, i.version, i.doc, r.r, r.f, r.m,"
    " m.person_id FROM streams s LEFT JOIN events e ON e.stream_no = s.stream_no AND e.version = s.version"
    " LEFT JOIN members m ON m.profile_id = s.stream_id"
    " LEFT JOIN keys k ON k.profile_id = s.stream_id LEFT JOIN profile_index i ON i.profile_id = s.stream_id"
    " LEFT JOIN rfm r ON r.profile_id = s.stream_id WHERE s.stream_id IN (?*)"
)
_LINKS_OF_MANY = (
    "SELECT profile_id, subject_hash, namespace FROM links WHERE profile_id IN (?*) ORDER BY created_at, namespace"
)
_SNAPSHOTS_OF_MANY = (
    "SELECT profile_id, projection, projection_version, stream_version, payload FROM snapshots WHERE profile_id IN (?*)"
)
# the events of several streams, each after its own version: (stream_no, after) pairs joined on the index
_READ_AFTER = (
    "WITH want(no, after) AS (VALUES (?**))"
    " SELECT e.position, s.stream_id, e.version, e.event_key, e.type, e.recorded_at, e.payload, e.hash"
    " FROM want JOIN events e ON e.stream_no = want.no AND e.version > want.after"
    " JOIN streams s ON s.stream_no = e.stream_no ORDER BY e.stream_no, e.version"
)
_SPEND_PRIVACY = SPEND_PRIVACY.format(p="?")
# row tags (persona.integrity): the untagged rows of each table, by rowid, with the columns tagged
_UNTAGGED = {table: "SELECT rowid, " + ", ".join(columns) + " FROM [" + table + "] WHERE tag IS NULL"
             for table, columns in TAGGED.items()}
_COUNT_UNTAGGED = {table: "SELECT count(*) FROM [" + table + "] WHERE tag IS NULL" for table in TAGGED}
_SET_TAG = {table: "UPDATE [" + table + "] SET tag = ? WHERE rowid = ?" for table in TAGGED}
_UPDATE_TRIGGERS = {"audit": ("audit_is_append_only_update",), "tombstones": ("tombstones_are_final_update",)}
# the schema as verify compares it with a fresh store's (root pages differ from file to file)
_SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_stat%'"
_TOKEN_SELECT = "SELECT " + ", ".join(TABLES["api_tokens"][:-1]) + " FROM api_tokens"  # not its tag
_AUDIT_SELECT = "SELECT seq, at, token, operation, profile_id, fields, outcome, detail FROM audit"
_READ_ALL = _EVENT_SELECT + " WHERE e.position > ? ORDER BY e.position LIMIT ?"
_EXISTING_KEYS = "SELECT event_key FROM events WHERE event_key IN (?*)"
_HEADS = (
    "SELECT s.stream_id, s.stream_no, s.version, s.head, k.kek_version, k.wrapped FROM streams s"
    " LEFT JOIN keys k ON k.profile_id = s.stream_id WHERE s.stream_id IN (?*)"
)
_MERGES_TABLE = """
CREATE TABLE IF NOT EXISTS merges (edge INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT NOT NULL, b TEXT NOT NULL,
a_hash BLOB NOT NULL, b_hash BLOB NOT NULL, merged_at INTEGER NOT NULL, undone_at INTEGER);
"""
_LAGGING = (
    "SELECT p.person FROM (SELECT coalesce(m.person_id, s.stream_id) AS person, sum(s.version) AS version"
    " FROM streams s JOIN keys k ON k.profile_id = s.stream_id LEFT JOIN members m ON m.profile_id = s.stream_id"
    " GROUP BY person) p LEFT JOIN profile_index i ON i.profile_id = p.person"
    " WHERE i.version IS NULL OR i.version != p.version ORDER BY p.person"
)
_DROP_PERSON_ROWS = ("DELETE FROM profile_index WHERE profile_id IN (?*)", "DELETE FROM rfm WHERE profile_id IN (?*)",
                     "DELETE FROM predictions WHERE profile_id IN (?*)")
_STREAM_NUMBERS = "SELECT stream_id, stream_no FROM streams WHERE stream_id IN (?*)"
_PERSONS_OF = "SELECT profile_id, person_id FROM members WHERE profile_id IN (?*)"
_MEMBERS_OF = (
    "SELECT m.person_id, m.profile_id FROM members m JOIN streams s ON s.stream_id = m.profile_id"
    " WHERE m.person_id IN (?*) ORDER BY s.stream_no"
)
_MERGE_EDGES = (
    "SELECT edge, a, b, a_hash, b_hash, merged_at, undone_at FROM merges WHERE a IN (?*) UNION"
    " SELECT edge, a, b, a_hash, b_hash, merged_at, undone_at FROM merges WHERE b IN (?*)"
)
_RESOLVE = "SELECT subject_hash, profile_id FROM links WHERE subject_hash IN (?*)"
_TAGGED = "SELECT quarantine_id FROM quarantine_tags WHERE subject_hash IN (?*)"
_DELETE_QUARANTINED = (
    "DELETE FROM quarantine WHERE id IN (?*)",
    "DELETE FROM quarantine_tags WHERE quarantine_id IN (?*)",
)
# table names are constants of this module; the statements are built once
_DELETE_DERIVED = tuple("DELETE FROM [" + table + "] WHERE profile_id = ?" for table in DERIVED_TABLES)
_COUNT = {table: "SELECT count(*) FROM [" + table + "]" for table in COUNTED}
_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA wal_autocheckpoint = 500",  # pages: checkpoint at ~4 MiB, which bounds erasure's TRUNCATE
    "PRAGMA secure_delete = ON",  # deleted cells are zeroed: an erased key leaves no trace
    "PRAGMA cache_size = -131072",  # 128 MiB: the (stream, version) index outgrows the default
    "PRAGMA temp_store = MEMORY",
)


def translate(error: BaseException) -> StoreError | None:
    """persona's error for one of sqlite3's. SQLite's messages name tables and states, never
    values, but one: "Could not decode to UTF-8 column 'c' with text '…'" is never passed on."""
    if not isinstance(error, sqlite3.Error):
        return None
    text = str(error)
    if "decode" in text:
        return UndecodableValueError()
    if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreBusyError(text)
    if type(error) is sqlite3.DatabaseError:  # not a database, malformed: what SQLite says of a damaged file
        return StoreDamagedError(text)
    return StoreError(text)


def read_meta(path: Path) -> dict[str, str]:
    """The meta table of a SQLite file, opened read-only (a backup, before it is trusted);
    StoreError if it is not a database that has one."""
    try:
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return dict(probe.execute("SELECT key, value FROM meta").fetchall())
        finally:
            probe.close()
    except sqlite3.Error as e:
        raise (translate(e) or StoreError(type(e).__name__)) from e


@translating(translate)
class SQLiteRecorder:
    """A Recorder over one SQLite file. One instance per thread."""

    purges_at_once = True  # a WAL checkpoint costs little: each erasure runs it

    def __init__(self, path: Path, *, create: bool = False, busy_timeout_ms: int = 30_000) -> None:
        if not create and not path.exists():
            raise ConfigurationError("no database in the data directory; run `persona --data DIR init`")
        self.path = path
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._depth = 0
        self.commits = 0  # transactions this connection committed
        self.tagger: RowTagger | None = None  # set by Persona: without it rows stay untagged (verify says so)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        if create:
            # 8 KiB pages: measured ~8% faster appends than 4 KiB; fixed once the file exists.
            conn.execute("PRAGMA page_size = 8192")
        self.db.enable_wal()
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        self._set_busy_timeout(self.busy_timeout_ms)
        if create:
            self._create_schema()
        elif self.get_meta("schema_version") != SCHEMA_VERSION:
            raise ConfigurationError("the database was not made by this version of persona")
        self._create_derived_schema()
        self._create_access_schema()
        self._create_merge_schema()
        self._create_model_schema()
        self._upgrade()

    def _upgrade(self) -> None:
        """Columns added since the store was made (COLUMNS_ADDED), once, under the write lock."""
        if int(self.get_meta("schema_revision") or 1) >= SCHEMA_REVISION:
            return
        with self.transaction():
            for _, table, column, declaration in COLUMNS_ADDED:
                present = {row[1] for row in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
                if column not in present:  # constant names of persona.store.base, never input
                    self.conn.execute(f"ALTER TABLE [{table}] ADD COLUMN {column} {declaration}")
            for statement in UNTAGGED_INDEXES:
                self.conn.execute(statement)
            self.set_meta("schema_revision", str(SCHEMA_REVISION))

    def _create_schema(self) -> None:
        db = self.db
        with self.transaction():
            db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db.table("events").create(
                {
                    "position": int,
                    "stream_no": int,
                    "version": int,
                    "event_key": bytes,
                    "type": str,
                    "recorded_at": int,
                    "payload": bytes,
                    "hash": bytes,
                },
                pk="position",
                not_null={"stream_no", "version", "event_key", "type", "recorded_at", "payload", "hash"},
                if_not_exists=True,
            )
            db.table("events").create_index(["stream_no", "version"], unique=True, if_not_exists=True)
            db.table("events").create_index(["event_key"], unique=True, if_not_exists=True)
            db.table("streams").create(
                {"stream_no": int, "stream_id": str, "version": int, "head": bytes, "created_at": int},
                pk="stream_no",
                not_null={"stream_id", "version", "head", "created_at"},
                if_not_exists=True,
            )
            db.table("streams").create_index(["stream_id"], unique=True, if_not_exists=True)
            db.table("keys").create(
                {"profile_id": str, "kek_version": int, "wrapped": bytes},
                pk="profile_id",
                not_null={"kek_version", "wrapped"},
                if_not_exists=True,
            )
            db.table("system_keys").create(
                {"name": str, "kek_version": int, "wrapped": bytes},
                pk="name",
                not_null={"kek_version", "wrapped"},
                if_not_exists=True,
            )
            db.table("links").create(
                {"subject_hash": bytes, "profile_id": str, "namespace": str, "created_at": int},
                pk="subject_hash",
                not_null={"profile_id", "namespace", "created_at"},
                if_not_exists=True,
            )
            db.table("links").create_index(["profile_id"], if_not_exists=True)
            db.table("tombstones").create(
                {"profile_id": str, "erased_at": int, "events": int},
                pk="profile_id",
                not_null={"erased_at", "events"},
                if_not_exists=True,
            )
            db.table("quarantine").create(
                {
                    "id": int,
                    "recorded_at": int,
                    "origin": str,
                    "line": int,
                    "reason": str,
                    "size": int,
                    "content": bytes,
                    "content_hash": bytes,
                    "expires_at": int,
                },
                pk="id",
                if_not_exists=True,
            )
            db.table("quarantine").create_index(["content_hash"], unique=True, if_not_exists=True)
            db.table("quarantine").create_index(["expires_at"], if_not_exists=True)
            db.table("quarantine_tags").create(
                {"quarantine_id": int, "subject_hash": bytes},
                pk=("subject_hash", "quarantine_id"),
                if_not_exists=True,
            )
            self._run_script(_TRIGGERS)
            self.set_meta("schema_version", SCHEMA_VERSION)

    def _create_derived_schema(self) -> None:
        """Read models and snapshots: disposable, rebuilt from the log (additive, so made on open)."""
        if "rfm" in self.db.table_names():
            return
        db = self.db
        with self.transaction():
            db.table("snapshots").create(
                {"profile_id": str, "projection": str, "projection_version": int, "stream_version": int,
                 "payload": bytes},
                pk=("profile_id", "projection"),
                not_null={"projection_version", "stream_version", "payload"},
                if_not_exists=True,
            )
            db.table("profile_index").create(
                {"profile_id": str, "version": int, "doc": str},
                pk="profile_id",
                not_null={"version", "doc"},
                if_not_exists=True,
            )
            db.table("rfm").create(
                {"profile_id": str, "r": int, "f": int, "m": int},
                pk="profile_id",
                not_null={"r", "f", "m"},
                if_not_exists=True,
            )

    def _create_merge_schema(self) -> None:
        """Merges of profiles found to be one person (additive, so made on open).

        `merges` holds each join (the two streams and the keyed hashes of the identifiers
        whose link made it; undone ones are kept, so the same wrong link is not made again);
        `members` maps each stream of a merged person to the person's id (its oldest stream).
        Both are identity tables, like `links`: erasure deletes the person's rows.
        """
        if "members" in self.db.table_names():
            return
        db = self.db
        with self.transaction():
            # AUTOINCREMENT: a merge's number is never reused, even after an erasure deleted the newest
            self._run_script(_MERGES_TABLE)
            db.table("merges").create_index(["a"], if_not_exists=True)
            db.table("merges").create_index(["b"], if_not_exists=True)
            db.table("members").create({"profile_id": str, "person_id": str}, pk="profile_id",
                                       not_null={"person_id"}, if_not_exists=True)
            db.table("members").create_index(["person_id"], if_not_exists=True)

    def _create_model_schema(self) -> None:
        """The model registry (population-level: sealed skops files, metrics, training windows),
        who each version was trained on (named in erasure receipts; a person's rows go with
        them), and the predictions read model (additive, so made on open)."""
        if "predictions" in self.db.table_names():
            return
        db = self.db
        with self.transaction():
            db.table("models").create(
                {"name": str, "version": int, "created_at": int, "status": str, "promoted_at": int,
                 "stale": str, "drift": str, "meta": str, "sha256": str, "blob": bytes},
                pk=("name", "version"),
                not_null={"created_at", "status", "meta", "sha256", "blob"},
                if_not_exists=True,
            )
            db.table("model_people").create(
                {"profile_id": str, "name": str, "version": int}, pk=("profile_id", "name", "version"),
                if_not_exists=True,
            )
            db.table("predictions").create(
                {"profile_id": str, "model": str, "version": int, "computed_at": int, "doc": str},
                pk=("profile_id", "model"),
                not_null={"version", "computed_at", "doc"},
                if_not_exists=True,
            )

    def _run_script(self, script: str) -> None:
        """Constant statements of this module, one by one (inside the caller's transaction)."""
        for statement in script.strip().split(";\n"):
            if statement.strip():
                self.conn.execute(statement if statement.endswith(";") else statement + ";")

    def _create_access_schema(self) -> None:
        """API tokens (hashes only) and the append-only audit log (additive, so made on open)."""
        if "audit" in self.db.table_names():
            return
        db = self.db
        with self.transaction():
            db.table("api_tokens").create(
                {"name": str, "digest": bytes, "scopes": str, "created_at": int, "revoked_at": int,
                 "rate_per_s": float, "epsilon_budget": float, "epsilon_spent": float},
                pk="name",
                not_null={"digest", "scopes", "created_at", "rate_per_s", "epsilon_budget", "epsilon_spent"},
                if_not_exists=True,  # and the columns of COLUMNS_ADDED, by _upgrade
            )
            db.table("api_tokens").create_index(["digest"], unique=True, if_not_exists=True)
            db.table("audit").create(
                {"seq": int, "at": int, "token": str, "operation": str, "profile_id": str, "fields": str},
                pk="seq",
                not_null={"at", "token", "operation", "profile_id", "fields"},
                if_not_exists=True,
            )
            db.table("audit").create_index(["profile_id"], if_not_exists=True)
            self._run_script(_ACCESS_TRIGGERS)

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[None]:
        if self._depth:
            if durable:
                raise ConfigurationError("a durable transaction cannot nest in another")
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.conn.in_transaction:  # a BEGIN whose caller was interrupted (Ctrl+C) before it could know
            self.conn.execute("ROLLBACK")
        if durable:  # WAL synced at this COMMIT: it and every earlier commit survive a power cut
            self.conn.execute("PRAGMA synchronous = FULL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._retag()
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            self.commits += 1
        finally:
            if durable:
                self.conn.execute(_PRAGMAS[0])

    def _tag(self, table: str, values: Sequence[object]) -> bytes | None:
        return None if self.tagger is None else self.tagger(table, values)

    def _retag(self) -> None:
        """Tag the rows this transaction wrote (inserted, or updated with tag NULL), before COMMIT."""
        if self.tagger is None:
            return
        for table in RETAGGED:
            rows = self.conn.execute(_UNTAGGED[table]).fetchall()
            if rows:
                self.conn.executemany(_SET_TAG[table], [(self.tagger(table, row[1:]), row[0]) for row in rows])

    def adopt_tags(self) -> int:
        """Tag every untagged row as it stands (once, when a store made before tags is opened): the
        append-only tables' UPDATE triggers are lifted for it, and put back in the same transaction."""
        if self.tagger is None:
            raise ConfigurationError("row tags need the key file")
        adopted = 0
        with self.transaction():
            for table in TAGGED_ON_INSERT:
                rows = self.conn.execute(_UNTAGGED[table]).fetchall()
                if rows:
                    for trigger in _UPDATE_TRIGGERS[table]:
                        self.conn.execute("DROP TRIGGER IF EXISTS " + trigger)  # constant names
                    self.conn.executemany(_SET_TAG[table], [(self.tagger(table, row[1:]), row[0]) for row in rows])
                    adopted += len(rows)
            self._run_script(_TRIGGERS)
            self._run_script(_ACCESS_TRIGGERS)
            for table in RETAGGED:  # (meta's rows too, uncounted: every store has some, a new one too)
                if table != "meta":
                    adopted += int(self.conn.execute(_COUNT_UNTAGGED[table]).fetchone()[0])
            self.set_meta(ADOPTED, "1")
        return adopted

    def in_transaction(self) -> bool:
        """True inside `transaction()`: a nested one commits (or rolls back) with the outermost."""
        return self._depth > 0

    def _set_busy_timeout(self, ms: int) -> None:
        """PRAGMA takes no bound parameters: the value is forced to an integer first."""
        self.conn.execute("PRAGMA busy_timeout = " + str(int(ms)))

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite's PRAGMA data_version)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",  # a new row: untagged (and before the
            # column exists, in a store being made)
            (key, value),
        )

    # -- events --------------------------------------------------------------------------
    def existing_event_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for part in _chunks(keys):
            sql = _expand(_EXISTING_KEYS, len(part))
            found.update(row[0] for row in self.conn.execute(sql, part))
        return found

    def insert_events(self, rows: Sequence[tuple[int, int, bytes, str, int, bytes, bytes]]) -> None:
        """rows: (stream_no, version, event_key, type, recorded_at, payload, hash)."""
        try:
            self.conn.executemany(
                "INSERT INTO events (stream_no, version, event_key, type, recorded_at, payload, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as e:
            if "event_key" in str(e):
                raise DuplicateEventError("an event id is already in the log") from e
            raise ConcurrencyError.unseen() from e

    def last_position(self) -> int:
        row = self.conn.execute("SELECT max(position) FROM events").fetchone()
        return int(row[0] or 0)

    def read_stream(self, stream_id: str, after_version: int = 0) -> Iterator[StoredEvent]:
        cursor = self.conn.execute(
            _READ_STREAM,
            (stream_id, after_version),
        )
        yield from map(StoredEvent._make, cursor)

    def read_streams(self, stream_numbers: Sequence[int]) -> Iterator[StoredEvent]:
        """Every event of these streams (by Head.no), stream by stream, each in version order."""
        ordered = sorted(stream_numbers)
        for start in range(0, len(ordered), CHUNK):
            part = ordered[start : start + CHUNK]
            sql = _expand(_READ_STREAMS, len(part))
            yield from map(StoredEvent._make, self.conn.execute(sql, part))

    def read_page(self, stream_id: str, before_version: int, limit: int,
                  types: Sequence[str] = ()) -> list[StoredEvent]:
        """Up to `limit` events of one stream older than `before_version`, newest first."""
        if types:
            sql = _expand(_READ_PAGE_TYPED, len(types))
            return list(map(StoredEvent._make, self.conn.execute(sql, (stream_id, before_version, *types, limit))))
        return list(map(StoredEvent._make, self.conn.execute(_READ_PAGE, (stream_id, before_version, limit))))

    def read_page_across(self, stream_ids: Sequence[str], before_position: int, limit: int,
                         types: Sequence[str] = ()) -> list[StoredEvent]:
        """Up to `limit` events of several streams (a merged person) recorded before a position,
        newest first."""
        ids = ",".join("?" * len(stream_ids))
        sql = _EVENT_SELECT + " WHERE s.stream_id IN (" + ids + ") AND e.position < ?"
        if types:
            sql += " AND e.type IN (" + ",".join("?" * len(types)) + ")"
        sql += " ORDER BY e.position DESC LIMIT ?"
        return list(map(StoredEvent._make, self.conn.execute(sql, (*stream_ids, before_position, *types, limit))))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        cursor = self.conn.execute(
            _READ_ALL,
            (after_position, limit),
        )
        return list(map(StoredEvent._make, cursor))

    def read_log(self, after_position: int, limit: int) -> list[tuple[int, int, int, bytes, str, int, bytes]]:
        return self.conn.execute(
            "SELECT position, stream_no, version, event_key, type, recorded_at, payload FROM events"
            " WHERE position > ? ORDER BY position LIMIT ?", (after_position, limit)).fetchall()

    def stream_names(self, stream_numbers: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        numbers = list(stream_numbers)
        for start in range(0, len(numbers), CHUNK):
            part = numbers[start : start + CHUNK]
            sql = _expand("SELECT stream_no, stream_id FROM streams WHERE stream_no IN (?*)", len(part))
            out.update(self.conn.execute(sql, part).fetchall())
        return out

    def scan_chains(self) -> Iterator[StoredEvent]:
        """Every event, stream by stream, each stream in version order."""
        cursor = self.conn.execute(_SCAN_CHAINS)
        yield from map(StoredEvent._make, cursor)

    # -- streams and keys ----------------------------------------------------------------
    def heads(self, stream_ids: Iterable[str]) -> dict[str, Head]:
        ids = list(stream_ids)
        out: dict[str, Head] = {}
        for part in _chunks(ids):
            sql = _expand(_HEADS, len(part))
            for sid, no, version, head, kek_version, wrapped in self.conn.execute(sql, part):
                out[sid] = Head(no, version, head, kek_version, wrapped)
        return out

    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]:
        """rows: (profile_id, genesis hash, kek_version, wrapped DEK, created_at); returns stream numbers."""
        self.conn.executemany(
            "INSERT INTO streams (stream_id, version, head, created_at) VALUES (?, 0, ?, ?)",
            [(pid, genesis, created) for pid, genesis, _, _, created in rows],
        )
        ids = [row[0] for row in rows]
        found: dict[str, int] = {}
        for part in _chunks(ids):
            found.update(self.conn.execute(_expand(_STREAM_NUMBERS, len(part)), part).fetchall())
        numbers = [found[pid] for pid in ids]
        keys = [(pid, kek_version, wrapped) for pid, _, kek_version, wrapped, _ in rows]
        self.conn.executemany("INSERT INTO keys (profile_id, kek_version, wrapped, tag) VALUES (?, ?, ?, ?)",
                              [(*key, self._tag("keys", key)) for key in keys])  # tagged here, not at COMMIT
        return numbers

    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None:
        """rows: (version, chain head, stream_no)."""
        self.conn.executemany("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?", rows)

    def created_at(self, stream_id: str) -> int:
        row = self.conn.execute("SELECT created_at FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def kek_versions_in_use(self) -> set[int]:
        rows = self.conn.execute(
            "SELECT kek_version FROM keys UNION SELECT kek_version FROM system_keys"
        ).fetchall()
        return {int(v) for (v,) in rows}

    def stream_ids(self) -> Iterator[str]:
        for (sid,) in self.conn.execute("SELECT stream_id FROM streams ORDER BY stream_id"):
            yield sid

    def wrapped_keys(self) -> Iterator[tuple[str, int, bytes]]:
        yield from self.conn.execute("SELECT profile_id, kek_version, wrapped FROM keys").fetchall()

    def rewrap(self, rows: Sequence[tuple[int, bytes, str]]) -> None:
        self.conn.executemany("UPDATE keys SET kek_version = ?, wrapped = ?, tag = NULL WHERE profile_id = ?", rows)

    def system_key(self, name: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            "SELECT kek_version, wrapped FROM system_keys WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def system_keys(self) -> list[tuple[str, int, bytes]]:
        return self.conn.execute("SELECT name, kek_version, wrapped FROM system_keys").fetchall()

    def put_system_key(self, name: str, kek_version: int, wrapped: bytes) -> None:
        self.conn.execute(
            "INSERT INTO system_keys (name, kek_version, wrapped) VALUES (?, ?, ?) ON CONFLICT (name)"
            " DO UPDATE SET kek_version = excluded.kek_version, wrapped = excluded.wrapped, tag = NULL",
            (name, kek_version, wrapped),
        )

    # -- identity links ------------------------------------------------------------------
    def resolve(self, hashes: Sequence[bytes]) -> dict[bytes, str]:
        out: dict[bytes, str] = {}
        for part in _chunks(hashes):
            sql = _expand(_RESOLVE, len(part))
            out.update(self.conn.execute(sql, part).fetchall())
        return out

    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> None:
        self.conn.executemany(
            "INSERT INTO links (subject_hash, profile_id, namespace, created_at, tag) VALUES (?, ?, ?, ?, ?)",
            [(*row, self._tag("links", row)) for row in rows],  # tagged here, not at COMMIT
        )

    def links_of(self, profile_id: str) -> list[tuple[bytes, str]]:
        return self.conn.execute(
            "SELECT subject_hash, namespace FROM links WHERE profile_id = ? ORDER BY created_at, namespace",
            (profile_id,),
        ).fetchall()

    # -- merges --------------------------------------------------------------------------
    def persons_of(self, profile_ids: Sequence[str]) -> dict[str, str]:
        """Stream -> person id, for the streams that belong to a merged person."""
        out: dict[str, str] = {}
        for part in _chunks(profile_ids):
            out.update(self.conn.execute(_expand(_PERSONS_OF, len(part)), part).fetchall())
        return out

    def members_of(self, person_ids: Sequence[str]) -> dict[str, list[str]]:
        """Person id -> its streams (oldest first), for merged persons."""
        out: dict[str, list[str]] = {}
        for part in _chunks(person_ids):
            for person, member in self.conn.execute(_expand(_MEMBERS_OF, len(part)), part):
                out.setdefault(person, []).append(member)
        return out

    def merge_edges(self, profile_ids: Sequence[str]) -> list[MergeEdge]:
        """Every merge (active or undone) touching these streams."""
        found: dict[int, MergeEdge] = {}
        for part in _chunks(profile_ids):
            for row in self.conn.execute(_expand(_MERGE_EDGES, len(part)), [*part, *part]):
                found[row[0]] = MergeEdge._make(row)
        return [found[k] for k in sorted(found)]

    def add_merge(self, a: str, b: str, a_hash: bytes, b_hash: bytes, at: int) -> int:
        row = self.conn.execute(
            "INSERT INTO merges (a, b, a_hash, b_hash, merged_at) VALUES (?, ?, ?, ?, ?) RETURNING edge",
            (a, b, a_hash, b_hash, at),
        ).fetchone()
        return int(row[0])

    def undo_merges(self, edges: Sequence[int], at: int) -> None:
        self.conn.executemany("UPDATE merges SET undone_at = ?, tag = NULL WHERE edge = ? AND undone_at IS NULL",
                              [(at, edge) for edge in edges])

    def set_members(self, rows: Sequence[tuple[str, str]], singles: Sequence[str]) -> None:
        """rows: (stream, person id) of merged persons; singles: streams that are their own person again."""
        self.conn.executemany(
            "INSERT INTO members (profile_id, person_id) VALUES (?, ?)"
            " ON CONFLICT (profile_id) DO UPDATE SET person_id = excluded.person_id, tag = NULL", rows)
        self.conn.executemany("DELETE FROM members WHERE profile_id = ?", [(pid,) for pid in singles])

    def lagging_persons(self) -> list[str]:
        """Persons whose index row is missing or older than their streams (a crashed ingest
        committed batches it never indexed): one scan of the streams."""
        return [row[0] for row in self.conn.execute(_LAGGING)]

    def drop_derived(self, profile_ids: Sequence[str]) -> None:
        """Delete the index and RFM rows of these profile ids (streams now read as part of a person)."""
        for part in _chunks(list(profile_ids)):
            for statement in _DROP_PERSON_ROWS:
                self.conn.execute(_expand(statement, len(part)), part)

    # -- erasure -------------------------------------------------------------------------
    def erase(self, profile_id: str, erased_at: int) -> dict[str, int]:
        """Delete everything that could open or point at the profile; leave a tombstone."""
        conn = self.conn
        head = conn.execute("SELECT version FROM streams WHERE stream_id = ?", (profile_id,)).fetchone()
        events = int(head[0]) if head else 0
        hashes = [h for (h, _) in self.links_of(profile_id)]
        counts = {"events": events, "links": len(hashes), "quarantined": self.purge_tagged(hashes)}
        counts["keys"] = conn.execute("DELETE FROM keys WHERE profile_id = ?", (profile_id,)).rowcount
        conn.execute("DELETE FROM links WHERE profile_id = ?", (profile_id,))
        counts["merges"] = conn.execute("DELETE FROM merges WHERE a = ?1 OR b = ?1", (profile_id,)).rowcount
        conn.execute("DELETE FROM members WHERE profile_id = ?", (profile_id,))
        derived = 0
        for statement in _DELETE_DERIVED:
            derived += conn.execute(statement, (profile_id,)).rowcount
        counts["derived_rows"] = derived
        conn.execute("DELETE FROM model_people WHERE profile_id = ?", (profile_id,))
        conn.execute(
            "INSERT OR IGNORE INTO tombstones (profile_id, erased_at, events, tag) VALUES (?, ?, ?, ?)",
            (profile_id, erased_at, events, self._tag("tombstones", (profile_id, erased_at, events))),
        )
        return counts

    # -- models ----------------------------------------------------------------------------
    def next_model_version(self, name: str) -> int:
        row = self.conn.execute("SELECT max(version) FROM models WHERE name = ?", (name,)).fetchone()
        return int(row[0] or 0) + 1

    def add_model(self, name: str, version: int, created_at: int, meta: str, sha256: str, blob: bytes,
                  people: Sequence[str]) -> None:
        """A new version of a model, with who it was trained on."""
        self.conn.execute(
            "INSERT INTO models (name, version, created_at, status, meta, sha256, blob)"
            " VALUES (?, ?, ?, 'candidate', ?, ?, ?)", (name, version, created_at, meta, sha256, blob))
        self.conn.executemany("INSERT OR IGNORE INTO model_people (profile_id, name, version) VALUES (?, ?, ?)",
                              [(pid, name, version) for pid in people])

    def model_rows(self, name: str | None = None
                   ) -> list[tuple[str, int, int, str, int | None, str | None, str | None, str, str]]:
        """(name, version, created_at, status, promoted_at, stale, drift, meta, sha256), newest first per name."""
        sql = "SELECT name, version, created_at, status, promoted_at, stale, drift, meta, sha256 FROM models"
        if name is None:
            return self.conn.execute(sql + " ORDER BY name, version DESC").fetchall()
        return self.conn.execute(sql + " WHERE name = ? ORDER BY version DESC", (name,)).fetchall()

    def model_blob(self, name: str, version: int) -> tuple[str, bytes] | None:
        row = self.conn.execute("SELECT sha256, blob FROM models WHERE name = ? AND version = ?",
                                (name, version)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def promote_model(self, name: str, version: int, at: int) -> None:
        """This version serves; the one that served before is kept as 'retired'."""
        self.conn.execute("UPDATE models SET status = 'retired', tag = NULL WHERE name = ? AND status = 'promoted'",
                          (name,))
        self.conn.execute("UPDATE models SET status = 'promoted', promoted_at = ?, tag = NULL"
                          " WHERE name = ? AND version = ?",
                          (at, name, version))

    def set_model_status(self, name: str, version: int, status: str) -> None:
        self.conn.execute("UPDATE models SET status = ?, tag = NULL WHERE name = ? AND version = ?",
                          (status, name, version))

    def set_model_drift(self, name: str, version: int, drift: str) -> None:
        self.conn.execute("UPDATE models SET drift = ?, tag = NULL WHERE name = ? AND version = ?",
                          (drift, name, version))

    def model_meta(self) -> list[tuple[str, int, str, str | None]]:
        return [(str(n), int(v), str(m), None if d is None else str(d))
                for n, v, m, d in self.conn.execute("SELECT name, version, meta, drift FROM models").fetchall()]

    def replace_model_meta(self, name: str, version: int, meta: str | None, drift: str | None) -> None:
        self.conn.execute("UPDATE models SET meta = ?, drift = ? WHERE name = ? AND version = ?",
                          (meta, drift, name, version))

    def models_trained_on(self, profile_ids: Sequence[str]) -> list[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for part in _chunks(profile_ids):
            sql = _expand("SELECT DISTINCT name, version FROM model_people WHERE profile_id IN (?*)", len(part))
            found.update((str(n), int(v)) for n, v in self.conn.execute(sql, part))
        return sorted(found)

    def mark_models_stale(self, versions: Sequence[tuple[str, int]], reason: str) -> None:
        self.conn.executemany("UPDATE models SET stale = ?, tag = NULL WHERE name = ? AND version = ?",
                              [(reason, n, v) for n, v in versions])

    def put_predictions(self, rows: Sequence[tuple[str, str, int, int, str]], *, model: str | None = None) -> None:
        """rows: (profile_id, model, version, computed_at, doc). With `model`, its old rows go first."""
        if model is not None:
            self.conn.execute("DELETE FROM predictions WHERE model = ?", (model,))
        self.conn.executemany(
            "INSERT INTO predictions (profile_id, model, version, computed_at, doc) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (profile_id, model) DO UPDATE SET version = excluded.version,"
            " computed_at = excluded.computed_at, doc = excluded.doc, tag = NULL", rows)

    def predictions_of(self, profile_ids: Sequence[str]) -> list[tuple[str, str, int, int, str]]:
        out: list[tuple[str, str, int, int, str]] = []
        for part in _chunks(profile_ids):
            sql = _expand("SELECT profile_id, model, version, computed_at, doc FROM predictions"
                          " WHERE profile_id IN (?*) ORDER BY model", len(part))
            out.extend(self.conn.execute(sql, part).fetchall())
        return out

    def purge_tagged(self, hashes: Sequence[bytes]) -> int:
        """Delete quarantined records carrying any of these identifier hashes."""
        ids: set[int] = set()
        for part in _chunks(hashes):
            sql = _expand(_TAGGED, len(part))
            ids.update(row[0] for row in self.conn.execute(sql, part))
        self._delete_quarantined(sorted(ids))
        return len(ids)

    def _delete_quarantined(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            for statement in _DELETE_QUARANTINED:
                self.conn.execute(_expand(statement, len(part)), part)

    def tombstone(self, profile_id: str) -> int | None:
        row = self.conn.execute("SELECT erased_at FROM tombstones WHERE profile_id = ?", (profile_id,)).fetchone()
        return None if row is None else int(row[0])

    def erasure_mark(self) -> int:
        """Changes whenever a profile is erased (the newest tombstone's row number)."""
        return int(self.conn.execute("SELECT coalesce(max(rowid), 0) FROM tombstones").fetchone()[0])

    def tombstones(self) -> Iterator[tuple[str, int]]:
        yield from self.conn.execute("SELECT profile_id, erased_at FROM tombstones ORDER BY erased_at").fetchall()

    def checkpoint(self, wait_s: float = 5.0) -> bool:
        """Truncate the WAL so no old page survives there.

        A reader holding an old snapshot blocks this; SQLite's busy handler retries for
        up to `wait_s`. Returns False if the WAL could not be truncated in that time.
        """
        self._set_busy_timeout(int(wait_s * 1000))
        try:
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._set_busy_timeout(self.busy_timeout_ms)
        return bool(busy == 0)

    @contextmanager
    def purge_lock(self) -> Iterator[bool]:
        yield True  # checkpoints may run side by side

    def purge(self, wait_s: float = 5.0, *, rewrite: bool = False) -> str | None:
        """The checkpoint: secure_delete already zeroed the deleted cells in place."""
        return None if self.checkpoint(wait_s) else "a reader holds the WAL"

    # -- snapshots and read models ------------------------------------------------------
    def snapshots_of(self, profile_id: str) -> dict[str, tuple[int, int, bytes]]:
        """projection -> (projection version, stream version, sealed state)."""
        rows = self.conn.execute(
            "SELECT projection, projection_version, stream_version, payload FROM snapshots WHERE profile_id = ?",
            (profile_id,),
        ).fetchall()
        return {name: (pv, sv, bytes(payload)) for name, pv, sv, payload in rows}

    def snapshots_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int, bytes]]]:
        """profile -> projection -> (projection version, stream version, sealed state)."""
        out: dict[str, dict[str, tuple[int, int, bytes]]] = {}
        for part in _chunks(profile_ids):
            for pid, name, pv, sv, payload in self.conn.execute(_expand(_SNAPSHOTS_OF_MANY, len(part)), part):
                out.setdefault(pid, {})[name] = (pv, sv, bytes(payload))
        return out

    def read_after(self, wanted: Sequence[tuple[int, int]]) -> Iterator[StoredEvent]:
        """Events of several streams (Head.no), each after its own version, stream by stream."""
        for start in range(0, len(wanted), CHUNK // 2):
            part = wanted[start : start + CHUNK // 2]
            flat = [value for pair in part for value in pair]
            yield from map(StoredEvent._make, self.conn.execute(_expand_pairs(_READ_AFTER, len(part)), flat))

    # Derived rows are written only for profiles that still hold a key (checked inside the
    # writing transaction: an erasure committed by another process since the rows were
    # computed wins), and never replace newer ones (two processes refreshing at once).
    def put_snapshots(self, rows: Sequence[tuple[str, str, int, int, bytes]]) -> None:
        """rows: (profile_id, projection, projection version, stream version, sealed state)."""
        self.conn.executemany(
            "INSERT INTO snapshots (profile_id, projection, projection_version, stream_version, payload, tag)"
            " SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = ?1)"
            " ON CONFLICT (profile_id, projection) DO UPDATE SET"
            " projection_version = excluded.projection_version, stream_version = excluded.stream_version,"
            " payload = excluded.payload, tag = excluded.tag"
            " WHERE excluded.projection_version > snapshots.projection_version"
            " OR (excluded.projection_version = snapshots.projection_version"
            " AND excluded.stream_version >= snapshots.stream_version)",
            [(*row, self._tag("snapshots", row)) for row in rows],  # tagged here: no second write of each
        )

    def put_index(self, rows: Sequence[tuple[str, int, str]]) -> None:
        """rows: (profile_id, version, JSON document of the profile's read-model values)."""
        self.conn.executemany(
            "INSERT INTO profile_index (profile_id, version, doc, tag)"
            " SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = ?1)"
            " ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version, doc = excluded.doc, tag = excluded.tag"
            " WHERE excluded.version >= profile_index.version",
            [(*row, self._tag("profile_index", row)) for row in rows],  # tagged here: no second write of each
        )

    def put_rfm(self, rows: Sequence[tuple[str, int, int, int]]) -> None:
        """Replace every RFM score: (profile_id, r, f, m)."""
        self.conn.execute("DELETE FROM rfm")
        self.conn.executemany(
            "INSERT INTO rfm (profile_id, r, f, m) SELECT ?1, ?2, ?3, ?4"
            " WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = ?1)",
            rows,
        )

    def change_rfm(self, rows: Sequence[tuple[str, int, int, int]], gone: Sequence[str]) -> None:
        self.conn.executemany("DELETE FROM rfm WHERE profile_id = ?", [(pid,) for pid in gone])
        self.conn.executemany(
            "INSERT INTO rfm (profile_id, r, f, m) SELECT ?1, ?2, ?3, ?4"
            " WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = ?1) ON CONFLICT (profile_id)"
            " DO UPDATE SET r = excluded.r, f = excluded.f, m = excluded.m, tag = NULL",
            rows,
        )

    def rfm_of(self, profile_id: str) -> dict[str, int] | None:
        row = self.conn.execute("SELECT r, f, m FROM rfm WHERE profile_id = ?", (profile_id,)).fetchone()
        return None if row is None else {"r": row[0], "f": row[1], "m": row[2]}

    def rfm_scores(self) -> dict[str, dict[str, int]]:
        rows = self.conn.execute("SELECT profile_id, r, f, m FROM rfm").fetchall()
        return {pid: {"r": r, "f": f, "m": m} for pid, r, f, m in rows}

    def index_size(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM profile_index").fetchone()[0])

    def index_rows(self, after: str = "", limit: int = -1) -> list[tuple[str, int, str, int | None, int | None,
                                                                     int | None]]:
        """Read-model rows with RFM scores (profile_id, version, doc, r, f, m) in profile id order,
        after an id; a negative limit reads them all."""
        return self.conn.execute(
            "SELECT i.profile_id, i.version, i.doc, r.r, r.f, r.m FROM profile_index i"
            " LEFT JOIN rfm r ON r.profile_id = i.profile_id WHERE i.profile_id > ? ORDER BY i.profile_id LIMIT ?",
            (after, limit),
        ).fetchall()

    def profile_rows(self, profile_ids: Sequence[str]) -> list[ProfileRow]:
        """What the API shows of each profile, in one query per chunk of ids."""
        out: list[ProfileRow] = []
        for part in _chunks(profile_ids):
            out.extend(map(ProfileRow._make, self.conn.execute(_expand(_PROFILE_ROWS, len(part)), part)))
        return out

    def links_of_many(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        """(profile_id, subject hash, namespace) of each profile's identifiers."""
        out: list[tuple[str, bytes, str]] = []
        for part in _chunks(profile_ids):
            out.extend(self.conn.execute(_expand(_LINKS_OF_MANY, len(part)), part).fetchall())
        return out

    def clear_derived(self, projection: str | None = None) -> None:
        """Empty the profile index and the snapshots (of one projection, or all) before a rebuild."""
        self.conn.execute("DELETE FROM profile_index")
        self.conn.execute("DELETE FROM rfm")
        self.conn.execute("DELETE FROM predictions")
        if projection is None:
            self.conn.execute("DELETE FROM snapshots")
        else:
            self.conn.execute("DELETE FROM snapshots WHERE projection = ?", (projection,))

    # -- quarantine ----------------------------------------------------------------------
    def quarantine(
        self,
        rows: Sequence[tuple[int, str, int, str, int, bytes, bytes, int]],
        tags: Sequence[Sequence[bytes]],
    ) -> int:
        stored = 0
        for row, row_tags in zip(rows, tags, strict=True):
            held = self.conn.execute("SELECT id FROM quarantine WHERE content_hash = ?", (row[6],)).fetchone()
            if held is None:
                qid = self.conn.execute(
                    "INSERT INTO quarantine (recorded_at, origin, line, reason, size, content,"
                    " content_hash, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
                stored += 1
            else:  # the same bad record, refused again: this run's reason
                qid = held[0]
                self.conn.execute("UPDATE quarantine SET recorded_at = ?, reason = ?, expires_at = ?, tag = NULL"
                                  " WHERE id = ?", (row[0], row[3], row[7], qid))
            self.conn.executemany(
                "INSERT OR IGNORE INTO quarantine_tags (quarantine_id, subject_hash) VALUES (?, ?)",
                [(qid, tag) for tag in row_tags],
            )
        return stored

    def quarantined(self) -> list[QuarantinedRecord]:
        rows = self.conn.execute(
            "SELECT id, recorded_at, origin, line, reason, size, expires_at FROM quarantine ORDER BY id"
        ).fetchall()
        return [QuarantinedRecord(*row) for row in rows]

    def quarantined_content(self, qid: int) -> bytes | None:
        row = self.conn.execute("SELECT content FROM quarantine WHERE id = ?", (qid,)).fetchone()
        return None if row is None else bytes(row[0])

    def purge_quarantine(self, now: int) -> int:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM quarantine WHERE expires_at <= ?", (now,))]
        self._delete_quarantined(ids)
        return len(ids)

    def drop_quarantined(self, ids: Sequence[int]) -> None:
        self._delete_quarantined(sorted(set(ids)))

    # -- API access ----------------------------------------------------------------------
    def put_token(self, row: tuple[str, bytes, str, int, float, float, float, str, str]) -> None:
        try:
            self.conn.execute(
                "INSERT INTO api_tokens (name, digest, scopes, created_at, rate_per_s, epsilon_budget,"
                " delta_budget, sources, types, epsilon_spent, delta_spent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                row,
            )
        except sqlite3.IntegrityError:
            raise ConfigurationError(f"a token named {row[0]!r} already exists") from None

    def token_by_digest(self, digest: bytes) -> TokenRow | None:
        row = self.conn.execute(_TOKEN_SELECT + " WHERE digest = ? AND revoked_at IS NULL", (digest,)).fetchone()
        return None if row is None else TokenRow._make(row)

    def tokens(self) -> list[TokenRow]:
        return list(map(TokenRow._make, self.conn.execute(_TOKEN_SELECT + " ORDER BY created_at, name")))

    def revoke_token(self, name: str, now: int) -> bool:
        cursor = self.conn.execute(
            "UPDATE api_tokens SET revoked_at = ?, tag = NULL WHERE name = ? AND revoked_at IS NULL", (now, name))
        return cursor.rowcount == 1

    def spend_privacy(self, name: str, epsilon: float, delta: float) -> tuple[float, float] | None:
        row = self.conn.execute(_SPEND_PRIVACY, privacy_charge(name, epsilon, delta)).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def append_audit(self, rows: Sequence[tuple[int, str, str, str, str, str, str]]) -> None:
        """rows: (at, writer, operation, profile_id, comma-separated fields, outcome, detail)."""
        self.conn.executemany("INSERT INTO audit (at, token, operation, profile_id, fields, outcome, detail, tag)"
                              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*row, self._tag("audit", row)) for row in rows])

    def audit_rows(self, *, after: int = 0, limit: int = 1000, profile_id: str | None = None
                   ) -> list[tuple[int, int, str, str, str, str, str, str]]:
        """(seq, at, writer, operation, profile_id, fields, outcome, detail) in order of writing."""
        if profile_id is None:
            return self.conn.execute(_AUDIT_SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return self.conn.execute(_AUDIT_SELECT + " WHERE seq > ? AND profile_id = ? ORDER BY seq LIMIT ?",
                                 (after, profile_id, limit)).fetchall()

    # -- change feed -------------------------------------------------------------------
    def wait_for_events(self, after_position: int, timeout: float) -> int:
        """Block until the log grows past a position or `timeout` passes; the newest position.

        SQLite has no notifications: this polls data_version (a cheap PRAGMA) every 50 ms
        and reads the position only when another connection has committed."""
        deadline = time.monotonic() + timeout
        seen = self.data_version()  # first: a commit between the two reads still shows as a change
        newest = self.last_position()
        while newest <= after_position and time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0)))
            now = self.data_version()
            if now != seen:
                seen, newest = now, self.last_position()
        return newest

    # -- maintenance ---------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: in WAL mode every read inside it sees one moment of the store."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def dump(self, table: str) -> Iterator[list[tuple[object, ...]]]:
        columns = TABLES[table]  # a KeyError for anything else: names are never taken from input
        cursor = self.conn.execute("SELECT " + ", ".join(columns) + " FROM [" + table + "] ORDER BY rowid")
        while page := cursor.fetchmany(5_000):
            yield page

    def load(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Rows as dump() gives them; a meta key or a token already there is replaced (a restore
        puts the replaced store's tokens over the backup's)."""
        columns = TABLES[table]
        verb = "INSERT OR REPLACE" if table in ("meta", "api_tokens") else "INSERT"
        self.conn.executemany(verb + " INTO [" + table + "] (" + ", ".join(columns) + ") VALUES ("
                              + ",".join("?" * len(columns)) + ")", rows)

    def finish_load(self) -> None:
        """Nothing to do: SQLite numbers new rows after the largest (AUTOINCREMENT remembers it)."""

    def backup(self, dest: Path, tables: Sequence[str]) -> None:
        """The schema made in DEST, then the tables copied by SQLite itself (no row passes through
        Python), in one read transaction of this database."""
        SQLiteRecorder(dest, create=True).close()
        self.conn.execute("ATTACH DATABASE ? AS copy", (str(dest),))
        try:
            with self.snapshot():
                for table in tables:
                    columns = ", ".join(TABLES[table])  # a KeyError for anything else: names are constants
                    verb = "INSERT OR REPLACE" if table == "meta" else "INSERT"
                    self.conn.execute(verb + " INTO copy.[" + table + "] (" + columns + ") SELECT " + columns
                                      + " FROM main.[" + table + "]")
        finally:
            self.conn.execute("DETACH DATABASE copy")

    def single_file(self) -> None:
        """Leave WAL mode: the file alone holds the database (a backup, for its readers too)."""
        self.conn.execute("PRAGMA journal_mode = DELETE")

    def damage(self) -> list[str]:
        """What SQLite's own check finds wrong with the file: its b-trees, indexes and constraints."""
        found = [str(row[0]) for row in self.conn.execute("PRAGMA integrity_check(20)")]
        if found == ["ok"]:
            return []  # the messages name pages and indexes, never values, but a count says enough
        return [f"the database file is damaged ({len(found)} problem(s) in its b-trees or indexes)"]

    def schema_problems(self) -> list[str]:
        """Every difference between this store's schema and the one this code makes: a table,
        index or trigger altered, added or removed."""
        reference = SQLiteRecorder(Path(":memory:"), create=True)
        try:
            want = set(reference.conn.execute(_SCHEMA).fetchall())
        finally:
            reference.close()
        have = set(self.conn.execute(_SCHEMA).fetchall())
        problems = [f"the schema's {kind} {name!r} is not the one persona makes"
                    for kind, name, *_ in sorted(have - want, key=str)]
        problems += [f"the schema's {kind} {name!r} is missing" for kind, name, *_ in sorted(want - have, key=str)
                     if (kind, name) not in {(k, n) for k, n, *_ in have}]
        return problems

    def counts(self) -> dict[str, int]:
        out = {}
        for table, statement in _COUNT.items():
            out[table] = int(self.conn.execute(statement).fetchone()[0])
        return out
