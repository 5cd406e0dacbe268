"""Benchmark of end-to-end ingest of raw multi-source exports: `persona ingest FILE --source NAME`
run as a user runs it, on a synthetic dataset (persona.synth) of the four channels — CSV and
JSONL parsing, mapping, cleaning, validation, quarantine, pseudonymisation, identity resolution
(with merges), encryption, the append, and keeping projections and the profile index current.
Writes docs/benchmarks.md (ingest section) and docs/benchmarks-ingest.json.

    scripts/bench-ingest                       # about 1M raw records (38,500 people), 1 run
    scripts/bench-ingest --people 2000 --runs 3
    scripts/bench-ingest --quick               # a smoke run (used by the tests); publishes nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from _publish import publish

ROOT = Path(__file__).resolve().parent.parent
TARGET = 50_000  # raw records/s
FILES = (("shop", "shop_orders.csv"), ("social", "social.jsonl"), ("web", "web_clicks.csv"), ("app", "app_usage.csv"))


def generate(people: int, seed: int, where: Path) -> dict[str, Any]:
    """The dataset, generated once per size and seed (kept in `where` for later runs)."""
    truth = where / "truth.json"
    if not truth.exists():
        print(f"generating {people:,} people into {where}…", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "persona.synth", "--people", str(people), "--seed", str(seed),
                        "--out", str(where)], check=True, stdout=subprocess.DEVNULL)
    doc: dict[str, Any] = orjson.loads(truth.read_bytes())
    return doc


def one_run(data: Path, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Every file into a fresh data directory, one `persona ingest` process each, timed from
    process start to exit."""
    exe = [sys.executable, "-m", "persona", "--data", str(root)]
    subprocess.run([*exe, "init"], check=True, capture_output=True, env=env)
    out: dict[str, Any] = {"files": {}}
    for source, name in FILES:
        started = time.perf_counter()
        done = subprocess.run([*exe, "ingest", str(data / name), "--source", source, "--json"], check=True,
                              capture_output=True, env=env)
        seconds = time.perf_counter() - started
        report = orjson.loads(done.stdout)
        out["files"][name] = {"seconds": seconds, **{k: report[k] for k in (
            "appended", "duplicates", "quarantined", "profiles_created", "merges")}}
    out["seconds"] = sum(f["seconds"] for f in out["files"].values())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with sqlite3.connect(f"file:{root / 'persona.db'}?mode=ro", uri=True) as conn:
        out["index_rows"] = conn.execute("SELECT count(*) FROM profile_index").fetchone()[0]
        out["streams"] = conn.execute("SELECT count(*) FROM streams").fetchone()[0]
    out["database_mb"] = sum(p.stat().st_size for p in root.glob("persona.db*")) / 1e6
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=38_500, help="people in the dataset (~26 raw records each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--data", type=Path, help="where the generated dataset is kept (default: a temporary dir)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--render", action="store_true", help="write the report again from the JSON of the last run")
    args = parser.parse_args()
    if args.render:
        write_report(orjson.loads((args.out / "benchmarks-ingest.json").read_bytes()), args.out, quick=False)
        return
    if args.quick:
        args.people, args.runs = 60, 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    with tempfile.TemporaryDirectory(prefix="persona-bench-ingest-") as tmp:
        data = args.data or Path(tmp) / "dataset"
        truth = generate(args.people, args.seed, data)
        records = sum(f["lines"] for f in truth["files"].values())
        runs = []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: ingesting {records:,} raw records…", file=sys.stderr)
            runs.append(one_run(data, Path(tmp) / f"run{run}", env))
            print(f"  {records / runs[-1]['seconds']:,.0f} records/s", file=sys.stderr)
    bad = sum(len(v) for v in truth["bad_rows"].values())
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"SQLite {sqlite3.sqlite_version}",
        "workload": {"people": args.people, "seed": args.seed, "runs": args.runs, "records": records,
                     "planted_bad_rows": bad, "files": truth["files"]},
        "records_per_s": stats([records / r["seconds"] for r in runs]),
        "events_per_s": stats([sum(f["appended"] for f in r["files"].values()) / r["seconds"] for r in runs]),
        "seconds": stats([r["seconds"] for r in runs]),
        "runs": runs,
    }
    write_report(result, args.out, quick=args.quick)


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w = r["workload"]
    last = r["runs"][-1]
    appended = sum(f["appended"] for f in last["files"].values())
    lines = [
        "## Ingest of raw exports (`scripts/bench-ingest`)",
        "",
        f"{r['when']} · {r['machine']} · {w['records']:,} raw records (rows and lines) of four channels for "
        f"{w['people']:,} synthetic people (`persona.synth`, seed {w['seed']}), {w['planted_bad_rows']:,} of them "
        f"planted bad · `persona ingest FILE --source NAME`, one process per file, timed from start to exit · "
        f"median of {w['runs']} run(s) (min–max)",
        "",
        "| measure | median | min – max | unit |",
        "|---|---:|---:|---|",
    ]
    for name, key, unit, fmt in (("end to end, all four files", "records_per_s", "raw records/s", "{:,.0f}"),
                                 ("events appended", "events_per_s", "events/s", "{:,.0f}"),
                                 ("wall time, all four files", "seconds", "s", "{:,.1f}")):
        s = r[key]
        lines.append(f"| {name} | {fmt.format(s['median'])} | {fmt.format(s['min'])} – {fmt.format(s['max'])} "
                     f"| {unit} |")
    rate = r["records_per_s"]["median"]
    lines += [
        "",
        f"Target (issue 5): ≥ {TARGET:,} raw records/s end to end — **{'met' if rate >= TARGET else 'not met'}** "
        f"({rate:,.0f} records/s).",
        "",
        "Per file (the last run):",
        "",
        "| file | raw records | s | records/s | appended | duplicates | quarantined | new profiles | merges |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in last["files"].items():
        n = w["files"][name]["lines"]
        lines.append(f"| {name} | {n:,} | {f['seconds']:.1f} | {n / f['seconds']:,.0f} | {f['appended']:,} | "
                     f"{f['duplicates']:,} | {f['quarantined']:,} | {f['profiles_created']:,} | {f['merges']:,} |")
    lines += [
        "",
        f"{appended:,} events in {last['streams']:,} streams, {last['index_rows']:,} persons in the index; "
        f"database {last['database_mb']:,.0f} MB; peak resident memory of an ingest process "
        f"{last['peak_rss_mb']:,.0f} MB.",
        "",
    ]
    text = "\n".join(lines)
    if quick:
        print(text)
        return
    publish(out, "ingest", r, text)
    print(text)


if __name__ == "__main__":
    main()
