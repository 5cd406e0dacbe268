"""Schemathesis against the running server: every query and mutation of the schema, fuzzed.

`persona serve` runs in a subprocess on loopback (as in test_api_http); schemathesis generates
documents and variables for each root field from the schema itself, and each is sent over HTTP
with a token holding every scope, so that requests reach the resolvers rather than the gate.
Whatever it sends, the server answers with a status below 500, a GraphQL body, and nothing of
its internals or of a person's identifiers; and it is still healthy at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import graphql
import httpx
import pytest
import schemathesis
from graphql import introspection_from_schema
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from persona import Persona
from persona.api.schema import schema as persona_schema
from persona.tokens import SCOPES, create_token
from tests.hardening import ANSWERED_5XX, ECHOED, REQUESTS, TRIED, sized, tally
from tests.test_api_http import INTERNALS, PEOPLE, Server, serving

EXAMPLES = sized(80, 1200)  # per root field; nine fields: 10,800 requests in the long run
LEAKS = (*INTERNALS, 'File "', "persona/", ".py", "psycopg", "Exception")

nodes = schemathesis.graphql.nodes


def _json_nodes() -> st.SearchStrategy[graphql.ValueNode]:
    """Any JSON value as a GraphQL literal: numbers past 64 bits, odd keys, deep nesting."""
    leaves = st.one_of(st.text().map(nodes.String), st.integers().map(nodes.Int),
                       st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
                       st.booleans().map(nodes.Boolean), st.just(nodes.Null))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(nodes.List),
        st.dictionaries(st.from_regex(r"\A[_A-Za-z][_0-9A-Za-z]{0,12}\Z"), inner, max_size=4).map(
            lambda d: nodes.Object([graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v)
                                    for k, v in d.items()]))), max_leaves=12)


schemathesis.graphql.scalar("JSON", _json_nodes())
schemathesis.graphql.scalar("DateTime", st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: nodes.String(d.isoformat())),
    st.text(max_size=30).map(nodes.String)))
schema = schemathesis.graphql.from_dict(introspection_from_schema(persona_schema._schema))


SENT: set[str] = set()  # identifier values the fuzzer sent, to look for in the server's log afterwards
# The schema's own words (names and descriptions): an answer may say them whatever was sent (a value
# "IDENTITY" is in "identity_linked" of an error message), so finding one is no echo
VOCABULARY = persona_schema.as_str().lower()


def identifiers_in(body: dict[str, Any]) -> set[str]:
    """The `value` of every SubjectInput in a fuzzed request (inline literals and variables), when
    distinctive enough that finding it in an answer cannot be chance (8+ characters, 4+ distinct,
    not a word of the schema's own text)."""
    found: set[str] = set()

    def walk_variables(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("namespace"), str) and isinstance(value.get("value"), str):
                found.add(value["value"])
            for inner in value.values():
                walk_variables(inner)
        elif isinstance(value, list):
            for inner in value:
                walk_variables(inner)

    class Literals(graphql.Visitor):
        def enter_object_value(self, node: graphql.ObjectValueNode, *_: Any) -> None:
            fields = {f.name.value: f.value for f in node.fields}
            if "namespace" in fields and isinstance(fields.get("value"), graphql.StringValueNode):
                found.add(fields["value"].value)

    with contextlib.suppress(graphql.GraphQLError):  # a document that does not parse carries no literal
        graphql.visit(graphql.parse(body.get("query") or ""), Literals())
    walk_variables(body.get("variables"))
    return {v.strip().lower() for v in found if len(v.strip()) >= 8 and len(set(v.strip())) >= 4
            and v.strip().lower() not in VOCABULARY}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client]]:
    with serving(tmp_path_factory.mktemp("fuzzed")) as server:
        with Persona.open(server.settings) as p:  # every scope, and no rate limit that would cut the fuzzing short
            server.tokens["all"] = create_token(p, "all", frozenset(SCOPES), rate_per_s=10_000)
        with server.client() as http:
            yield server, http
        logs = server.logs().lower()
        assert "traceback" not in logs, logs[-3000:]
        assert not [p for p in PEOPLE if p in logs], "a seeded identifier in the server's log"
        # the server's own address is on every access-log line whatever was sent: a fuzzed value
        # equal to it (schemathesis does send "127.0.0.1") says nothing about an echo
        address = httpx.URL(server.url).host
        leaked = [v for v in SENT if v in logs.replace(address, "")]
        assert not leaked, f"{len(leaked)} fuzzed identifier(s) in the server's log"


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_input_breaks_the_server(case: Any, fuzzed: tuple[Server, httpx.Client]) -> None:
    server, http = fuzzed
    body = case.body if isinstance(case.body, dict) else {"query": case.body}
    response = http.post("/graphql", json=body, headers=server.auth("all"))
    tally(REQUESTS)
    sent = identifiers_in(body)
    SENT.update(sent)
    tally(ANSWERED_5XX, response.status_code >= 500)
    assert response.status_code < 500, f"{response.status_code} for {body!r}: {response.text[:300]}"
    text = response.text
    for word in LEAKS:
        assert word not in text, f"{word!r} in the answer to {body!r}: {text[:300]}"
    seeded = [p for p in PEOPLE if p in text.lower()]
    echoed = [v for v in sent if v in text.lower()]
    tally(ECHOED, bool(seeded or echoed))
    assert not seeded, f"a seeded identifier in the answer to {body!r}"
    assert not echoed, f"an identifier it was sent, in the answer to {body!r}"
    answer = response.json()
    assert isinstance(answer, dict) and ("data" in answer or "errors" in answer), text[:300]
    if response.status_code == 200 and answer.get("data") and not answer.get("errors"):
        tally("GraphQL requests answered with data (reached the resolvers)")
    if response.status_code == 429:
        tally("GraphQL requests rate-limited (429)")
    if answer.get("errors"):
        tally("GraphQL requests answered with a clean error")
        for error in answer["errors"]:
            assert set(error) <= {"message", "locations", "path", "extensions"}, error
            assert isinstance(error["message"], str) and error["message"], error


def test_the_server_is_healthy_after_the_fuzzing(fuzzed: tuple[Server, httpx.Client]) -> None:
    """Runs after the fuzzing (file order): the server still answers, and the fuzzing reached it."""
    server, http = fuzzed
    if TRIED[REQUESTS] >= 9 * EXAMPLES // 2:  # the whole module ran
        assert TRIED["GraphQL requests answered with data (reached the resolvers)"] >= 50, dict(TRIED)
        assert SENT, "no identifier was ever sent: the leak checks checked nothing"
    assert http.get("/healthz").status_code == 200
    query = "{ profiles(first: 5) { edges { node { id version } } } }"
    response = http.post("/graphql", json={"query": query}, headers=server.auth("all"))
    assert response.status_code == 200 and not response.json().get("errors"), response.text[:300]
    assert response.json()["data"]["profiles"]["edges"], "the fuzzing left no profile to read"


