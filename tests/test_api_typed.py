"""The typed schema (issue 22, Deliver 1) over a real server: `persona serve` on 127.0.0.1, driven
by httpx. Every typed field says what its deprecated JSON twin says, a field a token's scopes do
not cover is refused, and the deprecated fields still answer (clients move at their own pace)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from persona.api.schema import schema
from tests.test_api_http import PEOPLE, Server, serving

FEATURES = """featureValues { frequency monetary aov recencyDays firstOrderAt lastOrderAt refunds refundAmount
  interpurchaseMeanDays interpurchaseStdDays expectedNextPurchaseAt rfm { r f m code } pageViews productViews
  searches sessions sessionMeanDurationS conversionRate viewedSkus convertedSkus socialInteractions { name count }
  appSessions appMinutes appFeaturesUsed { name count } reviews reviewMeanRating
  categoryAffinity { category score } topCategories behaviorEvents activeDays hourOfDay dayOfWeek firstSeenAt
  lastSeenAt lifecycleStage }"""
ATTRIBUTES = """attributeValues { gender birthYear age region city country language languages signupAt
  consent { analytics marketing personalization } custom }"""
PROVENANCE = "attributeProvenance { name strategy value derivedFrom claims { source writer vouched eventId" \
             " occurredAt weight } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("typed")) as running:
        yield running


def ask(server: Server, query: str, variables: dict[str, Any] | None = None, token: str = "ops") -> Any:
    response = server.post(query, variables, token=token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def same_time(typed: str | None, stored: str | None) -> bool:
    if typed is None or stored is None:
        return typed is stored
    return datetime.fromisoformat(typed) == datetime.fromisoformat(stored)


@pytest.mark.parametrize("person", PEOPLE)
def test_typed_features_say_what_the_json_says(server: Server, person: str) -> None:
    profile = ask(server, f"query($id: ID) {{ profile(id: $id) {{ features {FEATURES} }} }}",
                  {"id": server.ids[person]})["profile"]
    blob, typed = profile["features"], profile["featureValues"]
    assert blob["behavior_events"] > 0  # the sample's people all did something
    for name, value in blob.items():
        field = camel(name)
        if name == "rfm":
            code = None if value is None else f"{value['r']}{value['f']}{value['m']}"
            assert typed["rfm"] == (None if value is None else value | {"code": code})
        elif name == "lifecycle_stage":
            assert typed[field] == (value.upper() if value else None)
        elif name == "category_affinity":
            assert {s["category"]: s["score"] for s in typed[field]} == value
            scores = [s["score"] for s in typed[field]]
            assert scores == sorted(scores, reverse=True)  # strongest first
        elif name in ("social_interactions", "app_features_used"):
            assert {c["name"]: c["count"] for c in typed[field]} == value
        elif name.endswith("_at"):
            assert same_time(typed[field], value), name
        else:
            assert typed[field] == value, name
    asked = set(re.findall(r"\w+", FEATURES.split("{", 1)[1])) - {"r", "f", "m", "code", "name", "count",
                                                                  "category", "score"}
    assert asked == {camel(name) for name in blob}  # every feature has a field, and no field is made up
    assert len(typed["hourOfDay"]) == 24 and len(typed["dayOfWeek"]) == 7
    assert sum(typed["hourOfDay"]) == sum(typed["dayOfWeek"]) == typed["behaviorEvents"]


def test_typed_attributes_and_provenance_say_what_the_json_says(server: Server) -> None:
    li = server.ids[PEOPLE[0]]
    profile = ask(server, f"query($id: ID) {{ profile(id: $id) {{ attributes attributeSources {ATTRIBUTES}"
                          f" {PROVENANCE} }} }}", {"id": li})["profile"]
    blob, typed = profile["attributes"], profile["attributeValues"]
    assert (typed["gender"], typed["birthYear"], typed["country"], typed["city"]) == ("female", 1990, "CN", "Shanghai")
    assert typed["age"] == blob["age"] == datetime.now().year - 1990
    assert typed["consent"] == {p: blob["consent"].get(p) for p in ("analytics", "marketing", "personalization")}
    assert typed["consent"]["analytics"] is True  # the sample's crm-0002
    assert same_time(typed["signupAt"], blob["signup_at"])
    known = {"gender", "birth_year", "age", "region", "city", "country", "language", "languages", "signup_at",
             "consent"}
    assert typed["custom"] == {k: v for k, v in blob.items() if k not in known}
    sources, provenance = profile["attributeSources"], {a["name"]: a for a in profile["attributeProvenance"]}
    for name, held in sources.items():
        if name == "consent":
            for purpose, given in held.items():
                entry = provenance[f"consent.{purpose}"]
                assert (entry["strategy"], entry["value"]) == ("consent", given["granted"])
                assert [c["eventId"] for c in entry["claims"]] == [p["event_id"] for p in given["provenance"]]
            continue
        entry = provenance[name]
        assert (entry["strategy"], entry["value"], entry["derivedFrom"]) == (
            held["strategy"], held["value"], held.get("derived_from"))
        for claim, said in zip(entry["claims"], held["provenance"], strict=True):
            assert (claim["source"], claim["writer"], claim["vouched"], claim["eventId"], claim["weight"]) == (
                said["source"], said["writer"], said["vouched"], said["event_id"], said.get("weight"))
            assert same_time(claim["occurredAt"], said["occurred_at"])
    assert provenance["gender"]["claims"][0]["eventId"] == "crm-0001"


def test_provenance_needs_the_history_scope_and_the_present(server: Server) -> None:
    li = server.ids[PEOPLE[0]]
    refused = server.post(f"query($id: ID) {{ profile(id: $id) {{ {PROVENANCE} }} }}", {"id": li}, token="reader")
    body = refused.json()
    assert body.get("data") is None and "history:read" in body["errors"][0]["message"]
    past = server.post(f"query($id: ID) {{ profile(id: $id, asOf: \"2025-06-01T00:00:00Z\") {{ {PROVENANCE} }} }}",
                       {"id": li}).json()
    assert "available for the current profile only" in past["errors"][0]["message"]
    # what a reader may see, typed: features and attributes need no more than profiles:read
    typed = ask(server, f"query($id: ID) {{ profile(id: $id) {{ {ATTRIBUTES} {FEATURES} }} }}", {"id": li},
                token="reader")["profile"]
    assert typed["attributeValues"]["country"] == "CN" and typed["featureValues"]["behaviorEvents"] > 0


def test_typed_features_of_the_past_are_the_past(server: Server) -> None:
    li = server.ids[PEOPLE[0]]
    query = "query($id: ID, $t: DateTime) { profile(id: $id, asOf: $t) { featureValues { behaviorEvents" \
            " lastSeenAt } attributeValues { country } } }"
    now = ask(server, query, {"id": li, "t": None})["profile"]
    past = ask(server, query, {"id": li, "t": "2025-06-01T00:00:00Z"})["profile"]
    assert 0 < past["featureValues"]["behaviorEvents"] < now["featureValues"]["behaviorEvents"]
    assert datetime.fromisoformat(past["featureValues"]["lastSeenAt"]) <= datetime.fromisoformat(
        "2025-06-01T00:00:00+00:00")


def test_events_occurred_at_is_a_datetime_and_counts_are_typed(server: Server) -> None:
    li = server.ids[PEOPLE[0]]
    nodes = ask(server, "query($id: ID) { profile(id: $id) { history(first: 3) { nodes { occurredAt } } } }",
                {"id": li})["profile"]["history"]["nodes"]
    assert all(datetime.fromisoformat(n["occurredAt"]).utcoffset() is not None for n in nodes)
    bad = [{"source": "web", "type": "page_viewed", "occurredAt": "not a time", "eventId": "typed-bad",
            "subject": {"namespace": "email", "value": "typed.nobody@example.com"}, "data": {}}]
    result = ask(server, "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { quarantined quarantineReasons"
                         " quarantinedBy { name count } } }", {"e": bad})["ingestEvents"]
    assert result["quarantined"] == 1
    assert {c["name"]: c["count"] for c in result["quarantinedBy"]} == result["quarantineReasons"]


def test_erasure_receipt_counts_are_typed(tmp_path: Path) -> None:
    with serving(tmp_path) as running:
        pid = running.ids[PEOPLE[3]]
        erased = ask(running, "mutation($id: ID) { eraseProfile(id: $id) { counts deleted { name count } } }",
                     {"id": pid})["eraseProfile"]
    assert {c["name"]: c["count"] for c in erased["deleted"]} == erased["counts"]
    assert sum(c["count"] for c in erased["deleted"]) > 0


def test_the_old_json_fields_are_deprecated_not_gone() -> None:
    text = schema.as_str()
    for field, instead in (("features", "featureValues"), ("attributes", "attributeValues"),
                           ("attributeSources", "attributeProvenance"), ("quarantineReasons", "quarantinedBy"),
                           ("counts", "deleted")):
        declared = re.search(rf"\n  {field}: JSON!? @deprecated\(reason: \"Use {instead}\b", text)
        assert declared, f"{field} is not deprecated in favour of {instead}"


HISTORY = """query($id: ID) { profile(id: $id) { history(first: 100) { nodes { __typename id type data
  ... on OrderPlaced { orderId amount currency channel items { sku category qty price } }
  ... on OrderRefunded { orderId amount }
  ... on PageViewed { url category durationS sessionId referrer }
  ... on ProductViewed { sku category sessionId }
  ... on Searched { query sessionId }
  ... on CartUpdated { sku qty }
  ... on SocialInteraction { action target category }
  ... on AppSession { sessionId minutes featuresUsed platform }
  ... on ReviewPosted { sku rating textLength }
  ... on ConsentChanged { purpose granted }
  ... on ProfileUpdated { gender birthYear age region city country language signupAt } } } } }"""


def test_each_event_type_has_its_fields(server: Server) -> None:
    """Every event of the sample's people, read as its own type: each typed field is its body's value."""
    from decimal import Decimal

    from persona.api.event_types import EVENT_CLASSES

    seen: set[str] = set()
    for person in PEOPLE:
        nodes = ask(server, HISTORY, {"id": server.ids[person]})["profile"]["history"]["nodes"]
        for node in nodes:
            kind, data = node["type"], node["data"]
            expected = EVENT_CLASSES[kind].__name__ if kind in EVENT_CLASSES else "OtherEvent"
            assert node["__typename"] == expected
            seen.add(kind)
            own = {key: value for key, value in node.items() if key not in ("__typename", "id", "type", "data")}
            for field, value in own.items():
                stored = data.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), field))
                if field == "items":
                    assert value == [{"sku": i.get("sku"), "category": i.get("category"), "qty": i.get("qty"),
                                      "price": i.get("price")} for i in stored]
                elif field in ("amount", "price"):
                    assert Decimal(value) == Decimal(stored)
                elif field == "signupAt":
                    assert same_time(value, stored)
                else:
                    assert value == stored, (kind, field)
    assert {"order_placed", "page_viewed", "product_viewed", "profile_updated", "consent_changed"} <= seen


def test_fields_inside_type_fragments_count_in_the_cost() -> None:
    """The cost limit sees through `... on OrderPlaced`: a fragment on a concrete event type, or on
    the Event interface, is walked like any selection (else a page of items would cost nothing)."""
    from persona.api.plan import Limits, plan

    bare = "query($id: ID) { profile(id: $id) { history(first: 100) { nodes { id } } } }"
    typed = "query($id: ID) { profile(id: $id) { history(first: 100) { nodes { id ... on OrderPlaced {" \
            " orderId items { sku category qty price } } } } } }"
    on_interface = "query($id: ID) { profile(id: $id) { history(first: 100) { nodes { ...e } } } }" \
                   " fragment e on Event { id type source writer }"
    costs = [plan(schema._schema, text, None, Limits()).cost for text in (bare, typed, on_interface)]
    assert costs[1] > costs[0] and costs[2] > costs[0]
    assert costs[1] - costs[0] >= 100 * 6  # six more fields on each of 100 events


def test_the_queries_docs_api_shows_are_valid_and_use_no_deprecated_field() -> None:
    """What a frontend developer copies from docs/api.md runs against this schema, typed fields only."""
    from graphql import DocumentNode, FragmentDefinitionNode, OperationDefinitionNode, parse, specified_rules, validate
    from graphql.validation.rules.custom.no_deprecated import NoDeprecatedCustomRule

    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    blocks = re.findall(r"```graphql\n(.*?)```", text, re.S)
    operations = 0
    for block in blocks:
        document = parse(block)
        fragments = [d for d in document.definitions if isinstance(d, FragmentDefinitionNode)]
        for operation in (d for d in document.definitions if isinstance(d, OperationDefinitionNode)):
            alone = DocumentNode(definitions=(operation, *fragments))
            errors = validate(schema._schema, alone, [*specified_rules, NoDeprecatedCustomRule])
            assert not errors, (block[:200], [e.message for e in errors])
            operations += 1
    assert operations >= 6 and len(blocks) >= 5


def test_profiles_filtered_by_a_rule(server: Server) -> None:
    """`filter.rule` lists exactly the people whose features and attributes satisfy it; a bad rule is a
    clean error saying where; insights refuse rules; the audit log names what a rule read, never its values."""
    from persona import Persona
    from persona.rules import parse

    everyone = ask(server, "{ profiles(first: 100) { nodes { id attributes features } } }")["profiles"]["nodes"]
    rules = ('city = "Shanghai" or frequency >= 2', "behavior_events > 5 and not consent.marketing",
             'country in ["CN", "US"]', "recency_days is null")
    for rule in rules:
        found = ask(server, "query($r: String) { profiles(first: 100, filter: {rule: $r}) { nodes { id } } }",
                    {"r": rule})["profiles"]["nodes"]
        holds = parse(rule)
        expected = [p["id"] for p in everyone if holds(p["attributes"], p["features"], p["features"].get("rfm"))]
        assert [p["id"] for p in found] == expected, rule
    assert any(ask(server, "query($r: String) { profiles(first: 100, filter: {rule: $r}) { nodes { id } } }",
                   {"r": rules[0]})["profiles"]["nodes"])  # the sample's Shanghai buyer at least
    bad = server.post("{ profiles(filter: {rule: \"monetary >\"}) { nodes { id } } }").json()
    assert bad["data"] is None or bad["data"].get("profiles") is None
    # what was wrong, and where in the grammar; what was found is left out, as for any input (it may be a value)
    assert bad["errors"][0]["message"] == "filter.rule: monetary holds a number: expected a number."
    echoed = server.post("query($r: String) { profiles(filter: {rule: $r}) { nodes { id } } }",
                         {"r": 'city = "Secretville" and'}).json()
    assert echoed["errors"][0]["message"].startswith("filter.rule: expected a name") and "Secretville" not in str(
        echoed)
    refused = server.post('{ insights(groupBy: ["country"], epsilon: 1.0, filter: {rule: "age > 30"}) { k } }',
                          token="ops").json()
    assert "errors" in refused
    deadline = time.monotonic() + 10
    while True:  # the server writes its audit entries in batches
        with Persona.open(server.settings) as p:
            details = [orjson.loads(r[7]) for r in p.recorder.audit_rows(limit=1_000_000) if r[3] == "profiles"]
        ruled = [d["filter"]["rule"] for d in details if "rule" in d.get("filter", {})]
        if (["city", "frequency"] in ruled and ["country"] in ruled) or time.monotonic() > deadline:
            break  # every request's entry written (a batch may hold only some of them)
        time.sleep(0.1)
    assert ["city", "frequency"] in ruled and ["country"] in ruled
    assert "Shanghai" not in str(details) and "CN" not in str(details)


def test_typed_model_parts_survive_numbers_stored_as_null() -> None:
    """orjson stores NaN and infinities as null: a typed field says null, and the model still lists."""
    from persona.api.typed import model_parts
    from persona.api.types import _classes

    meta = {"metrics": {"roc_auc": None, "log_loss": 0.5, "rows": 120.0},
            "baselines": {"BG/NBD": {"roc_auc": float("nan"), "log_loss": 0.6}},
            "lift": {"metric": "log_loss", "model": None, "baseline": 0.6, "against": "BG/NBD", "improvement": None},
            "window": {"cutoffs": ["2026-01-01T00:00:00+00:00"], "horizon_days": 91.0},
            "rows": {"train": 100, "test": 20}, "code": {"persona": "0.1"}}
    drift = {"measured_at": "2026-02-01T00:00:00+00:00", "people": 10, "psi_max": None, "psi_limit": 0.25,
             "psi_top": [{"feature": "recency", "psi": None}], "age_days": 31.0, "stale": False, "reasons": []}
    held_out, baselines, gain, training, last, libraries = model_parts(meta, drift)
    assert [(f.name, f.value) for f in held_out] == [("log_loss", 0.5), ("roc_auc", None), ("rows", 120.0)]
    assert [(f.name, f.value) for f in baselines[0].metrics] == [("log_loss", 0.6), ("roc_auc", None)]
    assert (gain.model, gain.baseline, gain.improvement) == (None, 0.6, None)
    assert (training.train_rows, training.test_rows, training.horizon_days) == (100, 20, 91.0)
    assert last is not None and last.psi_max is None and last.psi_top[0].value is None
    assert libraries == ["persona 0.1"]
    classes = _classes({"books": 0.2, "garden": None, "toys": 0.8})  # type: ignore[dict-item]
    assert classes is not None and [(c.name, c.value) for c in classes] == [("toys", 0.8), ("books", 0.2),
                                                                             ("garden", None)]


# -- CORS: frontends of the origins named, no one else ----------------------------------------------
SHOP = "https://shop.example"


def test_cors_answers_the_origins_named_and_no_other(tmp_path: Path) -> None:
    options = ("--cors-origin", SHOP, "--cors-origin", "http://localhost:5173")
    with serving(tmp_path, None, *options) as running, running.client() as http:
        asked = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
        allowed = http.options("/graphql", headers={"Origin": SHOP, **asked})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == SHOP
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers  # bearer tokens, never cookies
        other = http.options("/graphql", headers={"Origin": "https://evil.example", **asked})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        sibling = http.options("/graphql", headers={"Origin": "https://shop.example.evil.example", **asked})
        assert "access-control-allow-origin" not in sibling.headers
        query = {"query": "{ profile(id: \"prf_none\") { id } }"}
        answered = http.post("/graphql", json=query, headers={"Origin": SHOP, **running.auth("reader")})
        assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == SHOP
        foreign = http.post("/graphql", json=query, headers={"Origin": "https://evil.example",
                                                             **running.auth("reader")})
        assert "access-control-allow-origin" not in foreign.headers  # a browser keeps the answer from the page
        anonymous = http.post("/graphql", json=query, headers={"Origin": SHOP})
        assert anonymous.status_code == 401  # CORS lets a page ask; only a token lets it read


def test_without_cors_origins_no_page_of_another_origin_may_call(server: Server) -> None:
    with server.client() as http:
        preflight = http.options("/graphql", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("origin", ["*", "https://shop.example/path", "shop.example", "javascript:alert(1)",
                                    "https://", "ftp://shop.example"])
def test_a_cors_origin_must_be_one_exact_origin(tmp_path: Path, origin: str) -> None:
    from click.testing import CliRunner

    from persona.cli import cli

    data = str(tmp_path / "data")
    assert CliRunner().invoke(cli, ["--data", data, "init"]).exit_code == 0
    refused = CliRunner().invoke(cli, ["--data", data, "serve", "--port", "0", "--cors-origin", origin])
    assert refused.exit_code != 0 and "a CORS origin is scheme://host[:port]" in refused.output


def test_fields_collected_once_per_document_answer_each_execution_as_its_own(server: Server) -> None:
    """persona.api.execution keeps each object's collected fields across executions of one document:
    the same document asked for one person after another (aliases, a fragment, a list of objects)
    answers each exactly as a document of its own would; a document with a directive is collected at
    each execution, so its variables still decide what it selects."""
    shared = ("query($id: ID!) { profile(id: $id) { id first: featureValues { ...F } again: featureValues"
              " { frequency } attributeValues { city } } } fragment F on Features { frequency rfm { r f m } }")
    people = [server.ids[name] for name in PEOPLE]
    answers = [ask(server, shared, {"id": pid})["profile"] for pid in people * 2]
    for n, pid in enumerate(people * 2):
        alone = ask(server, shared.replace("{ id first", "{  id first"), {"id": pid})["profile"]  # another plan
        assert answers[n] == alone and answers[n]["id"] == pid
        assert set(alone["first"]) == {"frequency", "rfm"} and set(alone["again"]) == {"frequency"}
    assert len({orjson.dumps(a) for a in answers}) == len(people)
    directed = "query($id: ID!, $f: Boolean!) { profile(id: $id) { id featureValues @include(if: $f) { frequency } } }"
    for wanted in (True, False, True, False):
        got = ask(server, directed, {"id": people[0], "f": wanted})["profile"]
        assert ("featureValues" in got) is wanted


def test_only_a_document_without_directives_keeps_its_collected_fields() -> None:
    from persona.api.plan import Limits, plan

    plain = plan(schema._schema, "{ profile(id: \"x\") { id } }", None, Limits())
    directed = plan(schema._schema, "query($f: Boolean!) { profile(id: \"x\") { id @skip(if: $f) } }", None, Limits())
    in_fragment = plan(schema._schema, "{ profile(id: \"x\") { ...P } } fragment P on Profile"
                       " { id @include(if: true) }", None, Limits())
    assert plain.subfields == {} and directed.subfields is None and in_fragment.subfields is None
