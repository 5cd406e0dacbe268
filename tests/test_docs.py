"""The project documents itself: every file the README, the docs, the code and the help text
point to is in the repository."""

from __future__ import annotations

import json
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


def run_persona(data: Path, *args: str) -> bytes:
    """The real command, in its own process, on a data directory; its standard output."""
    done = subprocess.run([sys.executable, "-m", "persona", "--data", str(data), *args], capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def test_the_worked_example_of_docs_events_ingests_as_it_says(tmp_path: Path) -> None:
    """docs/events.md's Chinese one-row-per-item export, run as the page says, by the real
    command: the unpaid and cancelled orders filtered out by the mapping's `where` (counted, not
    quarantined), two orders for two people (the first with both its items), the first order's
    bag refunded (`-¥39.00`, its own row) taking 39.00 off that person's monetary value, and the
    10-digit phone no region has quarantined with its reason. The number is nowhere in the data
    directory; a second run appends nothing."""
    export = ROOT / "fixtures" / "sources" / "zh_orders.csv"
    raw = export.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # as exports come: BOM and CRLF
    assert "待付款".encode() in raw and "已取消".encode() in raw and "已退款".encode() in raw
    assert b",1860000333," in raw  # the positive control of the byte search below
    data = tmp_path / "data"
    run_persona(data, "init")
    mapping = str(ROOT / "fixtures" / "sources" / "zh_orders.toml")
    first = json.loads(run_persona(data, "ingest", str(export), "--mapping", mapping, "--json"))
    counts = ("lines", "appended", "duplicates", "filtered", "quarantined", "profiles_created")
    assert tuple(first[k] for k in counts) == (8, 3, 0, 2, 1, 2), first
    assert first["quarantine_reasons"] == {"subject.value": 1}, first
    again = run_persona(data, "ingest", str(export), "--mapping", mapping).decode()
    assert "0 events appended, 3 duplicate events skipped" in again and "2 records filtered out" in again, again
    shown = run_persona(data, "history", "--subject", "phone:13800138000", "--json")
    events = [json.loads(line) for line in shown.splitlines()]
    assert [(e["event_id"], e["type"], e["data"]["amount"]) for e in events] == [
        ("E20250304001-order_placed", "order_placed", "157.00"),
        ("E20250304001-order_refunded", "order_refunded", "39.00")]
    assert len(events[0]["data"]["items"]) == 2
    profile = json.loads(run_persona(data, "profile", "--subject", "phone:13800138000", "--json"))
    features = profile["features"]
    assert (features["frequency"], features["monetary"], features["refunds"], features["refund_amount"]) == (
        1, 118.0, 1, 39.0), features  # 157.00 ordered, 39.00 refunded
    held = json.loads(run_persona(data, "quarantine", "--json"))
    assert {(r["line"], r["reason"]) for r in held} == {(7, "subject.value: not a valid phone number for its region")}
    for path in data.rglob("*"):
        if path.is_file():
            assert b"1860000333" not in path.read_bytes(), path  # sealed, and tagged by its hash only
