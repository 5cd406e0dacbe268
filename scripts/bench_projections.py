"""Benchmark of projections: full replay through the folds, parallel rebuild of snapshots and
the profile index, and reading one profile's current state from its snapshot.
Writes the projections section of docs/benchmarks.md and docs/benchmarks-projections.json.

    scripts/bench-projections                  # 1,000,000 events over 10,000 profiles
    scripts/bench-projections --quick          # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _publish import publish

from persona import Persona, Settings
from persona.eventlog import gc_paused
from persona.events import Event, Subject, utc_text
from persona.projections import ATTRIBUTES, FEATURES
from persona.projector import Projector, rebuild

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ["books", "electronics", "home", "beauty", "sports", "toys", "grocery", "garden"]


def mixed_events(n: int, people: int, seed: int = 7) -> list[Event]:
    """A realistic mix: mostly browsing, some orders, a little of everything else."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        who = Subject("email", f"user{rng.randrange(people)}@example.com")
        at = utc_text(start + timedelta(seconds=i * 60 + rng.randrange(60)))
        cat = rng.choice(CATEGORIES)
        roll = rng.random()
        if roll < 0.70:
            kind, data = "page_viewed", {"url": f"https://shop.example/{cat}/p/{rng.randrange(99_999)}",
                                         "category": cat, "duration_s": rng.randrange(300),
                                         "session_id": f"s{i // 8}"}
        elif roll < 0.85:
            kind, data = "product_viewed", {"sku": f"{cat[:3]}-{rng.randrange(500)}", "category": cat,
                                            "session_id": f"s{i // 8}"}
        elif roll < 0.93:
            price = f"{rng.randrange(5, 500)}.{rng.randrange(100):02d}"
            kind, data = "order_placed", {"order_id": f"o{i}", "amount": price, "currency": "EUR",
                                          "items": [{"sku": f"{cat[:3]}-{rng.randrange(500)}", "category": cat,
                                                     "qty": 1, "price": price}]}
        elif roll < 0.96:
            kind, data = "searched", {"query": f"{cat} gift", "session_id": f"s{i // 8}"}
        elif roll < 0.98:
            kind, data = "social_interaction", {"action": rng.choice(["like", "share", "comment"]), "category": cat}
        elif roll < 0.99:
            kind, data = "app_session", {"session_id": f"a{i}", "minutes": rng.randrange(1, 60),
                                         "features_used": ["scan"]}
        else:
            kind, data = "profile_updated", {"city": rng.choice(["Paris", "Lyon", "Berlin"]),
                                             "birth_year": rng.randrange(1950, 2005)}
        out.append(Event(f"e{i}", "web", kind, at, who, data))
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def full_replay(persona: Persona) -> float:
    """Every stream read, opened and folded through both projections, one process: events/s."""
    started = time.perf_counter()
    count = 0
    with gc_paused():
        for pid in list(persona.recorder.stream_ids()):
            states = {p.name: p.initial() for p in (ATTRIBUTES, FEATURES)}
            for event in persona.log.read(pid):
                count += 1
                for p in (ATTRIBUTES, FEATURES):
                    states[p.name] = p.apply(states[p.name], event)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.quick:
        args.events, args.people, args.runs = 5000, 100, 1
    print(f"generating and appending {args.events:,} events…", file=sys.stderr)
    events = mixed_events(args.events, args.people)
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        persona = Persona.init(Settings.load(Path(tmp) / "data", env={}))
        started = time.perf_counter()
        for i in range(0, len(events), 20_000):
            persona.log.append(events[i : i + 20_000])
        append_s = time.perf_counter() - started
        del events
        replays, rebuilds, reads = [], [], []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: replay, rebuild, reads…", file=sys.stderr)
            replays.append(full_replay(persona))
            started = time.perf_counter()
            rebuilt = rebuild(persona, workers=os.cpu_count())
            rebuilds.append(time.perf_counter() - started)
            ids = random.Random(run).sample(list(persona.recorder.stream_ids()), min(300, rebuilt))
            timings = []
            for pid in ids:
                started = time.perf_counter()
                current = Projector(persona).current(pid)  # a fresh projector: from the stored snapshot
                FEATURES.view(current.states[FEATURES.name], datetime.now(UTC))
                timings.append((time.perf_counter() - started) * 1000)
            reads.append(statistics.median(timings))
        size = Path(persona.settings.db_path).stat().st_size
        persona.close()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"SQLite {sqlite3.sqlite_version}",
        "workload": {"events": args.events, "people": args.people, "runs": args.runs},
        "append_s": append_s,
        "db_mb": size / 1e6,
        "replay_eps": stats(replays),
        "rebuild_s": stats(rebuilds),
        "read_ms": stats(reads),
    }
    write_report(result, args.out, quick=args.quick)


def write_report(r: dict[str, Any], out: Path, *, quick: bool) -> None:
    w = r["workload"]
    rows = [
        ("full replay through both projections, one process", r["replay_eps"], "events/s", "{:,.0f}"),
        (f"full rebuild (snapshots + index + RFM), {os.cpu_count()} processes", r["rebuild_s"], "s", "{:.1f}"),
        ("one profile's current state from its snapshot (median of 300)", r["read_ms"], "ms", "{:.2f}"),
    ]
    lines = [
        "## Projections (`scripts/bench-projections`)",
        "",
        f"{r['when']} · {r['machine']} · {w['events']:,} mixed events (70% page views, 15% product views, "
        f"8% orders, …) over {w['people']:,} profiles; database {r['db_mb']:.0f} MB, appended in "
        f"{r['append_s']:.1f} s · median of {w['runs']} runs (min–max)",
        "",
        "| measure | median | min – max | unit |",
        "|---|---:|---:|---|",
    ]
    for name, s, unit, fmt in rows:
        lines.append(f"| {name} | {fmt.format(s['median'])} | {fmt.format(s['min'])} – {fmt.format(s['max'])} "
                     f"| {unit} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if quick:
        return
    publish(out, "projections", r, text)


if __name__ == "__main__":
    main()
