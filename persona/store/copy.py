"""Copying a whole store, through the stores' own interfaces: ciphertext as it is, wrapped keys
as they are, numbers (positions, stream numbers) kept. `persona migrate` copies between
backends with it, and a PostgreSQL store's backup is a copy into a SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from persona.errors import ConfigurationError, TamperError
from persona.store.protocols import Connection, Maintenance, Recorder
from persona.store.schema import TABLES


class Copyable(Connection, Maintenance, Protocol):
    """What a copy needs of a store: its transactions and snapshots, dump, load and counts."""


def copy_store(source: Copyable, target: Copyable, progress: Callable[[str, int], None] | None = None,
               *, tables: Sequence[str] = tuple(TABLES)) -> dict[str, int]:
    """Every row of every table (or of these), numbers (positions, stream numbers) kept, as of one
    moment of the source (writers may go on: the copy is of that moment). The target must be
    empty. Returns the rows copied per table."""
    if target.counts()["events"] or target.counts()["streams"]:
        raise ConfigurationError("the target store is not empty; migrate only into a new store")
    copied: dict[str, int] = {}
    with source.snapshot(), target.transaction():
        for table in tables:
            copied[table] = 0
            for page in source.dump(table):
                target.load(table, page)
                copied[table] += len(page)
                if progress is not None:
                    progress(table, len(page))
        target.finish_load()
    return copied


def row_counts(recorder: Copyable) -> dict[str, int]:
    return {table: sum(len(page) for page in recorder.dump(table)) for table in TABLES}


def check_copy(copied: dict[str, int], target: Copyable) -> dict[str, int]:
    """The target holds as many rows of every table as were read from the source's snapshot,
    or a TamperError naming the first that differs."""
    theirs, ours = copied, row_counts(target)
    for table in TABLES:
        if theirs[table] != ours[table]:
            raise TamperError(f"table {table}: {theirs[table]} rows in the source, {ours[table]} in the copy")
    return ours


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
    from persona.store.sqlite import SQLiteRecorder

    path = Path(where)
    if create:
        if path.exists():
            raise ConfigurationError("the target SQLite database already exists; migrate only into a new store")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private before the first byte
    return SQLiteRecorder(path, create=create)
