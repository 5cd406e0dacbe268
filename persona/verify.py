"""Check the whole store: the file itself (SQLite's integrity check), hash chains, gap-free
versions, that live events open, that every other row matches its keyed tag (persona.integrity)
and names a stream that exists, that the erased hold no key, that merged persons are what the
recorded merges make, that every line of the erasure ledger is genuine and was committed, and
that the schema is the one this code makes.

The read models (index, snapshots, RFM, predictions) are tagged like the rest rather than
recomputed: checking a tag is one HMAC per row, recomputing them would replay every person."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from persona import identity
from persona.core import Persona
from persona.crypto import Sealer
from persona.erasure import ledger_of
from persona.errors import PersonaError, TamperError, UndecodableValueError, UnfinishedErasureError
from persona.eventlog import aad_prefixes, chain_hash, chunk_aad, chunk_place, genesis, open_bodies
from persona.integrity import TAGGED
from persona.store.base import KEY_SIZE, TABLES, TAG, Head, StoredChunk
from persona.store.keyset import generation_of


@dataclass
class VerifyReport:
    events: int = 0
    streams: int = 0
    opened: int = 0
    erased: int = 0
    ledger_entries: int = 0
    ledger_torn: bool = False  # its last line was torn by a crash mid-write (that erasure never committed)


# What a damaged row makes Python's decoders raise (bad UTF-8, JSON, types where a column had
# another): to verify, a finding like any other, never a crash.
UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


def verify(persona: Persona, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check the store's structure, then walk every stream, all in one snapshot; the first bad
    event (or erasure ledger line, or table) raises TamperError naming it."""
    _raise_first(persona.recorder.damage())
    try:
        with persona.recorder.snapshot():
            report = _verify(persona, progress)
    except UNREADABLE as e:
        raise TamperError(f"a row does not read as persona wrote it ({type(e).__name__})") from None
    except UndecodableValueError:
        raise TamperError("a text value does not decode: the file was altered") from None
    _raise_first(persona.recorder.schema_problems())  # after the rows: a dropped trigger is found
    return report  # …but an altered row is named first


def _raise_first(problems: list[str]) -> None:
    if problems:
        raise TamperError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


KEY_CHECK_BATCH = 5_000  # event keys looked up in the key set at once


def _verify(persona: Persona, progress: Callable[[int], None] | None) -> VerifyReport:
    rec = persona.recorder
    owners = _check_tags(persona)
    keyring = persona.keyring
    chain_key = persona.log.chain_key
    heads = rec.heads(list(rec.stream_ids()))
    erased = dict(rec.tombstones())
    report = VerifyReport(streams=len(heads), erased=len(erased))
    current: str | None = None
    version, prev, last_position = 0, b"", 0
    sealer: Sealer | None = None

    def close_stream(sid: str, version: int, prev: bytes) -> None:
        head = heads.get(sid)
        if head is None:
            raise TamperError(f"stream {sid} has events but no head")
        if head.version != version or bytes(head.hash) != prev:
            raise TamperError(f"stream {sid} ends at version {version}, its head says {head.version}")

    def bad(row: StoredChunk, why: str) -> TamperError:
        where = chunk_place(row.position, row.stream_id, row.first_version, row.last_version)
        return TamperError(f"{where}: {why}", position=row.position)

    seen: set[str] = set()
    # chunks' keys by their generation of the key set, checked against it in batches
    pending: dict[int, list[tuple[StoredChunk, bytes]]] = defaultdict(list)
    per_generation: Counter[int] = Counter()  # events at each generation's positions

    def keys_recorded() -> None:
        for generation, keyed in pending.items():
            found = rec.keys_in(generation, [key for _, key in keyed])
            for row, key in keyed:
                if key not in found:
                    raise bad(row, "an event's key is missing from the log's key set (the idempotency record was"
                                   " altered)")
        pending.clear()

    for row in rec.scan_chains():
        if row.stream_id != current:
            if current is not None:
                close_stream(current, version, prev)
            seen.add(row.stream_id)
            current, version, prev = row.stream_id, 0, genesis(chain_key, row.stream_id)
            last_position = 0
            head = heads.get(current)
            sealer = None
            if head is not None and head.wrapped is not None and head.kek_version is not None:
                sealer = Sealer(keyring.unwrap(current, head.kek_version, bytes(head.wrapped)))
        if row.first_version != version + 1:
            raise bad(row, f"expected version {version + 1}: a version is missing")
        if version and row.position <= last_position:  # positions are neither chained nor sealed
            raise bad(row, "it comes before the stream's earlier events in the log: a position was altered")
        if (row.last_version < row.first_version or len(row.keys) != KEY_SIZE * row.size
                or len(row.types.split(" ")) != row.size):
            raise bad(row, "the chunk's versions, keys and types do not agree")
        aad = chunk_aad(row.stream_id, row.first_version, row.last_version, bytes(row.keys), row.types)
        prev = chain_hash(chain_key, prev, aad, row.recorded_at, bytes(row.payload))
        if prev != bytes(row.hash):
            raise bad(row, "hash chain broken: the row was altered")
        if sealer is not None:
            try:
                open_bodies(row.position, row.stream_id, sealer.decrypt, aad_prefixes(row.stream_id),
                            row.first_version, row.last_version, row.types, bytes(row.keys), bytes(row.payload))
            except PersonaError as e:
                raise bad(row, "payload does not open with the profile's key") from e
            report.opened += row.size
        version, last_position = row.last_version, row.last_position
        report.events += row.size
        for n in range(row.size):
            generation = generation_of(row.position + n)
            pending[generation].append((row, bytes(row.keys[n * KEY_SIZE : (n + 1) * KEY_SIZE])))
            per_generation[generation] += 1
        if sum(map(len, pending.values())) >= KEY_CHECK_BATCH:
            keys_recorded()
        if progress is not None and report.events // 10_000 != (report.events - row.size) // 10_000:
            progress(10_000)
    if current is not None:
        close_stream(current, version, prev)
    keys_recorded()
    overlapping = rec.overlapping_chunks()  # positions are neither chained nor sealed: checked here
    if overlapping:
        raise TamperError(f"{overlapping} chunk(s) of the log overlap the positions of the chunk before them:"
                          " a position was altered")
    recorded = rec.counts()["events"]  # one key per event: every event's is there, so any other is extra
    if recorded != report.events:
        raise TamperError(f"the log's key set holds {recorded} keys for {report.events} events: keys were added"
                          " or removed")
    _raise_first(rec.key_set_problems(per_generation))
    for sid, head in heads.items():
        if head.version and sid not in seen:
            raise TamperError(f"stream {sid} has a head at version {head.version} but no events")
        # the key and the tombstone go and come in one transaction, and heads were read first
        if head.wrapped is None and sid not in erased:
            raise TamperError(f"profile {sid} has no data key and no tombstone: the record of its erasure was removed")
    for sid in sorted(erased):
        head = heads.get(sid)
        if head is not None and head.wrapped is not None:
            raise TamperError(f"erased profile {sid} still holds a data key")
        if rec.links_of(sid):
            raise TamperError(f"erased profile {sid} still has identity links")
    _check_persons(persona, heads, set(erased))
    _check_owners(persona, owners, heads, set(erased))
    ledger = ledger_of(persona).read()
    report.ledger_entries, report.ledger_torn = len(ledger.entries), ledger.torn
    for pid in sorted({e.profile_id for e in ledger.entries if e.profile_id} - set(erased)):
        head = heads.get(pid)
        if head is not None and head.wrapped is not None:
            raise UnfinishedErasureError(
                f"the erasure of profile {pid} is in the ledger but was never committed (a crash?); "
                f"finish it with `persona erase --profile {pid}`"
            )
    return report


# tables whose rows belong to one stream (by this column): none may name a stream that is not there.
# Not tombstones: a restore of a backup older than a stream keeps the tombstone of its erasure
# (its rows are gone; the tombstone re-erases it should a later backup hold them).
_OWNED = {"keys": "profile_id", "links": "profile_id", "members": "profile_id",
          "snapshots": "profile_id", "profile_index": "profile_id", "rfm": "profile_id", "predictions": "profile_id",
          "model_people": "profile_id", "merges": "a", "segment_members": "profile_id",
          "segment_changes": "profile_id", "destination_people": "profile_id", "deliveries": "profile_id"}


def _check_tags(persona: Persona) -> dict[str, set[str]]:
    """Every row of every table outside the log matches its keyed tag (persona.integrity); every
    row is read, so a damaged text value is found here rather than by a reader. Returns the
    streams the rows of each table in _OWNED belong to."""
    tagger = persona.recorder.tagger
    if tagger is None:
        raise TamperError("the store's rows cannot be checked without the key file")
    owners: dict[str, set[str]] = {}
    for table, columns in TAGGED.items():
        names = TABLES[table]
        where, at = [names.index(c) for c in columns], names.index(TAG)
        owner = names.index(_OWNED[table]) if table in _OWNED else None
        kept = names.index("kind") if table == "deliveries" else None  # a deletion notice outlives its person
        found: set[str] = set()
        bad = 0
        for page in persona.recorder.dump(table):
            for row in page:
                bad += not tagger.matches(table, [row[i] for i in where], row[at])
                if owner is not None and (kept is None or row[kept] != "erased"):
                    found.add(str(row[owner]))
        if bad:
            raise TamperError(f"{bad} row(s) of table {table} do not match their integrity tag:"
                              " altered, added or copied in since they were written")
        if owner is not None:
            owners[table] = found
    return owners


def _check_owners(persona: Persona, owners: dict[str, set[str]], heads: dict[str, Head],
                  erased: set[str]) -> None:
    """Rows that belong to a stream name one that exists; the erased keep nothing but their
    tombstone; every system key unwraps with the key file."""
    for table, found in owners.items():
        orphans = len(found - set(heads))
        if orphans:
            raise TamperError(f"{orphans} stream(s) named in table {table} do not exist")
        if table not in ("tombstones", "merges") and found & erased:
            raise TamperError(f"table {table} still holds rows of {len(found & erased)} erased profile(s)")
    for name, version, wrapped in persona.recorder.system_keys():
        try:
            persona.keyring.unwrap(name, version, bytes(wrapped))
        except PersonaError:
            raise TamperError(f"the system key {name!r} does not unwrap with the key file") from None


def _check_persons(persona: Persona, heads: dict[str, Head], erased: set[str]) -> None:
    """Merged persons as the `members` table has them are what the active merges make, named by
    their oldest stream; no erased profile is part of a merge."""
    rec = persona.recorder
    edges = rec.merge_edges(sorted(heads))
    for edge in edges:
        for sid in (edge.a, edge.b):
            if sid in erased:
                raise TamperError(f"erased profile {sid} is still recorded in a merge")
    joined = sorted({sid for e in edges if e.undone_at is None for sid in (e.a, e.b)})
    expected: dict[str, str] = {}
    for group in identity.components(rec, joined):
        if len(group) > 1:
            root = min(group, key=lambda sid: heads[sid].no)
            expected.update((sid, root) for sid in group)
    recorded = rec.persons_of(sorted(heads))
    if recorded != expected:
        wrong = sorted(set(recorded.items()) ^ set(expected.items()))[0][0]
        raise TamperError(f"profile {wrong}: the person it belongs to (members) disagrees with the recorded merges")

