"""Benchmark of the GraphQL API, served by the real `persona serve` (one uvicorn worker) and
loaded with wrk from a separate process, against a ceiling measured in the same run: a bare
Starlette JSON endpoint serving the same data (scripts/bench_api_ceiling.py). Writes the API
section of docs/benchmarks.md and docs/benchmarks-api.json.

    scripts/bench-api                  # 200,000 events over 10,000 profiles; wrk -t1 -c16 -d15s, 3 runs
    scripts/bench-api --quick          # a smoke run (without wrk: a Python client, figures not comparable)
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from _publish import publish
from bench_projections import mixed_events

from persona import Persona, Settings
from persona.events import Event, Subject
from persona.projector import rebuild
from persona.tokens import SCOPES, create_token

ROOT = Path(__file__).resolve().parent.parent
CEILING = Path(__file__).resolve().parent / "bench_api_ceiling.py"
PROFILE_QUERY = ("query($id: ID!){profile(id:$id){attributeValues{gender age city country language custom}"
                 " featureValues{frequency monetary aov recencyDays lifecycleStage rfm{r f m} sessions conversionRate"
                 " topCategories} predictions{model score}}}")
HISTORY_QUERY = ("query($id: ID!){profile(id:$id){history(first:50){edges{cursor node{type occurredAt source data}} "
                 "pageInfo{hasNextPage endCursor}}}}")
HISTORY_PAGE = 50
READS = 5  # reads of each profile between changes, in the answer cache's scenarios
CACHE_TARGET = 0.60  # of the ceiling, for (a) through the answer cache (issue 22, Deliver 5)
TARGET_RPS, TARGET_P99_MS = 3_000, 20.0
WRK_MISSING = "wrk not found: apt-get install wrk"


class BenchError(RuntimeError):
    """A run that cannot be trusted: a server that does not start, errors under load, a wrong answer."""


# -- the dataset ---------------------------------------------------------------------------------
def skewed_events(n: int, people: int, heavy: int, heavy_share: float, seed: int = 11) -> list[Event]:
    """bench_projections' realistic mix, with a share of the events moved to `heavy` busy people
    (user0…), interleaved in time as they would arrive: they carry the 50-event history pages."""
    rng = random.Random(seed)
    out = []
    for event in mixed_events(n, people):
        if rng.random() < heavy_share:
            event = event._replace(subject=Subject("email", f"user{rng.randrange(heavy)}@example.com"))
        out.append(event)
    return out


@dataclass
class Dataset:
    data_dir: Path
    token: str
    profile_ids: list[str]  # rotated by the profile scenario
    history_ids: list[str]  # profiles with at least 50 events
    all_ids: list[str]  # every profile: the answer cache's rotation, read 5 times each
    all_history_ids: list[str]  # every profile with at least 50 events
    profiles: int
    events: int
    append_s: float
    rebuild_s: float
    db_mb: float


def build_dataset(root: Path, events: int, people: int, heavy: int, heavy_share: float, rotate: int) -> Dataset:
    settings = Settings.load(root / "data", env={})
    persona = Persona.init(settings)
    try:
        batch = skewed_events(events, people, heavy, heavy_share)
        started = time.perf_counter()
        for i in range(0, len(batch), 20_000):
            persona.log.append(batch[i : i + 20_000])
        append_s = time.perf_counter() - started
        del batch
        started = time.perf_counter()
        profiles = rebuild(persona, workers=os.cpu_count())
        rebuild_s = time.perf_counter() - started
        reads = frozenset(scope for scope in SCOPES if scope.endswith(":read"))
        token = create_token(persona, "bench", reads, rate_per_s=1e9)
        ids = list(persona.recorder.stream_ids())
        heads = persona.recorder.heads(ids)
        history_ids = all_history = [pid for pid in ids if heads[pid].version >= HISTORY_PAGE]
        if not history_ids:
            raise BenchError(f"no profile has {HISTORY_PAGE} events: raise --events or lower --people")
        rng = random.Random(3)
        profile_ids = rng.sample(ids, min(rotate, len(ids)))
        history_ids = rng.sample(history_ids, min(rotate, len(history_ids)))
        persona.recorder.checkpoint()
    finally:
        persona.close()
    return Dataset(settings.data_dir, token, profile_ids, history_ids, ids, all_history, profiles, events, append_s,
                   rebuild_s, settings.db_path.stat().st_size / 1e6)


# -- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A server in its own process, its output kept in a log file for when it fails."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name, self.port, self.log_path = name, port, log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}  # keys from the key file
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=env)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(self.port, "GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer /healthz within {timeout_s:.0f} s:\n{self.log_tail()}")

    def peak_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux: VmHWM), or None where it cannot be read."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- scenarios -----------------------------------------------------------------------------------
@dataclass
class Scenario:
    key: str
    label: str
    port: int
    path: str  # the URL path wrk is pointed at
    method: str
    requests: list[tuple[str, bytes | None]]  # (path, body), rotated one per request
    headers: dict[str, str]
    repeat: int = 1  # each request sent this many times in a row before the next
    etags: list[str] | None = None  # If-None-Match per request (a client revalidating what it holds)
    kind: str = ""  # "profile" or "history": the ceiling it is compared with


def graphql_scenario(key: str, label: str, port: int, query: str, ids: list[str], token: str, *,
                     repeat: int = 1) -> Scenario:
    bodies = [("/graphql", orjson.dumps({"query": query, "variables": {"id": pid}})) for pid in ids]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    kind = "history" if query is HISTORY_QUERY else "profile"
    return Scenario(key, label, port, "/graphql", "POST", bodies, headers, repeat=repeat, kind=kind)


def graphql_get_scenario(key: str, label: str, port: int, query: str, ids: list[str], token: str) -> Scenario:
    """The query by GET (what a client revalidating with If-None-Match sends: 304 is for GET)."""
    paths = [("/graphql?" + urllib.parse.urlencode({"query": query, "variables": orjson.dumps({"id": pid}).decode()}),
              None) for pid in ids]
    kind = "history" if query is HISTORY_QUERY else "profile"
    return Scenario(key, label, port, "/graphql", "GET", paths, {"Authorization": f"Bearer {token}"}, kind=kind)


def ceiling_scenario(key: str, label: str, port: int, route: str, ids: list[str]) -> Scenario:
    paths = [(f"{route}?id={urllib.parse.quote(pid, safe='')}", None) for pid in ids]
    return Scenario(key, label, port, route, "GET", paths, {}, kind=route.strip("/"))


def lua_string(text: str) -> str:
    """A double-quoted Lua string literal (bytes other than printable ASCII as decimal escapes)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        else:
            out.append(char if 32 <= byte < 127 else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_script(scenario: Scenario) -> str:
    """wrk's script: the rotation, each request `repeat` times in a row, with its If-None-Match if any."""
    lines = [f"wrk.method = {lua_string(scenario.method)}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in scenario.headers.items()]
    lines.append("local requests = {")
    for n, (path, body) in enumerate(scenario.requests):
        etag = lua_string(scenario.etags[n]) if scenario.etags else "nil"
        lines.append(f"  {{{lua_string(path)}, {lua_string(body.decode()) if body is not None else 'nil'}, {etag}}},")
    lines += [
        "}",
        f"local repeat_each = {scenario.repeat}",
        "local i = -1",
        "function request()",
        "  i = i + 1",
        "  local r = requests[math.floor(i / repeat_each) % #requests + 1]",
        "  if r[3] == nil then return wrk.format(nil, r[1], nil, r[2]) end",
        "  local headers = {}",  # wrk.format takes the whole header set: the script's own, and this one
        "  for k, v in pairs(wrk.headers) do headers[k] = v end",
        '  headers["If-None-Match"] = r[3]',
        "  return wrk.format(nil, r[1], headers, r[2])",
        "end",
        "",
    ]
    return "\n".join(lines)


def check_body(scenario: Scenario, status: int, body: bytes) -> dict[str, Any]:
    """One answer, parsed and checked: the shape the scenario asks for, no errors."""
    if scenario.etags is not None:
        if status != 304 or body:
            raise BenchError(f"{scenario.key}: HTTP {status} to a request naming the answer's ETag: {body[:300]!r}")
        return {}
    if status != 200:
        raise BenchError(f"{scenario.key}: HTTP {status}: {body[:300]!r}")
    doc = orjson.loads(body)
    if scenario.key.startswith("ceiling"):
        found = doc
    else:
        if doc.get("errors"):
            raise BenchError(f"{scenario.key}: GraphQL errors: {doc['errors']}")
        found = (doc.get("data") or {}).get("profile")
        if found is None:
            raise BenchError(f"{scenario.key}: no profile in {body[:300]!r}")
        if "history" in found:
            history = found["history"]
            found = {"edges": [{"cursor": e["cursor"], **e["node"]} for e in history["edges"]],
                     "hasNextPage": history["pageInfo"]["hasNextPage"],
                     "endCursor": history["pageInfo"]["endCursor"]}
    if scenario.kind == "history":
        edges = found["edges"]
        if (len(edges) != HISTORY_PAGE or not isinstance(found["hasNextPage"], bool)
                or found["endCursor"] != edges[-1]["cursor"]):
            raise BenchError(f"{scenario.key}: expected a page of {HISTORY_PAGE} events, got {len(edges)}")
        for edge in edges:
            if not (edge["type"] and edge["occurredAt"] and edge["source"] and isinstance(edge["data"], dict)):
                raise BenchError(f"{scenario.key}: an incomplete event: {edge}")
    elif scenario.key.startswith("ceiling"):
        if not (isinstance(found.get("attributes"), dict) and isinstance(found.get("features"), dict)
                and "rfm" in found["features"] and found.get("predictions") == []):
            raise BenchError(f"{scenario.key}: not a profile: {body[:300]!r}")
    elif not (isinstance(found.get("attributeValues"), dict) and isinstance(found.get("featureValues"), dict)
              and "rfm" in found["featureValues"] and found.get("predictions") == []):
        raise BenchError(f"{scenario.key}: not a profile: {body[:300]!r}")
    return dict(found)


def verify(scenarios: list[Scenario]) -> int:
    """Every request of every rotation answered correctly (this also warms the servers' caches),
    and the first of each answered the same by the API and by the ceiling."""
    checked = 0
    firsts: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        conn = http.client.HTTPConnection("127.0.0.1", scenario.port, timeout=10)
        try:
            if scenario.etags is not None:  # what a client holds: each answer's ETag, asked for once
                scenario.etags = []
                for path, body in scenario.requests:
                    conn.request(scenario.method, path, body, scenario.headers)
                    response = conn.getresponse()
                    response.read()
                    etag = response.getheader("ETag")
                    if response.status != 200 or not etag:
                        raise BenchError(f"{scenario.key}: HTTP {response.status}, no ETag to revalidate with")
                    scenario.etags.append(etag)
            for n, (path, body) in enumerate(scenario.requests):
                headers = scenario.headers | ({"If-None-Match": scenario.etags[n]} if scenario.etags else {})
                conn.request(scenario.method, path, body, headers)
                response = conn.getresponse()
                found = check_body(scenario, response.status, response.read())
                checked += 1
                if n == 0:
                    firsts[scenario.key] = found
        finally:
            conn.close()
    for kind in ("profile", "history"):
        api, ceiling = firsts.get(kind), firsts.get(f"ceiling_{kind}")
        if api is None or ceiling is None:
            continue
        if kind == "profile":  # the typed fields say what the ceiling's JSON says
            same = (api["attributeValues"]["country"] == ceiling["attributes"].get("country")
                    and api["featureValues"]["frequency"] == ceiling["features"]["frequency"]
                    and api["featureValues"]["rfm"] == ceiling["features"]["rfm"])
        else:
            same = api == ceiling
        if not same:
            raise BenchError(f"{kind}: the API and the ceiling answer differently:\n{api}\n{ceiling}")
    return checked


# -- the GraphQL layer's own floor ------------------------------------------------------------------
def graphql_floor(data_dir: Path, token: str, scenarios: list[Scenario], repeat: int) -> dict[str, float]:
    """Microseconds per execution of each GraphQL scenario's very query in this process, as the
    server executes it (graphql-core over the plan strawberry's schema made, the same executor),
    against a server state of its own over the same data (its loaders, its audit buffer): what the
    GraphQL layer costs before any HTTP, parsing, token check or rate limit (issue 22, Deliver 5)."""
    import asyncio

    from graphql import execute
    from graphql.pyutils import is_awaitable
    from strawberry.execution.is_awaitable import optimized_is_awaitable

    from persona.api.app import GRAPHQL_SCHEMA
    from persona.api.context import ApiState, RequestContext, ServerOptions
    from persona.api.execution import Executor
    from persona.tokens import lookup_token

    async def measure() -> dict[str, float]:
        settings = Settings.load(data_dir, env={})
        state = ApiState(settings, GRAPHQL_SCHEMA, ServerOptions())
        found = lookup_token(state.persona, token)
        if found is None:
            raise BenchError("the floor: the benchmark's token is not in the store")
        out = {}
        try:
            for scenario in scenarios:
                documents = [orjson.loads(body) for _, body in scenario.requests if body is not None]
                plan = state.plans.get(documents[0]["query"], None)
                for n in range(repeat + len(documents)):  # the first pass over the rotation warms up
                    doc = documents[n % len(documents)]
                    if n == len(documents):
                        began = time.perf_counter()
                    # as the server runs it (persona.api.app): the cached plan's document, its executor
                    result = execute(GRAPHQL_SCHEMA, plan.document, variable_values=doc["variables"],
                                     context_value=RequestContext(state, found, plan),
                                     is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
                                     executor_class=Executor)
                    if is_awaitable(result):
                        result = await result
                    if result.errors:
                        raise BenchError(f"the floor: {scenario.key}: {result.errors[0]}")
                    state.audit.take()  # what a server writes every quarter-second: kept from piling up
                out[scenario.key] = (time.perf_counter() - began) / repeat * 1e6
        finally:
            state.persona.close()
            state._feed_persona.close()
        return out

    return asyncio.run(measure())


# -- load ----------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> dict[str, float]:
    """req/s, p50 and p99 (ms) from `wrk --latency`; refuses runs with any error."""
    latencies = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)] for m in _LATENCY.finditer(output)}
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None or set(latencies) != {"50", "99"}:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    sockets = _SOCKET.search(output)
    if sockets and any(int(v) for v in sockets.groups()):
        raise BenchError(f"socket errors under load ({sockets.group(0)}):\n{output}")
    non_2xx = _NON_2XX.search(output)
    if non_2xx and int(non_2xx.group(1)):
        raise BenchError(f"{non_2xx.group(1)} responses were not 2xx:\n{output}")
    if int(total.group(1)) == 0:
        raise BenchError(f"wrk made no request:\n{output}")
    return {"rps": float(rps.group(1)), "p50_ms": latencies["50"], "p99_ms": latencies["99"],
            "requests": int(total.group(1))}


def run_wrk(wrk: str, scenario: Scenario, script: Path, *, threads: int, connections: int, seconds: int
            ) -> dict[str, float]:
    # an answer slower than wrk's default 2 s would be a socket error, refusing the run: on a loaded
    # machine it is a slow answer, and the latencies say so
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{scenario.port}{scenario.path}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    if done.stderr.strip():  # a Lua error is reported here, per request
        raise BenchError(f"wrk complained: {done.stderr[:2000]}")
    return parse_wrk(done.stdout)


_CACHE_COUNTS = re.compile(r"answer cache: (\d+) hits \((\d+) of them revalidated, 304\), (\d+) misses")


def cache_counts(server: Server) -> dict[str, int] | None:
    """The answer cache's counts a stopped server logged (hits, revalidated, misses), if any."""
    found = _CACHE_COUNTS.search(server.log_tail(200))
    if found is None:
        return None
    hits, revalidated, misses = (int(x) for x in found.groups())
    return {"hits": hits, "revalidated": revalidated, "misses": misses}


def run_python(scenario: Scenario, count: int) -> dict[str, float]:
    """A small sequential load loop on one keep-alive connection: for machines without wrk.
    It measures the client as much as the server; its figures are not comparable."""
    latencies = []
    conn = http.client.HTTPConnection("127.0.0.1", scenario.port, timeout=10)
    try:
        started = time.perf_counter()
        for n in range(count):
            at = n // scenario.repeat % len(scenario.requests)
            path, body = scenario.requests[at]
            headers = scenario.headers | ({"If-None-Match": scenario.etags[at]} if scenario.etags else {})
            sent = time.perf_counter()
            conn.request(scenario.method, path, body, headers)
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - sent) * 1000)
            if not 200 <= response.status < 300:
                raise BenchError(f"{scenario.key}: HTTP {response.status} under load")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    centiles = statistics.quantiles(latencies, n=100)
    return {"rps": count / elapsed, "p50_ms": statistics.median(latencies), "p99_ms": centiles[98],
            "requests": count}


# -- the run -------------------------------------------------------------------------------------
def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk\s+(?:\S+/)?(\d[\w.]*)", done.stdout + done.stderr)
    return found.group(1) if found else "?"


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks stop the servers and remove the data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--heavy", type=int, default=200, help="busy people who get a share of the events")
    parser.add_argument("--heavy-share", type=float, default=0.1)
    parser.add_argument("--rotate", type=int, default=1_000, help="profile ids rotated over by each scenario")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator; `python` (a quick run only) is used by auto when wrk is missing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.quick:
        args.events, args.people, args.heavy, args.heavy_share, args.rotate = 3000, 150, 8, 0.2, 100
        args.runs, args.duration = 1, 1
    wrk = shutil.which("wrk")
    client = args.client if args.client != "auto" else ("wrk" if wrk or not args.quick else "python")
    if client == "wrk" and wrk is None:
        sys.exit(WRK_MISSING)
    if client == "python" and not args.quick:
        sys.exit("a full run is measured with wrk only (--client python is for --quick runs)")
    signal.signal(signal.SIGTERM, _terminated)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="persona-bench-api-") as tmp:
        root = Path(tmp)
        servers: list[Server] = []
        try:
            print(f"building {args.events:,} events over {args.people:,} profiles…", file=sys.stderr)
            data = build_dataset(root, args.events, args.people, args.heavy, args.heavy_share, args.rotate)
            ports = {name: free_port() for name in ("api", "cached", "revalidated", "api_2w", "ceiling")}

            def persona_serve(name: str, *options: str) -> Server:
                argv = [sys.executable, "-m", "persona", "--data", str(data.data_dir), "serve", "--port",
                        str(ports[name]), *options]
                return Server(f"persona serve ({name})", argv, ports[name], root / f"{name}.log")

            # uncached: the answer cache off; cached: a cache far smaller than the rotation, so that each
            # profile's 5 reads in a row miss once (as after a change) and its answer is pushed out before
            # the rotation comes back; revalidated: the default cache, asked with If-None-Match
            servers.append(persona_serve("api", "--answer-cache-mb", "0"))
            servers.append(persona_serve("cached", "--answer-cache-mb", "1"))
            servers.append(persona_serve("revalidated"))
            servers.append(persona_serve("api_2w", "--workers", "2", "--answer-cache-mb", "0"))
            servers.append(Server("ceiling", [sys.executable, str(CEILING), "--data", str(data.data_dir),
                                              "--port", str(ports["ceiling"])], ports["ceiling"], root / "ceiling.log"))
            for server in servers:
                server.wait_healthy()
            api_port, ceiling_port = ports["api"], ports["ceiling"]
            everyone = list(data.all_ids)
            random.Random(5).shuffle(everyone)
            scenarios = [
                graphql_scenario("profile", "(a) `profile(id)`: typed attributes, features, predictions", api_port,
                                 PROFILE_QUERY, data.profile_ids, data.token),
                graphql_scenario("history", f"(b) `profile(id)`: a history page of {HISTORY_PAGE} events",
                                 api_port, HISTORY_QUERY, data.history_ids, data.token),
                ceiling_scenario("ceiling_profile", "ceiling for (a): bare Starlette JSON, same data", ceiling_port,
                                 "/profile", data.profile_ids),
                ceiling_scenario("ceiling_history", f"ceiling for (b): bare Starlette JSON, same {HISTORY_PAGE} events",
                                 ceiling_port, "/history", data.history_ids),
                graphql_scenario("cached_profile", f"(c) (a) through the answer cache, each profile read {READS} times"
                                 " between changes", ports["cached"], PROFILE_QUERY, everyone, data.token,
                                 repeat=READS),
                graphql_scenario("cached_history", f"(d) (b) through the answer cache, each page read {READS} times"
                                 " between changes", ports["cached"], HISTORY_QUERY, data.all_history_ids, data.token,
                                 repeat=READS),
                dataclasses.replace(
                    graphql_get_scenario("revalidated_history", "(e) (b) revalidated: a GET with If-None-Match naming"
                                         " the page held, answered 304", ports["revalidated"], HISTORY_QUERY,
                                         data.history_ids, data.token), etags=[]),
                graphql_scenario("profile_2w", "(a) with `--workers 2`", ports["api_2w"], PROFILE_QUERY,
                                 data.profile_ids, data.token),
                graphql_scenario("history_2w", "(b) with `--workers 2`", ports["api_2w"], HISTORY_QUERY,
                                 data.history_ids, data.token),
            ]
            print("checking every answer of every rotation…", file=sys.stderr)
            checked = verify(scenarios)
            measured: dict[str, list[dict[str, float]]] = {s.key: [] for s in scenarios}
            scripts = {}
            for scenario in scenarios:
                scripts[scenario.key] = root / f"{scenario.key}.lua"
                scripts[scenario.key].write_text(lua_script(scenario))
            warmup_s = 2 if client == "wrk" and not args.quick else 0
            if warmup_s:
                print("warming up…", file=sys.stderr)
                for scenario in scenarios:
                    run_wrk(wrk or "wrk", scenario, scripts[scenario.key], threads=args.threads,
                            connections=args.connections, seconds=warmup_s)
            for run in range(args.runs):  # scenarios interleaved, so that noise falls on all of them alike
                for scenario in scenarios:
                    print(f"run {run + 1}/{args.runs}: {scenario.key}…", file=sys.stderr)
                    if client == "wrk":
                        got = run_wrk(wrk or "wrk", scenario, scripts[scenario.key], threads=args.threads,
                                      connections=args.connections, seconds=args.duration)
                    else:
                        got = run_python(scenario, 300)
                    measured[scenario.key].append(got)
            print("the GraphQL layer's floor: the same queries executed in this process…", file=sys.stderr)
            floor = graphql_floor(data.data_dir, data.token,
                                  [sc for sc in scenarios if sc.key in ("profile", "history")],
                                  200 if args.quick else 3_000)
            server_peak_mb = servers[0].peak_mb()
            for server in servers:
                if server.proc.poll() is not None:
                    raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
                logged = server.log_path.read_text(errors="replace")
                if "Traceback" in logged or "internal error" in logged:  # a failure inside a 200 answer
                    raise BenchError(f"{server.name} logged errors during the run:\n{server.log_tail()}")
        except BenchError as e:
            sys.exit(f"bench-api: {e}")
        finally:
            for server in servers:
                server.stop()
        caches = {server.name: cache_counts(server) for server in servers}
    load_after = os.getloadavg()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"SQLite {sqlite3.sqlite_version}",
        "software": {"uvicorn": version("uvicorn"), "starlette": version("starlette"),
                     "strawberry-graphql": version("strawberry-graphql"), "graphql-core": version("graphql-core"),
                     "wrk": wrk_version(wrk) if client == "wrk" and wrk else None},
        "workload": {"events": data.events, "profiles": data.profiles, "people": args.people,
                     "heavy_people": args.heavy, "heavy_share": args.heavy_share,
                     "profiles_rotated": len(data.profile_ids), "history_profiles_rotated": len(data.history_ids),
                     "history_profiles_all": len(data.all_history_ids),
                     "db_mb": round(data.db_mb, 1), "append_s": round(data.append_s, 2),
                     "rebuild_s": round(data.rebuild_s, 2), "answers_checked": checked},
        "load": {"client": client, "threads": args.threads, "connections": args.connections,
                 "duration_s": args.duration, "warmup_s": warmup_s, "runs": args.runs},
        "server_peak_mb": None if server_peak_mb is None else round(server_peak_mb, 1),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "scenarios": {},
    }
    for scenario in scenarios:
        runs = measured[scenario.key]
        results["scenarios"][scenario.key] = {
            "label": scenario.label,
            "rps": stats([r["rps"] for r in runs]),
            "p50_ms": stats([r["p50_ms"] for r in runs]),
            "p99_ms": stats([r["p99_ms"] for r in runs]),
            "raw": runs,
        }
    s = results["scenarios"]
    for scenario in scenarios:
        if not scenario.key.startswith("ceiling"):
            s[scenario.key]["vs_ceiling"] = s[scenario.key]["rps"]["median"] / s[f"ceiling_{scenario.kind}"]["rps"][
                "median"]
    for kind in ("profile", "history"):
        # Deliver 5's measure: a served request's cost (one worker: 1/throughput) against the ceiling's
        # plus the GraphQL layer's own floor; target at most 1.25×
        served_us, ceiling_us = 1e6 / s[kind]["rps"]["median"], 1e6 / s[f"ceiling_{kind}"]["rps"]["median"]
        s[kind]["floor_us"] = round(floor[kind], 1)
        s[kind]["served_us"] = round(served_us, 1)
        s[kind]["over_floors"] = served_us / (ceiling_us + floor[kind])
    headline = s["profile"]
    met = headline["rps"]["median"] >= TARGET_RPS and headline["p99_ms"]["median"] <= TARGET_P99_MS
    if client != "wrk":
        met = None  # a Python client measures itself
    results["target"] = {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS, "met": met}
    judged = client == "wrk"
    results["p99_target"] = {kind: None if not judged else s[kind]["p99_ms"]["median"] <= TARGET_P99_MS
                             for kind in ("profile", "history")}
    results["cache_target"] = {"share": CACHE_TARGET, "reads": READS,
                               "met": None if not judged else s["cached_profile"]["vs_ceiling"] >= CACHE_TARGET}
    results["scaling"] = {kind: s[f"{kind}_2w"]["rps"]["median"] / s[kind]["rps"]["median"]
                          for kind in ("profile", "history")}
    results["answer_cache"] = {name: counts for name, counts in caches.items() if counts is not None}
    write_report(results, args.out, quick=args.quick)


def queueing_floor(s: dict[str, Any], connections: int) -> str:
    """What the p99 target meets before persona adds anything: with `connections` requests always in
    flight on one worker, each waits for the others (Little's law), so the mean latency is at least
    connections × (ceiling + floor) per request; the bare ceiling's own p99 runs its mean latency
    times a tail ratio, which the same server cannot beat."""
    parts = []
    for key, name in (("profile", "(a)"), ("history", "(b)")):
        row, ceiling = s[key], s[f"ceiling_{key}"]
        if "floor_us" not in row:
            continue
        mean_ms = connections * (1e3 / ceiling["rps"]["median"] + row["floor_us"] / 1e3)
        tail = ceiling["p99_ms"]["median"] / (connections * 1e3 / ceiling["rps"]["median"])
        parts.append(f"{name} {mean_ms:.1f} ms mean, ≈ {mean_ms * tail:.0f} ms p99 at the ceiling's tail ratio"
                     f" {tail:.1f}")
    return (f"The floor under p99 at {connections} connections on one worker (each request waits for the others:"
            f" connections × (ceiling + floor)): " + "; ".join(parts) + ".")


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w, load, s = r["workload"], r["load"], r["scenarios"]
    if load["client"] == "wrk":
        how = (f"wrk {r['software']['wrk']}, {load['threads']} thread, {load['connections']} connections, "
               f"{load['duration_s']} s per run, from a separate process")
    else:
        how = "**python client, not comparable**: 300 sequential requests on one connection per run"

    def cell(st: dict[str, float], fmt: str) -> str:
        return f"{fmt.format(st['median'])} ({fmt.format(st['min'])}–{fmt.format(st['max'])})"

    lines = [
        "## GraphQL API (`scripts/bench-api`)",
        "",
        f"{r['when']} · {r['machine']} · {w['events']:,} mixed events over {w['profiles']:,} profiles "
        f"({w['heavy_people']} busy ones hold {w['heavy_share']:.0%} of the events); database {w['db_mb']:.0f} MB · "
        f"`persona serve`, one uvicorn worker (uvloop, httptools) · {how} · median of {load['runs']} runs (min–max) · "
        f"load average {r['load_average']['before'][0]:.2f} before, {r['load_average']['after'][0]:.2f} after",
        "",
        "| measure | req/s | p50 ms | p99 ms | of the ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in ("profile", "history", "cached_profile", "cached_history", "revalidated_history", "profile_2w",
                "history_2w", "ceiling_profile", "ceiling_history"):
        row = s[key]
        share = f"{row['vs_ceiling']:.0%}" if "vs_ceiling" in row else "—"
        lines.append(f"| {row['label']} | {cell(row['rps'], '{:,.0f}')} | {cell(row['p50_ms'], '{:.1f}')} "
                     f"| {cell(row['p99_ms'], '{:.1f}')} | {share} |")
    lines += [
        "",
        "| the GraphQL layer's floor (issue 22, Deliver 5) | the query executed in-process, as served | a served"
        " request (1/throughput) | ceiling + floor | served ÷ (ceiling + floor), target ≤ 1.25 |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in ("profile", "history"):
        row, ceiling_us = s[key], 1e6 / s[f"ceiling_{key}"]["rps"]["median"]
        if "floor_us" in row:
            lines.append(f"| {row['label']} | {row['floor_us']:,.0f} µs | {row['served_us']:,.0f} µs | "
                         f"{ceiling_us + row['floor_us']:,.0f} µs | {row['over_floors']:.2f}× |")
    lines += ["", queueing_floor(s, load["connections"])]
    t = r["target"]
    head = s["profile"]

    def verdict(met: bool | None) -> str:
        return "not judged (python client)" if met is None else "**met**" if met else "**not met**"

    counts = r.get("answer_cache", {})
    cached, revalidated = counts.get("persona serve (cached)"), counts.get("persona serve (revalidated)")
    p99 = r["p99_target"]
    lines += [
        "",
        f"Targets. (a) ≥ {t['rps']:,} req/s with p99 ≤ {t['p99_ms']:.0f} ms: {verdict(t['met'])} "
        f"({head['rps']['median']:,.0f} req/s, p99 {head['p99_ms']['median']:.1f} ms). (b) p99 ≤ "
        f"{t['p99_ms']:.0f} ms: {verdict(p99['history'])} ({s['history']['p99_ms']['median']:.1f} ms). (c) through"
        f" the answer cache ≥ {r['cache_target']['share']:.0%} of the ceiling: {verdict(r['cache_target']['met'])}"
        f" ({s['cached_profile']['vs_ceiling']:.0%})."
        + (f" Peak resident memory of the uncached `persona serve` process: {r['server_peak_mb']:,.0f} MB."
           if r.get("server_peak_mb") else ""),
        "",
        f"Scaling from one worker to two (`persona serve --workers 2`, the cache off, wrk on the same 2 cores):"
        f" {r['scaling']['profile']:.2f}× for (a), {r['scaling']['history']:.2f}× for (b).",
        "",
        "The answer cache (persona.api.answers) keys each answer by the profile's stamp in the store, the query,"
        " its variables and the token's scopes; every hit is audited. (c) and (d) read each of"
        f" {w['profiles']:,} profiles (each of {w.get('history_profiles_all', 0):,} pages) {r['cache_target']['reads']}"
        " times in a row from a server whose cache (`--answer-cache-mb 1`) is far smaller than the rotation: the"
        " first read misses, as after a change, and the answer is pushed out before the rotation comes back."
        + (f" That server counted {cached['hits']:,} hits and {cached['misses']:,} misses"
           f" ({cached['hits'] / max(cached['hits'] + cached['misses'], 1):.0%} hits, warm-up and checks included)."
           if cached else "")
        + " (e) sends each page's ETag as a client holding the page would; every answer is a 304"
        + (f" ({revalidated['revalidated']:,} of them, {revalidated['misses']:,} after re-running an expired answer)."
           if revalidated else "."),
        "",
        f"Method: (a) rotates over {w['profiles_rotated']:,} profile ids and (b) over "
        f"{w['history_profiles_rotated']:,} profiles with at least {HISTORY_PAGE} events, one id per request",
        "(a wrk Lua script: POST, JSON body with `variables`, a bearer token with every read scope and no effective",
        "rate limit). The ceiling is a bare Starlette endpoint (`scripts/bench_api_ceiling.py`) under the same",
        "uvicorn settings, answering from the same data directory with the same loaders (`load_profiles`,",
        "`history_page`): the gap is the GraphQL layer plus the API's token check, rate limit and audit trail.",
        f"All {w['answers_checked']:,} answers of the rotations are checked before the load (the API's first answers",
        "equal to the ceiling's), and a run with any non-2xx response or socket error is refused. Scenarios are",
        "interleaved within each run" + (f", after a {load['warmup_s']}-second warm-up each." if load["warmup_s"]
                                         else "."),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if quick:
        return
    publish(out, "api", r, text)


if __name__ == "__main__":
    main()
