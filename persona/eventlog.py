"""The encrypted, append-only event log: one stream per profile, sealed with its own key.

Encryption sits above storage: the Recorder keeps opaque rows; this module turns
canonical events into sealed, hash-chained rows and back.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from persona.crypto import Keyring, Sealer, fingerprint
from persona.errors import (
    ConcurrencyError,
    ErasedError,
    KeyMismatchError,
    PersonaError,
    UnknownProfileError,
)
from persona.events import Event, Subject
from persona.pseudonyms import normalise, short_hash, subject_hash
from persona.settings import Settings
from persona.store.base import Head, StoredEvent
from persona.store.sqlite import SQLiteRecorder

QUARANTINE_KEY = "quarantine"
_EVENT_AAD = b"persona-event/1\x00"
_SEALER_CACHE = 20_000
Row = tuple[str, int, bytes, str, int, bytes, bytes]


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def new_profile_id() -> str:
    """Random: a profile id reveals nothing, even to someone holding the pepper."""
    return "prf_" + base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()


def genesis(stream_id: str) -> bytes:
    return hashlib.sha256(b"persona-genesis\x00" + stream_id.encode()).digest()


def chain_hash(prev: bytes, stream_id: str, version: int, event_key: bytes, kind: str,
               recorded_at: int, payload: bytes) -> bytes:
    h = hashlib.sha256(prev)
    h.update(stream_id.encode())
    h.update(version.to_bytes(8, "big"))
    h.update(event_key)
    h.update(kind.encode())
    h.update(recorded_at.to_bytes(8, "big", signed=True))
    h.update(payload)
    return h.digest()


def event_aad(stream_id: str, version: int, event_key: bytes, kind: str) -> bytes:
    return b"".join((_EVENT_AAD, stream_id.encode(), b"\x00", version.to_bytes(8, "big"), event_key, kind.encode()))


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event read back from the log, opened."""

    position: int
    profile_id: str
    version: int
    event_id: str
    type: str
    source: str
    occurred_at: str
    recorded_at: datetime
    subject: tuple[str, str]  # (namespace, short hash): never the identifier itself
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "profile_id": self.profile_id,
            "version": self.version,
            "event_id": self.event_id,
            "type": self.type,
            "source": self.source,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at.isoformat(),
            "subject": {"namespace": self.subject[0], "hash": self.subject[1]},
            "data": self.data,
        }


@dataclass
class AppendResult:
    appended: int = 0
    duplicates: int = 0
    profiles_created: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # profile id -> new version

    def add(self, other: AppendResult) -> None:
        self.appended += other.appended
        self.duplicates += other.duplicates
        self.profiles_created += other.profiles_created
        self.streams.update(other.streams)


@dataclass(frozen=True)
class ProfileInfo:
    id: str
    version: int
    created_at: datetime
    identities: list[tuple[str, str]]  # (namespace, short hash)


class EventLog:
    """Append, read and locate streams. One instance per thread."""

    def __init__(self, recorder: SQLiteRecorder, keyring: Keyring, settings: Settings) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.settings = settings
        self._event_key_secret = keyring.derived("event-id")
        self._sealers: dict[bytes, Sealer] = {}

    # -- identifiers ---------------------------------------------------------------------
    def event_key(self, event_id: str) -> bytes:
        return hashlib.blake2b(event_id.encode(), digest_size=16, key=self._event_key_secret).digest()

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
            if len(self._sealers) >= _SEALER_CACHE:
                self._sealers.clear()
            sealer = Sealer(self.keyring.unwrap(profile_id, head.kek_version, wrapped))
            self._sealers[wrapped] = sealer
        return sealer

    def forget_cached_keys(self) -> None:
        self._sealers.clear()

    # -- append --------------------------------------------------------------------------
    def append(self, events: Sequence[Event], *, now: datetime | None = None) -> AppendResult:
        """Append a batch, resolving each subject to its profile (new subjects get one).

        Atomic: the whole batch or nothing. Idempotent on event_id.
        """
        now = now or datetime.now(UTC)
        keyed: dict[bytes, Event] = {}
        for event in events:
            keyed.setdefault(self.event_key(event.event_id), event)
        result = AppendResult(duplicates=len(events) - len(keyed))
        rec = self.recorder
        with rec.transaction():
            existing = rec.existing_event_keys(list(keyed))
            if existing:
                result.duplicates += len(existing)
                keyed = {k: e for k, e in keyed.items() if k not in existing}
            if not keyed:
                return result
            hashes: dict[Subject, bytes] = {}
            for event in keyed.values():
                for subj in (event.subject, event.other):
                    if subj is not None and subj not in hashes:
                        hashes[subj] = self.hash_subject(subj)
            linked = rec.resolve(list(set(hashes.values())))
            created: dict[str, Sealer] = {}
            new_streams, new_links = [], []
            recorded = micros(now)
            for event in keyed.values():
                h = hashes[event.subject]
                pid = linked.get(h)
                if pid is None:
                    pid = linked[h] = new_profile_id()
                    dek = self.keyring.new_dek()
                    version, wrapped = self.keyring.wrap(pid, dek)
                    created[pid] = Sealer(dek)
                    new_streams.append((pid, genesis(pid), version, wrapped, recorded))
                    new_links.append((h, pid, event.subject.namespace, recorded))
                if event.other is not None:
                    oh = hashes[event.other]
                    if oh not in linked:  # joining two existing profiles is a merge: see ingest
                        linked[oh] = pid
                        new_links.append((oh, pid, event.other.namespace, recorded))
            if new_streams:
                rec.create_streams(new_streams)
            if new_links:
                rec.insert_links(new_links)
            result.profiles_created = len(created)
            by_stream: dict[str, list[tuple[bytes, Event]]] = {}
            for key, event in keyed.items():
                by_stream.setdefault(linked[hashes[event.subject]], []).append((key, event))
            heads = rec.heads(by_stream)
            rows, new_heads = self._seal(by_stream, heads, hashes, recorded)
            rec.insert_events(rows)
            rec.set_heads([(v, h, sid) for sid, (v, h) in new_heads.items()])
            result.appended = len(rows)
            result.streams = {sid: v for sid, (v, _) in new_heads.items()}
        return result

    def append_to(self, profile_id: str, events: Sequence[Event], *, expected_version: int,
                  now: datetime | None = None) -> int:
        """Append to one known stream if it is still at `expected_version`; returns the new version."""
        now = now or datetime.now(UTC)
        rec = self.recorder
        with rec.transaction():
            head = rec.heads([profile_id]).get(profile_id)
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
                keyed.setdefault(self.event_key(event.event_id), event)
            if rec.existing_event_keys(list(keyed)):
                raise PersonaError("the batch holds an event id that is already in the log")
            hashes = {e.subject: self.hash_subject(e.subject) for e in events}
            hashes.update({e.other: self.hash_subject(e.other) for e in events if e.other})
            rows, new_heads = self._seal({profile_id: list(keyed.items())}, {profile_id: head}, hashes, micros(now))
            rec.insert_events(rows)
            version, chain = new_heads[profile_id]
            rec.set_heads([(version, chain, profile_id)])
        return version

    def _seal(self, by_stream: dict[str, list[tuple[bytes, Event]]], heads: dict[str, Head],
              hashes: dict[Subject, bytes], recorded: int) -> tuple[list[Row], dict[str, tuple[int, bytes]]]:
        """Seal, number and chain each stream's new events: (rows, new head of each stream)."""
        total = sum(len(v) for v in by_stream.values())
        nonces = os.urandom(12 * total)
        n = 0
        rows: list[Row] = []
        new_heads: dict[str, tuple[int, bytes]] = {}
        dumps = orjson.dumps
        for sid, items in by_stream.items():
            head = heads[sid]
            sealer = self.sealer(sid, head)
            version, prev = head.version, bytes(head.hash)
            for key, event in items:
                version += 1
                body: dict[str, Any] = {
                    "id": event.event_id,
                    "src": event.source,
                    "at": event.occurred_at,
                    "sub": [event.subject.namespace, hashes[event.subject][:16].hex()],
                    "data": event.data,
                }
                if event.other is not None:
                    body["other"] = [event.other.namespace, hashes[event.other][:16].hex()]
                payload = sealer.seal(dumps(body), event_aad(sid, version, key, event.type), nonces[n : n + 12])
                n += 12
                prev = chain_hash(prev, sid, version, key, event.type, recorded, payload)
                rows.append((sid, version, key, event.type, recorded, payload, prev))
            new_heads[sid] = (version, prev)
        return rows, new_heads

    # -- read ----------------------------------------------------------------------------
    def open_event(self, row: StoredEvent, sealer: Sealer) -> RecordedEvent:
        aad = event_aad(row.stream_id, row.version, bytes(row.event_key), row.type)
        body = orjson.loads(sealer.open(bytes(row.payload), aad))
        return RecordedEvent(
            row.position, row.stream_id, row.version, body["id"], row.type, body["src"], body["at"],
            from_micros(row.recorded_at), (body["sub"][0], body["sub"][1][:12]), body["data"],
        )

    def read(self, profile_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """One stream, opened, in version order."""
        head = self.recorder.heads([profile_id]).get(profile_id)
        if head is None:
            raise UnknownProfileError(f"no profile {profile_id}")
        sealer = self.sealer(profile_id, head)
        return [self.open_event(row, sealer) for row in self.recorder.read_stream(profile_id, after_version)]

    def read_all(self, after_position: int = 0, limit: int = 1000) -> tuple[list[RecordedEvent], int]:
        """The global log from a position, for catch-up: (opened events, last position read).

        Events of erased profiles cannot be opened and are passed over.
        """
        rows = self.recorder.read_all(after_position, limit)
        heads = self.recorder.heads({r.stream_id for r in rows})
        out = []
        for row in rows:
            head = heads[row.stream_id]
            if head.wrapped is not None:
                out.append(self.open_event(row, self.sealer(row.stream_id, head)))
        return out, rows[-1].position if rows else after_position

    def iter_all(self, after_position: int = 0, page: int = 5000) -> Iterator[RecordedEvent]:
        position = after_position
        while True:
            events, last = self.read_all(position, page)
            yield from events
            if last == position:
                return
            position = last

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
