"""Snapshots, catch-up, the profile index and rebuilds, on real files."""

from __future__ import annotations

import dataclasses
import io
import random
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona import Persona, Settings
from persona.erasure import erase_subject
from persona.errors import ErasedError, UnknownProjectionError
from persona.events import validate
from persona.ingest import ingest_jsonl
from persona.profiles import profile_view
from persona.projections import ATTRIBUTES, FEATURES, BehaviorFeatures, replay
from persona.projector import Projector, _aad, rebuild
from tests.conftest import NOW, event, jsonl, record, store_bytes

PEOPLE = [f"p{i}@example.com" for i in range(12)]


def history(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        who = rng.choice(PEOPLE)
        day = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
        kind = rng.choice(["page_viewed", "order_placed", "profile_updated", "product_viewed"])
        data: dict[str, Any] = {
            "page_viewed": {"url": f"https://x.example/{i}", "category": rng.choice(["a", "b"]), "session_id": "s"},
            "order_placed": {"order_id": f"o{i}", "amount": f"{rng.randint(1, 99)}.00", "currency": "EUR",
                             "items": [{"sku": f"k{rng.randint(1, 5)}", "category": "a"}]},
            "profile_updated": {"city": rng.choice(["X", "Y", "Z"]), "age": rng.randint(20, 60)},
            "product_viewed": {"sku": f"k{rng.randint(1, 5)}", "category": "b"},
        }[kind]
        out.append(record(who, kind, data, occurred_at=day, event_id=f"h{i}",
                          source=rng.choice(["crm", "shop", "web"])))
    return out


def ingest(persona: Persona, records: list[dict[str, Any]], batch: int) -> None:
    for start in range(0, len(records), batch):
        ingest_jsonl(persona, io.BytesIO(jsonl(*records[start : start + batch])), origin="f")


def dumps(persona: Persona, pid: str) -> dict[str, bytes]:
    events = persona.log.read(pid)
    return {p.name: orjson.dumps(p.dump(replay(p, events)), option=orjson.OPT_SORT_KEYS) for p in (ATTRIBUTES,
                                                                                                   FEATURES)}


def snapshot_plaintexts(persona: Persona) -> dict[tuple[str, str], tuple[int, bytes]]:
    out = {}
    for pid in persona.recorder.stream_ids():
        head = persona.recorder.heads([pid])[pid]
        if head.wrapped is None:
            continue
        sealer = persona.log.sealer(pid, head)
        for name, (pv, sv, payload) in persona.recorder.snapshots_of(pid).items():
            out[(pid, name)] = (sv, sealer.open(payload, _aad(pid, name, pv, sv)))
    return out


def test_snapshot_plus_catch_up_equals_full_replay(persona: Persona) -> None:
    persona.settings = dataclasses.replace(persona.settings, snapshot_every=5)
    ingest(persona, history(240), batch=7)  # many small ingests: a snapshot every 5 events of a stream
    projector = Projector(persona)
    assert any(persona.recorder.snapshots_of(pid) for pid in persona.recorder.stream_ids())
    for pid in persona.recorder.stream_ids():
        current = Projector(persona).current(pid)  # a fresh projector: from the stored snapshot
        assert current.version == persona.log.info(pid).version
        for p in (ATTRIBUTES, FEATURES):
            assert orjson.dumps(p.dump(current.states[p.name]), option=orjson.OPT_SORT_KEYS) == dumps(
                persona, pid)[p.name]
        assert projector.current(pid).version == current.version


def test_current_many_equals_current_cold_warm_and_after_new_events(persona: Persona) -> None:
    persona.settings = dataclasses.replace(persona.settings, snapshot_every=5)
    records = history(240)
    ingest(persona, records[:200], batch=9)  # snapshots at every 5 events of a stream, events after them
    ids = sorted(persona.recorder.stream_ids())
    erased = persona.log.profile_for("email", PEOPLE[0])
    erase_subject(persona, "email", PEOPLE[0])

    def states(current: Any) -> dict[str, bytes]:
        return {p.name: orjson.dumps(p.dump(current.states[p.name]), option=orjson.OPT_SORT_KEYS)
                for p in (ATTRIBUTES, FEATURES)}

    def expected() -> dict[str, tuple[int, dict[str, bytes]]]:
        out = {}
        for pid in ids:
            try:
                current = Projector(persona).current(pid)
            except ErasedError:
                continue
            out[pid] = (current.version, states(current))
        return out

    projector = Projector(persona)
    warm = next(pid for pid in ids if persona.recorder.heads([pid])[pid].wrapped is not None)
    projector.current(warm)  # one profile already cached (warm), the rest cold
    many = projector.current_many([*ids, "prf_unknown"])
    assert {pid: (c.version, states(c)) for pid, c in many.items()} == expected()
    assert len(many) == len(ids) - 1 and erased not in many  # the erased and the unknown are left out
    ingest(persona, records[200:], batch=40)  # new events after what the projector holds
    again = projector.current_many(ids)
    assert {pid: (c.version, states(c)) for pid, c in again.items()} == expected()


def test_snapshots_are_sealed_and_erasure_removes_them_with_the_index(persona: Persona) -> None:
    ingest(persona, [record("ann@example.com", data={"url": "https://secret.example/only-ann", "category":
                                                      "secret-cat"}, event_id=f"a{i}") for i in range(3)], batch=3)
    pid = persona.log.profile_for("email", "ann@example.com")
    assert pid is not None
    Projector(persona).refresh([pid], force_snapshots=True)
    assert persona.recorder.snapshots_of(pid) and persona.recorder.index_rows()
    persona.recorder.checkpoint()
    before = store_bytes(persona)
    assert b"only-ann" not in before  # sealed in the snapshot as in the log
    assert b"secret-cat" in before  # the index holds feature values in clear, for queries across profiles
    receipt = erase_subject(persona, "email", "ann@example.com").receipt["receipt"]
    assert receipt["counts"]["derived_rows"] == 3  # two snapshots and the index row
    assert persona.recorder.snapshots_of(pid) == {} and persona.recorder.index_rows() == []
    persona.recorder.checkpoint()  # on PostgreSQL the tables are rewritten (`persona purge --full`)
    assert b"secret-cat" not in store_bytes(persona)


def test_a_projection_version_bump_ignores_its_old_snapshots(persona: Persona) -> None:
    ingest(persona, history(60), batch=60)
    pid = next(iter(persona.recorder.stream_ids()))
    Projector(persona).refresh([pid], force_snapshots=True)

    class Bumped(BehaviorFeatures):
        version = FEATURES.version + 1

        def load(self, dumped: Any) -> Any:
            raise AssertionError("a snapshot of another version must not be loaded")

    bumped = Bumped()
    current = Projector(persona, projections=(ATTRIBUTES, bumped)).current(pid)
    assert current.snapshot_versions == {"attributes": current.version, "features": 0}
    assert bumped.dump(current.states["features"]) == FEATURES.dump(replay(FEATURES, persona.log.read(pid)))


def test_ingest_keeps_the_index_current_and_rebuild_reproduces_it_byte_for_byte(persona: Persona) -> None:
    ingest(persona, history(300, seed=9), batch=11)
    erase_subject(persona, "email", PEOPLE[0])
    incremental_index = [row[:3] for row in persona.recorder.index_rows()]  # (id, version, doc)
    live = [pid for pid in persona.recorder.stream_ids() if persona.recorder.tombstone(pid) is None]
    assert sorted(r[0] for r in incremental_index) == sorted(live)
    assert {r[0]: r[1] for r in incremental_index} == {pid: persona.log.info(pid).version for pid in live}
    Projector(persona).refresh(live, force_snapshots=True)
    incremental = snapshot_plaintexts(persona)

    assert rebuild(persona, workers=2, chunk=3) == len(live)  # several worker processes
    assert [row[:3] for row in persona.recorder.index_rows()] == incremental_index
    assert snapshot_plaintexts(persona) == incremental

    assert rebuild(persona, projection="features", workers=1) == len(live)
    assert [row[:3] for row in persona.recorder.index_rows()] == incremental_index
    assert snapshot_plaintexts(persona) == incremental
    with pytest.raises(UnknownProjectionError):
        rebuild(persona, projection="nope")


def test_the_index_document_shows_values_without_identifiers(persona: Persona) -> None:
    ingest(persona, [record("bo@example.com", "profile_updated", {"city": "Oslo", "gender": "male"},
                            source="crm", event_id="b1"),
                     record("bo@example.com", "order_placed", {"order_id": "o", "amount": "5", "currency": "EUR"},
                            event_id="b2")], batch=2)
    (_, version, doc, *_), = persona.recorder.index_rows()
    parsed = orjson.loads(doc)
    assert version == 2 and parsed["attributes"]["city"] == "Oslo" and parsed["features"]["frequency"] == 1
    assert parsed["as_of"] == "2026-05-01T02:00:00+00:00"  # the latest event's instant, not the wall clock
    assert "bo@example.com" not in doc


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.integers(2, 9))
def test_any_order_any_batching_any_snapshot_cadence_gives_the_same_profiles(seed: int, batch: int,
                                                                            every: int) -> None:
    """Two stores fed the same events in different orders and batches, one snapshotting
    often: the index documents and the caught-up states are equal, person by person."""
    records = history(60, seed=seed)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (rows, size, cadence) in enumerate([(records, 60, 100), (shuffled, batch, every)]):
            settings = dataclasses.replace(Settings.load(Path(tmp) / str(n), env={}), snapshot_every=cadence)
            with Persona.init(settings) as p:
                ingest(p, rows, batch=size)
                by_person = {}
                for email in PEOPLE:
                    pid = p.log.profile_for("email", email)
                    if pid is None:
                        continue
                    index = dict((r[0], r[2]) for r in p.recorder.index_rows())
                    current = Projector(p).current(pid)  # from this store's snapshots
                    by_person[email] = (index[pid], {k: FEATURES.dump(v) if k == "features" else ATTRIBUTES.dump(v)
                                                     for k, v in current.states.items()})
                docs.append(by_person)
    assert docs[0] == docs[1]


def test_a_full_cache_drops_the_states_used_longest_ago(persona: Persona) -> None:
    ingest_jsonl(persona, jsonl(*(record(f"p{n}@example.com", event_id=f"c{n}") for n in range(8))).splitlines(),
                 origin="t")
    ids = [persona.log.profile_for("email", f"p{n}@example.com") or "" for n in range(8)]
    projector = Projector(persona, cache_limit=4)
    for pid in ids[:4]:
        projector.current(pid)
    projector.current(ids[0])  # used again: now the most recent
    for pid in ids[4:6]:
        projector.current(pid)
    kept = set(projector._cache)
    assert ids[0] in kept and ids[5] in kept and ids[1] not in kept and len(kept) <= 4
    for pid in ids:  # whatever was dropped is loaded again, the same
        assert projector.current(pid).version == 1


def test_a_writers_projector_snapshots_what_it_drops_and_reads_it_back_the_same(persona: Persona) -> None:
    """An ingest's projector (keep_dropped) seals a snapshot of each state it drops for room that
    is ahead of its snapshots (never of a profile erased meanwhile), so that reading it back opens
    one snapshot instead of replaying the log; a reader's projector writes nothing."""
    records = history(240)
    ingest(persona, records[:120], batch=120)
    erased = persona.log.profile_for("email", PEOPLE[0])
    ids = [erased, *sorted(set(persona.recorder.stream_ids()) - {erased})]  # cached first: dropped first
    reader, writer = Projector(persona), Projector(persona, keep_dropped=True)
    for projector in (reader, writer):
        for pid in ids:
            projector.current(pid)
    appended = persona.log.append([validate(r, now=NOW, max_bytes=64 * 1024) for r in records[120:]], keep=True)
    assert set(appended.streams) == set(ids)
    for projector in (reader, writer):
        projector.advance(appended.recorded)  # every state now ahead of its snapshots
    erase_subject(persona, "email", PEOPLE[0])
    before = snapshot_plaintexts(persona)
    assert reader.shrink() == len(ids) // 2
    assert snapshot_plaintexts(persona) == before  # a reader's projector never writes
    held = {pid: (c.version, {p.name: orjson.dumps(p.dump(c.states[p.name]), option=orjson.OPT_SORT_KEYS)
                              for p in (ATTRIBUTES, FEATURES)}) for pid, c in writer._cache.items()}
    dropped = list(writer._cache)[: len(ids) // 2]
    assert writer.shrink() == len(dropped) and not set(dropped) & set(writer._cache)
    after = snapshot_plaintexts(persona)
    assert not any(pid == erased for pid, _ in after)
    for pid in dropped[1:]:
        version, states = held[pid]
        assert version == persona.log.info(pid).version
        for p in (ATTRIBUTES, FEATURES):
            assert after[(pid, p.name)] == (version, states[p.name])  # sealed at the version it had reached
        assert dumps(persona, pid) == states  # and what replaying the whole log gives
    reads: list[int] = []
    original = persona.log.read

    def read(pid: str, after_version: int = 0) -> Any:
        reads.append(after_version)
        return original(pid, after_version=after_version)

    persona.log.read = read  # type: ignore[method-assign]
    fresh = Projector(persona)
    for pid in dropped[1:]:
        assert fresh.stream_current(pid).version == held[pid][0]
    assert reads == [held[pid][0] for pid in dropped[1:]]  # from the snapshot on: nothing left to replay


@pytest.mark.sqlite_only  # PostgreSQL's pool runs threads, and a process with threads never forks
def test_index_rows_computed_half_in_a_forked_child_are_the_same(persona: Persona,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import persona.projector as projector_module

    ingest_jsonl(persona, jsonl(*history(300)).splitlines(), origin="t")
    pids = list(persona.recorder.stream_ids())
    assert len(pids) > 4
    Projector(persona).refresh(pids)
    alone = persona.recorder.index_rows()
    monkeypatch.setattr(projector_module, "FORK_INDEX_ROWS", 2)
    forks = []
    real_fork = projector_module.os.fork
    monkeypatch.setattr(projector_module.os, "fork", lambda: forks.append(1) or real_fork())
    with persona.recorder.transaction():
        persona.recorder.clear_derived()
    Projector(persona).refresh(pids, parallel=True)
    assert forks == [1] and persona.recorder.index_rows() == alone


def test_a_failure_beside_the_forked_child_is_raised_not_a_deadlock(persona: Persona,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    ingest_jsonl(persona, jsonl(*history(2000)).splitlines(), origin="t")
    pids = list(persona.recorder.stream_ids())
    projector = Projector(persona)
    work = [projector.current(pid) for pid in pids]
    parent, real = os.getpid(), projector.index_doc

    def failing_here(current: Any) -> str:
        if os.getpid() == parent:
            raise MemoryError("the parent's half failed")
        return real(current)

    monkeypatch.setattr(projector, "index_doc", failing_here)
    with pytest.raises(MemoryError):  # the child, blocked writing its half, is released and reaped
        projector._index_rows_forked(work * 40)


def test_an_older_index_row_never_replaces_a_newer_one(persona: Persona) -> None:
    persona.log.append([event(event_id="v1")])
    pid = persona.log.profile_for("email", "alice@example.com")
    assert pid is not None
    stale = Projector(persona)
    old = stale.index_doc(stale.current(pid))
    persona.log.append([event(event_id="v2")])
    Projector(persona).refresh([pid])
    with persona.recorder.transaction():
        persona.recorder.put_index([(pid, 1, old)])
    assert persona.recorder.index_rows()[0][1] == 2


def test_undeclared_profile_fields_are_not_fused(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record("d@example.com", "profile_updated",
                                                  {"language": "en", "languages": {"b": 1, "a": 2}},
                                                  event_id="d1"))), origin="f")
    pid = persona.log.profile_for("email", "d@example.com")
    assert pid is not None
    assert profile_view(persona, pid)["attributes"]["languages"]["value"] == ["en"]
