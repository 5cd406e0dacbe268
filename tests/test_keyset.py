"""The key set in generations (store format 3, persona.store.keyset): idempotency holds across
sealed generations, the database refuses what would break the key set, and verify finds what it
cannot refuse.

The tests seal generations of 8 keys (GENERATION_KEYS patched for the test's own fresh store):
the same code paths as a million, at a size a test can fill. Each test runs on both backends.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psycopg
import pytest

from persona import Persona, Settings
from persona.backup import backup, restore
from persona.erasure import erase_subject
from persona.errors import DuplicateEventError, StoreError, TamperError
from persona.events import Event
from persona.migrate import migrate
from persona.store import keyset
from persona.store.keyset import FILTER_BITS, KeyFilter
from persona.verify import verify
from tests.conftest import event, pg_schema, raw_execute

G = 8  # keys per generation in these tests
REFUSED = (sqlite3.DatabaseError, psycopg.Error)


@pytest.fixture(autouse=True)
def small_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyset, "GENERATION_KEYS", G)


def people_events(n: int, prefix: str = "e") -> list[Event]:
    """n events over 7 people, ids prefix0..prefix{n-1}."""
    return [event(f"p{i % 7}@example.com", event_id=f"{prefix}{i}") for i in range(n)]


def sealed(persona: Persona) -> list[tuple[int, int]]:
    return [(g, n) for g, n, _ in persona.recorder._all(persona.recorder.sql.key_filter_rows)]  # type: ignore[attr-defined]


def filled(persona: Persona, events: list[Event]) -> None:
    """Append in batches of varied sizes, some single events, so that appends cross generation ends."""
    at, sizes = 0, [1, 5, 13, 1, 40, 2, 9]
    while at < len(events):
        size = sizes[at % len(sizes)]
        assert persona.log.append(events[at : at + size]).appended == len(events[at : at + size])
        at += size


# -- the filter ---------------------------------------------------------------------------------
def test_a_key_filter_never_misses_a_key_and_rarely_admits_another() -> None:
    keys = [os.urandom(16) for _ in range(keyset.GENERATION_KEYS if keyset.GENERATION_KEYS > G else 1 << 20)]
    built = KeyFilter.build([b"".join(keys)])
    assert len(built.bits) == FILTER_BITS // 8
    assert built.maybe(keys) == list(range(len(keys)))  # numpy's path: every key of a full generation
    assert built.maybe(keys[:20]) == list(range(20))  # the scalar path
    fresh = [os.urandom(16) for _ in range(100_000)]
    admitted = len(built.maybe(fresh))
    assert admitted < 200, f"{admitted} of 100,000 other keys pass a full generation's filter (expected ≈70)"
    # the same keys in another order and other slices make the same bytes: verify rebuilds and compares
    shuffled = keys[::-1]
    assert KeyFilter.build([b"".join(shuffled[:1000]), b"".join(shuffled[1000:])]).bits == built.bits


def test_the_scalar_and_the_vectorised_probe_agree() -> None:
    members = [os.urandom(16) for _ in range(500)]
    built = KeyFilter.build([b"".join(members)])
    mixed = [key for pair in zip(members[:40], [os.urandom(16) for _ in range(40)], strict=True) for key in pair]
    whole = built.maybe(mixed)  # 80 keys: numpy
    pieces = [n + start for start in range(0, 80, 16) for n in built.maybe(mixed[start : start + 16])]
    assert whole == pieces and set(range(0, 80, 2)) <= set(whole)
    with pytest.raises(ValueError, match="key filter"):
        KeyFilter(b"\x00" * 10)


# -- appends across generations -------------------------------------------------------------------
def test_idempotency_holds_across_sealed_generations(persona: Persona) -> None:
    events = people_events(100)
    filled(persona, events)
    assert sealed(persona) == [(g, G) for g in range(100 // G)]  # every generation the log passed
    assert verify(persona).events == 100
    # the whole lot again (numpy's probe), then each event alone (the scalar probe): nothing appended
    again = persona.log.append(events)
    assert (again.appended, again.duplicates) == (0, 100)
    for one in events[::9]:
        assert persona.log.append([one]).appended == 0
    # new events mixed with old ones from every generation: only the new ones go in
    mixed = persona.log.append([*events[::5], *people_events(10, "new")])
    assert (mixed.appended, mixed.duplicates) == (10, 20)
    # an erased person's events stay known
    erase_subject(persona, "email", "p3@example.com")
    assert persona.log.append([e for e in events if e.subject.value == "p3@example.com"]).appended == 0
    assert persona.recorder.counts()["events"] == 110 and verify(persona).events == 110


def test_the_store_refuses_a_key_already_in_the_log_wherever_it_is(persona: Persona) -> None:
    """The recorder itself, below persona's own duplicate check: a key in a sealed generation (its
    filter, then exactly), in the open generation when the new one goes to the next (an append
    across a generation's end), and in the open one (the primary key)."""
    persona.log.append(people_events(2 * G + 6))  # generations 0 and 1 sealed, 6 keys in generation 2
    rec = persona.recorder
    chunks = list(rec.scan_chains())
    assert sealed(persona) == [(0, G), (1, G)]
    last = chunks[-1]
    head = rec.heads([last.stream_id])[last.stream_id]
    position_keys = {c.position + n: bytes(c.keys[16 * n : 16 * n + 16]) for c in chunks for n in range(c.size)}

    def append(keys: list[bytes]) -> None:  # a chunk of len(keys) events continuing `last`'s stream
        with rec.transaction():
            rec.insert_chunks([(head.no, head.version + 1, head.version + len(keys), last.recorded_at,
                                " ".join(["page_viewed"] * len(keys)), b"".join(keys), last.payload, last.hash)])

    new = [os.urandom(16) for _ in range(3)]
    for known in (position_keys[3], position_keys[G + 5], position_keys[2 * G + 2]):  # sealed, sealed, open
        with pytest.raises(DuplicateEventError):
            append([new[0], new[1], known])  # positions 2G+7..2G+9: the last goes to generation 3
        with pytest.raises(DuplicateEventError):
            append([known])  # position 2G+7: the open generation
    with pytest.raises(DuplicateEventError):
        append([new[0], new[1], new[0]])  # one new key twice, on both sides of a generation's end
    assert rec.counts()["events"] == 2 * G + 6  # every refusal rolled back whole
    append(new)  # and the same chunk with new keys goes in, crossing into generation 3
    assert sealed(persona) == [(0, G), (1, G), (2, G)]
    assert rec.keys_in(3, new) == {new[2]} and rec.existing_event_keys([*new, os.urandom(16)]) == set(new)


def test_a_rolled_back_seal_is_forgotten(persona: Persona) -> None:
    """A transaction that sealed a generation and rolled back leaves no filter behind, in the
    database or in the writer's memory (a stale filter would let a duplicate through)."""
    persona.log.append(people_events(G - 1))
    rec = persona.recorder
    with pytest.raises(RuntimeError), rec.transaction():
        persona.log.append(people_events(3, "rolled"))  # crosses the end of generation 0: sealed…
        assert len(sealed(persona)) == 1
        raise RuntimeError("…and rolled back")
    assert sealed(persona) == [] and rec._key_filters in (None, [])  # type: ignore[attr-defined]
    persona.log.append(people_events(3, "other"))  # generation 0 sealed again, over the keys it holds
    assert sealed(persona) == [(0, G)]
    assert persona.log.append(people_events(G - 1)).appended == 0 and verify(persona).events == G + 2


def test_copies_backups_and_restores_carry_the_generations(persona: Persona, tmp_path: Path) -> None:
    events = people_events(5 * G + 3)
    filled(persona, events)
    on_sqlite = persona.settings.database_url is None
    here = f"sqlite:{persona.settings.data_dir}" if on_sqlite else str(persona.settings.database_url)
    with pg_schema() as other:
        there = other if on_sqlite else f"sqlite:{tmp_path / 'there'}"
        report = migrate(persona.settings, here, there)
        assert report.events == 5 * G + 3
        copy_settings = Settings.load(persona.settings.data_dir if on_sqlite else tmp_path / "there",
                                      env={"PERSONA_DATABASE_URL": other if on_sqlite else "",
                                           "PERSONA_KEY_FILE": str(persona.settings.key_file)})
        with Persona.open(copy_settings) as copy:
            assert sealed(copy) == sealed(persona) == [(g, G) for g in range(5)]
            assert copy.log.append(events).appended == 0 and verify(copy).events == 5 * G + 3
    taken = backup(persona, tmp_path / "backup.db")
    assert taken.events == 5 * G + 3
    persona.log.append(people_events(G, "later"))  # one more generation sealed after the backup
    persona.close()
    restore(persona.settings, tmp_path / "backup.db")
    with Persona.open(persona.settings) as restored:
        assert sealed(restored) == [(g, G) for g in range(5)]
        assert restored.log.append(events).appended == 0 and verify(restored).events == 5 * G + 3


# -- what the database refuses, and what verify finds -----------------------------------------------
def test_the_database_refuses_what_would_break_the_key_set(persona: Persona) -> None:
    persona.log.append(people_events(2 * G + 1))
    on_sqlite = persona.settings.database_url is None

    def blob(data: bytes) -> str:
        return f"x'{data.hex()}'" if on_sqlite else f"'\\x{data.hex()}'::bytea"

    known = bytes(next(persona.recorder.scan_chains()).keys[:16])
    assert persona.recorder.keys_in(0, [known]) == {known}
    zeros = f"zeroblob({FILTER_BITS // 8})" if on_sqlite else f"decode(repeat('00', {FILTER_BITS // 8}), 'hex')"
    for statement in (
        f"INSERT INTO event_keys (generation, event_key) VALUES (1, {blob(os.urandom(16))})",  # a sealed one
        f"INSERT INTO event_keys (generation, event_key) VALUES (0, {blob(known)})",
        f"INSERT INTO event_keys (generation, event_key) VALUES (2, {blob(os.urandom(17))})",  # not a key
        "UPDATE event_keys SET generation = 5",
        "DELETE FROM event_keys WHERE generation = 2",
        "UPDATE key_filters SET keys = keys",
        "DELETE FROM key_filters WHERE generation = 1",
        f"INSERT INTO key_filters (generation, keys, bits) VALUES (3, 0, {zeros})",  # out of order
        f"INSERT INTO key_filters (generation, keys, bits) VALUES (2, 0, {zeros})",  # not its count (1 key)
        f"INSERT INTO key_filters (generation, keys, bits) VALUES (2, 1, {blob(b'0')})",  # not a filter
    ):
        with pytest.raises(REFUSED):
            raw_execute(persona, statement)
    if not on_sqlite:
        for table in ("event_keys", "key_filters"):
            with pytest.raises(psycopg.Error):
                raw_execute(persona, f"TRUNCATE {table}")
    assert sealed(persona) == [(0, G), (1, G)] and verify(persona).events == 2 * G + 1


def lift(persona: Persona, table: str) -> None:
    """Take away a table's append-only triggers, as someone with the database's own rights could."""
    if persona.settings.database_url is None:
        for trigger in (f"{table}_are_append_only_update", f"{table}_are_append_only_delete"):
            raw_execute(persona, f"DROP TRIGGER {trigger}")
    else:
        raw_execute(persona, f"ALTER TABLE {table} DISABLE TRIGGER USER")


@pytest.mark.parametrize("damage", ["filter bits", "filter dropped", "filter renumbered", "key added", "key moved"])
def test_verify_finds_a_key_set_altered_behind_the_stores_back(persona: Persona, damage: str) -> None:
    persona.log.append(people_events(3 * G + 2))
    assert verify(persona).events == 3 * G + 2
    if damage == "filter bits":
        lift(persona, "key_filters")
        raw_execute(persona, "UPDATE key_filters SET bits = " + (
            "zeroblob(length(bits))" if persona.settings.database_url is None
            else "decode(repeat('00', length(bits)), 'hex')") + " WHERE generation = 1")
        expected = "filter of generation 1"
    elif damage == "filter dropped":
        lift(persona, "key_filters")
        raw_execute(persona, "DELETE FROM key_filters WHERE generation = 2")
        expected = "sealed generations are 2 where the log has passed 3"
    elif damage == "filter renumbered":  # as many filters as generations passed, generation 0's now empty
        lift(persona, "key_filters")
        raw_execute(persona, "UPDATE key_filters SET generation = -1, keys = 0, bits = " + (
            "zeroblob(length(bits))" if persona.settings.database_url is None
            else "decode(repeat('00', length(bits)), 'hex')") + " WHERE generation = 0")
        expected = "sealed generations are 3 where the log has passed 3"
        with Persona.open(persona.settings) as writer, pytest.raises(StoreError, match="not numbered"):
            writer.log.append(people_events(3))  # a writer reading the filters anew takes no empty one for 0
    elif damage == "key added":  # into the open generation: the trigger allows it, verify does not
        raw_execute(persona, "INSERT INTO event_keys (generation, event_key) VALUES (3, " + (
            "randomblob(16))" if persona.settings.database_url is None else "decode(md5('x'), 'hex'))"))
        expected = "key set holds"
    else:  # one key moved from its generation to the open one
        lift(persona, "event_keys")
        raw_execute(persona, "UPDATE event_keys SET generation = 3 WHERE generation = 2 AND event_key = "
                             "(SELECT event_key FROM event_keys WHERE generation = 2 ORDER BY event_key LIMIT 1)")
        expected = "missing from the log's key set"
    with pytest.raises(TamperError, match=expected):
        verify(persona)
