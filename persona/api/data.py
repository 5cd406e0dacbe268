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
from persona.events import from_micros
from persona.population import IndexedProfile, from_index, past_profile
from persona.projections import ATTRIBUTES
from persona.projector import Projector
from persona.reading import person_rows
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




def load_predictions(persona: Persona, ids: list[str], models: tuple[str, ...] | None
                     ) -> dict[str, list[dict[str, Any]]]:
    """The predictions read model's rows for these persons, as stored (persona.models.scoring;
    persona.api.types makes them Predictions)."""
    from persona.models.scoring import stored  # heavy: loaded when a request first asks for predictions

    return {pid: [d for d in docs if models is None or d["model"] in models]
            for pid, docs in stored(persona, ids).items()}


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






