"""The Gamma-Gamma model of spend per order (Fader, Hardie & Lee 2005, "RFM and CLV: using
iso-value curves for customer base analysis"; Fader & Hardie 2013, "The Gamma-Gamma model of
monetary value"), fitted by maximum likelihood.

A customer's orders are worth Gamma(p, ν) each, and across customers ν ~ Gamma(q, γ). A customer
is summarised by n, their number of orders, and m, the mean value of those orders. Their expected
order value shrinks m toward the population's mean, the more so the fewer orders they made:

    E[M | n, m] = (γ + n·m) · p / (p·n + q − 1)

(someone who never ordered: γ·p / (q − 1), the population's mean). Priced by BG/NBD's expected
purchases, it is the classic CLV baseline, and a feature of the CLV task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln

from persona.models.mle import best_of

Array = NDArray[np.float64]


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float  # > 1: the population's mean order value is finite
    gamma: float

    def params(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}

    def mean(self) -> float:
        """The population's mean order value."""
        return self.gamma * self.p / (self.q - 1.0)

    def expected(self, n: ArrayLike, m: ArrayLike) -> Array:
        """E[order value | n orders worth m on average]; n = 0 (m ignored): the population's mean."""
        n, m = _arrays(n, m)
        m = np.where(n > 0, np.nan_to_num(m, nan=0.0), 0.0)
        return np.asarray((self.gamma + n * m) * self.p / (self.p * n + self.q - 1.0), dtype=np.float64)


def log_likelihood(params: ArrayLike, n: ArrayLike, m: ArrayLike) -> Array:
    """Each customer's log-likelihood of their mean order value m over n orders (n·m, their
    total, is Gamma(n·p, ν) given ν; ν integrated out)."""
    p, q, gamma = np.asarray(params, dtype=np.float64)
    n, m = _arrays(n, m)
    np_ = n * p
    return np.asarray(gammaln(np_ + q) - gammaln(np_) - gammaln(q) + q * np.log(gamma) + (np_ - 1.0) * np.log(m)
                      + np_ * np.log(n) - (np_ + q) * np.log(gamma + n * m), dtype=np.float64)


def fit(n: ArrayLike, m: ArrayLike, *, penalty: float = 1e-4) -> GammaGamma:
    """Maximum likelihood over log p, log(q − 1) and log γ (so that p, γ > 0 and q > 1), from several
    starts, on customers with at least one order worth more than nothing."""
    n, m = _arrays(n, m)
    keep = (n > 0) & np.isfinite(m) & (m > 0)
    n, m = n[keep], m[keep]
    if n.size == 0:
        raise ValueError("Gamma-Gamma: no customers with a positive order value to fit")

    def loss(logs: Array) -> float:
        p, q1, gamma = np.exp(logs)
        value = -float(np.mean(log_likelihood((p, 1.0 + q1, gamma), n, m))) + penalty * float(np.sum(logs**2))
        return value if np.isfinite(value) else 1e300

    scale = max(float(np.mean(m)), 1e-6)
    starts = ([1.0, 2.0, scale * 2.0], [5.0, 3.0, scale * 0.5], [0.5, 10.0, scale * 50.0])
    best = best_of(loss, [np.log(start) for start in starts], xatol=1e-8, fatol=1e-12)
    p, q1, gamma = (float(v) for v in np.exp(best))
    return GammaGamma(p, 1.0 + q1, gamma)


def simulate(customers: int, params: GammaGamma, orders: ArrayLike, rng: np.random.Generator) -> Array:
    """Each customer's mean order value over their number of orders, drawn from the model (for tests)."""
    n = np.broadcast_to(np.asarray(orders, dtype=np.float64), (customers,))
    nu = rng.gamma(params.q, 1.0 / params.gamma, customers)
    totals = rng.gamma(np.maximum(n, 1e-12) * params.p, 1.0 / nu)
    return np.asarray(np.where(n > 0, totals / np.maximum(n, 1.0), np.nan), dtype=np.float64)


def _arrays(n: ArrayLike, m: ArrayLike) -> tuple[Array, Array]:
    return np.asarray(n, dtype=np.float64), np.asarray(m, dtype=np.float64)
