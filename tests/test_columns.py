"""Point-in-time rows computed column-wise (persona.models.columns) are the rows folded one person
at a time (dataset.rows_at): on people with every kind of fact, ties in time, sessions and SKU
views that straddle a cutoff, refunds larger than the spend, profiles that change, and the people
the columns leave to the fold (merged streams, a consent withdrawn, an amount finer than a cent).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from persona import Persona
from persona.ingest import ingest_jsonl
from persona.models.columns import Columns
from persona.models.dataset import ROW_FEATURES, Row, build, histories, point_in_time, rows_at, rows_then

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
CATEGORIES = ("books", "garden", "kitchen", "toys")
# features the view rounds (to 4 or 3 places) or sums in another order: equal to that rounding
TOLERANCE = {"abs": 1.01e-4, "rel": 1e-9}


def _at(day: float) -> str:
    return (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _people(seed: int, count: int) -> list[bytes]:
    """Events of every kind for `count` people, times drawn on a coarse grid (whole hours) so that
    ties between facts happen."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    n = 0

    def add(kind: str, day: float, subject: dict[str, str], data: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        lines.append(orjson.dumps({"event_id": f"c{seed}-{n}", "source": "shop" if kind.startswith("order") else "web",
                                   "type": kind, "occurred_at": _at(round(day * 24) / 24), "subject": subject,
                                   "data": data}))

    for k in range(count):
        me = {"namespace": "shop_user", "value": f"u{k}"}
        if k >= count - 3:  # the last few live one day each, the same day: a person's first day is theirs
            for hour in (1, 2):
                add("page_viewed", 300 + hour / 24, me, {"url": "https://shop.example/d", "category": "toys"})
            continue
        born = rng.uniform(0, 500)
        if rng.random() < 0.8:  # an age is a birth year counted from the year it was said in
            said = {"age": rng.randint(30, 33)} if rng.random() < 0.3 else {"birth_year": rng.randint(1950, 2005)}
            add("profile_updated", born, me, {"gender": rng.choice(("female", "male", "other")), **said})
        if rng.random() < 0.3:  # they change their mind later: gender, or an age that implies a birth year
            add("profile_updated", born + rng.uniform(10, 300), me,
                rng.choice(({"gender": rng.choice(("female", "male"))}, {"age": rng.randint(18, 80)})))
        if rng.random() < 0.2:
            add("consent_changed", born, me, {"purpose": "analytics", "granted": True})
        skus = [f"{rng.choice(CATEGORIES)}-{i}" for i in range(4)]
        for _ in range(rng.randint(1, 30)):
            day = born + rng.uniform(0, 400)
            kind = rng.choice(("order", "order", "page", "page", "product", "search", "social", "app", "review",
                               "refund"))
            session = f"s{k}-{rng.randrange(6)}" if rng.random() < 0.9 else None
            category = rng.choice(CATEGORIES)
            if kind == "order":
                bought = rng.sample(skus, rng.randint(0, 2))
                add("order_placed", day, me, {
                    "order_id": f"o{k}-{n}", "amount": rng.choice(("12.5", "99", "0.01", f"{rng.uniform(1, 300):.2f}")),
                    "currency": "CNY", "items": [{"sku": s, "category": s.split("-")[0]} for s in bought]})
            elif kind == "refund":
                add("order_refunded", day, me, {"order_id": f"o{k}-0", "amount": f"{rng.uniform(1, 500):.2f}"})
            elif kind == "page":
                data: dict[str, Any] = {"url": "https://shop.example/p"}
                if session:
                    data["session_id"] = session
                if rng.random() < 0.7:
                    data["duration_s"] = rng.randint(1, 600)
                if rng.random() < 0.7:
                    data["category"] = category
                add("page_viewed", day, me, data)
            elif kind == "product":
                sku = rng.choice(skus)
                add("product_viewed", day, me, {"sku": sku, "category": sku.split("-")[0],
                                                **({"session_id": session} if session else {})})
            elif kind == "search":
                add("searched", day, me, {"query": "q", **({"session_id": session} if session else {})})
            elif kind == "social":
                add("social_interaction", day, me, {"action": "like", **({"category": category}
                                                                         if rng.random() < 0.5 else {})})
            elif kind == "app":
                add("app_session", day, me, {"session_id": f"a{k}-{rng.randrange(3)}",
                                             "minutes": round(rng.uniform(0.5, 40), 1), "features_used": ["cart"]})
            else:
                add("review_posted", day, me, {"sku": rng.choice(skus), "rating": rng.randint(1, 5)})
        if k % 10 == 1:  # a withdrawal: the fold discounts what follows
            add("consent_changed", born + 100, me, {"purpose": rng.choice(("analytics", "personalization")),
                                                    "granted": False})
        if k % 10 == 2:  # a cookie that logs in later: two streams, merged from then on
            cookie = {"namespace": "cookie", "value": f"ck{k}"}
            add("page_viewed", born + 5, cookie, {"url": "https://shop.example/c", "session_id": f"ck{k}"})
            add("identity_linked", born + 150, cookie, {"other": me})
        if k % 10 in (4, 5):  # bought at the instant of the view, a week after it exactly, and an hour later
            day, late = born + 20, 7 + (k % 10 == 5) / 24
            add("product_viewed", day, me, {"sku": skus[0], "category": skus[0].split("-")[0]})
            add("product_viewed", day, me, {"sku": skus[1], "category": skus[1].split("-")[0]})
            add("order_placed", day, me, {"order_id": f"v{k}", "amount": "5.00", "currency": "CNY",
                                          "items": [{"sku": skus[0]}]})
            add("order_placed", day + late, me, {"order_id": f"w{k}", "amount": "5.00", "currency": "CNY",
                                                 "items": [{"sku": skus[1]}]})
        if k % 10 == 3:  # an amount finer than a cent
            add("order_placed", born + 50, me, {"order_id": f"f{k}", "amount": "1.005", "currency": "CNY"})
    return lines


def _same(fast: Row, slow: Row) -> None:
    assert (fast.person, fast.members, fast.cutoff) == (slow.person, slow.members, slow.cutoff)
    assert fast.features.keys() == slow.features.keys() == set(ROW_FEATURES)
    for name, value in slow.features.items():
        got = fast.features[name]
        assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value, **TOLERANCE), (name, got, value)
    assert list(fast.categories) == list(slow.categories)  # by name, as the view lists them
    assert all(fast.categories[c] == pytest.approx(v, abs=1.01e-6) for c, v in slow.categories.items())
    assert (fast.x, fast.aov, fast.orders_after, fast.next_category) == (slow.x, slow.aov, slow.orders_after,
                                                                         slow.next_category)
    assert (fast.days_to_next is None) == (slow.days_to_next is None)
    for name in ("t_x", "age_days", "spend_after", "days_to_next"):
        if getattr(slow, name) is not None:
            assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=1e-12), name


def test_rows_computed_column_wise_are_the_rows_folded_one_person_at_a_time(persona: Persona) -> None:
    report = ingest_jsonl(persona, _people(seed=7, count=240), origin="test")
    assert report.quarantined == 0
    found = histories(persona)
    people = list(found)
    columns = Columns(found, people)
    # most people are laid out as columns; a merged person, a withdrawal and a finer amount are not
    assert len(columns.people) > 0.6 * len(people) and len(columns.others) >= 60
    assert all(len(found[p].members) == 1 for p in columns.people)
    window = int(timedelta(days=60).total_seconds() * 1_000_000)
    cutoffs = [START + DAY * d for d in (30, 120, 121, 250, 400, 700)]
    compared = 0
    for index, cutoff in enumerate(cutoffs):
        for whole in (False, True):
            fast = point_in_time(found, people, [cutoff], window, labels=not whole, whole=whole, columns=columns)
            slow = [r for p in people for r in rows_at(found[p], cutoff, window, 0, labels=not whole, whole=whole)]
            assert len(fast) == len(slow)
            for a, b in zip(fast, slow, strict=True):
                _same(a, b)
            compared += len(fast)
        labelled = point_in_time(found, columns.people, [cutoff], window, labels=True, columns=columns)
        assert any(r.orders_after for r in labelled) or index == len(cutoffs) - 1
    assert compared > 1000
    # a training set stacks the cutoffs person by person; scoring takes people in the order of their ids
    stacked = build(found, cutoffs, timedelta(days=60))
    folded = [r for p in people for i, c in enumerate(cutoffs) for r in rows_at(found[p], c, window, i, labels=True)]
    assert len(stacked) == len(folded)
    for a, b in zip(stacked, folded, strict=True):
        _same(a, b)
    assert [r.person for r in rows_then(found, cutoffs[3], window)] == [
        r.person for p in sorted(found) for r in rows_at(found[p], cutoffs[3], window)]


def test_nobody_seen_yet_gives_no_rows_and_nobody_at_all_gives_empty_columns(persona: Persona) -> None:
    assert point_in_time({}, [], [START], 1) == []
    ingest_jsonl(persona, _people(seed=3, count=20), origin="test")
    found = histories(persona)
    assert point_in_time(found, list(found), [START - DAY], 1, labels=True) == []


def test_a_value_halfway_between_two_roundings_is_rounded_as_the_view_rounds_it(persona: Persona) -> None:
    """numpy rounds a value scaled by 10^places, Python the value itself: at a tie they can part
    (10.0005 s to 3 places: 10.0 against the view's 10.001). The columns round as the view does."""
    me = {"namespace": "shop_user", "value": "tie"}
    lines = [orjson.dumps({"event_id": f"t{n}", "source": "web", "type": kind, "occurred_at": at, "subject": me,
                           "data": data}) for n, (kind, at, data) in enumerate([
        ("page_viewed", "2024-03-01T00:00:00.000000Z", {"url": "https://shop.example/a", "session_id": "s"}),
        ("searched", "2024-03-01T00:00:10.000500Z", {"query": "q", "session_id": "s"}),
    ])]
    ingest_jsonl(persona, lines, origin="test")
    found = histories(persona)
    at = datetime(2024, 3, 2, tzinfo=UTC)
    (fast,) = point_in_time(found, list(found), [at], 1)
    (slow,) = rows_at(next(iter(found.values())), at, 1)
    assert slow.features["session_mean_duration_s"] == 10.001
    assert fast.features["session_mean_duration_s"] == 10.001
