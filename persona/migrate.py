"""Copying a whole store between backends: ciphertext as it is, wrapped keys as they are.

`persona migrate --from sqlite:DIR --to postgresql://...` (or back) copies every table in
one read snapshot of the source and one transaction on the target, then checks that the
two hold the same number of rows of each table and that every hash chain of the copy
verifies and every live event still opens with its key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona.errors import ConfigurationError, TamperError
from persona.store.base import TABLES, Recorder

if TYPE_CHECKING:
    from persona.settings import Settings


@dataclass
class MigrateReport:
    rows: dict[str, int] = field(default_factory=dict)  # copied, per table
    events: int = 0  # checked: chains verified
    opened: int = 0  # checked: live events opened with their keys


def copy_store(source: Recorder, target: Recorder, progress: Callable[[str, int], None] | None = None,
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


def row_counts(recorder: Recorder) -> dict[str, int]:
    return {table: sum(len(page) for page in recorder.dump(table)) for table in TABLES}


def parse_target(text: str) -> tuple[str, str]:
    """('sqlite', path of the database file) or ('postgresql', URL)."""
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql", text
    if text.startswith("sqlite:"):
        path = Path(text.removeprefix("sqlite:")).expanduser()
        return "sqlite", str(path / "persona.db" if path.suffix != ".db" else path)
    raise ConfigurationError("name a store as sqlite:DIR (a data directory, or a .db file) or postgresql://...")


def check_copy(copied: dict[str, int], target: Recorder) -> dict[str, int]:
    """The target holds as many rows of every table as were read from the source's snapshot,
    or a TamperError naming the first that differs."""
    theirs, ours = copied, row_counts(target)
    for table in TABLES:
        if theirs[table] != ours[table]:
            raise TamperError(f"table {table}: {theirs[table]} rows in the source, {ours[table]} in the copy")
    return ours


def open_store(spec: str, *, create: bool = False) -> Recorder:
    kind, where = parse_target(spec)
    if kind == "postgresql":
        from persona.store.postgres import PostgresRecorder

        return PostgresRecorder(where, create=create)
    from persona.store.sqlite import SQLiteRecorder

    path = Path(where)
    if create:
        if path.exists():
            raise ConfigurationError("the target SQLite database already exists; migrate only into a new store")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private before the first byte
    return SQLiteRecorder(path, create=create)


def migrate(settings: Settings, source_spec: str, target_spec: str,
            progress: Callable[[str, int], None] | None = None) -> MigrateReport:
    """Copy the store at `source_spec` into a new one at `target_spec`, then check the copy:
    row counts of every table, every hash chain, every live event opened (with the keyring
    of `settings`, which must be the store's)."""
    from persona.core import Persona, load_keyring
    from persona.verify import verify

    keyring = load_keyring(settings)
    source = open_store(source_spec)
    try:
        Persona(settings, keyring, source).log.check_keyring()  # the wrong key file fails before any copy
        target = open_store(target_spec, create=True)
        try:
            report = MigrateReport(rows=copy_store(source, target, progress))
            check_copy(report.rows, target)
            copy = Persona(settings, keyring, target)
            copy.log.check_keyring()
            checked = verify(copy)
            report.events, report.opened = checked.events, checked.opened
        finally:
            target.close()
    finally:
        source.close()
    return report


def audit(settings: Settings, spec: str, outcome: str, **detail: Any) -> None:
    """An entry in the audit log of the store at `spec`: `persona migrate` read every person's data
    out of the source (and made the target: its own log says how). Tagged under the key file of
    `settings`, as every audit entry is (persona.integrity)."""
    from persona.audit import local_entries
    from persona.core import load_keyring
    from persona.integrity import KEY_PURPOSE, Tagger

    store = open_store(spec)
    try:
        store.tagger = Tagger(load_keyring(settings).derived(KEY_PURPOSE))
        with store.transaction():
            store.append_audit(local_entries("migrate", "migrate", outcome=outcome, **detail))
    finally:
        store.close()
