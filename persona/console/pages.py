"""The console's pages: Starlette endpoints rendering Jinja templates from what the GraphQL
schema answers the signed-in token (persona.console.client).

Every page is plain HTML and CSS: no script runs in it, so the Content-Security-Policy allows
none. Reads are GETs whose URLs carry only pseudonymous profile ids, filters and cursors; an
identifier travels only in a POST body, is hashed by the API as any request's would be, and is
never echoed back, logged or put in a URL. Each action is a POST with the session's CSRF token
and the console's own Origin.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from persona.api.context import ApiState
from persona.api.errors import fault
from persona.audit import NO_TOKEN
from persona.console import charts, documents
from persona.console.client import Answer, Problem, ask
from persona.console.session import COOKIE, SESSION_S, Session, Sessions
from persona.erasure import verify_receipt
from persona.errors import ReceiptError
from persona.eventlog import is_profile_id
from persona.insights import BOUNDS
from persona.tokens import SCOPES, Token

PREFIX = "/console"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 << 10
_DIGITS = re.compile(r"[0-9]{1,9}")  # a receipt is the largest thing a form sends back (a few kB)
PAGE = 25  # people and events per page
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
       " base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # a POST's Origin is sent (no-referrer makes it "null")
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
STAGE_ORDER = ("new", "active", "at_risk", "churned")
METRICS = tuple(BOUNDS)  # the features insights may measure (persona.insights.BOUNDS)
NAMESPACES = ("email", "phone", "device", "<source>_user")


class Refusal(Exception):
    """A request the console answers with a page of its own (an error page, or a redirect)."""

    def __init__(self, response: Response) -> None:
        self.response = response


class Unfit(Exception):
    """A request refused before anything is read: its form or its origin (a status and why)."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


@dataclass
class Visit:
    """A signed-in request: the server's state, the token and the session it came with."""

    request: Request
    state: ApiState
    token: Token
    session: Session
    csrf: str

    def may(self, scope: str) -> bool:
        return scope in self.token.scopes

    @property
    def may_link(self) -> bool:
        """Link and unlink identifiers: events:write with identity_linked granted by name (as the API asks)."""
        return self.may("events:write") and self.may("profiles:read") and self.token.grants("identity_linked")


Handler = Callable[[Visit], Awaitable[Response]]


class Console:
    """The pages, their templates and the session keys (made when the server's state is)."""

    def __init__(self) -> None:
        self.env = Environment(loader=PackageLoader("persona.console", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["when"] = _when
        self.env.filters["number"] = _number
        self.env.filters["short"] = lambda text: str(text)[:12]
        self.env.filters["eps"] = lambda value: "—" if value is None else f"{float(value):.4g}"
        self._sessions: Sessions | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Mount(PREFIX, routes=[
                Route("/", self.home, methods=["GET"]),
                Route("/sign-in", self.sign_in_page, methods=["GET"]),
                Route("/sign-in", self.sign_in, methods=["POST"]),
                Route("/sign-out", self.signed_in(self.sign_out, action=True), methods=["POST"]),
                Route("/people", self.signed_in(self.people), methods=["GET"]),
                Route("/find", self.signed_in(self.find, action=True), methods=["POST"]),
                Route("/person/{pid}", self.signed_in(self.person), methods=["GET"]),
                Route("/person/{pid}/timeline", self.signed_in(self.timeline), methods=["GET"]),
                Route("/person/{pid}/unlink", self.signed_in(self.unlink, action=True), methods=["POST"]),
                Route("/person/{pid}/erase", self.signed_in(self.erase_page), methods=["GET"]),
                Route("/person/{pid}/erase", self.signed_in(self.erase, action=True), methods=["POST"]),
                Route("/receipt", self.signed_in(self.receipt, action=True), methods=["POST"]),
                Route("/operations", self.signed_in(self.operations), methods=["GET"]),
                Route("/models", self.signed_in(self.models), methods=["GET"]),
                Route("/models/promote", self.signed_in(self.promote, action=True), methods=["POST"]),
                Route("/models/rollback", self.signed_in(self.rollback, action=True), methods=["POST"]),
                Route("/population", self.signed_in(self.population), methods=["GET"]),
                Route("/population", self.signed_in(self.population, action=True), methods=["POST"]),
                Mount("/static", StaticFiles(packages=[("persona.console", "static")]), name="static"),
            ]),
        ]

    # -- plumbing ------------------------------------------------------------------------------
    def sessions(self, state: ApiState) -> Sessions:
        if self._sessions is None:
            self._sessions = Sessions(state.persona.keyring.derived("console-session"))
        return self._sessions

    def render(self, name: str, status: int = 200, visit: Visit | None = None, **values: Any) -> Response:
        values.setdefault("title", "persona")
        page = self.env.get_template(name).render(visit=visit, prefix=PREFIX, scopes=SCOPES, **values)
        return HTMLResponse(page, status, headers=HEADERS)

    def problem(self, visit: Visit | None, status: int, message: str, *, missing: tuple[str, ...] = ()) -> Response:
        return self.render("problem.html", status, visit, title="persona — " + ("not allowed" if missing else
                                                                                 "problem"),
                           message=message, missing=missing)

    def whole(self, visit: Visit, answer: Answer) -> dict[str, Any]:
        """The answer's data; for an answer refused or failed as a whole, Refusal with its page."""
        if answer.refused:
            raise Refusal(self.problem(visit, 403, "Your token does not allow this page.", missing=answer.missing))
        code = answer.code()
        if answer.data is None or (code is not None and all(v is None for v in answer.data.values())):
            status = {"NOT_FOUND": 404, "RATE_LIMITED": 429, "FORBIDDEN": 403, "BAD_REQUEST": 400,
                      "UNAVAILABLE": 503, "BUSY": 503}.get(code or "", 500)
            raise Refusal(self.problem(visit, status, answer.problems[0].message if answer.problems
                                       else "no answer"))
        return answer.data

    async def answered(self, visit: Visit, document: str, variables: dict[str, Any] | None = None
                       ) -> tuple[dict[str, Any], list[Problem]]:
        """Ask a document as the signed-in token: its data and the problems of the parts that failed."""
        answer = await ask(visit.state, visit.token, document, variables)
        return self.whole(visit, answer), answer.problems

    def signed_in(self, handler: Handler, *, action: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                visit = self._visit(request)
                pid = request.path_params.get("pid")
                if pid is not None and not is_profile_id(pid):
                    raise Refusal(self.render("gone.html", 404, visit, title="persona — no such person", pid=None))
                if action:
                    _same_origin(request)
                    form = await _form(request)
                    if not self.sessions(visit.state).csrf_ok(visit.session, form.get("csrf")):
                        visit.state.audit.refuse(visit.token.name, "console", "FORBIDDEN", {"csrf": True})
                        raise Refusal(self.problem(visit, 403, "This form has expired or did not come from this"
                                                               " console: reload the page and try again."))
                    request.state.form = form
                return await handler(visit)
            except Refusal as refusal:
                return refusal.response
            except Unfit as unfit:
                return self.problem(None, unfit.status, unfit.message)
            except Exception as e:  # a fault of ours: the page says so, the log names its class and place only
                reference = fault(e, "console")
                return self.problem(None, 500, f"Something went wrong on the server (reference {reference}).")
        return endpoint

    def _visit(self, request: Request) -> Visit:
        state: ApiState = request.app.state.api
        sessions = self.sessions(state)
        session = sessions.open(request.cookies.get(COOKIE), time.time())
        token = state.tokens.lookup(session.token) if session is not None else None
        if session is None or token is None or token.subject:
            if request.cookies.get(COOKIE):
                state.audit.refuse(NO_TOKEN, "console", "UNAUTHENTICATED")
            response = RedirectResponse(f"{PREFIX}/sign-in", 303, headers=HEADERS)
            response.delete_cookie(COOKIE, path=PREFIX)
            raise Refusal(response)
        visit = Visit(request, state, token, session, sessions.csrf(session))
        wait = state.limiter.allow(token.name, token.rate_per_s)
        if wait:
            state.audit.refuse(token.name, "console", "RATE_LIMITED")
            raise Refusal(self.problem(visit, 429, "Too many requests for this token; wait a moment."))
        return visit

    # -- signing in and out ----------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/people", 303, headers=HEADERS)

    async def sign_in_page(self, request: Request) -> Response:
        return self.render("sign_in.html", title="persona — sign in")

    async def sign_in(self, request: Request) -> Response:
        state: ApiState = request.app.state.api
        try:
            _same_origin(request)
            form = await _form(request)
        except Unfit as unfit:
            return self.problem(None, unfit.status, unfit.message)
        client = request.client.host if request.client else "?"
        rate = state.options.unauthenticated_rate
        if state.strangers.exhausted(client, rate):  # guessing tokens: not even looked up
            state.audit.refuse(NO_TOKEN, "console.signIn", "RATE_LIMITED")
            return self.render("sign_in.html", 429, title="persona — sign in",
                               error="Too many failed attempts from this address; wait a moment.")
        raw = form.get("token", "").strip()
        token = state.tokens.lookup(raw) if raw else None
        if token is None:
            state.strangers.allow(client, rate)  # only a failed attempt is charged to the address
            state.audit.refuse(NO_TOKEN, "console.signIn", "UNAUTHENTICATED")
            return self.render("sign_in.html", 401, title="persona — sign in",
                               error="That is not a valid token (create one with `persona tokens create`).")
        if token.subject:
            state.audit.refuse(token.name, "console.signIn", "FORBIDDEN", {"bound": True})
            return self.render("sign_in.html", 403, title="persona — sign in",
                               error="A token minted for one person's own page cannot sign in to the console.")
        cookie, _ = self.sessions(state).seal(raw, time.time())
        state.audit.record(token.name, "console.signIn", "")
        response = RedirectResponse(f"{PREFIX}/people", 303, headers=HEADERS)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_S, path=PREFIX, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def sign_out(self, visit: Visit) -> Response:
        self.sessions(visit.state).end(visit.session, time.time())
        response = RedirectResponse(f"{PREFIX}/sign-in", 303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # -- people ------------------------------------------------------------------------------------
    async def people(self, visit: Visit) -> Response:
        after = _cursor(visit.request.query_params.get("after"))
        answer = await ask(visit.state, visit.token, documents.PEOPLE, {"first": PAGE, "after": after})
        if answer.refused:
            return self.render("people.html", visit=visit, title="persona — people", people=None,
                               missing=answer.missing, namespaces=NAMESPACES)
        found = self.whole(visit, answer)["profiles"]
        return self.render("people.html", visit=visit, title="persona — people", people=found,
                           namespaces=NAMESPACES, next_page=_link(f"{PREFIX}/people", after=found["pageInfo"][
                               "endCursor"]) if found["pageInfo"]["hasNextPage"] else None)

    async def find(self, visit: Visit) -> Response:
        form: dict[str, str] = visit.request.state.form
        profile_id = form.get("id", "").strip()
        if profile_id:
            if not is_profile_id(profile_id):  # an identifier typed in the wrong box: never put in a URL
                return self.problem(visit, 400, "That is not a profile id (prf_ and 24 letters and digits); to find"
                                                " someone by an identifier, use the identifier's box.")
            return RedirectResponse(f"{PREFIX}/person/{profile_id}", 303, headers=HEADERS)
        namespace, value = form.get("namespace", "").strip(), form.get("value", "")
        if not namespace or not value.strip():
            return self.problem(visit, 400, "Give a profile id, or an identifier's namespace and value.")
        data, _ = await self.answered(visit, documents.FIND, {"subject": {"namespace": namespace, "value": value}})
        if data["profile"] is None:
            return self.problem(visit, 404, f"No profile has that {namespace} identifier (or it was erased).")
        return RedirectResponse(f"{PREFIX}/person/{data['profile']['id']}", 303, headers=HEADERS)

    async def person(self, visit: Visit) -> Response:
        pid = visit.request.path_params["pid"]
        as_of = _instant(visit.request.query_params.get("asOf"), "as of")
        if isinstance(as_of, _Bad):
            return self.problem(visit, 400, as_of.message)
        document = documents.person(visit.token.scopes, as_of=as_of is not None)
        data, problems = await self.answered(visit, document, {"id": pid, "asOf": as_of})
        profile = data["profile"]
        if profile is None:
            return self.render("gone.html", 404, visit, title="persona — no such person", pid=pid)
        features = profile["featureValues"]
        return self.render(
            "person.html", visit=visit, title=f"persona — person {pid[:12]}", p=profile, pid=pid, as_of=as_of,
            problems=problems, attributes=_attributes(profile["attributeValues"]),
            features=_features(features),
            hours=charts.columns(features["hourOfDay"], [str(h) for h in range(24)], label_every=3,
                                 summary="Events by hour of the day (UTC)"),
            weekdays=charts.columns(features["dayOfWeek"], list(DAYS), summary="Events by day of the week"),
            affinity=charts.rows([c["score"] for c in features["categoryAffinity"]],
                                 [c["category"] for c in features["categoryAffinity"]],
                                 summary="Affinity to each category") if features["categoryAffinity"] else None,
            predictions=[(p, charts.rows([c["effect"] for c in p["contributions"]],
                                         [c["feature"] for c in p["contributions"]],
                                         summary=f"What moved {p['model']}'s prediction"))
                         for p in profile.get("predictions") or ()],
            graph=_graph(profile), namespaces=NAMESPACES)

    async def timeline(self, visit: Visit) -> Response:
        pid, params = visit.request.path_params["pid"], visit.request.query_params
        times: dict[str, str | None] = {}
        for key, name in (("asOf", "as of"), ("since", "since"), ("until", "until")):
            found = _instant(params.get(key), name)
            if isinstance(found, _Bad):
                return self.problem(visit, 400, found.message)
            times[key] = found
        as_of, since, until = times["asOf"], times["since"], times["until"]
        types = [t for t in (params.get("types") or "").replace(",", " ").split() if t][:20]
        after = _cursor(params.get("after"))
        data, problems = await self.answered(visit, documents.TIMELINE, {
            "id": pid, "asOf": as_of, "first": PAGE, "after": after, "types": types or None, "since": since,
            "until": until})
        profile = data["profile"]
        if profile is None:
            return self.render("gone.html", 404, visit, title="persona — no such person", pid=pid)
        if profile.get("history") is None:
            return self.problem(visit, 400, problems[0].message if problems else "no history")
        history = profile["history"]
        kept = {"asOf": as_of, "since": since, "until": until, "types": " ".join(types) or None}
        next_page = (_link(f"{PREFIX}/person/{pid}/timeline", **kept, after=history["pageInfo"]["endCursor"])
                     if history["pageInfo"]["hasNextPage"] else None)
        return self.render("timeline.html", visit=visit, title=f"persona — timeline of {pid[:12]}", p=profile,
                           pid=pid, events=[_event(e["node"]) for e in history["edges"]], filters=kept,
                           next_page=next_page, first_page=after is not None)

    # -- actions -----------------------------------------------------------------------------------
    async def unlink(self, visit: Visit) -> Response:
        form: dict[str, str] = visit.request.state.form
        pid = visit.request.path_params["pid"]
        subjects = []
        for side in ("a", "b"):
            namespace, value = form.get(f"{side}_namespace", "").strip(), form.get(f"{side}_value", "")
            if not namespace or not value.strip():
                return self.problem(visit, 400, "Give both identifiers: a namespace and a value each.")
            subjects.append({"namespace": namespace, "value": value})
        data, _ = await self.answered(visit, documents.UNLINK, {"a": subjects[0], "b": subjects[1]})
        return self.render("unlinked.html", visit=visit, title="persona — unlinked", pid=pid,
                           people=data["unlinkIdentities"])

    async def erase_page(self, visit: Visit) -> Response:
        pid = visit.request.path_params["pid"]
        if not visit.may("erasure:write"):
            return self.problem(visit, 403, "Your token does not allow erasing people.", missing=("erasure:write",))
        return self.render("erase.html", visit=visit, title="persona — erase a person", pid=pid)

    async def erase(self, visit: Visit) -> Response:
        form: dict[str, str] = visit.request.state.form
        pid = visit.request.path_params["pid"]
        if form.get("confirm", "").strip() != pid:
            return self.render("erase.html", 400, visit, title="persona — erase a person", pid=pid,
                               error="Type the profile id exactly to confirm.")
        data, _ = await self.answered(visit, documents.ERASE, {"id": pid})
        receipt = data["eraseProfile"]
        return self.render("receipt.html", visit=visit, title="persona — erased", r=receipt,
                           document=orjson.dumps(receipt["receipt"]).decode())

    async def receipt(self, visit: Visit) -> Response:
        """A receipt shown after an erasure, sent back to be downloaded: only a receipt this
        server signed is answered, so the endpoint cannot be made to serve anything else."""
        form: dict[str, str] = visit.request.state.form
        try:
            doc = orjson.loads(form.get("receipt", ""))
            body = verify_receipt(doc, visit.state.persona.keyring.public_key)
        except (orjson.JSONDecodeError, ReceiptError):
            return self.problem(visit, 400, "That is not a receipt this server signed.")
        name = f"erasure-{body['profile_id'][:32]}.json"
        signed = {"receipt": doc["receipt"], "signature": doc["signature"]}  # nothing the signature does not cover
        return Response(orjson.dumps(signed, option=orjson.OPT_INDENT_2) + b"\n", 200, media_type="application/json",
                        headers=HEADERS | {"Content-Disposition": f'attachment; filename="{name}"'})


    # -- the population ------------------------------------------------------------------------------
    async def population(self, visit: Visit) -> Response:
        """Segments and their sizes over time; the lifecycle funnel, a feature's distribution and its
        mean per stage; the RFM grid. Exact and k-anonymous for a token with insights:exact; for one
        with insights:read only, differentially private on request (a POST: each one spends ε)."""
        form: dict[str, str] = getattr(visit.request.state, "form", {})
        params = visit.request.query_params
        metric = form.get("metric") or params.get("metric") or "monetary"
        if metric not in METRICS:
            return self.problem(visit, 400, f"metric: one of {', '.join(METRICS)}")
        exact = visit.may("insights:exact") and visit.may("insights:read")
        epsilon: float | None = None
        if visit.request.method == "POST":
            try:
                epsilon = float(form.get("epsilon", ""))
            except ValueError:
                epsilon = -1.0
            if not 0.01 <= epsilon <= 5.0:
                return self.problem(visit, 400, "ε: a number from 0.01 to 5")
        values: dict[str, Any] = {"metric": metric, "metrics": METRICS, "exact": exact, "epsilon": epsilon,
                                  "problems": []}
        if visit.may("segments:read"):
            answer = await ask(visit.state, visit.token, documents.SEGMENTS)
            values["segments"] = _segments(answer.data["segments"]) if answer.data else None
            values["problems"] += answer.problems
        if visit.may("insights:read") and (exact or epsilon is not None):
            answer = await ask(visit.state, visit.token, documents.STAGES, {"metric": metric, "epsilon": epsilon})
            values["problems"] += answer.problems
            if answer.data and answer.data["insights"]:
                values["stages"] = _stages(answer.data["insights"], metric)
            if exact:
                grid = await ask(visit.state, visit.token, documents.RFM_GRID)
                values["problems"] += grid.problems
                values["rfm"] = _rfm_grid(grid.data["insights"]) if grid.data and grid.data["insights"] else None
        return self.render("population.html", visit=visit, title="persona — population", **values)


    # -- operations ----------------------------------------------------------------------------------
    async def operations(self, visit: Visit) -> Response:
        """Ingest runs and their counts, the quarantine's reasons (content stays sealed), destinations
        and their deliveries, the audit log (paged, or one person's)."""
        params = visit.request.query_params
        before = params.get("before")
        if before is not None and not _DIGITS.fullmatch(before):
            return self.problem(visit, 400, "before: an entry's number")
        person = (params.get("profile") or "").strip() or None
        if person is not None and not is_profile_id(person):
            return self.problem(visit, 400, "profile: a profile id (prf_ and 24 letters and digits)")
        data, problems = await self.answered(visit, documents.OPERATIONS,
                                             {"before": int(before) if before else None, "profileId": person})
        found = data["operations"]
        audit = found["audit"]
        older = _link(f"{PREFIX}/operations", before=str(audit[-1]["seq"]), profile=person) if len(audit) == 50 \
            else None
        return self.render("operations.html", visit=visit, title="persona — operations", ops=found,
                           entries=[e | {"shape": orjson.dumps(e["detail"]).decode()} for e in audit],
                           older=older, person=person, problems=problems)

    # -- models --------------------------------------------------------------------------------------
    async def models(self, visit: Visit, done: str | None = None) -> Response:
        """The registry: each model's versions, held-out metrics beside the baselines', lift, the
        training window, drift per feature; promote and roll back for a token with models:write."""
        data, _ = await self.answered(visit, documents.MODELS)
        grouped: dict[str, list[dict[str, Any]]] = {}
        for version in data["models"]:
            grouped.setdefault(version["name"], []).append(_model(version))
        for versions in grouped.values():
            versions.sort(key=lambda v: -v["version"])
        return self.render("models.html", visit=visit, title="persona — models", models=grouped, done=done)

    async def promote(self, visit: Visit) -> Response:
        form: dict[str, str] = visit.request.state.form
        name, version = form.get("name", ""), form.get("version", "")
        if not _DIGITS.fullmatch(version):
            return self.problem(visit, 400, "version: a version number")
        data, _ = await self.answered(visit, documents.PROMOTE, {"name": name, "version": int(version)})
        served = data["promoteModel"]
        return await self.models(visit, done=f"{served['name']} v{served['version']} is served now; every profile"
                                             " was scored with it.")

    async def rollback(self, visit: Visit) -> Response:
        form: dict[str, str] = visit.request.state.form
        data, _ = await self.answered(visit, documents.ROLLBACK, {"name": form.get("name", "")})
        served = data["rollbackModel"]
        return await self.models(visit, done=f"{served['name']} is rolled back: v{served['version']} is served again;"
                                             " every profile was scored with it.")


# -- helpers -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Bad:
    message: str


async def _form(request: Request) -> dict[str, str]:
    if FORM_TYPE not in request.headers.get("content-type", ""):
        raise Unfit(415, "Send the form as application/x-www-form-urlencoded.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise Unfit(413, "The form is too large.")
        chunks.append(chunk)
    try:
        pairs = parse_qsl(b"".join(chunks).decode(), keep_blank_values=True, max_num_fields=40,
                          strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Unfit(400, "The form could not be read.") from None
    return dict(pairs)


def _same_origin(request: Request) -> None:
    """A POST must come from a page of this server: its Origin (sent by every browser with a
    POST) names this host, or it is refused before anything is read."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is None or origin != own:
        raise Unfit(403, "This form must be sent from the console's own pages.")


def _instant(text: str | None, name: str) -> str | _Bad | None:
    """A time a form gave (a date, or a date and time, UTC unless it says otherwise) as ISO 8601."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return _Bad(f"{name}: give a date (2026-01-31) or a date and time (2026-01-31T14:00)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return _Bad(f"{name}: out of range")


def _cursor(text: str | None) -> str | None:
    return text if text and len(text) <= 200 else None


def _link(path: str, **params: str | None) -> str:
    kept = {k: v for k, v in params.items() if v}
    return f"{path}?{urlencode(kept)}" if kept else path


def _when(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _number(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def _attributes(values: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, value in values.items():
        if name in ("consent", "custom"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or None
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((name, str(value)))  # a year, an age: no thousands separator
            continue
        out.append((name, _when(value) if name.endswith("At") else _number(value)))
    for name, value in sorted((values.get("custom") or {}).items()):
        out.append((name, orjson.dumps(value).decode() if not isinstance(value, str) else value))
    return out


FEATURE_ROWS = (("frequency", "orders"), ("monetary", "spent"), ("aov", "average order"),
                ("recencyDays", "days since last order"), ("firstOrderAt", "first order"),
                ("lastOrderAt", "last order"), ("expectedNextPurchaseAt", "next order expected"),
                ("refunds", "refunds"), ("sessions", "sessions"), ("pageViews", "page views"),
                ("productViews", "product views"), ("conversionRate", "conversion rate"),
                ("appSessions", "app sessions"), ("reviews", "reviews"), ("reviewMeanRating", "mean rating"),
                ("activeDays", "active days"), ("firstSeenAt", "first seen"), ("lastSeenAt", "last seen"))


def _features(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(label, _when(values.get(name)) if name.endswith("At") else _number(values.get(name)))
            for name, label in FEATURE_ROWS]


def _event(node: dict[str, Any]) -> dict[str, Any]:
    data = node.get("data") or {}
    shown = [(k, v if isinstance(v, str) else orjson.dumps(v).decode()) for k, v in sorted(data.items())][:12]
    return node | {"fields": shown}


@dataclass(frozen=True)
class Graph:
    width: int
    height: int
    nodes: list[tuple[str, float, float]]  # profile id, x, y
    edges: list[tuple[float, float, float, float, bool]]  # x1, y1, x2, y2, undone


def _graph(profile: dict[str, Any]) -> Graph | None:
    """The profiles merged into the person, on a circle, with their merges as lines."""
    merges = profile.get("merges") or []
    members = list(dict.fromkeys([profile["id"], *(p for m in merges for p in m["profiles"]),
                                  *(i["profileId"] for i in profile.get("identities") or () if i["profileId"])]))
    if len(members) < 2:
        return None
    width, height, radius = 360, 220, 80
    places = {pid: (width / 2 + radius * math.cos(2 * math.pi * i / len(members) - math.pi / 2),
                    height / 2 + radius * math.sin(2 * math.pi * i / len(members) - math.pi / 2))
              for i, pid in enumerate(members)}
    edges = [(*places[m["profiles"][0]], *places[m["profiles"][1]], m["undoneAt"] is not None) for m in merges]
    return Graph(width, height, [(pid, *places[pid]) for pid in members], edges)


@dataclass(frozen=True)
class SegmentRow:
    name: str
    rule: str
    size: int | None
    created_at: str
    created_by: str
    trend: charts.Chart | None


def _segments(found: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for seg in found:
        sizes = [h["size"] for h in seg["history"]]
        trend = None
        if sizes and all(size is not None for size in sizes):
            trend = charts.columns([float(size) for size in sizes], [h["day"][5:] for h in seg["history"]],
                                   summary=f"{seg['name']}: members at the end of each day",
                                   label_every=max(1, len(sizes) // 4), width=320, height=90)
        rows.append(SegmentRow(seg["name"], seg["rule"], seg["size"], seg["createdAt"], seg["createdBy"], trend))
    shown = [r for r in rows if r.size is not None]
    sizes_chart = charts.rows([float(r.size or 0) for r in shown], [r.name for r in shown],
                              summary="Members of each live segment now") if shown else None
    return {"rows": rows, "chart": sizes_chart}


def _stages(insights: dict[str, Any], metric: str) -> dict[str, Any]:
    """The funnel (people per lifecycle stage, in the stages' order), the metric's mean per stage and
    its distribution per stage, from one insights answer."""
    by_stage = {(g["key"] or {}).get("lifecycle_stage"): g for g in insights["groups"]}
    ordered = [(stage, by_stage[stage]) for stage in STAGE_ORDER if stage in by_stage]
    ordered += [(str(stage), g) for stage, g in by_stage.items() if stage not in STAGE_ORDER]
    funnel = charts.rows([g["count"] for _, g in ordered], [stage for stage, _ in ordered],
                         summary="People in each lifecycle stage", shown=[_number(round(g["count"])) for _, g in
                                                                          ordered]) if ordered else None
    with_mean = [(stage, g) for stage, g in ordered if g["mean"] is not None]
    means = charts.rows([g["mean"] for _, g in with_mean], [stage for stage, _ in with_mean],
                        summary=f"Mean {metric} in each lifecycle stage") if with_mean else None
    histograms = []
    for stage, g in ordered:
        bins = g["distribution"]
        if bins:
            histograms.append(charts.columns(
                [max(b["count"], 0.0) for b in bins], [_number(b["from"]) for b in bins], label_every=2,
                summary=f"{metric} among {stage} people: people per tenth of [{_number(bins[0]['from'])},"
                        f" {_number(bins[-1]['to'])}]", width=360, height=120))
    return {"funnel": funnel, "means": means, "histograms": histograms, "k": insights["k"],
            "threshold": insights["threshold"], "epsilon": insights["epsilon"],
            "remaining": insights["epsilonRemaining"], "suppressed": not ordered}


@dataclass(frozen=True)
class Grid:
    cells: list[tuple[int, int, int | None, int]]  # r, f, count (None: fewer than k), shade 0–5
    k: int


def _rfm_grid(insights: dict[str, Any]) -> Grid | None:
    counts = {((g["key"] or {}).get("rfm_r"), (g["key"] or {}).get("rfm_f")): round(g["count"])
              for g in insights["groups"]}
    counts = {key: n for key, n in counts.items() if None not in key}
    if not counts:
        return None
    top = max(counts.values())
    cells = []
    for r in range(5, 0, -1):
        for f in range(1, 6):
            n = counts.get((r, f))
            cells.append((r, f, n, 0 if not n else 1 + min(4, int(4 * n / top))))
    return Grid(cells, insights["k"])


def _model(version: dict[str, Any]) -> dict[str, Any]:
    """A registry entry with its drift as a chart: the population stability index of the features
    that moved most, against the limit that marks the model stale."""
    drift = version.get("lastDrift")
    chart = None
    if drift and drift["psiTop"]:
        top = [f for f in drift["psiTop"] if f["value"] is not None]
        if top:
            chart = charts.rows([f["value"] for f in top], [f["name"] for f in top],
                                summary=f"Drift per feature (PSI) of {version['name']} v{version['version']}"
                                        + (f"; the limit is {drift['psiLimit']:.2f}" if drift["psiLimit"] else ""))
    baselines = {b["name"]: {m["name"]: m["value"] for m in b["metrics"]} for b in version["baselineMetrics"]}
    metrics = [m["name"] for m in version["heldOut"] if m["name"] != "rows"]
    table = [(name, next(m["value"] for m in version["heldOut"] if m["name"] == name),
              [baselines[b].get(name) for b in baselines]) for name in metrics]
    return version | {"drift_chart": chart, "baseline_names": list(baselines), "table": table}
