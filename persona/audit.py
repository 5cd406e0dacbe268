"""The audit log: every access to a person's data, whichever door it came through.

An entry says when; who (`writer`: an API token's name, `local:<command>` for the command
line, `-` for a request without a valid token); what (`operation`); whose (`profile_id`, a
pseudonym, or empty for the population and for a request refused before anything was read);
which Profile fields; the outcome (`ok`, or the code the request was refused with); and the
question's shape (`detail`, a JSON object: names of arguments, attributes and features,
counts, ε — never a value a client sent, never an identifier, never a value of anyone's
data). The table is append-only: triggers refuse UPDATE and DELETE on both backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from persona.events import micros
from persona.projections import FEATURES
from persona.projections.profile import CLAIMABLE, DEFAULT_STRATEGIES
from persona.pseudonyms import FIXED_NAMESPACES

if TYPE_CHECKING:  # the store opens with an entry of its own (persona.core): types only, from here
    from persona.core import Persona
    from persona.population import ProfileFilter

OK = "ok"
NO_TOKEN = "-"  # the writer of a request that came without a valid token
REFUSAL_KEYS = 10_000  # distinct (writer, operation, outcome, detail) refusals held between writes
# Names an entry may repeat: the attributes and features persona defines. Anything else a
# client typed where a name goes (an e-mail address as a `groupBy`, say) is written "other".
NAMES = (frozenset(FEATURES.view(FEATURES.initial(), datetime(2000, 1, 1, tzinfo=UTC))) | CLAIMABLE
         | frozenset(DEFAULT_STRATEGIES) | {"consent", "rfm", "rfm_segment"})


class Entry(NamedTuple):
    at: int  # microseconds since the epoch, UTC
    writer: str
    operation: str
    profile_id: str
    fields: str  # comma-separated Profile fields
    outcome: str
    detail: str  # a JSON object: the shape of the question


Row = tuple[int, int, str, str, str, str, str, str]  # seq, at µs, writer, operation, profile, fields, outcome, detail


def now_micros() -> int:
    return micros(datetime.now(UTC))


def shape(**parts: Any) -> str:
    """A detail: the parts given, without the empty ones (None, False, zero, nothing), as compact JSON."""
    return orjson.dumps({k: v for k, v in parts.items() if v not in (None, False, "", [], {}, ())},
                        option=orjson.OPT_SORT_KEYS).decode()


def named(text: object) -> str:
    """A name a client gave, if persona knows it; "other" for anything else."""
    return text if isinstance(text, str) and text in NAMES else "other"


def namespace_of(namespace: str) -> str:
    """An identifier's namespace as an entry may name it (a source's own: "<source>_user")."""
    return namespace if namespace in FIXED_NAMESPACES else "<source>_user"


def filter_shape(where: ProfileFilter | None) -> dict[str, Any] | None:
    """Which kinds of terms a filter used, naming attributes and features, never their values
    (for a feature range: which ends were given, not where they are; for a rule: the names it
    reads, never its text, which holds values)."""
    if where is None:
        return None
    ranges = {named(name): [side for side, given in (("min", lo), ("max", hi)) if given is not None]
              for name, (lo, hi) in where.ranges.items()}
    out = {"segments": len(where.segments), "lifecycleStages": len(where.lifecycle_stages),
           "features": ranges, "attributes": sorted({named(name) for name in where.attributes}),
           "rfmMin": sorted(where.rfm_min),
           "rule": list(where.rule.names) if where.rule else []}  # names of persona.rules' vocabulary only
    return {k: v for k, v in out.items() if v}


def local_entries(command: str, operation: str, profile_ids: Iterable[str] = ("",), *, fields: str = "",
                  outcome: str = OK, **detail: Any) -> list[Entry]:
    at = now_micros()
    text = shape(**detail)
    return [Entry(at, f"local:{command}", operation, pid, fields, outcome, text) for pid in profile_ids]


def record_local(persona: Persona, command: str, operation: str, profile_ids: Iterable[str] = ("",), *,
                 fields: str = "", outcome: str = OK, **detail: Any) -> None:
    """An access by a command of this machine's command line, written at once."""
    write(persona, local_entries(command, operation, profile_ids, fields=fields, outcome=outcome, **detail))


def entries(persona: Persona, *, after: int = 0, limit: int = 1000, profile_id: str | None = None
            ) -> list[tuple[int, int, str, str, str, str, str, str]]:
    """Entries after number `after` (at most `limit`; only those about `profile_id` if given), in
    order: (seq, at µs, writer, operation, profile id, fields, outcome, detail JSON)."""
    return persona.recorder.audit_rows(after=after, limit=limit, profile_id=profile_id)


def latest(persona: Persona, *, before: int | None = None, limit: int = 50, profile_id: str | None = None
           ) -> list[Row]:
    """Entries below number `before` (all if None), the newest first; only about `profile_id` if given."""
    return persona.recorder.audit_latest(before=before, limit=limit, profile_id=profile_id)


def ingest_runs(persona: Persona, *, within: int, limit: int = 20) -> list[Row]:
    """The entries of ingest runs (`persona ingest`, `ingestEvents`: their counts) among the newest
    `within` entries, the newest first."""
    return persona.recorder.audit_ingests(within=within, limit=limit)


MAX_TEXT = 4_096  # characters of one field of an entry; a profile id is 28


def write(persona: Persona, entries: list[Entry]) -> None:
    """Store entries in one transaction. Every field is made storable first (no NUL, which
    PostgreSQL refuses in text, and no field longer than MAX_TEXT), so that one entry can never
    make its whole batch fail again and again and hold up the audit log."""
    if entries:
        with persona.recorder.transaction():
            persona.recorder.append_audit([_storable(e) for e in entries])


def _storable(entry: Entry) -> Entry:
    texts = entry[1:]
    if all(len(t) <= MAX_TEXT and "\x00" not in t for t in texts):
        return entry
    return Entry(entry.at, *(t.replace("\x00", "\ufffd")[:MAX_TEXT] for t in texts))


@dataclass
class AuditBuffer:
    """A server's entries, held briefly and written in batches by its writer thread.

    Accesses are kept one by one. Refusals are counted instead, per writer, operation,
    outcome and detail, and written as one entry with their count (`detail.count`) when
    asked: a client hammering the server without a token adds a few entries, not one per
    request."""

    rows: list[Entry] = field(default_factory=list)
    refusals: dict[tuple[str, str, str, str], list[int]] = field(default_factory=dict)  # -> [first at, count]

    def record(self, writer: str, operation: str, profile_id: str, fields: str = "", detail: str = "{}") -> None:
        self.rows.append(Entry(now_micros(), writer, operation, profile_id, fields, OK, detail))

    def refuse(self, writer: str, operation: str, outcome: str, detail: Mapping[str, Any] | None = None) -> None:
        key = (writer, operation, outcome, shape(**(detail or {})))
        found = self.refusals.get(key)
        if found is None:
            if len(self.refusals) >= REFUSAL_KEYS:
                key = (NO_TOKEN, "*", outcome, "{}")
                found = self.refusals.get(key)
            if found is None:
                found = self.refusals[key] = [now_micros(), 0]
        found[1] += 1

    def take(self, *, refusals: bool = True) -> list[Entry]:
        rows, self.rows = self.rows, []
        if refusals and self.refusals:
            counted, self.refusals = self.refusals, {}
            for (writer, operation, outcome, detail), (at, count) in counted.items():
                parts = orjson.loads(detail) | {"count": count}
                rows.append(Entry(at, writer, operation, "", "", outcome, shape(**parts)))
        return rows

    def put_back(self, rows: list[Entry]) -> None:
        """Entries a write failed to store: kept for the next try, ahead of the newer ones."""
        self.rows[:0] = rows
