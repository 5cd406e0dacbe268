"""Tokens minted for one person (issue 22, Deliver 6), through a real server: a shop's backend
holding `tokens:mint` mints a short-lived token for a visitor's page; the page reads that person's
profile and nothing else, the token expires, is audited, and dies with the person's erasure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from persona import Persona
from persona.tokens import create_token, lookup_token, mint_token
from tests.test_api_http import PEOPLE, Server, opened, receive, run, send, serving

MINT = "mutation($id: ID, $ttl: Int!, $scopes: [String!]) { mintToken(id: $id, ttlSeconds: $ttl, scopes: $scopes)" \
       " { token name profileId scopes expiresAt } }"
OWN = "query($id: ID) { profile(id: $id) { id featureValues { frequency } consent { purpose granted } liveSegments" \
      " { segment } segments predictions { model } } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("minted")) as running:
        with Persona.open(running.settings) as p:
            running.tokens["shop"] = create_token(p, "shop", frozenset({"tokens:mint", "profiles:read"}))
            running.tokens["bare-minter"] = create_token(p, "bare-minter", frozenset({"tokens:mint"}))
        yield running


def mint(server: Server, person: str, ttl: int = 900, scopes: list[str] | None = None,
         token: str = "shop") -> dict[str, Any]:
    body = server.post(MINT, {"id": server.ids[person], "ttl": ttl, "scopes": scopes}, token=token).json()
    assert "errors" not in body, body
    minted: dict[str, Any] = body["data"]["mintToken"]
    return minted


def test_a_minted_token_reads_its_person_and_no_one_else(server: Server) -> None:
    minted = mint(server, PEOPLE[0])
    assert minted["profileId"] == server.ids[PEOPLE[0]] and minted["scopes"] == ["profiles:read"]
    assert minted["name"].startswith("shop:") and minted["token"].startswith("pst_")
    left = datetime.fromisoformat(minted["expiresAt"]) - datetime.now(UTC)
    assert timedelta(seconds=850) < left <= timedelta(seconds=900)
    own = server.post(OWN.replace(" predictions { model }", ""), {"id": server.ids[PEOPLE[0]]},
                      token=minted["token"]).json()
    assert "errors" not in own and own["data"]["profile"]["id"] == server.ids[PEOPLE[0]]
    # anyone else: the same refusal whether they exist or not
    for other in (server.ids[PEOPLE[1]], "prf_doesnotexist000000000000"):
        body = server.post("query($id: ID) { profile(id: $id) { id } }", {"id": other}, token=minted["token"]).json()
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN" and body["data"]["profile"] is None
    by_subject = server.post('{ profile(subject: {namespace: "email", value: "maria.garcia@example.com"}) { id } }',
                             token=minted["token"]).json()
    assert by_subject["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # nothing but its profile: no listing, no population, no history, no writes, no minting
    for query in ("{ profiles { nodes { id } } }", '{ insights(groupBy: ["country"], epsilon: 1.0) { k } }',
                  "{ segments { name } }", "{ models { name } }"):
        response = server.post(query, token=minted["token"])
        assert response.status_code == 403, (query, response.text)
    history = server.post("query($id: ID) { profile(id: $id) { history { nodes { id } } } }",
                          {"id": server.ids[PEOPLE[0]]}, token=minted["token"])
    assert history.status_code == 403 and "history:read" in history.text
    again = server.post(MINT, {"id": server.ids[PEOPLE[0]], "ttl": 900, "scopes": None}, token=minted["token"])
    assert again.status_code == 403


def test_minting_is_bounded_by_what_the_minter_holds(server: Server) -> None:
    for scopes, ttl, said in ((["history:read"], 900, "may read only"), (["tokens:mint"], 900, "may read only"),
                              (["predictions:read"], 900, "lacks a scope"), (None, 59, "ttlSeconds"),
                              (None, 86_401, "ttlSeconds")):
        body = server.post(MINT, {"id": server.ids[PEOPLE[0]], "ttl": ttl, "scopes": scopes}, token="shop").json()
        assert said in body["errors"][0]["message"], (scopes, ttl, body)
    unknown = server.post(MINT, {"id": "prf_doesnotexist000000000000", "ttl": 900, "scopes": None},
                          token="shop").json()
    assert unknown["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert "lacks a scope" in server.post(MINT, {"id": server.ids[PEOPLE[0]], "ttl": 900, "scopes": None},
                                          token="bare-minter").json()["errors"][0]["message"]
    denied = server.post(MINT, {"id": server.ids[PEOPLE[0]], "ttl": 900, "scopes": None}, token="reader")
    assert denied.status_code == 403 and "tokens:mint" in denied.text


def test_a_minted_token_subscribes_to_its_person_only(server: Server) -> None:
    minted = mint(server, PEOPLE[3])
    subscription = "subscription($id: ID!) { profileUpdated(id: $id) { id } }"

    async def scenario(person: str) -> dict[str, Any]:
        ws = await opened(server, minted["token"])
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "m", "type": "subscribe", "payload": {"query": subscription,
                                                                          "variables": {"id": server.ids[person]}}})
            return await receive(ws, timeout=3)
        finally:
            await ws.close()

    refused = run(scenario(PEOPLE[1]))  # an error of the operation, sent as its result
    assert refused["type"] == "next" and refused["payload"]["data"] is None
    assert refused["payload"]["errors"][0]["message"] == "this token reads only the person it was minted for"
    with pytest.raises(TimeoutError):  # its own person: subscribed, waiting for news
        run(scenario(PEOPLE[3]))


def test_a_minted_token_expires_and_dies_with_its_persons_erasure(server: Server) -> None:
    with Persona.open(server.settings) as p:
        shop = lookup_token(p, server.tokens["shop"])
        assert shop is not None
        stale = mint_token(p, shop, server.ids[PEOPLE[1]], ttl_s=60, now=datetime.now(UTC) - timedelta(seconds=61))
        assert lookup_token(p, stale.token) is None
    assert server.post("{ __typename }", token=stale.token).status_code == 401
    minted = mint(server, PEOPLE[2])
    query = "query($id: ID) { profile(id: $id) { id } }"
    assert server.post(query, {"id": server.ids[PEOPLE[2]]}, token=minted["token"]).status_code == 200
    erased = server.post("mutation($id: ID!) { eraseProfile(id: $id) { deleted { name count } } }",
                         {"id": server.ids[PEOPLE[2]]}).json()["data"]["eraseProfile"]
    assert {d["name"]: d["count"] for d in erased["deleted"]}["tokens"] == 1  # revoked with the key
    deadline = time.monotonic() + 5
    while server.post(query, {"id": server.ids[PEOPLE[2]]}, token=minted["token"]).status_code != 401:
        assert time.monotonic() < deadline, "the minted token outlived its person"
        time.sleep(0.2)
    # every read it made is in the audit log under its own name, and the minting under the minter's
    with Persona.open(server.settings) as p:
        rows = p.recorder.audit_rows(limit=1_000_000)
    assert any(r[2] == minted["name"] and r[3] == "profile" and r[4] == server.ids[PEOPLE[2]] for r in rows)
    assert any(r[2] == "shop" and r[3] == "mintToken" and r[4] == server.ids[PEOPLE[2]] for r in rows)
    assert minted["token"] not in str(rows)


def test_minted_tokens_expired_a_day_ago_are_deleted_and_no_other(server: Server) -> None:
    from persona.tokens import MINTED_KEPT_S, list_tokens, prune_minted

    with Persona.open(server.settings) as p:
        shop = lookup_token(p, server.tokens["shop"])
        assert shop is not None
        long_ago = mint_token(p, shop, server.ids[PEOPLE[0]], ttl_s=60,
                              now=datetime.now(UTC) - timedelta(seconds=MINTED_KEPT_S + 120))
        lately = mint_token(p, shop, server.ids[PEOPLE[0]], ttl_s=60, now=datetime.now(UTC) - timedelta(hours=1))
        before = {t.name for t in list_tokens(p)}
        assert prune_minted(p) >= 1
        after = {t.name for t in list_tokens(p)}
        assert long_ago.name not in after and lately.name in after  # kept a day after it expired
        assert before - after == {t for t in before - after if ":" in t}  # only minted ones went
        assert {"shop", "bare-minter", "ops", "reader"} <= after
