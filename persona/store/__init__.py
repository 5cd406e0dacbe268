"""Storage backends. Recorders keep opaque rows; sealing happens above them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona.store.base import Head, Recorder, StoredEvent
from persona.store.sqlite import SQLiteRecorder

if TYPE_CHECKING:
    from persona.settings import Settings

__all__ = ["Head", "Recorder", "SQLiteRecorder", "StoredEvent", "open_recorder"]


def open_recorder(settings: Settings, *, create: bool = False) -> Recorder:
    """The store the settings name: PostgreSQL when they carry a database URL, else the
    data directory's SQLite file."""
    if settings.database_url:
        from persona.store.postgres import PostgresRecorder  # psycopg loads only when used

        return PostgresRecorder(settings.database_url, create=create)
    return SQLiteRecorder(settings.db_path, create=create)
