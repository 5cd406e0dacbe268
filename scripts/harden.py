"""The hardening suite's long mode: the crash and fuzzing tests at their long size, held to floors.

    scripts/harden            # PERSONA_HARDEN=long: ≥ 100 SIGKILLs of the server mid-ingest, ≥ 10,000 fuzzed
                              # GraphQL requests, ≥ 100,000 fuzzed source rows, every byte of a sample store
                              # flipped (tests/test_tamper_sweep.py) and the privacy review's attacks
                              # (ATTACKS) again; writes docs/benchmarks.md (hardening section) and
                              # docs/benchmarks-hardening.json
    scripts/harden --quick    # the same modules at CI size, checked against CI's floors; publishes nothing
    scripts/harden -- -x      # arguments after -- go to pytest

The tests count what they did (tests/hardening.py) into a JSON report (PERSONA_HARDEN_REPORT);
this script reads it, checks each figure against its floor (at least so many kills, requests,
rows) or ceiling (no acknowledged event lost, none stored twice, no 5xx, no identifier echoed,
no row dropped, no flip missed), prints the table, and exits 1 if a test failed or a figure
missed its mark (publishing nothing then).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _publish import machine, publish  # noqa: E402

from tests import hardening as h  # noqa: E402

MODULES = ("tests/test_crash.py", "tests/test_fuzz_api.py", "tests/test_fuzz_sources.py", "tests/test_fuzz_mapping.py")
SWEEP = "tests/test_tamper_sweep.py"  # every single-byte flip of a sample store: long mode only
# the attacks of the privacy review (issue 17), each a regression test, run again beside the long run
ATTACKS = ("tests/test_privacy.py", "tests/test_write_tokens.py", "tests/test_backup.py", "tests/test_ledger.py",
           "tests/test_audit.py", "tests/test_api_scans.py", "tests/test_purge.py", "tests/test_api_http.py")


@dataclass(frozen=True)
class Mark:
    """A figure the run must reach (`least`) or stay within (`most`), in CI's size and the long one."""

    label: str
    tallies: tuple[str, ...]
    least: tuple[int, int] | None = None
    most: int | None = None
    sweep: bool = False  # only when the tamper sweep ran


MARKS = (
    Mark("`persona serve` killed with SIGKILL at a random point of ingestEvents, then checked", (h.KILLS,),
         least=(2, 100)),
    Mark("events acknowledged by the killed servers", (h.ACKNOWLEDGED,), least=(1, 1)),
    Mark("acknowledged events lost", (h.ACKNOWLEDGED_LOST,), most=0),
    Mark("events stored twice (after the clients resent calls)", (h.DUPLICATED,), most=0),
    Mark("stores failing `verify` after a kill", (h.VERIFY_FAILED,), most=0),
    Mark("GraphQL requests fuzzed (schemathesis, every root field)", (h.REQUESTS,), least=(360, 10_000)),
    Mark("GraphQL requests answered with a 5xx", (h.ANSWERED_5XX,), most=0),
    Mark("GraphQL answers echoing an identifier", (h.ECHOED,), most=0),
    Mark("source rows fuzzed (shop, social, web, app)", (h.SOURCE_ROWS,), least=(200, 100_000)),
    Mark("source rows dropped without a word (not appended, duplicate, quarantined or blank)", (h.SOURCE_DROPPED,),
         most=0),
    Mark("single-byte flips of a sample store, each caught by `verify` or changing nothing a reader sees",
         (h.TAMPER_FLIPS,), least=(1, 1), sweep=True),
    Mark("bytes of the sample store left unflipped", (h.TAMPER_SKIPPED,), most=0, sweep=True),
    Mark("flips `verify` missed (or a reader crashed on)", (h.TAMPER_MISSED,), most=0, sweep=True),
)
# what else the modules count, shown beneath the marks
SHOWN = {h.SOURCE_APPENDED, h.SOURCE_DUPLICATES, h.SOURCE_QUARANTINED, h.SOURCE_BLANK, h.TAMPER_CAUGHT,
         h.TAMPER_UNCHANGED}


def modules(root: Path, *, long: bool) -> list[str]:
    """The test modules to run: in the long run, the tamper sweep and the attacks too."""
    return [*MODULES, *([SWEEP, *ATTACKS] if long else [])]


def count(tried: dict[str, int], mark: Mark) -> int | None:
    """A mark's figure from the report (None: never counted)."""
    found = [tried[t] for t in mark.tallies if t in tried]
    return sum(found) if found else None


def judge(tried: dict[str, int], *, long: bool, sweep: bool) -> list[dict[str, Any]]:
    """Each mark with its figure and whether it was met (a figure never counted is not met,
    except a ceiling, whose absence means nothing happened that it counts)."""
    rows = []
    for mark in MARKS:
        if mark.sweep and not sweep:
            continue
        value = count(tried, mark)
        if mark.least is not None:
            floor = mark.least[1] if long else mark.least[0]
            rows.append({"label": mark.label, "value": value, "mark": f"≥ {floor:,}",
                         "met": value is not None and value >= floor})
        else:
            assert mark.most is not None
            rows.append({"label": mark.label, "value": value or 0, "mark": f"≤ {mark.most:,}" if mark.most else "0",
                         "met": (value or 0) <= mark.most})
    return rows


def run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    long = not args.quick
    seed = None if not long else args.seed if args.seed is not None else random.randrange(2**32)
    chosen = modules(ROOT, long=long)
    with tempfile.TemporaryDirectory(prefix="persona-harden-") as tmp:
        report_path = Path(tmp) / "report.json"
        env = {**os.environ, "PERSONA_HARDEN_REPORT": str(report_path)}
        if long:  # hypothesis and the kills explore, from the seed, rather than replaying CI's examples
            env.update(PERSONA_HARDEN="long", PERSONA_HARDEN_SEED=str(seed))
            env.pop("CI", None)
        else:  # CI's size and examples
            env.pop("PERSONA_HARDEN", None)
            env.pop("PERSONA_HARDEN_SEED", None)
            env["CI"] = "1"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
                   *([f"--hypothesis-seed={seed}"] if long else []), *chosen, *extra]
        load_before = os.getloadavg()
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        duration = time.monotonic() - started
        report: dict[str, Any] = orjson.loads(report_path.read_bytes()) if report_path.exists() else {}
    tried: dict[str, int] = report.get("tried", {})
    runs = report.get("runs", [])
    marks = judge(tried, long=long, sweep=SWEEP in chosen)
    passed = done.returncode == 0 and bool(runs) and all(m["met"] for m in marks)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "long" if long else "quick",
        "command": "scripts/harden" + (" --quick" if args.quick else "") + (" -- " + " ".join(extra) if extra else ""),
        "modules": chosen,
        "seed": seed,
        "duration_s": round(duration, 1),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "pytest": {"exit": done.returncode, "tests": sum(r["tests"] for r in runs),
                   "failed": sum(r["failed"] for r in runs)},
        "marks": marks,
        "tried": tried,
        "passed": passed,
    }


def render(r: dict[str, Any]) -> str:
    minutes = r["duration_s"] / 60
    verdict = ("every test passed, every mark met" if r["passed"] else
               f"**failed**: {r['pytest']['failed']} test(s) failed (pytest exit {r['pytest']['exit']}), "
               f"{sum(not m['met'] for m in r['marks'])} mark(s) missed")
    lines = [
        "## Hardening (`scripts/harden`)",
        "",
        f"{r['when']} · {r['machine']} · `{r['command']}` ("
        + (f"PERSONA_HARDEN=long, seed {r['seed']}" if r["mode"] == "long" else "CI size")
        + f"): {', '.join(m.removeprefix('tests/') for m in r['modules'])} · {r['pytest']['tests']} tests"
        f" · {minutes:.1f} min · load average {r['load_average']['before'][0]:.2f} before,"
        f" {r['load_average']['after'][0]:.2f} after · {verdict}",
        "",
        "| what the run did | count | must be | |",
        "|---|---:|---|---|",
    ]
    for m in r["marks"]:
        value = "—" if m["value"] is None else f"{m['value']:,}"
        lines.append(f"| {m['label']} | {value} | {m['mark']} | {'met' if m['met'] else '**missed**'} |")
    shown = {h.SOURCE_APPENDED: "source rows' records appended", h.SOURCE_DUPLICATES: "… found duplicates",
             h.SOURCE_QUARANTINED: "… quarantined with a reason", h.SOURCE_BLANK: "… blank",
             h.TAMPER_CAUGHT: "flips caught by `verify`", h.TAMPER_UNCHANGED: "flips changing nothing a reader sees"}
    for what, label in shown.items():
        if what in r["tried"]:
            lines.append(f"| {label} | {r['tried'][what]:,} | | |")
    marked = {t for mark in MARKS for t in mark.tallies} | SHOWN
    others = sorted((what, n) for what, n in r["tried"].items() if what not in marked)
    lines += [
        "",
        "Method: after each SIGKILL (at a uniformly random moment while two clients send ingestEvents calls of 1 to",
        "20 new events back to back), the store is opened: every event of an answered call must be there, none",
        "twice, and `verify` must pass; the restarted server is then sent again every call the kill cut short",
        "and a few that were answered (which must come back as duplicates). The fuzzing sends schemathesis'",
        "documents for every query and mutation to a running server with an all-scopes token (no 5xx, no",
        "internals, no identifier of the store or of the request in any answer or in the server's log), and",
        "hypothesis' rows to every built-in source adapter (each row appended, a duplicate, quarantined or",
        "blank; the stores verified at the end)." + (" The tamper sweep flips every byte of a sample store,"
                                                     " one at a time: `verify` must catch each, or a full dump of"
                                                     " what readers see (every table, every log opened, every"
                                                     " quarantined record) must equal the original's. The"
                                                     f" attacks of the privacy review run again as regression"
                                                     f" tests ({', '.join(a.removeprefix('tests/') for a in ATTACKS)})."
                                                     if any(
                                                         m["label"].startswith("single-byte") for m in r["marks"])
                                                     else ""),
    ]
    if others:
        lines += ["", "Also counted: " + "; ".join(f"{what} {n:,}" for what, n in others) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI's size and floors: a smoke test; publishes nothing")
    parser.add_argument("--seed", type=int, help="hypothesis' and the kills' seed (default: a random one, reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    result = run(args, extra)
    text = render(result)
    print()
    print(text)
    if not result["passed"]:
        print("scripts/harden: FAILED (nothing published)", file=sys.stderr)
        sys.exit(1)
    if not args.quick:
        publish(args.out, "hardening", result, text)


if __name__ == "__main__":
    main()
