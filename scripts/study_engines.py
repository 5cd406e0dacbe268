#!/usr/bin/env python3
"""Measurement study for issue 25, item 2: the rebuild's unit of work on a process pool, on Dask
(distributed) and on Ray, same store, same parts.

Neither engine is a dependency of persona yet; install them beside it to run this:

    pip install "dask[distributed]" ray
    scripts/study_engines.py                     # 200,000 events over 10,000 people, 2 workers each
    scripts/study_engines.py --events 50000 --people 2000 --workers 2 --pg postgresql://...

It ingests the events into a fresh PostgreSQL schema (`persona_engines`, the only one it makes
and drops), splits the people into the rebuild's parts (200 people each, a merged person's
streams together), each with its streams' data keys (persona.engine.Part, as `persona rebuild`
hands them out), and times `persona.projector.rebuild_part` over every part: in this process,
on a spawned process pool (startup included), on a Dask LocalCluster and on Ray, twice each
(engine startup timed apart). Every way must give the same number of index rows. Figures go in
docs/scale.md by hand: they are what chose the engine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from bench_backends import DEFAULT_PG, fresh_schema
from bench_core import iter_events

from persona import Persona, Settings, identity
from persona.engine import StoreAddress, parts
from persona.ingest import ingest_jsonl
from persona.projector import rebuild_part
from persona.store.postgres import close_pool

ROOT = Path(__file__).resolve().parent.parent
PART = 200  # people per part, as persona.projector.rebuild


def timed(name: str, fn: Callable[[], int], expected: int | None, out: dict[str, float]) -> int:
    started = time.perf_counter()
    rows = fn()
    out[name] = time.perf_counter() - started
    print(f"  {name}: {out[name]:.2f} s ({rows:,} index rows)", file=sys.stderr)
    if expected is not None and rows != expected:
        raise SystemExit(f"study-engines: {name} gave {rows:,} index rows, not {expected:,}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg", default=os.environ.get("PERSONA_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    try:
        import ray
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SystemExit('study-engines: needs Dask and Ray beside persona: pip install "dask[distributed]" ray'
                         ) from None
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="persona-study-engines-") as tmp:
        root = Path(tmp)
        url = fresh_schema(args.pg, "persona_engines")
        settings = Settings.load(root / "data", env={"PERSONA_DATABASE_URL": url})
        source = root / "events.jsonl"
        with source.open("wb") as f:
            for record in iter_events(args.events, args.people, 1):
                f.write(orjson.dumps(record) + b"\n")
        with Persona.init(settings) as p, source.open("rb") as handle:
            ingest_jsonl(p, handle, origin=source.name)
            ids = list(p.recorder.stream_ids())
            people = sorted({x.id: list(x.members) for x in identity.persons(p.recorder, ids).values()}.values())
            shipped = list(parts(p, people, PART))  # each part with its streams' keys, unwrapped here
            where = StoreAddress.of(p)
        close_pool(url)
        work = ([where] * len(shipped), shipped, [None] * len(shipped))

        def rows(results: Any) -> int:
            return sum(len(index) for index, _ in results)

        def pool() -> int:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context) as ex:
                return rows(ex.map(rebuild_part, *work))

        print(f"{args.events:,} events over {args.people:,} people, {len(shipped)} parts:", file=sys.stderr)
        expected = timed("one process", lambda: rows(map(rebuild_part, *work)), None, out)
        timed(f"process pool ({args.workers}, spawned; startup included)", pool, expected, out)

        started = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.run(lambda: __import__("persona.projector"))
        out["dask startup"] = time.perf_counter() - started
        for run in ("dask", "dask, again"):
            timed(run, lambda: rows(client.gather(client.map(rebuild_part, *work, pure=False))), expected, out)
        client.close()
        cluster.close()

        started = time.perf_counter()
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        remote = ray.remote(num_cpus=1)(rebuild_part)
        ray.get([remote.remote(where, shipped[0], None) for _ in range(args.workers)])
        out["ray startup"] = time.perf_counter() - started
        for run in ("ray", "ray, again"):
            timed(run, lambda: rows(ray.get([remote.remote(*a) for a in zip(*work, strict=True)])), expected, out)
        ray.shutdown()
        shutil.rmtree(root / "data", ignore_errors=True)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
