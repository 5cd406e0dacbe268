"""Stores and backups written by a release before chunks (store format 1, one row per event) are
upgraded in place when opened, on both backends, and read, verify and restore as before.

fixtures/format1 was written by persona at commit 87bb7e8 (format 1): `init`, `ingest
fixtures/sample_events.jsonl` (95 events, 4 lines quarantined), `link` of two people (a merge:
2 marker events + 1), `backup` (backup.db), then `erase` of one person (18 events; in the ledger).
Its key file is a test key, for these fictitious people only.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from persona.backup import restore
from persona.core import Persona
from persona.errors import StoreError
from persona.events import Event, Subject
from persona.ingest import ingest_jsonl
from persona.settings import Settings
from persona.store import SQLiteRecorder
from persona.store.copy import copy_store
from persona.store.postgres import PostgresRecorder
from persona.store.schema import ADOPTED, COLUMNS_ADDED, LOG, SCHEMA_VERSION, TABLES
from persona.verify import verify
from tests.conftest import pg_schema

FIXTURE = Path(__file__).parent.parent / "fixtures" / "format1"
SAMPLE = Path(__file__).parent.parent / "fixtures" / "sample_events.jsonl"
EVENTS, OPENED, ERASED = 98, 80, "aiko.tanaka@example.com"


@pytest.fixture
def old_store(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data)
    return Settings.load(data, env={})


def tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def schema_version(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        conn.close()


def check_upgraded(persona: Persona) -> None:
    """What holds of the fixture once upgraded, on either backend."""
    report = verify(persona)
    assert (report.events, report.opened, report.erased) == (EVENTS, OPENED, 1)
    assert persona.recorder.schema_problems() == []
    assert persona.recorder.counts()["events"] == EVENTS
    opened = list(persona.log.iter_all())
    assert len(opened) == OPENED
    assert [e.position for e in opened] == sorted(e.position for e in opened)
    assert max(Counter(e.event_id for e in opened).values()) == 1
    li = persona.log.profile_for("email", "li.wei@example.com")
    assert li is not None
    history = persona.log.read(li)
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert persona.log.profile_for("email", ERASED) is None
    # re-ingesting the whole file appends nothing: the erased person's events included
    before = persona.recorder.counts()["events"]
    with SAMPLE.open("rb") as lines:
        report_again = ingest_jsonl(persona, lines, origin=SAMPLE.name)
    assert report_again.appended == 0 and persona.recorder.counts()["events"] == before
    # new events after the upgrade: a chunk of several, chained after the old single-event rows
    batch = [Event(f"after-{n}", "crm", "page_viewed", "2026-01-02T00:00:00Z",
                   Subject("email", "li.wei@example.com"), {"url": f"/p{n}"}) for n in range(5)]
    assert persona.log.append(batch).appended == 5
    assert [e.event_id for e in persona.log.read(li)[-5:]] == [f"after-{n}" for n in range(5)]
    assert verify(persona).events == EVENTS + 5


def test_a_format1_sqlite_store_is_upgraded_in_place_when_opened(old_store: Settings,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    db = old_store.db_path
    assert "events" in tables(db) and schema_version(db) == "1"
    with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(old_store) as persona:
        assert f"upgrading the store's event log to format {SCHEMA_VERSION} ({EVENTS} events)" in caplog.text
        check_upgraded(persona)
    assert "events" not in tables(db) and {"chunks", "event_keys"} <= tables(db)
    assert schema_version(db) == SCHEMA_VERSION
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(old_store) as persona:
        assert "upgrading" not in caplog.text  # once
        assert verify(persona).events == EVENTS + 5


def test_the_upgrade_is_one_transaction_that_a_failure_leaves_undone(old_store: Settings) -> None:
    """A store whose old log the upgrade cannot copy (here: two events with one key, which only a
    hand edit makes) is left as it was: format 1, every event row still there."""
    conn = sqlite3.connect(old_store.db_path)
    try:  # the log made inconsistent the way only a hand edit can: two streams' rows share a key
        conn.execute("DROP INDEX idx_events_event_key")
        conn.execute("INSERT INTO events (stream_no, version, event_key, type, recorded_at, payload, hash)"
                     " SELECT stream_no, version + 1000, event_key, type, recorded_at, payload, hash FROM events"
                     " WHERE position = 1")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StoreError):
        SQLiteRecorder(old_store.db_path)
    assert schema_version(old_store.db_path) == "1" and "chunks" not in tables(old_store.db_path)
    conn = sqlite3.connect(old_store.db_path)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (EVENTS + 1,)
    finally:
        conn.close()


def test_a_format1_backup_restores_and_keeps_the_erasure_made_since(old_store: Settings) -> None:
    with Persona.open(old_store) as persona:  # the store is upgraded; the backup is from before the erasure
        assert persona.log.profile_for("email", ERASED) is None
    backup = old_store.data_dir.parent / "backup.db"
    shutil.copyfile(FIXTURE / "backup.db", backup)
    info = restore(old_store, backup)
    assert len(info.reapplied) == 1
    with Persona.open(old_store) as persona:
        report = verify(persona)
        assert (report.events, report.opened, report.erased) == (EVENTS, OPENED, 1)
        assert persona.log.profile_for("email", ERASED) is None  # the backup does not bring them back
        assert persona.recorder.schema_problems() == []
    assert schema_version(backup) == "1"  # the backup file itself is read, never changed


# Format 1 on PostgreSQL, as that release made it (persona/store/postgres_schema.py at 87bb7e8): the
# log one row per event, hash-partitioned by stream, positions from a sequence.
FORMAT1_POSTGRES = (
    "DROP TABLE chunks",
    "DROP FUNCTION persona_chunk_continues()",
    "CREATE SEQUENCE events_position_seq",
    "CREATE TABLE events (position bigint NOT NULL DEFAULT nextval('events_position_seq'),"
    " stream_no bigint NOT NULL, version integer NOT NULL, event_key bytea NOT NULL, type text NOT NULL,"
    " recorded_at bigint NOT NULL, payload bytea NOT NULL, hash bytea NOT NULL,"
    " PRIMARY KEY (stream_no, version)) PARTITION BY HASH (stream_no)",
    *(f"CREATE TABLE events_p{i} PARTITION OF events FOR VALUES WITH (MODULUS 8, REMAINDER {i})" for i in range(8)),
    "CREATE INDEX events_position ON events (position)",
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION"
    " persona_refuse()",
    *(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION"
      " persona_refuse()" for table in ("events", *(f"events_p{i}" for i in range(8)))),
    "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
)


@pytest.mark.parametrize("revision", [4, 3], ids=["with-row-tags", "before-row-tags"])
def test_a_format1_postgres_store_is_upgraded_in_place_when_opened(old_store: Settings, revision: int,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Revision 3 is a store made before row tags (the PostgreSQL backend predates them): the columns
    of revision 4 are added before the log is upgraded, and its rows are adopted when opened."""
    conn = sqlite3.connect(old_store.db_path)  # the old rows, read before anything opens the file
    try:
        rows = conn.execute("SELECT position, stream_no, version, event_key, type, recorded_at, payload, hash"
                            " FROM events ORDER BY position").fetchall()
    finally:
        conn.close()
    assert len(rows) == EVENTS
    with pg_schema() as url:
        source = SQLiteRecorder(old_store.db_path)  # upgraded, to copy every other table as it is
        target = PostgresRecorder(url, create=True)
        try:
            copy_store(source, target, tables=[table for table in TABLES if table not in LOG])
        finally:
            source.close()
            target.close()
        with psycopg.connect(url, autocommit=True) as admin, admin.transaction():
            for statement in FORMAT1_POSTGRES:
                admin.execute(statement)
            with admin.cursor() as cur, cur.copy("COPY events (position, stream_no, version, event_key, type,"
                                                 " recorded_at, payload, hash) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            admin.execute("INSERT INTO event_keys SELECT event_key FROM events")
            if revision == 3:  # as that release left it: no row tags, none adopted
                for column_revision, table, column, _ in COLUMNS_ADDED:
                    if column_revision == 4:
                        admin.execute(f"ALTER TABLE {table} DROP COLUMN {column} CASCADE")  # constant names
                admin.execute("UPDATE meta SET value = '3' WHERE key = 'schema_revision'")
                admin.execute("DELETE FROM meta WHERE key = %s", (ADOPTED,))
        settings = Settings.load(old_store.data_dir, env={"PERSONA_DATABASE_URL": url})
        with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(settings) as persona:
            assert f"upgrading the store's event log to format {SCHEMA_VERSION} ({EVENTS} events)" in caplog.text
            check_upgraded(persona)
        with psycopg.connect(url) as admin:
            assert admin.execute("SELECT to_regclass('events') IS NULL AND to_regclass('events_position_seq')"
                                 " IS NULL").fetchone() == (True,)
