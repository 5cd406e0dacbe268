"""The physical purge after erasure (persona.purge). On PostgreSQL an erasure deletes the
person's rows at once, and one VACUUM per window removes the dead rows they leave. pg_dirtyread,
which reads dead rows, proves both: first that it finds the erased person's rows before the
purge, then that it finds nothing after. SQLite purges at once (the last test here, and
tests/test_erasure.py)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from starlette.exceptions import StarletteDeprecationWarning

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.cli import cli
from persona.erasure import erase_profile, erase_subject
from persona.errors import ConfigurationError
from persona.events import micros
from persona.projector import Projector
from persona.purge import Mark, mark_of, run
from persona.tokens import create_token
from tests.conftest import PG_URL, event, pg_schema
from tests.test_erasure import ALICE, populate

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from starlette.testclient import TestClient

# every table erasure deletes from, and the sealed snapshots: what the purge vacuums
PURGED = ("keys", "links", "merges", "members", "profile_index", "rfm", "predictions", "model_people",
          "quarantine", "quarantine_tags", "snapshots")
WINDOW_S = 15 * 60
# The test server is shared: another test's snapshot in the same database may hold a purge back
# for a moment. A bound on that wait, never a measure of speed.
SETTLE_S = 30.0


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with pg_schema() as url:
        yield Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url})


@pytest.fixture
def persona(settings: Settings) -> Iterator[Persona]:
    with Persona.init(settings) as p:
        yield p


def url_of(persona: Persona) -> str:
    url = persona.settings.database_url
    assert url is not None
    return url


def row_versions(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every version of every row pg_dirtyread finds in the purged tables, dead ones included."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_dirtyread SCHEMA public")
        except psycopg.errors.UniqueViolation:
            pass  # another test created it at the same moment
        except psycopg.Error as e:
            pytest.fail(f"the test server lacks the pg_dirtyread extension ({type(e).__name__}): install it with"
                        " `apt-get install postgresql-15-dirtyread` (.ci/run does); these tests prove the purge"
                        " with it and must not be skipped", pytrace=False)
        out = {}
        for table in PURGED:
            columns = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                                   " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                                   " ORDER BY attnum", (table,)).fetchall()
            shape = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
                                       for name, kind in columns)  # names and types from the catalog
            query = sql.SQL("SELECT * FROM public.pg_dirtyread(%s::regclass) AS t({})").format(shape)
            out[table] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                          for row in conn.execute(query, (table,)).fetchall()]  # the store's schema: search_path
    return out


def found(url: str, needles: list[bytes | str]) -> set[str]:
    """The purged tables in which some row version, live or dead, holds one of the needles."""
    def holds(value: Any) -> bool:
        return any(type(value) is type(n) and (value == n or (isinstance(value, (bytes, str)) and n in value))
                   for n in needles)
    return {table for table, rows in row_versions(url).items() if any(holds(v) for row in rows for v in row)}


def dead_rows(url: str) -> dict[str, int]:
    """Row versions pg_dirtyread finds beyond those a query sees, by table."""
    versions = row_versions(url)
    with psycopg.connect(url, autocommit=True) as conn:
        live = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                for t in PURGED}  # type: ignore[index]
    return {t: len(rows) - live[t] for t, rows in versions.items() if len(rows) != live[t]}


def index_items(url: str) -> bytes:
    """The keys of every entry of every index of the purged tables that points at a row (dead
    ones too), read by pageinspect. Not the pivots: a key that was a page boundary is copied
    there as a separator, and stays until the index is rebuilt (docs/postgresql.md)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect SCHEMA public")
        indexes = conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) / current_setting('block_size')::int"
            " FROM pg_index i WHERE i.indrelid = ANY(%s::text[]::regclass[])", (list(PURGED),)).fetchall()
        out = []
        for name, blocks in indexes:
            for block in range(1, int(blocks)):  # block 0 is the metapage
                out += [bytes.fromhex(d.replace(" ", "")) for (d,) in conn.execute(
                    "SELECT data FROM public.bt_page_items(%s, %s) WHERE htid IS NOT NULL", (name, block)).fetchall()]
    return b"|".join(out)


def needles_of(persona: Persona, pid: str) -> list[bytes | str]:
    wrapped = next(w for p, _, w in persona.recorder.wrapped_keys() if p == pid)
    return [pid, wrapped, persona.log.hash_identifier("email", ALICE),
            persona.log.hash_identifier("phone", "+8613911112222")]


def test_erasure_deletes_at_once_and_one_purge_leaves_no_dead_row(persona: Persona) -> None:
    url = url_of(persona)
    pid = populate(persona)  # Alice among 300 others: links, a quarantined record, her index row
    Projector(persona).refresh([pid], force_snapshots=True)
    needles = needles_of(persona, pid)
    link = persona.log.hash_identifier("email", ALICE)
    held = {"keys", "links", "quarantine_tags", "profile_index", "snapshots"}
    assert found(url, needles) == held and link in index_items(url)  # the searches see what they look for

    erasure = erase_subject(persona, "email", ALICE)
    body = erasure.receipt["receipt"]
    erased_at, due = datetime.fromisoformat(body["erased_at"]), datetime.fromisoformat(body["purge_due_by"])
    assert due == erased_at + timedelta(seconds=WINDOW_S) and erasure.purge_due_by == micros(due)
    assert erasure.wal_truncated is None and "wal_truncated" not in body and "purged_at" not in body
    # still on the pages as dead rows, with their index entries: what the purge is for
    assert found(url, needles) == held and link in index_items(url)
    assert set(dead_rows(url)) == held | {"quarantine"}
    # though gone for every query since the erasing commit (a read that meets a dead row may
    # prune it from its page then and there; its index entries stay until VACUUM)
    assert persona.recorder.resolve([link]) == {} and persona.recorder.heads([pid])[pid].wrapped is None
    assert link in index_items(url)

    early = run(persona, now=due - timedelta(microseconds=1))
    assert not early.ran and early.due == micros(due) and link in index_items(url)
    purged = run(persona, now=due, wait_s=SETTLE_S)
    assert purged.done and purged.due is None and mark_of(persona.recorder).pending is None
    assert found(url, needles) == set() and link not in index_items(url)
    assert dead_rows(url) == {}  # no dead row of anyone is left in those tables
    assert len(persona.log.read(persona.log.profile_for("email", "user7@example.com") or "")) == 1


def test_one_purge_serves_every_erasure_of_its_window(persona: Persona) -> None:
    persona.log.append([event(f"p{n}@example.com", event_id=f"p{n}") for n in range(5)])
    people = [persona.log.profile_for("email", f"p{n}@example.com") or "" for n in range(5)]
    start = datetime(2026, 6, 1, 12, tzinfo=UTC)
    dues = {erase_profile(persona, pid, now=start + timedelta(minutes=5 * n)).receipt["receipt"]["purge_due_by"]
            for n, pid in enumerate(people[:3])}
    assert dues == {(start + timedelta(seconds=WINDOW_S)).isoformat()}  # the first erasure's window, for all
    end = start + timedelta(seconds=WINDOW_S)
    assert not run(persona, now=end - timedelta(seconds=1)).ran
    assert found(url_of(persona), people[:3]) == {"keys", "links"}
    assert run(persona, now=end, wait_s=SETTLE_S).done
    assert found(url_of(persona), people) == {"keys", "links"}  # only the living
    assert dead_rows(url_of(persona)) == {}
    assert not run(persona, now=end + timedelta(hours=1)).ran  # nothing awaits a purge
    later = erase_profile(persona, people[3], now=end + timedelta(minutes=5)).receipt["receipt"]
    assert later["purge_due_by"] == (end + timedelta(minutes=5, seconds=WINDOW_S)).isoformat()  # a new window


def test_only_a_snapshot_in_this_database_holds_the_purge_back(persona: Persona) -> None:
    """VACUUM keeps a dead row that a snapshot of this database may still see, and the purge
    says so and stays due; a snapshot held in another database is neither waited for nor in the way."""
    url = url_of(persona)
    persona.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    elsewhere = psycopg.conninfo.make_conninfo(PG_URL, dbname="postgres")
    with psycopg.connect(elsewhere) as other, psycopg.connect(url) as here:
        for reader in (other, here):  # each a REPEATABLE READ transaction with its snapshot taken, left idle
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT count(*) FROM pg_class").fetchone()
        erase_profile(persona, pid)
        held = run(persona, force=True, wait_s=0.3)
        assert held.ran and not held.done and held.why is not None and "snapshot" in held.why
        assert found(url, [pid]) == {"keys", "links"} and mark_of(persona.recorder).pending is not None
        here.rollback()  # the reader in this database ends; the one in `postgres` stays open
        done = run(persona, force=True, wait_s=SETTLE_S)
        assert done.done and found(url, [pid]) == set() and dead_rows(url) == {}
        assert mark_of(persona.recorder).pending is None
        assert other.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # still holding its snapshot


def test_an_erasure_that_commits_while_a_purge_runs_waits_for_the_next(persona: Persona, settings: Settings) -> None:
    """A purge takes what is noted as it starts; an erasure committed meanwhile keeps its own
    window (the purge may have passed its rows already), and a purge that could not finish
    leaves what it took due."""
    url = url_of(persona)
    persona.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    alice, bob = (persona.log.profile_for("email", e) or "" for e in ("alice@example.com", "bob@example.com"))
    first = micros(datetime.fromisoformat(erase_profile(persona, alice).receipt["receipt"]["purge_due_by"]))
    outcome: list[Any] = []
    with psycopg.connect(url) as reader:  # holds the purge in its wait for old snapshots
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM keys").fetchone()

        def purge() -> None:
            with Persona.open(settings) as other:
                outcome.append(run(other, force=True, wait_s=60))

        purger = threading.Thread(target=purge)
        purger.start()
        deadline = time.monotonic() + 30
        while mark_of(persona.recorder).taken is None:  # the purge has started: it took Alice's erasure
            assert time.monotonic() < deadline and purger.is_alive(), outcome
            time.sleep(0.02)
        assert mark_of(persona.recorder).due is None
        assert run(persona, force=True).why == "another purge of this store is running"  # one at a time
        second = erase_profile(persona, bob).receipt["receipt"]  # committed while the purge waits
        reader.rollback()
        purger.join(timeout=60)
    assert outcome and outcome[0].done
    erased_at, due = (micros(datetime.fromisoformat(second[k])) for k in ("erased_at", "purge_due_by"))
    assert due == erased_at + WINDOW_S * 1_000_000 > first  # its own window: Alice's purge has begun
    assert mark_of(persona.recorder) == Mark(due, None, mark_of(persona.recorder).done)
    with psycopg.connect(url) as reader:  # a purge that cannot finish leaves what it took due
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1").fetchone()
        assert not run(persona, force=True, wait_s=0.1).done
    assert mark_of(persona.recorder).pending == due
    assert run(persona, force=True, wait_s=SETTLE_S).done and mark_of(persona.recorder).pending is None
    assert dead_rows(url) == {}


def test_the_server_purges_when_due_on_a_thread_of_its_own(tmp_path: Path) -> None:
    erase = ("mutation($id: ID) { eraseProfile(id: $id) { profileId erasedAt walTruncated purgedAt purgeDueBy"
             " receipt } }")
    with pg_schema() as url:
        settings = Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url, "PERSONA_PURGE_WINDOW": "1"})
        with Persona.init(settings) as p:
            p.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
            pid = p.log.profile_for("email", "alice@example.com")
            token = create_token(p, "ops", {"erasure:write"})
        with TestClient(create_app(settings, ServerOptions(purge_poll_s=0.1))) as client:
            response = client.post("/graphql", json={"query": erase, "variables": {"id": pid}},
                                   headers={"Authorization": f"Bearer {token}"})
            receipt = response.json()["data"]["eraseProfile"]
            assert receipt["walTruncated"] is None and receipt["purgedAt"] is None
            assert receipt["purgeDueBy"] and receipt["receipt"]["receipt"]["purge_due_by"]
            # the writer thread is kept busy from now on: a purge queued behind it would never run
            release = threading.Event()
            writer = client.app.state.api.writer
            client.portal.start_task_soon(writer.run, lambda _: release.wait(60))
            queued = client.portal.start_task_soon(writer.run, lambda _: "ran")  # behind the busy one
            try:
                with Persona.open(settings) as p:
                    deadline = time.monotonic() + 30
                    while mark_of(p.recorder).done is None:  # the server's purge task, once the window ends
                        assert time.monotonic() < deadline, "the server never purged"
                        time.sleep(0.05)
                    assert mark_of(p.recorder).pending is None
                assert not queued.done()  # the writer was busy all along
            finally:
                release.set()
            assert queued.result(timeout=30) == "ran"
        assert found(url, [pid or ""]) == set() and dead_rows(url) == {}


def test_persona_purge_runs_when_due_or_asked_and_says_why_not(persona: Persona, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = url_of(persona)
    monkeypatch.setenv("PERSONA_DATABASE_URL", url)
    persona.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    data = str(persona.settings.data_dir)
    runner = CliRunner()
    erased = runner.invoke(cli, ["--data", data, "erase", "--subject", "email:alice@example.com"])
    assert erased.exit_code == 0 and "physical purge: due by" in erased.output, erased.output
    due = runner.invoke(cli, ["--data", data, "purge"])
    assert due.exit_code == 0 and "not due until" in due.output
    with psycopg.connect(url) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1").fetchone()
        held = runner.invoke(cli, ["--data", data, "purge", "--now", "--wait", "0.2"])
    assert held.exit_code == 3 and "snapshot" in held.output and "alice" not in held.output
    done = runner.invoke(cli, ["--data", data, "purge", "--now", "--json"])
    doc = orjson.loads(done.output)
    assert done.exit_code == 0 and doc["ran"] and doc["done"] and doc["due"] is None and doc["last_purge"]
    assert found(url, ["alice"]) == set()
    again = runner.invoke(cli, ["--data", data, "purge"])
    assert again.exit_code == 0 and "nothing awaits a purge" in again.output


def test_the_rewrite_leaves_no_erased_byte_in_any_page(persona: Persona) -> None:
    """`persona purge --full`: what the plain purge cannot promise — freed space inside a page is
    not zeroed, and an emptied page keeps its bytes — the rewrite does (it blocks reads meanwhile)."""
    from tests.conftest import store_bytes

    pid = populate(persona)
    needles = [n if isinstance(n, bytes) else n.encode() for n in needles_of(persona, pid)[1:]]
    assert all(n in store_bytes(persona) for n in needles)
    erase_subject(persona, "email", ALICE)
    assert run(persona, force=True, rewrite=True, wait_s=SETTLE_S).done
    raw = store_bytes(persona)
    assert not [n for n in needles if n in raw] and dead_rows(url_of(persona)) == {}


def test_the_purge_window_is_a_setting(tmp_path: Path) -> None:
    assert Settings.load(tmp_path, env={}).purge_window_s == WINDOW_S
    assert Settings.load(tmp_path, env={"PERSONA_PURGE_WINDOW": "60"}).purge_window_s == 60
    with pytest.raises(ConfigurationError, match="PERSONA_PURGE_WINDOW"):
        Settings.load(tmp_path, env={"PERSONA_PURGE_WINDOW": "soon"})


def test_on_sqlite_each_erasure_purges_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_DATABASE_URL", raising=False)
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p:
        p.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    runner = CliRunner()
    data = str(settings.data_dir)
    erased = runner.invoke(cli, ["--data", data, "erase", "--subject", "email:alice@example.com", "--json"])
    body = orjson.loads(erased.output)["receipt"]
    assert erased.exit_code == 0 and body["wal_truncated"] is True and "purge_due_by" not in body
    assert datetime.fromisoformat(body["purged_at"]) >= datetime.fromisoformat(body["erased_at"])
    idle = runner.invoke(cli, ["--data", data, "purge"])
    assert idle.exit_code == 0 and "nothing awaits a purge (last purge" in idle.output
    forced = orjson.loads(runner.invoke(cli, ["--data", data, "purge", "--now", "--json"]).output)
    assert forced["ran"] and forced["done"] and forced["due"] is None
