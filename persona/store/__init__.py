"""Storage backends. Recorders keep opaque rows; sealing happens above them.

The package is a leaf: it imports nothing of persona but persona.errors. What a backend must
do is protocols.py (small protocols composed into `Recorder`; base.py names them all, with the
rows of rows.py), what a store holds schema.py, the SQL both backends run sql.py and the
methods over it shared.py, where driver errors stop boundary.py, and copying a store copy.py.
The backends are sqlite.py and postgres.py, each with the parts that are its alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from persona.errors import ConfigurationError
from persona.store.base import Head, Recorder, StoredChunk
from persona.store.sqlite import SQLiteRecorder

__all__ = ["Head", "Recorder", "SQLiteRecorder", "StoredChunk", "open_recorder", "open_store", "parse_target"]


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


def parse_target(text: str) -> tuple[str, str]:
    """('sqlite', path of the database file) or ('postgresql', URL)."""
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql", text
    if text.startswith("sqlite:"):
        path = Path(text.removeprefix("sqlite:")).expanduser()
        return "sqlite", str(path / "persona.db" if path.suffix != ".db" else path)
    raise ConfigurationError("name a store as sqlite:DIR (a data directory, or a .db file) or postgresql://...")


def open_store(spec: str, *, create: bool = False) -> Recorder:
    """The store a spec of parse_target names; with `create`, a new one (a SQLite file is made
    private before its first byte, and one already there is refused)."""
    kind, where = parse_target(spec)
    if kind == "postgresql":
        from persona.store.postgres import PostgresRecorder  # psycopg loads only when used

        return PostgresRecorder(where, create=create)
    path = Path(where)
    if create:
        if path.exists():
            raise ConfigurationError("the target SQLite database already exists; migrate only into a new store")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private before the first byte
    return SQLiteRecorder(path, create=create)
