"""The HTTP server: Starlette routes, one fast GraphQL handler, strawberry for websockets.

A GraphQL request over HTTP goes: token (401) → rate limit (429) → body size (413) →
cached plan: parse, validation, depth, cost (400) → scopes (403) → population scans priced
by the population (400) → execution by graphql-core on the strawberry schema → errors
masked → orjson. Parsing, validation and analysis happen once per distinct document
(persona.api.plan), which is most of what a default GraphQL server spends on a small query.
Every refusal on the way is counted in the audit log (persona.audit).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from graphql import ExecutionResult, GraphQLError, OperationType
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.ides import get_graphql_ide_html
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from persona.api.answers import AnswerCache, matches
from persona.api.context import AUDIT_BACKLOG, BOUND_ONLY, ApiState, RequestContext, ServerOptions, bound_may_run
from persona.api.errors import error, masked, request_values, schema_names, scrub
from persona.api.plan import Cacheable, Plan, PlanCache
from persona.api.run import GRAPHQL_SCHEMA, answer_of, execute_plan, operations_of
from persona.api.schema import schema
from persona.audit import NO_TOKEN
from persona.console import Console
from persona.services.store import check_reachable
from persona.settings import Settings
from persona.tokens import Token

log = logging.getLogger("persona.api")
JSON_TYPE = "application/json"


class QueryStringFilter(logging.Filter):
    """Server log lines name paths without their query strings (`/graphql?…`): a GET query
    or a websocket URL may carry an identifier. Installed on uvicorn's handlers by `serve`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(a) for a in record.args)
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY.sub("?…", record.msg)
        return True


_QUERY = re.compile(r"\?[^\s\"']*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _without_query(value: object) -> object:
    if isinstance(value, str) and "?" in value:
        return _QUERY.sub("?…", value)
    return value


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with the query-string filter on every handler."""
    from uvicorn.config import LOGGING_CONFIG  # heavy: loaded when the server starts

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"no_query_strings": {"()": QueryStringFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["no_query_strings"]
    # persona's own lines (warnings; the answer cache's counts at shutdown) through uvicorn's handler
    config["loggers"]["persona"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _reply(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"errors": errors}), status, headers, media_type=JSON_TYPE)


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class GraphQLEndpoint:
    """POST and GET /graphql."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except Exception as e:  # a fault of ours: masked, logged by class and place only
            return _reply(500, [masked(GraphQLError("internal", original_error=e))])

    async def _handle(self, request: Request) -> Response:
        state: ApiState = request.app.state.api
        if request.method == "GET" and "text/html" in request.headers.get("accept", "") and not request.query_params:
            if self.options.dev:
                return HTMLResponse(get_graphql_ide_html(graphql_ide="graphiql"))
            return _reply(404, [error("GraphiQL is served only with `persona serve --dev`", "NOT_FOUND")])
        raw_token = _bearer(request.headers)
        token = state.tokens.lookup(raw_token) if raw_token else None
        if token is None:
            client = request.client.host if request.client else "?"
            if state.strangers.allow(client, self.options.unauthenticated_rate):
                state.audit.refuse(NO_TOKEN, "request", "RATE_LIMITED")
                return _reply(429, [error("too many requests without a valid token", "RATE_LIMITED")],
                              {"Retry-After": "1"})
            state.audit.refuse(NO_TOKEN, "request", "UNAUTHENTICATED")
            return _reply(401, [error("a valid bearer token is required (Authorization: Bearer pst_…)",
                                       "UNAUTHENTICATED")], {"WWW-Authenticate": "Bearer"})
        wait = state.limiter.allow(token.name, token.rate_per_s)
        if wait:
            state.audit.refuse(token.name, "request", "RATE_LIMITED")
            return _reply(429, [error("too many requests for this token; slow down", "RATE_LIMITED")],
                          {"Retry-After": str(max(1, round(wait)))})
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        query, variables, operation_name = body
        plan = state.plans.get(query, operation_name)
        if plan.errors:
            if plan.over:
                state.audit.refuse(token.name, operations_of(plan), "BAD_REQUEST", {"over": list(plan.over)})
            values = request_values(plan.document, variables, schema_names(GRAPHQL_SCHEMA))
            return _reply(400, [error(scrub(e.message, values), "BAD_REQUEST") | (
                {"locations": [{"line": loc.line, "column": loc.column} for loc in e.locations]}
                if e.locations else {}) for e in plan.errors])
        if plan.kind is OperationType.SUBSCRIPTION:
            return _reply(400, [error("subscriptions run over a websocket (graphql-transport-ws)", "BAD_REQUEST")])
        if request.method == "GET" and (plan.kind is OperationType.MUTATION or plan.identifies):
            reason = "mutations need POST" if plan.kind is OperationType.MUTATION else (
                "send identifiers (subject) by POST: URLs end up in logs")
            return _reply(405, [error(reason, "BAD_REQUEST")], {"Allow": "POST"})
        missing = plan.scopes - token.scopes
        if missing:
            state.audit.refuse(token.name, operations_of(plan), "FORBIDDEN", {"missing": sorted(missing)})
            return _reply(403, [error(f"the token lacks the scope(s): {', '.join(sorted(missing))}", "FORBIDDEN")])
        if token.subject and not bound_may_run(plan):
            state.audit.refuse(token.name, operations_of(plan), "FORBIDDEN", {"bound": True})
            return _reply(403, [error(BOUND_ONLY, "FORBIDDEN")])
        if plan.scans:
            too_costly = plan.too_costly(state.population, self.options.limits)
            if too_costly is not None:
                state.audit.refuse(token.name, operations_of(plan), "BAD_REQUEST", {"over": ["cost"]})
                return _reply(400, [error(too_costly.message, "BAD_REQUEST")])
        if plan.cacheable is not None and state.answers.enabled:
            ids = plan.cacheable.profile_ids(variables)
            if ids is not None:
                return await self._cached(request, state, token, plan, plan.cacheable, ids, query, variables,
                                          operation_name)
        return await self._uncached(state, token, plan, variables, operation_name)

    async def _uncached(self, state: ApiState, token: Token, plan: Plan, variables: dict[str, Any] | None,
                        operation_name: str | None) -> Response:
        result = await self._execute(RequestContext(state, token, plan), variables, operation_name)
        return Response(self._encoded(state, token, plan, variables, result), 200, media_type=JSON_TYPE)

    async def _cached(self, request: Request, state: ApiState, token: Token, plan: Plan, cacheable: Cacheable,
                      ids: list[str], query: str, variables: dict[str, Any] | None,
                      operation_name: str | None) -> Response:
        """A profile query through the answer cache (persona.api.answers): the same answer as
        executing it, audited the same, with an ETag that If-None-Match can name."""
        answers = state.answers
        try:
            stamped = answers.stamps(state.persona, ids)
        except Exception:  # the store cannot be read now: executed as usual, which says so as a GraphQL error
            return await self._uncached(state, token, plan, variables, operation_name)
        key = answers.key(query, operation_name, variables, token, cacheable, stamped)
        kept = answers.get(key)
        if kept is not None and len(state.audit.rows) < AUDIT_BACKLOG:  # else executed: refused as usual
            for entry in kept.audit:
                state.audit.record(token.name, *entry)
            answers.hits += 1
            return self._conditional(request, answers, kept.body, kept.etag)
        answers.misses += 1
        context = RequestContext(state, token, plan)
        context.recorded = []
        result = await self._execute(context, variables, operation_name)
        body = self._encoded(state, token, plan, variables, result)
        if result.errors:
            return Response(body, 200, media_type=JSON_TYPE)  # never kept, and no ETag
        return self._conditional(request, answers, body, answers.put(key, body, context.recorded).etag)

    @staticmethod
    def _conditional(request: Request, answers: AnswerCache, body: bytes, etag: str) -> Response:
        """The answer with its ETag; if If-None-Match names that ETag, the client holds the answer
        already: a GET is answered 304 (no body), any other method 412 (RFC 9110, 13.1.2)."""
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
        if matches(request.headers.get("if-none-match"), etag):
            answers.revalidated += 1
            if request.method == "GET":
                return Response(None, 304, headers)
            return _reply(412, [error("If-None-Match: the answer has not changed (send the query by GET to be"
                                      " answered 304 Not Modified)", "NOT_MODIFIED")], headers)
        return Response(body, 200, headers, media_type=JSON_TYPE)

    @staticmethod
    def _encoded(state: ApiState, token: Token, plan: Plan, variables: dict[str, Any] | None,
                 result: ExecutionResult) -> bytes:
        return orjson.dumps(answer_of(state, token, plan, variables, result))

    async def _body(self, request: Request) -> tuple[str, dict[str, Any] | None, str | None] | Response:
        limit = self.options.max_request_bytes
        if request.method == "GET":
            params = request.query_params
            doc: Any = {"query": params.get("query"), "operationName": params.get("operationName")}
            for part in ("variables", "extensions"):
                if params.get(part):
                    try:
                        doc[part] = orjson.loads(params[part])
                    except orjson.JSONDecodeError:
                        return _reply(400, [error(f"{part}: not valid JSON", "BAD_REQUEST")])
        else:
            declared = request.headers.get("content-length")
            if declared is not None and not declared.isdigit():
                return _reply(400, [error("Content-Length: not a number", "BAD_REQUEST")])
            if declared is not None and int(declared) > limit:
                return _reply(413, [error(f"the request body is over {limit} bytes", "TOO_LARGE")])
            if JSON_TYPE not in request.headers.get("content-type", ""):
                return _reply(415, [error("send the request as application/json", "BAD_REQUEST")])
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return _reply(413, [error(f"the request body is over {limit} bytes", "TOO_LARGE")])
                chunks.append(chunk)
            try:
                doc = orjson.loads(b"".join(chunks))
            except orjson.JSONDecodeError:
                return _reply(400, [error("the body is not valid JSON", "BAD_REQUEST")])
        if not isinstance(doc, dict):
            return _reply(400, [error("send {\"query\": \"…\", \"variables\": {…}}", "BAD_REQUEST")])
        persisted = self._persisted(request, doc)
        if isinstance(persisted, Response):
            return persisted
        if persisted is not None:
            doc["query"] = persisted
        if not isinstance(doc.get("query"), str) or not doc["query"].strip():
            return _reply(400, [error("send {\"query\": \"…\", \"variables\": {…}}", "BAD_REQUEST")])
        variables = doc.get("variables")
        name = doc.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return _reply(400, [error("variables: must be an object", "BAD_REQUEST")])
        if name is not None and not isinstance(name, str):
            return _reply(400, [error("operationName: must be a string", "BAD_REQUEST")])
        if len(doc["query"].encode()) > self.options.limits.max_document_bytes:
            return _reply(413, [error("the query text is too long", "TOO_LARGE")])
        return doc["query"], variables, name

    @staticmethod
    def _persisted(request: Request, doc: dict[str, Any]) -> str | Response | None:
        """Apollo's automatic persisted queries: `extensions.persistedQuery.sha256Hash` names a document
        sent once with it (and checked against it); later requests send the hash alone. The document
        text, or None when the request names none, or the refusal."""
        extensions = doc.get("extensions")
        if extensions is None:
            return None
        found = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if found is None:
            return None
        digest = found.get("sha256Hash") if isinstance(found, dict) else None
        if (not isinstance(found, dict) or found.get("version") != 1 or not isinstance(digest, str)
                or not _SHA256.fullmatch(digest)):
            return _reply(400, [error("extensions.persistedQuery: {\"version\": 1, \"sha256Hash\": 64 hex"
                                      " digits} is expected", "BAD_REQUEST")])
        digest = digest.lower()
        plans: PlanCache = request.app.state.api.plans
        query = doc.get("query")
        if isinstance(query, str):  # registered now, if the hash is the document's
            if hashlib.sha256(query.encode()).hexdigest() != digest:
                return _reply(400, [error("extensions.persistedQuery: the hash is not the query's SHA-256",
                                          "BAD_REQUEST")])
            plans.persist(digest, query)
            return None
        known = plans.persisted(digest)
        if known is None:  # Apollo's clients answer this by sending the query with its hash
            return _reply(200, [error("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")])
        return known

    @staticmethod
    async def _execute(context: RequestContext, variables: dict[str, Any] | None,
                       operation_name: str | None) -> ExecutionResult:
        return await execute_plan(context, variables, operation_name)


class SocketEndpoint(GraphQL[RequestContext, None]):
    """Websocket subscriptions (graphql-transport-ws), through strawberry. The token comes
    in connection_init's payload ({"authorization": "Bearer …"}) or the upgrade's header;
    either way it is checked when connection_init arrives, under the same rules."""

    def __init__(self) -> None:
        super().__init__(schema, graphql_ide=None, subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
                         keep_alive=True, keep_alive_interval=15, max_subscriptions_per_connection=20)

    async def get_context(self, request: Any, response: Any) -> RequestContext:
        state: ApiState = request.app.state.api
        context = RequestContext(state, None, None, _bearer(request.headers))  # looked up on connection_init
        context.client = request.client.host if request.client else "?"
        return context

    async def on_ws_connect(self, context: RequestContext) -> None:
        params = context.connection_params
        raw = None
        if isinstance(params, dict):
            value = params.get("authorization") or params.get("Authorization")
            if isinstance(value, str):
                raw = _bearer({"authorization": value})
        raw = raw or context.raw_token  # the payload's token, else the upgrade header's
        state = context.state
        rate = state.options.unauthenticated_rate
        if raw is not None:
            if state.strangers.exhausted(context.client, rate):  # guessing tokens: not even looked up
                state.audit.refuse(NO_TOKEN, "connect", "RATE_LIMITED")
                raise ConnectionRejectionError({"message": "too many attempts without a valid token"})
            context.token = state.tokens.lookup(raw)
        context.raw_token = raw if context.token is not None else None
        if context.token is None:
            state.strangers.allow(context.client, rate)
            state.audit.refuse(NO_TOKEN, "connect", "UNAUTHENTICATED")
            raise ConnectionRejectionError({"message": "a valid bearer token is required"})


async def healthz(request: Request) -> Response:
    state: ApiState = request.app.state.api
    try:
        check_reachable(state.persona)
    except Exception:
        return JSONResponse({"status": "unavailable"}, 503)
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings | None = None, options: ServerOptions | None = None) -> Starlette:
    settings = settings or Settings.load()
    options = options or ServerOptions()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = ApiState(settings, GRAPHQL_SCHEMA, options)
        app.state.api = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    endpoint = GraphQLEndpoint(options)
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/graphql", endpoint.handle, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", SocketEndpoint()),
        *Console().routes(),  # the web console at /console (persona.console)
    ]
    middleware = []
    if options.cors_origins:
        # a browser page of a listed origin may call the API with a token it holds (a minted one, a
        # user's own): bearer tokens only, never cookies, so credentials stay off; any other origin's
        # preflight is refused and its answers carry no Access-Control-Allow-Origin
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"],
                                     allow_credentials=False, max_age=600))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def app_from_env() -> Starlette:
    """For `uvicorn --factory` with several workers: settings from PERSONA_* variables."""
    settings = Settings.load()
    return create_app(settings, ServerOptions(dev=settings.api_dev, cors_origins=settings.cors_origins))

