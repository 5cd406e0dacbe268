"""Opening a data directory: settings + keys + store → a ready EventLog.

The small Python API for embedding persona:

    from persona import Persona, Settings
    with Persona.open(Settings.load("data")) as p:
        p.log.append(events)
"""

from __future__ import annotations

import fcntl
import os
import shutil
from datetime import UTC, datetime
from types import TracebackType

from persona.audit import local_entries
from persona.crypto import Keyring, Sealer
from persona.errors import ConfigurationError
from persona.eventlog import QUARANTINE_KEY, EventLog
from persona.integrity import ADOPTED, KEY_PURPOSE, Tagger
from persona.settings import LOCK_NAME, STAGING, Settings
from persona.store import open_recorder
from persona.store.base import Recorder


def load_keyring(settings: Settings) -> Keyring:
    if settings.keys_from_env:
        return Keyring.from_env(settings.master_key, settings.pepper, settings.signing_key)
    return Keyring.read(settings.key_file)


class DirectoryLock:
    """An advisory lock on the data directory: shared while a store is open, exclusive
    for a restore, which must not swap the database under a running process."""

    def __init__(self, settings: Settings, *, exclusive: bool) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(settings.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            if exclusive:
                raise ConfigurationError("the data directory is in use by another process; stop it first") from None
            raise ConfigurationError("the data directory is being restored; try again when it is done") from None
        # Whoever holds the lock knows no restore is running (a restore holds it, exclusive, while
        # it lives): a restore folder here is one a killed restore left. It is a whole store with
        # read models in clear that no later erasure would reach, so it goes at once.
        staging = settings.data_dir / STAGING
        self.stale_restore = staging.exists() or staging.is_symlink()
        if self.stale_restore:
            if staging.is_symlink():
                staging.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # another process may be removing it too
            if staging.exists():
                self.release()
                raise ConfigurationError(f"a restore killed half-way left {STAGING} in the data directory and it"
                                         " cannot be removed; remove it (it holds people's values in clear)")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1


class Persona:
    """One open data directory. Not shared between threads: open one per thread."""

    def __init__(self, settings: Settings, keyring: Keyring, recorder: Recorder,
                 lock: DirectoryLock | None = None) -> None:
        self.settings = settings
        self.keyring = keyring
        self.recorder = recorder
        recorder.tagger = Tagger(keyring.derived(KEY_PURPOSE))
        if recorder.get_meta(ADOPTED) is None:  # a store made before row tags: its rows, as they stand
            adopted = recorder.adopt_tags()
            if adopted:  # on the record: a store made to look older would have tampered rows adopted
                with recorder.transaction():
                    recorder.append_audit(local_entries("open", "adopt row tags", rows=adopted))
        if recorder.upgraded:  # on the record too; the meta rows the upgrade wrote are tagged at its commit
            with recorder.transaction():
                recorder.append_audit(local_entries("open", "upgrade the store format",
                                                    to=int(recorder.get_meta("schema_version") or 0)))
            recorder.upgraded = False
        self.log = EventLog(recorder, keyring, settings)
        self._lock = lock

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def init(cls, settings: Settings) -> Persona:
        """Create the data directory, key file (unless keys come from the environment) and database."""
        if settings.data_dir.exists() and not settings.data_dir.is_dir():
            raise ConfigurationError(f"the data directory {settings.data_dir} is a file")
        if settings.db_path.exists():
            raise ConfigurationError(f"the data directory {settings.data_dir} already holds a persona database")
        if settings.database_url and settings.backend_path.exists():
            raise ConfigurationError("the data directory already names a PostgreSQL store")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)
        if settings.keys_from_env:
            keyring = load_keyring(settings)
        elif settings.key_file.exists():
            keyring = Keyring.read(settings.key_file)  # e.g. a restore onto a new machine
        else:
            keyring = Keyring.generate(source=settings.key_file)
            keyring.write(settings.key_file)
        lock = DirectoryLock(settings, exclusive=False)
        try:
            recorder = open_recorder(settings, create=True)
        except BaseException:
            lock.release()
            raise
        if settings.database_url is None:
            os.chmod(settings.db_path, 0o600)
        persona = cls(settings, keyring, recorder, lock)
        with recorder.transaction():
            persona.log.record_keyring()
            version, wrapped = keyring.wrap(QUARANTINE_KEY, keyring.new_dek())
            recorder.put_system_key(QUARANTINE_KEY, version, wrapped)
            recorder.set_meta("created_at", datetime.now(UTC).isoformat())
        return persona

    @classmethod
    def open(cls, settings: Settings) -> Persona:
        keyring = load_keyring(settings)
        lock = DirectoryLock(settings, exclusive=False) if settings.data_dir.is_dir() else None
        try:
            recorder = open_recorder(settings)
        except BaseException:
            if lock:
                lock.release()
            raise
        persona = cls(settings, keyring, recorder, lock)
        try:
            persona.log.check_keyring()
        except BaseException:
            persona.close()
            raise
        return persona

    def close(self) -> None:
        self.recorder.close()
        if self._lock:
            self._lock.release()

    def __enter__(self) -> Persona:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------
    def quarantine_sealer(self) -> Sealer:
        stored = self.recorder.system_key(QUARANTINE_KEY)
        if stored is None:
            raise ConfigurationError("the database has no quarantine key")
        return Sealer(self.keyring.unwrap(QUARANTINE_KEY, *stored))

    def system_sealer(self, name: str) -> Sealer:
        """A data key of the store's own (not a person's: the models', the webhook secrets'), wrapped
        by the master key like the rest and made on first use."""
        rec = self.recorder
        stored = rec.system_key(name)
        if stored is None:
            with rec.transaction():
                stored = rec.system_key(name)
                if stored is None:
                    self.log.check_current_kek()  # never under a version a retiring rotation destroyed
                    version, wrapped = self.keyring.wrap(name, self.keyring.new_dek())
                    rec.put_system_key(name, version, wrapped)
                    stored = (version, wrapped)
        return Sealer(self.keyring.unwrap(name, *stored))

    def rotate_keys(self, *, retire: bool = False) -> dict[str, int]:
        """Add a master key version and re-wrap every data key under it. Events are untouched.

        Old versions stay in the key file: backups wrapped under them must still restore.
        With `retire` they are destroyed once every key is re-wrapped: any copy of a wrapped
        key left elsewhere (a backup, PostgreSQL's dead rows and WAL, an erased person's key
        recovered from either) then opens nothing, and neither do backups taken before.
        Rotations are serialised by the database's write lock, and each starts from the
        key file as it is on disk, so two rotating processes cannot lose a version.
        """
        if self.settings.keys_from_env:
            raise ConfigurationError(
                "the master key comes from PERSONA_MASTER_KEY; add a new version there "
                "(e.g. '1:<old>,2:<new>'), run `persona keys rewrap`, then remove the old version"
            )
        with self.recorder.transaction():
            on_disk = Keyring.read(self.settings.key_file)
            EventLog(self.recorder, on_disk, self.settings).check_keyring()
            new = on_disk.rotated()
            new.write(self.settings.key_file)  # first: a crash after this leaves a usable keyring
            result = self._rewrap(new)
        if not retire:
            return result
        # The old versions go only once the re-wrap is committed durably and nothing needs them:
        # a crash anywhere before the key file is rewritten leaves every key openable.
        with self.recorder.transaction(durable=True):
            left = self.recorder.kek_versions_in_use() - {new.current}
            if left:  # a process with an old key file wrapped a key meanwhile: restart it, then retry
                raise ConfigurationError(f"keys under master key version(s) {sorted(left)} appeared during the"
                                         " rotation; give every process the new key file and run it again")
            only = new.retired()
            self.keyring = only
            self.log = EventLog(self.recorder, only, self.settings)
            self.log.record_keyring()
        with self.recorder.transaction():  # the key file, rewritten under the lock from what is on disk now
            disk = Keyring.read(self.settings.key_file)
            keep = {v: k for v, k in disk.keks.items() if v >= new.current}
            Keyring(keep, disk.pepper, disk.signing_key, disk.source).write(self.settings.key_file)
        result["retired"] = len(new.keks) - 1
        return result

    def rewrap(self) -> dict[str, int]:
        """Re-wrap every data key under the keyring's current master key version."""
        return self._rewrap(self.keyring)

    def _rewrap(self, new: Keyring) -> dict[str, int]:
        rec = self.recorder
        with rec.transaction():
            rows = [
                (*new.wrap(pid, new.unwrap(pid, version, bytes(wrapped))), pid)
                for pid, version, wrapped in rec.wrapped_keys()
                if version != new.current
            ]
            rec.rewrap(rows)
            for name, version, wrapped in rec.system_keys():
                if version != new.current:
                    rec.put_system_key(name, *new.wrap(name, new.unwrap(name, version, bytes(wrapped))))
            self.keyring = new
            self.log = EventLog(rec, new, self.settings)
            self.log.record_keyring()
        return {"kek_version": new.current, "rewrapped": len(rows)}
