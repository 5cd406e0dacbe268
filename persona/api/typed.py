"""The typed views of what the API used to answer as JSON blobs: a profile's behaviour features,
its attributes and their provenance, counts by name (docs/api.md, "Typed fields").

Each is built from the dict the projections and the read model keep (persona.projections), so
the typed field and its deprecated JSON twin always say the same thing. A name a frontend can
select field by field, and a code generator can type, is the contract here: a new feature is a
new field, never a new key inside a blob.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

from persona.projections.profile import CONSENT_PURPOSES


def moment(text: str | None) -> datetime | None:
    """A stored UTC time (`…Z`, as persona writes them) as a datetime."""
    return None if text is None else datetime.fromisoformat(text)


@strawberry.type(description="A count under a name: a table's rows, a reason, an interaction kind, an app feature")
class Count:
    name: str
    count: int


def counts(mapping: Mapping[str, int] | None) -> list[Count]:
    return [Count(name=name, count=int(n)) for name, n in sorted((mapping or {}).items())]


@strawberry.type(description="A category and how strongly the person leans to it: events in it, each weighed by"
                             " its age (halved every 30 days by default)")
class CategoryScore:
    category: str
    score: float


@strawberry.enum(description="Where a person stands: NEW (first seen within 30 days), ACTIVE (last order, or"
                             " activity if none, within 90 days), AT_RISK (within 365), CHURNED (longer); the"
                             " defaults, docs/api.md")
class LifecycleStage(Enum):
    NEW = "new"
    ACTIVE = "active"
    AT_RISK = "at_risk"
    CHURNED = "churned"


@strawberry.type(description="Recency, frequency and monetary scores, 1 (lowest fifth of buyers) to 5")
class Rfm:
    r: int
    f: int
    m: int

    @strawberry.field(description="The three scores as one code, e.g. \"545\"")
    def code(self) -> str:
        return f"{self.r}{self.f}{self.m}"


@strawberry.type(description="Behaviour features at the question's instant, from the events the person's consent"
                             " lets count (docs/api.md, \"Features\")")
class Features:
    # orders
    frequency: int = strawberry.field(description="Orders placed")
    monetary: float = strawberry.field(description="Net spend: orders less refunds, never below 0")
    aov: float | None = strawberry.field(description="Average order value, refunds aside")
    recency_days: float | None = strawberry.field(description="Days since the last order")
    first_order_at: datetime | None
    last_order_at: datetime | None
    refunds: int
    refund_amount: float
    interpurchase_mean_days: float | None
    interpurchase_std_days: float | None
    expected_next_purchase_at: datetime | None = strawberry.field(
        description="The last order plus the mean gap between orders")
    rfm: Rfm | None = strawberry.field(description="Scores against every buyer (null: no order yet, or not scored)")
    # browsing
    page_views: int
    product_views: int
    searches: int
    sessions: int
    session_mean_duration_s: float | None
    conversion_rate: float | None = strawberry.field(
        description="Of the products viewed, the share bought within the conversion window (7 days)")
    viewed_skus: int
    converted_skus: int
    # everything else
    social_interactions: list[Count]
    app_sessions: int
    app_minutes: float
    app_features_used: list[Count]
    reviews: int
    review_mean_rating: float | None
    category_affinity: list[CategoryScore] = strawberry.field(description="Every category, strongest first")
    top_categories: list[str]
    behavior_events: int = strawberry.field(description="Events that count, of every kind")
    active_days: int
    hour_of_day: list[int] = strawberry.field(description="Events by hour of the day, UTC: 24 counts from 00:00")
    day_of_week: list[int] = strawberry.field(description="Events by weekday, UTC: 7 counts from Monday")
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    lifecycle_stage: LifecycleStage | None

    @staticmethod
    def of(features: Mapping[str, Any], rfm: Mapping[str, int] | None) -> Features:
        f = features.get
        affinity = f("category_affinity") or {}
        stage = f("lifecycle_stage")
        return Features(
            frequency=f("frequency") or 0, monetary=f("monetary") or 0.0, aov=f("aov"), recency_days=f("recency_days"),
            first_order_at=moment(f("first_order_at")), last_order_at=moment(f("last_order_at")),
            refunds=f("refunds") or 0, refund_amount=f("refund_amount") or 0.0,
            interpurchase_mean_days=f("interpurchase_mean_days"), interpurchase_std_days=f("interpurchase_std_days"),
            expected_next_purchase_at=moment(f("expected_next_purchase_at")),
            rfm=Rfm(r=rfm["r"], f=rfm["f"], m=rfm["m"]) if rfm else None,
            page_views=f("page_views") or 0, product_views=f("product_views") or 0, searches=f("searches") or 0,
            sessions=f("sessions") or 0, session_mean_duration_s=f("session_mean_duration_s"),
            conversion_rate=f("conversion_rate"), viewed_skus=f("viewed_skus") or 0,
            converted_skus=f("converted_skus") or 0,
            social_interactions=counts(f("social_interactions")), app_sessions=f("app_sessions") or 0,
            app_minutes=f("app_minutes") or 0.0, app_features_used=counts(f("app_features_used")),
            reviews=f("reviews") or 0, review_mean_rating=f("review_mean_rating"),
            category_affinity=[CategoryScore(category=c, score=s)
                               for c, s in sorted(affinity.items(), key=lambda cs: (-cs[1], cs[0]))],
            top_categories=list(f("top_categories") or ()), behavior_events=f("behavior_events") or 0,
            active_days=f("active_days") or 0, hour_of_day=list(f("hour_of_day") or [0] * 24),
            day_of_week=list(f("day_of_week") or [0] * 7), first_seen_at=moment(f("first_seen_at")),
            last_seen_at=moment(f("last_seen_at")), lifecycle_stage=LifecycleStage(stage) if stage else None,
        )


@strawberry.type(description="Whether the person agreed to each purpose (null: never said)")
class Consent:
    analytics: bool | None
    marketing: bool | None
    personalization: bool | None


KNOWN_ATTRIBUTES = ("gender", "birth_year", "age", "region", "city", "country", "language", "languages",
                    "signup_at", "consent")


@strawberry.type(description="Fused attribute values; `custom` holds the ones persona has no field for")
class Attributes:
    gender: str | None
    birth_year: int | None
    age: int | None = strawberry.field(description="From birthYear, at the question's instant")
    region: str | None
    city: str | None
    country: str | None = strawberry.field(description="ISO 3166-1 alpha-2")
    language: str | None
    languages: list[str] = strawberry.field(description="Every language claimed by any source")
    signup_at: datetime | None
    consent: Consent
    custom: JSON = strawberry.field(description="Attributes without a field of their own, by name")

    @staticmethod
    def of(attributes: Mapping[str, Any]) -> Attributes:
        a = attributes.get
        given = a("consent") or {}
        born, languages = a("birth_year"), a("languages")
        return Attributes(
            gender=a("gender"), birth_year=None if born is None else int(born), age=a("age"), region=a("region"),
            city=a("city"), country=a("country"), language=a("language"),
            languages=[str(x) for x in languages] if isinstance(languages, list) else [],
            signup_at=moment(a("signup_at")), consent=Consent(**{p: given.get(p) for p in CONSENT_PURPOSES}),
            custom=JSON({name: value for name, value in attributes.items() if name not in KNOWN_ATTRIBUTES}),
        )


@strawberry.type(description="One claim behind an attribute's value: which source said it, in which event, when")
class Claim:
    source: str
    writer: str = strawberry.field(description="Who appended the event (token:NAME, local:COMMAND, library)")
    vouched: bool = strawberry.field(description="Whether the writer vouched for the source (only then does the"
                                                 " source's rank or weight count)")
    event_id: str
    occurred_at: datetime
    weight: float | None = strawberry.field(description="Its weight in a weighted mean")


@strawberry.type(description="An attribute's fused value with the rule that fused it and the claims behind it")
class AttributeSource:
    name: str = strawberry.field(description="The attribute, or consent.PURPOSE")
    strategy: str = strawberry.field(description="latest, precedence, weighted, union, derived (age), consent")
    value: JSON | None = strawberry.field(description="null: a purpose never consented to nor refused")
    derived_from: str | None
    claims: list[Claim]


def attribute_sources(view: Mapping[str, Any] | None) -> list[AttributeSource]:
    """The attributes' view (persona.projections.profile.ProfileAttributes.view) as a list."""
    out = []
    for name, held in sorted((view or {}).items()):
        if name == "consent":
            out += [AttributeSource(name=f"consent.{purpose}", strategy="consent", value=JSON(given["granted"]),
                                    derived_from=None, claims=_claims(given["provenance"]))
                    for purpose, given in sorted(held.items())]
        else:
            out.append(AttributeSource(name=name, strategy=held["strategy"], value=JSON(held["value"]),
                                       derived_from=held.get("derived_from"), claims=_claims(held["provenance"])))
    return out


@strawberry.type(description="A consent purpose's current state and where it comes from")
class ConsentState:
    purpose: str = strawberry.field(description="analytics, marketing or personalization")
    granted: bool | None = strawberry.field(description="null: never asked")
    since: datetime | None = strawberry.field(description="When the consent event in force happened")
    source: str | None = strawberry.field(description="The source of that event (crm, web, …)")
    vouched: bool | None = strawberry.field(description="Whether its writer vouched for that source")


def consent_states(view: Mapping[str, Any] | None) -> list[ConsentState]:
    """Every purpose, asked or not, from the attributes' view (the claim in force: the latest)."""
    held = (view or {}).get("consent", {})
    out = []
    for purpose in CONSENT_PURPOSES:
        given = held.get(purpose)
        if given is None:
            out.append(ConsentState(purpose=purpose, granted=None, since=None, source=None, vouched=None))
            continue
        claim = max(given["provenance"], key=lambda p: p["occurred_at"], default=None)
        out.append(ConsentState(purpose=purpose, granted=given["granted"],
                                since=None if claim is None else datetime.fromisoformat(claim["occurred_at"]),
                                source=None if claim is None else claim["source"],
                                vouched=None if claim is None else claim["vouched"]))
    return out


def _claims(provenance: list[dict[str, Any]]) -> list[Claim]:
    return [Claim(source=p["source"], writer=p["writer"], vouched=p["vouched"], event_id=p["event_id"],
                  occurred_at=datetime.fromisoformat(p["occurred_at"]), weight=p.get("weight"))
            for p in provenance]


# -- models ------------------------------------------------------------------------------------
@strawberry.type(description="A named figure: a metric (mse, mae, r2, roc_auc, log_loss, brier, accuracy, rows),"
                             " a feature's drift, a library's version")
class Figure:
    name: str
    value: float | None = strawberry.field(description="null: not a number (e.g. AUC over one class)")


def finite(value: Any) -> float | None:
    """A stored number as a float; null for anything else (NaN and infinities are stored as null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def figures(mapping: Mapping[str, Any] | None) -> list[Figure]:
    return [Figure(name=name, value=finite(value)) for name, value in sorted((mapping or {}).items())]


@strawberry.type(description="A naive baseline (or BG/NBD) scored on the model's own held-out rows")
class Baseline:
    name: str
    metrics: list[Figure]


@strawberry.type(description="The model against its best baseline, by the task's main metric (lower is better)")
class Lift:
    metric: str
    model: float | None
    baseline: float | None
    against: str = strawberry.field(description="The best baseline's name")
    improvement: float | None = strawberry.field(
        description="(baseline - model) / baseline: above 0, the model is better")


@strawberry.type(description="What the model was trained on: the cutoffs its labelled rows were taken at")
class TrainingWindow:
    cutoffs: list[datetime]
    horizon_days: float
    train_rows: int
    test_rows: int


@strawberry.type(description="The last drift measurement of a served model")
class Drift:
    measured_at: datetime
    people: int
    psi_max: float | None = strawberry.field(description="The largest population stability index over the features")
    psi_limit: float | None
    psi_top: list[Figure] = strawberry.field(description="The features that moved most, by PSI")
    age_days: float | None
    stale: bool
    reasons: list[str]


def model_parts(meta: Mapping[str, Any], drift: Mapping[str, Any] | None
                ) -> tuple[list[Figure], list[Baseline], Lift, TrainingWindow, Drift | None, list[str]]:
    """The registry's metadata of a model version (persona.models.registry) as typed parts."""
    lift, window, rows = meta["lift"], meta["window"], meta["rows"]
    return (
        figures(meta["metrics"]),
        [Baseline(name=name, metrics=figures(scores)) for name, scores in sorted(meta["baselines"].items())],
        Lift(metric=lift["metric"], model=finite(lift["model"]), baseline=finite(lift["baseline"]),
             against=str(lift.get("against", "")), improvement=finite(lift["improvement"])),
        TrainingWindow(cutoffs=[datetime.fromisoformat(c) for c in window["cutoffs"]],
                       horizon_days=float(window["horizon_days"]), train_rows=int(rows["train"]),
                       test_rows=int(rows["test"])),
        None if not drift else Drift(
            measured_at=datetime.fromisoformat(drift["measured_at"]), people=int(drift["people"]),
            psi_max=finite(drift["psi_max"]), psi_limit=finite(drift["psi_limit"]),
            psi_top=[Figure(name=p["feature"], value=finite(p["psi"])) for p in drift["psi_top"]],
            age_days=finite(drift["age_days"]), stale=bool(drift["stale"]), reasons=list(drift["reasons"])),
        [f"{package} {version}" for package, version in sorted(meta["code"].items())],
    )
