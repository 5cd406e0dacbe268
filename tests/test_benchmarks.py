"""The benchmark scripts keep working (a smoke run each; their figures are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("script", "heading"), [("bench_core.py", "## Core event log"),
                                                 ("bench_projections.py", "## Projections"),
                                                 ("bench_api.py", "## GraphQL API"),
                                                 ("bench_ingest.py", "## Ingest of raw exports"),
                                                 ("bench_feed.py", "## Live feed"),
                                                 ("bench_segments.py", "## Live segments"),
                                                 ("bench_models.py", "## Models"),
                                                 ("bench_recommend.py", "## Recommendations"),
                                                 ("bench_backends.py", "## Backends"),
                                                 ("bench_pg_erasure.py", "## Erasure on PostgreSQL"),
                                                 ("bench_writers.py", "## Writers at once on PostgreSQL"),
                                                 ("bench_engines.py", "## Engines"),
                                                 ("bench_peer.py", "## Against a peer"),
                                                 ("bench_scans.py", "## Point reads during scans"),
                                                 ("bench_report.py", "## Report")])
def test_benchmark_script_runs(script: str, heading: str, tmp_path: Path) -> None:
    before = (ROOT / "docs" / "benchmarks.md").read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, check=False)  # ends a hang; no measure
    assert done.returncode == 0, done.stderr[-3000:]  # what went wrong, in the test's report
    assert heading in done.stdout and "\n|---" in done.stdout  # a heading and a table
    assert (ROOT / "docs" / "benchmarks.md").read_bytes() == before  # a quick run publishes nothing


def test_writers_racing_for_the_same_people_make_one_profile_each(tmp_path: Path) -> None:
    """bench-writers --shared: every writer sees every person; the run checks, and so refuses to
    report otherwise, that the log verifies and holds one profile per person."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_writers.py"), "--quick", "--shared", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every writer seeing every person" in done.stdout and "| 2 |" in done.stdout


def test_the_report_draws_the_scaling_curve_with_large(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_report.py"), "--quick", "--large", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=1800, check=True)
    out = done.stdout
    assert "**Scaling**" in out and "| 20,000 / 2,000 |" in out and "Flat to 20,000 events" in out


def _harden() -> Any:
    """scripts/harden.py as a module (it imports scripts/_publish as its siblings do)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import harden
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return harden


def test_harden_holds_the_long_run_to_its_floors_and_publishes_its_section(tmp_path: Path) -> None:
    """scripts/harden's judging and publishing, on made-up reports (running the suite is the script's job)."""
    from tests import hardening as h

    harden = _harden()
    long_run = {h.KILLS: 100, h.ACKNOWLEDGED: 90_000, h.ACKNOWLEDGED_LOST: 0, h.DUPLICATED: 0, h.VERIFY_FAILED: 0,
                h.REQUESTS: 10_800, h.ANSWERED_5XX: 0, h.ECHOED: 0, h.SOURCE_ROWS: 102_000, h.SOURCE_DROPPED: 0,
                h.SOURCE_QUARANTINED: 90_000, "mapping documents fuzzed": 6_000}
    assert all(m["met"] for m in harden.judge(long_run, long=True, sweep=False))
    for missed in ({h.KILLS: 99}, {h.REQUESTS: 9_999}, {h.SOURCE_ROWS: 99_999}, {h.ACKNOWLEDGED_LOST: 1},
                   {h.DUPLICATED: 1}, {h.VERIFY_FAILED: 1}, {h.ANSWERED_5XX: 1}, {h.ECHOED: 1}, {h.SOURCE_DROPPED: 1}):
        marks = harden.judge(long_run | missed, long=True, sweep=False)
        assert [m["label"] for m in marks if not m["met"]], missed
    assert all(m["met"] for m in harden.judge(long_run | {h.KILLS: 2, h.REQUESTS: 720, h.SOURCE_ROWS: 240},
                                              long=False, sweep=False))  # --quick: CI's floors
    without_kills = {k: v for k, v in long_run.items() if k != h.KILLS}
    assert not all(m["met"] for m in harden.judge(without_kills, long=True, sweep=False))  # never counted: missed
    # the tamper sweep runs in the long run only: its flips must be counted, none missed, no byte left out
    assert not all(m["met"] for m in harden.judge(long_run, long=True, sweep=True))
    swept = long_run | {h.TAMPER_FLIPS: 56_832, h.TAMPER_MISSED: 0, h.TAMPER_SKIPPED: 0}
    assert all(m["met"] for m in harden.judge(swept, long=True, sweep=True))
    for missed in ({h.TAMPER_MISSED: 1}, {h.TAMPER_SKIPPED: 1}):
        assert not all(m["met"] for m in harden.judge(swept | missed, long=True, sweep=True)), missed
    assert harden.SWEEP in harden.modules(tmp_path, long=True) and harden.SWEEP not in harden.modules(tmp_path,
                                                                                                        long=False)
    assert set(harden.ATTACKS) <= set(harden.modules(tmp_path, long=True))
    assert all((ROOT / module).is_file() for module in harden.modules(ROOT, long=True))

    result = {"when": "2026-12-05T07:00:00+00:00", "machine": "x86_64, 2 cores", "mode": "long",
              "command": "scripts/harden", "modules": list(harden.MODULES), "seed": 7, "duration_s": 1500.0,
              "load_average": {"before": [1.0, 1.0, 1.0], "after": [1.5, 1.0, 1.0]},
              "pytest": {"exit": 0, "tests": 21, "failed": 0}, "marks": harden.judge(long_run, long=True, sweep=False),
              "tried": long_run, "passed": True}
    text = harden.render(result)
    assert text.startswith("## Hardening (`scripts/harden`)") and "\n|---" in text
    assert "| 10,800 | ≥ 10,000 | met |" in text and "mapping documents fuzzed 6,000" in text
    harden.publish(tmp_path / "docs", "hardening", result, text)
    assert "<!-- hardening:begin -->\n## Hardening" in (tmp_path / "docs" / "benchmarks.md").read_text()
    assert (tmp_path / "docs" / "benchmarks-hardening.json").exists()
