"""Benchmark of the models: for each prediction task, on people with planted propensities
(persona.testing.planted), the held-out metric next to every baseline, and the time to train
(point-in-time set, search, evaluation, registry) and to batch-score every profile.
Writes docs/benchmarks.md (models section) and docs/benchmarks-models.json.

    scripts/bench-models                 # 10,000 people, 1 run
    scripts/bench-models --runs 3        # timings as median of 3 (metrics are the same each run)
    scripts/bench-models --quick         # a smoke run of two tasks (used by the tests); publishes nothing

It also runs the out-of-time check of issue 21 (item 7) on purchase logs shaped like real ones
(persona.testing.purchases), one customer cohort and continuous acquisition: each task trained on
the whole log, scored as of its end, against what happened next and against BG/NBD.
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

import orjson
from _publish import publish

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("purchases_next_91d", "churn_91d", "clv_91d", "days_to_next_purchase", "next_category")
QUICK_TASKS = ("churn_91d", "days_to_next_purchase")  # a classifier and a regressor


def one_run(people: int, seed: int, where: Path, tasks: tuple[str, ...]) -> dict[str, Any]:
    """Ingest the planted population, train every task together (`persona train --all`: one read of
    every history, one point-in-time set for the tasks of one horizon) and score every profile by
    every task in one batch, as `persona train --all` does."""
    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl
    from persona.models import registry, scoring
    from persona.models.tasks import parse_task
    from persona.models.train import Trained, train_many
    from persona.testing import planted

    events = where / f"planted-{people}-{seed}.jsonl"
    if not events.exists():
        planted.write(events, people, seed=seed)
    settings = Settings.load(where / f"data-{time.monotonic_ns()}", env={})
    out: dict[str, Any] = {"tasks": {}, "people": people}
    with Persona.init(settings) as p:
        started = time.perf_counter()
        with events.open("rb") as handle:
            report = ingest_jsonl(p, handle, origin="planted")
        out["ingest_seconds"] = time.perf_counter() - started
        out["events"] = report.appended
        marks: list[tuple[float, str]] = []

        def mark(message: str) -> None:
            marks.append((time.perf_counter(), message))
            print(f"  {message}", file=sys.stderr)

        started = time.perf_counter()
        made = train_many(p, [parse_task(name) for name in tasks], progress=mark)
        out["train_seconds"] = time.perf_counter() - started
        # the shared steps of training: every history read, the point-in-time set (computed column-wise),
        # BG/NBD and Gamma-Gamma at each cutoff with the feature matrix; each lasts until the next mark
        shared = {"read": "reading every person", "set": "building the point-in-time set", "classic": "fitting BG/NBD"}
        out["train_steps"] = {}
        for step, prefix in shared.items():
            found = next((i for i, (_, m) in enumerate(marks) if m.startswith(prefix)), None)
            if found is not None and found + 1 < len(marks):
                out["train_steps"][step] = marks[found + 1][0] - marks[found][0]
        versions = {}
        for name in tasks:
            trained = made[name]
            if not isinstance(trained, Trained):
                raise SystemExit(f"{name}: {trained}")
            versions[name] = registry.save(p, trained, promote=True)
        marks.clear()
        started = time.perf_counter()
        counts = scoring.score_many(p, list(tasks), progress=mark)
        finished = time.perf_counter()
        out["score_seconds"] = finished - started
        # each step lasts until the next one's mark: the rows of every model (read and built at once),
        # each model's predictions, then the one transaction that writes them all
        steps = [(at, m.removeprefix("scoring every profile with ").rstrip("…")) for at, m in marks]
        lasted = {name: (steps[i + 1][0] if i + 1 < len(steps) else finished) - at
                  for i, (at, name) in enumerate(steps)}
        score_seconds = {name: lasted[name] for name in tasks if name in lasted}
        out["score_steps"] = {"rows": next((v for k, v in lasted.items() if k.startswith("reading")), float("nan")),
                              "write": next((v for k, v in lasted.items() if k.startswith("writing")), float("nan"))}
        for name in tasks:
            trained = made[name]
            assert isinstance(trained, Trained)
            out["tasks"][name] = {
                "train_seconds": trained.seconds, "score_seconds": score_seconds.get(name, float("nan")),
                "scored": counts[name], "metrics": trained.metrics, "baselines": trained.baselines,
                "lift": trained.lift, "chosen": trained.chosen, "rows": trained.rows,
                "version": versions[name].version,
            }
    return out


OOT_TASKS = ("purchases_next_91d", "churn_91d")
COHORTS = ("one", "continuous")


def out_of_time(people: int, seed: int, where: Path, cohort: str, regularity: float = 1.0) -> dict[str, Any]:
    """The check "as a user would" (issue 21, item 7): a purchase log shaped like real ones
    (persona.testing.purchases), each task trained on everything up to its end and scored as of
    its end, then compared with what the generator says happened in the 91 days after it, beside
    BG/NBD fitted on the same history — and BG/NBD with the parameters the log was drawn with (with
    Poisson gaps, regularity 1, that is the best any predictor can do in expectation: nothing else
    in the log tells one customer from another)."""
    import numpy as np
    from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl
    from persona.models import bgnbd, registry, scoring
    from persona.models.tasks import parse_task
    from persona.models.train import train
    from persona.testing import purchases

    log = where / f"orders-{cohort}-{regularity:g}-{seed}.jsonl"
    shape = purchases.Shape(regularity=regularity)
    summary = purchases.write(log, people, seed=seed, cohort=cohort, shape=shape)
    end = datetime.fromisoformat(summary["end"].replace("Z", "+00:00"))
    truth = {t["subject"]: t for t in summary["truth"]}
    days: dict[str, list[float]] = {}
    for line in log.read_bytes().splitlines():
        event = orjson.loads(line)
        moment = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
        days.setdefault(event["subject"]["value"], []).append((moment - purchases.START).total_seconds() / 86_400)
    subjects = sorted(days)
    end_day = (end - purchases.START).total_seconds() / 86_400
    x = np.array([len(days[s]) - 1 for s in subjects], float)
    t_x = np.array([max(days[s]) - min(days[s]) for s in subjects])
    big_t = np.array([end_day - min(days[s]) for s in subjects])
    fitted = bgnbd.fit(x, t_x, big_t)
    actual = np.array([truth[s]["future_orders"] for s in subjects], float)
    bought = (actual > 0).astype(float)
    true = bgnbd.BGNBD(shape.r, shape.alpha, shape.a, shape.b)
    baseline = {"purchases_next_91d": fitted.expected(91, x, t_x, big_t),
                "churn_91d": fitted.p_none(91, x, t_x, big_t)}
    oracle = {"purchases_next_91d": true.expected(91, x, t_x, big_t), "churn_91d": true.p_none(91, x, t_x, big_t)}
    out: dict[str, Any] = {"people": people, "cohort": cohort, "regularity": regularity, "orders": summary["orders"],
                           "future_orders": summary["future_orders"], "bgnbd": fitted.params(), "tasks": {}}
    settings = Settings.load(where / f"oot-{cohort}-{regularity:g}-{time.monotonic_ns()}", env={})
    with Persona.init(settings) as p:
        ingest_jsonl(p, log.read_bytes().splitlines(), origin=log.name)
        profile_of = {s: p.log.profile_for("shop_user", s) for s in subjects}
        for name in OOT_TASKS:
            print(f"  out of time, {cohort} cohort: {name}…", file=sys.stderr)
            began = time.perf_counter()
            trained = train(p, parse_task(name))
            trained_in = time.perf_counter() - began
            version = registry.save(p, trained, promote=True)
            found = {pr.person: pr.value for pr in scoring.predict(p, name, as_of=end, version=version.version)}
            served = np.array([found.get(profile_of[s] or "", np.nan) for s in subjects])
            missing = int(np.isnan(served).sum())
            served = np.nan_to_num(served, nan=0.0 if name != "churn_91d" else 1.0)
            rows: dict[str, dict[str, float]] = {}
            for who, values in (("persona", served), ("BG/NBD", baseline[name]), ("true BG/NBD", oracle[name])):
                if name == "churn_91d":
                    clipped = np.clip(values, 1e-6, 1 - 1e-6)
                    rows[who] = {"log_loss": float(log_loss(1 - bought, clipped, labels=[0.0, 1.0])),
                                 "auc": float(roc_auc_score(1 - bought, clipped)),
                                 "churned_predicted": float(clipped.sum()), "churned": float((1 - bought).sum())}
                else:
                    rows[who] = {"rmse": float(np.sqrt(mean_squared_error(actual, values))),
                                 "mae": float(mean_absolute_error(actual, values)),
                                 "auc": float(roc_auc_score(bought, values)),
                                 "predicted": float(values.sum()), "happened": float(actual.sum())}
            out["tasks"][name] = {"chosen": trained.chosen["family"], "served": trained.chosen.get("served", {}),
                                  "backtest": trained.chosen.get("backtest", []), "train_seconds": trained_in,
                                  "missing": missing, **rows}
    return out


def train_step_lines(steps: dict[str, float]) -> list[str]:
    """What training made once for every task, and how long each took."""
    if not steps:
        return []
    named = {"read": "to read every history", "set": "to compute the point-in-time set column-wise (every "
             "person at every cutoff)", "classic": "to fit BG/NBD and Gamma-Gamma at each cutoff and make the "
             "feature matrix"}
    return ["Training made once for all tasks: " + "; ".join(f"{steps[k]:.0f} s {named[k]}" for k in named
                                                              if k in steps) + ".", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help=f"300 people, two tasks ({', '.join(QUICK_TASKS)}): a smoke test; publishes nothing")
    parser.add_argument("--oot-people", type=int, default=10_000,
                        help="customers of the out-of-time check's purchase logs (persona.testing.purchases)")
    parser.add_argument("--regularity", type=float, nargs="+", default=[1.0, 3.0],
                        help="shapes of the gaps between purchases in the out-of-time logs (1: Poisson, BG/NBD "
                             "exactly; 3: as regular as many retail logs)")
    parser.add_argument("--scale-people", type=int, default=100_000,
                        help="people of a timing run of every task, trained together and scored in one batch "
                             "(issue 21: ≤ 10 minutes and ≤ 60 s at 100,000); 0: none")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    tasks, cohorts = TASKS, COHORTS
    if args.quick:
        args.people, args.runs, tasks, args.oot_people, cohorts = 300, 1, QUICK_TASKS, 400, ("continuous",)
        args.regularity, args.scale_people = [1.0], 0
    import sklearn

    with tempfile.TemporaryDirectory(prefix="persona-bench-models-") as tmp:
        runs = []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: {args.people:,} people…", file=sys.stderr)
            runs.append(one_run(args.people, args.seed, Path(tmp), tasks))
        checks = [out_of_time(args.oot_people, args.seed, Path(tmp), cohort, k) for k in args.regularity
                  for cohort in cohorts]
        scale = None
        if args.scale_people:
            print(f"at scale: {args.scale_people:,} people…", file=sys.stderr)
            scale = one_run(args.scale_people, args.seed, Path(tmp), tasks)

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
        "train_seconds": stats([r["train_seconds"] for r in runs]),
        "score_seconds": stats([r["score_seconds"] for r in runs]),
        "out_of_time": checks,
        "scale": None if scale is None else {
            "people": scale["people"], "events": scale["events"], "ingest_seconds": scale["ingest_seconds"],
            "train_seconds": scale["train_seconds"], "score_seconds": scale["score_seconds"],
            "score_steps": scale["score_steps"], "train_steps": scale.get("train_steps", {}),
            "tasks": {name: {k: t[k] for k in ("train_seconds", "score_seconds", "scored", "rows", "chosen", "lift")}
                      for name, t in scale["tasks"].items()}},
    }
    write_report(result, args.out, quick=args.quick)


def out_of_time_lines(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["### Out of time, as a user would check it (issue 21, item 7)", "",
             "A purchase log shaped like real ones (`persona.testing.purchases`: BG/NBD purchases and dropout,"
             " Gamma-Gamma spend, CDNOW's parameters, two years; gaps between purchases Poisson (regularity 1)"
             " or Gamma with shape 3, as regular as many retail logs), each task trained on all of it and scored"
             " as of its end; what the generator says happened in the 91 days after, beside BG/NBD fitted on"
             " the same history, and BG/NBD with the parameters the log was drawn with (\"true\": with"
             " regularity 1, the best any predictor can do in expectation). Better: lower RMSE, MAE and"
             " log-loss; higher AUC. *Served* is what the version serves after its backtest: the learned model,"
             " BG/NBD itself, or a blend of the two.", "",
             "| log | task (served) | measure | persona | BG/NBD | true BG/NBD | persona better than BG/NBD |",
             "|---|---|---|---:|---:|---:|---|"]
    for check in checks:
        where = f"{check['cohort']} cohort, regularity {check.get('regularity', 1.0):g}, {check['people']:,}"
        for name, t in check["tasks"].items():
            served = t.get("served", {})
            how = {"model": t["chosen"], "BG/NBD": "BG/NBD", "blend": f"{served.get('weight', 1):.2f} × "
                   f"{t['chosen']} + BG/NBD"}.get(served.get("as", "model"), t["chosen"])
            measures = ("rmse", "mae", "auc") if name != "churn_91d" else ("log_loss", "auc")
            for m in measures:
                ours, theirs = t["persona"][m], t["BG/NBD"][m]
                better = ours > theirs if m == "auc" else ours < theirs
                verdict = "tie" if f"{ours:.4f}" == f"{theirs:.4f}" else "yes" if better else "**no**"
                lines.append(f"| {where} | {name} ({how}) | {m} | {ours:.4f} | {theirs:.4f} "
                             f"| {t.get('true BG/NBD', {}).get(m, float('nan')):.4f} | {verdict} |")
            if name != "churn_91d":
                lines.append(f"| | {name} | purchases predicted / happened | {t['persona']['predicted']:,.0f} "
                             f"| {t['BG/NBD']['predicted']:,.0f} | | {t['persona']['happened']:,.0f} happened |")
    lines.append("")
    return lines


def _fmt(value: float) -> str:
    return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.1f}"


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w = r["workload"]
    lines = [
        "## Models (`scripts/bench-models`)",
        "",
        f"{r['when']} · {r['machine']} · {w['people']:,} people with planted propensities "
        f"(`persona.testing.planted`, seed {w['seed']}; {w['events']:,} events, ingested in "
        f"{r['ingest_seconds']['median']:.1f} s) · the default monthly cutoffs: every metric on the last one's "
        f"rows only, learnt from the cutoffs whose labels had closed by then; *served* is what the version "
        f"serves after its backtest against BG/NBD · timings median of {w['runs']} run(s) (min–max)",
        "",
        "| task | model chosen | held-out metric | model | best baseline | lift | train s | score all s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in r["tasks"].items():
        lift = t["lift"]
        best = min(t["baselines"], key=lambda b: t["baselines"][b][lift["metric"]])
        family = t["chosen"]["family"] + (f" on top of {t['chosen']['on_top_of']}" if t["chosen"].get("on_top_of")
                                          else "")
        served = t["chosen"].get("served", {})
        if served.get("as") == "BG/NBD":
            family = f"BG/NBD itself (the backtest refused {family})"
        elif served.get("as") == "blend":
            family = f"{served['weight']:.2f} × {family} + BG/NBD"
        if served.get("calibrated"):
            family += ", recalibrated"
        if t["chosen"].get("recency", {}).get("weighted"):
            family += ", rows weighted by recency"
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
    total_train, total_score = r["train_seconds"]["median"], r["score_seconds"]["median"]
    lines += ["", f"All {len(r['tasks'])} tasks, trained together (`persona train --all`: one read of every "
                  f"history, one point-in-time set and feature matrix for the tasks of one horizon; a task's "
                  f"seconds above include what it made first for the others): {total_train:.0f} s of training "
                  f"and {total_score:.0f} s of batch scoring of {w['people']:,} profiles by every task.", ""]
    scale = r.get("scale")
    if scale:
        lines += [f"### At scale: {scale['people']:,} people ({scale['events']:,} events, ingested in "
                  f"{scale['ingest_seconds']:.0f} s)", "",
                  "Issue 21's targets: every task trained in ≤ 10 minutes in total; every profile scored by every "
                  "task in ≤ 60 s.", "",
                  "| | seconds | target | |", "|---|---:|---:|---|",
                  f"| all {len(scale['tasks'])} tasks trained | {scale['train_seconds']:.0f} | 600 "
                  f"| {'met' if scale['train_seconds'] <= 600 else '**not met**'} |",
                  f"| every profile scored by every task | {scale['score_seconds']:.0f} | 60 "
                  f"| {'met' if scale['score_seconds'] <= 60 else '**not met**'} |", "",
                  *train_step_lines(scale.get("train_steps", {})),
                  f"Scoring: {scale['score_steps']['rows']:.0f} s to read every history and build everyone's rows "
                  f"(worker processes, every horizon at once) and fit BG/NBD and Gamma-Gamma on them; each task's "
                  f"predictions below; {scale['score_steps']['write']:.0f} s to write them all in one transaction.", "",
                  "| task | train s | score s | rows (train / test / serving) |", "|---|---:|---:|---|"]
        for name, t in scale["tasks"].items():
            rows = t["rows"]
            lines.append(f"| {name} | {t['train_seconds']:.0f} | {t['score_seconds']:.0f} | {rows['train']:,} / "
                         f"{rows['test']:,} / {rows.get('serving', 0):,} |")
        lines.append("")
    lines += out_of_time_lines(r.get("out_of_time", []))
    text = "\n".join(lines)
    if quick:
        print(text)
        return
    publish(out, "models", r, text)
    print(text)


if __name__ == "__main__":
    main()
