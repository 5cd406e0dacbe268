"""Benchmark of the models: for each prediction task, on people with planted propensities
(persona.testing.planted), the held-out metric next to every baseline, and the time to train
(point-in-time set, search, evaluation, registry) and to batch-score every profile.
Writes docs/benchmarks.md (models section) and docs/benchmarks-models.json.

    scripts/bench-models                 # 10,000 people, 1 run
    scripts/bench-models --runs 3        # timings as median of 3 (metrics are the same each run)
    scripts/bench-models --quick         # a smoke run of two tasks (used by the tests); publishes nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _publish import publish

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("purchases_next_91d", "churn_91d", "clv_91d", "days_to_next_purchase", "next_category")
QUICK_TASKS = ("churn_91d", "days_to_next_purchase")  # a classifier and a regressor


def one_run(people: int, seed: int, where: Path, tasks: tuple[str, ...]) -> dict[str, Any]:
    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl
    from persona.models import registry, scoring
    from persona.models.tasks import parse_task
    from persona.models.train import train
    from persona.testing import planted

    events = where / "planted.jsonl"
    if not events.exists():
        planted.write(events, people, seed=seed)
    settings = Settings.load(where / f"data-{time.monotonic_ns()}", env={})
    out: dict[str, Any] = {"tasks": {}}
    with Persona.init(settings) as p:
        started = time.perf_counter()
        with events.open("rb") as handle:
            report = ingest_jsonl(p, handle, origin="planted")
        out["ingest_seconds"] = time.perf_counter() - started
        out["events"] = report.appended
        for name in tasks:
            print(f"  {name}…", file=sys.stderr)
            started = time.perf_counter()
            trained = train(p, parse_task(name))
            version = registry.save(p, trained, promote=True)
            trained_s = time.perf_counter() - started
            started = time.perf_counter()
            scored = scoring.score_all(p, name)
            scored_s = time.perf_counter() - started
            out["tasks"][name] = {
                "train_seconds": trained_s, "score_seconds": scored_s, "scored": scored,
                "metrics": trained.metrics, "baselines": trained.baselines, "lift": trained.lift,
                "chosen": trained.chosen, "rows": trained.rows, "version": version.version,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help=f"300 people, two tasks ({', '.join(QUICK_TASKS)}): a smoke test; publishes nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    tasks = TASKS
    if args.quick:
        args.people, args.runs, tasks = 300, 1, QUICK_TASKS
    import sklearn

    with tempfile.TemporaryDirectory(prefix="persona-bench-models-") as tmp:
        runs = []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: {args.people:,} people…", file=sys.stderr)
            runs.append(one_run(args.people, args.seed, Path(tmp), tasks))

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    last = runs[-1]
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"scikit-learn {sklearn.__version__}",
        "workload": {"people": args.people, "seed": args.seed, "runs": args.runs, "events": last["events"]},
        "tasks": {name: {**last["tasks"][name],
                         "train_seconds": stats([r["tasks"][name]["train_seconds"] for r in runs]),
                         "score_seconds": stats([r["tasks"][name]["score_seconds"] for r in runs])}
                  for name in tasks},
        "ingest_seconds": stats([r["ingest_seconds"] for r in runs]),
    }
    write_report(result, args.out, quick=args.quick)


def _fmt(value: float) -> str:
    return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.1f}"


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w = r["workload"]
    lines = [
        "## Models (`scripts/bench-models`)",
        "",
        f"{r['when']} · {r['machine']} · {w['people']:,} people with planted propensities "
        f"(`persona.testing.planted`, seed {w['seed']}; {w['events']:,} events, ingested in "
        f"{r['ingest_seconds']['median']:.1f} s) · four cutoffs 91 days apart: trained on the first three, "
        f"every metric on the last one's rows only · timings median of {w['runs']} run(s) (min–max)",
        "",
        "| task | model chosen | held-out metric | model | best baseline | lift | train s | score all s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in r["tasks"].items():
        lift = t["lift"]
        best = min(t["baselines"], key=lambda b: t["baselines"][b][lift["metric"]])
        family = t["chosen"]["family"] + (f" on top of {t['chosen']['on_top_of']}" if t["chosen"].get("on_top_of")
                                          else "")
        tr, sc = t["train_seconds"], t["score_seconds"]
        lines.append(f"| {name} | {family} | {lift['metric']} | {_fmt(lift['model'])} | {_fmt(lift['baseline'])} "
                     f"({best}) | {lift['improvement']:+.1%} | {tr['median']:.1f} ({tr['min']:.1f}–{tr['max']:.1f}) "
                     f"| {sc['median']:.1f} ({sc['min']:.1f}–{sc['max']:.1f}) |")
    lines += ["", "Every metric beside every baseline, on the same held-out rows:", "",
              "| task | who | metrics |", "|---|---|---|"]
    for name, t in r["tasks"].items():
        shown = {"model": t["metrics"], **t["baselines"]}
        for who, metrics in shown.items():
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "rows")
            lines.append(f"| {name} | {who} | {text} (rows {int(metrics['rows']):,}) |")
    total_train = sum(t["train_seconds"]["median"] for t in r["tasks"].values())
    total_score = sum(t["score_seconds"]["median"] for t in r["tasks"].values())
    lines += ["", f"All {len(r['tasks'])} tasks: {total_train:.0f} s of training and {total_score:.0f} s of batch "
                  f"scoring for {w['people']:,} profiles.", ""]
    text = "\n".join(lines)
    if quick:
        print(text)
        return
    publish(out, "models", r, text)
    print(text)


if __name__ == "__main__":
    main()
