"""Backups that cannot resurrect the erased: a consistent copy of the database (never
the key file), and a restore that re-applies every erasure recorded since."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from persona.core import Persona, load_keyring
from persona.crypto import fingerprint
from persona.erasure import reapply_ledger
from persona.errors import ConfigurationError, KeyMismatchError
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
    persona.recorder.backup(str(dest))
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
    """Replace the data directory's database with a backup, then re-apply later erasures.

    Stop every process using the data directory first.
    """
    if not source.is_file():
        raise ConfigurationError("no such backup file")
    keyring = load_keyring(settings)
    try:
        probe = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        meta = dict(probe.execute("SELECT key, value FROM meta").fetchall())
        probe.close()
    except sqlite3.DatabaseError as e:
        raise ConfigurationError("the file is not a persona backup") from e
    if meta.get("schema_version") != SCHEMA_VERSION or "backup_taken_at" not in meta:
        raise ConfigurationError("the file is not a persona backup")
    if meta.get("pepper_fingerprint") != fingerprint(keyring.pepper, b"pepper"):
        raise KeyMismatchError("the backup was made with a different key file")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    staging = settings.db_path.with_name(settings.db_path.name + ".restoring")
    shutil.copyfile(source, staging)
    for suffix in ("-wal", "-shm"):
        Path(str(settings.db_path) + suffix).unlink(missing_ok=True)
    os.replace(staging, settings.db_path)
    os.chmod(settings.db_path, 0o600)
    with Persona(settings, keyring, SQLiteRecorder(settings.db_path)) as persona:
        persona.log.check_keyring()
        reapplied = reapply_ledger(persona)
        persona.recorder.checkpoint()
    return RestoreInfo(meta["backup_taken_at"], reapplied)
