"""Regressions for defects an independent review found in the projections layer."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from persona import Persona
from persona.cli import cli
from persona.erasure import erase_subject
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe
from persona.population import list_profiles
from persona.profiles import profile_view
from persona.projector import Projector, rebuild
from tests.conftest import event, jsonl, record


def order(email: str, eid: str, amount: str, at: str = "2026-05-01T00:00:00Z") -> dict[str, object]:
    return record(email, "order_placed", {"order_id": eid, "amount": amount, "currency": "EUR"},
                  occurred_at=at, event_id=eid, source="shop")


def test_absurd_amounts_are_quarantined_and_large_ones_do_not_break_features(persona: Persona) -> None:
    report = ingest_jsonl(persona, io.BytesIO(jsonl(order("a@example.com", "x1", "1e30"),
                                                    order("a@example.com", "x2", "0.0000001"),
                                                    *[order("a@example.com", f"ok{i}", "999999999999999.99")
                                                      for i in range(3)])), origin="f")
    assert (report.appended, report.quarantined) == (3, 2)
    assert all("below 10^15" in r["reason"] for r in describe(persona))
    pid = persona.log.profile_for("email", "a@example.com")
    assert pid is not None
    assert profile_view(persona, pid)["features"]["monetary"] == 2999999999999999.97
    assert len(persona.recorder.index_rows()) == 1


def test_derived_rows_are_never_written_for_an_erased_profile(persona: Persona) -> None:
    persona.log.append([event(event_id="e1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    projector = Projector(persona)
    current = projector.current(pid)
    doc = projector.index_doc(current)
    assert current.sealer is not None
    snaps = projector.snapshot_rows(current, current.sealer, force=True)
    with Persona.open(persona.settings) as other:  # another process erases in between
        erase_subject(other, "email", "alice@example.com")
    with persona.recorder.transaction():
        persona.recorder.put_index([(pid, current.version, doc)])
        persona.recorder.put_snapshots(snaps)
        persona.recorder.put_rfm([(pid, 5, 5, 5)])
    assert persona.recorder.index_rows() == [] and persona.recorder.snapshots_of(pid) == {}
    assert persona.recorder.rfm_scores() == {}


def test_an_older_index_row_never_replaces_a_newer_one(persona: Persona) -> None:
    persona.log.append([event(event_id="v1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    stale = Projector(persona)
    old = stale.index_doc(stale.current(pid))
    persona.log.append([event(event_id="v2")])
    Projector(persona).refresh([pid])
    with persona.recorder.transaction():
        persona.recorder.put_index([(pid, 1, old)])
    assert persona.recorder.index_rows()[0][1] == 2


def test_questions_about_the_past_and_future_dated_events_use_replay(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(order("b@example.com", "p1", "10", at="2026-04-01T00:00:00Z"),
                                           order("b@example.com", "p2", "90", at="2026-05-20T00:00:00Z"))),
                 origin="f")
    past = list_profiles(persona, as_of=datetime(2026, 4, 15, tzinfo=UTC))[0]
    assert past.features["frequency"] == 1 and past.features["recency_days"] == 14.0
    assert "category_affinity" in past.features


def test_age_in_the_index_is_derived_for_the_readers_instant(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record("c@example.com", "profile_updated", {"birth_year": 1990},
                                                  occurred_at="2020-01-01T00:00:00Z", source="crm",
                                                  event_id="c1"))), origin="f")
    (profile,) = list_profiles(persona, as_of=datetime(2030, 6, 1, tzinfo=UTC))
    assert profile.attributes["age"] == 40


def test_undeclared_profile_fields_are_not_fused(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record("d@example.com", "profile_updated",
                                                  {"language": "en", "languages": {"b": 1, "a": 2}},
                                                  event_id="d1"))), origin="f")
    pid = persona.log.profile_for("email", "d@example.com")
    assert pid is not None
    assert profile_view(persona, pid)["attributes"]["languages"]["value"] == ["en"]


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


def test_event_ids_are_unique_per_source(persona: Persona) -> None:
    result = persona.log.append([event(event_id="o1", source="shop"), event(event_id="o1", source="crm")])
    assert (result.appended, result.duplicates) == (2, 0)
    again = persona.log.append([event(event_id="o1", source="shop")])
    assert (again.appended, again.duplicates) == (0, 1)
