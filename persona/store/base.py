"""What a storage backend works with, named in one place: the protocols a backend implements
(persona.store.protocols: `Recorder` and the small protocols it is made of), the rows it hands
out (persona.store.rows) and what a store holds (persona.store.schema). Recorders move opaque
bytes: sealing happens above them."""

from __future__ import annotations

from persona.store.protocols import (
    Access,
    Connection,
    Erasure,
    EventLog,
    Identities,
    Maintenance,
    ModelRegistry,
    Quarantine,
    ReadModels,
    Recorder,
    Streams,
)
from persona.store.rows import Head, MergeEdge, ProfileRow, QuarantinedRecord, RowTagger, StoredEvent, TokenRow
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

__all__ = ["BACKED_UP", "COLUMNS_ADDED", "PURGE_MARK", "READ_MODELS", "SCHEMA_REVISION", "SCHEMA_VERSION",
           "SPEND_PRIVACY", "TABLES", "TAG", "Access", "Connection", "Erasure", "EventLog", "Head", "Identities",
           "Maintenance", "MergeEdge", "ModelRegistry", "ProfileRow", "Quarantine", "QuarantinedRecord",
           "ReadModels", "Recorder", "RowTagger", "StoredEvent", "Streams", "TokenRow", "privacy_charge"]

# Charging an answer to a token's privacy budget: ε and δ together or neither, never past
# either budget (a relative slack of 1e-9 absorbs the rounding of sums of charges). One
# statement for both backends, each putting in its placeholder ("?" or "%s"); the
# parameters come from `privacy_charge`.
SPEND_PRIVACY = (
    "UPDATE api_tokens SET epsilon_spent = epsilon_spent + {p}, delta_spent = delta_spent + {p}, tag = NULL"
    " WHERE name = {p} AND revoked_at IS NULL"
    " AND epsilon_spent + {p} <= epsilon_budget * (1 + 1e-9) AND delta_spent + {p} <= delta_budget * (1 + 1e-9)"
    " RETURNING epsilon_budget - epsilon_spent, delta_budget - delta_spent")


def privacy_charge(name: str, epsilon: float, delta: float) -> tuple[float, float, str, float, float]:
    """The parameters of SPEND_PRIVACY; a charge that is negative or not a finite number is refused."""
    if not (0 <= epsilon < float("inf") and 0 <= delta < float("inf")):  # NaN fails too
        raise ValueError("a privacy charge is two finite numbers, neither negative")
    return epsilon, delta, name, epsilon, delta
