"""What a storage backend works with, named in one place: the protocols a backend implements
(persona.store.protocols: `Recorder` and the small protocols it is made of), the rows it hands
out (persona.store.rows) and what a store holds (persona.store.schema). Recorders move opaque
bytes: sealing happens above them."""

from __future__ import annotations

from persona.store.protocols import (
    Access,
    Connection,
    Destinations,
    Erasure,
    EventLog,
    Identities,
    Maintenance,
    ModelRegistry,
    Quarantine,
    ReadModels,
    Recorder,
    Segments,
    Streams,
)
from persona.store.rows import (
    CHUNK_CAP,
    KEY_SIZE,
    DeliveryRow,
    Head,
    MergeEdge,
    ProfileRow,
    QuarantinedRecord,
    RowTagger,
    StoredChunk,
    TokenRow,
)
from persona.store.schema import (
    BACKED_UP,
    COLUMNS_ADDED,
    PURGE_MARK,
    READ_MODELS,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    TABLES,
    TAG,
)
from persona.store.sql import SPEND_PRIVACY, privacy_charge

__all__ = [
    "BACKED_UP",
    "CHUNK_CAP",
    "COLUMNS_ADDED",
    "KEY_SIZE",
    "PURGE_MARK",
    "READ_MODELS",
    "SCHEMA_REVISION",
    "SCHEMA_VERSION",
    "SPEND_PRIVACY",
    "TABLES",
    "TAG",
    "Access",
    "Connection",
    "DeliveryRow",
    "Destinations",
    "Erasure",
    "EventLog",
    "Head",
    "Identities",
    "Maintenance",
    "MergeEdge",
    "ModelRegistry",
    "ProfileRow",
    "Quarantine",
    "QuarantinedRecord",
    "ReadModels",
    "Recorder",
    "RowTagger",
    "Segments",
    "StoredChunk",
    "Streams",
    "TokenRow",
    "privacy_charge",
]
