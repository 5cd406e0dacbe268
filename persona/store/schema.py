"""What a store holds, named once for both backends: its tables and columns, the schema's
version and additions, which tables are derived, what erasure deletes, and which columns each
row tag covers (persona.integrity computes the tags; the store only keeps them)."""

from __future__ import annotations

SCHEMA_VERSION = "3"  # meta `schema_version`: a store made by another layout is refused…
# …but those of earlier formats, upgraded in place when opened, one format after the other: format 1
# (one row per event) to 2 (chunks: each event becomes a chunk of one, sealed as it was, so no key
# is needed and nothing is re-sealed), format 2 to 3 (the key set in generations, persona.store.keyset).
UPGRADABLE = ("1", "2")

# Additions to a store made by an earlier release, applied when it is opened (each backend
# adds what is missing under its write lock, then records the revision in `meta`):
# (revision, table, column, SQL type and default — portable between SQLite and PostgreSQL).
COLUMNS_ADDED: tuple[tuple[int, str, str, str], ...] = (
    (2, "api_tokens", "delta_budget", "double precision NOT NULL DEFAULT 0.0"),
    (2, "api_tokens", "delta_spent", "double precision NOT NULL DEFAULT 0.0"),
    (2, "api_tokens", "sources", "text NOT NULL DEFAULT ''"),
    (2, "api_tokens", "types", "text NOT NULL DEFAULT ''"),
    (3, "audit", "outcome", "text NOT NULL DEFAULT 'ok'"),  # old entries: allowed accesses…
    (3, "audit", "detail", "text NOT NULL DEFAULT '{}'"),  # …whose shape was not kept
    *((4, table, "tag", "bytea") for table in (  # keyed row tags (persona.integrity), NULL until tagged
        "meta", "streams", "keys", "system_keys", "links", "tombstones", "quarantine", "quarantine_tags", "merges",
        "members", "snapshots", "profile_index", "rfm", "models", "model_people", "predictions", "api_tokens",
        "audit")),
    (6, "api_tokens", "subject", "text NOT NULL DEFAULT ''"),  # a minted token's person ('': bound to none)
    (6, "api_tokens", "expires_at", "bigint"),  # when a minted token stops working (NULL: never)
)
# Tables added by a later release are made, when missing, every time a store is opened (each
# backend's schema module): revision 5 added the live segments, 6 the webhook destinations; 7 checks
# PostgreSQL's new chunks once per statement (postgres_schema.UPGRADE_CHUNK_CHECK).
SCHEMA_REVISION = 7

# Every table a store holds, with the columns a copy between backends carries (`persona
# migrate`, backups of a PostgreSQL store): the same names on both, numbers kept as they are.
TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "streams": ("stream_no", "stream_id", "version", "head", "created_at"),
    # the log: one row per chunk (a stream's consecutive events, sealed together), and the set of
    # every event's idempotency key, never deleted from (erasure included), in generations
    "chunks": ("position", "stream_no", "first_version", "last_version", "recorded_at", "types", "keys", "payload",
               "hash"),
    "event_keys": ("generation", "event_key"),
    "key_filters": ("generation", "keys", "bits"),  # a sealed generation of event_keys: its Bloom filter
    "keys": ("profile_id", "kek_version", "wrapped"),
    "system_keys": ("name", "kek_version", "wrapped"),
    "links": ("subject_hash", "profile_id", "namespace", "created_at"),
    "tombstones": ("profile_id", "erased_at", "events"),
    "quarantine": ("id", "recorded_at", "origin", "line", "reason", "size", "content", "content_hash", "expires_at"),
    "quarantine_tags": ("quarantine_id", "subject_hash"),
    "merges": ("edge", "a", "b", "a_hash", "b_hash", "merged_at", "undone_at"),
    "members": ("profile_id", "person_id"),
    "snapshots": ("profile_id", "projection", "projection_version", "stream_version", "payload"),
    "profile_index": ("profile_id", "version", "doc"),
    "rfm": ("profile_id", "r", "f", "m"),
    "models": ("name", "version", "created_at", "status", "promoted_at", "stale", "drift", "meta", "sha256", "blob"),
    "model_people": ("profile_id", "name", "version"),
    "predictions": ("profile_id", "model", "version", "computed_at", "doc"),
    "api_tokens": ("name", "digest", "scopes", "created_at", "revoked_at", "rate_per_s", "epsilon_budget",
                   "epsilon_spent", "delta_budget", "delta_spent", "sources", "types", "subject", "expires_at"),
    "audit": ("seq", "at", "token", "operation", "profile_id", "fields", "outcome", "detail"),
    # live segments (persona.memberships): named rules, who is in each and since when, and every
    # entry and exit in order (what subscriptions and destinations follow)
    "segments": ("name", "rule", "created_at", "created_by"),
    "segment_members": ("segment", "profile_id", "since"),
    "segment_changes": ("seq", "at", "segment", "profile_id", "entered"),
    # webhook destinations (persona.destinations): each one's host, its address and secret (both
    # sealed under the destinations' key: a hook URL often holds a token) and what it takes; who
    # each has received (for erasure notices, and the keyed digest of the fields last sent); and the
    # deliveries, an outbox, each until acknowledged or dead-lettered
    "destinations": ("name", "host", "url", "segments", "fields", "on_change", "purpose", "secret", "created_at",
                     "created_by"),
    "destination_people": ("destination", "profile_id", "first_at", "digest"),
    "deliveries": ("seq", "key", "destination", "kind", "profile_id", "segment", "created_at", "attempts",
                   "next_at", "status", "outcome", "done_at"),
}

# The read models: derived from the log and rebuilt by `persona rebuild`. The index, RFM scores
# and predictions hold people's values in plaintext (for queries), so a backup leaves them out
# (docs/design.md, invariant 6), and the snapshots with them (sealed, but rebuilt on restore all the
# same); `persona restore` rebuilds them all.
# Every table but the log carries `tag`, a keyed hash of its row (persona.integrity), carried by
# copies like any column: a backup or migrated store checks out with the same key file.
TAG = "tag"
LOG = ("chunks", "event_keys", "key_filters")  # sealed and chained, keyed hashes, or their filters: no row tag
TABLES = {table: columns + ((TAG,) if table not in LOG else ()) for table, columns in TABLES.items()}

# Segment memberships and their changes say who is in a group defined on those values: left out
# too, and made again after a restore (their `since` starts then). A rebuild reconciles them rather
# than emptying them, so a member since last month stays one since last month.
READ_MODELS = ("snapshots", "profile_index", "rfm", "predictions", "segment_members", "segment_changes")
# The deliveries name who entered which segment when: left out of backups too. Who each destination
# received is kept (profile ids only): a restore re-applies the erasures made since, and their
# deletion notices go to every destination that received the person.
BACKED_UP = tuple(table for table in TABLES if table not in (*READ_MODELS, "deliveries"))

# Tables holding rows derived from a person's events, each keyed by `profile_id`.
# Erasure deletes from every one of them; `persona rebuild` empties and refills them (the segment
# rows: reconciles them, persona.memberships).
DERIVED_TABLES = READ_MODELS
# The derived rows of a person (not the snapshots, which are a stream's): dropped when streams
# merge into one person, emptied before a rebuild.
PERSON_ROWS = ("profile_index", "rfm", "predictions")

# What erasure deletes (shared.SQLRecorder.erase): the key, the links, the merges and memberships,
# the derived rows, who the models were trained on, the quarantined records tagged with the
# person's identifiers, and (persona.destinations, in the same transaction) who received them and
# what was still to be sent, but the deletion notices. The tables whose dead rows could tell
# something (all but the snapshots, sealed under the deleted key) are the ones a PostgreSQL purge
# vacuums.
ERASED_FROM = ("keys", "links", "merges", "members", "profile_index", "rfm", "predictions", "segment_members",
               "segment_changes", "model_people", "quarantine", "quarantine_tags", "destination_people", "deliveries")

# What `counts()` reports, and the table counted for each (one key per event: the events).
COUNTED = {"events": "event_keys", **{table: table for table in ("streams", "keys", "links", "tombstones",
                                                                  "quarantine", "merges")}}

# The meta key of the purge mark: erasures noted, and when their physical purge is due (persona.purge).
PURGE_MARK = "purge"

# Row tags (persona.integrity computes them): table -> the columns its tag covers.
TAGGED: dict[str, tuple[str, ...]] = {
    table: tuple(c for c in columns if c != TAG) for table, columns in TABLES.items() if TAG in columns
}
TAGGED["streams"] = ("stream_no", "stream_id", "created_at")
TAGGED["audit"] = tuple(c for c in TAGGED["audit"] if c != "seq")  # tagged as inserted: before its number
# tables whose rows are tagged by their writer (their triggers refuse the UPDATE a retag is)
TAGGED_ON_INSERT = ("audit", "tombstones")
RETAGGED = tuple(table for table in TAGGED if table not in TAGGED_ON_INSERT)
# what finds the rows a transaction left untagged, at its end (both backends; constant names)
UNTAGGED_INDEXES = tuple(f"CREATE INDEX IF NOT EXISTS {table}_untagged ON {table} (tag) WHERE tag IS NULL"
                         for table in RETAGGED)
ADOPTED = "row_tags"  # meta key: the rows of this store carry tags
