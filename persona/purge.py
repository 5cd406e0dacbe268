"""The physical purge of what erasure deleted: at once on SQLite, batched on PostgreSQL.

An erasure deletes the person's rows in its own transaction: from its commit, no query finds
them. What is left is physical. SQLite zeroes deleted cells in place and keeps the old pages in
its WAL until a checkpoint, which costs little: each erasure runs it. PostgreSQL keeps deleted
rows as dead tuples until VACUUM, which also walks every index of the tables it cleans, so its
time follows the population, not the erasure: one purge serves every erasure of a window
(`PERSONA_PURGE_WINDOW`, 15 minutes), off the request path — `persona serve` runs it in a thread
of its own when it falls due, and `persona purge` (for cron) does the same.

The store keeps one mark (meta `purge`): when the erasures noted since the last purge began
are due to be purged (each erasure notes itself in its own transaction, keeping the earliest
time), the due time of those a purge has taken and not finished (so that a crash mid-purge
leaves them due), and when the last purge finished. One purge of a store runs at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from persona.core import Persona
from persona.events import micros
from persona.store.base import PURGE_MARK, Recorder


@dataclass(frozen=True)
class Mark:
    due: int | None = None  # µs: when the erasures noted since the last purge began are to be purged
    taken: int | None = None  # µs: the due time of what a purge took and has not finished
    done: int | None = None  # µs: when the last purge finished

    @property
    def pending(self) -> int | None:
        """When the next purge is due; None: nothing awaits one."""
        return _earliest(self.due, self.taken)


@dataclass(frozen=True)
class Purge:
    ran: bool  # it was due (or forced), and was tried
    why: str | None  # why it did not run or finish (nothing personal); None: finished, or not due
    due: int | None  # µs: when the next purge is due, if one is pending
    finished: int | None  # µs: when this one finished
    seconds: float

    @property
    def done(self) -> bool:
        return self.ran and self.why is None


def _earliest(*times: int | None) -> int | None:
    return min((t for t in times if t is not None), default=None)


def mark_of(rec: Recorder) -> Mark:
    text = rec.get_meta(PURGE_MARK)
    if not text:
        return Mark()
    doc = orjson.loads(text)
    return Mark(doc.get("due"), doc.get("taken"), doc.get("done"))


def last_purge(persona: Persona) -> int | None:
    """When the last purge finished (µs), if one ever did."""
    return mark_of(persona.recorder).done


def _write(rec: Recorder, mark: Mark) -> None:
    rec.set_meta(PURGE_MARK, orjson.dumps({"due": mark.due, "taken": mark.taken, "done": mark.done}).decode())


def carry(rec: Recorder, earlier: Mark) -> None:
    """Inside a transaction of a store that replaces another whole (a restore): the purge the
    replaced store had pending stays due, and its last purge stays on record."""
    mark = mark_of(rec)
    done = max((t for t in (mark.done, earlier.done) if t is not None), default=None)
    _write(rec, Mark(_earliest(mark.due, earlier.pending), mark.taken, done))


def window_s(persona: Persona) -> int:
    return 0 if persona.recorder.purges_at_once else persona.settings.purge_window_s


def note(persona: Persona, now: datetime | None = None) -> int:
    """Inside an erasing transaction: its deleted rows await a purge. Returns when it is due (µs):
    the erasure's time plus the window, or earlier if erasures before it are due earlier."""
    rec = persona.recorder
    mark = mark_of(rec)
    due = micros(now or datetime.now(UTC)) + window_s(persona) * 1_000_000
    due = min(due, mark.due) if mark.due is not None else due
    _write(rec, Mark(due, mark.taken, mark.done))
    return due


def run(persona: Persona, *, now: datetime | None = None, force: bool = False, rewrite: bool = False,
        wait_s: float = 5.0) -> Purge:
    """Purge if one is due (or `force`); see Recorder.purge for `rewrite` and `wait_s`. A purge
    that cannot finish (an old snapshot, a lock) leaves what it took due, and is tried again."""
    rec = persona.recorder
    at = micros(now or datetime.now(UTC))
    pending = mark_of(rec).pending
    if not force and (pending is None or at < pending):
        return Purge(False, None, pending, None, 0.0)
    with rec.purge_lock() as mine:
        if not mine:
            return Purge(False, "another purge of this store is running", pending, None, 0.0)
        with rec.transaction():  # it takes what is noted: an erasure from now on waits for the next purge
            mark = mark_of(rec)
            taken = mark.pending
            _write(rec, Mark(None, taken, mark.done))
        started = time.perf_counter()
        why = rec.purge(wait_s, rewrite=rewrite)
        seconds = time.perf_counter() - started
        finished = at + int(seconds * 1_000_000)
        with rec.transaction():
            mark = mark_of(rec)  # if it did not finish, what it took is due again, as it was
            mark = Mark(mark.due, None, finished) if why is None else Mark(_earliest(mark.due, taken), None, mark.done)
            _write(rec, mark)
    return Purge(True, why, mark.pending, finished if why is None else None, seconds)
