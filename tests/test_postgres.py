"""What only the PostgreSQL backend has: its command-line set-up, the layout of its tables,
a served API that hears another process's ingest through LISTEN/NOTIFY, and its errors.
Everything else runs on both backends (tests/test_conformance.py and CONFORMANCE)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from persona import Persona, Settings, identity
from persona.cli import cli
from persona.erasure import erase_profile, erase_subject
from persona.errors import ConfigurationError
from persona.store.postgres import PARTITIONS, PostgresRecorder, close_pool, without_password
from persona.verify import verify
from tests.conftest import event, pg_schema, raw_execute, record, store_bytes

ROOT = Path(__file__).resolve().parent.parent


def test_init_with_a_backend_keeps_the_url_without_its_password(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_DATABASE_URL", raising=False)
    runner = CliRunner()
    with pg_schema() as url:
        secret_url = url.replace("postgres@", "postgres:not-the-password@")  # trust auth: the server ignores it
        data = tmp_path / "data"
        result = runner.invoke(cli, ["--data", str(data), "init", "--backend", secret_url])
        assert result.exit_code == 0, result.output
        assert "PostgreSQL" in result.output and "PGPASSWORD" in result.output
        kept = (data / "backend.url").read_text().strip()
        assert kept == url and "not-the-password" not in kept and (data / "backend.url").stat().st_mode & 0o077 == 0
        assert not (data / "persona.db").exists()  # the store is in PostgreSQL, only the keys are here
        source = tmp_path / "in.jsonl"
        source.write_text('{"source": "web", "type": "page_viewed", "occurred_at": "2026-05-01T10:00:00Z",'
                          ' "subject": {"namespace": "email", "value": "pg@example.com"},'
                          ' "data": {"url": "https://shop.example/p/1"}, "event_id": "pg1"}\n')
        assert runner.invoke(cli, ["--data", str(data), "ingest", str(source)]).exit_code == 0
        # another machine: a copy of the key file, and the URL in the environment
        other = tmp_path / "other"
        other.mkdir()
        shutil.copy(data / "persona.key", other / "persona.key")
        with Persona.open(Settings.load(other, env={"PERSONA_DATABASE_URL": url})) as there:
            assert there.log.profile_for("email", "pg@example.com") is not None
        again = runner.invoke(cli, ["--data", str(tmp_path / "third"), "init", "--backend", url])
        assert again.exit_code != 0 and "already holds a persona store" in again.output
        wrong = runner.invoke(cli, ["--data", str(tmp_path / "fourth"), "init", "--backend", "mysql://x"])
        assert wrong.exit_code != 0 and "postgresql://" in wrong.output
        close_pool(secret_url)  # the init's pool (its URL had the password): no threads left behind


def test_without_password() -> None:
    assert without_password("postgresql://u:p%40ss@db.example:6432/x?sslmode=require") == (
        "postgresql://u@db.example:6432/x?sslmode=require", True)
    assert without_password("postgresql://u@db/x") == ("postgresql://u@db/x", False)


def test_an_unreachable_server_is_a_clear_error_that_names_no_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgresRecorder("postgresql://someone:hunter2@127.0.0.1:1/nowhere?connect_timeout=2")
    assert "127.0.0.1:1/nowhere" in str(caught.value) and "hunter2" not in str(caught.value)


def test_an_empty_database_is_named_and_not_created_by_accident() -> None:
    with pg_schema() as url, pytest.raises(ConfigurationError, match="persona --data DIR init --backend"):
        PostgresRecorder(url)


def test_chunks_are_spread_over_hash_partitions_and_cannot_be_truncated(persona: Persona) -> None:
    persona.log.append([event(f"p{n}@example.com", event_id=f"p{n}") for n in range(64)])
    url = persona.settings.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM chunks_p{i}").fetchone()[0]  # type: ignore[index]
                  for i in range(PARTITIONS)]
        bound = conn.execute("SELECT pg_get_partkeydef('chunks'::regclass)").fetchone()
    assert sum(counts) == 64 and sum(1 for c in counts if c) >= PARTITIONS // 2  # 64 streams, spread
    assert bound is not None and bound[0] == "HASH (stream_no)"
    for statement in ("TRUNCATE chunks", "TRUNCATE chunks_p3", "TRUNCATE event_keys", "TRUNCATE audit",
                      "DELETE FROM event_keys", "UPDATE chunks_p3 SET types = 'x'", "DELETE FROM chunks"):
        with pytest.raises(psycopg.Error, match="append-only"):
            raw_execute(persona, statement)


def test_a_writer_that_skips_the_lock_still_cannot_store_a_version_or_an_event_twice(persona: Persona) -> None:
    persona.log.append([event(event_id="once")])
    copy = ("INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types, keys,"
            " payload, hash) SELECT position + {shift}, stream_no, first_version + {shift}, last_version + {shift},"
            " recorded_at, types, keys, payload, hash FROM chunks LIMIT 1")
    with pytest.raises(psycopg.errors.UniqueViolation):  # the same (stream, version) again
        raw_execute(persona, copy.format(shift=0))
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream"):  # version 2 skipped
        raw_execute(persona, copy.format(shift=2))
    with pytest.raises(psycopg.errors.UniqueViolation):  # the same event id again
        raw_execute(persona, "INSERT INTO event_keys SELECT 0, keys FROM chunks LIMIT 1")
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream and the log"):
        raw_execute(persona, copy.format(shift=1).replace("position + 1", "position"))  # version 2, position 1 again
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream and the log"):
        # versions 2 and 3 in one statement, at one position
        raw_execute(persona, copy.replace("LIMIT 1", "UNION ALL SELECT 2, stream_no, 3, 3, recorded_at, types, keys,"
                                          " payload, hash FROM chunks LIMIT 2").format(shift=1))
    out_of_order = ("INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types, keys,"
                    " payload, hash) SELECT 3, stream_no, 2, 2, recorded_at, types, keys, payload, hash FROM chunks"
                    " UNION ALL SELECT 2, stream_no, 3, 3, recorded_at, types, keys, payload, hash FROM chunks")
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream and the log"):
        raw_execute(persona, out_of_order)  # versions 2 and 3 in one statement, 3 before 2 in the log
    (partition,) = persona.recorder.conn.execute("SELECT tableoid::regclass::text FROM chunks").fetchone()
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream and the log"):  # named directly
        raw_execute(persona, copy.format(shift=2).replace("INSERT INTO chunks", f"INSERT INTO {partition}"))
    assert persona.recorder.counts()["events"] == 1


def test_a_store_checking_chunks_row_by_row_checks_them_per_statement_once_opened(persona: Persona) -> None:
    """Revision 7: a store whose chunks were checked by a row trigger (two queries per row, while
    appends take turns) has it replaced by the statement trigger when opened, which refuses the same."""
    persona.log.append([event(event_id="old")])
    old = ("CREATE OR REPLACE FUNCTION persona_chunk_continues() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
           " IF NEW.first_version <> coalesce((SELECT max(c.last_version) FROM chunks c"
           " WHERE c.stream_no = NEW.stream_no), 0) + 1 THEN RAISE EXCEPTION 'refused'"
           " USING ERRCODE = 'unique_violation'; END IF; RETURN NEW; END $$")
    for statement in ("DROP TRIGGER chunks_continue ON chunks", old,
                      "CREATE TRIGGER chunks_continue BEFORE INSERT ON chunks FOR EACH ROW"
                      " EXECUTE FUNCTION persona_chunk_continues()",
                      "UPDATE meta SET value = '6' WHERE key = 'schema_revision'"):
        raw_execute(persona, statement)
    kind = ("SELECT t.tgtype & 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE t.tgname = 'chunks_continue' AND c.relname = 'chunks'"
            " AND c.relnamespace = current_schema()::regnamespace")
    assert persona.recorder.conn.execute(kind).fetchone() == (1,)  # (bit 1: FOR EACH ROW)
    with Persona.open(persona.settings) as again:
        assert again.recorder.get_meta("schema_revision") == "7"
        assert again.recorder.conn.execute(kind).fetchone() == (0,)  # per statement now
        again.log.append([event(event_id="new"), event("bob@example.com", event_id="bob")])
        assert verify(again).events == 3 and again.recorder.schema_problems() == []
    copy = ("INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types, keys,"
            " payload, hash) SELECT position + 10, stream_no, first_version + 1, last_version + 1,"
            " recorded_at, types, keys, payload, hash FROM chunks ORDER BY position DESC LIMIT 1")
    with pytest.raises(psycopg.errors.UniqueViolation, match="continue its stream and the log"):
        raw_execute(persona, copy.replace("+ 1,", "+ 2,"))  # the last stream's version 2 skipped


class Beside(threading.Thread):
    """Another writer (a Persona of its own) doing one thing in a thread: `waits()` returns once
    its connection is seen waiting on a lock (pg_stat_activity), `done()` once it has finished."""

    def __init__(self, settings: Settings, work: Any) -> None:
        super().__init__(daemon=True)
        self.other = Persona.open(settings)
        self.pid = self.other.recorder.conn.info.backend_pid  # (PostgresRecorder: its connection)
        self.work, self.result, self.failure = work, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.work(self.other)
        except BaseException as e:
            self.failure = e
        finally:
            self.other.close()

    def waits(self, url: str) -> None:
        deadline = time.monotonic() + 30  # ends a hang; measures nothing
        with psycopg.connect(url, autocommit=True) as watch:
            while watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                (self.pid,)).fetchone() != ("Lock",):
                assert self.is_alive() and time.monotonic() < deadline, "the other writer never waited"
                time.sleep(0.01)

    def done(self, timeout: float = 30) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the other writer is still waiting"
        if self.failure is not None:
            raise self.failure
        return self.result


def test_appends_run_side_by_side_and_wait_only_for_a_stream_they_share(persona: Persona) -> None:
    """Several writers (docs/scale.md): while one append is in flight — its stream held, its
    transaction open — another writer's append to someone else commits, and one to the same
    stream waits for it, then continues from the version it left."""
    persona.log.append([event("x@example.com", event_id="x1")])
    x = persona.log.profile_for("email", "x@example.com")
    assert x is not None
    rec, url = persona.recorder, str(persona.settings.database_url)
    with rec.transaction(concurrent=True):
        assert rec.beside_others()
        rec.heads([x], lock=True)  # an append to x in flight: x held, the log not yet
        other = Beside(persona.settings, lambda b: b.log.append([event("y@example.com", event_id="y1")]))
        assert other.done().appended == 1  # committed while ours is open (one lock for all: it waited)
        same = Beside(persona.settings, lambda c: c.log.append([event("x@example.com", event_id="x2")]))
        same.waits(url)
        persona.log.append([event("x@example.com", event_id="x3")])  # ours, in the open transaction
    assert same.done().appended == 1
    assert [e.event_id for e in persona.log.read(x)] == ["x1", "x3", "x2"]  # versions 1, 2, 3: none taken twice
    report = verify(persona)
    assert report.events == 4 and report.streams == 2


def test_two_writers_seeing_the_same_new_identifier_at_once_make_one_profile(persona: Persona) -> None:
    """The identity link's key claims a new identifier: the second writer waits for the first
    one's commit, learns it lost, and appends to the profile the first one made."""
    url = str(persona.settings.database_url)
    with persona.recorder.transaction(concurrent=True):
        persona.log.append([event("new@example.com", event_id="a1")])  # linked, not committed yet
        second = Beside(persona.settings, lambda b: b.log.append([event("new@example.com", event_id="b1")]))
        second.waits(url)
    result = second.done()
    assert result.appended == 1 and result.profiles_created == 0
    pid = persona.log.profile_for("email", "new@example.com")
    assert pid is not None and [e.event_id for e in persona.log.read(pid)] == ["a1", "b1"]
    assert verify(persona).streams == 1 and persona.recorder.counts()["keys"] == 1  # no second profile, no orphan key


def test_a_merge_waits_for_a_writer_holding_either_person(persona: Persona) -> None:
    """A person's read-model rows and merges are held by the row of their first stream: a merge
    arriving while another writer writes one of the two people's rows waits for that commit —
    also when neither stream the merge appends to is that first one."""
    def linked(a: str, b: str, event_id: str) -> Any:
        return event(a, "identity_linked", {"other": {"namespace": "email", "value": b}}, event_id=event_id)

    persona.log.append([event("r@example.com", event_id="r1")])
    persona.log.append([event("p@example.com", event_id="p1"), event("q@example.com", event_id="q1")])
    persona.log.append([linked("p@example.com", "r@example.com", "rp")])
    p, r = (persona.log.profile_for("email", f"{who}@example.com") for who in "pr")
    assert p is not None and identity.person_of(persona.recorder, p).id == r  # r's stream is the person's first
    with persona.recorder.transaction(concurrent=True):
        assert identity.hold_persons(persona.recorder, [p])[p].id == r  # a refresh of that person in flight
        merge = Beside(persona.settings, lambda b: b.log.append([linked("q@example.com", "p@example.com", "qp")]))
        merge.waits(str(persona.settings.database_url))  # (it appends to q's and p's streams only)
    assert merge.done().merges == 1
    assert len(identity.person_of(persona.recorder, p).members) == 3
    assert verify(persona).events == 9  # three events, two links and their four merge markers: every chain whole


def test_segment_changes_commit_in_the_order_they_are_numbered(persona: Persona) -> None:
    """Segment changes are read after a number (the `segmentChanged` subscription), as the log is
    by position: two refreshes beside each other write them in turns, so a change numbered first
    never commits after a later one that a reader has already passed."""
    persona.log.append([event(event_id="a"), event("bob@example.com", event_id="b")])
    alice, bob = (persona.log.profile_for("email", e) for e in ("alice@example.com", "bob@example.com"))
    assert alice is not None and bob is not None
    rec = persona.recorder

    def later(b: Persona) -> None:  # another process's refresh, beside ours
        with b.recorder.transaction(concurrent=True):
            b.recorder.change_memberships([("vip", bob)], [], 2)

    with rec.transaction(concurrent=True):
        rec.change_memberships([("vip", alice)], [], 1)  # numbered, not committed yet
        other = Beside(persona.settings, later)
        other.waits(str(persona.settings.database_url))  # for its turn: it has no number yet
    other.done()
    changes = rec.segment_changes()
    assert [(pid, at) for _, at, _, pid, _ in changes] == [(alice, 1), (bob, 2)]
    assert changes[0][0] < changes[1][0]  # numbered in the order they committed


def test_an_erasure_waits_for_appends_in_flight_and_they_wait_for_it(persona: Persona) -> None:
    """Everything but appends takes turns with them: an erasure waits until no append is open,
    and an append waits while an erasure (or any other exclusive transaction) is open."""
    persona.log.append([event("gone@example.com", event_id="g1")])
    url = str(persona.settings.database_url)
    with persona.recorder.transaction(concurrent=True):
        erasure = Beside(persona.settings, lambda b: erase_subject(b, "email", "gone@example.com"))
        erasure.waits(url)
        persona.log.append([event("gone@example.com", event_id="g2")])  # in flight before the erasure began
    assert erasure.done().receipt["receipt"]["counts"]["events"] == 2  # what was committed before it: both events
    with persona.recorder.transaction():
        late = Beside(persona.settings, lambda b: b.log.append([event("gone@example.com", event_id="g3")]))
        late.waits(url)
    assert late.done().profiles_created == 1  # after the erasure: a new person, never the erased stream
    report = verify(persona)
    assert report.erased == 1 and report.opened == 1


def test_an_old_snapshot_holding_erased_rows_is_reported_not_ignored(persona: Persona) -> None:
    """The rewrite (VACUUM FULL, `persona purge --full`) keeps a deleted row some open snapshot
    may still see: it says so, and once the reader is gone it clears the pages."""
    persona.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    wrapped = next(bytes(w) for p, _, w in persona.recorder.wrapped_keys() if p == pid)
    url = persona.settings.database_url
    assert url is not None
    with psycopg.connect(url) as reader:  # a transaction of its own: REPEATABLE READ, one snapshot
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM keys").fetchone() == (2,)
        erasure = erase_profile(persona, pid)
        assert erasure.wal_truncated is None and erasure.purge_due_by is not None  # no purge on the request path
        assert not persona.recorder.checkpoint(0.3)
        assert wrapped in store_bytes(persona)  # still there: the report was right to say so
    assert persona.recorder.checkpoint()
    assert wrapped not in store_bytes(persona)


@pytest.fixture
def persona(tmp_path: Path) -> Any:
    with pg_schema() as url, Persona.init(Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url})) as p:
        yield p


@contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """uvicorn serving `app` from a thread of this process (so the test can see the server's
    state and set its options) on a free loopback port; stopped when the block ends."""
    import uvicorn

    from tests.test_api_http import LOOPBACK, free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # ends a hang; it measures nothing
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    assert not thread.is_alive(), "the server did not stop"


@pytest.mark.slow
def test_a_served_subscription_hears_another_process_ingest_through_notify(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn serving the API on PostgreSQL; `persona ingest` in other processes. Both of the
    server's own polls (each subscription's, and the change feed's fallback) are set to an hour,
    so a message that comes at all was woken by the ingest's NOTIFY (LISTEN/NOTIFY, not a poll);
    each ingest starts once the subscription is seen waiting, so none lands unnoticed."""
    from persona.api import context
    from persona.api.app import create_app
    from persona.api.context import ServerOptions
    from tests.test_api_http import SUBSCRIBE, Server, opened, prepare, receive, send

    monkeypatch.setattr(context, "FEED_WAIT_S", 3600.0)
    with pg_schema() as url:
        settings, tokens, ids = prepare(tmp_path, url)
        app = create_app(settings, ServerOptions(subscription_poll_s=3600.0))
        email = "aiko.tanaka@example.com"
        pid = ids[email]
        line = tmp_path / "late.jsonl"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}, "PERSONA_DATABASE_URL": url}
        with uvicorn_serving(app) as base:
            state = app.state.api
            server = Server(base, settings, tokens, ids, tmp_path / "out", tmp_path / "err")

            async def subscribed() -> None:
                """The subscription has read the profile's version and waits for news."""
                deadline = time.monotonic() + 60
                while pid not in state.bus._waiters:
                    assert time.monotonic() < deadline, "the subscription never started waiting"
                    await asyncio.sleep(0.01)

            async def scenario() -> list[int]:
                ws = await opened(server, "ops")
                versions = []
                try:
                    assert (await receive(ws))["type"] == "connection_ack"
                    await send(ws, {"id": "s", "type": "subscribe", "payload": {"query": SUBSCRIBE,
                                                                                "variables": {"id": pid}}})
                    for n in range(3):
                        await subscribed()
                        line.write_text(orjson.dumps(record(email, data={"url": f"https://shop.example/late/{n}"},
                                                            event_id=f"late{n}")).decode() + "\n")
                        process = await asyncio.create_subprocess_exec(
                            sys.executable, "-m", "persona", "--data", str(settings.data_dir), "ingest", str(line),
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        assert await process.wait() == 0
                        # the deadline ends a hang (the polls would take an hour); pings do not extend it
                        message = await asyncio.wait_for(receive(ws, timeout=120), timeout=120)
                        assert (message["type"], message["id"]) == ("next", "s"), message
                        versions.append(message["payload"]["data"]["profileUpdated"]["version"])
                finally:
                    await ws.close()
                return versions

            try:
                versions = asyncio.run(asyncio.wait_for(scenario(), timeout=600))
                assert versions == sorted(set(versions)) and len(versions) == 3  # each ingest heard, in order
            finally:
                # Stopping waits for the change feed's wait in flight, an hour long: the next one is
                # short again, and a commit (and, should NOTIFY be what broke, a notification of
                # our own) wakes this one.
                monkeypatch.setattr(context, "FEED_WAIT_S", 1.0)
                with Persona.open(settings) as p:
                    p.log.append([event("wake.up@example.com", event_id="wake")])
                    channel = p.recorder.channel  # type: ignore[attr-defined]
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("SELECT pg_notify(%s, '')", (channel,))


def test_restore_reapplies_erasures_made_on_other_machines(persona: Persona, tmp_path: Path) -> None:
    """Each machine keeps its own erasure ledger; the shared store's tombstones fill the gap."""
    from persona.backup import backup, restore
    from persona.erasure import erase_subject
    from persona.verify import verify

    persona.log.append([event("x@example.com", event_id="x1"), event(event_id="a1")])
    old = backup(persona, tmp_path / "old.db")
    persona.log.append([event("y@example.com", event_id="y1")])  # after the backup
    x, y = persona.log.profile_for("email", "x@example.com"), persona.log.profile_for("email", "y@example.com")
    erase_subject(persona, "email", "x@example.com")
    erase_subject(persona, "email", "y@example.com")
    erased_at = persona.recorder.tombstone(x)
    persona.settings.ledger_path.unlink()  # both erased on another machine: this ledger never heard of them
    persona.close()
    info = restore(persona.settings, old.path)
    assert info.reapplied == [x]
    with Persona.open(persona.settings) as p:
        assert p.log.profile_for("email", "x@example.com") is None and p.recorder.tombstone(x) == erased_at
        assert p.recorder.tombstone(y) is not None  # not in the backup, still remembered as erased
        assert verify(p).erased == 2 and p.log.profile_for("email", "alice@example.com") is not None


def test_the_citus_layout_names_what_the_schema_still_breaks(persona: Persona) -> None:
    """docs/scale.md ("Citus"): the layout, checked over a live store's catalog against the rules
    Citus documents, finds exactly the changes the document says the schema still needs — and
    a table added without a place in the layout is named too."""
    from persona.store.citus import DISTRIBUTED, layout_problems, main

    conn = persona.recorder.conn
    assert layout_problems(conn) == [
        "chunks: has no column stream_id, its distribution column",
        "chunks: unique index chunks_pkey (stream_no, last_version) lacks stream_id, the distribution column",
        "streams: unique index streams_pkey (stream_no) lacks stream_id, the distribution column",
        "chunks: trigger chunks_continue reads chunks, a distributed table, of which it would see one shard",
        "key_filters: trigger key_filters_seal_in_order reads event_keys, a distributed table, of which it would"
        " see one shard",
    ]
    assert set(DISTRIBUTED) >= {"keys", "links", "profile_index", "snapshots"}  # the person's rows, and lookups
    raw_execute(persona, "CREATE UNIQUE INDEX keys_by_version ON keys (kek_version, wrapped)")
    assert "keys: unique index keys_by_version (kek_version, wrapped) lacks profile_id, the distribution column" \
        in layout_problems(conn)
    assert main([str(persona.settings.database_url)]) == 1  # the command line: problems found (URL: the schema)
