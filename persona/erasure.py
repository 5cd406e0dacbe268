"""Erasure by key deletion, signed receipts, and the erasure ledger kept beside the key file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from persona.core import Persona
from persona.crypto import fingerprint, verify_signature
from persona.errors import ErasedError, ReceiptError, UnknownProfileError
from persona.eventlog import from_micros, micros

RECEIPT_TYPE = "persona-erasure-receipt/1"


@dataclass(frozen=True)
class Erasure:
    receipt: dict[str, Any]
    wal_truncated: bool
    seconds: float


class ErasureLedger:
    """Profile ids and erasure times, one JSON object a line, fsynced: nothing personal.

    It lives beside the key file, outside the database, so that a restored backup
    can be brought up to date with every erasure made after it was taken.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, profile_id: str, erased_at: int) -> None:
        line = orjson.dumps({"profile_id": profile_id, "erased_at": from_micros(erased_at).isoformat()}) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[tuple[str, int]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            if line.strip():
                doc = orjson.loads(line)
                out.append((doc["profile_id"], micros(datetime.fromisoformat(doc["erased_at"]))))
        return out


def receipt_message(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def erase_profile(persona: Persona, profile_id: str, *, now: datetime | None = None,
                  reapply: bool = False, checkpoint_wait_s: float = 5.0) -> Erasure:
    """Delete the profile's key, links and derived rows in one transaction; sign a receipt.

    The ledger entry is written before the database commits: a crash in between
    leaves an erasure that the next restore (or `persona verify`) finishes.
    """
    started = datetime.now(UTC)
    now = now or started
    rec = persona.recorder
    head = rec.heads([profile_id]).get(profile_id)
    if head is None:
        raise UnknownProfileError(f"no profile {profile_id}")
    if head.wrapped is None or rec.tombstone(profile_id) is not None:
        raise ErasedError(profile_id)
    assert head.kek_version is not None
    dek = persona.keyring.unwrap(profile_id, head.kek_version, bytes(head.wrapped))
    key_fingerprint = fingerprint(dek, b"dek")
    erased_at = micros(now)
    if not reapply:
        ErasureLedger(persona.settings.ledger_path).record(profile_id, erased_at)
    with rec.transaction():
        counts = rec.erase(profile_id, erased_at)
    persona.log.forget_cached_keys()
    truncated = rec.checkpoint(checkpoint_wait_s)
    body = {
        "type": RECEIPT_TYPE,
        "profile_id": profile_id,
        "erased_at": from_micros(erased_at).isoformat(),
        "counts": counts,
        "key_fingerprint": key_fingerprint,
        "wal_truncated": truncated,
        "signer": fingerprint(persona.keyring.public_key.encode(), b"ed25519"),
    }
    receipt = {"receipt": body, "signature": persona.keyring.sign(receipt_message(body))}
    seconds = (datetime.now(UTC) - started).total_seconds()
    return Erasure(receipt, truncated, seconds)


def erase_subject(persona: Persona, namespace: str, value: str, **kwargs: Any) -> Erasure:
    """Erase whoever this identifier points at; its quarantined records go too."""
    digest = persona.log.hash_identifier(namespace, value)
    profile_id = persona.recorder.resolve([digest]).get(digest)
    if profile_id is None:
        with persona.recorder.transaction():
            purged = persona.recorder.purge_tagged([digest])
        persona.recorder.checkpoint()
        raise UnknownProfileError(
            "no profile is linked to that identifier"
            + (f" ({purged} quarantined record(s) carrying it were purged)" if purged else "")
        )
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


def reapply_ledger(persona: Persona) -> list[str]:
    """Erase again every profile the ledger names that the database still holds a key for."""
    done = []
    for profile_id, erased_at in ErasureLedger(persona.settings.ledger_path).entries():
        head = persona.recorder.heads([profile_id]).get(profile_id)
        if head is not None and head.wrapped is not None:
            erase_profile(persona, profile_id, now=from_micros(erased_at), reapply=True)
            done.append(profile_id)
    return done
