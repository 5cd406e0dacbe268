"""Getting records into the log: source formats, quarantine, reports."""

from persona.ingest.jsonl import IngestReport, Record, ingest_jsonl, ingest_records
from persona.ingest.quarantine import Quarantine

__all__ = ["IngestReport", "Quarantine", "Record", "ingest_jsonl", "ingest_records"]
