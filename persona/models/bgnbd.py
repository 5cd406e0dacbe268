"""The BG/NBD model of customer-base analysis (Fader, Hardie & Lee 2005, "Counting your
customers the easy way"), fitted by maximum likelihood.

While alive, a customer buys at a rate λ (Poisson); after each purchase they become inactive
with probability p. Across customers λ ~ Gamma(r, α) and p ~ Beta(a, b). A customer is
summarised by (x, t_x, T): repeat purchases, the time of the last one and the time since the
first, all measured from the first purchase (here in days).

It is the yardstick for the purchase-count and churn tasks, and its expectations are features
of the supervised models (persona.models.training), always fitted on training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, gammaln, hyp2f1

from persona.models.mle import best_of

Array = NDArray[np.float64]


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def params(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """P(still active at T | x, t_x, T) — eq. (A10)."""
        x, t_x, T = _arrays(x, t_x, T)
        return 1.0 / (1.0 + self._dead_odds(x, t_x, T))

    def expected(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """E[purchases in (T, T + t] | x, t_x, T] — eq. (10)."""
        x, t_x, T = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        # computed in logs where it can overflow; hyp2f1 stays finite for z < 1
        ratio = np.exp((r + x) * np.log((alpha + T) / (alpha + T + t)))
        head = (a + b + x - 1.0) / (a - 1.0)
        body = 1.0 - ratio * hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        out = head * body / (1.0 + self._dead_odds(x, t_x, T))
        return np.asarray(np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None), dtype=np.float64)

    def p_none(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """P(no purchase in (T, T + t] | x, t_x, T): dead, or alive and the Poisson clock never
        rang (death only follows a purchase), with λ | data, alive ~ Gamma(r + x, α + T)."""
        x, t_x, T = _arrays(x, t_x, T)
        alive = self.p_alive(x, t_x, T)
        quiet = np.exp((self.r + x) * np.log((self.alpha + T) / (self.alpha + T + t)))
        return np.asarray((1.0 - alive) + alive * quiet, dtype=np.float64)

    def _dead_odds(self, x: Array, t_x: Array, T: Array) -> Array:
        """δ(x > 0) · a / (b + x − 1) · ((α + T) / (α + t_x))^(r + x)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_odds = np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300)) + (r + x) * np.log(
                (alpha + T) / (alpha + t_x))
            odds = np.where(x > 0, np.exp(np.minimum(log_odds, 700.0)), 0.0)
        return np.asarray(odds, dtype=np.float64)


def log_likelihood(params: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
    """Each customer's log-likelihood — eq. (6), in logs."""
    r, alpha, a, b = np.asarray(params, dtype=np.float64)
    x, t_x, T = _arrays(x, t_x, T)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300)) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def fit(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, *, penalty: float = 1e-4) -> BGNBD:
    """Maximum likelihood over log-parameters (all four stay positive), from several starts.
    A small ridge on the log-parameters keeps the fit finite on degenerate samples (nobody
    ever repeats) without moving it on real ones."""
    x, t_x, T = _arrays(x, t_x, T)
    if x.size == 0:
        raise ValueError("BG/NBD: no customers to fit")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T):
        raise ValueError("BG/NBD: need x >= 0 and 0 <= t_x <= T")

    def loss(logs: Array) -> float:
        value = -float(np.mean(log_likelihood(np.exp(logs), x, t_x, T))) + penalty * float(np.sum(logs**2))
        return value if np.isfinite(value) else 1e300

    scale = max(float(np.mean(T)), 1.0)
    starts = ([0.5, scale / 10, 0.8, 2.5], [1.0, scale, 1.0, 1.0], [0.2, scale / 100, 2.0, 5.0])
    best = best_of(loss, [np.log(start) for start in starts], xatol=1e-7, fatol=1e-10)
    r, alpha, a, b = (float(v) for v in np.exp(best))
    return BGNBD(r, alpha, a, b)


def simulate(n: int, params: BGNBD, T: ArrayLike, rng: np.random.Generator) -> tuple[Array, Array]:
    """(x, t_x) for n customers observed for T days each, drawn from the model itself (for tests)."""
    Ts = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,))
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    xs, txs = np.zeros(n), np.zeros(n)
    for i in range(n):
        t, count, last = 0.0, 0, 0.0
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > Ts[i]:
                break
            count, last = count + 1, t
            if rng.random() < p[i]:
                break
        xs[i], txs[i] = count, last
    return xs, txs


def _arrays(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[Array, Array, Array]:
    return (np.asarray(x, dtype=np.float64), np.asarray(t_x, dtype=np.float64), np.asarray(T, dtype=np.float64))
