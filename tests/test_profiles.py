"""One profile as persona shows it (persona.profiles.profile_view): now, or as it was at an instant."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from persona import Persona
from persona.cli import cli
from persona.ingest import ingest_jsonl
from persona.profiles import profile_view
from persona.projector import rebuild
from tests.conftest import jsonl, order


def test_past_views_carry_no_present_rfm_and_extreme_instants_are_refused(persona: Persona, tmp_path: Path) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(order("e@example.com", "r1", "5"))), origin="f")
    rebuild(persona, workers=1)
    pid = persona.log.profile_for("email", "e@example.com")
    assert pid is not None
    assert profile_view(persona, pid)["features"]["rfm"] == {"r": 3, "f": 3, "m": 3}
    assert profile_view(persona, pid, as_of=datetime(2026, 5, 2, tzinfo=UTC))["features"]["rfm"] is None
    folder = str(persona.settings.data_dir)
    persona.close()
    args = ["--data", folder, "profile", "--profile", pid]
    bad = CliRunner().invoke(cli, [*args, "--as-of", "0001-01-01T00:00:00+01:00"])
    assert bad.exit_code == 2 and "1900" in bad.output
    ok = CliRunner().invoke(cli, [*args, "--json"])
    assert json.loads(ok.output)["features"]["frequency"] == 1
