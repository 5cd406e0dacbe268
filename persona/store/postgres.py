"""PostgreSQL: the same store on a server database, shared by many processes and machines.

What differs from the SQLite default, and why:

- **Appends run side by side; everything else takes turns** (docs/scale.md). Every write
  transaction takes the schema's advisory write lock: shared by concurrent transactions
  (`transaction(concurrent=True)`: appending events, and writing the read models of the
  people appended to), exclusive for all others (erasure, merges asked for by hand, rebuilds,
  models, tokens…), which so still assume that nobody writes between their read and their
  write. A concurrent transaction guards what it writes itself, each invariant by the
  narrowest lock that keeps it:
  - a stream's versions and chain: its row in `streams`, locked (`heads(..., lock=True)`,
    FOR UPDATE, in stream order) before its head is read, held to COMMIT;
  - one profile per identifier: the identity link's primary key (`insert_links`, ON CONFLICT
    DO NOTHING): a writer that sees an identifier another has just linked waits for that
    commit and is told, and the append starts again from what is committed;
  - a person's read-model rows and merges: the row of the person's first stream, locked the
    same way;
  - positions: handed out under the log's own advisory lock, taken in `insert_chunks` and
    held to COMMIT, so positions still commit in order and catch-up by position never skips
    an event that commits late (segment changes, also followed by number, take the same turn).
    Only that last step of an append (the log's rows, its key set, COMMIT) is taken in turns.
  Locks are taken in one order (streams in one statement, links and read-model rows in key
  order, the turn last); a wait in a circle that still forms is ended by PostgreSQL
  (StoreConflictError), and the append or refresh runs again.
  Readers never wait for any of them. The database's own constraints and triggers still
  refuse a duplicate or missing version, or an event id already in the log, from a writer that
  ignored the locks.
- **Chunks are partitioned by a hash of the stream**, so the log splits evenly and each
  stream's rows stay together (docs/postgresql.md: the Citus layout). A unique index on a
  partitioned table must contain the partition key, so positions are kept increasing by the
  insert trigger (with an index on them), not by a unique key.
- **Append-only is enforced by triggers** that refuse UPDATE, DELETE and TRUNCATE of
  chunks, event keys, tombstones and the audit log.
- **The change feed**: a transaction that appends events sends NOTIFY on `persona_events`
  (delivered at COMMIT) with the newest position; `wait_for_events` LISTENs for it.
- **There is no secure_delete, and erasure does not vacuum.** A DELETE leaves a dead row
  until VACUUM, and VACUUM walks every index of a table, so its time follows the population:
  run per erasure (as VACUUM FULL once was) it made erasure slow and blocked readers. An
  erasure deletes the person's rows in its own transaction — gone for every query at once —
  and notes that a purge is due; one `purge()` (VACUUM with index cleanup, no exclusive lock)
  then serves every erasure of a window, off the request path (persona.purge). It waits only
  for snapshots of this database: VACUUM ignores other databases' too. VACUUM leaves no dead
  row (pg_dirtyread finds none) but does not zero the space it frees inside a page; the
  rewrite (`purge(rewrite=True)`, VACUUM FULL) does, while reads wait. WAL segments and base
  backups keep deleted rows beyond either; `persona keys rotate --retire` makes every lingering
  wrapped key useless (docs/postgresql.md).

- **Lists are bound as one array** (`= ANY(%s::text[])`), whatever their length: one round
  trip where SQLite binds a placeholder per value in chunks. Bulk writes (new streams, heads,
  snapshots, the index, RFM scores, who a model was trained on) send whole columns as arrays
  through `unnest`, and the log and copies go by COPY: each statement is a round trip, which
  SQLite, in-process, does not pay. Rows to be untagged are found by `ctid`, SQLite's by rowid.
- **Long reads page by key** (`scan_chains`, `stream_ids`), holding no cursor or transaction
  between pages; `dump` reads through a server-side cursor inside a REPEATABLE READ snapshot.
- **`data_version` is a counter** (`persona_clock`) that every write transaction bumps last,
  just before COMMIT (its row lock is held only through the commit), since PostgreSQL has no
  PRAGMA data_version; counters continue after a load by `setval`.
- **Errors lose their DETAIL line** when translated (persona.errors.StoreError): PostgreSQL
  puts a row's values there.

Everything else — the statements that differ only in placeholder or list syntax, and the
methods over them — is written once (persona.store.sql, persona.store.shared). Ids are
`text COLLATE "C"`: byte order, as in SQLite, so pages of profiles come in the same order on
both backends. Every statement is a constant with bound parameters.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql

from persona.errors import ConcurrencyError, ConfigurationError, DuplicateEventError
from persona.store.boundary import translating
from persona.store.copy import copy_store
from persona.store.postgres_pool import (
    close_pool,
    describe_error,
    is_database_error,
    is_postgres_url,
    pool_for,
    translate,
    where,
    without_password,
)
from persona.store.postgres_purge import PostgresPurge
from persona.store.postgres_schema import (
    DESTINATION_DDL,
    DROP,
    PARTITIONS,
    SCHEMA,
    SEGMENT_DDL,
    TRIGGER_NAMES,
    TRIGGERS_PRESENT,
    UPGRADE_CHUNK_CHECK,
    UPGRADE_KEYS,
    UPGRADE_LOG,
)
from persona.store.rows import ChunkRow, Head, RowTagger, StoredChunk
from persona.store.schema import (
    ADOPTED,
    COLUMNS_ADDED,
    RETAGGED,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    TABLES,
    TAGGED,
    TAGGED_ON_INSERT,
    UNTAGGED_INDEXES,
    UPGRADABLE,
)
from persona.store.shared import Row, SQLRecorder
from persona.store.sql import CHUNK_COLUMNS, Statements
from persona.store.sqlite import SQLiteRecorder

__all__ = ["PARTITIONS", "PostgresRecorder", "close_pool", "describe_error", "is_database_error", "is_postgres_url",
           "pool_for", "without_password"]  # (the pool's names, for the modules that read them here)

log = logging.getLogger("persona.store")
PAGE = 5_000  # rows per page of a long scan (keyset paging: no cursor held between pages)
CHANNEL = "persona_events"  # + a digest of the store's schema: stores in one database do not wake each other
WRITE_LOCK = 0x70657273  # 'pers' (and a hash of the schema): the advisory lock every write transaction takes
LOG_LOCK = 0x6C6F6773  # 'logs' (and the same hash): positions handed out, and committed, in turn
_LOCK_HEADS = ("SELECT s.stream_id, s.stream_no, s.version, s.head, k.kek_version, k.wrapped FROM streams s"
               " LEFT JOIN keys k ON k.profile_id = s.stream_id WHERE s.stream_id = ANY(%s::text[])"
               " ORDER BY s.stream_no FOR UPDATE OF s")  # in stream order: two writers never wait in a circle
_CLAIM_LINKS = ("INSERT INTO links (subject_hash, profile_id, namespace, created_at, tag)"
                " SELECT * FROM unnest(%s::bytea[], %s::text[], %s::text[], %s::bigint[], %s::bytea[])"
                " ON CONFLICT (subject_hash) DO NOTHING")
_SCAN_PAGE = ("SELECT c.stream_no, " + CHUNK_COLUMNS + " FROM chunks c JOIN streams s ON s.stream_no = c.stream_no"
              " WHERE (c.stream_no, c.last_version) > (%s, %s) ORDER BY c.stream_no, c.last_version LIMIT %s")
_READ_AFTER = (
    "SELECT " + CHUNK_COLUMNS + " FROM unnest(%s::bigint[], %s::integer[]) AS w(no, after)"
    " JOIN chunks c ON c.stream_no = w.no AND c.last_version > w.after JOIN streams s ON s.stream_no = c.stream_no"
    " ORDER BY c.stream_no, c.last_version"
)
# row tags (persona.integrity): the untagged rows of each table, by ctid, with the columns tagged
_UNTAGGED = {table: "SELECT ctid::text, " + ", ".join(columns) + " FROM " + table + " WHERE tag IS NULL"
             for table, columns in TAGGED.items()}
_COUNT_UNTAGGED = {table: "SELECT count(*) FROM " + table + " WHERE tag IS NULL" for table in TAGGED}
_SET_TAG = {table: "UPDATE " + table + " SET tag = %s WHERE ctid = %s::tid" for table in TAGGED}
_ANY_UNTAGGED = " UNION ALL ".join(f"SELECT '{table}' WHERE EXISTS (SELECT 1 FROM {table} WHERE tag IS NULL)"
                                   for table in RETAGGED)
_LOAD_TOKENS = ("INSERT INTO api_tokens (" + ", ".join(TABLES["api_tokens"]) + ") VALUES ("
                + ", ".join(["%s"] * len(TABLES["api_tokens"])) + ") ON CONFLICT (name) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in TABLES["api_tokens"][1:]))

# the order a dump reads each table in (its key); others by their first column
_KEY_OF = {"chunks": ("position",), "event_keys": ("generation", "event_key"),
           "quarantine_tags": ("quarantine_id", "subject_hash"),
           "snapshots": ("profile_id", "projection"), "model_people": ("profile_id", "name", "version"),
           "predictions": ("profile_id", "model"), "models": ("name", "version"),
           "segment_members": ("segment", "profile_id"), "destination_people": ("destination", "profile_id")}
_SERIALS = (("streams", "stream_no"), ("tombstones", "seq"), ("quarantine", "id"), ("merges", "edge"),
            ("audit", "seq"), ("segment_changes", "seq"), ("deliveries", "seq"))


@translating(translate)
class PostgresRecorder(SQLRecorder, PostgresPurge):
    """A Recorder over one PostgreSQL connection, taken from the process's pool. One per thread."""

    sql = Statements().formatted(p="%s", in_list="= ANY(%s::{type}[])")
    purges_at_once = False  # VACUUM's cost follows the population: one purge serves a window of erasures

    def __init__(self, url: str, *, create: bool | None = False, busy_timeout_ms: int = 30_000) -> None:
        """create: True makes a new store (refused if one is there), False opens one, None
        opens one or makes it (a restore onto a new server)."""
        self.url = url
        self.pool = pool_for(url)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._conn: psycopg.Connection[Any] | None = self.pool.getconn(timeout=busy_timeout_ms / 1000)
        self._depth = 0
        self._mine = 0  # write transactions of this connection (each bumps the clock once)
        self._appended = False  # this transaction wrote events: NOTIFY at COMMIT
        self._concurrent = False  # this transaction shares the write lock (transaction(concurrent=True))
        self._log_since: float | None = None  # when this transaction took the log's lock
        self.log_lock_s = 0.0  # seconds this connection held the log's lock (bench-writers: the serial share)
        self.commits = 0
        self.upgraded = False
        self.tagger: RowTagger | None = None  # set by Persona: without it rows stay untagged (verify says so)
        self._listener: psycopg.Connection[Any] | None = None
        self.schema = ""
        self.channel = CHANNEL
        try:
            self._settings(self.conn)
            self.schema = str(self._value("SELECT current_schema()"))
            # a channel name is at most 63 bytes: a digest of the schema, not the schema itself
            self.channel = f"{CHANNEL}_{hashlib.blake2b(self.schema.encode(), digest_size=8).hexdigest()}"
            if create is None and self._has_schema():
                self._check_version()
            elif create or create is None:
                with self.conn.transaction():  # under the write lock: two inits cannot both create
                    self._lock()
                    if self._has_schema():
                        raise ConfigurationError("the PostgreSQL database already holds a persona store")
                    for statement in SCHEMA:
                        self.conn.execute(statement)
                    self.set_meta("schema_version", SCHEMA_VERSION)
                    self.set_meta("schema_revision", str(SCHEMA_REVISION))
            elif not self._has_schema():
                raise ConfigurationError(f"no persona store in PostgreSQL at {where(url)};"
                                         " run `persona --data DIR init --backend URL`")
            else:
                self._check_version()
            self._upgrade()
        except BaseException:
            self.close()
            raise

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """This recorder's connection; one the server dropped (a restart, a failover) is
        replaced by a fresh one from the pool — never inside a transaction, which fails."""
        conn = self._conn
        if conn is None:
            raise ConfigurationError("the store is closed")
        if conn.broken and not self._depth:
            self.pool.putconn(conn)  # the pool discards a broken connection
            conn = self._conn = self.pool.getconn(timeout=self.busy_timeout_ms / 1000)
            self._settings(conn)
        return conn

    def _settings(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self.busy_timeout_ms}ms",))

    def _check_version(self) -> None:
        """Refuse a store of another layout; upgrade one of an earlier format in place, one format
        after the other (schema.UPGRADABLE; SQLiteSchema._upgrade_log says what each step does)."""
        if self.get_meta("schema_version") in UPGRADABLE:
            self._upgrade()  # first the columns a release before added (the upgrade writes tagged meta rows)
            with self.conn.transaction():
                self._lock()
                found = self.get_meta("schema_version")
                if found in UPGRADABLE:  # not upgraded meanwhile by another process
                    events = int(self._value("SELECT count(*) FROM event_keys"))
                    log.warning("upgrading the store's event log to format %s (%d events): once, in place",
                                SCHEMA_VERSION, events)
                    for statement in (*(UPGRADE_LOG if found == "1" else ()), *UPGRADE_KEYS):
                        self.conn.execute(statement)
                    keys = self._key_set_from_log()
                    if keys != events:
                        log.warning("the key set held %d keys for %d events; it was made anew from the log",
                                    events, keys)
                    self.set_meta("schema_version", SCHEMA_VERSION)
                    self.upgraded = True
        if self.get_meta("schema_version") != SCHEMA_VERSION:
            raise ConfigurationError("the database was not made by this version of persona")

    def _upgrade(self) -> None:
        """Columns added since the store was made (COLUMNS_ADDED), once, under the write lock."""
        if not self._has_schema() or int(self.get_meta("schema_revision") or 1) >= SCHEMA_REVISION:
            return
        with self.conn.transaction():
            self._lock()
            for _, table, column, declaration in COLUMNS_ADDED:  # constant names of persona.store.base
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")
            chunk_check = UPGRADE_CHUNK_CHECK if self._has_chunks() else ()  # (format 1: made with the chunks)
            for statement in (*SEGMENT_DDL, *DESTINATION_DDL, *UNTAGGED_INDEXES, *chunk_check):
                self.conn.execute(statement)
            self.set_meta("schema_revision", str(SCHEMA_REVISION))

    def recreate(self) -> None:
        """Drop every table of the store and make them anew, empty (inside a transaction:
        PostgreSQL's DDL is transactional, so others see the old store until COMMIT)."""
        if not self._depth:
            raise ConfigurationError("recreate() runs inside a transaction")
        clock = int(self._value("SELECT n FROM persona_clock"))  # carried on: data_version never repeats
        for statement in DROP:
            self.conn.execute(statement)
        for statement in SCHEMA:
            self.conn.execute(statement)
        self.set_meta("schema_version", SCHEMA_VERSION)
        self.set_meta("schema_revision", str(SCHEMA_REVISION))
        self.conn.execute("UPDATE persona_clock SET n = %s", (clock,))

    def _value(self, sql: str) -> Any:
        """The single value a constant query gives."""
        row = self.conn.execute(sql).fetchone()
        if row is None:
            raise ConfigurationError("the persona store in PostgreSQL is damaged (a counter is missing)")
        return row[0]

    def _has_chunks(self) -> bool:
        row = self.conn.execute("SELECT to_regclass('chunks') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def _has_schema(self) -> bool:
        row = self.conn.execute("SELECT to_regclass('persona_clock') IS NOT NULL").fetchone()
        return bool(row and row[0])

    # -- how statements run ----------------------------------------------------------------
    def _bind(self, sql: str, params: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        return sql, params  # a list of values is bound as one array

    def _chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        if values:
            yield list(values)  # an array of any length is one parameter

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self.conn.execute(sql, params).fetchone()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)

    def _events(self, sql: str, params: Sequence[Any]) -> list[StoredChunk]:
        return [StoredChunk(p, s, f, la, r, t, bytes(k), bytes(pl), bytes(h))
                for p, s, f, la, r, t, k, pl, h in self.conn.execute(sql, params).fetchall()]

    def _insert_unique(self, sql: str, params: Sequence[Any]) -> bool:
        try:
            with self.conn.transaction():  # a savepoint: the caller's transaction survives a refusal
                self.conn.execute(sql, params)
        except pg_errors.UniqueViolation:
            return False
        return True

    def _add_model_people(self, name: str, version: int, people: Sequence[str]) -> None:
        if people:  # one statement for the whole training set
            self.conn.execute("INSERT INTO model_people (profile_id, name, version)"
                              " SELECT DISTINCT p, %s, %s FROM unnest(%s::text[]) AS p ON CONFLICT DO NOTHING",
                              (name, version, list(people)))

    def _limit(self, limit: int) -> int | None:
        return None if limit < 0 else limit  # LIMIT NULL: no limit

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def _outermost(self, durable: bool, concurrent: bool) -> Iterator[None]:
        conn = self.conn
        bumped = False
        try:
            with conn.transaction():
                self._lock(shared=concurrent)
                if durable:  # whatever the server's setting: COMMIT waits for the WAL flush
                    conn.execute("SET LOCAL synchronous_commit = on")
                self._depth = 1
                self._concurrent = concurrent
                self._appended = False
                try:
                    yield
                    self._retag()
                    if self._appended:
                        conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
                    # the clock last: its row is held from here through COMMIT, not the whole transaction
                    conn.execute("UPDATE persona_clock SET n = n + 1")
                    self._mine += 1
                    bumped = True
                finally:
                    self._depth = 0
                    self._concurrent = False
        except BaseException:
            if bumped:  # COMMIT failed: the bump never happened
                self._mine -= 1
            raise
        finally:
            if self._log_since is not None:  # released at COMMIT (or rollback)
                self.log_lock_s += time.perf_counter() - self._log_since
                self._log_since = None
        self.commits += 1

    def beside_others(self) -> bool:
        return self._depth > 0 and self._concurrent

    def _retag(self) -> None:
        """Tag the rows this transaction wrote (inserted, or updated with tag NULL), before COMMIT."""
        if self.tagger is None:
            return
        for (table,) in self.conn.execute(_ANY_UNTAGGED).fetchall():  # one round trip when none is
            rows = self.conn.execute(_UNTAGGED[table]).fetchall()
            with self.conn.cursor() as cur:
                cur.executemany(_SET_TAG[table], [(self.tagger(table, row[1:]), row[0]) for row in rows])

    def adopt_tags(self) -> int:
        """Tag every untagged row as it stands (once, when a store made before tags is opened): the
        append-only tables' triggers are disabled for it, inside the transaction."""
        if self.tagger is None:
            raise ConfigurationError("row tags need the key file")
        adopted = 0
        with self.transaction():
            for table in TAGGED_ON_INSERT:
                rows = self.conn.execute(_UNTAGGED[table]).fetchall()
                if rows:
                    self.conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")  # constants
                    with self.conn.cursor() as cur:
                        cur.executemany(_SET_TAG[table], [(self.tagger(table, row[1:]), row[0]) for row in rows])
                    self.conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")
                    adopted += len(rows)
            for table in RETAGGED:  # (meta's rows too, uncounted: every store has some, a new one too)
                if table != "meta":
                    adopted += int(self._value(_COUNT_UNTAGGED[table]))
            self.set_meta(ADOPTED, "1")
        return adopted

    def _lock(self, *, shared: bool = False) -> None:
        """The store's write lock (one per schema), held to the end of the transaction: shared by
        concurrent transactions, exclusive for every other."""
        if shared:
            self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s, hashtext(current_schema()))", (WRITE_LOCK,))
        else:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (WRITE_LOCK,))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        conn, self._conn = self._conn, None
        if conn is not None:
            self.pool.putconn(conn)  # the pool rolls back anything left open

    def data_version(self) -> int:
        """Changes whenever another connection commits a write (every write transaction bumps
        the clock once; our own bumps are taken off, as SQLite's data_version does)."""
        return int(self._value("SELECT n FROM persona_clock")) - self._mine

    def change_mark(self) -> None:
        """None: the clock is a round trip to the server, as dear as the reads a mark would spare."""
        return None

    # -- change feed ---------------------------------------------------------------------
    def wait_for_events(self, after_position: int, timeout: float) -> int:
        """Block until the log grows past `after_position` or `timeout` passes; the newest
        position. LISTEN/NOTIFY wakes it at once; the position is read again after each
        wake-up and at the end, so a notification lost (or never sent) costs at most `timeout`."""
        deadline = time.monotonic() + timeout
        self._listen()  # before the position is read: a commit in between still wakes us
        newest = self.last_position()
        while newest <= after_position:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if self._listener is None:
                    raise psycopg.OperationalError("not listening")
                for _ in self._listener.notifies(timeout=left, stop_after=1):
                    pass
            except psycopg.OperationalError:  # the server went away: listen anew, poll meanwhile
                self._drop_listener()
                time.sleep(min(max(deadline - time.monotonic(), 0), 0.5))
                self._listen()
            newest = self.last_position()
        return newest

    def _listen(self) -> None:
        if self._listener is not None:
            return
        try:
            self._listener = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                             application_name="persona-listen")
            self._listener.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(self.channel)))
        except psycopg.OperationalError:
            self._drop_listener()

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s)"
                          " ON CONFLICT (key) DO UPDATE SET value = excluded.value, tag = NULL", (key, value))

    # -- events --------------------------------------------------------------------------
    def insert_chunks(self, rows: Sequence[ChunkRow]) -> int:
        if rows:  # positions in turn, from here to COMMIT
            self._take_turn()
        return super().insert_chunks(rows)

    def change_memberships(self, entered: Sequence[tuple[str, str]], left: Sequence[tuple[str, str]],
                           at: int) -> None:
        if entered or left:  # segment changes are numbered, and read after a number, as the log's positions are
            self._take_turn()
        super().change_memberships(entered, left, at)

    def _take_turn(self) -> None:
        """In a concurrent transaction, the log's lock, to COMMIT: what is numbered for readers that
        follow it by number (positions, segment changes) commits in the order it was numbered. (An
        exclusive transaction has its turn already.)"""
        if self._concurrent and self._log_since is None:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (LOG_LOCK,))
            self._log_since = time.perf_counter()

    def _insert_log(self, keys: Sequence[tuple[int, bytes]], rows: Sequence[tuple[Any, ...]]) -> None:
        # by COPY, the keys first: their table refuses an event id already in the log
        conn = self.conn
        try:
            # a savepoint: the caller's transaction survives a refusal
            with conn.transaction(), conn.cursor() as cur:
                self._insert_keys(keys)
                with cur.copy("COPY chunks (position, stream_no, first_version, last_version, recorded_at, types, keys,"
                              " payload, hash) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        except pg_errors.UniqueViolation as e:
            if e.diag.table_name == "event_keys":
                raise DuplicateEventError("an event id is already in the log") from None
            raise ConcurrencyError.unseen() from None
        self._appended = True  # announced at COMMIT; listeners read the new position themselves

    def _insert_keys(self, keys: Sequence[tuple[int, bytes]]) -> None:
        with self.conn.cursor() as cur, cur.copy("COPY event_keys (generation, event_key) FROM STDIN") as copy:
            for key in keys:
                copy.write_row(key)

    def scan_chains(self) -> Iterator[StoredChunk]:
        """Every event, stream by stream, in pages: no cursor or transaction is held between them."""
        last = (0, 0)
        while True:
            page = self.conn.execute(_SCAN_PAGE, (*last, PAGE)).fetchall()
            if not page:
                return
            for _, p, s, f, la, r, t, k, pl, h in page:
                yield StoredChunk(p, s, f, la, r, t, bytes(k), bytes(pl), bytes(h))
            last = (page[-1][0], page[-1][4])

    # -- streams and keys ----------------------------------------------------------------
    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]:
        if not rows:
            return []
        found = dict(self.conn.execute(
            "INSERT INTO streams (stream_id, version, head, created_at)"
            " SELECT * FROM unnest(%s::text[], %s::integer[], %s::bytea[], %s::bigint[])"
            " RETURNING stream_id, stream_no",
            ([r[0] for r in rows], [0] * len(rows), [r[1] for r in rows], [r[4] for r in rows])).fetchall())
        keys = [(pid, kek, wrapped) for pid, _, kek, wrapped, _ in rows]
        with self.conn.cursor() as cur:  # tagged here, in a round trip or two, rather than at COMMIT
            cur.executemany("INSERT INTO keys (profile_id, kek_version, wrapped, tag) VALUES (%s, %s, %s, %s)",
                            [(*key, self._tag("keys", key)) for key in keys])
        if self.tagger is not None:
            self.conn.execute("UPDATE streams s SET tag = u.tag FROM unnest(%s::bigint[], %s::bytea[]) AS u(no, tag)"
                              " WHERE s.stream_no = u.no",
                              ([found[r[0]] for r in rows],
                               [self.tagger("streams", (found[r[0]], r[0], r[4])) for r in rows]))
        return [found[r[0]] for r in rows]

    def heads(self, stream_ids: Iterable[str], *, lock: bool = False) -> dict[str, Head]:
        if not (lock and self._concurrent):  # an exclusive transaction holds every stream already
            return super().heads(stream_ids, lock=lock)
        return {sid: Head(no, version, bytes(head), kek, None if wrapped is None else bytes(wrapped))
                for sid, no, version, head, kek, wrapped in self.conn.execute(_LOCK_HEADS, (list(stream_ids),))}

    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> int:
        if not rows:
            return 0
        rows = sorted(rows)  # in key order: two writers claiming some of the same never wait in a circle
        columns = [list(column) for column in zip(*[(*row, self._tag("links", row)) for row in rows], strict=True)]
        return int(self.conn.execute(_CLAIM_LINKS, columns).rowcount)

    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None:
        if rows:
            self.conn.execute(
                "UPDATE streams s SET version = u.version, head = u.head"
                " FROM unnest(%s::integer[], %s::bytea[], %s::bigint[]) AS u(version, head, no)"
                " WHERE s.stream_no = u.no",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))

    def stream_ids(self) -> Iterator[str]:
        after = ""
        while True:
            page = self.conn.execute("SELECT stream_id FROM streams WHERE stream_id > %s ORDER BY stream_id LIMIT %s",
                                     (after, PAGE)).fetchall()
            if not page:
                return
            for (sid,) in page:
                yield sid
            after = page[-1][0]

    # -- erasure -------------------------------------------------------------------------
    def erasure_mark(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()
        return int(row[0]) if row else 0

    def tombstones(self) -> Iterator[tuple[str, int]]:
        yield from self.conn.execute("SELECT profile_id, erased_at FROM tombstones ORDER BY erased_at, seq").fetchall()

    # -- snapshots and read models ------------------------------------------------------
    def read_after(self, wanted: Sequence[tuple[int, int]]) -> Iterator[StoredChunk]:
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            yield from self._events(_READ_AFTER, ([n for n, _ in part], [a for _, a in part]))

    # Derived rows only for profiles that still hold a key, and never over newer ones (as SQLite).
    def put_snapshots(self, rows: Sequence[tuple[str, str, int, int, bytes]]) -> None:
        if not rows:
            return
        self.conn.execute(
            "INSERT INTO snapshots (profile_id, projection, projection_version, stream_version, payload, tag)"
            " SELECT u.* FROM unnest(%s::text[], %s::text[], %s::integer[], %s::integer[], %s::bytea[], %s::bytea[])"
            " AS u(pid, projection, pv, sv, payload, tag)"
            " WHERE EXISTS (SELECT 1 FROM keys k WHERE k.profile_id = u.pid)"
            " ON CONFLICT (profile_id, projection) DO UPDATE SET projection_version = excluded.projection_version,"
            " stream_version = excluded.stream_version, payload = excluded.payload, tag = excluded.tag"
            " WHERE excluded.projection_version > snapshots.projection_version"
            " OR (excluded.projection_version = snapshots.projection_version"
            " AND excluded.stream_version >= snapshots.stream_version)",
            tuple(list(column) for column in zip(*[(*row, self._tag("snapshots", row))
                                                   for row in _newest(rows, 2, lambda r: (r[2], r[3]))], strict=True)))

    def put_index(self, rows: Sequence[tuple[str, int, str]]) -> None:
        if not rows:
            return
        self.conn.execute(
            "INSERT INTO profile_index (profile_id, version, doc, tag)"
            " SELECT u.* FROM unnest(%s::text[], %s::integer[], %s::text[], %s::bytea[]) AS u(pid, version, doc, tag)"
            " WHERE EXISTS (SELECT 1 FROM keys k WHERE k.profile_id = u.pid)"
            " ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version, doc = excluded.doc, tag = excluded.tag"
            " WHERE excluded.version >= profile_index.version",
            tuple(list(column) for column in zip(*[(*row, self._tag("profile_index", row))
                                                   for row in _newest(rows, 1, lambda r: r[1])], strict=True)))

    def put_rfm(self, rows: Sequence[tuple[str, int, int, int]]) -> None:
        self.conn.execute("DELETE FROM rfm")
        if rows:
            self.conn.execute(
                "INSERT INTO rfm (profile_id, r, f, m) SELECT u.* FROM"
                " unnest(%s::text[], %s::integer[], %s::integer[], %s::integer[]) AS u(pid, r, f, m)"
                " WHERE EXISTS (SELECT 1 FROM keys k WHERE k.profile_id = u.pid)",
                tuple(list(column) for column in zip(*rows, strict=True)))

    def change_rfm(self, rows: Sequence[tuple[str, int, int, int]], gone: Sequence[str]) -> None:
        if gone:
            self.conn.execute("DELETE FROM rfm WHERE profile_id = ANY(%s::text[])", (list(gone),))
        if rows:
            self.conn.execute(
                "INSERT INTO rfm (profile_id, r, f, m) SELECT u.* FROM"
                " unnest(%s::text[], %s::integer[], %s::integer[], %s::integer[]) AS u(pid, r, f, m)"
                " WHERE EXISTS (SELECT 1 FROM keys k WHERE k.profile_id = u.pid) ON CONFLICT (profile_id)"
                " DO UPDATE SET r = excluded.r, f = excluded.f, m = excluded.m, tag = NULL",
                tuple(list(column) for column in zip(*rows, strict=True)))

    # -- maintenance ---------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A REPEATABLE READ, READ ONLY transaction: every read inside it sees one moment."""
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def dump(self, table: str) -> Iterator[list[tuple[object, ...]]]:
        columns = TABLES[table]  # a KeyError for anything else: names are never taken from input
        order = ", ".join(_KEY_OF.get(table, columns[:1]))
        sql = "SELECT " + ", ".join(columns) + " FROM " + table + " ORDER BY " + order
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with self.snapshot():
                yield from self.dump(table)
            return
        with self.conn.cursor(name="persona_dump") as cur:  # server-side: rows come a page at a time
            cur.execute(sql)
            while page := cur.fetchmany(PAGE):
                yield [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in page]

    def load(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        columns = TABLES[table]
        if table == "meta":
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO meta (key, value, tag) VALUES (%s, %s, %s)"
                                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, tag = excluded.tag", rows)
            return
        if table == "api_tokens":  # a token already there is replaced (a restore keeps the replaced store's)
            with self.conn.cursor() as cur:
                cur.executemany(_LOAD_TOKENS, rows)
            return
        with self.conn.cursor() as cur, cur.copy("COPY " + table + " (" + ", ".join(columns) + ") FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def finish_load(self) -> None:
        """Counters continue after the largest number copied."""
        for table, column in _SERIALS:
            self.conn.execute("SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max(" + column + "), 0) + 1,"
                              " false) FROM " + table, (table, column))

    def backup(self, dest: Path, tables: Sequence[str]) -> None:
        """A SQLite file, filled in one REPEATABLE READ snapshot of the store."""
        target = SQLiteRecorder(dest, create=True)
        try:
            copy_store(self, target, tables=tables)
        finally:
            target.close()

    def damage(self) -> list[str]:
        """Nothing for verify to add: the server owns its files (and its page checksums); no client
        flips a byte of them. The rows themselves are checked by verify."""
        return []

    def schema_problems(self) -> list[str]:
        """The append-only triggers are all there and enabled (only a role that owns the tables can
        drop or disable them; the rest of the schema is not compared on PostgreSQL)."""
        found = dict(self.conn.execute(TRIGGERS_PRESENT).fetchall())
        problems = [f"the schema's trigger {name!r} is missing" for name in TRIGGER_NAMES if name not in found]
        problems += [f"the schema's trigger {name!r} is disabled" for name in TRIGGER_NAMES
                     if found.get(name, "O") == "D"]
        return problems

def _newest(rows: Sequence[tuple[Any, ...]], width: int, version: Callable[[tuple[Any, ...]], Any]
            ) -> list[tuple[Any, ...]]:
    """One row per key (the first `width` columns), the newest by `version`, as SQLite's row-by-row
    "never over a newer one" leaves it: one INSERT ... ON CONFLICT may not touch a row twice. In key
    order: two writers upserting some of the same rows take them in one order, never in a circle."""
    newest = {row[:width]: row for row in sorted(rows, key=version)}
    return [newest[key] for key in sorted(newest)]
