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


def load_profiles(persona: Persona, projector: Projector, ids: Sequence[str],
                  now: datetime | None = None) -> dict[str, ProfileData | None]:
    """Current profiles from the read model, one query for all; None for erased or unknown ids.

    A profile whose index row lags its log (an ingest still running in another process)
    is brought up to date from its snapshot and the events after it.
    """
    moment = now or datetime.now(UTC)
    out: dict[str, ProfileData | None] = {}
    for row in persona.recorder.profile_rows(ids):
        if not row.has_key:
            continue
        doc = row.index_doc
        if doc is None or row.index_version != row.version:
            try:
                doc = projector.index_doc(projector.current(row.profile_id))
            except (ErasedError, UnknownProfileError):
                continue
        rfm = None if row.r is None else {"r": row.r, "f": row.f or 0, "m": row.m or 0}
        indexed = from_index(row.profile_id, row.version, doc, rfm, moment, persona)
        if indexed is not None:
            updated = from_micros(row.updated_at) if row.updated_at is not None else None
            out[row.profile_id] = ProfileData.of(indexed, updated)
    return out


def load_past_profile(persona: Persona, profile_id: str, as_of: datetime) -> ProfileData | None:
    """A profile as it stood at `as_of`, replayed from its log."""
    past = past_profile(persona, profile_id, as_of)
    return None if past is None else ProfileData.of(past)


def load_sources(projector: Projector, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each attribute with its fusion strategy and provenance (source, event, time)."""
    now = datetime.now(UTC)
    return {pid: ATTRIBUTES.view(current.states[ATTRIBUTES.name], now)
            for pid, current in projector.current_many(ids).items()}


def load_updated(persona: Persona, ids: list[str]) -> dict[str, datetime]:
    """When each profile's latest event was recorded (one query, nothing opened or parsed)."""
    return {row.profile_id: from_micros(row.updated_at) for row in persona.recorder.profile_rows(ids)
            if row.has_key and row.updated_at is not None}


def load_identities(persona: Persona, ids: list[str]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {pid: [] for pid in ids}
    for profile_id, digest, namespace in persona.recorder.links_of_many(ids):
        out[profile_id].append({"namespace": namespace, "hash": short_hash(bytes(digest))})
    return out


def load_predictions(persona: Persona, ids: list[str], models: tuple[str, ...] | None) -> dict[str, list[Any]]:
    """Scores of published models for these profiles. No model is published yet: empty lists."""
    return {pid: [] for pid in ids}


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
    resume_before: int | None = None  # a time-filtered scan stopped early: continue below this version


SCAN_PAGE = 200
SCAN_LIMIT = 2_000  # events decrypted for one time-filtered page at most; the rest is the next page's


def history_page(persona: Persona, profile_id: str, *, first: int, before_version: int | None = None,
                 types: Sequence[str] = (), since: datetime | None = None,
                 until: datetime | None = None) -> HistoryPage:
    """A page of one profile's events, newest first.

    Paging and type filters are answered by the database, so only the events returned
    are decrypted. Occurrence times are sealed inside events: with `since`/`until` the
    candidates are decrypted a page at a time and filtered.
    """
    log = persona.log
    head = persona.recorder.heads([profile_id]).get(profile_id)
    if head is None or head.wrapped is None:
        raise UnknownProfileError("no such profile")
    sealer = log.sealer(profile_id, head)
    before = head.version + 1 if before_version is None else before_version
    lo = utc_text(since) if since is not None else None
    hi = utc_text(until) if until is not None else None
    if lo is None and hi is None:
        rows = persona.recorder.read_page(profile_id, before, first + 1, types)
        return HistoryPage([log.open_event(row, sealer) for row in rows[:first]], len(rows) > first)
    found: list[RecordedEvent] = []
    scanned = 0
    while len(found) <= first:
        if scanned >= SCAN_LIMIT:  # a short page, and a cursor to go on from where the scan stopped
            return HistoryPage(found, True, before)
        rows = persona.recorder.read_page(profile_id, before, SCAN_PAGE, types)
        for row in rows:
            scanned += 1
            event = log.open_event(row, sealer)
            if (lo is None or event.occurred_at >= lo) and (hi is None or event.occurred_at < hi):
                found.append(event)
                if len(found) > first:
                    break
        if len(rows) < SCAN_PAGE:
            break
        before = rows[-1].version
    return HistoryPage(found[:first], len(found) > first)
