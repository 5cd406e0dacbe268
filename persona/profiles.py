"""A person's profile as of an instant: replayed from their log, never stored as truth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from persona.core import Persona
from persona.events import RecordedEvent
from persona.identity import Person, person_of
from persona.projections import ATTRIBUTES, FEATURES, replay
from persona.projections.base import visible
from persona.projector import Projector


def profile_view(persona: Persona, profile_id: str, *, as_of: datetime | None = None,
                 known_at: datetime | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The profile at `as_of` (events that had happened by then), believing only what had
    been recorded by `known_at`. Without either: the current profile. Erased stays erased."""
    person = person_of(persona.recorder, profile_id)
    infos = [persona.log.info(member) for member in person.members]
    moment = as_of or now or datetime.now(UTC)
    if as_of is None and known_at is None:  # the present: latest snapshots plus the events after them
        current = Projector(persona).current(profile_id)
        attributes, features = current.states[ATTRIBUTES.name], current.states[FEATURES.name]
        count = current.version
    else:  # the past: replayed, every stream of a merged person
        events = list(visible(read_person(persona, person), as_of=as_of, known_at=known_at))
        attributes, features = replay(ATTRIBUTES, events), replay(FEATURES, events)
        count = len(events)
    return {
        "id": person.id,
        "version": sum(info.version for info in infos),
        "events": count,
        "created_at": min(info.created_at for info in infos).isoformat(),
        "merged": list(person.members[1:]),
        "as_of": as_of.isoformat() if as_of else None,
        "known_at": known_at.isoformat() if known_at else None,
        "identities": [{"namespace": ns, "hash": h} for info in infos for ns, h in info.identities],
        "attributes": ATTRIBUTES.view(attributes, moment),
        # RFM scores are ranks in today's population: shown for the present only
        "features": FEATURES.view(features, moment) | {
            "rfm": persona.recorder.rfm_of(person.id) if as_of is None and known_at is None else None},
    }


def read_person(persona: Persona, person: Person) -> list[RecordedEvent]:
    """Every event of a person, opened: their streams' events in the order they were recorded."""
    if not person.merged:
        return persona.log.read(person.id)
    events = [event for member in person.members for event in persona.log.read(member)]
    return sorted(events, key=lambda event: event.position)
