"""Races and half-finished work between processes: rotations, restores, erasures."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from persona import Persona
from persona.backup import backup, restore
from persona.crypto import Keyring
from persona.erasure import erase_profile, erase_subject, ledger_of
from persona.errors import ConfigurationError, ErasedError, UnfinishedErasureError, UnknownProfileError
from persona.events import micros
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe
from persona.ledger import LedgerEntry
from persona.verify import verify
from tests.conftest import NOW, event, jsonl, record


def test_overlapping_rotations_keep_every_version(persona: Persona) -> None:
    persona.log.append([event(f"r{i}@example.com", event_id=f"r{i}") for i in range(5)])
    with Persona.open(persona.settings) as other:
        assert other.rotate_keys()["kek_version"] == 2
        # `persona` still holds the keyring it read at open (version 1 only)
        assert persona.rotate_keys()["kek_version"] == 3
    assert set(Keyring.read(persona.settings.key_file).keks) == {1, 2, 3}
    with Persona.open(persona.settings) as fresh:
        assert verify(fresh).opened == 5
        assert {v for _, v, _ in fresh.recorder.wrapped_keys()} == {3}


def test_a_process_that_opened_before_a_rotation_still_reads_and_writes(persona: Persona) -> None:
    persona.log.append([event(event_id="before")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    with Persona.open(persona.settings) as other:
        other.rotate_keys()
    persona.log.forget_cached_keys()
    assert [e.event_id for e in persona.log.read(pid)] == ["before"]  # re-reads the key file for v2
    persona.log.append([event(event_id="after")])
    assert [e.event_id for e in persona.log.read(pid)] == ["before", "after"]


def test_restore_is_refused_while_the_store_is_open(persona: Persona, tmp_path: Path) -> None:
    info = backup(persona, tmp_path / "b.db")
    with pytest.raises(ConfigurationError, match="in use by another process"):
        restore(persona.settings, info.path)
    persona.close()
    restore(persona.settings, info.path)  # fine once nobody holds it


def test_a_torn_ledger_line_does_not_stop_a_restore(persona: Persona, tmp_path: Path) -> None:
    persona.log.append([event(event_id="1"), event("zed@example.com", event_id="2")])
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", "zed@example.com")
    with persona.settings.ledger_path.open("ab") as f:
        f.write(b'{"profile_id":"prf_x","erased_')  # a crash mid-write
    settings = persona.settings
    persona.close()
    assert len(restore(settings, info.path).reapplied) == 1
    with Persona.open(settings) as p:
        assert p.log.profile_for("email", "zed@example.com") is None
        assert p.log.profile_for("email", "alice@example.com") is not None


def test_a_purge_without_a_profile_survives_a_restore(persona: Persona, tmp_path: Path) -> None:
    bad = b'{"subject": {"namespace": "email", "value": "ghost@example.com"}, "type": "nope"}\n'
    ingest_jsonl(persona, io.BytesIO(bad), origin="f")
    info = backup(persona, tmp_path / "b.db")
    with pytest.raises(UnknownProfileError):
        erase_subject(persona, "email", "ghost@example.com")
    settings = persona.settings
    persona.close()
    restore(settings, info.path)
    with Persona.open(settings) as p:
        assert describe(p) == []


def test_an_erasure_committed_by_another_writer_right_after_ours_is_not_missed(persona: Persona) -> None:
    """The writer cache is validated by what it read under the write lock, not after it."""
    persona.log.append([event(event_id="a1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    other = Persona.open(persona.settings)
    original = persona.recorder.transaction
    fired = []

    @contextmanager
    def then_erase(**kwargs: bool) -> Iterator[None]:
        with original(**kwargs):
            yield
        if not fired:  # right after our COMMIT, before we look at data_version
            fired.append(True)
            erase_profile(other, pid)

    persona.recorder.transaction = then_erase  # type: ignore[method-assign]
    try:
        persona.log.append([event(event_id="a2")])
    finally:
        persona.recorder.transaction = original  # type: ignore[method-assign]
        other.close()
    persona.log.append([event(event_id="a3")])
    fresh = persona.log.profile_for("email", "alice@example.com")
    assert fresh is not None and fresh != pid
    assert [e.event_id for e in persona.log.read(fresh)] == ["a3"]


def test_an_unfinished_erasure_is_reported_and_can_be_finished(persona: Persona) -> None:
    persona.log.append([event(event_id="u1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    # the ledger was written, then the process died before the database committed
    ledger_of(persona).record(LedgerEntry(micros(NOW), profile_id=pid))
    with pytest.raises(UnfinishedErasureError, match=f"persona erase --profile {pid}"):
        verify(persona)
    erase_profile(persona, pid)
    assert verify(persona).erased == 1
    with pytest.raises(ErasedError):
        persona.log.read(pid)


def test_a_new_identifier_linked_to_a_known_one_joins_that_profile(persona: Persona) -> None:
    persona.log.append([event(event_id="k1")])
    alice = persona.log.profile_for("email", "alice@example.com")
    link = record("ck-123", "identity_linked", {"other": {"namespace": "email", "value": "alice@example.com"}},
                  namespace="cookie", event_id="k2")
    ingest_jsonl(persona, io.BytesIO(jsonl(link, record("ck-123", namespace="cookie", event_id="k3"))),
                 origin="f")
    assert persona.log.profile_for("cookie", "ck-123") == alice
    assert alice is not None and [e.event_id for e in persona.log.read(alice)] == ["k1", "k2", "k3"]
    erase_subject(persona, "email", "alice@example.com")
    assert persona.log.profile_for("cookie", "ck-123") is None


def test_broken_lines_are_tagged_by_phone_and_by_namespace_value_pairs(persona: Persona) -> None:
    broken = [
        b'{"subject": {"namespace": "phone", "value": "+86 139 1234 5678"}, "data": ',
        b'{"subject": {"namespace": "device", "value": "dev-42"}, "data": ',
    ]
    ingest_jsonl(persona, io.BytesIO(b"\n".join(broken) + b"\n"), origin="f")
    persona.log.append([event("+8613912345678", namespace="phone", event_id="p"),
                        event("dev-42", namespace="device", event_id="d")])
    assert erase_subject(persona, "phone", "13912345678").receipt["receipt"]["counts"]["quarantined"] == 1
    assert erase_subject(persona, "device", "dev-42").receipt["receipt"]["counts"]["quarantined"] == 1
    assert describe(persona) == []


def test_out_of_range_years_are_quarantined_not_fatal(persona: Persona) -> None:
    data = jsonl(
        record(occurred_at="9999-12-31T23:00:00-05:00", event_id="y1"),
        record("b@example.com", "profile_updated", {"signup_at": "0001-01-01T00:00:00+01:00"}, event_id="y2"),
        record(event_id="ok"),
    )
    report = ingest_jsonl(persona, io.BytesIO(data), origin="f")
    assert (report.appended, report.quarantined) == (1, 2)


def test_quarantine_origin_does_not_keep_an_email_from_a_file_name(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(b"x\n"), origin="export-for-jane.doe@example.com.jsonl")
    origin = describe(persona)[0]["origin"]
    assert "jane.doe" not in origin and "<email>" in origin
