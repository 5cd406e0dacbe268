"""Backups that hold no plaintext and cannot resurrect the erased.

A backup is a SQLite file (from either backend) holding the log as ciphertext, the data keys
as wrapped, identity links as keyed hashes, tombstones, the sealed quarantine, merges, the
sealed model registry, API token hashes and the audit log; never the key file, and none of
the read models (store.base.READ_MODELS): the profile index, RFM scores and predictions hold
people's values in plaintext for queries, so they never leave the live store.

A restore prepares the backup in a private folder beside the database: it re-applies every
erasure of the ledger (which must verify, line by line) and every tombstone of the store it
replaces, verifies the whole copy, rebuilds the read models from the log, and only then swaps
it in, so a failure half-way leaves the current store as it was.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from persona.core import DirectoryLock, Persona, load_keyring
from persona.crypto import fingerprint
from persona.erasure import erase_profile, reapply_ledger
from persona.errors import ConfigurationError, KeyMismatchError
from persona.events import from_micros
from persona.ledger import ErasureLedger
from persona.migrate import copy_store
from persona.projector import rebuild
from persona.settings import DB_NAME, Settings
from persona.store.base import BACKED_UP, Recorder
from persona.store.sqlite import SCHEMA_VERSION, SQLiteRecorder
from persona.verify import verify

STAGING = ".restoring"  # the folder in the data directory where a restore prepares the backup


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    taken_at: str
    bytes: int
    events: int
    profiles: int


def backup(persona: Persona, dest: Path) -> BackupInfo:
    """Write a consistent copy of the store, read models left out, to DEST (a file, or a folder)."""
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
        persona.recorder.backup(dest, BACKED_UP)  # its WAL, while it lasts, inherits the mode
        copy = SQLiteRecorder(dest)
        copy.tagger = persona.recorder.tagger  # the row it writes is tagged like the rows copied
        try:
            with copy.transaction():
                copy.set_meta("backup_taken_at", taken_at.isoformat())
            counts = copy.counts()
            copy.conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, for readers too
        finally:
            copy.close()
    except BaseException:
        for path in _with_sidecars(dest):
            path.unlink(missing_ok=True)
        raise
    os.chmod(dest, 0o600)
    return BackupInfo(dest, taken_at.isoformat(), dest.stat().st_size, counts["events"], counts["keys"])


@dataclass(frozen=True)
class RestoreInfo:
    taken_at: str
    reapplied: list[str]  # profiles erased again: in the ledger, or erased in the store replaced
    rebuilt: int  # persons whose read models were rebuilt from the log
    ledger_torn: bool = False  # the ledger's last line was torn by a crash mid-write, and passed over


def restore(settings: Settings, source: Path) -> RestoreInfo:
    """Replace the store with a backup, after re-applying to it every erasure made since (the
    ledger's, and the tombstones of the store replaced) and rebuilding its read models.
    Refuses while any process has the data directory open, and if any line of the erasure
    ledger does not verify."""
    if not source.is_file():
        raise ConfigurationError("no such backup file")
    keyring = load_keyring(settings)
    meta = _backup_meta(source)
    if meta.get("pepper_fingerprint") != fingerprint(keyring.pepper, b"pepper"):
        raise KeyMismatchError("the backup was made with a different key file")
    lock = DirectoryLock(settings, exclusive=True)
    try:
        ledger = ErasureLedger.of(settings.ledger_path, keyring).read()  # refuses a damaged ledger first
        erased_here, mark = _tombstones_now(settings)
        folder = settings.data_dir / STAGING
        shutil.rmtree(folder, ignore_errors=True)  # a restore that died half-way
        folder.mkdir(mode=0o700)
        try:
            staged_db = folder / DB_NAME
            os.close(os.open(staged_db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # its WAL inherits the mode
            shutil.copyfile(source, staged_db)
            # the copy is a store of its own: rebuild's worker processes open it by these settings
            staged_settings = dataclasses.replace(settings, data_dir=folder, database_url=None)
            with Persona(staged_settings, keyring, SQLiteRecorder(staged_db)) as staged:
                staged.log.check_keyring()
                reapplied = reapply_ledger(staged, ledger.entries)
                reapplied += _carry_tombstones(staged, erased_here)
                with staged.recorder.transaction():  # read models it carries (an older persona's, or
                    staged.recorder.clear_derived()  # smuggled in) are not checked: they are rebuilt
                verify(staged)  # a backup altered since it was taken goes no further
                rebuilt = _rebuild_read_models(staged)
                if not staged.recorder.checkpoint():
                    raise ConfigurationError("could not checkpoint the restored copy")
                if settings.database_url:
                    _replace_postgres(settings.database_url, staged.recorder, mark)
            if not settings.database_url:
                for sidecar in _with_sidecars(settings.db_path)[1:]:
                    sidecar.unlink(missing_ok=True)  # the old database's WAL must not meet the new file
                os.replace(staged_db, settings.db_path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
    return RestoreInfo(meta["backup_taken_at"], reapplied, rebuilt, ledger.torn)


def _tombstones_now(settings: Settings) -> tuple[dict[str, int], int]:
    """The erasures the store being replaced records (profile id -> when), and its erasure mark.

    A ledger can lose lines off its end, or be replaced whole by an older copy, without a
    trace; and on PostgreSQL every machine keeps its own. So the store's own tombstones are
    carried over to the backup as well."""
    current: Recorder
    if settings.database_url:
        from persona.store.postgres import PostgresRecorder  # psycopg: loaded only for PostgreSQL

        try:
            current = PostgresRecorder(settings.database_url)
        except ConfigurationError:  # no store there yet: a restore onto a new server
            return {}, 0
    elif not settings.db_path.exists():
        return {}, 0
    else:
        try:
            current = SQLiteRecorder(settings.db_path)
        except (sqlite3.DatabaseError, ConfigurationError) as e:
            raise ConfigurationError(
                "the current database cannot be read, so the erasures it records cannot be carried over to the"
                " backup; move it out of the data directory to restore without it (the ledger's erasures are"
                " still re-applied)") from e
    try:
        return dict(current.tombstones()), current.erasure_mark()
    finally:
        current.close()


def _carry_tombstones(staged: Persona, erased_here: dict[str, int]) -> list[str]:
    """Erase again, at their own time, the profiles the store being replaced had erased; keep the
    tombstones of those the backup does not hold yet. Returns the profiles erased."""
    rec, done = staged.recorder, []
    for pid, erased_at in sorted(erased_here.items()):
        head = rec.heads([pid]).get(pid)
        if head is not None and head.wrapped is not None:
            erase_profile(staged, pid, now=from_micros(erased_at), reapply=True)
            done.append(pid)
        elif rec.tombstone(pid) is None:
            with rec.transaction():
                rec.erase(pid, erased_at)
    return done


def _rebuild_read_models(staged: Persona) -> int:
    """The read models the backup left out, rebuilt from the log (any it did carry, from an older
    persona, are replaced): the index, snapshots and RFM scores, then the promoted models'
    predictions."""
    rebuilt = rebuild(staged)
    if any(row[3] == "promoted" for row in staged.recorder.model_rows()):
        from persona.models.scoring import rescore  # scikit-learn: loaded only when there is a model

        rescore(staged)
    return rebuilt


def _replace_postgres(url: str, staged: Recorder, mark: int) -> None:
    """The PostgreSQL store replaced by the prepared copy in one transaction, unless someone was
    erased meanwhile. No erased person's rows are written to PostgreSQL (or its WAL) again."""
    from persona.store.postgres import PostgresRecorder

    target = PostgresRecorder(url, create=None)
    try:
        with target.transaction():
            if target.erasure_mark() != mark:
                raise ConfigurationError("someone was erased while the backup was prepared; run the"
                                         " restore again (nothing was changed)")
            target.recreate()
            copy_store(staged, target)
    finally:
        target.close()


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
