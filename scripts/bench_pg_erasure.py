"""Erasure on PostgreSQL as the population grows: the erasure's own time and WAL, a point read's
latency while erasures run, and the batched purge (persona.purge) — for this tree and, side by
side, for another one (`--baseline DIR`: a checkout of the code before, e.g. `git archive`).
Writes docs/benchmarks.md (pg-erasure section) and docs/benchmarks-pg-erasure.json.

    git archive 813f9f2 | tar -x -C /tmp/before            # the code to compare against
    scripts/bench-pg-erasure --baseline /tmp/before --baseline-label "main 813f9f2"
    scripts/bench-pg-erasure --sizes 6,20000 --quick       # a smoke run (used by the tests)

For each size and each tree, a fresh store holds that many people, in a database of the
script's own (persona_bench_erase: only its own sessions' snapshots can hold back its VACUUM),
with 3 behaviour events each, ingested, profile index current. A child process running that tree's
code erases a few of them one after another (one untimed first), then — where the tree has the
batched purge — runs it once for all of them. Meanwhile this process reads other people's
profiles (Recorder.profile_rows, the API's point read) in a loop on a connection of its own; a
read counts as "during" an erasure or the purge if the two overlapped. WAL bytes come from
pg_current_wal_lsn() before and after (the server's whole WAL: other work on it counts too).
Last, each tree erases one more person while a REPEATABLE READ transaction sits idle in another
database (`postgres`), and purges; pg_dirtyread then counts the dead rows left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE = "persona_bench_erase"  # constants: the only database this script makes and drops (and its _quick),
SCHEMA = "persona_bench_erase"  # and the schema of each store in it
EVENTS_PER_PERSON = 3
PURGED = ("keys", "links", "merges", "members", "profile_index", "rfm", "predictions", "model_people",
          "quarantine", "quarantine_tags", "snapshots")


# -- the child: one tree's code, erasing ---------------------------------------------------------
def child(url: str, data: str, victims: list[str], held: str) -> None:
    """Runs with the tree under test first on sys.path; prints one JSON line per step."""
    import psycopg

    import persona
    from persona import Persona, Settings
    from persona.erasure import erase_profile
    from persona.store.postgres import PostgresRecorder

    batched = hasattr(PostgresRecorder, "purges_at_once")  # the tree has persona.purge
    say = lambda **doc: print(json.dumps(doc), flush=True)  # noqa: E731
    say(step="code", path=str(Path(persona.__file__).parent), batched=batched)
    settings = Settings.load(data, env={"PERSONA_DATABASE_URL": url})
    with Persona.open(settings) as p, psycopg.connect(url, autocommit=True) as meter:
        def lsn() -> str:
            return str(meter.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]

        def wal_since(start: str) -> int:
            return int(meter.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)",
                                     (start,)).fetchone()[0])  # type: ignore[index]

        erase_profile(p, victims[0])  # untimed: the first erasure of a process pays for imports and caches
        time.sleep(0.3)
        for pid in victims[1:]:
            start, began = lsn(), time.time()
            t = time.perf_counter()
            erasure = erase_profile(p, pid)
            ms = (time.perf_counter() - t) * 1000
            say(step="erase", ms=ms, wal=wal_since(start), began=began, ended=time.time(),
                purged=erasure.wal_truncated)
            time.sleep(0.3)  # reads between erasures, as a server sees them
        if batched:
            from persona.purge import run

            start, began = lsn(), time.time()
            outcome = run(p, force=True)
            say(step="purge", ms=outcome.seconds * 1000, wal=wal_since(start), began=began, ended=time.time(),
                done=outcome.done)
        # an idle REPEATABLE READ transaction in another database, the snapshot taken
        with psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname="postgres")) as other:
            other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            other.execute("SELECT count(*) FROM pg_class").fetchone()
            t = time.perf_counter()
            erasure = erase_profile(p, held)
            erase_ms = (time.perf_counter() - t) * 1000
            purge_ms, done = None, erasure.wal_truncated
            if batched:
                outcome = run(p, force=True)
                purge_ms, done = outcome.seconds * 1000, outcome.done
            say(step="held", erase_ms=erase_ms, purge_ms=purge_ms, done=done, dead=dead_rows(meter))


def dead_rows(conn: Any) -> int | None:
    """Row versions pg_dirtyread finds beyond those a query sees, in the tables erasure deletes from."""
    from psycopg import sql

    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_dirtyread SCHEMA public")
    except Exception:
        return None  # not installed: the column says so
    dead = 0
    for table in PURGED:
        columns = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                               " %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()
        shape = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(k)) for n, k in columns)
        every = conn.execute(sql.SQL("SELECT count(*) FROM public.pg_dirtyread(%s::regclass) AS t({})").format(shape),
                             (table,)).fetchone()[0]
        live = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        dead += every - live
    return dead


# -- what each way of purging leaves: the design's measurements ---------------------------------
RESIDUE_SCHEMA = "persona_bench_residue"  # a constant, made and dropped here
CASES = ("a row in the middle of its page", "the row placed last on its page", "every row of a page mid-table",
         "every row of the table's last page")
METHODS = {
    "deleted, nothing else": (),
    "VACUUM (as autovacuum: INDEX_CLEANUP AUTO)": ("VACUUM {t}",),
    "**the purge**: VACUUM (INDEX_CLEANUP ON, TRUNCATE false)": ("VACUUM (INDEX_CLEANUP ON, TRUNCATE false) {t}",),
    "VACUUM (INDEX_CLEANUP ON, TRUNCATE true)": ("VACUUM (INDEX_CLEANUP ON, TRUNCATE true) {t}",),
    "overwritten (UPDATE to zeros) before the DELETE, then the purge":
        ("VACUUM (INDEX_CLEANUP ON, TRUNCATE false) {t}",),
    "**the rewrite** (`--full`): VACUUM FULL": ("VACUUM FULL {t}",),
}


def residue(url: str, rows: int = 20_000) -> dict[str, dict[str, list[int]]] | None:
    """On a table shaped like `keys` (a text key, a 60-byte wrapped key; frozen, as old rows are),
    delete rows in four places, treat the table each way, and count what still holds them: rows
    pg_dirtyread reads, heap pages holding their bytes, index entries, index pages holding their key."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        try:
            for extension in ("pg_dirtyread", "pageinspect"):
                conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension} SCHEMA public")
        except psycopg.Error:
            return None  # not a superuser, or not installed: the section says so
        t = f"{RESIDUE_SCHEMA}.keys"
        out: dict[str, dict[str, list[int]]] = {}
        try:
            for method, statements in METHODS.items():
                conn.execute(f"DROP SCHEMA IF EXISTS {RESIDUE_SCHEMA} CASCADE")
                conn.execute(f"CREATE SCHEMA {RESIDUE_SCHEMA}")
                conn.execute(f'CREATE TABLE {t} (profile_id text COLLATE "C" PRIMARY KEY, kek_version integer'
                             " NOT NULL, wrapped bytea NOT NULL)")
                rng = random.Random(1)
                with conn.cursor() as cur, cur.copy(f"COPY {t} FROM STDIN") as copy:
                    for _ in range(rows):
                        copy.write_row((f"prf_{rng.randbytes(12).hex()}", 1, rng.randbytes(60)))
                conn.execute(f"VACUUM (FREEZE) {t}")
                where = {pid: (page, offset) for pid, page, offset in conn.execute(
                    f"SELECT profile_id, (ctid::text::point)[0]::int, (ctid::text::point)[1]::int FROM {t}")}
                wrapped = dict(conn.execute(f"SELECT profile_id, wrapped FROM {t}").fetchall())
                pages = max(page for page, _ in where.values())
                last_on = {page: max(o for p2, o in where.values() if p2 == page) for page in (5, 9)}
                cases = {
                    CASES[0]: [pid for pid, (page, o) in where.items() if page == 3 and o == 10],
                    CASES[1]: [pid for pid, (page, o) in where.items() if page == 5 and o == last_on[5]],
                    CASES[2]: [pid for pid, (page, _) in where.items() if page == 9],
                    CASES[3]: [pid for pid, (page, _) in where.items() if page == pages],
                }
                victims = [pid for ids in cases.values() for pid in ids]
                if method.startswith("overwritten"):
                    conn.execute(f"UPDATE {t} SET wrapped = decode(repeat('00', 60), 'hex')"
                                 " WHERE profile_id = ANY(%s)", (victims,))
                conn.execute(f"DELETE FROM {t} WHERE profile_id = ANY(%s)", (victims,))
                for statement in statements:
                    conn.execute(statement.format(t=t))
                seen = {bytes(w) for (w,) in conn.execute(
                    f"SELECT wrapped FROM public.pg_dirtyread('{t}') AS d(profile_id text, kek_version integer,"
                    " wrapped bytea)")}
                heap, index = _pages(conn, t), _pages(conn, f"{t}_pkey")
                entries = b"|".join(bytes.fromhex(d.replace(" ", "")) for block in range(1, _blocks(conn, f"{t}_pkey"))
                                    for (d,) in conn.execute("SELECT data FROM public.bt_page_items(%s, %s)"
                                                             " WHERE htid IS NOT NULL", (f"{t}_pkey", block)))
                out[method] = {case: [len(ids), sum(bytes(wrapped[i]) in seen for i in ids),
                                      sum(bytes(wrapped[i]) in heap for i in ids),
                                      sum(i.encode() in entries for i in ids), sum(i.encode() in index for i in ids)]
                               for case, ids in cases.items()}
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {RESIDUE_SCHEMA} CASCADE")
    return out


def _blocks(conn: Any, relation: str) -> int:
    return int(conn.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                            (relation,)).fetchone()[0])


def _pages(conn: Any, relation: str) -> bytes:
    return b"".join(bytes(conn.execute("SELECT public.get_raw_page(%s, %s)", (relation, block)).fetchone()[0])
                    for block in range(_blocks(conn, relation)))


# -- the parent: stores, the reader, the report --------------------------------------------------
def build(url: str, schema: str, people: int, root: Path) -> tuple[str, str, list[str]]:
    """A fresh store of `people` people; its data directory, URL and profile ids."""
    import orjson
    import psycopg
    from bench_core import make_events

    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    store_url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    data = root / f"store-{people}"
    settings = Settings.load(data, env={"PERSONA_DATABASE_URL": store_url})
    records = make_events(people * EVENTS_PER_PERSON, people, seed=people)
    for n in range(people):  # every person at least once, whatever the draw
        records[n]["subject"]["value"] = f"user{n}@example.com"
    with Persona.init(settings) as p:
        for start in range(0, len(records), 50_000):
            ingest_jsonl(p, [orjson.dumps(r) for r in records[start : start + 50_000]], origin="bench")
        ids = list(p.recorder.stream_ids())
        p.recorder.checkpoint()  # a settled store: no dead rows from the build
    assert len(ids) == people, (len(ids), people)
    return str(data), store_url, ids


class Reader(threading.Thread):
    """Point reads of random live profiles, timed, until stopped."""

    def __init__(self, data: str, url: str, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.data, self.url, self.ids = data, url, ids
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        from persona import Persona, Settings

        rng = random.Random(7)
        with Persona.open(Settings.load(self.data, env={"PERSONA_DATABASE_URL": self.url})) as p:
            while not self.stop.is_set():
                pid = rng.choice(self.ids)
                began, t = time.time(), time.perf_counter()
                rows = p.recorder.profile_rows([pid])
                self.samples.append((began, time.perf_counter() - t))
                assert rows, "a living profile read as missing"


def during(samples: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    """Latencies (ms) of reads that overlapped any of the windows."""
    return [s * 1000 for began, s in samples
            if any(began < end and began + s > start for start, end in windows)]


def tail(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1], "reads": len(ordered)}


def measure(tree: Path | None, url: str, schema: str, people: int, root: Path) -> dict[str, Any]:
    data, store_url, ids = build(url, schema, people, root)
    rng = random.Random(people)
    timed = max(1, min(5, people - 3))
    chosen = rng.sample(ids, timed + 2)
    victims, held = chosen[:-1], chosen[-1]
    live = [pid for pid in ids if pid not in chosen]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) if tree else ""
    reader = Reader(data, store_url, live)
    reader.start()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--url", store_url, "--data", data,
               "--victims", ",".join(victims), "--held", held]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, check=False)
    reader.stop.set()
    reader.join()
    from persona.store.postgres import close_pool

    close_pool(store_url)  # this process's connections to the store: the schema goes next
    if done.returncode != 0:
        raise SystemExit(f"the child failed:\n{done.stderr[-3000:]}")
    steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    erasures = [s for s in steps if s["step"] == "erase"]
    purge = next((s for s in steps if s["step"] == "purge"), None)
    out: dict[str, Any] = {
        "code": steps[0]["path"], "batched": steps[0]["batched"], "people": people,
        "erase_ms": [e["ms"] for e in erasures], "erase_wal": [e["wal"] for e in erasures],
        "reads_during_erasures": tail(during(reader.samples, [(e["began"], e["ended"]) for e in erasures])),
        "reads_overall": tail([s * 1000 for _, s in reader.samples]),
        "held": next(s for s in steps if s["step"] == "held"),
    }
    if purge is not None:
        out.update(purge_ms=purge["ms"], purge_wal=purge["wal"], purge_done=purge["done"],
                   reads_during_purge=tail(during(reader.samples, [(purge["began"], purge["ended"])])))
    return out


def own_database(url: str, name: str) -> str:
    """The URL of a database of this script's own on the same server, made anew."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def machine_line(url: str) -> tuple[str, str]:
    import psycopg
    from _publish import machine

    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        buffers = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
    return machine(), f"PostgreSQL {version}, shared_buffers {buffers}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="6,20000,80000", help="people in the store, comma-separated")
    parser.add_argument("--baseline", type=Path, help="a tree (with persona/) to measure beside this one")
    parser.add_argument("--baseline-label", default="before", help="how the report names the baseline")
    parser.add_argument("--pg", default=os.environ.get("PERSONA_TEST_PG", DEFAULT_PG), help="a PostgreSQL URL")
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing published (used by the tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--victims", help=argparse.SUPPRESS)
    parser.add_argument("--held", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.data, args.victims.split(","), args.held)
        return
    sys.path.insert(0, str(ROOT))  # this tree's persona for the parent, whatever PYTHONPATH says
    sizes = [6, 200] if args.quick else [int(s) for s in args.sizes.split(",")]
    schema = SCHEMA + ("_quick" if args.quick else "")
    trees: dict[str, Path | None] = {"after": None}
    if args.baseline is not None:
        if not (args.baseline / "persona" / "__init__.py").is_file():
            raise SystemExit(f"{args.baseline} holds no persona/ package")
        trees = {"before": args.baseline.resolve(), "after": None}
    where, server = machine_line(args.pg)
    name = DATABASE + ("_quick" if args.quick else "")
    url = own_database(args.pg, name)
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": where,
                               "server": server, "baseline": args.baseline_label if args.baseline else None,
                               "events_per_person": EVENTS_PER_PERSON, "sizes": {},
                               "load_average_before": round(os.getloadavg()[0], 2)}
    try:
        with tempfile.TemporaryDirectory(prefix="persona-bench-erase-") as tmp:
            for i, people in enumerate(sizes):
                order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))  # none always first
                for label, tree in order:
                    print(f"{people:,} people, {label}…", file=sys.stderr)
                    results["sizes"].setdefault(str(people), {})[label] = measure(tree, url, schema, people,
                                                                                 Path(tmp))
        print("what each way of purging leaves…", file=sys.stderr)
        results["residue"] = residue(url, 2_000 if args.quick else 20_000)
    finally:
        import psycopg

        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    write_report(results, args.out, quick=args.quick)


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    from _publish import publish

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values):,.1f} (max {max(values):,.1f})" if values else "—"

    def reads(t: dict[str, float] | None) -> str:
        return "—" if t is None else f"{t['p99']:.1f} / {t['max']:.1f} ({t['reads']:,} reads)"

    def mb(values: list[int] | int) -> str:
        value = statistics.median(values) if isinstance(values, list) else values
        return f"{value / 1e6:,.2f}" if value >= 100_000 else f"{value / 1e3:,.1f} kB"

    labels = [k for k in ("before", "after") if any(k in v for v in r["sizes"].values())]
    name = {"before": r["baseline"] or "before", "after": "after (batched purge)"}
    text = (
        "## Erasure on PostgreSQL as the population grows\n\n"
        f"`scripts/bench-pg-erasure`: stores of {', '.join(f'{int(s):,}' for s in r['sizes'])} people"
        f" ({r['events_per_person']} events each); per tree, erasures one after another in a child process"
        " running that tree's code, then (after) the one purge for all of them; point reads of other"
        " people's profiles (the API's read) in a loop meanwhile. Median (max) over the timed erasures;"
        " reads: p99 / max of those that overlapped an erasure or the purge. WAL: the server's,"
        " per erasure (MB unless marked).\n"
        f"Measured {r['when']} on {r['machine']}; {r['server']}, on the same machine (shared: load average"
        f" {r['load_average_before']} before, {r['load_average_after']} after).\n\n"
        "| people | code | erasure, ms | WAL per erasure, MB | point read during erasures, ms p99 / max"
        " | purge (all of them), ms | purge WAL, MB | point read during the purge, ms p99 / max"
        " | point read, whole run, ms p50 / p99 |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for size, by in r["sizes"].items():
        for label in labels:
            m = by[label]
            purge = (f"{m['purge_ms']:,.0f}", mb(m["purge_wal"]), reads(m["reads_during_purge"])) \
                if "purge_ms" in m else ("— (in the erasure)", "—", "—")
            whole = m["reads_overall"]
            overall = "—" if whole is None else f"{whole['p50']:.1f} / {whole['p99']:.1f}"
            text += (f"| {int(size):,} | {name[label]} | {ms(m['erase_ms'])} | {mb(m['erase_wal'])}"
                     f" | {reads(m['reads_during_erasures'])} | {' | '.join(purge)} | {overall} |\n")
    text += ("\nWith a REPEATABLE READ transaction idle in another database (`postgres`), one more erasure"
             " and its purge; dead rows: what pg_dirtyread finds in the tables erasure deletes from, after.\n\n"
             "| people | code | erasure, ms | purge, ms | purged | dead rows left |\n|---:|---|---:|---:|---|---:|\n")
    for size, by in r["sizes"].items():
        for label in labels:
            h = by[label]["held"]
            purge_ms = "— (in the erasure)" if h["purge_ms"] is None else f"{h['purge_ms']:,.0f}"
            dead = "?" if h["dead"] is None else f"{h['dead']:,}"
            text += (f"| {int(size):,} | {name[label]} | {h['erase_ms']:,.0f} | {purge_ms}"
                     f" | {'yes' if h['done'] else 'no'} | {dead} |\n")
    text += (
        "\nBefore, each erasure rewrote ten tables (VACUUM FULL): its time and WAL followed the population,"
        " reads of those tables waited for the rewrite, and a snapshot in any database made it wait 5 s and"
        " give up. After, an erasure deletes the person's rows and notes that a purge is due; one VACUUM"
        " (INDEX_CLEANUP ON, TRUNCATE false) per window removes the dead rows of every erasure in it, off"
        " the request path, without a lock that readers wait for (docs/postgresql.md).\n"
    )
    text += residue_table(r.get("residue"))
    print(text)
    if not quick:
        publish(out, "pg-erasure", r, text)


def residue_table(found: dict[str, dict[str, list[int]]] | None) -> str:
    text = ("\n### What each way of purging leaves of a deleted row\n\n"
            "On a table shaped like `keys` (20,000 rows: a text key, a 60-byte wrapped key; frozen, as old rows"
            " are), rows deleted in four places. Each cell: rows pg_dirtyread still reads · rows whose bytes a"
            " heap page still holds · index entries pointing at them · rows whose key an index page still holds"
            " (in freed space, or as a separator where it was a page boundary).\n\n")
    if found is None:
        return text + "Not measured: pg_dirtyread or pageinspect is not available to this user.\n"
    text += "| | " + " | ".join(f"{case}" for case in CASES) + " |\n|---|" + "---:|" * len(CASES) + "\n"
    for method, cases in found.items():
        cells = []
        for case in CASES:
            n, read, heap, entries, index = cases[case]
            cells.append(f"{read} · {heap} · {entries} · {index} of {n}")
        text += f"| {method} | " + " | ".join(cells) + " |\n"
    return text + (
        "\nVACUUM frees a dead row's space and compacts its page: the rows below it move up over its bytes, so a"
        " row in the middle of a page leaves nothing, but the row placed last on a page, and a page emptied"
        " whole, keep their bytes in the freed space until new rows land there (only an emptied page at the"
        " table's end is cut off, and only with TRUNCATE, under an exclusive lock). By default VACUUM skips the"
        " indexes when few pages hold dead rows — one window's erasures always are — and the entries keep"
        " their keys: hence INDEX_CLEANUP ON. A key that was a boundary between index pages also lives on as a"
        " separator until the index is rebuilt. Overwriting first does not help: an UPDATE writes a new"
        " version and leaves the old one, bytes and all. Only the rewrite leaves no byte in any page.\n"
    )


if __name__ == "__main__":
    main()
