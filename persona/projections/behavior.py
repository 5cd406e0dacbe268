"""Behaviour features — the seed of every prediction — folded from a person's events.

The fold keeps one compact fact per relevant event; features are computed from the facts
sorted by (occurred_at, event id) when they are read, against the reader's `as_of`. So
the same events give the same features in any arrival order (late events from an
offline app are normal), recency is measured from the question's instant rather than
the wall clock, and a consent withdrawal that arrives late still applies to everything
after it.

Consent: a feature feeds a purpose (`analytics` or `personalization`); events that
happen while that purpose is withdrawn do not feed its features.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, localcontext
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from persona.events import RecordedEvent, micros, text_micros, utc_text

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
Fact = tuple[Any, ...]  # (occurred µs, event id, kind, *fields): JSON-able, sortable

# which purpose each group of features serves
PURPOSES: Mapping[str, str] = MappingProxyType({
    "orders": "analytics",
    "browsing": "analytics",
    "social": "analytics",
    "app": "analytics",
    "reviews": "analytics",
    "affinity": "personalization",
    "conversion": "personalization",
})
_PURPOSE_NAMES = tuple(sorted(set(PURPOSES.values())))
_GROUP = {"o": "orders", "r": "orders", "p": "browsing", "v": "browsing", "s": "browsing", "x": "social",
          "a": "app", "w": "reviews"}


@dataclass(frozen=True)
class BehaviorConfig:
    half_life_days: float = 30.0  # category affinities halve in weight every this many days
    conversion_days: float = 7.0  # a viewed SKU bought within this many days counts as converted
    new_days: float = 30.0  # first seen within this many days: "new"
    active_days: float = 90.0  # last purchase (or activity) within this: "active"
    churn_days: float = 365.0  # beyond this: "churned"; in between: "at_risk"
    top: int = 3  # how many top categories


def _fact(event: RecordedEvent) -> Fact | None:
    t = text_micros(event.occurred_at)
    d, eid = event.data, event.event_id
    kind = event.type
    if kind == "order_placed":
        items = d.get("items") or []
        return (t, eid, "o", d["amount"], sorted({i["category"] for i in items if "category" in i}),
                sorted({i["sku"] for i in items if "sku" in i}))
    if kind == "order_refunded":
        return (t, eid, "r", d["amount"])
    if kind == "page_viewed":
        return (t, eid, "p", d.get("session_id"), d.get("duration_s"), d.get("category"))
    if kind == "product_viewed":
        return (t, eid, "v", d.get("session_id"), d["sku"], d["category"])
    if kind == "searched":
        return (t, eid, "s", d.get("session_id"))
    if kind == "social_interaction":
        return (t, eid, "x", d["action"], d.get("category"))
    if kind == "app_session":
        return (t, eid, "a", d["session_id"], d["minutes"], sorted(set(d.get("features_used") or [])))
    if kind == "review_posted":
        return (t, eid, "w", d["rating"])
    if kind == "consent_changed":  # whether its writer vouched for its source: see consent_changes
        return (t, eid, "c", d["purpose"], bool(d["granted"]), event.vouched)
    return None


class BehaviorFeatures:
    """Recency, frequency, monetary value, browsing, sessions, affinities, lifecycle and more."""

    name = "features"
    version = 2  # 2: a consent fact says whether its writer vouched (an unvouched one only fills a gap)

    def __init__(self, config: BehaviorConfig | None = None) -> None:
        self.config = config or BehaviorConfig()

    def initial(self) -> list[Fact]:
        return []

    def apply(self, state: list[Fact], event: RecordedEvent) -> list[Fact]:
        fact = _fact(event)
        if fact is not None:
            state.append(fact)
        return state

    def combine(self, states: list[list[Fact]]) -> list[Fact]:
        """The facts of several streams together (a merged person); the inputs are left as they were."""
        return [fact for state in states for fact in state]

    def dump(self, state: list[Fact]) -> Any:
        return [list(f) for f in sorted(state, key=_order)]

    def load(self, dumped: Any) -> list[Fact]:
        return [tuple(f) for f in dumped]

    def shift(self, view: dict[str, Any], computed_at: datetime, as_of: datetime) -> dict[str, Any]:
        """A view computed at one instant, brought to a later one without the facts: recency and
        lifecycle are recomputed, affinities decay further (exactly: every weight scales alike)."""
        now = micros(as_of)
        out = dict(view)
        last = view.get("last_order_at")
        out["recency_days"] = _days(now - text_micros(last)) if last else None
        factor = 0.5 ** ((now - micros(computed_at)) / DAY_US / self.config.half_life_days)
        out["category_affinity"] = {c: round(v * factor, 6) for c, v in view.get("category_affinity", {}).items()}
        out["lifecycle_stage"] = _stage(out, now, self.config) if "first_seen_at" in out else None
        return out

    def view(self, state: list[Fact], as_of: datetime) -> dict[str, Any]:
        cfg = self.config
        now = micros(as_of)
        facts = sorted((f for f in state if f[0] <= now), key=_order)
        allowed = _consented(facts)
        granted = {purpose: [f for f in facts if allowed(purpose, f)] for purpose in _PURPOSE_NAMES}
        used = {group: [f for f in granted[PURPOSES[group]] if f[2] in kinds] for group, kinds in _KINDS.items()}
        out: dict[str, Any] = {}
        out.update(_orders(used["orders"], now))
        out.update(_browsing(used["browsing"]))
        out.update(_social(used["social"]))
        out.update(_app(used["app"]))
        out.update(_reviews(used["reviews"]))
        out.update(_affinity(used["affinity"], now, cfg))
        out.update(_conversion(used["conversion"], cfg))
        out.update(_activity(_counted(facts, allowed)))
        out["lifecycle_stage"] = _stage(out, now, cfg)
        return out

    def counted(self, state: list[Fact], as_of: datetime) -> list[Fact]:
        """The facts that count at `as_of`, in time order: happened by then, and each allowed by
        the consent in force when it happened (consent changes themselves left out)."""
        now = micros(as_of)
        facts = sorted((f for f in state if f[0] <= now), key=_order)
        return _counted(facts, _consented(facts))


def _counted(facts: list[Fact], allowed: Any) -> list[Fact]:
    return [f for f in facts if f[2] != "c" and allowed(PURPOSES[_GROUP[f[2]]], f)]


_KINDS = {
    "orders": {"o", "r"},
    "browsing": {"p", "v", "s"},
    "social": {"x"},
    "app": {"a"},
    "reviews": {"w"},
    "affinity": {"o", "p", "v", "x"},
    "conversion": {"o", "v"},
}


def _order(fact: Fact) -> tuple[int, str]:
    return fact[0], fact[1]


def consent_changes(facts: Iterable[Fact]) -> dict[str, list[Fact]]:
    """The consent changes that count, by purpose, in the order given: a purpose any vouched
    writer spoke of keeps only the vouched changes (an unvouched writer's fill a gap, never
    override). Facts folded before writers were recorded have no flag: vouched, as they were."""
    found: dict[str, list[Fact]] = {}
    for f in facts:
        if f[2] == "c":
            found.setdefault(f[3], []).append(f)
    for purpose, changes in found.items():
        vouched = [f for f in changes if len(f) < 6 or f[5]]
        found[purpose] = vouched or changes
    return found


def _consented(facts: list[Fact]) -> Any:
    """A test: was this purpose granted when this fact happened? Granted until withdrawn."""
    changes = {purpose: [(_order(f), f[4]) for f in found] for purpose, found in consent_changes(facts).items()}

    if not changes:
        return lambda purpose, fact: True

    def allowed(purpose: str, fact: Fact) -> bool:
        granted = True
        for at, state in changes.get(purpose, ()):
            if at > _order(fact):
                break
            granted = state
        return granted

    return allowed


def _iso(us: int | None) -> str | None:
    """Fixed-width UTC with microseconds, like stored occurred_at: exact, and sorts as time."""
    if us is None:
        return None
    return utc_text(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us))


def _days(us: float) -> float:
    return round(us / DAY_US, 4)


_MONEY = Context(prec=60, traps=[])  # sums of many amounts stay exact and never raise


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), context=_MONEY))


def _orders(facts: Iterable[Fact], now: int) -> dict[str, Any]:
    with localcontext(_MONEY):
        return _order_features(facts, now)


def _order_features(facts: Iterable[Fact], now: int) -> dict[str, Any]:
    orders = [f for f in facts if f[2] == "o"]
    refunds = [f for f in facts if f[2] == "r"]
    spent = sum((Decimal(f[3]) for f in orders), Decimal(0))
    refunded = sum((Decimal(f[3]) for f in refunds), Decimal(0))
    times = [f[0] for f in orders]
    gaps = [(b - a) / DAY_US for a, b in pairwise(times)]
    mean = sum(gaps) / len(gaps) if gaps else None
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) if gaps and mean is not None else None
    return {
        "frequency": len(orders),
        # net spend: refunds taken off, never below 0 (a refund of an order placed before the log began)
        "monetary": _money(max(spent - refunded, Decimal(0))),
        "aov": _money(spent / len(orders)) if orders else None,  # the orders as placed, refunds aside
        "recency_days": _days(now - times[-1]) if times else None,
        "first_order_at": _iso(times[0]) if times else None,
        "last_order_at": _iso(times[-1]) if times else None,
        "refunds": len(refunds),
        "refund_amount": _money(refunded),
        "interpurchase_mean_days": round(mean, 4) if mean is not None else None,
        "interpurchase_std_days": round(std, 4) if std is not None else None,
        "expected_next_purchase_at": _iso(times[-1] + round(mean * DAY_US)) if mean is not None else None,
    }


def _browsing(facts: Iterable[Fact]) -> dict[str, Any]:
    facts = list(facts)
    spans: dict[str, list[float]] = {}  # session -> [first µs, last µs, dwell of its last page]
    for f in facts:
        session = f[3]
        if session is None:
            continue
        dwell = float(f[4]) if f[2] == "p" and f[4] is not None else 0.0
        span = spans.get(session)
        if span is None:
            spans[session] = [f[0], f[0], dwell]
        else:
            span[1] = f[0]  # facts are sorted: this is the latest so far
            span[2] = dwell
    durations = [(last - first) / 1_000_000 + dwell for first, last, dwell in spans.values()]
    return {
        "page_views": sum(1 for f in facts if f[2] == "p"),
        "product_views": sum(1 for f in facts if f[2] == "v"),
        "searches": sum(1 for f in facts if f[2] == "s"),
        "sessions": len(spans),
        "session_mean_duration_s": round(sum(durations) / len(durations), 3) if durations else None,
    }


def _social(facts: Iterable[Fact]) -> dict[str, Any]:
    return {"social_interactions": dict(sorted(Counter(f[3] for f in facts).items()))}


def _app(facts: Iterable[Fact]) -> dict[str, Any]:
    facts = list(facts)
    features: Counter[str] = Counter()
    for f in facts:
        features.update(f[5])
    minutes = sum((Decimal(str(f[4])) for f in facts), Decimal(0))
    return {
        "app_sessions": len({f[3] for f in facts}),
        "app_minutes": float(minutes),
        "app_features_used": dict(sorted(features.items())),
    }


def _reviews(facts: Iterable[Fact]) -> dict[str, Any]:
    ratings = [int(f[3]) for f in facts]
    return {"reviews": len(ratings), "review_mean_rating": round(sum(ratings) / len(ratings), 4) if ratings else None}


def _categories(fact: Fact) -> list[str]:
    kind = fact[2]
    if kind == "o":
        return list(fact[4])
    if kind == "p":
        return [fact[5]] if fact[5] else []
    if kind == "v":
        return [fact[5]]
    if kind == "x":
        return [fact[4]] if fact[4] else []
    return []


def _affinity(facts: Iterable[Fact], now: int, cfg: BehaviorConfig) -> dict[str, Any]:
    scores: dict[str, float] = {}
    for f in facts:  # sorted: the float sums come out bit-identical every time
        weight = 0.5 ** ((now - f[0]) / DAY_US / cfg.half_life_days)
        for category in _categories(f):
            scores[category] = scores.get(category, 0.0) + weight
    affinity = {c: round(s, 6) for c, s in sorted(scores.items())}
    top = sorted(affinity, key=lambda c: (-affinity[c], c))[: cfg.top]
    return {"category_affinity": affinity, "top_categories": top}


def _conversion(facts: Iterable[Fact], cfg: BehaviorConfig) -> dict[str, Any]:
    window = cfg.conversion_days * DAY_US
    viewed: dict[str, list[int]] = {}
    bought: dict[str, list[int]] = {}
    for f in facts:
        if f[2] == "v":
            viewed.setdefault(f[4], []).append(f[0])
        elif f[2] == "o":
            for sku in f[5]:
                bought.setdefault(sku, []).append(f[0])
    converted = sum(
        1 for sku, views in viewed.items()
        if any(0 <= t - v <= window for v in views for t in bought.get(sku, ()))
    )
    return {
        "viewed_skus": len(viewed),
        "converted_skus": converted,
        "conversion_rate": round(converted / len(viewed), 4) if viewed else None,
    }


def _activity(facts: list[Fact]) -> dict[str, Any]:
    hours = [0] * 24
    weekdays = [0] * 7
    days = set()
    for f in facts:  # in UTC, from the integer microseconds (exact, and no datetime per fact)
        day, into = divmod(f[0], DAY_US)
        hours[into // HOUR_US] += 1
        weekdays[(day + 3) % 7] += 1  # 1 January 1970 was a Thursday: weekday() 3
        days.add(day)
    return {
        "behavior_events": len(facts),
        "active_days": len(days),
        "hour_of_day": hours,
        "day_of_week": weekdays,
        "first_seen_at": _iso(facts[0][0]) if facts else None,
        "last_seen_at": _iso(facts[-1][0]) if facts else None,
    }


def _stage(features: dict[str, Any], now: int, cfg: BehaviorConfig) -> str | None:
    first = features["first_seen_at"]
    if first is None:
        return None
    first_us = text_micros(first)
    if now - first_us <= cfg.new_days * DAY_US:
        return "new"
    last = features["last_order_at"] or features["last_seen_at"]
    idle = (now - text_micros(last)) / DAY_US
    if idle <= cfg.active_days:
        return "active"
    if idle <= cfg.churn_days:
        return "at_risk"
    return "churned"


FEATURES = BehaviorFeatures()
