"""Getting records into the log: source formats, quarantine, reports."""

from persona.ingest.engine import IngestReport, Record, ingest_records
from persona.ingest.jsonl import ingest_jsonl
from persona.ingest.quarantine import Quarantine

__all__ = ["IngestReport", "Quarantine", "Record", "ingest_jsonl", "ingest_records"]
