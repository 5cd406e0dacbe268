"""Population insights that protect the people in them.

Groups of fewer than k people are left out, and so is the histogram of a group when any of
its bins holds fewer than k (k-anonymity). Without noise that is all: exact answers are not private against
differencing (two filters that differ by one person).

With a privacy budget ε the answer is differentially private. Laplace noise goes on the
group's count and, with a metric, on the number of people having it, their clipped sum
(sensitivity: the largest absolute bound) and the histogram (a partition: sensitivity 1),
ε split equally between them. Groups partition the population, so one query costs ε in
all, whatever the number of groups. Which groups are shown is decided on the noisy count
against a raised threshold (see DELTA), so the group keys — values taken from the data —
are protected too: the answer is (ε, δ)-DP.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persona.errors import ValidationError
from persona.population import IndexedProfile

# Clipping bounds of numeric features for sums and histograms: declared, never taken from
# the data (bounds learnt from the data would themselves leak). Callers may narrow them.
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
# With noise, a group is shown only if its noisy count clears k and 1 + b·ln(1/2δ) (b the count's
# Laplace scale): a group of one person then appears with probability at most δ, so that the
# group keys themselves — values taken from the data — are (ε, δ)-differentially private.
DELTA = 1e-6


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
    epsilon: float | None


def _value(profile: IndexedProfile, name: str) -> Any:
    if name in profile.features:
        return profile.features[name]
    return profile.attributes.get(name)


def group_key(profile: IndexedProfile, by: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for name in by:
        value = _value(profile, name)
        if isinstance(value, list | dict):
            value = str(value)
        out.append(value)
    return tuple(out)


def check(metric: str | None, epsilon: float | None, bounds: tuple[float, float] | None
          ) -> tuple[float, float] | None:
    """Refuse a malformed question before anything is spent on it; the metric's clipping bounds."""
    if epsilon is not None and not (0 < epsilon <= 10):
        raise ValidationError("epsilon: must be above 0 and at most 10")
    if metric is None:
        return None
    bounds = bounds or BOUNDS.get(metric)
    if bounds is None:
        known = ", ".join(sorted(BOUNDS))
        raise ValidationError(f"metric: not a numeric feature with declared bounds (known: {known})")
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and math.isfinite(hi - lo)):
        raise ValidationError("bounds: need two finite numbers, the first below the second")
    return bounds


def compute(profiles: Iterable[IndexedProfile], *, group_by: Sequence[str], metric: str | None, k: int,
            epsilon: float | None = None, bounds: tuple[float, float] | None = None,
            rng: np.random.Generator | None = None) -> Insights:
    bounds = check(metric, epsilon, bounds)
    groups: dict[tuple[Any, ...], list[float | None]] = {}
    for profile in profiles:
        value = _value(profile, metric) if metric is not None else None
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        groups.setdefault(group_key(profile, group_by), []).append(number)
    rng = rng or np.random.default_rng()
    parts = 4 if metric is not None else 1
    scale = None if epsilon is None else parts / epsilon  # Laplace scale for sensitivity 1
    threshold = float(k) if scale is None else max(float(k), 1 + scale * math.log(1 / (2 * DELTA)))
    out = []
    for key, values in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        count = float(len(values))
        if scale is not None:
            count = max(0.0, count + float(rng.laplace(0.0, scale)))
        if count < threshold:
            continue  # neither the group nor the fact that it was left out is shown
        group = Group(dict(zip(group_by, key, strict=True)), round(count, 2) if scale else count)
        if metric is not None and bounds is not None:
            _describe(group, values, bounds, k, scale, rng)
        out.append(group)
    return Insights(out, k, threshold, metric, bounds, epsilon)


def _describe(group: Group, values: list[float | None], bounds: tuple[float, float], k: int,
              scale: float | None, rng: np.random.Generator) -> None:
    """The group's mean and histogram of the metric, clipped to the bounds (and noisy with a scale)."""
    lo, hi = bounds
    present = np.clip(np.array([v for v in values if v is not None], dtype=float), lo, hi)
    total = float(present.sum())
    n = float(len(present))
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    counts = [float(c) for c in np.histogram(present, bins=edges)[0]]
    if scale is not None:
        total += float(rng.laplace(0.0, scale * max(abs(lo), abs(hi))))
        n = max(1.0, n + float(rng.laplace(0.0, scale)))
        counts = [round(max(0.0, c + float(rng.laplace(0.0, scale))), 2) for c in counts]
    group.mean = round(min(hi, max(lo, total / n)), 4) if n > 0 else None
    if scale is None and any(0 < c < k for c in counts):
        # exact: a bin of fewer than k people would single them out, and hiding just that bin
        # would not (the group's count minus the others gives it away): no histogram at all
        return
    group.histogram = [(float(a), float(b), c) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)]
