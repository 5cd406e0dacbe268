from __future__ import annotations

import sqlite3

import pytest

from persona import Persona
from persona.erasure import erase_profile
from persona.errors import ConcurrencyError, DuplicateEventError, ErasedError, UnknownProfileError
from persona.store import open_recorder
from tests.conftest import event, raw_execute, store_bytes


def test_round_trip(persona: Persona) -> None:
    sent = [
        event("alice@example.com", "page_viewed", {"url": "https://a.example/1", "duration_s": 3}, event_id="e1"),
        event("alice@example.com", "order_placed", {"order_id": "o1", "amount": "9.90", "currency": "EUR"},
              event_id="e2"),
        event("bob@example.com", event_id="e3"),
    ]
    result = persona.log.append(sent)
    assert (result.appended, result.duplicates, result.profiles_created) == (3, 0, 2)
    alice = persona.log.profile_for("email", "ALICE@example.com")
    assert alice is not None and alice.startswith("prf_")
    events = persona.log.read(alice)
    assert [(e.version, e.event_id, e.type) for e in events] == [(1, "e1", "page_viewed"), (2, "e2", "order_placed")]
    assert events[0].data == {"url": "https://a.example/1", "duration_s": 3}
    assert events[1].data["amount"] == "9.90"
    assert events[0].subject[0] == "email" and "@" not in events[0].subject[1]
    assert persona.log.info(alice).version == 2


def test_profile_ids_are_random_not_derived(persona: Persona, tmp_path: object) -> None:
    persona.log.append([event("carol@example.com", event_id="c1")])
    first = persona.log.profile_for("email", "carol@example.com")
    other = Persona.init(persona.settings.__class__.load(persona.settings.data_dir.parent / "other", env={}))
    try:
        other.log.append([event("carol@example.com", event_id="c1")])
        assert other.log.profile_for("email", "carol@example.com") != first
    finally:
        other.close()


def test_idempotent_on_event_id(persona: Persona) -> None:
    batch = [event(f"p{i}@example.com", event_id=f"id-{i}") for i in range(10)]
    assert persona.log.append(batch).appended == 10
    again = persona.log.append([*batch, event("p0@example.com", event_id="id-new")])
    assert (again.appended, again.duplicates) == (1, 10)
    within = persona.log.append([event(event_id="same"), event(event_id="same")])
    assert (within.appended, within.duplicates) == (1, 1)
    assert persona.recorder.counts()["events"] == 12


def test_optimistic_concurrency(persona: Persona) -> None:
    persona.log.append([event(event_id="a1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    assert persona.log.append_to(pid, [event(event_id="a2")], expected_version=1) == 2
    with pytest.raises(ConcurrencyError) as info:
        persona.log.append_to(pid, [event(event_id="a3")], expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert [e.event_id for e in persona.log.read(pid)] == ["a1", "a2"]
    with pytest.raises(DuplicateEventError):
        persona.log.append_to(pid, [event(event_id="a1")], expected_version=2)
    with pytest.raises(UnknownProfileError):
        persona.log.append_to("prf_nobody", [event(event_id="a4")], expected_version=0)


def test_conflict_between_two_connections(persona: Persona) -> None:
    """A second process appends in between: the writer cache must notice, and versions never collide."""
    persona.log.append([event(event_id="x1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    with Persona.open(persona.settings) as second:
        second.log.append([event(event_id="x2")])
        with pytest.raises(ConcurrencyError):
            persona.log.append_to(pid, [event(event_id="x3")], expected_version=1)
    persona.log.append([event(event_id="x4")])
    assert [(e.version, e.event_id) for e in persona.log.read(pid)] == [(1, "x1"), (2, "x2"), (3, "x4")]


def test_erasure_by_another_connection_is_seen_by_a_cached_writer(persona: Persona) -> None:
    persona.log.append([event(event_id="y1")])
    old = persona.log.profile_for("email", "alice@example.com")
    assert old is not None
    with Persona.open(persona.settings) as second:
        erase_profile(second, old)
    persona.log.append([event(event_id="y2")])
    new = persona.log.profile_for("email", "alice@example.com")
    assert new is not None and new != old
    assert [e.event_id for e in persona.log.read(new)] == ["y2"]
    with pytest.raises(ErasedError):
        persona.log.append_to(old, [event(event_id="y3")], expected_version=1)


def test_batch_is_atomic(persona: Persona, monkeypatch: pytest.MonkeyPatch) -> None:
    persona.log.append([event(event_id="before")])

    def fail(rows: object) -> None:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(persona.recorder, "set_heads", fail)
    with pytest.raises(sqlite3.OperationalError):
        persona.log.append([event("new@example.com", event_id="n1"), event(event_id="n2")])
    monkeypatch.undo()
    assert persona.recorder.counts()["events"] == 1
    assert persona.log.profile_for("email", "new@example.com") is None
    result = persona.log.append([event("new@example.com", event_id="n1"), event(event_id="n2")])
    assert result.appended == 2  # nothing of the failed batch stuck


def test_read_all_pages_through_the_global_log_and_skips_the_erased(persona: Persona) -> None:
    persona.log.append([event(f"u{i % 3}@example.com", event_id=f"g{i}") for i in range(10)])
    gone = persona.log.profile_for("email", "u0@example.com")
    assert gone is not None
    erase_profile(persona, gone)
    seen, position = [], 0
    while True:
        page, last = persona.log.read_all(position, limit=2)
        if last == position:
            break
        seen.extend(page)
        position = last
    # one batch: each person's events are sealed together, so the log holds them person by
    # person (in the order each first arrived), each person's in arrival order
    assert [e.event_id for e in seen] == ["g1", "g4", "g7", "g2", "g5", "g8"]
    positions = [e.position for e in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for n, e in enumerate(seen):  # from any position, a chunk's first, middle or last event
        assert [e.event_id for e in persona.log.iter_all(after_position=e.position)] == [
            e.event_id for e in seen[n + 1 :]]
        assert persona.log.read_all(e.position, limit=100)[0] == seen[n + 1 :]


def test_iter_all_hands_out_events_as_opened_while_its_consumer_erases(persona: Persona) -> None:
    """iter_all yields in the middle of a page: a consumer that erases someone (which forgets the
    cached keys) must not break the page under way, and sees none of that person's events after."""
    persona.log.append([event(f"u{i % 4}@example.com", event_id=f"g{i}") for i in range(12)])
    # the log: u0's g0 g4 g8, u1's g1 g5 g9, u2's g2 g6 g10, u3's g3 g7 g11 (a chunk each)
    later = [persona.log.profile_for("email", f"u{n}@example.com") for n in (2, 3)]
    seen = []
    for e in persona.log.iter_all(page=3):  # chunks of u0, u1, u2 in the first page, u3's in the next
        seen.append(e.event_id)
        if e.event_id == "g5":
            for pid in later:
                assert pid is not None
                erase_profile(persona, pid)  # u2's chunk is in the page under way, u3's in the next
    assert seen == ["g0", "g4", "g8", "g1", "g5", "g9"]
    assert [e.event_id for e in persona.log.iter_all(page=1)] == seen


def test_the_database_refuses_update_and_delete(persona: Persona) -> None:
    persona.log.append([event(event_id="t1"), event("bob@example.com", event_id="t2")])
    bob = persona.log.profile_for("email", "bob@example.com")
    assert bob is not None
    erase_profile(persona, bob)
    # straight to the database, past persona's code: the database itself refuses
    for statement in ("UPDATE chunks SET types = 'order_placed'", "DELETE FROM chunks", "DELETE FROM event_keys",
                      "UPDATE event_keys SET event_key = event_key", "DELETE FROM tombstones",
                      "UPDATE tombstones SET erased_at = 0"):
        with pytest.raises(Exception, match=r"persona: .*(append-only|final)"):
            raw_execute(persona, statement)
    assert persona.recorder.counts()["events"] == 2 and persona.recorder.tombstone(bob) is not None


def test_identity_linked_joins_a_new_identifier_to_the_profile(persona: Persona) -> None:
    persona.log.append([event(event_id="l0"), event(kind="identity_linked",
                       data={"other": {"namespace": "phone", "value": "13800138000"}}, event_id="l1")])
    alice = persona.log.profile_for("email", "alice@example.com")
    assert alice is not None
    assert persona.log.profile_for("phone", "+86 138 0013 8000") == alice
    persona.log.append([event("13800138000", namespace="phone", event_id="l2")])
    assert [e.event_id for e in persona.log.read(alice)] == ["l0", "l1", "l2"]
    assert sorted(ns for ns, _ in persona.log.info(alice).identities) == ["email", "phone"]


def test_no_raw_identifier_reaches_the_database(persona: Persona) -> None:
    persona.log.append([event("dora.unique@example.com", event_id="d1"),
                        event("13912345678", namespace="phone", event_id="d2"),
                        event("device-XYZ-123", namespace="device", event_id="d3")])
    persona.recorder.checkpoint()
    raw = store_bytes(persona)
    assert persona.log.hash_identifier("email", "dora.unique@example.com") in raw  # the search sees the store
    for needle in (b"dora.unique", b"13912345678", b"device-XYZ-123", b"shop.example/p/d1"):
        assert needle not in raw


def test_a_second_connection_opens_the_same_store(persona: Persona) -> None:
    persona.log.append([event(event_id="s1")])
    other = open_recorder(persona.settings)
    try:
        assert other.counts()["events"] == 1
    finally:
        other.close()


def test_kept_events_are_exactly_what_reads_back(persona: Persona) -> None:
    persona.log.append([event("z@example.com", event_id="z0")])
    result = persona.log.append(
        [event("z@example.com", event_id="z1"), event("y@example.com", "order_placed",
                                                      {"order_id": "o", "amount": "2.50", "currency": "EUR"},
                                                      event_id="y1"),
         event("z@example.com", "identity_linked", {"other": {"namespace": "cookie", "value": "ck"}},
               event_id="z2")],
        keep=True,
    )
    read_back = {e.event_id: e for e in persona.log.iter_all()}
    assert [read_back[e.event_id] for e in result.recorded] == result.recorded
    assert [e.version for e in result.recorded] == [2, 3, 1]  # in log order: z's chunk (z1, z2), then y's
    assert [e.position for e in result.recorded] == [2, 3, 4]


def test_event_ids_are_unique_per_source(persona: Persona) -> None:
    result = persona.log.append([event(event_id="o1", source="shop"), event(event_id="o1", source="crm")])
    assert (result.appended, result.duplicates) == (2, 0)
    again = persona.log.append([event(event_id="o1", source="shop")])
    assert (again.appended, again.duplicates) == (0, 1)
