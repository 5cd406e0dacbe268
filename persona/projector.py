"""Keeping projections current: sealed snapshots, catch-up, the profile index, full rebuilds.

Nothing here is authoritative: snapshots and the index are derived from the log and can
be dropped and rebuilt at any time (docs/design.md, invariant 6).
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from persona import identity, memberships
from persona.core import Persona
from persona.crypto import Sealer
from persona.engine import Engine, Local, Part, StoreAddress, active, tasks
from persona.errors import ErasedError, StoreConflictError, UnknownProfileError, UnknownProjectionError
from persona.eventlog import gc_paused, open_streams
from persona.events import RecordedEvent, from_micros, micros
from persona.projections import ATTRIBUTES, FEATURES, Projection
from persona.projections.profile import attribute_values
from persona.recommend import current as recommendations
from persona.rfm import compute_rfm
from persona.store.base import Head, Recorder

PROJECTIONS: tuple[Projection[Any], ...] = (ATTRIBUTES, FEATURES)
_AAD = b"persona-snapshot/1\x00"
_WRITE_BATCH = 500  # profiles per transaction
_ATTEMPTS = 4  # a refresh that PostgreSQL ended to break a wait in a circle is written again


def _withdrawn(current: Current, purpose: str = "personalization") -> bool:
    claim = current.states[ATTRIBUTES.name]["consent"].get(purpose)
    return claim is not None and claim[0] is False


def _aad(profile_id: str, name: str, projection_version: int, stream_version: int) -> bytes:
    return b"".join((_AAD, profile_id.encode(), b"\x00", name.encode(), b"\x00",
                     projection_version.to_bytes(4, "big"), stream_version.to_bytes(8, "big")))


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class Current:
    """A profile's projection states at its stream's head."""

    profile_id: str
    version: int
    states: dict[str, Any]
    snapshot_versions: dict[str, int]  # stream version each state was last snapshotted at (0: never)
    sealer: Sealer | None = None  # the profile's key, as checked by the last current()

    def last_instant(self) -> datetime | None:
        """When the latest event folded so far happened: the instant the index is computed for."""
        times = [micros(datetime.fromisoformat(claim[3]))
                 for held in self.states[ATTRIBUTES.name]["attributes"].values()
                 for claim in (held.values() if isinstance(held, dict) else [held])]
        times += [micros(datetime.fromisoformat(c[3])) for c in self.states[ATTRIBUTES.name]["consent"].values()]
        times += [fact[0] for fact in self.states[FEATURES.name]]
        return from_micros(max(times)) if times else None


def combine(projections: Sequence[Projection[Any]], person: identity.Person, parts: Sequence[Current]) -> Current:
    """A merged person's states: its streams' states folded together (version: their sum)."""
    states = {p.name: p.combine([part.states[p.name] for part in parts]) for p in projections}
    return Current(person.id, sum(part.version for part in parts), states, {p.name: 0 for p in projections})


def index_doc(projections: Sequence[Projection[Any]], current: Current) -> str:
    """The profile index row: every projection's view at the profile's latest event.

    Computed for that instant, not the wall clock, so that a rebuild reproduces it byte
    for byte; readers recompute time-dependent values (recency, stage) for their own now.
    """
    instant = current.last_instant()
    doc: dict[str, Any] = {"as_of": instant.isoformat() if instant else None}
    for p in projections:
        view = p.view(current.states[p.name], instant) if instant else {}
        doc[p.name] = attribute_values(view) if p.name == ATTRIBUTES.name else view
    return canonical(doc).decode()


def snapshot_rows(projections: Sequence[Projection[Any]], current: Current, sealer: Sealer,
                  every: int | None) -> list[tuple[Any, ...]]:
    """Sealed snapshots of the states `every` events or more ahead of their last (all: None)."""
    rows = []
    for p in projections:
        if every is None or current.version - current.snapshot_versions[p.name] >= every:
            aad = _aad(current.profile_id, p.name, p.version, current.version)
            payload = sealer.seal(canonical(p.dump(current.states[p.name])), aad, os.urandom(12))
            rows.append((current.profile_id, p.name, p.version, current.version, payload))
            current.snapshot_versions[p.name] = current.version
    return rows


def from_snapshots(rec: Recorder, projections: Sequence[Projection[Any]], heads: dict[str, Head],
                   sealers: dict[str, Sealer], fresh: str | None = None) -> dict[str, Current]:
    """These streams' states from their latest snapshots (a projection without one, or whose
    version moved, or the `fresh` one: from its start), not caught up: `version` is where the
    furthest snapshot stands."""
    snapshots = rec.snapshots_of_many(list(sealers))
    out = {}
    for profile_id, sealer in sealers.items():
        current, found = Current(profile_id, 0, {}, {}, sealer), snapshots.get(profile_id, {})
        version = heads[profile_id].version
        for p in projections:
            snap = found.get(p.name)
            if p.name != fresh and snap is not None and snap[0] == p.version and snap[1] <= version:
                plain = sealer.open(snap[2], _aad(profile_id, p.name, snap[0], snap[1]))
                current.states[p.name], current.snapshot_versions[p.name] = p.load(orjson.loads(plain)), snap[1]
            else:
                current.states[p.name], current.snapshot_versions[p.name] = p.initial(), 0
        current.version = max(current.snapshot_versions.values(), default=0)
        out[profile_id] = current
    return out


def catch_up(rec: Recorder, projections: Sequence[Projection[Any]], heads: dict[str, Head],
             out: dict[str, Current], since: dict[str, dict[str, int]]) -> None:
    """Fold into each state the events after the version its projections stand at (`since`),
    every stream's read in one pass."""
    after = {pid: min(since[pid].values(), default=0) for pid in out}
    wanted = [(heads[pid].no, after[pid]) for pid in out if heads[pid].version > after[pid]]
    sealers = {pid: current.sealer for pid, current in out.items() if current.sealer is not None}
    for event in open_streams(rec.read_after(wanted), sealers, after):
        current, at = out[event.profile_id], since[event.profile_id]
        for p in projections:
            if event.version > at[p.name]:
                current.states[p.name] = p.apply(current.states[p.name], event)
        current.version = max(current.version, event.version)


class Projector:
    """One per open store (and thread)."""

    def __init__(self, persona: Persona, projections: Sequence[Projection[Any]] = PROJECTIONS,
                 cache_limit: int = 20_000, keep_dropped: bool = False) -> None:
        self.persona = persona
        self.projections = tuple(projections)
        self.snapshot_every = persona.settings.snapshot_every
        # States already caught up, by profile. Always safe to reuse: only events after their
        # version are read next time, and the key is checked on every use (erased: dropped).
        self._cache: dict[str, Current] = {}
        self._cache_limit = cache_limit
        # an ingest's: a state dropped for room is snapshotted first when ahead of its snapshots
        # (read back from one snapshot, not by replaying what it had folded)
        self._keep_dropped = keep_dropped

    def _sealer(self, profile_id: str) -> tuple[int, Sealer]:
        rec = self.persona.recorder
        head = rec.heads([profile_id]).get(profile_id)
        if head is None:
            raise UnknownProfileError(f"no profile {profile_id}")
        if head.wrapped is None:
            raise ErasedError(profile_id)
        return head.version, self.persona.log.sealer(profile_id, head)

    def current(self, profile_id: str) -> Current:
        """The person's projection states now: the profile's own (from its latest snapshots,
        caught up), or, for a merged person, every stream's folded together. `profile_id`
        may be any stream of the person; the result carries the person's id."""
        person = identity.person_of(self.persona.recorder, profile_id)
        if not person.merged:
            return self.stream_current(profile_id)
        return self.combine(person, [self.stream_current(member) for member in person.members])

    def combine(self, person: identity.Person, parts: Sequence[Current]) -> Current:
        return combine(self.projections, person, parts)

    def stream_current(self, profile_id: str) -> Current:
        """One stream's latest snapshot of each projection, caught up with the events after it."""
        try:
            version, sealer = self._sealer(profile_id)
        except (ErasedError, UnknownProfileError):
            self._cache.pop(profile_id, None)
            raise
        cached = self._cache.pop(profile_id, None)
        if cached is not None and cached.version <= version:
            self._cache[profile_id] = cached  # the most recently used last: evicted last
            for event in self.persona.log.read(profile_id, after_version=cached.version):
                for p in self.projections:
                    cached.states[p.name] = p.apply(cached.states[p.name], event)
                cached.version = event.version
            cached.sealer = sealer
            return cached
        snapshots = self.persona.recorder.snapshots_of(profile_id)
        states: dict[str, Any] = {}
        since: dict[str, int] = {}
        for p in self.projections:
            snap = snapshots.get(p.name)
            if snap is not None and snap[0] == p.version and snap[1] <= version:  # a version bump ignores it
                plain = sealer.open(snap[2], _aad(profile_id, p.name, snap[0], snap[1]))
                states[p.name], since[p.name] = p.load(orjson.loads(plain)), snap[1]
            else:
                states[p.name], since[p.name] = p.initial(), 0
        current = Current(profile_id, 0, states, since, sealer)
        for event in self.persona.log.read(profile_id, after_version=min(since.values(), default=0)):
            for p in self.projections:
                if event.version > since[p.name]:
                    states[p.name] = p.apply(states[p.name], event)
            current.version = event.version
        current.version = max(current.version, *since.values())
        self._make_room(1)
        self._cache[profile_id] = current
        return current

    def current_many(self, profile_ids: Sequence[str]) -> dict[str, Current]:
        """`current()` of many profiles in a fixed number of queries (erased and unknown ones
        are left out), keyed by the ids asked for."""
        people = identity.persons(self.persona.recorder, profile_ids)
        streams = self._streams_current([m for person in people.values() for m in person.members])
        out = {}
        for pid, person in people.items():
            if not person.merged:
                if pid in streams:
                    out[pid] = streams[pid]
            elif all(m in streams for m in person.members):
                out[pid] = self.combine(person, [streams[m] for m in person.members])
        return out

    def _streams_current(self, profile_ids: Sequence[str]) -> dict[str, Current]:
        """`stream_current()` of many streams: cached states are caught up, the rest start from
        their snapshots, and every stream's missing events are read in one pass."""
        profile_ids = list(dict.fromkeys(profile_ids))
        rec, log = self.persona.recorder, self.persona.log
        heads = rec.heads(profile_ids)
        out: dict[str, Current] = {}
        sealers: dict[str, Sealer] = {}
        cold = []
        for profile_id in profile_ids:
            head = heads.get(profile_id)
            if head is None or head.wrapped is None:
                self._cache.pop(profile_id, None)
                continue
            sealer = sealers[profile_id] = log.sealer(profile_id, head)
            cached = self._cache.pop(profile_id, None)
            if cached is not None and cached.version <= head.version:
                self._cache[profile_id] = cached  # the most recently used last: evicted last
                cached.sealer = sealer
                out[profile_id] = cached
            else:
                cold.append(profile_id)
        since = {pid: {p.name: current.version for p in self.projections} for pid, current in out.items()}
        loaded = from_snapshots(rec, self.projections, heads, {pid: sealers[pid] for pid in cold})
        since.update({pid: dict(current.snapshot_versions) for pid, current in loaded.items()})
        out.update(loaded)
        out = {pid: out[pid] for pid in profile_ids if pid in out}
        catch_up(rec, self.projections, heads, out, since)
        self._make_room(len(cold))
        for profile_id in cold:
            self._cache[profile_id] = out[profile_id]
        return out

    def _make_room(self, incoming: int) -> None:
        """Drop the states loaded longest ago (and a quarter more, so this runs rarely) when
        `incoming` more would overflow the cache (snapshotted first, for a writer's projector)."""
        excess = len(self._cache) + incoming - self._cache_limit
        if excess > 0:
            self._drop(excess + self._cache_limit // 4)

    def shrink(self) -> int:
        """Drop the older half of the cached states, and keep the cache that small from now on
        (memory is short); how many were dropped (snapshotted first, for a writer's projector)."""
        dropped = self._drop(len(self._cache) // 2)
        self._cache_limit = max(1_000, min(self._cache_limit, len(self._cache)))
        return dropped

    def _drop(self, count: int) -> int:
        """Drop the `count` states loaded longest ago (a writer's projector snapshots them first)."""
        dropped = [self._cache.pop(pid) for pid in list(itertools.islice(self._cache, count))]
        if self._keep_dropped:
            self._snapshot(dropped)
        return len(dropped)

    def _snapshot(self, states: Sequence[Current]) -> None:
        """Seal a snapshot of each of these states that is ahead of its last one (in one
        transaction; never for a profile erased meanwhile: `put_snapshots` checks its key)."""
        behind = [c for c in states if any(c.version > at for at in c.snapshot_versions.values())]
        if not behind:
            return
        rec, log = self.persona.recorder, self.persona.log
        with rec.transaction(concurrent=True):  # never over a newer snapshot (put_snapshots): nothing to hold
            heads = rec.heads([c.profile_id for c in behind if c.sealer is None])
            rows = []
            for current in behind:
                sealer, head = current.sealer, heads.get(current.profile_id)
                if sealer is None and head is not None and head.wrapped is not None:
                    sealer = log.sealer(current.profile_id, head)
                if sealer is not None:
                    rows.extend(self.snapshot_rows(current, sealer, force=True))
            if rows:
                rec.put_snapshots(rows)

    def forget(self, profile_id: str) -> None:
        """Drop a profile's cached states (it was erased by another connection)."""
        self._cache.pop(profile_id, None)

    def clear(self) -> None:
        """Drop every cached state."""
        self._cache.clear()

    def advance(self, events: Iterable[RecordedEvent]) -> None:
        """Fold just-appended events into the cached states, without reading them back.

        A profile not in the cache is left for `current()` to load (snapshot + catch-up)."""
        for event in events:
            cached = self._cache.get(event.profile_id)
            if cached is None and event.version == 1:  # a new profile: nothing to load
                states = {p.name: p.initial() for p in self.projections}
                cached = self._cache[event.profile_id] = Current(
                    event.profile_id, 0, states, {p.name: 0 for p in self.projections})
            if cached is None or event.version != cached.version + 1:
                continue  # not cached, or a gap: current() reads what is missing
            for p in self.projections:
                cached.states[p.name] = p.apply(cached.states[p.name], event)
            cached.version = event.version
        self._make_room(0)

    def index_doc(self, current: Current) -> str:
        return index_doc(self.projections, current)

    def snapshot_rows(self, current: Current, sealer: Sealer, *, force: bool = False,
                      every: int | None = None) -> list[tuple[Any, ...]]:
        every = self.snapshot_every if every is None else min(every, self.snapshot_every)
        return snapshot_rows(self.projections, current, sealer, None if force else every)

    def refresh(self, profile_ids: Iterable[str], *, force_snapshots: bool = False,
                snapshot_every: int | None = None, parallel: bool = False) -> int:
        """Bring the index (one row per person) and, every N events (or `snapshot_every`, if
        fewer), each stream's snapshots of these profiles up to date. `parallel`: a process with
        no other thread computes half of many index rows in a forked child (persona.ingest's
        last refresh, when its reader process is done and a core is idle)."""
        snaps = []
        people = {p.id: p for p in identity.persons(self.persona.recorder, profile_ids).values()}
        streams = self._streams_current([member for person in people.values() for member in person.members])
        work: list[Current] = []
        for person in people.values():
            parts = [streams[member] for member in person.members if member in streams]
            if len(parts) < len(person.members):
                continue  # erased since: nothing of them may be written back
            for part in parts:
                assert part.sealer is not None
                snaps.extend(self.snapshot_rows(part, part.sealer, force=force_snapshots, every=snapshot_every))
            work.append(self.combine(person, parts) if person.merged else parts[0])
        if parallel and len(work) >= FORK_INDEX_ROWS and threading.active_count() == 1 and os.cpu_count() != 1:
            index = self._index_rows_forked(work)
        else:
            index = [(current.profile_id, current.version, self.index_doc(current)) for current in work]
        if index:
            for attempt in range(_ATTEMPTS):
                try:
                    index = self._write_refreshed(index, snaps, people, work)
                    break
                except StoreConflictError:  # ended to break a wait in a circle (PostgreSQL): nothing was kept
                    if attempt == _ATTEMPTS - 1 or self.persona.recorder.in_transaction():
                        raise
        return len(index)

    def _write_refreshed(self, index: list[tuple[str, int, str]], snaps: list[Any], people: dict[str, Any],
                         work: list[Current]) -> list[tuple[str, int, str]]:
        """Write refreshed index rows and snapshots, and what follows them, in one transaction;
        the index rows written."""
        rec = self.persona.recorder
        with rec.transaction(concurrent=True):
            # Who is whom may have changed since the states were read (a merge or an unmerge by
            # another process, which refreshes them itself): a row is written only for a person
            # whose profiles are still exactly those folded. Checked with each person held (by
            # the write lock, or beside other writers by their first stream's row) to COMMIT.
            still = identity.hold_persons(rec, [row[0] for row in index])
            index = [row for row in index if still[row[0]] == people[row[0]]]
            rec.put_index(index)
            if snaps:
                rec.put_snapshots(snaps)
            # live segments change in the same commit as the rows that change them; the other
            # streams of a merged person are no longer anyone's, and leave theirs
            memberships.follow(self.persona, index, [member for pid, *_ in index
                                                     for member in people[pid].members if member != pid])
            # and the recommendations read model: a purchase leaves the person's list at once
            written = {pid for pid, *_ in index}
            recommendations.follow(self.persona, [(c.profile_id, c.states[FEATURES.name], _withdrawn(c))
                                                  for c in work if c.profile_id in written])
        return index

    def _index_rows_forked(self, work: list[Current]) -> list[tuple[str, int, str]]:
        """Index rows of these states, the second half computed by a forked child from the states
        it inherits (no database access there; it leaves by `os._exit`)."""
        half = len(work) // 2
        read_end, write_end = os.pipe()
        frozen = gc.get_freeze_count()
        gc.freeze()  # the child's collector leaves the inherited objects (and their finalisers) alone
        child = -1
        try:
            child = os.fork()
        finally:
            if child != 0 and not frozen:
                gc.unfreeze()
        if child == 0:  # pragma: no cover - the child's coverage is not collected
            status = 1
            try:
                os.close(read_end)
                done = orjson.dumps([(c.profile_id, c.version, self.index_doc(c)) for c in work[half:]])
                with os.fdopen(write_end, "wb") as out:
                    out.write(done)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        answer = os.fdopen(read_end, "rb")
        try:
            rows = [(current.profile_id, current.version, self.index_doc(current)) for current in work[:half]]
            theirs = answer.read()
        finally:
            answer.close()  # on a failure here, the child's write fails and it leaves: never a deadlock
            _, status = os.waitpid(child, 0)
        if status != 0:  # the child failed: its half is computed here
            return rows + [(c.profile_id, c.version, self.index_doc(c)) for c in work[half:]]
        rows.extend((pid, version, doc) for pid, version, doc in orjson.loads(theirs))
        return rows


FORK_INDEX_ROWS = 1_000  # below this, forking costs more than it saves


def rebuild_part(where: StoreAddress, part: Part, only: str | None) -> tuple[list[Any], list[Any]]:
    """In a worker, holding only these people's keys: fold their streams from the log (one scan
    for the lot; for one projection, the others from their snapshots), then one index row per
    person and fresh sealed snapshots per stream."""
    projections = PROJECTIONS
    with part.opened(where) as (rec, heads, sealers), gc_paused():
        kept = {p.name: only is None or p.name == only for p in projections}
        if only is not None:  # the one rebuilt from the start, the others caught up from their snapshots
            currents = from_snapshots(rec, projections, heads, sealers, fresh=only)
            catch_up(rec, projections, heads, currents,
                     {pid: dict(current.snapshot_versions) for pid, current in currents.items()})
        else:
            currents = {pid: Current(pid, 0, {p.name: p.initial() for p in projections},
                                     {p.name: 0 for p in projections}) for pid in sealers}
            for event in open_streams(rec.read_streams([heads[pid].no for pid in sealers]), sealers):
                current = currents[event.profile_id]
                for p in projections:
                    current.states[p.name] = p.apply(current.states[p.name], event)
                current.version = event.version
        index: list[Any] = []
        snaps: list[Any] = []
        for members in part.people:
            found = [currents[pid] for pid in members if pid in currents]
            if len(found) < len(members):
                continue  # erased meanwhile
            for current in found:
                missing = {name for name, at in current.snapshot_versions.items() if at == 0}
                rows = snapshot_rows(projections, current, sealers[current.profile_id], None)
                snaps.extend(row for row in rows if kept[row[1]] or row[1] in missing)
            person = identity.Person(members[0], tuple(members))
            current = combine(projections, person, found) if person.merged else found[0]
            index.append((person.id, current.version, index_doc(projections, current)))
    return index, snaps


def rebuild(persona: Persona, *, projection: str | None = None, workers: int | None = None,
            engine: Engine | None = None, progress: Callable[[int], None] | None = None, chunk: int = 200) -> int:
    """Drop the snapshots (of every projection, or of one) and the profile index, and rebuild
    them from the log, a part of the people at a time: in `workers` processes here, or on an
    engine's workers (persona.engine), each given only its part's keys. Returns the number of
    profiles rebuilt."""
    names = {p.name for p in PROJECTIONS}
    if projection is not None and projection not in names:
        raise UnknownProjectionError(f"no projection named {projection!r}; there are: {', '.join(sorted(names))}")
    rec = persona.recorder
    people = identity.everyone(rec)  # a merged person's streams are folded in the same part
    engine = engine or active() or Local(workers)
    done = 0
    # One transaction: readers keep the old index until the new one is complete, and a
    # failure half-way leaves the old one in place. Other writers wait (WAL readers do not).
    with rec.transaction():
        rec.clear_derived(projection)
        for index, snaps in engine.map(rebuild_part, tasks(persona, people, chunk, projection)):
            rec.put_index(index)
            rec.put_snapshots(snaps)
            done += len(index)
            if progress is not None:
                progress(len(index))
        compute_rfm(persona)  # RFM quintiles: across the population, recomputed at rebuild
        memberships.sweep(persona)  # reconciled, not emptied: members keep their `since`
    return done
