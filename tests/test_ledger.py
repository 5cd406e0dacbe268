"""The erasure ledger as an attacker with write access to it would try it: every byte flipped,
lines removed, moved or copied from another ledger; a crash mid-write; an older, unsigned
ledger refused until an operator adopts it, then adopted once, losing nothing."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona
from persona.backup import backup, restore
from persona.cli import cli
from persona.crypto import Keyring
from persona.erasure import erase_subject, ledger_of
from persona.errors import LedgerError
from persona.events import micros
from persona.ingest import ingest_jsonl
from persona.ledger import ErasureLedger, LedgerEntry
from persona.verify import verify
from tests.conftest import NOW, event, jsonl, record
from tests.hardening import tally

KEY = bytes(range(32))
AT = micros(NOW)
ENTRIES = [LedgerEntry(AT, profile_id="prf_aaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
           LedgerEntry(AT + 1, purged=bytes(range(32))),
           LedgerEntry(AT + 2, profile_id="prf_cccccccccccccccccccccccccccc")]


def written(path: Path, key: bytes = KEY, entries: list[LedgerEntry] = ENTRIES) -> ErasureLedger:
    ledger = ErasureLedger(path, key)
    for entry in entries:
        ledger.record(entry)
    return ledger


def test_entries_come_back_as_written_signed_and_chained(tmp_path: Path) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    assert ledger.read().entries == ENTRIES and not ledger.read().torn
    docs = [orjson.loads(line) for line in ledger.path.read_bytes().splitlines()]
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert [d["prev"] for d in docs[1:]] == [d["mac"] for d in docs[:-1]]  # each line names the one before
    assert set(docs[0]) == {"seq", "erased_at", "profile_id", "prev", "mac"}
    assert ledger.path.stat().st_mode & 0o777 == 0o600


def test_every_single_byte_changed_anywhere_in_the_ledger_is_refused(tmp_path: Path) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    good = ledger.path.read_bytes()
    tried = 0
    for at in range(len(good)):
        for mask in (0x01, 0x20, 0x80):
            changed = bytearray(good)
            changed[at] ^= mask
            ledger.path.write_bytes(bytes(changed))
            with pytest.raises(LedgerError, match="erasure ledger"):
                ledger.read()
            tried += 1
    tally("erasure ledger bytes flipped", tried)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize(("attack", "why"), [
    (lambda lines: [lines[0], lines[2]], "line 2 holds entry 3"),  # a line removed from the middle
    (lambda lines: [lines[0], lines[2], lines[1]], "line 2 holds entry 3"),  # two lines swapped
    (lambda lines: [lines[1], lines[2]], "line 1 holds entry 2"),  # the first line removed
    (lambda lines: [lines[0], lines[1], lines[1], lines[2]], "line 3 holds entry 2"),  # a line repeated
    (lambda lines: [*lines, b"\n"], "line 4 cannot be read"),  # an empty line added
    (lambda lines: [*lines, b'{"erased_at":"2026-06-01T12:00:00+00:00","profile_id":"prf_x"}\n'],
     "line 4 is not signed"),  # an unsigned line added
])
def test_lines_removed_moved_or_added_are_refused(tmp_path: Path, attack: Callable[[list[bytes]], list[bytes]],
                                                  why: str) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    ledger.path.write_bytes(b"".join(attack(lines_of(ledger.path))))
    with pytest.raises(LedgerError, match=why):
        ledger.read()


def test_a_line_from_another_ledger_is_refused(tmp_path: Path) -> None:
    ours = written(tmp_path / "erasures.jsonl")
    good = ours.path.read_bytes()
    # another store's ledger (another key file), and another machine's sharing our key file
    for key in (bytes(32), KEY):
        theirs = lines_of(written(tmp_path / f"theirs-{key[1]}.jsonl", key,
                                  [LedgerEntry(AT, profile_id="prf_" + "t" * 28)] * 4).path)
        for n, line in enumerate(theirs):  # each in its own place (the same entry number), or added
            lines = good.splitlines(keepends=True)
            lines[n:n + 1] = [line]
            ours.path.write_bytes(b"".join(lines))
            # (another machine's first line is a genuine first line: our second no longer follows it)
            bad = 2 if key == KEY and n == 0 else n + 1
            with pytest.raises(LedgerError, match=f"line {bad} (was altered, or signed with another key file|does"
                                                  " not follow the line before it)"):
                ours.read()


def test_a_torn_last_line_is_passed_over_said_so_and_cut_by_the_next_write(tmp_path: Path) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    good = ledger.path.read_bytes()
    last = lines_of(ledger.path)[-1]
    for cut in (2, 10, len(last) // 2, len(last) - 1):  # a crash mid-write leaves the start of a line
        ledger.path.write_bytes(good[: len(good) - cut])
        read = ledger.read()
        assert read.entries == ENTRIES[:2] and read.torn
    ledger.record(ENTRIES[2])  # the fragment goes; the entry is chained after line 2
    read = ledger.read()
    assert read.entries == ENTRIES and not read.torn
    assert ledger.path.read_bytes() == good  # deterministic: exactly the lines a clean run writes


def test_a_last_line_that_lost_only_its_line_break_counts(tmp_path: Path) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    good = ledger.path.read_bytes()
    ledger.path.write_bytes(good[:-1])
    assert ledger.read().entries == ENTRIES
    ledger.record(LedgerEntry(AT + 3, profile_id="prf_d"))
    assert len(ledger.read().entries) == 4 and ledger.path.read_bytes().startswith(good)


def test_an_altered_last_line_is_not_taken_for_a_torn_one(tmp_path: Path) -> None:
    ledger = written(tmp_path / "erasures.jsonl")
    good = ledger.path.read_bytes()
    # whole lines, altered (what a crash cannot leave: the closing brace, or bytes never written)
    for tail in (good[:-1] + b" ", good[:-1] + b"}", good[:-1] + b"\x00", good[:-2] + b"\x00"):
        ledger.path.write_bytes(tail)
        with pytest.raises(LedgerError, match="line 3"):
            ledger.read()
        with pytest.raises(LedgerError, match="nothing was erased"):
            ledger.record(ENTRIES[0])
        assert ledger.path.read_bytes() == tail  # the evidence is kept


def test_writers_in_parallel_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "erasures.jsonl"

    def write(n: int) -> None:
        ledger = ErasureLedger(path, KEY)
        for i in range(25):
            ledger.record(LedgerEntry(AT + i, profile_id=f"prf_{n}_{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({e.profile_id for e in ErasureLedger(path, KEY).read().entries}) == 200


UNSIGNED = (b'{"erased_at":"2026-06-01T12:00:00+00:00","profile_id":"prf_old1"}\n'
            b'{"erased_at":"2026-06-01T12:00:01+00:00","purged":"' + bytes(range(32)).hex().encode() + b'"}\n'
            # an older persona appended after a crash mid-write, without a line break in between
            b'{"erased_at":"2026-06-0{"erased_at":"2026-06-01T12:00:02+00:00","profile_id":"prf_old2"}\n'
            b'{"erased_at":"2026-06-01T12:00:03+00:00","profile_id":"prf_old3"}\n'
            b'{"profile_id":"prf_torn","erased_')  # and a crash mid-write at the end


def test_an_unsigned_ledger_is_adopted_once_in_order_losing_nothing(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "erasures.jsonl"
    path.write_bytes(UNSIGNED)
    ledger = ErasureLedger(path, KEY)
    with caplog.at_level(logging.WARNING, logger="persona.ledger"):
        read = ledger.adopt()
    assert read.adopted == 4 and "signed 4 entries" in caplog.text and "torn last line" in caplog.text
    assert ledger.read().entries == read.entries
    assert [(e.profile_id, e.purged) for e in read.entries] == [
        ("prf_old1", None), (None, bytes(range(32))), ("prf_old2", None), ("prf_old3", None)]
    assert [e.erased_at - AT for e in read.entries] == [0, 1_000_000, 2_000_000, 3_000_000]
    kept = list(tmp_path.glob("erasures.jsonl.*.unsigned"))
    assert len(kept) == 1 and kept[0].read_bytes() == UNSIGNED  # the old file, as it was
    assert ledger.adopt().adopted == 0 and ledger.read().entries == read.entries  # once only
    ledger.record(ENTRIES[0])
    assert ledger.read().entries == [*read.entries, ENTRIES[0]]
    path.write_bytes(path.read_bytes() + UNSIGNED.splitlines(keepends=True)[0])
    with pytest.raises(LedgerError, match="line 6 is not signed"):  # never adopted again
        ledger.read()


def test_an_unsigned_ledger_with_an_unreadable_line_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "erasures.jsonl"
    broken = UNSIGNED.replace(b'"prf_old3"}', b'"prf_old3"]')
    path.write_bytes(broken)
    with pytest.raises(LedgerError, match="not signed"):
        ErasureLedger(path, KEY).read()
    with pytest.raises(LedgerError, match="not signed"):
        ErasureLedger(path, KEY).record(ENTRIES[0])
    with pytest.raises(LedgerError, match="line 4 cannot be read"):
        ErasureLedger(path, KEY).adopt()
    assert path.read_bytes() == broken and not list(tmp_path.glob("*.unsigned"))


def test_a_store_whose_ledger_an_older_persona_wrote_keeps_its_erasures(persona: Persona, tmp_path: Path) -> None:
    persona.log.append([event(event_id="1"), event("zed@example.com", event_id="2")])
    zed = persona.log.profile_for("email", "zed@example.com")
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", "zed@example.com")
    ledger = persona.settings.ledger_path
    ledger.write_bytes(orjson.dumps({"erased_at": NOW.isoformat(), "profile_id": zed}) + b"\n")  # the old format
    with pytest.raises(LedgerError, match="persona ledger adopt"):
        verify(persona)  # never adopted on sight
    assert ledger_of(persona).adopt().adopted == 1
    assert verify(persona).ledger_entries == 1
    assert "mac" in orjson.loads(ledger.read_bytes())
    settings = persona.settings
    persona.close()
    assert restore(settings, info.path).reapplied == [zed]


def test_verify_and_restore_refuse_a_damaged_ledger_and_say_a_torn_line(persona: Persona, tmp_path: Path) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(*(record(f"u{i}@example.com", event_id=f"u{i}") for i in range(3)))),
                 origin="f")
    info = backup(persona, tmp_path / "b.db")
    for i in range(3):
        erase_subject(persona, "email", f"u{i}@example.com")
    settings = persona.settings
    persona.close()
    good = settings.ledger_path.read_bytes()
    lines = good.splitlines(keepends=True)
    data = ["--data", str(settings.data_dir)]
    for damaged in (lines[0] + lines[2], lines[1] + lines[0] + lines[2], good.replace(b'"seq":2', b'"seq":3')):
        settings.ledger_path.write_bytes(damaged)
        result = CliRunner().invoke(cli, [*data, "verify"])
        assert result.exit_code == 2 and "TAMPERED: erasure ledger line" in result.output, result.output
        result = CliRunner().invoke(cli, [*data, "restore", str(info.path), "--yes"])
        assert result.exit_code == 2 and "TAMPERED: erasure ledger line" in result.output, result.output
    settings.ledger_path.write_bytes(good + lines[0][:40])  # a crash mid-write of a fourth erasure
    result = CliRunner().invoke(cli, [*data, "verify"])
    assert result.exit_code == 0 and "3 erasure ledger entries verified" in result.output
    assert "last line was cut short by a crash" in result.output
    result = CliRunner().invoke(cli, [*data, "restore", str(info.path), "--yes"])
    assert result.exit_code == 0 and "re-applied 3 later erasure(s)" in result.output
    assert "last line was cut short by a crash" in result.output
    with Persona.open(settings) as p:
        assert verify(p).erased == 3 and all(p.log.profile_for("email", f"u{i}@example.com") is None
                                             for i in range(3))


def test_the_ledger_key_comes_from_the_key_file(persona: Persona, tmp_path: Path) -> None:
    persona.log.append([event(event_id="1")])
    erase_subject(persona, "email", "alice@example.com")
    assert len(ledger_of(persona).read().entries) == 1
    with pytest.raises(LedgerError, match="another key file"):
        ErasureLedger.of(persona.settings.ledger_path, Keyring.generate()).read()


# -- an unsigned ledger is never adopted on sight: only `persona ledger adopt` signs one --------------------------


def test_an_unsigned_ledger_is_refused_until_adoption_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "erasures.jsonl"
    path.write_bytes(UNSIGNED)
    ledger = ErasureLedger(path, KEY)
    for attempt in (ledger.read, lambda: ledger.record(ENTRIES[0])):
        with pytest.raises(LedgerError, match="persona ledger adopt"):
            attempt()
        assert path.read_bytes() == UNSIGNED and not list(tmp_path.glob("*.unsigned"))  # nothing signed, nothing kept
    found = ledger.unsigned_entries()  # what adoption would sign, changing nothing
    assert [(e.profile_id, e.purged) for e in found.entries] == [
        ("prf_old1", None), (None, bytes(range(32))), ("prf_old2", None), ("prf_old3", None)] and found.torn
    assert path.read_bytes() == UNSIGNED
    adopted = ledger.adopt()
    assert adopted.adopted == 4 and adopted.entries == found.entries and adopted.torn
    assert ledger.read().entries == found.entries
    assert ledger.unsigned_entries().entries == [] and ledger.adopt().adopted == 0  # once only


def test_adoption_signs_only_the_entries_that_were_shown(tmp_path: Path) -> None:
    path = tmp_path / "erasures.jsonl"
    path.write_bytes(UNSIGNED)
    ledger = ErasureLedger(path, KEY)
    shown = ledger.unsigned_entries().entries
    path.write_bytes(UNSIGNED.splitlines(keepends=True)[0])  # changed between the listing and the answer
    with pytest.raises(LedgerError, match="changed"):
        ledger.adopt(expected=shown)
    assert path.read_bytes() == UNSIGNED.splitlines(keepends=True)[0]


def test_an_unreadable_line_of_an_unsigned_ledger_is_refused_and_only_a_torn_last_line_passed_over(
        tmp_path: Path) -> None:
    path = tmp_path / "erasures.jsonl"
    broken = UNSIGNED.replace(b'"prf_old3"}', b'"prf_old3"]')
    path.write_bytes(broken)
    ledger = ErasureLedger(path, KEY)
    for attempt in (ledger.unsigned_entries, ledger.adopt):
        with pytest.raises(LedgerError, match="line 4 cannot be read"):
            attempt()
    assert path.read_bytes() == broken and not list(tmp_path.glob("*.unsigned"))


def test_a_forged_unsigned_ledger_erases_no_one_and_resurrects_no_one(persona: Persona, tmp_path: Path) -> None:
    persona.log.append([event("ann@example.com", event_id="1"), event("bob@example.com", event_id="2"),
                        event("cid@example.com", event_id="3")])
    ann, bob, cid = (persona.log.profile_for("email", f"{n}@example.com") for n in ("ann", "bob", "cid"))
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", "cid@example.com")
    settings = persona.settings
    persona.close()
    # the attacker swaps in an unsigned ledger that forgets Cid and names Ann instead
    forged = orjson.dumps({"erased_at": NOW.isoformat(), "profile_id": ann}) + b"\n"
    settings.ledger_path.write_bytes(forged)
    data = ["--data", str(settings.data_dir)]
    for command in (["verify"], ["restore", str(info.path), "--yes"], ["erase", "--subject", "email:bob@example.com"]):
        result = CliRunner().invoke(cli, [*data, *command])
        assert result.exit_code == 2 and "persona ledger adopt" in result.output, (command, result.output)
    assert settings.ledger_path.read_bytes() == forged
    with Persona.open(settings) as p:  # nothing was restored, erased or signed
        assert p.log.profile_for("email", "ann@example.com") == ann
        assert p.log.profile_for("email", "bob@example.com") == bob
        assert p.log.profile_for("email", "cid@example.com") is None and p.recorder.tombstone(cid) is not None
    # on a new machine (no current store to carry tombstones from) the forged ledger would be all there is
    settings.db_path.rename(tmp_path / "moved.db")
    with pytest.raises(LedgerError, match="persona ledger adopt"):
        restore(settings, info.path)
    assert not settings.db_path.exists()  # Cid was not brought back


def test_a_store_whose_older_ledger_is_adopted_through_the_command_line(persona: Persona, tmp_path: Path) -> None:
    persona.log.append([event("zed@example.com", event_id="1"), event("yan@example.com", event_id="2")])
    zed = persona.log.profile_for("email", "zed@example.com")
    yan = persona.log.profile_for("email", "yan@example.com")
    info = backup(persona, tmp_path / "b.db")
    erase_subject(persona, "email", "zed@example.com")
    settings = persona.settings
    persona.close()
    # the old format, with a line naming Yan, who was never erased here (a crash mid-erasure, or a forgery)
    old = b"".join(orjson.dumps({"erased_at": NOW.isoformat(), "profile_id": pid}) + b"\n" for pid in (zed, yan))
    settings.ledger_path.write_bytes(old + b'{"erased_at":"2026-06-0')  # and a torn last line
    data = ["--data", str(settings.data_dir)]
    result = CliRunner().invoke(cli, [*data, "verify"])
    assert result.exit_code == 2 and "persona ledger adopt" in result.output, result.output

    declined = CliRunner().invoke(cli, [*data, "ledger", "adopt"], input="n\n")
    assert declined.exit_code != 0 and "mac" not in settings.ledger_path.read_text()
    for shown in (declined.output,):
        assert zed in shown and yan in shown and "example.com" not in shown  # pseudonyms, never identifiers
        assert "still has a live profile" in shown and shown.count("still has a live profile") == 1
        assert f"{yan}" in shown.split("still has a live profile")[0].splitlines()[-1]
        assert "cut short by a crash" in shown

    adopted = CliRunner().invoke(cli, [*data, "ledger", "adopt"], input="y\n")
    assert adopted.exit_code == 0 and "signed 2 erasure ledger entries" in adopted.output, adopted.output
    again = CliRunner().invoke(cli, [*data, "ledger", "adopt", "--yes"])
    assert again.exit_code == 0 and "nothing to adopt" in again.output, again.output
    result = CliRunner().invoke(cli, [*data, "audit", "--json"])
    entries = [orjson.loads(line) for line in result.output.splitlines()]
    adoptions = [e for e in entries if e["operation"] == "ledger adopt"]
    assert [(e["token"], e["outcome"]) for e in adoptions] == [("local:ledger", "declined"), ("local:ledger", "ok")]
    assert adoptions[1]["detail"] == {"entries": 2, "live": 1, "profiles": 2, "torn": True}
    assert "example.com" not in result.output
    # the unfinished erasure of Yan is now reported, and finished by a restore
    result = CliRunner().invoke(cli, [*data, "verify"])
    assert result.exit_code == 1 and f"erase --profile {yan}" in result.output, result.output
    assert sorted(restore(settings, info.path).reapplied) == sorted([zed, yan])
