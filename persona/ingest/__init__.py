"""Getting records into the log: source formats, quarantine, reports."""

from persona.ingest.engine import IngestReport, Record, ingest_feed, ingest_file
from persona.ingest.jsonl import ingest_jsonl, jsonl_records, live_jsonl_records
from persona.ingest.quarantine import Quarantine

__all__ = ["IngestReport", "Quarantine", "Record", "ingest_feed", "ingest_file", "ingest_jsonl", "jsonl_records",
           "live_jsonl_records"]
