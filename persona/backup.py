"""Backups that hold no plaintext and cannot resurrect the erased.

A backup is a SQLite file (from either backend) holding the log as ciphertext, the data keys
as wrapped, identity links as keyed hashes, tombstones, the sealed quarantine, merges, the
sealed model registry (each version's file, and in a backup its meta and drift too: training
medians, decile edges and category names are people's values), API token hashes and the audit
log; never the key file, and none of the read models (store.base.READ_MODELS): the profile
index, RFM scores and predictions hold people's values in plaintext for queries, so they never
leave the live store.

A restore prepares the backup in a private folder beside the database: it re-applies every
erasure of the ledger (which must verify, line by line) and every tombstone of the store it
replaces, verifies the whole copy, rebuilds the read models from the log, and only then swaps
it in, so a failure half-way leaves the current store as it was.

A backup is older than the store it replaces, and so is its access control: tokens revoked
since, privacy budgets spent since, an audit log that has grown since. A restore keeps the
replaced store's (read in the same snapshot as its tombstones): its tokens replace the
backup's, rows and budgets as they are; its audit entries that the backup lacks follow the
backup's, in their order (the log is append-only: a restore removes no entry), and a purge it
had pending stays due. The restore itself is audited (`local:restore`).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path

from persona import destinations, purge
from persona.audit import local_entries
from persona.core import DirectoryLock, Persona, load_keyring
from persona.crypto import fingerprint
from persona.erasure import erase_profile, reapply_ledger
from persona.errors import ConfigurationError, KeyMismatchError, StoreError
from persona.events import from_micros
from persona.ledger import ErasureLedger
from persona.projector import rebuild
from persona.settings import DB_NAME, STAGING, Settings
from persona.store.base import BACKED_UP, Recorder
from persona.store.copy import copy_store
from persona.store.schema import SCHEMA_VERSION, UPGRADABLE  # a backup of an earlier format is upgraded as it is staged
from persona.store.sqlite import SQLiteRecorder, read_meta
from persona.verify import verify

# A model version's meta (its features' training medians and decile edges, the category names it
# learned, its classes) and drift (PSI by feature name) are derived from people's values: in a
# backup they are sealed under the models' key, bound to the version and column; restore opens them.
SEALED_META = "sealed:"


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    taken_at: str
    bytes: int
    events: int
    profiles: int


def backup(persona: Persona, dest: Path, *, folder: bool = False) -> BackupInfo:
    """Write a consistent copy of the store, read models left out, to DEST (a file, or a folder:
    one that exists, or any when FOLDER, created if need be)."""
    taken_at = datetime.now(UTC)
    if folder or dest.is_dir():
        dest = dest / f"persona-{taken_at.strftime('%Y%m%dT%H%M%SZ')}.db"
    if dest.exists():
        raise ConfigurationError("the backup destination already exists; choose a new file")
    data_dir = persona.settings.data_dir.resolve()
    if dest.resolve().is_relative_to(data_dir):  # symlinks resolved: wherever it would really land
        raise ConfigurationError("write backups outside the data directory (a backup there holds the wrapped"
                                 " keys of people erased later, beyond the reach of erasure)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private from the first byte
    try:
        persona.recorder.backup(dest, BACKED_UP)  # its WAL, while it lasts, inherits the mode
        copy = SQLiteRecorder(dest)
        copy.tagger = persona.recorder.tagger  # the row it writes is tagged like the rows copied
        try:
            with copy.transaction():  # (secure_delete is on: the plaintext meta replaced leaves no trace)
                copy.set_meta("backup_taken_at", taken_at.isoformat())
                _seal_model_meta(persona, copy)
            counts = copy.counts()
            copy.single_file()  # one self-contained file, for readers too
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
        current = _current_state(settings)
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
                with staged.recorder.transaction():
                    _open_model_meta(staged)
                with staged.recorder.transaction():
                    _carry_access(staged.recorder, current.tokens, current.audit, current.purge)
                reapplied = reapply_ledger(staged, ledger.entries)
                reapplied += _carry_tombstones(staged, current.tombstones)
                with staged.recorder.transaction():  # read models it carries (an older persona's, or
                    staged.recorder.clear_derived()  # smuggled in) are not checked: they are rebuilt
                    staged.recorder.clear_memberships()  # (memberships too: made anew, since the restore)
                verify(staged)  # a backup altered since it was taken goes no further
                rebuilt = _rebuild_read_models(staged)
                destinations.after_restore(staged)  # webhooks follow the changes from here
                with staged.recorder.transaction():
                    staged.recorder.append_audit(local_entries(
                        "restore", "restore", reapplied=len(reapplied), rebuilt=rebuilt, ledgerTorn=ledger.torn,
                        ledgerEntries=len(ledger.entries), tombstonesCarried=len(current.tombstones)))
                if not staged.recorder.checkpoint():
                    raise ConfigurationError("could not checkpoint the restored copy")
                if settings.database_url:
                    _replace_postgres(settings.database_url, staged.recorder, current.mark)
            if not settings.database_url:
                for sidecar in _with_sidecars(settings.db_path)[1:]:
                    sidecar.unlink(missing_ok=True)  # the old database's WAL must not meet the new file
                os.replace(staged_db, settings.db_path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
    return RestoreInfo(meta["backup_taken_at"], reapplied, rebuilt, ledger.torn)


@dataclass(frozen=True)
class _Current:
    """What the store being replaced holds that a backup must not roll back, read in one snapshot."""

    tombstones: dict[str, int]  # profile id -> when erased
    mark: int  # its erasure mark (PostgreSQL: no one may be erased while the restore is prepared)
    tokens: list[tuple[object, ...]]  # api_tokens rows (TABLES order): revocations, budgets spent
    audit: list[tuple[object, ...]]  # audit rows (TABLES order), by number
    purge: purge.Mark  # a purge it had pending


NOTHING = _Current({}, 0, [], [], purge.Mark())


def _current_state(settings: Settings) -> _Current:
    """The erasures, tokens, audit log and purge mark of the store being replaced.

    A ledger can lose lines off its end, or be replaced whole by an older copy, without a
    trace; and on PostgreSQL every machine keeps its own. So the store's own tombstones are
    carried over to the backup as well. Its tokens and audit log are carried over too: a
    backup's are older (a token revoked since would live again, a budget spent since would be
    whole again, and the record of every access since would be gone)."""
    current: Recorder
    if settings.database_url:
        from persona.store.postgres import PostgresRecorder  # heavy: psycopg, loaded only for PostgreSQL

        try:
            current = PostgresRecorder(settings.database_url)
        except ConfigurationError:  # no store there yet: a restore onto a new server
            return NOTHING
    elif not settings.db_path.exists():
        return NOTHING
    else:
        try:
            current = SQLiteRecorder(settings.db_path)
        except (StoreError, ConfigurationError) as e:
            raise ConfigurationError(
                "the current database cannot be read, so the erasures it records cannot be carried over to the"
                " backup; move it out of the data directory to restore without it (the ledger's erasures are"
                " still re-applied)") from e
    try:
        with current.snapshot():
            return _Current(dict(current.tombstones()), current.erasure_mark(),
                            list(chain.from_iterable(current.dump("api_tokens"))),
                            list(chain.from_iterable(current.dump("audit"))), purge.mark_of(current))
    finally:
        current.close()


def _carry_access(rec: Recorder, tokens: Sequence[tuple[object, ...]], audit: Sequence[tuple[object, ...]],
                  pending: purge.Mark) -> None:
    """Inside a transaction of the store that replaces another: the replaced store's tokens over
    its own (same name: the replaced store's row), the replaced store's audit entries it lacks
    after its own, in their order, and the purge the replaced store had pending."""
    rec.load("api_tokens", tokens)
    rec.load("audit", _audit_to_add(rec, audit))
    rec.finish_load()
    purge.carry(rec, pending)


def _audit_to_add(rec: Recorder, current: Sequence[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The entries of `current` (audit rows by number) that the store lacks, numbered after its
    last in their order. An entry is one the store has if an entry of the store says the same
    (when, who, what, whose, outcome, detail), each matching once: a backup of this store is a
    prefix of its log, so those entries keep their numbers; one of another line of history
    (an older restore) has entries of its own, which stay where they are."""
    have = list(chain.from_iterable(rec.dump("audit")))
    same = 0  # the common prefix, number and entry alike: the usual case, compared in order
    while same < min(len(have), len(current)) and have[same] == current[same]:
        same += 1
    unmatched = Counter(tuple(row[1:]) for row in have[same:])
    last = max((int(str(row[0])) for row in have[-1:]), default=0)
    added: list[tuple[object, ...]] = []
    for row in current[same:]:
        entry = tuple(row[1:])
        if unmatched[entry]:
            unmatched[entry] -= 1
            continue
        last = max(int(str(row[0])), last + 1)
        added.append((last, *entry))
    return added


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
        from persona.models.scoring import rescore  # heavy: scikit-learn, loaded only when there is a model

        rescore(staged)
    return rebuilt


def _replace_postgres(url: str, staged: Recorder, mark: int) -> None:
    """The PostgreSQL store replaced by the prepared copy in one transaction, unless someone was
    erased meanwhile. No erased person's rows are written to PostgreSQL (or its WAL) again."""
    from persona.store.postgres import PostgresRecorder  # heavy: psycopg, only for PostgreSQL

    target = PostgresRecorder(url, create=None)
    target.tagger = staged.tagger  # the rows written here (tokens, audit, the purge mark) tagged as the copy's are
    try:
        with target.transaction():  # under the store's write lock: no token, budget or audit entry changes now
            if target.erasure_mark() != mark:
                raise ConfigurationError("someone was erased while the backup was prepared; run the"
                                         " restore again (nothing was changed)")
            # read again, as of this moment (the copy already holds what the first read found)
            tokens = list(chain.from_iterable(target.dump("api_tokens")))
            audit = list(chain.from_iterable(target.dump("audit")))
            pending = purge.mark_of(target)
            target.recreate()
            copy_store(staged, target)
            _carry_access(target, tokens, audit, pending)
    finally:
        target.close()


def _meta_aad(name: str, version: int, column: str) -> bytes:
    return b"persona-model-meta/1\x00" + name.encode() + b"\x00" + str(version).encode() + b"\x00" + column.encode()


def _seal_model_meta(persona: Persona, copy: SQLiteRecorder) -> None:
    """Inside a transaction of the backup copy: every model version's meta and drift sealed."""
    rows = copy.model_meta()
    if not rows:
        return
    from persona.models.registry import sealer  # heavy: loaded only when there is a model

    box = sealer(persona)  # the backup holds the same key, wrapped (system_keys)
    for name, version, meta, drift in rows:
        sealed = [None if value is None else SEALED_META + base64.b64encode(
            box.seal(str(value).encode(), _meta_aad(name, int(version), column), os.urandom(12))).decode()
            for column, value in (("meta", meta), ("drift", drift))]
        copy.replace_model_meta(name, version, sealed[0], sealed[1])


def _open_model_meta(staged: Persona) -> None:
    """Inside a transaction of the staged copy: the sealed meta and drift of every version opened
    (a backup from before they were sealed holds them open already)."""
    rows = staged.recorder.model_meta()
    if not any(str(meta).startswith(SEALED_META) for _, _, meta, _ in rows):
        return
    from persona.models.registry import sealer  # heavy: loaded only when there is a model

    box = sealer(staged)
    for name, version, meta, drift in rows:
        opened = [value if value is None or not str(value).startswith(SEALED_META) else box.open(
            base64.b64decode(str(value).removeprefix(SEALED_META)), _meta_aad(name, int(version), column)).decode()
            for column, value in (("meta", meta), ("drift", drift))]
        staged.recorder.replace_model_meta(name, version, opened[0], opened[1])


def _with_sidecars(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]


def _backup_meta(source: Path) -> dict[str, str]:
    try:
        meta = read_meta(source)
    except StoreError as e:
        raise ConfigurationError("the file is not a persona backup") from e
    if meta.get("schema_version") not in (SCHEMA_VERSION, *UPGRADABLE) or "backup_taken_at" not in meta:
        raise ConfigurationError("the file is not a persona backup")
    return meta
