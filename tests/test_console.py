"""The console's session and forms, without a browser: the sealed cookie against tampering,
expiry and other servers' keys; sign-in refusals; forms of the wrong kind or size; the audit of
sign-ins and refusals. (tests/test_console_browser.py drives the pages in a real browser.)"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest

from persona import Persona
from persona.audit import entries
from persona.console.session import CLOCK_SKEW_S, SESSION_S, Sessions
from persona.erasure import erase_profile
from persona.tokens import create_token, lookup_token, mint_token
from tests.api_world import LI, Api, World, check

ORIGIN = "http://testserver"


def test_a_sealed_cookie_opens_only_unaltered_under_its_own_key_within_its_lifetime() -> None:
    sessions, now = Sessions(b"k" * 32), time.time()
    cookie, made = sessions.seal("pst_secret-token", now)
    assert "pst_secret" not in cookie and "secret" not in base64.urlsafe_b64decode(cookie + "==").decode("latin-1")
    assert sessions.open(cookie, now) == made
    assert sessions.open(cookie, now + SESSION_S - 1) == made
    assert sessions.open(cookie, now + SESSION_S) is None  # expired, whatever the browser keeps
    assert sessions.open(cookie, now - CLOCK_SKEW_S - 1) is None  # made in the future: not ours
    assert Sessions(b"j" * 32).open(cookie, now) is None  # another server's key
    for i in range(0, len(cookie), 7):  # any character changed: refused, never an exception
        flipped = cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1:]
        assert sessions.open(flipped, now) is None
    for junk in ("", "x", "=" * 40, "!!!!", "a" * 10_000, cookie[:20]):
        assert sessions.open(junk, now) is None
    # two sign-ins of the same token are two sessions: their CSRF tokens differ
    other, second = sessions.seal("pst_secret-token", now)
    assert other != cookie and sessions.csrf(second) != sessions.csrf(made)
    assert sessions.csrf_ok(made, sessions.csrf(made))
    assert not sessions.csrf_ok(made, sessions.csrf(second))
    assert not sessions.csrf_ok(made, None) and not sessions.csrf_ok(made, "")


def _sign_in(api: Api, token: str, *, origin: str | None = ORIGIN) -> Any:
    headers = {"Origin": origin} if origin else {}
    return check(api.client.post("/console/sign-in", data={"token": token}, headers=headers, follow_redirects=False))


def test_sign_in_refuses_strangers_minted_tokens_and_other_origins_and_audits_them(api: Api, world: World) -> None:
    api.client.cookies.clear()
    assert _sign_in(api, "pst_" + "x" * 40).status_code == 401
    assert _sign_in(api, world.tokens["reader"], origin="https://evil.example").status_code == 403
    assert _sign_in(api, world.tokens["reader"], origin=None).status_code == 403
    with Persona.open(world.settings) as persona:
        minter = create_token(persona, "console-minter", frozenset({"tokens:mint", "profiles:read"}))
        found = lookup_token(persona, minter)
        assert found is not None
        minted = mint_token(persona, found, world.ids[LI]).token
    refused = _sign_in(api, minted)
    assert refused.status_code == 403 and "minted for one person" in refused.text
    assert "persona_console" not in refused.headers.get("set-cookie", "")
    ok = _sign_in(api, world.tokens["reader"])
    assert ok.status_code == 303 and ok.headers["location"] == "/console/people"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    api.client.post("/graphql", json={"query": "{ segments { name } }"})  # nothing: lets the flusher run
    time.sleep(0.6)
    with Persona.open(world.settings) as persona:
        found_entries = [e for e in entries(persona, limit=100_000) if e[3].startswith("console.signIn")]
    outcomes = {(e[2], e[6]) for e in found_entries}
    assert ("reader", "ok") in outcomes and ("-", "UNAUTHENTICATED") in outcomes
    assert any(e[6] == "FORBIDDEN" for e in found_entries)


def test_forms_of_the_wrong_kind_or_size_are_refused_before_anything_is_read(api: Api, world: World) -> None:
    api.client.cookies.clear()
    assert _sign_in(api, world.tokens["reader"]).status_code == 303
    page = check(api.client.get("/console/people"))
    assert page.status_code == 200
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    pid = world.ids[LI]
    as_json = api.client.post("/console/find", json={"csrf": csrf, "id": pid}, headers={"Origin": ORIGIN})
    assert check(as_json).status_code == 415
    huge = api.client.post("/console/find", content=b"csrf=" + csrf.encode() + b"&id=" + b"a" * (70 << 10),
                           headers={"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert check(huge).status_code == 413
    found = api.client.post("/console/find", data={"csrf": csrf, "id": pid}, headers={"Origin": ORIGIN},
                            follow_redirects=False)
    assert check(found).status_code == 303 and found.headers["location"] == f"/console/person/{pid}"
    bad_time = check(api.client.get(f"/console/person/{pid}?asOf=yesterday"))
    assert bad_time.status_code == 400 and "give a date" in bad_time.text
    unknown = check(api.client.get("/console/person/prf_" + "a" * 24))
    assert unknown.status_code == 404 and "No such person" in unknown.text and "prf_" + "a" * 24 in unknown.text


def test_a_page_without_a_session_sends_to_sign_in_and_a_stale_cookie_is_dropped(api: Api) -> None:
    api.client.cookies.clear()
    for path in ("/console/people", "/console/person/prf_x", "/console/person/prf_x/timeline"):
        answer = check(api.client.get(path, follow_redirects=False))
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    api.client.cookies.set("persona_console", "forged", path="/console")
    answer = check(api.client.get("/console/people", follow_redirects=False))
    assert answer.status_code == 303 and 'persona_console=""' in answer.headers["set-cookie"]
    posted = check(api.client.post("/console/person/prf_x/erase", data={"confirm": "prf_x"},
                                   headers={"Origin": ORIGIN}, follow_redirects=False))
    assert posted.status_code == 303  # no session: nothing done, sent to sign in


@pytest.mark.parametrize("path", ["/console/static/console.css", "/console/sign-in"])
def test_every_console_answer_carries_the_security_headers(api: Api, path: str) -> None:
    answer = check(api.client.get(path))
    assert answer.status_code == 200
    if path.endswith(".css"):
        assert answer.headers["content-type"].startswith("text/css")
        return
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"


def _csrf(page_text: str) -> str:
    return page_text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_what_is_not_a_profile_id_is_refused_never_linked_stored_or_echoed(api: Api, world: World) -> None:
    api.client.cookies.clear()
    assert _sign_in(api, world.tokens["reader"]).status_code == 303
    csrf = _csrf(api.client.get("/console/people").text)
    for typed in (LI, "+44 7700 900123", "prf_short", "../../graphql"):  # an identifier in the id box, junk
        answer = check(api.client.post("/console/find", data={"csrf": csrf, "id": typed}, headers={"Origin": ORIGIN},
                                       follow_redirects=False))
        assert answer.status_code == 400 and "location" not in answer.headers
        assert typed.lower() not in answer.text.lower() and "not a profile id" in answer.text
    for path in ("/console/person/li.weiexample.com", "/console/person/447700900123/timeline"):
        answer = check(api.client.get(path))
        assert answer.status_code == 404 and "li.wei" not in answer.text and "447700900123" not in answer.text
    for odd in ("0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"):  # out of range once in UTC: a 400
        answer = check(api.client.get(f"/console/person/{world.ids[LI]}", params={"asOf": odd}))
        assert answer.status_code == 400 and "out of range" in answer.text


def test_the_operations_page_and_api_take_only_a_profile_id_as_a_filter(api: Api, world: World) -> None:
    with Persona.open(world.settings) as persona:
        ops = create_token(persona, "console-ops", frozenset({"operations:read"}))
    api.client.cookies.clear()
    assert _sign_in(api, ops).status_code == 303
    assert check(api.client.get("/console/operations")).status_code == 200
    for profile in ("\x00", LI, "x" * 60_000):
        answer = check(api.client.get("/console/operations", params={"profile": profile}))
        assert answer.status_code == 400 and "a profile id" in answer.text
    for before in ("²", "-1", "1" * 12):
        assert check(api.client.get("/console/operations", params={"before": before})).status_code == 400
    error = api.error("query($p: ID) { operations { audit(profileId: $p) { seq } } }", {"p": "a\x00b"}, token=ops)
    assert "profileId: not a profile id" in error["message"]
    time.sleep(0.6)  # the audit flusher: nothing it holds was refused by the store
    with Persona.open(world.settings) as persona:
        stored = [e for e in entries(persona, limit=1_000_000) if e[2] == "console-ops"]
    assert stored and all(e[4] == "" or e[4].startswith("prf_") for e in stored)


def test_signing_out_ends_the_session_even_for_a_copied_cookie(api: Api, world: World) -> None:
    api.client.cookies.clear()
    assert _sign_in(api, world.tokens["reader"]).status_code == 303
    copied = api.client.cookies.get("persona_console", path="/console")
    csrf = _csrf(api.client.get("/console/people").text)
    out = check(api.client.post("/console/sign-out", data={"csrf": csrf}, headers={"Origin": ORIGIN},
                                follow_redirects=False))
    assert out.status_code == 303
    api.client.cookies.clear()
    api.client.cookies.set("persona_console", copied, path="/console")
    again = check(api.client.get("/console/people", follow_redirects=False))
    assert again.status_code == 303 and again.headers["location"] == "/console/sign-in"


def test_origins_must_match_scheme_and_host_and_only_failed_sign_ins_are_counted(api: Api, world: World,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    # the address's bucket refills 20 times a second: on a busy machine the last guess and the next
    # sign-in can be a refill apart, so this test's addresses get a full bucket whose clock stands still
    from persona.api.access import RateLimiter

    monkeypatch.setattr(api.client.app.state.api, "strangers", RateLimiter(clock=lambda: 1000.0))  # type: ignore[attr-defined]
    api.client.cookies.clear()
    for origin in ("https://testserver", "ftp://testserver", "testserver", "null", "http://testserver.evil"):
        assert _sign_in(api, world.tokens["reader"], origin=origin).status_code == 403
    for _ in range(60):  # more than the address's burst of failures: successes are never charged
        assert _sign_in(api, world.tokens["reader"]).status_code == 303
    codes = [_sign_in(api, "pst_" + "x" * 40).status_code for _ in range(60)]
    assert codes[0] == 401 and codes[-1] == 429  # guessing tokens is slowed down
    assert _sign_in(api, world.tokens["reader"]).status_code == 429  # until the bucket refills


def test_a_receipt_is_downloaded_only_if_signed_here_and_only_what_is_signed(api: Api, world: World) -> None:
    with Persona.open(world.settings) as persona:
        eraser = create_token(persona, "console-eraser", frozenset({"erasure:write"}))
        victim = persona.log.profile_for("email", "p100@crowd.example")
        assert victim is not None
        receipt = erase_profile(persona, victim).receipt
    api.client.cookies.clear()
    time.sleep(2.1)  # the address's sign-in bucket, emptied by the test before, refills
    assert _sign_in(api, eraser).status_code == 303
    csrf = _csrf(api.client.get("/console/people").text)
    sent = orjson.dumps(receipt | {"note": "<script>alert(1)</script>"}).decode()
    answer = check(api.client.post("/console/receipt", data={"csrf": csrf, "receipt": sent},
                                   headers={"Origin": ORIGIN}))
    assert answer.status_code == 200 and answer.headers["content-disposition"].startswith("attachment;")
    assert orjson.loads(answer.content) == receipt  # the extra key is not echoed
    forged = receipt | {"receipt": receipt["receipt"] | {"profile_id": "prf_" + "a" * 24}}
    refused = check(api.client.post("/console/receipt", data={"csrf": csrf, "receipt": orjson.dumps(forged).decode()},
                                    headers={"Origin": ORIGIN}))
    assert refused.status_code == 400 and "not a receipt this server signed" in refused.text
