"""Promises nothing else would catch breaking, each through the path users take, on both backends.

- `verify` notices an erased profile that holds a key, an identity link or a merge again;
- quarantined records go once PERSONA_QUARANTINE_DAYS have passed, not before;
- `persona keys rewrap` moves every key to the newest version of PERSONA_MASTER_KEY;
- the erasure ledger names an erasure before the erasing transaction commits, so a crash in
  between is reported by `verify` and finished by `erase` or `restore`;
- no event's raw `event_id` reaches any file of the data directory or page of the database.
"""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
import warnings
from collections.abc import Sequence
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from starlette.exceptions import StarletteDeprecationWarning

from persona import Persona, Settings
from persona.api.app import create_app
from persona.backup import backup
from persona.cli import cli
from persona.erasure import erase_subject
from persona.errors import ErasedError, KeyMismatchError, TamperError
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe, open_quarantined
from persona.linking import link
from persona.tokens import create_token
from persona.verify import verify
from tests.conftest import NOW, event, jsonl, record, store_bytes

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent


def with_env(settings: Settings, **env: str) -> Settings:
    """The same data directory and store, loaded the way a command loads them with these variables set."""
    if settings.database_url:
        env["PERSONA_DATABASE_URL"] = settings.database_url
    return Settings.load(settings.data_dir, env=env)


def run_cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Result:
    """`persona --data DIR ...` as a user runs it: only these PERSONA_* variables set."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PERSONA_")}
    if settings.database_url:
        clean["PERSONA_DATABASE_URL"] = settings.database_url
    clean.update(env or {})
    result = CliRunner(env=clean).invoke(cli, ["--data", str(settings.data_dir), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def raw(settings: Settings, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement straight to the database, on a connection of its own (no persona code)."""
    if settings.database_url is None:
        with closing(sqlite3.connect(settings.db_path, isolation_level=None)) as conn:
            return conn.execute(statement, params).fetchall()
    import psycopg

    with psycopg.connect(settings.database_url, autocommit=True) as pg:
        cursor = pg.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


# -- verify: an erased profile holds nothing ------------------------------------------------------
# (table, the erased profile's column(s)): rows erasure deletes, put back as they were
RESURRECTED = {
    "key": ("keys", "profile_id = ?", "still holds a data key"),
    "link": ("links", "profile_id = ?", "still has identity links"),
    "merge": ("merges", "a = ? OR b = ?", "is still recorded in a merge"),
}


@pytest.mark.parametrize("what", list(RESURRECTED))
def test_verify_notices_an_erased_profile_holding_a_key_link_or_merge_again(settings: Settings, what: str) -> None:
    """What a botched restore, a half-done manual repair or an attacker with the database would
    leave: one of the rows erasure deleted, back in place byte for byte."""
    table, where, says = RESURRECTED[what]
    with Persona.init(settings) as persona:
        persona.log.append([event("ann@example.com", event_id="a1"), event("bob@example.com", event_id="b1"),
                            event("cy@example.com", event_id="c1")])
        merged = link(persona, ("email", "ann@example.com"), ("email", "bob@example.com"))
        ann = persona.log.profile_for("email", "ann@example.com")
        assert ann is not None and merged.person == ann  # ann's stream is the older: it names the person
        ids = (ann, ann) if what == "merge" else (ann,)
        kept = raw(settings, f"SELECT * FROM {table} WHERE {where}", ids)  # constant names, from the table above
        assert kept, f"nothing of ann's in {table} to put back"
        erase_subject(persona, "email", "ann@example.com")  # the merged person: ann and bob
        assert raw(settings, f"SELECT * FROM {table} WHERE {where}", ids) == []
        assert verify(persona).erased == 2
    assert run_cli(settings, "verify").exit_code == 0

    for row in kept:
        raw(settings, f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    with Persona.open(settings) as persona, pytest.raises(TamperError) as info:
        verify(persona)
    assert f"erased profile {ann} {says}" in str(info.value)
    result = run_cli(settings, "verify")
    assert result.exit_code == 2
    assert "TAMPERED" in result.stderr and ann in result.stderr and says in result.stderr
    assert "ok:" not in result.stdout


def test_verify_notices_an_erasure_whose_tombstone_was_removed(settings: Settings) -> None:
    """The tombstone is what a PostgreSQL restore re-erases from, and what `verify` counts: someone
    who gets past the triggers and deletes it must not leave a store that verifies."""
    with Persona.init(settings) as persona:
        persona.log.append([event("ann@example.com", event_id="a1"), event("bob@example.com", event_id="b1")])
        ann = persona.log.profile_for("email", "ann@example.com")
        assert ann is not None
        erase_subject(persona, "email", "ann@example.com")
        assert verify(persona).erased == 1
    if settings.database_url is None:  # the attacker drops SQLite's trigger, or switches PostgreSQL's off
        raw(settings, "DROP TRIGGER tombstones_are_final_delete")
        raw(settings, "DELETE FROM tombstones")
    else:
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True) as pg:
            pg.execute("SET session_replication_role = replica")
            pg.execute("DELETE FROM tombstones")
    with Persona.open(settings) as persona, pytest.raises(TamperError, match=f"profile {ann} has no data key and no"
                                                          " tombstone"):
        verify(persona)
    assert run_cli(settings, "verify").exit_code == 2


# -- quarantine expiry -----------------------------------------------------------------------------
def test_quarantined_records_expire_after_PERSONA_QUARANTINE_DAYS(settings: Settings) -> None:
    three = with_env(settings, PERSONA_QUARANTINE_DAYS="3")
    assert three.quarantine_days == 3
    ghost = b'{"source": "web", "type": "page_viewed", "subject": {"namespace": "email", "value": "ghost@example.com"'
    late = b'{"type": "nope", "subject": {"namespace": "email", "value": "late@example.com"}}'
    with Persona.init(three) as persona:
        def ingest_at(days: float, *lines: bytes) -> None:
            ingest_jsonl(persona, list(lines), origin="feed.jsonl", now=NOW + timedelta(days=days))

        def held() -> list[tuple[str, str]]:
            return [(r["reason"].split(":")[0], r["expires_at"]) for r in describe(persona)]

        ingest_at(0, ghost, orjson.dumps(record("ok@example.com", event_id="ok1")))
        ingest_at(2, late)
        first, second = (NOW + timedelta(days=d) for d in (3, 5))
        assert held() == [("record", first.isoformat()), ("source", second.isoformat())]
        assert open_quarantined(persona, describe(persona)[0]["id"]) == ghost  # still there to be fixed

        ingest_at(3 - 1 / 86_400)  # a second before the first expires: both kept
        assert held() == [("record", first.isoformat()), ("source", second.isoformat())]
        ingest_at(3)  # the first has expired; the second has two days to go
        assert held() == [("source", second.isoformat())]
        ingest_at(5)
        assert held() == [] and persona.recorder.counts()["quarantine"] == 0
        # their identifier tags went with them: erasing the person finds nothing left to purge
        digest = persona.log.hash_identifier("email", "ghost@example.com")
        assert persona.recorder.purge_tagged([digest]) == 0


# -- keys rewrap with keys from the environment -----------------------------------------------------
def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def test_keys_rewrap_moves_every_key_to_the_new_environment_master_key(settings: Settings) -> None:
    old, new = os.urandom(32), os.urandom(32)
    secrets = {"PERSONA_PEPPER": b64(os.urandom(32)), "PERSONA_SIGNING_KEY": b64(os.urandom(32))}
    before = with_env(settings, PERSONA_MASTER_KEY=b64(old), **secrets)
    both = {"PERSONA_MASTER_KEY": f"1:{b64(old)},2:{b64(new)}", **secrets}
    after = {"PERSONA_MASTER_KEY": f"2:{b64(new)}", **secrets}
    people = ("ann@example.com", "bob@example.com", "cy@example.com")
    bad = b'{"source": "web", "subject": {"namespace": "email", "value": "ann@example.com"}, "oops'
    with Persona.init(before) as persona:
        ingest_jsonl(persona, [*(orjson.dumps(record(p, event_id=f"{p}-1")) for p in people), bad], origin="f")
        pids = {p: persona.log.profile_for("email", p) for p in people}
        versions = {v for _, v, _ in persona.recorder.wrapped_keys()}
        wrapped = {pid: bytes(w) for pid, _, w in persona.recorder.wrapped_keys()}
    assert not settings.key_file.exists() and versions == {1}
    with pytest.raises(KeyMismatchError, match=r"lacks master key version\(s\) \[1\]"):
        Persona.open(with_env(settings, **after))  # the old version cannot go yet: every key is under it

    result = run_cli(settings, "keys", "rewrap", env=both)
    assert result.exit_code == 0, result.output
    assert "re-wrapped 3 data keys under version 2" in result.stdout

    with Persona.open(with_env(settings, **after)) as persona:  # the old master key is gone from the environment
        rewrapped = {pid: (v, bytes(w)) for pid, v, w in persona.recorder.wrapped_keys()}
        assert set(rewrapped) == set(wrapped)
        assert all(v == 2 and w != wrapped[pid] for pid, (v, w) in rewrapped.items())
        for person, pid in pids.items():
            assert pid is not None and [e.event_id for e in persona.log.read(pid)] == [f"{person}-1"]
        assert open_quarantined(persona, describe(persona)[0]["id"]) == bad  # the system keys moved too
        assert verify(persona).opened == 3
    assert run_cli(settings, "verify", env=after).exit_code == 0
    assert run_cli(settings, "keys", "rewrap", env=after).stdout.startswith("re-wrapped 0 data keys")


# -- the erasure ledger is written before the erasing commit ----------------------------------------
CRASH_INSIDE_ERASE = """
import os, signal, sys
from persona import Persona, Settings
from persona.erasure import erase_profile

with Persona.open(Settings.load(sys.argv[1])) as persona:
    def crash(*args, **kwargs):  # the first write after the ledger's line: the process dies here
        os.kill(os.getpid(), signal.SIGKILL)
    persona.recorder.erase = crash
    erase_profile(persona, sys.argv[2])
print("the erasure finished: the crash never came")
"""


@pytest.mark.parametrize("finish", ["erase", "restore"])
def test_a_crash_between_the_ledger_and_the_commit_is_reported_and_finished(settings: Settings, tmp_path: Path,
                                                                             finish: str) -> None:
    with Persona.init(settings) as persona:
        persona.log.append([event("ann@example.com", event_id="a1"), event("bob@example.com", event_id="b1")])
        ann, bob = (persona.log.profile_for("email", e) for e in ("ann@example.com", "bob@example.com"))
        assert ann is not None and bob is not None
        taken = backup(persona, tmp_path / "before.db").path
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    if settings.database_url:
        env["PERSONA_DATABASE_URL"] = settings.database_url
    child = subprocess.run([sys.executable, "-c", CRASH_INSIDE_ERASE, str(settings.data_dir), ann], env=env,
                           cwd=ROOT, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    assert settings.ledger_path.exists() and ann.encode() in settings.ledger_path.read_bytes()  # named first
    with Persona.open(settings) as persona:  # ... and the database never heard of it
        assert persona.recorder.tombstone(ann) is None
        assert [e.event_id for e in persona.log.read(ann)] == ["a1"]
    unfinished = run_cli(settings, "verify")
    assert unfinished.exit_code != 0
    assert ann in unfinished.stderr and "ok:" not in unfinished.stdout

    if finish == "erase":
        done = run_cli(settings, "erase", "--profile", ann)
        assert done.exit_code == 0, done.output
        assert f"erased {ann}" in done.stdout
    else:
        done = run_cli(settings, "restore", str(taken), "--yes")  # the backup still holds ann's key
        assert done.exit_code == 0, done.output
    result = run_cli(settings, "verify")
    assert result.exit_code == 0, result.output
    with Persona.open(settings) as persona:
        assert verify(persona).erased == 1
        with pytest.raises(ErasedError):
            persona.log.read(ann)
        assert persona.recorder.tombstone(ann) is not None
        assert [e.event_id for e in persona.log.read(bob)] == ["b1"]


# -- no raw event id on disk ----------------------------------------------------------------------
def test_no_raw_event_id_reaches_the_disk(settings: Settings, tmp_path: Path) -> None:
    """Event ids are idempotency keys a source chose (an order number, a message id): they are kept
    only keyed-hashed (the idempotency key) and sealed inside the payload."""
    tag = uuid.uuid4().hex[:8]
    ids = [f"evid{tag}{kind}" for kind in ("web", "order", "crm", "link", "late", "api", "bad", "broken")]
    web, order, crm, linked, late, api, bad, broken = ids
    lines = [
        record("ann@example.com", event_id=web),
        record("ann@example.com", "order_placed", {"order_id": "o-1", "amount": "12.50", "currency": "EUR"},
               event_id=order, source="shop"),
        record("bob@example.com", "profile_updated", {"city": "Lyon", "birth_year": 1985}, event_id=crm,
               source="crm"),
        record("ann@example.com", "identity_linked", {"other": {"namespace": "email", "value": "bob@example.com"}},
               event_id=linked),  # merges two people: its own id goes into the merge markers
        record("cy@example.com", event_id=late),
        {**record("dee@example.com", event_id=bad), "type": "not_a_type"},  # quarantined, with its id
    ]
    feed = tmp_path / f"feed-{tag}.jsonl"  # outside the data directory
    feed.write_bytes(jsonl(*lines, b'{"event_id": "' + broken.encode() + b'", "source": "web", "type'))
    assert all(i.encode() in feed.read_bytes() for i in ids if i != api)  # the needles are spelled as sent

    snapshots = with_env(settings, PERSONA_SNAPSHOT_EVERY="1")  # a snapshot after every event
    Persona.init(snapshots).close()
    env = {"PERSONA_SNAPSHOT_EVERY": "1"}
    for _ in range(2):  # the second time, every event is a duplicate
        assert run_cli(snapshots, "ingest", str(feed), env=env).exit_code == 0
    assert run_cli(snapshots, "rebuild", env=env).exit_code == 0
    assert run_cli(snapshots, "erase", "--subject", "email:cy@example.com", env=env).exit_code == 0
    with Persona.open(snapshots) as persona:
        token = create_token(persona, "writer", frozenset({"events:write", "profiles:read", "history:read"}))
    with TestClient(create_app(snapshots)) as client:  # the API's own ingest and its audit trail
        response = client.post("/graphql", headers={"Authorization": f"Bearer {token}"}, json={
            "query": "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { appended } }",
            "variables": {"e": [{"source": "web", "type": "page_viewed", "occurredAt": "2026-05-02T10:00:00Z",
                                 "eventId": api, "subject": {"namespace": "email", "value": "ann@example.com"},
                                 "data": {"url": "https://shop.example/api"}}]}})
        assert response.json()["data"]["ingestEvents"]["appended"] == 1
        read = client.post("/graphql", headers={"Authorization": f"Bearer {token}"}, json={
            "query": '{ profile(subject: {namespace: "email", value: "ann@example.com"}) {'
                     ' id history { nodes { id } } } }'}).json()["data"]["profile"]
        assert api in {node["id"] for node in read["history"]["nodes"]}  # the API reads it back, opened

    with Persona.open(snapshots) as persona:
        assert persona.recorder.counts()["quarantine"] == 2
        assert sum(1 for _ in persona.log.iter_all()) >= 5
        found = store_bytes(persona)  # every file of the data directory (WAL too), every page of the schema
        # positive controls: the search sees plaintext the store does keep, beside the events
        assert feed.name.encode() in found  # the quarantine's origin
        assert b"identity_linked" in found and read["id"].encode() in found  # events' types, profile ids
    for needle in ids:
        assert needle.encode() not in found, f"a raw event id ({needle}) is on disk"
