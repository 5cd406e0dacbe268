"""The ceiling for scripts/bench_api.py: the same data as the GraphQL API, served by a bare
Starlette JSON endpoint under the same uvicorn settings (uvloop, httptools, no access log,
one worker). What the API costs beyond this is the GraphQL layer (and its token check,
rate limit and audit trail).

    python scripts/bench_api_ceiling.py --data DIR --port N

    GET /healthz            {"status": "ok"}
    GET /profile?id=ID      {"attributes": …, "features": …, "predictions": []}
    GET /history?id=ID      the 50 newest events: {"edges": [{"cursor", "type", "occurredAt", "source", "data"}],
                            "hasNextPage", "endCursor"}
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persona import Persona, Settings
from persona.api.data import encode_cursor, load_profiles
from persona.errors import ErasedError, UnknownProfileError
from persona.projector import Projector
from persona.reading import history_page

JSON_TYPE = "application/json"
HISTORY_PAGE = 50


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type=JSON_TYPE)


def create_app(data_dir: Path) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        persona = Persona.open(Settings.load(data_dir, env={}))
        app.state.persona = persona
        app.state.projector = Projector(persona)
        try:
            yield
        finally:
            persona.close()

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def profile(request: Request) -> Response:
        profile_id = request.query_params.get("id", "")
        found = load_profiles(request.app.state.persona, request.app.state.projector, [profile_id]).get(profile_id)
        if found is None:
            return _json({"error": "no such profile"}, 404)
        return _json({"attributes": found.attributes, "features": found.features | {"rfm": found.rfm},
                      "predictions": []})

    async def history(request: Request) -> Response:
        profile_id = request.query_params.get("id", "")
        try:
            page = history_page(request.app.state.persona, profile_id, first=HISTORY_PAGE)
        except (UnknownProfileError, ErasedError):
            return _json({"error": "no such profile"}, 404)
        edges = [{"cursor": encode_cursor("v", e.version), "type": e.type, "occurredAt": _instant(e.occurred_at),
                  "source": e.source, "data": e.data} for e in page.events]
        return _json({"edges": edges, "hasNextPage": page.has_next,
                      "endCursor": edges[-1]["cursor"] if edges else None})

    routes = [Route("/healthz", healthz), Route("/profile", profile), Route("/history", history)]
    return Starlette(routes=routes, lifespan=lifespan)


def _instant(text: str) -> str:
    """A stored time as the API's DateTime writes it (ISO 8601, +00:00): the same answer, the same work."""
    return datetime.fromisoformat(text).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.data), host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", server_header=False)


if __name__ == "__main__":
    main()
