"""What the GraphQL API's tests share: a client that checks every answer, and the world it asks.

Starlette's TestClient around `create_app`, lifespan included; real SQLite files in temporary
directories, real keys and tokens, the real schema and handler; nothing is mocked. Most read-only
tests share one module-scoped data directory (`world`: the sample fixture plus a synthetic crowd
of 110 people) and one app (`api`), built by the fixtures of tests/conftest.py once per test
module that asks for them; tests that write get a fresh directory of their own. Every response
goes through `check`: never a 500, never a traceback, SQL or a raw identifier of a person.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.errors import ValidationError
from persona.ingest import ingest_jsonl
from persona.population import indexed
from persona.pseudonyms import normalise
from persona.rfm import compute_rfm
from persona.tokens import create_token
from tests.conftest import record

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


def make_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The sample and the crowd ingested, RFM scored, a token per WORLD_TOKENS (the `world` fixture)."""
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


@contextmanager
def serve(world: World) -> Iterator[Api]:
    """The app over the world's data, with the default options (the `api` fixture)."""
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


# The history's pages (asked by the history's tests and the mutations').
HISTORY_PAGE = """query($id: ID!, $first: Int, $after: String, $types: [String!], $since: DateTime,
                        $until: DateTime) {
  profile(id: $id) {
    history(first: $first, after: $after, types: $types, since: $since, until: $until) {
      edges { cursor node { id version type source occurredAt recordedAt subject { namespace hash } data } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""


# What each scope guards (asked by the tests of access and of the HTTP endpoint).
Q_ATTRIBUTES = "{ profiles(first: 2) { nodes { id attributes features segments identities { hash } } } }"
Q_HISTORY = "{ profiles(first: 2) { nodes { id history(first: 2) { nodes { id } } } } }"
Q_PREDICTIONS = "{ profiles(first: 2) { nodes { id predictions { model } } } }"
Q_INSIGHTS = "{ insights { k } }"
Q_INGEST = "mutation { ingestEvents(events: []) { appended } }"
Q_ERASE = 'mutation { eraseProfile(id: "prf_doesnotexist000000000000") { profileId } }'
Q_HIDDEN_HISTORY = ("{ profiles(first: 1) { nodes { ...F } } } "
                    "fragment F on Profile { id history { nodes { id } } }")
Q_INLINE_HISTORY = "{ profiles(first: 1) { nodes { ... on Profile { history { nodes { id } } } } } }"
