from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from persona import Persona
from persona.crypto import Keyring
from persona.erasure import erase_profile, erase_subject, ledger_of, verify_receipt
from persona.errors import ErasedError, ReceiptError, UnknownProfileError
from persona.ingest import ingest_jsonl
from persona.projector import Projector
from persona.purge import mark_of, run
from persona.verify import verify
from tests.conftest import event, jsonl, record, store_bytes

ALICE = "Alice.Unique@Example.com"
URL = "https://shop.example/only-alice/7f3a9c"


def populate(persona: Persona) -> str:
    """Alice among 300 others, so that keys and links span many database pages."""
    others = [record(f"user{i}@example.com", data={"url": f"https://shop.example/u/{i}"}, event_id=f"o{i}")
              for i in range(300)]
    alice = [
        record(ALICE, data={"url": URL}, event_id="alice-1"),
        record(ALICE, "identity_linked", {"other": {"namespace": "phone", "value": "+8613911112222"}},
               event_id="alice-2"),
        record(ALICE, "order_placed", {"order_id": "A-77", "amount": "12.00", "currency": "CNY"}, event_id="alice-3"),
    ]
    bad = b'{"source": "shop", "subject": {"namespace": "email", "value": "' + ALICE.encode() + b'"}, "oops": '
    ingest_jsonl(persona, io.BytesIO(jsonl(*others[:150], *alice, bad, *others[150:])), origin="f.jsonl")
    pid = persona.log.profile_for("email", ALICE)
    assert pid is not None
    return pid


def test_erasure_leaves_no_trace_in_any_file(persona: Persona) -> None:
    pid = populate(persona)
    wrapped = next(bytes(w) for p, _, w in persona.recorder.wrapped_keys() if p == pid)
    dek = persona.keyring.unwrap(pid, 1, wrapped)
    link = persona.log.hash_identifier("email", ALICE)
    persona.recorder.checkpoint()
    before = store_bytes(persona)
    assert wrapped in before and link in before  # the search below can see what it looks for
    assert URL.encode() not in before and ALICE.lower().encode() not in before  # sealed / hashed from the start

    erasure = erase_subject(persona, "email", ALICE)
    counts = erasure.receipt["receipt"]["counts"]
    # derived_rows: its index row; merges: none were made
    assert counts == {"events": 3, "links": 2, "quarantined": 1, "keys": 1, "derived_rows": 1, "merges": 0}
    # SQLite truncates its WAL at once; PostgreSQL's purge is due later (tests/test_purge.py), and
    # its rewrite (`persona purge --full`) is what leaves no byte behind in any page
    assert erasure.wal_truncated is (True if persona.recorder.purges_at_once else None)
    assert run(persona, force=True, rewrite=True, wait_s=30).done  # (a bound: the test server is shared)

    after = store_bytes(persona)
    for needle in (URL.encode(), ALICE.encode(), ALICE.lower().encode(), b"13911112222", b"A-77",
                   wrapped, dek, link, persona.log.hash_identifier("phone", "+8613911112222")):
        assert needle not in after
    # the others are untouched and the store still verifies
    assert len(persona.log.read(persona.log.profile_for("email", "user7@example.com") or "")) == 1
    report = verify(persona)
    assert report.erased == 1 and report.events == 303


def test_erased_profile_cannot_be_read_or_appended_and_new_events_start_afresh(persona: Persona) -> None:
    persona.log.append([event(event_id="1"), event(event_id="2")])
    old = persona.log.profile_for("email", "alice@example.com")
    assert old is not None
    erase_profile(persona, old)
    with pytest.raises(ErasedError):
        persona.log.read(old)
    with pytest.raises(ErasedError):
        persona.log.info(old)
    with pytest.raises(ErasedError):
        erase_profile(persona, old)
    assert persona.log.profile_for("email", "alice@example.com") is None
    persona.log.append([event(event_id="3")])
    new = persona.log.profile_for("email", "alice@example.com")
    assert new is not None and new != old
    assert [e.event_id for e in persona.log.read(new)] == ["3"]
    assert persona.recorder.tombstone(old) is not None


def test_reingesting_an_erased_persons_old_events_does_not_resurrect_them(persona: Persona) -> None:
    data = jsonl(record(event_id="r1"), record(event_id="r2"))
    ingest_jsonl(persona, io.BytesIO(data), origin="f")
    erase_subject(persona, "email", "alice@example.com")
    report = ingest_jsonl(persona, io.BytesIO(data), origin="f")
    assert (report.appended, report.duplicates) == (0, 2)
    assert persona.log.profile_for("email", "alice@example.com") is None


def test_receipt_verifies_offline_and_detects_forgery(persona: Persona) -> None:
    persona.log.append([event(event_id="1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    receipt = erase_profile(persona, pid).receipt
    public = persona.keyring.public_key
    doc = orjson.loads(orjson.dumps(receipt))  # as read back from a file
    body = verify_receipt(doc, public)
    assert body["profile_id"] == pid and body["counts"]["keys"] == 1
    assert len(body["key_fingerprint"]) == 16
    forged = orjson.loads(orjson.dumps(receipt))
    forged["receipt"]["counts"]["events"] = 0
    with pytest.raises(ReceiptError, match="altered or forged"):
        verify_receipt(forged, public)
    with pytest.raises(ReceiptError, match="different key"):
        verify_receipt(doc, Keyring.generate().public_key)
    with pytest.raises(ReceiptError):
        verify_receipt({"hello": 1}, public)


def test_erasing_an_unknown_subject_purges_its_quarantined_records(persona: Persona) -> None:
    bad = b'{"subject": {"namespace": "email", "value": "ghost@example.com"}, "type": "nope"}'
    ingest_jsonl(persona, io.BytesIO(bad + b"\n"), origin="f")
    assert persona.recorder.counts()["quarantine"] == 1
    with pytest.raises(UnknownProfileError, match="1 quarantined"):
        erase_subject(persona, "email", "ghost@example.com")
    assert persona.recorder.counts()["quarantine"] == 0


def test_ledger_holds_ids_and_times_only(persona: Persona) -> None:
    persona.log.append([event(event_id="1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    erase_profile(persona, pid)
    assert [e.profile_id for e in ledger_of(persona).entries()] == [pid]
    text = persona.settings.ledger_path.read_text()
    assert "alice" not in text
    assert set(orjson.loads(text.splitlines()[0])) == {"seq", "profile_id", "erased_at", "prev", "mac"}
    assert persona.settings.ledger_path.parent == persona.settings.key_file.parent


@pytest.mark.sqlite_only  # counts statements through SQLite's trace hook
def test_erasure_cost_does_not_depend_on_history(persona: Persona) -> None:
    """Not a timing test: erasure must not touch the events, only the key, links and derived rows."""
    persona.log.append([event(event_id=f"h{i}") for i in range(2000)])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    statements: list[str] = []
    persona.recorder.conn.set_trace_callback(statements.append)
    erase_profile(persona, pid)
    persona.recorder.conn.set_trace_callback(None)
    assert statements and not any("FROM events" in s or "events" in s.split() for s in statements)


def test_restore_does_not_resurrect_the_erased(persona: Persona, tmp_path: Path) -> None:
    from persona.backup import backup, restore

    persona.log.append([event(event_id="1", data={"url": URL}), event("bob@example.com", event_id="2")])
    alice = persona.log.profile_for("email", "alice@example.com")
    bob = persona.log.profile_for("email", "bob@example.com")
    assert alice and bob
    (tmp_path / "backups").mkdir()
    info = backup(persona, tmp_path / "backups")
    assert info.path.parent == tmp_path / "backups" and info.events == 2
    assert persona.settings.key_file.read_bytes() not in info.path.read_bytes()
    erase_profile(persona, alice)
    settings = persona.settings
    persona.close()

    restored = restore(settings, info.path)
    assert restored.reapplied == [alice]
    with Persona.open(settings) as p:
        assert p.log.profile_for("email", "alice@example.com") is None
        with pytest.raises(ErasedError):
            p.log.read(alice)
        assert len(p.log.read(bob)) == 1
        assert verify(p).erased == 1
        assert URL.encode() not in store_bytes(p)


def test_restore_refuses_a_backup_of_another_store(persona: Persona, tmp_path: Path) -> None:
    from persona.backup import backup, restore
    from persona.errors import KeyMismatchError
    from persona.settings import Settings

    info = backup(persona, tmp_path / "b.db")
    other = Settings.load(tmp_path / "other", env={})
    Persona.init(other).close()
    with pytest.raises(KeyMismatchError):
        restore(other, info.path)


@pytest.mark.sqlite_only  # SQLite's WAL and its checkpoint
def test_a_reader_holding_the_wal_is_reported_not_ignored(persona: Persona) -> None:
    import sqlite3

    persona.log.append([event(event_id="1"), event("bob@example.com", event_id="2")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    reader = sqlite3.connect(persona.settings.db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM keys").fetchone()  # holds a snapshot from before the erasure
        erasure = erase_profile(persona, pid, checkpoint_wait_s=0.3)
        assert erasure.wal_truncated is False
        body = erasure.receipt["receipt"]
        assert body["wal_truncated"] is False and "purged_at" not in body  # the receipt says so, too
        assert erasure.purge_due_by == mark_of(persona.recorder).pending  # and the purge stays due
        assert not run(persona, wait_s=0.1).done
    finally:
        reader.close()
    assert run(persona).done and mark_of(persona.recorder).pending is None  # `persona purge` (or the server) retries
    assert persona.recorder.checkpoint()  # once the reader is gone the WAL truncates
    assert Path(f"{persona.settings.db_path}-wal").stat().st_size == 0


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
