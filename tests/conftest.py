"""Shared fixtures: real SQLite files in a temporary directory, real keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings as hypothesis_settings

from persona import Persona, Settings
from persona.events import Event, validate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# CI runs the same examples every time (a red build is reproducible, never a dice roll);
# locally hypothesis explores new ones on each run.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(tmp_path / "data", env={})


@pytest.fixture
def persona(settings: Settings) -> Iterator[Persona]:
    with Persona.init(settings) as p:
        yield p


def record(
    email: str = "alice@example.com",
    kind: str = "page_viewed",
    data: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    namespace: str = "email",
    occurred_at: str = "2026-05-01T10:00:00+08:00",
    source: str = "web",
) -> dict[str, Any]:
    """One canonical record as a source would send it."""
    doc: dict[str, Any] = {
        "source": source,
        "type": kind,
        "occurred_at": occurred_at,
        "subject": {"namespace": namespace, "value": email},
        "data": data if data is not None else {"url": f"https://shop.example/p/{event_id or 'x'}"},
    }
    if event_id is not None:
        doc["event_id"] = event_id
    return doc


def event(*args: Any, **kwargs: Any) -> Event:
    return validate(record(*args, **kwargs), now=NOW, max_bytes=64 * 1024)


def jsonl(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def raw_bytes_of(data_dir: Path) -> bytes:
    """Every byte of every file under the data directory (database, WAL, key file, ledger...)."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())
