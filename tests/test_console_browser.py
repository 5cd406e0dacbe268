"""The console in a real browser: `persona serve` in a subprocess, Playwright driving Debian's
chromium (`.ci/run` installs it; Playwright's own browser download is not used), axe-core run in
every page. Screenshots of each page go to build/screenshots/ (docs/console.md shows two).

What a person's data must never do is checked on every page: no raw identifier, token or
decrypted payload in a URL the browser visits, in the server's log, or (identifiers) in a page.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from persona import Persona
from persona.audit import entries
from persona.erasure import verify_receipt
from persona.ingest import ingest_jsonl
from persona.linking import link
from persona.memberships import add_segment
from persona.models import drift, registry, scoring
from persona.models.tasks import parse_task
from persona.models.train import train
from persona.tokens import SCOPES, create_token, revoke_token
from tests.api_world import IDENTIFIERS, LI, World, make_world
from tests.conftest import record
from tests.test_api_http import Server, served

playwright_api = pytest.importorskip("playwright.sync_api")
from axe_playwright_python.sync_playwright import Axe  # noqa: E402  (after the importorskip above)

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
ANN, BEN = "ann@example.com", "ben@example.com"  # two people, merged by hand: unlinked in a test
CARA = "cara@example.com"  # 30 page views: more than one page of the timeline
PAGE = 25  # events per page of the timeline (persona.console.pages.PAGE)
CONSOLE_TOKENS: dict[str, tuple[frozenset[str], dict[str, Any]]] = {
    "admin": (frozenset(SCOPES) - {"tokens:mint"}, {"types": frozenset({"identity_linked"})}),  # may unlink
    "viewer": (frozenset({"profiles:read"}), {}),
    "modeller": (frozenset({"predictions:read"}), {}),  # sees models, may not promote
    "private": (frozenset({"insights:read"}), {"epsilon_budget": 2.0}),  # the population through noise only
}


def chromium() -> str:
    found = os.environ.get("PERSONA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is needed for the console's browser tests (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): missing there is a failure, never a skip
        pytest.skip(message)
    return found


@dataclass
class Console:
    server: Server
    world: World
    browser: Any
    secrets: tuple[str, ...]  # what must never show in a URL or the server's log

    @property
    def url(self) -> str:
        return self.server.url + "/console"

    def page(self, token: str | None = "admin", *, viewport: dict[str, int] | None = None) -> Any:
        """A new browser context (its own cookies), signed in with this token unless None."""
        context = self.browser.new_context(viewport=viewport or DESKTOP)
        page = context.new_page()
        visited: list[str] = []
        page.on("framenavigated", lambda frame: visited.append(frame.url))
        page.visited = visited
        click = page.click

        def click_then_load(selector: str, **options: Any) -> None:
            # A click returns once the navigation it starts has committed, when the new document
            # may not have been parsed yet (page.content() is then ""): wait for it to load.
            click(selector, **options)
            page.wait_for_load_state("load")

        page.click = click_then_load
        if token is not None:
            page.goto(self.url + "/sign-in")
            page.fill("#token", self.server.tokens[token])
            page.click("button[type=submit]")
            assert page.url.endswith("/console/people"), page.url
        return page

    def check(self, page: Any, shot: str | None = None) -> str:
        """What every page must be: no raw identifier in it, no secret in any URL visited, no
        accessibility violation (axe-core); and, given a name, its screenshot."""
        page.wait_for_load_state("load")
        body = page.content().lower()
        leaked = [value for value in IDENTIFIERS if value.lower() in body]
        assert not leaked, f"raw identifier(s) {leaked} in the page {page.url}"
        for url in page.visited:
            assert not [s for s in self.secrets if s.lower() in url.lower()], f"a secret in the URL {url}"
        result = Axe().run(page)
        assert result.violations_count == 0, result.generate_report()
        if shot is not None:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        return body

    def audit_of(self, profile_id: str, writer: str) -> list[tuple[Any, ...]]:
        """The audit entries about this person by this token, once the server has written them."""
        deadline = time.monotonic() + 5
        with Persona.open(self.world.settings) as persona:
            while True:
                found = [e for e in entries(persona, profile_id=profile_id, limit=10_000) if e[2] == writer]
                if found or time.monotonic() > deadline:
                    return found
                time.sleep(0.1)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    executable = chromium()
    world = make_world(tmp_path_factory)
    with Persona.open(world.settings) as persona:
        orders = [record(who, "order_placed", {"order_id": f"o-{n}", "amount": "20.00", "currency": "EUR"},
                         event_id=f"m{n}", occurred_at=f"2026-02-0{n + 1}T10:00:00Z", source="shop")
                  for n, who in enumerate((ANN, BEN))]
        views = [record(CARA, event_id=f"v{n}", occurred_at=f"2026-03-{n + 1:02d}T10:00:00Z") for n in range(30)]
        report = ingest_jsonl(persona, [orjson.dumps(r) for r in (*orders, *views)], origin="console")
        assert report.appended == 32
        world.ids[CARA] = persona.log.profile_for("email", CARA) or ""
        add_segment(persona, "spenders", "monetary > 100", by="test")
        for _ in range(2):  # two versions of one model: one served, one to roll back to
            registry.save(persona, train(persona, parse_task("churn_91d")), promote=True)
        scoring.score_all(persona, "churn_91d")
        drift.measure(persona, registry.get(persona, "churn_91d"))  # the served version's drift, per feature
        linked = link(persona, ("email", ANN), ("email", BEN))
        assert linked.merged
        world.ids[ANN] = linked.person
        tokens = world.tokens | {name: create_token(persona, name, scopes, **options)
                                 for name, (scopes, options) in CONSOLE_TOKENS.items()}
    folder = tmp_path_factory.mktemp("console")
    with served(world.settings, folder, tokens, world.ids) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield Console(server, world, browser, (*IDENTIFIERS, *tokens.values()))
        finally:
            browser.close()
    logs = server.logs()
    for secret in (*IDENTIFIERS, *tokens.values()):
        assert secret not in logs, "a raw identifier or a token in the server's log"
    for payload in ("shop.example", "ORD-", "SKU-", "Shanghai"):  # values of decrypted events and attributes
        assert payload not in logs, "a decrypted value in the server's log"


def test_sign_in_refuses_a_wrong_token_then_signs_in_with_a_cookie_no_script_can_read(console: Console) -> None:
    page = console.page(None)
    page.goto(console.url + "/people")
    assert page.url.endswith("/console/sign-in")  # not signed in: sent to sign in
    page.fill("#token", "pst_not-a-token")
    page.click("button[type=submit]")
    assert "not a valid token" in page.text_content("[role=alert]")
    console.check(page, "sign-in")
    page.fill("#token", console.server.tokens["admin"])
    page.click("button[type=submit]")
    assert page.url.endswith("/console/people")
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        ("persona_console", True, "Strict", "/console")]
    assert console.server.tokens["admin"] not in cookies[0]["value"]  # sealed, not the token itself
    assert page.evaluate("document.cookie") == ""
    console.check(page, "people")


def test_find_a_person_by_identifier_never_puts_it_in_a_url_and_the_view_is_audited(console: Console) -> None:
    page = console.page()
    page.fill("#find-namespace", "email")
    page.fill("#find-value", LI)
    page.click("form:has(#find-value) button[type=submit]")
    pid = console.world.ids[LI]
    assert page.url.endswith(f"/console/person/{pid}")
    body = console.check(page, "person")
    assert pid in body
    for section in ("attributes", "behaviour", "activity", "segments", "consent", "identity"):
        assert page.locator(f"h2:text-is('{section.capitalize()}')").count() == 1, section
    assert page.locator("figure.chart svg rect.bar").count() > 0  # the activity charts drew bars
    assert page.locator("text=Where each came from").count() == 1  # provenance: history:read held
    assert "churn_91d v" in page.locator("section[aria-labelledby=pred-title]").text_content()
    assert console.audit_of(pid, "admin"), "the page view is not in the audit log"


def test_an_unknown_identifier_is_not_echoed_back(console: Console) -> None:
    page = console.page()
    page.fill("#find-namespace", "email")
    page.fill("#find-value", "nobody-at-all@example.org")
    page.click("form:has(#find-value) button[type=submit]")
    text = page.text_content("main")
    assert "No profile has that email identifier" in text
    assert "nobody-at-all" not in page.content()


def test_the_timeline_filters_by_type_pages_and_travels_in_time(console: Console) -> None:
    pid = console.world.ids[LI]
    page = console.page()
    page.goto(f"{console.url}/person/{pid}/timeline")
    events = page.locator("li.event")
    assert events.count() == 18  # Li Wei's whole history fits one page
    types = {t.strip() for t in page.locator("li.event .type").all_text_contents()}
    assert "order_placed" in types and len(types) > 1
    console.check(page, "timeline")
    page.fill("#types", "order_placed")
    page.click("form.filters button[type=submit]")
    assert {t.strip() for t in page.locator("li.event .type").all_text_contents()} == {"order_placed"}
    ordered = page.locator("li.event").count()
    # as of an instant between two of them: only the earlier ones
    times = sorted(page.locator("li.event time").evaluate_all("els => els.map(e => e.getAttribute('datetime'))"))
    assert len(times) >= 2
    page.fill("#asOf", times[0][:19])
    page.click("form.filters button[type=submit]")
    assert 1 <= page.locator("li.event").count() < ordered
    assert "as of" in page.text_content("h1")
    # the person page as of the same instant: features of then, no present-only parts
    page.goto(f"{console.url}/person/{pid}?asOf={times[0][:19]}")
    assert "as of" in page.text_content("h1")
    assert page.locator("h2:text-is('Predictions')").count() == 0
    console.check(page, "person-as-of")


def test_the_timeline_pages_through_a_long_history(console: Console) -> None:
    pid = console.world.ids[CARA]
    page = console.page()
    page.goto(f"{console.url}/person/{pid}/timeline")
    first = page.locator("li.event time").evaluate_all("els => els.map(e => e.getAttribute('datetime'))")
    assert len(first) == PAGE and first == sorted(first, reverse=True)  # newest first
    page.click("a[rel=next]")
    rest = page.locator("li.event time").evaluate_all("els => els.map(e => e.getAttribute('datetime'))")
    assert len(rest) == 30 - PAGE and max(rest) < min(first)  # the older ones, none twice
    assert page.locator("a[rel=next]").count() == 0
    page.click("text=Newest")
    assert page.locator("li.event").count() == PAGE


def test_unlink_undoes_a_merge_and_both_people_come_back(console: Console) -> None:
    person = console.world.ids[ANN]
    page = console.page()
    page.goto(f"{console.url}/person/{person}")
    assert page.locator("svg.graph circle.node").count() == 2  # the identity graph: two profiles, merged
    console.check(page, "person-merged")
    page.fill("#a_namespace", "email")
    page.fill("#a_value", ANN)
    page.fill("#b_namespace", "email")
    page.fill("#b_value", BEN)
    page.click("form.unlink button[type=submit]")
    assert "Unlinked" in page.text_content("h1"), page.text_content("main")
    people = page.locator("main li a").all_text_contents()
    assert len(people) == 2
    console.check(page, "unlinked")
    page.goto(f"{console.url}/person/{person}")
    assert page.locator("svg.graph").count() == 1  # still drawn: the merge, now undone (dashed)
    assert page.locator("line.edge.undone").count() == 1


def test_erase_asks_for_confirmation_signs_a_receipt_and_the_person_is_gone(console: Console, tmp_path: Path) -> None:
    victim = console.world.ids["p001@crowd.example"]
    page = console.page()
    page.goto(f"{console.url}/person/{victim}")
    page.click("a.danger")
    assert "cannot be undone" in page.text_content("main")
    console.check(page, "erase")
    page.fill("#confirm", "not-the-id")
    page.click("button.danger")
    assert "Type the profile id exactly" in page.text_content("[role=alert]")
    page.goto(f"{console.url}/person/{victim}")
    assert page.locator("h1").text_content().startswith("Person")  # nothing was erased
    page.click("a.danger")
    page.fill("#confirm", victim)
    page.click("button.danger")
    assert "Erased" in page.text_content("h1")
    console.check(page, "receipt")
    with page.expect_download() as download:
        page.click("text=Download the signed receipt")
    saved = tmp_path / "receipt.json"
    download.value.save_as(saved)
    with Persona.open(console.world.settings) as persona:
        body = verify_receipt(orjson.loads(saved.read_bytes()), persona.keyring.public_key)
    assert body["profile_id"] == victim
    page.goto(f"{console.url}/person/{victim}")
    assert "No such person" in page.text_content("h1")


def test_a_token_without_the_scopes_sees_less_and_is_refused_the_rest(console: Console) -> None:
    pid = console.world.ids[LI]
    page = console.page("viewer")
    page.goto(f"{console.url}/person/{pid}")
    text = page.text_content("main")
    assert "Needs the scope history:read" in text and "Needs the scope predictions:read" in text
    assert page.locator("text=Where each came from").count() == 0
    assert page.locator("a.danger").count() == 0 and page.locator("form.unlink").count() == 0
    console.check(page, "person-viewer")
    response = page.goto(f"{console.url}/person/{pid}/timeline")
    assert response.status == 403 and "history:read" in page.text_content("main")
    response = page.goto(f"{console.url}/person/{pid}/erase")
    assert response.status == 403 and "erasure:write" in page.text_content("main")
    # a form of this session, sent by hand to an action the token may not take: refused by scope
    page.goto(f"{console.url}/people")
    csrf = page.get_attribute("input[name=csrf]", "value")
    answer = page.request.post(f"{console.url}/person/{pid}/erase", form={"csrf": csrf, "confirm": pid},
                               headers={"Origin": console.server.url})
    assert answer.status == 403 and "erasure:write" in answer.text()
    with Persona.open(console.world.settings) as persona:
        assert persona.log.profile_for("email", LI) == pid  # still there
    # unlinking by hand, with this session's form token: refused for want of events:write
    person = console.world.ids[ANN]
    answer = page.request.post(f"{console.url}/person/{person}/unlink", form={
        "csrf": csrf, "a_namespace": "email", "a_value": ANN, "b_namespace": "email", "b_value": BEN},
        headers={"Origin": console.server.url})
    assert answer.status == 403 and "events:write" in answer.text() and ANN not in answer.text()
    # a token that cannot read profiles finds no one, lists no one, sees no person
    blind = console.page("modeller")
    assert "Needs the scope profiles:read" in blind.text_content("main")
    blind.fill("#find-namespace", "email")
    blind.fill("#find-value", LI)
    blind.click("form:has(#find-value) button[type=submit]")
    assert "profiles:read" in blind.text_content("main") and "/person/" not in blind.url
    response = blind.goto(f"{console.url}/person/{pid}")
    assert response.status == 403 and "profiles:read" in blind.text_content("main")
    response = blind.goto(f"{console.url}/person/{pid}?asOf=2026-01-01")  # time travel: refused the same
    assert response.status == 403


def test_forms_from_elsewhere_and_forged_sessions_are_refused(console: Console) -> None:
    pid = console.world.ids[LI]
    page = console.page()
    csrf = page.get_attribute("input[name=csrf]", "value")
    # another origin's page posting with the browser's cookie: refused on its Origin
    answer = page.request.post(f"{console.url}/person/{pid}/erase", form={"csrf": csrf, "confirm": pid},
                               headers={"Origin": "https://evil.example"})
    assert answer.status == 403
    # the right origin without this session's CSRF token: refused
    answer = page.request.post(f"{console.url}/person/{pid}/erase", form={"csrf": "0" * 64, "confirm": pid},
                               headers={"Origin": console.server.url})
    assert answer.status == 403 and "expired" in answer.text()
    # a CSRF token of another session is worth nothing in this one
    other = console.page().get_attribute("input[name=csrf]", "value")
    assert other != csrf
    answer = page.request.post(f"{console.url}/person/{pid}/erase", form={"csrf": other, "confirm": pid},
                               headers={"Origin": console.server.url})
    assert answer.status == 403
    # a tampered cookie signs nobody in
    cookie = page.context.cookies()[0]
    flipped = cookie["value"][:-2] + ("A" if cookie["value"][-2] != "A" else "B") + cookie["value"][-1]
    page.context.add_cookies([cookie | {"value": flipped}])
    page.goto(f"{console.url}/person/{pid}")
    assert page.url.endswith("/console/sign-in")
    with Persona.open(console.world.settings) as persona:
        assert persona.log.profile_for("email", LI) == pid


def test_the_page_runs_no_script_an_injection_could_add(console: Console) -> None:
    page = console.page()
    response = page.goto(f"{console.url}/person/{console.world.ids[LI]}")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "unsafe" not in policy
    assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
    page.evaluate("""() => { window.ran = false;
        document.body.insertAdjacentHTML('beforeend', '<img src="/x" onerror="window.ran = true">');
        const s = document.createElement('script'); s.textContent = 'window.ran = true'; document.body.append(s); }""")
    page.wait_for_timeout(300)
    assert page.evaluate("window.ran") is False


def test_pages_fit_a_phone(console: Console) -> None:
    pid = console.world.ids[LI]
    page = console.page(viewport=PHONE)
    for path, shot in ((f"/person/{pid}", "person-phone"), (f"/person/{pid}/timeline", "timeline-phone"),
                       ("/people", "people-phone"), ("/population", "population-phone"),
                       ("/models", "models-phone"), ("/operations", "operations-phone")):
        page.goto(console.url + path)
        width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1], f"{path} is wider than a phone: {width}"
        console.check(page, shot)


def test_revoking_the_token_ends_its_sessions_and_signing_out_ends_this_one(console: Console) -> None:
    with Persona.open(console.world.settings) as persona:
        doomed = create_token(persona, "console-doomed", frozenset({"profiles:read"}))
    console.server.tokens["console-doomed"] = doomed
    page, other = console.page("console-doomed"), console.page("console-doomed")
    page.click("text=Sign out")
    assert page.url.endswith("/console/sign-in")
    page.goto(console.url + "/people")
    assert page.url.endswith("/console/sign-in")
    with Persona.open(console.world.settings) as persona:
        revoke_token(persona, "console-doomed")
    deadline = time.monotonic() + 10  # the server's token cache forgets within its TTL
    while True:
        other.goto(console.url + "/people")
        if other.url.endswith("/console/sign-in") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert other.url.endswith("/console/sign-in")


def test_the_population_page_draws_the_funnel_distributions_rfm_grid_and_segments(console: Console) -> None:
    page = console.page()
    page.click("nav >> text=Population")
    assert page.url.endswith("/console/population")
    body = console.check(page, "population")
    assert "spenders" in body and "monetary &gt; 100" in body
    assert page.locator("h3:text-is('Lifecycle funnel') + figure rect.bar").count() == 4  # the four stages
    assert page.locator("table.heat td").count() == 25  # R × F
    assert page.locator("table.heat td:not(:empty)").count() >= 1
    assert "k-anonymous" in body
    section = page.locator("section[aria-labelledby=stage-title]")
    drawn = section.locator("h3:text-is('Distribution of monetary') + div.grid figure.chart").count()
    assert (drawn > 0) != ("Not shown: some tenth of the range" in section.text_content())  # one or the other
    page.select_option("#metric", "frequency")
    page.click("form.inline button[type=submit]")
    assert "metric=frequency" in page.url and "Mean frequency per stage" in page.text_content("main")
    assert page.locator("figure.chart").count() >= 6  # segments, funnel, means, a histogram per stage
    console.check(page)


def test_a_token_with_noisy_insights_only_spends_its_budget_on_request(console: Console) -> None:
    page = console.page("private")
    page.goto(console.url + "/population")
    text = page.text_content("main")
    assert "spends ε" in text and "Needs the scope insights:exact" in text
    assert page.locator("h3:text-is('Lifecycle funnel')").count() == 0  # nothing computed, nothing spent
    console.check(page, "population-private")
    page.fill("#epsilon", "0.5")
    page.click("form.inline button[type=submit]")
    assert "Differentially private: ε 0.5" in page.text_content("main")
    assert "1.5 left" in page.text_content("main")
    page.fill("#epsilon", "9")  # more than the form allows: refused by the server too
    page.evaluate("document.querySelector('#epsilon').removeAttribute('max')")
    page.click("form.inline button[type=submit]")
    assert "from 0.01 to 5" in page.text_content("main")


def test_models_show_metrics_beside_baselines_and_drift_and_roll_back_for_a_writer(console: Console) -> None:
    page = console.page()
    page.click("nav >> text=Models")
    body = console.check(page, "models")
    assert "churn_91d" in body and "promoted" in body
    assert page.locator("th:text-is('this model')").count() == 2  # one table per version
    assert page.locator("text=Drift per feature (PSI) of churn_91d v2").count() >= 1  # the served one's, charted
    assert page.locator("figure.chart svg rect.bar").count() >= 1
    page.click("text=Roll back to the previous version")
    assert "is rolled back" in page.text_content("[role=status]")
    assert "rolled_back" in page.text_content("main")
    page.click("text=Promote v2")  # serve the newer one again: a rolled-back version is promoted by hand
    assert "v2 is served now" in page.text_content("[role=status]")
    reader = console.page("modeller")
    reader.goto(console.url + "/models")
    assert reader.locator("button", has_text="Roll back").count() == 0
    assert reader.locator("button", has_text="Promote").count() == 0
    csrf = reader.get_attribute("input[name=csrf]", "value")
    forged = reader.request.post(console.url + "/models/rollback", form={"csrf": csrf, "name": "churn_91d"},
                                 headers={"Origin": console.server.url})
    assert forged.status == 403 and "models:write" in forged.text()
    viewer = console.page("viewer")
    response = viewer.goto(console.url + "/models")
    assert response.status == 403 and "predictions:read" in viewer.text_content("main")


def test_operations_show_ingest_runs_the_quarantine_and_the_audit_log_but_never_sealed_content(
        console: Console) -> None:
    with httpx.Client(base_url=console.server.url, trust_env=False) as http:  # an ingest through the API
        sent = [{"source": "web", "type": "page_viewed", "occurredAt": when, "eventId": f"ops-{n}",
                 "subject": {"namespace": "email", "value": CARA}, "data": {"url": "https://shop.example/"}}
                for n, when in enumerate(("2026-03-30T10:00:00Z", "the day after tomorrow"))]
        answer = http.post("/graphql", json={"query": "mutation($e: [EventInput!]!) { ingestEvents(events: $e)"
                                                      " { appended quarantined } }", "variables": {"e": sent}},
                           headers={"Authorization": f"Bearer {console.server.tokens['writer']}"})
        assert answer.json()["data"]["ingestEvents"] == {"appended": 1, "quarantined": 1}
    time.sleep(0.6)  # the server writes its audit entries every AUDIT_FLUSH_S
    page = console.page()
    page.click("nav >> text=Operations")
    body = console.check(page, "operations")
    runs = page.locator("section[aria-labelledby=runs-title] tbody tr")
    assert runs.count() >= 1 and "writer" in runs.first.text_content()
    quarantine = page.locator("section[aria-labelledby=q-title]").text_content()
    assert "api:writer" in quarantine and "occurred_at" in quarantine
    assert "day after tomorrow" not in body  # the quarantined record's content stays sealed
    assert page.locator("section[aria-labelledby=a-title] tbody tr").count() == 50  # a page of the audit log
    page.click("text=Older entries")
    assert "before=" in page.url
    pid = console.world.ids[LI]
    page.fill("#profile", pid)
    page.click("section[aria-labelledby=a-title] button[type=submit]")
    whose = page.locator("section[aria-labelledby=a-title] tbody td:nth-child(5)").all_text_contents()
    assert whose and {w.strip() for w in whose} == {pid[:12]}
    viewer = console.page("viewer")
    response = viewer.goto(console.url + "/operations")
    assert response.status == 403 and "operations:read" in viewer.text_content("main")


def test_a_prediction_shows_the_features_that_moved_it_as_bars(console: Console) -> None:
    query = "{ profiles(first: 100) { nodes { id predictions { model contributions { feature effect } } } } }"
    with httpx.Client(base_url=console.server.url, trust_env=False) as http:
        nodes = http.post("/graphql", json={"query": query}, headers={
            "Authorization": f"Bearer {console.server.tokens['admin']}"}).json()["data"]["profiles"]["nodes"]
    explained = [(n["id"], p["contributions"]) for n in nodes for p in n["predictions"] if p["contributions"]]
    assert explained, "no prediction with contributions among 100 people"
    pid, contributions = explained[0]
    page = console.page()
    page.goto(f"{console.url}/person/{pid}")
    section = page.locator("section[aria-labelledby=pred-title]")
    bars = section.locator("figure.chart rect.bar")
    assert bars.count() == len(contributions)  # one bar per feature that moved it
    titles = section.locator("figure.chart rect.bar title").all_text_contents()
    assert [t.split(":")[0] for t in titles] == [c["feature"] for c in contributions]
    negative = sum(1 for c in contributions if c["effect"] < 0)
    assert section.locator("rect.bar.negative").count() == negative  # lowered it: drawn the other way
