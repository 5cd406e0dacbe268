"""Making erased rows unrecoverable from PostgreSQL's files: VACUUM, batched over a window of
erasures (persona.purge), or the rewrite (VACUUM FULL). Why it is not per erasure, as SQLite's
checkpoint is: persona.store.postgres."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors

from persona.store.schema import ERASED_FROM, PURGE_MARK

if TYPE_CHECKING:
    import psycopg

PURGE_LOCK = 0x70757267  # 'purg' (and a hash of the schema): one purge of a store at a time
# The tables erasure deletes from (schema.ERASED_FROM) are the ones whose dead rows could tell
# something. Snapshots are sealed under the deleted key: vacuumed with them, never rewritten.
# The batched purge (persona.purge). INDEX_CLEANUP ON: by default VACUUM leaves the indexes alone
# when few pages hold dead rows, as one window's erasures always are, and an index entry keeps its
# key (a link's hash, a profile id). TRUNCATE false: emptied pages at a table's end stay (reused by
# later rows) rather than cut off under an exclusive lock that readers would queue behind.
_VACUUM = ("VACUUM (INDEX_CLEANUP ON, TRUNCATE false) " + ", ".join((*ERASED_FROM, "snapshots")),)
# The rewrite (`persona purge --full`): each table written anew and its old files dropped, so no
# page keeps an erased row's bytes in its free space; reads of a table wait while it is rewritten.
_REWRITE = ("VACUUM FULL " + ", ".join(ERASED_FROM), "VACUUM (INDEX_CLEANUP ON) snapshots")


class PostgresPurge:
    """The purge: a part of PostgresRecorder."""

    if TYPE_CHECKING:
        busy_timeout_ms: int
        _depth: int

        @property
        def conn(self) -> psycopg.Connection[Any]: ...

    def checkpoint(self, wait_s: float = 5.0) -> bool:
        return self.purge(wait_s, rewrite=True) is None

    def purge(self, wait_s: float = 5.0, *, rewrite: bool = False) -> str | None:
        """VACUUM the tables erasure deletes from: their dead rows and index entries go, and no
        query, nor pg_dirtyread, finds them again. It takes no lock that readers or writers wait
        for, and scans only pages that changed, plus every index of those tables: time follows
        the population, hence one purge per window (persona.purge). What it does not do is zero
        the freed space inside each page; `rewrite` (VACUUM FULL) writes the tables anew instead,
        while reads of each wait (docs/postgresql.md).

        VACUUM keeps a dead row that some open snapshot of this database may still see, so first
        this waits (up to `wait_s`) until none is older than the newest erasure: no session's
        snapshot or transaction (of any role: backend_xmin and backend_xid are shown to all), no
        prepared transaction, no replication slot's horizon. Snapshots in other databases do not
        hold back VACUUM of this one's tables, and are not waited for. Outside a transaction only.
        """
        if self._depth:
            return "it cannot run inside a transaction"
        conn = self.conn
        deadline = time.monotonic() + wait_s
        while self._holding_back():
            if time.monotonic() >= deadline:
                return "a session of this database holds a snapshot from before an erasure"
            time.sleep(0.05)
        if not self._value_of("SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c"
                              " WHERE c.oid = ANY(%s::text[]::regclass[])", (list(ERASED_FROM),)):
            return "the database user does not own the store's tables"  # VACUUM would only warn and skip
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{max(int(wait_s * 1000), 1)}ms",))
        try:
            for statement in _REWRITE if rewrite else _VACUUM:
                conn.execute(statement)
        except pg_errors.LockNotAvailable:
            return "a table's lock was not had in time"
        finally:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self.busy_timeout_ms}ms",))
        return None

    @contextmanager
    def purge_lock(self) -> Iterator[bool]:
        """A session lock (one per schema), so one purge runs at a time over every process; a purge
        that dies with its connection lets it go."""
        mine = bool(self._value_of("SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (PURGE_LOCK,)))
        try:
            yield mine
        finally:
            if mine and not self.conn.broken:
                self.conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (PURGE_LOCK,))

    def _value_of(self, sql: str, params: Sequence[Any]) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _holding_back(self) -> bool:
        """Whether anything in this database may still see rows as they were before the newest
        erasure committed: the transaction that last wrote the purge mark (each erasure does, and
        a purge as it starts), or, before any erasure, this moment. age() orders transaction ids
        across wraparound: older is larger."""
        return bool(self._value_of(
            "WITH e AS (SELECT coalesce((SELECT age(xmin) FROM meta WHERE key = %s), age(xid(pg_current_xact_id())))"
            " AS a)"
            " SELECT (SELECT count(*) FROM pg_stat_activity, e WHERE pid <> pg_backend_pid()"
            " AND (datname = current_database() OR datname IS NULL)"
            " AND (age(backend_xmin) >= e.a OR age(backend_xid) >= e.a))"
            " + (SELECT count(*) FROM pg_prepared_xacts, e WHERE database = current_database()"
            " AND age(transaction) >= e.a)"
            " + (SELECT count(*) FROM pg_replication_slots, e WHERE (database IS NULL OR database = current_database())"
            " AND age(xmin) >= e.a)"
            " FROM e", (PURGE_MARK,)))
