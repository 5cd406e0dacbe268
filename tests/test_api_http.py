"""The API over real sockets: `persona serve` in a subprocess (uvicorn with uvloop, httptools
and websockets), listening on 127.0.0.1 only, driven by httpx and the websockets client.

One server serves the module; the log-masking test starts (and stops) one of its own so
it can read everything the server ever wrote.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.cli import cli
from persona.cli.serve import GRACEFUL_SHUTDOWN_S, uvicorn_proxies
from persona.ingest import ingest_jsonl
from persona.tokens import create_token
from tests.conftest import record

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample_events.jsonl"
LOOPBACK = "127.0.0.1"
STARTUP_S = 15.0
STOP_S = GRACEFUL_SHUTDOWN_S + 15.0  # open connections get their grace, then the lifespan's own stop
PROTOCOL = Subprotocol("graphql-transport-ws")
INTERNALS = ("Traceback", "sqlite", "SELECT")
PEOPLE = ("li.wei@example.com", "maria.garcia@example.com", "tom.baker@example.com", "aiko.tanaka@example.com")
SECRET = PEOPLE[0]
TOKENS = {
    "ops": frozenset({"profiles:read", "history:read", "events:write", "erasure:write"}),
    "reader": frozenset({"profiles:read"}),
    "auditor": frozenset({"profiles:read", "history:read"}),
}
SUBSCRIBE = "subscription($id: ID!) { profileUpdated(id: $id) { id version } }"
VERSION = "query($id: ID!) { profile(id: $id) { version } }"
INGEST = "mutation($events: [EventInput!]!) { ingestEvents(events: $events) { appended } }"


def check(response: httpx.Response, *, identifiers: bool = True) -> httpx.Response:
    assert response.status_code != 500, response.text[:500]
    for word in INTERNALS:
        assert word not in response.text, f"{word!r} in a response body: {response.text[:500]}"
    if identifiers:
        assert not [p for p in PEOPLE if p in response.text.lower()], f"an identifier in: {response.text[:500]}"
    return response


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    settings: Settings
    tokens: dict[str, str]
    ids: dict[str, str]
    out: Path
    err: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """SIGTERM; the server must exit within STOP_S, its lifespan (the audit's flush) finished.
        If it hangs, SIGABRT makes faulthandler write every thread's stack into the logs shown."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            raise AssertionError(f"the server did not stop on SIGTERM:\n{self.logs()[-6000:]}") from None
        assert "Application shutdown complete" in self.logs(), "the lifespan (audit flush) did not finish"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/graphql"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=10)  # no proxies: loopback only

    def auth(self, token: str | None = "ops") -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {self.tokens.get(token, token)}"}

    def post(self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = "ops",
             checked: bool = True) -> httpx.Response:
        with self.client() as http:
            response = http.post("/graphql", json={"query": query, "variables": variables}, headers=self.auth(token))
        return check(response, identifiers=checked)

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def prepare(folder: Path, database_url: str | None = None) -> tuple[Settings, dict[str, str], dict[str, str]]:
    settings = Settings.load(folder / "data", env={"PERSONA_DATABASE_URL": database_url or ""})
    with Persona.init(settings) as p:
        if database_url:  # as `persona init --backend URL` leaves it: the server finds its store
            settings.backend_path.write_text(database_url + "\n")
        report = ingest_jsonl(p, SAMPLE.read_bytes().splitlines(), origin="sample")
        assert report.appended > 0
        tokens = {name: create_token(p, name, scopes) for name, scopes in TOKENS.items()}
        ids = {}
        for email in PEOPLE:
            found = p.log.profile_for("email", email)
            assert found is not None
            ids[email] = found
    return settings, tokens, ids


@contextmanager
def serving(folder: Path, database_url: str | None = None, *options: str) -> Iterator[Server]:
    """`persona serve` on a free loopback port until the block ends; then it must stop cleanly."""
    settings, tokens, ids = prepare(folder, database_url)
    with served(settings, folder, tokens, ids, *options) as server:
        yield server


@contextmanager
def served(settings: Settings, folder: Path, tokens: dict[str, str], ids: dict[str, str],
           *options: str) -> Iterator[Server]:
    """`persona serve` over a store made already, until the block ends; then it must stop cleanly."""
    port = free_port()
    out, err = folder / "server.out", folder / "server.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")} | {"PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "persona", "--data", str(settings.data_dir), "serve", "--host", LOOPBACK,
               "--port", str(port), *options]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)
    server = Server(f"http://{LOOPBACK}:{port}", settings, tokens, ids, out, err, process)
    try:
        deadline = time.monotonic() + STARTUP_S
        with server.client() as http:
            while True:
                assert process.poll() is None, f"the server exited at startup:\n{server.logs()}"
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the server did not come up:\n{server.logs()}"
                time.sleep(0.05)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("served")) as running:
        yield running


# -- websocket helpers ---------------------------------------------------------------------------
async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def receive(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("type") == "ping":
            await send(ws, {"type": "pong"})
            continue
        return message


async def opened(server: Server, token: str | None, *, payload: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> ClientConnection:
    """A graphql-transport-ws connection, initialised with this token (or this exact payload)."""
    ws = await connect(server.ws_url, subprotocols=[PROTOCOL], proxy=None, open_timeout=10,
                       additional_headers=headers)
    assert ws.subprotocol == PROTOCOL
    if payload is None:
        payload = {} if token is None else {"authorization": f"Bearer {server.tokens.get(token, token)}"}
    await send(ws, {"type": "connection_init", "payload": payload})
    return ws


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, timeout=60))


async def ingest_until_next(server: Server, ws: ClientConnection, email: str, tag: str, *,
                            directly: bool = False) -> dict[str, Any]:
    """Ingest an event for this person until the subscription reports it (the first might land
    before the subscription has read the profile's version, and so not count as news): through
    the server's ingestEvents, or `directly` into the database as another process would."""
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        for attempt in range(5):
            event = {"source": "web", "type": "page_viewed", "occurredAt": "2026-03-01T10:00:00Z",
                     "eventId": f"{tag}-{attempt}", "subject": {"namespace": "email", "value": email},
                     "data": {"url": f"https://shop.example/{tag}/{attempt}"}}
            if directly:
                line = orjson.dumps(record(email, "page_viewed", event["data"], event_id=event["eventId"],
                                           occurred_at=event["occurredAt"]))
                with Persona.open(server.settings) as p:
                    assert ingest_jsonl(p, [line], origin="elsewhere").appended == 1
            else:
                response = check(await http.post("/graphql", json={"query": INGEST, "variables": {"events": [event]}},
                                                  headers=server.auth("ops")))
                assert response.json()["data"]["ingestEvents"]["appended"] == 1
            try:
                return await receive(ws, timeout=3)
            except TimeoutError:
                continue
    raise AssertionError("the subscription never reported the new events")


# -- plain HTTP ----------------------------------------------------------------------------------
def test_healthz_and_queries_over_http(server: Server) -> None:
    with server.client() as http:
        health = check(http.get("/healthz"))
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert "server" not in health.headers
        got = check(http.get("/graphql", params={"query": VERSION, "variables": orjson.dumps(
            {"id": server.ids[SECRET]}).decode()}, headers=server.auth("reader")))
        assert got.status_code == 200 and got.json()["data"]["profile"]["version"] > 0
        assert check(http.post("/graphql", json={"query": VERSION, "variables": {"id": "x"}})).status_code == 401
    posted = server.post(VERSION, {"id": server.ids[SECRET]}, token="reader")
    assert posted.json() == got.json()


def test_abuse_over_http_never_breaks_the_server(server: Server) -> None:
    def huge() -> Iterator[bytes]:  # streamed without a Content-Length
        yield b'{"query": "{ profiles { nodes { id } } }", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    with server.client() as http:
        auth = server.auth("reader")
        too_big = check(http.post("/graphql", content=huge(), headers=auth | {"content-type": "application/json"}))
        assert too_big.status_code == 413
        assert check(http.post("/graphql", content=b"{", headers=auth | {"content-type": "application/json"}
                               )).status_code == 400
        assert check(http.post("/graphql", content=b"{}", headers=auth | {"content-type": "text/plain"}
                               )).status_code == 415
        assert check(http.get("/graphql", params={"query": INGEST}, headers=auth)).status_code == 405
        assert check(http.post("/graphql", json={"query": SUBSCRIBE, "variables": {"id": "x"}},
                               headers=auth)).status_code == 400
        costly = "{ profiles(first: 100) { nodes { history(first: 100) { nodes { data } } } } }"
        assert check(http.post("/graphql", json={"query": costly}, headers=server.auth("ops"))).status_code == 400
    with socket.create_connection((LOOPBACK, int(server.url.rsplit(":", 1)[1])), timeout=10) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_audit_is_written_by_the_running_server(server: Server) -> None:
    pid = server.ids["aiko.tanaka@example.com"]
    query = "query($id: ID!) { profile(id: $id) { attributes history(first: 1) { nodes { type } } } }"
    assert server.post(query, {"id": pid}, token="auditor").json()["data"]["profile"]["attributes"]
    deadline = time.monotonic() + 10
    with Persona.open(server.settings) as p:
        while not (rows := [r for r in p.recorder.audit_rows(profile_id=pid) if r[2] == "auditor"]):
            assert time.monotonic() < deadline, "the audit entry was never written"
            time.sleep(0.05)
    assert [(r[3], r[4], r[5], r[6]) for r in rows] == [("profile", pid, "attributes,history", "ok"),
                                                        ("history", pid, "", "ok")]  # one batch: both at once


# -- websocket subscriptions ---------------------------------------------------------------------
def test_subscription_reports_a_new_version(server: Server) -> None:
    email = "maria.garcia@example.com"
    pid = server.ids[email]
    before = server.post(VERSION, {"id": pid}).json()["data"]["profile"]["version"]

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, "ops")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"id": pid}}})
            message = await ingest_until_next(server, ws, email, "ws-next")
            await send(ws, {"id": "1", "type": "complete"})
            return message
        finally:
            await ws.close()

    message = run(scenario())
    assert (message["type"], message["id"]) == ("next", "1"), message
    assert "errors" not in message["payload"]
    update = message["payload"]["data"]["profileUpdated"]
    assert update["id"] == pid and update["version"] > before
    assert update["version"] <= server.post(VERSION, {"id": pid}).json()["data"]["profile"]["version"]


def test_subscription_sees_changes_made_by_another_process(server: Server) -> None:
    email = "aiko.tanaka@example.com"
    pid = server.ids[email]
    before = server.post(VERSION, {"id": pid}).json()["data"]["profile"]["version"]

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, None, headers=server.auth("ops"))  # the token on the upgrade request
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "x", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"id": pid}}})
            return await ingest_until_next(server, ws, email, "elsewhere", directly=True)
        finally:
            await ws.close()

    message = run(scenario())
    assert (message["type"], message["id"]) == ("next", "x"), message
    assert message["payload"]["data"]["profileUpdated"]["version"] > before


def test_subscription_ends_when_the_profile_is_erased(server: Server) -> None:
    email = "tom.baker@example.com"
    pid = server.ids[email]

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, "ops")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "e", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"id": pid}}})
            assert (await ingest_until_next(server, ws, email, "ws-erase"))["type"] == "next"
            erase = "mutation($id: ID!) { eraseProfile(id: $id) { profileId } }"
            async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as http:
                erased = check(await http.post("/graphql", json={"query": erase, "variables": {"id": pid}},
                                               headers=server.auth("ops")))
            assert erased.json()["data"]["eraseProfile"]["profileId"] == pid
            return await receive(ws)
        finally:
            await ws.close()

    assert run(scenario()) == {"id": "e", "type": "complete"}


@pytest.mark.parametrize("payload", [
    {},
    {"authorization": "Bearer pst_not-a-real-token"},
    {"authorization": "Basic cmVhZGVyOnNlY3JldA=="},
    {"authorization": "READER"},  # a valid token, but not as `Bearer <token>`
])
def test_websocket_needs_a_valid_token(server: Server, payload: dict[str, str]) -> None:
    if payload.get("authorization") == "READER":
        payload = {"authorization": server.tokens["reader"]}

    async def scenario() -> int | None:
        ws = await opened(server, None, payload=payload)
        try:
            message = await receive(ws)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        finally:
            await ws.close()
        raise AssertionError(f"the connection was accepted: {message}")

    assert run(scenario()) == 4403


def test_subscription_needs_the_scopes_of_its_fields(server: Server) -> None:
    query = "subscription($id: ID!) { profileUpdated(id: $id) { id history { nodes { data } } } }"

    async def scenario() -> list[dict[str, Any]]:
        ws = await opened(server, "reader")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "h", "type": "subscribe",
                            "payload": {"query": query, "variables": {"id": server.ids[SECRET]}}})
            return [await receive(ws)]
        finally:
            await ws.close()

    [message] = run(scenario())
    assert message["id"] == "h"
    assert message["type"] == "error", message
    assert "history:read" in orjson.dumps(message["payload"]).decode()


@pytest.mark.parametrize(("token", "query"), [
    ("reader", "query($id: ID!) { profile(id: $id) { attributes } }"),
    ("reader", "mutation($id: ID!) { eraseProfile(id: $id) { profileId } }"),  # a scope the token lacks
    ("ops", "mutation($id: ID!) { eraseProfile(id: $id) { profileId } }"),
])
def test_queries_and_mutations_do_not_run_over_the_websocket(server: Server, token: str, query: str) -> None:
    pid = server.ids["maria.garcia@example.com"]

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, token)
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "q", "type": "subscribe", "payload": {"query": query, "variables": {"id": pid}}})
            return await receive(ws)
        finally:
            await ws.close()

    message = run(scenario())
    assert (message["id"], message["type"]) == ("q", "error"), message  # refused before it runs
    assert any("subscriptions" in e["message"] for e in message["payload"]), message
    assert server.post(VERSION, {"id": pid}).json()["data"]["profile"] is not None  # not erased


# -- what the server writes ----------------------------------------------------------------------
def test_server_output_never_holds_an_identifier(tmp_path: Path) -> None:
    with serving(tmp_path) as server:
        pid = server.ids[SECRET]
        wrong = [
            ('{ profile(subject: {namespace: "email", value: "SECRET"}) { version } }', None),
            ('{ profile(id: {value: "SECRET"}) { id } }', None),
            ("query($n: Int) { profiles(first: $n) { nodes { id } } }", {"n": SECRET}),
            ("query($s: SubjectInput!) { profile(subject: $s) { id } }", {"s": {"namespace": "email",
                                                                                 "value": [SECRET]}}),
            ('{ profile(subject: {namespace: "SECRET", value: "SECRET"}) { id } }', None),
            ("query($id: ID!, $a: String) { profile(id: $id) { history(after: $a) { nodes { id } } } }",
             {"id": pid, "a": "djp4"}),
            (INGEST, {"events": [{"source": "web", "type": "page_viewed", "occurredAt": SECRET,
                                  "subject": {"namespace": "email", "value": SECRET}, "data": {"note": SECRET}}]}),
            (INGEST, {"events": [{"source": "web", "type": "page_viewed", "occurredAt": "2026-01-01T00:00:00Z",
                                  "subject": {"namespace": "email", "value": SECRET + "@@"}, "data": {}}]}),
        ]
        for query, variables in wrong:
            response = server.post(query.replace("SECRET", SECRET), variables, checked=False)
            assert response.status_code in (200, 400)
        with server.client() as http:
            assert check(http.get("/graphql", params={"query": '{ profile(subject: {namespace: "email", value: "'
                                                              + SECRET + '"}) { version } }'},
                                  headers=server.auth("ops")), identifiers=False).status_code == 405  # POST only
            assert check(http.post("/graphql", json={"query": VERSION}, headers={"Authorization": "Bearer " + SECRET})
                         ).status_code == 401
            assert check(http.get("/" + SECRET), identifiers=False).status_code == 404
        with socket.create_connection((LOOPBACK, int(server.url.rsplit(":", 1)[1])), timeout=10) as raw:
            raw.sendall(b"GET /" + SECRET.encode() + b" HTTP/1.1\r\nHost: " + SECRET.encode() + b"\r\nX: \x00\r\n\r\n")
            raw.recv(1024)

        async def sockets() -> None:
            ws = await opened(server, "ops")
            try:
                assert (await receive(ws))["type"] == "connection_ack"
                for n, (query, variables) in enumerate([
                    (SUBSCRIBE, {"id": {"email": SECRET}}),
                    ('subscription { profileUpdated(id: {email: "SECRET"}) { id } }'.replace("SECRET", SECRET), None),
                    (SUBSCRIBE, {"id": SECRET}),
                ]):
                    await send(ws, {"id": str(n), "type": "subscribe",
                                    "payload": {"query": query, "variables": variables}})
                    assert (await receive(ws))["id"] == str(n)
            finally:
                await ws.close()
            refused = await opened(server, SECRET)
            try:
                with pytest.raises(ConnectionClosed):
                    await receive(refused)
            finally:
                await refused.close()

        run(sockets())
    output = server.logs()
    assert "Application startup complete" in output, "the server's output was not captured"
    assert SECRET not in output.lower()
    assert "li.wei" not in output.lower()


def test_the_server_stops_on_sigterm_with_subscriptions_and_a_half_sent_request_open(tmp_path: Path) -> None:
    """A client that never lets go (open subscriptions it stops answering, a request whose body never
    comes) does not keep the server up: SIGTERM ends it in time, the lifespan (audit flush) done."""
    sockets: list[ClientConnection] = []

    async def subscribed(server: Server) -> None:
        for n in range(3):
            ws = await opened(server, "ops")
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": str(n), "type": "subscribe",
                            "payload": {"query": SUBSCRIBE, "variables": {"id": server.ids[SECRET]}}})
            sockets.append(ws)

    async def closed() -> None:
        for ws in sockets:
            await ws.close()

    loop = asyncio.new_event_loop()  # not running while the server stops: the clients answer nothing
    try:
        with serving(tmp_path) as server:
            loop.run_until_complete(asyncio.wait_for(subscribed(server), 60))
            with socket.create_connection((LOOPBACK, httpx.URL(server.url).port or 80)) as stalled:
                stalled.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                assert server.post(VERSION, {"id": server.ids[SECRET]}).status_code == 200
                started = time.monotonic()
                server.stop()  # SIGTERM, at most STOP_S, and the lifespan's last log line
                assert time.monotonic() - started < STOP_S
    finally:
        loop.run_until_complete(closed())
        loop.close()


def test_websocket_url_is_not_logged(server: Server) -> None:
    """Like a GET's query string, a websocket URL's may carry an identifier: `persona serve`
    promises that request lines are not logged."""
    who = "aiko.tanaka@example.com"

    async def scenario() -> None:
        url = server.ws_url + "?subject=" + who
        async with connect(url, subprotocols=[PROTOCOL], proxy=None, open_timeout=10) as ws:
            await send(ws, {"type": "connection_init", "payload": {}})
            with pytest.raises(ConnectionClosed):
                await receive(ws)

    run(scenario())  # uvicorn logs a websocket's line as it accepts it: before the handshake completes
    assert who not in server.logs(), "a websocket URL's query string was logged"


def test_a_revoked_token_ends_its_subscription(server: Server) -> None:
    from persona.tokens import revoke_token

    with Persona.open(server.settings) as p:
        token = create_token(p, "short-lived", frozenset({"profiles:read"}))
    email = "aiko.tanaka@example.com"

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, token)
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "r", "type": "subscribe",
                            "payload": {"query": SUBSCRIBE, "variables": {"id": server.ids[email]}}})
            assert (await ingest_until_next(server, ws, email, "ws-revoke"))["type"] == "next"
            with Persona.open(server.settings) as p:
                revoke_token(p, "short-lived")
            while True:  # updates may still arrive until the server notices (its token cache lives 2 s)
                message = await receive(ws, timeout=15)
                if message["type"] != "next":
                    return message
        finally:
            await ws.close()

    assert run(scenario()) == {"id": "r", "type": "complete"}


def test_a_websocket_document_with_several_operations_needs_a_name(server: Server) -> None:
    document = SUBSCRIBE.replace("subscription(", "subscription A(") + " query B { __typename }"

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, "reader")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "n", "type": "subscribe",
                            "payload": {"query": document, "variables": {"id": server.ids[SECRET]}}})
            return await receive(ws)
        finally:
            await ws.close()

    message = run(scenario())
    assert (message["id"], message["type"]) == ("n", "error"), message
    assert "operationName" in message["payload"][0]["message"]


def test_every_query_and_mutation_over_http(server: Server) -> None:
    from persona.erasure import verify_receipt

    everything = frozenset({"profiles:read", "history:read", "predictions:read", "insights:read",
                            "insights:exact", "events:write", "erasure:write"})
    with Persona.open(server.settings) as p:
        token = create_token(p, "http-everything", everything)
        public_key = p.keyring.public_key
    email = "http.everyone@example.com"  # a person of this test's own: erased at its end

    def ask(query: str, variables: dict[str, Any] | None = None) -> Any:
        response = server.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        assert email not in response.text
        return body["data"]

    events = [{"source": "web", "type": "page_viewed", "occurredAt": f"2026-02-0{day}T10:00:00Z",
               "eventId": f"http-all-{day}", "subject": {"namespace": "email", "value": email},
               "data": {"url": f"https://shop.example/http/{day}"}} for day in (1, 2, 3, 4)]
    ingest = "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { appended profilesCreated } }"
    assert ask(ingest, {"e": events[:3]})["ingestEvents"] == {"appended": 3, "profilesCreated": 1}
    pid = ask('query($v: String!) { profile(subject: {namespace: "email", value: $v}) { id } }',
              {"v": email})["profile"]["id"]
    full = ask("""query($id: ID) { profile(id: $id) { id version updatedAt attributes features segments
        predictions { model } identities { namespace hash } history(first: 2) {
          nodes { id type occurredAt data } pageInfo { hasNextPage endCursor } } } }""", {"id": pid})["profile"]
    assert full["version"] == 3 and full["predictions"] == [] and full["identities"][0]["namespace"] == "email"
    assert [n["id"] for n in full["history"]["nodes"]] == ["http-all-3", "http-all-2"]
    assert full["history"]["pageInfo"]["hasNextPage"]
    past = ask("query($id: ID, $t: DateTime) { profile(id: $id, asOf: $t) { version } }",
               {"id": pid, "t": "2026-02-02T12:00:00Z"})["profile"]
    assert past["version"] == 2
    seen, after = [], None
    while True:
        page = ask("query($a: String) { profiles(first: 2, after: $a) { nodes { id } pageInfo { hasNextPage"
                   " endCursor } } }", {"a": after})["profiles"]
        seen += [n["id"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pid in seen and seen == sorted(set(seen))
    insights = ask('{ insights(groupBy: ["country"]) { groups { key count } k threshold } }')["insights"]
    assert insights["k"] == insights["threshold"] == 5
    assert ask(ingest, {"e": events[3:]})["ingestEvents"]["appended"] == 1
    assert ask("query($id: ID) { profile(id: $id) { version } }", {"id": pid})["profile"]["version"] == 4
    erased = ask("mutation($id: ID) { eraseProfile(id: $id) { profileId receipt } }", {"id": pid})["eraseProfile"]
    assert erased["profileId"] == pid
    assert verify_receipt(erased["receipt"], public_key)["profile_id"] == pid
    gone = ask("query($id: ID) { profile(id: $id) { id predictions { model } history { nodes { id } } } }",
               {"id": pid})
    assert gone["profile"] is None


def test_a_websocket_operation_name_picks_the_subscription_or_is_refused(server: Server) -> None:
    document = SUBSCRIBE.replace("subscription(", "subscription A(") + (
        " subscription B($id: ID!) { profileUpdated(id: $id) { id } }")
    email = "aiko.tanaka@example.com"

    async def named(name: str) -> dict[str, Any]:
        ws = await opened(server, "reader")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "n", "type": "subscribe", "payload": {
                "query": document, "operationName": name, "variables": {"id": server.ids[email]}}})
            if name == "A":
                return await ingest_until_next(server, ws, email, "ws-named")
            return await receive(ws)
        except ConnectionClosed as closed:  # graphql-transport-ws refuses an unknown name by closing
            return {"closed": closed.rcvd.code if closed.rcvd is not None else None}
        finally:
            await ws.close()

    assert run(named("Z")) == {"closed": 4400}
    update = run(named("A"))
    assert (update["id"], update["type"]) == ("n", "next")
    assert "errors" not in update["payload"], update  # subscription A ran (B asks for the id only)
    assert set(update["payload"]["data"]["profileUpdated"]) == {"id", "version"}


def test_a_slow_token_may_subscribe(server: Server) -> None:
    with Persona.open(server.settings) as p:
        # one request per 1,000 s: nothing refills while the test runs, however slow the machine,
        # so a second charge for the same subscription would be refused
        token = create_token(p, "slow-subscriber", frozenset({"profiles:read"}), rate_per_s=0.001)
    email = "aiko.tanaka@example.com"

    async def scenario() -> dict[str, Any]:
        ws = await opened(server, token)
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "s", "type": "subscribe",
                            "payload": {"query": SUBSCRIBE, "variables": {"id": server.ids[email]}}})
            return await ingest_until_next(server, ws, email, "ws-slow")
        finally:
            await ws.close()

    message = run(scenario())
    assert (message["id"], message["type"]) == ("s", "next"), message
    assert "errors" not in message["payload"], message  # charged once, not twice (a second charge is refused)
    assert message["payload"]["data"]["profileUpdated"]["id"] == server.ids[email]


def test_a_websocket_message_over_64_kib_closes_the_connection(server: Server) -> None:
    aliases = " ".join(f"a{i}: version" for i in range(8_000))  # ~100 KB

    async def scenario() -> int | None:
        ws = await opened(server, "reader")
        try:
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, {"id": "big", "type": "subscribe", "payload": {
                "query": "subscription($id: ID!) { profileUpdated(id: $id) { " + aliases + " } }",
                "variables": {"id": server.ids[SECRET]}}})
            await receive(ws)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        finally:
            await ws.close()
        raise AssertionError("a 100 KB document was accepted")

    assert run(scenario()) == 1009  # "message too big", before anything is parsed
    assert server.post(VERSION, {"id": server.ids[SECRET]}, token="reader").status_code == 200


# -- forwarded headers and the per-address limit -------------------------------------------------
def rotating(n: int) -> dict[str, str]:
    """Headers a client sets to look like another client each time (and a token nobody has)."""
    address = f"203.0.{n // 250}.{n % 250 + 1}"
    return {"X-Forwarded-For": address, "Forwarded": f"for={address}", "X-Real-IP": address,
            "Authorization": "Bearer pst_" + "g" * 43}


def first_refusal(server: Server, limit: int = 1_000) -> int | None:
    """How many requests without a valid token, each claiming another address, until one is
    refused for its address (429); None if none was."""
    with server.client() as http:
        for n in range(limit):
            status = check(http.post("/graphql", json={"query": "{ __typename }"}, headers=rotating(n))).status_code
            assert status in (401, 429)
            if status == 429:
                return n
    return None


def test_forwarded_headers_do_not_choose_the_address_by_default(tmp_path: Path) -> None:
    with serving(tmp_path) as server:  # every request comes from 127.0.0.1, uvicorn's default trusted proxy
        refused_at = first_refusal(server)
        assert refused_at is not None, "rotating X-Forwarded-For escaped the per-address limit"
        assert refused_at >= 40  # the burst (2 s at 20/s) is granted first


def test_forwarded_headers_are_trusted_only_from_the_proxies_named(tmp_path: Path) -> None:
    runner = CliRunner()
    for half in (["--proxy-headers"], ["--forwarded-allow-ips", LOOPBACK]):
        alone = runner.invoke(cli, ["--data", str(tmp_path / "none"), "serve", *half])
        assert alone.exit_code == 2 and "go together" in alone.output
    with serving(tmp_path, None, "--proxy-headers", "--forwarded-allow-ips", LOOPBACK) as server:
        assert first_refusal(server, limit=200) is None  # behind a named proxy, each address is its own


# -- websocket tokens, wherever they travel --------------------------------------------------------
@contextmanager
def in_thread(settings: Settings, options: ServerOptions) -> Iterator[str]:
    """The app under a real uvicorn on a loopback port, in this process (for options `serve` does
    not take); yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, options), host=LOOPBACK, port=port, log_level="warning",
                            ws="websockets-sansio", **uvicorn_proxies(False, None))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(int(STARTUP_S / 0.01)):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "the server did not start"
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def connected(url: str, *, header: str | None = None, payload: str | None = None) -> str | int:
    """connection_init with a token in the upgrade's header or in the payload: the answer's type, or the
    close code."""
    headers = {"Authorization": f"Bearer {header}"} if header else None
    ws = await connect("ws" + url.removeprefix("http") + "/graphql", subprotocols=[PROTOCOL], proxy=None,
                       open_timeout=10, additional_headers=headers)
    try:
        await send(ws, {"type": "connection_init",
                        "payload": {"authorization": f"Bearer {payload}"} if payload else {}})
        answer: str = (await receive(ws))["type"]
        return answer
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else -1
    finally:
        await ws.close()


def test_a_locked_out_address_is_refused_whichever_way_its_websocket_carries_the_token(tmp_path: Path) -> None:
    settings, tokens, ids = prepare(tmp_path)
    valid = tokens["reader"]
    # one guess per thousand seconds: the first wrong token locks the address out for the test's length
    with in_thread(settings, ServerOptions(unauthenticated_rate=0.001)) as url:
        assert run(connected(url, header=valid)) == "connection_ack"  # before: the header works
        assert run(connected(url, payload=valid)) == "connection_ack"  # and so does the payload
        assert run(connected(url, payload="pst_" + "w" * 43)) == 4403  # a wrong guess
        assert run(connected(url, header="pst_" + "w" * 43)) == 4403  # locked out: not even looked up
        assert run(connected(url, header=valid)) == 4403
        assert run(connected(url, payload=valid)) == 4403
        assert run(connected(url, header="pst_" + "w" * 43, payload=valid)) == 4403
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as http:  # HTTP: a valid token still works
            answer = http.post("/graphql", json={"query": VERSION, "variables": {"id": ids[SECRET]}},
                               headers={"Authorization": f"Bearer {valid}"})
            assert answer.status_code == 200 and answer.json()["data"]["profile"]["version"] > 0
            assert http.post("/graphql", json={"query": VERSION}).status_code == 429
