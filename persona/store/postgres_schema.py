"""The PostgreSQL store's schema: plain DDL, made in one transaction on create (and by a restore's
recreate()); later additions come from schema.COLUMNS_ADDED on open. SQLite's is made by
sqlite-utils (persona.store.sqlite_schema)."""

from __future__ import annotations

from persona.store.keyset import FILTER_BITS
from persona.store.rows import CHUNK_CAP, KEY_SIZE
from persona.store.schema import COLUMNS_ADDED, TABLES, UNTAGGED_INDEXES

PARTITIONS = 8  # hash partitions of the event log

_ID = 'text COLLATE "C"'
# The log: chunks (a stream's consecutive events sealed together, schema.TABLES), hash-partitioned
# by stream; `position` is its first event's global position.
LOG_TABLES = (
    "CREATE TABLE chunks (position bigint NOT NULL, stream_no bigint NOT NULL, first_version integer NOT NULL,"
    " last_version integer NOT NULL, recorded_at bigint NOT NULL, types text NOT NULL, keys bytea NOT NULL,"
    " payload bytea NOT NULL, hash bytea NOT NULL, PRIMARY KEY (stream_no, last_version))"
    " PARTITION BY HASH (stream_no)",
    *(f"CREATE TABLE chunks_p{i} PARTITION OF chunks FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i})"
      for i in range(PARTITIONS)),
    "CREATE INDEX chunks_position ON chunks (position)",
)
# Each statement's chunks (checked together, once the statement has inserted them: the transition
# table `new_chunks`) hold 1..CHUNK_CAP events with one key and one type each; each continues
# its stream (it starts right after the stream's chunk before it, and no chunk of another
# statement comes after it), and they come after every other chunk of the log, without overlap,
# each stream's in the order of its versions.
# Once per statement, as a set, rather than two queries per row: the check runs while appends
# take turns (persona/store/postgres.py), and per row it was most of an append's turn. The log is
# append-only (statement triggers are not inherited: each partition refuses TRUNCATE itself).
CHUNKS_CONTINUE = (
    "CREATE OR REPLACE FUNCTION persona_chunk_continues() RETURNS trigger LANGUAGE plpgsql AS $$"
    " DECLARE first_new bigint; BEGIN"
    " SELECT min(n.position) INTO first_new FROM new_chunks n;"
    " IF EXISTS (SELECT 1 FROM new_chunks n WHERE n.last_version < n.first_version"
    f" OR n.last_version - n.first_version >= {CHUNK_CAP}"
    f" OR length(n.keys) <> {KEY_SIZE} * (n.last_version - n.first_version + 1)"
    " OR length(n.types) - length(replace(n.types, ' ', '')) <> n.last_version - n.first_version"
    " OR n.first_version <> coalesce((SELECT max(c.last_version) FROM chunks c WHERE c.stream_no = n.stream_no"
    " AND c.last_version < n.last_version), 0) + 1"
    " OR EXISTS (SELECT 1 FROM chunks c WHERE c.stream_no = n.stream_no AND c.last_version > n.last_version"
    " AND NOT EXISTS (SELECT 1 FROM new_chunks m WHERE m.stream_no = c.stream_no AND m.last_version = c.last_version)))"
    " OR EXISTS (SELECT 1 FROM (SELECT n.position, lag(n.position + n.last_version - n.first_version)"
    " OVER (ORDER BY n.position) AS before FROM new_chunks n) o WHERE o.position <= o.before)"
    " OR EXISTS (SELECT 1 FROM (SELECT n.position, lag(n.position) OVER (PARTITION BY n.stream_no"
    " ORDER BY n.last_version) AS before FROM new_chunks n) o WHERE o.position < o.before)"
    " OR first_new <= coalesce((SELECT c.position + c.last_version - c.first_version FROM chunks c"
    " WHERE c.position < first_new ORDER BY c.position DESC LIMIT 1), 0)"
    " OR EXISTS (SELECT 1 FROM chunks c WHERE c.position >= first_new AND NOT EXISTS"
    " (SELECT 1 FROM new_chunks m WHERE m.stream_no = c.stream_no AND m.last_version = c.last_version)) THEN"
    " RAISE EXCEPTION 'persona: a chunk must continue its stream and the log (refused)'"
    " USING ERRCODE = 'unique_violation', TABLE = 'chunks'; END IF; RETURN NULL; END $$",
    "CREATE TRIGGER chunks_continue AFTER INSERT ON chunks REFERENCING NEW TABLE AS new_chunks"
    " FOR EACH STATEMENT EXECUTE FUNCTION persona_chunk_continues()",
    # a statement trigger fires for the table the statement names: a partition named directly too
    *(f"CREATE TRIGGER chunks_p{i}_continue AFTER INSERT ON chunks_p{i} REFERENCING NEW TABLE AS new_chunks"
      " FOR EACH STATEMENT EXECUTE FUNCTION persona_chunk_continues()" for i in range(PARTITIONS)),
)
# A store made before revision 7 checked each chunk row by row: the same check, replaced.
UPGRADE_CHUNK_CHECK = ("DROP TRIGGER IF EXISTS chunks_continue ON chunks",
                       *(f"DROP TRIGGER IF EXISTS chunks_p{i}_continue ON chunks_p{i}" for i in range(PARTITIONS)),
                       *CHUNKS_CONTINUE)
LOG_TRIGGERS = (
    *CHUNKS_CONTINUE,
    "CREATE TRIGGER chunks_append_only BEFORE UPDATE OR DELETE ON chunks FOR EACH ROW"
    " EXECUTE FUNCTION persona_refuse()",
    *(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION"
      " persona_refuse()" for table in ("chunks", *(f"chunks_p{i}" for i in range(PARTITIONS)))),
)
# The key set in generations (persona.store.keyset): keys go only to generations not sealed yet
# (checked once per statement, over the rows it inserted); a generation is sealed in order, by a
# filter that counts its keys; neither table is ever updated, deleted from or truncated.
KEY_SET = (
    "CREATE TABLE event_keys (generation integer NOT NULL, event_key bytea NOT NULL,"
    " PRIMARY KEY (generation, event_key))",
    "CREATE TABLE key_filters (generation integer PRIMARY KEY, keys integer NOT NULL, bits bytea NOT NULL)",
    "CREATE FUNCTION persona_keys_go_to_open_generations() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF EXISTS (SELECT 1 FROM new_keys k WHERE k.generation <= (SELECT coalesce(max(f.generation), -1)"
    f" FROM key_filters f) OR length(k.event_key) <> {KEY_SIZE}) THEN"
    " RAISE EXCEPTION 'persona: a sealed generation of event keys takes no more keys (refused)'"
    " USING ERRCODE = 'insufficient_privilege'; END IF; RETURN NULL; END $$",
    "CREATE TRIGGER event_keys_go_to_open_generations AFTER INSERT ON event_keys REFERENCING NEW TABLE AS new_keys"
    " FOR EACH STATEMENT EXECUTE FUNCTION persona_keys_go_to_open_generations()",
    "CREATE FUNCTION persona_seal_in_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.generation <> (SELECT coalesce(max(f.generation), -1) + 1 FROM key_filters f)"
    " OR NEW.keys <> (SELECT count(*) FROM event_keys k WHERE k.generation = NEW.generation)"
    f" OR length(NEW.bits) <> {FILTER_BITS // 8} THEN"
    " RAISE EXCEPTION 'persona: generations are sealed in order, each filter over its keys (refused)'"
    " USING ERRCODE = 'insufficient_privilege'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER key_filters_seal_in_order BEFORE INSERT ON key_filters FOR EACH ROW"
    " EXECUTE FUNCTION persona_seal_in_order()",
    *(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
      " FOR EACH ROW EXECUTE FUNCTION persona_refuse()" for table in ("event_keys", "key_filters")),
    *(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
      " FOR EACH STATEMENT EXECUTE FUNCTION persona_refuse()" for table in ("event_keys", "key_filters")),
)
# A store of format 1 (one row per event) becomes one of chunks (schema.UPGRADABLE): each event a
# chunk of one, its columns as they are. Then (format 2 too) the key set is made anew in generations
# (PostgresRecorder._check_version: filled from the chunks, the passed generations sealed).
UPGRADE_LOG = (
    *LOG_TABLES,
    "INSERT INTO chunks (position, stream_no, first_version, last_version, recorded_at, types, keys, payload, hash)"
    " SELECT position, stream_no, version, version, recorded_at, type, event_key, payload, hash FROM events",
    "DROP TABLE events",
    "DROP SEQUENCE events_position_seq",
    *LOG_TRIGGERS,
)
UPGRADE_KEYS = ("DROP TABLE event_keys", *KEY_SET)
# Live segments (schema revision 5): made with the rest, or added to an older store when opened.
SEGMENT_DDL = (
    f"CREATE TABLE IF NOT EXISTS segments (name {_ID} PRIMARY KEY, rule text NOT NULL, created_at bigint NOT NULL,"
    " created_by text NOT NULL, tag bytea)",
    f"CREATE TABLE IF NOT EXISTS segment_members (segment {_ID} NOT NULL, profile_id {_ID} NOT NULL,"
    " since bigint NOT NULL, tag bytea, PRIMARY KEY (segment, profile_id))",
    "CREATE INDEX IF NOT EXISTS segment_members_profile ON segment_members (profile_id)",
    f"CREATE TABLE IF NOT EXISTS segment_changes (seq bigserial PRIMARY KEY, at bigint NOT NULL,"
    f" segment {_ID} NOT NULL, profile_id {_ID} NOT NULL, entered integer NOT NULL, tag bytea)",
    "CREATE INDEX IF NOT EXISTS segment_changes_profile ON segment_changes (profile_id)",
    "CREATE INDEX IF NOT EXISTS segment_changes_at ON segment_changes (at)",
)
# Webhook destinations (schema revision 6): the same.
DESTINATION_DDL = (
    f"CREATE TABLE IF NOT EXISTS destinations (name {_ID} PRIMARY KEY, host text NOT NULL, url bytea NOT NULL,"
    " segments text NOT NULL,"
    " fields text NOT NULL, on_change text NOT NULL, purpose text NOT NULL, secret bytea NOT NULL,"
    " created_at bigint NOT NULL, created_by text NOT NULL, tag bytea)",
    f"CREATE TABLE IF NOT EXISTS destination_people (destination {_ID} NOT NULL, profile_id {_ID} NOT NULL,"
    " first_at bigint NOT NULL, digest bytea, tag bytea, PRIMARY KEY (destination, profile_id))",
    "CREATE INDEX IF NOT EXISTS destination_people_profile ON destination_people (profile_id)",
    f"CREATE TABLE IF NOT EXISTS deliveries (seq bigserial PRIMARY KEY, key text NOT NULL UNIQUE,"
    f" destination {_ID} NOT NULL,"
    f" kind text NOT NULL, profile_id {_ID} NOT NULL, segment {_ID} NOT NULL, created_at bigint NOT NULL,"
    " attempts integer NOT NULL, next_at bigint NOT NULL, status text NOT NULL, outcome text NOT NULL,"
    " done_at bigint, tag bytea)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_profile ON deliveries (profile_id)",
)
SCHEMA = [
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE persona_clock (one boolean PRIMARY KEY DEFAULT true CHECK (one), n bigint NOT NULL)",
    "INSERT INTO persona_clock (n) VALUES (0)",
    *LOG_TABLES,
    f"CREATE TABLE streams (stream_no bigserial PRIMARY KEY, stream_id {_ID} NOT NULL UNIQUE,"
    " version integer NOT NULL, head bytea NOT NULL, created_at bigint NOT NULL)",
    f"CREATE TABLE keys (profile_id {_ID} PRIMARY KEY, kek_version integer NOT NULL, wrapped bytea NOT NULL)",
    "CREATE TABLE system_keys (name text PRIMARY KEY, kek_version integer NOT NULL, wrapped bytea NOT NULL)",
    f"CREATE TABLE links (subject_hash bytea PRIMARY KEY, profile_id {_ID} NOT NULL, namespace {_ID} NOT NULL,"
    " created_at bigint NOT NULL)",
    "CREATE INDEX links_profile ON links (profile_id)",
    f"CREATE TABLE tombstones (profile_id {_ID} PRIMARY KEY, erased_at bigint NOT NULL, events integer NOT NULL,"
    " seq bigserial NOT NULL)",
    "CREATE TABLE quarantine (id bigserial PRIMARY KEY, recorded_at bigint NOT NULL, origin text NOT NULL,"
    " line integer NOT NULL, reason text NOT NULL, size integer NOT NULL, content bytea NOT NULL,"
    " content_hash bytea NOT NULL UNIQUE, expires_at bigint NOT NULL)",
    "CREATE INDEX quarantine_expires ON quarantine (expires_at)",
    "CREATE TABLE quarantine_tags (quarantine_id bigint NOT NULL, subject_hash bytea NOT NULL,"
    " PRIMARY KEY (subject_hash, quarantine_id))",
    f"CREATE TABLE snapshots (profile_id {_ID} NOT NULL, projection text NOT NULL,"
    " projection_version integer NOT NULL, stream_version integer NOT NULL, payload bytea NOT NULL,"
    " PRIMARY KEY (profile_id, projection))",
    f"CREATE TABLE profile_index (profile_id {_ID} PRIMARY KEY, version integer NOT NULL, doc text NOT NULL)",
    f"CREATE TABLE rfm (profile_id {_ID} PRIMARY KEY, r integer NOT NULL, f integer NOT NULL, m integer NOT NULL)",
    f"CREATE TABLE merges (edge bigserial PRIMARY KEY, a {_ID} NOT NULL, b {_ID} NOT NULL, a_hash bytea NOT NULL,"
    " b_hash bytea NOT NULL, merged_at bigint NOT NULL, undone_at bigint)",
    "CREATE INDEX merges_a ON merges (a)",
    "CREATE INDEX merges_b ON merges (b)",
    f"CREATE TABLE members (profile_id {_ID} PRIMARY KEY, person_id {_ID} NOT NULL)",
    "CREATE INDEX members_person ON members (person_id)",
    f"CREATE TABLE models (name {_ID} NOT NULL, version integer NOT NULL, created_at bigint NOT NULL,"
    " status text NOT NULL, promoted_at bigint, stale text, drift text, meta text NOT NULL, sha256 text NOT NULL,"
    " blob bytea NOT NULL, PRIMARY KEY (name, version))",
    f"CREATE TABLE model_people (profile_id {_ID} NOT NULL, name {_ID} NOT NULL, version integer NOT NULL,"
    " PRIMARY KEY (profile_id, name, version))",
    f"CREATE TABLE predictions (profile_id {_ID} NOT NULL, model {_ID} NOT NULL, version integer NOT NULL,"
    " computed_at bigint NOT NULL, doc text NOT NULL, PRIMARY KEY (profile_id, model))",
    f"CREATE TABLE api_tokens (name {_ID} PRIMARY KEY, digest bytea NOT NULL UNIQUE, scopes text NOT NULL,"
    " created_at bigint NOT NULL, revoked_at bigint, rate_per_s double precision NOT NULL,"
    " epsilon_budget double precision NOT NULL, epsilon_spent double precision NOT NULL,"
    " delta_budget double precision NOT NULL, delta_spent double precision NOT NULL,"
    " sources text NOT NULL, types text NOT NULL, subject text NOT NULL DEFAULT '', expires_at bigint)",
    f"CREATE TABLE audit (seq bigserial PRIMARY KEY, at bigint NOT NULL, token text NOT NULL,"
    f" operation text NOT NULL, profile_id {_ID} NOT NULL, fields text NOT NULL, outcome text NOT NULL,"
    " detail text NOT NULL)",
    "CREATE INDEX audit_profile ON audit (profile_id)",
    *SEGMENT_DDL,
    *DESTINATION_DDL,
    # append-only, in the database: no UPDATE, DELETE or TRUNCATE of the log, its keys,
    # tombstones or the audit log, whoever connects
    "CREATE FUNCTION persona_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " RAISE EXCEPTION 'persona: % is append-only (% refused)', TG_TABLE_NAME, TG_OP"
    " USING ERRCODE = 'insufficient_privilege'; END $$",
    *(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
      " FOR EACH ROW EXECUTE FUNCTION persona_refuse()"
      for table in ("tombstones", "audit")),
    *(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
      " FOR EACH STATEMENT EXECUTE FUNCTION persona_refuse()"
      for table in ("tombstones", "audit")),
    *LOG_TRIGGERS,
    *KEY_SET,
]

# the row tags (persona.integrity), as the additive migration adds them to an older store
SCHEMA += [f"ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            for revision, table, column, declaration in COLUMNS_ADDED if revision == 4]
SCHEMA += UNTAGGED_INDEXES

TRIGGER_NAMES = tuple(statement.split()[2] for statement in SCHEMA if statement.startswith("CREATE TRIGGER "))
TRIGGERS_PRESENT = ("SELECT t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                     " WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal")

DROP = (
    "DROP TABLE " + ", ".join(["persona_clock", *TABLES]),
    "DROP FUNCTION persona_refuse(), persona_chunk_continues(), persona_keys_go_to_open_generations(),"
    " persona_seal_in_order()",
)
