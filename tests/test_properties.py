"""Property tests of the event log against real SQLite files.

Each hypothesis example builds its own data directory (function-scoped fixtures are
not reset between examples) and checks the store against a small in-memory model.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from persona import Persona, Settings
from persona.erasure import erase_profile, erase_subject
from persona.errors import (
    ConcurrencyError,
    DuplicateEventError,
    ErasedError,
    UnknownProfileError,
)
from persona.events import Event
from persona.store.rows import ChunkRow
from persona.verify import verify
from tests.conftest import NOW, event

PEOPLE = ("ann@example.com", "bob@example.org", "chen.wei@example.cn")
TABLES = ("chunks", "event_keys", "streams", "keys", "links", "tombstones")
SETTINGS = settings(max_examples=40, deadline=None)


@contextmanager
def fresh_store() -> Iterator[Settings]:
    """A new data directory with an initialised (and closed) store."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Settings.load(Path(tmp) / "data", env={})
        with Persona.init(config):
            pass
        yield config


def spelled(email: str, variant: int) -> str:
    """The same address as different sources might send it (all normalise alike)."""
    return (email, email.upper(), f"  {email.title()} ")[variant % 3]


def make_event(event_id: str, person: int, variant: int = 0, kind: str = "page_viewed") -> Event:
    data: dict[str, Any] = {"query": f"q {event_id}"} if kind == "searched" else {"url": f"https://x.example/{event_id}"}
    return event(spelled(PEOPLE[person], variant), kind, data, event_id=event_id)


def table_dump(persona: Persona) -> dict[str, list[tuple[Any, ...]]]:
    conn = persona.recorder.conn
    return {t: conn.execute(f"SELECT * FROM [{t}] ORDER BY 1").fetchall() for t in TABLES}


def stored_count(persona: Persona) -> int:
    return int(persona.recorder.conn.execute("SELECT count(*) FROM event_keys").fetchone()[0])  # a key per event


# -- the model ----------------------------------------------------------------------------------
@dataclass
class Model:
    live: dict[int, str] = field(default_factory=dict)  # person -> live profile id
    streams: dict[str, list[Event]] = field(default_factory=dict)  # profile id -> events in order
    owner: dict[str, str] = field(default_factory=dict)  # event id -> profile id (erased ones too)
    events: dict[str, Event] = field(default_factory=dict)  # event id -> the event first appended
    erased: dict[str, int] = field(default_factory=dict)  # profile id -> person
    fresh: int = 0

    def new_id(self) -> str:
        self.fresh += 1
        return f"ev-{self.fresh:04d}"

    def used_id(self, k: int) -> str | None:
        ids = list(self.events)
        return ids[k % len(ids)] if ids else None


def check_store(persona: Persona, model: Model) -> None:
    """Everything the model says must be exactly what the store holds."""
    log, rec = persona.log, persona.recorder
    for person, pid in model.live.items():
        assert log.profile_for("email", PEOPLE[person]) == pid
        opened = log.read(pid)
        expected = model.streams[pid]
        assert [e.event_id for e in opened] == [e.event_id for e in expected]
        assert [e.version for e in opened] == list(range(1, len(expected) + 1))
        assert [(e.type, e.data, e.occurred_at) for e in opened] == [
            (e.type, e.data, e.occurred_at) for e in expected
        ]
        positions = [e.position for e in opened]
        assert positions == sorted(set(positions))
        assert log.info(pid).version == len(expected)
    for person in set(range(len(PEOPLE))) - set(model.live):
        assert log.profile_for("email", PEOPLE[person]) is None
    for pid in model.erased:
        with pytest.raises(ErasedError):
            log.read(pid)
        with pytest.raises(ErasedError):
            log.info(pid)
        head = rec.heads([pid])[pid]
        assert head.wrapped is None and head.kek_version is None
        assert head.version == len(model.streams[pid])
        assert rec.links_of(pid) == []
        assert rec.tombstone(pid) is not None
    with pytest.raises(UnknownProfileError):
        log.read("prf_" + "c" * 24)
    counts = rec.counts()
    assert stored_count(persona) == counts["events"] == len(model.owner)
    assert counts["streams"] == len(model.streams)
    assert counts["keys"] == len(model.live)
    assert counts["links"] == len(model.live)
    assert counts["tombstones"] == len(model.erased)


def check_global_order(persona: Persona, model: Model) -> None:
    """read_all positions strictly increase; the raw log holds every event, erased or not."""
    rows, position = [], 0
    for _ in range(len(model.owner) + 2):
        page = persona.recorder.read_all(position, limit=4)
        if not page:
            break
        rows.extend(page)
        position = page[-1].last_position
    assert all(a.last_position < b.position for a, b in pairwise(rows))  # chunks in order, none twice
    assert all(a.last_position + 1 == b.position for a, b in pairwise(rows))  # and no position skipped
    assert sum(r.size for r in rows) == len(model.owner)
    opened = list(persona.log.iter_all(page=3))
    assert all(a.position < b.position for a, b in pairwise(opened))
    live = {(pid, e.event_id) for pid, evs in model.streams.items() if pid not in model.erased for e in evs}
    assert {(e.profile_id, e.event_id) for e in opened} == live
    assert len(opened) == len(live)


# -- operations ---------------------------------------------------------------------------------
handle = st.integers(0, 1)  # two connections on the same database: exercises cache invalidation
person = st.integers(0, len(PEOPLE) - 1)
batch_item = st.one_of(
    st.tuples(st.just("new"), person, st.integers(0, 2), st.sampled_from(["page_viewed", "searched"])),
    st.tuples(st.just("old"), st.integers(0, 1000)),  # re-send an event id already appended
    st.tuples(st.just("again"), st.integers(0, 1000)),  # repeat an earlier item of this batch
    st.tuples(st.just("clash"), st.integers(0, 1000)),  # other content under an id used earlier in the batch
)
append_op = st.tuples(st.just("append"), handle, st.lists(batch_item, min_size=1, max_size=6))
operation = st.one_of(
    append_op,
    append_op,
    append_op,
    st.tuples(st.just("append_to"), handle, person, st.sampled_from([0, 0, -1, 1]),
              st.integers(1, 3), st.booleans()),
    st.tuples(st.just("erase_subject"), handle, person, st.integers(0, 2)),
    st.tuples(st.just("erase_profile"), handle, person, st.sampled_from(["live", "erased", "unknown"])),
)


def do_append(persona: Persona, model: Model, items: Sequence[tuple[Any, ...]], step: int) -> None:
    batch: list[Event] = []
    for item in items:
        if item[0] == "new":
            batch.append(make_event(model.new_id(), item[1], item[2], item[3]))
        elif item[0] == "old":
            used = model.used_id(item[1])
            if used is not None:
                batch.append(model.events[used])
        elif item[0] == "again" and batch:
            batch.append(batch[item[1] % len(batch)])
        elif batch:
            first = batch[item[1] % len(batch)]
            batch.append(make_event(first.event_id, (item[1] + 1) % len(PEOPLE), kind="searched"))
    if not batch:
        return
    # What the model expects: first occurrence of a never-seen id is stored, the rest are duplicates.
    fresh: list[Event] = []
    seen: set[str] = set()
    for e in batch:
        if e.event_id not in model.owner and e.event_id not in seen:
            fresh.append(e)
        seen.add(e.event_id)
    before = dict(model.live)
    result = persona.log.append(batch, now=NOW + timedelta(seconds=step))
    assert result.appended == len(fresh)
    assert result.duplicates == len(batch) - len(fresh)
    touched: dict[str, int] = {}
    created = 0
    for e in fresh:
        who = PEOPLE.index(e.subject.value)
        if who not in model.live:
            pid = persona.log.profile_for("email", PEOPLE[who])
            assert pid is not None
            # A new profile is unrelated to anything before it, erased profiles included.
            assert pid not in model.streams
            model.live[who] = pid
            model.streams[pid] = []
            created += 1
        pid = model.live[who]
        model.streams[pid].append(e)
        model.owner[e.event_id] = pid
        model.events[e.event_id] = e
        touched[pid] = len(model.streams[pid])
    assert result.profiles_created == created
    assert result.streams == touched
    assert set(before.items()) <= set(model.live.items())


def do_append_to(persona: Persona, model: Model, who: int, delta: int, n: int, reuse: bool, step: int) -> None:
    pid = model.live.get(who)
    erased = [p for p, w in model.erased.items() if w == who]
    if pid is None and not erased:
        with pytest.raises(UnknownProfileError):
            persona.log.append_to("prf_" + "a" * 24, [make_event(model.new_id(), who)], expected_version=0)
        return
    target = pid if pid is not None else erased[-1]
    version = len(model.streams[target])
    batch = [make_event(model.new_id(), who, variant=i) for i in range(n)]
    used = model.used_id(step)
    if reuse and used is not None:
        batch.append(model.events[used])
    now = NOW + timedelta(seconds=step)
    if pid is None:
        with pytest.raises(ErasedError):
            persona.log.append_to(target, batch, expected_version=version + delta, now=now)
    elif delta:
        with pytest.raises(ConcurrencyError) as info:
            persona.log.append_to(target, batch, expected_version=version + delta, now=now)
        assert (info.value.expected, info.value.actual) == (version + delta, version)
    elif reuse and used is not None:
        with pytest.raises(DuplicateEventError):
            persona.log.append_to(target, batch, expected_version=version, now=now)
    else:
        assert persona.log.append_to(target, batch, expected_version=version, now=now) == version + n
        model.streams[target].extend(batch)
        for e in batch:
            model.owner[e.event_id] = target
            model.events[e.event_id] = e


def do_erase_subject(persona: Persona, model: Model, who: int, variant: int) -> None:
    pid = model.live.get(who)
    if pid is None:
        with pytest.raises(UnknownProfileError):
            erase_subject(persona, "email", spelled(PEOPLE[who], variant))
        return
    erasure = erase_subject(persona, "email", spelled(PEOPLE[who], variant))
    assert erasure.receipt["receipt"]["profile_id"] == pid
    assert erasure.receipt["receipt"]["counts"]["events"] == len(model.streams[pid])
    assert erasure.wal_truncated
    del model.live[who]
    model.erased[pid] = who


def do_erase_profile(persona: Persona, model: Model, who: int, which: str) -> None:
    pid = model.live.get(who)
    erased = [p for p, w in model.erased.items() if w == who]
    if which == "live" and pid is not None:
        erasure = erase_profile(persona, pid)
        assert erasure.receipt["receipt"]["counts"]["events"] == len(model.streams[pid])
        del model.live[who]
        model.erased[pid] = who
    elif which == "erased" and erased:
        with pytest.raises(ErasedError):
            erase_profile(persona, erased[0])
    else:
        with pytest.raises(UnknownProfileError):
            erase_profile(persona, "prf_" + "b" * 24)


# Two handles taking turns on one person, with erasures in between: the writer cache of each
# must notice the other's commits and its own erasures.
CROSS_HANDLE = [
    ("append", 0, [("new", 0, 0, "page_viewed")]),
    ("append", 1, [("new", 0, 1, "searched"), ("new", 1, 0, "page_viewed")]),
    ("append", 0, [("new", 0, 2, "page_viewed"), ("old", 0)]),
    ("erase_subject", 1, 0, 1),
    ("append", 0, [("new", 0, 0, "page_viewed"), ("old", 1)]),
    ("append_to", 0, 0, 1, 1, False),
    ("erase_profile", 0, 0, "live"),
    ("append_to", 1, 0, -1, 2, False),
    ("append", 1, [("new", 0, 1, "page_viewed"), ("again", 0), ("clash", 0)]),
    ("append", 0, [("new", 0, 0, "page_viewed"), ("new", 1, 0, "page_viewed")]),
    ("append_to", 1, 1, 0, 2, True),
    ("append_to", 1, 1, 0, 2, False),
    ("append", 0, [("new", 1, 0, "page_viewed")]),
]


@SETTINGS
@example(CROSS_HANDLE)
@given(st.lists(operation, min_size=8, max_size=30))
def test_interleaved_operations_match_the_model(ops: list[tuple[Any, ...]]) -> None:
    with fresh_store() as config, ExitStack() as stack:
        handles = [stack.enter_context(Persona.open(config)), stack.enter_context(Persona.open(config))]
        model = Model()
        for step, op in enumerate(ops):
            persona = handles[op[1]]
            if op[0] == "append":
                do_append(persona, model, op[2], step)
            elif op[0] == "append_to":
                do_append_to(persona, model, op[2], op[3], op[4], op[5], step)
            elif op[0] == "erase_subject":
                do_erase_subject(persona, model, op[2], op[3])
            else:
                do_erase_profile(persona, model, op[2], op[3])
            check_store(handles[step % 2], model)
        for persona in handles:
            check_store(persona, model)
            check_global_order(persona, model)
            report = verify(persona)
            assert report.events == len(model.owner)
            assert report.streams == len(model.streams)
            assert report.erased == len(model.erased)
            assert report.opened == sum(len(model.streams[p]) for p in model.live.values())


# -- batch atomicity ----------------------------------------------------------------------------
FAILURES = ("unserialisable_event", "fails_after_insert", "stale_version", "erased_profile", "duplicate_in_append_to")


@SETTINGS
@given(
    before=st.lists(st.tuples(person, st.integers(0, 2)), min_size=1, max_size=8),
    batch=st.lists(st.tuples(person, st.integers(0, 2)), min_size=1, max_size=6),
    failure=st.sampled_from(FAILURES),
    where=st.integers(0, 10),
    erase_first=st.booleans(),
)
def test_a_failing_batch_changes_nothing(
    before: list[tuple[int, int]], batch: list[tuple[int, int]], failure: str, where: int, erase_first: bool
) -> None:
    with fresh_store() as config, Persona.open(config) as persona:
        counter = iter(range(10_000))
        persona.log.append([make_event(f"pre-{next(counter)}", p, v) for p, v in before], now=NOW)
        erased_pid: str | None = None
        if erase_first or failure == "erased_profile":
            erased_pid = persona.log.profile_for("email", PEOPLE[before[0][0]])
            assert erased_pid is not None
            erase_profile(persona, erased_pid)
        # Fill the writer cache: the failure must not leave it pointing past what is stored.
        persona.log.append([make_event(f"warm-{next(counter)}", p, v) for p, v in before[:2]], now=NOW)
        snapshot = table_dump(persona)
        good = [make_event(f"new-{next(counter)}", p, v) for p, v in batch]
        at = where % (len(good) + 1)

        if failure == "unserialisable_event":
            poison = good[0]._replace(event_id="poison", data={"url": "x", "blob": object()})
            with pytest.raises(TypeError):
                persona.log.append([*good[:at], poison, *good[at:]], now=NOW)
        elif failure == "fails_after_insert":
            real_insert = persona.recorder.insert_chunks

            def insert_then_fail(rows: Sequence[ChunkRow]) -> int:
                real_insert(rows)
                assert stored_count(persona) == len(snapshot["event_keys"]) + len(good)  # really inserted
                raise sqlite3.OperationalError("disk I/O error (injected)")

            persona.recorder.insert_chunks = insert_then_fail  # type: ignore[method-assign]
            try:
                with pytest.raises(sqlite3.OperationalError, match="injected"):
                    persona.log.append(good, now=NOW)
            finally:
                del persona.recorder.insert_chunks
        else:
            # The warm-up append gave before[0]'s person a live profile (a new one if erased).
            live = persona.log.profile_for("email", PEOPLE[before[0][0]])
            target = erased_pid if failure == "erased_profile" else live
            assert target is not None and target != (None if failure == "erased_profile" else erased_pid)
            version = persona.recorder.heads([target])[target].version
            events = [e._replace(subject=good[0].subject) for e in good]
            if failure == "stale_version":
                with pytest.raises(ConcurrencyError):
                    persona.log.append_to(target, events, expected_version=version + (1 if at % 2 else -1), now=NOW)
            elif failure == "erased_profile":
                with pytest.raises(ErasedError):
                    persona.log.append_to(target, events, expected_version=version, now=NOW)
            else:
                stored = make_event("pre-0", 0)
                with pytest.raises(DuplicateEventError):
                    persona.log.append_to(target, [*events[:at], stored, *events[at:]],
                                          expected_version=version, now=NOW)

        assert table_dump(persona) == snapshot
        for p, _ in batch:
            pid = persona.log.profile_for("email", PEOPLE[p])
            if pid is not None:
                assert not {e.event_id for e in persona.log.read(pid)} & {e.event_id for e in good}

        # The same handle carries on as if the failed batch had never been sent.
        heads_before = {sid: h.version for sid, h in persona.recorder.heads(persona.recorder.stream_ids()).items()}
        result = persona.log.append(good, now=NOW)
        assert result.appended == len({e.event_id for e in good})
        for sid, version in result.streams.items():
            opened = persona.log.read(sid)
            assert [e.version for e in opened] == list(range(1, version + 1))
            assert version - heads_before.get(sid, 0) == sum(1 for e in good if persona.log.profile_for(
                "email", e.subject.value) == sid)
        verify(persona)


# -- arrival-order independence -----------------------------------------------------------------
@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, int, int]], list[list[list[int]]]]:
    """A set of events and two different ways of delivering them: order, batching and resends."""
    owners = draw(st.lists(st.tuples(person, st.integers(0, 2)), min_size=1, max_size=14))
    specs = [(f"ev-{i}", who, variant) for i, (who, variant) in enumerate(owners)]
    ways = []
    for _ in range(2):
        order = draw(st.permutations(range(len(specs))))
        resent = draw(st.lists(st.integers(0, len(specs) - 1), max_size=6))
        stream = list(order)
        for k in resent:
            stream.insert(draw(st.integers(0, len(stream))), k)
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=5)))
        bounds = [0, *[c for c in cuts if c < len(stream)], len(stream)]
        ways.append([stream[a:b] for a, b in pairwise(bounds) if b > a])
    return specs, ways


@SETTINGS
@given(deliveries())
def test_idempotency_does_not_depend_on_arrival_order(
    delivery: tuple[list[tuple[str, int, int]], list[list[list[int]]]],
) -> None:
    specs, ways = delivery
    events = [make_event(eid, who, variant) for eid, who, variant in specs]
    outcomes = []
    for batches in ways:
        with fresh_store() as config, Persona.open(config) as persona:
            appended = duplicates = 0
            for batch in batches:
                result = persona.log.append([events[i] for i in batch], now=NOW)
                appended += result.appended
                duplicates += result.duplicates
            assert appended == len(events)
            assert duplicates == sum(len(b) for b in batches) - len(events)
            assert stored_count(persona) == len(events)
            per_person: dict[str, tuple[int, frozenset[str]]] = {}
            for email in PEOPLE:
                pid = persona.log.profile_for("email", email)
                if pid is None:
                    continue
                opened = persona.log.read(pid)
                assert [e.version for e in opened] == list(range(1, len(opened) + 1))
                per_person[email] = (len(opened), frozenset(e.event_id for e in opened))
            verify(persona)
            outcomes.append(per_person)
    expected = {}
    for eid, who, _ in specs:
        expected.setdefault(PEOPLE[who], set()).add(eid)
    assert outcomes[0] == outcomes[1] == {k: (len(v), frozenset(v)) for k, v in expected.items()}


# -- another process committing between our COMMIT and the cache bookkeeping ------------------
class RightAfterCommit:
    """A connection stand-in that lets another writer commit the moment ours has committed."""

    def __init__(self, conn: sqlite3.Connection, then: Callable[[], None]) -> None:
        self._conn = conn
        self._then: Callable[[], None] | None = then

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if sql == "COMMIT" and self._then is not None:
            then, self._then = self._then, None
            then()
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("other", ["erases", "appends"])
def test_a_commit_landing_right_after_ours_is_not_missed_by_the_writer_cache(other: str) -> None:
    """The writer cache is trusted while PRAGMA data_version is unchanged. Another process may
    commit right after our COMMIT, before we note data_version: that commit must not be
    absorbed into "what we have seen". Simulated deterministically by running the other
    connection's write at exactly that point.
    """
    alice = PEOPLE[0]
    with fresh_store() as config, Persona.open(config) as mine, Persona.open(config) as theirs:
        mine.log.append([make_event("e1", 0)], now=NOW)
        first = mine.log.profile_for("email", alice)
        assert first is not None
        fired: list[bool] = []

        def race() -> None:
            fired.append(True)
            if other == "erases":
                erase_subject(theirs, "email", alice)
            else:
                theirs.log.append([make_event("theirs", 0)], now=NOW)

        real = mine.recorder.conn
        mine.recorder.conn = RightAfterCommit(real, race)  # type: ignore[assignment]
        try:
            mine.log.append([make_event("e2", 0)], now=NOW)
        finally:
            mine.recorder.conn = real
        assert fired == [True]

        mine.log.append([make_event("e3", 0)], now=NOW)  # the "appends" race makes this raise ConcurrencyError
        now_pid = mine.log.profile_for("email", alice)
        if other == "erases":
            # e3 must start a new profile, not go (sealed with the deleted key) into the erased stream.
            erased_version = theirs.recorder.heads([first])[first].version
            assert erased_version == 2, f"e3 was appended to the erased stream (now at version {erased_version})"
            assert now_pid is not None and now_pid != first
            assert [e.event_id for e in theirs.log.read(now_pid)] == ["e3"]
        else:
            assert now_pid == first
            assert [e.event_id for e in theirs.log.read(first)] == ["e1", "e2", "theirs", "e3"]
        verify(theirs)
