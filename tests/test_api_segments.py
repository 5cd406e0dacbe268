"""Live segments through a real server (issue 22, Deliver 2): `persona serve` on 127.0.0.1, driven
by httpx and a graphql-transport-ws client. Segments are made and removed by mutation, kept
current by every ingest (the person's membership is there in the commit the mutation answers
after), swept when the clock moves them, announced by `segmentChanged`, and sized k-anonymously."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from persona import Persona, memberships
from persona.ingest import ingest_jsonl
from persona.tokens import create_token
from tests.conftest import jsonl, record
from tests.test_api_http import PEOPLE, Server, opened, receive, run, send, serving
from tests.test_api_typed import ask

TOKENS = {
    "curator": frozenset({"segments:read", "segments:write"}),
    "watcher": frozenset({"segments:read", "profiles:read"}),
    "sizes": frozenset({"segments:read"}),
}
CREATE = "mutation($n: String!, $r: String!) { createSegment(name: $n, rule: $r) { name rule size clocked scored" \
         " createdBy createdAt } }"
SEGMENTS = "{ segments { name rule size clocked scored } }"
LIVE = "query($id: ID) { profile(id: $id) { liveSegments { segment since } } }"
CHANGES = "subscription($s: [String!]) { segmentChanged(segments: $s) { segment profileId entered at } }"
INGEST = "mutation($events: [EventInput!]!) { ingestEvents(events: $events) { appended } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("segments"), None, "--segment-sweep", "0.5") as running:
        with Persona.open(running.settings) as p:
            running.tokens.update({name: create_token(p, name, scopes) for name, scopes in TOKENS.items()})
        yield running


def refused(server: Server, query: str, variables: dict[str, Any] | None = None, token: str = "curator") -> str:
    body = server.post(query, variables, token=token).json()
    assert body.get("data") is None or not any(body["data"].values()), body
    message: str = body["errors"][0]["message"]
    return message


def now_text(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def order_input(email: str, eid: str, amount: str, at: str) -> dict[str, Any]:
    return {"source": "shop", "type": "order_placed", "occurredAt": at, "eventId": eid,
            "subject": {"namespace": "email", "value": email},
            "data": {"order_id": eid, "amount": amount, "currency": "EUR"}}


def live(server: Server, person: str) -> dict[str, str]:
    found = ask(server, LIVE, {"id": server.ids[person]})["profile"]["liveSegments"]
    return {m["segment"]: m["since"] for m in found}


def test_a_segment_made_by_mutation_is_listed_with_k_anonymous_sizes(server: Server) -> None:
    everyone = ask(server, CREATE, {"n": "everyone", "r": "behavior_events > 0"}, token="curator")["createSegment"]
    assert everyone["size"] == len(ask(server, "{ profiles(first: 100) { nodes { id } } }")["profiles"]["nodes"])
    assert everyone["createdBy"] == "token:curator" and not everyone["clocked"] and not everyone["scored"]
    one = ask(server, CREATE, {"n": "one-person", "r": f'city = "{city_of(server, PEOPLE[0])}"'},
              token="curator")["createSegment"]
    assert one["size"] is None  # some, but fewer than k = 5: not said
    nobody = ask(server, CREATE, {"n": "nobody", "r": "monetary > 1e12"}, token="curator")["createSegment"]
    assert nobody["size"] == 0
    listed = {s["name"]: s for s in ask(server, SEGMENTS, token="sizes")["segments"]}
    assert {"everyone", "one-person", "nobody"} <= set(listed)
    assert listed["everyone"]["size"] == everyone["size"] and listed["one-person"]["size"] is None
    assert ask(server, "mutation { deleteSegment(name: \"nobody\") }", token="curator") == {"deleteSegment": True}
    assert ask(server, "mutation { deleteSegment(name: \"nobody\") }", token="curator") == {"deleteSegment": False}
    assert "nobody" not in {s["name"] for s in ask(server, SEGMENTS, token="sizes")["segments"]}


def city_of(server: Server, person: str) -> str:
    found = ask(server, "query($id: ID) { profile(id: $id) { attributeValues { city } } }",
                {"id": server.ids[person]})["profile"]["attributeValues"]["city"]
    assert found
    return str(found)


@pytest.mark.parametrize(("name", "rule", "said"), [
    ("big", "monetary > ", "rule: monetary holds a number: expected a number."),
    ("big", 'city = "Secretville" and', "rule: expected a name"),
    ("Big Spenders", "monetary > 1", "name: a segment's name is 1 to 64 characters"),
    ("big", "salary > 1", "rule: an unknown name (known: "),
])
def test_a_bad_definition_is_refused_without_echoing_it(server: Server, name: str, rule: str, said: str) -> None:
    message = refused(server, CREATE, {"n": name, "r": rule})
    assert message.startswith(said), message
    assert "Secretville" not in message and "salary" not in message and "Big Spenders" not in message


def test_a_name_taken_is_refused_and_the_first_rule_stays(server: Server) -> None:
    ask(server, CREATE, {"n": "taken", "r": "frequency >= 1"}, token="curator")
    assert "exists" in refused(server, CREATE, {"n": "taken", "r": "frequency >= 100"})
    rules = {s["name"]: s["rule"] for s in ask(server, SEGMENTS, token="sizes")["segments"]}
    assert rules["taken"] == "frequency >= 1"


def test_an_ingested_event_moves_the_person_in_the_commit_the_mutation_answers_after(server: Server) -> None:
    person = PEOPLE[2]
    ask(server, CREATE, {"n": "whales", "r": "monetary >= 50000"}, token="curator")
    assert "whales" not in live(server, person)
    before = datetime.now(UTC)
    ask(server, INGEST, {"events": [order_input(person, "whale-1", "60000", now_text(timedelta(minutes=-5)))]})
    since = live(server, person)["whales"]  # no wait: the membership was written with the index row
    assert before <= datetime.fromisoformat(since) <= datetime.now(UTC)
    assert "whales" not in live(server, PEOPLE[1])
    refusal = server.post("query($id: ID) { profile(id: $id, asOf: \"2026-01-01T00:00:00Z\") { liveSegments {"
                          " segment } } }", {"id": server.ids[person]}).json()
    assert refusal["errors"][0]["message"] == "liveSegments: available for the current profile only"


async def next_change(ws: Any, timeout: float) -> dict[str, Any]:
    message = await receive(ws, timeout)
    assert message["type"] == "next", message
    change: dict[str, Any] = message["payload"]["data"]["segmentChanged"]
    return change


def test_segment_changed_announces_entries_from_this_server_and_from_another_process(server: Server) -> None:
    ask(server, CREATE, {"n": "loyal", "r": "frequency >= 40"}, token="curator")
    ask(server, CREATE, {"n": "other", "r": "frequency >= 41"}, token="curator")
    here, there = PEOPLE[1], PEOPLE[3]

    async def scenario() -> list[tuple[dict[str, Any], float]]:
        ws = await opened(server, "watcher")
        got = []
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "s", "type": "subscribe", "payload": {"query": CHANGES,
                                                                          "variables": {"s": ["loyal"]}}})
            await asyncio.sleep(0.5)  # subscribed: changes from now on
            events = [order_input(here, f"loyal-{i}", "1", now_text(timedelta(minutes=-10 - i))) for i in range(40)]
            sent = time.monotonic()
            ask(server, INGEST, {"events": events})
            got.append((await next_change(ws, 10), time.monotonic() - sent))
            lines = jsonl(*[record(there, "order_placed", {"order_id": f"far-{i}", "amount": "1", "currency": "EUR"},
                                   occurred_at=now_text(timedelta(minutes=-10 - i)), event_id=f"far-{i}",
                                   source="shop") for i in range(40)]).splitlines()
            with Persona.open(server.settings) as p:  # another process's ingest: the change feed wakes it
                sent = time.monotonic()
                ingest_jsonl(p, lines, origin="elsewhere")
            got.append((await next_change(ws, 10), time.monotonic() - sent))
        finally:
            await ws.close()
        return got

    (first, _), (second, _) = run(scenario())
    assert (first["segment"], first["profileId"], first["entered"]) == ("loyal", server.ids[here], True)
    assert (second["segment"], second["profileId"], second["entered"]) == ("loyal", server.ids[there], True)
    # and every change delivered is in the audit log, by profile, with the watcher's name
    deadline = time.monotonic() + 10
    while True:
        with Persona.open(server.settings) as p:
            seen = {(r[2], r[4]) for r in p.recorder.audit_rows(limit=1_000_000) if r[3] == "segmentChanged"}
        if {("watcher", server.ids[here]), ("watcher", server.ids[there])} <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {("watcher", server.ids[here]), ("watcher", server.ids[there])} <= seen


def test_the_servers_sweep_moves_out_a_person_the_clock_moved(server: Server) -> None:
    """recency_days < 1, for an order placed 1 day less 10 s ago: the person enters at ingest and
    leaves some 6 s later with no event (recency_days is kept to 4 decimals: 8.64 s), found by
    the sweep (every 0.5 s here)."""
    person = PEOPLE[0]
    ask(server, CREATE, {"n": "today", "r": "recency_days < 1 and frequency >= 1"}, token="curator")

    async def scenario() -> list[dict[str, Any]]:
        ws = await opened(server, "watcher")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "t", "type": "subscribe", "payload": {"query": CHANGES,
                                                                          "variables": {"s": ["today"]}}})
            await asyncio.sleep(0.5)
            at = now_text(timedelta(days=-1, seconds=10))
            ask(server, INGEST, {"events": [order_input(person, "almost-a-day", "5", at)]})
            got = []
            while len(got) < 2:
                change = await next_change(ws, 20)
                if change["profileId"] == server.ids[person]:
                    got.append(change)
            return got
        finally:
            await ws.close()

    entered, left = run(scenario())
    assert entered["entered"] is True and left["entered"] is False
    assert "today" not in live(server, person)


def test_segment_changed_needs_profiles_read_and_segments_read(server: Server) -> None:
    async def scenario(token: str) -> dict[str, Any]:
        ws = await opened(server, token)
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "n", "type": "subscribe", "payload": {"query": CHANGES}})
            return await receive(ws)
        finally:
            await ws.close()

    for token, lacking in (("sizes", "profiles:read"), ("reader", "segments:read")):
        message = run(scenario(token))
        assert message["type"] == "error", message
        assert lacking in orjson.dumps(message["payload"]).decode()


def test_erasure_takes_the_person_out_of_every_segment(server: Server) -> None:
    person = PEOPLE[2]
    assert "everyone" in live(server, person)
    sizes = {s["name"]: s["size"] for s in ask(server, SEGMENTS, token="sizes")["segments"]}
    ask(server, "mutation($id: ID!) { eraseProfile(id: $id) { profileId } }", {"id": server.ids[person]})
    after = {s["name"]: s["size"] for s in ask(server, SEGMENTS, token="sizes")["segments"]}
    assert after["everyone"] == sizes["everyone"] - 1
    with Persona.open(server.settings) as p:
        assert p.recorder.memberships([server.ids[person]]) == []
        assert all(pid != server.ids[person] for *_, pid, _ in p.recorder.segment_changes(0, 100_000))


def test_a_served_store_posts_webhooks_and_its_erasure_receipt_lists_the_notices(server: Server) -> None:
    """The server's delivery loop: an ingestEvents that moves a person into a followed segment is
    POSTed, signed, within seconds; eraseProfile sends the deletion notice before its receipt."""
    from persona import destinations
    from tests.webhooks import receiving

    person = PEOPLE[1]
    ask(server, CREATE, {"n": "hooked", "r": "frequency >= 60"}, token="curator")
    with receiving() as hook:
        with Persona.open(server.settings) as p:
            destinations.add_destination(p, "crm", hook.url, segments=["hooked"], fields=["frequency"], by="test")
            secret = destinations.secret_of(p, destinations.destination(p, "crm"))
        events = [order_input(person, f"hooked-{i}", "1", now_text(timedelta(hours=-1 - i))) for i in range(60)]
        ask(server, INGEST, {"events": events})
        (entered,) = hook.wait(1)
        destinations.verify(secret, entered.headers["persona-signature"], entered.headers["persona-delivery"],
                            entered.body)
        assert entered.doc["type"] == "entered" and entered.doc["profile_id"] == server.ids[person]
        assert entered.doc["profile"]["frequency"] >= 60 and set(entered.doc["profile"]) == {"frequency"}
        receipt = ask(server, "mutation($id: ID!) { eraseProfile(id: $id) { destinationsNotified { destination"
                              " acknowledged outcome } } }", {"id": server.ids[person]})["eraseProfile"]
        assert receipt["destinationsNotified"] == [{"destination": "crm", "acknowledged": True,
                                                    "outcome": "HTTP 204"}]
        notice = hook.wait(2)[-1]
        destinations.verify(secret, notice.headers["persona-signature"], notice.headers["persona-delivery"],
                            notice.body)
        assert notice.doc["type"] == "erased" and notice.doc["profile_id"] == server.ids[person]


def test_profile_consent_shows_each_purpose_with_its_provenance(server: Server) -> None:
    person = PEOPLE[3]
    query = "query($id: ID) { profile(id: $id) { consent { purpose granted since source vouched } } }"
    before = {c["purpose"]: c for c in ask(server, query, {"id": server.ids[person]})["profile"]["consent"]}
    assert set(before) == {"analytics", "marketing", "personalization"}
    at = now_text(timedelta(minutes=-1))
    withdraw = {"source": "web", "type": "consent_changed", "occurredAt": at, "eventId": "withdraw-marketing",
                "subject": {"namespace": "email", "value": person},
                "data": {"purpose": "marketing", "granted": False}}
    with Persona.open(server.settings) as p:
        token = create_token(p, "consent-writer", frozenset({"events:write"}), types=frozenset({"consent_changed"}))
    assert server.post(INGEST, {"events": [withdraw]}, token=token).json()["data"]["ingestEvents"]["appended"] == 1
    after = {c["purpose"]: c for c in ask(server, query, {"id": server.ids[person]})["profile"]["consent"]}
    assert after["marketing"]["granted"] is False and after["marketing"]["source"] == "web"
    assert after["marketing"]["vouched"] is False  # an unbound token vouches for no source
    assert datetime.fromisoformat(after["marketing"]["since"]) == datetime.fromisoformat(at)
    assert after["analytics"] == before["analytics"]
    refused = server.post("query($id: ID) { profile(id: $id, asOf: \"2026-01-01T00:00:00Z\") { consent { purpose }"
                          " } }", {"id": server.ids[person]}).json()
    assert refused["errors"][0]["message"].startswith("consent: available for the current profile only")


def test_a_segments_history_walks_back_from_its_size_through_the_changes_kept(server: Server) -> None:
    ask(server, CREATE, {"n": "history", "r": "behavior_events > 0"}, token="curator")
    found = {s["name"]: s for s in ask(server, "{ segments { name size history(days: 3) { day size } } }",
                                       token="sizes")["segments"]}["history"]
    today = datetime.now(UTC).date()
    assert [h["day"] for h in found["history"]] == [str(today - timedelta(days=n)) for n in (2, 1, 0)]
    with Persona.open(server.settings) as p:
        members = memberships.sizes(p)["history"]
        # the library, as of two days on: nobody the day before it was made, its size since
        later = memberships.size_history(p, 4, now=datetime.now(UTC) + timedelta(days=2))["history"]
    assert members > 0 and found["size"] == (None if members < 5 else members)
    # everyone entered today, when the segment was made: the days before it had nobody
    assert [h["size"] for h in found["history"]] == [0, 0, found["size"]]
    assert [size for _, size in later] == [0, members, members, members]
    assert [day for day, _ in later] == [today - timedelta(days=1) + timedelta(days=n) for n in range(4)]
    for days in (0, -1, 367):
        assert "days: between 1 and 366" in refused(server, f"{{ segments {{ history(days: {days}) {{ size }} }} }}",
                                                    token="sizes")
    small = ask(server, CREATE, {"n": "small-history", "r": f'city = "{city_of(server, PEOPLE[0])}"'},
                token="curator")["createSegment"]
    assert small["size"] is None
    listed = {s["name"]: s for s in ask(server, "{ segments { name history { size } } }", token="sizes")["segments"]}
    assert listed["small-history"]["history"][-1]["size"] is None  # fewer than k: not said, today or any day
    ask(server, 'mutation { deleteSegment(name: "history") }', token="curator")
    ask(server, 'mutation { deleteSegment(name: "small-history") }', token="curator")
