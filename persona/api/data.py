"""What the API reads, in batches: profiles from the read model, identities, history pages.

Every loader takes many profile ids and answers them with one query per chunk, so a page
of 100 profiles costs the same handful of queries as a page of one (see `Batch`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from persona import identity
from persona.core import Persona
from persona.errors import ErasedError, UnknownProfileError, ValidationError
from persona.events import RecordedEvent, from_micros, utc_text
from persona.population import IndexedProfile, from_index, past_profile
from persona.projections import ATTRIBUTES
from persona.projector import Projector
from persona.pseudonyms import short_hash
from persona.segments import segments

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Batch(Generic[K, V]):
    """A DataLoader for synchronous resolvers, one per request.

    A parent that knows its children (a page of profiles) announces their keys with
    `want`; the first `get` fetches every announced key in one call, and later gets are
    answered from memory. Nothing is fetched for a field the query did not select.
    """

    def __init__(self, fetch: Callable[[list[K]], dict[K, V]], missing: V) -> None:
        self._fetch = fetch
        self._missing = missing
        self._pending: list[K] = []
        self._values: dict[K, V] = {}
        self.fetches = 0

    def want(self, keys: Iterable[K]) -> None:
        self._pending.extend(k for k in keys if k not in self._values)

    def get(self, key: K) -> V:
        if key not in self._values:
            keys = list(dict.fromkeys([*self._pending, key]))
            self._pending = []
            self.fetches += 1
            found = self._fetch(keys)
            for k in keys:
                self._values[k] = found.get(k, self._missing)
        return self._values[key]


@dataclass(frozen=True)
class ProfileData:
    id: str
    version: int
    updated_at: datetime | None
    attributes: dict[str, Any]
    features: dict[str, Any]
    rfm: dict[str, int] | None

    @property
    def segments(self) -> list[str]:
        return segments(self.attributes, self.features, self.rfm)

    @classmethod
    def of(cls, profile: IndexedProfile, updated_at: datetime | None = None) -> ProfileData:
        return cls(profile.id, profile.version, updated_at, profile.attributes, profile.features, profile.rfm)


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


def load_profiles(persona: Persona, projector: Projector, ids: Sequence[str],
                  now: datetime | None = None) -> dict[str, ProfileData | None]:
    """Current profiles from the read model, one query for all; None for erased or unknown ids.
    A merged profile's id answers with the person it belongs to (whose id may differ).

    A profile whose index row lags its log (an ingest still running in another process)
    is brought up to date from its snapshot and the events after it.
    """
    moment = now or datetime.now(UTC)
    out: dict[str, ProfileData | None] = {}
    for asked, row in person_rows(persona, ids).items():
        doc = row.index_doc
        if doc is None or row.index_version != row.version:
            try:
                current = projector.current(row.id)
            except (ErasedError, UnknownProfileError):
                continue
            doc = projector.index_doc(current)
        indexed = from_index(row.id, row.version, doc, row.rfm, moment, persona)
        if indexed is not None:
            updated = from_micros(row.updated_at) if row.updated_at is not None else None
            out[asked] = ProfileData.of(indexed, updated)
    return out


def load_past_profile(persona: Persona, profile_id: str, as_of: datetime) -> ProfileData | None:
    """A profile as it stood at `as_of`, replayed from its log (every stream of a merged person)."""
    past = past_profile(persona, profile_id, as_of)
    return None if past is None else ProfileData.of(past)


def load_sources(projector: Projector, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each attribute with its fusion strategy and provenance (source, event, time)."""
    now = datetime.now(UTC)
    return {pid: ATTRIBUTES.view(current.states[ATTRIBUTES.name], now)
            for pid, current in projector.current_many(ids).items()}


def load_updated(persona: Persona, ids: list[str]) -> dict[str, datetime]:
    """When each profile's latest event was recorded (nothing opened or parsed)."""
    return {pid: from_micros(row.updated_at) for pid, row in person_rows(persona, ids).items()
            if row.updated_at is not None}


def load_identities(persona: Persona, ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The identifiers linked to each person (every stream's, for a merged one)."""
    people = identity.persons(persona.recorder, ids)
    streams = sorted({m for person in people.values() for m in person.members})
    linked: dict[str, list[dict[str, str]]] = {pid: [] for pid in streams}
    for profile_id, digest, namespace in persona.recorder.links_of_many(streams):
        linked[profile_id].append({"namespace": namespace, "hash": short_hash(bytes(digest))})
    return {pid: [i for member in person.members for i in linked[member]] for pid, person in people.items()}


def load_predictions(persona: Persona, ids: list[str], models: tuple[str, ...] | None) -> dict[str, list[Any]]:
    """The predictions read model's rows for these persons (persona.models.scoring)."""
    from persona.api.types import Contribution, Prediction
    from persona.models.scoring import stored

    out: dict[str, list[Any]] = {}
    for pid, docs in stored(persona, ids).items():
        out[pid] = [Prediction(model=d["model"], version=d["version"], score=d["value"], label=d["label"],
                               probabilities=d["probabilities"],
                               contributions=[Contribution(**c) for c in d["contributions"]],
                               as_of=datetime.fromisoformat(d["as_of"]), computed_at=from_micros(d["computed_at"]))
                    for d in docs if models is None or d["model"] in models]
    return out


# -- history ---------------------------------------------------------------------------------
def encode_cursor(kind: str, value: str | int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationError("after: not a cursor this API handed out") from None
    prefix, _, value = text.partition(":")
    if prefix != kind or not value:
        raise ValidationError("after: not a cursor this API handed out") from None
    return value


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

    Paging and type filters are answered by the database, so only the events returned
    are decrypted. Occurrence times are sealed inside events: with `since`/`until` the
    candidates are decrypted a page at a time and filtered. A profile's pages go by its
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

        def read(below: int, limit: int) -> list[Any]:
            return rec.read_page_across(person.members, below, limit, types)

        def mark(row: Any) -> int:
            return int(row.position)
    else:
        start = heads[profile_id].version + 1 if before is None else before

        def read(below: int, limit: int) -> list[Any]:
            return rec.read_page(profile_id, below, limit, types)

        def mark(row: Any) -> int:
            return int(row.version)
    lo = utc_text(since) if since is not None else None
    hi = utc_text(until) if until is not None else None
    if lo is None and hi is None:
        rows = read(start, first + 1)
        return HistoryPage([log.open_event(row, sealers[row.stream_id]) for row in rows[:first]],
                           len(rows) > first, by_position=across)
    found: list[RecordedEvent] = []
    scanned = 0
    below = start
    while len(found) <= first:
        if scanned >= SCAN_LIMIT:  # a short page, and a cursor to go on from where the scan stopped
            return HistoryPage(found, True, below, by_position=across)
        rows = read(below, SCAN_PAGE)
        for row in rows:
            scanned += 1
            event = log.open_event(row, sealers[row.stream_id])
            if (lo is None or event.occurred_at >= lo) and (hi is None or event.occurred_at < hi):
                found.append(event)
                if len(found) > first:
                    break
        if len(rows) < SCAN_PAGE:
            break
        below = mark(rows[-1])
    return HistoryPage(found[:first], len(found) > first, by_position=across)
