"""`Query.operations` (scope operations:read): what an operator watches — ingest runs and their
counts, the quarantine's reasons (never a record's content), webhook destinations and their
deliveries, and the audit log itself. Each part read is audited like any other access."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from persona import audit
from persona import destinations as hooks
from persona.api.context import RequestContext
from persona.api.errors import ApiError
from persona.api.types import later, root_context
from persona.core import Persona
from persona.eventlog import is_profile_id
from persona.events import from_micros
from persona.ingest.quarantine import describe

MAX_FIRST = 200
INGESTS_WITHIN = 200_000  # ingest runs are looked for among this many of the newest audit entries
AuditRow = tuple[int, int, str, str, str, str, str, str]


def _first(first: int) -> int:
    if not 1 <= first <= MAX_FIRST:
        raise ApiError(f"first: between 1 and {MAX_FIRST}")
    return first


@strawberry.type(description="An entry of the audit log: an access to a person's data or to the population, or a"
                             " refusal")
class AuditEntry:
    seq: int
    at: datetime
    writer: str = strawberry.field(description="The token's name, local:COMMAND for the command line, - for none")
    operation: str
    profile_id: str = strawberry.field(description="Whose data (a pseudonym), or empty for the population")
    fields: str
    outcome: str = strawberry.field(description="ok, or the code it was refused with")
    detail: JSON = strawberry.field(description="The question's shape: names and counts, never a value")

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        seq, at, writer, operation, profile_id, fields, outcome, detail = row
        return cls(seq=seq, at=from_micros(at), writer=writer, operation=operation, profile_id=profile_id,
                   fields=fields, outcome=outcome, detail=JSON(orjson.loads(detail)))


@strawberry.type(description="An ingest run (`persona ingest` or ingestEvents), from its audit entry")
class IngestRun:
    seq: int
    at: datetime
    writer: str
    outcome: str = strawberry.field(description="ok, or interrupted (a file's rest is still to be appended)")
    received: int | None = strawberry.field(description="Records sent (ingestEvents; null for a file)")
    appended: int
    duplicates: int
    quarantined: int
    profiles_created: int
    merges: int

    @classmethod
    def of(cls, row: AuditRow) -> IngestRun:
        seq, at, writer, _, _, _, outcome, detail = row
        counts: dict[str, Any] = orjson.loads(detail)

        def count(name: str) -> int:  # an entry leaves out its zeros (persona.audit.shape)
            value = counts.get(name, 0)
            return value if isinstance(value, int) else 0
        received = counts.get("received")  # said by ingestEvents only
        return cls(seq=seq, at=from_micros(at), writer=writer, outcome=outcome,
                   received=received if isinstance(received, int) else None,
                   appended=count("appended"), duplicates=count("duplicates"), quarantined=count("quarantined"),
                   profiles_created=count("profilesCreated"), merges=count("merges"))


@strawberry.type(description="A record ingest refused, kept sealed: its reason, never its content")
class QuarantinedRecord:
    id: int
    recorded_at: datetime
    origin: str = strawberry.field(description="Where it came from: a file's name, stdin, the API")
    line: int
    reason: str
    size: int = strawberry.field(description="Its length in bytes")
    expires_at: datetime = strawberry.field(description="When it is purged unless resolved first")


@strawberry.type(description="A delivery that failed for good (after its retries)")
class DeadLetter:
    delivery: int
    kind: str
    profile_id: str
    segment: str | None
    attempts: int
    outcome: str


@strawberry.type(description="A webhook destination (docs/destinations.md) and its deliveries")
class DestinationStatus:
    name: str
    host: str = strawberry.field(description="The URL's host; the URL itself stays sealed")
    segments: list[str]
    fields: list[str] = strawberry.field(description="The only values its payloads carry")
    on_change: list[str]
    purpose: str | None
    created_at: datetime
    created_by: str
    pending: int
    delivered: int
    skipped: int
    dead: int
    last_delivered_at: datetime | None
    dead_letters: list[DeadLetter] = strawberry.field(description="The newest first, at most 20")

    @classmethod
    def of(cls, found: dict[str, Any]) -> DestinationStatus:
        counts = found["deliveries"]
        return cls(name=found["name"], host=found["host"], segments=found["segments"], fields=found["fields"],
                   on_change=found["on_change"], purpose=found["purpose"],
                   created_at=datetime.fromisoformat(found["created_at"]), created_by=found["created_by"],
                   pending=counts["pending"], delivered=counts["delivered"], skipped=counts["skipped"],
                   dead=counts["dead"], last_delivered_at=None if found["last_delivered_at"] is None else
                   datetime.fromisoformat(found["last_delivered_at"]),
                   dead_letters=[DeadLetter(**letter) for letter in found["dead_letters"]])


@strawberry.type(description="What an operator watches (scope operations:read); each part read is audited")
class Operations:
    @strawberry.field(description="The latest ingest runs, newest first, with their counts (looked for among the"
                                  " newest 200,000 audit entries)")
    def ingest_runs(self, info: Info[RequestContext, None], first: int = 20) -> list[IngestRun]:
        size = _first(first)
        ctx = root_context(info)
        ctx.audit("operations.ingestRuns", fields="", first=size)

        def read(persona: Persona) -> list[IngestRun]:
            return [IngestRun.of(r) for r in audit.ingest_runs(persona, within=INGESTS_WITHIN, limit=size)]
        return later(ctx.state.scanner.run(read))

    @strawberry.field(description="Quarantined records, newest first: where from, why, how large, until when")
    def quarantine(self, info: Info[RequestContext, None], first: int = 50) -> list[QuarantinedRecord]:
        size = _first(first)
        ctx = root_context(info)
        ctx.audit("operations.quarantine", fields="", first=size)

        def read(persona: Persona) -> list[QuarantinedRecord]:
            rows = sorted(describe(persona), key=lambda r: -r["id"])[:size]
            return [QuarantinedRecord(id=r["id"], recorded_at=datetime.fromisoformat(r["recorded_at"]),
                                      origin=r["origin"], line=r["line"], reason=r["reason"], size=r["size"],
                                      expires_at=datetime.fromisoformat(r["expires_at"])) for r in rows]
        return later(ctx.state.scanner.run(read))

    @strawberry.field(description="Every webhook destination: what it follows and was granted, its deliveries by"
                                  " status, its dead letters")
    def destinations(self, info: Info[RequestContext, None]) -> list[DestinationStatus]:
        ctx = root_context(info)
        ctx.audit("operations.destinations", fields="")
        return later(ctx.state.scanner.run(
            lambda persona: [DestinationStatus.of(d) for d in hooks.status(persona)]))

    @strawberry.field(description="Audit entries, newest first, below number `before`; only those about `profileId`"
                                  " if given")
    def audit(self, info: Info[RequestContext, None], first: int = 50, before: int | None = None,
              profile_id: strawberry.ID | None = None) -> list[AuditEntry]:
        size = _first(first)
        if profile_id is not None and not is_profile_id(str(profile_id)):
            raise ApiError("profileId: not a profile id (prf_ and 24 letters and digits)")
        ctx = root_context(info)
        ctx.audit("operations.audit", str(profile_id or ""), fields="", first=size, before=before is not None)

        def read(persona: Persona) -> list[AuditEntry]:
            rows = audit.latest(persona, before=before, limit=size,
                                profile_id=None if profile_id is None else str(profile_id))
            return [AuditEntry.of(r) for r in rows]
        return later(ctx.state.scanner.run(read))
