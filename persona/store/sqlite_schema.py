"""The SQLite store's schema, made by sqlite-utils: on create, and on every open the parts a
later release added (each is additive), then the columns of schema.COLUMNS_ADDED. PostgreSQL's
is plain DDL (persona.store.postgres_schema)."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from persona.store import schema
from persona.store.keyset import FILTER_BITS
from persona.store.rows import CHUNK_CAP, KEY_SIZE

log = logging.getLogger("persona.store")

# append-only, in the file: no UPDATE or DELETE of the log, the tombstones or the audit log
ACCESS_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'persona: the audit log is append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'persona: the audit log is append-only (DELETE refused)'); END;
"""

# The log (schema.TABLES "chunks", "event_keys", "key_filters"): a chunk's rowid is its first event's
# position; the key set is in generations (persona.store.keyset), each sealed one with its filter.
LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (position INTEGER PRIMARY KEY, stream_no INTEGER NOT NULL,
first_version INTEGER NOT NULL, last_version INTEGER NOT NULL, recorded_at INTEGER NOT NULL, types TEXT NOT NULL,
keys BLOB NOT NULL, payload BLOB NOT NULL, hash BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS chunks_stream ON chunks (stream_no, last_version);
CREATE TABLE IF NOT EXISTS event_keys (generation INTEGER NOT NULL, event_key BLOB NOT NULL,
PRIMARY KEY (generation, event_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_filters (generation INTEGER PRIMARY KEY, keys INTEGER NOT NULL, bits BLOB NOT NULL);
"""

# Append-only, gapless, in the file: a chunk continues its stream (first version = the stream's
# last + 1), holds 1..CHUNK_CAP events with one key and one type each, and starts after the log's
# last position (one index seek each); no UPDATE or DELETE of the log, its keys, the tombstones
# or the audit log.
TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS chunks_continue_their_stream BEFORE INSERT ON chunks
WHEN NEW.first_version != coalesce((SELECT max(last_version) FROM chunks WHERE stream_no = NEW.stream_no), 0) + 1
OR NEW.last_version < NEW.first_version OR NEW.last_version - NEW.first_version >= {CHUNK_CAP}
OR length(NEW.keys) != {KEY_SIZE} * (NEW.last_version - NEW.first_version + 1)
OR length(NEW.types) - length(replace(NEW.types, ' ', '')) != NEW.last_version - NEW.first_version
OR NEW.position <= coalesce((SELECT position + last_version - first_version FROM chunks
ORDER BY position DESC LIMIT 1), 0)
BEGIN SELECT RAISE(ABORT, 'persona: a chunk must continue its stream and the log (refused)'); END;
CREATE TRIGGER IF NOT EXISTS chunks_are_append_only_update BEFORE UPDATE ON chunks
BEGIN SELECT RAISE(ABORT, 'persona: events are append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS chunks_are_append_only_delete BEFORE DELETE ON chunks
BEGIN SELECT RAISE(ABORT, 'persona: events are append-only (DELETE refused)'); END;
CREATE TRIGGER IF NOT EXISTS event_keys_go_to_open_generations BEFORE INSERT ON event_keys
WHEN NEW.generation <= coalesce((SELECT max(generation) FROM key_filters), -1) OR length(NEW.event_key) != {KEY_SIZE}
BEGIN SELECT RAISE(ABORT, 'persona: a sealed generation of event keys takes no more keys (refused)'); END;
CREATE TRIGGER IF NOT EXISTS key_filters_seal_in_order BEFORE INSERT ON key_filters
WHEN NEW.generation != coalesce((SELECT max(generation) FROM key_filters), -1) + 1
OR NEW.keys != (SELECT count(*) FROM event_keys WHERE generation = NEW.generation)
OR length(NEW.bits) != {FILTER_BITS // 8}
BEGIN SELECT RAISE(ABORT, 'persona: generations are sealed in order, each filter over its keys (refused)'); END;
CREATE TRIGGER IF NOT EXISTS key_filters_are_append_only_update BEFORE UPDATE ON key_filters
BEGIN SELECT RAISE(ABORT, 'persona: key filters are append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS key_filters_are_append_only_delete BEFORE DELETE ON key_filters
BEGIN SELECT RAISE(ABORT, 'persona: key filters are append-only (DELETE refused)'); END;
CREATE TRIGGER IF NOT EXISTS event_keys_are_append_only_update BEFORE UPDATE ON event_keys
BEGIN SELECT RAISE(ABORT, 'persona: event keys are append-only (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS event_keys_are_append_only_delete BEFORE DELETE ON event_keys
BEGIN SELECT RAISE(ABORT, 'persona: event keys are append-only (DELETE refused)'); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_written_once BEFORE INSERT ON tombstones
WHEN EXISTS (SELECT 1 FROM tombstones WHERE profile_id = NEW.profile_id)
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_final_update BEFORE UPDATE ON tombstones
BEGIN SELECT RAISE(ABORT, 'persona: tombstones are final (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS tombstones_are_final_delete BEFORE DELETE ON tombstones
BEGIN SELECT RAISE(ABORT, 'persona: tombstones are final (DELETE refused)'); END;
"""

# the UPDATE triggers lifted while rows written before row tags are tagged (adopt_tags)
UPDATE_TRIGGERS = {"audit": ("audit_is_append_only_update",), "tombstones": ("tombstones_are_final_update",)}

_MERGES_TABLE = """
CREATE TABLE IF NOT EXISTS merges (edge INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT NOT NULL, b TEXT NOT NULL,
a_hash BLOB NOT NULL, b_hash BLOB NOT NULL, merged_at INTEGER NOT NULL, undone_at INTEGER);
"""


# Live segments (schema revision 5; made on open when missing). AUTOINCREMENT: a change's number is
# never reused, even after an erasure deleted the newest, so a follower's place stays good.
SEGMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, rule TEXT NOT NULL, created_at INTEGER NOT NULL,
created_by TEXT NOT NULL, tag BLOB);
CREATE TABLE IF NOT EXISTS segment_members (segment TEXT NOT NULL, profile_id TEXT NOT NULL, since INTEGER NOT NULL,
tag BLOB, PRIMARY KEY (segment, profile_id));
CREATE INDEX IF NOT EXISTS segment_members_profile ON segment_members (profile_id);
CREATE TABLE IF NOT EXISTS segment_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
segment TEXT NOT NULL, profile_id TEXT NOT NULL, entered INTEGER NOT NULL, tag BLOB);
CREATE INDEX IF NOT EXISTS segment_changes_profile ON segment_changes (profile_id);
CREATE INDEX IF NOT EXISTS segment_changes_at ON segment_changes (at);
"""


# Webhook destinations (schema revision 6; made on open when missing).
DESTINATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS destinations (name TEXT PRIMARY KEY, host TEXT NOT NULL, url BLOB NOT NULL,
segments TEXT NOT NULL,
fields TEXT NOT NULL, on_change TEXT NOT NULL, purpose TEXT NOT NULL, secret BLOB NOT NULL, created_at INTEGER NOT NULL,
created_by TEXT NOT NULL, tag BLOB);
CREATE TABLE IF NOT EXISTS destination_people (destination TEXT NOT NULL, profile_id TEXT NOT NULL,
first_at INTEGER NOT NULL, digest BLOB, tag BLOB, PRIMARY KEY (destination, profile_id));
CREATE INDEX IF NOT EXISTS destination_people_profile ON destination_people (profile_id);
CREATE TABLE IF NOT EXISTS deliveries (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
destination TEXT NOT NULL,
kind TEXT NOT NULL, profile_id TEXT NOT NULL, segment TEXT NOT NULL, created_at INTEGER NOT NULL,
attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, status TEXT NOT NULL, outcome TEXT NOT NULL, done_at INTEGER,
tag BLOB);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_profile ON deliveries (profile_id);
"""


class SQLiteSchema:
    """Making and upgrading the schema: a part of SQLiteRecorder."""

    if TYPE_CHECKING:
        conn: sqlite3.Connection
        upgraded: bool

        def transaction(self, *, durable: bool = False, concurrent: bool = False) -> AbstractContextManager[None]: ...
        def get_meta(self, key: str) -> str | None: ...
        def set_meta(self, key: str, value: str) -> None: ...
        def _key_set_from_log(self) -> int: ...

    def _table_names(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _tables(self) -> Any:
        """sqlite-utils over this connection, to make tables: loaded only when one is made (it
        imports NumPy, a fifth of a second that opening a store need not spend)."""
        import sqlite_utils  # heavy: loaded when a table is made

        return sqlite_utils.Database(self.conn)

    def _upgrade(self) -> None:
        """Columns added since the store was made (schema.COLUMNS_ADDED), once, under the write lock."""
        if int(self.get_meta("schema_revision") or 1) >= schema.SCHEMA_REVISION:
            return
        with self.transaction():
            for _, table, column, declaration in schema.COLUMNS_ADDED:
                present = {row[1] for row in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
                if column not in present:  # constant names of persona.store.base, never input
                    self.conn.execute(f"ALTER TABLE [{table}] ADD COLUMN {column} {declaration}")
            for statement in schema.UNTAGGED_INDEXES:
                self.conn.execute(statement)
            self.set_meta("schema_revision", str(schema.SCHEMA_REVISION))

    def _upgrade_log(self) -> None:
        """A store of an earlier format (schema.UPGRADABLE) becomes one of this format, in one
        transaction. Format 1 (one row per event): each event becomes a chunk of one, its columns
        copied as they are (sealed and chained as before, so no key is needed), and the old table
        goes. Format 2 (and 1, then): the key set is made anew in generations from the chunks' own
        key lists, and the generations the log has passed are sealed."""
        with self.transaction():
            found = self.get_meta("schema_version")
            if found not in schema.UPGRADABLE:
                return  # another process upgraded it meanwhile
            counted = "SELECT count(*) FROM events" if found == "1" else "SELECT count(*) FROM event_keys"
            events = int(self.conn.execute(counted).fetchone()[0])
            log.warning("upgrading the store's event log to format %s (%d events): once, in place",
                        schema.SCHEMA_VERSION, events)
            self.conn.execute("DROP TABLE IF EXISTS event_keys")  # its triggers with it
            self._run_script(LOG_SCHEMA)
            if found == "1":
                self.conn.execute("INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at,"
                                  " types, keys, payload, hash) SELECT position, stream_no, version, version,"
                                  " recorded_at, type, event_key, payload, hash FROM events ORDER BY position")
                self.conn.execute("DROP TABLE events")  # its triggers and indexes with it
            self._run_script(TRIGGERS)
            keys = self._key_set_from_log()
            if keys != events:
                log.warning("the key set held %d keys for %d events; it was made anew from the log", events, keys)
            self.set_meta("schema_version", schema.SCHEMA_VERSION)
            self.upgraded = True

    def _create_schema(self) -> None:
        db = self._tables()
        with self.transaction():
            db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
            self._run_script(LOG_SCHEMA)
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
            self._run_script(TRIGGERS)
            self.set_meta("schema_version", schema.SCHEMA_VERSION)

    def _create_derived_schema(self) -> None:
        """Read models and snapshots: disposable, rebuilt from the log (additive, so made on open)."""
        if "rfm" in self._table_names():
            return
        db = self._tables()
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
        if "members" in self._table_names():
            return
        db = self._tables()
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
        if "predictions" in self._table_names():
            return
        db = self._tables()
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

    def _create_segment_schema(self) -> None:
        """Live segments: definitions, memberships, changes (additive, so made on open)."""
        if "segment_changes" in self._table_names():
            return
        with self.transaction():
            self._run_script(SEGMENT_SCHEMA)

    def _create_destination_schema(self) -> None:
        """Webhook destinations, who each received, deliveries (additive, so made on open)."""
        if "deliveries" in self._table_names():
            return
        with self.transaction():
            self._run_script(DESTINATION_SCHEMA)

    def _run_script(self, script: str) -> None:
        """Constant statements of this module, one by one (inside the caller's transaction)."""
        for statement in script.strip().split(";\n"):
            if statement.strip():
                self.conn.execute(statement if statement.endswith(";") else statement + ";")

    def _create_access_schema(self) -> None:
        """API tokens (hashes only) and the append-only audit log (additive, so made on open)."""
        if "audit" in self._table_names():
            return
        db = self._tables()
        with self.transaction():
            db.table("api_tokens").create(
                {"name": str, "digest": bytes, "scopes": str, "created_at": int, "revoked_at": int,
                 "rate_per_s": float, "epsilon_budget": float, "epsilon_spent": float},
                pk="name",
                not_null={"digest", "scopes", "created_at", "rate_per_s", "epsilon_budget", "epsilon_spent"},
                if_not_exists=True,  # and the columns of schema.COLUMNS_ADDED, by _upgrade
            )
            db.table("api_tokens").create_index(["digest"], unique=True, if_not_exists=True)
            db.table("audit").create(
                {"seq": int, "at": int, "token": str, "operation": str, "profile_id": str, "fields": str},
                pk="seq",
                not_null={"at", "token", "operation", "profile_id", "fields"},
                if_not_exists=True,
            )
            db.table("audit").create_index(["profile_id"], if_not_exists=True)
            self._run_script(ACCESS_TRIGGERS)
