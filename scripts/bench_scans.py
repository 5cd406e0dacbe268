"""Point reads while population scans run: `persona serve` (one uvicorn worker) over ~100,000
profiles, one client reading profiles by id, one request after another, while 10 clients each
run `insights` over the whole population back to back — first with a token each, then all
with one token. Writes the scans section of docs/benchmarks.md and docs/benchmarks-scans.json.

    scripts/bench-scans                # 600,000 events over 100,000 people; 3 runs of 20 s per phase
    scripts/bench-scans --baseline /tmp/before --baseline-label "main 72a0aa0"   # beside an older tree
    scripts/bench-scans --quick        # a smoke run (small sizes; publishes nothing)

With --baseline (a tree holding persona/, e.g. from `git archive`), a second server runs that
tree's code over the same data, and the phases alternate between the two, run by run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from _publish import cell, machine, publish
from bench_api import BenchError, Server, build_dataset, free_port, version

from persona import Persona, Settings
from persona.tokens import create_token

ROOT = Path(__file__).resolve().parent.parent
POINT_QUERY = "query($id: ID!){profile(id:$id){attributes features}}"
# noisy, so that it needs no exact-insights grant; every token has budget enough for the run
SCAN_QUERY = ('{insights(groupBy:["lifecycle_stage"], metric:"monetary", epsilon:1.0)'
              "{groups{key count mean} threshold}}")
BACKOFF_S = 0.2  # a refused scan client waits this long before asking again


@dataclass
class Phase:
    key: str
    label: str
    scanners: int
    one_token: bool


PHASES = (Phase("idle", "no scan running", 0, False),
          Phase("tokens", "10 scans at once, a token each", 10, False),
          Phase("one_token", "10 scans at once, all with one token", 10, True))


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


def post(conn: http.client.HTTPConnection, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/graphql", body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    return response.status, orjson.loads(response.read())


def read_points(port: int, token: str, ids: list[str], stop: threading.Event, tally: Tally) -> None:
    """Profiles by id, one after another on one keep-alive connection; each must be answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rng = random.Random(5)
    try:
        while not stop.is_set():
            body = orjson.dumps({"query": POINT_QUERY, "variables": {"id": rng.choice(ids)}})
            sent = time.perf_counter()
            status, doc = post(conn, token, body)
            tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
            if status != 200 or doc.get("errors") or not (doc.get("data") or {}).get("profile"):
                raise BenchError(f"a point read failed: HTTP {status}: {str(doc)[:300]}")
            tally.outcomes["ok"] += 1
    finally:
        conn.close()


def scan(port: int, token: str, stop: threading.Event, tally: Tally, errors: list[str]) -> None:
    """`insights` back to back; a refusal (a clean GraphQL error) is counted by its code, then waited on."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = orjson.dumps({"query": SCAN_QUERY})
    try:
        while not stop.is_set():
            sent = time.perf_counter()
            status, doc = post(conn, token, body)
            took = (time.perf_counter() - sent) * 1000
            if status == 200 and not doc.get("errors") and (doc.get("data") or {}).get("insights"):
                tally.latencies_ms.append(took)
                tally.outcomes["answered"] += 1
                continue
            codes = {e.get("extensions", {}).get("code") for e in doc.get("errors") or []}
            if status == 200 and codes and codes <= {"BUSY", "RATE_LIMITED"}:
                tally.outcomes[min(codes)] += 1
                stop.wait(BACKOFF_S)
                continue
            errors.append(f"HTTP {status}: {str(doc)[:300]}")
            return
    except Exception as e:  # the run is refused below
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def run_phase(phase: Phase, port: int, point_token: str, scan_tokens: list[str], ids: list[str],
              seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    points, scans, errors = Tally(), Tally(), []
    threads = [threading.Thread(target=scan, args=(port, scan_tokens[0 if phase.one_token else n], stop, scans,
                                                   errors)) for n in range(phase.scanners)]
    for thread in threads:
        thread.start()
    if phase.scanners:
        time.sleep(1.0)  # every scan client has sent its first request
    reader_failed: list[BaseException] = []

    def reader() -> None:
        try:
            read_points(port, point_token, ids, stop, points)
        except BaseException as e:
            reader_failed.append(e)
            stop.set()

    point_thread = threading.Thread(target=reader)
    point_thread.start()
    stop.wait(seconds)
    stop.set()
    point_thread.join()
    for thread in threads:
        thread.join()
    if reader_failed:
        raise BenchError(f"{phase.key}: {reader_failed[0]}")
    if errors:
        raise BenchError(f"{phase.key}: a scan failed: {errors[0]}")
    if len(points.latencies_ms) < 100:
        raise BenchError(f"{phase.key}: only {len(points.latencies_ms)} point reads in {seconds} s")
    lat = sorted(points.latencies_ms)
    return {"reads": len(lat), "p50_ms": statistics.median(lat), "p99_ms": statistics.quantiles(lat, n=100)[98],
            "max_ms": lat[-1], "scans_answered": scans.outcomes["answered"],
            "scans_refused": {k: v for k, v in scans.outcomes.items() if k != "answered"},
            "scan_p50_s": statistics.median(scans.latencies_ms) / 1000 if scans.latencies_ms else None}


def warm_up(port: int, token: str) -> None:
    """One scan before anything is measured (a server's scan processes start with its first)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        status, doc = post(conn, token, orjson.dumps({"query": SCAN_QUERY}))
    finally:
        conn.close()
    if status != 200 or doc.get("errors"):
        raise BenchError(f"the warm-up scan failed: HTTP {status}: {str(doc)[:300]}")


def serve_command(data_dir: Path, port: int, tree: Path | None) -> list[str]:
    """`persona serve` with this tree's code, or another tree's (its persona/ first on the path)."""
    if tree is None:
        return [sys.executable, "-m", "persona", "--data", str(data_dir), "serve", "--port", str(port)]
    start = f"import sys; sys.path.insert(0, {str(tree)!r}); from persona.cli import main; main()"
    return [sys.executable, "-c", start, "--data", str(data_dir), "serve", "--port", str(port)]


def summary(runs: list[dict[str, Any]], phase: Phase) -> dict[str, Any]:
    refused: Counter[str] = Counter()
    for r in runs:
        refused.update(r["scans_refused"])
    scan_p50 = [r["scan_p50_s"] for r in runs if r["scan_p50_s"] is not None]
    return {"label": phase.label, "reads": stats([r["reads"] for r in runs]),
            "p50_ms": stats([r["p50_ms"] for r in runs]), "p99_ms": stats([r["p99_ms"] for r in runs]),
            "max_ms": stats([r["max_ms"] for r in runs]),
            "scans_answered": stats([r["scans_answered"] for r in runs]),
            "scans_refused": dict(refused), "scan_p50_s": stats(scan_p50) if scan_p50 else None, "raw": runs}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the finally blocks stop the server and remove the data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--label", default="this tree", help="how the report names this tree's code")
    parser.add_argument("--baseline", type=Path, help="a tree (with persona/) to measure beside this one")
    parser.add_argument("--baseline-label", default="before", help="how the report names the baseline")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"this": None}
    if args.baseline is not None:
        if not (args.baseline / "persona" / "__init__.py").is_file():
            sys.exit(f"bench-scans: {args.baseline} holds no persona/ package")
        trees["baseline"] = args.baseline.resolve()
    if args.quick:
        args.events, args.people, args.runs, args.duration = 6_000, 1_000, 1, 2.0
    signal.signal(signal.SIGTERM, _terminated)
    load_before = os.getloadavg()
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {code: {p.key: [] for p in PHASES} for code in trees}
    with tempfile.TemporaryDirectory(prefix="persona-bench-scans-") as tmp:
        root = Path(tmp)
        servers: dict[str, tuple[Server, int]] = {}
        try:
            print(f"building {args.events:,} events over {args.people:,} people…", file=sys.stderr)
            data = build_dataset(root, args.events, args.people, heavy=max(1, args.events // 2_000),
                                 heavy_share=0.05, rotate=1_000)
            settings = Settings.load(data.data_dir, env={})
            with Persona.open(settings) as p:
                reads = frozenset({"profiles:read"})
                point_token = create_token(p, "points", reads, rate_per_s=1e9)
                scan_tokens = [create_token(p, f"scan{n}", frozenset({"insights:read"}), rate_per_s=1e9,
                                            epsilon_budget=1e9, delta_budget=1e-3) for n in range(10)]
            for code, tree in trees.items():
                port = free_port()
                servers[code] = (Server(f"persona serve ({code})", serve_command(data.data_dir, port, tree), port,
                                        root / f"server-{code}.log"), port)
                servers[code][0].wait_healthy()
                warm_up(port, scan_tokens[0])
            for run in range(args.runs):
                order = list(trees) if run % 2 == 0 else list(reversed(trees))  # neither always first
                for code in order:
                    for phase in PHASES:
                        print(f"run {run + 1}/{args.runs}, {code}: {phase.key}…", file=sys.stderr)
                        measured[code][phase.key].append(run_phase(phase, servers[code][1], point_token,
                                                                   scan_tokens, data.profile_ids, args.duration))
                        time.sleep(2.0)  # scans still running after their clients stopped finish
            for server, _ in servers.values():
                if server.proc.poll() is not None:
                    raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
                logged = server.log_path.read_text(errors="replace")
                if "Traceback" in logged or "internal error" in logged:
                    raise BenchError(f"{server.name} logged errors during the run:\n{server.log_tail()}")
        except BenchError as e:
            sys.exit(f"bench-scans: {e}")
        finally:
            for server, _ in servers.values():
                server.stop()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": {"uvicorn": version("uvicorn"), "graphql-core": version("graphql-core")},
        "workload": {"events": data.events, "profiles": data.profiles, "db_mb": round(data.db_mb, 1),
                     "scan_query": SCAN_QUERY, "point_query": POINT_QUERY, "duration_s": args.duration,
                     "runs": args.runs},
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "label": args.label,
        "baseline": args.baseline_label if args.baseline is not None else None,
        "phases": {phase.key: summary(measured["this"][phase.key], phase) for phase in PHASES},
    }
    if args.baseline is not None:
        results["baseline_phases"] = {phase.key: summary(measured["baseline"][phase.key], phase) for phase in PHASES}
    write_report(results, args.out, quick=args.quick)


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w = r["workload"]
    lines = [
        "## Point reads during scans (`scripts/bench-scans`)",
        "",
        f"{r['when']} · {r['machine']} · {w['events']:,} mixed events over {w['profiles']:,} profiles; database "
        f"{w['db_mb']:.0f} MB · `persona serve`, one uvicorn worker, default limits · {w['duration_s']:g} s per "
        f"phase, median of {w['runs']} runs (min–max) · load average {r['load_average']['before'][0]:.2f} before, "
        f"{r['load_average']['after'][0]:.2f} after",
        "",
        "| while | code | point reads | p50 ms | p99 ms | max ms | scans answered | scans refused | scan p50 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    codes = [(r["label"], "phases")] + ([(r["baseline"], "baseline_phases")] if r.get("baseline") else [])
    for key in r["phases"]:
        for code, where in codes:
            row = r[where][key]
            refused = ", ".join(f"{n:,} {name}" for name, n in sorted(row["scans_refused"].items())) or "—"
            scan_p50 = cell(row["scan_p50_s"], ".1f") if row["scan_p50_s"] else "—"
            lines.append(f"| {row['label']} | {code} | {cell(row['reads'], ',.0f')} | {cell(row['p50_ms'], '.1f')} "
                         f"| {cell(row['p99_ms'], '.1f')} | {cell(row['max_ms'], '.0f')} "
                         f"| {cell(row['scans_answered'], ',.0f')} | {refused} | {scan_p50} |")
    lines += [
        "",
        f"Method: one client reads profiles by id (`{w['point_query']}`, rotating over 1,000 ids), one request",
        "after another on one keep-alive connection, for the whole phase; beside it 10 clients each send",
        f"`{w['scan_query']}`",
        f"back to back (a refused one — `BUSY` or `RATE_LIMITED` — waits {BACKOFF_S:g} s and asks again). Every",
        "point read must be answered; any other error, a server error or a logged fault refuses the run.",
        "Clients and server share the machine's cores." + (
            f" `{r['baseline']}` is the same run against that tree's code (`--baseline`), on the same data,"
            " the two servers taking turns run by run." if r.get("baseline") else ""),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if quick:
        return
    publish(out, "scans", r, text)


if __name__ == "__main__":
    main()
