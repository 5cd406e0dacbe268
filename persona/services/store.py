"""What the store holds as a whole: counts, health, which profiles are erased, the quarantine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from persona.core import Persona


def stream_count(persona: Persona) -> int:
    """The profiles (streams) in the log, erased ones included: what a rebuild walks."""
    return sum(1 for _ in persona.recorder.stream_ids())


def event_count(persona: Persona) -> int:
    """The events in the log."""
    return persona.recorder.counts()["events"]


def population_size(persona: Persona) -> int:
    """Rows in the profile index: the population a scan reads (and is priced by)."""
    return persona.recorder.index_size()


def erasure_mark(persona: Persona) -> int:
    """A number that changes whenever a profile is erased, by any process."""
    return persona.recorder.erasure_mark()


def check_reachable(persona: Persona) -> None:
    """Raises if the store cannot be read at the moment (a health check: one small read)."""
    persona.recorder.get_meta("schema_version")


def live_and_erased(persona: Persona, profile_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """Of these profile ids: (those held with a live key, those erased: held, their key deleted).
    An id in neither is not in this store."""
    heads = persona.recorder.heads(profile_ids)
    live = {pid for pid, head in heads.items() if head.wrapped is not None}
    return live, set(heads) - live


def drop_quarantined(persona: Persona, ids: Sequence[int]) -> None:
    """Remove these quarantined records (by their numbers, as listed), in one transaction."""
    with persona.recorder.transaction():
        persona.recorder.drop_quarantined(ids)
