"""The API under hostile or unusual input: what an independent review found, kept fixed.

In-process (Starlette's TestClient around `create_app`), real files and keys.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import OperationType

from persona import Persona, Settings
from persona.api.access import RateLimiter
from persona.api.app import create_app
from persona.api.context import AUDIT_BACKLOG
from persona.api.plan import SCAN_COST, Limits, plan
from persona.api.schema import schema
from persona.erasure import erase_subject
from persona.ingest import ingest_jsonl
from persona.population import IndexedProfile
from persona.pseudonyms import normalise
from persona.reading import SCAN_LIMIT
from persona.rfm import compute_rfm
from persona.tokens import create_token, list_tokens
from tests.api_world import Api, TestClient, lines_of
from tests.conftest import Clock, record
from tests.hardening import tally

MARKER = "zq.marker.7f3@example.com"
ALL = frozenset({"profiles:read", "history:read", "predictions:read", "insights:read", "insights:exact",
                 "events:write", "erasure:write"})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Settings, Api, dict[str, str]]]:
    settings = Settings.load(tmp_path / "data", env={})
    now = datetime.now(UTC)
    records = [record(f"p{i}@example.com", "order_placed", {"order_id": f"o{i}", "amount": f"{10 + i}.00",
                                                           "currency": "EUR"},
                      event_id=f"o{i}", occurred_at=(now - timedelta(days=30 + i)).isoformat(), source="shop")
               for i in range(12)]
    records += [record("p0@example.com", "profile_updated", {"birth_year": 1990}, event_id="born",
                       occurred_at=(now - timedelta(days=400)).isoformat(), source="crm")]
    with Persona.init(settings) as p:
        assert ingest_jsonl(p, lines_of(records), origin="test").appended == len(records)
        compute_rfm(p)
        tokens = {"all": create_token(p, "all", ALL), "trickle": create_token(p, "trickle", ALL, rate_per_s=0.2),
                  "dp": create_token(p, "dp", frozenset({"insights:read"}), epsilon_budget=1.0)}
        ids = {f"p{i}": p.log.profile_for("email", f"p{i}@example.com") or "" for i in range(12)}
    with TestClient(create_app(settings)) as client:
        yield settings, Api(client, tokens), ids


def test_nested_fragments_are_analysed_in_linear_time() -> None:
    import threading

    levels = 60  # expanded, 2^60 copies of the leaf: analysed naively, this would never end
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    document = "{ ...F0 } " + " ".join(fragments) + f" fragment F{levels} on Query {{ profile(id: \"x\") {{ id }} }}"
    made: list[Any] = []
    worker = threading.Thread(target=lambda: made.append(plan(schema._schema, document, None, Limits())),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)  # a generous bound: linear takes milliseconds, exponential would take ages
    assert made, "the analysis did not finish"
    assert made[0].cost == 2 ** levels * 2 and made[0].depth == 2
    assert made[0].errors and "cost" in made[0].errors[0].message
    tally("query depth or cost bombs refused")


def test_identifiers_never_come_back_in_errors(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, _ = world
    subject = "query($s: SubjectInput) { profile(subject: $s) { id } }"
    ingest = "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { appended } }"
    attempts: list[tuple[str, dict[str, Any] | None]] = [
        (subject, {"s": {"namespace": "email", "value": MARKER, "valu": 1}}),  # "Did you mean …? Found: {…}"
        (subject, {"s": {"namespace": "email", "value": [MARKER]}}),
        (ingest, {"e": [{"sourc": MARKER, "type": "page_viewed", "occurredAt": "2026-01-01T00:00:00Z",
                         "subject": {"namespace": "email", "value": MARKER}, "data": {}}]}),
        ("query($n: Int) { profiles(first: $n) { nodes { id } } }", {"n": MARKER}),
        ('{ profile(id: {value: "' + MARKER + '"}) { id } }', None),
        ('{ profile(id: "x", asOf: "' + MARKER + '") { id } }', None),
        ('{ profile(id: "x") { id } } "' + MARKER + '"', None),  # a syntax error quoting the token
        ("{ profile(id: \"x\") { id } } 13800138000", None),
    ]
    for query, variables in attempts:
        response = api.post(query, variables, token="all")
        assert response.status_code in (200, 400)
        body = response.text
        assert MARKER not in body and "13800138000" not in body, body
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST", body


def test_identifiers_are_refused_over_get(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, ids = world
    query = '{ profile(subject: {namespace: "email", value: "p1@example.com"}) { id } }'
    refused = api.raw("GET", token="all", params={"query": query})
    assert refused.status_code == 405 and "POST" in refused.json()["errors"][0]["message"]
    by_id = api.raw("GET", token="all", params={"query": f'{{ profile(id: "{ids["p1"]}") {{ id }} }}'})
    assert by_id.status_code == 200 and by_id.json()["data"]["profile"]["id"] == ids["p1"]


def test_a_token_slower_than_one_request_per_burst_still_gets_one(world: tuple[Settings, Api, dict[str, str]]
                                                                  ) -> None:
    _, api, _ = world
    clock = Clock()
    api.client.app.state.api.limiter.clock = clock  # type: ignore[attr-defined]
    assert api.post("{ __typename }", token="trickle").status_code == 200
    refused = api.post("{ __typename }", token="trickle")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"  # one request in 5 s
    clock.advance(4.5)
    assert api.post("{ __typename }", token="trickle").status_code == 429
    clock.advance(1)
    assert api.post("{ __typename }", token="trickle").status_code == 200
    assert api.post("{ __typename }", token="trickle").status_code == 429


def test_requests_without_a_valid_token_are_limited_per_address(world: tuple[Settings, Api, dict[str, str]]
                                                                ) -> None:
    _, api, _ = world
    clock = Clock()
    state = api.client.app.state.api  # type: ignore[attr-defined]
    state.strangers.clock = clock
    rate = state.options.unauthenticated_rate
    burst = int(rate * RateLimiter().burst_s)
    statuses = [api.post("{ __typename }", token="pst_" + "x" * 43).status_code for _ in range(burst + 3)]
    assert statuses == [401] * burst + [429] * 3
    assert api.post("{ __typename }", token="all").status_code == 200  # the valid token is not affected
    clock.advance(1.5 / rate)  # one more guess's worth
    statuses = [api.post("{ __typename }", token="pst_" + "y" * 43).status_code for _ in range(2)]
    assert statuses == [401, 429]


def test_the_schema_may_be_asked_for_only_twice_per_document(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, _ = world
    twice = "{ a: __schema { queryType { name } } b: __type(name: \"Profile\") { name } }"
    assert api.post(twice, token="all").status_code == 200
    thrice = "{ a: __schema { queryType { name } } b: __schema { queryType { name } } c: __schema { types { name } } }"
    refused = api.post(thrice, token="all")
    assert refused.status_code == 400 and "schema" in refused.json()["errors"][0]["message"]


def test_an_event_dated_a_little_ahead_keeps_the_profile_whole(world: tuple[Settings, Api, dict[str, str]]) -> None:
    settings, api, ids = world
    soon = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    event = {"source": "web", "type": "page_viewed", "occurredAt": soon, "eventId": "ahead",
             "subject": {"namespace": "email", "value": "p2@example.com"}, "data": {"url": "https://x.example/"}}
    done = api.data("mutation($e: [EventInput!]!) { ingestEvents(events: $e) { appended } }", {"e": [event]},
                    token="all")
    assert done["ingestEvents"]["appended"] == 1
    with Persona.open(settings) as p:
        logged = p.log.info(ids["p2"]).version
    shown = api.data("query($id: ID) { profile(id: $id) { version features } }", {"id": ids["p2"]}, token="all")
    assert shown["profile"]["version"] == logged == 2
    assert shown["profile"]["features"]["page_views"] == 1


def test_a_listing_as_of_the_past_agrees_with_one_profile_as_of_the_past(
        world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, ids = world
    moment = (datetime.now(UTC) - timedelta(days=20)).isoformat()
    listing = api.data("query($t: DateTime) { profiles(first: 40, asOf: $t) { nodes { id version attributes"
                       " features segments } } }", {"t": moment}, token="all")["profiles"]["nodes"]
    assert listing and all(node["features"]["rfm"] is None for node in listing)  # RFM ranks today only
    assert not any(s.startswith("rfm:") for node in listing for s in node["segments"])
    for node in listing:
        one = api.data("query($id: ID, $t: DateTime) { profile(id: $id, asOf: $t) { version attributes features"
                       " segments } }", {"id": node["id"], "t": moment}, token="all")["profile"]
        assert one == {k: node[k] for k in ("version", "attributes", "features", "segments")}
    aged = next(node for node in listing if node["id"] == ids["p0"])
    assert aged["attributes"]["age"] == int(moment[:4]) - 1990  # age at that instant, from birth_year


def test_unstorable_or_unanswerable_input_is_a_clean_error(world: tuple[Settings, Api, dict[str, str]]) -> None:
    settings, api, _ = world
    # JSON bodies turn huge integers into floats (orjson, like JavaScript); a literal keeps them whole
    huge = api.error('mutation { ingestEvents(events: [{source: "web", type: "page_viewed", occurredAt:'
                     ' "2026-01-01T00:00:00Z", subject: {namespace: "email", value: "p3@example.com"},'
                     f' data: {{n: {2 ** 70}}}}}]) {{ appended }} }}', token="all")
    assert huge["extensions"]["code"] == "BAD_REQUEST" and "64 bits" in huge["message"]
    wide = api.error('{ insights(metric: "monetary", bounds: [-1e308, 1e308], epsilon: 0.5) { k } }', token="dp")
    assert wide["extensions"]["code"] == "BAD_REQUEST" and "bounds" in wide["message"]
    with Persona.open(settings) as p:
        assert {t.name: t.epsilon_spent for t in list_tokens(p)}["dp"] == 0.0  # refused before anything was spent


def test_reads_are_refused_while_the_audit_log_cannot_keep_up(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, ids = world
    state = api.client.app.state.api  # type: ignore[attr-defined]
    query = "query($id: ID) { profile(id: $id) { attributes } }"
    state.audit.rows.extend([(0, "backlog", "profile", ids["p4"], "attributes")] * AUDIT_BACKLOG)
    try:
        refused = api.post(query, {"id": ids["p4"]}, token="all").json()
        assert refused["data"]["profile"] is None and refused["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    finally:
        state.audit.rows.clear()
    assert api.data(query, {"id": ids["p4"]}, token="all")["profile"]["attributes"] is not None


def test_an_erasure_elsewhere_empties_the_servers_caches(world: tuple[Settings, Api, dict[str, str]]) -> None:
    settings, api, ids = world
    state = api.client.app.state.api  # type: ignore[attr-defined]
    pid = ids["p5"]
    api.data("query($id: ID) { profile(id: $id) { attributeSources history { nodes { id } } } }", {"id": pid},
             token="all")
    assert pid in state.projector._cache and state.persona.log._sealers
    with Persona.open(settings) as other:  # as the CLI would, in another process
        erase_subject(other, "email", "p5@example.com")
    planned = state.plans._plans.copy()
    assert planned and normalise.cache_info().currsize  # plans and normalised identifiers were cached
    generations = (state.writer._generation, state.scanner._generation)
    deadline = time.monotonic() + 10
    while pid in state.projector._cache or state.persona.log._sealers:
        assert time.monotonic() < deadline, "the server kept an erased person's state in memory"
        api.post("{ __typename }", token="all")  # let the server's event loop run
        time.sleep(0.05)
    assert not set(planned) & set(state.plans._plans)  # the plans from before are gone
    assert (state.writer._generation, state.scanner._generation) > generations  # their threads forget too
    assert api.data("query($id: ID) { profile(id: $id) { id } }", {"id": pid}, token="all")["profile"] is None


def test_a_time_filtered_history_page_stops_scanning_and_goes_on_from_there(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "data", env={})
    base = datetime(2025, 1, 1, tzinfo=UTC)
    records = [record("busy@example.com", event_id=f"b{i}", occurred_at=(base + timedelta(minutes=i)).isoformat())
               for i in range(SCAN_LIMIT + 500)]
    with Persona.init(settings) as p:
        assert ingest_jsonl(p, lines_of(records), origin="test").appended == len(records)
        token = create_token(p, "h", frozenset({"profiles:read", "history:read"}))
        pid = p.log.profile_for("email", "busy@example.com")
    oldest = (base + timedelta(minutes=3)).isoformat()  # only the 4 oldest events match
    query = """query($id: ID, $after: String, $until: DateTime) { profile(id: $id) {
      history(first: 10, after: $after, until: $until) { nodes { id } pageInfo { hasNextPage endCursor } } } }"""
    with TestClient(create_app(settings)) as client:
        api = Api(client, {"h": token})
        first = api.data(query, {"id": pid, "until": oldest}, token="h")["profile"]["history"]
        assert first["nodes"] == [] and first["pageInfo"]["hasNextPage"]  # stopped after SCAN_LIMIT events
        after = first["pageInfo"]["endCursor"]
        rest = api.data(query, {"id": pid, "until": oldest, "after": after}, token="h")["profile"]["history"]
        assert [n["id"] for n in rest["nodes"]] == ["b2", "b1", "b0"] and not rest["pageInfo"]["hasNextPage"]


def test_plans_know_when_an_identifier_travels() -> None:
    made = plan(schema._schema, '{ profile(subject: {namespace: "email", value: "a@b.c"}) { id } }', None, Limits())
    assert made.identifies and made.kind is OperationType.QUERY
    assert not plan(schema._schema, '{ profile(id: "x") { id } }', None, Limits()).identifies


@pytest.mark.parametrize("query", [
    """query($id: ID) { profile(id: $id) { id version updatedAt attributes features segments
         identities { namespace hash } predictions { model }
         history(first: 5) { edges { cursor node { id version type source occurredAt recordedAt data
           subject { namespace hash } } } pageInfo { hasNextPage endCursor } } } }""",
    "query($id: ID) { a: profile(id: $id) { v1: version v2: version version ...F } } "
    "fragment F on Profile { version segments }",
    "query($id: ID) { profile(id: $id) { history(first: 2, after: \"djp4\") { nodes { id } } } }",  # an error
    "{ profiles(first: 5) { edges { cursor node { id version attributes } } pageInfo { hasNextPage } } }",
])
def test_the_short_path_for_plain_fields_answers_as_graphql_core_does(
        world: tuple[Settings, Api, dict[str, str]], query: str) -> None:
    import asyncio

    from graphql import ExecutionResult, execute, parse
    from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

    from persona.api.access import TokenCache
    from persona.api.context import RequestContext
    from persona.api.execution import Executor, _plain_fields

    _, api, ids = world
    state = api.client.app.state.api  # type: ignore[attr-defined]
    token = TokenCache(state.persona).lookup(api.tokens["all"])
    made = plan(schema._schema, query, None, Limits())
    assert token is not None and not made.errors

    def run(executor: type) -> ExecutionResult:
        async def go() -> ExecutionResult:
            result = execute(schema._schema, parse(query), context_value=RequestContext(state, token, made),
                             variable_values={"id": ids["p6"]}, executor_class=executor)
            return await result if asyncio.iscoroutine(result) else result  # type: ignore[return-value]

        return asyncio.run(go())

    standard, short = run(StrawberryGraphQLCoreExecutionContext), run(Executor)
    taken = {t.name: set(fields) for t, fields in _plain_fields.items()}
    assert {"version", "attributes"} <= taken["Profile"]  # the short path was taken
    assert short.data == standard.data and short.data is not None
    assert [(e.message, e.path) for e in short.errors or []] == [(e.message, e.path) for e in standard.errors or []]
    assert list(orjson_keys(short.data)) == list(orjson_keys(standard.data))  # the same order of keys too


def orjson_keys(value: Any) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from orjson_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from orjson_keys(item)


def test_metric_names_and_misspelt_keys_are_not_repeated(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, _ = world
    metric = api.post("query($m: String) { insights(metric: $m) { k } }", {"m": MARKER}, token="all")
    key = api.post("query($s: SubjectInput) { profile(subject: $s) { id } }",
                   {"s": {"namespace": "email", "value": "x@example.com", MARKER: 1}}, token="all")
    for response in (metric, key):
        assert MARKER not in response.text and response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "metric" in metric.json()["errors"][0]["message"]  # what was wrong is still said


@pytest.mark.parametrize(("query", "variables"), [
    ("query($id: ID, $t: DateTime) { profile(id: $id, asOf: $t) { id } }", {"t": "0001-01-01T00:00:00+01:00"}),
    ("query($id: ID, $t: DateTime) { profile(id: $id, asOf: $t) { id } }", {"t": "9999-12-31T23:00:00-05:00"}),
    ("query($id: ID, $t: DateTime) { profile(id: $id) { history(since: $t) { nodes { id } } } }",
     {"t": "0001-01-01T00:00:00+01:00"}),
    ("query($id: ID, $a: String) { profile(id: $id) { history(after: $a) { nodes { id } } } }",
     {"a": base64.urlsafe_b64encode(b"v:" + b"9" * 30).decode()}),
    ("query($id: ID, $a: String) { profile(id: $id) { history(after: $a) { nodes { id } } } }",
     {"a": base64.urlsafe_b64encode("v:٣".encode()).decode()}),  # a digit, but not an ASCII one
])
def test_out_of_range_input_is_a_client_error(world: tuple[Settings, Api, dict[str, str]], query: str,
                                               variables: dict[str, Any]) -> None:
    _, api, ids = world
    response = api.post(query, {"id": ids["p7"]} | variables, token="all")
    assert response.status_code == 200
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["BAD_REQUEST"]


def test_a_profile_as_of_the_very_end_of_time_still_answers(world: tuple[Settings, Api, dict[str, str]]) -> None:
    _, api, ids = world
    shown = api.data("query($id: ID) { profile(id: $id, asOf: \"9999-12-31T23:59:59.999999Z\") { version"
                     " history { nodes { id } } } }", {"id": ids["p7"]}, token="all")["profile"]
    assert shown["version"] == 1 and len(shown["history"]["nodes"]) == 1


def test_scanning_arguments_are_costed() -> None:
    cheap = plan(schema._schema, '{ profile(id: "x") { version } }', None, Limits())
    replayed = plan(schema._schema, '{ profile(id: "x", asOf: "2026-01-01T00:00:00Z") { version } }', None,
                    Limits())
    assert replayed.cost - cheap.cost == SCAN_COST
    past_page = plan(schema._schema, '{ profiles(first: 60, asOf: "2026-01-01T00:00:00Z") { nodes { id } } }',
                     None, Limits())
    assert past_page.errors and "cost" in past_page.errors[0].message  # 60 replays are too many for one request
    replay = 'profile(id: "x", asOf: "2026-01-01T00:00:00Z") { id }'
    aliased = plan(schema._schema, "{ " + " ".join(f"a{i}: {replay}" for i in range(29)) + " }", None, Limits())
    assert aliased.cost == 29 * (1 + SCAN_COST + 1)  # every aliased replay is paid for


def test_rfm_filters_cannot_narrow_a_private_answer(world: tuple[Settings, Api, dict[str, str]]) -> None:
    settings, api, _ = world
    for where in ({"rfmMin": {"r": 3}}, {"segments": ["rfm:champions"]}, {"segments": ["high_value"]}):
        error = api.error("query($f: ProfileFilter) { insights(filter: $f, epsilon: 0.5) { k } }", {"f": where},
                          token="dp")
        assert error["extensions"]["code"] == "BAD_REQUEST" and "RFM" in error["message"]
    with Persona.open(settings) as p:
        assert {t.name: t.epsilon_spent for t in list_tokens(p)}["dp"] == 0.0
    exact = api.data('{ insights(filter: {rfmMin: {r: 1}}) { k } }', token="all")  # exact answers may use them
    assert exact["insights"]["k"] == 5


def test_the_documented_thresholds_under_noise() -> None:
    from persona.insights import exact, mechanism

    people = [IndexedProfile(f"prf_{i}", 1, {}, {"monetary": 1.0}, None) for i in range(3)]
    with_metric = mechanism(metric="monetary", epsilon=1.0, k=5)
    without = mechanism(metric=None, epsilon=1.0, k=5)
    assert (with_metric.threshold, without.threshold) == (56, 29)  # as docs/api.md says
    assert exact(people, group_by=["country"], metric=None, k=5).threshold == 5  # exact: k itself


def test_a_token_may_hold_only_so_many_subscriptions(world: tuple[Settings, Api, dict[str, str]]) -> None:
    from persona.api.context import ServerOptions

    settings, api, ids = world
    subscribe = "subscription($id: ID!) { profileUpdated(id: $id) { version } }"
    with TestClient(create_app(settings, ServerOptions(max_subscriptions_per_token=1))) as client, \
            client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {api.tokens['all']}"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": subscribe, "variables": {"id": ids["p8"]}}})
        ws.send_json({"id": "2", "type": "subscribe", "payload": {"query": subscribe, "variables": {"id": ids["p9"]}}})
        refused = ws.receive_json()
        assert (refused["id"], refused["type"]) == ("2", "error")
        assert refused["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
        ws.send_json({"id": "1", "type": "complete"})


def test_guessing_tokens_over_websockets_is_throttled_per_address(world: tuple[Settings, Api, dict[str, str]]
                                                                  ) -> None:
    from starlette.websockets import WebSocketDisconnect

    settings, _, _ = world
    with TestClient(create_app(settings)) as client:
        conn = client.app.state.api.persona.recorder.conn  # type: ignore[attr-defined]
        lookups: list[str] = []
        conn.set_trace_callback(lambda sql: lookups.append(sql) if "api_tokens" in sql else None)
        try:
            for attempt in range(80):
                with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
                    ws.send_json({"type": "connection_init",
                                  "payload": {"authorization": f"Bearer pst_guess{attempt:04d}" + "x" * 30}})
                    with pytest.raises(WebSocketDisconnect) as closed:
                        ws.receive_json()
                    assert closed.value.code == 4403
        finally:
            conn.set_trace_callback(None)
    assert 0 < len(lookups) < 60  # a burst is looked up; then the address waits, and nothing is looked up
