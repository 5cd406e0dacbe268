"""Erasure by key deletion, signed receipts, and their entries in the erasure ledger (persona.ledger)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from persona import destinations, identity, purge
from persona.caches import forget_caches
from persona.core import Persona
from persona.crypto import fingerprint, verify_signature
from persona.errors import ErasedError, ReceiptError, UnknownProfileError
from persona.events import from_micros, micros
from persona.ledger import ErasureLedger, LedgerEntry
from persona.models import ERASED_SINCE
from persona.projector import Projector

RECEIPT_TYPE = "persona-erasure-receipt/1"


@dataclass(frozen=True)
class Erasure:
    receipt: dict[str, Any]
    wal_truncated: bool | None  # SQLite: its WAL was truncated at once; None on PostgreSQL (see purge_due_by)
    seconds: float
    purge_due_by: int | None = None  # µs: the physical purge is still to come (persona.purge); None: done


def ledger_of(persona: Persona) -> ErasureLedger:
    """The erasure ledger beside the key file, its lines signed with a key derived from it."""
    return ErasureLedger.of(persona.settings.ledger_path, persona.keyring)


def receipt_message(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def erase_profile(persona: Persona, profile_id: str, *, now: datetime | None = None,
                  reapply: bool = False, checkpoint_wait_s: float = 5.0,
                  notice_wait_s: float = destinations.NOTICE_WAIT_S) -> Erasure:
    """Delete the person's keys, links and derived rows in one transaction; sign a receipt.

    A merged person is erased whole, whichever of their profile ids is given: the key of
    every stream merged into them is deleted (persona.identity).

    The ledger entries are written inside the transaction, before it commits: after a
    crash in between, the ledger names an erasure the database lacks; `persona verify`
    reports it and `persona erase --profile ID` (or a restore) finishes it.
    """
    started = datetime.now(UTC)
    erased_at = micros(now or started)
    rec = persona.recorder
    with rec.transaction():
        person = identity.person_of(rec, profile_id)
        if reapply:  # a ledger entry names one profile: exactly that one (its merges may differ here)
            person = identity.Person(profile_id, (profile_id,))
        heads = rec.heads(person.members)
        if profile_id not in heads:
            raise UnknownProfileError(f"no profile {profile_id}")
        if any(head.wrapped is None for head in heads.values()) or rec.tombstone(profile_id) is not None:
            raise ErasedError(profile_id)
        fingerprints = {}
        for member in person.members:
            head = heads[member]
            assert head.wrapped is not None and head.kek_version is not None
            fingerprints[member] = fingerprint(persona.keyring.unwrap(member, head.kek_version, bytes(head.wrapped)),
                                               b"dek")
        if not reapply:
            ledger = ledger_of(persona)
            for member in person.members:
                ledger.record(LedgerEntry(erased_at, profile_id=member))
        counts: dict[str, int] = {}
        joined = identity.person_of(rec, profile_id).members
        # model versions whose training set held this person: named, and marked for retraining
        trained_on = rec.models_trained_on(sorted(set(person.members) | set(joined)))
        if trained_on:
            rec.mark_models_stale(trained_on, ERASED_SINCE)
        # every destination that received them is sent a deletion notice (queued here, in the erasure)
        notified = destinations.notify_erasure(persona, list(person.members), erased_at)
        for member in person.members:
            for name, count in rec.erase(member, erased_at).items():
                counts[name] = counts.get(name, 0) + count
        rest = [member for member in joined if member not in person.members]
        if rest:  # a replayed erasure took one profile out of a person: the others regroup
            identity.regroup(rec, rest)
        due: int | None = purge.note(persona, now or started)  # the window counts from the erasure's time
    forget_caches(persona, identifiers=False)  # a server drops the rest when it sees the erasure
    if rest:
        Projector(persona).refresh(rest)
    truncated = purged_at = None
    if rec.purges_at_once:  # SQLite: the WAL is truncated now, or the purge stays due (and is retried)
        purged = purge.run(persona, force=True, wait_s=checkpoint_wait_s)
        truncated, due, purged_at = purged.done, None if purged.done else purged.due, purged.finished
    # sent now, for the receipt to say who acknowledged; a re-applied erasure (a restore) only queues
    # them: the restored store's deliveries go when it serves
    notices = destinations.send_notices(persona, person.members, wait_s=0 if reapply else notice_wait_s) \
        if notified else []
    body: dict[str, Any] = {
        "type": RECEIPT_TYPE,
        "profile_id": person.id,
        "erased_at": from_micros(erased_at).isoformat(),
        "counts": counts,
        "key_fingerprint": fingerprints[person.id],
        "signer": fingerprint(persona.keyring.public_key.encode(), b"ed25519"),
    }
    if truncated is not None:
        body["wal_truncated"] = truncated
    if due is not None:  # when the deleted rows' physical purge is due (persona.purge) ...
        body["purge_due_by"] = from_micros(due).isoformat()
    elif purged_at is not None:  # ... or when it was done, at once
        body["purged_at"] = from_micros(purged_at).isoformat()
    if person.merged:  # every key deleted, by profile
        body["merged_profiles"] = {member: fingerprints[member] for member in person.members[1:]}
    if notices:  # each destination that had received them, and whether it acknowledged the deletion
        body["destinations_notified"] = [{"destination": n["destination"], "acknowledged": n["acknowledged"],
                                          "outcome": n["outcome"]} for n in notices]
    if trained_on:
        body["models_to_retrain"] = [f"{name} v{version}" for name, version in trained_on]
    receipt = {"receipt": body, "signature": persona.keyring.sign(receipt_message(body))}
    seconds = (datetime.now(UTC) - started).total_seconds()
    return Erasure(receipt, truncated, seconds, due)


def purge_identifier(persona: Persona, digest: bytes, *, now: datetime | None = None, reapply: bool = False) -> int:
    """Purge quarantined records carrying an identifier that no profile holds."""
    rec = persona.recorder
    with rec.transaction():
        if not reapply:
            entry = LedgerEntry(micros(now or datetime.now(UTC)), purged=digest)
            ledger_of(persona).record(entry)
        purged = rec.purge_tagged([digest])
        if purged:
            purge.note(persona)
    if purged and rec.purges_at_once:
        purge.run(persona, force=True)
    return purged


def erase_subject(persona: Persona, namespace: str, value: str, **kwargs: Any) -> Erasure:
    """Erase whoever this identifier points at; its quarantined records go too."""
    digest = persona.log.hash_identifier(namespace, value)
    profile_id = persona.recorder.resolve([digest]).get(digest)
    if profile_id is None:
        purged = purge_identifier(persona, digest)
        error = UnknownProfileError(
            "no profile is linked to that identifier"
            + (f" ({purged} quarantined record(s) carrying it were purged)" if purged else "")
        )
        error.purged = purged
        raise error
    return erase_profile(persona, profile_id, **kwargs)


def write_receipt(persona: Persona, erasure: Erasure) -> Path:
    folder = persona.settings.data_dir / "receipts"
    folder.mkdir(exist_ok=True)
    path = folder / f"{erasure.receipt['receipt']['profile_id']}.json"
    path.write_bytes(orjson.dumps(erasure.receipt, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def verify_receipt(doc: Any, public_key: str) -> dict[str, Any]:
    """Check a receipt against a published public key; returns its body or raises ReceiptError."""
    shaped = isinstance(doc, dict) and isinstance(doc.get("receipt"), dict) and isinstance(doc.get("signature"), str)
    if not shaped:
        raise ReceiptError("not an erasure receipt: expected {\"receipt\": {...}, \"signature\": \"...\"}")
    body: dict[str, Any] = doc["receipt"]
    if body.get("type") != RECEIPT_TYPE:
        raise ReceiptError(f"not a {RECEIPT_TYPE} document")
    if body.get("signer") != fingerprint(public_key.encode(), b"ed25519"):
        raise ReceiptError("the receipt was signed by a different key than the one given")
    if not verify_signature(public_key, receipt_message(body), doc["signature"]):
        raise ReceiptError("the signature does not match the receipt: it was altered or forged")
    return body


def reapply_ledger(persona: Persona, entries: Iterable[LedgerEntry]) -> list[str]:
    """Erase again every profile these ledger entries name that the database still holds a key
    for, and purge again every identifier's quarantined records. Returns the profiles erased."""
    done = []
    for entry in entries:
        if entry.purged is not None:
            purge_identifier(persona, entry.purged, reapply=True)
        if entry.profile_id is None:
            continue
        head = persona.recorder.heads([entry.profile_id]).get(entry.profile_id)
        if head is not None and head.wrapped is not None:
            erase_profile(persona, entry.profile_id, now=from_micros(entry.erased_at), reapply=True)
            done.append(entry.profile_id)
    return done
