"""Every write has a known writer (docs/design.md, invariant 8): tokens bound to sources and event types,
the writer sealed into each event, and attribute fusion that gives a source's rank only to a
writer who vouches for it.

The attacker holds an `events:write` token and knows a victim's e-mail. Finding 5 of issue 17:
with an unbound token, a `profile_updated` claiming `source: "crm"` overwrote the victim's
attributes, and an `identity_linked` from the attacker's cookie to the victim's e-mail made
`profile(subject: that cookie)` answer the victim. Both are replayed here against a real
`persona serve` (uvicorn on a loopback port), then every edge of the binding.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from persona import Persona, Settings
from persona.cli import cli
from persona.errors import ConfigurationError
from persona.eventlog import chain_hash, chunk_aad
from persona.events import LIBRARY, PRIVILEGED_TYPES, RecordedEvent, Writer, local, micros, utc_text
from persona.ingest import ingest_jsonl
from persona.linking import link
from persona.projections import ATTRIBUTES, FEATURES, replay
from persona.projector import Projector
from persona.tokens import Token, create_token, list_tokens
from persona.verify import verify
from tests.conftest import jsonl, record, store_bytes
from tests.test_api_http import Server, serving

VICTIM = "maria.garcia@example.com"  # in the sample: the CRM says female, born 1985, Madrid
ATTACKER_COOKIE = "ck-attacker-5f1e"
INGEST = "mutation($events: [EventInput!]!) { ingestEvents(events: $events) { appended duplicates } }"
LINK = ("mutation($a: SubjectInput!, $b: SubjectInput!) { linkIdentities(a: $a, b: $b) { id } }")
UNLINK = ("mutation($a: SubjectInput!, $b: SubjectInput!) { unlinkIdentities(a: $a, b: $b) { id } }")
STATE = """query($ns: String!, $v: String!) {
  profile(subject: {namespace: $ns, value: $v}) { id version attributes } }"""
WHO = """query($ns: String!, $v: String!) {
  profile(subject: {namespace: $ns, value: $v}) { id version attributes attributeSources
    history(first: 1) { nodes { id source writer } } } }"""
PRIVILEGED_GRANT = "needs an explicit grant"


def subject(namespace: str, value: str) -> dict[str, str]:
    return {"namespace": namespace, "value": value}


def event_input(kind: str, data: dict[str, Any], *, source: str, event_id: str, who: dict[str, str] | None = None,
                occurred_at: str = "2026-03-01T10:00:00Z") -> dict[str, Any]:
    return {"source": source, "type": kind, "occurredAt": occurred_at, "subject": who or subject("email", VICTIM),
            "data": data, "eventId": event_id}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """The sample served; writing tokens of every kind (created beside the running server)."""
    with serving(tmp_path_factory.mktemp("write-tokens")) as server:
        with Persona.open(server.settings) as p:
            tokens = {
                "intruder": create_token(p, "intruder", frozenset({"events:write"})),  # unbound: the finding's token
                "reader": create_token(p, "provenance-reader", frozenset({"profiles:read", "history:read"})),
                "web-tracker": create_token(p, "web-tracker", frozenset({"events:write"}),
                                            sources=frozenset({"web", "app"}),
                                            types=frozenset({"page_viewed", "app_session"})),
                "web-any": create_token(p, "web-any", frozenset({"events:write"}), sources=frozenset({"web"})),
                "crm-sync": create_token(p, "crm-sync", frozenset({"events:write"}), sources=frozenset({"crm"}),
                                         types=frozenset({"profile_updated"})),
                "partner": create_token(p, "partner", frozenset({"events:write"}),
                                        types=frozenset({"profile_updated", "page_viewed"})),
                "linker": create_token(p, "linker", frozenset({"events:write", "profiles:read"}),
                                       types=frozenset({"identity_linked"})),
                "unlinker": create_token(p, "unlinker", frozenset({"events:write", "profiles:read"})),
                "consent-partner": create_token(p, "consent-partner", frozenset({"events:write"}),
                                                types=frozenset({"consent_changed", "profile_updated"})),
                "web-linker": create_token(p, "web-linker", frozenset({"events:write", "profiles:read"}),
                                           sources=frozenset({"web"}), types=frozenset({"identity_linked"})),
                "multi-linker": create_token(p, "multi-linker", frozenset({"events:write", "profiles:read"}),
                                             sources=frozenset({"web", "app"}), types=frozenset({"identity_linked"})),
            }
        yield server, tokens


def ask(server: Server, token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = server.post(query, variables, token=token)
    assert response.status_code == 200, response.text[:500]
    doc: dict[str, Any] = response.json()
    return doc


def victim(server: Server, tokens: dict[str, str], query: str = STATE) -> dict[str, Any]:
    found: dict[str, Any] = ask(server, tokens["reader"], query, {"ns": "email", "v": VICTIM})["data"]["profile"]
    return found


def forbidden(doc: dict[str, Any], index: int | None = None) -> str:
    """The message of a clean FORBIDDEN answer with no data."""
    assert doc.get("data") is None or not any(doc["data"].values()), doc
    (error,) = doc["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN", error
    if index is not None:
        assert error["message"].startswith(f"events[{index}]: "), error
        assert "nothing of this call was stored" in error["message"]
    message: str = error["message"]
    return message


# -- the two attacks of finding 5, over real sockets ---------------------------------------------
def test_an_unbound_token_cannot_rewrite_a_victims_attributes(served: tuple[Server, dict[str, str]]) -> None:
    server, tokens = served
    before = victim(server, tokens)
    assert before["attributes"]["gender"] == "female" and before["attributes"]["city"] == "Madrid"
    with Persona.open(server.settings) as p:
        quarantined = p.recorder.counts()["quarantine"]
    forged = event_input("profile_updated", {"gender": "male", "birth_year": 2004, "city": "Atlantis",
                                             "signup_at": "2026-02-01T00:00:00Z"},
                         source="crm", event_id="forged-crm-1")
    doc = ask(server, tokens["intruder"], INGEST, {"events": [forged]})
    assert PRIVILEGED_GRANT in forbidden(doc, 0)
    after = victim(server, tokens)
    assert after["attributes"] == before["attributes"] and after["version"] == before["version"]
    # the same forgery in a batch of harmless events: the whole call is refused, nothing stored
    harmless = event_input("page_viewed", {"url": "https://shop.example/x"}, source="web", event_id="harmless-1")
    doc = ask(server, tokens["intruder"], INGEST, {"events": [harmless, forged]})
    forbidden(doc, 1)
    assert victim(server, tokens)["version"] == before["version"]
    with Persona.open(server.settings) as p:  # an access refusal, not a bad record: nothing quarantined
        assert p.recorder.counts()["quarantine"] == quarantined


def test_an_unbound_token_cannot_hijack_a_profile_by_linking(served: tuple[Server, dict[str, str]]) -> None:
    server, tokens = served
    cookie = subject("cookie", ATTACKER_COOKIE)
    hijack = event_input("identity_linked", {"other": subject("email", VICTIM)}, source="web",
                         event_id="hijack-1", who=cookie)
    doc = ask(server, tokens["intruder"], INGEST, {"events": [hijack]})
    assert PRIVILEGED_GRANT in forbidden(doc, 0)
    # the mutation that links by hand is refused too, before anything runs (even with profiles:read)
    doc = ask(server, tokens["unlinker"], LINK, {"a": cookie, "b": subject("email", VICTIM)})
    assert "identity_linked" in forbidden(doc)
    doc = ask(server, tokens["unlinker"], UNLINK, {"a": cookie, "b": subject("email", VICTIM)})
    assert "identity_linked" in forbidden(doc)
    as_cookie = ask(server, tokens["reader"], STATE, {"ns": "cookie", "v": ATTACKER_COOKIE})
    assert as_cookie["data"]["profile"] is None  # the cookie answers nobody, let alone the victim
    with Persona.open(server.settings) as p:
        assert p.log.profile_for("cookie", ATTACKER_COOKIE) is None


# -- bindings --------------------------------------------------------------------------------------
def test_a_token_bound_to_web_cannot_write_as_the_crm(served: tuple[Server, dict[str, str]]) -> None:
    server, tokens = served
    before = victim(server, tokens)["version"]
    own = event_input("page_viewed", {"url": "https://shop.example/own"}, source="web", event_id="own-1")
    posing = event_input("page_viewed", {"url": "https://shop.example/posing"}, source="crm", event_id="posing-1")
    other_type = event_input("order_placed", {"order_id": "o-x", "amount": "1.00", "currency": "EUR"},
                             source="web", event_id="order-1")
    for token in ("web-tracker", "web-any"):
        assert "source" in forbidden(ask(server, tokens[token], INGEST, {"events": [own, posing]}), 1)
    assert "type" in forbidden(ask(server, tokens["web-tracker"], INGEST, {"events": [other_type]}), 0)
    assert victim(server, tokens)["version"] == before
    # the positive control: what the binding allows goes in
    done = ask(server, tokens["web-tracker"], INGEST, {"events": [own]})
    assert done["data"]["ingestEvents"] == {"appended": 1, "duplicates": 0}


def test_a_bound_token_needs_the_grant_for_a_privileged_type(served: tuple[Server, dict[str, str]]) -> None:
    server, tokens = served
    before = victim(server, tokens)
    claim = event_input("profile_updated", {"city": "Seville"}, source="web", event_id="web-claim-1")
    link_event = event_input("identity_linked", {"other": subject("cookie", ATTACKER_COOKIE)}, source="web",
                             event_id="web-link-1")
    for token in ("web-any", "web-tracker"):  # bound to web, writing as web: still no privileged type
        forbidden(ask(server, tokens[token], INGEST, {"events": [claim]}), 0)
        forbidden(ask(server, tokens[token], INGEST, {"events": [link_event]}), 0)
    # granted one privileged type is not granted the other
    forbidden(ask(server, tokens["crm-sync"], INGEST, {"events": [
        {**link_event, "source": "crm", "eventId": "crm-link-1"}]}), 0)
    assert victim(server, tokens)["attributes"] == before["attributes"]


def test_a_granted_token_writes_and_is_named_in_provenance(served: tuple[Server, dict[str, str]]) -> None:
    server, tokens = served
    moved = event_input("profile_updated", {"city": "Valencia", "gender": "female"}, source="crm",
                        event_id="crm-sync-1", occurred_at="2026-03-02T10:00:00Z")
    done = ask(server, tokens["crm-sync"], INGEST, {"events": [moved]})
    assert done["data"]["ingestEvents"] == {"appended": 1, "duplicates": 0}
    after = victim(server, tokens, WHO)
    assert after["attributes"]["city"] == "Valencia"
    (city,) = after["attributeSources"]["city"]["provenance"]
    assert (city["source"], city["writer"], city["vouched"], city["event_id"]) == ("crm", "token:crm-sync", True,
                                                                                   "crm-sync-1")
    assert after["history"]["nodes"] == [{"id": "crm-sync-1", "source": "crm", "writer": "token:crm-sync"}]
    # the sample was ingested by a program using the library: its claims name it
    born = after["attributeSources"]["birth_year"]["provenance"]
    assert [(p["source"], p["writer"], p["vouched"]) for p in born] == [("crm", "library", True)]
    # and the command line shows the same provenance
    shown = CliRunner().invoke(cli, ["--data", str(server.settings.data_dir), "profile", "--subject",
                                     f"email:{VICTIM}", "--json"])
    assert shown.exit_code == 0, shown.output
    (cli_city,) = orjson.loads(shown.output)["attributes"]["city"]["provenance"]
    assert cli_city == city
    # a granted link is made, and its events name the linker
    linked = ask(server, tokens["linker"], LINK, {"a": subject("cookie", "ck-owned-by-maria"),
                                                  "b": subject("email", VICTIM)})
    assert linked["data"]["linkIdentities"]["id"] == after["id"]
    with Persona.open(server.settings) as p:
        (event,) = [e for e in p.log.read(after["id"]) if e.type == "identity_linked"]
        assert (event.writer, event.vouched) == ("token:linker", False)  # source "api": no source it is bound to


def test_an_unvouched_claim_fills_a_gap_but_never_outranks(served: tuple[Server, dict[str, str]]) -> None:
    """A token granted profile_updated but bound to no source may claim any source name: its claims
    rank below every source, so the CRM's word stands, and it is named as unvouched."""
    server, tokens = served
    before = victim(server, tokens, WHO)
    posing = event_input("profile_updated", {"gender": "male", "birth_year": 2004, "signup_at": "2026-02-01T00:00:00Z"},
                         source="crm", event_id="partner-crm-1", occurred_at="2026-03-03T10:00:00Z")
    done = ask(server, tokens["partner"], INGEST, {"events": [posing]})
    assert done["data"]["ingestEvents"]["appended"] == 1  # granted: stored, with its writer
    after = victim(server, tokens, WHO)
    for name in ("gender", "birth_year", "signup_at"):
        assert after["attributes"][name] == before["attributes"][name], name
        assert all(p["writer"] != "token:partner" for p in after["attributeSources"][name]["provenance"])
    # a person no vouched source has described: the unvouched claim is all there is, and says so
    stranger = subject("email", "stranger@example.com")
    alone = event_input("profile_updated", {"gender": "other"}, source="crm", event_id="partner-crm-2", who=stranger)
    assert ask(server, tokens["partner"], INGEST, {"events": [alone]})["data"]["ingestEvents"]["appended"] == 1
    found = ask(server, tokens["reader"], WHO, {"ns": "email", "v": "stranger@example.com"})["data"]["profile"]
    assert found["attributes"]["gender"] == "other"
    (gender,) = found["attributeSources"]["gender"]["provenance"]
    assert (gender["writer"], gender["vouched"]) == ("token:partner", False)


def test_a_token_cannot_squat_another_writers_event_id(served: tuple[Server, dict[str, str]]) -> None:
    """Review finding A: the idempotency key was (source, event id) whoever wrote it, so a token could
    send first an event id another writer would send later (or replay one it had seen) and the
    legitimate event was dropped as a duplicate. A token's keys are now its own."""
    server, tokens = served
    squatted = event_input("page_viewed", {"url": "https://shop.example/squat"}, source="web", event_id="squat-1")
    assert ask(server, tokens["intruder"], INGEST, {"events": [squatted]})["data"]["ingestEvents"] == {
        "appended": 1, "duplicates": 0}
    # the legitimate writer sends its event with that id afterwards: it is stored, not dropped
    mine = {**squatted, "data": {"url": "https://shop.example/legit"}}
    assert ask(server, tokens["web-tracker"], INGEST, {"events": [mine]})["data"]["ingestEvents"] == {
        "appended": 1, "duplicates": 0}
    # each writer re-sending its own event is a duplicate, as before
    for token, event in (("web-tracker", mine), ("intruder", squatted)):
        assert ask(server, tokens[token], INGEST, {"events": [event]})["data"]["ingestEvents"] == {
            "appended": 0, "duplicates": 1}, token
    # replaying another writer's id stores the replayer's own event under its own name, never in the other's
    for token in ("web-any", "partner"):
        assert ask(server, tokens[token], INGEST, {"events": [mine]})["data"]["ingestEvents"]["appended"] == 1
    with Persona.open(server.settings) as p:
        pid = p.log.profile_for("email", VICTIM)
        assert pid is not None
        kept = sorted((e.writer, e.data["url"]) for e in p.log.read(pid) if e.event_id == "squat-1")
        assert kept == [("token:intruder", "https://shop.example/squat"), ("token:partner", "https://shop.example/legit"),
                        ("token:web-any", "https://shop.example/legit"),
                        ("token:web-tracker", "https://shop.example/legit")]
        assert verify(p).events > 0


def test_consent_changed_needs_an_explicit_grant(served: tuple[Server, dict[str, str]]) -> None:
    """Review finding B: consent decides what may be counted about a person; like profile_updated and
    identity_linked, a token writes consent_changed only when its --types name it."""
    server, tokens = served
    before = victim(server, tokens)
    withdraw = event_input("consent_changed", {"purpose": "analytics", "granted": False}, source="web",
                           event_id="consent-squat-1", occurred_at="2026-03-04T10:00:00Z")
    for token in ("intruder", "web-any", "web-tracker", "partner"):
        assert PRIVILEGED_GRANT in forbidden(ask(server, tokens[token], INGEST, {"events": [withdraw]}), 0), token
    assert victim(server, tokens) == before


def test_an_unvouched_claim_never_overrides_a_latest_value_or_consent(served: tuple[Server, dict[str, str]]) -> None:
    """Review finding B: for latest-wins attributes and consent, the newest claim used to win whoever
    wrote it: an unbound token granted the types replaced a CRM's city and withdrew (or gave) consent.
    An unvouched claim now fills a gap only."""
    server, tokens = served
    before = victim(server, tokens, WHO)
    assert before["attributes"]["consent"]["analytics"] is True
    late = "2026-04-01T10:00:00Z"  # later than anything a vouched writer said
    claims = [event_input("profile_updated", {"city": "Atlantis", "country": "AQ", "language": "xx"}, source="crm",
                          event_id="cp-claim-1", occurred_at=late),
              event_input("consent_changed", {"purpose": "analytics", "granted": False}, source="crm",
                          event_id="cp-consent-1", occurred_at=late)]
    done = ask(server, tokens["consent-partner"], INGEST, {"events": claims})
    assert done["data"]["ingestEvents"]["appended"] == 2  # granted: stored, with its writer
    after = victim(server, tokens, WHO)
    for name in ("city", "country", "language", "consent"):
        assert after["attributes"][name] == before["attributes"][name], name
    for name in ("city", "country", "language"):
        assert [p["writer"] for p in after["attributeSources"][name]["provenance"]] != ["token:consent-partner"]
    # a person no vouched writer described: the unvouched claims are all there is, and say so
    stranger = subject("email", "consent-stranger@example.com")
    alone = [{**claims[0], "subject": stranger, "eventId": "cp-claim-2"},
             {**claims[1], "subject": stranger, "eventId": "cp-consent-2"}]
    assert ask(server, tokens["consent-partner"], INGEST, {"events": alone})["data"]["ingestEvents"]["appended"] == 2
    found = ask(server, tokens["reader"], WHO, {"ns": "email", "v": "consent-stranger@example.com"})["data"]["profile"]
    assert (found["attributes"]["city"], found["attributes"]["consent"]["analytics"]) == ("Atlantis", False)
    (city,) = found["attributeSources"]["city"]["provenance"]
    assert (city["writer"], city["vouched"]) == ("token:consent-partner", False)


def test_identity_resolution_results_need_profiles_read(served: tuple[Server, dict[str, str]]) -> None:
    """Review finding E: ingestEvents told a token with only events:write how many profiles its
    call created and how many merges it made: whether an identifier was known already, and who
    is one person. Those two fields need profiles:read; the rest of the report does not."""
    server, tokens = served
    known = event_input("page_viewed", {"url": "https://shop.example/probe"}, source="web", event_id="probe-1")
    for field in ("profilesCreated", "merges"):
        query = INGEST.replace("appended duplicates", f"appended {field}")
        response = server.post(query, {"events": [{**known, "eventId": f"probe-{field}"}]},
                               token=tokens["web-tracker"])
        assert response.status_code == 403, response.text[:300]
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "FORBIDDEN" and "profiles:read" in error["message"]
    with Persona.open(server.settings) as p:  # refused before anything ran: nothing stored
        pid = p.log.profile_for("email", VICTIM)
        assert pid is not None
        assert not [e for e in p.log.read(pid) if e.event_id.startswith("probe-")]
    # without them the report is there; with profiles:read, all of it
    assert ask(server, tokens["web-tracker"], INGEST, {"events": [known]})["data"]["ingestEvents"] == {
        "appended": 1, "duplicates": 0}
    linked = {**event_input("identity_linked", {"other": subject("cookie", "ck-probe")}, source="web",
                            event_id="probe-link")}
    full = INGEST.replace("appended duplicates", "appended profilesCreated merges")
    assert ask(server, tokens["linker"], full, {"events": [linked]})["data"]["ingestEvents"] == {
        "appended": 1, "profilesCreated": 0, "merges": 0}


LINK_AS = ("mutation($a: SubjectInput!, $b: SubjectInput!, $source: String) {"
           " linkIdentities(a: $a, b: $b, source: $source) { id } }")


def test_a_link_is_written_as_the_tokens_bound_source(served: tuple[Server, dict[str, str]]) -> None:
    """Review finding F: linkIdentities wrote its identity_linked event as source "api" whatever the
    token was bound to, so a token bound to web wrote as a source it holds no binding for. A bound
    token now links as its source (naming one of them when it has several, and never another);
    an unbound one as "api", unvouched, as before (no source's rank to gain)."""
    server, tokens = served
    victim_id = victim(server, tokens)["id"]
    email = subject("email", VICTIM)

    def linked(token: str, cookie: str, source: str | None = None) -> dict[str, Any]:
        return ask(server, tokens[token], LINK_AS, {"a": subject("cookie", cookie), "b": email, "source": source})

    def written(cookie: str) -> tuple[str, str, bool]:
        """The link's event: the newest identity_linked in the victim's stream (a new cookie's link
        goes to the known identifier's profile)."""
        with Persona.open(server.settings) as p:
            assert p.log.profile_for("cookie", cookie) is not None
            event = max((e for e in p.log.read(victim_id) if e.type == "identity_linked"), key=lambda e: e.version)
            return event.source, event.writer, event.vouched

    assert linked("web-linker", "ck-web-1")["data"]["linkIdentities"]["id"] == victim_id
    assert written("ck-web-1") == ("web", "token:web-linker", True)
    assert linked("web-linker", "ck-web-2", "web")["data"]["linkIdentities"]["id"] == victim_id
    assert written("ck-web-2") == ("web", "token:web-linker", True)
    for token, source in (("web-linker", "crm"), ("web-linker", "api"), ("multi-linker", "crm")):
        message = forbidden(linked(token, "ck-posing", source))
        assert "source" in message and "crm" not in message, (token, source)
    several = linked("multi-linker", "ck-posing")  # bound to two: it must say which
    assert several["errors"][0]["extensions"]["code"] == "BAD_REQUEST" and "source" in several["errors"][0]["message"]
    assert linked("multi-linker", "ck-app-1", "app")["data"]["linkIdentities"]["id"] == victim_id
    assert written("ck-app-1") == ("app", "token:multi-linker", True)
    with Persona.open(server.settings) as p:
        assert p.log.profile_for("cookie", "ck-posing") is None  # nothing of a refused link was stored
    # an unbound token links as "api", vouching for nothing; naming a source gains it no rank
    assert linked("linker", "ck-unbound-1")["data"]["linkIdentities"]["id"] == victim_id
    assert written("ck-unbound-1") == ("api", "token:linker", False)
    assert linked("linker", "ck-unbound-2", "crm")["data"]["linkIdentities"]["id"] == victim_id
    assert written("ck-unbound-2") == ("crm", "token:linker", False)


# -- the library and the command line -------------------------------------------------------------
def test_token_refusals() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def token(sources: set[str], types: set[str]) -> Token:
        return Token("t", frozenset({"events:write"}), 1.0, 0.0, 0.0, now, None, sources=frozenset(sources),
                     types=frozenset(types))

    unbound, web, granted = token(set(), set()), token({"web"}, {"page_viewed"}), token(set(), {"profile_updated"})
    assert unbound.refusal("crm", "order_placed") is None and unbound.writer == Writer("token:t", frozenset())
    assert not unbound.writer.vouches("web")  # an unbound token vouches for no source
    for kind in PRIVILEGED_TYPES:
        assert unbound.refusal("web", kind) is not None and web.refusal("web", kind) is not None
    assert granted.refusal("crm", "profile_updated") is None and granted.refusal("crm", "identity_linked")
    assert web.refusal("web", "page_viewed") is None and web.writer.vouches("web")
    assert web.refusal("crm", "page_viewed") and web.refusal("web", "order_placed")
    assert "crm" not in (web.refusal("crm", "page_viewed") or "")  # the client's words are not repeated


def test_tokens_create_validates_and_list_shows_bindings(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", data, "init"]).exit_code == 0
    made = runner.invoke(cli, ["--data", data, "tokens", "create", "--name", "tracker", "--scopes", "events:write",
                               "--sources", "web,app", "--types", "page_viewed", "--types", "app_session", "--json"])
    assert made.exit_code == 0, made.output
    assert {k: v for k, v in orjson.loads(made.output).items() if k != "token"} == {
        "name": "tracker", "scopes": ["events:write"], "sources": ["app", "web"],
        "types": ["app_session", "page_viewed"]}
    for bad, needle in ((["--types", "page_view"], "unknown event type"), (["--sources", "Web"], "not a source"),
                        (["--sources", "persona"], "not a source"), (["--sources", "web x!"], "not a source")):
        refused = runner.invoke(cli, ["--data", data, "tokens", "create", "--name", "bad", "--scopes",
                                      "events:write", *bad])
        assert refused.exit_code != 0 and needle in refused.output, (bad, refused.output)
    reader = runner.invoke(cli, ["--data", data, "tokens", "create", "--name", "bad", "--scopes", "profiles:read",
                                 "--types", "page_viewed"])
    assert reader.exit_code != 0 and "events:write" in reader.output
    listed = orjson.loads(runner.invoke(cli, ["--data", data, "tokens", "list", "--json"]).output)
    assert [(t["name"], t["sources"], t["types"]) for t in listed] == [
        ("tracker", ["app", "web"], ["app_session", "page_viewed"])]
    text = runner.invoke(cli, ["--data", data, "tokens", "list"]).output
    assert "as app,web" in text and "only app_session,page_viewed" in text
    with Persona.open(Settings.load(Path(data), env={})) as p:
        with pytest.raises(ConfigurationError):
            create_token(p, "lib", frozenset({"events:write"}), types=frozenset({"not_a_type"}))
        assert [t.name for t in list_tokens(p)] == ["tracker"]


def test_local_commands_name_themselves(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", data, "init"]).exit_code == 0
    feed = tmp_path / "events.jsonl"
    feed.write_bytes(jsonl(record("ann@example.com", "profile_updated", {"gender": "female"}, source="crm",
                                  event_id="a1", occurred_at="2026-01-01T00:00:00Z"),
                           record("ann@example.com", event_id="a2", occurred_at="2026-01-02T00:00:00Z"),
                           record("bob@example.com", event_id="b1", namespace="cookie",
                                  occurred_at="2026-01-03T00:00:00Z")))
    assert runner.invoke(cli, ["--data", data, "ingest", str(feed)]).exit_code == 0
    assert runner.invoke(cli, ["--data", data, "link", "email:ann@example.com", "cookie:bob@example.com"]
                         ).exit_code == 0
    lines = runner.invoke(cli, ["--data", data, "history", "--subject", "email:ann@example.com", "--json"]).output
    writers = {(doc["event_id"], doc["writer"]) for doc in map(orjson.loads, lines.splitlines())
               if not doc["event_id"].startswith("merge:")}
    assert ("a1", "local:ingest") in writers and ("a2", "local:ingest") in writers
    assert {w for e, w in writers if e.startswith("link:")} == {"local:link"}
    shown = orjson.loads(runner.invoke(cli, ["--data", data, "profile", "--subject", "email:ann@example.com",
                                             "--json"]).output)
    (gender,) = shown["attributes"]["gender"]["provenance"]
    assert (gender["writer"], gender["vouched"]) == ("local:ingest", True)  # the operator vouches for every source
    assert "crm by local:ingest" in runner.invoke(cli, ["--data", data, "profile", "--subject",
                                                        "email:ann@example.com"]).output


# -- sealed, idempotent, old events ---------------------------------------------------------------
def test_the_writer_is_sealed_with_the_event(persona: Persona) -> None:
    name = "needle-writer-" + os.urandom(4).hex()
    create_token(persona, name, frozenset({"events:write"}), sources=frozenset({"web"}))
    (token,) = [t for t in list_tokens(persona) if t.name == name]
    lines = jsonl(record(event_id="sealed-1"), record(event_id="sealed-2", source="shop"))  # bound to web only
    report = ingest_jsonl(persona, io.BytesIO(lines), origin="t", writer=token.writer)
    assert report.appended == 2
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    opened = [(e.event_id, e.writer, e.vouched) for e in persona.log.read(pid)]
    assert opened == [("sealed-1", f"token:{name}", True), ("sealed-2", f"token:{name}", False)]  # there, opened
    replayed = [(e.event_id, e.writer, e.vouched) for e in persona.log.iter_all() if e.profile_id == pid]
    assert replayed == opened  # replay opens it the same way
    persona.recorder.checkpoint()
    raw = store_bytes(persona)
    assert name.encode() in raw  # positive control: the token's own name is in its row, in the clear
    assert f"token:{name}".encode() not in raw  # the event's record of it is sealed
    assert b"sealed-1" not in raw and b'"vouch"' not in raw


def test_a_token_cannot_pre_empt_local_ingest(persona: Persona) -> None:
    """An order id a shop export will carry, sent first by a token (bound or not): the export's
    event is still appended. The operator's commands share one key space, as before."""
    order = record("alice@example.com", "order_placed", {"order_id": "o-1", "amount": "10.00", "currency": "EUR"},
                   event_id="o-1", source="shop")
    squat = {**order, "type": "page_viewed", "data": {"url": "https://shop.example/x"}}
    for writer in (Writer("token:squatter", frozenset()), Writer("token:shop-feed", frozenset({"shop"}))):
        assert ingest_jsonl(persona, io.BytesIO(jsonl(squat)), origin="t", writer=writer).appended == 1
    first = ingest_jsonl(persona, io.BytesIO(jsonl(order)), origin="a", writer=local("ingest"))
    assert (first.appended, first.duplicates) == (1, 0)
    for writer in (local("ingest"), LIBRARY):  # local re-ingest (any command, the library) stays idempotent
        again = ingest_jsonl(persona, io.BytesIO(jsonl(order)), origin="b", writer=writer)
        assert (again.appended, again.duplicates) == (0, 1)
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    assert sorted((e.writer, e.type) for e in persona.log.read(pid)) == [
        ("local:ingest", "order_placed"), ("token:shop-feed", "page_viewed"), ("token:squatter", "page_viewed")]
    # keys of events written before (unbound, by anyone) stay what they were: the operator's are unchanged
    assert persona.log.event_key("shop", "o-1") == persona.log.event_key("shop", "o-1", local("ingest"))
    assert persona.log.event_key("shop", "o-1", Writer("token:a", frozenset())) != persona.log.event_key(
        "shop", "o-1", Writer("token:b", frozenset()))
    assert verify(persona).events == 3


def _append_as_an_earlier_release(persona: Persona, email: str, kind: str, data: dict[str, Any], *, source: str,
                                  event_id: str, occurred_at: str) -> None:
    """One event sealed exactly as persona wrote it before writers were recorded: the payload has no
    writer. Written through the real key, AAD and chain functions, so `verify` accepts it."""
    log, rec = persona.log, persona.recorder
    pid = log.profile_for("email", email)
    assert pid is not None
    head = rec.heads([pid])[pid]
    digest = log.hash_identifier("email", email)
    version, key = head.version + 1, log.event_key(source, event_id)
    body = {"id": event_id, "src": source, "at": utc_text(datetime.fromisoformat(occurred_at)),
            "sub": ["email", digest[:16].hex()], "data": data}
    # a chunk of one event: its associated data is what an event's was before chunks (event_aad)
    aad, nonce, recorded = chunk_aad(pid, version, version, key, kind), os.urandom(12), micros(datetime.now(UTC))
    payload = log.sealer(pid, head).seal(orjson.dumps(body), aad, nonce)
    chained = chain_hash(log.chain_key, bytes(head.hash), aad, recorded, payload)
    with rec.transaction():  # a chunk of one event, its key into the key set
        rec.insert_chunks([(head.no, version, version, recorded, kind, key, payload, chained)])
        rec.set_heads([(version, chained, head.no)])
    log.forget_cached_keys()


def test_old_events_without_a_writer_still_fold(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record(event_id="new-1", occurred_at="2026-01-01T00:00:00Z"))),
                 origin="t", writer=Writer("token:web-only", frozenset()))  # an unbound token's page view
    _append_as_an_earlier_release(persona, "alice@example.com", "profile_updated",
                                  {"gender": "female", "birth_year": 1990, "city": "Lyon"}, source="crm",
                                  event_id="old-1", occurred_at="2025-01-01T00:00:00+00:00")
    assert verify(persona).events == 2  # a chain as an earlier release left it
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    events = persona.log.read(pid)
    assert [(e.event_id, e.writer, e.vouched) for e in events] == [("new-1", "token:web-only", False),
                                                                   ("old-1", "unknown", True)]
    Projector(persona).refresh([pid])
    current = Projector(persona).current(pid)
    view = ATTRIBUTES.view(current.states[ATTRIBUTES.name], datetime(2026, 6, 1, tzinfo=UTC))
    assert (view["gender"]["value"], view["birth_year"]["value"], view["city"]["value"]) == ("female", 1990, "Lyon")
    (gender,) = view["gender"]["provenance"]
    assert (gender["writer"], gender["vouched"]) == ("unknown", True)  # its source's rank, as before
    # a later claim of an unbound writer does not displace it
    ingest_jsonl(persona, io.BytesIO(jsonl(record("alice@example.com", "profile_updated", {"gender": "male"},
                                                  source="crm", event_id="new-2",
                                                  occurred_at="2026-02-01T00:00:00Z"))),
                 origin="t", writer=Writer("token:web-only", frozenset()))
    assert replay(ATTRIBUTES, persona.log.read(pid)) == Projector(persona).current(pid).states[ATTRIBUTES.name]
    assert ATTRIBUTES.view(replay(ATTRIBUTES, persona.log.read(pid)), datetime(2026, 6, 1, tzinfo=UTC))[
        "gender"]["value"] == "female"


def test_a_local_link_records_its_command(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record(event_id="l1"), record("x", namespace="cookie", event_id="l2"))),
                 origin="t")
    link(persona, ("email", "alice@example.com"), ("cookie", "x"), writer=local("link"))
    writers = {e.type: e.writer for e in persona.log.iter_all()}
    assert writers["identity_linked"] == writers["profiles_merged"] == "local:link"
    assert writers["page_viewed"] == "library"  # a program that did not name itself


# -- fusion: the pure fold ------------------------------------------------------------------------
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def claim(data: dict[str, Any], *, source: str, at: str, event_id: str, writer: str, vouched: bool,
          kind: str = "profile_updated") -> RecordedEvent:
    moment = datetime.fromisoformat(at)
    return RecordedEvent(1, "prf_test", 1, event_id, kind, source, utc_text(moment), micros(moment),
                         ("email", "abc"), data, writer, vouched)


def test_two_writers_claiming_the_same_source() -> None:
    crm = claim({"gender": "female", "birth_year": 1985, "signup_at": "2025-01-01T00:00:00.000000Z"},
                source="crm", at="2025-01-01T00:00:00+00:00", event_id="c1", writer="token:crm-sync", vouched=True)
    forged = claim({"gender": "male", "birth_year": 2004, "signup_at": "2026-02-01T00:00:00.000000Z"},
                   source="crm", at="2026-01-01T00:00:00+00:00", event_id="f1", writer="token:intruder",
                   vouched=False)
    social = claim({"gender": "other", "birth_year": 1987}, source="social", at="2025-06-01T00:00:00+00:00",
                   event_id="s1", writer="token:social-feed", vouched=True)
    out = ATTRIBUTES.view(replay(ATTRIBUTES, [crm, forged]), AS_OF)
    assert out["gender"]["value"] == "female" and out["signup_at"]["value"] == "2025-01-01T00:00:00.000000Z"
    assert [p["writer"] for p in out["gender"]["provenance"]] == ["token:crm-sync"]
    assert out["birth_year"]["value"] == 1985  # the forged claim does not take the CRM's slot or weight
    assert [(p["writer"], p["weight"]) for p in out["birth_year"]["provenance"]] == [("token:crm-sync", 4.0)]
    # an unvouched claim ranks below every vouched source, the least trusted included
    out = ATTRIBUTES.view(replay(ATTRIBUTES, [social, forged]), AS_OF)
    assert out["gender"]["value"] == "other" and out["birth_year"]["value"] == 1987
    # alone, unvouched claims fill the gap: one slot per writer, equal weights
    second = claim({"birth_year": 2000}, source="shop", at="2026-01-02T00:00:00+00:00", event_id="f2",
                   writer="token:other", vouched=False)
    again = claim({"birth_year": 2010}, source="web", at="2026-01-03T00:00:00+00:00", event_id="f3",
                  writer="token:intruder", vouched=False)
    out = ATTRIBUTES.view(replay(ATTRIBUTES, [forged, second, again]), AS_OF)
    assert out["gender"]["value"] == "male" and out["gender"]["provenance"][0]["vouched"] is False
    assert out["birth_year"]["value"] == 2005  # (2010 + 2000) / 2: the intruder's latest, not one per source
    # the same writer bound to the source (vouched) does rank as the CRM
    trusted = forged._replace(writer="local:ingest", vouched=True)
    assert ATTRIBUTES.view(replay(ATTRIBUTES, [crm, trusted]), AS_OF)["gender"]["value"] == "male"


def test_unvouched_latest_and_consent_claims_only_fill_gaps() -> None:
    crm = claim({"city": "Madrid", "language": "es"}, source="crm", at="2025-01-01T00:00:00+00:00", event_id="c1",
                writer="local:ingest", vouched=True)
    forged = claim({"city": "Atlantis", "language": "xx"}, source="crm", at="2026-01-01T00:00:00+00:00",
                   event_id="f1", writer="token:intruder", vouched=False)
    granted = claim({"purpose": "marketing", "granted": False}, source="crm", at="2025-01-02T00:00:00+00:00",
                    event_id="c2", writer="local:ingest", vouched=True, kind="consent_changed")
    flipped = claim({"purpose": "marketing", "granted": True}, source="crm", at="2026-01-02T00:00:00+00:00",
                    event_id="f2", writer="token:intruder", vouched=False, kind="consent_changed")
    for events in ([crm, forged, granted, flipped], [flipped, forged, granted, crm]):
        out = ATTRIBUTES.view(replay(ATTRIBUTES, events), AS_OF)
        assert (out["city"]["value"], out["language"]["value"]) == ("Madrid", "es")
        assert out["consent"]["marketing"]["granted"] is False
        assert out["consent"]["marketing"]["provenance"][0]["writer"] == "local:ingest"
    alone = ATTRIBUTES.view(replay(ATTRIBUTES, [forged, flipped]), AS_OF)  # a gap: filled, and says by whom
    assert (alone["city"]["value"], alone["consent"]["marketing"]["granted"]) == ("Atlantis", True)
    # a later vouched claim displaces the unvouched one, whatever the order the fold meets them
    later = crm._replace(occurred_at="2026-02-01T00:00:00.000000Z", event_id="c3")
    assert ATTRIBUTES.view(replay(ATTRIBUTES, [later, forged]), AS_OF)["city"]["value"] == "Madrid"
    state = replay(ATTRIBUTES, [forged, flipped])
    merged = ATTRIBUTES.combine([state, replay(ATTRIBUTES, [crm, granted])])  # a merged person: the same rule
    assert ATTRIBUTES.dump(merged) == ATTRIBUTES.dump(replay(ATTRIBUTES, [crm, forged, granted, flipped]))


def test_an_unvouched_consent_change_does_not_override_a_vouched_one_in_features() -> None:
    """The consent in force when each event happened decides what the features count: an unvouched
    grant after a vouched withdrawal must not bring the withdrawn orders back."""
    withdrawn = claim({"purpose": "analytics", "granted": False}, source="crm", at="2025-01-01T00:00:00+00:00",
                      event_id="c1", writer="local:ingest", vouched=True, kind="consent_changed")
    regranted = claim({"purpose": "analytics", "granted": True}, source="crm", at="2025-02-01T00:00:00+00:00",
                      event_id="f1", writer="token:intruder", vouched=False, kind="consent_changed")
    order = claim({"order_id": "o1", "amount": "50.00", "currency": "EUR"}, source="shop",
                  at="2025-03-01T00:00:00+00:00", event_id="o1", writer="local:ingest", vouched=True,
                  kind="order_placed")
    seen = FEATURES.view(replay(FEATURES, [withdrawn, regranted, order]), AS_OF)
    assert seen.get("frequency", 0) == 0 and FEATURES.counted(replay(FEATURES, [withdrawn, regranted, order]),
                                                             AS_OF) == []
    # alone, an unvouched withdrawal fills the gap (erring on the side of counting less)
    unvouched_withdrawal = withdrawn._replace(writer="token:intruder", vouched=False)
    assert FEATURES.counted(replay(FEATURES, [unvouched_withdrawal, order]), AS_OF) == []
    assert len(FEATURES.counted(replay(FEATURES, [order]), AS_OF)) == 1


writers = st.tuples(st.sampled_from(["token:a", "token:b", "local:ingest", "unknown"]), st.booleans())


@given(st.lists(st.tuples(st.sampled_from(["crm", "shop", "social", "partner"]),
                          st.sampled_from(["gender", "birth_year", "signup_at", "city"]),
                          st.integers(0, 3), st.integers(0, 4), writers), min_size=1, max_size=20),
       st.randoms(use_true_random=False), st.integers(0, 20))
def test_fusion_with_writers_is_order_independent_and_combines(spec: list[Any], rnd: Any, cut: int) -> None:
    values = {"gender": ["female", "male", "other", "unknown"], "birth_year": [1970, 1980, 1990, 2000],
              "signup_at": [f"2024-0{i + 1}-01T00:00:00.000000Z" for i in range(4)], "city": ["A", "B", "C", "D"]}
    events = [claim({name: values[name][choice]}, source=source, at=f"2025-01-0{day + 1}T00:00:00+00:00",
                    event_id=f"e{n:03d}", writer=writer, vouched=vouched)
              for n, (source, name, choice, day, (writer, vouched)) in enumerate(spec)]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    one, other = replay(ATTRIBUTES, events), replay(ATTRIBUTES, shuffled)
    assert ATTRIBUTES.dump(one) == ATTRIBUTES.dump(other)
    assert ATTRIBUTES.view(one, AS_OF) == ATTRIBUTES.view(other, AS_OF)
    parts = [replay(ATTRIBUTES, shuffled[:cut]), replay(ATTRIBUTES, shuffled[cut:])]
    assert ATTRIBUTES.dump(ATTRIBUTES.combine(parts)) == ATTRIBUTES.dump(one)  # a merged person: the same
    assert ATTRIBUTES.dump(ATTRIBUTES.load(orjson.loads(orjson.dumps(ATTRIBUTES.dump(one))))) == ATTRIBUTES.dump(one)
    if any(vouched for *_, (_, vouched) in spec) and "gender" in ATTRIBUTES.view(one, AS_OF):
        shown = ATTRIBUTES.view(one, AS_OF)["gender"]["provenance"][0]
        gendered = [e for e in events if "gender" in e.data]
        assert shown["vouched"] or not any(e.vouched for e in gendered)  # a vouched claim always wins
