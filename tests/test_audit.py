"""The audit log: every access to a person's data through the API or the command line, every
refusal, with the question's shape and never a value — and it stays append-only.

In-process servers (Starlette's TestClient around `create_app`, lifespan included: the audit
buffer is flushed when the app shuts down), real SQLite files, a real PostgreSQL schema for
the migration of old stores.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.audit import AuditBuffer, filter_shape, named
from persona.cli import cli
from persona.core import load_keyring
from persona.ingest import ingest_jsonl
from persona.population import ProfileFilter
from persona.rfm import compute_rfm
from persona.store import open_store
from persona.tokens import create_token
from persona.verify import verify
from tests.api_world import SAMPLE, Api, TestClient, crowd_email, crowd_records, lines_of
from tests.conftest import pg_schema, record

LI = "li.wei@example.com"
MARIA = "maria.garcia@example.com"
# values a client sends that must never reach the audit log, whatever field they travel in
MARKERS = ("zq.audit.marker@example.com", "zqmarkervalue", "zq-cookie-91f", "123.4567", "9876.54")
EVERY_SCOPE = frozenset({"profiles:read", "history:read", "predictions:read", "insights:read", "events:write",
                         "erasure:write", "models:write"})


@dataclass
class Entry:
    seq: int
    writer: str
    operation: str
    profile_id: str
    fields: str
    outcome: str
    detail: dict[str, Any]


def entries(settings: Settings) -> list[Entry]:
    with Persona.open(settings) as p:
        rows = p.recorder.audit_rows(limit=1_000_000)
    return [Entry(seq, writer, op, pid, fields, outcome, json.loads(detail))
            for seq, _, writer, op, pid, fields, outcome, detail in rows]


def audit_bytes(settings: Settings) -> bytes:
    with Persona.open(settings) as p:
        return orjson.dumps(p.recorder.audit_rows(limit=1_000_000))


@pytest.fixture
def store(tmp_path: Path) -> tuple[Settings, dict[str, str], dict[str, str]]:
    """The sample people and a crowd of 110 (enough for k-anonymous groups); a token per need."""
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p:
        ingest_jsonl(p, SAMPLE.read_bytes().splitlines(), origin="sample")
        ingest_jsonl(p, lines_of(crowd_records(datetime.now(UTC))), origin="crowd")
        compute_rfm(p)
        tokens = {"ops": create_token(p, "ops", EVERY_SCOPE, epsilon_budget=10.0,
                                      types=frozenset({"page_viewed", "identity_linked"})),
                  "reader": create_token(p, "reader", frozenset({"profiles:read"})),
                  "trickle": create_token(p, "trickle", frozenset({"profiles:read"}), rate_per_s=0.01),
                  "broke": create_token(p, "broke", frozenset({"insights:read"}), epsilon_budget=0.0)}
        ids = {email: p.log.profile_for("email", email) or "" for email in (LI, MARIA, crowd_email(1))}
    return settings, tokens, ids


def test_every_api_access_is_audited_with_its_shape_and_never_a_value(
        store: tuple[Settings, dict[str, str], dict[str, str]]) -> None:
    settings, tokens, ids = store
    marker_email, marker_value, marker_cookie, marker_min, marker_max = MARKERS
    with TestClient(create_app(settings)) as client:
        api = Api(client, tokens, default="ops")
        # a profile and its history, by an identifier
        read = api.data("query($s: SubjectInput) { profile(subject: $s) { attributes history(first: 3,"
                        ' types: ["order_placed"]) { nodes { type } } } }', {"s": {"namespace": "email", "value": LI}})
        assert read["profile"]["history"]["nodes"]
        nobody = api.data("query($s: SubjectInput) { profile(subject: $s) { id } }",
                          {"s": {"namespace": "cookie", "value": marker_cookie}})
        assert nobody["profile"] is None  # no one was read: nothing to audit
        # insights whose every name and value a client chose: only known names and kinds are kept
        where = {"attributes": {"country": "FR", marker_value: marker_email},
                 "features": [{"name": "monetary", "min": float(marker_min), "max": float(marker_max)},
                              {"name": marker_email, "max": 1}], "segments": ["stage:active"]}
        answer = api.data("query($by: [String!], $f: ProfileFilter) { insights(groupBy: $by, metric: \"monetary\","
                          " filter: $f, epsilon: 1.0) { k } }", {"by": ["country", marker_email], "f": where})
        assert answer["insights"]["k"] == 5
        # ingest, link, unlink, erase
        events = [{"source": "web", "type": "page_viewed", "occurredAt": "2026-03-01T10:00:00Z", "eventId": f"a-{n}",
                   "subject": {"namespace": "email", "value": who}, "data": {"url": f"https://shop.example/{n}"}}
                  for n, who in enumerate((MARIA, marker_email))]
        ingested = api.data("mutation($e: [EventInput!]!) { ingestEvents(events: $e) { appended profilesCreated } }",
                            {"e": events})["ingestEvents"]
        assert ingested == {"appended": 2, "profilesCreated": 1}
        pair = {"a": {"namespace": "email", "value": marker_email}, "b": {"namespace": "email", "value": MARIA}}
        person = api.data("mutation($a: SubjectInput!, $b: SubjectInput!) { linkIdentities(a: $a, b: $b) { id } }",
                          pair)["linkIdentities"]["id"]  # two profiles merged into one person
        api.data("mutation($a: SubjectInput!, $b: SubjectInput!) { unlinkIdentities(a: $a, b: $b) { id } }", pair)
        erase = "mutation($s: SubjectInput) { eraseProfile(subject: $s) { profileId } }"
        erased = api.data(erase, {"s": {"namespace": "email", "value": marker_email}})["eraseProfile"]["profileId"]
        gone = api.post(erase, {"s": {"namespace": "email", "value": marker_email}}).json()
        assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        trained = api.post('mutation { trainModel(name: "churn_91d", cutoffs: ["2026-01-01T00:00:00Z"]) { name } }')
        assert trained.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"  # one cutoff: refused, read
        for change in ('promoteModel(name: "churn_91d", version: 1)', 'rollbackModel(name: "churn_91d")'):
            refused = api.post(f"mutation {{ {change} {{ name }} }}").json()["errors"][0]  # no such model
            assert refused["extensions"]["code"] == "BAD_REQUEST" and "no model named" in refused["message"]
    found = entries(settings)
    ours = [e for e in found if e.writer == "ops"]
    by_op: dict[str, list[Entry]] = {}
    for e in ours:
        by_op.setdefault(e.operation, []).append(e)
    assert [(e.profile_id, e.fields, e.outcome, e.detail) for e in by_op["profile"]] == [
        (ids[LI], "attributes,history", "ok", {"subject": "email"})]
    assert [(e.profile_id, e.fields, e.detail) for e in by_op["history"]] == [
        (ids[LI], "", {"first": 3, "types": 1})]
    [insight] = by_op["insights"]
    charged = insight.detail.pop("charged")  # what the answer cost: ε (no more than asked) and δ
    assert 0.9 < charged[0] <= 1.0 and 0 < charged[1] <= 1e-12
    assert (insight.profile_id, insight.fields, insight.outcome, insight.detail) == (
        "", "", "ok", {"groupBy": ["country", "other"], "metric": "monetary", "epsilon": 1.0,
                       "filter": {"attributes": ["country", "other"], "segments": 1,
                                  "features": {"monetary": ["min", "max"], "other": ["max"]}}})
    ingests = by_op["ingestEvents"]
    assert [e.detail for e in ingests if not e.profile_id] == [
        {"received": 2, "appended": 2, "profilesCreated": 1}]
    assert {e.profile_id for e in ingests if e.profile_id} == {ids[MARIA], erased}  # whose logs grew
    changes = [e for e in by_op["linkIdentities"] if not e.fields]
    assert [(e.profile_id, e.detail) for e in changes] == [(person, {"namespaces": ["email"], "merged": True})]
    assert [(e.profile_id, e.fields) for e in by_op["linkIdentities"] if e.fields] == [(person, "id")]  # its answer
    unlinks = [e for e in by_op["unlinkIdentities"] if not e.fields]
    assert {e.profile_id for e in unlinks} == {ids[MARIA], erased}
    assert all(e.detail == {"namespaces": ["email"], "mergesUndone": 1} for e in unlinks)
    assert [(e.profile_id, e.outcome, e.detail) for e in by_op["eraseProfile"]] == [
        (erased, "ok", {"subject": "email"}), ("", "NOT_FOUND", {"subject": "email", "count": 1})]
    assert [(e.outcome, e.detail) for e in by_op["trainModel"]] == [  # refused, recorded once it had run
        ("BAD_REQUEST", {"model": "churn_91d", "cutoffs": 1, "count": 1})]
    assert [(e.outcome, e.detail) for e in by_op["promoteModel"]] == [
        ("BAD_REQUEST", {"model": "churn_91d", "version": 1, "count": 1})]
    assert [(e.outcome, e.detail) for e in by_op["rollbackModel"]] == [
        ("BAD_REQUEST", {"model": "churn_91d", "count": 1})]
    # nothing a client sent as a value, and no identifier, is in the audit table
    raw = audit_bytes(settings)
    stored = raw.lower()
    assert ids[LI].encode() in stored  # positive control: pseudonyms are there
    for needle in (*MARKERS, LI, MARIA):
        assert needle.lower().encode() not in stored, needle
    assert b'"FR"' not in raw and b"stage:active" not in raw
    # `persona audit --json` shows every entry with its outcome and detail
    shown = CliRunner().invoke(cli, ["--data", str(settings.data_dir), "audit", "--json"], catch_exceptions=False)
    assert shown.exit_code == 0
    lines = [json.loads(line) for line in shown.output.splitlines()]
    assert len(lines) == len(found)
    insight = next(line for line in lines if line["operation"] == "insights")
    assert insight["outcome"] == "ok" and insight["detail"]["groupBy"] == ["country", "other"]
    assert insight["token"] == "ops" and insight["profile_id"] == "" and insight["fields"] == []


def test_refusals_are_audited_and_counted(store: tuple[Settings, dict[str, str], dict[str, str]]) -> None:
    settings, tokens, _ = store
    with TestClient(create_app(settings)) as client:
        api = Api(client, tokens, default="ops")
        for n in range(7):
            assert api.post("{ __typename }", token=None if n % 2 else f"pst_{'x' * 43}").status_code == 401
        assert api.post("{ profiles { nodes { history { nodes { id } } } } }", token="reader").status_code == 403
        assert api.post("{ __typename }", token="trickle").status_code == 200
        assert api.post("{ __typename }", token="trickle").status_code == 429
        spent = api.post("{ insights(epsilon: 0.5) { k } }", token="broke").json()
        assert spent["errors"][0]["extensions"]["code"] == "BUDGET_EXHAUSTED"
        many = "{ " + " ".join(f"i{n}: insights {{ k }}" for n in range(5)) + " }"
        assert api.post(many).status_code == 400
    refusals = [e for e in entries(settings) if e.outcome != "ok"]
    assert {(e.writer, e.operation, e.outcome, e.detail["count"]) for e in refusals} == {
        ("-", "request", "UNAUTHENTICATED", 7),
        ("reader", "profiles", "FORBIDDEN", 1),
        ("trickle", "request", "RATE_LIMITED", 1),
        ("broke", "insights", "BUDGET_EXHAUSTED", 1),
        ("ops", "insights", "BAD_REQUEST", 1)}
    assert next(e for e in refusals if e.outcome == "FORBIDDEN").detail["missing"] == ["history:read"]
    assert next(e for e in refusals if e.writer == "ops").detail["over"] == ["scans"]
    assert all(not e.profile_id and not e.fields for e in refusals)  # refused: nothing was read
    assert not [e for e in entries(settings) if e.writer == "broke" and e.outcome == "ok"]


def test_a_refusal_flood_adds_one_entry_per_kind() -> None:
    buffer = AuditBuffer()
    for _ in range(10_000):
        buffer.refuse("-", "request", "UNAUTHENTICATED")
    buffer.refuse("t", "insights", "BUSY")
    buffer.record("t", "profile", "prf_a", "attributes")
    taken = buffer.take(refusals=False)  # accesses go at once; refusals wait for their turn
    assert [(e.operation, e.outcome) for e in taken] == [("profile", "ok")]
    counted = buffer.take()
    assert sorted((e.writer, e.outcome, json.loads(e.detail)["count"]) for e in counted) == [
        ("-", "UNAUTHENTICATED", 10_000), ("t", "BUSY", 1)]
    assert buffer.take() == []


def test_names_are_kept_only_when_persona_defines_them() -> None:
    assert [named(n) for n in ("monetary", "country", "lifecycle_stage", "a@b.example", "user123", None)] == [
        "monetary", "country", "lifecycle_stage", "other", "other", "other"]
    where = ProfileFilter(lifecycle_stages=frozenset({"active", "new"}), ranges={"aov": (1.0, None)},
                          attributes={"city": "Paris", "li.wei@example.com": 1}, rfm_min={"r": 3})
    assert filter_shape(where) == {"lifecycleStages": 2, "features": {"aov": ["min"]},
                                   "attributes": ["city", "other"], "rfmMin": ["r"]}
    assert "Paris" not in json.dumps(filter_shape(where)) and filter_shape(None) is None


def test_local_commands_are_audited_as_local(tmp_path: Path,
                                             store: tuple[Settings, dict[str, str], dict[str, str]]) -> None:
    settings, _, ids = store
    data = str(settings.data_dir)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["--data", data, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    feed = tmp_path / "new.jsonl"
    feed.write_bytes(orjson.dumps(record(MARKERS[0], "page_viewed", event_id="cli-1")) + b"\n")
    run("ingest", str(feed))
    run("profile", "--subject", f"email:{LI}")
    run("history", "--profile", ids[LI])
    run("link", f"email:{MARKERS[0]}", f"email:{MARIA}")
    run("unlink", f"email:{MARKERS[0]}", f"email:{MARIA}")
    run("profiles", "--first", "2", "--min", "monetary=1")
    run("stats", "--by", "country")
    refused = runner.invoke(cli, ["--data", data, "stats", "--by", "country", "--by", MARKERS[0]])
    assert refused.exit_code == 2  # a name persona does not know is refused before anything is read or written
    run("erase", "--subject", f"email:{MARKERS[0]}")
    found = [e for e in entries(settings) if e.writer.startswith("local:")]
    seen = {(e.writer, e.operation) for e in found}
    assert seen == {("local:ingest", "ingest"), ("local:profile", "profile"), ("local:history", "history"),
                    ("local:link", "link"), ("local:unlink", "unlink"), ("local:profiles", "profiles"),
                    ("local:stats", "stats"), ("local:erase", "erase")}
    one = {e.operation: e for e in found}
    assert (one["profile"].profile_id, one["profile"].detail) == (ids[LI], {"subject": "email"})
    assert one["history"].profile_id == ids[LI]
    assert {e.profile_id for e in found if e.operation == "unlink"} >= {ids[MARIA]}
    listed = [e for e in found if e.operation == "profiles"]
    assert len(listed) == 2 and listed[0].detail == {"filter": {"features": {"monetary": ["min"]}}}
    assert one["stats"].detail == {"groupBy": ["country"], "metrics": ["frequency", "monetary"]}
    ingests = [e for e in found if e.operation == "ingest"]
    assert [e.detail for e in ingests if not e.profile_id] == [{"appended": 1, "profilesCreated": 1}]
    erased = [e.profile_id for e in found if e.operation == "erase"]
    assert len(erased) == 1 and erased[0] in {e.profile_id for e in ingests}
    stored = audit_bytes(settings).lower()
    for needle in (*MARKERS, LI, MARIA):
        assert needle.lower().encode() not in stored, needle


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_audit_log_from_before_outcomes_gains_them_and_stays_append_only(tmp_path: Path, kind: str) -> None:
    with _store(tmp_path, kind) as settings:
        with Persona.init(settings) as p:  # made as an older persona made it: without the two columns
            _execute(p, "ALTER TABLE audit DROP COLUMN outcome", "ALTER TABLE audit DROP COLUMN detail",
                     "INSERT INTO audit (at, token, operation, profile_id, fields) VALUES (1, 'old', 'profile',"
                     " 'prf_old', 'attributes')")
            with p.recorder.transaction():
                p.recorder.set_meta("schema_revision", "2")  # the revision before the audit's columns
        with Persona.open(settings) as p:
            with p.recorder.transaction():
                p.recorder.append_audit([(2, "new", "insights", "", "", "ok", '{"k":5}')])
            assert [row[2:] for row in p.recorder.audit_rows()] == [
                ("old", "profile", "prf_old", "attributes", "ok", "{}"),
                ("new", "insights", "", "", "ok", '{"k":5}')]
            for statement in ("UPDATE audit SET outcome = 'FORBIDDEN'", "DELETE FROM audit"):
                with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
                    _execute(p, statement)
        with Persona.open(settings) as p:  # opened again: nothing more to add
            assert len(p.recorder.audit_rows()) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_batch_of_entries_goes_in_whole_in_order_each_row_tagged_as_its_own(tmp_path: Path, kind: str) -> None:
    """A server's flush writes many rows per statement (AUDIT_ROWS_AT_ONCE): a batch over two of them,
    with values that differ row by row, reads back as it was sent, and verify checks every row's tag."""
    from persona.audit import write
    from persona.store.shared import AUDIT_ROWS_AT_ONCE

    count = 2 * AUDIT_ROWS_AT_ONCE + 37
    sent = [(1_000 + n, f"t{n % 3}", "profile", f"prf_{n:04d}", "id,version" if n % 2 else "", "ok",
             orjson.dumps({"n": n}).decode()) for n in range(count)]
    with _store(tmp_path, kind) as settings, Persona.init(settings) as p:
        write(p, sent[:1])
        write(p, sent[1:])
        assert [row[1:] for row in p.recorder.audit_rows(limit=count + 1)] == sent
        verify(p)  # raises on the first row whose tag is not its own
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
            _execute(p, "UPDATE audit SET profile_id = 'prf_9999' WHERE at = 1100")


def _execute(p: Persona, *statements: str) -> None:
    with p.recorder.transaction():
        for statement in statements:
            p.recorder.conn.execute(statement)  # type: ignore[attr-defined]


@contextmanager
def _store(tmp_path: Path, kind: str) -> Iterator[Settings]:
    """A fresh store's settings on one backend."""
    if kind == "sqlite":
        yield Settings.load(tmp_path / "data", env={})
        return
    with pg_schema() as url:
        yield Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url})


def test_websocket_refusals_are_audited(store: tuple[Settings, dict[str, str], dict[str, str]]) -> None:
    from starlette.websockets import WebSocketDisconnect

    settings, tokens, ids = store
    with TestClient(create_app(settings, ServerOptions())) as client:
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"authorization": "Bearer pst_nobody"}})
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {tokens['reader']}"}})
            assert ws.receive_json()["type"] == "connection_ack"
            query = "subscription($id: ID!) { profileUpdated(id: $id) { history { nodes { id } } } }"
            ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"id": ids[LI]}}})
            assert ws.receive_json()["type"] == "error"
    refused = {(e.writer, e.operation, e.outcome) for e in entries(settings) if e.outcome != "ok"}
    assert refused == {("-", "connect", "UNAUTHENTICATED"), ("reader", "subscribe", "FORBIDDEN")}



def commands(settings: Settings) -> Callable[..., str]:
    """`persona --data DIR ARGS…` in this process: its output, once its exit code is `code`."""

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, ["--data", str(settings.data_dir), *args])
        assert result.exit_code == code, (args, result.output)
        return result.output

    return run


def test_local_commands_that_touch_everyones_data_are_audited_with_their_outcome(tmp_path: Path) -> None:
    """backup, restore, migrate, verify and rebuild read (or replace) every person's data: each
    leaves an entry — `local:<command>`, what, the outcome — refused runs included."""
    settings = Settings.load(tmp_path / "data", env={})
    run = commands(settings)

    run("init")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(record(email, event_id=email)) + b"\n" for email in (LI, MARIA)))
    run("ingest", str(events))
    (tmp_path / "backups").mkdir()
    run("backup", str(tmp_path / "backups"))
    backup_file = next((tmp_path / "backups").iterdir())
    run("verify")
    run("rebuild", "--workers", "1")
    good = settings.ledger_path.read_bytes() if settings.ledger_path.exists() else None
    run("erase", "--subject", f"email:{MARIA}")
    ledger = settings.ledger_path.read_bytes()
    settings.ledger_path.write_bytes(ledger.replace(b'"seq":1', b'"seq":2'))  # tampered with
    run("verify", code=2)
    run("restore", str(backup_file), "--yes", code=2)
    settings.ledger_path.write_bytes(ledger)
    assert good is None
    run("restore", str(backup_file), "--yes")
    run("migrate", "--from", f"sqlite:{settings.data_dir}", "--to", f"sqlite:{tmp_path / 'copy'}")

    shown = [json.loads(line) for line in run("audit", "--json").splitlines()]
    local = [(e["token"], e["operation"], e["outcome"]) for e in shown
             if e["operation"] in ("backup", "verify", "rebuild", "restore", "migrate")]
    assert local == [
        ("local:backup", "backup", "ok"), ("local:verify", "verify", "ok"), ("local:rebuild", "rebuild", "ok"),
        ("local:verify", "verify", "TAMPERED"), ("local:restore", "restore", "TAMPERED"),
        ("local:restore", "restore", "ok"), ("local:migrate", "migrate", "ok")]
    by_op = {(e["operation"], e["outcome"]): e for e in shown}
    assert by_op[("backup", "ok")]["detail"] == {"events": 2, "profiles": 2}
    assert by_op[("verify", "ok")]["detail"] == {"events": 2, "streams": 2, "opened": 2}
    assert by_op[("rebuild", "ok")]["detail"] == {"profiles": 2, "engine": "local"}
    assert by_op[("restore", "ok")]["detail"]["reapplied"] == 1
    assert by_op[("migrate", "ok")]["detail"]["events"] == 2 and by_op[("migrate", "ok")]["detail"]["to"] == "sqlite"
    assert all(e["profile_id"] == "" for e in shown if e["operation"] in ("backup", "verify", "rebuild", "migrate"))
    text = json.dumps(shown)
    assert LI not in text and MARIA not in text and str(tmp_path) not in text  # no identifier, no path
    # the copy's own log says how it was made
    with sqlite3.connect(tmp_path / "copy" / "persona.db") as copy:
        last = copy.execute("SELECT token, operation, outcome FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    assert last == ("local:migrate", "migrate", "ok")
    # and each entry is tagged as every audit entry is: both stores still verify
    run("verify")
    with Persona(settings, load_keyring(settings), open_store(f"sqlite:{tmp_path / 'copy'}")) as copied:
        assert verify(copied).events == 2


def test_every_other_local_command_that_opens_people_is_audited_once_with_its_outcome(tmp_path: Path) -> None:
    """keys rotate and rewrap (every data key unwrapped), purge, follow --refresh (people opened,
    one entry per run with its counts), train and models promote/rollback (everyone rescored),
    and every path of erase — an identifier no profile holds, whose quarantined records are
    purged all the same, included: one entry each, with the outcome, never an identifier."""
    settings = Settings.load(tmp_path / "data", env={})
    run = commands(settings)
    ghost = "zq.ghost@example.com"

    run("init")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(record(email, event_id=email)) + b"\n" for email in (LI, MARIA))
                       + b'{"subject": {"namespace": "email", "value": "' + ghost.encode() + b'"}, "data": \n')
    run("ingest", str(events))
    before = len(entries(settings))
    run("keys", "rotate")
    run("keys", "rewrap")
    run("purge", "--now")
    run("follow", "--refresh", "--after", "0", "--once")
    run("follow", "--after", "0", "--once")  # opens nobody: not audited
    run("train", "churn_91d", "--cutoff", "2026-01-01T00:00:00Z", code=1)  # one cutoff: refused
    run("models", "promote", "churn_91d", "7", code=1)  # no such version
    run("models", "rollback", "churn_91d", code=1)
    run("erase", "--subject", f"email:{ghost}", code=1)  # no profile; its quarantined record is purged
    run("erase", "--profile", "prf_doesnotexist000000000000", code=1)
    run("erase", "--subject", f"email:{MARIA}")
    run("erase", "--subject", f"email:{MARIA}", code=1)  # erased already
    found = entries(settings)[before:]
    assert [(e.writer, e.operation, e.outcome) for e in found] == [
        ("local:keys", "keys rotate", "ok"), ("local:keys", "keys rewrap", "ok"), ("local:purge", "purge", "ok"),
        ("local:follow", "follow", "ok"), ("local:train", "train", "FAILED"),
        ("local:models", "models promote", "FAILED"), ("local:models", "models rollback", "FAILED"),
        ("local:erase", "erase", "NOT_FOUND"), ("local:erase", "erase", "NOT_FOUND"), ("local:erase", "erase", "ok"),
        ("local:erase", "erase", "NOT_FOUND")]
    assert [e.detail for e in found[:4]] == [{"rewrapped": 2}, {}, {"now": True, "ran": True},  # none left to re-wrap
                                             {"refresh": True, "batches": 1, "events": 2, "refreshed": 2}]
    assert found[4].detail == {"model": "churn_91d", "cutoffs": 1}
    assert found[5].detail == found[6].detail == {"model": "churn_91d"}
    assert [e.detail for e in found[7:]] == [{"subject": "email", "quarantinePurged": 1}, {},
                                             {"subject": "email"}, {"subject": "email"}]
    assert all(e.profile_id == "" for e in found if e.outcome != "ok" or e.operation != "erase")
    stored = audit_bytes(settings).lower()
    for needle in (ghost, LI, MARIA, "prf_doesnotexist"):
        assert needle.lower().encode() not in stored, needle


def test_an_api_erasure_of_an_identifier_no_profile_holds_is_audited_with_what_it_purged(tmp_path: Path) -> None:
    """eraseProfile by an identifier no profile holds still purges its quarantined records and
    writes a ledger line: its NOT_FOUND entry says how many records went, never the identifier."""
    ghost = "zq.ghost@example.com"
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p:
        broken = b'{"subject": {"namespace": "email", "value": "' + ghost.encode() + b'"}, "data": '
        ingest_jsonl(p, [orjson.dumps(record(LI, event_id="li")), broken], origin="f")
        token = create_token(p, "ops", frozenset({"erasure:write"}))
    erase = "mutation($s: SubjectInput, $id: ID) { eraseProfile(subject: $s, id: $id) { profileId } }"
    with TestClient(create_app(settings)) as client:
        api = Api(client, {"ops": token}, default="ops")
        for variables in ({"s": {"namespace": "email", "value": ghost}}, {"id": "prf_doesnotexist000000000000"}):
            gone = api.post(erase, variables).json()
            assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    found = [(e.operation, e.profile_id, e.outcome, e.detail) for e in entries(settings) if e.writer == "ops"]
    assert found == [("eraseProfile", "", "NOT_FOUND", {"subject": "email", "quarantinePurged": 1, "count": 1}),
                     ("eraseProfile", "", "NOT_FOUND", {"count": 1})]
    assert ghost.encode() not in audit_bytes(settings).lower()


def test_a_flush_cancelled_at_shutdown_while_its_write_waits_loses_no_entry(tmp_path: Path) -> None:
    """The flusher's write queued behind a long job on the writer thread when the server stops:
    cancelling the flusher must not cancel the write (its entries were taken from the buffer)."""
    import asyncio
    import threading

    from persona.api.app import GRAPHQL_SCHEMA
    from persona.api.context import ApiState

    settings = Settings.load(tmp_path / "data", env={})
    Persona.init(settings).close()
    release = threading.Event()

    async def serve_and_stop() -> None:
        state = ApiState(settings, GRAPHQL_SCHEMA, ServerOptions())
        await state.start()
        busy = asyncio.ensure_future(state.writer.run(lambda persona: release.wait(10)))  # e.g. an ingest
        state.audit.record("ops", "ingestEvents", "", "", "{}")
        flushing = asyncio.ensure_future(state.flush_audit())
        await asyncio.sleep(0.1)  # the write waits behind the busy job
        flushing.cancel()  # as stop() cancels the flusher
        release.set()
        await busy
        await state.stop()

    asyncio.run(serve_and_stop())
    assert [(e.writer, e.operation) for e in entries(settings)] == [("ops", "ingestEvents")]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_entry_with_a_nul_or_a_huge_field_is_stored_made_safe_and_holds_up_nothing(tmp_path: Path,
                                                                                  kind: str) -> None:
    """A value PostgreSQL refuses (a NUL in text) or an unbounded one must never fail its batch:
    the flusher would put the batch back and try it forever, and nothing after it would be stored."""
    from persona.audit import MAX_TEXT, Entry, write

    sent = [Entry(1, "t", "operations.audit", "a\x00b", "", "ok", "{}"),
            Entry(2, "t", "profile", "x" * 100_000, "", "ok", "{}"),
            Entry(3, "t", "profile", "prf_after", "", "ok", '{"n":1}')]
    with _store(tmp_path, kind) as settings, Persona.init(settings) as p:
        write(p, sent)
        stored = [row[1:] for row in p.recorder.audit_rows()]
        verify(p)
    assert stored == [(1, "t", "operations.audit", "a\ufffdb", "", "ok", "{}"),
                      (2, "t", "profile", "x" * MAX_TEXT, "", "ok", "{}"),
                      (3, "t", "profile", "prf_after", "", "ok", '{"n":1}')]
