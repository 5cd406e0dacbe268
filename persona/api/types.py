"""The GraphQL object and input types. Names here are a contract (tests/snapshots/schema.graphql).

A profile's fields read from the request's loaders (persona.api.context), which batch
every per-profile lookup; most resolvers are plain reads of the object (see
`persona.api.schema._direct_resolvers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from persona.api.context import RequestContext
from persona.api.data import ProfileData, decode_cursor, encode_cursor
from persona.api.errors import ApiError
from persona.api.event_types import Event, Identity, event_node
from persona.api.typed import (
    Attributes,
    AttributeSource,
    Baseline,
    ConsentState,
    Count,
    Drift,
    Features,
    Figure,
    Lift,
    TrainingWindow,
    attribute_sources,
    consent_states,
    finite,
    model_parts,
)
from persona.core import Persona
from persona.errors import ErasedError, UnknownProfileError, ValidationError
from persona.events import from_micros
from persona.memberships import Segment as SegmentDefinition
from persona.population import ProfileFilter as Where
from persona.reading import HistoryPage, history_page
from persona.recommend import NAME
from persona.rules import RuleError, compile_rule

T = TypeVar("T")

DEFAULT_PAGE = 20
MAX_INSTANT = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1)
FILTER_TERMS = 20  # per kind of filter: enough to target, too few to turn a listing into a long scan


def withdrawn(attributes: dict[str, Any], purpose: str) -> bool:
    """The person said no to this purpose (consent never asked is not a no)."""
    given = attributes.get("consent")
    return isinstance(given, dict) and given.get(purpose) is False


def context_of(info: Info[RequestContext, None]) -> RequestContext:
    return info.context


def root_context(info: Info[RequestContext, None]) -> RequestContext:
    """Queries and mutations are checked by the HTTP handler; over a websocket only subscriptions run."""
    ctx: RequestContext = info.context
    if ctx.plan is None:
        raise ApiError("only subscriptions run over a websocket: send queries and mutations by HTTP POST")
    return ctx


def page_size(first: int | None, ctx: RequestContext) -> int:
    limit = ctx.state.options.limits.max_page
    size = DEFAULT_PAGE if first is None else first
    if not 1 <= size <= limit:
        raise ApiError(f"first: must be between 1 and {limit}")
    return size


def _history_cursor(after: str | None) -> tuple[int | None, bool]:
    """(where the next page starts, whether that is a log position): "v" cursors hold a stream
    version, "q" cursors a log position (a merged person's pages)."""
    if after is None:
        return None, False
    try:
        text, kind = decode_cursor("q", after), "q"
    except ValidationError:
        text, kind = decode_cursor("v", after), "v"
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ApiError("after: not a cursor this API handed out")
    return int(text), kind == "q"


def later(pending: Awaitable[T]) -> T:
    """A synchronous resolver handing graphql-core work to await (done off the event loop):
    the fast path stays synchronous, the slow one does not block."""
    return pending  # type: ignore[return-value]


def instant(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ApiError(f"{name}: needs a time zone offset (e.g. 2026-01-31T00:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ApiError(f"{name}: out of range") from None


@strawberry.input(description="An identifier of a person: hashed on arrival, never stored or logged.")
class SubjectInput:
    namespace: str
    value: str


@strawberry.type
class Contribution:
    feature: str
    value: float | None = strawberry.field(description="The feature's value for this person")
    effect: float = strawberry.field(description="How much the prediction moves when this feature is set to its"
                                                 " training median instead (positive: it raised the prediction)")


@strawberry.type
class Prediction:
    model: str
    version: int
    score: float = strawberry.field(description="The predicted count, amount or days; for churn its probability;"
                                                " for next_category the top class's probability")
    label: str | None = strawberry.field(description="The class, for classifiers")
    probabilities: JSON | None = strawberry.field(description="Every class's probability (next_category)",
                                                  deprecation_reason="Use classes: the same, typed")
    classes: list[Figure] | None = strawberry.field(
        description="Every class with its probability, the likeliest first (next_category; null for others)")
    contributions: list[Contribution] = strawberry.field(description="The features that moved it most")
    as_of: datetime = strawberry.field(description="The instant the features were taken at")
    computed_at: datetime


def _classes(probabilities: dict[str, float] | None) -> list[Figure] | None:
    if probabilities is None:
        return None
    ranked = sorted(((label, finite(p)) for label, p in probabilities.items()),
                    key=lambda lp: (lp[1] is None, -(lp[1] or 0.0), lp[0]))  # a null (not a number) last
    return [Figure(name=label, value=p) for label, p in ranked]


def _prediction(d: dict[str, Any]) -> Prediction:
    """A row of the predictions read model (persona.api.data.load_predictions)."""
    return Prediction(model=d["model"], version=d["version"], score=d["value"], label=d["label"],
                      probabilities=d["probabilities"], classes=_classes(d["probabilities"]),
                      contributions=[Contribution(**c) for c in d["contributions"]],
                      as_of=datetime.fromisoformat(d["as_of"]), computed_at=from_micros(d["computed_at"]))


@strawberry.type(description="One of the person's own items behind a recommendation")
class RecommendationReason:
    sku: str
    interaction: str = strawberry.field(description="How they engaged with it most: view, cart, order or review")


@strawberry.type(description="An item the person is likely to want next")
class RecommendedItem:
    sku: str
    category: str | None
    score: float = strawberry.field(description="The model's score: higher is more likely (comparable within a"
                                                " list only)")
    because: str = strawberry.field(description="Why, in words: \"because you viewed X and bought Y\", or the"
                                                " popularity it was picked by")
    reasons: list[RecommendationReason]


@strawberry.type(description="What the person is likely to want next (docs/recommendations.md)")
class Recommendations:
    basis: str = strawberry.field(description="personal; `popular in segment: no history` (no product"
                                              " interactions yet: the items popular with people who like the"
                                              " category they browse most); or `popular: no consent`"
                                              " (personalization consent withdrawn) or `popular: no history`:"
                                              " the items popular overall")
    model: str = strawberry.field(description="The recommender version that made it")
    computed_at: datetime | None = strawberry.field(description="When the read model's list was made (null:"
                                                                " made for this request)")
    items: list[RecommendedItem]


@strawberry.input(description="Which items a list may hold")
class RecommendationContext:
    category: str | None = strawberry.field(default=None, description="Only items of this category")
    exclude_purchased: bool = strawberry.field(default=True, description="Leave out what the person bought")


def _recommendations(found: dict[str, Any]) -> Recommendations:
    """A list as the read model holds it, or as made for the request (persona.recommend.serve)."""
    items: list[RecommendedItem] = []
    for sku, category, score, reasons in found["items"]:
        why = [RecommendationReason(sku=r, interaction=k) for r, k in reasons]
        items.append(RecommendedItem(sku=sku, category=category, score=score, reasons=why,
                                     because=found["because"][len(items)]))
    return Recommendations(basis=found["basis"], model=found["model"],
                           computed_at=None if found.get("computed_at") is None else from_micros(found["computed_at"]),
                           items=items)


@strawberry.type
class Model:
    name: str
    version: int
    status: str = strawberry.field(description="candidate, promoted (serving), retired (replaced) or rolled_back")
    task: str = strawberry.field(description="regression, classification or multiclass; ranking for the recommender")
    family: str = strawberry.field(description="The scikit-learn estimator the search chose")
    created_at: datetime
    promoted_at: datetime | None
    horizon_days: float
    stale: str | None = strawberry.field(description="Why it should be retrained, if it should")
    why: str | None = strawberry.field(description="Why it was kept as a candidate, or served although it falls "
                                                   "short (it must beat its best baseline and not lose on the "
                                                   "headline metric)")
    metrics: JSON = strawberry.field(description="Held-out metrics",
                                     deprecation_reason="Use heldOut: the same metrics, typed")
    baselines: JSON = strawberry.field(description="The same metrics of each naive baseline and BG/NBD, same rows",
                                       deprecation_reason="Use baselineMetrics: the same, typed")
    lift: JSON = strawberry.field(description="The model against its best baseline, by the task's main metric",
                                  deprecation_reason="Use gain: the same, typed")
    window: JSON = strawberry.field(description="Training cutoffs and horizon",
                                    deprecation_reason="Use training: cutoffs, horizon and row counts, typed")
    rows: JSON = strawberry.field(description="Training and test row counts",
                                  deprecation_reason="Use training: cutoffs, horizon and row counts, typed")
    drift: JSON | None = strawberry.field(description="The last drift measurement: PSI per feature, age, reasons",
                                          deprecation_reason="Use lastDrift: the same, typed")
    fingerprint: str = strawberry.field(description="A hash of the training set")
    code: JSON = strawberry.field(description="Versions of persona and the libraries it was trained with",
                                  deprecation_reason="Use libraries: the same, typed")
    held_out: list[Figure] = strawberry.field(description="Held-out metrics of the model")
    baseline_metrics: list[Baseline] = strawberry.field(
        description="The same metrics of each naive baseline and BG/NBD, on the same rows")
    gain: Lift = strawberry.field(description="The model against its best baseline, by the task's main metric")
    training: TrainingWindow
    last_drift: Drift | None = strawberry.field(description="The last drift measurement (null: none yet)")
    libraries: list[str] = strawberry.field(description="persona and the libraries it was trained with, versioned")

    @staticmethod
    def of(v: Any) -> Model:
        m = v.meta
        held_out, baselines, gain, training, drift, libraries = model_parts(m, v.drift)
        return Model(name=v.name, version=v.version, status=v.status, task=m["task"]["kind"],
                     family=m["chosen"]["family"], created_at=v.created_at, promoted_at=v.promoted_at,
                     horizon_days=m["task"]["horizon_days"], stale=v.stale, why=v.why(), metrics=JSON(m["metrics"]),
                     baselines=JSON(m["baselines"]), lift=JSON(m["lift"]), window=JSON(m["window"]),
                     rows=JSON(m["rows"]), drift=JSON(v.drift) if v.drift else None, fingerprint=m["fingerprint"],
                     code=JSON(m["code"]), held_out=held_out, baseline_metrics=baselines, gain=gain,
                     training=training, last_drift=drift, libraries=libraries)


@strawberry.type
class EventEdge:
    cursor: str
    node: Event


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class EventConnection:
    edges: list[EventEdge]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[Event]:
        return [edge.node for edge in self.edges]


def _event_connection(page: HistoryPage) -> EventConnection:
    kind = "q" if page.by_position else "v"
    edges = [EventEdge(cursor=encode_cursor(kind, e.position if page.by_position else e.version),
                       node=event_node(e)) for e in page.events]
    end = edges[-1].cursor if edges else None
    if page.resume_before is not None:
        end = encode_cursor(kind, page.resume_before)
    return EventConnection(edges=edges, page_info=PageInfo(has_next_page=page.has_next, end_cursor=end))


@strawberry.type(description="A person's profile: a projection of their event log.")
class Profile:
    id: strawberry.ID
    _data: strawberry.Private[ProfileData]
    _as_of: strawberry.Private[datetime | None] = None

    @strawberry.field(description="Events in the profile's log (as of `asOf`, the events up to then)")
    def version(self) -> int:
        return self._data.version

    @strawberry.field(description="When the latest event was recorded (null for a profile as of the past)")
    def updated_at(self, info: Info[RequestContext, None]) -> datetime | None:
        if self._as_of is not None:
            return None
        if self._data.updated_at is not None:
            return self._data.updated_at
        return context_of(info).updated.get(self._data.id)

    @strawberry.field(description="Fused attribute values, e.g. {\"city\": \"London\", \"age\": 25}",
                      deprecation_reason="Use attributeValues: a field per attribute, `custom` for the rest")
    def attributes(self) -> JSON:
        return JSON(self._data.attributes)

    @strawberry.field(description="Fused attribute values (as of `asOf`, if given)")
    def attribute_values(self) -> Attributes:
        return Attributes.of(self._data.attributes)

    @strawberry.field(description="Each attribute's fusion strategy and provenance (source, writer, whether the"
                                  " writer vouched for the source, event id, time)",
                      deprecation_reason="Use attributeProvenance: the same, typed")
    def attribute_sources(self, info: Info[RequestContext, None]) -> JSON:
        if self._as_of is not None:
            raise ApiError("attributeSources: available for the current profile only")
        return JSON(context_of(info).sources.get(self._data.id))

    @strawberry.field(description="Each attribute's fused value, the rule that fused it and the claims behind it"
                                  " (source, writer, whether the writer vouched for the source, event id, time);"
                                  " consent as consent.PURPOSE")
    def attribute_provenance(self, info: Info[RequestContext, None]) -> list[AttributeSource]:
        if self._as_of is not None:
            raise ApiError("attributeProvenance: available for the current profile only")
        return attribute_sources(context_of(info).sources.get(self._data.id))

    @strawberry.field(description="Behaviour features at the question's instant (recency, frequency, …)",
                      deprecation_reason="Use featureValues: a field per feature")
    def features(self) -> JSON:
        return JSON(self._data.features | {"rfm": self._data.rfm})

    @strawberry.field(description="Behaviour features at the question's instant (as of `asOf`, if given)")
    def feature_values(self) -> Features:
        return Features.of(self._data.features, self._data.rfm)

    @strawberry.field(description="Named groups the profile belongs to (see docs/api.md)")
    def segments(self) -> list[str]:
        return self._data.segments

    @strawberry.field(description="The live segments the person is in now (Query.segments), each with when they"
                                  " entered it")
    def live_segments(self, info: Info[RequestContext, None]) -> list[SegmentMembership]:
        if self._as_of is not None:  # membership is kept for the present; the past is a rule filter with asOf
            raise ApiError("liveSegments: available for the current profile only")
        return [SegmentMembership(segment=m.segment, since=m.since)
                for m in context_of(info).segments.get(self._data.id)]

    @strawberry.field(description="Each consent purpose's current state (granted, withdrawn or never asked), with"
                                  " when and from which source the consent in force came")
    def consent(self, info: Info[RequestContext, None]) -> list[ConsentState]:
        if self._as_of is not None:
            raise ApiError("consent: available for the current profile only (attributeValues.consent holds the"
                           " values as of asOf)")
        return consent_states(context_of(info).sources.get(self._data.id))

    @strawberry.field(description="Predictions of the promoted models (the batch-scored read model), each with"
                                  " the features behind it; none for a person who withdrew personalization consent")
    def predictions(self, info: Info[RequestContext, None], models: list[str] | None = None) -> list[Prediction]:
        if self._as_of is not None:  # the read model holds today's scores; the past is `persona predict --as-of`
            raise ApiError("predictions: available for the current profile only")
        if withdrawn(self._data.attributes, "personalization"):
            return []  # personalised output is withheld from anyone who said no to it
        found = context_of(info).predictions.get(self._data.id)
        return [_prediction(d) for d in found if (models is None or d["model"] in models) and d["model"] != NAME]

    @strawberry.field(description="What the person is likely to want next, best first, each with why (the"
                                  " promoted recommender; the batch-scored read model, kept current as they buy)."
                                  " With no history, the items popular in the segment of the category they"
                                  " browse; without personalization consent, the items popular overall;"
                                  " null while no recommender serves (`persona train recommendations`)")
    def recommendations(self, info: Info[RequestContext, None], first: int = 10,
                        context: RecommendationContext | None = None) -> Recommendations | None:
        if self._as_of is not None:  # the read model holds today's lists; the past is `persona recommend --as-of`
            raise ApiError("recommendations: available for the current profile only")
        from persona.models.registry import ModelError  # heavy: loaded when a request first asks for them
        from persona.recommend import serve

        if not 1 <= first <= serve.MAX_FIRST:
            raise ApiError(f"first: between 1 and {serve.MAX_FIRST}")
        wanted = context or RecommendationContext()
        consent = not withdrawn(self._data.attributes, "personalization")
        stored = [d for d in context_of(info).predictions.get(self._data.id) if d["model"] == NAME]
        if consent and stored and wanted.exclude_purchased:
            found = serve.from_read_model(stored[0], first, wanted.category)
            if found is not None:
                return _recommendations(found)
        profile_id, ctx = self._data.id, context_of(info)

        def made(persona: Persona) -> Recommendations | None:
            try:
                return _recommendations(serve.fresh(persona, profile_id, first, wanted.category,
                                                    wanted.exclude_purchased))
            except ModelError:
                return None  # no recommender serves yet
            except (UnknownProfileError, ErasedError):
                raise ApiError("the profile is gone (erased)", "NOT_FOUND") from None
            except ValidationError as e:
                raise ApiError(e.reason) from None

        return later(ctx.state.scanner.run(made))  # reads the person's events and scores: off the event loop

    @strawberry.field(description="Identifiers linked to the person: namespace and a short hash only")
    def identities(self, info: Info[RequestContext, None]) -> list[Identity]:
        linked = context_of(info).identities.get(self._data.id)
        return [Identity(namespace=i["namespace"], hash=i["hash"], profile_id=strawberry.ID(i["profile"]))
                for i in linked]

    @strawberry.field(description="How the person's profiles were joined: each merge of two of them by the link of"
                                  " two identifiers (short hashes), oldest first; an undone one (unlinkIdentities)"
                                  " with when")
    def merges(self, info: Info[RequestContext, None]) -> list[Merge]:
        return [Merge(profiles=[strawberry.ID(p) for p in m.profiles], identifiers=list(m.identifiers),
                      merged_at=from_micros(m.merged_at),
                      undone_at=None if m.undone_at is None else from_micros(m.undone_at))
                for m in context_of(info).merges.get(self._data.id)]

    @strawberry.field(description="The decrypted event log, newest first")
    def history(self, info: Info[RequestContext, None], first: int | None = None, after: str | None = None,
                types: list[str] | None = None, since: datetime | None = None,
                until: datetime | None = None) -> EventConnection:
        ctx = context_of(info)
        size = page_size(first, ctx)
        before, by_position = _history_cursor(after)
        since_at, until_at = instant(since, "since"), instant(until, "until")
        if self._as_of is not None and self._as_of < MAX_INSTANT:
            end = self._as_of + timedelta(microseconds=1)  # asOf includes its own instant, `until` does not
            until_at = min(until_at, end) if until_at else end
        profile_id, kinds = self._data.id, types or ()
        ctx.audit("history", profile_id, fields="", first=size, types=len(kinds), after=after is not None,
                  since=since is not None, until=until is not None, asOf=self._as_of is not None)

        def page(persona: Persona) -> EventConnection:
            try:
                found = history_page(persona, profile_id, first=size, before=before, by_position=by_position,
                                     types=kinds, since=since_at, until=until_at)
            except (UnknownProfileError, ErasedError):
                raise ApiError("the profile is gone (erased)", "NOT_FOUND") from None
            except ValidationError as e:
                raise ApiError(e.reason) from None
            return _event_connection(found)

        if since_at is None and until_at is None:  # paged by the database: only what is returned is opened
            return page(ctx.state.persona)
        return later(ctx.state.scanner.run(page))  # a time filter decrypts to compare: off the event loop


@strawberry.type(description="Two profiles found to be one person by the link of two identifiers")
class Merge:
    profiles: list[strawberry.ID] = strawberry.field(description="The two profiles joined")
    identifiers: list[str] = strawberry.field(description="Short hashes of the two identifiers whose link joined them")
    merged_at: datetime
    undone_at: datetime | None = strawberry.field(description="When unlinkIdentities undid it (null: in force)")


@strawberry.type(description="A person's place in a live segment")
class SegmentMembership:
    segment: str
    since: datetime = strawberry.field(description="When the person entered it (this time)")


MAX_HISTORY_DAYS = 366


@strawberry.type(description="A live segment: a named rule (docs/segments.md) whose members persona keeps current")
class Segment:
    name: str
    rule: str
    created_at: datetime
    created_by: str = strawberry.field(description="Who defined it: token:NAME, or local:segments (the command line)")
    size: int | None = strawberry.field(description="Its members now; null when there are some but fewer than k"
                                                    " (k-anonymous, like exact insights: not private against"
                                                    " differencing)")
    clocked: bool = strawberry.field(description="Its rule reads a value the clock moves (recency_days,"
                                                 " lifecycle_stage, age): members also enter and leave with no event,"
                                                 " found by the server's sweep (PERSONA_SEGMENT_SWEEP seconds)")
    scored: bool = strawberry.field(description="Its rule reads RFM scores: members move when the population is"
                                                " scored again")
    _history: strawberry.Private[list[tuple[date, int]]] = dataclasses.field(default_factory=list)
    _k: strawberry.Private[int] = 0

    @strawberry.field(description="Its size at the end of each of the last `days` days (today last), walked back"
                                  " from now through the entries and exits kept (PERSONA_SEGMENT_CHANGES_DAYS, 7 by"
                                  " default: no further back than that); k-anonymous like `size`")
    def history(self, days: int = 7) -> list[SegmentSize]:
        if not 1 <= days <= MAX_HISTORY_DAYS:
            raise ApiError(f"days: between 1 and {MAX_HISTORY_DAYS}")
        return [SegmentSize(day=day, size=None if 0 < size < self._k else size)
                for day, size in self._history[-days:]]

    @classmethod
    def of(cls, found: SegmentDefinition, size: int, k: int, history: list[tuple[date, int]] | None = None
           ) -> Segment:
        return cls(name=found.name, rule=found.rule.text, created_at=found.created_at, created_by=found.created_by,
                   size=None if 0 < size < k else size, clocked=found.clocked, scored=found.scored,
                   _history=history or [], _k=k)


@strawberry.type(description="A live segment's size at the end of a day (UTC)")
class SegmentSize:
    day: date
    size: int | None = strawberry.field(description="null when there were some but fewer than k")


@strawberry.type(description="A person entered or left a live segment")
class SegmentChange:
    segment: str
    profile_id: strawberry.ID
    entered: bool = strawberry.field(description="true: entered; false: left")
    at: datetime


@strawberry.type
class ProfileEdge:
    cursor: str
    node: Profile


@strawberry.type
class ProfileConnection:
    edges: list[ProfileEdge]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[Profile]:
        return [edge.node for edge in self.edges]


@strawberry.input
class FeatureRange:
    name: str
    min: float | None = None
    max: float | None = None


@strawberry.input
class RfmMin:
    r: int = 1
    f: int = 1
    m: int = 1


@strawberry.input
class ProfileFilter:
    segments: list[str] | None = strawberry.field(default=None, description="Every one of these segments")
    lifecycle_stages: list[str] | None = strawberry.field(default=None, description="Any of these stages")
    rfm_min: RfmMin | None = strawberry.field(default=None, description="Lowest RFM scores wanted")
    features: list[FeatureRange] | None = strawberry.field(default=None, description="Numeric feature ranges")
    attributes: JSON | None = strawberry.field(default=None, description='Exact attribute values: {"country": "CN"}')
    rule: str | None = strawberry.field(default=None, description='A segment rule (docs/segments.md), e.g. "monetary >'
                                                                  ' 1000 and consent.marketing"; listings only')

    def to_filter(self) -> Where:
        for name, given in (("segments", self.segments), ("lifecycleStages", self.lifecycle_stages),
                            ("features", self.features)):
            if given is not None and len(given) > FILTER_TERMS:
                raise ApiError(f"filter.{name}: at most {FILTER_TERMS} terms")
        ranges = {r.name: (r.min, r.max) for r in self.features or ()}
        if self.attributes is not None and not isinstance(self.attributes, dict):
            raise ApiError("filter.attributes: must be an object of attribute → value")
        if len(self.attributes or {}) > FILTER_TERMS:
            raise ApiError(f"filter.attributes: at most {FILTER_TERMS} terms")
        for value in (self.attributes or {}).values():
            if not (value is None or isinstance(value, bool | int | float) or
                    (isinstance(value, str) and len(value) <= 200)):
                raise ApiError("filter.attributes: values are strings (up to 200 characters), numbers, booleans"
                               " or null")
        rfm = {} if self.rfm_min is None else {"r": self.rfm_min.r, "f": self.rfm_min.f, "m": self.rfm_min.m}
        try:
            rule = None if self.rule is None else compile_rule(self.rule)
        except RuleError as e:
            raise ApiError(f"filter.{e.reason}") from None
        return Where(lifecycle_stages=frozenset(self.lifecycle_stages or ()), ranges=ranges, rfm_min=rfm,
                     attributes=dict(self.attributes or {}), segments=frozenset(self.segments or ()), rule=rule)


@strawberry.type
class HistogramBin:
    start: float = strawberry.field(name="from")
    end: float = strawberry.field(name="to")
    count: float


@strawberry.type
class InsightGroup:
    key: JSON
    count: float
    mean: float | None
    distribution: list[HistogramBin] = strawberry.field(
        description="10 bins over the metric's bounds; empty when an exact answer would single someone out")


@strawberry.type
class Insights:
    groups: list[InsightGroup] = strawberry.field(
        description="Groups shown; a group below the threshold is left out without a trace")
    k: int
    threshold: float = strawberry.field(
        description="The count a group needed to be shown: k, or more with noise (see docs/api.md)")
    metric: str | None
    epsilon: float | None = strawberry.field(
        description="The ε this answer spent, as OpenDP's privacy maps reckon it (null: exact)")
    epsilon_remaining: float | None
    delta: float | None = strawberry.field(
        description="The δ this answer spent: no less than the chance that a group of one person is shown"
                    " (null: exact)")
    delta_remaining: float | None


@strawberry.input(description="One canonical event (see docs/events.md); validated exactly as `persona ingest` does")
class EventInput:
    source: str
    type: str
    occurred_at: str
    subject: SubjectInput
    data: JSON
    event_id: str | None = None


@strawberry.type
class IngestResult:
    received: int
    appended: int
    duplicates: int
    quarantined: int
    profiles_created: int = strawberry.field(
        description="Profiles this call created (scope profiles:read: it tells whether an identifier was known)")
    merges: int = strawberry.field(
        description="Links that joined two existing profiles into one person (scope profiles:read)")
    quarantine_reasons: JSON = strawberry.field(description="Count of quarantined events by reason",
                                                deprecation_reason="Use quarantinedBy: the same counts, typed")
    quarantined_by: list[Count] = strawberry.field(description="Quarantined events, counted by reason")


@strawberry.type(description="A token for one person's own page (shown once: only a hash of it is kept)")
class MintedToken:
    token: str = strawberry.field(description="Send it as `Authorization: Bearer …`; it is not shown again")
    name: str = strawberry.field(description="Its name in the audit log: the minting token's, then a random part")
    profile_id: strawberry.ID = strawberry.field(description="The one person it reads")
    scopes: list[str]
    expires_at: datetime


@strawberry.type(description="A deletion notice sent to a webhook destination by an erasure")
class DestinationNotice:
    destination: str
    acknowledged: bool = strawberry.field(description="It answered 2xx before the receipt was signed")
    outcome: str = strawberry.field(description='The attempt\'s outcome: "HTTP 204", "timeout", …')


@strawberry.type
class ErasureReceipt:
    profile_id: str
    merged_profiles: list[str] = strawberry.field(
        description="Profiles merged into the person, erased with it (each key deleted)")
    erased_at: datetime
    key_fingerprint: str
    wal_truncated: bool | None = strawberry.field(
        description="SQLite: whether its WAL was truncated at once; null on PostgreSQL (see purgeDueBy)")
    purged_at: datetime | None = strawberry.field(
        description="When the deleted rows were physically purged, if that was done at once (SQLite)")
    purge_due_by: datetime | None = strawberry.field(
        description="When their physical purge is due, if it is still to come (PostgreSQL: one purge serves"
                    " the erasures of a window, PERSONA_PURGE_WINDOW)")
    counts: JSON = strawberry.field(deprecation_reason="Use deleted: the same counts, typed")
    deleted: list[Count] = strawberry.field(description="Rows deleted, by table (the person's key among them)")
    destinations_notified: list[DestinationNotice] = strawberry.field(
        description="Each webhook destination that had received the person, sent a signed deletion notice, and"
                    " whether it acknowledged it (those that did not are retried)")
    signature: str
    receipt: JSON = strawberry.field(description="The signed document: check it with `persona receipt verify`")
