"""Backups that cannot resurrect the erased: a consistent copy of the database (never
the key file), and a restore that re-applies every erasure recorded since."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from persona.core import DirectoryLock, Persona, load_keyring
from persona.crypto import Keyring, fingerprint
from persona.erasure import erase_profile, reapply_ledger
from persona.errors import ConfigurationError, KeyMismatchError
from persona.events import from_micros
from persona.settings import Settings
from persona.store.sqlite import SCHEMA_VERSION, SQLiteRecorder


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    taken_at: str
    bytes: int
    events: int
    profiles: int


def backup(persona: Persona, dest: Path) -> BackupInfo:
    """Write a consistent, compacted copy of the database to DEST (a file, or a folder)."""
    taken_at = datetime.now(UTC)
    if dest.is_dir():
        dest = dest / f"persona-{taken_at.strftime('%Y%m%dT%H%M%SZ')}.db"
    if dest.exists():
        raise ConfigurationError("the backup destination already exists; choose a new file")
    data_dir = persona.settings.data_dir.resolve()
    if dest.resolve().parent == data_dir:
        raise ConfigurationError("write backups outside the data directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private from the first byte
    try:
        persona.recorder.backup(str(dest))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    copy = sqlite3.connect(dest, isolation_level=None)
    try:
        copy.execute(
            "INSERT INTO meta (key, value) VALUES ('backup_taken_at', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (taken_at.isoformat(),),
        )
    finally:
        copy.close()
    os.chmod(dest, 0o600)
    counts = persona.recorder.counts()
    return BackupInfo(dest, taken_at.isoformat(), dest.stat().st_size, counts["events"], counts["keys"])


@dataclass(frozen=True)
class RestoreInfo:
    taken_at: str
    reapplied: list[str]


def restore(settings: Settings, source: Path) -> RestoreInfo:
    """Replace the data directory's database with a backup, after re-applying to it every
    erasure recorded in the ledger since. Refuses while any process has the store open.

    The backup is prepared beside the database and only swapped in once it is up to
    date, so a failure half-way leaves the current database as it was.
    """
    if not source.is_file():
        raise ConfigurationError("no such backup file")
    keyring = load_keyring(settings)
    meta = _backup_meta(source)
    if meta.get("pepper_fingerprint") != fingerprint(keyring.pepper, b"pepper"):
        raise KeyMismatchError("the backup was made with a different key file")
    lock = DirectoryLock(settings, exclusive=True)
    if settings.database_url:
        try:
            return RestoreInfo(meta["backup_taken_at"], _restore_postgres(settings, keyring, source))
        finally:
            lock.release()
    try:
        staging = settings.db_path.with_name(settings.db_path.name + ".restoring")
        for leftover in _with_sidecars(staging):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(source, staging)
        os.chmod(staging, 0o600)
        with Persona(settings, keyring, SQLiteRecorder(staging)) as persona:
            persona.log.check_keyring()
            reapplied = reapply_ledger(persona)
            if not persona.recorder.checkpoint():
                raise ConfigurationError("could not checkpoint the restored database")
        for sidecar in _with_sidecars(settings.db_path)[1:]:
            sidecar.unlink(missing_ok=True)  # the old database's WAL must not meet the new file
        os.replace(staging, settings.db_path)
    finally:
        lock.release()
    return RestoreInfo(meta["backup_taken_at"], reapplied)


def _restore_postgres(settings: Settings, keyring: Keyring, source: Path) -> list[str]:
    """Replace the PostgreSQL store with the backup, erasures re-applied first.

    The store is shared by many machines, each with its own ledger: so besides this
    machine's ledger, every tombstone of the store being replaced is re-applied too (at its
    own time), and kept, for people the backup does not hold yet. That happens on a private
    SQLite copy of the backup (secure delete, WAL truncated), so no erased person's rows are
    written to PostgreSQL (or its WAL) again; then the copy replaces the store in one
    transaction, unless someone was erased meanwhile."""
    from persona.migrate import copy_store
    from persona.store.postgres import PostgresRecorder

    assert settings.database_url is not None
    try:
        current = PostgresRecorder(settings.database_url)
    except ConfigurationError:  # no store there yet: a restore onto a new server
        erased_here: dict[str, int] = {}
        mark = 0
    else:
        try:
            erased_here, mark = dict(current.tombstones()), current.erasure_mark()
        finally:
            current.close()
    staging = settings.data_dir / "restoring.db"  # the backup is opened read-write: a private copy
    for leftover in _with_sidecars(staging):
        leftover.unlink(missing_ok=True)
    os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # its WAL inherits the mode
    shutil.copyfile(source, staging)
    try:
        with Persona(settings, keyring, SQLiteRecorder(staging)) as staged:
            staged.log.check_keyring()
            reapplied = reapply_ledger(staged)
            rec = staged.recorder
            for pid, erased_at in erased_here.items():
                head = rec.heads([pid]).get(pid)
                if head is not None and head.wrapped is not None:
                    erase_profile(staged, pid, now=from_micros(erased_at), reapply=True)
                    reapplied.append(pid)
                elif rec.tombstone(pid) is None:
                    with rec.transaction():  # not in the backup yet: the tombstone is kept all the same
                        rec.erase(pid, erased_at)
            if not rec.checkpoint():
                raise ConfigurationError("could not checkpoint the restored copy")
            target = PostgresRecorder(settings.database_url, create=None)
            try:
                with target.transaction():
                    if target.erasure_mark() != mark:
                        raise ConfigurationError("someone was erased while the backup was prepared; run the"
                                                 " restore again (nothing was changed)")
                    target.recreate()
                    copy_store(rec, target)
            finally:
                target.close()
    finally:
        for leftover in _with_sidecars(staging):
            leftover.unlink(missing_ok=True)
    return reapplied


def _with_sidecars(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]


def _backup_meta(source: Path) -> dict[str, str]:
    try:
        probe = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            meta = dict(probe.execute("SELECT key, value FROM meta").fetchall())
        finally:
            probe.close()
    except sqlite3.DatabaseError as e:
        raise ConfigurationError("the file is not a persona backup") from e
    if meta.get("schema_version") != SCHEMA_VERSION or "backup_taken_at" not in meta:
        raise ConfigurationError("the file is not a persona backup")
    return meta
