"""The change feed: new events from any process, as they are committed.

On PostgreSQL a committing append sends NOTIFY and the feed wakes at once; on SQLite it
polls. Either way what it hands out is read by global position, so a wake-up that is
missed (or never sent) delays an event by at most the wait, and never loses one. Writers
commit positions in order (one write lock on both backends), so reading after the last
position seen skips nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona.store.base import Recorder, StoredChunk

if TYPE_CHECKING:
    from persona.core import Persona

PAGE = 5_000


class ChangeFeed:
    """Events after a position. Chunks stay sealed: a follower learns which streams grew."""

    def __init__(self, recorder: Recorder, after_position: int | None = None) -> None:
        self.recorder = recorder
        self.position = recorder.last_position() if after_position is None else after_position
        self._known = self.position  # the newest position seen committed

    @classmethod
    def of(cls, persona: Persona, after_position: int | None = None) -> ChangeFeed:
        """The feed of an open store's log (its own connection: the feed blocks, waiting)."""
        return cls(persona.recorder, after_position)

    def wait(self, timeout: float, limit: int | None = None) -> list[StoredChunk]:
        """The chunks of the events committed since the last call (at most `limit` chunks),
        waiting up to `timeout` seconds for one if none is known to be waiting."""
        if self.position >= self._known:
            self._known = self.recorder.wait_for_events(self.position, timeout)
        found: list[StoredChunk] = []
        while self.position < self._known and (limit is None or len(found) < limit):
            rows = self.recorder.read_all(self.position, PAGE if limit is None else min(PAGE, limit - len(found)))
            if not rows:
                break
            found.extend(rows)
            self.position = rows[-1].last_position
        return found

    @staticmethod
    def events_in(rows: list[StoredChunk], after_position: int) -> int:
        """How many events these chunks (from `wait`, after that position) hold after it."""
        return sum(row.last_position - max(row.position - 1, after_position) for row in rows)

    def changed_people(self, timeout: float) -> set[str]:
        """Ids of the streams that grew, and of the merged persons they belong to."""
        streams = {row.stream_id for row in self.wait(timeout)}
        if not streams:
            return streams
        return streams | set(self.recorder.persons_of(sorted(streams)).values())
