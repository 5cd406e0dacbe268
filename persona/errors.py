"""The exceptions persona raises. Messages never carry personal data or key material."""

from __future__ import annotations


class PersonaError(Exception):
    """Base class for every error persona raises on purpose."""


class ConfigurationError(PersonaError):
    """The data directory, key file or environment is missing or inconsistent."""


class EngineError(PersonaError):
    """The engine batch work ran on failed it (a worker lost, the scheduler gone): nothing was kept."""


class KeyMismatchError(ConfigurationError):
    """The keys supplied do not belong to this database."""


class ConcurrencyError(PersonaError):
    """A stream was appended to since the caller read it (optimistic concurrency)."""

    def __init__(self, stream_id: str, expected: int, actual: int, message: str | None = None) -> None:
        super().__init__(message or f"stream {stream_id} is at version {actual}, the append expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual

    @classmethod
    def unseen(cls) -> ConcurrencyError:
        """Another writer took a version this append meant to use."""
        return cls("", -1, -1, "another writer appended to the same stream concurrently; retry the append")

    @classmethod
    def claimed(cls) -> ConcurrencyError:
        """Another writer linked an identifier this append meant to link, at the same moment."""
        return cls("", -1, -1, "another writer linked the same new identifier concurrently; retry the append")


class DuplicateEventError(PersonaError):
    """An event id is already in the log."""


class ErasedError(PersonaError):
    """The profile was erased: its key is gone and its stream is closed."""

    def __init__(self, profile_id: str) -> None:
        super().__init__(f"profile {profile_id} has been erased")
        self.profile_id = profile_id


class UnknownProfileError(PersonaError):
    """No profile has this id, or no profile is linked to this identifier."""

    purged = 0  # an erasure by identifier: the quarantined records carrying it that were purged all the same


class UnknownProjectionError(PersonaError):
    """No projection has this name."""


class TamperError(PersonaError):
    """A stored event, key or chain does not check out."""

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class LedgerError(TamperError):
    """The erasure ledger cannot be trusted: a line was altered, removed, moved or added."""


class UnsignedLedgerError(LedgerError):
    """The erasure ledger is of the older, unsigned kind: trusted only once an operator adopts it
    (`persona ledger adopt`)."""


class ValidationError(PersonaError):
    """A record does not match the canonical event format (docs/events.md)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnfinishedErasureError(PersonaError):
    """The erasure ledger names a profile whose erasure the database never committed."""


class ReceiptError(PersonaError):
    """An erasure receipt is malformed or its signature does not verify."""


class CheckpointBusyError(PersonaError):
    """The WAL could not be truncated because a reader kept an old snapshot open."""


class LinkError(PersonaError):
    """Two identifiers cannot be linked or unlinked as asked (the reason says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(Exception):
    """The database failed or refused an operation: the driver's error (sqlite3, psycopg),
    translated where it leaves the store package. Its message names tables and states, never
    a row's values. Not a PersonaError: persona does not raise it on purpose, and code that
    handles persona's refusals lets it pass, as it let the driver's errors pass."""


class StoreBusyError(StoreError):
    """The database stayed locked or busy (another connection held it) past the wait."""


class StoreConflictError(StoreBusyError):
    """Two transactions waited on each other and the database ended this one (PostgreSQL's
    deadlock detection): nothing of it was kept, and running it again is safe."""


class StoreDamagedError(StoreError):
    """The file is not a database, or what it holds does not read as the database wrote it."""


class UndecodableValueError(StoreDamagedError):
    """A stored text value does not decode: the file was altered. (SQLite's own message
    quotes the damaged value, so it is never passed on.)"""

    def __init__(self) -> None:
        super().__init__("a damaged text value could not be decoded (the file was altered?)")
