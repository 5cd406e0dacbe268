"""The canonical JSONL reader (docs/events.md): one event per line, as records for the engine."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import orjson

from persona.core import Persona
from persona.events import LIBRARY, Writer
from persona.ingest.engine import IngestReport, Progress, Record, ingest_records


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
    return ingest_records(persona, records, origin=origin, now=now, progress=progress, writer=writer)
