"""The GraphQL schema: its roots (Query, Mutation, Subscription) over persona.api.types.

Access is checked before execution, per field, from the document (persona.api.plan);
operations run by strawberry itself (websocket subscriptions) are checked by
`WebsocketGuard` the same way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Annotated, Any

import orjson
import strawberry
from graphql import FragmentDefinitionNode, GraphQLError, GraphQLObjectType, get_operation_ast
from strawberry.extensions import MaskErrors, MaxTokensLimiter, SchemaExtension
from strawberry.scalars import JSON
from strawberry.schema.schema import validate_document
from strawberry.types import Info

from persona import audit, memberships
from persona.api.context import ANYONE, RequestContext
from persona.api.data import ProfileData, decode_cursor, encode_cursor, load_past_profile
from persona.api.errors import ApiError, fault, known, request_values, schema_names, scrub
from persona.api.event_types import EVENT_CLASSES, OtherEvent
from persona.api.execution import mark_plain
from persona.api.operations import Operations
from persona.api.plan import EXACT_SCOPE, Limits
from persona.api.scans import insights_scan, listing_scan
from persona.api.typed import counts
from persona.api.types import (
    MAX_HISTORY_DAYS,
    DestinationNotice,
    ErasureReceipt,
    EventInput,
    HistogramBin,
    IngestResult,
    InsightGroup,
    Insights,
    MintedToken,
    Model,
    PageInfo,
    Profile,
    ProfileConnection,
    ProfileEdge,
    ProfileFilter,
    Segment,
    SegmentChange,
    SubjectInput,
    context_of,
    instant,
    later,
    page_size,
    root_context,
)
from persona.caches import forget_caches
from persona.core import Persona
from persona.errors import ErasedError, UnknownProfileError, ValidationError
from persona.events import Writer, valid_source
from persona.ingest import IngestReport
from persona.ingest.jsonl import ingest_jsonl
from persona.insights import RFM_GROUPS, check_exact, mechanism
from persona.models.tasks import parse_horizon, parse_task
from persona.population import list_profiles
from persona.reading import person_rows
from persona.recommend import NAME as RECOMMENDER
from persona.rules import RuleError, compile_rule
from persona.services.people import erase, link_identities, unlink_identities
from persona.tokens import MINT_TTL_S, MINTABLE, mint_token, spend_privacy_budget


# -- the roots ---------------------------------------------------------------------------------
def _resolve_subject(ctx: RequestContext, subject: SubjectInput) -> str | None:
    try:
        return ctx.state.persona.log.profile_for(subject.namespace, subject.value)
    except ValidationError as e:
        raise ApiError(f"subject: {e.reason}") from None


def _one_of(id: strawberry.ID | None, subject: SubjectInput | None) -> None:
    if (id is None) == (subject is None):
        raise ApiError("give exactly one of id and subject")


def load_profile(ctx: RequestContext, profile_id: str, operation: str, **detail: Any) -> Profile | None:
    """The current profile, from the read model (the request's loader); `detail` for the audit log."""
    data = ctx.profiles.get(profile_id)
    ctx.check_bound(data.id if data is not None else "")  # a minted token: its person, or FORBIDDEN
    if data is None:
        return None
    ctx.audit(operation, data.id, **detail)
    return Profile(id=strawberry.ID(data.id), _data=data)  # a merged profile's id: its person's


async def load_past(ctx: RequestContext, profile_id: str, as_of: datetime, **detail: Any) -> Profile | None:
    """The profile as it stood then: its log replayed on a scanner thread."""
    data = await ctx.state.scanner.run(load_past_profile, profile_id, as_of)
    ctx.check_bound(data.id if data is not None else "")
    if data is None:
        return None
    ctx.audit("profile", data.id, asOf=True, **detail)
    return Profile(id=strawberry.ID(data.id), _data=data, _as_of=as_of)


CHANGES_PAGE = 1_000  # segment changes read at a time by a segmentChanged subscription


@strawberry.type
class Query:
    @strawberry.field(description="One profile, by id or by an identifier; null if unknown or erased")
    def profile(self, info: Info[RequestContext, None], id: strawberry.ID | None = None,
                subject: SubjectInput | None = None, as_of: datetime | None = None) -> Profile | None:
        ctx = root_context(info)
        _one_of(id, subject)
        profile_id = str(id) if id is not None else _resolve_subject(ctx, subject)  # type: ignore[arg-type]
        if profile_id is None:
            return None
        moment = instant(as_of, "asOf")
        by = {"subject": audit.namespace_of(subject.namespace)} if subject is not None else {}
        if moment is None:
            return load_profile(ctx, profile_id, "profile", **by)
        return later(load_past(ctx, profile_id, moment, **by))

    @strawberry.field(description="Profiles in id order, filtered; Relay-style cursor pagination")
    async def profiles(self, info: Info[RequestContext, None], first: int | None = None, after: str | None = None,
                       filter: ProfileFilter | None = None, as_of: datetime | None = None) -> ProfileConnection:
        ctx = root_context(info)
        size = page_size(first, ctx)
        start = decode_cursor("p", after) if after is not None else None
        moment = instant(as_of, "asOf")
        where = filter.to_filter() if filter is not None else None
        # a past instant replays every log it meets: off the event loop; a filter may scan the whole
        # index: a population scan, in its token's turn (RFM ranks today's population only)
        if where is not None:
            found = await ctx.scan(listing_scan, where, size + 1, start, moment, moment is None)
        else:
            found = await ctx.state.scanner.run(
                lambda persona: list_profiles(persona, where, first=size + 1, after=start, as_of=moment,
                                              rfm_scores=moment is None))
        page = found[:size]
        ctx.announce([p.id for p in page])
        edges = []
        shown = audit.filter_shape(where)
        for indexed in page:
            ctx.audit("profiles", indexed.id, filter=shown, asOf=moment is not None)
            node = Profile(id=strawberry.ID(indexed.id), _data=ProfileData.of(indexed), _as_of=moment)
            edges.append(ProfileEdge(cursor=encode_cursor("p", indexed.id), node=node))
        end = edges[-1].cursor if edges else None
        return ProfileConnection(edges=edges, page_info=PageInfo(has_next_page=len(found) > size, end_cursor=end))

    @strawberry.field(description="Population aggregates: differentially private with epsilon (charged to the"
                                  " token's ε and δ budgets); exact and k-anonymous without (scope insights:exact)")
    async def insights(self, info: Info[RequestContext, None], group_by: list[str] | None = None,
                       metric: str | None = None, filter: ProfileFilter | None = None,
                       epsilon: float | None = None, bounds: list[float] | None = None) -> Insights:
        ctx = root_context(info)
        if epsilon is None and (ctx.token is None or EXACT_SCOPE not in ctx.token.scopes):
            # the plan refuses this when the document says so; a variable's value is known only here
            raise ApiError(f"the token lacks the scope(s): {EXACT_SCOPE} (exact insights: ask with epsilon for a"
                           " differentially private answer)", "FORBIDDEN")
        by = tuple(group_by or ("lifecycle_stage",))
        if len(by) > 3:
            raise ApiError("groupBy: at most 3 dimensions")
        if epsilon is not None and RFM_GROUPS.keys() & set(by):
            raise ApiError("groupBy: RFM scores cannot group a differentially private answer (one person moves many"
                           " people's scores); ask for an exact, k-anonymous answer")
        if bounds is not None and (len(bounds) != 2 or not all(math.isfinite(b) for b in bounds)):
            raise ApiError("bounds: give [lowest, highest]")
        where = filter.to_filter() if filter is not None else None
        if where is not None and where.rule is not None:
            # a rule compares values (a threshold moved a step at a time singles out one person) and
            # may read RFM scores: insights take the terms whose privacy accounting is known
            raise ApiError("filter.rule: not accepted by insights (a rule's comparisons could single out a person);"
                           " filter with segments, lifecycleStages, features or attributes")
        if epsilon is not None and where is not None and (where.rfm_min or any(
                s.startswith("rfm:") or s == "high_value" for s in where.segments)):
            # RFM scores rank people against each other: one person can move many scores, so
            # counts filtered on them have no bounded sensitivity and noise would promise nothing
            raise ApiError("filter: RFM scores and segments cannot filter a differentially private answer")
        if epsilon is None and where is not None and where.ranges:
            # a numeric range moved a step at a time adds or drops one person at a time (bisection):
            # two exact answers then differ by that person alone, their value or their group
            raise ApiError("filter.features: numeric ranges cannot filter an exact answer (moved a step at a time they"
                           " single out one person); ask with epsilon for a differentially private answer")
        clip = (bounds[0], bounds[1]) if bounds is not None else None
        k = ctx.state.options.k_anonymity
        charged: tuple[float, float] | None = None
        if epsilon is None:
            check_exact(metric, clip)
        else:
            # built and costed (ε and δ, from OpenDP's privacy maps) before anything is read or
            # charged; charged before anything is computed
            measured = await ctx.state.scanner.run(
                lambda _: mechanism(metric=metric, epsilon=epsilon, k=k, bounds=clip))
            charged = measured.epsilon, measured.delta
        ctx.audit_ready()
        remaining: tuple[float, float] | None = None
        async with ctx.scanning():  # this token's turn (or a refusal) before anything is charged
            if charged is not None:
                remaining = await ctx.state.writer.run(spend_privacy_budget, ctx.name, *charged)
                if remaining is None:
                    raise ApiError("the token's privacy budget (ε or δ) is spent; ask for a new token",
                                   "BUDGET_EXHAUSTED")
            # the question's shape, never its values: names persona knows, kinds of filter terms, ε
            ctx.record("insights", fields="", groupBy=[audit.named(g) for g in by],
                       metric=audit.named(metric) if metric else None, filter=audit.filter_shape(where),
                       epsilon=epsilon, charged=list(charged) if charged else None, bounds=clip is not None)
            # computed in a scan process (the mechanism built again there from the same question)
            found: tuple[Any, int] = await ctx.state.scans.run(insights_scan, where, by, metric, k, clip, epsilon,
                                                               charged)
            result, ctx.state.population = found
        groups = [InsightGroup(key=JSON(g.key), count=g.count, mean=g.mean,
                               distribution=[HistogramBin(start=a, end=b, count=c) for a, b, c in g.histogram])
                  for g in result.groups]
        return Insights(groups=groups, k=result.k, threshold=round(result.threshold, 2), metric=metric,
                        epsilon=result.epsilon, epsilon_remaining=remaining[0] if remaining else None,
                        delta=result.delta, delta_remaining=remaining[1] if remaining else None)

    @strawberry.field(description="The live segments (docs/segments.md), each with its rule and k-anonymous size")
    async def segments(self, info: Info[RequestContext, None]) -> list[Segment]:
        ctx = root_context(info)
        ctx.audit("segments", fields="")
        found, sizes, history = await ctx.state.scanner.run(_segments)
        k = ctx.state.options.k_anonymity
        return [Segment.of(d, sizes.get(d.name, 0), k, history.get(d.name)) for d in found]

    @strawberry.field(description="What an operator watches: ingest runs, the quarantine, webhook destinations and"
                                  " the audit log (scope operations:read)")
    def operations(self, info: Info[RequestContext, None]) -> Operations:
        root_context(info)
        return Operations()

    @strawberry.field(description="The model registry: every version with held-out metrics beside its baselines,"
                                  " its training window and its last drift measurement")
    async def models(self, info: Info[RequestContext, None], name: str | None = None) -> list[Model]:
        from persona.models import registry  # heavy: loaded when the query runs

        ctx = root_context(info)
        found = await ctx.state.scanner.run(lambda persona: registry.versions(persona, name))
        return [Model.of(v) for v in found]


async def _republish(info: Info[RequestContext, None], operation: str, change: Any, **shape: Any) -> Model:
    """Promote or roll back on the writer (it rescores every profile), audited with its outcome."""
    from persona.models.registry import ModelError  # heavy: loaded when the mutation runs

    ctx = root_context(info)
    ctx.audit_ready()
    try:
        published = await ctx.state.writer.run(change)
    except (ModelError, ValidationError) as e:
        ctx.refused(operation, "BAD_REQUEST", **shape)
        raise ApiError(str(e)) from None
    ctx.record(operation, fields="", **shape, served=published.version.version)
    return Model.of(published.version)


def _segments(persona: Persona) -> tuple[list[memberships.Segment], dict[str, int], dict[str, list[tuple[date, int]]]]:
    days = min(persona.settings.segment_changes_days, MAX_HISTORY_DAYS)  # no further back than changes are kept
    return memberships.definitions(persona), memberships.sizes(persona), memberships.size_history(persona, days)


def _ingest(persona: Persona, lines: list[bytes], origin: str, writer: Writer) -> IngestReport:
    return ingest_jsonl(persona, lines, origin=origin, writer=writer)


def _linker(ctx: RequestContext, operation: str) -> Writer:
    """The writer of a link or unlink: linking says two identifiers are one person, so the token
    needs identity_linked granted explicitly."""
    assert ctx.token is not None
    if not ctx.token.grants("identity_linked"):
        raise ApiError(f"{operation}: the token needs an explicit grant of identity_linked events (its --types"
                       " must name them)", "FORBIDDEN")
    return ctx.token.writer


def _link_source(ctx: RequestContext, source: str | None) -> str:
    """The source a link is written as. A token bound to sources writes as one of them (its only
    one by default; named when it has several), never as another: the binding holds for links as
    for ingestEvents. An unbound token writes as "api" by default, or as the source it names: it
    vouches for none, so no name gains its claims a source's rank."""
    assert ctx.token is not None
    bound = ctx.token.sources
    if source is None:
        if len(bound) > 1:
            raise ApiError("source: the token is bound to several sources: name the one this link is written as")
        return next(iter(bound)) if bound else "api"
    if bound and source not in bound:
        raise ApiError("linkIdentities: the token may not write as this source (it is bound to others: see"
                       " `persona tokens list`)", "FORBIDDEN")
    if not valid_source(source):
        raise ApiError("source: must be a lower-case name such as shop or web ('persona' is reserved)")
    return source


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Append events; invalid ones are quarantined with a reason, never lost")
    async def ingest_events(self, info: Info[RequestContext, None], events: list[EventInput]) -> IngestResult:
        ctx = root_context(info)
        limit = ctx.state.options.max_ingest_events
        if not 1 <= len(events) <= limit:
            raise ApiError(f"events: send between 1 and {limit} events per call")
        token = ctx.token
        assert token is not None
        for n, e in enumerate(events):  # an access refusal, not a bad record: the whole call, nothing quarantined
            refused = token.refusal(e.source, e.type)
            if refused is not None:
                raise ApiError(f"events[{n}]: {refused}; nothing of this call was stored", "FORBIDDEN")
        lines = []
        for e in events:
            raw: dict[str, Any] = {"source": e.source, "type": e.type, "occurred_at": e.occurred_at,
                                   "subject": {"namespace": e.subject.namespace, "value": e.subject.value},
                                   "data": e.data}
            if e.event_id is not None:
                raw["event_id"] = e.event_id
            try:
                lines.append(orjson.dumps(raw))
            except orjson.JSONEncodeError:
                raise ApiError(f"events[{len(lines)}].data: not storable as JSON (an integer beyond 64 bits, or"
                               " nesting deeper than 254 levels); nothing of this call was stored") from None
        ctx.audit_ready()
        report = await ctx.state.writer.run(_ingest, lines, f"api:{ctx.name}", token.writer)
        ctx.record("ingestEvents", fields="", received=len(events), appended=report.appended,
                   duplicates=report.duplicates, quarantined=report.quarantined,
                   profilesCreated=report.profiles_created, merges=report.merges)
        for changed in report.changed:  # whose logs grew: pseudonyms only
            ctx.record("ingestEvents", changed, fields="")
        ctx.state.bus.changed(list(report.changed))
        if report.appended:
            ctx.state.rfm.changed()  # scored again within RFM_EVERY_S, on the writer thread
        return IngestResult(received=len(events), appended=report.appended, duplicates=report.duplicates,
                            quarantined=report.quarantined, profiles_created=report.profiles_created,
                            merges=report.merges, quarantine_reasons=JSON(report.quarantine_reasons),
                            quarantined_by=counts(report.quarantine_reasons))

    @strawberry.mutation(description="Erase a person: their key is deleted, their history unreadable everywhere")
    async def erase_profile(self, info: Info[RequestContext, None], id: strawberry.ID | None = None,
                            subject: SubjectInput | None = None) -> ErasureReceipt:
        ctx = root_context(info)
        _one_of(id, subject)
        who = (subject.namespace, subject.value) if subject is not None else None
        by = {"subject": audit.namespace_of(subject.namespace)} if subject is not None else {}
        ctx.audit_ready()
        try:
            # on a thread of its own: its deletion notices wait on the network, never the writer
            erasure = await ctx.state.eraser.run(
                lambda persona: erase(persona, profile_id=str(id) if id is not None else None, subject=who))
        except (UnknownProfileError, ErasedError) as e:  # a subject's quarantined records may be purged all the same
            purged = e.purged if isinstance(e, UnknownProfileError) else 0
            ctx.refused("eraseProfile", "NOT_FOUND", quarantinePurged=purged, **by)
            raise ApiError("no such profile (unknown, or erased already)", "NOT_FOUND") from None
        body = erasure.receipt["receipt"]
        merged = list(body.get("merged_profiles", {}))
        for pid in [body["profile_id"], *merged]:
            ctx.record("eraseProfile", pid, fields="", **by)
        for pid in [body["profile_id"], *merged]:
            ctx.state.projector.forget(pid)
        forget_caches(ctx.state.persona, identifiers=False)  # the rest when the flusher sees the erasure
        ctx.state.bus.changed([body["profile_id"], *merged])
        return ErasureReceipt(profile_id=body["profile_id"], merged_profiles=merged,
                              erased_at=datetime.fromisoformat(body["erased_at"]),
                              key_fingerprint=body["key_fingerprint"], wal_truncated=body.get("wal_truncated"),
                              purged_at=_instant(body.get("purged_at")),
                              purge_due_by=_instant(body.get("purge_due_by")),
                              counts=body["counts"], deleted=counts(body["counts"]),
                              destinations_notified=[DestinationNotice(**n)
                                                     for n in body.get("destinations_notified", [])],
                              signature=erasure.receipt["signature"],
                              receipt=JSON(erasure.receipt))


    @strawberry.mutation(description="Train a model on point-in-time features (names: purchases_next_91d, churn_91d,"
                                     " clv_91d, days_to_next_purchase, next_category) and store the version; it is"
                                     " promoted and every profile scored when it beats its best baseline and is no"
                                     " worse on the task's headline metric (else `why` says what it lacks)")
    async def train_model(self, info: Info[RequestContext, None], name: str, horizon: str | None = None,
                          cutoffs: list[datetime] | None = None) -> Model:
        from persona.models.registry import ModelError  # heavy: loaded when the mutation runs
        from persona.services.models import UnfittableError, train_and_publish  # heavy: as above

        ctx = root_context(info)
        if cutoffs is not None and len(cutoffs) > 12:
            raise ApiError("cutoffs: at most 12")
        if name != RECOMMENDER:
            parse_task(name, horizon)  # a name that is no task is refused before anything is read
        elif horizon is not None:
            parse_horizon(horizon)
        shape: dict[str, Any] = {"model": name, "horizon": horizon is not None, "cutoffs": len(cutoffs or ())}
        ctx.audit_ready()  # recorded once it has run, with its outcome
        try:
            version = (await ctx.state.writer.run(train_and_publish, name, horizon, cutoffs)).version
        except ModelError as e:
            ctx.refused("trainModel", "BAD_REQUEST", **shape)
            raise ApiError(str(e)) from None
        except (UnfittableError, ValueError, ArithmeticError):  # scikit-learn or SciPy refusing these rows
            ctx.refused("trainModel", "BAD_REQUEST", **shape)
            raise ApiError("the model could not be fitted on these rows; try other cutoffs or a longer history"
                           ) from None
        except BaseException as e:  # refused with the code the client is told (a ValidationError's), or FAILED
            told = known(e)
            ctx.refused("trainModel", told[1] if told is not None else "FAILED", **shape)
            raise
        ctx.record("trainModel", fields="", **shape, version=version.version, promoted=version.status == "promoted")
        return Model.of(version)

    @strawberry.mutation(description="Serve a version of a model (its registry entry says which), and score every"
                                     " profile with it")
    async def promote_model(self, info: Info[RequestContext, None], name: str, version: int) -> Model:
        from persona.services.models import promote  # heavy: loaded when the mutation runs

        return await _republish(info, "promoteModel", lambda persona: promote(persona, name, version),
                                model=name, version=version)

    @strawberry.mutation(description="Serve again the version of a model promoted before the current one (marked"
                                     " rolled_back), and score every profile with it")
    async def rollback_model(self, info: Info[RequestContext, None], name: str) -> Model:
        from persona.services.models import rollback  # heavy: loaded when the mutation runs

        return await _republish(info, "rollbackModel", lambda persona: rollback(persona, name), model=name)

    @strawberry.mutation(description="Mint a short-lived token for one person's own page: it reads that person's"
                                     " profile only (their features, attributes, consent, live segments and, with"
                                     " predictions:read, predictions), never their history or anyone else, until it"
                                     " expires or they are erased")
    async def mint_token(self, info: Info[RequestContext, None], id: strawberry.ID | None = None,
                         subject: SubjectInput | None = None,
                         ttl_seconds: Annotated[int, strawberry.argument(
                             description="How long it works: 60 to 86,400 seconds")] = 900,
                         scopes: Annotated[list[str] | None, strawberry.argument(
                             description="profiles:read (the default) and/or predictions:read: no more than the"
                                         " minting token holds")] = None) -> MintedToken:
        ctx = root_context(info)
        _one_of(id, subject)
        assert ctx.token is not None
        wanted = frozenset(scopes or ("profiles:read",))
        if len(wanted) > len(MINTABLE) or wanted - MINTABLE:
            raise ApiError(f"scopes: a minted token may read only {', '.join(sorted(MINTABLE))}")
        if wanted - ctx.token.scopes:
            raise ApiError("scopes: the minting token lacks a scope it would grant", "FORBIDDEN")
        if not MINT_TTL_S[0] <= ttl_seconds <= MINT_TTL_S[1]:
            raise ApiError(f"ttlSeconds: from {MINT_TTL_S[0]} to {MINT_TTL_S[1]}")
        profile_id = str(id) if id is not None else _resolve_subject(ctx, subject)  # type: ignore[arg-type]
        data = ctx.profiles.get(profile_id) if profile_id is not None else None
        if data is None:
            raise ApiError("no such profile (unknown, or erased)", "NOT_FOUND")
        ctx.audit_ready()
        minter = ctx.token
        minted = await ctx.state.writer.run(
            lambda persona: mint_token(persona, minter, data.id, ttl_s=ttl_seconds, scopes=wanted))
        by = {"subject": audit.namespace_of(subject.namespace)} if subject is not None else {}
        ctx.record("mintToken", data.id, fields="", minted=minted.name, scopes=sorted(wanted), ttl=ttl_seconds, **by)
        return MintedToken(token=minted.token, name=minted.name, profile_id=strawberry.ID(data.id),
                           scopes=sorted(wanted), expires_at=minted.expires_at)

    @strawberry.mutation(description="Define a live segment by a rule (docs/segments.md) and find its members now;"
                                     " from then on every ingest keeps them current")
    async def create_segment(self, info: Info[RequestContext, None], name: str, rule: str) -> Segment:
        ctx = root_context(info)
        try:
            memberships.check_name(name)
            compiled = compile_rule(rule)
        except RuleError as e:
            raise ApiError(e.reason) from None
        except memberships.SegmentError as e:
            raise ApiError(f"name: {e.reason}") from None
        ctx.audit_ready()
        by = f"token:{ctx.name}"
        try:
            # its first sweep reads the whole index: on the sweeper's thread, never in the writer's way
            made = await ctx.state.sweeper.run(lambda persona: memberships.add_segment(persona, name, rule, by=by))
        except memberships.SegmentError as e:
            ctx.refused("createSegment", "BAD_REQUEST", segment=name)
            raise ApiError(e.reason) from None
        ctx.record("createSegment", fields="", segment=name, names=list(compiled.names))
        ctx.state.bus.changed([ANYONE])
        _, sizes, history = await ctx.state.scanner.run(_segments)
        return Segment.of(made, sizes.get(name, 0), ctx.state.options.k_anonymity, history.get(name))

    @strawberry.mutation(description="Remove a live segment, its memberships and its changes; false if there was"
                                     " none of that name")
    async def delete_segment(self, info: Info[RequestContext, None], name: str) -> bool:
        ctx = root_context(info)
        ctx.audit_ready()
        try:
            await ctx.state.writer.run(lambda persona: memberships.remove_segment(persona, name))
        except memberships.SegmentError:
            return False
        ctx.record("deleteSegment", fields="", segment=name)
        return True

    @strawberry.mutation(description="Declare two identifiers one person: if they belong to two profiles, the"
                                     " profiles are merged (undo with unlinkIdentities). One must be known.")
    async def link_identities(self, info: Info[RequestContext, None], a: SubjectInput, b: SubjectInput,
                              source: Annotated[str | None, strawberry.argument(
                                  description="The source the link is written as: one the token is bound to (its"
                                              " only one by default); \"api\" for an unbound token")] = None,
                              ) -> Profile:
        ctx = root_context(info)
        ctx.audit_ready()
        writer = _linker(ctx, "linkIdentities")
        written_as = _link_source(ctx, source)
        linked = await ctx.state.writer.run(link_identities, (a.namespace, a.value), (b.namespace, b.value), writer,
                                            written_as)
        ctx.state.projector.clear()  # cached states were the streams'; the person is read afresh
        ctx.state.bus.changed([linked.person])
        namespaces = sorted({audit.namespace_of(a.namespace), audit.namespace_of(b.namespace)})
        ctx.record("linkIdentities", linked.person, fields="", namespaces=namespaces, merged=linked.merged)
        profile = load_profile(ctx.fresh(), linked.person, "linkIdentities")
        if profile is None:
            raise ApiError("no such profile (erased meanwhile)", "NOT_FOUND")
        return profile

    @strawberry.mutation(description="Undo the merge that joined two identifiers' profiles: both people come back"
                                     " with their own histories. Returns the two profiles.")
    async def unlink_identities(self, info: Info[RequestContext, None], a: SubjectInput,
                                b: SubjectInput) -> list[Profile]:
        ctx = root_context(info)
        ctx.audit_ready()
        writer = _linker(ctx, "unlinkIdentities")
        unlinked = await ctx.state.writer.run(unlink_identities, (a.namespace, a.value), (b.namespace, b.value), writer)
        ctx.state.projector.clear()
        ctx.state.bus.changed(list(unlinked.people))
        namespaces = sorted({audit.namespace_of(a.namespace), audit.namespace_of(b.namespace)})
        for pid in unlinked.people:
            ctx.record("unlinkIdentities", pid, fields="", namespaces=namespaces, mergesUndone=unlinked.merges_undone)
        fresh = ctx.fresh()
        fresh.profiles.want(unlinked.people)
        profiles = [load_profile(fresh, pid, "unlinkIdentities") for pid in unlinked.people]
        return [p for p in profiles if p is not None]


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The profile, each time its log grows; ends when it is erased")
    async def profile_updated(self, info: Info[RequestContext, None], id: strawberry.ID) -> AsyncGenerator[Profile]:
        ctx = context_of(info).authorize(info)
        profile_id = str(id)
        seen = ctx.profiles.get(profile_id)
        ctx.check_bound(seen.id if seen is not None else "")
        if seen is None:
            raise ApiError("no such profile", "NOT_FOUND")
        profile_id, version = seen.id, seen.version  # a merged profile's id: its person's
        with _counted(ctx):
            async for profile in _updates(ctx, profile_id, version):
                yield profile

    @strawberry.subscription(description="Each entry into and exit from the live segments (every one, or those"
                                         " named), in order, from the moment of subscribing; ends when the token is"
                                         " revoked")
    async def segment_changed(self, info: Info[RequestContext, None], segments: list[str] | None = None
                              ) -> AsyncGenerator[SegmentChange]:
        ctx = context_of(info).authorize(info)
        if segments is not None and not 1 <= len(segments) <= memberships.MAX_SEGMENTS:
            raise ApiError(f"segments: name between 1 and {memberships.MAX_SEGMENTS}, or leave it out for all")
        state, wanted = ctx.state, frozenset(segments or ())
        after = await state.scanner.run(memberships.last_change)
        with _counted(ctx):
            while await _woken(ctx, ANYONE):
                while True:  # every change since the last look, a page at a time
                    found = await state.scanner.run(memberships.changes, after, CHANGES_PAGE)
                    for change in found:
                        after = change.seq
                        if wanted and change.segment not in wanted:
                            continue
                        ctx.audit("segmentChanged", change.profile_id, fields="", segment=change.segment,
                                  entered=change.entered)
                        yield SegmentChange(segment=change.segment, profile_id=strawberry.ID(change.profile_id),
                                            entered=change.entered, at=change.at)
                    if len(found) < CHANGES_PAGE:
                        break


@contextmanager
def _counted(ctx: RequestContext) -> Iterator[None]:
    """A subscription open, counted against its token's limit while it lasts."""
    counts, name = ctx.state.subscriptions, ctx.name
    counts[name] = counts.get(name, 0) + 1
    try:
        yield
    finally:
        counts[name] -= 1
        if not counts[name]:
            del counts[name]


async def _woken(ctx: RequestContext, key: str) -> bool:
    """Wait until `key` changes (a profile id, or ANYONE) or the poll interval passes; False once
    the subscription's token is revoked: the subscription ends with it."""
    state = ctx.state
    wake = state.bus.watch(key)
    try:
        await asyncio.wait_for(wake.wait(), timeout=state.options.subscription_poll_s)
    except TimeoutError:
        pass
    finally:
        state.bus.unwatch(key, wake)
    return ctx.raw_token is not None and state.tokens.lookup(ctx.raw_token) is not None


async def _updates(ctx: RequestContext, profile_id: str, version: int) -> AsyncGenerator[Profile]:
    """The profile each time its log grows, until it is erased or the token revoked."""
    state = ctx.state
    while await _woken(ctx, profile_id):
        row = person_rows(state.persona, [profile_id]).get(profile_id)
        if row is None:
            return  # erased: nothing more will come
        if row.id != profile_id:  # merged into another person since: followed there
            profile_id, version = row.id, -1
        if row.version != version:  # grows with each event; a merge undone since can lower it
            profile = load_profile(ctx.fresh(), profile_id, "profileUpdated")
            if profile is None:
                return
            version = profile._data.version
            yield profile


class WebsocketGuard(SchemaExtension):
    """Operations strawberry runs itself (over the websocket) are checked after validation,
    before they start, so that a refusal is a graphql-transport-ws `error` message: only
    subscriptions, with a token whose scopes cover every field, within depth and cost."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if isinstance(context.context, RequestContext) and document is not None:
            # validated here, then checked: strawberry skips its own validation when this has run
            errors = validate_document(context.schema._schema, document, context.validation_rules)
            # the name the client gave, not strawberry's guess (the first operation) when it gave none
            operation = get_operation_ast(document, getattr(context, "_provided_operation_name", None))
            if not errors and operation is None:
                errors = [GraphQLError("name the operation to run (operationName): the document holds several"
                                       " or none by that name", extensions={"code": "BAD_REQUEST"})]
            elif not errors and operation is not None:
                fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
                try:
                    context.context.authorize_operation(operation, fragments, charge=True)
                except ApiError as e:
                    errors = [GraphQLError(str(e), extensions={"code": e.code})]
            context.pre_execution_errors = errors
        yield


def _should_mask(error: GraphQLError) -> bool:
    return error.original_error is not None and known(error.original_error) is None


class _Schema(strawberry.Schema):
    """Operations strawberry runs itself (websocket subscriptions) log errors as the HTTP
    handler does: class and place, never the message or a traceback."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        values = request_values(getattr(execution_context, "graphql_document", None),
                                getattr(execution_context, "variables", None), schema_names(self._schema))
        for error in errors:
            shown = known(error.original_error) if error.original_error is not None else None
            if shown is not None and not isinstance(error.original_error, GraphQLError):
                error.message = shown[0]
                error.extensions = {**(error.extensions or {}), "code": shown[1]}
            error.message = scrub(error.message, values)
            if error.original_error is not None and shown is None:
                reference = fault(error.original_error, error.path)
                error.extensions = {**(error.extensions or {}), "reference": reference}


def _direct_resolvers(built: strawberry.Schema) -> int:
    """Fields that only read their object (an attribute, or a method of `self` alone: synchronous,
    without arguments, permissions or extensions) are resolved directly by graphql-core, skipping
    strawberry's per-field wrapper: the same result for a fraction of the cost, which is
    most of a request that returns many small objects (a history page). Returns how many."""
    count = 0
    for named in built._schema.type_map.values():
        if not isinstance(named, GraphQLObjectType) or named.name.startswith("__"):
            continue
        for graphql_field in named.fields.values():
            field = graphql_field.extensions.get("strawberry-definition")
            if field is None or field.is_subscription or field.arguments:
                continue
            resolver = field.base_resolver
            if resolver is None:  # a plain attribute
                if field.is_basic_field and not field.extensions:
                    graphql_field.resolve = _reading(field.python_name)
                    count += 1
                continue
            if field.permission_classes or field.extensions or resolver.is_async:
                continue
            if resolver.info_parameter or resolver.root_parameter or resolver.parent_parameter:
                continue
            graphql_field.resolve = _calling(resolver.wrapped_func)
            count += 1
    return count


def _reading(name: str) -> Any:
    def resolve(source: Any, info: Any) -> Any:
        return getattr(source, name)

    return mark_plain(resolve)


def _calling(method: Any) -> Any:
    def resolve(source: Any, info: Any) -> Any:
        return method(source)

    return mark_plain(resolve)


MAX_TOKENS = Limits().max_document_bytes // 2  # as the HTTP handler parses: a document's size, in tokens


class _Masked(MaskErrors):
    """A fault in an operation strawberry ran shows as the HTTP handler shows it."""

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        reference = (error.extensions or {}).get("reference", "?")
        return GraphQLError(f"internal error (reference {reference})", nodes=error.nodes, path=error.path,
                            extensions={"code": "INTERNAL"})


schema = _Schema(query=Query, mutation=Mutation, subscription=Subscription, types=[*EVENT_CLASSES.values(), OtherEvent],
                 extensions=[lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS), WebsocketGuard,
                             lambda: _Masked(should_mask_error=_should_mask)])
DIRECT_RESOLVERS = _direct_resolvers(schema)
