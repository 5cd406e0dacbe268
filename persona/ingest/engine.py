"""The ingest engine: records in, a report out. Whatever the source (canonical JSONL, a mapped
CSV or JSONL export), its records are validated (docs/events.md), the refused ones quarantined
with their reasons, the rest appended in batches and indexed; a live feed's records are paced."""

from __future__ import annotations

import gc
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
INGEST_CACHE = 100_000  # streams whose states an ingest keeps in memory (~5 KB each at most in practice)
SNAPSHOT_AT_END = 8  # events: a stream this far past its snapshot gets a new one when an ingest ends
REFRESH_EVERY_S = 5.0  # a long file ingest refreshes the index this often (or less: a fifth of its time)
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


def ingest_records(
    persona: Persona,
    records: Iterable[Record | None],
    *,
    origin: str,
    now: datetime | None = None,
    progress: Progress | None = None,
    stream: bool = False,
    paced: bool = False,
    parallel: bool = False,
    catch_up: bool = False,
    stop: threading.Event | None = None,
    writer: Writer = LIBRARY,
) -> IngestReport:
    """Append the events of every valid record; quarantine the rest, each with its reason and
    line. A record's events go in together or not at all. Memory is bounded by the batch size.
    Each event records `writer` (sealed with it): who appended it.

    `stream`: the source is a live feed (stdin): whatever arrived is committed, and shown in
    the profile index, whenever the feed pauses for STREAM_PAUSE_S — each record is durable
    and visible within about a second of arriving, however slowly records come. `paced`: the
    records already carry PAUSE markers (a live feed read by `live_records`). `stop` ends a live
    feed: once it is set, what has been read is committed and reported. A file stops at the next
    record instead: its reader is stopped, what was read is committed and indexed, and the report
    says it was interrupted (the rest is appended by ingesting the file again). `catch_up`: first
    find the persons whose index lags their log (an earlier ingest killed between committing a
    batch and indexing it) and index them with this ingest's own. `parallel` (a
    file): records are read, mapped and validated in a second process (persona.ingest.pipeline)
    while this one appends — when this process runs no other thread, else in this one.
    """
    started = time.perf_counter()
    fixed_now = now
    now = fixed_now or datetime.now(UTC)
    settings = persona.settings
    report = IngestReport(origin)
    # each rejected record is kept from when it was quarantined (a live feed runs for days)
    quarantine = Quarantine(persona, origin, clock=lambda: fixed_now or datetime.now(UTC))
    with persona.recorder.transaction():
        persona.recorder.purge_quarantine(micros(now))
    batch: list[Event] = []
    total = AppendResult()

    projector = Projector(persona, cache_limit=INGEST_CACHE)
    dirty: set[str] = set(persona.recorder.lagging_persons()) if catch_up else set()
    refreshed = time.monotonic()
    pause = REFRESH_EVERY_S  # between refreshes of a long file ingest

    def refresh(*, last: bool = False) -> None:
        nonlocal refreshed, pause
        began = time.monotonic()
        # incremental: each state caught up with its new events only. At the end, every stream
        # touched is left with a snapshot at most a few events old, so that the next ingest (or
        # reader) starts from it rather than replaying the stream.
        projector.refresh(sorted(dirty), snapshot_every=SNAPSHOT_AT_END if last else None,
                          parallel=last and parallel and not stream)
        dirty.clear()
        refreshed = time.monotonic()
        # a file touching many people spends at most a fifth of its time refreshing before its end
        pause = max(REFRESH_EVERY_S, 4 * (refreshed - began))

    def flush() -> None:
        nonlocal now
        if stream and fixed_now is None:
            now = datetime.now(UTC)  # a feed runs for days: "the future" moves with it
        if batch:
            appended = persona.log.append(batch, keep=True, writer=writer)
            batch.clear()  # committed: first of all, never to be appended again
            dirty.update(appended.streams)
            recorded, appended.recorded = appended.recorded, []
            total.add(appended)
            projector.advance(recorded)
        quarantine.flush()
        if dirty and time.monotonic() - refreshed >= pause:
            refresh()

    if stream:
        items = validated(records if paced else paced_records(records, STREAM_PAUSE_S, stop), settings, lambda: now)
    elif parallel and threading.active_count() == 1:  # fork only a process with no other thread (whose
        from persona.ingest.pipeline import pipelined  # locks the child would inherit, held forever)

        items = pipelined(lambda: validated(records, settings, lambda: now))
    else:
        items = validated(records, settings, lambda: now)
    waiting_since: float | None = None  # a stream: when the oldest record not yet committed came
    cut_short = False  # a file asked to `stop` before its end
    try:
        _Collector.relax(+1)
        try:
            for item in items:
                if stop is not None and stop.is_set() and not stream:
                    cut_short = True
                    break
                if item is PAUSE:  # a quiet feed: commit what came, and show it
                    flush()
                    if dirty:
                        refresh()
                    waiting_since = None
                    continue
                line, size, reason, raw, decoded, events = item
                report.lines = line
                if progress is not None:
                    progress(size)
                if reason is not None:
                    quarantine.add(line, raw, reason, decoded)
                elif not report.count_empty(decoded, events):
                    batch.extend(events or ())
                if len(batch) >= settings.batch_size or len(quarantine.rows) >= QUARANTINE_BATCH:
                    flush()  # bounded memory, even for a file that is all bad lines
                elif stream and (batch or quarantine.rows):
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                    elif time.monotonic() - waiting_since >= STREAM_PAUSE_S * 2:  # a feed that never pauses
                        flush()
                        if dirty:
                            refresh()
                if stream and not batch and not quarantine.rows:
                    waiting_since = None
        except KeyboardInterrupt:  # Ctrl+C on a file: what was read and validated is kept
            flush()
            raise
        except Exception:
            flush()  # what was read and validated before the failure is kept, then the failure is raised
            raise
        finally:
            items.close()  # the reader (a process, maybe) never outlives the loop, however it ends
        flush()
        if dirty:
            refresh(last=True)
    finally:
        _Collector.relax(-1)
    report.interrupted = cut_short or (stream and stop is not None and stop.is_set())
    report.live = stream
    report.appended = total.appended
    report.duplicates = total.duplicates
    report.profiles_created = total.profiles_created
    report.merges = total.merges
    report.merges_refused = total.merges_refused
    people = identity.persons(persona.recorder, total.streams)  # who changed: persons, as the API names them
    report.changed = {person.id: 0 for person in people.values()} | total.streams
    report.quarantined = quarantine.count
    report.quarantine_reasons = quarantine.reasons
    report.seconds = time.perf_counter() - started
    return report
