"""Population insights that protect the people in them, in two kinds with their own entry points.

`exact`: counts, means and histograms as they are, k-anonymous — a group of fewer than k
people is left out, a group's mean and histogram when fewer than k of its people have the
metric, and its histogram when any bin holds 1 to k−1 of them. The metric is clipped to its
declared bounds only (`check_exact`): narrowed bounds would clip everyone outside them to
their ends and leave the few between to a mean. Exact answers are not private against
differencing (two filters that differ by one person tell that person's value apart): the API
gives them only to tokens granted it, and refuses them the numeric ranges that would let
a caller move a filter one person at a time (persona.api.schema).

`private`: differentially private through OpenDP — its measurements, its privacy maps and
its noise, sampled exactly on the integers from the operating system's secure generator
(no floating-point Laplace: Mironov 2012). Neighbouring populations differ by one person,
who is one row. `mechanism()` builds and costs every part before any data is read; the
(ε, δ) it reports is what the library's maps say the parts cost together (ε adds up over
the parts, δ is the first part's), and it is what the caller charges. People are counted
into groups, and their clipped values summed, here; what one person can move those numbers
by is the stability the library's own transformations for them report (`make_count_by`,
`make_count_by_categories`, `make_clamp` >> `make_sum`), and the noise is the library's:

1. which groups are shown, and their counts: `make_laplace_threshold` (discrete Laplace
   noise on each count; a group is shown only when its noisy count reaches a threshold
   chosen so that a group of one person appears with probability at most δ — the group
   keys are values taken from the data). All of ε without a metric, half of it with one.
2. with a metric, over the groups shown (public by then), a sixth of ε each and
   `make_laplace` on a vector over the groups (a person is in one group only): how many
   have the metric, the sum of their values clipped to the bounds and counted in GRID
   steps from the lower bound, and the histogram over (group, bin). The mean is the noisy
   sum over the noisy number, a step that adds no privacy cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import opendp.prelude as dp
import orjson

from persona.errors import ValidationError

if TYPE_CHECKING:
    from persona.population import IndexedProfile

dp.enable_features("contrib")  # the library's measurements that have a proof but are not yet vetted

# Clipping bounds of numeric features for sums and histograms: declared, never taken from
# the data (bounds learnt from the data would themselves leak). A question may narrow them.
# RFM scores as groups (an exact answer's only: one person can move many people's scores, so a
# count grouped by them has no bounded sensitivity and noise would promise nothing)
RFM_GROUPS = {"rfm_r": "r", "rfm_f": "f", "rfm_m": "m"}
BOUNDS: dict[str, tuple[float, float]] = {
    "frequency": (0, 100),
    "monetary": (0, 10_000),
    "aov": (0, 2_000),
    "recency_days": (0, 3_650),
    "sessions": (0, 1_000),
    "page_views": (0, 5_000),
    "product_views": (0, 5_000),
    "searches": (0, 1_000),
    "active_days": (0, 3_650),
    "app_sessions": (0, 1_000),
    "app_minutes": (0, 10_000),
    "refunds": (0, 100),
    "refund_amount": (0, 10_000),
    "reviews": (0, 500),
    "review_mean_rating": (1, 5),
    "conversion_rate": (0, 1),
    "behavior_events": (0, 100_000),
    "session_mean_duration_s": (0, 7_200),
    "interpurchase_mean_days": (0, 3_650),
    "age": (0, 120),
    "birth_year": (1900, 2030),
}
HISTOGRAM_BINS = 10
NARROWEST = 1e-6  # narrowed bounds keep at least this share of the declared range
# ε of one private answer. Below the floor every noise scale is over 100 and every threshold
# over 2,500 people: nothing useful can be shown, and the floor keeps scales finite and far
# from overflow however the number is written (1e-320 once made the noise infinite). Above
# the ceiling an answer is close to exact (count noise under one person): e² ≈ 7.4 is the
# most one answer may change the odds of anything about a person, and the default budget
# of 10 lasts at least five answers.
EPSILON_FLOOR = 0.01
EPSILON_CEILING = 2.0
# δ of one private answer: the chance that a group of one person is shown at all. Kept well
# under 1/population even summed over a token's whole δ budget (10⁻⁹ by default, a thousand
# answers): at 10⁸ profiles and every group a single person, 0.1 expected exposures in all.
DELTA = 1e-12
GRID = 2**20  # a metric's clipped values are counted in steps of (hi − lo)/GRID from lo
_STR = (dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance())
_STEPS = (dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance())


@dataclass
class Group:
    key: dict[str, Any]
    count: float
    mean: float | None = None
    histogram: list[tuple[float, float, float]] = field(default_factory=list)  # (from, to, count)


@dataclass
class Insights:
    groups: list[Group]
    k: int
    threshold: float  # the (noisy) count a group needed to be shown
    metric: str | None
    bounds: tuple[float, float] | None
    epsilon: float | None = None  # spent by this answer (None: exact)
    delta: float | None = None


def _value(profile: IndexedProfile, name: str) -> Any:
    if name in profile.features:
        return profile.features[name]
    score = RFM_GROUPS.get(name)
    if score is not None:
        return profile.rfm.get(score) if profile.rfm else None
    return profile.attributes.get(name)


def _number(profile: IndexedProfile, metric: str) -> float | None:
    value = _value(profile, metric)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def group_key(profile: IndexedProfile, by: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for name in by:
        value = _value(profile, name)
        if isinstance(value, list | dict):
            value = str(value)
        out.append(value)
    return tuple(out)


def _in_order(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(part) for part in key)


def check(metric: str | None, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """The metric's clipping bounds: its declared ones, or a narrower range inside them."""
    if metric is None:
        return None
    declared = BOUNDS.get(metric)
    if declared is None:
        known = ", ".join(sorted(BOUNDS))
        raise ValidationError(f"metric: not a numeric feature with declared bounds (known: {known})")
    if bounds is None:
        return declared
    lo, hi = bounds
    low, high = declared
    if not (low <= lo < hi <= high and hi - lo >= (high - low) * NARROWEST):
        raise ValidationError(f"bounds: give [lowest, highest] inside the declared [{low:g}, {high:g}],"
                              f" at least a millionth of it wide")
    return float(lo), float(hi)


def check_exact(metric: str | None, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """An exact answer's clipping bounds: the declared ones, never narrowed. Narrowed, they clip
    everyone outside to their ends, so an exact mean gives away the values between: with the
    lower end just under one person's value, n × mean − (n − 1) × lo is theirs (and the same mean
    at a slightly higher end tells how many are above it). A private answer may narrow them."""
    clip = check(metric, bounds)
    if bounds is not None and metric is not None and clip != BOUNDS[metric]:
        raise ValidationError("bounds: an exact answer clips to the declared bounds only (narrowed, they would"
                              " single out the values between them); ask with epsilon to narrow them")
    return clip


# -- exact --------------------------------------------------------------------------------------
def exact(profiles: Iterable[IndexedProfile], *, group_by: Sequence[str], metric: str | None, k: int,
          bounds: tuple[float, float] | None = None) -> Insights:
    """Counts per group of at least k people, and the metric's mean and histogram where at least
    k of them have it."""
    clip = check_exact(metric, bounds)
    groups: dict[tuple[Any, ...], list[float | None]] = {}
    for profile in profiles:
        groups.setdefault(group_key(profile, group_by), []).append(
            _number(profile, metric) if metric is not None else None)
    out = []
    for key, values in sorted(groups.items(), key=lambda kv: _in_order(kv[0])):
        if len(values) < k:
            continue  # neither the group nor the fact that it was left out is shown
        group = Group(dict(zip(group_by, key, strict=True)), float(len(values)))
        if clip is not None:
            _describe_exactly(group, values, clip, k)
        out.append(group)
    return Insights(out, k, float(k), metric, clip)


def _describe_exactly(group: Group, values: list[float | None], bounds: tuple[float, float], k: int) -> None:
    lo, hi = bounds
    present = np.clip(np.array([v for v in values if v is not None], dtype=float), lo, hi)
    if len(present) < k:
        # k people in the group but fewer with the metric: their mean is the few's, one person's
        # value when one has it (and any histogram of them has a bin of 1 to k−1)
        return
    group.mean = round(float(present.mean()), 4)
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    counts = [float(c) for c in np.histogram(present, bins=edges)[0]]
    if any(0 < c < k for c in counts):
        # a bin of fewer than k people would single them out, and hiding just that bin
        # would not (the group's count minus the others gives it away): no histogram at all
        return
    group.histogram = [(float(a), float(b), c) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)]


# -- differentially private ----------------------------------------------------------------------
@dataclass(frozen=True)
class MetricParts:
    """The measurements of a metric's number, sum and histogram over the groups shown."""

    name: str
    bounds: tuple[float, float]
    numbers: dp.Measurement  # per group shown: how many have the metric
    sums: dp.Measurement  # per group shown: the sum of their values, clipped, in GRID steps from lo
    histogram: dp.Measurement  # per (group shown, bin): how many
    sum_stability: int  # what one person moves a group's clipped sum by (make_clamp >> make_sum)


@dataclass(frozen=True)
class Mechanism:
    """A private answer's measurements, costed before any data is read."""

    keys: dp.Measurement  # {group key: people} -> {group key: noisy count}, under `threshold` left out
    scale: float  # of the noise on the counts
    threshold: int
    k: int
    epsilon: float  # what the privacy maps say all the parts cost for one person
    delta: float
    metric: MetricParts | None


def mechanism(*, metric: str | None, epsilon: float, k: int, bounds: tuple[float, float] | None = None,
              delta: float = DELTA) -> Mechanism:
    """Refuses a malformed question (ValidationError) before anything is spent on it.

    Counting people into groups and summing their clipped values are done in Python (OpenDP's
    transformations would take every person across its interface, element by element: ten
    times the time at 80,000 profiles); what one person can move those counts and sums by is
    the library's own stability map of the transformations that compute them."""
    if not EPSILON_FLOOR <= epsilon <= EPSILON_CEILING:  # NaN fails it too
        raise ValidationError(f"epsilon: must be between {EPSILON_FLOOR} and {EPSILON_CEILING}")
    if not 1e-15 <= delta < 1:  # the library's maps work to about 1e-16
        raise ValidationError("delta: must be at least 1e-15 and below 1")
    clip = check(metric, bounds)
    count_by = dp.t.make_count_by(*_STR, TV="i32")
    counts = count_by.output_domain, count_by.output_metric
    person = count_by.map(1)  # (groups, most per group, total) one person adds or removes: (1, 1, 1)
    key_scale = _scale(lambda s: dp.m.make_laplace_threshold(*counts, scale=s, threshold=max(k, 1)), person,
                       1 / (epsilon if clip is None else epsilon / 2))
    keys, threshold, (key_epsilon, key_delta) = _threshold(counts, person, key_scale, max(k, 1), delta)
    if metric is None or clip is None:
        return Mechanism(keys, key_scale, threshold, k, key_epsilon, key_delta, None)
    # a person is in one group, has one value and falls in one bin: each vector over the groups
    # moves by what one category's count, or one group's clipped sum, moves
    one_count = dp.t.make_count_by_categories(*_STR, categories=["group"], null_category=False, TOA="i32").map(1)
    one_sum = (dp.t.make_clamp(*_STEPS, bounds=(0, GRID)) >> dp.t.then_sum()).map(1)
    ints = dp.vector_domain(dp.atom_domain(T="i32")), dp.l1_distance(T="i32")
    longs = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")

    def laplace(space: tuple[dp.Domain, dp.Metric], d_in: int) -> dp.Measurement:
        return dp.m.make_laplace(*space, scale=_scale(lambda s: dp.m.make_laplace(*space, scale=s), d_in,
                                                      d_in / (epsilon / 6)))

    numbers, sums, histogram = laplace(ints, one_count), laplace(longs, one_sum), laplace(ints, one_count)
    spent = key_epsilon + numbers.map(one_count) + sums.map(one_sum) + histogram.map(one_count)
    return Mechanism(keys, key_scale, threshold, k, spent, key_delta,
                     MetricParts(metric, clip, numbers, sums, histogram, one_sum))


def _scale(make: Callable[[float], dp.Measurement], d_in: Any, start: float) -> float:
    """The least noise from `start` up whose privacy map, for one person's d_in, gives an ε
    no more than the one that `start` was worked out for (1/start of the sensitivity)."""
    wanted = (d_in[1] if isinstance(d_in, tuple) else d_in) / start
    scale = start
    for _ in range(8):
        if not (math.isfinite(scale) and scale > 0):
            raise ValidationError("epsilon: too small for finite noise")  # unreachable above the floor
        spent = make(scale).map(d_in)
        if (spent[0] if isinstance(spent, tuple) else spent) <= wanted:
            return scale
        scale = math.nextafter(scale * (1 + 1e-12), math.inf)  # the maps round up by an ulp or so
    raise ValidationError("epsilon: no noise scale fits it")


def _threshold(counts: tuple[dp.Domain, dp.Metric], person: Any, scale: float, least: int, delta: float
               ) -> tuple[dp.Measurement, int, tuple[float, float]]:
    """The lowest threshold (at least `least`, at least 2) at which a group of one person is shown
    with probability at most `delta`: the measurement, its threshold and its (ε, δ).

    A group of one reaches threshold t when its noise is at least t − 1. OpenDP 0.16's map
    leaves out the noise's mass at exactly that point (opendp/opendp#2922: it reports the
    chance of noise ≥ t): the map of the same measurement at threshold t − 1 is the one that
    counts it, and it is the δ charged."""
    def charged(threshold: int) -> tuple[float, float]:
        spent: tuple[float, float] = dp.m.make_laplace_threshold(
            *counts, scale=scale, threshold=threshold - 1).map(person)
        return spent

    least = max(least, 2)
    # the discrete Laplace tail, P(noise ≥ t − 1) = e^-(t−1)/scale / (1 + e^-1/scale), puts the
    # answer within a step or two of here; the library's map then decides
    guess = 1 + math.ceil(scale * math.log(1 / (delta * (1 + math.exp(-1 / scale)))))
    threshold = max(least, guess)
    for _ in range(64):
        if charged(threshold)[1] <= delta:
            break
        threshold += max(1, threshold // 16)
    else:  # the tail bound above is within a few steps of the map's
        raise ValidationError("epsilon: no threshold on the counts fits it")
    while threshold > least and charged(threshold - 1)[1] <= delta:
        threshold -= 1
    measured = dp.m.make_laplace_threshold(*counts, scale=scale, threshold=threshold)
    return measured, threshold, charged(threshold)


def _key(key: tuple[Any, ...]) -> str:
    return orjson.dumps(list(key), default=str).decode()


def private(profiles: Iterable[IndexedProfile], *, group_by: Sequence[str], mechanism: Mechanism) -> Insights:
    """Run a costed mechanism over the population (charge its ε and δ first)."""
    parts = mechanism.metric
    people: dict[str, list[float | None]] = {}  # each group's people: their metric values
    for profile in profiles:
        people.setdefault(_key(group_key(profile, group_by)), []).append(
            _number(profile, parts.name) if parts is not None else None)
    shown: dict[str, int] = mechanism.keys({key: len(values) for key, values in people.items()})
    ordered = sorted(shown, key=lambda key: _in_order(tuple(orjson.loads(key))))
    groups = [Group(dict(zip(group_by, orjson.loads(key), strict=True)), float(shown[key])) for key in ordered]
    if parts is not None and groups:
        _describe_privately(groups, [people[key] for key in ordered], parts)
    return Insights(groups, mechanism.k, float(mechanism.threshold), parts.name if parts else None,
                    parts.bounds if parts else None, mechanism.epsilon, mechanism.delta)


def _describe_privately(groups: list[Group], values: list[list[float | None]], parts: MetricParts) -> None:
    lo, hi = parts.bounds
    numbers = [0] * len(groups)  # how many have the metric
    sums = [0] * len(groups)  # their values, clipped, in GRID steps from lo
    cells = [0] * (len(groups) * HISTOGRAM_BINS)  # how many in each (group, bin)
    for i, group_values in enumerate(values):
        for value in group_values:
            if value is None:
                continue
            step = round((min(hi, max(lo, value)) - lo) / (hi - lo) * GRID)
            numbers[i] += 1
            sums[i] += step
            cells[i * HISTOGRAM_BINS + min(HISTOGRAM_BINS - 1, step * HISTOGRAM_BINS // GRID)] += 1
    numbers, sums, cells = parts.numbers(numbers), parts.sums(sums), parts.histogram(cells)
    edges = [lo + (hi - lo) * b / HISTOGRAM_BINS for b in range(HISTOGRAM_BINS)] + [hi]
    for i, group in enumerate(groups):
        if numbers[i] >= 1:
            group.mean = round(min(hi, max(lo, lo + (hi - lo) * sums[i] / GRID / numbers[i])), 4)
        bins = cells[i * HISTOGRAM_BINS:(i + 1) * HISTOGRAM_BINS]
        group.histogram = [(edges[b], edges[b + 1], float(max(0, c))) for b, c in enumerate(bins)]
