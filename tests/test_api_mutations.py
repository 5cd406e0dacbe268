"""The GraphQL API's mutations, each on a fresh data directory: ingesting events (and the scores
that follow) and erasing a profile (tests/api_world.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from persona import Persona, Settings
from persona.api.app import create_app
from persona.erasure import verify_receipt
from persona.errors import ErasedError, ReceiptError
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe
from persona.tokens import SCOPES, create_token
from tests.api_world import FRESH_PEOPLE, HISTORY_PAGE, Api, TestClient, lines_of
from tests.conftest import record

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


OPERATIONS = """query($before: Int, $profileId: ID, $first: Int!) { operations {
  ingestRuns { writer outcome received appended duplicates quarantined profilesCreated merges }
  quarantine { id origin line reason size }
  destinations { name }
  audit(first: $first, before: $before, profileId: $profileId) { seq writer operation profileId outcome detail }
} }"""


def test_operations_show_ingest_runs_the_quarantines_reasons_and_the_audit_log(fresh: Fresh) -> None:
    ann = FRESH_PEOPLE[0]
    api = fresh.api
    sent = [event_input(ann, "page_viewed", {"url": "https://shop.example/ops"}, "ops-1", "2026-02-01T10:00:00Z"),
            event_input(ann, "page_viewed", {"url": "https://shop.example/"}, "ops-2", "last friday")]
    assert api.data(INGEST, {"events": sent})["ingestEvents"]["quarantined"] == 1
    api.data(VERSION_OF, {"ns": "email", "v": ann})  # a read of Ann: audited
    time.sleep(0.6)  # the server writes its audit entries every AUDIT_FLUSH_S
    found = api.data(OPERATIONS, {"first": 200})["operations"]
    assert found["ingestRuns"][0] == {"writer": "ops", "outcome": "ok", "received": 2, "appended": 1,
                                      "duplicates": 0, "quarantined": 1, "profilesCreated": 0, "merges": 0}
    [held] = [q for q in found["quarantine"] if q["origin"] == "api:ops"]
    assert held["reason"].startswith("occurred_at") and held["size"] > 0
    assert "friday" not in str(found)  # a quarantined record's content stays sealed
    assert found["destinations"] == []
    seqs = [e["seq"] for e in found["audit"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) > 2  # newest first
    pid = fresh.ids[ann]
    assert any(e["operation"] == "profile" and e["profileId"] == pid for e in found["audit"])
    mine = api.data(OPERATIONS, {"first": 200, "profileId": pid})["operations"]["audit"]
    assert mine and {e["profileId"] for e in mine} == {pid}
    older = api.data(OPERATIONS, {"first": 2, "before": seqs[1]})["operations"]["audit"]
    assert [e["seq"] for e in older] == seqs[2:4]  # the next page: below the number given
    for first in (0, 201):
        error = api.error(OPERATIONS, {"first": first})
        assert "first: between 1 and 200" in error["message"]
    time.sleep(0.6)
    read = api.data(OPERATIONS, {"first": 50})["operations"]["audit"]
    assert {"operations.audit", "operations.ingestRuns", "operations.quarantine"} <= {e["operation"] for e in read}
    with Persona.open(fresh.settings) as p:
        reader = create_token(p, "no-ops", frozenset({"profiles:read"}))
    refused = api.post(OPERATIONS, {"first": 5}, token=reader)
    assert refused.status_code == 403 and "operations:read" in refused.text
