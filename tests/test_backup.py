"""Backups and restores, as someone holding a backup file but no key sees them, and as an
attacker with write access to the ledger or the backup would try them. Both backends."""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona, Settings, memberships
from persona.backup import backup, restore
from persona.cli import cli
from persona.crypto import Keyring
from persona.erasure import erase_subject
from persona.errors import ConfigurationError, ErasedError, KeyMismatchError, TamperError
from persona.events import micros
from persona.ingest import ingest_jsonl
from persona.profiles import profile_view
from persona.rfm import compute_rfm
from persona.verify import verify
from tests.conftest import NOW, jsonl, record, store_bytes

CAROL = "carol.quxley@example.com"
CITY = "Quxville-on-Nord"
CATEGORY = "zither-strings"
# What the read models show of Carol, as the live store keeps them (canonical JSON)
NEEDLES = (CITY.encode(), CATEGORY.encode(), b'"birth_year":1937', b'"gender":"other"', b"4817.23")
READ_MODELS = ("profile_index", "rfm", "predictions", "snapshots", "segment_members", "segment_changes",
               "deliveries")


def populate(persona: Persona) -> str:
    """Carol among a few other buyers, with attribute and feature values found nowhere else."""
    others = [record(f"p{i}@example.com", "order_placed", {"order_id": f"o{i}", "amount": f"{10 + i}.00",
                                                           "currency": "CNY"}, event_id=f"p{i}") for i in range(6)]
    carol = [
        record(CAROL, "profile_updated", {"city": CITY, "birth_year": 1937, "gender": "other"}, source="crm",
               event_id="c1"),
        record(CAROL, "order_placed", {"order_id": "Q-1", "amount": "4817.23", "currency": "CNY",
                                       "items": [{"sku": "zs-1", "category": CATEGORY}]}, event_id="c2"),
        record(CAROL, "product_viewed", {"sku": "zs-1", "category": CATEGORY}, event_id="c3"),
    ]
    ingest_jsonl(persona, io.BytesIO(jsonl(*others, *carol)), origin="f.jsonl")
    assert compute_rfm(persona) == 7  # RFM scores: made by `persona rebuild` and `persona ingest`
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")  # who is in it: a read model too
    pid = persona.log.profile_for("email", CAROL)
    assert pid is not None
    return pid


def rows_in(db: Path, table: str) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # constant names


def test_a_backup_shows_no_personal_value_without_a_key_and_restore_rebuilds_the_read_models(
        persona: Persona, tmp_path: Path) -> None:
    carol = populate(persona)
    live = store_bytes(persona)
    for needle in NEEDLES:
        assert needle in live, needle  # the search below can see what it looks for
    index, rfm = persona.recorder.index_rows(), persona.recorder.rfm_scores()
    view = profile_view(persona, carol, now=NOW)
    assert index and rfm

    info = backup(persona, tmp_path / "b.db")
    raw = info.path.read_bytes()
    assert info.events == 9 and raw.startswith(b"SQLite format 3")
    for needle in (*NEEDLES, CAROL.encode()):
        assert needle not in raw, needle
    assert [rows_in(info.path, t) for t in READ_MODELS] == [0] * len(READ_MODELS)
    assert not Path(f"{info.path}-wal").exists() and info.path.stat().st_mode & 0o777 == 0o600

    settings = persona.settings
    persona.close()
    restored = restore(settings, info.path)
    assert restored.rebuilt == 7 and restored.reapplied == []
    with Persona.open(settings) as p:
        assert p.recorder.index_rows() == index  # rebuilt byte for byte
        assert p.recorder.rfm_scores() == rfm
        assert profile_view(p, carol, now=NOW) == view
        assert verify(p).events == 9


def test_a_backup_from_before_an_erasure_holds_nothing_of_the_person_in_clear(persona: Persona,
                                                                              tmp_path: Path) -> None:
    populate(persona)
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", CAROL)
    raw = info.path.read_bytes()
    for needle in NEEDLES:
        assert needle not in raw, needle
    settings = persona.settings
    persona.close()
    assert len(restore(settings, info.path).reapplied) == 1
    with Persona.open(settings) as p:
        assert p.log.profile_for("email", CAROL) is None
        after = store_bytes(p)
        for needle in NEEDLES:
            assert needle not in after, needle


def flip_in_line(ledger: Path, line: int, field: bytes) -> None:
    """Change one character of a value on one line of the ledger, keeping it valid JSON."""
    lines = ledger.read_bytes().split(b"\n")
    at = lines[line].index(field) + len(field) + 2  # past '":"' to the value's second character
    assert 0 < at < len(lines[line])
    changed = bytearray(lines[line])
    changed[at] = ord("0") if changed[at] != ord("0") else ord("1")
    lines[line] = bytes(changed)
    ledger.write_bytes(b"\n".join(lines))


def test_a_tampered_ledger_line_is_refused_and_nobody_comes_back(persona: Persona, tmp_path: Path) -> None:
    populate(persona)
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", CAROL)
    erase_subject(persona, "email", "p1@example.com")
    settings = persona.settings
    persona.close()
    good = settings.ledger_path.read_bytes()
    for line, field in ((0, b"profile_id"), (1, b"profile_id"), (0, b"erased_at")):
        settings.ledger_path.write_bytes(good)
        flip_in_line(settings.ledger_path, line, field)
        verified = CliRunner().invoke(cli, ["--data", str(settings.data_dir), "verify"])
        assert verified.exit_code == 2 and "erasure ledger line" in verified.output, verified.output
        with pytest.raises(TamperError, match=f"erasure ledger line {line + 1}"):
            restore(settings, info.path)
        with Persona.open(settings) as p:  # the refused restore changed nothing
            assert p.log.profile_for("email", CAROL) is None
            assert p.log.profile_for("email", "p1@example.com") is None


def test_restore_keeps_the_current_stores_erasures_even_without_a_ledger(persona: Persona, tmp_path: Path) -> None:
    carol = populate(persona)
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", CAROL)
    erased_at = persona.recorder.tombstone(carol)
    settings = persona.settings
    persona.close()
    settings.ledger_path.unlink()  # lost, or deleted by someone who wants Carol back
    assert restore(settings, info.path).reapplied == [carol]
    with Persona.open(settings) as p:
        assert p.log.profile_for("email", CAROL) is None and p.recorder.tombstone(carol) == erased_at
        with pytest.raises(ErasedError):
            p.log.read(carol)
        assert verify(p).erased == 1


def tamper_backup(path: Path, statement: str, *args: object) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        trigger = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'chunks_are_append_only_update'").fetchone()
        conn.execute("DROP TRIGGER IF EXISTS chunks_are_append_only_update")
        conn.execute(statement, args)
        if trigger is not None:  # put back as it was (verify compares the schema with persona's)
            conn.execute(trigger[0])


def test_a_backup_altered_since_it_was_taken_is_refused(persona: Persona, tmp_path: Path) -> None:
    carol = populate(persona)
    info = backup(persona, tmp_path / "b.db")
    settings = persona.settings
    persona.close()
    with closing(sqlite3.connect(info.path)) as conn:
        position, payload = conn.execute("SELECT position, payload FROM chunks ORDER BY position DESC").fetchone()
    flipped = bytearray(payload)
    flipped[20] ^= 0x01
    tamper_backup(info.path, "UPDATE chunks SET payload = ? WHERE position = ?", bytes(flipped), position)
    with pytest.raises(TamperError, match=f"positions? {position}"):
        restore(settings, info.path)
    with Persona.open(settings) as p:  # nothing was changed
        assert verify(p).events == 9 and profile_view(p, carol)["attributes"]["city"]["value"] == CITY


def test_read_models_smuggled_into_a_backup_are_rebuilt_not_restored(persona: Persona, tmp_path: Path) -> None:
    carol = populate(persona)
    index = persona.recorder.index_rows()
    info = backup(persona, tmp_path / "b.db")
    settings = persona.settings
    persona.close()
    tamper_backup(info.path, "INSERT OR REPLACE INTO profile_index (profile_id, version, doc) VALUES (?, 99, ?)", carol,
                  '{"attributes":{"city":"Forged"}}')
    tamper_backup(info.path, "INSERT INTO segment_members (segment, profile_id, since) VALUES ('buyers', ?, 1)", carol)
    tamper_backup(info.path, "INSERT INTO segment_changes (at, segment, profile_id, entered) VALUES"
                             " (1, 'buyers', ?, 1)", carol)
    began = micros(datetime.now(UTC))
    restore(settings, info.path)
    with Persona.open(settings) as p:
        assert p.recorder.index_rows() == index
        members = p.recorder.memberships()  # made anew by the restore: every buyer, since it ran
        assert len(members) == 7 and all(since >= began for *_, since in members)
        assert all(at >= began for _, at, *_ in p.recorder.segment_changes(0, 1000))


def test_retiring_the_master_key_makes_every_older_backup_unreadable(persona: Persona, tmp_path: Path) -> None:
    """The documented way (`persona keys rotate --retire`): nothing in a backup taken before opens
    with the key file after it; restoring it is refused."""
    carol = populate(persona)
    old = backup(persona, tmp_path / "old.db")
    with closing(sqlite3.connect(f"file:{old.path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT profile_id, kek_version, wrapped FROM keys")
        wrapped = [(pid, version, bytes(w)) for pid, version, w in rows]
    assert any(pid == carol for pid, _, _ in wrapped)
    for pid, version, w in wrapped:
        persona.keyring.unwrap(pid, version, w)  # the risk is real: before, every key in it opens
    erase_subject(persona, "email", CAROL)
    settings = persona.settings
    persona.close()

    result = CliRunner().invoke(cli, ["--data", str(settings.data_dir), "keys", "rotate", "--retire"])
    assert result.exit_code == 0 and "retired 1 older version" in result.output, result.output
    ring = Keyring.read(settings.key_file)
    for pid, version, w in wrapped:
        for v in {version, *ring.keks}:
            with pytest.raises((TamperError, ConfigurationError)):
                ring.unwrap(pid, v, w)
    with pytest.raises(KeyMismatchError, match="lacks master key version"):
        restore(settings, old.path)
    with Persona.open(settings) as p:
        assert verify(p).erased == 1



@pytest.mark.sqlite_only  # the database file itself
def test_a_current_database_that_cannot_be_read_is_not_silently_passed_over(persona: Persona, tmp_path: Path) -> None:
    populate(persona)
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", CAROL)
    settings = persona.settings
    persona.close()
    settings.db_path.write_bytes(b"not a database" * 1000)  # its tombstones can no longer be read
    with pytest.raises(ConfigurationError, match="move it out of the data directory"):
        restore(settings, info.path)
    settings.db_path.rename(tmp_path / "damaged.db")
    restore(settings, info.path)  # the ledger alone still erases Carol
    with Persona.open(settings) as p:
        assert p.log.profile_for("email", CAROL) is None and verify(p).erased == 1


def test_restore_keeps_revocations_spent_budgets_and_the_audit_log_of_the_store_it_replaces(
        persona: Persona, tmp_path: Path) -> None:
    """An older backup holds the access control of its time: tokens since revoked, budgets since
    spent, an audit log since grown. A restore must not roll them back."""
    from persona.audit import record_local
    from persona.tokens import create_token, revoke_token, token_digest

    carol = populate(persona)
    leaked = create_token(persona, "leaked", frozenset({"profiles:read"}))
    analyst = create_token(persona, "analyst", frozenset({"insights:read"}), epsilon_budget=1.0, delta_budget=1e-9)
    record_local(persona, "profile", "profile", [carol], fields="attributes")
    info = backup(persona, tmp_path / "b.db")
    before = persona.recorder.audit_rows(limit=100_000)

    revoke_token(persona, "leaked")
    with persona.recorder.transaction():
        assert persona.recorder.spend_privacy("analyst", 0.75, 1e-12) is not None  # most of the budget, spent
    later = create_token(persona, "later", frozenset({"profiles:read"}))
    record_local(persona, "history", "history", [carol])  # accesses after the backup: the record must stay
    record_local(persona, "stats", "stats", groupBy=["country"])
    tokens_then = {t.name: t for t in persona.recorder.tokens()}
    audit_then = persona.recorder.audit_rows(limit=100_000)
    assert len(audit_then) > len(before)
    settings = persona.settings
    persona.close()

    restore(settings, info.path)
    with Persona.open(settings) as p:
        tokens_now = {t.name: t for t in p.recorder.tokens()}
        assert tokens_now == tokens_then  # every row as the replaced store had it
        assert p.recorder.token_by_digest(token_digest(p, leaked)) is None  # still revoked
        assert p.recorder.token_by_digest(token_digest(p, later)) is not None  # made after the backup, kept
        assert p.recorder.token_by_digest(token_digest(p, analyst)) is not None
        with p.recorder.transaction():  # what was spent stays spent: 0.75 + 0.5 > 1
            assert p.recorder.spend_privacy("analyst", 0.5, 1e-12) is None
        audit_now = p.recorder.audit_rows(limit=100_000)
        assert audit_now[:len(audit_then)] == audit_then  # every entry kept, numbered and ordered as it was
        assert [r[3] for r in audit_now[len(audit_then):]] == ["restore"]  # then the restore's own
        assert audit_now[-1][2] == "local:restore" and audit_now[-1][6] == "ok"
        assert [row[0] for row in audit_now] == sorted({row[0] for row in audit_now})


def test_restore_keeps_the_audit_entries_of_both_stores_when_their_histories_differ(
        persona: Persona, tmp_path: Path) -> None:
    """A backup of another line of history (an older restore, a copy) has entries the current
    store lacks, under the same numbers: restored, the audit is the backup's entries, then every
    current entry not among them, in their order."""
    from persona.audit import record_local

    populate(persona)
    record_local(persona, "stats", "stats", groupBy=["country"])
    info = backup(persona, tmp_path / "b.db")
    ours = persona.recorder.audit_rows(limit=100_000)
    with closing(sqlite3.connect(info.path)) as conn:  # the backup's line: one entry this store never had
        entry = (1, "local:profile", "profile", "", "", "ok", "{}")  # tagged as its writer would have
        assert persona.recorder.tagger is not None
        conn.execute("INSERT INTO audit (at, token, operation, profile_id, fields, outcome, detail, tag)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*entry, persona.recorder.tagger("audit", entry)))
        conn.commit()
        theirs = conn.execute("SELECT seq, at, token, operation, profile_id, fields, outcome, detail FROM audit"
                              " ORDER BY seq").fetchall()
    record_local(persona, "profiles", "profiles", filter={"segments": 1})
    current = persona.recorder.audit_rows(limit=100_000)
    settings = persona.settings
    persona.close()
    restore(settings, info.path)
    with Persona.open(settings) as p:
        audit_now = p.recorder.audit_rows(limit=100_000)
    assert audit_now[:len(theirs)] == theirs
    added = [row[1:] for row in audit_now[len(theirs):]]
    assert added[:-1] == [row[1:] for row in current[len(ours):]] and added[-1][2] == "restore"
    assert [row[0] for row in audit_now] == sorted({row[0] for row in audit_now})


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A few planted people (their events, to ingest) and a model trained on them once: with so
    few training rows, its features' medians and decile edges are individual people's values."""
    from persona.models.tasks import parse_task
    from persona.models.train import train
    from persona.testing import planted

    root = tmp_path_factory.mktemp("planted")
    planted.write(root / "planted.jsonl", 100, seed=5)
    with Persona.init(Settings.load(root / "data", env={})) as p:
        ingest_jsonl(p, (root / "planted.jsonl").read_bytes().splitlines(), origin="planted")
        return root / "planted.jsonl", train(p, parse_task("churn_91d"))


def test_a_backup_shows_nothing_a_model_learned_of_people_without_a_key_and_restore_reopens_it(
        persona: Persona, tmp_path: Path, planted_model: tuple[Path, Any]) -> None:
    from persona.models import drift, registry, scoring

    events, trained = planted_model
    ingest_jsonl(persona, events.read_bytes().splitlines(), origin="planted")
    saved = registry.save(persona, trained, promote=True)
    drift.measure(persona, saved)
    assert scoring.score_all(persona, "churn_91d") == 100
    before = [v.summary() | {"meta": v.meta} for v in registry.versions(persona)]
    # what the version's meta and drift tell of the people it was trained on
    needles = [b"affinity_" + c.encode() for c in trained.categories]
    for ref in trained.reference.values():
        if ref["edges"]:
            needles += [orjson.dumps(ref["edges"]), orjson.dumps({"median": ref["median"]})[1:-1]]
    assert trained.categories and len(needles) > 10
    stored = b"".join(str(row[i]).encode() for row in persona.recorder.model_rows() for i in (6, 7))  # drift, meta
    for needle in needles:
        assert needle in stored, needle  # the search below can see what it looks for (PostgreSQL compresses them)

    info = backup(persona, tmp_path / "b.db")
    raw = info.path.read_bytes()
    for needle in needles:
        assert needle not in raw, needle
    with closing(sqlite3.connect(f"file:{info.path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT meta, drift FROM models").fetchall()
    assert len(rows) == 1 and all(str(v).startswith("sealed:") for row in rows for v in row)

    settings = persona.settings
    persona.close()
    restore(settings, info.path)
    with Persona.open(settings) as p:
        assert [v.summary() | {"meta": v.meta} for v in registry.versions(p)] == before
        assert registry.load(p, "churn_91d").version.version == saved.version
        people = list(p.recorder.stream_ids())
        assert sorted(pid for pid, model, *_ in p.recorder.predictions_of(people) if model == "churn_91d") == sorted(
            people)
        assert scoring.score_all(p, "churn_91d") == 100


def test_a_backup_anywhere_inside_the_data_directory_is_refused(persona: Persona, tmp_path: Path) -> None:
    """A backup in the data directory holds the wrapped keys of people erased after it, where no
    erasure reaches: refused in the directory itself, in any folder below it, and through a link."""
    populate(persona)
    data = persona.settings.data_dir
    (data / "receipts").mkdir()
    (tmp_path / "outside").symlink_to(data / "receipts", target_is_directory=True)
    (tmp_path / "link.db").symlink_to(data / "receipts" / "linked.db")
    for dest in (data / "b.db", data / "receipts" / "b.db", data / "receipts", data / "new" / "b.db",
                 tmp_path / "outside" / "b.db", tmp_path / "outside", tmp_path / "link.db"):
        with pytest.raises(ConfigurationError, match="outside the data directory"):
            backup(persona, dest)
    assert sorted(p.name for p in (data / "receipts").iterdir()) == [] and not (data / "new").exists()
    result = CliRunner().invoke(cli, ["--data", str(data), "backup", str(data / "receipts" / "c.db")])
    assert result.exit_code != 0 and "outside the data directory" in result.output, result.output
    assert backup(persona, tmp_path / "fine" / "b.db").path.is_file()


def test_a_restore_folder_left_by_a_killed_restore_does_not_outlive_it(persona: Persona, tmp_path: Path) -> None:
    """A restore killed after rebuilding the read models leaves DATA/.restoring: a whole store with
    people's values in clear that no later erasure would touch. The next open removes it (no restore
    is running: one holds the directory's lock while it lives); a running restore's is left alone."""
    import subprocess
    import sys

    populate(persona)
    info = backup(persona, tmp_path / "b.db")
    settings = persona.settings
    persona.close()
    staging = settings.data_dir / ".restoring"
    # a restore killed mid-way: the lock it held dies with it, its folder stays
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, shutil, signal, sys\n"
        "from pathlib import Path\n"
        "from persona.core import DirectoryLock\n"
        "from persona.settings import Settings\n"
        "settings = Settings.load(Path(sys.argv[1]), env={})\n"
        "lock = DirectoryLock(settings, exclusive=True)\n"
        "folder = settings.data_dir / '.restoring'\n"
        "folder.mkdir(mode=0o700)\n"
        "shutil.copyfile(sys.argv[2], folder / 'persona.db')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(settings.data_dir), str(info.path)])
    assert child.wait(timeout=60) == -9
    assert (staging / "persona.db").is_file()
    with Persona.open(settings) as p:
        assert not staging.exists()
        assert verify(p).events == 9

    staging.mkdir()  # left the same way, then the next restore finds it
    (staging / "persona.db").write_bytes(b"left behind")
    restore(settings, info.path)
    assert not staging.exists()

    from persona.core import DirectoryLock  # a restore that is running keeps its folder

    running = DirectoryLock(settings, exclusive=True)
    try:
        staging.mkdir()
        with pytest.raises(ConfigurationError, match="being restored"):
            Persona.open(settings)
        assert staging.is_dir()
    finally:
        running.release()
    CliRunner().invoke(cli, ["--data", str(settings.data_dir), "verify"])
    assert not staging.exists()
