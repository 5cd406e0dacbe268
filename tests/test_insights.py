"""Population insights (k-anonymity, differential privacy) and segment rules, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from persona.errors import ValidationError
from persona.insights import BOUNDS, HISTOGRAM_BINS, check, compute
from persona.population import IndexedProfile
from persona.segments import rfm_segment, segments


def person(i: int, country: str, monetary: float | None) -> IndexedProfile:
    features = {"lifecycle_stage": "active"} | ({} if monetary is None else {"monetary": monetary})
    return IndexedProfile(f"prf_{i:04d}", 1, {"country": country}, features, None)


PEOPLE = ([person(i, "CN", 100.0 + i) for i in range(40)] + [person(100 + i, "GB", 50.0) for i in range(8)]
          + [person(200 + i, "FR", None) for i in range(3)])


def test_exact_counts_and_means_with_small_groups_suppressed() -> None:
    result = compute(PEOPLE, group_by=["country"], metric="monetary", k=5)
    by = {g.key["country"]: g for g in result.groups}
    assert set(by) == {"CN", "GB"} and result.threshold == 5  # FR has 3 people, under k: left out
    assert (by["CN"].count, by["GB"].count) == (40, 8)
    assert by["CN"].mean == pytest.approx(sum(100.0 + i for i in range(40)) / 40)
    assert by["GB"].mean == 50.0
    assert len(by["CN"].histogram) == HISTOGRAM_BINS and sum(c or 0 for _, _, c in by["CN"].histogram) == 40
    assert [c for _, _, c in by["GB"].histogram] == [8.0] + [0.0] * (HISTOGRAM_BINS - 1)  # 50 is in bin 0


def test_the_metric_is_clipped_to_its_declared_bounds() -> None:
    result = compute(PEOPLE, group_by=["country"], metric="monetary", k=5, bounds=(0.0, 60.0))
    assert {g.key["country"]: g.mean for g in result.groups} == {"CN": 60.0, "GB": 50.0}


def test_noise_is_added_and_stays_plausible() -> None:
    exact = compute(PEOPLE, group_by=["country"], metric="monetary", k=5)
    noisy = compute(PEOPLE, group_by=["country"], metric="monetary", k=5, epsilon=4.0,
                    rng=np.random.default_rng(7))
    exact_cn = next(g for g in exact.groups if g.key["country"] == "CN")
    noisy_cn = next(g for g in noisy.groups if g.key["country"] == "CN")
    assert noisy_cn.count != exact_cn.count  # Laplace noise of scale 4/ε = 1 on the count
    assert abs(noisy_cn.count - exact_cn.count) < 15  # P(|noise| ≥ 15) = e^-15
    lo, hi = BOUNDS["monetary"]
    assert noisy_cn.mean is not None and lo <= noisy_cn.mean <= hi
    assert all(c >= 0 for _, _, c in noisy_cn.histogram)
    again = compute(PEOPLE, group_by=["country"], metric="monetary", k=5, epsilon=4.0,
                    rng=np.random.default_rng(8))
    assert [g.count for g in again.groups] != [g.count for g in noisy.groups]  # fresh noise every time


def test_with_noise_a_group_of_one_never_shows_its_key() -> None:
    loner = [*PEOPLE, person(999, "IS", 10.0)]  # the only person in Iceland
    rng = np.random.default_rng(11)
    for _ in range(300):  # shown with probability ≤ δ = 1e-6 each time
        result = compute(loner, group_by=["country"], metric=None, k=5, epsilon=0.1, rng=rng)
        assert all(g.key["country"] != "IS" for g in result.groups)
        assert result.threshold > 100  # 1 + (1/0.1)·ln(1/2δ)


def test_malformed_questions_are_refused_before_anything_is_computed() -> None:
    with pytest.raises(ValidationError, match="metric"):
        check("favourite_colour", None, None)
    with pytest.raises(ValidationError, match="bounds"):
        check("monetary", None, (5.0, 1.0))
    with pytest.raises(ValidationError, match="epsilon"):
        check("monetary", 0.0, None)
    with pytest.raises(ValidationError, match="epsilon"):
        check(None, 11.0, None)
    assert check("monetary", 0.5, None) == BOUNDS["monetary"]


@pytest.mark.parametrize(("r", "f", "name"), [
    (5, 5, "champions"), (4, 4, "champions"), (3, 5, "loyal"), (1, 4, "loyal"), (2, 3, "at_risk"),
    (1, 1, "hibernating"), (5, 1, "new_customers"), (4, 2, "new_customers"), (3, 3, "needs_attention"),
])
def test_rfm_segments_follow_the_documented_rules(r: int, f: int, name: str) -> None:
    assert rfm_segment(r, f) == name


def test_segments_of_a_profile() -> None:
    labels = segments({"consent": {"marketing": True, "analytics": False, "personalization": None}},
                      {"lifecycle_stage": "active", "top_categories": ["books", "toys"]}, {"r": 5, "f": 5, "m": 5})
    assert labels == ["stage:active", "rfm:champions", "high_value", "affinity:books", "consent:marketing"]
    assert segments({}, {}, None) == []
