"""The GraphQL API in-process: Starlette's TestClient around `create_app`, lifespan included.

Real SQLite files in temporary directories, real keys and tokens, the real schema and
handler; nothing is mocked. Most read-only tests share one module-scoped data directory
(`world`: the sample fixture plus a synthetic crowd of 110 people) and one app; tests
that write get a fresh directory of their own. Every response goes through `check`: never
a 500, never a traceback, SQL or a raw identifier of a person.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from click.testing import CliRunner, Result
from starlette.exceptions import StarletteDeprecationWarning

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.api.plan import FIELD_SCOPES, UNLESS_ARGUMENT, Limits
from persona.api.schema import schema
from persona.cli import cli
from persona.erasure import verify_receipt
from persona.errors import ErasedError, ReceiptError, ValidationError
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe
from persona.insights import BOUNDS, DELTA, EPSILON_FLOOR
from persona.population import indexed
from persona.pseudonyms import normalise, short_hash
from persona.rfm import compute_rfm
from persona.tokens import DEFAULT_DELTA_BUDGET, SCOPES, create_token, list_tokens, revoke_token
from tests.conftest import Clock, record
from tests.hardening import tally

with warnings.catch_warnings():
    # Starlette >= 1.x asks for the `httpx2` fork at import time; the installed httpx works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated",
                            category=StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample_events.jsonl"
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "schema.graphql"
INTERNALS = ("Traceback", "sqlite", "SELECT")
READ_SCOPES = frozenset({"profiles:read", "history:read", "predictions:read", "insights:read"})
LI = "li.wei@example.com"  # in the sample: linked to a device, ~18 events
FRESH_PEOPLE = ("ann@example.com", "ben@example.com", "cara@example.com")
CROWD_STAGES = (  # (designed stage, people, first seen days ago, last order days ago)
    ("new", 40, 10, 3),
    ("active", 45, 200, 20),
    ("at_risk", 3, 300, 150),
    ("churned", 22, 800, 500),
)
CROWD_COUNTRIES = ("FR", "BR", "CN", "KE")


def _sample_identifiers() -> set[str]:
    found: set[str] = set()
    for line in SAMPLE.read_bytes().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        for spot in (doc.get("subject"), (doc.get("data") or {}).get("other")):
            if isinstance(spot, dict) and isinstance(spot.get("value"), str):
                found.add(spot["value"])
                with suppress(ValidationError):
                    found.add(normalise(spot["namespace"], spot["value"]))
    return found


def crowd_email(n: int) -> str:
    return f"p{n:03d}@crowd.example"


CROWD_SIZE = sum(count for _, count, _, _ in CROWD_STAGES)
# Every raw identifier a test process knows of: none may ever appear in a response.
IDENTIFIERS = tuple(sorted(_sample_identifiers() | {crowd_email(n) for n in range(CROWD_SIZE)} | set(FRESH_PEOPLE)))


def check(response: httpx.Response) -> httpx.Response:
    """What every answer must be, whatever was asked."""
    assert response.status_code != 500, response.text[:500]
    body = response.text
    for word in INTERNALS:
        assert word not in body, f"{word!r} in a response body: {body[:500]}"
    lowered = body.lower()
    leaked = [value for value in IDENTIFIERS if value.lower() in lowered]
    assert not leaked, f"raw identifier(s) {leaked} in a response body: {body[:500]}"
    return response


@dataclass
class Api:
    """A GraphQL client over a TestClient: every response is `check`ed."""

    client: TestClient
    tokens: dict[str, str]
    default: str = "all"

    def headers(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {self.tokens.get(token, token)}"}

    def post(self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = "",
             **extra: Any) -> httpx.Response:
        body: dict[str, Any] = {"query": query, **extra}
        if variables is not None:
            body["variables"] = variables
        who = self.default if token == "" else token
        return check(self.client.post("/graphql", json=body, headers=self.headers(who)))

    def raw(self, method: str, *, token: str | None = "", **kwargs: Any) -> httpx.Response:
        who = self.default if token == "" else token
        headers = self.headers(who) | kwargs.pop("headers", {})
        return check(self.client.request(method, "/graphql", headers=headers, **kwargs))

    def data(self, query: str, variables: dict[str, Any] | None = None, *, token: str = "") -> Any:
        response = self.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        doc = response.json()
        assert "errors" not in doc, doc["errors"]
        return doc["data"]

    def error(self, query: str, variables: dict[str, Any] | None = None, *, token: str = "",
              status: int = 200) -> dict[str, Any]:
        """The first error of a refused request (at HTTP `status`)."""
        response = self.post(query, variables, token=token)
        assert response.status_code == status, response.text
        errors = response.json()["errors"]
        assert errors and all(e["message"] for e in errors)
        first: dict[str, Any] = errors[0]
        return first


def lines_of(records: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def crowd_records(now: datetime) -> list[dict[str, Any]]:
    """People whose lifecycle stage, country and spending are known by construction."""
    def ago(days: float) -> str:
        return (now - timedelta(days=days)).isoformat()

    out: list[dict[str, Any]] = []
    n = 0
    for _, count, first, last in CROWD_STAGES:
        for _ in range(count):
            email = crowd_email(n)
            out.append(record(email, "profile_updated", {"country": CROWD_COUNTRIES[n % 4]}, event_id=f"c{n}-p",
                              occurred_at=ago(first), source="crm"))
            out.append(record(email, "page_viewed", {"url": "https://shop.example/", "category": "books"},
                              event_id=f"c{n}-v", occurred_at=ago(first)))
            for k in range(1 + n % 3):
                amount = f"{5 + (n * 37) % 400}.{n % 100:02d}"
                out.append(record(email, "order_placed", {"order_id": f"o{n}-{k}", "amount": amount,
                                                          "currency": "EUR"},
                                  event_id=f"c{n}-o{k}", occurred_at=ago(last + k), source="shop"))
            n += 1
    return out


WORLD_TOKENS: dict[str, tuple[frozenset[str], dict[str, float]]] = {
    "all": (READ_SCOPES, {}),
    "reader": (frozenset({"profiles:read"}), {}),
    "historian": (frozenset({"profiles:read", "history:read"}), {}),
    "oracle": (frozenset({"profiles:read", "predictions:read"}), {}),
    "analyst": (frozenset({"insights:read", "insights:exact"}), {}),
    "noisy": (frozenset({"insights:read"}), {"epsilon_budget": 10.0}),
    "tight": (frozenset({"insights:read"}), {"epsilon_budget": 1.5}),
    "careful": (frozenset({"insights:read"}), {"epsilon_budget": 1.0}),
    "slow": (frozenset({"profiles:read"}), {"rate_per_s": 1.0}),
    "doomed": (frozenset({"profiles:read"}), {}),
    "auditor": (frozenset({"profiles:read", "history:read"}), {}),
    "watcher": (frozenset({"profiles:read"}), {}),
    "snoop": (frozenset({"profiles:read"}), {}),
    "writer": (frozenset({"events:write"}), {}),
    "eraser": (frozenset({"erasure:write"}), {}),
}


@dataclass
class World:
    settings: Settings
    tokens: dict[str, str]
    ids: dict[str, str]  # raw identifier -> profile id, as the library resolves it
    population: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    settings = Settings.load(tmp_path_factory.mktemp("world") / "data", env={})
    with Persona.init(settings) as p:
        sample = ingest_jsonl(p, SAMPLE.read_bytes().splitlines(), origin="sample")
        assert (sample.appended, sample.quarantined) == (95, 4)
        crowd = ingest_jsonl(p, lines_of(crowd_records(datetime.now(UTC))), origin="crowd")
        assert crowd.quarantined == 0 and crowd.profiles_created == CROWD_SIZE
        compute_rfm(p)
        tokens = {name: create_token(p, name, scopes, **options) for name, (scopes, options) in WORLD_TOKENS.items()}
        ids = {}
        for value in (LI, "maria.garcia@example.com", "tom.baker@example.com", "aiko.tanaka@example.com",
                      *(crowd_email(n) for n in range(CROWD_SIZE))):
            found = p.log.profile_for("email", value)
            assert found is not None
            ids[value] = found
        population = sum(1 for _ in indexed(p))
    assert population == 6 + CROWD_SIZE
    return World(settings, tokens, ids, population)


@pytest.fixture(scope="module")
def api(world: World) -> Iterator[Api]:
    with TestClient(create_app(world.settings)) as client:
        yield Api(client, world.tokens)


@contextmanager
def app_with(world: World, options: ServerOptions) -> Iterator[Api]:
    """Another app (another server, in effect) over the world's data, with other options."""
    with TestClient(create_app(world.settings, options)) as client:
        yield Api(client, world.tokens)


PROFILE_PAGE = """query($first: Int, $after: String, $filter: ProfileFilter) {
  profiles(first: $first, after: $after, filter: $filter) {
    edges { cursor node { id attributes features segments } }
    pageInfo { hasNextPage endCursor }
  }
}"""


def walk(api: Api, *, first: int, filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every page of `profiles`, following endCursor until hasNextPage is false."""
    pages: list[dict[str, Any]] = []
    after = None
    for _ in range(1_000):
        page = api.data(PROFILE_PAGE, {"first": first, "after": after, "filter": filter})["profiles"]
        pages.append(page)
        if not page["pageInfo"]["hasNextPage"]:
            return pages
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("profiles pagination never ended")


@pytest.fixture(scope="module")
def everyone(api: Api) -> list[dict[str, Any]]:
    """Every profile with attributes, features and segments, read through the API."""
    return [edge["node"] for page in walk(api, first=100) for edge in page["edges"]]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def between(times: list[datetime]) -> datetime:
    """An instant strictly between the middle two of these distinct times."""
    distinct = sorted(set(times))
    assert len(distinct) >= 2
    mid = len(distinct) // 2
    return distinct[mid - 1] + (distinct[mid] - distinct[mid - 1]) / 2


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# -- profile(id / subject / asOf) ----------------------------------------------------------------
PROFILE_BY_ID = "query($id: ID!) { profile(id: $id) { id version updatedAt attributes features segments } }"
PROFILE_BY_SUBJECT = """query($ns: String!, $v: String!) {
  profile(subject: {namespace: $ns, value: $v}) { id version updatedAt attributes features segments }
}"""


@pytest.mark.parametrize(("namespace", "value", "owner"), [
    ("email", LI, LI),
    ("email", "  LI.Wei@Example.COM ", LI),  # normalised as on ingest
    ("device", "ios-4F2A-99C1", LI),  # linked by an identity_linked event
    ("email", "maria.garcia@example.com", "maria.garcia@example.com"),
    ("email", crowd_email(7), crowd_email(7)),
])
def test_profile_by_subject_is_the_profile_by_id(api: Api, world: World, namespace: str, value: str,
                                                 owner: str) -> None:
    by_subject = api.data(PROFILE_BY_SUBJECT, {"ns": namespace, "v": value})["profile"]
    by_id = api.data(PROFILE_BY_ID, {"id": world.ids[owner]})["profile"]
    assert by_subject is not None and by_subject["id"] == world.ids[owner]
    for profile in (by_subject, by_id):  # recency and affinities move with the clock: not compared
        for name in ("recency_days", "category_affinity", "lifecycle_stage"):
            profile["features"].pop(name)
    assert by_subject == by_id
    assert by_id["version"] >= 1 and by_id["updatedAt"] is not None and by_id["attributes"]


def test_phone_subject_resolves_however_it_is_spelled(api: Api) -> None:
    spelled = [api.data(PROFILE_BY_SUBJECT, {"ns": "phone", "v": v})["profile"]
               for v in ("+86 139 1234 5678", "+8613912345678", "139-1234-5678")]
    assert spelled[0] is not None
    assert {p["id"] for p in spelled} == {spelled[0]["id"]}


@pytest.mark.parametrize(("query", "variables"), [
    (PROFILE_BY_ID, {"id": "prf_doesnotexist000000000000"}),
    (PROFILE_BY_ID, {"id": "not even an id"}),
    (PROFILE_BY_SUBJECT, {"ns": "email", "v": "nobody@example.com"}),
    (PROFILE_BY_SUBJECT, {"ns": "shop_user", "v": "u-00000"}),
])
def test_unknown_profile_is_null(api: Api, query: str, variables: dict[str, str]) -> None:
    assert api.data(query, variables) == {"profile": None}


@pytest.mark.parametrize("args", ["", '(id: "x", subject: {namespace: "email", value: "x@example.org"})'])
def test_profile_needs_exactly_one_of_id_and_subject(api: Api, args: str) -> None:
    error = api.error("{ profile" + args + " { id } }")
    assert error["extensions"]["code"] == "BAD_REQUEST" and "exactly one" in error["message"]


def test_invalid_subject_is_a_clean_error_without_the_value(api: Api) -> None:
    error = api.error(PROFILE_BY_SUBJECT, {"ns": "passport", "v": "X1234567"})
    assert error["extensions"]["code"] == "BAD_REQUEST" and "namespace" in error["message"]
    assert "X1234567" not in error["message"]
    error = api.error(PROFILE_BY_SUBJECT, {"ns": "email", "v": "secret-not-an-email"})
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "secret-not-an-email" not in json.dumps(error)


HISTORY_ALL = """query($id: ID!, $asOf: DateTime) {
  profile(id: $id, asOf: $asOf) {
    version updatedAt features attributes
    history(first: 100) { nodes { id version occurredAt } pageInfo { hasNextPage } }
  }
}"""


def test_profile_as_of_the_past(api: Api, world: World) -> None:
    pid = world.ids[LI]
    now = api.data(HISTORY_ALL, {"id": pid})["profile"]
    times = [instant(e["occurredAt"]) for e in now["history"]["nodes"]]
    assert len(times) == now["version"] and not now["history"]["pageInfo"]["hasNextPage"]
    moment = between(times)
    past = api.data(HISTORY_ALL, {"id": pid, "asOf": moment.isoformat()})["profile"]
    happened = sum(1 for t in times if t <= moment)
    assert 0 < past["version"] == happened < now["version"]
    assert past["updatedAt"] is None
    assert past["features"] != now["features"]
    assert past["features"]["behavior_events"] < now["features"]["behavior_events"]
    seen = [instant(e["occurredAt"]) for e in past["history"]["nodes"]]
    assert len(seen) == past["version"] and all(t < moment for t in seen)
    before_all = min(times) - timedelta(days=1)
    assert api.data(HISTORY_ALL, {"id": pid, "asOf": before_all.isoformat()}) == {"profile": None}


def test_as_of_an_event_instant_counts_what_history_shows(api: Api, world: World) -> None:
    """`version` as of an instant is the number of events up to it, and `history` stops there
    too (docs/api.md): both must count an event that occurred exactly at that instant alike."""
    pid = world.ids[LI]
    nodes = api.data(HISTORY_ALL, {"id": pid})["profile"]["history"]["nodes"]
    times = sorted({instant(e["occurredAt"]) for e in nodes})
    moment = times[len(times) // 2]
    past = api.data(HISTORY_ALL, {"id": pid, "asOf": moment.isoformat()})["profile"]
    assert past["version"] == len(past["history"]["nodes"])


def test_as_of_needs_a_time_zone(api: Api, world: World) -> None:
    error = api.error(HISTORY_ALL, {"id": world.ids[LI], "asOf": "2025-06-01T00:00:00"})
    assert error["extensions"]["code"] == "BAD_REQUEST" and "asOf" in error["message"]


def test_profiles_as_of_agrees_with_profile_as_of(api: Api, world: World) -> None:
    """`profiles(asOf:)` must show each person as `profile(id, asOf:)` does: the events up to
    then (version), and nobody whose first event came later."""
    pid = world.ids[LI]
    times = [instant(e["occurredAt"]) for e in api.data(HISTORY_ALL, {"id": pid})["profile"]["history"]["nodes"]]
    moment = between(times).isoformat()
    page = ("query($t: DateTime, $a: String) { profiles(first: 40, after: $a, asOf: $t) {"
            " edges { cursor node { id version } } pageInfo { hasNextPage } } }")
    shown: dict[str, int] = {}
    after = None
    while True:
        listed = api.data(page, {"t": moment, "a": after})["profiles"]
        shown |= {e["node"]["id"]: e["node"]["version"] for e in listed["edges"]}
        if not listed["pageInfo"]["hasNextPage"]:
            break
        after = listed["edges"][-1]["cursor"]
    one = "query($id: ID!, $t: DateTime) { profile(id: $id, asOf: $t) { id version } }"
    expected = {}
    for profile_id in sorted(set(shown) | set(world.ids.values())):
        past = api.data(one, {"id": profile_id, "t": moment})["profile"]
        if past is not None:
            expected[profile_id] = past["version"]
    assert pid in expected and len(expected) < world.population
    assert shown == expected


# -- history -------------------------------------------------------------------------------------
HISTORY_PAGE = """query($id: ID!, $first: Int, $after: String, $types: [String!], $since: DateTime,
                        $until: DateTime) {
  profile(id: $id) {
    history(first: $first, after: $after, types: $types, since: $since, until: $until) {
      edges { cursor node { id version type source occurredAt recordedAt subject { namespace hash } data } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""


def history_walk(api: Api, pid: str, *, first: int, token: str = "", **filters: Any) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after = None
    for _ in range(1_000):
        variables = {"id": pid, "first": first, "after": after} | filters
        page = api.data(HISTORY_PAGE, variables, token=token)["profile"]["history"]
        assert len(page["edges"]) <= first
        if page["edges"]:
            assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        assert len(page["edges"]) == first
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("history pagination never ended")


@pytest.fixture(scope="module")
def li_log(world: World) -> list[Any]:
    """Li Wei's events as the library reads them (in version order): the oracle for history."""
    with Persona.open(world.settings) as p:
        return p.log.read(world.ids[LI])


def sample_data_by_event_id() -> dict[str, dict[str, Any]]:
    out = {}
    for line in SAMPLE.read_bytes().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if "event_id" in doc:
            out[doc["event_id"]] = doc
    return out


def test_history_is_newest_first_paged_and_decrypted(api: Api, world: World, li_log: list[Any]) -> None:
    nodes = history_walk(api, world.ids[LI], first=5)
    assert [n["version"] for n in nodes] == [e.version for e in reversed(li_log)]
    assert [n["id"] for n in nodes] == [e.event_id for e in reversed(li_log)]
    assert [n["data"] for n in nodes] == [e.data for e in reversed(li_log)]
    sent = sample_data_by_event_id()
    compared = 0
    for node in nodes:
        assert node["subject"]["namespace"] in {"email", "device"}
        assert re.fullmatch(r"[0-9a-f]{12}", node["subject"]["hash"])
        original = sent.get(node["id"])
        if original is not None and node["type"] in {"page_viewed", "product_viewed", "order_placed", "app_session",
                                                     "review_posted", "consent_changed"}:
            assert node["data"] == original["data"]
            assert node["source"] == original["source"] and node["type"] == original["type"]
            compared += 1
    assert compared >= 10


def test_history_types_filter(api: Api, world: World, li_log: list[Any]) -> None:
    wanted = {"order_placed", "review_posted"}
    nodes = history_walk(api, world.ids[LI], first=2, types=sorted(wanted))
    expected = [e.event_id for e in reversed(li_log) if e.type in wanted]
    assert 2 < len(expected) < len(li_log)
    assert [n["id"] for n in nodes] == expected
    assert {n["type"] for n in nodes} == wanted


def test_history_since_and_until(api: Api, world: World, li_log: list[Any]) -> None:
    times = sorted({instant(e.occurred_at) for e in li_log})
    since = times[2] - timedelta(seconds=1)
    until = times[-3] + timedelta(seconds=1)
    expected = [e.event_id for e in reversed(li_log) if since <= instant(e.occurred_at) < until]
    assert 2 < len(expected) < len(li_log)
    nodes = history_walk(api, world.ids[LI], first=3, since=since.isoformat(), until=until.isoformat())
    assert [n["id"] for n in nodes] == expected
    only_since = history_walk(api, world.ids[LI], first=100, since=since.isoformat())
    assert [n["id"] for n in only_since] == [e.event_id for e in reversed(li_log) if instant(e.occurred_at) >= since]
    only_until = history_walk(api, world.ids[LI], first=100, until=until.isoformat())
    assert [n["id"] for n in only_until] == [e.event_id for e in reversed(li_log) if instant(e.occurred_at) < until]


def test_history_page_size_limits(api: Api, world: World) -> None:
    for first in (0, 101):
        response = api.post(HISTORY_PAGE, {"id": world.ids[LI], "first": first})
        assert response.status_code == 200
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_REQUEST" and "first" in error["message"]


@pytest.mark.parametrize("after", ["garbage!!", "", "%%%", cursor("p:prf_x"), cursor("v:"), cursor("v:x")],
                         ids=["garbage", "empty", "percent", "profiles-cursor", "no-version", "version-not-a-number"])
def test_history_garbage_cursor_is_a_client_error(api: Api, world: World, after: str) -> None:
    response = api.post(HISTORY_PAGE, {"id": world.ids[LI], "first": 2, "after": after})
    assert response.status_code in (200, 400)
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST", error


def test_identities_are_namespaces_and_short_hashes_only(api: Api, world: World) -> None:
    query = "query($id: ID!) { profile(id: $id) { identities { namespace hash } } }"
    identities = api.data(query, {"id": world.ids[LI]})["profile"]["identities"]
    assert sorted(i["namespace"] for i in identities) == ["device", "email"]
    assert all(re.fullmatch(r"[0-9a-f]{12}", i["hash"]) for i in identities)
    with Persona.open(world.settings) as p:
        email_hash = short_hash(p.log.hash_identifier("email", LI))
        device_hash = short_hash(p.log.hash_identifier("device", "ios-4F2A-99C1"))
    assert {i["namespace"]: i["hash"] for i in identities} == {"email": email_hash, "device": device_hash}


def test_predictions_are_empty_until_a_model_is_published(api: Api) -> None:
    query = ('{ profiles(first: 5) { nodes { predictions { model score } only: predictions(models: ["churn"]) {'
             " model } } } }")
    nodes = api.data(query, token="oracle")["profiles"]["nodes"]
    assert len(nodes) == 5
    assert all(n["predictions"] == [] and n["only"] == [] for n in nodes)


# -- profiles: pagination and filters -------------------------------------------------------------
def test_profiles_pagination_sees_everyone_once_in_id_order(api: Api, world: World) -> None:
    pages = walk(api, first=2)
    ids = [edge["node"]["id"] for page in pages for edge in page["edges"]]
    assert ids == sorted(set(ids)), "ids must be strictly increasing (each seen once)"
    assert set(world.ids.values()) <= set(ids)
    assert len(ids) == world.population
    with Persona.open(world.settings) as p:
        assert set(ids) == {profile.id for profile in indexed(p)}
    assert all(len(page["edges"]) == 2 and page["pageInfo"]["hasNextPage"] for page in pages[:-1])
    assert pages[-1]["pageInfo"]["hasNextPage"] is False and 1 <= len(pages[-1]["edges"]) <= 2
    for page in pages:
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]


@pytest.mark.parametrize("first", [0, -1, 101])
def test_profiles_page_size_out_of_range_is_a_clean_error(api: Api, first: int) -> None:
    response = api.post("query($n: Int) { profiles(first: $n) { nodes { id } } }", {"n": first})
    assert response.status_code in (200, 400)
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST" and "first" in error["message"]
    assert response.json().get("data") is None


def test_profiles_default_and_largest_page(api: Api, world: World) -> None:
    largest = api.data("{ profiles(first: 100) { nodes { id } pageInfo { hasNextPage } } }")["profiles"]
    assert len(largest["nodes"]) == min(100, world.population)
    assert largest["pageInfo"]["hasNextPage"] is (world.population > 100)
    default = api.data("{ profiles { nodes { id } pageInfo { hasNextPage } } }")["profiles"]
    assert [n["id"] for n in default["nodes"]] == [n["id"] for n in largest["nodes"]][:20]
    assert default["pageInfo"]["hasNextPage"] is True


@pytest.mark.parametrize("after", ["garbage!!", "", "%%%", "\u00e9\u00e9", cursor("v:12"), cursor("p:")],
                         ids=["garbage", "empty", "percent", "non-ascii", "history-cursor", "no-id"])
def test_profiles_garbage_cursor_is_a_client_error(api: Api, after: str) -> None:
    response = api.post("query($a: String) { profiles(after: $a) { nodes { id } } }", {"a": after})
    assert response.status_code in (200, 400)
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST" and "cursor" in error["message"]


def _rfm_at_least(p: dict[str, Any], r: int, f: int, m: int) -> bool:
    rfm = p["features"]["rfm"]
    return rfm is not None and rfm["r"] >= r and rfm["f"] >= f and rfm["m"] >= m


def _number_between(value: Any, lo: float, hi: float) -> bool:
    return isinstance(value, int | float) and lo <= value <= hi


FILTERS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
    "lifecycleStages": ({"lifecycleStages": ["new", "active"]},
                        lambda p: p["features"]["lifecycle_stage"] in {"new", "active"}),
    "segments": ({"segments": ["high_value"]}, lambda p: "high_value" in p["segments"]),
    "two segments": ({"segments": ["stage:new", "high_value"]},
                     lambda p: {"stage:new", "high_value"} <= set(p["segments"])),
    "features": ({"features": [{"name": "monetary", "min": 100, "max": 400}]},
                 lambda p: _number_between(p["features"].get("monetary"), 100, 400)),
    "open range": ({"features": [{"name": "frequency", "min": 2}]},
                   lambda p: _number_between(p["features"].get("frequency"), 2, float("inf"))),
    "rfmMin": ({"rfmMin": {"r": 4, "f": 2}}, lambda p: _rfm_at_least(p, 4, 2, 1)),
    "attributes": ({"attributes": {"country": "FR"}}, lambda p: p["attributes"].get("country") == "FR"),
    "combined": ({"lifecycleStages": ["new"], "attributes": {"country": "BR"}, "rfmMin": {"m": 3}},
                 lambda p: p["features"]["lifecycle_stage"] == "new" and p["attributes"].get("country") == "BR"
                 and _rfm_at_least(p, 1, 1, 3)),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_profiles_filter(api: Api, everyone: list[dict[str, Any]], name: str) -> None:
    where, wanted = FILTERS[name]
    found = [edge["node"] for page in walk(api, first=7, filter=where) for edge in page["edges"]]
    ids = [p["id"] for p in found]
    assert ids == sorted(set(ids))
    assert all(wanted(p) for p in found)
    expected = {p["id"] for p in everyone if wanted(p)}
    assert set(ids) == expected
    assert 0 < len(ids) < len(everyone), "the data must let this filter both keep and exclude someone"


def test_profiles_filter_attributes_must_be_an_object(api: Api) -> None:
    error = api.error("{ profiles(filter: {attributes: [1, 2]}) { nodes { id } } }")
    assert error["extensions"]["code"] == "BAD_REQUEST" and "attributes" in error["message"]


# -- insights ------------------------------------------------------------------------------------
INSIGHTS = """query($by: [String!], $metric: String, $filter: ProfileFilter, $epsilon: Float, $bounds: [Float!]) {
  insights(groupBy: $by, metric: $metric, filter: $filter, epsilon: $epsilon, bounds: $bounds) {
    groups { key count mean distribution { from to count } }
    k threshold metric epsilon epsilonRemaining delta deltaRemaining
  }
}"""


def shown_groups(answer: dict[str, Any], by: str) -> dict[Any, float]:
    return {g["key"][by]: g["count"] for g in answer["groups"]}


def test_insights_show_only_groups_of_at_least_k(api: Api, everyone: list[dict[str, Any]]) -> None:
    answer = api.data(INSIGHTS, token="analyst")["insights"]
    k = answer["k"]
    assert k == ServerOptions().k_anonymity
    sizes = Counter(p["features"]["lifecycle_stage"] for p in everyone)
    big = {stage: n for stage, n in sizes.items() if n >= k}
    small = [stage for stage, n in sizes.items() if n < k]
    assert big and small, "the data must have groups on both sides of k"
    assert shown_groups(answer, "lifecycle_stage") == big  # the small groups leave no trace
    assert answer["threshold"] == k
    assert answer["epsilon"] is None and answer["epsilonRemaining"] is None
    assert answer["delta"] is None and answer["deltaRemaining"] is None


@pytest.fixture(scope="module")
def api_k1(world: World) -> Iterator[Api]:
    with app_with(world, ServerOptions(k_anonymity=1)) as api:
        yield api


@pytest.mark.parametrize("by", [["lifecycle_stage"], ["country"], ["country", "lifecycle_stage"]])
def test_insights_counts_add_up_to_the_population(api_k1: Api, everyone: list[dict[str, Any]],
                                                  by: list[str]) -> None:
    answer = api_k1.data(INSIGHTS, {"by": by}, token="analyst")["insights"]
    assert answer["k"] == 1 and answer["threshold"] == 1
    assert sum(g["count"] for g in answer["groups"]) == len(everyone)

    def value(p: dict[str, Any], name: str) -> Any:
        return p["features"][name] if name in p["features"] else p["attributes"].get(name)

    expected = Counter(tuple(value(p, name) for name in by) for p in everyone)
    assert {tuple(g["key"][name] for name in by): g["count"] for g in answer["groups"]} == expected


def test_insights_metric_mean_and_histogram(api: Api, api_k1: Api, everyone: list[dict[str, Any]]) -> None:
    shown = hidden = 0
    # the declared bounds, left out or given (exact answers narrow none); at k = 5 bins hold few
    # people, at k = 1 none does
    for server, bounds in ((api, None), (api, list(BOUNDS["monetary"])), (api_k1, None)):
        answer = server.data(INSIGHTS, {"by": ["country"], "metric": "monetary", "bounds": bounds},
                             token="analyst")["insights"]
        assert answer["metric"] == "monetary" and answer["groups"]
        lo, hi = bounds or BOUNDS["monetary"]
        for group in answer["groups"]:
            values = [min(hi, max(lo, p["features"]["monetary"])) for p in everyone
                      if p["attributes"].get("country") == group["key"]["country"]]
            assert group["count"] == len(values) >= answer["k"]
            assert group["mean"] == pytest.approx(statistics.fmean(values), abs=1e-3)
            bins = group["distribution"]
            true_counts = list(np.histogram(values, bins=np.linspace(lo, hi, 11))[0])
            if any(0 < c < answer["k"] for c in true_counts):
                assert bins == []  # a bin would single out fewer than k people: no histogram at all
                hidden += 1
                continue
            shown += 1
            assert [b["count"] for b in bins] == true_counts
            assert bins[0]["from"] == lo and bins[-1]["to"] == hi
            assert all(a["to"] == b["from"] for a, b in pairwise(bins))
    assert shown and hidden, "the data must give groups of both kinds"


def test_insights_bounds_clip_the_metric(api: Api, everyone: list[dict[str, Any]]) -> None:
    # narrowed bounds are for private answers only: exact ones would give away the values between
    error = api.error(INSIGHTS, {"by": ["country"], "metric": "monetary", "bounds": [0, 50]}, token="analyst")
    assert error["extensions"]["code"] == "BAD_REQUEST" and "bounds" in error["message"]
    answer = api.data(INSIGHTS, {"by": ["country"], "metric": "monetary", "bounds": [0, 50], "epsilon": 2.0},
                      token="analyst")["insights"]
    assert answer["epsilon"] == pytest.approx(2.0)
    for group in answer["groups"]:
        assert group["mean"] is None or 0 <= group["mean"] <= 50
        assert group["distribution"][-1]["to"] == 50


def test_insights_filter(api: Api, everyone: list[dict[str, Any]]) -> None:
    answer = api.data(INSIGHTS, {"by": ["country"], "filter": {"lifecycleStages": ["new"]}},
                      token="analyst")["insights"]
    sizes = Counter(p["attributes"].get("country") for p in everyone if p["features"]["lifecycle_stage"] == "new")
    assert shown_groups(answer, "country") == {c: n for c, n in sizes.items() if n >= answer["k"]}
    assert shown_groups(answer, "country")


@pytest.mark.parametrize(("variables", "words"), [
    ({"by": ["a", "b", "c", "d"]}, "groupBy"),
    ({"bounds": [1]}, "bounds"),
    ({"metric": "nonsense"}, "metric"),
])
def test_insights_bad_arguments(api: Api, variables: dict[str, Any], words: str) -> None:
    error = api.error(INSIGHTS, variables, token="analyst")
    assert error["extensions"]["code"] == "BAD_REQUEST" and words in error["message"]


def test_insights_with_epsilon_are_noisy_and_spend_the_budget(api: Api, world: World) -> None:
    asked = {"by": ["region"], "metric": "monetary"}  # no one has a region: everyone is in one group
    (whole,) = api.data(INSIGHTS, asked, token="analyst")["insights"]["groups"]
    assert whole["count"] == world.population
    first = api.data(INSIGHTS, asked | {"epsilon": 1.0}, token="noisy")["insights"]
    second = api.data(INSIGHTS, asked | {"epsilon": 2.0}, token="noisy")["insights"]
    assert (first["epsilonRemaining"], second["epsilonRemaining"]) == (pytest.approx(9.0), pytest.approx(7.0))
    for answer, epsilon in ((first, 1.0), (second, 2.0)):
        assert epsilon - 1e-9 <= answer["epsilon"] <= epsilon  # what OpenDP's maps say, never more than asked
        assert 0 < answer["delta"] <= DELTA
        # the population (116) is far over the threshold (56 at ε = 1, 29 at ε = 2): shown unless
        # the count's noise (scale 2 or 1) falls below -60, with probability under e^-30
        (group,) = answer["groups"]
        assert group["key"] == whole["key"] and answer["threshold"] <= 56
        assert abs(group["count"] - whole["count"]) < 60
        assert 0 <= group["mean"] <= BOUNDS["monetary"][1]
        assert len(group["distribution"]) == 10 and all(b["count"] >= 0 for b in group["distribution"])
    assert second["deltaRemaining"] == pytest.approx(DEFAULT_DELTA_BUDGET - first["delta"] - second["delta"])
    # the mean is the noisy sum over the noisy number: the sum's noise alone (discrete, scale
    # 6·10⁴/ε in money) leaves a mean equal to the exact one, to 4 decimals, with probability
    # under 1e-6 each time; both at once under 1e-12
    assert first["groups"][0]["mean"] != whole["mean"] or second["groups"][0]["mean"] != whole["mean"]
    with Persona.open(world.settings) as p:
        spent = {t.name: (t.epsilon_spent, t.delta_spent) for t in list_tokens(p)}["noisy"]
    assert spent == (pytest.approx(first["epsilon"] + second["epsilon"]),
                     pytest.approx(first["delta"] + second["delta"]))


def test_insights_budget_exhausted(api: Api) -> None:
    assert api.data(INSIGHTS, {"epsilon": 1.0}, token="tight")["insights"]["epsilonRemaining"] == pytest.approx(0.5)
    response = api.post(INSIGHTS, {"epsilon": 1.0}, token="tight")
    assert response.status_code == 200
    doc = response.json()
    assert doc["data"] is None and doc["errors"][0]["extensions"]["code"] == "BUDGET_EXHAUSTED"
    last = api.data(INSIGHTS, {"epsilon": 0.5}, token="tight")["insights"]
    assert last["epsilonRemaining"] == pytest.approx(0.0, abs=1e-6)
    error = api.error(INSIGHTS, {"epsilon": EPSILON_FLOOR}, token="tight")
    assert error["extensions"]["code"] == "BUDGET_EXHAUSTED"


@pytest.mark.parametrize("epsilon", [0.0, -1.0, 2.5, 10.5, 1e300, 1e-320, 5e-324, 0.009])
def test_insights_epsilon_out_of_range_spends_nothing(api: Api, world: World, epsilon: float) -> None:
    error = api.error(INSIGHTS, {"epsilon": epsilon, "metric": "monetary"}, token="careful")
    assert error["extensions"]["code"] == "BAD_REQUEST" and "epsilon" in error["message"]
    with Persona.open(world.settings) as p:
        careful = {t.name: t for t in list_tokens(p)}["careful"]
    assert (careful.epsilon_spent, careful.delta_spent) == (0.0, 0.0)


# -- scopes and tokens ---------------------------------------------------------------------------
Q_ATTRIBUTES = "{ profiles(first: 2) { nodes { id attributes features segments identities { hash } } } }"
Q_HISTORY = "{ profiles(first: 2) { nodes { id history(first: 2) { nodes { id } } } } }"
Q_PREDICTIONS = "{ profiles(first: 2) { nodes { id predictions { model } } } }"
Q_INSIGHTS = "{ insights { k } }"
Q_INGEST = "mutation { ingestEvents(events: []) { appended } }"
Q_ERASE = 'mutation { eraseProfile(id: "prf_doesnotexist000000000000") { profileId } }'
Q_HIDDEN_HISTORY = ("{ profiles(first: 1) { nodes { ...F } } } "
                    "fragment F on Profile { id history { nodes { id } } }")
Q_INLINE_HISTORY = "{ profiles(first: 1) { nodes { ... on Profile { history { nodes { id } } } } } }"


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
    # so on a busy machine it can land inside the traced request)
    background = ("api_tokens", "FROM tombstones", "SELECT count(*) FROM profile_index")
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
            rows = [r for r in p.recorder.audit_rows(profile_id=node["id"]) if r[2] == "auditor" and r[3] != "profile"]
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


# -- schema contract -----------------------------------------------------------------------------
def test_schema_matches_the_snapshot() -> None:
    current = schema.as_str().rstrip("\n") + "\n"
    if os.environ.get("PERSONA_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(current)
        return
    assert SNAPSHOT.read_text() == current, (
        "the GraphQL schema changed: field names are a contract with clients. If the change is deliberate, "
        "update the snapshot with `PERSONA_UPDATE_SNAPSHOTS=1 scripts/test tests/test_api.py` and review its diff")


def test_every_root_field_has_a_scope() -> None:
    graphql = schema._schema
    roots = [graphql.query_type, graphql.mutation_type, graphql.subscription_type]
    fields = [(root.name, name) for root in roots if root is not None for name in root.fields]
    assert len(fields) >= 6
    missing = [f for f in fields if f not in FIELD_SCOPES]
    assert not missing, f"root fields without a scope in persona.api.plan.FIELD_SCOPES: {missing}"
    assert set(FIELD_SCOPES.values()) <= set(SCOPES)


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
    ("Profile", "history"): Q_HISTORY,
    ("Profile", "predictions"): Q_PREDICTIONS,
    ("Profile", "attributeSources"): "{ profiles(first: 1) { nodes { attributeSources } } }",
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


# -- mutations (each on a fresh data directory) --------------------------------------------------
FRESH_TOKENS = {
    "ops": frozenset(SCOPES) - {"models:write"},
}


@dataclass
class Fresh:
    settings: Settings
    api: Api
    ids: dict[str, str]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    settings = Settings.load(tmp_path / "data", env={})
    ann, ben = FRESH_PEOPLE[:2]
    records = [
        record(ann, event_id="f1", occurred_at="2026-01-02T10:00:00Z"),
        record(ann, "order_placed", {"order_id": "o1", "amount": "12.50", "currency": "EUR"}, event_id="f2",
               occurred_at="2026-01-03T10:00:00Z", source="shop"),
        record(ann, "profile_updated", {"country": "FR"}, event_id="f3", occurred_at="2026-01-04T10:00:00Z",
               source="crm"),
        record(ben, event_id="f4", occurred_at="2026-01-05T10:00:00Z"),
        record(ben, event_id="f5", occurred_at="2026-01-06T10:00:00Z"),
    ]
    with Persona.init(settings) as p:
        report = ingest_jsonl(p, lines_of(records), origin="test")
        assert report.appended == len(records)
        tokens = {name: create_token(p, name, scopes) for name, scopes in FRESH_TOKENS.items()}
        ids = {email: p.log.profile_for("email", email) for email in (ann, ben)}
    with TestClient(create_app(settings)) as client:
        yield Fresh(settings, Api(client, tokens, default="ops"), {k: v for k, v in ids.items() if v})


INGEST = """mutation($events: [EventInput!]!) {
  ingestEvents(events: $events) { received appended duplicates quarantined profilesCreated quarantineReasons }
}"""
VERSION_OF = "query($ns: String!, $v: String!) { profile(subject: {namespace: $ns, value: $v}) { id version } }"


def event_input(email: str, kind: str, data: dict[str, Any], event_id: str | None, occurred_at: str,
                source: str = "web") -> dict[str, Any]:
    out = {"source": source, "type": kind, "occurredAt": occurred_at,
           "subject": {"namespace": "email", "value": email}, "data": data}
    if event_id is not None:
        out["eventId"] = event_id
    return out


def test_rfm_scores_follow_ingest_events_within_seconds(fresh: Fresh) -> None:
    """The server scores RFM again after ingestEvents appended something: on its writer thread,
    coalesced (at most every RFM_EVERY_S), not in the request, and not only at `persona rebuild`."""
    ann = FRESH_PEOPLE[0]
    pid = fresh.ids[ann]
    with Persona.open(fresh.settings) as p:
        assert p.recorder.rfm_of(pid) is None
    ordered = {"order_id": "o-rfm", "amount": "10", "currency": "EUR"}
    sent = [event_input(ann, "order_placed", ordered, "rfm-1", "2026-02-02T10:00:00Z", "shop")]
    assert fresh.api.data(INGEST, {"events": sent})["ingestEvents"]["appended"] == 1
    deadline = time.monotonic() + 30
    while True:
        with Persona.open(fresh.settings) as p:
            if p.recorder.rfm_of(pid) is not None:
                break
        assert time.monotonic() < deadline, "no RFM scores 30 s after ingestEvents"
        time.sleep(0.2)
    seen = fresh.api.data(SEGMENTS_OF, {"ns": "email", "v": ann})["profile"]
    assert seen["features"]["rfm"] is not None and any(s.startswith("rfm:") for s in seen["segments"])


SEGMENTS_OF = "query($ns: String!, $v: String!) { profile(subject: {namespace: $ns, value: $v}) { features segments } }"


def test_ingest_events_appends_quarantines_and_deduplicates(fresh: Fresh) -> None:
    ann = FRESH_PEOPLE[0]
    api = fresh.api
    before = api.data(VERSION_OF, {"ns": "email", "v": ann})["profile"]["version"]
    viewed = {"url": "https://shop.example/p/42", "category": "books", "duration_s": 31}
    ordered = {"order_id": "o-api", "amount": "99.90", "currency": "EUR",
               "items": [{"sku": "SKU-1", "category": "books", "qty": 2, "price": "49.95"}]}
    good = [event_input(ann, "page_viewed", viewed, "api-1", "2026-02-01T10:00:00Z"),
            event_input(ann, "order_placed", ordered, "api-2", "2026-02-01T10:05:00+01:00", "shop")]
    bad = event_input(ann, "page_viewed", {"url": "https://shop.example/"}, "api-3", "next tuesday")
    report = api.data(INGEST, {"events": [*good, bad]})["ingestEvents"]
    assert report == {"received": 3, "appended": 2, "duplicates": 0, "quarantined": 1, "profilesCreated": 0,
                      "quarantineReasons": {"occurred_at": 1}}
    with Persona.open(fresh.settings) as p:
        held = [row for row in describe(p) if row["origin"] == "api:ops"]
    assert [row["reason"].split(":")[0] for row in held] == ["occurred_at"]
    after = api.data(VERSION_OF, {"ns": "email", "v": ann})["profile"]
    assert after["version"] == before + 2
    newest = api.data(HISTORY_PAGE, {"id": after["id"], "first": 2})["profile"]["history"]["edges"]
    assert [(e["node"]["id"], e["node"]["type"], e["node"]["data"]) for e in newest] == [
        ("api-2", "order_placed", ordered), ("api-1", "page_viewed", viewed)]
    again = api.data(INGEST, {"events": good})["ingestEvents"]
    assert (again["received"], again["appended"], again["duplicates"]) == (2, 0, 2)
    assert api.data(VERSION_OF, {"ns": "email", "v": ann})["profile"]["version"] == before + 2


def test_ingest_events_creates_profiles(fresh: Fresh) -> None:
    cara = FRESH_PEOPLE[2]
    assert fresh.api.data(VERSION_OF, {"ns": "email", "v": cara}) == {"profile": None}
    report = fresh.api.data(INGEST, {"events": [
        event_input(cara, "page_viewed", {"url": "https://shop.example/"}, None, "2026-02-01T10:00:00Z"),
        event_input(cara, "page_viewed", {"url": "https://shop.example/x"}, None, "2026-02-01T10:01:00Z"),
    ]})["ingestEvents"]
    assert (report["appended"], report["profilesCreated"]) == (2, 1)
    assert fresh.api.data(VERSION_OF, {"ns": "email", "v": cara})["profile"]["version"] == 2


def test_ingest_events_invalid_identifier_is_quarantined_without_echo(fresh: Fresh) -> None:
    report = fresh.api.data(INGEST, {"events": [
        event_input("secret-person-at-nowhere", "page_viewed", {"url": "https://a.example/"}, None,
                    "2026-02-01T10:00:00Z")]})["ingestEvents"]
    assert report["quarantined"] == 1 and list(report["quarantineReasons"]) == ["subject.value"]
    assert "secret-person" not in json.dumps(report)


def test_ingest_events_batch_size_limits(fresh: Fresh) -> None:
    error = fresh.api.error(INGEST, {"events": []})
    assert error["extensions"]["code"] == "BAD_REQUEST" and "events" in error["message"]


ERASE = """mutation($id: ID, $subject: SubjectInput) {
  eraseProfile(id: $id, subject: $subject) {
    profileId erasedAt keyFingerprint walTruncated counts signature receipt
  }
}"""
AFTERMATH = """query($id: ID!) {
  profile(id: $id) { id history { nodes { id data } } predictions { model } }
  profiles(first: 100) { nodes { id } }
}"""


def assert_erased(fresh: Fresh, pid: str, email: str, receipt: dict[str, Any], events: int) -> None:
    api = fresh.api
    with Persona.open(fresh.settings) as p:
        body = verify_receipt(receipt["receipt"], p.keyring.public_key)
        forged = json.loads(json.dumps(receipt["receipt"]))
        forged["receipt"]["counts"]["events"] += 1
        with pytest.raises(ReceiptError):
            verify_receipt(forged, p.keyring.public_key)
        with pytest.raises(ErasedError):
            p.log.read(pid)
    assert body["profile_id"] == receipt["profileId"] == pid
    assert receipt["signature"] == receipt["receipt"]["signature"]
    assert receipt["counts"]["events"] == events and receipt["counts"]["keys"] == 1
    assert re.fullmatch(r"[0-9a-f]+", receipt["keyFingerprint"])
    after = api.data(AFTERMATH, {"id": pid})
    assert after["profile"] is None
    assert pid not in {n["id"] for n in after["profiles"]["nodes"]}
    assert api.data(VERSION_OF, {"ns": "email", "v": email}) == {"profile": None}
    again = api.error(ERASE, {"id": pid})
    assert again["extensions"]["code"] == "NOT_FOUND"


def test_erase_profile_by_id(fresh: Fresh) -> None:
    ann, ben = FRESH_PEOPLE[:2]
    pid = fresh.ids[ann]
    events = fresh.api.data(VERSION_OF, {"ns": "email", "v": ann})["profile"]["version"]
    receipt = fresh.api.data(ERASE, {"id": pid})["eraseProfile"]
    assert_erased(fresh, pid, ann, receipt, events)
    assert fresh.api.data(VERSION_OF, {"ns": "email", "v": ben})["profile"]["id"] == fresh.ids[ben]


def test_erase_profile_by_subject(fresh: Fresh) -> None:
    ben = FRESH_PEOPLE[1]
    pid = fresh.ids[ben]
    receipt = fresh.api.data(ERASE, {"subject": {"namespace": "email", "value": ben.upper()}})["eraseProfile"]
    assert_erased(fresh, pid, ben, receipt, 2)
    again = fresh.api.error(ERASE, {"subject": {"namespace": "email", "value": ben}})
    assert again["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(("variables", "code"), [
    ({"subject": {"namespace": "email", "value": "nobody@example.com"}}, "NOT_FOUND"),
    ({"id": "prf_doesnotexist000000000000"}, "NOT_FOUND"),
    ({}, "BAD_REQUEST"),
    ({"id": "x", "subject": {"namespace": "email", "value": "nobody@example.com"}}, "BAD_REQUEST"),
])
def test_erase_refusals(fresh: Fresh, variables: dict[str, Any], code: str) -> None:
    error = fresh.api.error(ERASE, variables)
    assert error["extensions"]["code"] == code


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
