"""Tamper detection on PostgreSQL: what someone with the database's superuser can do once they
switch the append-only triggers off for their own session (`SET session_replication_role =
replica`, which skips ordinary triggers), and what `verify` must notice all the same.

The same store and the same attacks as tests/test_tamper.py (SQLite, raw file writes), on a
fresh schema of the test server; only the way in differs.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.erasure import erase_subject
from persona.errors import ErasedError, TamperError
from persona.eventlog import chain_hash, chunk_aad, genesis
from persona.verify import verify
from tests.conftest import NOW, pg_schema
from tests.hardening import tally
from tests.test_tamper import ANN, BOB, CY, ERASED, EVENTS, Row, first_in_scan, layout_events, read_rows, where


@dataclass(frozen=True)
class Store:
    settings: Settings
    rows: list[Row]
    chain_key: bytes  # what an attacker holding the key file could derive

    @property
    def url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    def row(self, person: str, version: int) -> Row:
        """The chunk holding this event (each holds one here)."""
        return next(r for r in self.rows if r.person == person and r.version <= version <= r.last)

    def pid(self, person: str) -> str:
        return self.row(person, 1).stream_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Four people in interleaved batches (no batch holds two events of one person: a chunk per
    event), one of them erased, on a schema of its own."""
    pids: dict[str, str] = {}
    with pg_schema() as url:
        settings = Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": url})
        with Persona.init(settings) as persona:
            for batch in layout_events("single"):  # batches of three, streams interleaved
                persona.log.append(batch, now=NOW)
            for p in EVENTS:
                pid = persona.log.profile_for("email", p)
                assert pid is not None
                pids[p] = pid
            erase_subject(persona, "email", ERASED)
            verify(persona)
            chain_key = persona.log.chain_key
        person_of = {pid: p for p, pid in pids.items()}
        with psycopg.connect(url) as conn:
            rows = read_rows(conn, person_of)
        assert len(rows) == sum(EVENTS.values()) and all(r.size == 1 for r in rows)
        yield Store(settings, rows, chain_key)


@contextmanager
def attacker(store: Store) -> Iterator[psycopg.Connection]:
    """A superuser's session with the triggers off: `replica` fires only triggers marked for it."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn


def rechain(conn: psycopg.Connection, stream_no: int, chain_key: bytes) -> None:
    """What a careful attacker who also stole the key file does next: recompute the chain and the head."""
    sid = conn.execute("SELECT stream_id FROM streams WHERE stream_no = %s", (stream_no,)).fetchone()[0]
    prev, last = genesis(chain_key, sid), 0
    rows = conn.execute("SELECT position, first_version, last_version, keys, types, recorded_at, payload FROM chunks"
                        " WHERE stream_no = %s ORDER BY first_version", (stream_no,)).fetchall()
    for position, first, last, keys, types, at, payload in rows:
        prev = chain_hash(chain_key, prev, chunk_aad(sid, first, last, bytes(keys), types), at, bytes(payload))
        conn.execute("UPDATE chunks SET hash = %s WHERE position = %s", (prev, position))
    conn.execute("UPDATE streams SET version = %s, head = %s WHERE stream_no = %s", (last, prev, stream_no))


def verify_fails(store: Store) -> TamperError:
    with Persona.open(store.settings) as persona, pytest.raises(TamperError) as info:
        verify(persona)
    tally("tampered PostgreSQL stores (triggers bypassed: rows altered, swapped, moved, deleted) caught by verify")
    message = str(info.value)
    for person in EVENTS:  # error messages never carry personal data
        assert person not in message and person.split("@")[0] not in message
    return info.value


def assert_names(error: TamperError, row: Row, why: str, *, version: int | None = None) -> None:
    message = str(error)
    assert where(row, version) in message
    assert why in message
    assert error.position == row.position


def read_events(store: Store, person: str) -> list[str]:
    with Persona.open(store.settings) as persona:
        return [e.event_id for e in persona.log.read(store.pid(person))]


def read_fails(store: Store, person: str) -> None:
    with Persona.open(store.settings) as persona, pytest.raises(TamperError):
        persona.log.read(store.pid(person))


def intact_people_still_read(store: Store, *damaged: str) -> None:
    for person, n in EVENTS.items():
        if person not in damaged and person != ERASED:
            assert read_events(store, person) == [f"{person}-{v}" for v in range(1, n + 1)]


def test_an_untouched_store_verifies(store: Store) -> None:
    with Persona.open(store.settings) as persona:
        report = verify(persona)
    live = sum(n for p, n in EVENTS.items() if p != ERASED)
    assert (report.events, report.streams, report.opened, report.erased) == (sum(EVENTS.values()), len(EVENTS), live, 1)
    intact_people_still_read(store)


# -- the way in: refused with the triggers on, open with them off ----------------------------------
APPEND_ONLY = psycopg.errors.InsufficientPrivilege, "append-only"
NOT_CONTINUING = psycopg.errors.UniqueViolation, "continue its stream"  # persona_chunk_continues()
CHUNK = "position, stream_no, first_version, last_version, recorded_at, types, keys, payload, hash"


@pytest.mark.parametrize(("sql", "refusal", "says"), [
    ("UPDATE chunks SET payload = payload || '\\x00'::bytea WHERE position = %(pos)s", APPEND_ONLY,
     "hash chain broken"),
    ("DELETE FROM chunks WHERE position = %(pos)s", APPEND_ONLY, "expected version 2: a version is missing"),
    ("TRUNCATE chunks", APPEND_ONLY, "keys were added or removed"),
    ("DELETE FROM event_keys", APPEND_ONLY, "missing from the log's key set"),
    ("UPDATE event_keys SET event_key = " + "decode(md5(random()::text), 'hex')", APPEND_ONLY,
     "missing from the log's key set"),
    ("TRUNCATE event_keys", APPEND_ONLY, "missing from the log's key set"),
    (f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 5, 5, recorded_at,"
     " types, decode(md5(random()::text), 'hex'), payload, hash FROM chunks WHERE position = %(last)s",
     NOT_CONTINUING, "expected version 4: a version is missing"),
    (f"INSERT INTO chunks ({CHUNK}) SELECT position, stream_no, 4, 4, recorded_at, types,"
     " decode(md5(random()::text), 'hex'), payload, hash FROM chunks WHERE position = %(last)s",
     NOT_CONTINUING, "comes before the stream's earlier events"),  # at the position of ann's last: two chunks
    # would share it; verify meets the forged version 4 at or before version 3's position first
    ("DELETE FROM tombstones", APPEND_ONLY, "has no data key and no tombstone"),
], ids=["update", "delete", "truncate", "delete keys", "update keys", "truncate keys", "insert gap",
        "insert behind the log", "tombstone"])
def test_the_triggers_refuse_and_replica_mode_is_what_gets_past_them(
        store: Store, sql: str, refusal: tuple[type[Exception], str], says: str) -> None:
    target, last = store.row(ANN, 2), store.row(ANN, 3)
    dump = ("SELECT * FROM chunks ORDER BY position", "SELECT * FROM event_keys ORDER BY event_key",
            "SELECT * FROM tombstones ORDER BY profile_id")
    with psycopg.connect(store.url, autocommit=True) as conn:
        before = [conn.execute(q).fetchall() for q in dump]
        params = {"pos": target.position, "last": last.position}
        with pytest.raises(refusal[0], match=refusal[1]):
            conn.execute(sql, params)  # type: ignore[arg-type]
        assert [conn.execute(q).fetchall() for q in dump] == before
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql, params)  # type: ignore[arg-type]
        assert [conn.execute(q).fetchall() for q in dump] != before  # the attacker's way in works
    error = verify_fails(store)
    assert says in str(error)
    if "tombstones" in sql:
        assert f"profile {store.pid(ERASED)} has no data key and no tombstone" in str(error)


# -- (a) one flipped byte of ciphertext ----------------------------------------------------------
@pytest.mark.parametrize(
    ("person", "version"), [(ANN, 2), (BOB, 1), (CY, 1), (ERASED, 2)], ids=["middle", "first", "only", "erased"])
@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_a_flipped_ciphertext_byte_is_detected(store: Store, person: str, version: int, where: str) -> None:
    target = store.row(person, version)
    offset = {"nonce": 3, "ciphertext": len(target.payload) // 2, "tag": len(target.payload) - 1}[where]
    flipped = bytearray(target.payload)
    flipped[offset] ^= 0x40
    with attacker(store) as conn:
        assert conn.execute("UPDATE chunks SET payload = %s WHERE position = %s",
                            (bytes(flipped), target.position)).rowcount == 1
    assert_names(verify_fails(store), target, "hash chain broken")
    if person == ERASED:
        with Persona.open(store.settings) as persona, pytest.raises(ErasedError):
            persona.log.read(target.stream_id)
    else:
        read_fails(store, person)
    intact_people_still_read(store, person)


# -- (b) a header field changed in place --------------------------------------------------------
RANDOM_KEY = "decode(md5(random()::text), 'hex')"  # 16 random bytes, no extension needed


@pytest.mark.parametrize(
    ("column", "value", "read_notices"),
    [
        ("types", "'searched'", True),  # bound into the ciphertext's associated data
        ("keys", RANDOM_KEY, True),  # ditto
        ("recorded_at", "recorded_at + 1", False),  # covered by the hash chain only
    ],
)
def test_a_changed_header_field_breaks_the_chain(store: Store, column: str, value: str, read_notices: bool) -> None:
    target = store.row(ANN, 2)
    with attacker(store) as conn:  # constant SQL: the column and value come from the list above
        statement = f"UPDATE chunks SET {column} = {value} WHERE position = %s"
        assert conn.execute(statement, (target.position,)).rowcount == 1  # type: ignore[arg-type]
    assert_names(verify_fails(store), target, "hash chain broken")
    if read_notices:
        read_fails(store, ANN)
    intact_people_still_read(store, ANN)


def test_without_the_key_file_the_chain_cannot_be_recomputed(store: Store) -> None:
    target = store.row(ANN, 2)
    with attacker(store) as conn:
        conn.execute("UPDATE chunks SET recorded_at = recorded_at + 1 WHERE position = %s", (target.position,))
        rechain(conn, target.stream_no, hashlib.sha256(b"guess").digest())
    error = verify_fails(store)
    assert f"stream {target.stream_id}" in str(error) and "hash chain broken" in str(error)


@pytest.mark.parametrize(("column", "value"), [("types", "'searched'"), ("keys", RANDOM_KEY)])
def test_a_relabelled_event_does_not_open_even_with_the_chain_recomputed(store: Store, column: str, value: str) -> None:
    target = store.row(BOB, 2)
    with attacker(store) as conn:
        conn.execute(f"UPDATE chunks SET {column} = {value} WHERE position = %s",  # type: ignore[arg-type]
                     (target.position,))
        rechain(conn, target.stream_no, store.chain_key)
    assert_names(verify_fails(store), target, "does not open")
    read_fails(store, BOB)


# -- (c) payloads or rows swapped ---------------------------------------------------------------
SWAPS = {
    "same stream": ((ANN, 1), (ANN, 3)),
    "two streams": ((BOB, 1), (CY, 1)),
}


@pytest.mark.parametrize("rechained", [False, True], ids=["chain-left", "chain-recomputed"])
@pytest.mark.parametrize("swap", list(SWAPS))
def test_swapped_payloads_are_detected(store: Store, swap: str, rechained: bool) -> None:
    a, b = (store.row(*spec) for spec in SWAPS[swap])
    with attacker(store) as conn:
        conn.execute("UPDATE chunks SET payload = %s WHERE position = %s", (b.payload, a.position))
        conn.execute("UPDATE chunks SET payload = %s WHERE position = %s", (a.payload, b.position))
        if rechained:
            for no in {a.stream_no, b.stream_no}:
                rechain(conn, no, store.chain_key)
    assert_names(verify_fails(store), first_in_scan(a, b), "does not open" if rechained else "hash chain broken")
    for person in {a.person, b.person}:
        read_fails(store, person)
    intact_people_still_read(store, a.person, b.person)


@pytest.mark.parametrize("rechained", [False, True], ids=["chain-left", "chain-recomputed"])
def test_two_rows_of_a_stream_swapped_in_order_are_detected(store: Store, rechained: bool) -> None:
    first, last = store.row(ANN, 1), store.row(ANN, 3)
    with attacker(store) as conn:  # versions 1 and 3 trade places (0 is free: versions start at 1)
        for position, version in ((first.position, 0), (last.position, 1), (first.position, 3)):
            conn.execute("UPDATE chunks SET first_version = %s, last_version = %s WHERE position = %s",
                         (version, version, position))
        if rechained:
            rechain(conn, first.stream_no, store.chain_key)
    # the first row of the stream in version order is now the old third one
    assert_names(verify_fails(store), last, "does not open" if rechained else "hash chain broken", version=1)
    read_fails(store, ANN)
    intact_people_still_read(store, ANN)


def test_an_event_moved_to_another_stream_does_not_open_there(store: Store) -> None:
    moved, onto = store.row(BOB, 2), store.row(CY, 1)
    with attacker(store) as conn:  # across hash partitions, if the two streams live in two
        conn.execute("UPDATE chunks SET stream_no = %s, first_version = 2, last_version = 2 WHERE position = %s",
                     (onto.stream_no, moved.position))
        rechain(conn, moved.stream_no, store.chain_key)
        rechain(conn, onto.stream_no, store.chain_key)
    error = verify_fails(store)
    assert f"stream {onto.stream_id}" in str(error) and "version 2" in str(error) and "does not open" in str(error)
    assert error.position == moved.position
    read_fails(store, CY)
    assert read_events(store, BOB) == [f"{BOB}-1"]


def test_two_chunks_given_one_position_are_detected(store: Store) -> None:
    """Positions are not a unique key on PostgreSQL (the log is partitioned by stream) and are
    neither chained nor sealed: verify checks that no chunk starts at or inside the one before it."""
    first, other = store.row(ANN, 1), store.row(BOB, 1)
    with attacker(store) as conn:
        conn.execute("UPDATE chunks SET position = %s WHERE position = %s", (first.position, other.position))
    assert "overlap the positions of the chunk before them" in str(verify_fails(store))


# -- (d) rows deleted ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("person", "version", "keys_too", "says"),
    [
        (ANN, 2, True, "expected version 2: a version is missing"),
        (ANN, 3, True, "ends at version 2, its head says 3"),
        (CY, 1, True, "has a head at version 1 but no events"),
        (CY, 1, False, "the log's key set holds 8 keys for 7 events"),  # its key left behind
        (ERASED, 1, True, "expected version 1: a version is missing"),
    ],
    ids=["middle", "last", "only", "only-key-kept", "erased-first"],
)
def test_a_deleted_row_is_detected(store: Store, person: str, version: int, keys_too: bool, says: str) -> None:
    """The chunk holding the event is deleted, and (as a careful attacker would) its key from the key set."""
    gone = store.row(person, version)
    with attacker(store) as conn:
        assert conn.execute("DELETE FROM chunks WHERE position = %s", (gone.position,)).rowcount == 1
        if keys_too:
            assert conn.execute("DELETE FROM event_keys WHERE event_key = %s", (gone.keys,)).rowcount == 1
    error = verify_fails(store)
    if keys_too:
        assert f"stream {gone.stream_id}" in str(error)
    assert says in str(error)
    if "is missing" in says:  # the next event of the stream is named
        assert_names(error, store.row(person, version + 1), says)
    intact_people_still_read(store, person)


@pytest.mark.parametrize("keys_too", [False, True], ids=["keys-kept", "keys-deleted"])
def test_a_truncated_partition_is_detected(store: Store, keys_too: bool) -> None:
    target = store.row(ANN, 1)
    with attacker(store) as conn:
        partition = conn.execute("SELECT tableoid::regclass::text FROM chunks WHERE position = %s",
                                 (target.position,)).fetchone()[0]
        gone = {no for (no,) in conn.execute(f"SELECT DISTINCT stream_no FROM {partition}")}  # a name it gave
        if keys_too:  # the partition's chunks' keys (one each here) go first, so the key set agrees with the log
            conn.execute(f"DELETE FROM event_keys WHERE event_key IN (SELECT keys FROM {partition})")  # type: ignore[arg-type]
        conn.execute(f"TRUNCATE {partition}")  # type: ignore[arg-type]
    assert target.stream_no in gone
    error = verify_fails(store)
    if keys_too:
        assert "but no events" in str(error)
        assert any(f"stream {r.stream_id} " in str(error) for r in store.rows if r.stream_no in gone)
    else:
        assert "keys were added or removed" in str(error)


def test_a_forged_row_appended_without_moving_the_head_is_detected(store: Store) -> None:
    last = store.row(ANN, 3)
    key = secrets.token_bytes(16)
    with psycopg.connect(store.url, autocommit=True) as conn:  # the triggers allow this INSERT: no bypass needed
        conn.execute(
            f"INSERT INTO chunks ({CHUNK}) SELECT (SELECT max(position) + 1 FROM chunks), stream_no, 4, 4,"
            " recorded_at, types, %s, payload, hash FROM chunks WHERE position = %s", (key, last.position))
        conn.execute("INSERT INTO event_keys (generation, event_key) VALUES (0, %s)", (key,))  # the key set agrees
    error = verify_fails(store)
    assert f"stream {last.stream_id}" in str(error) and "version 4" in str(error)
    assert "hash chain broken" in str(error)


# -- (e) the command line -----------------------------------------------------------------------
def run_verify(store: Store) -> tuple[int, str, str]:
    runner = CliRunner(env={"PERSONA_DATA": None, "PERSONA_KEY_FILE": None, "PERSONA_MASTER_KEY": None,
                            "PERSONA_PEPPER": None, "PERSONA_SIGNING_KEY": None, "PERSONA_DATABASE_URL": store.url})
    result = runner.invoke(cli, ["--data", str(store.settings.data_dir), "verify"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("damage", ["clean", "update", "delete"])
def test_cli_verify_on_postgresql(store: Store, damage: str) -> None:
    target = store.row(ANN, 2)
    named = target
    with attacker(store) as conn:
        if damage == "update":
            conn.execute("UPDATE chunks SET payload = %s WHERE position = %s",
                         (target.payload[:20] + bytes([target.payload[20] ^ 1]) + target.payload[21:], target.position))
        elif damage == "delete":
            conn.execute("DELETE FROM chunks WHERE position = %s", (target.position,))
            named = store.row(ANN, 3)
    code, out, err = run_verify(store)
    if damage == "clean":
        assert code == 0, err
        assert f"ok: {sum(EVENTS.values())} events in {len(EVENTS)} streams verified" in out
        return
    assert code == 2
    assert "TAMPERED" in err and "ok:" not in out and "Traceback" not in out + err
    assert where(named) in err


# -- (f) outside the log: the triggers, and the rows of other tables (their keyed tags) -----------------
@pytest.mark.parametrize(("sql", "says"), [
    ("ALTER TABLE audit DISABLE TRIGGER audit_append_only", "trigger 'audit_append_only' is disabled"),
    ("DROP TRIGGER tombstones_append_only ON tombstones", "trigger 'tombstones_append_only' is missing"),
    ("UPDATE tombstones SET erased_at = erased_at + 1", "table tombstones do not match their integrity tag"),
    ("UPDATE links SET namespace = 'phone'", "table links do not match their integrity tag"),
    ("UPDATE meta SET value = value || ' ' WHERE key = 'created_at'", "table meta do not match their integrity tag"),
    ("UPDATE streams SET created_at = created_at - 1", "table streams do not match their integrity tag"),
])
def test_an_altered_trigger_or_row_outside_the_log_is_detected(store: Store, sql: str, says: str) -> None:
    with attacker(store) as conn:
        conn.execute(sql)  # type: ignore[arg-type]
    assert says in str(verify_fails(store))
