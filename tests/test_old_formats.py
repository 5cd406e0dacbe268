"""Stores and backups written by the releases before are upgraded in place when opened, one format
after the other, on both backends, and read, verify and restore as before.

- fixtures/format1 (one row per event) was written by persona at commit 87bb7e8;
- fixtures/format2 (chunks, one key set) by persona at commit b034f96.

Each by the same steps: `init`, `ingest fixtures/sample_events.jsonl` (95 events, 4 lines
quarantined), `link` of two identifiers (a merge: 2 marker events + 1), `backup` (backup.db), then
`erase` of one person (18 events; in the ledger). Their key files are test keys, for these
fictitious people only.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from persona.backup import restore
from persona.core import Persona
from persona.errors import StoreError
from persona.events import Event, Subject
from persona.ingest import ingest_jsonl
from persona.settings import Settings
from persona.store import SQLiteRecorder, keyset
from persona.store.copy import copy_store
from persona.store.postgres import PostgresRecorder
from persona.store.schema import ADOPTED, COLUMNS_ADDED, LOG, SCHEMA_VERSION, TABLES
from persona.verify import verify
from tests.conftest import pg_schema

FIXTURES = Path(__file__).parent.parent / "fixtures"
SAMPLE = FIXTURES / "sample_events.jsonl"
EVENTS, OPENED, ERASED = 98, 80, "aiko.tanaka@example.com"
OLD = ("1", "2")


@pytest.fixture(params=OLD, ids=[f"format{n}" for n in OLD])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / f"format{request.param}" / "data", data)
    yield request.param, Settings.load(data, env={})


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


def test_an_old_sqlite_store_is_upgraded_in_place_when_opened(old_store: tuple[str, Settings],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    found, settings = old_store
    db = settings.db_path
    assert schema_version(db) == found
    assert ("events" in tables(db)) == (found == "1") and "key_filters" not in tables(db)
    with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(settings) as persona:
        assert f"upgrading the store's event log to format {SCHEMA_VERSION} ({EVENTS} events)" in caplog.text
        assert "made anew" not in caplog.text  # the old key set was the log's
        check_upgraded(persona)
    assert "events" not in tables(db) and {"chunks", "event_keys", "key_filters"} <= tables(db)
    assert schema_version(db) == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    try:  # every key in generation 0 (the log is far from a generation's end: nothing sealed)
        assert conn.execute("SELECT generation, count(*) FROM event_keys GROUP BY 1").fetchall() == [(0, EVENTS + 5)]
    finally:
        conn.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(settings) as persona:
        assert "upgrading" not in caplog.text  # once
        assert verify(persona).events == EVENTS + 5


def test_an_upgrade_seals_the_generations_the_log_has_passed(old_store: tuple[str, Settings],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With generations of 8 keys (the same code as a million), the upgrade fills 13 generations
    from the chunks and seals the 12 the log has passed; every old event stays known."""
    monkeypatch.setattr(keyset, "GENERATION_KEYS", 8)
    with Persona.open(old_store[1]) as persona:
        rec = persona.recorder
        assert [g for g, _, _ in rec._all(rec.sql.key_filter_rows)] == list(range(EVENTS // 8))  # type: ignore[attr-defined]
        check_upgraded(persona)


def test_the_upgrade_is_one_transaction_that_a_failure_leaves_undone(old_store: tuple[str, Settings]) -> None:
    """A store whose log the upgrade cannot carry over (here: two events with one key, which only a
    hand edit makes) is left as it was: its old format, every row still there."""
    found, settings = old_store
    table = "events" if found == "1" else "chunks"
    conn = sqlite3.connect(settings.db_path)
    try:  # the log made inconsistent the way only a hand edit can: two of its rows share a key
        if found == "1":
            conn.execute("DROP INDEX idx_events_event_key")
            conn.execute("INSERT INTO events (stream_no, version, event_key, type, recorded_at, payload, hash)"
                         " SELECT stream_no, version + 1000, event_key, type, recorded_at, payload, hash FROM events"
                         " WHERE position = 1")
        else:
            conn.execute("DROP TRIGGER chunks_continue_their_stream")
            conn.execute("INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types,"
                         " keys, payload, hash) SELECT 1000, stream_no, first_version + 1000, last_version + 1000,"
                         " recorded_at, types, keys, payload, hash FROM chunks WHERE position = 1")
        conn.commit()
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # constant names
    finally:
        conn.close()
    with pytest.raises(StoreError):
        SQLiteRecorder(settings.db_path)
    assert schema_version(settings.db_path) == found and "key_filters" not in tables(settings.db_path)
    conn = sqlite3.connect(settings.db_path)
    try:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == rows
        if found == "2":
            assert conn.execute("SELECT count(*) FROM event_keys").fetchone() == (EVENTS,)
    finally:
        conn.close()


def test_an_old_backup_restores_and_keeps_the_erasure_made_since(old_store: tuple[str, Settings]) -> None:
    found, settings = old_store
    with Persona.open(settings) as persona:  # the store is upgraded; the backup is from before the erasure
        assert persona.log.profile_for("email", ERASED) is None
    backup = settings.data_dir.parent / "backup.db"
    shutil.copyfile(FIXTURES / f"format{found}" / "backup.db", backup)
    info = restore(settings, backup)
    assert len(info.reapplied) == 1
    with Persona.open(settings) as persona:
        report = verify(persona)
        assert (report.events, report.opened, report.erased) == (EVENTS, OPENED, 1)
        assert persona.log.profile_for("email", ERASED) is None  # the backup does not bring them back
        assert persona.recorder.schema_problems() == []
    assert schema_version(backup) == found  # the backup file itself is read, never changed


# Format 1 on PostgreSQL, as that release made it (persona/store/postgres_schema.py at 87bb7e8): the
# log one row per event, hash-partitioned by stream, positions from a sequence.
FORMAT1_POSTGRES = (
    "DROP TABLE chunks, event_keys, key_filters",
    "DROP FUNCTION persona_chunk_continues(), persona_keys_go_to_open_generations(), persona_seal_in_order()",
    "CREATE TABLE event_keys (event_key bytea PRIMARY KEY)",
    "CREATE TRIGGER event_keys_append_only BEFORE UPDATE OR DELETE ON event_keys FOR EACH ROW EXECUTE FUNCTION"
    " persona_refuse()",
    "CREATE TRIGGER event_keys_no_truncate BEFORE TRUNCATE ON event_keys FOR EACH STATEMENT EXECUTE FUNCTION"
    " persona_refuse()",
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


# Format 2 on PostgreSQL, as that release made it (persona/store/postgres_schema.py at b034f96): the
# chunks as now, the key set one table keyed by the key.
FORMAT2_POSTGRES = (
    "DROP TABLE event_keys, key_filters",
    "DROP FUNCTION persona_keys_go_to_open_generations(), persona_seal_in_order()",
    "CREATE TABLE event_keys (event_key bytea PRIMARY KEY)",
    "CREATE TRIGGER event_keys_append_only BEFORE UPDATE OR DELETE ON event_keys FOR EACH ROW EXECUTE FUNCTION"
    " persona_refuse()",
    "CREATE TRIGGER event_keys_no_truncate BEFORE TRUNCATE ON event_keys FOR EACH STATEMENT EXECUTE FUNCTION"
    " persona_refuse()",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
)
CHUNK_COLUMNS = "position, stream_no, first_version, last_version, recorded_at, types, keys, payload, hash"


@pytest.mark.parametrize(("found", "revision"), [("1", 4), ("1", 3), ("2", 4)],
                         ids=["format1-with-row-tags", "format1-before-row-tags", "format2"])
def test_an_old_postgres_store_is_upgraded_in_place_when_opened(tmp_path: Path, found: str, revision: int,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Revision 3 is a store made before row tags (the PostgreSQL backend predates them): the columns
    of revision 4 are added before the log is upgraded, and its rows are adopted when opened."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / f"format{found}" / "data", data)
    old_store = Settings.load(data, env={})
    conn = sqlite3.connect(old_store.db_path)  # the old rows, read before anything opens the file
    try:
        if found == "1":
            rows = conn.execute("SELECT position, stream_no, version, event_key, type, recorded_at, payload, hash"
                                " FROM events ORDER BY position").fetchall()
        else:
            rows = conn.execute(f"SELECT {CHUNK_COLUMNS} FROM chunks ORDER BY position").fetchall()
            keys = conn.execute("SELECT event_key FROM event_keys").fetchall()
            assert len(keys) == EVENTS
    finally:
        conn.close()
    assert sum(row[3] - row[2] + 1 for row in rows) == EVENTS if found == "2" else len(rows) == EVENTS
    with pg_schema() as url:
        source = SQLiteRecorder(old_store.db_path)  # upgraded, to copy every other table as it is
        target = PostgresRecorder(url, create=True)
        try:
            copy_store(source, target, tables=[table for table in TABLES if table not in LOG])
        finally:
            source.close()
            target.close()
        with psycopg.connect(url, autocommit=True) as admin, admin.transaction():
            if found == "1":
                for statement in FORMAT1_POSTGRES:
                    admin.execute(statement)
                with admin.cursor() as cur, cur.copy("COPY events (position, stream_no, version, event_key, type,"
                                                     " recorded_at, payload, hash) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                admin.execute("INSERT INTO event_keys SELECT event_key FROM events")
            else:
                for statement in FORMAT2_POSTGRES:
                    admin.execute(statement)
                with admin.cursor() as cur, cur.copy(f"COPY chunks ({CHUNK_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with admin.cursor() as cur, cur.copy("COPY event_keys (event_key) FROM STDIN") as copy:
                    for key in keys:
                        copy.write_row(key)
            if revision == 3:  # as that release left it: no row tags, none adopted
                for column_revision, table, column, _ in COLUMNS_ADDED:
                    if column_revision == 4:
                        admin.execute(f"ALTER TABLE {table} DROP COLUMN {column} CASCADE")  # constant names
                admin.execute("UPDATE meta SET value = '3' WHERE key = 'schema_revision'")
                admin.execute("DELETE FROM meta WHERE key = %s", (ADOPTED,))
        settings = Settings.load(old_store.data_dir, env={"PERSONA_DATABASE_URL": url})
        with caplog.at_level(logging.WARNING, logger="persona.store"), Persona.open(settings) as persona:
            assert f"upgrading the store's event log to format {SCHEMA_VERSION} ({EVENTS} events)" in caplog.text
            assert "made anew" not in caplog.text
            check_upgraded(persona)
        with psycopg.connect(url) as admin:
            assert admin.execute("SELECT to_regclass('events') IS NULL AND to_regclass('events_position_seq')"
                                 " IS NULL").fetchone() == (True,)
            assert admin.execute("SELECT generation, count(*) FROM event_keys GROUP BY 1").fetchall() == [
                (0, EVENTS + 5)]
