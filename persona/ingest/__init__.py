"""Getting records into the log: source formats, quarantine, reports."""

from persona.ingest.jsonl import IngestReport, ingest_jsonl
from persona.ingest.quarantine import Quarantine

__all__ = ["IngestReport", "Quarantine", "ingest_jsonl"]
