"""Copying a whole store, through the stores' own interfaces: ciphertext as it is, wrapped keys
as they are, numbers (positions, stream numbers) kept. `persona migrate` copies between
backends with it, and a PostgreSQL store's backup is a copy into a SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from persona.errors import ConfigurationError, TamperError
from persona.store.protocols import Connection, Maintenance
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
