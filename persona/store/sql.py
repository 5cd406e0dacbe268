"""The statements both backends run, written once.

Each is text with `{p}` where a value is bound and `{text}`, `{bytea}` or `{bigint}` where a
list of values is (an IN list of that type); `Statements.formatted` puts in a backend's
placeholder and its list syntax once, at import: SQLite's `?` and `IN (?*)` (the marker is
expanded to one `?` per value when the statement runs), PostgreSQL's `%s` and `= ANY(%s::text[])`
(one array parameter). Only constant table and column names are ever put into the text;
every value is bound.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from persona.store.rows import CHUNK_CAP
from persona.store.schema import COUNTED, DERIVED_TABLES, PERSON_ROWS, TABLES

CHUNK_COLUMNS = ("c.position, s.stream_id, c.first_version, c.last_version, c.recorded_at, c.types, c.keys,"
                 " c.payload, c.hash")
# Chunks carry a small integer stream number (streams.stream_no) instead of the profile id:
# the (stream, last version) index stays small, and appends dirty fewer pages.
CHUNK_SELECT = "SELECT " + CHUNK_COLUMNS + " FROM chunks c JOIN streams s ON s.stream_no = c.stream_no"
LAST_POSITION = "c.position + c.last_version - c.first_version"
# The chunks holding positions after a given one: a chunk holds at most CHUNK_CAP events, so the
# one holding the next position starts fewer than CHUNK_CAP positions before it (a rowid range).
AFTER_POSITION = f"c.position > {{p}} - {CHUNK_CAP} AND {LAST_POSITION} > {{p}}"
TOKEN_SELECT = "SELECT " + ", ".join(TABLES["api_tokens"][:-1]) + " FROM api_tokens"  # not its tag
AUDIT_SELECT = "SELECT " + ", ".join(TABLES["audit"][:-1]) + " FROM audit"
DELIVERY_SELECT = ("SELECT seq, key, destination, kind, profile_id, segment, created_at, attempts, next_at, status,"
                   " outcome, done_at FROM deliveries")
MODEL_SELECT = "SELECT name, version, created_at, status, promoted_at, stale, drift, meta, sha256 FROM models"

# Charging an answer to a token's privacy budget: ε and δ together or neither, never past
# either budget (a relative slack of 1e-9 absorbs the rounding of sums of charges). The
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


@dataclass(frozen=True, slots=True)
class Statements:
    # the log
    # the key set in generations (persona.store.keyset)
    keys_in_generation: str = "SELECT event_key FROM event_keys WHERE generation = {p} AND event_key {bytea}"
    generation_keys: str = ("SELECT event_key FROM event_keys WHERE generation = {p} AND event_key > {p}"
                            " ORDER BY event_key LIMIT {p}")
    key_filters_from: str = "SELECT generation, bits FROM key_filters WHERE generation >= {p} ORDER BY generation"
    sealed_generations: str = "SELECT count(*) FROM key_filters"
    seal_generation: str = "INSERT INTO key_filters (generation, keys, bits) VALUES ({p}, {p}, {p})"
    key_filter_rows: str = "SELECT generation, keys, bits FROM key_filters ORDER BY generation"
    generation_sizes: str = "SELECT generation, count(*) FROM event_keys GROUP BY generation ORDER BY generation"
    repeated_keys: str = ("SELECT count(*) FROM (SELECT event_key FROM event_keys GROUP BY event_key"
                          " HAVING count(*) > 1) r")
    last_position: str = "SELECT " + LAST_POSITION + " FROM chunks c ORDER BY c.position DESC LIMIT 1"
    read_stream: str = CHUNK_SELECT + " WHERE s.stream_id = {p} AND c.last_version > {p} ORDER BY c.last_version"
    read_streams: str = CHUNK_SELECT + " WHERE c.stream_no {bigint} ORDER BY c.stream_no, c.last_version"
    read_page: str = (CHUNK_SELECT + " WHERE s.stream_id = {p} AND c.first_version < {p}"
                      " ORDER BY c.last_version DESC LIMIT {p}")
    read_across: str = (CHUNK_SELECT + " WHERE s.stream_id {text} AND c.position < {p}"
                        " ORDER BY c.position DESC LIMIT {p}")
    read_all: str = CHUNK_SELECT + " WHERE " + AFTER_POSITION + " ORDER BY c.position LIMIT {p}"
    read_log: str = ("SELECT c.position, c.stream_no, c.first_version, c.last_version, c.recorded_at, c.types, c.keys,"
                     " c.payload FROM chunks c WHERE " + AFTER_POSITION + " ORDER BY c.position LIMIT {p}")
    # chunks whose positions overlap the chunk before them in the log (a position altered on disk)
    overlapping: str = ("SELECT count(*) FROM (SELECT c.position, lag(" + LAST_POSITION + ") OVER (ORDER BY c.position)"
                        " AS before FROM chunks c) o WHERE o.position <= o.before")
    stream_names: str = "SELECT stream_no, stream_id FROM streams WHERE stream_no {bigint}"
    # streams and keys
    heads: str = ("SELECT s.stream_id, s.stream_no, s.version, s.head, k.kek_version, k.wrapped FROM streams s"
                  " LEFT JOIN keys k ON k.profile_id = s.stream_id WHERE s.stream_id {text}")
    created_at: str = "SELECT created_at FROM streams WHERE stream_id = {p}"
    kek_versions: str = "SELECT kek_version FROM keys UNION SELECT kek_version FROM system_keys"
    wrapped_keys: str = "SELECT profile_id, kek_version, wrapped FROM keys"
    rewrap: str = "UPDATE keys SET kek_version = {p}, wrapped = {p}, tag = NULL WHERE profile_id = {p}"
    system_key: str = "SELECT kek_version, wrapped FROM system_keys WHERE name = {p}"
    system_keys: str = "SELECT name, kek_version, wrapped FROM system_keys"
    put_system_key: str = (
        "INSERT INTO system_keys (name, kek_version, wrapped) VALUES ({p}, {p}, {p}) ON CONFLICT (name)"
        " DO UPDATE SET kek_version = excluded.kek_version, wrapped = excluded.wrapped, tag = NULL")
    # identity links and merges
    resolve: str = "SELECT subject_hash, profile_id FROM links WHERE subject_hash {bytea}"
    insert_links: str = ("INSERT INTO links (subject_hash, profile_id, namespace, created_at, tag)"
                         " VALUES ({p}, {p}, {p}, {p}, {p})")
    links_of: str = "SELECT subject_hash, namespace FROM links WHERE profile_id = {p} ORDER BY created_at, namespace"
    links_of_many: str = ("SELECT profile_id, subject_hash, namespace FROM links WHERE profile_id {text}"
                          " ORDER BY created_at, namespace")
    persons_of: str = "SELECT profile_id, person_id FROM members WHERE profile_id {text}"
    members_of: str = ("SELECT m.person_id, m.profile_id FROM members m JOIN streams s ON s.stream_id = m.profile_id"
                       " WHERE m.person_id {text} ORDER BY s.stream_no")
    merge_edges: str = ("SELECT edge, a, b, a_hash, b_hash, merged_at, undone_at FROM merges WHERE a {text} UNION"
                        " SELECT edge, a, b, a_hash, b_hash, merged_at, undone_at FROM merges WHERE b {text}")
    add_merge: str = ("INSERT INTO merges (a, b, a_hash, b_hash, merged_at) VALUES ({p}, {p}, {p}, {p}, {p})"
                      " RETURNING edge")
    undo_merges: str = "UPDATE merges SET undone_at = {p}, tag = NULL WHERE edge {bigint} AND undone_at IS NULL"
    set_members: str = ("INSERT INTO members (profile_id, person_id) VALUES ({p}, {p})"
                        " ON CONFLICT (profile_id) DO UPDATE SET person_id = excluded.person_id, tag = NULL")
    drop_members: str = "DELETE FROM members WHERE profile_id {text}"
    lagging: str = (
        "SELECT p.person FROM (SELECT coalesce(m.person_id, s.stream_id) AS person, sum(s.version) AS version"
        " FROM streams s JOIN keys k ON k.profile_id = s.stream_id LEFT JOIN members m ON m.profile_id = s.stream_id"
        " GROUP BY 1) p LEFT JOIN profile_index i ON i.profile_id = p.person"
        " WHERE i.version IS NULL OR i.version != p.version ORDER BY p.person")
    drop_person_rows: tuple[str, ...] = tuple(f"DELETE FROM {table} WHERE profile_id {{text}}"
                                              for table in PERSON_ROWS)
    # erasure (schema.ERASED_FROM)
    stream_version: str = "SELECT version FROM streams WHERE stream_id = {p}"
    erase_key: str = "DELETE FROM keys WHERE profile_id = {p}"
    erase_links: str = "DELETE FROM links WHERE profile_id = {p}"
    erase_merges: str = "DELETE FROM merges WHERE a = {p} OR b = {p}"
    erase_members: str = "DELETE FROM members WHERE profile_id = {p}"
    erase_derived: tuple[str, ...] = tuple(f"DELETE FROM {table} WHERE profile_id = {{p}}" for table in DERIVED_TABLES)
    erase_model_people: str = "DELETE FROM model_people WHERE profile_id = {p}"
    write_tombstone: str = ("INSERT INTO tombstones (profile_id, erased_at, events, tag) VALUES ({p}, {p}, {p}, {p})"
                            " ON CONFLICT (profile_id) DO NOTHING")
    tombstone: str = "SELECT erased_at FROM tombstones WHERE profile_id = {p}"
    # quarantine
    tagged: str = "SELECT DISTINCT quarantine_id FROM quarantine_tags WHERE subject_hash {bytea}"
    delete_quarantined: tuple[str, ...] = ("DELETE FROM quarantine WHERE id {bigint}",
                                           "DELETE FROM quarantine_tags WHERE quarantine_id {bigint}")
    held: str = "SELECT id FROM quarantine WHERE content_hash = {p}"
    hold: str = ("INSERT INTO quarantine (recorded_at, origin, line, reason, size, content, content_hash, expires_at)"
                 " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING id")
    hold_again: str = ("UPDATE quarantine SET recorded_at = {p}, reason = {p}, expires_at = {p}, tag = NULL"
                       " WHERE id = {p}")
    tag_held: str = ("INSERT INTO quarantine_tags (quarantine_id, subject_hash) VALUES ({p}, {p})"
                     " ON CONFLICT DO NOTHING")
    quarantined: str = "SELECT id, recorded_at, origin, line, reason, size, expires_at FROM quarantine ORDER BY id"
    quarantined_content: str = "SELECT content FROM quarantine WHERE id = {p}"
    expired: str = "SELECT id FROM quarantine WHERE expires_at <= {p}"
    # read models
    snapshots_of: str = ("SELECT projection, projection_version, stream_version, payload FROM snapshots"
                         " WHERE profile_id = {p}")
    snapshots_of_many: str = ("SELECT profile_id, projection, projection_version, stream_version, payload"
                              " FROM snapshots WHERE profile_id {text}")
    rfm_of: str = "SELECT r, f, m FROM rfm WHERE profile_id = {p}"
    rfm_scores: str = "SELECT profile_id, r, f, m FROM rfm"
    rfm_of_many: str = "SELECT profile_id, r, f, m FROM rfm WHERE profile_id {text}"
    index_versions: str = "SELECT profile_id, version FROM profile_index WHERE profile_id {text}"
    index_size: str = "SELECT count(*) FROM profile_index"
    index_rows: str = ("SELECT i.profile_id, i.version, i.doc, r.r, r.f, r.m FROM profile_index i"
                       " LEFT JOIN rfm r ON r.profile_id = i.profile_id WHERE i.profile_id > {p}"
                       " ORDER BY i.profile_id LIMIT {p}")
    # one row per profile for the API: its head, last change, read-model row and RFM scores
    profile_rows: str = (
        "SELECT s.stream_id, s.version, e.recorded_at, k.profile_id IS NOT NULL, i.version, i.doc, r.r, r.f, r.m,"
        " m.person_id FROM streams s LEFT JOIN chunks e ON e.stream_no = s.stream_no AND e.last_version = s.version"
        " LEFT JOIN members m ON m.profile_id = s.stream_id"
        " LEFT JOIN keys k ON k.profile_id = s.stream_id LEFT JOIN profile_index i ON i.profile_id = s.stream_id"
        " LEFT JOIN rfm r ON r.profile_id = s.stream_id WHERE s.stream_id {text}")
    # what an answer about each profile depends on (persona.reading.stamps): its profile_rows
    # columns but the document, and a digest of its predictions and live-segment memberships
    answer_stamps: str = (
        "SELECT s.stream_id, s.version, e.recorded_at, k.profile_id IS NOT NULL, i.version, r.r, r.f, r.m,"
        " m.person_id, (SELECT count(*) || ':' || sum(p.version) || ':' || sum(p.computed_at) || ':'"
        " || max(p.computed_at) FROM predictions p WHERE p.profile_id = s.stream_id),"
        " (SELECT count(*) || ':' || sum(g.since) || ':' || max(g.since) FROM segment_members g"
        " WHERE g.profile_id = s.stream_id)"
        " FROM streams s LEFT JOIN chunks e ON e.stream_no = s.stream_no AND e.last_version = s.version"
        " LEFT JOIN members m ON m.profile_id = s.stream_id"
        " LEFT JOIN keys k ON k.profile_id = s.stream_id LEFT JOIN profile_index i ON i.profile_id = s.stream_id"
        " LEFT JOIN rfm r ON r.profile_id = s.stream_id WHERE s.stream_id {text}")
    clear_person_rows: tuple[str, ...] = tuple(f"DELETE FROM {table}" for table in PERSON_ROWS)
    clear_snapshots: str = "DELETE FROM snapshots"
    clear_projection: str = "DELETE FROM snapshots WHERE projection = {p}"
    # live segments (persona.memberships)
    segment_definitions: str = "SELECT name, rule, created_at, created_by FROM segments ORDER BY name"
    add_segment: str = ("INSERT INTO segments (name, rule, created_at, created_by) VALUES ({p}, {p}, {p}, {p})"
                        " ON CONFLICT (name) DO NOTHING")
    remove_segment: tuple[str, ...] = ("DELETE FROM segment_members WHERE segment = {p}",
                                       "DELETE FROM segment_changes WHERE segment = {p}",
                                       "DELETE FROM segments WHERE name = {p}")
    segment_sizes: str = "SELECT segment, count(*) FROM segment_members GROUP BY segment"
    memberships_of: str = ("SELECT segment, profile_id, since FROM segment_members WHERE profile_id {text}"
                           " ORDER BY profile_id, segment")
    memberships: str = ("SELECT segment, profile_id, since FROM segment_members WHERE segment {text}"
                        " ORDER BY segment, profile_id")
    segment_members: str = ("SELECT profile_id, since FROM segment_members WHERE segment = {p} AND profile_id > {p}"
                            " ORDER BY profile_id LIMIT {p}")
    enter_segment: str = ("INSERT INTO segment_members (segment, profile_id, since) VALUES ({p}, {p}, {p})"
                          " ON CONFLICT (segment, profile_id) DO NOTHING")
    leave_segment: str = "DELETE FROM segment_members WHERE segment = {p} AND profile_id = {p}"
    note_segment_change: str = ("INSERT INTO segment_changes (at, segment, profile_id, entered)"
                                " VALUES ({p}, {p}, {p}, {p})")
    segment_changes: str = ("SELECT seq, at, segment, profile_id, entered FROM segment_changes WHERE seq > {p}"
                            " ORDER BY seq LIMIT {p}")
    last_segment_change: str = "SELECT coalesce(max(seq), 0) FROM segment_changes"
    # entries and exits per segment and day (days since the epoch, UTC) from an instant on
    segment_daily_changes: str = ("SELECT segment, at / 86400000000 AS day, sum(entered), count(*) - sum(entered)"
                                  " FROM segment_changes WHERE at >= {p} GROUP BY segment, day ORDER BY segment, day")
    prune_segment_changes: str = "DELETE FROM segment_changes WHERE at < {p}"
    clear_memberships: tuple[str, ...] = ("DELETE FROM segment_members", "DELETE FROM segment_changes")
    # webhook destinations (persona.destinations)
    destination_rows: str = ("SELECT name, host, url, segments, fields, on_change, purpose, secret, created_at,"
                             " created_by FROM destinations ORDER BY name")
    add_destination: str = ("INSERT INTO destinations (name, host, url, segments, fields, on_change, purpose, secret,"
                            " created_at, created_by) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
                            " ON CONFLICT (name) DO NOTHING")
    update_destination: str = ("UPDATE destinations SET host = {p}, url = {p}, secret = {p}, tag = NULL"
                               " WHERE name = {p}")
    remove_destination: tuple[str, ...] = ("DELETE FROM deliveries WHERE destination = {p}",
                                           "DELETE FROM destination_people WHERE destination = {p}",
                                           "DELETE FROM destinations WHERE name = {p}")
    received_count: str = "SELECT count(*) FROM destination_people WHERE destination = {p}"
    # a delivery about a live person: queued only while they are (an erasure committed meanwhile wins)
    enqueue_delivery: str = ("INSERT INTO deliveries (key, destination, kind, profile_id, segment, created_at,"
                             " attempts, next_at, status, outcome) SELECT {p}, {p}, {p}, {p}, {p}, {p}, 0, {p},"
                             " 'pending', '' WHERE EXISTS (SELECT 1 FROM keys WHERE profile_id = {p})")
    enqueue_notice: str = ("INSERT INTO deliveries (key, destination, kind, profile_id, segment, created_at, attempts,"
                           " next_at, status, outcome)"
                           " VALUES ({p}, {p}, 'erased', {p}, '', {p}, 0, {p}, 'pending', '')")
    due_deliveries: str = (DELIVERY_SELECT + " WHERE status = 'pending' AND next_at <= {p} ORDER BY seq LIMIT {p}")
    lease_delivery: str = ("UPDATE deliveries SET next_at = {p}, tag = NULL"
                           " WHERE seq = {p} AND status = 'pending' AND next_at <= {p} RETURNING attempts")
    finish_delivery: str = ("UPDATE deliveries SET status = {p}, attempts = {p}, next_at = {p}, outcome = {p},"
                            " done_at = {p}, tag = NULL WHERE seq = {p} AND next_at = {p} AND status = 'pending'")
    hold_received: str = ("INSERT INTO destination_people (destination, profile_id, first_at, digest)"
                          " VALUES ({p}, {p}, {p}, NULL) ON CONFLICT (destination, profile_id) DO NOTHING")
    delivery_states: str = ("SELECT destination, status, count(*), max(done_at) FROM deliveries"
                            " GROUP BY destination, status ORDER BY destination, status")
    deliveries_in: str = DELIVERY_SELECT + " WHERE destination = {p} AND status = {p} ORDER BY seq LIMIT {p}"
    deliveries_of: str = DELIVERY_SELECT + " WHERE seq {bigint} ORDER BY seq"
    erasure_notices: str = (DELIVERY_SELECT + " WHERE profile_id {text} AND kind = 'erased' AND status = 'pending'"
                            " ORDER BY seq")
    requeue_dead: str = ("UPDATE deliveries SET status = 'pending', attempts = 0, next_at = {p}, outcome = '',"
                         " tag = NULL WHERE destination = {p} AND status = 'dead'")
    prune_deliveries: str = "DELETE FROM deliveries WHERE status != 'pending' AND kind != 'erased' AND done_at < {p}"
    received_by: str = ("SELECT destination, profile_id, first_at, digest FROM destination_people"
                        " WHERE profile_id {text} ORDER BY profile_id, destination")
    note_received: str = ("INSERT INTO destination_people (destination, profile_id, first_at, digest)"
                          " VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (destination, profile_id)"
                          " DO UPDATE SET digest = excluded.digest, tag = NULL")
    forget_received: tuple[str, ...] = ("DELETE FROM destination_people WHERE profile_id {text}",
                                        "DELETE FROM deliveries WHERE profile_id {text} AND kind != 'erased'")
    # models
    next_model_version: str = "SELECT coalesce(max(version), 0) FROM models WHERE name = {p}"
    add_model: str = ("INSERT INTO models (name, version, created_at, status, meta, sha256, blob)"
                      " VALUES ({p}, {p}, {p}, 'candidate', {p}, {p}, {p})")
    model_rows: str = MODEL_SELECT + " ORDER BY name, version DESC"
    model_rows_of: str = MODEL_SELECT + " WHERE name = {p} ORDER BY version DESC"
    model_blob: str = "SELECT sha256, blob FROM models WHERE name = {p} AND version = {p}"
    retire_model: str = "UPDATE models SET status = 'retired', tag = NULL WHERE name = {p} AND status = 'promoted'"
    promote_model: str = ("UPDATE models SET status = 'promoted', promoted_at = {p}, tag = NULL"
                          " WHERE name = {p} AND version = {p}")
    set_model_status: str = "UPDATE models SET status = {p}, tag = NULL WHERE name = {p} AND version = {p}"
    set_model_drift: str = "UPDATE models SET drift = {p}, tag = NULL WHERE name = {p} AND version = {p}"
    model_meta: str = "SELECT name, version, meta, drift FROM models"
    replace_model_meta: str = "UPDATE models SET meta = {p}, drift = {p} WHERE name = {p} AND version = {p}"
    trained_on: str = "SELECT DISTINCT name, version FROM model_people WHERE profile_id {text}"
    mark_stale: str = "UPDATE models SET stale = {p}, tag = NULL WHERE name = {p} AND version = {p}"
    drop_predictions: str = "DELETE FROM predictions WHERE model = {p}"
    put_predictions: str = (
        "INSERT INTO predictions (profile_id, model, version, computed_at, doc, tag)"
        " VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
        " ON CONFLICT (profile_id, model) DO UPDATE SET version = excluded.version,"
        " computed_at = excluded.computed_at, doc = excluded.doc, tag = excluded.tag")  # tagged as written
    predictions_of: str = ("SELECT profile_id, model, version, computed_at, doc FROM predictions"
                           " WHERE profile_id {text} ORDER BY model, profile_id")
    predictions_of_model: str = ("SELECT profile_id, model, version, computed_at, doc FROM predictions"
                                 " WHERE model = {p} AND profile_id {text} ORDER BY profile_id")
    drop_prediction: str = "DELETE FROM predictions WHERE profile_id = {p} AND model = {p}"
    # access
    put_token: str = ("INSERT INTO api_tokens (name, digest, scopes, created_at, rate_per_s, epsilon_budget,"
                      " delta_budget, sources, types, subject, expires_at, epsilon_spent, delta_spent)"
                      " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, 0, 0)")
    prune_minted: str = "DELETE FROM api_tokens WHERE subject != '' AND expires_at < {p}"
    revoke_bound_tokens: str = ("UPDATE api_tokens SET revoked_at = {p}, tag = NULL"
                                " WHERE subject = {p} AND revoked_at IS NULL")
    token_by_digest: str = TOKEN_SELECT + " WHERE digest = {p} AND revoked_at IS NULL"
    tokens: str = TOKEN_SELECT + " ORDER BY created_at, name"
    revoke_token: str = "UPDATE api_tokens SET revoked_at = {p}, tag = NULL WHERE name = {p} AND revoked_at IS NULL"
    spend_privacy: str = SPEND_PRIVACY
    # entries go in many rows to a statement (AUDIT_ROWS_AT_ONCE): one step of the database, where one
    # per row made a server's writer thread and its request loop trade the interpreter back and forth
    append_audit: str = "INSERT INTO audit (at, token, operation, profile_id, fields, outcome, detail, tag) VALUES "
    audit_values: str = "({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    audit_rows: str = AUDIT_SELECT + " WHERE seq > {p} ORDER BY seq LIMIT {p}"
    audit_rows_of: str = AUDIT_SELECT + " WHERE seq > {p} AND profile_id = {p} ORDER BY seq LIMIT {p}"
    # the newest first, below a number (the console's operations page)
    audit_latest: str = AUDIT_SELECT + " WHERE seq < {p} ORDER BY seq DESC LIMIT {p}"
    audit_latest_of: str = AUDIT_SELECT + " WHERE seq < {p} AND profile_id = {p} ORDER BY seq DESC LIMIT {p}"
    # ingest runs (`persona ingest`, `ingestEvents`): their counts, among the newest entries after a number
    audit_ingests: str = (AUDIT_SELECT + " WHERE seq > {p} AND operation IN ('ingest', 'ingestEvents')"
                          " AND profile_id = '' ORDER BY seq DESC LIMIT {p}")
    audit_last: str = "SELECT coalesce(max(seq), 0) FROM audit"
    counts: tuple[str, ...] = tuple(f"SELECT count(*) FROM {table}" for table in COUNTED.values())

    def formatted(self, *, p: str, in_list: str) -> Statements:
        """Every statement in one backend's syntax: `in_list` is the list form with `{type}` in it
        ("IN (?*)", or "= ANY(%s::{type}[])")."""
        names = {"p": p,
                 **{kind: in_list.format(type=kind) for kind in ("text", "bytea", "bigint")}}
        done: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            text = getattr(self, field.name)
            done[field.name] = (text.format(**names) if isinstance(text, str)
                                else tuple(part.format(**names) for part in text))
        return dataclasses.replace(self, **done)
