"""Shared fixtures: real SQLite files in a temporary directory, a real PostgreSQL server, real keys.

The conformance suite (the modules in CONFORMANCE) runs each of its tests once per backend:
their `settings` fixture gives a fresh data directory on SQLite, then one whose store is a
fresh schema of the PostgreSQL server at PERSONA_TEST_PG (default: the local test database).
A test about SQLite's own files is marked `sqlite_only` and says so.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import settings as hypothesis_settings

from persona import Persona, Settings
from persona.events import Event, validate

if TYPE_CHECKING:
    from tests.api_world import Api, World

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# CI runs the same examples every time (a red build is reproducible, never a dice roll);
# locally hypothesis explores new ones on each run.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


PG_URL = os.environ.get("PERSONA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")
CONFORMANCE = {"test_backup", "test_conformance", "test_eventlog", "test_erasure", "test_identity", "test_ingest",
               "test_keys", "test_keyset", "test_projector", "test_promises", "test_recovery", "test_profiles",
               "test_population", "test_purity", "test_write_tokens", "test_memberships",
               "test_destinations", "test_recommend"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """The PostgreSQL half needs a server: say so plainly, before any test runs."""
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        raise pytest.UsageError(
            f"the conformance suite runs on PostgreSQL too, and {PG_URL} cannot be reached ({type(e).__name__}):"
            " start the server (.ci/run does), or point PERSONA_TEST_PG at one (trust auth, an empty database)"
        ) from None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """PERSONA_HARDEN_REPORT=path: what the hardening suite tried, as JSON, added to what the
    file holds (scripts/harden reads it), with the run's outcome. Under pytest-xdist a worker hands
    its counts to the controlling process (pytest_testnodedown), which writes them."""
    from tests.hardening import LONG, TRIED

    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a worker: its tallies go to the controller
        output["tried"] = dict(TRIED)
        return
    path = os.environ.get("PERSONA_HARDEN_REPORT")
    if not path:
        return

    report = Path(path)
    merged: dict[str, Any] = orjson.loads(report.read_bytes()) if report.exists() and report.stat().st_size else {}
    tried = merged.setdefault("tried", {})
    for what, count in TRIED.items():
        tried[what] = tried.get(what, 0) + count
    runs = merged.setdefault("runs", [])
    runs.append({"long": LONG, "exitstatus": int(exitstatus), "tests": session.testscollected,
                 "failed": session.testsfailed})
    report.write_bytes(orjson.dumps(merged, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist, in the controlling process: a worker's tallies, added to the run's."""
    from tests.hardening import TRIED

    TRIED.update(getattr(node, "workeroutput", {}).get("tried", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the hardening suite tried (tests/hardening.py): inputs, faults, kills."""
    from tests.hardening import TRIED

    if TRIED:
        terminalreporter.section("hardening: what was tried")
        for what, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:>9,}  {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis names each GraphQL operation's test `test[Query.profile]` but gives them all one
    node id; pytest-xdist schedules by node id, so it ran one operation of thirteen. Each gets the
    id its name says."""
    counted: dict[str, int] = {}
    for item in items:
        counted[item.nodeid] = counted.get(item.nodeid, 0) + 1
    for item in items:
        _, bracket, suffix = item.name.partition("[")
        if counted[item.nodeid] > 1 and bracket and not item.nodeid.endswith("]"):
            named = f"{item.nodeid}[{suffix}"
            if hasattr(item, "_id"):  # pytest 9 keeps a structured id
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(named)
            else:
                item._nodeid = named


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rpartition(".")[2]
        both = module in CONFORMANCE and metafunc.definition.get_closest_marker("sqlite_only") is None
        metafunc.parametrize("backend", BACKENDS if both else BACKENDS[:1])


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh, empty schema on the test server: its URL (search_path set), dropped afterwards."""
    import psycopg

    from persona.store.postgres import close_pool

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")  # a generated name, never input
    url = f"{PG_URL}?options=-csearch_path%3D{name}"
    try:
        yield url
    finally:
        close_pool(url)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def settings(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    if backend == "sqlite":
        yield Settings.load(tmp_path / "data", env={})
        return
    with pg_schema() as url:
        # the CLI in this process and child processes find the store the same way users' do
        monkeypatch.setenv("PERSONA_DATABASE_URL", url)
        yield Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url})


@pytest.fixture
def persona(settings: Settings) -> Iterator[Persona]:
    with Persona.init(settings) as p:
        yield p


# The GraphQL API's tests share these (tests/api_world.py): a world and an app over it, built once per
# test module that asks for them, so that a module's tokens, budgets and audit are its own. The API
# loads only then: its helpers are imported inside the fixtures.
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from tests.api_world import make_world

    return make_world(tmp_path_factory)


@pytest.fixture(scope="module")
def api(world: World) -> Iterator[Api]:
    from tests.api_world import serve

    with serve(world) as running:
        yield running


class Clock:
    """A monotonic clock that moves only when the test says so (for rate limits and caches)."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # from the real clock's present: never behind what it replaces

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(
    email: str = "alice@example.com",
    kind: str = "page_viewed",
    data: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    namespace: str = "email",
    occurred_at: str = "2026-05-01T10:00:00+08:00",
    source: str = "web",
) -> dict[str, Any]:
    """One canonical record as a source would send it."""
    doc: dict[str, Any] = {
        "source": source,
        "type": kind,
        "occurred_at": occurred_at,
        "subject": {"namespace": namespace, "value": email},
        "data": data if data is not None else {"url": f"https://shop.example/p/{event_id or 'x'}"},
    }
    if event_id is not None:
        doc["event_id"] = event_id
    return doc


def event(*args: Any, **kwargs: Any) -> Event:
    return validate(record(*args, **kwargs), now=NOW, max_bytes=64 * 1024)


def jsonl(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def order(email: str, eid: str, amount: str, at: str = "2026-05-01T00:00:00Z") -> dict[str, object]:
    return record(email, "order_placed", {"order_id": eid, "amount": amount, "currency": "EUR"},
                  occurred_at=at, event_id=eid, source="shop")


def store_bytes(persona: Persona) -> bytes:
    """Every byte the store keeps: the data directory's files, and on PostgreSQL every page of
    every table, index and TOAST table of its schema as the server holds them (dead rows too,
    read through pageinspect)."""
    raw = raw_bytes_of(persona.settings.data_dir)
    url = persona.settings.database_url
    if url is None:
        return raw
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect SCHEMA public")
        relations = conn.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) / current_setting('block_size')::int"
            " FROM pg_class c WHERE c.relkind IN ('r', 'i', 't') AND (c.relnamespace = current_schema()::regnamespace"
            " OR c.oid IN (SELECT reltoastrelid FROM pg_class WHERE relnamespace = current_schema()::regnamespace)"
            " OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT reltoastrelid FROM pg_class"
            " WHERE relnamespace = current_schema()::regnamespace)))").fetchall()
        pages = [raw]
        for name, blocks in relations:
            for block in range(int(blocks)):
                pages.append(conn.execute("SELECT public.get_raw_page(%s, %s)", (name, block)).fetchone()[0])
    return b"".join(bytes(p) for p in pages)


def raw_execute(persona: Persona, statement: str) -> None:
    """One statement on a connection of its own, straight to the database (no persona code)."""
    url = persona.settings.database_url
    if url is None:
        import sqlite3

        conn = sqlite3.connect(persona.settings.db_path)
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute(statement)  # type: ignore[arg-type]


def raw_bytes_of(data_dir: Path) -> bytes:
    """Every byte of every file under the data directory (database, WAL, key file, ledger...)."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())
