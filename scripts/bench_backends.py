"""The same workload on both backends: ingest, replay and rebuild of 1M events on SQLite and on
PostgreSQL, side by side. Writes docs/benchmarks.md (backends section) and
docs/benchmarks-backends.json.

    scripts/bench-backends                        # 1,000,000 events over 10,000 people, 1 run each
    scripts/bench-backends --events 100000 --runs 3
    scripts/bench-backends --pg postgresql://...   # default: the local test server, schema persona_bench
    scripts/bench-backends --quick                 # a smoke run (used by the tests)

Ingest is `ingest_jsonl` end to end (parse, validate, resolve, seal, append, keep the profile
index current); replay reads and opens every event in log order (`EventLog.iter_all`); rebuild
drops and recomputes every projection from the log (`persona rebuild`, in parallel processes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from _publish import cell, machine, publish
from bench_core import make_events, stats

from persona import Persona, Settings
from persona.erasure import erase_profile
from persona.ingest import ingest_jsonl
from persona.projector import rebuild
from persona.store.postgres import close_pool

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "persona_bench"  # a constant: the only schemas this script makes and drops are this and its _quick


def workload(path: Path, events: int, people: int) -> None:
    """The events as JSONL, written in slices (a million dicts at once would not fit nicely)."""
    with path.open("wb") as out:
        for start in range(0, events, 100_000):
            part = make_events(min(100_000, events - start), people, seed=start + 1, prefix=f"ev{start}")
            out.write(b"".join(orjson.dumps(r) + b"\n" for r in part))


def pg_settings(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers',"
                            " 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size')").fetchall()
        version = conn.execute("SHOW server_version").fetchone()
    out = {name: f"{value}{' × ' + unit if unit else ''}" for name, value, unit in rows}
    out["server_version"] = str(version[0]) if version else "?"
    return out


def fresh_schema(url: str, schema: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def one_run(backend: str, data: Path, lines: int, root: Path, pg_url: str, schema: str, erasures: int
            ) -> dict[str, float]:
    folder = root / backend
    shutil.rmtree(folder, ignore_errors=True)
    env = {"PERSONA_DATABASE_URL": fresh_schema(pg_url, schema)} if backend == "postgresql" else {}
    settings = Settings.load(folder, env=env)
    out: dict[str, float] = {}
    try:
        with Persona.init(settings) as p, data.open("rb") as source:
            started = time.perf_counter()
            report = ingest_jsonl(p, source, origin="bench.jsonl")
            out["ingest_s"] = time.perf_counter() - started
            assert report.appended == lines, report
            started = time.perf_counter()
            replayed = sum(1 for _ in p.log.iter_all())
            out["replay_s"] = time.perf_counter() - started
            assert replayed == lines
            started = time.perf_counter()
            rebuilt = rebuild(p)
            out["rebuild_s"] = time.perf_counter() - started
            out["people"] = rebuilt
            victims = [pid for pid, _ in zip(p.recorder.stream_ids(), range(erasures), strict=False)]
            times = []
            for pid in victims:
                started = time.perf_counter()
                erase_profile(p, pid)
                times.append((time.perf_counter() - started) * 1000)
            out["erase_ms"] = statistics.median(times)
    finally:
        if env:
            close_pool(env["PERSONA_DATABASE_URL"])
    out["ingest_eps"] = lines / out["ingest_s"]
    out["replay_eps"] = lines / out["replay_s"]
    out["rebuild_eps"] = lines / out["rebuild_s"]
    print(f"  {backend}: ingest {out['ingest_eps']:,.0f} ev/s, replay {out['replay_eps']:,.0f} ev/s,"
          f" rebuild {out['rebuild_s']:.1f} s, erase {out['erase_ms']:.0f} ms", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--pg", default=os.environ.get("PERSONA_TEST_PG", DEFAULT_PG), help="a PostgreSQL URL")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.quick:
        args.events, args.people, args.runs = 2_000, 100, 1
    erasures = 2 if args.quick else 5
    schema = SCHEMA + ("_quick" if args.quick else "")  # a smoke run never touches a real run's schema
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgresql_server": pg_settings(args.pg),
        "workload": {"events": args.events, "people": args.people, "runs": args.runs},
    }
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        root = Path(tmp)
        data = root / "events.jsonl"
        workload(data, args.events, args.people)
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}:", file=sys.stderr)
            for backend in runs:  # alternating, so a noisy minute does not land on one backend only
                runs[backend].append(one_run(backend, data, args.events, root, args.pg, schema, erasures))
    try:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except psycopg.Error:
        pass
    for backend, measured in runs.items():
        results[backend] = {key: stats([m[key] for m in measured]) for key in measured[0]}
    write_report(results, args.out, quick=args.quick)


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    s, p = r["sqlite"], r["postgresql"]

    rows = [
        ("ingest, events/s (end to end)", "ingest_eps", ",.0f"),
        ("replay, events/s (read and open every event)", "replay_eps", ",.0f"),
        ("rebuild of every projection, s", "rebuild_s", ".1f"),
        ("erasure of one person, ms (median)", "erase_ms", ".0f"),
    ]
    w = r["workload"]
    pg = r["postgresql_server"]
    text = (
        "## Backends: SQLite and PostgreSQL on the same workload\n\n"
        f"`scripts/bench-backends`: {w['events']:,} events over {w['people']:,} people, ~200-byte payloads,"
        f" {w['runs']} run(s) per backend, alternating; median (min–max) where there are several.\n"
        f"Measured {r['when']} on {r['machine']}; PostgreSQL {pg['server_version']} on the same machine"
        f" (shared_buffers {pg.get('shared_buffers', '?')}, synchronous_commit {pg.get('synchronous_commit', '?')},"
        f" fsync {pg.get('fsync', '?')}).\n\n"
        "| | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---|---:|---:|---:|\n"
    )
    for label, key, fmt in rows:
        text += f"| {label} | {cell(s[key], fmt)} | {cell(p[key], fmt)} | {p[key]['median'] / s[key]['median']:.2f} |\n"
    text += (
        "\nOne writer here, on both: PostgreSQL's gain is several writers appending side by side (SQLite takes one"
        " at a time; `scripts/bench-writers`) and many processes and machines sharing one log, not a faster single"
        " writer. Erasure on PostgreSQL deletes the person's rows"
        " and leaves the VACUUM to one purge per window, off the request path (docs/postgresql.md; its cost as"
        " the population grows: `scripts/bench-pg-erasure`).\n"
    )
    print(text)
    if not quick:
        publish(out, "backends", r, text)


if __name__ == "__main__":
    main()
