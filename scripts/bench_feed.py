"""Benchmark of a live feed: how long an event written to `persona ingest -` takes to show in its
person's profile (the profile index, which listings and the API read). A real `persona ingest -`
process reads a pipe; this process writes one event at a time to it at a steady rate, each to one
of `--people` known people (their profiles indexed beforehand, with `--history` events each), and
watches the store through its own connection, as another reader would: an event is visible when
its person's row in the index has reached the event's version. Latency is from the write to the
pipe to the first poll that sees it (polls every 10 ms, so figures are up to 10 ms late).
Writes docs/benchmarks.md (live feed section) and docs/benchmarks-feed.json.

    scripts/bench-feed                     # 1,000 people, 20 events/s for 60 s
    scripts/bench-feed --rate 200 --seconds 30
    scripts/bench-feed --quick             # a smoke run (used by the tests); publishes nothing
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from _publish import machine, publish

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_S = 1.0
POLL_S = 0.01


def event(person: int, n: int, at: datetime) -> dict[str, Any]:
    return {"event_id": f"feed-{person}-{n}", "source": "web", "type": "page_viewed",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "subject": {"namespace": "email", "value": f"feed{person}@example.com"},
            "data": {"url": f"https://shop.example/p/{n % 50}", "duration_s": 12}}


def prepare(data: Path, people: int, history: int) -> None:
    """A store whose people each have `history` events, indexed (a real ingest, untimed)."""
    from persona import Persona, Settings
    from persona.ingest import ingest_jsonl

    start = datetime.now(UTC) - timedelta(days=30)
    lines = (orjson.dumps(event(person, n, start + timedelta(minutes=n))) + b"\n"
             for n in range(history) for person in range(people))
    with Persona.init(Settings.load(data, env={})) as persona:
        report = ingest_jsonl(persona, lines, origin="history")
    if report.appended != people * history:
        raise SystemExit(f"the history was not appended whole ({report.appended:,} of {people * history:,})")


def measure(data: Path, people: int, history: int, rate: float, seconds: float) -> dict[str, Any]:
    from persona import Persona, Settings

    settings = Settings.load(data, env={})
    with Persona.open(settings) as reader:
        pids = {person: reader.log.profile_for("email", f"feed{person}@example.com") for person in range(people)}
    if any(pid is None for pid in pids.values()):
        raise SystemExit("the prepared people have no profiles")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    feed = subprocess.Popen([sys.executable, "-m", "persona", "--data", str(data), "ingest", "-", "--json"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=ROOT)
    assert feed.stdin is not None
    sent: dict[tuple[str, int], float] = {}  # (profile id, version the event brings) -> when it was written
    versions = dict.fromkeys(pids.values(), history)
    seen: dict[tuple[str, int], float] = {}
    total = int(rate * seconds)
    reader = Persona.open(settings)
    try:
        time.sleep(1.0)  # the feed's start-up (imports, opening the store) is not what is measured
        began = time.monotonic()
        for n in range(total):
            due = began + n / rate
            while True:  # poll while waiting for the next event's turn
                _poll(reader, sent, seen)
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                time.sleep(min(POLL_S, wait))
            person = n % people
            pid = pids[person]
            versions[pid] += 1
            feed.stdin.write(orjson.dumps(event(person, history + n // people, datetime.now(UTC))) + b"\n")
            feed.stdin.flush()
            sent[(pid, versions[pid])] = time.monotonic()
        deadline = time.monotonic() + 30
        while len(seen) < len(sent) and time.monotonic() < deadline:
            _poll(reader, sent, seen)
            time.sleep(POLL_S)
    finally:
        reader.close()
        feed.stdin.close()  # the feed's end: it reports what it appended
        assert feed.stdout is not None
        out = feed.stdout.read()
        feed.wait(timeout=120)
    report = orjson.loads(out)
    if report["appended"] != len(sent):
        raise SystemExit(f"the feed appended {report['appended']:,} events of {len(sent):,}")
    latencies = sorted(seen[key] - sent[key] for key in seen)
    if len(latencies) < len(sent):
        raise SystemExit(f"{len(sent) - len(latencies)} events never became visible within 30 s")

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"events": len(sent), "appended": report["appended"], "rate": rate, "people": people,
            "history": history, "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99),
            "max_s": latencies[-1], "mean_s": statistics.fmean(latencies)}


def _poll(reader: Any, sent: dict[tuple[str, int], float], seen: dict[tuple[str, int], float]) -> None:
    """Mark every sent event whose person's index row has reached its version."""
    waiting = [key for key in sent if key not in seen]
    if not waiting:
        return
    now = time.monotonic()
    indexed = {row[0]: row[1] for row in reader.recorder.index_rows()}
    for pid, version in waiting:
        if indexed.get(pid, 0) >= version:
            seen[(pid, version)] = now


def write_report(result: dict[str, Any], out: Path, *, quick: bool) -> None:
    r = result
    met = r["p99_s"] <= TARGET_P99_S
    text = "\n".join([
        "## Live feed (`scripts/bench-feed`)",
        "",
        f"{r['when']} · {r['machine']} · `persona ingest -` fed {r['events']:,} canonical events at "
        f"{r['rate']:g}/s, one at a time, to {r['people']:,} people with {r['history']:,} events of history each "
        "(indexed beforehand); latency from the write to the pipe to the first poll (every 10 ms, from another "
        "connection) that sees the event's version in its person's row of the profile index.",
        "",
        "| p50 | p95 | p99 | max | mean |",
        "|---:|---:|---:|---:|---:|",
        f"| {r['p50_s'] * 1000:,.0f} ms | {r['p95_s'] * 1000:,.0f} ms | {r['p99_s'] * 1000:,.0f} ms | "
        f"{r['max_s'] * 1000:,.0f} ms | {r['mean_s'] * 1000:,.0f} ms |",
        "",
        f"Target (issue 20): visible within {TARGET_P99_S:g} s at p99 — **{'met' if met else 'not met'}**.",
        "",
    ])
    if quick:
        print(text)
        return
    publish(out, "feed", result, text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=20, help="events of each person before the feed")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second written to the feed")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if args.quick:
        args.people, args.history, args.rate, args.seconds = 20, 3, 20.0, 2.0
    if min(args.people, args.history, args.rate, args.seconds) <= 0:
        parser.error("--people, --history, --rate and --seconds are positive")
    with tempfile.TemporaryDirectory(prefix="persona-bench-feed-") as tmp:
        data = Path(tmp) / "data"
        print(f"preparing {args.people:,} people with {args.history:,} events each…", file=sys.stderr)
        prepare(data, args.people, args.history)
        print(f"feeding {int(args.rate * args.seconds):,} events at {args.rate:g}/s…", file=sys.stderr)
        result = measure(data, args.people, args.history, args.rate, args.seconds)
    result |= {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    write_report(result, args.out, quick=args.quick)


if __name__ == "__main__":
    main()
