"""Tamper detection on real files: what someone with write access to the data directory can do,
and what `verify` (and reading) must notice."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.erasure import erase_subject
from persona.errors import ErasedError, TamperError
from persona.eventlog import chain_hash, chunk_aad, genesis
from persona.events import Event
from persona.verify import verify
from tests.conftest import NOW, event
from tests.hardening import tally

# How many events each person gets; the last one is erased after the appends.
EVENTS = {"ann.lee@example.com": 3, "bob.stone@example.org": 2, "cy.nakamura@example.net": 1, "dan.ruiz@example.com": 2}
ERASED = "dan.ruiz@example.com"
ANN, BOB, CY = "ann.lee@example.com", "bob.stone@example.org", "cy.nakamura@example.net"
TRIGGERS = ("chunks_continue_their_stream", "chunks_are_append_only_update", "chunks_are_append_only_delete",
            "event_keys_are_append_only_update", "event_keys_are_append_only_delete")
ORDER = [(p, v) for v in range(1, max(EVENTS.values()) + 1) for p in EVENTS if v <= EVENTS[p]]
# How the events are appended, call by call (a call makes one chunk per person):
LAYOUTS = {
    # batches of three, streams interleaved: no call holds two events of one person, so every chunk holds one
    "single": [ORDER[start : start + 3] for start in range(0, len(ORDER), 3)],
    # everyone's first two events in one call, then ann's third: chunks ann 1-2, bob 1-2, cy 1, dan 1-2, ann 3
    "multi": [[(p, v) for p, v in ORDER if v <= 2], [(p, v) for p, v in ORDER if v > 2]],
}
# the chunks' rows, read back (SQLite and PostgreSQL alike)
ROWS = ("SELECT c.position, s.stream_id, c.stream_no, c.first_version, c.last_version, c.types, c.keys, c.recorded_at,"
        " c.payload FROM chunks c JOIN streams s USING (stream_no) ORDER BY c.position")


def layout_events(layout: str) -> list[list[Event]]:
    """The calls of a layout; in "multi" each version 2 is a search, so a chunk of two holds two types."""
    return [[event(p, "searched", {"query": f"q{v}"}, event_id=f"{p}-{v}") if layout == "multi" and v == 2
             else event(p, event_id=f"{p}-{v}") for p, v in batch] for batch in LAYOUTS[layout]]


@dataclass(frozen=True)
class Row:
    """A chunk as stored: versions `version`..`last` of one stream (one event in the "single" layout)."""

    position: int
    person: str
    stream_id: str
    stream_no: int
    version: int  # its first event's
    last: int
    types: str
    keys: bytes
    recorded_at: int
    payload: bytes

    @property
    def size(self) -> int:
        return self.last - self.version + 1


def read_rows(conn: Any, person_of: dict[str, str]) -> list[Row]:
    return [Row(pos, person_of[sid], sid, no, first, last, types, bytes(keys), at, bytes(payload))
            for pos, sid, no, first, last, types, keys, at, payload in conn.execute(ROWS)]


@dataclass(frozen=True)
class Store:
    settings: Settings
    rows: list[Row]
    chain_key: bytes  # what an attacker holding the key file could derive

    @property
    def db(self) -> Path:
        return self.settings.db_path

    def row(self, person: str, version: int) -> Row:
        """The chunk holding this event."""
        return next(r for r in self.rows if r.person == person and r.version <= version <= r.last)

    def pid(self, person: str) -> str:
        return self.row(person, 1).stream_id


@pytest.fixture(params=["single"])
def store(settings: Settings, request: pytest.FixtureRequest) -> Store:
    """A closed store on disk: four people, appended as the layout says (one event per chunk unless
    parametrised with "multi"), one of them erased, WAL checkpointed."""
    pids: dict[str, str] = {}
    with Persona.init(settings) as persona:
        for batch in layout_events(request.param):
            persona.log.append(batch, now=NOW)
        for p in EVENTS:
            pid = persona.log.profile_for("email", p)
            assert pid is not None
            pids[p] = pid
        erase_subject(persona, "email", ERASED)
        verify(persona)
        chain_key = persona.log.chain_key
    person_of = {pid: p for p, pid in pids.items()}
    with closing(sqlite3.connect(settings.db_path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = read_rows(conn, person_of)
    wal = settings.db_path.with_name(settings.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the data must sit in the main database file"
    assert sum(r.size for r in rows) == sum(EVENTS.values())
    assert [(r.person, r.version, r.last) for r in rows] == [
        (p, v, v) for batch in LAYOUTS["single"] for p, v in batch] if request.param == "single" else [
        (ANN, 1, 2), (BOB, 1, 2), (CY, 1, 1), (ERASED, 1, 2), (ANN, 3, 3)]
    return Store(settings, rows, chain_key)


MULTI = pytest.mark.parametrize("store", ["multi"], indirect=True)
BOTH = pytest.mark.parametrize("store", ["single", "multi"], indirect=True)


@contextmanager
def attacker(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the file, with the log's triggers dropped first."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        yield conn


def rechain(conn: sqlite3.Connection, stream_no: int, chain_key: bytes) -> None:
    """What a careful attacker who also stole the key file does next: recompute the chain and the head.

    (Without the key file the chain cannot be recomputed: see the test that tries.)
    """
    sid = conn.execute("SELECT stream_id FROM streams WHERE stream_no = ?", (stream_no,)).fetchone()[0]
    prev, last = genesis(chain_key, sid), 0
    rows = conn.execute(
        "SELECT position, first_version, last_version, keys, types, recorded_at, payload FROM chunks"
        " WHERE stream_no = ? ORDER BY first_version",
        (stream_no,),
    ).fetchall()
    for position, first, last, keys, types, at, payload in rows:
        prev = chain_hash(chain_key, prev, chunk_aad(sid, first, last, bytes(keys), types), at, bytes(payload))
        conn.execute("UPDATE chunks SET hash = ? WHERE position = ?", (prev, position))
    conn.execute("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?", (last, prev, stream_no))


def verify_fails(store: Store) -> TamperError:
    with Persona.open(store.settings) as persona, pytest.raises(TamperError) as info:
        verify(persona)
    tally("tampered stores (bytes flipped, fields changed, rows swapped, moved, deleted or forged) caught by verify")
    message = str(info.value)
    for person in EVENTS:  # error messages never carry personal data
        assert person not in message and person.split("@")[0] not in message
    return info.value


def where(row: Row, version: int | None = None) -> str:
    """How verify names a chunk: as an event when it holds one (at `version` if given), else as its events."""
    if row.size == 1:
        return f"event at position {row.position} (stream {row.stream_id}, version {version or row.version})"
    return (f"events at positions {row.position}-{row.position + row.size - 1} (stream {row.stream_id},"
            f" versions {row.version}-{row.last})")


def assert_names(error: TamperError, row: Row, why: str) -> None:
    message = str(error)
    assert where(row) in message
    assert why in message
    assert error.position == row.position


def first_in_scan(*rows: Row) -> Row:
    """verify walks stream by stream, each in version order, and stops at the first bad chunk."""
    return min(rows, key=lambda r: (r.stream_no, r.version))


def read_events(store: Store, person: str) -> list[str]:
    with Persona.open(store.settings) as persona:
        return [e.event_id for e in persona.log.read(store.pid(person))]


def read_fails(store: Store, person: str) -> None:
    with Persona.open(store.settings) as persona, pytest.raises(TamperError):
        persona.log.read(store.pid(person))
    tally("reads of tampered streams refused")


def intact_people_still_read(store: Store, *damaged: str) -> None:
    for person, n in EVENTS.items():
        if person not in damaged and person != ERASED:
            assert read_events(store, person) == [f"{person}-{v}" for v in range(1, n + 1)]


# -- (a) one flipped byte of ciphertext, in the database file itself ----------------------------
@pytest.mark.parametrize(
    ("person", "version"),
    [(ANN, 2), (BOB, 1), (CY, 1), (ERASED, 2)],
    ids=["middle", "first", "only", "erased"],  # in "multi": ann's first chunk of two, bob's only one, dan's
)
@pytest.mark.parametrize("where_in", ["nonce", "ciphertext", "tag"])
@BOTH
def test_a_flipped_ciphertext_byte_on_disk_is_detected(store: Store, person: str, version: int, where_in: str) -> None:
    target = store.row(person, version)
    raw = bytearray(store.db.read_bytes())
    assert raw.count(target.payload) == 1
    offset = {"nonce": 3, "ciphertext": len(target.payload) // 2, "tag": len(target.payload) - 1}[where_in]
    raw[raw.find(target.payload) + offset] ^= 0x40
    store.db.write_bytes(bytes(raw))

    assert_names(verify_fails(store), target, "hash chain broken")
    if person == ERASED:
        with Persona.open(store.settings) as persona, pytest.raises(ErasedError):
            persona.log.read(target.stream_id)
    else:
        read_fails(store, person)
    intact_people_still_read(store, person)


@BOTH
def test_an_untouched_store_verifies(store: Store) -> None:
    with Persona.open(store.settings) as persona:
        report = verify(persona)
    live = sum(n for p, n in EVENTS.items() if p != ERASED)
    assert (report.events, report.streams, report.opened, report.erased) == (sum(EVENTS.values()), len(EVENTS), live, 1)
    intact_people_still_read(store)


# -- (b) a header field changed in place --------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "read_notices"),
    [
        ("types", "replace(types, 'page_viewed', 'searched')", True),  # bound into the ciphertext's associated data
        ("keys", "randomblob(length(keys))", True),  # ditto
        ("recorded_at", "recorded_at + 1", False),  # covered by the hash chain only
    ],
)
@BOTH  # in "multi", ann's first chunk (of two)
def test_a_changed_header_field_breaks_the_chain(store: Store, column: str, value: str, read_notices: bool) -> None:
    target = store.row(ANN, 2)
    with attacker(store.db) as conn:
        assert conn.execute(f"UPDATE chunks SET {column} = {value} WHERE position = ?", (target.position,)).rowcount
        changed = conn.execute(f"SELECT {column} FROM chunks WHERE position = ?", (target.position,)).fetchone()[0]
    assert (bytes(changed) if column == "keys" else changed) != getattr(target, column)
    assert_names(verify_fails(store), target, "hash chain broken")
    if read_notices:
        read_fails(store, ANN)
    intact_people_still_read(store, ANN)


def test_without_the_key_file_the_chain_cannot_be_recomputed(store: Store) -> None:
    target = store.row(ANN, 2)
    guessed_key = hashlib.sha256(b"guess").digest()
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET recorded_at = recorded_at + 1 WHERE position = ?", (target.position,))
        rechain(conn, target.stream_no, guessed_key)
    error = verify_fails(store)
    assert f"stream {target.stream_id}" in str(error) and "hash chain broken" in str(error)


# a chunk's types or keys rewritten: the value, SQL over the row
RELABELS = {
    "another type": ("types", "replace(types, 'page_viewed', 'searched')"),
    "a random key": ("keys", "randomblob(length(keys))"),
    # within a chunk of two: its events trade types, or keys (both keys stay in the key set)
    "types swapped": ("types", "substr(types, instr(types, ' ') + 1) || ' '"
                               " || substr(types, 1, instr(types, ' ') - 1)"),
    "keys swapped": ("keys", "CAST(substr(keys, 17, 16) || substr(keys, 1, 16) AS BLOB)"),  # (|| makes text)
}


@pytest.mark.parametrize(("store", "relabel"), [
    *(pytest.param("single", case, id=f"single-{case}") for case in ("another type", "a random key")),
    *(pytest.param("multi", case, id=f"multi-{case}") for case in RELABELS),
], indirect=["store"])
def test_a_relabelled_event_does_not_open_even_with_the_chain_recomputed(store: Store, relabel: str) -> None:
    target = store.row(BOB, 2)  # in "multi", bob's one chunk: a page view, then a search
    column, value = RELABELS[relabel]
    with attacker(store.db) as conn:
        conn.execute(f"UPDATE chunks SET {column} = {value} WHERE position = ?", (target.position,))
        types, keys = conn.execute("SELECT types, keys FROM chunks WHERE position = ?", (target.position,)).fetchone()
        rechain(conn, target.stream_no, store.chain_key)
    assert (types, bytes(keys)) != (target.types, target.keys)
    assert len(types.split(" ")) == target.size and len(keys) == 16 * target.size  # the chunk still agrees with itself
    assert_names(verify_fails(store), target, "does not open")
    read_fails(store, BOB)
    intact_people_still_read(store, BOB)


# -- (c) payloads swapped -----------------------------------------------------------------------
SWAPS = {
    "same stream": ("single", (ANN, 1), (ANN, 3)),
    "two streams": ("single", (BOB, 1), (CY, 1)),
    "two chunks of two": ("multi", (ANN, 1), (BOB, 1)),  # the same versions, the same types: only the stream differs
    "chunks of two and one": ("multi", (ANN, 1), (ANN, 3)),
}


@pytest.mark.parametrize("rechained", [False, True], ids=["chain-left", "chain-recomputed"])
@pytest.mark.parametrize(("store", "swap"), [pytest.param(spec[0], swap, id=swap) for swap, spec in SWAPS.items()],
                         indirect=["store"])
def test_swapped_payloads_are_detected(store: Store, swap: str, rechained: bool) -> None:
    a, b = (store.row(*spec) for spec in SWAPS[swap][1:])
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET payload = ? WHERE position = ?", (b.payload, a.position))
        conn.execute("UPDATE chunks SET payload = ? WHERE position = ?", (a.payload, b.position))
        if rechained:
            for no in {a.stream_no, b.stream_no}:
                rechain(conn, no, store.chain_key)
    assert_names(verify_fails(store), first_in_scan(a, b), "does not open" if rechained else "hash chain broken")
    for person in {a.person, b.person}:
        read_fails(store, person)
    intact_people_still_read(store, a.person, b.person)


def test_an_event_moved_to_another_stream_does_not_open_there(store: Store) -> None:
    moved, onto = store.row(BOB, 2), store.row(CY, 1)
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET stream_no = ?, first_version = 2, last_version = 2 WHERE position = ?",
                     (onto.stream_no, moved.position))
        rechain(conn, moved.stream_no, store.chain_key)
        rechain(conn, onto.stream_no, store.chain_key)
    error = verify_fails(store)
    assert f"stream {onto.stream_id}" in str(error) and "version 2" in str(error) and "does not open" in str(error)
    assert error.position == moved.position
    read_fails(store, CY)
    assert read_events(store, BOB) == [f"{moved.person}-1"]


# -- (d) a row deleted, or a chunk cut short ------------------------------------------------------
@pytest.mark.parametrize(
    ("store", "person", "version", "keys_too", "says"),
    [
        ("single", ANN, 2, True, "expected version 2: a version is missing"),
        ("single", ANN, 3, True, "ends at version 2, its head says 3"),
        ("single", CY, 1, True, "has a head at version 1 but no events"),
        ("single", CY, 1, False, "the log's key set holds 8 keys for 7 events"),  # its key left behind
        ("single", ERASED, 1, True, "expected version 1: a version is missing"),
        ("multi", ANN, 1, True, "expected version 1: a version is missing"),  # the chunk of two before ann's third
        ("multi", BOB, 2, True, "has a head at version 2 but no events"),  # bob's one chunk
        ("multi", ANN, 3, True, "ends at version 2, its head says 3"),
    ],
    ids=["middle", "last", "only", "only-key-kept", "erased-first", "multi-first", "multi-only", "multi-last"],
    indirect=["store"],
)
def test_a_deleted_row_is_detected(store: Store, person: str, version: int, keys_too: bool, says: str) -> None:
    """The chunk holding the event is deleted, and (as a careful attacker would) its keys from the key set."""
    gone = store.row(person, version)
    with attacker(store.db) as conn:
        assert conn.execute("DELETE FROM chunks WHERE position = ?", (gone.position,)).rowcount == 1
        if keys_too:
            for n in range(gone.size):
                key = gone.keys[16 * n : 16 * (n + 1)]
                assert conn.execute("DELETE FROM event_keys WHERE event_key = ?", (key,)).rowcount == 1
    error = verify_fails(store)
    if keys_too:
        assert f"stream {gone.stream_id}" in str(error)
    assert says in str(error)
    if "is missing" in says:  # the next chunk of the stream is named
        assert_names(error, store.row(person, gone.last + 1), says)
    intact_people_still_read(store, person)


CUTS = {  # a chunk's last version lowered by one (its last event dropped), and how far the attacker goes
    "last version only": "the chunk's versions, keys and types do not agree",
    "keys and types cut too": "hash chain broken",
    "and the chain recomputed": "does not open",
}


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("person", [ANN, BOB], ids=["followed", "stream-last"])  # ann 1-2 before 3; bob 1-2
@MULTI
def test_a_chunk_cut_short_is_detected(store: Store, person: str, cut: str) -> None:
    target = store.row(person, 1)
    assert target.size == 2
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET last_version = last_version - 1 WHERE position = ?", (target.position,))
        if cut != "last version only":
            conn.execute("UPDATE chunks SET keys = substr(keys, 1, 16), types = substr(types, 1, instr(types, ' ') - 1)"
                         " WHERE position = ?", (target.position,))
        if cut == "and the chain recomputed":  # the dropped event's key goes too: the key set agrees with the log
            assert conn.execute("DELETE FROM event_keys WHERE event_key = ?", (target.keys[16:],)).rowcount == 1
            rechain(conn, target.stream_no, store.chain_key)  # (ann's gap, 1 then 3, comes after: not reached)
    assert_names(verify_fails(store), replace(target, last=target.last - 1), CUTS[cut])
    read_fails(store, person)
    intact_people_still_read(store, person)


# -- (e) the log's key set ----------------------------------------------------------------------
KEY_SET = {  # what is done to event_keys, and what verify says
    "a key deleted": ("DELETE FROM event_keys WHERE event_key = :key", "missing from the log's key set"),
    "a key replaced": ("UPDATE event_keys SET event_key = randomblob(16) WHERE event_key = :key",
                       "missing from the log's key set"),  # as many keys as events
    "a key added": ("INSERT INTO event_keys (generation, event_key) VALUES (0, randomblob(16))",
                    "the log's key set holds 9 keys for 8 events"),
}


@pytest.mark.parametrize("case", list(KEY_SET))
@BOTH  # in "multi", the second key of ann's first chunk
def test_an_altered_key_set_is_detected(store: Store, case: str) -> None:
    sql, says = KEY_SET[case]
    target = store.row(ANN, 2)
    key = target.keys[-16:]
    with attacker(store.db) as conn:
        assert conn.execute(sql, {"key": key}).rowcount == 1
    error = verify_fails(store)
    assert says in str(error)
    if "missing" in says:
        assert_names(error, target, says)
    intact_people_still_read(store)  # the events themselves are intact: it is the idempotency record that lies


@pytest.mark.parametrize("store", ["multi"], indirect=True)
def test_a_chunk_moved_onto_the_positions_of_another_is_detected(store: Store) -> None:
    """A chunk's position is the writer's, given at insert: neither chained nor sealed. Moved to start
    inside the chunk before it, two events would share a position and a reader catching up after it
    would skip one: verify checks that no chunk starts inside the one before it."""
    ann, bob = store.row(ANN, 1), store.row(BOB, 1)
    assert ann.size == 2 and bob.position == ann.position + 2
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET position = ? WHERE position = ?", (ann.position + 1, bob.position))
    assert "overlap the positions of the chunk before them" in str(verify_fails(store))


def test_two_chunks_of_a_stream_with_their_positions_swapped_are_detected(store: Store) -> None:
    """No overlap, every chunk intact and chained: but the log would hand out the stream's version 2
    before its version 1 (a replay folds events in log order)."""
    one, two = store.row(ANN, 1), store.row(ANN, 2)
    assert one.size == two.size == 1 and one.position < two.position
    with attacker(store.db) as conn:
        conn.execute("UPDATE chunks SET position = -1 WHERE position = ?", (one.position,))
        conn.execute("UPDATE chunks SET position = ? WHERE position = ?", (one.position, two.position))
        conn.execute("UPDATE chunks SET position = ? WHERE position = -1", (two.position,))
    assert "comes before the stream's earlier events in the log" in str(verify_fails(store))


# -- (f) the log's triggers -------------------------------------------------------------------------
CHUNK = "position, stream_no, first_version, last_version, recorded_at, types, keys, payload, hash"
REFUSED = {
    "update types": ("UPDATE chunks SET types = 'searched' WHERE position = :pos", "append-only"),
    "update payload": ("UPDATE chunks SET payload = zeroblob(40) WHERE position = :pos", "append-only"),
    "update all": ("UPDATE chunks SET recorded_at = recorded_at + 1", "append-only"),
    "delete one": ("DELETE FROM chunks WHERE position = :pos", "append-only"),
    "delete all": ("DELETE FROM chunks", "append-only"),
    "update a key": ("UPDATE event_keys SET event_key = randomblob(16)", "append-only"),
    "delete a key": ("DELETE FROM event_keys", "append-only"),
    "upsert": (
        f"INSERT INTO chunks ({CHUNK}) SELECT {CHUNK.replace('types', repr('searched'))}"
        " FROM chunks WHERE position = :pos ON CONFLICT (position) DO UPDATE SET types = excluded.types",
        "continue its stream",
    ),
    # REPLACE resolves a conflict by deleting the old row, and SQLite fires no DELETE trigger for
    # that unless PRAGMA recursive_triggers is on (off by default, per connection). The BEFORE
    # INSERT trigger refuses any chunk that does not continue its stream after the log's last
    # position, and a chunk that does conflicts with none: so REPLACE is refused, not just detected.
    "replace same position": (
        f"INSERT OR REPLACE INTO chunks ({CHUNK}) SELECT {CHUNK.replace('types', repr('searched'))}"
        " FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "replace same stream version": (
        f"REPLACE INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, first_version,"
        " last_version, recorded_at, types, randomblob(16), zeroblob(40), hash FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    # and the trigger's other rules: a chunk holds 1..256 events, one key and one type each
    "insert with a gap": (
        f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 5, 5,"
        " recorded_at, types, randomblob(16), payload, hash FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "insert behind the log": (
        f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) FROM chunks), stream_no, 4, 4,"
        " recorded_at, types, randomblob(16), payload, hash FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "insert keys short": (
        f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 4, 5,"
        " recorded_at, 'page_viewed page_viewed', randomblob(16), payload, hash FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "insert types short": (
        f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 4, 5,"
        " recorded_at, 'page_viewed', randomblob(32), payload, hash FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "insert too many": (
        f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 4, 260,"
        " recorded_at, trim(replace(hex(zeroblob(257)), '00', 'x ')), randomblob(16 * 257), payload, hash"
        " FROM chunks WHERE position = :pos",
        "continue its stream",
    ),
    "update tombstone": ("UPDATE tombstones SET erased_at = 0", "final"),
    "delete tombstone": ("DELETE FROM tombstones", "final"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_backend_refuses_to_change_stored_events(store: Store, case: str) -> None:
    sql, says = REFUSED[case]
    target = store.row(ANN, 3)  # ann's last: a chunk inserted after it would continue her stream
    dump = ("SELECT * FROM chunks ORDER BY position", "SELECT * FROM event_keys ORDER BY event_key",
            "SELECT * FROM tombstones ORDER BY profile_id")
    with closing(sqlite3.connect(store.db, isolation_level=None)) as conn:  # a plain connection, triggers intact
        before = [conn.execute(q).fetchall() for q in dump]
        assert before[2], "the fixture erased someone: there is a tombstone to protect"
        with pytest.raises(sqlite3.IntegrityError) as info:
            conn.execute(sql, {"pos": target.position})
        assert says in str(info.value)
        after = [conn.execute(q).fetchall() for q in dump]
        assert after[0] == before[0], "a stored chunk was changed, added or removed"
        assert after[1] == before[1], "an event key was changed or removed"
        assert after[2] == before[2], "a tombstone was changed or removed"
    with Persona.open(store.settings) as persona:
        verify(persona)


def test_a_forged_row_appended_without_moving_the_head_is_detected(store: Store) -> None:
    last = store.row(ANN, 3)
    key = secrets.token_bytes(16)
    with closing(sqlite3.connect(store.db, isolation_level=None)) as conn:  # the triggers allow this INSERT
        conn.execute(
            f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 4, 4,"
            " recorded_at, types, ?, payload, hash FROM chunks WHERE position = ?",
            (key, last.position),
        )
        conn.execute("INSERT INTO event_keys (generation, event_key) VALUES (0, ?)", (key,))  # the key set agrees
    error = verify_fails(store)
    assert f"stream {last.stream_id}" in str(error) and "version 4" in str(error)
    assert "hash chain broken" in str(error)


def test_a_replaced_tombstone_is_ignored(store: Store) -> None:
    query = "SELECT * FROM tombstones ORDER BY profile_id"
    with closing(sqlite3.connect(store.db, isolation_level=None)) as conn:
        before = conn.execute(query).fetchall()
        conn.execute("INSERT OR REPLACE INTO tombstones (profile_id, erased_at, events)"
                     " SELECT profile_id, 0, 0 FROM tombstones")
        assert conn.execute(query).fetchall() == before


def test_the_triggers_are_in_place_after_reopening(store: Store) -> None:
    with Persona.open(store.settings) as persona:
        names = {n for (n,) in persona.recorder.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert set(TRIGGERS) <= names


# -- (g) the command line -----------------------------------------------------------------------
def run_verify(store: Store) -> tuple[int, str, str]:
    runner = CliRunner(env={"PERSONA_DATA": None, "PERSONA_KEY_FILE": None, "PERSONA_MASTER_KEY": None,
                            "PERSONA_PEPPER": None, "PERSONA_SIGNING_KEY": None})
    result = runner.invoke(cli, ["--data", str(store.settings.data_dir), "verify"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@BOTH
def test_cli_verify_passes_a_clean_store(store: Store) -> None:
    code, out, err = run_verify(store)
    assert code == 0, err
    live = sum(n for p, n in EVENTS.items() if p != ERASED)
    assert f"ok: {sum(EVENTS.values())} events in {len(EVENTS)} streams verified ({live} opened, 1 erased" in out
    assert "TAMPERED" not in err


@pytest.mark.parametrize("damage", ["flip", "delete"])
@BOTH
def test_cli_verify_exits_2_naming_the_bad_event(store: Store, damage: str) -> None:
    target = store.row(ANN, 2)
    if damage == "flip":
        raw = bytearray(store.db.read_bytes())
        raw[raw.find(target.payload) + 20] ^= 0x01
        store.db.write_bytes(bytes(raw))
        named = target
    else:
        with attacker(store.db) as conn:
            conn.execute("DELETE FROM chunks WHERE position = ?", (target.position,))
        named = store.row(ANN, 3)
    code, out, err = run_verify(store)
    assert code == 2
    assert "TAMPERED" in err
    assert where(named) in err
    assert "ok:" not in out
    assert "Traceback" not in out + err
