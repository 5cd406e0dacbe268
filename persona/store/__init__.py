"""Storage backends. Recorders keep opaque rows; sealing happens above them.

The package is a leaf: it imports nothing of persona but persona.errors. What a backend must
do is protocols.py (small protocols composed into `Recorder`; base.py names them all, with the
rows of rows.py), what a store holds schema.py, the SQL both backends run sql.py and the
methods over it shared.py, where driver errors stop boundary.py, and copying a store copy.py.
The backends are sqlite.py and postgres.py, each with the parts that are its alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from persona.store.base import Head, Recorder, StoredEvent
from persona.store.sqlite import SQLiteRecorder

__all__ = ["Head", "Recorder", "SQLiteRecorder", "StoredEvent", "open_recorder"]


class Where(Protocol):
    """Where a store is (persona.settings.Settings is one)."""

    @property
    def database_url(self) -> str | None: ...
    @property
    def db_path(self) -> Path: ...


def open_recorder(settings: Where, *, create: bool = False) -> Recorder:
    """The store the settings name: PostgreSQL when they carry a database URL, else the
    data directory's SQLite file."""
    if settings.database_url:
        from persona.store.postgres import PostgresRecorder  # psycopg loads only when used

        return PostgresRecorder(settings.database_url, create=create)
    return SQLiteRecorder(settings.db_path, create=create)
