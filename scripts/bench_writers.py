"""Writers at once on one PostgreSQL store (issue 25, item 1): 1, 2 and 4 ingest processes, each
with its own share of the people, appending to the same schema at the same time. Writes
docs/benchmarks.md (writers section) and docs/benchmarks-writers.json.

    scripts/bench-writers                        # 200,000 events over 20,000 people; 1, 2 and 4 writers
    scripts/bench-writers --events 50000 --writers 1,2
    scripts/bench-writers --pg postgresql://...   # default: the local test server, schema persona_writers
    scripts/bench-writers --quick                 # a smoke run (used by the tests); publishes nothing
    scripts/bench-writers --shared                # every writer sees every person (contention); its own section

Each writer is a process of its own with its own connections, as an ingest on another machine
would be; they share the key file and the database, nothing else. The people are split between
them by a hash of their identifier, so no two writers see the same person. Every run starts
from an empty schema, waits until every writer has opened the store, then times from the
moment they are let go until the last one is done; then checks the log: every event once,
every stream's versions and chain whole (`persona verify`'s checks).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from _publish import machine, publish
from bench_backends import DEFAULT_PG, fresh_schema, pg_settings
from bench_core import iter_events

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "persona_writers"  # a constant: the only schema this script makes and drops (and its _quick)


def split(path: Path, events: int, people: int, writers: int, *, shared: bool = False) -> tuple[list[Path], int]:
    """The workload as one JSONL file per writer: each person's events in one file only, or with
    `shared` dealt round the writers in turn, so that every writer sees (nearly) every person and
    they race for the same new identifiers and streams. Also how many people the events name."""
    files = [path.with_name(f"{path.stem}-{w}-of-{writers}.jsonl") for w in range(writers)]
    handles = [f.open("wb") for f in files]
    named: set[str] = set()
    try:
        for n, record in enumerate(iter_events(events, people, 1)):
            named.add(record["subject"]["value"])
            who = hashlib.blake2b(record["subject"]["value"].encode(), digest_size=4).digest()
            to = n % writers if shared else int.from_bytes(who, "big") % writers
            handles[to].write(orjson.dumps(record) + b"\n")
    finally:
        for h in handles:
            h.close()
    return files, len(named)


def writer(data_dir: str, url: str, source: str, ready: Any, go: Any, out: Any) -> None:
    """One ingest process: open the store, say so, wait for the start, ingest its file."""
    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl
    from persona.store.postgres import close_pool

    settings = Settings.load(Path(data_dir), env={"PERSONA_DATABASE_URL": url})
    try:
        with Persona.open(settings) as p, open(source, "rb") as handle:
            ready.release()
            go.wait()
            started = time.perf_counter()
            report = ingest_jsonl(p, handle, origin=Path(source).name)
            # the time its connection held the log's lock: the part of an append taken in turns
            out.put((os.getpid(), report.appended, report.quarantined, time.perf_counter() - started,
                     getattr(p.recorder, "log_lock_s", 0.0)))
    except BaseException as e:  # said to the parent, which refuses the run
        out.put((os.getpid(), -1, -1, repr(e), 0.0))
        raise
    finally:
        close_pool(url)


def one_run(writers: int, events: int, people: int, root: Path, pg_url: str, schema: str, *,
            shared: bool = False) -> dict[str, Any]:
    from persona import Persona, Settings
    from persona.store.postgres import close_pool
    from persona.verify import verify

    folder = root / f"data-{writers}"
    shutil.rmtree(folder, ignore_errors=True)
    url = fresh_schema(pg_url, schema)
    settings = Settings.load(folder, env={"PERSONA_DATABASE_URL": url})
    with Persona.init(settings):
        pass
    close_pool(url)
    files, named = split(root / "events.jsonl", events, people, writers, shared=shared)
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Semaphore(0), context.Event(), context.Queue()
    procs = [context.Process(target=writer, args=(str(folder), url, str(f), ready, go, out)) for f in files]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise SystemExit("bench-writers: a writer did not open the store within 2 minutes")
    started = time.perf_counter()
    go.set()
    done = [out.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
    failed = [d for d in done if d[1] < 0]
    if failed:
        raise SystemExit(f"bench-writers: a writer failed: {failed[0][3]}")
    appended = sum(d[1] for d in done)
    if appended != events or any(d[2] for d in done):  # (shared: each event is in one file, appended once)
        raise SystemExit(f"bench-writers: {appended:,} of {events:,} events appended")
    with Persona.open(settings) as p:
        report = verify(p)  # raises TamperError at the first broken chain, version or table
        stored = sum(1 for _ in p.log.iter_all())
    close_pool(url)
    if report.events != events or stored != events:
        raise SystemExit(f"bench-writers: the log after {writers} writers does not verify ({stored:,} events)")
    if report.streams != named:  # writers racing for the same new identifiers made one profile each
        raise SystemExit(f"bench-writers: {report.streams:,} profiles for {named:,} people")
    size = on_disk(pg_url, schema)
    slowest = max(d[3] for d in done)
    print(f"  {writers} writer(s): {events / wall:,.0f} events/s over {wall:.1f} s", file=sys.stderr)
    return {"writers": writers, "seconds": wall, "eps": events / wall, "slowest_writer_s": slowest,
            "per_writer_eps": [round(d[1] / d[3]) for d in done], "bytes": size, "bytes_per_event": size / events,
            "log_lock_share": sum(d[4] for d in done) / sum(d[3] for d in done)}


def on_disk(url: str, schema: str) -> int:
    """The schema's tables with their indexes and TOAST, in bytes (the log, the keys, the read models)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                             " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                             (schema,)).fetchone()
    return int(found[0]) if found else 0


def report(r: dict[str, Any]) -> str:
    base = r["runs"][0]["eps"]
    shared = r.get("shared", False)
    lines = [
        "## Writers at once on PostgreSQL" + (", every writer seeing every person" if shared else ""),
        "",
        f"`scripts/bench-writers{' --shared' if shared else ''}`: {r['events']:,} events over {r['people']:,}"
        f" people, ingested by {', '.join(str(x['writers']) for x in r['runs'])} processes at once into one"
        " PostgreSQL schema (loopback), "
        + ("the events dealt round the processes in turn, so that they race for the same new identifiers and"
           " streams" if shared else "each process with its own share of the people")
        + f" (`ingest_jsonl` end to end). Measured {r['measured_at']} on {r['machine']}; PostgreSQL"
        f" {r['pg'].get('server_version', '?')}, synchronous_commit {r['pg'].get('synchronous_commit', '?')}."
        " After each run the log verifies and holds every event once.",
        "",
        "| writers | events/s, together | × one writer | wall | each writer alone (events/s while it ran) |"
        " time under the log's lock | bytes on disk per event |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    lines += [f"| {x['writers']} | {x['eps']:,.0f} | {x['eps'] / base:.2f} | {x['seconds']:.1f} s |"
              f" {', '.join(f'{v:,}' for v in x['per_writer_eps'])} | {x['log_lock_share']:.1%} |"
              f" {x['bytes_per_event']:,.0f} |" for x in r["runs"]]
    lines += ["", "Time under the log's lock: of each writer's time, the share its connection held the lock that"
              " hands out positions (from the log's rows to COMMIT), the only part of an append taken in turns;"
              " 1 / that share bounds how many writers' worth one store takes."]
    lines += ["", "Bytes on disk: every table of the schema with its indexes and TOAST (the log, the event keys, the"
              " identity links, the read models), over the events, right after the run (no VACUUM)."]
    lines += ["", r["design"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--writers", default="1,2,4", help="writer counts, comma-separated")
    parser.add_argument("--pg", default=os.environ.get("PERSONA_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--quick", action="store_true", help="2,000 events, 1 and 2 writers; publishes nothing")
    parser.add_argument("--shared", action="store_true",
                        help="deal the events round the writers, so that every writer sees every person")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    events, people = (2_000, 200) if args.quick else (args.events, args.people)
    counts = [1, 2] if args.quick else [int(w) for w in args.writers.split(",")]
    schema = SCHEMA + ("_quick" if args.quick else "")
    r: dict[str, Any] = {"events": events, "people": people, "pg": pg_settings(args.pg), "shared": args.shared}
    with tempfile.TemporaryDirectory(prefix="persona-bench-writers-") as tmp:
        r["runs"] = [one_run(w, events, people, Path(tmp), args.pg, schema, shared=args.shared) for w in counts]
    r["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    r["machine"] = machine()
    r["design"] = ("The design (persona/store/postgres.py, docs/scale.md): appends share the write lock and hold only"
                   " the streams, new identifiers and persons they write; positions are handed out in turns, from the"
                   " log's rows to COMMIT. docs/scale.md has the curve of the design before it (one lock for every"
                   " write transaction) beside this one.")
    text = report(r)
    print(text)
    if not args.quick:
        publish(args.out, "writers-shared" if args.shared else "writers", r, text)


if __name__ == "__main__":
    main()
