"""The encrypted, append-only event log: one stream per profile, sealed with its own key.

Encryption sits above storage: the Recorder keeps opaque rows; this module turns
canonical events into sealed, hash-chained rows and back.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from persona import identity
from persona.crypto import InvalidTag, Keyring, Sealer, encrypter, fingerprint
from persona.errors import (
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventError,
    ErasedError,
    KeyMismatchError,
    StoreConflictError,
    TamperError,
    UnknownProfileError,
)
from persona.events import LIBRARY, UNKNOWN_WRITER, Event, RecordedEvent, Subject, Writer, from_micros, micros
from persona.pseudonyms import normalise, short_hash, subject_hash
from persona.settings import Settings
from persona.store.base import CHUNK_CAP, Head, Recorder, StoredChunk
from persona.store.rows import ChunkRow, LogChunk

QUARANTINE_KEY = "quarantine"
_EVENT_AAD = b"persona-event/1\x00"
_CHUNK_AAD = b"persona-chunk/1\x00"
_ATTEMPTS = 4  # an append that met other writers beside it tries again from what they committed
_CACHE_LIMIT = 100_000
# Sealers kept for reads: each holds an OpenSSL context, ≈1.6 KB with its methods, where making
# one costs ≈0.5 µs: a writer's stream tips keep the 32-byte data keys instead (docs/ingest.md, "Speed").
_SEALER_LIMIT = 20_000
Tip = tuple[int, int, bytes, bytes]  # stream_no, version, chain head, data key
Decrypt = Callable[[bytes, bytes, bytes], bytes]
Prefixes = tuple[bytes, bytes]  # a stream's part of a one-event chunk's associated data, and of a longer one's
Item = tuple[str, bytes, Event, bytes]  # profile id, event key, event, subject hash
_Replay = tuple[str, Decrypt, Prefixes]  # stream id, its decrypt, its AAD prefixes


@contextmanager
def gc_paused() -> Iterator[None]:
    """Batches allocate many small acyclic objects; the cyclic collector only slows them down."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def new_profile_id() -> str:
    """Random: a profile id reveals nothing, even to someone holding the pepper."""
    return "prf_" + base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()


PROFILE_ID = re.compile(r"prf_[a-z2-7]{24}")


def is_profile_id(text: object) -> bool:
    """Whether text has a profile id's form (prf_ and 24 base32 characters): anything else a
    client typed where an id goes (an e-mail address, a NUL) is never stored, logged or linked."""
    return isinstance(text, str) and PROFILE_ID.fullmatch(text) is not None


def genesis(chain_key: bytes, stream_id: str) -> bytes:
    return hashlib.blake2b(b"persona-genesis\x00" + stream_id.encode(), key=chain_key, digest_size=32).digest()


_new_tuple = tuple.__new__  # RecordedEvent(...) without its keyword-taking __new__: replay's hot path


def aad_prefix(stream_id: str) -> bytes:
    """The stream's part of a one-event chunk's associated data (computed once per stream on hot paths)."""
    return _EVENT_AAD + stream_id.encode() + b"\x00"


def aad_prefixes(stream_id: str) -> Prefixes:
    """The stream's part of the associated data of a one-event chunk, and of a longer one."""
    sid = stream_id.encode() + b"\x00"
    return _EVENT_AAD + sid, _CHUNK_AAD + sid


def event_aad(stream_id: str, version: int, event_key: bytes, kind: str) -> bytes:
    """A one-event chunk's associated data: binds the ciphertext to its place (moved or relabelled,
    it no longer opens). It is what every event's was before chunks, so those read as chunks of one."""
    return aad_prefix(stream_id) + version.to_bytes(8, "big") + event_key + kind.encode()


def chunk_aad(stream_id: str, first: int, last: int, keys: bytes, types: str) -> bytes:
    """A chunk's associated data: its stream, its versions, and every event's key and type, so
    that no event can be moved, dropped, reordered or relabelled without the chunk failing to open."""
    if first == last:
        return event_aad(stream_id, first, keys, types)
    return b"".join((aad_prefixes(stream_id)[1], first.to_bytes(8, "big"), last.to_bytes(8, "big"), keys,
                     types.encode()))


def chain_hash(chain_key: bytes, prev: bytes, aad: bytes, recorded_at: int, payload: bytes) -> bytes:
    """Keyed BLAKE2b(previous link, header, recorded_at, payload): the per-stream hash chain, one
    link per chunk, its header the chunk's associated data (chunk_aad).

    Keyed with a secret derived from the pepper, so that someone who can write the
    database file but holds no keys cannot recompute the chain after altering a row.
    """
    data = prev + aad + recorded_at.to_bytes(8, "big", signed=True) + payload
    return hashlib.blake2b(data, key=chain_key, digest_size=32).digest()


def chunk_place(position: int, stream_id: str, first: int, last: int) -> str:
    """Where a chunk is, as errors name it (positions and versions, never a value)."""
    if first == last:
        return f"event at position {position} (stream {stream_id}, version {first})"
    return f"events at positions {position}-{position + last - first} (stream {stream_id}, versions {first}-{last})"


def open_bodies(position: int, stream_id: str, decrypt: Decrypt, prefixes: Prefixes, first: int, last: int,
                types: str, keys: bytes, payload: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """A chunk's sealed event bodies and their types, in version order; TamperError if it does not
    open (altered, moved, or under another key) or holds another number of events than it says."""
    try:
        if first == last:
            aad = b"".join((prefixes[0], first.to_bytes(8, "big"), keys, types.encode()))
            bodies = [orjson.loads(decrypt(payload[:12], payload[12:], aad))]
            kinds = [types]
        else:
            aad = b"".join((prefixes[1], first.to_bytes(8, "big"), last.to_bytes(8, "big"), keys, types.encode()))
            bodies = orjson.loads(decrypt(payload[:12], payload[12:], aad))
            kinds = types.split(" ")
    except InvalidTag:
        where = chunk_place(position, stream_id, first, last)
        raise TamperError(f"{where} do{'es' if first == last else ''} not open", position=position) from None
    if len(bodies) != last - first + 1 or len(kinds) != len(bodies):
        raise TamperError(f"the chunk at position {position} (stream {stream_id}) holds {len(bodies)} events,"
                          f" not {last - first + 1}", position=position)
    return bodies, kinds


def open_chunk(position: int, stream_id: str, decrypt: Decrypt, prefixes: Prefixes, first: int, last: int,
               recorded_us: int, types: str, keys: bytes, payload: bytes,
               subjects: dict[str, tuple[str, str]]) -> list[RecordedEvent]:
    """A chunk's events, opened; `subjects` shares one (namespace, short ref) tuple per person."""
    bodies, kinds = open_bodies(position, stream_id, decrypt, prefixes, first, last, types, keys, payload)
    out = []
    new = _new_tuple
    for n, body in enumerate(bodies):
        ref = body["sub"][1]
        subject = subjects.get(ref)
        if subject is None:
            subject = subjects[ref] = (body["sub"][0], ref[:12])
        out.append(new(RecordedEvent, (position + n, stream_id, first + n, body["id"], kinds[n], body["src"],
                                       body["at"], recorded_us, subject, body["data"], body.get("by", UNKNOWN_WRITER),
                                       body.get("vouch", True))))
    return out


def open_streams(rows: Iterable[StoredChunk], sealers: Mapping[str, Sealer],
                 after: Mapping[str, int] | None = None) -> Iterator[RecordedEvent]:
    """The events of chunks read stream by stream (each in version order), opened with their
    streams' keys: each stream's after its version in `after` (0 if absent); TamperError where a
    version is missing. A worker holding only some streams' data keys reads them with this."""
    reached: dict[str, int] = {}
    subjects: dict[str, tuple[str, str]] = {}
    for row in rows:
        sid = row.stream_id
        at = reached.get(sid)
        if at is None:
            at = after.get(sid, 0) if after else 0
        if row.first_version > at + 1:
            raise TamperError(f"stream {sid} skips from version {at} to {row.first_version}", position=row.position)
        events = open_chunk(row.position, sid, sealers[sid].decrypt, aad_prefixes(sid), row.first_version,
                            row.last_version, row.recorded_at, row.types, row.keys, row.payload, subjects)
        reached[sid] = max(at, row.last_version)
        for event in events:
            if event.version > at:
                yield event


@dataclass
class AppendResult:
    appended: int = 0
    duplicates: int = 0
    profiles_created: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # profile id -> new version
    recorded: list[RecordedEvent] = field(default_factory=list)  # the appended events, when asked to keep them
    merges: int = 0  # links that joined two existing profiles into one person
    merges_refused: int = 0  # links joining two people whose merge was undone: kept apart

    def add(self, other: AppendResult) -> None:
        self.appended += other.appended
        self.duplicates += other.duplicates
        self.profiles_created += other.profiles_created
        self.merges += other.merges
        self.merges_refused += other.merges_refused
        self.streams.update(other.streams)
        self.recorded.extend(other.recorded)


@dataclass(frozen=True)
class ProfileInfo:
    id: str
    version: int
    created_at: datetime
    identities: list[tuple[str, str]]  # (namespace, short hash)


class EventLog:
    """Append, read and locate streams. One instance per thread."""

    def __init__(self, recorder: Recorder, keyring: Keyring, settings: Settings) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.settings = settings
        self._event_key_hash = hashlib.blake2b(digest_size=16, key=keyring.derived("event-id"))
        self.chain_key = keyring.derived("chain")
        self._chain_hash = hashlib.blake2b(digest_size=32, key=self.chain_key)
        self._sealers: dict[bytes, Sealer] = {}  # wrapped key -> sealer, for reads
        # Writer cache, valid while no one else writes: identifier hash -> profile id,
        # and profile id -> (stream number, version, chain head, sealer).
        self._links: dict[bytes, str] = {}
        self._tips: dict[str, Tip] = {}
        self._synced: tuple[int, int] | None = None
        # Replay cache, valid while no one is erased (the store's erasure mark is read per page; a
        # restore re-applies erasures and is made with every process stopped): stream number -> id,
        # and -> (id, its key's decrypt, its AAD prefix), None when erased; subjects are shared
        # (namespace, short ref) pairs, so a page of events holds one tuple per person, not per event.
        self._names: dict[int, str] = {}
        self._replay: dict[int, _Replay | None] = {}
        self._replay_mark = -1
        self._subjects: dict[str, tuple[str, str]] = {}
        self._kinds: dict[str, bytes] = {}

    # -- identifiers ---------------------------------------------------------------------
    def event_key(self, source: str, event_id: str, writer: Writer = LIBRARY) -> bytes:
        """The idempotency key: event ids are unique per source (two shops may both send "o1"), and
        a token's are its own (`Writer.key_scope`); the operator's are what they always were."""
        h = self._event_key_hash.copy()  # copying a keyed state skips re-keying per event
        h.update(writer.key_scope(source) + source.encode() + b"\x00" + event_id.encode())
        return h.digest()

    def hash_subject(self, subject: Subject) -> bytes:
        return subject_hash(self.keyring.pepper, subject.namespace, subject.value)

    def hash_identifier(self, namespace: str, value: str) -> bytes:
        return self.hash_subject(Subject(namespace, normalise(namespace, value, self.settings.default_region)))

    def profile_for(self, namespace: str, value: str) -> str | None:
        digest = self.hash_identifier(namespace, value)
        return self.recorder.resolve([digest]).get(digest)

    # -- keys ----------------------------------------------------------------------------
    def sealer(self, profile_id: str, head: Head) -> Sealer:
        if head.wrapped is None or head.kek_version is None:
            raise ErasedError(profile_id)
        wrapped = bytes(head.wrapped)
        sealer = self._sealers.get(wrapped)
        if sealer is None:
            if len(self._sealers) >= _SEALER_LIMIT:
                self._sealers.clear()
            sealer = Sealer(self.keyring.unwrap(profile_id, head.kek_version, wrapped))
            self._sealers[wrapped] = sealer
        return sealer

    def data_key(self, profile_id: str, head: Head) -> bytes:
        """A stream's data key, unwrapped (ErasedError once erased): what a writer's tip holds."""
        if head.wrapped is None or head.kek_version is None:
            raise ErasedError(profile_id)
        return self.keyring.unwrap(profile_id, head.kek_version, bytes(head.wrapped))

    def forget_cached_keys(self) -> None:
        self._sealers.clear()
        self._replay.clear()
        self._names.clear()
        self._subjects.clear()
        self._forget_writer_cache()

    def _forget_writer_cache(self) -> None:
        self._links.clear()
        self._tips.clear()
        self._synced = None

    def _writer_cache_valid(self) -> bool:
        """True when nobody has written since our last append (checked under the write lock).

        SQLite's data_version changes when another connection commits; the recorder's
        own commit count changes when this connection commits anything else (an erasure).
        """
        return self._synced == (self.recorder.data_version(), self.recorder.commits)

    # -- append --------------------------------------------------------------------------
    def append(self, events: Sequence[Event], *, now: datetime | None = None, keep: bool = False,
               explicit: bool = False, writer: Writer = LIBRARY) -> AppendResult:
        """Append a batch, resolving each subject to its profile (new subjects get one).

        Atomic: the whole batch or nothing. Idempotent on event_id: events already in
        the log are counted as duplicates and skipped. With `keep`, the result carries the
        appended events as they will read back (for keeping projections current).

        An `identity_linked` event whose two identifiers belong to two existing people merges
        them (persona.identity) — unless a merge of theirs was undone. With `explicit` (a link
        asked for by hand, `persona link` or `linkIdentities`, not a record's say-so) it is made
        all the same, and a new identifier gets a profile of its own, merged with the known one,
        rather than joining its stream: the merge is then one that an unlink can undo.

        `writer` is sealed into each event (and the merge markers it causes). The operator's
        events share one idempotency key space (the same record from another local command is a
        duplicate); a token's keys are bound to it (`Writer.key_scope`), so no token can pre-empt
        or replay another writer's event ids. Which events a writer may send is its caller's to
        check (persona.api.access).
        """
        recorded = micros(now or datetime.now(UTC))
        keyed: dict[bytes, Event] = {}
        scopes: dict[str, bytes] = {}
        with gc_paused():
            base = self._event_key_hash  # event_key(), inlined: this loop runs once per event
            for event in events:
                scope = scopes.get(event.source)
                if scope is None:
                    scope = scopes[event.source] = writer.key_scope(event.source) + event.source.encode() + b"\x00"
                h = base.copy()
                h.update(scope + event.event_id.encode())
                keyed.setdefault(h.digest(), event)
            nested = self.recorder.in_transaction()
            careful = nested
            for attempt in range(_ATTEMPTS):
                try:
                    result = self._append_batch(keyed, recorded, check_duplicates=careful, keep=keep,
                                                explicit=explicit, writer=writer)
                    break
                except (DuplicateEventError, ConcurrencyError, StoreConflictError):
                    if nested or attempt == _ATTEMPTS - 1:  # (nested: the caller's transaction holds what the
                        raise                               # failed attempt wrote, theirs to roll back)
                    # The fast path assumes new events and a current cache; a re-ingest (or a
                    # writer we did not see) takes the careful path, from the database alone. So
                    # does an append that met another writer beside it (PostgreSQL): one that linked
                    # the same new identifier or stored the same event id first, or that PostgreSQL
                    # ended to break a wait in a circle — once more, up to _ATTEMPTS in all.
                    careful = True
        result.duplicates += len(events) - len(keyed)
        return result

    def _append_batch(self, keyed: dict[bytes, Event], recorded: int, *, check_duplicates: bool,
                      keep: bool, explicit: bool = False, writer: Writer = LIBRARY) -> AppendResult:
        rec = self.recorder
        result = AppendResult()
        finish: Callable[[], None] | None = None
        try:
            # concurrent: other writers append beside this one (PostgreSQL); _append_locked holds
            # what it writes — the streams, the new identifiers, the persons it merges
            with rec.transaction(concurrent=True):
                if check_duplicates or not self._writer_cache_valid():
                    self._forget_writer_cache()
                if check_duplicates:
                    existing = rec.existing_event_keys(list(keyed))
                    result.duplicates = len(existing)
                    keyed = {k: e for k, e in keyed.items() if k not in existing}
                if keyed:
                    finish = self._append_locked(keyed, recorded, result, keep, explicit, writer)
                # Read under the write lock: after COMMIT another writer could slip in unseen.
                seen = rec.data_version()
        except BaseException:
            self._forget_writer_cache()
            raise
        if finish is not None:
            finish()
        # Our own commit does not change data_version. Inside a caller's transaction nothing is
        # committed yet (it may still roll back): the cache is not to be trusted after it.
        self._synced = None if rec.in_transaction() else (seen, rec.commits)
        return result

    def _append_locked(self, keyed: dict[bytes, Event], recorded: int, result: AppendResult, keep: bool,
                       explicit: bool, writer: Writer) -> Callable[[], None] | None:
        """Append inside the caller's transaction; returns what is left for after it (`keep`: the
        recorded events, made once the log's lock is no longer held), if anything."""
        rec = self.recorder
        pepper = self.keyring.pepper
        hashes: dict[Subject, bytes] = {}
        pending: list[tuple[bytes, Event, bytes]] = []  # (event key, event, subject hash)
        for key, event in keyed.items():
            h = hashes.get(event.subject)
            if h is None:
                h = hashes[event.subject] = subject_hash(pepper, *event.subject)
            if event.other is not None and event.other not in hashes:
                hashes[event.other] = subject_hash(pepper, *event.other)
            pending.append((key, event, h))
        links = self._links
        unknown = [h for h in set(hashes.values()) if h not in links]
        if unknown:
            links.update(rec.resolve(unknown))
        new_streams: list[tuple[str, bytes, int, bytes, int]] = []
        new_links: list[tuple[bytes, str, str, int]] = []
        new_keys: list[bytes] = []
        tips = self._tips
        items: list[Item] = []
        joins: list[tuple[bytes, Event, str, str]] = []  # a link between two existing profiles

        def open_stream(digest: bytes, namespace: str) -> str:
            if not new_streams:
                self.check_current_kek()
            pid = links[digest] = new_profile_id()
            dek = self.keyring.new_dek()
            version, wrapped = self.keyring.wrap(pid, dek)
            new_keys.append(dek)
            new_streams.append((pid, genesis(self.chain_key, pid), version, wrapped, recorded))
            new_links.append((digest, pid, namespace, recorded))
            return pid

        for key, event, h in pending:
            pid = links.get(h)
            if pid is None and event.other is not None and not explicit:
                pid = links.get(hashes[event.other])  # a new identifier seen with a known person
                if pid is not None:
                    links[h] = pid
                    new_links.append((h, pid, event.subject.namespace, recorded))
            if pid is None:
                pid = open_stream(h, event.subject.namespace)
            if event.other is not None:
                oh = hashes[event.other]
                if oh not in links:
                    if explicit:  # a profile of its own, merged below: an unlink can take it apart again
                        joins.append((key, event, pid, open_stream(oh, event.other.namespace)))
                    else:
                        links[oh] = pid
                        new_links.append((oh, pid, event.other.namespace, recorded))
                elif links[oh] != pid:  # joining two existing profiles is a merge (identity resolution)
                    joins.append((key, event, pid, links[oh]))
            items.append((pid, key, event, h))
        if new_links and rec.insert_links(new_links) < len(new_links):
            raise ConcurrencyError.claimed()  # (append() starts again from what the other writer committed)
        if new_streams:
            numbers = rec.create_streams(new_streams)
            for no, (pid, first, *_), dek in zip(numbers, new_streams, new_keys, strict=True):
                tips[pid] = (no, 0, first, dek)
        beside = rec.beside_others()
        created = {row[0] for row in new_streams}
        held: dict[str, Head] = {}
        if beside:
            # Another writer may append to these streams, or merge or write their persons, until
            # they are held: every stream this append writes (and, merging, each one's person's
            # first stream) held in one statement, in stream order — two writers never wait on
            # each other in a circle — and read as they stand once held.
            wanted = {item[0] for item in items} | {pid for join in joins for pid in join[2:]}
            if joins:
                wanted |= {person.id for person in identity.persons(rec, wanted - created).values()}
            held = rec.heads(sorted(wanted - created), lock=True)
        if joins:
            self._merge(joins, hashes, items, recorded, result, explicit)
        touched = list(dict.fromkeys(item[0] for item in items))
        if beside:
            late = [pid for pid in touched if pid not in held and pid not in created]
            if late:  # (a merge's marker for a stream not foreseen: not expected, but held all the same)
                held.update(rec.heads(late, lock=True))
            for pid in touched:
                head = held.get(pid)
                tip = tips.get(pid)
                if head is not None and (tip is None or (tip[1], tip[2]) != (head.version, bytes(head.hash))):
                    tips[pid] = (head.no, head.version, bytes(head.hash),
                                 self.data_key(pid, head) if tip is None else tip[3])
        missing = [pid for pid in touched if pid not in tips]
        if missing:
            for pid, head in rec.heads(missing).items():
                tips[pid] = (head.no, head.version, bytes(head.hash), self.data_key(pid, head))
        rows, ordered = self._seal(items, touched, hashes, recorded, writer, keep=keep)
        # the heads first: the log's rows last, since from them to COMMIT appends take turns (PostgreSQL)
        rec.set_heads([(tips[sid][1], tips[sid][2], tips[sid][0]) for sid in touched])
        start = rec.insert_chunks(rows)
        result.appended = len(items)
        result.profiles_created = len(new_streams)
        result.streams = {sid: tips[sid][1] for sid in touched}
        if len(tips) > _CACHE_LIMIT or len(links) > 4 * _CACHE_LIMIT:
            self._forget_writer_cache()
        if not keep:
            return None

        def hand_over() -> None:  # the opened events, for projections: no need to read them back
            subjects = {h: (subj.namespace, h[:6].hex()) for subj, h in hashes.items()}  # one tuple per person
            vouched = {source: writer.vouches(source) for source in {item[2].source for item in ordered}}
            by, new = writer.name, _new_tuple
            result.recorded = [
                new(RecordedEvent, (start + n, pid, version, event.event_id, event.type, event.source,
                                    event.occurred_at, recorded, subjects[h], event.data, by, vouched[event.source]))
                for n, (pid, _, event, h, version) in enumerate(ordered)
            ]
        return hand_over

    def _merge(self, joins: list[tuple[bytes, Event, str, str]], hashes: dict[Subject, bytes],
               items: list[tuple[str, bytes, Event, bytes]], recorded: int, result: AppendResult,
               explicit: bool) -> None:
        """Merge the people these links join: record each merge and append a `profiles_merged`
        event to both streams (ids derived from the link's key: a re-run adds nothing)."""
        rec = self.recorder
        people = identity.hold_persons(rec, {pid for join in joins for pid in join[2:]})
        # merges undone before, between any streams of these people: one query for the batch
        apart = {frozenset((e.a, e.b)) for e in rec.merge_edges(sorted({m for p in people.values() for m in p.members}))
                 if e.undone_at is not None}
        joined: set[str] = set()
        for key, event, pid, other_pid in joins:
            one, other = people[pid], people[other_pid]
            if one.id == other.id:
                continue  # one person already (merged earlier, or earlier in this batch)
            if not explicit and apart and any(frozenset((a, b)) in apart for a in one.members for b in other.members):
                result.merges_refused += 1
                continue
            assert event.other is not None
            h, oh = hashes[event.subject], hashes[event.other]
            edge = rec.add_merge(pid, other_pid, h, oh, recorded)
            tag = key.hex()[:32]
            for side, (stream, subject, digest, peer) in enumerate(
                    ((pid, event.subject, h, other_pid), (other_pid, event.other, oh, pid))):
                marker = Event(f"merge:{tag}:{side}", identity.MERGE_SOURCE, identity.MERGED, event.occurred_at,
                               subject, {"with": peer, "edge": edge, "link": event.event_id})
                items.append((stream, self.event_key(marker.source, marker.event_id), marker, digest))
            union = identity.Person(one.id, one.members + other.members)
            for member in union.members:
                people[member] = union
            joined.update(union.members)
            result.merges += 1
        if joined:
            identity.regroup(rec, sorted(joined))

    def append_to(self, profile_id: str, events: Sequence[Event], *, expected_version: int,
                  now: datetime | None = None, writer: Writer = LIBRARY) -> int:
        """Append to one known stream if it is still at `expected_version`; returns the new version.

        Raises ConcurrencyError when the stream has moved on, DuplicateEventError when an
        event id is already in the log.
        """
        recorded = micros(now or datetime.now(UTC))
        rec = self.recorder
        self._forget_writer_cache()
        with rec.transaction(concurrent=True):
            head = rec.heads([profile_id], lock=True).get(profile_id)
            if head is None:
                if rec.tombstone(profile_id) is not None:
                    raise ErasedError(profile_id)
                raise UnknownProfileError(f"no profile {profile_id}")
            if head.wrapped is None:
                raise ErasedError(profile_id)
            if head.version != expected_version:
                raise ConcurrencyError(profile_id, expected_version, head.version)
            keyed: dict[bytes, Event] = {}
            for event in events:
                keyed.setdefault(self.event_key(event.source, event.event_id, writer), event)
            if len(keyed) < len(events) or rec.existing_event_keys(list(keyed)):
                raise DuplicateEventError("the batch holds an event id that is already in the log")
            pepper = self.keyring.pepper
            hashes = {}
            for event in events:
                for subj in (event.subject, event.other):
                    if subj is not None:
                        hashes[subj] = subject_hash(pepper, *subj)
            self._tips[profile_id] = (head.no, head.version, bytes(head.hash), self.data_key(profile_id, head))
            items = [(profile_id, key, ev, hashes[ev.subject]) for key, ev in keyed.items()]
            rows, _ = self._seal(items, [profile_id], hashes, recorded, writer)
            rec.insert_chunks(rows)
            _, version, chain, _ = self._tips[profile_id]
            rec.set_heads([(version, chain, head.no)])
        self._forget_writer_cache()
        return version

    def _seal(self, items: list[Item], streams: list[str], hashes: dict[Subject, bytes], recorded: int,
              writer: Writer, *, keep: bool = False) -> tuple[list[ChunkRow], list[tuple[str, bytes, Event, bytes,
                                                                                         int]]]:
        """Seal, number and chain new events, advancing the cached stream tips: each stream's events
        of the batch (in arrival order) sealed together, CHUNK_CAP at most per chunk, the streams in
        the order their first event arrived. Returns the chunks, and with `keep` the items in log
        order with their versions.

        items: (profile id, event key, event, subject hash); streams: the profile ids among them.
        Each body names its writer ("by"), and holds "vouch": false when the writer did not vouch
        for the event's source (the common case, a vouched one, costs no bytes).
        """
        grouped: dict[str, list[Item]] = {sid: [] for sid in streams}
        for item in items:
            grouped[item[0]].append(item)
        rows: list[ChunkRow] = []
        ordered: list[tuple[str, bytes, Event, bytes, int]] = []
        dumps = orjson.dumps
        chained = self._chain_hash
        stamp = recorded.to_bytes(8, "big", signed=True)
        tips = self._tips
        refs = {digest: [subj.namespace, digest[:16].hex()] for subj, digest in hashes.items()}
        by = writer.name
        unvouched = {source for source in {item[2].source for item in items} if not writer.vouches(source)}
        nonces = os.urandom(12 * len(items))  # at most one chunk per event
        used = 0
        join = b"".join
        for sid, its in grouped.items():
            no, version, head, dek = tips[sid]
            encrypt = encrypter(dek)
            named = sid.encode() + b"\x00"
            for start in range(0, len(its), CHUNK_CAP):
                part = its[start : start + CHUNK_CAP] if len(its) > CHUNK_CAP else its
                bodies = []
                for _, _, event, h in part:
                    body: dict[str, Any] = {
                        "id": event.event_id,
                        "src": event.source,
                        "at": event.occurred_at,
                        "sub": refs[h],
                        "data": event.data,
                        "by": by,
                    }
                    if unvouched and event.source in unvouched:
                        body["vouch"] = False  # absent means vouched, as for events written before writers were
                    if event.other is not None:
                        body["other"] = refs[hashes[event.other]]
                    bodies.append(body)
                first, last = version + 1, version + len(part)
                if first == last:  # sealed as an event was before chunks (event_aad)
                    keys, types = part[0][1], part[0][2].type
                    aad = join((_EVENT_AAD, named, first.to_bytes(8, "big"), keys, types.encode()))
                    plain = dumps(bodies[0])
                else:  # chunk_aad
                    keys = join([item[1] for item in part])
                    types = " ".join([item[2].type for item in part])
                    aad = join((_CHUNK_AAD, named, first.to_bytes(8, "big"), last.to_bytes(8, "big"), keys,
                                types.encode()))
                    plain = dumps(bodies)
                nonce = nonces[used : used + 12]
                used += 12
                payload = nonce + encrypt(nonce, plain, aad)
                link = chained.copy()
                link.update(join((head, aad, stamp, payload)))
                head = link.digest()
                version = last
                rows.append((no, first, last, recorded, types, keys, payload, head))
                if keep:
                    ordered.extend((pid, key, event, h, first + n) for n, (pid, key, event, h) in enumerate(part))
            tips[sid] = (no, version, head, dek)
        return rows, ordered

    # -- read ----------------------------------------------------------------------------
    def open_chunk(self, row: StoredChunk, sealer: Sealer) -> list[RecordedEvent]:
        """A chunk's events, opened (TamperError if it does not open)."""
        return open_chunk(row.position, row.stream_id, sealer.decrypt, aad_prefixes(row.stream_id), row.first_version,
                          row.last_version, row.recorded_at, row.types, row.keys, row.payload, {})

    def open_streams(self, rows: Iterable[StoredChunk], sealers: Mapping[str, Sealer],
                     after: Mapping[str, int] | None = None) -> Iterator[RecordedEvent]:
        """persona.eventlog.open_streams (which needs no key but the streams' own)."""
        return open_streams(rows, sealers, after)

    def linked_by_hand(self, profile_id: str, one: bytes, other: bytes, prefix: str) -> bool:
        """Does this stream hold a link asked for by hand (its event id starts with `prefix`) between
        these two identifiers (keyed hashes)? Read from the sealed payloads: an event read back
        names its subject only."""
        head = self.recorder.heads([profile_id]).get(profile_id)
        if head is None or head.wrapped is None:
            return False
        decrypt, prefixes = self.sealer(profile_id, head).decrypt, aad_prefixes(profile_id)
        pair = {one[:16].hex(), other[:16].hex()}
        for row in self.recorder.read_stream(profile_id, 0):
            if "identity_linked" in row.types.split(" "):
                bodies, kinds = open_bodies(row.position, profile_id, decrypt, prefixes, row.first_version,
                                            row.last_version, row.types, row.keys, row.payload)
                for body, kind in zip(bodies, kinds, strict=True):
                    ids = {body["sub"][1], body["other"][1]} if "other" in body else set()
                    if kind == "identity_linked" and str(body["id"]).startswith(prefix) and ids == pair:
                        return True
        return False

    def read(self, profile_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """One stream, opened, in version order."""
        head = self.recorder.heads([profile_id]).get(profile_id)
        if head is None:
            raise UnknownProfileError(f"no profile {profile_id}")
        sealer = self.sealer(profile_id, head)
        return list(self.open_streams(self.recorder.read_stream(profile_id, after_version), {profile_id: sealer},
                                      {profile_id: after_version}))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> tuple[list[RecordedEvent], int]:
        """The global log from a position, for catch-up: (opened events, last position read);
        `limit` events at most, unless one chunk holds more (it is read whole).

        Events of erased profiles cannot be opened and are passed over.
        """
        with gc_paused():
            rows = self._log_page(after_position, limit)
            if not rows:
                return [], after_position
            out: list[RecordedEvent] = []
            last = after_position
            for row in rows:
                if len(out) >= limit:
                    break
                out.extend(self._opened([row], after_position))
                last = row[0] + row[3] - row[2]
            del rows  # freed while the collector is off: it never has to look at the page's rows
        return out, last

    def iter_all(self, after_position: int = 0, page: int = 2_000) -> Iterator[RecordedEvent]:
        """Every event from a position, in log order: read a page of chunks at a time, each event
        handed out as it is opened (a consumer that lets go of each event reuses the same memory).

        Events are opened a chunk at a time as they are handed out: a chunk that does not open
        raises TamperError after the events before it, and once an erasure here forgets the cached
        keys, the erased person's remaining events are passed over, mid-page included.
        """
        position = after_position
        while True:
            with gc_paused():
                rows = self._log_page(position, page)
            if not rows:
                return
            yield from self._opened(rows, position)
            last = rows[-1]
            position = last[0] + last[3] - last[2]

    def _log_page(self, after_position: int, limit: int) -> list[LogChunk]:
        """A page of the global log's chunks; the replay cache is emptied if anyone was erased since."""
        rec = self.recorder
        rows = rec.read_log(after_position, limit)
        if not rows:
            return rows
        streams, subjects = self._replay, self._subjects
        mark = rec.erasure_mark()
        grown = max(len(streams), len(self._names), len(subjects), len(self._kinds)) > _CACHE_LIMIT
        if mark != self._replay_mark or grown:
            streams.clear()  # someone was erased (here or elsewhere): keys are looked up again
            self._names.clear()
            subjects.clear()
            self._kinds.clear()
            self._replay_mark = mark
        return rows

    def _opened(self, rows: list[LogChunk], after_position: int) -> Iterator[RecordedEvent]:
        """The events of a page from _log_page after a position, opened: this loop runs once per
        chunk of a replay (a chunk of one, the commonest in a live log, is opened inline)."""
        streams, subjects, kinds = self._replay, self._subjects, self._kinds
        loads, new, join = orjson.loads, _new_tuple, b"".join
        for position, no, first, last, recorded_us, types, keys, payload in rows:
            try:
                stream = streams[no]
            except KeyError:  # new to the cache, or forgotten mid-page (an erasure): the page's streams, at once
                self._open_streams({row[1] for row in rows} - streams.keys())
                stream = streams[no]
            if stream is None:
                continue  # erased: it can never be opened
            sid, decrypt, prefixes = stream
            kind = kinds.get(types)
            if kind is None:
                kind = kinds[types] = types.encode()
            try:
                if first == last:
                    bodies = [loads(decrypt(payload[:12], payload[12:], join((prefixes[0], first.to_bytes(8, "big"),
                                                                              keys, kind))))]
                    names = [types]
                else:
                    bodies = loads(decrypt(payload[:12], payload[12:], join((prefixes[1], first.to_bytes(8, "big"),
                                                                             last.to_bytes(8, "big"), keys, kind))))
                    names = types.split(" ")
                    if len(bodies) != last - first + 1 or len(names) != len(bodies):
                        raise InvalidTag
            except InvalidTag:  # open_bodies names what is wrong (TamperError)
                open_bodies(position, sid, decrypt, prefixes, first, last, types, keys, payload)
                raise
            skip = after_position - position + 1 if position <= after_position else 0  # a chunk begun before
            for n in range(skip, len(bodies)):
                body = bodies[n]
                ref = body["sub"][1]
                subject = subjects.get(ref)
                if subject is None:
                    subject = subjects[ref] = (body["sub"][0], ref[:12])
                yield new(RecordedEvent, (position + n, sid, first + n, body["id"], names[n], body["src"], body["at"],
                                          recorded_us, subject, body["data"], body.get("by", UNKNOWN_WRITER),
                                          body.get("vouch", True)))

    def _open_streams(self, numbers: set[int]) -> None:
        """Fill the replay cache for these stream numbers (None for an erased stream)."""
        rec, names, streams = self.recorder, self._names, self._replay
        names.update(rec.stream_names(list(numbers - names.keys())))
        heads = rec.heads([names[no] for no in numbers])
        for no in numbers:
            sid = names[no]
            head = heads.get(sid)
            if head is None or head.wrapped is None:
                streams[no] = None
            else:
                streams[no] = (sid, self.sealer(sid, head).decrypt, aad_prefixes(sid))

    def info(self, profile_id: str) -> ProfileInfo:
        rec = self.recorder
        head = rec.heads([profile_id]).get(profile_id)
        if head is None or head.wrapped is None:
            if rec.tombstone(profile_id) is not None:
                raise ErasedError(profile_id)
            raise UnknownProfileError(f"no profile {profile_id}")
        created = rec.created_at(profile_id)
        identities = [(ns, short_hash(bytes(h))) for h, ns in rec.links_of(profile_id)]
        return ProfileInfo(profile_id, head.version, from_micros(created), identities)

    def profile_ids(self) -> Iterable[str]:
        return self.recorder.stream_ids()

    # -- store identity ------------------------------------------------------------------
    def record_keyring(self) -> None:
        """Write the key fingerprints into the database, to catch a wrong key file later."""
        self.recorder.set_meta("pepper_fingerprint", fingerprint(self.keyring.pepper, b"pepper"))
        self.recorder.set_meta("kek_fingerprints", orjson.dumps(
            {str(v): f for v, f in self.keyring.kek_fingerprints().items()}).decode())
        self.recorder.set_meta("kek_current", str(self.keyring.current))

    def check_current_kek(self) -> None:
        """Before wrapping a new key (under the write lock): if another process rotated the
        master key, take the new version from the key file — never wrap under a version that
        a retiring rotation may have destroyed."""
        stored = self.recorder.get_meta("kek_current")
        if stored is None or int(stored) <= self.keyring.current:
            return
        self.keyring.refresh()
        if self.keyring.current < int(stored):
            raise ConfigurationError(f"the master key was rotated to version {stored} by another process; give this"
                                     " process the new key file (or PERSONA_MASTER_KEY) and restart it")

    def check_keyring(self) -> None:
        rec = self.recorder
        if rec.get_meta("pepper_fingerprint") != fingerprint(self.keyring.pepper, b"pepper"):
            raise KeyMismatchError("the pseudonym pepper does not belong to this database (wrong key file?)")
        known = orjson.loads(rec.get_meta("kek_fingerprints") or "{}")
        mine = self.keyring.kek_fingerprints()
        for version, fp in known.items():
            if int(version) in mine and mine[int(version)] != fp:
                raise KeyMismatchError(f"master key version {version} does not belong to this database")
        used = rec.kek_versions_in_use()
        missing = sorted(used - set(mine))
        if missing:
            raise KeyMismatchError(f"the keyring lacks master key version(s) {missing} used by this database")
