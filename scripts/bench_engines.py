"""Batch work here and on a Dask cluster (issue 25, item 2): `persona rebuild`, `persona train` and
batch `persona predict` over the same PostgreSQL store, on this machine's processes (the default)
and on a Dask cluster of worker processes, each given only its part's keys. Writes
docs/benchmarks.md (engines section) and docs/benchmarks-engines.json.

    scripts/bench-engines                 # 27,000 planted people, about 1M events; 2 workers each way
    scripts/bench-engines --runs 3        # each timing the median of 3, local and cluster alternating
    scripts/bench-engines --quick         # a smoke run (used by the tests); publishes nothing

The store is a fresh schema (`persona_engines`, the only one this script makes and drops) on the
local test server, filled with planted shoppers (persona.testing.planted) through the real ingest.
The cluster is a `dask scheduler` and `dask worker` processes on loopback, as docs/scale.md deploys
one; it is started once, before the timings (its start-up is reported apart: a cluster is there
before a batch and after it). Every cluster run must give what the local run gave: the same
profile index, the same model metrics and parameters, the same predictions; otherwise the script
refuses to report.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _publish import machine, publish
from bench_backends import DEFAULT_PG, fresh_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "persona_engines"  # a constant: the only schemas this script makes and drops are this and its _quick
TASK = "churn_91d"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=27_000, help="planted people (about 37 events each)")
    parser.add_argument("--workers", type=int, default=2, help="processes here, and worker processes there")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--pg", default=os.environ.get("PERSONA_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--quick", action="store_true", help="600 people, one run; publishes nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl
    from persona.store.postgres import close_pool
    from persona.testing import planted
    from persona.testing.cluster import local_cluster

    people, runs = (600, 1) if args.quick else (args.people, args.runs)
    schema = SCHEMA + ("_quick" if args.quick else "")
    r: dict[str, Any] = {"people": people, "workers": args.workers, "runs": runs, "task": TASK}
    with tempfile.TemporaryDirectory(prefix="persona-bench-engines-") as tmp:
        root = Path(tmp)
        url = fresh_schema(args.pg, schema)
        settings = Settings.load(root / "data", env={"PERSONA_DATABASE_URL": url})
        source = root / "planted.jsonl"
        summary = planted.write(source, people, seed=1)
        end = datetime.fromisoformat(summary["end"])
        try:
            with Persona.init(settings) as p:
                with source.open("rb") as handle:
                    seconds, report = timed(lambda: ingest_jsonl(p, handle, origin=source.name))
                r["events"], r["ingest_s"] = report.appended, round(seconds, 1)
                print(f"{report.appended:,} events of {people:,} people ingested in {seconds:.0f} s", file=sys.stderr)
                started = time.perf_counter()
                with local_cluster(root / "cluster", dict(os.environ), workers=args.workers) as address:
                    r["cluster_start_s"] = round(time.perf_counter() - started, 1)
                    r.update(compare(p, address, args.workers, runs, end))
        finally:
            close_pool(url)
            fresh_schema(args.pg, schema)  # emptied: nothing of the run is left on the server
    r["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    r["machine"] = machine(f"PostgreSQL, distributed {_version('distributed')}")
    text = report_text(r)
    print(text)
    if not args.quick:
        publish(args.out, "engines", r, text)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def compare(p: Any, address: str, workers: int, runs: int, end: datetime) -> dict[str, Any]:
    """Each job here and there, `runs` times in alternating order: the timings, and the check that
    both give the same thing."""
    from persona.engine import Dask, Local, running_on
    from persona.models import registry, scoring
    from persona.models.tasks import parse_task
    from persona.models.train import train
    from persona.projector import rebuild

    task = parse_task(TASK)
    times: dict[str, list[float]] = {f"{job} {where}": [] for job in ("rebuild", "train", "predict")
                                     for where in ("local", "dask")}
    made: dict[str, Any] = {}

    def engine(where: str) -> Any:
        return Local(workers) if where == "local" else Dask(address)

    def one(job: str, where: str) -> None:
        with running_on(engine(where)):
            if job == "rebuild":
                seconds, _ = timed(lambda: rebuild(p))
                result: Any = p.recorder.index_rows()
            elif job == "train":
                seconds, trained = timed(lambda: train(p, task))
                result = (trained.metrics, trained.baselines, trained.chosen, trained.fingerprint)
                if "model" not in made:
                    registry.save(p, trained, promote=True)
                    made["model"] = True
            else:
                seconds, result = timed(lambda: scoring.predict(p, task.name, as_of=end))
        times[f"{job} {where}"].append(seconds)
        print(f"  {job} {where}: {seconds:.1f} s", file=sys.stderr)
        if job in made and made[job] != result:
            raise SystemExit(f"bench-engines: {job} on {where} gave something other than the first run")
        made.setdefault(job, result)

    for n in range(runs):
        order = ("local", "dask") if n % 2 == 0 else ("dask", "local")
        for job in ("rebuild", "train", "predict"):
            for where in order:
                one(job, where)
    out: dict[str, Any] = {"timings": {name: {"median": statistics.median(v), "min": min(v), "max": max(v),
                                               "runs": len(v)} for name, v in times.items()}}
    out["profiles"] = len(made["rebuild"])
    out["predictions"] = len(made["predict"])
    out["metrics"] = made["train"][0]
    return out


def report_text(r: dict[str, Any]) -> str:
    from _publish import cell

    t = r["timings"]
    rows = []
    for job, what in (("rebuild", f"`persona rebuild`: {r['profiles']:,} profiles' index rows and sealed snapshots"),
                      ("train", f"`persona train {r['task']}`: every history read, the search, the backtest"),
                      ("predict", f"`persona predict {r['task']}`: {r['predictions']:,} people scored")):
        local, dask = t[f"{job} local"], t[f"{job} dask"]
        rows.append(f"| {what} | {cell(local, '.1f')} | {cell(dask, '.1f')} | {dask['median'] / local['median']:.2f} |")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if k != "rows")
    return (f"## Engines (`scripts/bench-engines`)\n\n{r['measured_at']} · {r['machine']} · {r['events']:,} events of "
            f"{r['people']:,} planted people in PostgreSQL (ingested in {r['ingest_s']} s) · {r['workers']} spawned "
            f"processes here against a Dask cluster of {r['workers']} worker processes of one thread on loopback "
            f"(started in {r['cluster_start_s']} s, before the timings) · seconds, median of {r['runs']} run(s) "
            f"(min–max), local and cluster alternating\n\n"
            "| job | here | Dask | Dask / here |\n|---|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
            f"Each cluster run gave what the local run gave: the same profile index, the same held-out metrics "
            f"({metrics}), parameters and training set, the same predictions. On the cluster each worker was handed "
            "a part of the people with their streams' data keys only; rebuild and every history's read ran there, "
            "the search, the fits and the scoring here.\n")


if __name__ == "__main__":
    main()
