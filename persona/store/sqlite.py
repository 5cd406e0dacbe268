"""The embedded default: one SQLite database in WAL mode, through sqlite-utils.

What differs from PostgreSQL (persona.store.postgres), and why:

- **One writer at a time, by SQLite's own lock**: `BEGIN IMMEDIATE` takes the write lock at the
  start of every write transaction (the busy timeout waits for it); readers never wait in WAL
  mode. A `durable` transaction syncs the WAL at its COMMIT (synchronous FULL for it, NORMAL
  otherwise: a power cut may lose the last commits, never corrupt the file).
- **The schema is made on open as well as on create** (every addition since the first release is
  additive), by sqlite-utils, and `schema_problems` compares it with a fresh store's in memory.
  Append-only is enforced by triggers that RAISE(ABORT); a second tombstone is ignored.
- **Lists are bound one placeholder per value** (`IN (?*)`, expanded when the statement runs),
  in chunks of CHUNK: SQLite bounds the parameters of one statement. Bulk writes are
  `executemany`: in-process, a row costs a call, not a round trip. Untagged rows are found by
  rowid. Long reads stream from one cursor.
- **Erasure is physical at once**: secure_delete zeroes the cells a DELETE frees, and each
  erasure truncates the WAL (`purges_at_once`), so no page of the file or its WAL keeps them.
- **No notifications**: `wait_for_events` polls PRAGMA data_version (cheap) every POLL_S.
- **A backup is SQLite copying itself** (ATTACH, then INSERT ... SELECT: no row passes through
  Python); after a load AUTOINCREMENT numbers new rows after the copied ones by itself.

Everything else — the statements that differ only in placeholder or list syntax, and the
methods over them — is written once (persona.store.sql, persona.store.shared).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from persona.errors import ConcurrencyError, ConfigurationError, DuplicateEventError, StoreError, UndecodableValueError
from persona.store import schema
from persona.store.boundary import store_error, translating
from persona.store.rows import RowTagger, StoredChunk
from persona.store.shared import Row, SQLRecorder
from persona.store.sql import CHUNK_COLUMNS, CHUNK_SELECT, Statements
from persona.store.sqlite_schema import ACCESS_TRIGGERS, TRIGGERS, UPDATE_TRIGGERS, SQLiteSchema

CHUNK = 500  # bound parameters per IN (...) query
POLL_S = 0.05  # how often wait_for_events looks for another connection's commit


def _expand_pairs(sql: str, n: int) -> str:
    """Constant SQL with one `VALUES (?**)`, given n rows of two bound placeholders."""
    return sql.replace("(?**)", ",".join(["(?, ?)"] * n))


_SCAN_CHAINS = CHUNK_SELECT + " ORDER BY c.stream_no, c.last_version"
# the chunks of several streams holding events after each one's own version: (stream_no, after) pairs
_READ_AFTER = (
    "WITH want(no, after) AS (VALUES (?**))"
    " SELECT " + CHUNK_COLUMNS + " FROM want JOIN chunks c ON c.stream_no = want.no AND c.last_version > want.after"
    " JOIN streams s ON s.stream_no = c.stream_no ORDER BY c.stream_no, c.last_version"
)
# row tags (persona.integrity): the untagged rows of each table, by rowid, with the columns tagged
_UNTAGGED = {table: "SELECT rowid, " + ", ".join(columns) + " FROM [" + table + "] WHERE tag IS NULL"
             for table, columns in schema.TAGGED.items()}
_COUNT_UNTAGGED = {table: "SELECT count(*) FROM [" + table + "] WHERE tag IS NULL" for table in schema.TAGGED}
_SET_TAG = {table: "UPDATE [" + table + "] SET tag = ? WHERE rowid = ?" for table in schema.TAGGED}
# the schema as verify compares it with a fresh store's (root pages differ from file to file)
_SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_stat%'"
_STREAM_NUMBERS = "SELECT stream_id, stream_no FROM streams WHERE stream_id IN (?*)"
_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA wal_autocheckpoint = 500",  # pages: checkpoint at ~4 MiB, which bounds erasure's TRUNCATE
    "PRAGMA secure_delete = ON",  # deleted cells are zeroed: an erased key leaves no trace
    "PRAGMA cache_size = -65536",  # 64 MiB: the (stream, version) index outgrows the default
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
    busy = isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)
    damaged = type(error) is sqlite3.DatabaseError  # not a database, malformed: what SQLite says of a damaged file
    return store_error(text, busy=busy, damaged=damaged)


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
class SQLiteRecorder(SQLRecorder, SQLiteSchema):
    """A Recorder over one SQLite file. One instance per thread."""

    sql = Statements().formatted(p="?", in_list="IN (?*)")
    purges_at_once = True  # a WAL checkpoint costs little: each erasure runs it

    def __init__(self, path: Path, *, create: bool = False, busy_timeout_ms: int = 30_000) -> None:
        if not create and not path.exists():
            raise ConfigurationError("no database in the data directory; run `persona --data DIR init`")
        self.path = path
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._depth = 0
        self.commits = 0  # transactions this connection committed
        self.upgraded = False
        self.tagger: RowTagger | None = None  # set by Persona: without it rows stay untagged (verify says so)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn = conn
        if create:
            # 8 KiB pages: measured ~8% faster appends than 4 KiB; fixed once the file exists.
            conn.execute("PRAGMA page_size = 8192")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = wal")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        self._set_busy_timeout(self.busy_timeout_ms)
        if create:
            self._create_schema()
        elif self.get_meta("schema_version") in schema.UPGRADABLE:
            self._upgrade_log()
        elif self.get_meta("schema_version") != schema.SCHEMA_VERSION:
            raise ConfigurationError("the database was not made by this version of persona")
        self._create_derived_schema()
        self._create_access_schema()
        self._create_merge_schema()
        self._create_model_schema()
        self._create_segment_schema()
        self._create_destination_schema()
        self._upgrade()

    # -- how statements run ----------------------------------------------------------------
    def _bind(self, sql: str, params: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """Each list of values in its `IN (?*)`: one bound placeholder per value, never a value in the text."""
        if not any(isinstance(value, list) for value in params):
            return sql, params
        pieces = iter(sql.split("(?*)"))
        text, flat = [next(pieces)], []
        for value in params:
            if isinstance(value, list):
                text += ["(" + ",".join("?" * len(value)) + ")", next(pieces)]
                flat += value
            else:
                flat.append(value)
        return "".join(text), flat

    def _chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        for start in range(0, len(values), CHUNK):  # SQLite binds a bounded number of parameters
            yield list(values[start : start + CHUNK])

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(*self._bind(sql, params)).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(*self._bind(sql, params)).fetchone()
        return row

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(*self._bind(sql, params)).rowcount

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def _events(self, sql: str, params: Sequence[Any]) -> Iterator[StoredChunk]:
        return map(StoredChunk._make, self.conn.execute(*self._bind(sql, params)))  # read as they are used

    def _insert_unique(self, sql: str, params: Sequence[Any]) -> bool:
        try:
            self.conn.execute(sql, params)
        except sqlite3.IntegrityError:
            return False
        return True

    def _add_model_people(self, name: str, version: int, people: Sequence[str]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO model_people (profile_id, name, version) VALUES (?, ?, ?)",
                              [(pid, name, version) for pid in people])

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def _outermost(self, durable: bool, concurrent: bool) -> Iterator[None]:  # (one writer: never concurrent)
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

    def _retag(self) -> None:
        """Tag the rows this transaction wrote (inserted, or updated with tag NULL), before COMMIT."""
        if self.tagger is None:
            return
        for table in schema.RETAGGED:
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
            for table in schema.TAGGED_ON_INSERT:
                rows = self.conn.execute(_UNTAGGED[table]).fetchall()
                if rows:
                    for trigger in UPDATE_TRIGGERS[table]:
                        self.conn.execute("DROP TRIGGER IF EXISTS " + trigger)  # constant names
                    self.conn.executemany(_SET_TAG[table], [(self.tagger(table, row[1:]), row[0]) for row in rows])
                    adopted += len(rows)
            self._run_script(TRIGGERS)
            self._run_script(ACCESS_TRIGGERS)
            for table in schema.RETAGGED:  # (meta's rows too, uncounted: every store has some, a new one too)
                if table != "meta":
                    adopted += int(self.conn.execute(_COUNT_UNTAGGED[table]).fetchone()[0])
            self.set_meta(schema.ADOPTED, "1")
        return adopted

    def _set_busy_timeout(self, ms: int) -> None:
        """PRAGMA takes no bound parameters: the value is forced to an integer first."""
        self.conn.execute("PRAGMA busy_timeout = " + str(int(ms)))

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite's PRAGMA data_version)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def change_mark(self) -> tuple[int, int, int]:
        """Other connections' commits (data_version), and this one's: its transactions and the rows
        its statements changed (total_changes, which counts a write outside `transaction()` too)."""
        return self.data_version(), self.commits, self.conn.total_changes

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
    def _insert_log(self, keys: Sequence[tuple[int, bytes]], rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            self._insert_keys(keys)
        except sqlite3.IntegrityError as e:
            raise DuplicateEventError("an event id is already in the log") from e
        try:
            self.conn.executemany(
                "INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types, keys,"
                " payload, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as e:
            raise ConcurrencyError.unseen() from e

    def _insert_keys(self, keys: Sequence[tuple[int, bytes]]) -> None:
        self.conn.executemany("INSERT INTO event_keys (generation, event_key) VALUES (?, ?)", keys)

    def scan_chains(self) -> Iterator[StoredChunk]:
        cursor = self.conn.execute(_SCAN_CHAINS)
        yield from map(StoredChunk._make, cursor)

    # -- streams and keys ----------------------------------------------------------------
    def create_streams(self, rows: Sequence[tuple[str, bytes, int, bytes, int]]) -> list[int]:
        self.conn.executemany(
            "INSERT INTO streams (stream_id, version, head, created_at) VALUES (?, 0, ?, ?)",
            [(pid, genesis, created) for pid, genesis, _, _, created in rows],
        )
        ids = [row[0] for row in rows]
        found: dict[str, int] = {}
        for part in self._chunks(ids):
            found.update(self._all(_STREAM_NUMBERS, (part,)))
        numbers = [found[pid] for pid in ids]
        keys = [(pid, kek_version, wrapped) for pid, _, kek_version, wrapped, _ in rows]
        self.conn.executemany("INSERT INTO keys (profile_id, kek_version, wrapped, tag) VALUES (?, ?, ?, ?)",
                              [(*key, self._tag("keys", key)) for key in keys])  # tagged here, not at COMMIT
        return numbers

    def set_heads(self, rows: Sequence[tuple[int, bytes, int]]) -> None:
        self.conn.executemany("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?", rows)

    def stream_ids(self) -> Iterator[str]:
        for (sid,) in self.conn.execute("SELECT stream_id FROM streams ORDER BY stream_id"):
            yield sid

    # -- erasure -------------------------------------------------------------------------
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
    def read_after(self, wanted: Sequence[tuple[int, int]]) -> Iterator[StoredChunk]:
        for start in range(0, len(wanted), CHUNK // 2):
            part = wanted[start : start + CHUNK // 2]
            flat = [value for pair in part for value in pair]
            yield from map(StoredChunk._make, self.conn.execute(_expand_pairs(_READ_AFTER, len(part)), flat))

    # derived rows only for profiles that still hold a key, never over newer ones (protocols.ReadModels)
    def put_snapshots(self, rows: Sequence[tuple[str, str, int, int, bytes]]) -> None:
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
        self.conn.executemany(
            "INSERT INTO profile_index (profile_id, version, doc, tag)"
            " SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = ?1)"
            " ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version, doc = excluded.doc, tag = excluded.tag"
            " WHERE excluded.version >= profile_index.version",
            [(*row, self._tag("profile_index", row)) for row in rows],  # tagged here: no second write of each
        )

    def put_rfm(self, rows: Sequence[tuple[str, int, int, int]]) -> None:
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
        columns = schema.TABLES[table]  # a KeyError for anything else: names are never taken from input
        order = "generation, event_key" if table == "event_keys" else "rowid"  # (a WITHOUT ROWID table)
        cursor = self.conn.execute("SELECT " + ", ".join(columns) + " FROM [" + table + "] ORDER BY " + order)
        while page := cursor.fetchmany(5_000):
            yield page

    def load(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Rows as dump() gives them; a meta key or a token already there is replaced (a restore
        puts the replaced store's tokens over the backup's)."""
        columns = schema.TABLES[table]
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
                    columns = ", ".join(schema.TABLES[table])  # a KeyError for anything else: names are constants
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
