"""A person's profile as of an instant: replayed from their log, never stored as truth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from persona.core import Persona
from persona.projections import ATTRIBUTES, FEATURES, replay
from persona.projections.base import visible
from persona.projector import Projector


def profile_view(persona: Persona, profile_id: str, *, as_of: datetime | None = None,
                 known_at: datetime | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The profile at `as_of` (events that had happened by then), believing only what had
    been recorded by `known_at`. Without either: the current profile. Erased stays erased."""
    info = persona.log.info(profile_id)
    moment = as_of or now or datetime.now(UTC)
    if as_of is None and known_at is None:  # the present: latest snapshot plus the events after it
        current = Projector(persona).current(profile_id)
        attributes, features = current.states[ATTRIBUTES.name], current.states[FEATURES.name]
        count = current.version
    else:  # the past: replayed
        events = list(visible(persona.log.read(profile_id), as_of=as_of, known_at=known_at))
        attributes, features = replay(ATTRIBUTES, events), replay(FEATURES, events)
        count = len(events)
    return {
        "id": info.id,
        "version": info.version,
        "events": count,
        "created_at": info.created_at.isoformat(),
        "as_of": as_of.isoformat() if as_of else None,
        "known_at": known_at.isoformat() if known_at else None,
        "identities": [{"namespace": ns, "hash": h} for ns, h in info.identities],
        "attributes": ATTRIBUTES.view(attributes, moment),
        # RFM scores are ranks in today's population: shown for the present only
        "features": FEATURES.view(features, moment) | {
            "rfm": persona.recorder.rfm_of(profile_id) if as_of is None and known_at is None else None},
    }
