"""The benchmark scripts keep working (a smoke run each; their figures are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("script", "heading"), [("bench_core.py", "## Core event log"),
                                                 ("bench_projections.py", "## Projections"),
                                                 ("bench_api.py", "## GraphQL API"),
                                                 ("bench_ingest.py", "## Ingest of raw exports"),
                                                 ("bench_models.py", "## Models"),
                                                 ("bench_backends.py", "## Backends"),
                                                 ("bench_pg_erasure.py", "## Erasure on PostgreSQL"),
                                                 ("bench_peer.py", "## Against a peer"),
                                                 ("bench_scans.py", "## Point reads during scans"),
                                                 ("bench_report.py", "## Report")])
def test_benchmark_script_runs(script: str, heading: str, tmp_path: Path) -> None:
    before = (ROOT / "docs" / "benchmarks.md").read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, check=True)  # ends a hang; no measure
    assert heading in done.stdout and "\n|---" in done.stdout  # a heading and a table
    assert (ROOT / "docs" / "benchmarks.md").read_bytes() == before  # a quick run publishes nothing
