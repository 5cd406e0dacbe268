"""Access to the GraphQL API (persona.api.access): tokens and their scopes, revocation, rate limits,
the audit of reads, and the CLI's tokens used against the API (tests/api_world.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.api.plan import FIELD_SCOPES, UNLESS_ARGUMENT
from persona.cli import cli
from persona.ingest import ingest_jsonl
from persona.tokens import DEFAULT_DELTA_BUDGET, SCOPES, create_token, revoke_token
from tests.api_world import (
    LI,
    Q_ATTRIBUTES,
    Q_ERASE,
    Q_HIDDEN_HISTORY,
    Q_HISTORY,
    Q_INGEST,
    Q_INLINE_HISTORY,
    Q_INSIGHTS,
    Q_PREDICTIONS,
    SAMPLE,
    Api,
    TestClient,
    World,
    app_with,
    check,
)
from tests.conftest import Clock
from tests.hardening import tally


# -- scopes and tokens ---------------------------------------------------------------------------
@pytest.mark.parametrize(("token", "query", "missing"), [
    ("reader", Q_HISTORY, "history:read"),
    ("reader", Q_PREDICTIONS, "predictions:read"),
    ("reader", Q_INSIGHTS, "insights:read"),
    ("noisy", Q_INSIGHTS, "insights:exact"),  # no epsilon: an exact answer
    ("reader", Q_INGEST, "events:write"),
    ("reader", Q_ERASE, "erasure:write"),
    ("reader", Q_HIDDEN_HISTORY, "history:read"),
    ("reader", Q_INLINE_HISTORY, "history:read"),
    ("analyst", Q_ATTRIBUTES, "profiles:read"),
    ("historian", Q_PREDICTIONS, "predictions:read"),
    ("writer", Q_ERASE, "erasure:write"),
    ("eraser", Q_INGEST, "events:write"),
], ids=["history", "predictions", "insights", "insights-exact", "ingest", "erase", "history-in-fragment",
        "history-inline", "profiles", "predictions-2", "erase-by-writer", "ingest-by-eraser"])
def test_a_field_needs_its_scope(api: Api, token: str, query: str, missing: str) -> None:
    response = api.post(query, token=token)
    assert response.status_code == 403
    doc = response.json()
    assert "data" not in doc
    assert doc["errors"][0]["extensions"]["code"] == "FORBIDDEN" and missing in doc["errors"][0]["message"]
    tally("scope denials checked (a token lacking exactly the field's scope)")


@pytest.mark.parametrize(("token", "query"), [
    ("reader", Q_ATTRIBUTES),
    ("historian", Q_HISTORY),
    ("oracle", Q_PREDICTIONS),
    ("analyst", Q_INSIGHTS),
    ("all", Q_HISTORY + " "),  # a distinct document, planned afresh
])
def test_a_field_is_served_with_its_scope(api: Api, token: str, query: str) -> None:
    data = api.data(query, token=token)
    assert data and all(value is not None for value in data.values())


@pytest.mark.parametrize(("token", "query", "code"), [
    ("writer", Q_INGEST, "BAD_REQUEST"),  # past the scope check; an empty batch is refused, nothing written
    ("eraser", Q_ERASE, "NOT_FOUND"),  # past the scope check; nobody to erase
])
def test_write_scopes_let_mutations_through(api: Api, token: str, query: str, code: str) -> None:
    error = api.error(query, token=token)
    assert error["extensions"]["code"] == code


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer pst_not-a-token", "Bearer " + "x" * 500,
    "Bearer pst_" + "A" * 300,
])
def test_a_valid_token_is_required(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = check(api.client.post("/graphql", json={"query": Q_ATTRIBUTES}, headers=headers))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_introspection_needs_a_token_too(api: Api) -> None:
    query = "{ __schema { queryType { name } } }"
    response = check(api.client.post("/graphql", json={"query": query}))
    assert response.status_code == 401
    assert api.data(query, token="analyst") == {"__schema": {"queryType": {"name": "Query"}}}


def test_a_revoked_token_is_refused(world: World) -> None:
    clock = Clock()
    with app_with(world, ServerOptions()) as running:
        cache = running.client.app.state.api.tokens  # type: ignore[attr-defined]
        cache.clock = clock
        assert running.post(Q_ATTRIBUTES, token="doomed").status_code == 200  # looked up, and kept
        with Persona.open(world.settings) as p:
            revoke_token(p, "doomed")
        with app_with(world, ServerOptions()) as fresh:  # a new server: no cache to outlive
            assert fresh.post(Q_ATTRIBUTES, token="doomed").status_code == 401
        clock.advance(cache.ttl_s * 0.9)  # the running server trusts its lookup for ttl_s (2 s) ...
        assert running.post(Q_ATTRIBUTES, token="doomed").status_code == 200
        clock.advance(cache.ttl_s * 0.2)  # ... and no longer
        assert running.post(Q_ATTRIBUTES, token="doomed").status_code == 401
        assert running.post(Q_ATTRIBUTES, token="reader").status_code == 200


def test_rate_limit(world: World) -> None:
    """A bucket per token: `rate_per_s` sustained (1 for "slow"), two seconds' worth at once. The
    server's limiter reads a clock the test moves, so the counts are exact on any machine."""
    clock = Clock()
    with app_with(world, ServerOptions()) as api:
        api.client.app.state.api.limiter.clock = clock  # type: ignore[attr-defined]
        statuses = [api.post(Q_ATTRIBUTES, token="slow").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # the burst of two, then refused
        response = api.post(Q_ATTRIBUTES, token="slow")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"  # one request's worth, at one a second
        assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert api.post(Q_ATTRIBUTES, token="reader").status_code == 200  # per token: others carry on
        clock.advance(0.9)
        assert api.post(Q_ATTRIBUTES, token="slow").status_code == 429  # not yet a whole request's worth
        clock.advance(0.2)  # (clear of the boundary: the clock's floats are not exact)
        assert api.post(Q_ATTRIBUTES, token="slow").status_code == 200
        assert api.post(Q_ATTRIBUTES, token="slow").status_code == 429
        clock.advance(60)  # a long pause fills the bucket to its two, not more
        assert [api.post(Q_ATTRIBUTES, token="slow").status_code for _ in range(3)] == [200, 200, 429]


# -- audit ---------------------------------------------------------------------------------------
def test_reads_are_audited_with_token_operation_and_fields(world: World) -> None:
    pid = world.ids[LI]
    with TestClient(create_app(world.settings)) as client:
        own = Api(client, world.tokens, default="auditor")
        data = own.data("query($id: ID!) { profile(id: $id) { attributes history(first: 2) { nodes { id } } } }",
                        {"id": pid})
        assert data["profile"]["attributes"]
        listed = own.data("{ profiles(first: 3) { nodes { id segments } } }")["profiles"]["nodes"]
        refused = own.post("{ profiles(first: 3) { nodes { id predictions { model } } } }", token="snoop")
        assert refused.status_code == 403
    # the app has shut down: its audit buffer is flushed
    with Persona.open(world.settings) as p:
        mine = [r for r in p.recorder.audit_rows(profile_id=pid) if r[2] == "auditor" and r[3] == "profile"]
        assert [(r[4], r[5]) for r in mine] == [(pid, "attributes,history")]
        for node in listed:
            # (LI, read above, may be listed too: its profile and history entries are not the listing's)
            rows = [r for r in p.recorder.audit_rows(profile_id=node["id"])
                    if r[2] == "auditor" and r[3] not in ("profile", "history")]
            assert [(r[3], r[5]) for r in rows] == [("profiles", "id,segments")]
        snooped = [r for r in p.recorder.audit_rows(limit=1_000_000) if r[2] == "snoop"]  # refused: no one read
        assert [(r[3], r[4], r[5], r[6], json.loads(r[7])) for r in snooped] == [
            ("profiles", "", "", "FORBIDDEN", {"count": 1, "missing": ["predictions:read"]})]
    result = CliRunner().invoke(cli, ["--data", str(world.settings.data_dir), "audit", "--json", "--profile", pid],
                                catch_exceptions=False)
    assert result.exit_code == 0
    entries = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    ours = [e for e in entries if e["token"] == "auditor" and e["operation"] == "profile"]
    assert [(e["profile_id"], e["fields"]) for e in ours] == [(pid, ["attributes", "history"])]
    assert all(e["profile_id"] == pid for e in entries)


def test_audit_is_written_while_the_server_runs(api: Api, world: World) -> None:
    pid = world.ids["tom.baker@example.com"]
    assert api.data("query($id: ID!) { profile(id: $id) { version } }", {"id": pid}, token="watcher")["profile"]
    deadline = time.monotonic() + 10
    with Persona.open(world.settings) as p:
        while not [r for r in p.recorder.audit_rows(profile_id=pid) if r[2] == "watcher"]:
            assert time.monotonic() < deadline, "the audit entry was never written"
            time.sleep(0.05)
        rows = [r for r in p.recorder.audit_rows(profile_id=pid) if r[2] == "watcher"]
    assert [(r[3], r[5]) for r in rows] == [("profile", "version")]


def test_audit_log_refuses_update_and_delete(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p, p.recorder.transaction():
        p.recorder.append_audit([(1, "someone", "profile", "prf_x", "attributes", "ok", "{}")])
    conn = sqlite3.connect(settings.db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET token = 'nobody'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
        assert conn.execute("SELECT token, operation, profile_id, fields FROM audit").fetchall() == [
            ("someone", "profile", "prf_x", "attributes")]
    finally:
        conn.close()


# Each scoped field of FIELD_SCOPES, touched alone (the subscription's is tested over a socket).
SCOPE_PROBES: dict[tuple[str, str], str] = {
    ("Query", "profile"): '{ profile(id: "prf_doesnotexist000000000000") { id } }',
    ("Query", "profiles"): "{ profiles(first: 1) { nodes { id } } }",
    ("Query", "insights"): Q_INSIGHTS,
    ("Query", "models"): "{ models { name } }",
    ("Mutation", "ingestEvents"): Q_INGEST,
    ("Mutation", "eraseProfile"): Q_ERASE,
    ("Mutation", "linkIdentities"): 'mutation { linkIdentities(a: {namespace: "email", value: "a@example.com"},'
                                    ' b: {namespace: "email", value: "b@example.com"}) { id } }',
    ("Mutation", "unlinkIdentities"): 'mutation { unlinkIdentities(a: {namespace: "email", value: "a@example.com"},'
                                      ' b: {namespace: "email", value: "b@example.com"}) { id } }',
    ("Mutation", "trainModel"): 'mutation { trainModel(name: "churn_91d") { name } }',
    ("Mutation", "promoteModel"): 'mutation { promoteModel(name: "churn_91d", version: 1) { name } }',
    ("Mutation", "rollbackModel"): 'mutation { rollbackModel(name: "churn_91d") { name } }',
    ("Query", "segments"): "{ segments { name size } }",
    ("Query", "operations"): "{ operations { audit(first: 1) { seq } } }",
    ("Mutation", "createSegment"): 'mutation { createSegment(name: "probe", rule: "frequency > 0") { name } }',
    ("Mutation", "deleteSegment"): 'mutation { deleteSegment(name: "probe") }',
    ("Mutation", "mintToken"): 'mutation { mintToken(id: "prf_doesnotexist000000000000") { token } }',
    ("Profile", "history"): Q_HISTORY,
    ("Profile", "predictions"): Q_PREDICTIONS,
    ("Profile", "recommendations"): "{ profiles(first: 1) { nodes { recommendations { basis } } } }",
    ("Profile", "attributeSources"): "{ profiles(first: 1) { nodes { attributeSources } } }",
    ("Profile", "attributeProvenance"): "{ profiles(first: 1) { nodes { attributeProvenance { name } } } }",
    ("IngestResult", "profilesCreated"): "mutation { ingestEvents(events: []) { profilesCreated } }",
    ("IngestResult", "merges"): "mutation { ingestEvents(events: []) { merges } }",
}


def test_every_scope_is_denied_when_missing(world: World, api: Api) -> None:
    """A token holding every scope but one is refused, naming it, by each field that needs it."""
    assert {f for f in FIELD_SCOPES if f[0] != "Subscription"} == set(SCOPE_PROBES)
    # every scope guards something: a field, or a field asked without an argument
    assert set(FIELD_SCOPES.values()) | {scope for _, scope in UNLESS_ARGUMENT.values()} == set(SCOPES)
    with Persona.open(world.settings) as p:
        lacking = {scope: create_token(p, f"lacks-{scope.replace(':', '-')}", frozenset(SCOPES) - {scope})
                   for scope in SCOPES}
    for field, query in SCOPE_PROBES.items():
        scope = FIELD_SCOPES[field]
        response = api.post(query, token=lacking[scope])
        assert response.status_code == 403, (field, response.text[:300])
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "FORBIDDEN" and scope in error["message"], (field, error)
        tally("scope denials checked (a token lacking exactly the field's scope)")
        control = Q_INSIGHTS if scope == "profiles:read" else "{ profiles(first: 1) { nodes { id } } }"
        served = api.post(control, token=lacking[scope])  # the same token, asked for what it holds
        assert served.status_code == 200 and not served.json().get("errors"), (scope, served.text[:300])
    for (_, name), (argument, scope) in UNLESS_ARGUMENT.items():
        response = api.post(f"{{ {name} {{ k }} }}", token=lacking[scope])  # without the argument
        assert response.status_code == 403 and scope in response.json()["errors"][0]["message"], response.text
        tally("scope denials checked (a token lacking exactly the field's scope)")
        served = api.post(f"{{ {name}({argument}: 1.0) {{ k }} }}", token=lacking[scope])  # with it
        assert served.status_code == 200 and not served.json().get("errors"), (scope, served.text[:300])


# -- the CLI's tokens ----------------------------------------------------------------------------
def run(data: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--data", str(data), *args], catch_exceptions=False)


@pytest.fixture
def cli_data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    assert run(folder, "init").exit_code == 0
    with Persona.open(Settings.load(folder, env={})) as p:
        ingest_jsonl(p, SAMPLE.read_bytes().splitlines(), origin="sample")
    return folder


def test_cli_token_works_against_the_api(cli_data: Path) -> None:
    created = run(cli_data, "tokens", "create", "--name", "cli-bot", "--scopes", "profiles:read", "--json")
    assert created.exit_code == 0
    doc = json.loads(created.stdout)
    assert doc["name"] == "cli-bot" and doc["scopes"] == ["profiles:read"] and doc["token"].startswith("pst_")
    with TestClient(create_app(Settings.load(cli_data, env={}))) as client:
        api = Api(client, {"cli-bot": doc["token"]}, default="cli-bot")
        assert len(api.data("{ profiles { nodes { id } } }")["profiles"]["nodes"]) == 6
        assert api.post(Q_HISTORY).status_code == 403


def test_cli_tokens_list_never_shows_a_token(cli_data: Path) -> None:
    first = json.loads(run(cli_data, "tokens", "create", "--name", "a", "--scopes", "profiles:read,history:read",
                           "--json").stdout)["token"]
    second = run(cli_data, "tokens", "create", "--name", "b", "--scopes", "insights:read", "--scopes",
                 "events:write", "--rate", "5", "--epsilon", "2", "--delta", "1e-10").stdout.strip()
    assert second.startswith("pst_")
    listed = run(cli_data, "tokens", "list", "--json")
    human = run(cli_data, "tokens", "list")
    for result in (listed, human):
        assert result.exit_code == 0
        assert first not in result.output and second not in result.output and "pst_" not in result.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["a"]["scopes"] == ["history:read", "profiles:read"] and rows["a"]["revoked_at"] is None
    assert (rows["b"]["scopes"], rows["b"]["rate_per_s"], rows["b"]["epsilon_budget"], rows["b"]["delta_budget"],
            rows["a"]["delta_budget"]) == (["events:write", "insights:read"], 5.0, 2.0, 1e-10, DEFAULT_DELTA_BUDGET)
    assert "a" in human.output and "b" in human.output and "δ 0/1e-10" in human.output


@pytest.mark.parametrize(("args", "words"), [
    (["--scopes", "profiles:read,nope:write"], "unknown scope"),
    (["--scopes", "models:write", "--name", "bad name!"], "token name"),
])
def test_cli_tokens_create_refusals(cli_data: Path, args: list[str], words: str) -> None:
    name = [] if "--name" in args else ["--name", "x"]
    result = run(cli_data, "tokens", "create", *name, *args)
    assert result.exit_code == 1
    assert words in result.stderr and "Traceback" not in result.output
    assert "pst_" not in result.output


def test_cli_tokens_duplicate_name(cli_data: Path) -> None:
    assert run(cli_data, "tokens", "create", "--name", "twice", "--scopes", "profiles:read").exit_code == 0
    result = run(cli_data, "tokens", "create", "--name", "twice", "--scopes", "profiles:read")
    assert result.exit_code == 1 and "already exists" in result.stderr and "pst_" not in result.output


def test_cli_tokens_revoke(cli_data: Path) -> None:
    token = json.loads(run(cli_data, "tokens", "create", "--name", "gone", "--scopes", "profiles:read",
                           "--json").stdout)["token"]
    revoked = run(cli_data, "tokens", "revoke", "gone")
    assert revoked.exit_code == 0 and "gone" in revoked.output
    rows = {row["name"]: row for row in json.loads(run(cli_data, "tokens", "list", "--json").stdout)}
    assert rows["gone"]["revoked_at"] is not None
    with TestClient(create_app(Settings.load(cli_data, env={}))) as client:
        assert Api(client, {"gone": token}, default="gone").post(Q_ATTRIBUTES).status_code == 401
    again = run(cli_data, "tokens", "revoke", "gone")
    assert again.exit_code == 1 and "no active token" in again.stderr
