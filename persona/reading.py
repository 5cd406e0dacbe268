"""People as the read model and the log hold them, read in batches: person rows (a merged
person's streams added up), the identifiers linked to each person, and pages of a person's
history (the API's loaders: persona.api.data)."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from persona import identity
from persona.core import Persona
from persona.errors import UnknownProfileError, ValidationError
from persona.events import RecordedEvent, utc_text
from persona.pseudonyms import short_hash
from persona.store.base import StoredChunk


@dataclass(frozen=True)
class PersonRow:
    """What the read model says of one person (a profile, or several merged ones)."""

    id: str
    version: int  # events in the person's streams, together
    updated_at: int | None
    index_version: int | None
    index_doc: str | None
    rfm: dict[str, int] | None


def person_rows(persona: Persona, ids: Sequence[str]) -> dict[str, PersonRow]:
    """Each live id's person row, keyed by the id asked for: one query, plus two more when a
    merged person is among them (their streams' rows are read and added up)."""
    out: dict[str, PersonRow] = {}
    merged = []
    for row in persona.recorder.profile_rows(ids):
        if not row.has_key:
            continue
        if row.person_id is not None:
            merged.append(row.profile_id)
            continue
        rfm = None if row.r is None else {"r": row.r, "f": row.f or 0, "m": row.m or 0}
        out[row.profile_id] = PersonRow(row.profile_id, row.version, row.updated_at, row.index_version,
                                        row.index_doc, rfm)
    if merged:
        people = identity.persons(persona.recorder, merged)
        streams = {r.profile_id: r for r in persona.recorder.profile_rows(
            sorted({m for person in people.values() for m in person.members}))}
        for pid, person in people.items():
            rows = [streams.get(member) for member in person.members]
            if not all(r is not None and r.has_key for r in rows):
                continue  # erased meanwhile
            root = streams[person.id]
            rfm = None if root.r is None else {"r": root.r, "f": root.f or 0, "m": root.m or 0}
            times = [r.updated_at for r in rows if r is not None and r.updated_at is not None]
            out[pid] = PersonRow(person.id, sum(r.version for r in rows if r is not None),
                                 max(times) if times else None, root.index_version, root.index_doc, rfm)
    return out


def identities_of(persona: Persona, ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The identifiers linked to each person (every stream's, for a merged one)."""
    people = identity.persons(persona.recorder, ids)
    streams = sorted({m for person in people.values() for m in person.members})
    linked: dict[str, list[dict[str, str]]] = {pid: [] for pid in streams}
    for profile_id, digest, namespace in persona.recorder.links_of_many(streams):
        linked[profile_id].append({"namespace": namespace, "hash": short_hash(bytes(digest)), "profile": profile_id})
    return {pid: [i for member in person.members for i in linked[member]] for pid, person in people.items()}


@dataclass(frozen=True)
class Merge:
    """Two of a person's profiles joined by the link of two identifiers (short hashes)."""

    profiles: tuple[str, str]
    identifiers: tuple[str, str]
    merged_at: int  # µs
    undone_at: int | None


def merges_of(persona: Persona, ids: list[str]) -> dict[str, list[Merge]]:
    """How each person's profiles were joined: the merges of their profiles, oldest first,
    undone ones included (with when), so that an unlinked pair shows as such."""
    people = identity.persons(persona.recorder, ids)
    streams = sorted({m for person in people.values() for m in person.members})
    edges = persona.recorder.merge_edges(streams) if streams else []
    out: dict[str, list[Merge]] = {}
    for pid, person in people.items():
        members = set(person.members)
        out[pid] = [Merge((e.a, e.b), (short_hash(e.a_hash), short_hash(e.b_hash)), e.merged_at, e.undone_at)
                    for e in edges if e.a in members or e.b in members]
    return out


@dataclass(frozen=True)
class HistoryPage:
    events: list[RecordedEvent]
    has_next: bool
    resume_before: int | None = None  # a time-filtered scan stopped early: continue below this point
    by_position: bool = False  # a merged person's pages go by log position, not stream version


SCAN_PAGE = 200


SCAN_LIMIT = 2_000  # events decrypted for one time-filtered page at most; the rest is the next page's


def history_page(persona: Persona, profile_id: str, *, first: int, before: int | None = None,
                 by_position: bool = False, types: Sequence[str] = (), since: datetime | None = None,
                 until: datetime | None = None) -> HistoryPage:
    """A page of one person's events, newest first.

    Paging is answered by the database, and types from the chunks' plaintext type lists, so only
    the chunks holding events returned are decrypted. Occurrence times are sealed inside
    events: with `since`/`until` the candidates are decrypted a page at a time and filtered. A profile's pages go by its
    stream's versions; a merged person's by log position across its streams (`before` is
    then a position: `by_position`). A version cursor of a profile merged since is refused.
    """
    log, rec = persona.log, persona.recorder
    person = identity.person_of(rec, profile_id)
    heads = rec.heads(person.members)
    if len(heads) < len(person.members) or any(h.wrapped is None for h in heads.values()):
        raise UnknownProfileError("no such profile")
    sealers = {sid: log.sealer(sid, head) for sid, head in heads.items()}
    across = person.merged or by_position
    if person.merged and before is not None and not by_position:
        raise ValidationError("after: the profile was merged with another since this cursor was handed out;"
                              " start again from the first page")
    if across:
        start = rec.last_position() + 1 if before is None else before

        def read(below: int) -> list[StoredChunk]:
            return rec.read_page_across(person.members, below, SCAN_PAGE)

        def mark(event: RecordedEvent) -> int:
            return int(event.position)

        def chunk_mark(row: StoredChunk) -> int:
            return int(row.position)
    else:
        start = heads[profile_id].version + 1 if before is None else before

        def read(below: int) -> list[StoredChunk]:
            return rec.read_page(profile_id, below, SCAN_PAGE)

        def mark(event: RecordedEvent) -> int:
            return int(event.version)

        def chunk_mark(row: StoredChunk) -> int:
            return int(row.first_version)
    wanted = set(types)

    def newest_first() -> Iterator[RecordedEvent]:
        """The events below the cursor of the wanted types, newest first: a chunk none of whose
        types is wanted is passed over unopened (its types are stored beside its sealed events)."""
        below = start
        while True:
            rows = read(below)
            for row in rows:
                if wanted and wanted.isdisjoint(row.types.split(" ")):
                    continue
                for event in reversed(log.open_chunk(row, sealers[row.stream_id])):
                    if mark(event) < start and (not wanted or event.type in wanted):
                        yield event
            if len(rows) < SCAN_PAGE:
                return
            below = chunk_mark(rows[-1])

    lo = utc_text(since) if since is not None else None
    hi = utc_text(until) if until is not None else None
    if lo is None and hi is None:
        page = list(itertools.islice(newest_first(), first + 1))
        return HistoryPage(page[:first], len(page) > first, by_position=across)
    found: list[RecordedEvent] = []
    for scanned, event in enumerate(newest_first()):
        if scanned >= SCAN_LIMIT:  # a short page, and a cursor to go on from where the scan stopped
            return HistoryPage(found, True, mark(event) + 1, by_position=across)
        if (lo is None or event.occurred_at >= lo) and (hi is None or event.occurred_at < hi):
            found.append(event)
            if len(found) > first:
                break
    return HistoryPage(found[:first], len(found) > first, by_position=across)


def change_mark(persona: Persona) -> Hashable | None:
    """A value that differs between two reads whenever anything was written to the store in
    between, by any connection in any process; None where the backend has no cheap way to tell
    (persona.store.protocols, `Connection.change_mark`)."""
    return persona.recorder.change_mark()


def stamps(persona: Persona, ids: Sequence[str]) -> list[Any]:
    """What each profile's current answer depends on in the store, read now (the API's answer
    cache keys answers by it: persona.api.answers): the person the id belongs to, their streams'
    version and latest record, their index row's version, RFM scores, predictions and live-segment
    memberships. None for an unknown or erased id. One statement, plus three for merged persons."""
    out: dict[str, Any] = {}
    merged = []
    for (pid, version, updated_at, has_key, index_version, r, f, m, person_id, predicted,
         segmented) in persona.recorder.answer_stamps(ids):
        if person_id is not None:
            merged.append(pid)
        elif has_key:
            out[pid] = (pid, version, updated_at, index_version, (r, f, m), predicted, segmented)
    if merged:
        rows = person_rows(persona, merged)
        people = sorted({row.id for row in rows.values()})
        derived: dict[str, list[Any]] = {pid: [] for pid in people}
        for pid, model, version, computed_at, _doc in persona.recorder.predictions_of(people):
            derived[pid].append(("p", model, version, computed_at))
        for segment, pid, since in persona.recorder.memberships(people):
            derived[pid].append(("s", segment, since))
        for asked, row in rows.items():
            # the version sums a merged person's streams; the latest record time makes an unmerge
            # (which appends to both) differ from any earlier state whose sum happened to be the same
            rfm = None if row.rfm is None else (row.rfm["r"], row.rfm["f"], row.rfm["m"])
            out[asked] = (row.id, row.version, row.updated_at, row.index_version, rfm, sorted(derived[row.id]))
    return [out.get(asked) for asked in ids]  # None: unknown or erased (a null answer, or an error)
