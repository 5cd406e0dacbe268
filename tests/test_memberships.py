"""Live segments (persona.memberships): definitions, membership kept current by every index write,
sweeps for what the clock and RFM scoring move, rebuild, erasure, merges and verify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from persona import Persona, memberships
from persona.erasure import erase_subject
from persona.errors import PersonaError
from persona.ingest import ingest_jsonl
from persona.linking import link
from persona.projector import rebuild
from persona.rfm import compute_rfm, score
from persona.rules import RuleError
from persona.verify import verify
from tests.conftest import jsonl, raw_execute, record

NOW = datetime.now(UTC).replace(microsecond=0)


def at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def buy(email: str, eid: str, amount: float, days_ago: float) -> dict[str, Any]:
    return record(email, "order_placed", {"order_id": eid, "amount": str(amount), "currency": "EUR"},
                  occurred_at=at(days_ago), event_id=eid, source="shop")


def lives(email: str, country: str, eid: str) -> dict[str, Any]:
    return record(email, "profile_updated", {"country": country}, source="crm", occurred_at=at(400), event_id=eid)


def ingest(persona: Persona, *records: dict[str, Any]) -> None:
    report = ingest_jsonl(persona, jsonl(*records).splitlines(), origin="test")
    assert report.quarantined == 0


def pid(persona: Persona, email: str) -> str:
    found = persona.log.profile_for("email", email)
    assert found is not None
    return found


def members(persona: Persona, name: str) -> set[str]:
    return {p for segment, p, _ in persona.recorder.memberships() if segment == name}


def shop(persona: Persona) -> None:
    ingest(persona,
           buy("ann@example.com", "a1", 1500, 5), lives("ann@example.com", "FR", "ap"),
           buy("bob@example.com", "b1", 200, 5), lives("bob@example.com", "DE", "bp"),
           buy("cid@example.com", "c1", 3000, 90), lives("cid@example.com", "FR", "cp"))


def test_a_new_segment_finds_its_members_at_once(persona: Persona) -> None:
    shop(persona)
    made = memberships.add_segment(persona, "big-recent", "monetary > 1000 and recency_days < 30", by="test")
    assert made.clocked and not made.scored
    assert members(persona, "big-recent") == {pid(persona, "ann@example.com")}
    (m,) = memberships.memberships(persona, pid(persona, "ann@example.com"))
    assert m.segment == "big-recent" and abs((m.since - datetime.now(UTC)).total_seconds()) < 60
    assert memberships.sizes(persona) == {"big-recent": 1}
    assert [(c.segment, c.profile_id, c.entered) for c in memberships.changes(persona)] == [
        ("big-recent", pid(persona, "ann@example.com"), True)]
    verify(persona)


def test_an_event_moves_a_person_in_and_out_in_the_commit_that_indexes_it(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    memberships.add_segment(persona, "spenders", "monetary >= 1000", by="test")
    bob = pid(persona, "bob@example.com")
    assert bob not in members(persona, "spenders") | members(persona, "french")
    seen = persona.recorder.last_segment_change()
    ingest(persona, buy("bob@example.com", "b2", 900, 1), lives("bob@example.com", "FR", "bp2"))
    assert bob in members(persona, "spenders") and bob in members(persona, "french")
    got = [(c.segment, c.profile_id, c.entered) for c in memberships.changes(persona, after=seen)]
    assert sorted(got) == [("french", bob, True), ("spenders", bob, True)]
    since = dict((s, t) for s, p, t in persona.recorder.memberships([bob]))
    ingest(persona, lives("bob@example.com", "DE", "bp3"))  # a later claim: he moved back
    assert bob not in members(persona, "french") and bob in members(persona, "spenders")
    assert dict((s, t) for s, p, t in persona.recorder.memberships([bob]))["spenders"] == since["spenders"]
    *_, last = memberships.changes(persona)
    assert (last.segment, last.profile_id, last.entered) == ("french", bob, False)
    verify(persona)


def test_the_clock_moves_members_out_only_when_swept(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "recent", "recency_days < 30", by="test")
    memberships.add_segment(persona, "spenders", "monetary >= 1000", by="test")
    recent = {pid(persona, "ann@example.com"), pid(persona, "bob@example.com")}
    assert members(persona, "recent") == recent
    later = datetime.now(UTC) + timedelta(days=40)
    swept = memberships.sweep(persona, which=lambda s: s.clocked, now=later)
    assert (swept.entered, swept.left, swept.people) == (0, 2, 3)
    assert members(persona, "recent") == set()
    assert len(members(persona, "spenders")) == 2  # not clocked: untouched
    assert memberships.sweep(persona, now=later) == memberships.Swept(0, 0, 3)  # nothing left to change


def test_segments_on_rfm_scores_follow_each_scoring(persona: Persona) -> None:
    shop(persona)
    compute_rfm(persona)
    made = memberships.add_segment(persona, "top", "rfm.m >= 5", by="test")
    assert made.scored and not made.clocked
    cid = pid(persona, "cid@example.com")
    assert members(persona, "top") == {cid}
    ingest(persona, buy("bob@example.com", "b9", 9000, 1))
    compute_rfm(persona)  # bob now spends most: the scores move…
    assert members(persona, "top") == {cid}  # …and the segment with them once swept: a command's `score` does
    score(persona)
    assert members(persona, "top") == {pid(persona, "bob@example.com")}


def test_a_rebuild_reconciles_memberships_and_keeps_their_since(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    before = sorted(persona.recorder.memberships())
    raw_execute(persona, "DELETE FROM segment_members WHERE profile_id IN"
                         " (SELECT profile_id FROM profile_index ORDER BY profile_id LIMIT 1)")
    raw_execute(persona, "INSERT INTO segment_members (segment, profile_id, since) SELECT 'french', profile_id, 1"
                         " FROM profile_index WHERE profile_id NOT IN (SELECT profile_id FROM segment_members)")
    rebuild(persona, workers=1)
    after = sorted(persona.recorder.memberships())
    assert [(s, p) for s, p, _ in after] == [(s, p) for s, p, _ in before]
    kept = {(s, p): t for s, p, t in before} .items() & {(s, p): t for s, p, t in after}.items()
    assert len(kept) >= len(before) - 1  # only the one deleted by hand entered again, now
    verify(persona)


def test_erasure_takes_memberships_and_changes_with_it(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    ann = pid(persona, "ann@example.com")
    assert ann in members(persona, "french")
    erase_subject(persona, "email", "ann@example.com")
    assert persona.recorder.memberships([ann]) == []
    assert all(c.profile_id != ann for c in memberships.changes(persona))
    assert memberships.sizes(persona) == {"french": 1}
    verify(persona)


def test_a_merged_persons_other_stream_leaves_its_segments(persona: Persona) -> None:
    ingest(persona, lives("ann@example.com", "FR", "a"), lives("ann@work.example", "FR", "w"))
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    home, work = pid(persona, "ann@example.com"), pid(persona, "ann@work.example")
    assert members(persona, "french") == {home, work}
    person = link(persona, ("email", "ann@example.com"), ("email", "ann@work.example")).person
    assert members(persona, "french") == {person}  # one person now, under one id
    gone = ({home, work} - {person}).pop()
    assert [(c.profile_id, c.entered) for c in memberships.changes(persona)][-1] == (gone, False)
    verify(persona)


def test_a_sweep_never_reverts_what_a_refresh_wrote_meanwhile(persona: Persona, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    shop(persona)
    memberships.add_segment(persona, "spenders", "monetary >= 1000", by="test")
    stale = list(memberships._index(persona))  # what a sweep read, before bob's order below
    ingest(persona, buy("bob@example.com", "b2", 5000, 1))
    bob = pid(persona, "bob@example.com")
    assert bob in members(persona, "spenders")
    monkeypatch.setattr(memberships, "_index", lambda persona: iter(stale))
    assert memberships.sweep(persona).left == 0
    assert bob in members(persona, "spenders")


@pytest.mark.parametrize(("name", "rule", "message"), [
    ("Big", "frequency > 1", "lower-case letter"),
    ("", "frequency > 1", "1 to 64 characters"),
    ("x" * 65, "frequency > 1", "1 to 64 characters"),
    ("ok", "frequency >", "expected a number"),
    ("ok", "salary > 1", "unknown name"),
])
def test_bad_definitions_are_refused_with_what_is_wrong(persona: Persona, name: str, rule: str,
                                                        message: str) -> None:
    with pytest.raises((memberships.SegmentError, RuleError), match=message):
        memberships.add_segment(persona, name, rule, by="test")
    assert persona.recorder.segment_definitions() == []


def test_names_are_unique_removal_takes_everything_and_the_count_is_bounded(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    with pytest.raises(memberships.SegmentError, match="exists"):
        memberships.add_segment(persona, "french", "frequency > 0", by="test")
    assert memberships.segment(persona, "french").rule.text == 'country = "FR"'
    memberships.remove_segment(persona, "french")
    assert persona.recorder.memberships() == [] and memberships.changes(persona) == []
    with pytest.raises(memberships.SegmentError, match="no segment"):
        memberships.remove_segment(persona, "french")
    for i in range(memberships.MAX_SEGMENTS):
        persona.recorder.add_segment(f"s{i}", "frequency > 0", 0, "test")
    with pytest.raises(memberships.SegmentError, match="100 segments"):
        memberships.add_segment(persona, "one-more", "frequency > 0", by="test")


def test_a_membership_altered_on_disk_fails_verify(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    raw_execute(persona, "UPDATE segment_members SET since = since - 86400000000")
    with pytest.raises(PersonaError, match="segment_members"):
        verify(persona)


def test_changes_older_than_the_retention_are_pruned_by_a_sweep(persona: Persona) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    assert memberships.changes(persona)
    days = persona.settings.segment_changes_days
    memberships.sweep(persona, now=datetime.now(UTC) + timedelta(days=days, hours=1))
    assert memberships.changes(persona) == []


def test_follow_writes_nothing_for_a_row_the_index_did_not_take(persona: Persona) -> None:
    """A refresh that read a person before another process erased them (or indexed a newer
    version) hands follow() a row put_index refused: no membership may come of it."""
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    ann = pid(persona, "ann@example.com")
    (row,) = [r for r in persona.recorder.index_rows() if r[0] == ann]
    erase_subject(persona, "email", "ann@example.com")
    with persona.recorder.transaction():
        assert memberships.follow(persona, [(ann, row[1], row[2])]) == 0
    assert persona.recorder.memberships([ann]) == []
    cid = pid(persona, "cid@example.com")
    (old,) = [r for r in persona.recorder.index_rows() if r[0] == cid]
    ingest(persona, lives("cid@example.com", "DE", "cp2"))  # a newer row: cid leaves
    with persona.recorder.transaction():
        assert memberships.follow(persona, [(cid, old[1], old[2])]) == 0  # the older one changes nothing
    assert cid not in members(persona, "french")
    verify(persona)


def test_a_sweep_leaves_alone_a_segment_removed_or_redefined_while_it_read(persona: Persona,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shop(persona)
    memberships.add_segment(persona, "french", 'country = "FR"', by="test")
    reading = memberships._index

    def meanwhile(p: Persona) -> Any:
        yield from reading(p)
        memberships.remove_segment(p, "french")  # by another writer, as the sweep finishes reading
        p.recorder.add_segment("french", "frequency >= 100", 1, "test")

    raw_execute(persona, "DELETE FROM segment_members")  # so that the sweep has entries to write
    monkeypatch.setattr(memberships, "_index", meanwhile)
    assert memberships.sweep(persona) == memberships.Swept(0, 0, 3)
    assert persona.recorder.memberships() == []  # nobody is put in the new "french" by the old rule
