"""The answer cache and its event-sourced ETag (issue 22, Deliver 5), through a real server: a
profile query read again is answered from memory, exactly as executing it would answer, audited
each time, never across scopes or to another person's token, never after the profile changed —
by this server, another process, a segment, an erasure — and If-None-Match is answered 304."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from persona import Persona, linking, memberships
from persona.api.answers import AnswerCache, matches
from persona.audit import entries
from persona.erasure import erase_profile
from persona.ingest import ingest_jsonl
from persona.reading import stamps
from persona.tokens import create_token, lookup_token, mint_token
from tests.conftest import pg_schema, record
from tests.test_api_http import PEOPLE, Server, check, prepare, serving

PROFILE = ("query($id: ID!) { profile(id: $id) { id version attributeValues { city } featureValues"
           " { frequency recencyDays lifecycleStage } segments liveSegments { segment } } }")
# no value the clock moves: kept until the profile changes (PROFILE is also keyed by the clock's tick)
STILL = ("query($id: ID!) { profile(id: $id) { id version updatedAt identities { namespace } liveSegments { segment }"
         " history(first: 3) { nodes { type } } } }")
HISTORY = "query($id: ID!) { profile(id: $id) { version history(first: 5) { nodes { type occurredAt } } } }"
TOKENS = {
    "twin": frozenset({"profiles:read", "history:read", "events:write", "erasure:write"}),  # the ops token's scopes
    "curator": frozenset({"segments:write", "segments:read"}),
    "shop": frozenset({"tokens:mint", "profiles:read"}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("answers")) as running:
        with Persona.open(running.settings) as p:
            running.tokens.update({name: create_token(p, name, scopes) for name, scopes in TOKENS.items()})
        yield running


def get(server: Server, query: str, person: str, *, token: str = "ops", etag: str | None = None,
        method: str = "POST") -> httpx.Response:
    headers = server.auth(token) | ({"If-None-Match": etag} if etag else {})
    variables = {"id": server.ids.get(person, person)}
    with server.client() as http:
        if method == "GET":
            response = http.get("/graphql", params={"query": query, "variables": orjson.dumps(variables).decode()},
                                headers=headers)
        else:
            response = http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    return check(response)


def page_view(email: str, tag: str) -> dict[str, Any]:
    return {"source": "web", "type": "page_viewed", "occurredAt": datetime.now(UTC).isoformat(), "eventId": tag,
            "subject": {"namespace": "email", "value": email}, "data": {"url": f"https://shop.example/{tag}"}}


def audited(server: Server, person: str, writer: str, at_least: int) -> list[tuple[Any, ...]]:
    """The audit entries of this writer's reads of this person, once at least `at_least` are written."""
    deadline = time.monotonic() + 10
    while True:
        with Persona.open(server.settings) as p:
            found = [row for row in entries(p, profile_id=server.ids[person], limit=100_000) if row[2] == writer]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_read_again_is_the_same_answer_with_an_etag_and_if_none_match_is_304(server: Server) -> None:
    first = get(server, STILL, PEOPLE[0])
    again = get(server, STILL, PEOPLE[0])
    assert first.status_code == again.status_code == 200 and "errors" not in first.json()
    assert first.content == again.content
    etag = first.headers["etag"]
    assert etag == again.headers["etag"] and etag.startswith('"') and len(etag) > 20
    assert first.headers["cache-control"] == "private, no-cache" and first.headers["vary"] == "Authorization"
    unchanged = get(server, STILL, PEOPLE[0], etag=etag, method="GET")
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
    by_post = get(server, STILL, PEOPLE[0], etag=etag)  # RFC 9110: 304 is for GET and HEAD; others 412
    assert by_post.status_code == 412 and by_post.json()["errors"][0]["extensions"]["code"] == "NOT_MODIFIED"
    listed = get(server, STILL, PEOPLE[0], etag=f'"forged", W/{etag}', method="GET")  # one of a list, weak or strong
    assert listed.status_code == 304
    for forged in ('"forged"', "*", etag[:-2] + '"', etag + "x"):
        assert get(server, STILL, PEOPLE[0], etag=forged, method="GET").status_code == 200, forged
    other = get(server, STILL, PEOPLE[1])
    assert other.headers["etag"] != etag and other.json()["data"]["profile"]["id"] == server.ids[PEOPLE[1]]


def test_every_read_is_audited_hits_and_304s_alike_under_the_asking_token(server: Server) -> None:
    person = PEOPLE[3]
    before = {name: len(audited(server, person, name, 0)) for name in ("ops", "twin")}
    etag = get(server, STILL, person).headers["etag"]  # one execution
    for _ in range(3):
        assert get(server, STILL, person).status_code == 200  # three kept answers
    assert get(server, STILL, person, etag=etag, method="GET").status_code == 304  # one revalidation
    twin = get(server, STILL, person, token="twin")  # the same scopes: the same answer, its own name
    assert twin.headers["etag"] == etag
    ops = audited(server, person, "ops", before["ops"] + 10)[before["ops"]:]  # each read: its profile, its history
    twins = audited(server, person, "twin", before["twin"] + 2)[before["twin"]:]
    assert len(ops) == 10 and len(twins) == 2
    for _seq, _at, _writer, operation, _pid, fields, outcome, detail in ops + twins:
        assert outcome == "ok"
        if operation == "profile":
            assert set(fields.split(",")) == {"history", "id", "identities", "liveSegments", "updatedAt", "version"}
        else:
            assert operation == "history" and orjson.loads(detail)["first"] == 3
    assert [row[3] for row in ops].count("history") == 5


def test_a_change_by_this_server_or_another_process_is_answered_at_once(server: Server) -> None:
    person = PEOPLE[1]
    first = get(server, HISTORY, person)
    version = first.json()["data"]["profile"]["version"]
    ingest = ("mutation($events: [EventInput!]!) { ingestEvents(events: $events) { appended } }")
    assert server.post(ingest, {"events": [page_view(person, "answers-1")]}).json()["data"]["ingestEvents"][
        "appended"] == 1
    changed = get(server, HISTORY, person, etag=first.headers["etag"])
    assert changed.status_code == 200 and changed.json()["data"]["profile"]["version"] == version + 1
    assert changed.headers["etag"] != first.headers["etag"]
    line = orjson.dumps(record(person, "page_viewed", {"url": "https://shop.example/elsewhere"},
                               event_id="answers-2", occurred_at=datetime.now(UTC).isoformat()))
    with Persona.open(server.settings) as p:  # as the command line or another worker would
        assert ingest_jsonl(p, [line], origin="elsewhere").appended == 1
    again = get(server, HISTORY, person, etag=changed.headers["etag"])
    assert again.status_code == 200 and again.json()["data"]["profile"]["version"] == version + 2
    assert again.json()["data"]["profile"]["history"]["nodes"][0]["type"] == "page_viewed"


def test_a_new_segment_is_in_the_next_answer(server: Server) -> None:
    person = PEOPLE[2]
    before = get(server, PROFILE, person)
    assert before.json()["data"]["profile"]["liveSegments"] == []
    made = server.post("mutation { createSegment(name: \"all\", rule: \"behavior_events > 0\") { size } }",
                       token="curator").json()
    assert made["data"]["createSegment"]["size"] > 0, made
    after = get(server, PROFILE, person, etag=before.headers["etag"])
    assert after.status_code == 200 and after.json()["data"]["profile"]["liveSegments"] == [{"segment": "all"}]


def test_scopes_never_share_an_answer(server: Server) -> None:
    person = PEOPLE[0]
    query = "query($id: ID!) { profile(id: $id) { id version } }"
    ops, reader = get(server, query, person), get(server, query, person, token="reader")
    assert ops.content == reader.content  # the same data, but kept and tagged apart
    assert ops.headers["etag"] != reader.headers["etag"]
    assert get(server, query, person, token="reader", etag=ops.headers["etag"], method="GET").status_code == 200
    # a field the token may not read is refused as ever, whatever the cache holds for others
    assert get(server, HISTORY, person).status_code == 200
    refused = get(server, HISTORY, person, token="reader")
    assert refused.status_code == 403 and "history:read" in refused.text and "etag" not in refused.headers


def test_a_minted_token_never_gets_another_persons_kept_answer(server: Server) -> None:
    query = "query($id: ID!) { profile(id: $id) { id featureValues { frequency } } }"
    kept = get(server, query, PEOPLE[1], token="reader")  # profiles:read, as a minted token holds
    with Persona.open(server.settings) as p:
        shop = lookup_token(p, server.tokens["shop"])
        assert shop is not None
        minted = mint_token(p, shop, server.ids[PEOPLE[0]]).token
    for etag in (None, kept.headers["etag"]):
        other = get(server, query, PEOPLE[1], token=minted, etag=etag, method="GET")
        assert other.status_code == 200 and other.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert other.json()["data"]["profile"] is None and "etag" not in other.headers
    own = get(server, query, PEOPLE[0], token=minted)
    assert own.json()["data"]["profile"]["id"] == server.ids[PEOPLE[0]]
    assert get(server, query, PEOPLE[0], token=minted, etag=own.headers["etag"], method="GET").status_code == 304


def test_an_erased_person_is_never_answered_from_memory(server: Server) -> None:
    person = PEOPLE[3]
    kept = get(server, HISTORY, person)
    assert kept.json()["data"]["profile"]["history"]["nodes"]
    erased = server.post("mutation($id: ID!) { eraseProfile(id: $id) { profileId } }", {"id": server.ids[person]})
    assert erased.json()["data"]["eraseProfile"]["profileId"] == server.ids[person]
    gone = get(server, HISTORY, person, etag=kept.headers["etag"])
    assert gone.status_code == 200 and gone.json()["data"]["profile"] is None
    # documents persisted by hash may hold identifiers typed into them: forgotten with the rest
    digest = hashlib.sha256(HISTORY.encode()).hexdigest()
    by_hash = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}},
               "variables": {"id": server.ids[PEOPLE[0]]}}
    assert persisted(server, {"query": HISTORY, **by_hash}).status_code == 200
    server.post("mutation($id: ID!) { eraseProfile(id: $id) { profileId } }", {"id": server.ids[PEOPLE[2]]})
    deadline = time.monotonic() + 5
    while "PERSISTED_QUERY_NOT_FOUND" not in persisted(server, by_hash).text:
        assert time.monotonic() < deadline, "a persisted document outlived an erasure"
        time.sleep(0.1)


def test_errors_are_never_kept_and_carry_no_etag(server: Server) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    query = "query($id: ID!, $at: DateTime) { profile(id: $id, asOf: $at) { id liveSegments { segment } } }"
    for _ in range(2):
        with server.client() as http:
            response = check(http.post("/graphql", json={"query": query, "variables": {
                "id": server.ids[PEOPLE[0]], "at": past}}, headers=server.auth("ops")))
        assert "current profile only" in response.json()["errors"][0]["message"] and "etag" not in response.headers


def test_clock_values_are_kept_one_tick_and_a_history_keeps_its_etag(tmp_path_factory: pytest.TempPathFactory
                                                                     ) -> None:
    with serving(tmp_path_factory.mktemp("ticks"), None, "--answer-cache-seconds", "1") as running:
        for _ in range(3):  # two reads within one tick (a pair may straddle the edge of one)
            clocked = [get(running, PROFILE, PEOPLE[0]) for _ in range(2)]
            if clocked[0].headers["etag"] == clocked[1].headers["etag"]:
                break
        else:
            raise AssertionError("two reads in a row never had the same ETag")
        history = get(running, HISTORY, PEOPLE[0]).headers["etag"]
        time.sleep(2.1)
        later = get(running, PROFILE, PEOPLE[0])
        assert later.headers["etag"] not in {c.headers["etag"] for c in clocked}  # a new tick: recency moved on
        # no clock in it: still current, though its kept answer expired and was made again
        assert get(running, HISTORY, PEOPLE[0], etag=history, method="GET").status_code == 304
    with serving(tmp_path_factory.mktemp("nocache"), None, "--answer-cache-mb", "0") as running:
        plain = get(running, PROFILE, PEOPLE[0])
        assert plain.status_code == 200 and "etag" not in plain.headers


def persisted(server: Server, doc: dict[str, Any], *, token: str = "ops", method: str = "POST",
              etag: str | None = None) -> httpx.Response:
    headers = server.auth(token) | ({"If-None-Match": etag} if etag else {})
    with server.client() as http:
        if method == "GET":
            params = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in doc.items()}
            return check(http.get("/graphql", params=params, headers=headers))
        return check(http.post("/graphql", json=doc, headers=headers))


def test_persisted_queries_are_sent_by_hash_and_keep_every_check(server: Server) -> None:
    """Apollo's automatic persisted queries: the hash alone once the document was sent with it."""
    digest = hashlib.sha256(STILL.encode()).hexdigest()
    by_hash = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}},
               "variables": {"id": server.ids[PEOPLE[1]]}}
    unknown = persisted(server, by_hash)
    assert unknown.status_code == 200 and unknown.json()["errors"][0]["extensions"]["code"] == (
        "PERSISTED_QUERY_NOT_FOUND")
    for wrong in ({"version": 1, "sha256Hash": "0" * 64}, {"version": 2, "sha256Hash": digest},
                  {"version": 1, "sha256Hash": "not hex"}, "nonsense"):
        refused = persisted(server, {"query": STILL, "variables": by_hash["variables"],
                                     "extensions": {"persistedQuery": wrong}})
        assert refused.status_code == 400 and "persistedQuery" in refused.text, wrong
    sent = persisted(server, {"query": STILL, **by_hash})
    assert sent.status_code == 200 and sent.json()["data"]["profile"]["id"] == server.ids[PEOPLE[1]]
    again = persisted(server, by_hash)
    assert again.content == sent.content and again.headers["etag"] == sent.headers["etag"]
    short = persisted(server, by_hash, method="GET", etag=sent.headers["etag"])  # a short URL, revalidated
    assert short.status_code == 304
    history = "query($id: ID!) { profile(id: $id) { history(first: 2) { nodes { type } } } }"
    persisted(server, {"query": history, "variables": by_hash["variables"], "extensions": {
        "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(history.encode()).hexdigest()}}})
    lacking = persisted(server, {"extensions": {"persistedQuery": {
        "version": 1, "sha256Hash": hashlib.sha256(history.encode()).hexdigest()}},
        "variables": by_hash["variables"]}, token="reader")
    assert lacking.status_code == 403 and "history:read" in lacking.text


def test_a_stamp_that_cannot_be_read_means_the_query_is_executed_not_a_500(
        api: Any, world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refusing the stamp's read (locked, gone for a moment): the query runs as it would
    without the cache, whose errors are GraphQL's own; nothing is kept."""
    import sqlite3

    import persona.api.answers as answers_module

    def refused(*_: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    query = "query($id: ID!) { profile(id: $id) { id version } }"
    person = next(iter(world.ids.values()))
    monkeypatch.setattr(answers_module, "stamps", refused)
    response = api.post(query, {"id": person})
    assert response.status_code == 200 and response.json()["data"]["profile"]["id"] == person
    assert "etag" not in response.headers
    monkeypatch.undo()
    assert "etag" in api.post(query, {"id": person}).headers


# -- the parts, in this process ------------------------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_stamps_move_with_every_source_of_an_answer(tmp_path: Path, store: str) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_schema()) if store == "postgresql" else None
        settings, _tokens, ids = prepare(tmp_path, url)
        pid, other = ids[PEOPLE[0]], ids[PEOPLE[1]]
        p = stack.enter_context(Persona.open(settings))
        seen = [stamps(p, [pid])[0]]
        assert seen[0] is not None and stamps(p, ["prf_nobody", pid])[0] is None
        p.recorder.change_rfm([(pid, 5, 4, 3)], [])
        seen.append(stamps(p, [pid])[0])
        p.recorder.put_predictions([(pid, "churn_30d", 1, 1_000, orjson.dumps({"score": 0.5}).decode())])
        seen.append(stamps(p, [pid])[0])
        p.recorder.put_predictions([(pid, "churn_30d", 2, 2_000, orjson.dumps({"score": 0.4}).decode())])
        seen.append(stamps(p, [pid])[0])
        memberships.add_segment(p, "s", "behavior_events > 0", by="test")
        seen.append(stamps(p, [pid])[0])
        line = orjson.dumps(record(PEOPLE[0], "page_viewed", {"url": "https://shop.example/x"}, event_id="st-1",
                                   occurred_at=datetime.now(UTC).isoformat()))
        assert ingest_jsonl(p, [line], origin="t").appended == 1
        seen.append(stamps(p, [pid])[0])
        assert stamps(p, [pid])[0] == seen[-1]  # nothing changed: the same stamp
        # a merge: both ids answer as one person, whose stamp is neither's alone; an unmerge parts them
        linking.link(p, ("email", PEOPLE[0]), ("email", PEOPLE[1]))
        joined = stamps(p, [pid, other])
        assert joined[0] == joined[1] and joined[0][0] in (pid, other)
        seen.append(joined[0])
        linking.unlink(p, ("email", PEOPLE[0]), ("email", PEOPLE[1]))
        parted = stamps(p, [pid, other])
        assert parted[0] != parted[1] and parted[0][0] == pid
        seen.append(parted[0])
        erase_profile(p, pid)
        assert stamps(p, [pid, other])[0] is None and stamps(p, [other]) == [parted[1]]
        assert len({orjson.dumps(s) for s in seen}) == len(seen), seen


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_remembered_stamps_are_read_again_after_any_write(tmp_path: Path, store: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache remembers stamps while the store is unchanged (SQLite: data_version and the
    connection's own writes), and reads them again after a write by another connection or by its own;
    where the backend has no cheap mark (PostgreSQL), every request reads them."""
    import persona.api.answers as answers_module

    reads: list[list[str]] = []

    def counted(persona: Persona, ids: list[str]) -> list[Any]:
        reads.append(list(ids))
        return stamps(persona, ids)

    monkeypatch.setattr(answers_module, "stamps", counted)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_schema()) if store == "postgresql" else None
        settings, _tokens, ids = prepare(tmp_path, url)
        pid, other = ids[PEOPLE[0]], ids[PEOPLE[1]]
        serving_side = stack.enter_context(Persona.open(settings))
        elsewhere = stack.enter_context(Persona.open(settings))  # another worker, the CLI
        cache = AnswerCache(b"k" * 32, max_bytes=1 << 20, ttl_s=60)
        first = cache.stamps(serving_side, [pid, other])
        assert first == stamps(serving_side, [pid, other]) and None not in first
        again = cache.stamps(serving_side, [pid])
        assert again == first[:1]
        remembered = store == "sqlite"
        assert len(reads) == (1 if remembered else 2)
        elsewhere.recorder.change_rfm([(pid, 5, 4, 3)], [])  # another connection's write
        moved = cache.stamps(serving_side, [pid])
        assert moved != first[:1] and moved == stamps(serving_side, [pid])
        serving_side.recorder.change_rfm([(pid, 1, 1, 1)], [])  # its own connection's write
        assert cache.stamps(serving_side, [pid]) == stamps(serving_side, [pid]) != moved
        erase_profile(elsewhere, other)
        assert cache.stamps(serving_side, [other, pid])[0] is None
        cache.clear()
        reads.clear()
        twice = cache.stamps(serving_side, [pid, pid])
        assert twice[0] == twice[1] is not None
        assert reads == [[pid]] if remembered else [[pid, pid]]  # remembered: an id asked twice read once


def test_the_cache_is_bounded_expires_and_matches_only_its_etags() -> None:
    cache = AnswerCache(b"k" * 32, max_bytes=10_000, ttl_s=60)
    for n in range(10):  # each charged its body, ETag, audit entry and overhead: about 1,840 bytes
        cache.put(bytes([n]), b"x" * 1_400, [("profile", f"p{n}", "id", "{}")])
    assert len(cache) == 5 and cache.get(bytes([4])) is None and cache.get(bytes([5])) is not None
    for n in range(100):  # made-up ids answered null are charged too: a flood of them stays bounded
        cache.put(b"null" + bytes([n]), b'{"data":{"profile":null}}', [])
    assert len(cache) < 25
    cache.put(b"big", b"x" * 2_500, [])  # over a quarter of the cache: answered, never kept
    assert cache.get(b"big") is None
    short = AnswerCache(b"k" * 32, max_bytes=10_000, ttl_s=0.05)
    short.put(b"a", b"x", [])
    time.sleep(0.1)
    short.drop_expired()
    assert len(short) == 0 and short.get(b"a") is None
    etag = cache.etag(b"\x00" * 18, b"{}")
    assert etag != cache.etag(b"\x00" * 18, b"{ }") != AnswerCache(b"j" * 32, 1, 1).etag(b"\x00" * 18, b"{ }")
    assert matches(etag, etag) and matches(f'W/{etag}', etag) and not matches("*", etag) and not matches(None, etag)
