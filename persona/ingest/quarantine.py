"""Rejected records: kept sealed, tagged by the keyed hashes of identifiers found in them,
so that erasing the person purges them too, and purged after a retention period."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from persona.core import Persona
from persona.errors import ValidationError
from persona.events import from_micros, micros
from persona.pseudonyms import normalise, subject_hash

_AAD = b"persona-quarantine/1"
_EMAIL = re.compile(rb"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,255}\.[A-Za-z]{2,24}")
_PHONE = re.compile(rb"\+?\d[\d \-().]{5,20}\d")
# a phone number in a file's name: an international one, or nine digits or more in a row (a date is neither)
_ORIGIN_PHONE = re.compile(rb"\+\d[\d \-.]{5,}\d|\d{9,}")
# "namespace": "x", "value": "y" pairs, found even in a line too broken to parse
_PAIR = re.compile(rb'"namespace"\s*:\s*"([a-z_]{1,40})"\s*,\s*"value"\s*:\s*"?([^",}]{1,256})')


class Quarantine:
    """Collects rejected records for one ingest run and stores them in batches."""

    def __init__(self, persona: Persona, origin: str, *, clock: Callable[[], datetime]) -> None:
        self.persona = persona
        named = _EMAIL.sub(b"<email>", origin.encode("utf-8", "replace"))
        self.origin = _ORIGIN_PHONE.sub(b"<phone>", named).decode("utf-8", "replace")[:200]
        self.sealer = persona.quarantine_sealer()
        self.secret = persona.keyring.derived("quarantine-content")
        self.clock = clock
        self.keep = timedelta(days=persona.settings.quarantine_days)
        self.rows: list[tuple[int, str, int, str, int, bytes, bytes, int]] = []
        self.tags: list[list[bytes]] = []
        self.count = 0
        self.reasons: dict[str, int] = {}

    def add(self, line: int, raw: bytes, reason: str, decoded: Any = None) -> None:
        # the same bad row ingested again is held once; two identical bad rows are two rows
        where = self.origin.encode() + b"\x00" + str(line).encode() + b"\x00"
        digest = hashlib.blake2b(where + raw, digest_size=16, key=self.secret).digest()
        sealed = self.sealer.seal(raw, _AAD, os.urandom(12))
        now = self.clock()
        self.rows.append((micros(now), self.origin, line, reason, len(raw), sealed, digest, micros(now + self.keep)))
        self.tags.append(sorted(self._identifier_hashes(raw, decoded)))
        self.count += 1
        kind = reason_kind(reason)
        self.reasons[kind] = self.reasons.get(kind, 0) + 1

    def flush(self) -> None:
        if self.rows:
            with self.persona.recorder.transaction():
                self.persona.recorder.quarantine(self.rows, self.tags)
            self.rows, self.tags = [], []

    def _identifier_hashes(self, raw: bytes, decoded: Any) -> set[bytes]:
        pepper = self.persona.keyring.pepper
        region = self.persona.settings.default_region
        found: set[bytes] = set()
        for namespace, value in _candidates(decoded):
            try:
                found.add(subject_hash(pepper, namespace, normalise(namespace, value, region)))
            except ValidationError:
                found.add(subject_hash(pepper, namespace, value.strip().encode("utf-8", "replace").decode()))
        pairs = [(ns.decode(), value.decode("utf-8", "replace")) for ns, value in _PAIR.findall(raw)]
        pairs += [("email", m.decode("ascii", "replace")) for m in _EMAIL.findall(raw)]
        pairs += [("phone", m.decode("ascii", "replace")) for m in _PHONE.findall(raw)]
        for namespace, value in pairs:
            try:
                found.add(subject_hash(pepper, namespace, normalise(namespace, value, region)))
            except ValidationError:
                continue
        return found


def reason_kind(reason: str) -> str:
    """What a refusal is counted under in a report: the field or part it names ("amount: …")."""
    return reason.split(":", 1)[0]


def _candidates(decoded: Any) -> Iterable[tuple[str, str]]:
    """(namespace, value) pairs that look like identifiers in a decoded record."""
    if not isinstance(decoded, dict):
        return
    spots = [decoded.get("subject")]
    data = decoded.get("data")
    if isinstance(data, dict):
        spots.append(data.get("other"))
    named = decoded.get("identifiers")  # a mapped row names its identifiers (persona.ingest.mapping)
    if isinstance(named, list):
        spots.extend(named)
    for spot in spots:
        if isinstance(spot, dict):
            ns, value = spot.get("namespace"), spot.get("value")
            if isinstance(ns, str) and isinstance(value, str | int) and str(value).strip():
                yield ns, str(value)


def open_quarantined(persona: Persona, qid: int) -> bytes | None:
    """The original bytes of a quarantined record, for someone fixing it."""
    sealed = persona.recorder.quarantined_content(qid)
    return None if sealed is None else persona.quarantine_sealer().open(sealed, _AAD)


def describe(persona: Persona) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "origin": r.origin,
            "line": r.line,
            "reason": r.reason,
            "size": r.size,
            "recorded_at": from_micros(r.recorded_at).isoformat(),
            "expires_at": from_micros(r.expires_at).isoformat(),
        }
        for r in persona.recorder.quarantined()
    ]

