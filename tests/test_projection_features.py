"""Behaviour features: every value pinned on a hand-written history; order independence; consent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from persona.projections import FEATURES, BehaviorConfig, BehaviorFeatures, replay
from tests.test_projection_attributes import fact

AS_OF = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)


def order(eid: str, at: str, amount: str, *items: tuple[str, str]) -> Any:
    return fact("order_placed", {"order_id": eid, "amount": amount, "currency": "EUR",
                                 "items": [{"sku": s, "category": c, "qty": 1, "price": amount} for s, c in items]},
                source="shop", at=at, event_id=eid)


HISTORY = [
    fact("page_viewed", {"url": "u1", "category": "books", "duration_s": 30, "session_id": "s1"},
         source="web", at="2025-03-01T10:00:00+00:00", event_id="p1"),
    fact("product_viewed", {"sku": "B1", "category": "books", "session_id": "s1"},
         source="web", at="2025-03-01T10:05:00+00:00", event_id="v1"),
    fact("searched", {"query": "novel", "session_id": "s1"}, source="web", at="2025-03-01T10:06:00+00:00",
         event_id="q1"),
    order("o1", "2025-03-01T11:00:00+00:00", "20.00", ("B1", "books")),
    fact("product_viewed", {"sku": "T9", "category": "toys", "session_id": "s2"},
         source="web", at="2025-03-10T20:00:00+00:00", event_id="v2"),
    order("o2", "2025-03-11T09:00:00+00:00", "40.00", ("K1", "kitchen")),
    order("o3", "2025-03-31T09:00:00+00:00", "30.00", ("B2", "books")),
    fact("order_refunded", {"order_id": "o2", "amount": "40.00"}, source="shop", at="2025-03-15T09:00:00+00:00",
         event_id="r1"),
    fact("social_interaction", {"action": "like", "category": "toys"}, source="social",
         at="2025-03-20T12:00:00+00:00", event_id="x1"),
    fact("social_interaction", {"action": "like"}, source="social", at="2025-03-21T12:00:00+00:00", event_id="x2"),
    fact("social_interaction", {"action": "share"}, source="social", at="2025-03-22T12:00:00+00:00", event_id="x3"),
    fact("app_session", {"session_id": "a1", "minutes": 12.5, "features_used": ["scan", "search"]},
         source="app", at="2025-03-25T08:00:00+00:00", event_id="a1"),
    fact("app_session", {"session_id": "a2", "minutes": 2.25, "features_used": ["scan"]},
         source="app", at="2025-03-26T08:00:00+00:00", event_id="a2"),
    fact("review_posted", {"sku": "B1", "rating": 5}, source="shop", at="2025-03-05T00:00:00+00:00", event_id="w1"),
    fact("review_posted", {"sku": "K1", "rating": 2}, source="shop", at="2025-03-12T00:00:00+00:00", event_id="w2"),
    fact("profile_updated", {"city": "Rome"}, source="crm", at="2025-03-02T00:00:00+00:00", event_id="c1"),
    fact("page_viewed", {"url": "future"}, source="web", at="2025-04-05T00:00:00+00:00", event_id="later"),
]


def features(events: list[Any], config: BehaviorConfig | None = None, as_of: datetime = AS_OF) -> dict[str, Any]:
    projection = BehaviorFeatures(config) if config else FEATURES
    return projection.view(replay(projection, events), as_of)


def test_every_feature_on_a_worked_example() -> None:
    out = features(HISTORY)
    assert out == {
        "frequency": 3,
        "monetary": 50.0,  # net: 90.00 ordered, 40.00 of it refunded
        "aov": 30.0,  # the orders as placed
        "recency_days": 0.125,  # 09:00 -> 12:00 on the as-of day
        "first_order_at": "2025-03-01T11:00:00.000000Z",
        "last_order_at": "2025-03-31T09:00:00.000000Z",
        "refunds": 1,
        "refund_amount": 40.0,
        "interpurchase_mean_days": 14.9583,  # gaps of 9.9167 and 20 days
        "interpurchase_std_days": 5.0417,
        "expected_next_purchase_at": "2025-04-15T08:00:00.000000Z",  # last order + 14.9583 days
        "page_views": 1,
        "product_views": 2,
        "searches": 1,
        "sessions": 2,
        "session_mean_duration_s": 180.0,  # s1: 6 min span (360 s), s2: one view (0 s)
        "social_interactions": {"like": 2, "share": 1},
        "app_sessions": 2,
        "app_minutes": 14.75,
        "app_features_used": {"scan": 2, "search": 1},
        "reviews": 2,
        "review_mean_rating": 3.5,
        "category_affinity": out["category_affinity"],  # checked below, with the half-life maths
        "top_categories": ["books", "toys", "kitchen"],
        "viewed_skus": 2,
        "converted_skus": 1,  # B1 viewed then bought within a day; T9 never bought
        "conversion_rate": 0.5,
        "behavior_events": 15,
        "active_days": 12,  # distinct dates; the profile_updated and the April view do not count
        # UTC hours: 0 ×2 (reviews), 8 ×2 (app), 9 ×3 (two orders, a refund), 10 ×3, 11, 12 ×3 (social), 20
        "hour_of_day": [2, 0, 0, 0, 0, 0, 0, 0, 2, 3, 3, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        "day_of_week": [2, 2, 3, 1, 1, 6, 0],  # Monday first; Saturdays 1, 15 and 22 March
        "first_seen_at": "2025-03-01T10:00:00.000000Z",
        "last_seen_at": "2025-03-31T09:00:00.000000Z",
        "lifecycle_stage": "active",  # first seen 30.04 days ago (> 30: not new); bought today
    }
    # books: page 10:00, view 10:05 and order 11:00 on 1 March, order 09:00 on 31 March; 30-day half-life
    seen = ["2025-03-01T10:00", "2025-03-01T10:05", "2025-03-01T11:00", "2025-03-31T09:00"]
    ages = [(AS_OF - datetime.fromisoformat(t).replace(tzinfo=UTC)).total_seconds() / 86_400 for t in seen]
    assert out["category_affinity"]["books"] == round(sum(0.5 ** (age / 30) for age in ages), 6)
    assert out["category_affinity"]["kitchen"] == round(0.5 ** (20.125 / 30), 6)


def test_refunds_reduce_monetary_value_never_below_zero_and_only_once_they_happened() -> None:
    """Issue 18: monetary value is net spend. A refund counts from when it happened (not before:
    the as-of view of 14 March still holds the whole order) and a refund of an order the log never
    saw placed (bought before the log began) takes a person's spend to 0, not below."""
    before_refund = features(HISTORY, as_of=datetime(2025, 3, 14, tzinfo=UTC))
    assert (before_refund["monetary"], before_refund["refunds"], before_refund["refund_amount"]) == (60.0, 0, 0.0)
    assert features(HISTORY)["monetary"] == 50.0
    unseen = fact("order_refunded", {"order_id": "o0", "amount": "500.00"}, source="shop",
                  at="2025-03-20T09:00:00+00:00", event_id="r0")
    out = features([*HISTORY, unseen])
    assert (out["monetary"], out["refunds"], out["refund_amount"], out["aov"]) == (0.0, 2, 540.0, 30.0)
    only = features([unseen])
    assert (only["monetary"], only["frequency"], only["aov"], only["refund_amount"]) == (0.0, 0, None, 500.0)


def test_lifecycle_thresholds_are_configurable() -> None:
    later = datetime(2025, 9, 1, tzinfo=UTC)
    assert features(HISTORY, as_of=later)["lifecycle_stage"] == "at_risk"
    assert features(HISTORY, BehaviorConfig(active_days=200), as_of=later)["lifecycle_stage"] == "active"
    assert features(HISTORY, as_of=datetime(2026, 6, 1, tzinfo=UTC))["lifecycle_stage"] == "churned"
    assert features([], as_of=later)["lifecycle_stage"] is None


def test_recency_is_measured_from_the_question_not_the_clock() -> None:
    assert features(HISTORY, as_of=datetime(2025, 4, 30, 9, tzinfo=UTC))["recency_days"] == 30.0


def test_a_withdrawn_purpose_stops_later_events_feeding_its_features() -> None:
    withdraw = fact("consent_changed", {"purpose": "personalization", "granted": False}, source="app",
                    at="2025-03-05T00:00:00+00:00", event_id="c-off")
    regrant = fact("consent_changed", {"purpose": "personalization", "granted": True}, source="app",
                   at="2025-03-30T00:00:00+00:00", event_id="c-on")
    out = features([*HISTORY, withdraw])
    assert set(out["category_affinity"]) == {"books"}  # only what happened before 5 March
    assert out["frequency"] == 3  # analytics features are untouched
    assert out["viewed_skus"] == 1
    back = features([*HISTORY, withdraw, regrant])
    assert set(back["category_affinity"]) == {"books"} and back["category_affinity"]["books"] > (
        out["category_affinity"]["books"])  # the 31 March order counts again
    no_analytics = fact("consent_changed", {"purpose": "analytics", "granted": False}, source="app",
                        at="2025-01-01T00:00:00+00:00", event_id="c-a")
    assert features([*HISTORY, no_analytics])["frequency"] == 0


kinds = st.sampled_from(range(len(HISTORY)))


@settings(max_examples=60)
@given(st.lists(kinds, unique=True, max_size=len(HISTORY)), st.randoms(use_true_random=False),
       st.booleans())
def test_any_arrival_order_gives_the_same_features(chosen: list[int], rnd: Any, consent: bool) -> None:
    events = [HISTORY[i] for i in chosen]
    if consent:
        events.append(fact("consent_changed", {"purpose": "personalization", "granted": False}, source="app",
                           at="2025-03-10T00:00:00+00:00", event_id="c"))
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = replay(FEATURES, events), replay(FEATURES, shuffled)
    assert orjson.dumps(FEATURES.view(a, AS_OF)) == orjson.dumps(FEATURES.view(b, AS_OF))
    assert orjson.dumps(FEATURES.dump(a)) == orjson.dumps(FEATURES.dump(b))
    restored = FEATURES.load(orjson.loads(orjson.dumps(FEATURES.dump(a))))
    assert FEATURES.view(restored, AS_OF) == FEATURES.view(a, AS_OF)


@settings(max_examples=60)
@given(st.lists(kinds, unique=True, max_size=len(HISTORY)), st.lists(st.integers(0, 2), min_size=len(HISTORY),
                                                                    max_size=len(HISTORY)))
def test_combining_streams_equals_one_fold_of_all_their_events(chosen: list[int], owner: list[int]) -> None:
    """A merged person: the events split over up to three streams, each folded alone, then combined."""
    events = [HISTORY[i] for i in chosen]
    states = [replay(FEATURES, [e for n, e in enumerate(events) if owner[n] == k]) for k in range(3)]
    sizes = [len(s) for s in states]
    combined = FEATURES.combine(states)
    assert orjson.dumps(FEATURES.view(combined, AS_OF)) == orjson.dumps(FEATURES.view(replay(FEATURES, events), AS_OF))
    assert [len(s) for s in states] == sizes  # the inputs are untouched


@settings(max_examples=300, deadline=None)
@example([-1, 0, 3_599_999_999, 3_600_000_000, 86_399_999_999, 86_400_000_000, -86_400_000_001])
@given(st.lists(st.integers(min_value=-2_208_988_800_000_000, max_value=253_402_300_799_999_999), max_size=40))
def test_hours_weekdays_and_active_days_agree_with_the_calendar(instants: list[int]) -> None:
    """The activity histogram is counted from integer microseconds; it says what the calendar
    says of each instant in UTC — before 1970, at the edge of an hour or a day, up to 9999."""
    from datetime import timedelta

    from persona.projections.behavior import _activity

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    moments = [epoch + timedelta(microseconds=us) for us in sorted(instants)]
    got = _activity([(us, "e", "p") for us in sorted(instants)])
    assert got["hour_of_day"] == [sum(1 for m in moments if m.hour == h) for h in range(24)]
    assert got["day_of_week"] == [sum(1 for m in moments if m.weekday() == d) for d in range(7)]
    assert got["active_days"] == len({m.date() for m in moments})
    assert got["behavior_events"] == len(instants)
