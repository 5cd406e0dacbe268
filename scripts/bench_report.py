"""The benchmark report: one command for the headline figures of docs/benchmarks.md.

    scripts/bench                 # 100k events / 2k people and 1M events / 10k people, 3 runs; ~20 min
    scripts/bench --runs 5
    scripts/bench --all           # then every per-area script too (ingest, models, backends, …); ~2 h
    scripts/bench --quick         # a smoke run: tiny sizes, one run, nothing published (used by the tests)

In every run, on each workload (~200-byte payloads, batches of 20,000): append (encrypted), the
same events as canonical JSONL through the `persona ingest FILE` command (timed start to exit),
replay of the global log (read, open, decode every event) and a reference loop (the same reads,
opens and decodes on the same store, in the same process, with no event objects and no erasure
checks), full rebuild of every projection,
peak resident memory; the same append and replay through the `eventsourcing` library (its
`cryptography`-based AES cipher on, SQLite file) for the persona / peer ratio; erasure latency
for people with 10, 1,000 and 100,000 events of history; the raw cost floor (AES-GCM seal/open,
JSON encode/decode, SQLite insert/scan per event). Then the GraphQL API under wrk at
concurrency 16 (`scripts/bench-api`, which publishes its own section too).

Every measurement runs in a fresh child process (so peak memory is its own, and nothing is
warm from the one before), persona and the peer alternating within each run. Each figure is
the median of the runs, with min and max. Writes the report section of docs/benchmarks.md and
docs/benchmarks-report.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
from _publish import cell, machine, publish

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BATCH = 20_000
HISTORIES = (10, 1_000, 100_000)
ERASURES = 3  # people of each history length erased per run (after an untimed first erasure)
TARGET_RATIO = 3.0
REBUILD_WORKERS = 2
MAX_LOAD = 1.5  # 1-minute load average above which a run is refused (--force runs anyway)
AREA_SCRIPTS = ("bench_core.py", "bench_projections.py", "bench_ingest.py", "bench_models.py",
                "bench_backends.py", "bench_scans.py")  # --all: each publishes its own section


# -- measurements, each in its own child process -----------------------------------------------
def peak_mb() -> float:
    """This process's peak resident memory (the rebuild's worker processes are not counted)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_persona(events: int, people: int, root: Path) -> dict[str, float]:
    """Append, replay and rebuild one workload in a fresh store."""
    from bench_core import as_events, bare_replay, batches, fresh

    from persona.projector import rebuild

    out: dict[str, float] = {}
    with fresh(root, "persona") as p:
        seconds = 0.0
        for batch in batches(events, people, BATCH):
            started = time.perf_counter()  # building the Event objects counts, as the peer's objects do
            p.log.append(as_events(batch))
            seconds += time.perf_counter() - started
        out["append_eps"] = events / seconds
        out["append_peak_mb"] = peak_mb()
        started = time.perf_counter()
        replayed = sum(1 for _ in p.log.iter_all())
        out["replay_eps"] = replayed / (time.perf_counter() - started)
        if replayed != events:
            raise SystemExit(f"replayed {replayed:,} events of {events:,}")
        out["replay_peak_mb"] = peak_mb()
        out["bare_replay_eps"] = bare_replay(p.log)
        started = time.perf_counter()
        rebuilt = rebuild(p, workers=REBUILD_WORKERS)
        out["rebuild_s"] = time.perf_counter() - started
        out["rebuild_eps"] = events / out["rebuild_s"]
        out["profiles"] = rebuilt
        out["store_mb"] = sum(f.stat().st_size for f in (root / "persona").iterdir()) / 1e6
        out["bytes_per_event"] = out["store_mb"] * 1e6 / events
    out["peak_mb"] = peak_mb()
    return out


def measure_ingest(events: int, people: int, root: Path) -> dict[str, float]:
    """The same events as canonical JSONL through the `persona ingest FILE` command into a fresh
    store: the command's own process, timed from start to exit (validation, identity
    resolution, sealing, projections kept current, the report)."""
    from bench_core import iter_events

    data, jsonl = root / "data", root / "events.jsonl"
    with jsonl.open("wb") as out:
        for record in iter_events(events, people):
            out.write(orjson.dumps(record) + b"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    persona = [sys.executable, "-m", "persona", "--data", str(data)]
    subprocess.run([*persona, "init"], check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    started = time.perf_counter()
    done = subprocess.run([*persona, "ingest", "--json", str(jsonl)], check=True, stdout=subprocess.PIPE, env=env,
                          cwd=ROOT)
    seconds = time.perf_counter() - started
    report = orjson.loads(done.stdout)
    if report["appended"] != events:
        raise SystemExit(f"persona ingest appended {report['appended']:,} events of {events:,}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: the command
    return {"ingest_eps": events / seconds, "ingest_peak_mb": peak}


def measure_peer(events: int, people: int, root: Path) -> dict[str, float]:
    """The same events through eventsourcing: one aggregate per person, a batch per save."""
    from bench_core import batches
    from bench_peer import Peer

    peer = Peer(root / "peer.db")
    seconds = 0.0
    for batch in batches(events, people, BATCH):
        started = time.perf_counter()  # building its aggregates and events counts, as persona's Events do
        peer.append(batch)
        seconds += time.perf_counter() - started
    out = {"append_eps": peer.stored / seconds, "append_peak_mb": peak_mb(), "stored": peer.stored}
    started = time.perf_counter()
    out["replay_eps"] = peer.replay() / (time.perf_counter() - started)
    peer.close()
    out["peak_mb"] = peak_mb()
    return out


def measure_erasure(events: int, people: int, root: Path) -> dict[str, float]:
    """Erase one person of each history length, in a store that also holds the background load."""
    from bench_core import bench_erasure, make_events

    timings = bench_erasure(root, make_events(events, people), HISTORIES, ERASURES)
    return {str(size): statistics.median(ms) for size, ms in timings.items()}


def measure_floor(events: int, people: int, root: Path) -> dict[str, float]:
    from bench_core import floor, make_events

    return floor(make_events(events, people), root)


MEASURES = {"persona": measure_persona, "ingest": measure_ingest, "peer": measure_peer, "erasure": measure_erasure,
            "floor": measure_floor}


def child(kind: str, events: int, people: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result is the last line it prints."""
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        done = subprocess.run([sys.executable, __file__, "--child", kind, str(events), str(people), tmp],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench: the {kind} measurement of {events:,} events failed (exit {done.returncode})")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the run -----------------------------------------------------------------------------------
def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def run_api(runs: int, out: Path, quick: bool) -> dict[str, Any]:
    """scripts/bench-api in its own process (it publishes its own section); its JSON back."""
    argv = [sys.executable, str(SCRIPTS / "bench_api.py"), "--runs", str(runs), "--out", str(out)]
    if quick:
        argv.append("--quick")  # publishes nothing
    done = subprocess.run(argv, stdout=subprocess.DEVNULL if not quick else subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench: scripts/bench-api failed (exit {done.returncode})")
    if quick:
        return {"quick": True}
    target = out
    result: dict[str, Any] = orjson.loads((target / "benchmarks-api.json").read_bytes())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--all", action="store_true", help="also run every per-area benchmark script")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run, nothing published")
    parser.add_argument("--large", action="store_true",
                        help="also 10,000,000 events over 100,000 people: the scaling curve (adds hours)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--force", action="store_true", help=f"run even when the load average is above {MAX_LOAD}")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "EVENTS", "PEOPLE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, events, people, folder = args.child
        result = MEASURES[kind](int(events), int(people), Path(folder))
        print(orjson.dumps(result).decode())
        return
    try:
        import eventsourcing  # noqa: F401
    except ImportError:
        raise SystemExit("the peer is not installed: pip install -e '.[dev]' (scripts/bench's .venv has it)") from None
    if not args.quick and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (the GraphQL load generator)")
    if not args.quick and not args.force and os.getloadavg()[0] > MAX_LOAD:
        raise SystemExit(f"the machine is busy (load average {os.getloadavg()[0]:.2f} > {MAX_LOAD}): figures would"
                         " measure the neighbours; wait, or pass --force")
    workloads = [(100_000, 2_000), (1_000_000, 10_000)] + ([(10_000_000, 100_000)] if args.large else [])
    erasure_background = (100_000, 2_000)
    if args.quick:
        workloads = [(2_000, 50), (6_000, 200)] + ([(20_000, 2_000)] if args.large else [])
        erasure_background, args.runs = (2_000, 50), 1
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "peer": f"eventsourcing {version('eventsourcing')}, cryptography {version('cryptography')}",
        "runs": args.runs,
        "batch": BATCH,
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    raw: dict[str, list[dict[str, Any]]] = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}: the floor…", file=sys.stderr)
        raw.setdefault("floor", []).append(child("floor", *workloads[0]))
        for events, people in workloads:
            for kind in ("persona", "ingest", "peer"):
                print(f"run {run + 1}/{args.runs}: {kind}, {events:,} events over {people:,} people…",
                      file=sys.stderr)
                got = child(kind, events, people)
                raw.setdefault(f"{kind}/{events}", []).append(got)
                print("  " + ", ".join(f"{key} {value:,.0f}" for key, value in got.items() if key.endswith("_eps")),
                      file=sys.stderr)
        print(f"run {run + 1}/{args.runs}: erasure at {', '.join(f'{h:,}' for h in HISTORIES[:-1])} and"
              f" {HISTORIES[-1]:,} events of history…", file=sys.stderr)
        raw.setdefault("erasure", []).append(child("erasure", *erasure_background))
    print("the GraphQL API (scripts/bench-api)…", file=sys.stderr)
    results["api"] = run_api(args.runs, args.out, args.quick)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    results["workloads"] = []
    for events, people in workloads:
        ours = [{**a, **b} for a, b in zip(raw[f"persona/{events}"], raw[f"ingest/{events}"], strict=True)]
        theirs = raw[f"peer/{events}"]
        entry: dict[str, Any] = {"events": events, "people": people}
        entry["persona"] = {k: stats([r[k] for r in ours]) for k in ours[0]}
        entry["peer"] = {k: stats([r[k] for r in theirs]) for k in theirs[0]}
        entry["ratio"] = {k: entry["persona"][k]["median"] / entry["peer"][k]["median"]
                          for k in ("append_eps", "replay_eps")}
        entry["ratio"]["ingest_eps"] = (entry["persona"]["ingest_eps"]["median"]
                                        / entry["peer"]["append_eps"]["median"])  # the peer has no ingest
        results["workloads"].append(entry)
    results["erasure"] = {"background_events": erasure_background[0],
                          "ms": {k: stats([r[k] for r in raw["erasure"]]) for k in raw["erasure"][0]}}
    results["floor"] = {k: stats([r[k] for r in raw["floor"]]) for k in raw["floor"][0]}
    results["raw"] = raw
    results["minutes"] = round((time.monotonic() - started) / 60, 1)
    write_report(results, args.out, quick=args.quick)
    if args.all:
        for script in AREA_SCRIPTS:
            print(f"scripts/{script}…", file=sys.stderr)
            argv = [sys.executable, str(SCRIPTS / script), "--out", str(args.out)]
            if args.quick:
                argv.append("--quick")
            if subprocess.run(argv, stdout=subprocess.DEVNULL, cwd=ROOT).returncode != 0:
                raise SystemExit(f"bench: scripts/{script} failed")


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w100, w1m = r["workloads"][:2]
    f = {k: v["median"] for k, v in r["floor"].items()}

    def both(key: str, fmt: str, who: str = "persona") -> str:
        return " | ".join(cell(w[who][key], fmt) if w[who][key]["max"] else "—" for w in (w100, w1m))

    def head(w: dict[str, Any]) -> str:
        return f"{w['events']:,} events / {w['people']:,} people"

    lines = [
        "## Report (`scripts/bench`)",
        "",
        f"{r['when']} · {r['machine']} · ~200-byte payloads, batches of {r['batch']:,} · median of {r['runs']} runs"
        f" (min–max), each measurement in a fresh process, persona and the peer alternating · load average"
        f" {r['load_average_before']:.2f} before, {r['load_average_after']:.2f} after · {r['minutes']} min in all",
        "",
        f"| measure | {head(w100)} | {head(w1m)} | unit |",
        "|---|---:|---:|---|",
        f"| append, encrypted (from dicts: building the events counts) | {both('append_eps', ',.0f')} | events/s |",
        "| ingest canonical JSONL with the `persona ingest FILE` command (its process, start to exit: validation,"
        f" projections kept current) | {both('ingest_eps', ',.0f')} | events/s |",
        f"| peak memory: the ingest command | {both('ingest_peak_mb', ',.0f')} | MB resident |",
        f"| replay the global log (read, open, decode every event) | {both('replay_eps', ',.0f')} | events/s |",
        "| replay, reference loop: the same reads, opens and decodes, no event objects or erasure checks (run"
        f" after replay, in its process) | {both('bare_replay_eps', ',.0f')} | events/s |",
        f"| full rebuild of every projection ({REBUILD_WORKERS} processes) | {both('rebuild_s', ',.1f')} | s |",
        f"| full rebuild, throughput | {both('rebuild_eps', ',.0f')} | events/s |",
        f"| peak memory: appending | {both('append_peak_mb', ',.0f')} | MB resident |",
        f"| peak memory: whole run (append, replay, reference loop, rebuild's parent) | {both('peak_mb', ',.0f')}"
        " | MB resident |",
        f"| store on disk | {both('store_mb', ',.0f')} | MB |",
        "",
        f"**Against a peer** — the same append and replay through the `eventsourcing` library ({r['peer']}) on a"
        " SQLite file with its `cryptography`-based AES-GCM cipher (`eventsourcing.cryptography:AESCipher`, the"
        " faster of its two ciphers, not the PyCryptodome default), no compressor, one aggregate per person, each"
        " batch saved in one call; its append counts the one creation event per person it stores besides the"
        " workload's events; replay is `select_notifications` plus its mapper, page by page:",
        "",
        "| workload | measure | persona | eventsourcing | persona / peer | target |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for w in (w100, w1m):
        for key, label, theirs in (("append_eps", "append, events/s", "append_eps"),
                                   ("ingest_eps", "`persona ingest` of JSONL, events/s (peer: its append)",
                                    "append_eps"),
                                   ("replay_eps", "replay, events/s", "replay_eps")):
            ratio = w["ratio"][key]
            verdict = "met" if ratio >= TARGET_RATIO else "**not met**"
            lines.append(f"| {head(w)} | {label} | {cell(w['persona'][key], ',.0f')} |"
                         f" {cell(w['peer'][theirs], ',.0f')} | {ratio:.2f}× | ≥ {TARGET_RATIO:.0f}× ({verdict}) |")
    bare = [w["persona"]["bare_replay_eps"]["median"] / w["peer"]["replay_eps"]["median"] for w in (w100, w1m)]
    lines += [
        "",
        f"The reference loop (first table) runs at {bare[0]:.2f}× the peer's replay on {head(w100)}"
        f" and {bare[1]:.2f}× on {head(w1m)}; it is not a replay (the peer's replay, like persona's, makes an object"
        " of every event): between it and persona's replay lie making the event objects and the erasure checks.",
    ]
    e = r["erasure"]
    lines += [
        "",
        f"**Erasure latency** (key deletion, tombstone, read models and identity links purged, WAL truncated) of one"
        f" person among {e['background_events']:,} background events; each run's figure is the median of"
        f" {ERASURES} erasures per history length, sizes in alternating order, after one untimed erasure:",
        "",
        "| events of history | ms |",
        "|---:|---:|",
    ]
    for size, st in e["ms"].items():
        lines.append(f"| {int(size):,} | {cell(st, ',.1f')} |")
    api = r["api"]
    if not api.get("quick"):
        s = api["scenarios"]
        lines += [
            "",
            f"**GraphQL API** — `persona serve` (one uvicorn worker) under wrk, {api['load']['connections']}"
            f" connections, {api['load']['duration_s']} s per run, {api['workload']['events']:,} events over"
            f" {api['workload']['profiles']:,} profiles (details and method in the API section below):",
            "",
            "| query | req/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for key in ("profile", "history"):
            lines.append(f"| {s[key]['label']} | {cell(s[key]['rps'], ',.0f')} | {cell(s[key]['p50_ms'], '.1f')}"
                         f" | {cell(s[key]['p99_ms'], '.1f')} |")
        if api.get("server_peak_mb"):
            lines += ["", f"Peak resident memory of the server: {api['server_peak_mb']:,.0f} MB."]
    append_us = 1e6 / w100["persona"]["append_eps"]["median"]
    replay_us = 1e6 / w100["persona"]["replay_eps"]["median"]
    append_floor = f["encode_us"] + f["seal_us"] + f["sqlite_insert_us"]
    replay_floor = f["sqlite_scan_us"] + f["open_us"] + f["decode_us"]
    bare_us = 1e6 / w100["persona"]["bare_replay_eps"]["median"]
    lines += [
        "",
        f"**The floor**, measured in the same run (one core, µs per event, over the {head(w100)} workload's"
        " payloads):",
        "",
        "| building block | µs/event |",
        "|---|---:|",
        f"| JSON encode (orjson) | {f['encode_us']:.2f} |",
        f"| JSON decode (orjson) | {f['decode_us']:.2f} |",
        f"| AES-GCM seal, one key reused | {f['seal_us']:.2f} |",
        f"| AES-GCM open, one key reused | {f['open_us']:.2f} |",
        f"| SQLite insert, UNIQUE(stream, seq), 10k rows per transaction, WAL | {f['sqlite_insert_us']:.2f} |",
        f"| SQLite ordered scan | {f['sqlite_scan_us']:.2f} |",
        f"| **append floor: encode + seal + insert** | **{append_floor:.2f}** |",
        f"| **replay floor: scan + open + decode** | **{replay_floor:.2f}** |",
        f"| the reference loop on persona's store (first table) | {bare_us:.2f} |",
        "",
        f"Distance to the floor ({head(w100)}): append costs {append_us:.2f} µs per event,"
        f" {append_us / append_floor:.1f}× the floor; replay {replay_us:.2f} µs, {replay_us / replay_floor:.1f}× the"
        " floor. Append also pseudonymises"
        " each subject (keyed hash) and resolves it to a profile, keys the event id for idempotency (a second unique"
        " index), binds stream, version, event and type into the AEAD header, extends a per-stream keyed BLAKE2b"
        " chain and keeps stream heads, in one transaction per batch. Replay also reads each event's stream,"
        " version, key and type, rebuilds its AEAD header and builds its object.",
        "",
        "Raw figures of every run: `docs/benchmarks-report.json`. Reproduce: `scripts/bench` (add `--all` for every"
        " section of this file).",
        "",
    ]
    lines += scaling(r["workloads"])
    text = "\n".join(lines)
    print(text)
    if not quick:
        publish(out, "report", r, text, first=True)


FLAT = 0.75  # at the largest size, append and replay keep at least this share of their smallest size's rate


def scaling(workloads: list[dict[str, Any]]) -> list[str]:
    """The scaling curve (with --large: up to 10,000,000 events): every figure per size, and
    append and replay against the smallest size's."""
    if len(workloads) < 3:
        return []
    first = workloads[0]

    def share(w: dict[str, Any], key: str) -> str:
        return f"{w['persona'][key]['median'] / first['persona'][key]['median']:.2f}"

    lines = [
        f"**Scaling** (`scripts/bench --large`): the same measures at every size, persona and the peer in the same"
        f" run; \"vs the smallest\" is the median rate over the median at {first['events']:,} events (target: at"
        f" least {FLAT:.2f} for append and replay at the largest size):",
        "",
        "| events / people | append ev/s | vs the smallest | replay ev/s | vs the smallest | `persona ingest` JSONL"
        " ev/s | rebuild s | bytes on disk per event | peak RSS MB (append, whole run, ingest command) | peer"
        " append ev/s | peer replay ev/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for w in workloads:
        ours, theirs = w["persona"], w["peer"]
        lines.append(
            f"| {w['events']:,} / {w['people']:,} | {cell(ours['append_eps'], ',.0f')} | {share(w, 'append_eps')} |"
            f" {cell(ours['replay_eps'], ',.0f')} | {share(w, 'replay_eps')} | {cell(ours['ingest_eps'], ',.0f')} |"
            f" {cell(ours['rebuild_s'], ',.1f')} | {ours['bytes_per_event']['median']:,.0f} |"
            f" {ours['append_peak_mb']['median']:,.0f}, {ours['peak_mb']['median']:,.0f},"
            f" {ours['ingest_peak_mb']['median']:,.0f} | {cell(theirs['append_eps'], ',.0f')} |"
            f" {cell(theirs['replay_eps'], ',.0f')} |")
    last = workloads[-1]
    held = [key for key in ("append_eps", "replay_eps")
            if last["persona"][key]["median"] / first["persona"][key]["median"] >= FLAT]
    lines += ["", f"Flat to {last['events']:,} events within {1 - FLAT:.0%}: append"
              f" {'met' if 'append_eps' in held else '**not met**'}, replay"
              f" {'met' if 'replay_eps' in held else '**not met**'}.", ""]
    return lines


if __name__ == "__main__":
    main()
