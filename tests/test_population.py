"""Queries across profiles from the index: time shifting, filters, pages, RFM, aggregates."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from persona import Persona
from persona.ingest import ingest_jsonl
from persona.population import ProfileFilter, list_profiles, population
from persona.projections import FEATURES, replay
from persona.projector import rebuild
from persona.rfm import compute_rfm, quintile_scores
from persona.verify import verify
from tests.conftest import jsonl, order, record
from tests.test_projection_features import HISTORY


@given(st.integers(0, 400), st.integers(0, 400))
def test_a_view_shifted_in_time_equals_the_view_computed_then(start: int, extra: int) -> None:
    state = replay(FEATURES, HISTORY)
    # the index computes views at the latest event (5 April here): nothing happens between t1 and t2
    t1 = datetime(2025, 4, 5, tzinfo=UTC) + timedelta(days=start)
    t2 = t1 + timedelta(days=extra, hours=extra % 7)
    shifted = FEATURES.shift(FEATURES.view(state, t1), t1, t2)
    direct = FEATURES.view(state, t2)
    assert shifted["recency_days"] == direct["recency_days"]
    assert shifted["lifecycle_stage"] == direct["lifecycle_stage"]
    for category, value in direct["category_affinity"].items():
        assert abs(shifted["category_affinity"][category] - value) <= 2e-6


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.integers(0, 20), min_size=1, max_size=40))
def test_quintile_scores_are_monotonic_and_fair_to_ties(values: dict[str, int]) -> None:
    up = quintile_scores(values)
    down = quintile_scores(values, higher_is_better=False)
    for a in values:
        assert 1 <= up[a] <= 5 and 1 <= down[a] <= 5
        for b in values:
            if values[a] == values[b]:
                assert up[a] == up[b] and down[a] == down[b]
            elif values[a] < values[b]:
                assert up[a] <= up[b] and down[a] >= down[b]
    if len(set(values.values())) == len(values) >= 3:  # all distinct: the ends are 1 and 5
        assert max(up.values()) == 5 and min(up.values()) == 1


def shop(persona: Persona) -> None:
    rows = []
    for i in range(10):
        for k in range(i + 1):  # person i places i + 1 orders of 10 × (i + 1)
            rows.append(record(f"c{i}@example.com", "order_placed",
                               {"order_id": f"{i}-{k}", "amount": str(10 * (i + 1)), "currency": "EUR"},
                               occurred_at=f"2025-{1 + k % 12:02d}-{10 + i:02d}T00:00:00Z", event_id=f"{i}-{k}"))
        rows.append(record(f"c{i}@example.com", "profile_updated", {"country": "DE" if i % 2 else "FR"},
                           source="crm", occurred_at="2025-01-01T00:00:00Z", event_id=f"p{i}"))
    rows.append(record("browser@example.com", occurred_at="2025-06-01T00:00:00Z", event_id="b"))
    ingest_jsonl(persona, io.BytesIO(jsonl(*rows)), origin="f")


def test_rebuild_scores_rfm_and_the_index_answers_filters_and_pages(persona: Persona) -> None:
    shop(persona)
    rebuild(persona, workers=1)
    when = datetime(2026, 1, 15, tzinfo=UTC)
    everyone = list_profiles(persona, first=100, as_of=when)
    assert len(everyone) == 11
    by_freq = {p.features["frequency"]: p for p in everyone}
    assert by_freq[10].rfm == {"r": 5, "f": 5, "m": 5}
    assert by_freq[1].rfm is not None and by_freq[1].rfm["f"] == 1 and by_freq[1].rfm["m"] == 1
    assert by_freq[0].rfm is None  # the browser never bought
    assert by_freq[10].features["recency_days"] == (when - datetime(2025, 10, 19, tzinfo=UTC)).days

    big = list_profiles(persona, ProfileFilter(ranges={"monetary": (200.0, None)}), first=100, as_of=when)
    assert sorted(p.features["frequency"] for p in big) == [5, 6, 7, 8, 9, 10]
    german_loyal = ProfileFilter(rfm_min={"f": 4}, attributes={"country": "DE"})
    assert sorted(p.features["frequency"] for p in list_profiles(persona, german_loyal, as_of=when)) == [8, 10]
    page1 = list_profiles(persona, first=4, as_of=when)
    page2 = list_profiles(persona, first=4, after=page1[-1].id, as_of=when)
    assert len(page1) == 4 and len(page2) == 4 and page1[-1].id < page2[0].id
    churned = list_profiles(persona, ProfileFilter(lifecycle_stages=frozenset({"churned"})), as_of=when)
    assert [p.features["frequency"] for p in churned] == [1]  # one order, on 10 January 2025
    later = list_profiles(persona, ProfileFilter(lifecycle_stages=frozenset({"churned"})),
                          as_of=datetime(2027, 6, 1, tzinfo=UTC), first=100)
    assert len(later) == 11


def test_rfm_scores_move_with_orders_never_with_the_clock(persona: Persona) -> None:
    """Scored again, an unchanged population writes nothing; a new buyer with the latest order
    scores r 5 and moves the others; the rows written are tagged (verify reads every tag)."""
    shop(persona)
    assert compute_rfm(persona) == 10
    scores = persona.recorder.rfm_scores()
    browser = persona.log.profile_for("email", "browser@example.com")
    assert browser is not None and browser not in scores
    assert compute_rfm(persona) == 10 and persona.recorder.rfm_scores() == scores
    ingest_jsonl(persona, io.BytesIO(jsonl(record("browser@example.com", "order_placed", {
        "order_id": "late", "amount": "1", "currency": "EUR"}, occurred_at="2025-12-01T00:00:00Z", event_id="l",
        source="shop"))), origin="g")
    assert compute_rfm(persona) == 11
    after = persona.recorder.rfm_scores()
    assert after[browser] == {"r": 5, "f": 1, "m": 1}
    assert any(after[pid] != old for pid, old in scores.items())  # the others moved down the ranks
    assert verify(persona).events > 0


def test_population_aggregates(persona: Persona) -> None:
    shop(persona)
    rows = population(persona, group_by=("country",), metrics=("frequency",), as_of=datetime(2026, 1, 1, tzinfo=UTC))
    table: dict[Any, Any] = {r["country"]: r for r in rows}
    assert table["DE"]["count"] == 5 and table["DE"]["mean_frequency"] == 6.0  # people 1,3,5,7,9 -> 2,4,6,8,10
    assert table["FR"]["count"] == 5 and table["FR"]["mean_frequency"] == 5.0
    assert table[None]["count"] == 1


def test_questions_about_the_past_and_future_dated_events_use_replay(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(order("b@example.com", "p1", "10", at="2026-04-01T00:00:00Z"),
                                           order("b@example.com", "p2", "90", at="2026-05-20T00:00:00Z"))),
                 origin="f")
    past = list_profiles(persona, as_of=datetime(2026, 4, 15, tzinfo=UTC))[0]
    assert past.features["frequency"] == 1 and past.features["recency_days"] == 14.0
    assert "category_affinity" in past.features


def test_age_in_the_index_is_derived_for_the_readers_instant(persona: Persona) -> None:
    ingest_jsonl(persona, io.BytesIO(jsonl(record("c@example.com", "profile_updated", {"birth_year": 1990},
                                                  occurred_at="2020-01-01T00:00:00Z", source="crm",
                                                  event_id="c1"))), origin="f")
    (profile,) = list_profiles(persona, as_of=datetime(2030, 6, 1, tzinfo=UTC))
    assert profile.attributes["age"] == 40
