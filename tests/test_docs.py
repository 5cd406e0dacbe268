"""The project documents itself: every file the README, the docs, the code and the help text
point to is in the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from persona.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target), anchors dropped


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_docs_names_a_file_in_the_repository(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]  # not http:, mailto:
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to {missing}"


def test_nothing_points_outside_the_repository_for_its_specs() -> None:
    """The canonical event format and the design live in docs/events.md and docs/design.md."""
    assert (ROOT / "docs" / "events.md").is_file() and (ROOT / "docs" / "design.md").is_file()
    texts = [*PAGES, *sorted((ROOT / "persona").rglob("*.py")), *sorted((ROOT / "scripts").glob("*"))]
    stale = [str(p.relative_to(ROOT)) for p in texts
             if p.is_file() and re.search(r"\b(EVENTS|DESIGN)\.md\b|\.\./shared", p.read_text(errors="replace"))]
    assert not stale, stale
    helped = CliRunner().invoke(cli, ["ingest", "--help"]).output
    assert "EVENTS.md" not in helped and "DESIGN.md" not in helped


def test_the_worked_example_of_docs_events_ingests_as_it_says(tmp_path: Path) -> None:
    """docs/events.md's Chinese one-row-per-item export, run as the page says, by the real
    command: cancelled rows dropped first (its awk line), then two orders for two people, the
    first with both its items; a second run appends nothing."""
    export = ROOT / "fixtures" / "sources" / "zh_orders.csv"
    raw = export.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # as exports come: BOM and CRLF
    kept = tmp_path / "kept.csv"
    awk = subprocess.run(["awk", "-F,", "$NF !~ /^已取消/", str(export)], check=True, capture_output=True)
    kept.write_bytes(awk.stdout)
    assert awk.stdout.count(b"\r\n") == raw.count(b"\r\n") - 1  # the cancelled order's row, and only it
    exe = Path(sys.executable).with_name("persona")
    env = {**os.environ, "PERSONA_DATA": str(tmp_path / "data")}
    subprocess.run([exe, "init"], check=True, env=env, capture_output=True)
    mapping = str(ROOT / "fixtures" / "sources" / "zh_orders.toml")
    first = json.loads(subprocess.run([exe, "ingest", str(kept), "--mapping", mapping, "--json"], check=True, env=env,
                                      capture_output=True).stdout)
    assert (first["appended"], first["quarantined"], first["profiles_created"]) == (2, 0, 2), first
    again = json.loads(subprocess.run([exe, "ingest", str(kept), "--mapping", mapping, "--json"], check=True, env=env,
                                      capture_output=True).stdout)
    assert (again["appended"], again["duplicates"]) == (0, 2), again
    shown = subprocess.run([exe, "history", "--subject", "phone:+8613800138000", "--json"], check=True, env=env,
                           capture_output=True).stdout
    orders = [json.loads(line) for line in shown.splitlines()]
    assert [len(o["data"]["items"]) for o in orders] == [2] and float(orders[0]["data"]["amount"]) == 157.0
