"""Population insights (k-anonymity, differential privacy through OpenDP) and segment rules, as pure functions.

The private answers' noise comes from the operating system's secure generator and cannot
be seeded: each statistical assertion says how likely it is to fail by chance (always under
1e-9), from the noise scales and thresholds the mechanism reports.
"""

from __future__ import annotations

import math

import pytest

from persona.errors import ValidationError
from persona.insights import (
    BOUNDS,
    DELTA,
    EPSILON_CEILING,
    EPSILON_FLOOR,
    GRID,
    HISTOGRAM_BINS,
    check,
    exact,
    mechanism,
    private,
)
from persona.population import IndexedProfile
from persona.segments import rfm_segment, segments


def person(i: int, country: str, monetary: float | None) -> IndexedProfile:
    features = {"lifecycle_stage": "active"} | ({} if monetary is None else {"monetary": monetary})
    return IndexedProfile(f"prf_{i:04d}", 1, {"country": country}, features, None)


PEOPLE = ([person(i, "CN", 100.0 + i) for i in range(40)] + [person(100 + i, "GB", 50.0) for i in range(8)]
          + [person(200 + i, "FR", None) for i in range(3)])
# groups large enough to clear any threshold at ε = 2 by far (29 with a metric, count noise scale 1)
CROWD = ([person(i, "CN", 100.0 + i) for i in range(400)] + [person(1_000 + i, "GB", 50.0 + i % 7)
                                                             for i in range(300)]
         + [person(2_000 + i, "FR", None) for i in range(3)])
EVERY_VALUE_UNIQUE = [person(i, "CN", 10.0 + i * 0.37) for i in range(200)]


def discrete_laplace_tail(scale: float, at_least: int) -> float:
    """P(Z ≥ at_least) for discrete Laplace noise of this scale (at_least ≥ 1)."""
    return math.exp(-at_least / scale) / (1 + math.exp(-1 / scale))


# -- exact ---------------------------------------------------------------------------------------
def test_exact_counts_and_means_with_small_groups_suppressed() -> None:
    result = exact(PEOPLE, group_by=["country"], metric="monetary", k=5)
    by = {g.key["country"]: g for g in result.groups}
    assert set(by) == {"CN", "GB"} and result.threshold == 5  # FR has 3 people, under k: left out
    assert (by["CN"].count, by["GB"].count) == (40, 8)
    assert by["CN"].mean == pytest.approx(sum(100.0 + i for i in range(40)) / 40)
    assert by["GB"].mean == 50.0
    assert len(by["CN"].histogram) == HISTOGRAM_BINS and sum(c or 0 for _, _, c in by["CN"].histogram) == 40
    assert [c for _, _, c in by["GB"].histogram] == [8.0] + [0.0] * (HISTOGRAM_BINS - 1)  # 50 is in bin 0
    assert (result.epsilon, result.delta) == (None, None)


def test_the_metric_is_clipped_to_its_declared_bounds() -> None:
    above = [person(300 + i, "DE", 20_000.0 + i) for i in range(5)]  # over the declared 10,000
    result = exact(above, group_by=["country"], metric="monetary", k=5)
    (group,) = result.groups
    assert group.mean == BOUNDS["monetary"][1] and [c for _, _, c in group.histogram][-1] == 5
    assert exact(above, group_by=["country"], metric="monetary", k=5, bounds=BOUNDS["monetary"]).groups == [group]


@pytest.mark.parametrize("bounds", [(0.0, 60.0), (0.0, 0.01), (4_000.0, 10_000.0)])
def test_exact_answers_take_no_narrowed_bounds(bounds: tuple[float, float]) -> None:
    """Review finding C: narrowed bounds clip everyone outside them to their ends, so an exact mean
    gives away the values between them: with lo just under one person's spend, sum − n·lo is
    theirs alone (and the same mean at a slightly higher lo says how many are above). An exact
    answer clips to the declared bounds only; narrowing is for private answers."""
    lo, hi = bounds
    spends = sorted(p.features["monetary"] for p in CROWD if "monetary" in p.features)
    n, victim = len(spends), spends[-1]
    assert spends[-2] <= victim - 1  # the richest alone above victim − 1
    with pytest.raises(ValidationError, match="bounds"):
        answer = exact(CROWD, group_by=["lifecycle_stage"], metric="monetary", k=5,
                        bounds=(victim - 1, BOUNDS["monetary"][1]))
        (group,) = answer.groups  # what the attack read before: one person's spend, exactly
        assert abs(n * (group.mean or 0) - (n - 1) * (victim - 1) - victim) > 0.1  # within the means' rounding
    with pytest.raises(ValidationError, match="bounds"):
        exact(PEOPLE, group_by=["country"], metric="monetary", k=5, bounds=(lo, hi))
    # a private answer may still narrow them (its noise covers the whole narrowed range)
    assert mechanism(metric="monetary", epsilon=1.0, k=5, bounds=bounds).metric is not None


def test_an_exact_mean_needs_k_people_who_have_the_value() -> None:
    """Review finding C: a group of k or more people of whom fewer than k have the metric showed
    the mean of those few: one person's value, when one has it."""
    few = [person(i, "ES", None) for i in range(9)] + [person(9, "ES", 1234.5)]
    (group,) = exact(few, group_by=["country"], metric="monetary", k=5).groups
    assert group.count == 10  # the group is shown: ten people
    assert group.mean is None and group.histogram == []  # but not one person's spend
    four = few[:5] + [person(10 + i, "ES", 100.0 * (i + 1)) for i in range(4)]  # 4 of 9 have it
    assert exact(four, group_by=["country"], metric="monetary", k=5).groups[0].mean is None
    five = [*four, person(20, "ES", 500.0)]  # 5 of 10: shown
    assert exact(five, group_by=["country"], metric="monetary", k=5).groups[0].mean == 300.0


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-320, 5e-324, 0.0, -1.0, math.nan, math.inf, -math.inf, 1e300,
                                     EPSILON_FLOOR / 2, math.nextafter(EPSILON_CEILING, math.inf), 10.0])
def test_an_epsilon_outside_the_floor_and_ceiling_is_refused(epsilon: float) -> None:
    for metric in (None, "monetary"):
        with pytest.raises(ValidationError, match="epsilon"):
            mechanism(metric=metric, epsilon=epsilon, k=5)


@pytest.mark.parametrize("bounds", [
    (5.0, 1.0), (1.0, 1.0), (-1.0, 100.0), (0.0, 10_001.0), (-1e308, 1e308), (0.0, 1e300), (0.0, 5e-324),
    (0.0, 0.009), (math.nan, 1.0), (0.0, math.inf),
], ids=["reversed", "empty", "below", "above", "huge", "too-high", "tiny", "too-narrow", "nan", "inf"])
def test_bounds_may_only_narrow_the_declared_ones(bounds: tuple[float, float]) -> None:
    with pytest.raises(ValidationError, match="bounds"):
        check("monetary", bounds)
    with pytest.raises(ValidationError, match="bounds"):
        mechanism(metric="monetary", epsilon=1.0, k=5, bounds=bounds)


def test_malformed_questions_are_refused_before_anything_is_computed() -> None:
    with pytest.raises(ValidationError, match="metric"):
        check("favourite_colour", None)
    with pytest.raises(ValidationError, match="metric"):
        mechanism(metric="favourite_colour", epsilon=1.0, k=5)
    assert check("monetary", None) == BOUNDS["monetary"]
    assert check("monetary", (10.0, 20.0)) == (10.0, 20.0)


# -- what a private answer costs -----------------------------------------------------------------
@pytest.mark.parametrize("metric", [None, "monetary", "birth_year"])
@pytest.mark.parametrize("epsilon", [EPSILON_FLOOR, 0.1, 1.0, EPSILON_CEILING])
def test_the_charge_is_what_the_privacy_maps_say(metric: str | None, epsilon: float) -> None:
    made = mechanism(metric=metric, epsilon=epsilon, k=5)
    parts = made.metric
    person = (1, 1, 1)  # one group, by one, in all: what a person added or removed does to the counts
    maps = made.keys.map(person)[0]
    if parts is not None:
        maps = maps + parts.numbers.map(1) + parts.sums.map(parts.sum_stability) + parts.histogram.map(1)
        assert parts.sum_stability == GRID  # one person moves one group's sum by the whole range
    assert made.epsilon == maps and epsilon * (1 - 1e-9) <= made.epsilon <= epsilon
    assert 0 < made.delta <= DELTA and math.isfinite(made.scale) and made.threshold >= 5


@pytest.mark.parametrize("metric", [None, "monetary"])
@pytest.mark.parametrize("epsilon", [EPSILON_FLOOR, 0.3, 1.0, EPSILON_CEILING])
def test_the_charged_delta_covers_a_group_of_one_being_shown(metric: str | None, epsilon: float) -> None:
    """A group of one person is shown when its noise reaches threshold − 1. OpenDP 0.16's map
    alone reports the tail from the threshold itself (opendp/opendp#2922), a factor e^(1/scale)
    too little; the δ charged must cover the whole of it, and be the least threshold to do so."""
    made = mechanism(metric=metric, epsilon=epsilon, k=5)
    shown_alone = discrete_laplace_tail(made.scale, made.threshold - 1)
    assert shown_alone <= made.delta <= DELTA
    assert made.threshold == 5 or discrete_laplace_tail(made.scale, made.threshold - 2) > DELTA


def test_a_group_of_one_is_shown_no_more_often_than_delta_says() -> None:
    """Measured, with a large δ: 20,000 people each alone in a group. If the charged δ were
    OpenDP's bare map, a group would show e^(1/scale) ≈ 2.7 times as often as it says."""
    made = mechanism(metric=None, epsilon=1.0, k=1, delta=0.05)
    assert made.scale == 1.0 and made.delta <= 0.05
    people = [person(i, f"C{i}", None) for i in range(20_000)]
    shown = len(private(people, group_by=["country"], mechanism=made).groups)
    # at most Binomial(20,000, δ) with δ = 0.036 here (threshold 4): μ ≤ 728, and by Chernoff
    # P(X ≥ 1.3·728) ≤ e^(-0.09·728/2.3) < 1e-12; the bare map's rate would give μ ≈ 1,980
    assert made.threshold == 4
    assert shown <= 1.3 * 20_000 * made.delta


# -- private answers -----------------------------------------------------------------------------
def test_noise_is_added_and_stays_plausible() -> None:
    truth = {g.key["country"]: g for g in exact(CROWD, group_by=["country"], metric="monetary", k=5).groups}
    made = mechanism(metric="monetary", epsilon=EPSILON_CEILING, k=5)
    assert made.scale == pytest.approx(1.0) and made.threshold == 29
    answers = [private(CROWD, group_by=["country"], mechanism=made) for _ in range(2)]
    means = []
    for answer in answers:
        by = {g.key["country"]: g for g in answer.groups}
        # CN (400) and GB (300) are shown unless the noise is below -270 (P < e^-270); FR (3)
        # would need noise of at least 26 (P < e^-26 ≈ 5e-12)
        assert set(by) == {"CN", "GB"}
        assert (answer.epsilon, answer.delta, answer.threshold) == (made.epsilon, made.delta, 29)
        for country, group in by.items():
            assert abs(group.count - truth[country].count) < 30  # P(|noise| ≥ 30) < e^-30
            lo, hi = BOUNDS["monetary"]
            assert group.mean is not None and lo <= group.mean <= hi
            assert len(group.histogram) == HISTOGRAM_BINS and all(c >= 0 for _, _, c in group.histogram)
            assert group.histogram[0][0] == lo and group.histogram[-1][1] == hi
            means.append(group.mean)
    exact_means = [truth[c].mean for c in ("CN", "GB")] * 2
    # the sum's noise has scale 6·GRID/ε steps (3·10⁴ in money): a mean equal to the exact one to
    # 4 decimals has probability under 1e-6; all four at once under 1e-24; the two answers alike, too
    assert means != exact_means and means[:2] != means[2:]


def test_the_noise_is_discrete_laplace_at_the_stated_scale() -> None:
    """Counts get OpenDP's discrete Laplace noise (integers, P(k) ∝ e^(−|k|/scale)), not a
    floating-point Laplace sample rounded (Mironov 2012): at scale 1 the two differ in how often
    the noise is 0 (0.462 against 0.393) and in its mean size (0.851 against 0.960). 6,000 answers:
    each bound is more than 4 standard errors from the discrete figure and from the rounded one."""
    made = mechanism(metric=None, epsilon=1.0, k=1, delta=0.05)
    assert made.scale == 1.0
    crowd = [person(i, "CN", None) for i in range(50)]
    noise = [private(crowd, group_by=["country"], mechanism=made).groups[0].count - 50 for _ in range(6_000)]
    assert all(float(n).is_integer() for n in noise)
    q = math.exp(-1 / made.scale)
    zero, size = (1 - q) / (1 + q), 2 * q / (1 - q * q)  # P(0) and E|noise| of the discrete Laplace
    assert abs(sum(n == 0 for n in noise) / len(noise) - zero) < 0.035
    assert abs(sum(abs(n) for n in noise) / len(noise) - size) < 0.06
    assert abs(sum(n > 0 for n in noise) - sum(n < 0 for n in noise)) / len(noise) < 0.05  # symmetric about 0


def test_with_noise_a_group_of_one_never_shows_its_key() -> None:
    loner = [*PEOPLE, person(999, "IS", 10.0)]  # the only person in Iceland
    made = mechanism(metric=None, epsilon=0.1, k=5)
    assert made.threshold > 250  # δ = 1e-12 at a count noise scale of 10
    for _ in range(300):  # shown with probability ≤ δ each time: all 300 under 3e-10
        result = private(loner, group_by=["country"], mechanism=made)
        assert all(g.key["country"] != "IS" for g in result.groups)


@pytest.mark.parametrize("by", [["monetary"], ["monetary", "country"]])
def test_grouping_by_a_unique_value_shows_no_one(by: list[str]) -> None:
    """Finding 1 of issue 17: every value unique, every group one person. With δ = 1e-15
    (about the least the library's maps work to), each of 200 people in each of 120 answers is
    shown with probability ≤ 1e-15: anyone shown at all, under 3e-11."""
    for epsilon in (EPSILON_CEILING, 1.0, EPSILON_FLOOR):
        made = mechanism(metric="monetary", epsilon=epsilon, k=5, delta=1e-15)
        for _ in range(100 if epsilon == EPSILON_CEILING else 10):
            assert private(EVERY_VALUE_UNIQUE, group_by=by, mechanism=made).groups == []


def test_a_private_answer_with_nobody_shown_has_no_numbers() -> None:
    made = mechanism(metric="monetary", epsilon=1.0, k=5)
    result = private(PEOPLE[:3], group_by=["country"], mechanism=made)  # 3 people: under any threshold
    assert result.groups == [] and result.metric == "monetary" and result.bounds == BOUNDS["monetary"]


# -- segments ------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(("r", "f", "name"), [(5, 5, "at_risk"), (5, 3, "at_risk"), (4, 4, "at_risk"),
                                              (5, 2, "hibernating"), (1, 1, "hibernating"), (3, 5, "at_risk")])
def test_a_churned_profile_is_never_a_champion_whatever_its_scores(r: int, f: int, name: str) -> None:
    """Recency is ranked within the population, the stage is absolute: in a population that has
    mostly lapsed, the least lapsed score r 5, and a churned one of them is lapsed all the same."""
    assert rfm_segment(r, f, "churned") == name
    labels = segments({}, {"lifecycle_stage": "churned"}, {"r": r, "f": f, "m": 5})
    assert labels == ["stage:churned", f"rfm:{name}", "high_value"]
    for stage in ("new", "active", "at_risk", None):  # the other stages leave the scores to speak
        assert rfm_segment(r, f, stage) == rfm_segment(r, f)
