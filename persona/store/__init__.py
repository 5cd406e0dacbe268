"""Storage backends. Recorders keep opaque rows; sealing happens above them."""

from persona.store.base import Head, Recorder, StoredEvent
from persona.store.sqlite import SQLiteRecorder

__all__ = ["Head", "Recorder", "SQLiteRecorder", "StoredEvent"]
