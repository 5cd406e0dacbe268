"""Opening a data directory: settings + keys + store → a ready EventLog.

The small Python API for embedding persona:

    from persona import Persona, Settings
    with Persona.open(Settings.load("data")) as p:
        p.log.append(events)
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from types import TracebackType

from persona.crypto import Keyring, Sealer
from persona.errors import ConfigurationError
from persona.eventlog import QUARANTINE_KEY, EventLog
from persona.settings import Settings
from persona.store.base import Recorder
from persona.store.sqlite import SQLiteRecorder


def load_keyring(settings: Settings) -> Keyring:
    if settings.keys_from_env:
        return Keyring.from_env(settings.master_key, settings.pepper, settings.signing_key)
    return Keyring.read(settings.key_file)


class Persona:
    """One open data directory. Not shared between threads: open one per thread."""

    def __init__(self, settings: Settings, keyring: Keyring, recorder: Recorder) -> None:
        self.settings = settings
        self.keyring = keyring
        self.recorder = recorder
        self.log = EventLog(recorder, keyring, settings)

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def init(cls, settings: Settings) -> Persona:
        """Create the data directory, key file (unless keys come from the environment) and database."""
        if settings.db_path.exists():
            raise ConfigurationError("the data directory already holds a persona database")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)
        if settings.keys_from_env:
            keyring = load_keyring(settings)
        elif settings.key_file.exists():
            keyring = Keyring.read(settings.key_file)  # e.g. a restore onto a new machine
        else:
            keyring = Keyring.generate()
            keyring.write(settings.key_file)
        recorder = SQLiteRecorder(settings.db_path, create=True)
        os.chmod(settings.db_path, 0o600)
        persona = cls(settings, keyring, recorder)
        with recorder.transaction():
            persona.log.record_keyring()
            version, wrapped = keyring.wrap(QUARANTINE_KEY, keyring.new_dek())
            recorder.put_system_key(QUARANTINE_KEY, version, wrapped)
            recorder.set_meta("created_at", datetime.now(UTC).isoformat())
        return persona

    @classmethod
    def open(cls, settings: Settings) -> Persona:
        keyring = load_keyring(settings)
        recorder = SQLiteRecorder(settings.db_path)
        persona = cls(settings, keyring, recorder)
        try:
            persona.log.check_keyring()
        except BaseException:
            recorder.close()
            raise
        return persona

    def close(self) -> None:
        self.recorder.close()

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

    def rotate_keys(self) -> dict[str, int]:
        """Add a master key version and re-wrap every data key under it. Events are untouched.

        Old versions stay in the key file: backups wrapped under them must still restore.
        """
        if self.settings.keys_from_env:
            raise ConfigurationError(
                "the master key comes from PERSONA_MASTER_KEY; add a new version there "
                "(e.g. '1:<old>,2:<new>') and run `persona keys rewrap`"
            )
        new = self.keyring.rotated()
        new.write(self.settings.key_file)  # first: a crash after this leaves a usable keyring
        return self._rewrap(new)

    def rewrap(self) -> dict[str, int]:
        """Re-wrap every data key under the keyring's current master key version."""
        return self._rewrap(self.keyring)

    def _rewrap(self, new: Keyring) -> dict[str, int]:
        rec = self.recorder
        old = self.keyring
        rewrapped = 0
        with rec.transaction():
            rows = []
            for pid, version, wrapped in rec.wrapped_keys():
                if version == new.current:
                    continue
                rows.append((*new.wrap(pid, old.unwrap(pid, version, bytes(wrapped))), pid))
            rec.rewrap([(v, w, pid) for v, w, pid in rows])
            rewrapped += len(rows)
            for name, version, wrapped in rec.system_keys():
                if version != new.current:
                    rec.put_system_key(name, *new.wrap(name, old.unwrap(name, version, bytes(wrapped))))
            self.keyring = new
            self.log = EventLog(rec, new, self.settings)
            self.log.record_keyring()
        return {"kek_version": new.current, "rewrapped": rewrapped}
