"""The GraphQL API's queries in-process: a profile by id, by subject and as of an instant, its
history, the profiles' pages and filters, insights (groups of at least k, metrics, the privacy
budget that noisy answers spend); and the schema's contract with clients (tests/api_world.py)."""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import orjson
import pytest

from persona import Persona
from persona.api.context import ServerOptions
from persona.api.plan import FIELD_SCOPES
from persona.api.schema import schema
from persona.insights import BOUNDS, DELTA, EPSILON_FLOOR
from persona.population import indexed
from persona.pseudonyms import short_hash
from persona.tokens import DEFAULT_DELTA_BUDGET, SCOPES, list_tokens
from tests.api_world import (
    HISTORY_PAGE,
    LI,
    SAMPLE,
    SNAPSHOT,
    Api,
    World,
    app_with,
    between,
    crowd_email,
    cursor,
    instant,
    walk,
)


@pytest.fixture(scope="module")
def everyone(api: Api) -> list[dict[str, Any]]:
    """Every profile with attributes, features and segments, read through the API."""
    return [edge["node"] for page in walk(api, first=100) for edge in page["edges"]]


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


def test_insights_group_by_rfm_scores_exactly_and_never_privately(api_k1: Api, api: Api,
                                                                  everyone: list[dict[str, Any]]) -> None:
    scored = Counter((p["features"]["rfm"]["r"], p["features"]["rfm"]["f"]) for p in everyone if p["features"]["rfm"])
    assert len(scored) > 3 and all(1 <= r <= 5 and 1 <= f <= 5 for r, f in scored)
    answer = api_k1.data(INSIGHTS, {"by": ["rfm_r", "rfm_f"]}, token="analyst")["insights"]
    counted = {(g["key"]["rfm_r"], g["key"]["rfm_f"]): g["count"] for g in answer["groups"]}
    assert {key: n for key, n in counted.items() if None not in key} == scored  # the grid: every scored person
    assert sum(counted.values()) == len(everyone)  # the unscored in a group of their own
    error = api.error(INSIGHTS, {"by": ["rfm_r"], "epsilon": 1.0}, token="noisy")
    assert "RFM scores cannot group a differentially private answer" in error["message"]


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
