"""A Citus layout for the PostgreSQL store, and what in today's schema keeps it from being one.

Not a mode persona runs in: Citus is not packaged for this machine (Debian has no Citus), so the
layout is a plan (docs/scale.md, "Citus") and this module checks it against the rules Citus
documents that can be checked on plain PostgreSQL, over a live store's catalog:

- a distributed table's primary key and unique constraints must include its distribution column
  (Citus checks uniqueness within one shard only);
- a distributed table has its distribution column;
- triggers on a distributed table run on each shard (and only with `citus.enable_unsafe_triggers`),
  on a reference table on each node's copy: a trigger that refuses a change by itself still
  works; one that reads a distributed table sees one shard of it, not the table;
- every table of the schema has a place (distributed, reference, or on the coordinator alone).

    python -m persona.store.citus postgresql://…   # the problems of the store at that URL

What cannot be checked without Citus — the statements that become cross-shard — is listed by
hand in docs/scale.md.
"""

from __future__ import annotations

import sys
from typing import Any

from persona.store.schema import TABLES

# Distributed by the person (their profile id: a person's rows on one shard, co-located) or, for
# what is looked up by another key, by that key.
DISTRIBUTED = {
    "streams": "stream_id", "chunks": "stream_id", "keys": "profile_id", "snapshots": "profile_id",
    "profile_index": "profile_id", "rfm": "profile_id", "predictions": "profile_id", "members": "profile_id",
    "model_people": "profile_id", "tombstones": "profile_id", "segment_members": "profile_id",
    "destination_people": "profile_id",
    "links": "subject_hash",  # resolving an identifier is a point lookup by its hash
    "event_keys": "event_key",  # so is an event id
    "quarantine_tags": "subject_hash",  # found by identifier at erasure
}
# Small, read everywhere, written rarely (each write goes to every node in one two-phase commit).
REFERENCE = ("meta", "system_keys", "key_filters", "models", "api_tokens", "segments", "destinations")
# Written by every transaction or kept in one order: local tables of the coordinator, where the
# writers connect (and where the advisory locks that order positions live).
COORDINATOR = ("persona_clock", "merges", "quarantine", "audit", "segment_changes", "deliveries")
# what each trigger function of the schema reads besides the row it is given
TRIGGER_READS = {"persona_refuse": (), "persona_chunk_continues": ("chunks",),
                 "persona_keys_go_to_open_generations": ("key_filters",), "persona_seal_in_order": ("event_keys",)}

_UNIQUE = ("SELECT c.relname, i.relname, ARRAY(SELECT a.attname FROM unnest(x.indkey) k"
           " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k)"
           " FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
           " WHERE x.indisunique AND c.relnamespace = current_schema()::regnamespace ORDER BY 1, 2")
_COLUMNS = ("SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0 AND NOT a.attisdropped")
_TRIGGERS = ("SELECT c.relname, t.tgname, p.proname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
             " JOIN pg_proc p ON p.oid = t.tgfoid"
             " WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2")


def layout_problems(conn: Any) -> list[str]:
    """What keeps the store this connection's schema holds from being distributed as planned."""
    placed = [*DISTRIBUTED, *REFERENCE, *COORDINATOR]
    problems = [f"{table}: no place in the layout" for table in ["persona_clock", *TABLES] if table not in placed]
    problems += [f"{table}: placed twice" for table in sorted(set(placed)) if placed.count(table) > 1]
    columns: dict[str, set[str]] = {}
    for table, column in conn.execute(_COLUMNS).fetchall():
        columns.setdefault(table, set()).add(column)
    for table, column in DISTRIBUTED.items():
        if column not in columns.get(table, set()):
            problems.append(f"{table}: has no column {column}, its distribution column")
    for table, index, keyed in conn.execute(_UNIQUE).fetchall():
        column = DISTRIBUTED.get(table)
        if column is not None and column not in keyed:
            problems.append(f"{table}: unique index {index} ({', '.join(keyed)}) lacks {column},"
                            " the distribution column")
    for table, trigger, function in conn.execute(_TRIGGERS).fetchall():
        if table not in DISTRIBUTED and table not in REFERENCE:
            continue  # (the coordinator's own tables; chunks' partitions, whose triggers are the log's)
        if function not in TRIGGER_READS:
            problems.append(f"{table}: trigger {trigger} runs {function}, which this layout does not know")
        for read in TRIGGER_READS.get(function, ()):
            if read in DISTRIBUTED:  # a trigger runs on each shard (or each node's copy), seeing one shard
                problems.append(f"{table}: trigger {trigger} reads {read}, a distributed table, of which it would"
                                " see one shard")
    return problems


def main(argv: list[str]) -> int:
    import psycopg

    if len(argv) != 1:
        print("usage: python -m persona.store.citus POSTGRESQL_URL (with the store's schema first on search_path)",
              file=sys.stderr)
        return 2
    with psycopg.connect(argv[0]) as conn:
        problems = layout_problems(conn)
    print("\n".join(problems) if problems else "no problem found")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
