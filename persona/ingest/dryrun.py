"""An ingest that stores nothing: what a real run would append, skip as duplicates and quarantine."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from persona.core import Persona
from persona.eventlog import AppendResult
from persona.events import LIBRARY, Event, Writer
from persona.ingest.engine import PAUSE, IngestReport, Record, validated
from persona.ingest.quarantine import reason_kind


class _Undo(Exception):
    """Raised at the end of a dry run to roll back everything it appended."""


def dry_run(persona: Persona, records: Iterable[Record | None], *, origin: str, now: datetime | None = None,
            writer: Writer = LIBRARY) -> IngestReport:
    """The report `ingest_file` would give for these records, with nothing stored: every record
    is read, mapped and validated, and the valid ones are appended by the event log itself, in one
    transaction that is then rolled back — so duplicates (in the log already, or earlier in the
    same records), new profiles and merges are counted exactly as a real run counts them. No
    quarantine row, key, link, event or read model is left; the refused records are only counted.
    The transaction holds the store's write lock until the records end (other writers wait)."""
    started = time.perf_counter()
    moment = now or datetime.now(UTC)
    report = IngestReport(origin)
    total = AppendResult()
    batch: list[Event] = []

    def append() -> None:
        if batch:
            total.add(persona.log.append(batch, now=moment, writer=writer))
            batch.clear()

    try:
        with persona.recorder.transaction():
            for item in validated(records, persona.settings, lambda: moment):
                if item is PAUSE:
                    continue
                line, _, reason, _, decoded, events = item
                report.lines = line
                if reason is not None:
                    report.quarantined += 1
                    kind = reason_kind(reason)
                    report.quarantine_reasons[kind] = report.quarantine_reasons.get(kind, 0) + 1
                elif not report.count_empty(decoded, events):
                    batch.extend(events or ())
                if len(batch) >= persona.settings.batch_size:
                    append()
            append()
            raise _Undo
    except _Undo:
        pass
    finally:
        persona.log.forget_cached_keys()  # it cached profiles and keys that were never committed
    report.appended, report.duplicates = total.appended, total.duplicates
    report.profiles_created, report.merges, report.merges_refused = (total.profiles_created, total.merges,
                                                                     total.merges_refused)
    report.seconds = time.perf_counter() - started
    return report
