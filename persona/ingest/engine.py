"""The ingest engine: records in, a report out. Whatever the source (canonical JSONL, a mapped
CSV or JSONL export), its records are validated (docs/events.md), the refused ones quarantined
with their reasons, the rest appended in batches and indexed; a live feed's records are paced."""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from persona import identity
from persona.core import Persona
from persona.errors import ValidationError
from persona.eventlog import AppendResult
from persona.events import LIBRARY, Event, Writer, micros, validate
from persona.ingest.quarantine import Quarantine
from persona.projector import Projector
from persona.settings import Settings

Progress = Callable[[int], None]
QUARANTINE_BATCH = 1000
INGEST_CACHE = 30_000  # streams whose states an ingest keeps in memory (≈3 KB each in the benchmark data)
REFRESH_SLICE = 2_000  # profiles whose states a refresh of the index holds at once
SNAPSHOT_AT_END = 8  # events: a stream this far past its snapshot gets a new one when an ingest ends
REFRESH_EVERY_S = 5.0  # a long file ingest refreshes the index this often (or less: a tenth of its time)
STREAM_PAUSE_S = 0.2  # a live feed quiet for this long has what it sent committed and indexed


@dataclass
class IngestReport:
    origin: str
    lines: int = 0
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0
    profiles_created: int = 0
    merges: int = 0  # links that joined two existing profiles into one person
    merges_refused: int = 0  # such links between two people whose merge was undone
    blank: int = 0
    filtered: int = 0  # records a mapping's `where` left out (not refused: nothing to quarantine)
    interrupted: bool = False  # a live feed ended by Ctrl+C or SIGTERM (what had come is committed)
    seconds: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict, repr=False)  # profile id -> its new version
    live: bool = field(default=False, repr=False)  # a live feed; else `interrupted` is a file cut short by one

    def count_empty(self, decoded: Any, events: list[Event] | None) -> bool:
        """Count a valid record with nothing to append (left out by a mapping's `where`, or a blank
        line) and say so; False when it has events to append."""
        if events:
            return False
        if decoded == FILTERED:
            self.filtered += 1
        else:
            self.blank += 1
        return True

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["changed"], out["live"]
        return out

    def summary(self) -> str:
        rate = self.appended / self.seconds if self.seconds else 0.0
        text = (
            f"{self.origin}: {self.lines} input lines read → {self.appended} events appended, "
            f"{self.duplicates} duplicate events skipped (already in the log), {self.quarantined} lines quarantined"
            + (f", {self.blank} blank lines" if self.blank else "")
            + (f", {self.filtered} records filtered out by the mapping's `where`" if self.filtered else "")
            + f"; {self.profiles_created} new profiles in {self.seconds:.2f}s ({rate:,.0f} events/s)"
        )
        if self.interrupted and self.live:
            text += "\n  the feed was ended by a signal (Ctrl+C or SIGTERM); everything it had sent is committed"
        elif self.interrupted:
            text += (f"\n  interrupted (Ctrl+C or SIGTERM) after input line {self.lines}: what was read is committed"
                     " and in the profile index; run the same command again to append the rest (what is already"
                     " in the log is skipped as duplicates)")
        if self.merges or self.merges_refused:
            text += f"\n  {self.merges} profiles merged into others by linked identifiers"
            if self.merges_refused:
                text += f" ({self.merges_refused} links not merged: those merges were undone before)"
        if self.quarantine_reasons:
            reasons = ", ".join(f"{k} ×{v}" for k, v in sorted(self.quarantine_reasons.items()))
            text += f"\n  quarantined by field: {reasons} (see `persona quarantine`)"
        return text


# A record checked: (line, size, refusal reason or None, raw bytes and decoded form when
# refused, the validated events when accepted — an empty list for a blank line, or for a record
# a mapping's `where` left out, whose decoded form is then FILTERED)
Item = tuple[int, int, str | None, bytes, Any, list[Event] | None]
FILTERED = "filtered"


class Record(NamedTuple):
    """One record of a source, as read: where it was, what it said, and what it became."""

    line: int  # its line (or row) number in the source
    raw: bytes  # as written: what quarantine keeps, sealed, if it is refused
    events: Sequence[Any]  # the canonical event records it became (several for some sources; none if blank)
    reason: str | None = None  # why it cannot become events (then `events` is empty)
    decoded: Any = None  # what it was parsed into, for quarantine's identifier tags
    size: int = 0  # bytes it took in the source, for progress
    filtered: bool = False  # left out by a mapping's `where` (then `events` is empty): counted, not refused


PAUSE = None  # what `paced_records` yields when nothing arrived for a while
T = TypeVar("T")


def paced_records(records: Iterable[T], every: float, stop: threading.Event | None = None) -> Iterator[T | None]:
    """The records (or rows), with a PAUSE whenever none arrived for `every` seconds: a reader
    thread waits on the source (a pipe that may stay quiet for hours), the ingest does not.
    Once `stop` is set (Ctrl+C or SIGTERM), what has been read is handed over and the records end."""
    arrived: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=10_000)

    def read() -> None:
        try:
            for record in records:
                arrived.put((True, record))
        except BaseException as e:  # handed over, raised in the ingesting thread
            arrived.put((False, e))
        else:
            arrived.put((False, None))

    threading.Thread(target=read, name="persona-stream-reader", daemon=True).start()
    while True:
        if stop is not None and stop.is_set():  # the feed is over: what was read, then the end
            while True:
                try:
                    more, item = arrived.get_nowait()
                except queue.Empty:
                    return
                if not more:
                    if item is not None:
                        raise item
                    return
                yield item
        try:
            more, item = arrived.get(timeout=every)
        except queue.Empty:
            yield PAUSE
            continue
        if not more:
            if item is not None:
                raise item
            return
        yield item


def resident_mb() -> float | None:
    """This process's resident memory now, in MB (None where /proc does not say)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


class _Collector:
    """An ingest keeps many long-lived objects (states, caches) and makes millions of short-lived
    acyclic ones: while any ingest runs, the collector's young generation runs far less often
    (measured: -27% time on 1M records; a reader process forked meanwhile inherits it). The
    thresholds are put back when the last ingest of the process ends."""

    lock = threading.Lock()
    running = 0
    saved: tuple[int, ...] = (700, 10, 10)

    @classmethod
    def relax(cls, step: int) -> None:
        with cls.lock:
            if step > 0 and cls.running == 0:
                cls.saved = gc.get_threshold()
                gc.set_threshold(50_000, 20, 100)
            cls.running = max(0, cls.running + step)
            if step < 0 and cls.running == 0:
                gc.set_threshold(*cls.saved)


def validated(records: Iterable[Record | None], settings: Settings, clock: Callable[[], datetime]
              ) -> Generator[Item | None, None, None]:
    """Each record checked against docs/events.md (PAUSE markers passed through): an Item with its
    events, or with the reason it is refused. `clock` gives the ingest's "now" (a live feed's moves)."""
    max_future = timedelta(seconds=settings.max_future_s)
    limit, region = settings.max_event_bytes, settings.default_region
    for record in records:
        if record is PAUSE:
            yield PAUSE
            continue
        if record.reason is not None:
            yield record.line, record.size, record.reason, record.raw, record.decoded, None
            continue
        if not record.events:
            yield record.line, record.size, None, b"", FILTERED if record.filtered else None, []
            continue
        now = clock()
        try:
            as_read = len(record.events) == 1 and record.events[0] is record.decoded  # canonical JSONL
            events = [validate(event, now=now, max_bytes=limit, default_region=region, max_future=max_future,
                               size=len(record.raw) if as_read else None) for event in record.events]
        except ValidationError as e:
            yield record.line, record.size, e.reason, record.raw, record.decoded, None
        except (ValueError, TypeError, OverflowError, RecursionError):
            # A record no rule foresaw: keep it, never crash the run, never echo it.
            yield record.line, record.size, "record: could not be validated", record.raw, record.decoded, None
        else:
            yield record.line, record.size, None, b"", None, events


def ingest_file(
    persona: Persona,
    records: Iterable[Record],
    *,
    origin: str,
    now: datetime | None = None,
    progress: Progress | None = None,
    parallel: bool = False,
    catch_up: bool = False,
    stop: threading.Event | None = None,
    writer: Writer = LIBRARY,
) -> IngestReport:
    """Append the events of every valid record of a file (a finite source); quarantine the rest,
    each with its reason and line. A record's events go in together or not at all. Memory is
    bounded by the batch size. Each event records `writer` (sealed with it): who appended it.

    `progress` is told the size of each record read. `stop` (Ctrl+C or SIGTERM) stops the file at
    the next record: its reader is stopped, what was read is committed and indexed, and the report
    says it was interrupted (the rest is appended by ingesting the file again). `catch_up`: first
    find the persons whose index lags their log (an earlier ingest killed between committing a
    batch and indexing it) and index them with this ingest's own. `parallel`: records are read,
    mapped and validated in a second process (persona.ingest.pipeline) while this one appends —
    when this process runs no other thread, else in this one.
    """
    run = _Run(persona, origin, now=now, catch_up=catch_up, writer=writer)
    items: Generator[Item | None, None, None]
    if parallel and threading.active_count() == 1:  # fork only a process with no other thread (whose
        from persona.ingest.pipeline import pipelined  # locks the child would inherit, held forever)

        items = pipelined(lambda: validated(records, persona.settings, run.clock))
    else:
        items = validated(records, persona.settings, run.clock)

    def take(item: Item | None) -> bool:
        if stop is not None and stop.is_set():
            return False  # cut short before its end
        run.take(item, progress)
        return True

    finished = _drive(run, items, take, parallel=parallel)
    return run.report(interrupted=not finished)


def ingest_feed(
    persona: Persona,
    records: Iterable[Record | None],
    *,
    origin: str,
    stop: threading.Event | None = None,
    writer: Writer = LIBRARY,
) -> IngestReport:
    """Append the events of every valid record of a live feed (stdin, open for days); quarantine
    the rest, as a file's. The records carry a PAUSE whenever the feed was quiet for a moment
    (`live_records`, `live_jsonl_records`): whatever arrived is then committed, and shown in the
    profile index — each record is durable and visible within about a second of arriving,
    however slowly records come, and a feed that never pauses is committed as often. "Now" (what
    is too far in the future) moves with the feed. The persons whose index lags their log (an
    earlier ingest killed between committing a batch and indexing it) are indexed first. `stop`,
    the event its reader was given, ends the feed: what has been read is committed, and the
    report says the feed was ended by a signal.
    """
    run = _Run(persona, origin, now=None, catch_up=True, writer=writer, live=True)
    waiting_since: float | None = None  # when the oldest record not yet committed came

    def take(item: Item | None) -> bool:
        nonlocal waiting_since
        if not run.take(item) and run.pending():
            if waiting_since is None:
                waiting_since = time.monotonic()
            elif time.monotonic() - waiting_since >= STREAM_PAUSE_S * 2:  # a feed that never pauses
                run.settle()
        if not run.pending():
            waiting_since = None
        return True

    _drive(run, validated(records, persona.settings, run.clock), take)
    return run.report(interrupted=stop is not None and stop.is_set())


class _Run:
    """What a file ingest and a live feed share: the batch and the quarantine being filled,
    committing them, keeping the profile index current, and the report."""

    def __init__(self, persona: Persona, origin: str, *, now: datetime | None, catch_up: bool, writer: Writer,
                 live: bool = False) -> None:
        self.started = time.perf_counter()
        self.persona, self.writer, self.live = persona, writer, live
        self.now = now or datetime.now(UTC)  # a live feed's "now" moves on at each commit
        self.result = IngestReport(origin)
        # each rejected record is kept from when it was quarantined (a live feed runs for days)
        self.quarantine = Quarantine(persona, origin, clock=lambda: now or datetime.now(UTC))
        with persona.recorder.transaction():
            persona.recorder.purge_quarantine(micros(self.now))
        self.batch: list[Event] = []
        self.total = AppendResult()
        self.projector = Projector(persona, cache_limit=INGEST_CACHE, keep_dropped=True)
        self.dirty: set[str] = set(persona.recorder.lagging_persons()) if catch_up else set()
        self.refreshed = time.monotonic()
        self.pause = REFRESH_EVERY_S  # between refreshes of a long file ingest
        self.held_at = 0.0  # resident MB when cached states were last dropped

    def clock(self) -> datetime:
        return self.now

    def pending(self) -> bool:
        """Whether anything taken is not committed yet."""
        return bool(self.batch or self.quarantine.rows)

    def take(self, item: Item | None, progress: Progress | None = None) -> bool:
        """One validated item into the batch or the quarantine; True when they were committed
        (a batch full, or a quiet feed's PAUSE)."""
        if item is PAUSE:  # a quiet feed: commit what came, and show it
            self.settle()
            return True
        line, size, reason, raw, decoded, events = item
        self.result.lines = line
        if progress is not None:
            progress(size)
        if reason is not None:
            self.quarantine.add(line, raw, reason, decoded)
        elif not self.result.count_empty(decoded, events):
            self.batch.extend(events or ())
        if len(self.batch) >= self.persona.settings.batch_size or len(self.quarantine.rows) >= QUARANTINE_BATCH:
            self.flush()  # bounded memory, even for a file that is all bad lines
            return True
        return False

    def refresh(self, *, last: bool = False, parallel: bool = False) -> None:
        began = time.monotonic()
        # incremental: each state caught up with its new events only. At the end, every stream
        # touched is left with a snapshot at most a few events old, so that the next ingest (or
        # reader) starts from it rather than replaying the stream.
        dirty = sorted(self.dirty)
        for start in range(0, len(dirty), REFRESH_SLICE):  # a slice at a time: memory stays bounded
            self.projector.refresh(dirty[start:start + REFRESH_SLICE],
                                   snapshot_every=SNAPSHOT_AT_END if last else None, parallel=last and parallel)
        self.dirty.clear()
        self.refreshed = time.monotonic()
        # a file touching many people spends at most a tenth of its time refreshing before its end
        self.pause = max(REFRESH_EVERY_S, 9 * (self.refreshed - began))

    def flush(self) -> None:
        if self.live:
            self.now = datetime.now(UTC)  # a feed runs for days: "the future" moves with it
        if self.batch:
            appended = self.persona.log.append(self.batch, keep=True, writer=self.writer)
            self.batch.clear()  # committed: first of all, never to be appended again
            self.dirty.update(appended.streams)
            recorded, appended.recorded = appended.recorded, []
            self.total.add(appended)
            self.projector.advance(recorded)
            self.hold_memory()
        self.quarantine.flush()
        if self.dirty and time.monotonic() - self.refreshed >= self.pause:
            self.refresh()

    def hold_memory(self) -> None:
        """Above PERSONA_INGEST_MEMORY_MB of resident memory, drop half of the cached states
        (a projection's state grows with its person's history): again only once memory grew
        on by a twentieth, since freed memory is kept by the process for what comes next."""
        resident = resident_mb()
        if resident is not None and resident > max(self.persona.settings.ingest_memory_mb, self.held_at * 1.05):
            self.projector.shrink()
            self.held_at = resident

    def settle(self) -> None:
        """Commit what was taken, and show it in the index now."""
        self.flush()
        if self.dirty:
            self.refresh()

    def report(self, *, interrupted: bool) -> IngestReport:
        report, total = self.result, self.total
        report.interrupted = interrupted
        report.live = self.live
        report.appended = total.appended
        report.duplicates = total.duplicates
        report.profiles_created = total.profiles_created
        report.merges = total.merges
        report.merges_refused = total.merges_refused
        people = identity.persons(self.persona.recorder, total.streams)  # who changed: persons, as the API names them
        report.changed = {person.id: 0 for person in people.values()} | total.streams
        report.quarantined = self.quarantine.count
        report.quarantine_reasons = self.quarantine.reasons
        report.seconds = time.perf_counter() - self.started
        return report


def _drive(run: _Run, items: Generator[Item | None, None, None], take: Callable[[Item | None], bool], *,
           parallel: bool = False) -> bool:
    """Each item to `take`, until the items end (True) or `take` says to stop (False); then what
    was taken is committed and the index brought up to date (`parallel`: in a second process)."""
    finished = True
    try:
        _Collector.relax(+1)
        try:
            for item in items:
                if not take(item):
                    finished = False
                    break
        except (KeyboardInterrupt, Exception):  # Ctrl+C on a file, or a failure: what was read and
            run.flush()  # validated before it is kept, then it is raised
            raise
        finally:
            items.close()  # the reader (a process, maybe) never outlives the loop, however it ends
        run.flush()
        if run.dirty:
            run.refresh(last=True, parallel=parallel)
    finally:
        _Collector.relax(-1)
    return finished
