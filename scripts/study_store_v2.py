#!/usr/bin/env python3
"""Measurement study for issue 20 (store v2): candidate SQLite event-store layouts, same workload.

Each design is built in a fresh SQLite file in a temp dir (WAL, synchronous=NORMAL, page_size
8192) and fed the same synthetic bulk ingest: events of ~200-byte JSON payloads from a seeded RNG,
arriving in batches of B events; each batch touches B/4 people picked at random among S, a few
events each (an export's interleaving; --per-person sets how many), and ~2% of each batch's
events are re-sent (an earlier event's key, same person) so the idempotency check really finds
and skips duplicates.

Every design does the real work: per-stream AES-GCM keys (cryptography's AESGCM) with associated
data binding stream/version(s)/event key(s)/type, a keyed-BLAKE2b per-stream hash chain, the
append-only triggers, and the uniqueness checks it relies on. Stream tips (version, chain head)
are cached in memory during the bulk ingest, as the library's writer cache does, and written to
the `streams` table once per batch.

Designs:
  today      one row per event; UNIQUE(stream_no, version) and UNIQUE(event_key) indexes;
             cache_size 128 MiB and wal_autocheckpoint 500 pages, as persona.store.sqlite sets.
  tuned      the same event rows, but the event_key index replaced by a WITHOUT ROWID table
             keys(event_key PRIMARY KEY); each batch's rows inserted grouped by stream and its
             keys in sorted order; cache_size 1 GiB; wal_autocheckpoint 10,000 pages.
  chunks_kt  (c1) one row per (stream, batch): the person's events of the batch sealed as ONE
             AES-GCM blob (orjson list); rowid = first global position; UNIQUE(stream_no,
             first_version); the chunk's sorted event keys in a column; idempotency by a global
             WITHOUT ROWID keys table (one random insert per event, but one structure).
  chunks_ps  (c2) the same chunks, no global keys table: the check reads the keys columns of the
             batch's streams' chunks (a range read per person; the key determines the person).
  chunks_psg chunks_ps plus a BEFORE INSERT trigger that enforces gapless versions in the database.
  chunks_2t  (d) chunks with an exact global key set in two tiers: a small hot keys_recent table
             moved into keys_main in one sorted pass every 200,000 keys (a trigger keeps the key
             set append-only: a key leaves keys_recent only once it is in keys_main).
  chunks_bf  (c3) chunks_ps plus an in-memory Bloom filter over all keys (16 bits/key, 4 probes),
             rebuilt from the store at open (the rebuild is timed); exact check only on a hit.
Added after store format 2 was built (each batch timed per statement kind: duplicate check, seal,
INSERT chunks, INSERT keys, UPDATE streams, COMMIT; and reads of one stream, its last 50 events
and all of it, on the same 300 random streams):
  shipped    store format 2 as built: chunks_psg's chunks with UNIQUE(stream_no, last_version), the
             continuity trigger (max(last_version) of the stream + 1; after the log's last position)
             and chunks_kt's global event_keys table.
  linked     no index on chunks but the rowid: each chunk holds `prev` (its stream's previous chunk);
             the streams row holds version, last chunk and head; a BEFORE INSERT trigger refuses a
             chunk that does not follow the streams row, an AFTER INSERT trigger advances the row,
             and triggers on streams let a row only advance to its stream's next chunk. Same global
             event_keys as shipped. Stream-order reads walk prev (a recursive CTE per stream).
  linked_gen linked with the key set in generations of --generation keys: the current
             event_keys_<g> checked by a query; sealed ones by numpy Bloom filters stored once in
             key_filters, an exact query into a sealed generation only for a filter hit.
--selftest checks on a small store that these three skip the same duplicates and refuse gaps,
overlaps and edits of the log, the key set and (linked) the streams rows.

Per design it reports: append ev/s overall and per 100k-event window (first and last), the share
of append time spent in the duplicate check, p50/p99 of 500 single-event transactions at the end
(stream head read from the table, check, seal, chain, insert, head update, commit), full replay
(scan + decrypt + orjson decode every event) in stream order and in global order, bytes on disk
per event after a TRUNCATE checkpoint, and the peak RSS of the process (each design runs in its
own subprocess).

    scripts/study_store_v2.py --quick                       # 20k events, all designs, < 1 min
    scripts/study_store_v2.py --events 1000000 --json out.json
    scripts/study_store_v2.py --selftest
    scripts/study_store_v2.py --events 3000000 --streams 100000 --per-person 0.2 --window 500000 \
        --designs shipped,linked,linked_gen --budget 1200     # ~1 event per person per batch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DESIGNS = ("today", "tuned", "chunks_kt", "chunks_ps", "chunks_bf", "chunks_psg", "chunks_2t",
           "shipped", "linked", "linked_gen")
TYPES = ("order_placed", "page_viewed", "email_opened", "cart_updated", "refund_issued")
CHANNELS = ("web", "app", "store", "phone")
MASTER = b"study-store-v2-master-key-000000"
CHAIN_KEY = hashlib.blake2b(b"chain", key=MASTER).digest()
RECORDED_AT = 1_760_000_000_000_000
IN_CHUNK = 5000  # parameters per IN (...) query

Event = tuple[int, bytes, str, dict[str, Any]]  # stream_no, event_key, type, body


def stream_id(no: int) -> str:
    return f"prf_{no:026d}"


class Workload:
    """Seeded batches; every design sees the very same events in the same order."""

    def __init__(self, events: int, streams: int, batch: int, seed: int = 20, per_person: float = 4.0) -> None:
        self.events, self.streams, self.batch, self.per_person = events, streams, batch, per_person
        self.rng = random.Random(seed)
        self.keys = bytearray()  # every key offered so far (16 bytes each)
        self.owner = array("i")  # the stream of each key

    def _body(self, kind: str) -> dict[str, Any]:
        r = self.rng
        return {"type": kind, "source": "shop-export", "occurred_at": RECORDED_AT - r.randrange(10**12),
                "data": {"sku": f"SKU-{r.randrange(10**6):06d}", "amount": r.randrange(100, 99999) / 100,
                         "currency": "EUR", "channel": r.choice(CHANNELS), "qty": r.randrange(1, 9),
                         "note": r.randbytes(24).hex()}}

    def batches(self) -> Iterator[list[Event]]:
        r, done = self.rng, 0
        while done < self.events:
            n = min(self.batch, self.events - done)
            people = r.sample(range(self.streams), max(1, min(self.streams, int(n / self.per_person))))
            out: list[Event] = []
            for _ in range(n):
                if self.owner and r.random() < 0.02:  # re-sent: an earlier event, same person
                    i = r.randrange(len(self.owner))
                    key, no = bytes(self.keys[16 * i:16 * i + 16]), self.owner[i]
                else:
                    key, no = r.randbytes(16), r.choice(people)
                kind = r.choice(TYPES)
                out.append((no, key, kind, self._body(kind)))
            for no, key, _, _ in out:
                self.keys += key
                self.owner.append(no)
            done += n
            yield out


class Design:
    """The shared part: connection, per-stream keys, tips, the streams table, triggers."""

    name = ""
    cache_kib = 131072
    autocheckpoint = 500

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        c = self.conn
        c.execute("PRAGMA page_size = 8192")
        c.execute("PRAGMA journal_mode = wal")
        for pragma in ("synchronous = NORMAL", f"wal_autocheckpoint = {self.autocheckpoint}",
                       f"cache_size = -{self.cache_kib}", "temp_store = MEMORY"):
            c.execute("PRAGMA " + pragma)
        c.execute("CREATE TABLE streams (stream_no INTEGER PRIMARY KEY, stream_id TEXT NOT NULL UNIQUE,"
                  " version INTEGER NOT NULL, head BLOB NOT NULL)")
        self.create()
        self.aeads: dict[int, AESGCM] = {}
        self.prefixes: dict[int, bytes] = {}
        self.tips: dict[int, list[Any]] = {}  # stream_no -> [version, head]
        self.position = 0
        self.dup_seconds = 0.0
        self.duplicates = 0

    def create(self) -> None:
        raise NotImplementedError

    def triggers(self, table: str) -> None:
        for op in ("UPDATE", "DELETE"):
            self.conn.execute(f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                              f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END")

    def aead(self, no: int) -> AESGCM:
        a = self.aeads.get(no)
        if a is None:
            a = self.aeads[no] = AESGCM(hashlib.blake2b(no.to_bytes(8, "big"), key=MASTER, digest_size=32).digest())
            self.prefixes[no] = b"persona-event\x00" + stream_id(no).encode() + b"\x00"
        return a

    def tip(self, no: int) -> list[Any]:
        t = self.tips.get(no)
        if t is None:
            self.aead(no)
            head = hashlib.blake2b(b"genesis\x00" + stream_id(no).encode(), key=CHAIN_KEY).digest()
            t = self.tips[no] = [0, head]
            self.conn.execute("INSERT INTO streams VALUES (?, ?, 0, ?)", (no, stream_id(no), head))
        return t

    def append_batch(self, batch: list[Event]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        t0 = time.perf_counter()
        seen = self.known([(no, key) for no, key, _, _ in batch])
        self.dup_seconds += time.perf_counter() - t0
        fresh = self.fresh(batch, seen)
        touched = self.write(fresh)
        self.conn.executemany("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?",
                              [(self.tips[no][0], self.tips[no][1], no) for no in touched])
        self.conn.execute("COMMIT")

    def fresh(self, batch: list[Event], seen: set[bytes]) -> list[Event]:
        """The batch's events whose keys are neither stored (`seen`) nor earlier in the batch;
        the rest counted as duplicates."""
        fresh, inbatch = [], set()
        for e in batch:
            if e[1] in seen or e[1] in inbatch:
                self.duplicates += 1
            else:
                inbatch.add(e[1])
                fresh.append(e)
        return fresh

    def append_one(self, e: Event) -> None:
        """A live-feed append: its own transaction, the head read from the table (no cache)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        version, head = c.execute("SELECT version, head FROM streams WHERE stream_no = ?", (e[0],)).fetchone()
        self.tips[e[0]] = [version, head]
        if not self.known([(e[0], e[1])]):
            self.write([e])
            c.execute("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?",
                      (self.tips[e[0]][0], self.tips[e[0]][1], e[0]))
        c.execute("COMMIT")

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        raise NotImplementedError

    def write(self, events: list[Event]) -> list[int]:
        raise NotImplementedError

    def replay(self, order: str) -> int:
        raise NotImplementedError

    def in_query(self, sql: str, values: list[Any]) -> Iterator[Any]:
        for i in range(0, len(values), IN_CHUNK):
            part = values[i:i + IN_CHUNK]
            yield from self.conn.execute(sql.replace("?*", ",".join("?" * len(part))), part)


# today's rows (persona.store.sqlite_schema), without the index on event_key
EVENT_ROWS = ("CREATE TABLE events (position INTEGER PRIMARY KEY, stream_no INTEGER NOT NULL,"
              " version INTEGER NOT NULL, event_key BLOB NOT NULL, type TEXT NOT NULL,"
              " recorded_at INTEGER NOT NULL, payload BLOB NOT NULL, hash BLOB NOT NULL);"
              "CREATE UNIQUE INDEX events_stream_version ON events (stream_no, version);")


class Today(Design):
    name = "today"

    def create(self) -> None:
        self.conn.executescript(EVENT_ROWS + "CREATE UNIQUE INDEX events_key ON events (event_key);")
        self.triggers("events")

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        return {r[0] for r in self.in_query("SELECT event_key FROM events WHERE event_key IN (?*)",
                                            [k for _, k in keys])}

    def ordered(self, events: list[Event]) -> list[Event]:
        return events

    def write(self, events: list[Event]) -> list[int]:
        rows, dumps, blake = [], orjson.dumps, hashlib.blake2b
        touched: dict[int, None] = {}
        nonces = os.urandom(12 * len(events))
        for n, (no, key, kind, body) in enumerate(self.ordered(events)):
            t = self.tip(no)
            version = t[0] + 1
            header = self.prefixes[no] + version.to_bytes(8, "big") + key + kind.encode()
            nonce = nonces[12 * n:12 * n + 12]
            payload = nonce + self.aeads[no].encrypt(nonce, dumps(body), header)
            h = blake(t[1] + header + RECORDED_AT.to_bytes(8, "big") + payload, key=CHAIN_KEY).digest()
            t[0], t[1] = version, h
            touched[no] = None
            rows.append((no, version, key, kind, RECORDED_AT, payload, h))
        self.insert(rows)
        return list(touched)

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany("INSERT INTO events (stream_no, version, event_key, type, recorded_at, payload, hash)"
                              " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def replay(self, order: str) -> int:
        sql = "SELECT stream_no, version, event_key, type, payload FROM events ORDER BY " + (
            "stream_no, version" if order == "stream" else "position")
        n, loads, aeads, prefixes = 0, orjson.loads, self.aeads, self.prefixes
        for no, version, key, kind, payload in self.conn.execute(sql):
            header = prefixes[no] + version.to_bytes(8, "big") + key + kind.encode()
            loads(aeads[no].decrypt(payload[:12], payload[12:], header))
            n += 1
        return n


class Tuned(Today):
    name = "tuned"
    cache_kib = 1048576
    autocheckpoint = 10000

    def create(self) -> None:
        self.conn.executescript(EVENT_ROWS + "CREATE TABLE event_keys (event_key BLOB PRIMARY KEY) WITHOUT ROWID;")
        self.triggers("events")
        self.triggers("event_keys")

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        return {r[0] for r in self.in_query("SELECT event_key FROM event_keys WHERE event_key IN (?*)",
                                            sorted(k for _, k in keys))}

    def ordered(self, events: list[Event]) -> list[Event]:
        return sorted(events, key=lambda e: e[0])  # grouped by stream: one leaf walk of the index

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        super().insert(rows)
        self.conn.executemany("INSERT INTO event_keys VALUES (?)", sorted((r[2],) for r in rows))


class Chunks(Design):
    """One row per (stream, batch); the chunk's rowid is its first global position."""

    name = "chunks"
    cache_kib = 262144
    autocheckpoint = 10000
    key_table = False

    def create(self) -> None:
        self.conn.executescript(
            "CREATE TABLE chunks (first_position INTEGER PRIMARY KEY, last_position INTEGER NOT NULL,"
            " stream_no INTEGER NOT NULL, first_version INTEGER NOT NULL, last_version INTEGER NOT NULL,"
            " recorded_at INTEGER NOT NULL, keys BLOB NOT NULL, payload BLOB NOT NULL, hash BLOB NOT NULL);"
            "CREATE UNIQUE INDEX chunks_stream_version ON chunks (stream_no, first_version);")
        self.triggers("chunks")
        if self.key_table:
            self.conn.execute("CREATE TABLE event_keys (event_key BLOB PRIMARY KEY) WITHOUT ROWID")
            self.triggers("event_keys")

    def stream_keys(self, streams: list[int]) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for no, keys in self.in_query("SELECT stream_no, keys FROM chunks WHERE stream_no IN (?*)", streams):
            out.setdefault(no, []).append(keys)
        return out

    def exact(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        """Per-stream check: each key against its own person's chunks' key lists."""
        per = {no: b"".join(blobs) for no, blobs in self.stream_keys(sorted({no for no, _ in keys})).items()}
        seen = set()
        for no, key in keys:
            blob = per.get(no)
            if blob is None:
                continue
            i = blob.find(key)
            while i >= 0 and i % 16:
                i = blob.find(key, i + 1)
            if i >= 0:
                seen.add(key)
        return seen

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        if self.key_table:
            return {r[0] for r in self.in_query("SELECT event_key FROM event_keys WHERE event_key IN (?*)",
                                                sorted(k for _, k in keys))}
        return self.exact(keys)

    def write(self, events: list[Event]) -> list[int]:
        groups: dict[int, list[Event]] = {}
        for e in events:
            groups.setdefault(e[0], []).append(e)
        rows, dumps, blake = [], orjson.dumps, hashlib.blake2b
        nonces = os.urandom(12 * len(groups))
        for n, (no, evs) in enumerate(groups.items()):
            t = self.tip(no)
            first, last = t[0] + 1, t[0] + len(evs)
            order = sorted(e[1] for e in evs)  # the column holds the keys sorted; each event names its own
            keys = b"".join(order)  # key by its index there, inside the sealed list
            index = {k: i for i, k in enumerate(order)}
            plain = dumps([[index[e[1]], e[2], e[3]] for e in evs])
            header = (self.prefixes[no] + first.to_bytes(8, "big") + last.to_bytes(8, "big")
                      + blake(keys, digest_size=32).digest())
            nonce = nonces[12 * n:12 * n + 12]
            payload = nonce + self.aeads[no].encrypt(nonce, plain, header)
            h = blake(t[1] + header + RECORDED_AT.to_bytes(8, "big") + payload, key=CHAIN_KEY).digest()
            t[0], t[1] = last, h
            pos = self.position + 1
            self.position += len(evs)
            rows.append((pos, self.position, no, first, last, RECORDED_AT, keys, payload, h))
        self.conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if self.key_table:
            self.conn.executemany("INSERT INTO event_keys VALUES (?)", sorted((e[1],) for e in events))
        self.added(events)
        return list(groups)

    def added(self, events: list[Event]) -> None:
        pass

    def replay(self, order: str) -> int:
        sql = "SELECT stream_no, first_version, last_version, keys, payload FROM chunks ORDER BY " + (
            "stream_no, first_version" if order == "stream" else "first_position")
        n, loads, aeads, prefixes, blake = 0, orjson.loads, self.aeads, self.prefixes, hashlib.blake2b
        for no, first, last, keys, payload in self.conn.execute(sql):
            header = (prefixes[no] + first.to_bytes(8, "big") + last.to_bytes(8, "big")
                      + blake(keys, digest_size=32).digest())
            n += len(loads(aeads[no].decrypt(payload[:12], payload[12:], header)))
        return n


class ChunksKeyTable(Chunks):
    name = "chunks_kt"
    key_table = True


class ChunksPerStream(Chunks):
    name = "chunks_ps"


class ChunksGapless(ChunksPerStream):
    """chunks_ps with gapless versions enforced by the database: a BEFORE INSERT trigger refuses a
    chunk whose first_version is not the stream's last chunk's last_version + 1."""

    name = "chunks_psg"

    def create(self) -> None:
        super().create()
        self.conn.execute(
            "CREATE TRIGGER chunks_are_gapless BEFORE INSERT ON chunks WHEN NEW.first_version <> 1 + coalesce("
            "(SELECT last_version FROM chunks WHERE stream_no = NEW.stream_no ORDER BY first_version DESC LIMIT 1), 0)"
            " OR NEW.last_version < NEW.first_version"
            " BEGIN SELECT RAISE(ABORT, 'chunks: versions must follow the stream without a gap'); END")


class ChunksTwoTier(Chunks):
    """(d) chunks with a global, exact key structure in two tiers: each batch's keys go to a small
    `keys_recent` table (its few pages stay hot, so a commit dirties few of them); once it holds
    MERGE_AT keys they move in one sorted pass into `keys_main` and leave `keys_recent`, in the
    same transaction. A trigger lets a key leave `keys_recent` only once it is in `keys_main`:
    the key set as a whole stays append-only. The check queries both tables."""

    name = "chunks_2t"
    merge_at = 200_000

    def create(self) -> None:
        super().create()
        self.conn.executescript(
            "CREATE TABLE keys_main (event_key BLOB PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TABLE keys_recent (event_key BLOB PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TRIGGER keys_recent_leave_only_merged BEFORE DELETE ON keys_recent"
            " WHEN NOT EXISTS (SELECT 1 FROM keys_main WHERE event_key = OLD.event_key)"
            " BEGIN SELECT RAISE(ABORT, 'event keys are append-only'); END;")
        self.triggers("keys_main")
        self.recent = 0
        self.merge_seconds = 0.0

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        values = sorted(k for _, k in keys)
        return {r[0] for table in ("keys_recent", "keys_main") for r in self.in_query(
            f"SELECT event_key FROM {table} WHERE event_key IN (?*)", values)}

    def added(self, events: list[Event]) -> None:
        self.conn.executemany("INSERT INTO keys_recent VALUES (?)", sorted((e[1],) for e in events))
        self.recent += len(events)
        if self.recent >= self.merge_at:
            t0 = time.perf_counter()
            self.conn.execute("INSERT INTO keys_main SELECT event_key FROM keys_recent ORDER BY event_key")
            self.conn.execute("DELETE FROM keys_recent")
            self.recent = 0
            self.merge_seconds += time.perf_counter() - t0


class ChunksBloom(Chunks):
    """An in-memory Bloom filter (16 bits per key, 4 probes of 32 bits of the key itself: event
    keys are keyed hashes, uniform already); exact per-stream check only for filter hits."""

    name = "chunks_bf"

    def __init__(self, path: Path, capacity: int) -> None:
        bits = 1 << max(16, (16 * capacity - 1).bit_length())
        self.mask = bits - 1
        self.bits = bytearray(bits // 8)
        self.hits = 0
        super().__init__(path)

    def add(self, key: bytes) -> None:
        b, m = self.bits, self.mask
        for j in (0, 4, 8, 12):
            p = int.from_bytes(key[j:j + 4], "little") & m
            b[p >> 3] |= 1 << (p & 7)

    def maybe(self, key: bytes) -> bool:
        b, m = self.bits, self.mask
        for j in (0, 4, 8, 12):
            p = int.from_bytes(key[j:j + 4], "little") & m
            if not b[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        maybe = self.maybe
        hits = [(no, k) for no, k in keys if maybe(k)]
        self.hits += len(hits)
        return self.exact(hits) if hits else set()

    def added(self, events: list[Event]) -> None:
        add = self.add
        for e in events:
            add(e[1])

    def rebuild(self) -> float:
        """Opening the store: the filter rebuilt from every chunk's key list."""
        t0 = time.perf_counter()
        self.bits = bytearray(len(self.bits))
        add = self.add
        for (keys,) in self.conn.execute("SELECT keys FROM chunks"):
            for i in range(0, len(keys), 16):
                add(keys[i:i + 16])
        return time.perf_counter() - t0


# --- The shipped format and two candidates without the chunk index (added after store format 2) ---

PHASES = ("check", "seal", "chunks", "keys", "streams", "commit")
READ_STREAMS = 300  # random streams for the per-stream read costs
LAST_N = 50  # "the last 50 events" of a stream


class ChunkStore(Chunks):
    """What `shipped`, `linked` and `linked_gen` share: chunks_kt's chunks (one AES-GCM seal per
    stream per batch, the same associated data and chain) and a batch timed per statement kind:
    the duplicate check, sealing in Python, the INSERT of chunks (with its triggers), the INSERT of
    the keys, the UPDATE of the streams' heads, the COMMIT (`phases`, cumulative seconds)."""

    key_table = True
    chunk_columns = 9

    def __init__(self, path: Path) -> None:
        self.phases = dict.fromkeys(PHASES, 0.0)
        super().__init__(path)

    def append_batch(self, batch: list[Event]) -> None:
        ph, clock = self.phases, time.perf_counter
        self.conn.execute("BEGIN IMMEDIATE")
        t0 = clock()
        seen = self.known([(no, key) for no, key, _, _ in batch])
        t1 = clock()
        self.dup_seconds += t1 - t0
        ph["check"] += t1 - t0
        fresh = self.fresh(batch, seen)
        touched = self.write(fresh)
        t2 = clock()
        self.heads(touched)
        t3 = clock()
        ph["streams"] += t3 - t2
        self.conn.execute("COMMIT")
        ph["commit"] += clock() - t3

    def heads(self, touched: list[int]) -> None:
        self.conn.executemany("UPDATE streams SET version = ?, head = ? WHERE stream_no = ?",
                              [(self.tips[no][0], self.tips[no][1], no) for no in touched])

    def extra(self, no: int, t: list[Any], pos: int) -> tuple[Any, ...]:
        """Columns after the first nine of a chunk row (linked: prev)."""
        return ()

    def write(self, events: list[Event]) -> list[int]:
        clock = time.perf_counter
        t0 = clock()
        groups: dict[int, list[Event]] = {}
        for e in events:
            groups.setdefault(e[0], []).append(e)
        rows, dumps, blake = [], orjson.dumps, hashlib.blake2b
        nonces = os.urandom(12 * len(groups))
        for n, (no, evs) in enumerate(groups.items()):
            t = self.tip(no)
            first, last = t[0] + 1, t[0] + len(evs)
            order = sorted(e[1] for e in evs)
            keys = b"".join(order)
            index = {k: i for i, k in enumerate(order)}
            plain = dumps([[index[e[1]], e[2], e[3]] for e in evs])
            header = (self.prefixes[no] + first.to_bytes(8, "big") + last.to_bytes(8, "big")
                      + blake(keys, digest_size=32).digest())
            nonce = nonces[12 * n:12 * n + 12]
            payload = nonce + self.aeads[no].encrypt(nonce, plain, header)
            h = blake(t[1] + header + RECORDED_AT.to_bytes(8, "big") + payload, key=CHAIN_KEY).digest()
            pos = self.position + 1
            self.position += len(evs)
            rows.append((pos, self.position, no, first, last, RECORDED_AT, keys, payload, h, *self.extra(no, t, pos)))
            t[0], t[1] = last, h
        t1 = clock()
        self.conn.executemany(f"INSERT INTO chunks VALUES ({', '.join('?' * self.chunk_columns)})", rows)
        t2 = clock()
        self.insert_keys(sorted(e[1] for e in events))
        t3 = clock()
        ph = self.phases
        ph["seal"] += t1 - t0
        ph["chunks"] += t2 - t1
        ph["keys"] += t3 - t2
        return list(groups)

    def insert_keys(self, keys: list[bytes]) -> None:
        self.conn.executemany("INSERT INTO event_keys VALUES (?)", [(k,) for k in keys])

    def open_chunk(self, no: int, first: int, last: int, keys: bytes, payload: bytes) -> list[Any]:
        header = (self.prefixes[no] + first.to_bytes(8, "big") + last.to_bytes(8, "big")
                  + hashlib.blake2b(keys, digest_size=32).digest())
        events: list[Any] = orjson.loads(self.aeads[no].decrypt(payload[:12], payload[12:], header))
        return events

    def read_stream(self, no: int, last: int | None) -> int:
        """Decrypt and decode a stream's last `last` events (all if None), in version order."""
        raise NotImplementedError


class Shipped(ChunkStore):
    """Store format 2 as built: chunks with UNIQUE(stream_no, last_version), the continuity trigger
    (first_version = the stream's max(last_version) + 1, found in that index; the chunk starts after
    the log's last position), append-only triggers, the global event_keys table; the head of each
    touched stream updated once per batch."""

    name = "shipped"

    def create(self) -> None:
        self.conn.executescript(
            "CREATE TABLE chunks (first_position INTEGER PRIMARY KEY, last_position INTEGER NOT NULL,"
            " stream_no INTEGER NOT NULL, first_version INTEGER NOT NULL, last_version INTEGER NOT NULL,"
            " recorded_at INTEGER NOT NULL, keys BLOB NOT NULL, payload BLOB NOT NULL, hash BLOB NOT NULL);"
            "CREATE UNIQUE INDEX chunks_stream ON chunks (stream_no, last_version);"
            "CREATE TABLE event_keys (event_key BLOB PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TRIGGER chunks_continue_their_stream BEFORE INSERT ON chunks WHEN NEW.first_version !="
            " coalesce((SELECT max(last_version) FROM chunks WHERE stream_no = NEW.stream_no), 0) + 1"
            " OR NEW.last_version < NEW.first_version"
            " OR NEW.last_position != NEW.first_position + NEW.last_version - NEW.first_version"
            " OR NEW.first_position <= coalesce((SELECT last_position FROM chunks"
            " ORDER BY first_position DESC LIMIT 1), 0)"
            " BEGIN SELECT RAISE(ABORT, 'chunks: a chunk must continue its stream and the log'); END;")
        self.triggers("chunks")
        self.triggers("event_keys")

    def replay(self, order: str) -> int:
        sql = "SELECT stream_no, first_version, last_version, keys, payload FROM chunks ORDER BY " + (
            "stream_no, last_version" if order == "stream" else "first_position")
        n, open_chunk = 0, self.open_chunk
        for no, first, last, keys, payload in self.conn.execute(sql):
            n += len(open_chunk(no, first, last, keys, payload))
        return n

    def read_stream(self, no: int, last: int | None) -> int:
        rows, n = [], 0
        if last is None:
            rows = self.conn.execute("SELECT first_version, last_version, keys, payload FROM chunks"
                                     " WHERE stream_no = ? ORDER BY last_version", (no,)).fetchall()
        else:
            for row in self.conn.execute("SELECT first_version, last_version, keys, payload FROM chunks"
                                         " WHERE stream_no = ? ORDER BY last_version DESC", (no,)):
                rows.append(row)
                n += row[1] - row[0] + 1
                if n >= last:
                    break
            rows.reverse()
        return sum(len(self.open_chunk(no, *row)) for row in rows)


# a stream's chunks from its last one back along `prev`, while fewer than ? events are collected
WALK = ("WITH RECURSIVE w(pos, n) AS (SELECT last_chunk, 0 FROM streams WHERE stream_no = ? AND last_chunk > 0"
        " UNION ALL SELECT c.prev, w.n + c.last_version - c.first_version + 1 FROM w JOIN chunks c"
        " ON c.first_position = w.pos WHERE c.prev > 0 AND w.n + c.last_version - c.first_version + 1 < ?)"
        " SELECT c.first_version, c.last_version, c.keys, c.payload FROM w JOIN chunks c"
        " ON c.first_position = w.pos ORDER BY c.first_version")


class Linked(ChunkStore):
    """No index on chunks but the rowid: each chunk names its stream's previous chunk (`prev`, 0 for
    the first); the streams row holds the stream's last version, last chunk and chain head. The
    database keeps the versions gapless: a BEFORE INSERT trigger refuses a chunk unless it starts
    at the streams row's version + 1 and its prev is the row's last chunk (and it starts after the
    log's last position); an AFTER INSERT trigger advances the row to the chunk. The row itself
    can only advance that way: a BEFORE UPDATE trigger refuses any change of version, last chunk
    or head that is not one step to a chunk of that stream whose prev is the old last chunk, and
    any change of stream_no or stream_id; streams rows are never deleted and a new one starts at
    version 0 with a stream_no and stream_id not yet used (so INSERT OR REPLACE cannot reset one).
    Same global event_keys table as `shipped`: only the chunk index is gone."""

    name = "linked"
    chunk_columns = 10

    def create(self) -> None:
        self.conn.executescript(
            "ALTER TABLE streams ADD COLUMN last_chunk INTEGER NOT NULL DEFAULT 0;"
            "CREATE TABLE chunks (first_position INTEGER PRIMARY KEY, last_position INTEGER NOT NULL,"
            " stream_no INTEGER NOT NULL, first_version INTEGER NOT NULL, last_version INTEGER NOT NULL,"
            " recorded_at INTEGER NOT NULL, keys BLOB NOT NULL, payload BLOB NOT NULL, hash BLOB NOT NULL,"
            " prev INTEGER NOT NULL);"
            "CREATE TRIGGER chunks_continue_their_stream BEFORE INSERT ON chunks WHEN NOT EXISTS"
            " (SELECT 1 FROM streams WHERE stream_no = NEW.stream_no AND version + 1 = NEW.first_version"
            " AND last_chunk = NEW.prev)"
            " OR NEW.last_version < NEW.first_version"
            " OR NEW.last_position != NEW.first_position + NEW.last_version - NEW.first_version"
            " OR NEW.first_position <= coalesce((SELECT last_position FROM chunks"
            " ORDER BY first_position DESC LIMIT 1), 0)"
            " BEGIN SELECT RAISE(ABORT, 'chunks: a chunk must continue its stream and the log'); END;"
            "CREATE TRIGGER chunks_advance_their_stream AFTER INSERT ON chunks BEGIN UPDATE streams SET"
            " version = NEW.last_version, last_chunk = NEW.first_position, head = NEW.hash"
            " WHERE stream_no = NEW.stream_no; END;"
            "CREATE TRIGGER streams_only_advance BEFORE UPDATE ON streams WHEN NEW.stream_no IS NOT OLD.stream_no"
            " OR NEW.stream_id IS NOT OLD.stream_id OR ((NEW.version IS NOT OLD.version OR NEW.last_chunk IS NOT"
            " OLD.last_chunk OR NEW.head IS NOT OLD.head) AND NOT EXISTS (SELECT 1 FROM chunks WHERE"
            " first_position = NEW.last_chunk AND stream_no = NEW.stream_no AND last_version = NEW.version"
            " AND prev = OLD.last_chunk AND hash = NEW.head))"
            " BEGIN SELECT RAISE(ABORT, 'streams: a head only advances to its stream''s next chunk'); END;"
            "CREATE TRIGGER streams_are_kept BEFORE DELETE ON streams"
            " BEGIN SELECT RAISE(ABORT, 'streams: rows are never deleted'); END;"
            "CREATE TRIGGER streams_start_empty BEFORE INSERT ON streams WHEN NEW.version != 0 OR NEW.last_chunk != 0"
            " OR EXISTS (SELECT 1 FROM streams WHERE stream_no = NEW.stream_no OR stream_id = NEW.stream_id)"
            " BEGIN SELECT RAISE(ABORT, 'streams: a new stream starts empty, under a new number and id'); END;")
        self.triggers("chunks")
        self.create_keys()

    def create_keys(self) -> None:
        self.conn.execute("CREATE TABLE event_keys (event_key BLOB PRIMARY KEY) WITHOUT ROWID")
        self.triggers("event_keys")

    def tip(self, no: int) -> list[Any]:
        t = self.tips.get(no)
        if t is None:
            self.aead(no)
            head = hashlib.blake2b(b"genesis\x00" + stream_id(no).encode(), key=CHAIN_KEY).digest()
            t = self.tips[no] = [0, head, 0]  # version, head, last chunk
            self.conn.execute("INSERT INTO streams (stream_no, stream_id, version, head, last_chunk)"
                              " VALUES (?, ?, 0, ?, 0)", (no, stream_id(no), head))
        return t

    def extra(self, no: int, t: list[Any], pos: int) -> tuple[Any, ...]:
        prev, t[2] = t[2], pos
        return (prev,)

    def heads(self, touched: list[int]) -> None:
        pass  # the AFTER INSERT trigger advanced each stream's row

    def append_one(self, e: Event) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        version, head, last_chunk = c.execute("SELECT version, head, last_chunk FROM streams WHERE stream_no = ?",
                                              (e[0],)).fetchone()
        self.tips[e[0]] = [version, head, last_chunk]
        if not self.known([(e[0], e[1])]):
            self.write([e])
        c.execute("COMMIT")

    def replay(self, order: str) -> int:
        if order == "global":
            sql = "SELECT stream_no, first_version, last_version, keys, payload FROM chunks ORDER BY first_position"
            return sum(len(self.open_chunk(*row)) for row in self.conn.execute(sql))
        n = 0  # stream order: no index on stream; each stream's chunks found by walking prev from its head
        streams = [r[0] for r in self.conn.execute("SELECT stream_no FROM streams ORDER BY stream_no")]
        for no in streams:
            n += self.read_stream(no, None)
        return n

    def read_stream(self, no: int, last: int | None) -> int:
        rows = self.conn.execute(WALK, (no, 1 << 62 if last is None else last)).fetchall()
        return sum(len(self.open_chunk(no, *row)) for row in rows)


class KeyFilter:
    """A Bloom filter over 16-byte random keys, numpy-vectorised: the two 64-bit halves of a key
    give `probes` bit positions by double hashing (h1 + i*h2 mod m, m a power of two)."""

    def __init__(self, bits: Any, probes: int) -> None:
        import numpy as np
        self.np, self.bits, self.probes = np, bits, probes
        self.mask = np.uint64(len(bits) * 8 - 1)
        self.steps = np.arange(probes, dtype=np.uint64)

    @classmethod
    def build(cls, keys: bytes, bits_per_key: int, probes: int) -> KeyFilter:
        import numpy as np
        n = len(keys) // 16
        m = 1 << max(16, (bits_per_key * n - 1).bit_length())
        f = cls(np.zeros(m // 8, dtype=np.uint8), probes)
        flags = np.zeros(m, dtype=bool)
        for i in range(0, len(keys), 16 * 65536):  # in slices: the positions of 1M keys would take 56 MB
            flags[f.positions(keys[i:i + 16 * 65536]).ravel()] = True
        f.bits = np.packbits(flags, bitorder="little")
        return f

    def positions(self, keys: bytes) -> Any:
        np = self.np
        halves = np.frombuffer(keys, dtype="<u8").reshape(-1, 2)
        return (halves[:, :1] + self.steps * (halves[:, 1:] | np.uint64(1))) & self.mask

    def maybe(self, keys: bytes) -> Any:
        """A boolean per key: False = certainly not in the set."""
        p = self.positions(keys)
        return ((self.bits[p >> self.np.uint64(3)] >> (p & self.np.uint64(7)).astype(self.np.uint8)) & 1).all(axis=1)


class LinkedGenerations(Linked):
    """`linked` with the key set in generations: keys go to the current `event_keys_<g>` (WITHOUT
    ROWID, append-only); when it holds G keys it is sealed (a trigger then refuses any INSERT into
    it) and its Bloom filter (16 bits/key rounded up to a power of two, 7 probes) is built once from
    its keys and stored in the append-only `key_filters`; the next generation starts. A batch's
    keys are checked against the current generation by a query, against the sealed ones by their
    filters (held in memory, loaded from `key_filters` at open), with an exact query into a sealed
    generation only for the keys its filter does not rule out."""

    name = "linked_gen"
    bits_per_key = 16
    probes = 7

    def __init__(self, path: Path, generation_size: int) -> None:
        self.generation_size = generation_size
        self.generation = 0
        self.in_generation = 0
        self.filters: list[KeyFilter] = []
        self.filter_hits = 0
        self.exact_found = 0
        self.seal_seconds = 0.0
        super().__init__(path)

    def create_keys(self) -> None:
        self.conn.execute("CREATE TABLE key_filters (generation INTEGER PRIMARY KEY, keys INTEGER NOT NULL,"
                          " probes INTEGER NOT NULL, filter BLOB NOT NULL)")
        self.triggers("key_filters")
        self.new_generation(0)

    def new_generation(self, g: int) -> None:
        self.conn.execute(f"CREATE TABLE event_keys_{g} (event_key BLOB PRIMARY KEY) WITHOUT ROWID")
        self.triggers(f"event_keys_{g}")
        self.generation, self.in_generation = g, 0

    def known(self, keys: list[tuple[int, bytes]]) -> set[bytes]:
        values = sorted(k for _, k in keys)
        seen = {r[0] for r in self.in_query(f"SELECT event_key FROM event_keys_{self.generation}"
                                            f" WHERE event_key IN (?*)", values)}
        if self.filters:
            blob = b"".join(values)
            for g, f in enumerate(self.filters):
                hit = f.maybe(blob).nonzero()[0]
                if len(hit):
                    self.filter_hits += len(hit)
                    sql = f"SELECT event_key FROM event_keys_{g} WHERE event_key IN (?*)"
                    found = {r[0] for r in self.in_query(sql, [values[i] for i in hit])}
                    self.exact_found += len(found)
                    seen |= found
        return seen

    def insert_keys(self, keys: list[bytes]) -> None:
        while keys:
            room = self.generation_size - self.in_generation
            part, keys = keys[:room], keys[room:]
            part.sort()
            self.conn.executemany(f"INSERT INTO event_keys_{self.generation} VALUES (?)", [(k,) for k in part])
            self.in_generation += len(part)
            if self.in_generation >= self.generation_size:
                self.seal()

    def seal(self) -> None:
        t0 = time.perf_counter()
        g, c = self.generation, self.conn
        blob = b"".join(r[0] for r in c.execute(f"SELECT event_key FROM event_keys_{g}"))
        f = KeyFilter.build(blob, self.bits_per_key, self.probes)
        c.execute(f"CREATE TRIGGER event_keys_{g}_sealed BEFORE INSERT ON event_keys_{g}"
                  f" BEGIN SELECT RAISE(ABORT, 'event_keys_{g} is sealed'); END")
        c.execute("INSERT INTO key_filters VALUES (?, ?, ?, ?)", (g, len(blob) // 16, f.probes, f.bits.tobytes()))
        self.filters.append(f)
        self.new_generation(g + 1)
        self.seal_seconds += time.perf_counter() - t0

    def load_filters(self) -> float:
        """Opening the store: the sealed generations' filters read back (not rebuilt)."""
        import numpy as np
        t0 = time.perf_counter()
        self.filters = [KeyFilter(np.frombuffer(bits, dtype=np.uint8), probes) for probes, bits in
                        self.conn.execute("SELECT probes, filter FROM key_filters ORDER BY generation")]
        return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "store.db"
        classes: dict[str, type[Design]] = {"today": Today, "tuned": Tuned, "chunks_kt": ChunksKeyTable,
                                            "chunks_ps": ChunksPerStream, "chunks_psg": ChunksGapless,
                                            "chunks_2t": ChunksTwoTier, "shipped": Shipped, "linked": Linked}
        d: Design
        if name == "chunks_bf":
            d = ChunksBloom(path, int(args.events * 1.1) + 1000)
        elif name == "linked_gen":
            d = LinkedGenerations(path, args.generation)
        else:
            d = classes[name](path)
        work = Workload(args.events, args.streams, args.batch, args.seed, args.per_person)
        marks: list[tuple[int, float]] = [(0, 0.0)]
        phases = getattr(d, "phases", None)
        phase_marks: list[dict[str, float]] = [dict(phases)] if phases is not None else []
        offered, spent = 0, 0.0
        deadline = time.monotonic() + args.budget
        for batch in work.batches():
            t0 = time.perf_counter()
            d.append_batch(batch)
            spent += time.perf_counter() - t0
            offered += len(batch)
            marks.append((offered, spent))
            if phases is not None:
                phase_marks.append(dict(phases))
            if args.window and offered % max(args.window, args.batch) < len(batch):
                w = min(range(len(marks)), key=lambda i: abs(marks[i][0] - (offered - max(args.window, args.batch))))
                rate_now = (offered - marks[w][0]) / max(spent - marks[w][1], 1e-9)
                print(f"  {name}: {offered:>10} events, last {offered - marks[w][0]}: {rate_now:,.0f} ev/s",
                      file=sys.stderr, flush=True)
            if time.monotonic() > deadline:
                print(f"  {name}: budget of {args.budget}s spent after {offered} events; stopping", file=sys.stderr)
                break
        window = max(args.window, args.batch) if args.window else (
            100_000 if offered >= 200_000 else max(args.batch, offered // 5))

        def rate(lo: int, hi: int) -> float:
            a = min(marks, key=lambda m: abs(m[0] - lo))
            b = min(marks, key=lambda m: abs(m[0] - hi))
            return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0

        windows = [round(rate(lo, lo + window)) for lo in range(0, offered - window + 1, window)]
        phase_windows: dict[str, list[float]] = {}
        if phase_marks:  # µs per offered event of each statement kind, per window
            at = {m[0]: i for i, m in enumerate(marks)}
            for lo in range(0, offered - window + 1, window):
                a = at.get(lo, min(range(len(marks)), key=lambda i: abs(marks[i][0] - lo)))
                b = at.get(lo + window, min(range(len(marks)), key=lambda i: abs(marks[i][0] - lo - window)))
                for k in PHASES:
                    phase_windows.setdefault(k, []).append(
                        round(1e6 * (phase_marks[b][k] - phase_marks[a][k]) / max(marks[b][0] - marks[a][0], 1), 2))
        # single-event appends on the large store: fresh keys to random known streams, plus 2% re-sent
        r = random.Random(args.seed + 1)
        lat = []
        streams = list(d.tips)
        for i in range(500):
            if i % 50 == 7:
                j = r.randrange(len(work.owner))
                e: Event = (work.owner[j], bytes(work.keys[16 * j:16 * j + 16]), "page_viewed", {"x": 1})
            else:
                e = (r.choice(streams), r.randbytes(16), "page_viewed", work._body("page_viewed"))
            t0 = time.perf_counter()
            d.append_one(e)
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        d.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        reads: dict[str, Any] = {}
        if isinstance(d, ChunkStore):  # per-stream reads: the same random streams for every design
            sample = random.Random(args.seed + 2).sample(sorted(d.tips), min(2 * READ_STREAMS, len(d.tips)))
            for k, (label, last) in enumerate((("last50", LAST_N), ("whole", None))):
                picks = sample[k::2]  # distinct streams for each read, so that neither warms the other's pages
                times, got = [], 0
                for no in picks:
                    t0 = time.perf_counter()
                    got += d.read_stream(no, last)
                    times.append((time.perf_counter() - t0) * 1e6)
                times.sort()
                reads[f"read_{label}_p50_us"] = round(statistics.median(times), 1)
                reads[f"read_{label}_p90_us"] = round(times[int(0.9 * len(times)) - 1], 1)
                reads[f"read_{label}_mean_events"] = round(got / len(picks), 1)
        stored = offered - d.duplicates + 500
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        replays = {}
        for order in ("stream", "global"):
            t0 = time.perf_counter()
            n = d.replay(order)
            replays[order] = round(n / (time.perf_counter() - t0))
        out: dict[str, Any] = {
            "design": name, "events_offered": offered, "duplicates_skipped": d.duplicates,
            "append_overall": round(offered / spent), "append_first_window": windows[0] if windows else None,
            "append_last_window": windows[-1] if windows else None, "window": window, "windows": windows,
            "dup_check_share": round(d.dup_seconds / spent, 4), "single_p50_ms": round(statistics.median(lat), 3),
            "single_p99_ms": round(lat[int(0.99 * len(lat)) - 1], 3), "replay_stream": replays["stream"],
            "replay_global": replays["global"], "bytes_per_event": round(size / stored, 1),
        }
        out.update(reads)
        if phase_windows and phases is not None:
            out["phase_us_per_event"] = phase_windows
            out["phase_us_overall"] = {k: round(1e6 * v / offered, 2) for k, v in phases.items()}
        if isinstance(d, LinkedGenerations):
            out["generation_size"] = d.generation_size
            out["sealed_generations"] = len(d.filters)
            out["filter_hits"] = d.filter_hits
            out["sealed_exact_found"] = d.exact_found
            out["seal_s"] = round(d.seal_seconds, 2)
            out["filters_mib"] = round(sum(len(f.bits) for f in d.filters) / 2**20, 1)
            out["filters_load_s"] = round(d.load_filters(), 3)
        if isinstance(d, ChunksBloom):
            out["bloom_rebuild_s"] = round(d.rebuild(), 2)
            out["bloom_hits"] = d.hits
            out["bloom_mib"] = round(len(d.bits) / 2**20, 1)
        if isinstance(d, ChunksTwoTier):
            out["merge_s"] = round(d.merge_seconds, 2)
        d.conn.close()
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out


def selftest(args: argparse.Namespace) -> None:
    """On a small store of each new design: the same duplicates are skipped, replay and the
    per-stream reads see every event, a linked_gen filter has no false negative, and the database
    refuses a gap, an overlap, a wrong prev, edits of the log and of the key set, and any move of a
    linked streams row other than to its stream's next chunk."""

    def refused(d: Design, sql: str, params: tuple[Any, ...] = ()) -> None:
        try:
            d.conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            print(f"    refused ({exc}): {sql[:90]}")
            return
        raise AssertionError(f"{d.name} accepted: {sql} {params}")

    counts, reads = {}, {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name in ("shipped", "linked", "linked_gen"):
            path = Path(tmp) / f"{name}.db"
            d: ChunkStore = LinkedGenerations(path, 3_000) if name == "linked_gen" else (
                Shipped(path) if name == "shipped" else Linked(path))
            work = Workload(20_000, 500, 1_000, args.seed, 0.2)
            for batch in work.batches():
                d.append_batch(batch)
            stored = 20_000 - d.duplicates
            counts[name] = d.duplicates
            assert d.replay("stream") == stored and d.replay("global") == stored, name
            assert sum(d.read_stream(no, None) for no in d.tips) == stored, name
            got = [d.read_stream(no, LAST_N) for no in sorted(d.tips)]  # whole chunks: at least the last 50
            assert all(g >= min(LAST_N, d.tips[no][0]) for g, no in zip(got, sorted(d.tips), strict=True)), name
            reads[name] = got
            print(f"  {name}: {stored} events stored, {d.duplicates} duplicates skipped; replay and reads agree")
            c = d.conn
            no = next(iter(d.tips))
            version, last_pos = d.tips[no][0], d.position
            row = c.execute("SELECT * FROM chunks WHERE stream_no = ? AND last_version = ?", (no, version)).fetchone()
            base = list(row)
            marks = ", ".join("?" * len(base))

            def chunk(first: int, last: int, pos: int, base: list[Any] = base, **kw: Any) -> tuple[Any, ...]:
                r = list(base)
                r[0], r[1], r[3], r[4] = pos, pos + last - first, first, last
                if "prev" in kw:
                    r[9] = kw["prev"]
                return tuple(r)

            prev = base[0] if name != "shipped" else None
            kw = {"prev": prev} if prev is not None else {}
            insert = f"INSERT INTO chunks VALUES ({marks})"
            refused(d, insert, chunk(version + 2, version + 2, last_pos + 1, **kw))  # a gap
            refused(d, insert, chunk(version, version, last_pos + 1, **kw))  # an overlap
            refused(d, insert, chunk(version + 1, version + 1, last_pos, **kw))  # inside the log's positions
            if prev is not None:
                refused(d, insert, chunk(version + 1, version + 1, last_pos + 1, prev=base[9]))  # a wrong prev
            refused(d, "UPDATE chunks SET payload = x'00' WHERE first_position = ?", (base[0],))
            refused(d, "DELETE FROM chunks WHERE first_position = ?", (base[0],))
            if name == "linked_gen":
                assert isinstance(d, LinkedGenerations) and d.filters
                sealed = b"".join(r[0] for r in c.execute("SELECT event_key FROM event_keys_0"))
                assert d.filters[0].maybe(sealed).all(), "a filter must have no false negative"
                fresh = os.urandom(16 * 100_000)
                print(f"    filter of generation 0: {int(d.filters[0].maybe(fresh).sum())} false positives"
                      f" in 100,000 fresh keys; {d.filter_hits} hits, {d.exact_found} found exactly")
                refused(d, "INSERT INTO event_keys_0 VALUES (?)", (os.urandom(16),))
                refused(d, "DELETE FROM event_keys_0 WHERE event_key = ?", (sealed[:16],))
                refused(d, f"DELETE FROM event_keys_{d.generation}")
                c.execute(f"INSERT INTO event_keys_{d.generation} VALUES (?)", (sealed[:16],))
                print("    NOT refused: a key of a sealed generation inserted again into the current one (the database"
                      " enforces uniqueness within a generation only; across them it is the writer's check)")
                refused(d, "UPDATE key_filters SET filter = x'00'")
                refused(d, "DELETE FROM key_filters")
            else:
                key = c.execute("SELECT event_key FROM event_keys LIMIT 1").fetchone()[0]
                refused(d, "DELETE FROM event_keys WHERE event_key = ?", (key,))
                refused(d, "INSERT INTO event_keys VALUES (?)", (key,))
            if name != "shipped":
                refused(d, "UPDATE streams SET version = version - 1 WHERE stream_no = ?", (no,))
                refused(d, "UPDATE streams SET version = 0, last_chunk = 0 WHERE stream_no = ?", (no,))
                refused(d, "UPDATE streams SET last_chunk = ?, version = ? WHERE stream_no = ?",
                        (base[9], version - 1, no))  # back to the previous chunk
                refused(d, "UPDATE streams SET head = x'00' WHERE stream_no = ?", (no,))
                refused(d, "UPDATE streams SET stream_no = 999999 WHERE stream_no = ?", (no,))
                refused(d, "DELETE FROM streams WHERE stream_no = ?", (no,))
                refused(d, "INSERT OR REPLACE INTO streams (stream_no, stream_id, version, head, last_chunk)"
                        " VALUES (?, ?, 0, x'00', 0)", (no, stream_id(no)))
                refused(d, "INSERT OR REPLACE INTO streams (stream_no, stream_id, version, head, last_chunk)"
                        " VALUES (999999, ?, 0, x'00', 0)", (stream_id(no),))
                refused(d, "UPDATE OR REPLACE streams SET stream_id = ? WHERE stream_no = ?",
                        (stream_id(no), next(k for k in d.tips if k != no)))
                # the legitimate next chunk is accepted, and advances the row
                c.execute(insert, chunk(version + 1, version + 1, last_pos + 1, prev=base[0]))
                assert c.execute("SELECT version, last_chunk FROM streams WHERE stream_no = ?",
                                 (no,)).fetchone() == (version + 1, last_pos + 1)
            else:
                c.execute(insert, chunk(version + 1, version + 1, last_pos + 1))
            print("    the next chunk in order is accepted")
            d.conn.close()
    assert len(set(counts.values())) == 1, counts
    assert reads["shipped"] == reads["linked"] == reads["linked_gen"], "the last-50 reads differ"
    print(f"selftest passed: every design skipped {counts['shipped']} duplicates")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--streams", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=20_000)
    p.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated, of: " + ", ".join(DESIGNS))
    p.add_argument("--quick", action="store_true", help="20k events (batches of 2,000), for a smoke run")
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--per-person", type=float, default=4.0,
                   help="mean events per person in a batch (a batch touches batch/per_person people)")
    p.add_argument("--budget", type=float, default=180.0, help="seconds of ingest per design before it stops")
    p.add_argument("--tmp", default=None, help="directory for the temporary stores")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--window", type=int, default=0,
                   help="events per window of the per-window figures (default 100,000, or a fifth of a small run);"
                        " a progress line per window goes to stderr")
    p.add_argument("--generation", type=int, default=1_000_000,
                   help="linked_gen: keys per key-set generation (sealed, filtered) ")
    p.add_argument("--selftest", action="store_true",
                   help="check on a small store that shipped, linked and linked_gen refuse gaps, overlaps and"
                        " edits, and find the same duplicates")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one design in this process
    args = p.parse_args()
    if args.quick:
        args.events, args.batch = 20_000, 2_000
    if args.selftest:
        selftest(args)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    names = [n.strip() for n in args.designs.split(",") if n.strip()]
    for n in names:
        if n not in DESIGNS:
            p.error(f"unknown design {n!r}")
    print(f"# python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cores; "
          f"{args.events} events, {args.streams} streams, batches of {args.batch}", file=sys.stderr)
    results = []
    for n in names:
        cmd = [sys.executable, __file__, "--one", n, "--events", str(args.events), "--streams", str(args.streams),
               "--batch", str(args.batch), "--seed", str(args.seed), "--budget", str(args.budget),
               "--per-person", str(args.per_person), "--window", str(args.window),
               "--generation", str(args.generation)]
        if args.tmp:
            cmd += ["--tmp", args.tmp]
        res = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
        results.append(res)
        print(json.dumps(res), flush=True)
        if args.json:  # kept after each design, so that a stopped run keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1))
    cols = ("design", "append_first_window", "append_last_window", "append_overall", "dup_check_share",
            "single_p50_ms", "single_p99_ms", "replay_stream", "replay_global", "bytes_per_event", "peak_rss_mb")
    print("| " + " | ".join(cols) + " |")
    for res in results:
        print("| " + " | ".join(str(res.get(c)) for c in cols) + " |")
    for res in results:
        print(f"{res['design']}: ev/s per window of {res['window']}: " + " ".join(f"{w:,}" for w in res["windows"]))
        for k, v in res.get("phase_us_per_event", {}).items():
            print(f"  {k:>8} µs/event: " + " ".join(f"{x:.2f}" for x in v))
        extra = {k: res[k] for k in res if k.startswith("read_") or k in (
            "filter_hits", "sealed_exact_found", "seal_s", "filters_mib", "filters_load_s", "sealed_generations")}
        if extra:
            print("  " + json.dumps(extra))
    skipped = {(r["events_offered"], r["duplicates_skipped"]) for r in results}
    if len({o for o, _ in skipped}) == 1 and len(skipped) > 1:
        sys.exit(f"designs skipped different numbers of duplicates: {sorted(skipped)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
