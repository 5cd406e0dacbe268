"""What a projection is, and replaying events through one (pure: no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from persona.events import RecordedEvent, micros, utc_text

S = TypeVar("S")


class Projection(Protocol[S]):
    """A named, versioned fold. Bump `version` when `apply` or the state's shape changes:
    stored snapshots of older versions are then ignored and rebuilt."""

    name: str
    version: int

    def initial(self) -> S:
        """A fresh state. States belong to the fold: `apply` may update them in place."""
        ...

    def apply(self, state: S, event: RecordedEvent) -> S:
        """Fold one event in. Must give the same final state for any order of the same events."""
        ...

    def combine(self, states: list[S]) -> S:
        """One state for the events of all these states together (the streams of a merged
        person): equal to folding all their events into one. Must not modify its inputs."""
        ...

    def view(self, state: S, as_of: datetime) -> dict[str, Any]:
        """The read-out at an instant (ages, recencies and decays depend on it)."""
        ...

    def dump(self, state: S) -> Any:
        """A canonical JSON-able form of the state (for snapshots; equal states dump equal)."""
        ...

    def load(self, dumped: Any) -> S:
        """The inverse of dump."""
        ...


def visible(events: Iterable[RecordedEvent], *, as_of: datetime | None = None,
            known_at: datetime | None = None) -> Iterable[RecordedEvent]:
    """Events that had happened by `as_of` (occurred_at) and been recorded by `known_at`."""
    happened = utc_text(as_of) if as_of is not None else None
    recorded = micros(known_at) if known_at is not None else None
    for event in events:
        if happened is not None and event.occurred_at > happened:
            continue
        if recorded is not None and event.recorded_us > recorded:
            continue
        yield event


def replay(projection: Projection[S], events: Iterable[RecordedEvent], *, as_of: datetime | None = None,
           known_at: datetime | None = None) -> S:
    """Fold every visible event into a fresh state."""
    state = projection.initial()
    apply = projection.apply
    for event in visible(events, as_of=as_of, known_at=known_at):
        state = apply(state, event)
    return state
