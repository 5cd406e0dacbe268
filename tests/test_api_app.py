"""A request's way through the GraphQL API's HTTP endpoint (persona.api.app) and what it refuses on
the way: bodies and query texts over their limits, malformed bodies and documents, wrong methods,
queries too deep, too costly or with too many aliases (persona.api.plan); clean errors that echo
none of the values they were given (persona.api.errors); listings without N+1 statements
(persona.api.data); and /healthz, GET queries and GraphiQL (tests/api_world.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from persona.api.context import ServerOptions
from persona.api.plan import Limits
from tests.api_world import LI, Q_ATTRIBUTES, Q_INGEST, Api, World, app_with, check
from tests.hardening import tally


# -- abuse limits --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_shallow(world: World) -> Iterator[Api]:
    with app_with(world, ServerOptions(limits=Limits(max_depth=3))) as api:
        yield api


@pytest.mark.parametrize("query", [
    "{ profiles { nodes { history { nodes { id } } } } }",
    "{ profiles { ...P } } fragment P on ProfileConnection { nodes { history { nodes { id } } } }",
    "{ profiles { nodes { ... on Profile { identities { namespace } } } } }",
])
def test_too_deep_is_refused(api_shallow: Api, query: str) -> None:
    error = api_shallow.error(query, status=400)
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "deep" in error["message"] and "3" in error["message"]
    tally("query depth or cost bombs refused")


def test_shallow_enough_and_introspection_pass_the_depth_limit(api_shallow: Api) -> None:
    assert api_shallow.data("{ profiles(first: 1) { nodes { id } } }")["profiles"]["nodes"]
    types = api_shallow.data("{ __schema { types { fields { type { ofType { ofType { name } } } } } } }")
    assert types["__schema"]["types"]


@pytest.mark.parametrize(("query", "variables"), [
    ("{ profiles(first: 100) { nodes { history(first: 100) { nodes { data } } } } }", None),
    ("query($n: Int) { profiles(first: $n) { nodes { history(first: $n) { nodes { data } } } } }", {"n": 1}),
])
def test_too_costly_is_refused(api: Api, query: str, variables: dict[str, Any] | None) -> None:
    error = api.error(query, variables, status=400)
    assert error["extensions"]["code"] == "BAD_REQUEST" and "cost" in error["message"]
    tally("query depth or cost bombs refused")


def test_modest_nested_lists_are_served(api: Api) -> None:
    data = api.data("{ profiles(first: 10) { nodes { history(first: 10) { nodes { id } } } } }")
    assert len(data["profiles"]["nodes"]) == 10


def test_too_many_aliases_are_refused(api: Api) -> None:
    fields = " ".join(f"a{i}: profiles(first: 1) {{ nodes {{ id }} }}" for i in range(31))
    error = api.error("{ " + fields + " }", status=400)
    assert "aliases" in error["message"]
    fine = " ".join(f"a{i}: profiles(first: 1) {{ nodes {{ id }} }}" for i in range(30))
    assert len(api.data("{ " + fine + " }")) == 30


def test_body_over_the_limit(api: Api) -> None:
    limit = ServerOptions().max_request_bytes
    body = orjson.dumps({"query": "{ profiles { nodes { id } } }", "pad": "x" * limit})
    response = api.raw("POST", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"query": "{ profiles { nodes { id } } }", "pad": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = api.raw("POST", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_query_text_over_the_limit(api: Api) -> None:
    text = "{ profiles { nodes { id } } }" + " " * Limits().max_document_bytes
    response = api.post(text)
    assert response.status_code == 413


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b"{ profiles { nodes { id } } }", "application/json", 400),  # not JSON
    (b'{"query": "{ profiles { nodes { id } } }"', "application/json", 400),  # truncated
    (b"\xff\xfe", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'{"query": ""}', "application/json", 400),
    (b'{"query": 5}', "application/json", 400),
    (b'{"query": "{ profiles { nodes { id } } }", "variables": [1]}', "application/json", 400),
    (b'{"query": "{ profiles { nodes { id } } }", "operationName": 5}', "application/json", 400),
    (b'{"query": "{ profiles { nodes { id } } }"}', "text/plain", 415),
    (b"{ profiles { nodes { id } } }", "application/graphql", 415),
    (b"query=%7Bprofiles%7D", "application/x-www-form-urlencoded", 415),
], ids=["graphql-not-json", "truncated", "not-utf8", "array", "empty-query", "query-not-text", "variables-array",
        "operationName-number", "text/plain", "application/graphql", "form"])
def test_malformed_bodies(api: Api, content: bytes, content_type: str, status: int) -> None:
    response = api.raw("POST", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(("query", "words"), [
    ("{ profiles { nodes { id }", "Syntax Error"),
    ("{ profiles { nodes { nope } } }", "nope"),
    ("{ nope }", "nope"),
    ("query A { profiles { nodes { id } } } query B { profiles { nodes { id } } }", "operationName"),
    ("query($x: Nope) { profiles(first: $x) { nodes { id } } }", "Nope"),
], ids=["syntax", "unknown-field", "unknown-root", "two-operations", "unknown-type"])
def test_invalid_documents_are_400(api: Api, query: str, words: str) -> None:
    error = api.error(query, status=400)
    assert error["extensions"]["code"] == "BAD_REQUEST" and words in error["message"]


def test_operation_name_selects_the_operation(api: Api) -> None:
    doc = "query A { profiles(first: 1) { nodes { id } } } query B { profiles(first: 2) { nodes { id } } }"
    response = api.post(doc, operationName="B")
    assert response.status_code == 200 and len(response.json()["data"]["profiles"]["nodes"]) == 2
    response = api.post(doc, operationName="C")
    assert response.status_code == 400 and "operation" in response.json()["errors"][0]["message"]


def test_mutation_over_get_is_405(api: Api) -> None:
    response = api.raw("GET", params={"query": Q_INGEST})
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_get_with_bad_variables(api: Api) -> None:
    response = api.raw("GET", params={"query": Q_ATTRIBUTES, "variables": "{not json"})
    assert response.status_code == 400


def test_subscription_over_http_is_400(api: Api, world: World) -> None:
    error = api.error("subscription($id: ID!) { profileUpdated(id: $id) { id } }", {"id": world.ids[LI]},
                      status=400)
    assert "websocket" in error["message"]


# -- error masking -------------------------------------------------------------------------------
SECRET = LI  # a real subject of the data


@pytest.mark.parametrize(("query", "variables"), [
    ("query($n: Int) { profiles(first: $n) { nodes { id } } }", {"n": SECRET}),
    ("query($t: DateTime) { profiles(first: 1, asOf: $t) { nodes { id } } }", {"t": SECRET}),
    ("query($s: SubjectInput!) { profile(subject: $s) { id } }", {"s": {"namespace": "email", "value": [SECRET]}}),
    ("query($s: SubjectInput!) { profile(subject: $s) { id } }", {"s": {"value": SECRET}}),
    ("query($f: ProfileFilter) { profiles(filter: $f) { nodes { id } } }", {"f": {"rfmMin": {"r": SECRET}}}),
], ids=["Int-given-text", "DateTime-given-text", "String-given-a-list", "required-field-missing", "nested-Int"])
def test_wrongly_typed_variables_are_client_errors(api: Api, query: str, variables: dict[str, Any]) -> None:
    """A client's mistake is BAD_REQUEST, not an internal error; its values are not echoed (check)."""
    response = api.post(query, variables)
    assert response.status_code in (200, 400)
    errors = response.json()["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["BAD_REQUEST"] * len(errors)


@pytest.mark.parametrize("query", [
    '{ profiles(first: 1, asOf: "SECRET") { nodes { id } } }'.replace("SECRET", SECRET),
    '{ profiles(first: "SECRET") { nodes { id } } }'.replace("SECRET", SECRET),
    '{ profile(subject: {namespace: "email", value: ["SECRET"]}) { id } }'.replace("SECRET", SECRET),
    '{ profile(id: {value: "SECRET"}) { id } }'.replace("SECRET", SECRET),
], ids=["DateTime", "Int", "String-given-a-list", "ID-given-an-object"])
def test_rejected_literals_do_not_echo_identifiers(api: Api, query: str) -> None:
    response = api.post(query)  # `check` fails if the identifier comes back
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


# -- N+1 -----------------------------------------------------------------------------------------
def statements(api: Api, query: str, variables: dict[str, Any]) -> tuple[Any, list[str]]:
    """The SQL run to answer one request, on the event loop's connection and on the scanner
    threads' (where listings run), without what the server does in the background."""
    state = api.client.app.state.api
    api.data(query, variables)  # the scanner threads open their connections on first use
    connections = [state.persona.recorder.conn] + [p.recorder.conn for p in state.scanner._opened]
    seen: list[str] = []
    for conn in connections:
        conn.set_trace_callback(seen.append)
    try:
        data = api.data(query, variables)
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
    # token lookups; the erasure watch every 0.25 s; the population recount (due every few seconds,
    # so on a busy machine it can land inside the traced request); the webhook courier's glance
    # for a destination (every few seconds, from the loop's connection)
    background = ("api_tokens", "FROM tombstones", "SELECT count(*) FROM profile_index", "FROM destinations")
    return data, [s for s in seen if not any(word in s for word in background)]


@pytest.mark.parametrize("fields", [
    "id attributes features segments predictions { model } identities { hash } updatedAt",
    "id attributeSources",
], ids=["batched-fields", "attributeSources"])
def test_listing_profiles_has_no_n_plus_1(api: Api, world: World, fields: str) -> None:
    assert world.population >= 100
    query = "query($n: Int!) { profiles(first: $n) { nodes { " + fields + " } } }"
    small, few = statements(api, query, {"n": 10})
    large, many = statements(api, query, {"n": 100})
    assert len(small["profiles"]["nodes"]) == 10 and len(large["profiles"]["nodes"]) == 100
    assert few, "the trace must see the reads"
    assert any("profile_index" in statement for statement in few), "the listing's own scan is counted too"
    assert len(many) == len(few), f"{len(few)} statements for 10 profiles, {len(many)} for 100"


# -- healthz, GET, GraphiQL ----------------------------------------------------------------------
def test_healthz_needs_no_token(api: Api) -> None:
    response = check(api.client.get("/healthz"))
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_get_query(api: Api) -> None:
    response = api.raw("GET", params={"query": "query($n: Int) { profiles(first: $n) { nodes { id } } }",
                                      "variables": json.dumps({"n": 3})})
    assert response.status_code == 200 and len(response.json()["data"]["profiles"]["nodes"]) == 3
    assert api.raw("GET", token=None, params={"query": Q_ATTRIBUTES}).status_code == 401


def test_graphiql_only_in_dev(api: Api, world: World) -> None:
    response = api.raw("GET", token=None, headers={"accept": "text/html"})
    assert response.status_code == 404 and response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert not response.headers["content-type"].startswith("text/html")
    with app_with(world, ServerOptions(dev=True)) as dev:
        page = dev.raw("GET", token=None, headers={"accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()
