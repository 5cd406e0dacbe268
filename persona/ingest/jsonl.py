"""The canonical JSONL reader (docs/events.md): one event per line, as records for the engine
(persona.ingest.engine) — a file's, or a live feed's with its pauses."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import datetime

import orjson

from persona.core import Persona
from persona.events import LIBRARY, Writer
from persona.ingest.engine import STREAM_PAUSE_S, IngestReport, Progress, Record, ingest_file, paced_records


def jsonl_records(lines: Iterable[bytes], max_bytes: int) -> Iterator[Record]:
    """Canonical JSONL: one event per line."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            yield Record(number, line, (), size=len(raw))
        elif len(line) > max_bytes:
            yield Record(number, line, (), f"record: larger than the {max_bytes}-byte limit", size=len(raw))
        else:
            try:
                decoded = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield Record(number, line, (), "record: not valid JSON", size=len(raw))
            else:
                yield Record(number, line, (decoded,), decoded=decoded, size=len(raw))


def live_jsonl_records(lines: Iterable[bytes], max_bytes: int, *, every: float = STREAM_PAUSE_S,
                       stop: threading.Event | None = None) -> Iterator[Record | None]:
    """The records of a live feed of canonical JSONL (stdin), read by a thread, with a PAUSE
    whenever nothing arrived for `every` seconds (see `paced_records`; `ingest_feed` takes them)."""
    return paced_records(jsonl_records(lines, max_bytes), every, stop)


def ingest_jsonl(
    persona: Persona,
    lines: Iterable[bytes],
    *,
    origin: str,
    now: datetime | None = None,
    progress: Progress | None = None,
    writer: Writer = LIBRARY,
) -> IngestReport:
    """Append every valid line; quarantine the rest. Memory is bounded by the batch size."""
    records = jsonl_records(lines, persona.settings.max_event_bytes)
    return ingest_file(persona, records, origin=origin, now=now, progress=progress, writer=writer)
