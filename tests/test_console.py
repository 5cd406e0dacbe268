"""The console's session and forms, without a browser: the sealed cookie against tampering,
expiry and other servers' keys; sign-in refusals; forms of the wrong kind or size; the audit of
sign-ins and refusals. (tests/test_console_browser.py drives the pages in a real browser.)"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from persona import Persona
from persona.audit import entries
from persona.console.session import CLOCK_SKEW_S, SESSION_S, Sessions
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
    # an id that tries to leave the console's paths stays one path segment
    odd = api.client.post("/console/find", data={"csrf": csrf, "id": "../../graphql?x=1"},
                          headers={"Origin": ORIGIN}, follow_redirects=False)
    assert odd.headers["location"].startswith("/console/person/") and "/" not in odd.headers["location"][16:]
    bad_time = check(api.client.get(f"/console/person/{pid}?asOf=yesterday"))
    assert bad_time.status_code == 400 and "give a date" in bad_time.text
    unknown = check(api.client.get("/console/person/prf_nobody"))
    assert unknown.status_code == 404 and "No such person" in unknown.text


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
