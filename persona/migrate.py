"""Migrating a whole store between backends: ciphertext as it is, wrapped keys as they are.
The copy itself is persona.store.copy; this module opens the stores, checks the copy with the
key file, and audits it.

`persona migrate --from sqlite:DIR --to postgresql://...` (or back) copies every table in
one read snapshot of the source and one transaction on the target, then checks that the
two hold the same number of rows of each table and that every hash chain of the copy
verifies and every live event still opens with its key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from persona.audit import local_entries
from persona.core import Persona, load_keyring
from persona.integrity import KEY_PURPOSE, Tagger
from persona.settings import Settings
from persona.store import open_store
from persona.store.copy import check_copy, copy_store
from persona.verify import verify


@dataclass
class MigrateReport:
    rows: dict[str, int] = field(default_factory=dict)  # copied, per table
    events: int = 0  # checked: chains verified
    opened: int = 0  # checked: live events opened with their keys


def migrate(settings: Settings, source_spec: str, target_spec: str,
            progress: Callable[[str, int], None] | None = None) -> MigrateReport:
    """Copy the store at `source_spec` into a new one at `target_spec`, then check the copy:
    row counts of every table, every hash chain, every live event opened (with the keyring
    of `settings`, which must be the store's)."""
    keyring = load_keyring(settings)
    source = open_store(source_spec)
    try:
        Persona(settings, keyring, source).log.check_keyring()  # the wrong key file fails before any copy
        target = open_store(target_spec, create=True)
        try:
            report = MigrateReport(rows=copy_store(source, target, progress))
            check_copy(report.rows, target)
            copy = Persona(settings, keyring, target)
            copy.log.check_keyring()
            checked = verify(copy)
            report.events, report.opened = checked.events, checked.opened
        finally:
            target.close()
    finally:
        source.close()
    return report


def audit(settings: Settings, spec: str, outcome: str, **detail: Any) -> None:
    """An entry in the audit log of the store at `spec`: `persona migrate` read every person's data
    out of the source (and made the target: its own log says how). Tagged under the key file of
    `settings`, as every audit entry is (persona.integrity)."""
    store = open_store(spec)
    try:
        store.tagger = Tagger(load_keyring(settings).derived(KEY_PURPOSE))
        with store.transaction():
            store.append_audit(local_entries("migrate", "migrate", outcome=outcome, **detail))
    finally:
        store.close()
