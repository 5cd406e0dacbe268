"""persona.testing.purchases: a purchase log shaped like real ones (BG/NBD with Gamma-Gamma
spend), so that BG/NBD is the strong baseline it is on real data. Checked against the models it
claims to follow: BG/NBD fitted on the log recovers the parameters it was drawn with and
predicts the orders of the window after it; order values follow the Gamma-Gamma means; the
cohorts are acquired as asked; the log ingests as canonical events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from persona import Persona, Settings
from persona.ingest import ingest_jsonl
from persona.models import bgnbd
from persona.testing.purchases import Shape, customers, write

DAYS, FUTURE = 730, 91


def summaries(found: list, days: int = DAYS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD's (x, t_x, T) per customer, from the log up to `days`: repeat purchases, the last
    one's time and the time observed, each counted from the first purchase."""
    x, t_x, T = [], [], []
    for c in found:
        seen = [day for day, _ in c.orders if day <= days]
        x.append(len(seen) - 1)
        t_x.append(seen[-1] - seen[0])
        T.append(days - seen[0])
    return np.array(x, float), np.array(t_x, float), np.array(T, float)


@pytest.fixture(scope="module")
def drawn() -> list:
    return customers(4000, seed=7, days=DAYS, future_days=FUTURE)


def test_bgnbd_fitted_on_the_log_recovers_its_parameters_and_predicts_the_next_window(drawn: list) -> None:
    shape = Shape()
    x, t_x, T = summaries(drawn)
    fitted = bgnbd.fit(x, t_x, T)
    assert fitted.r == pytest.approx(shape.r, rel=0.2)
    assert fitted.alpha == pytest.approx(shape.alpha, rel=0.3)
    assert fitted.a == pytest.approx(shape.a, rel=0.4)
    assert fitted.b == pytest.approx(shape.b, rel=0.5)
    predicted = float(fitted.expected(FUTURE, x, t_x, T).sum())
    happened = sum(1 for c in drawn for day, _ in c.orders if day > DAYS)
    assert happened > 300 and predicted == pytest.approx(happened, rel=0.12)  # a strong baseline


def test_order_values_follow_the_gamma_gamma_spend_model(drawn: list) -> None:
    shape = Shape()
    values = np.array([v for c in drawn for _, v in c.orders])
    assert values.min() > 0
    per_customer = [np.mean([v for _, v in c.orders]) for c in drawn if len(c.orders) >= 5]
    truth = [shape.spend_shape / c.spend_rate for c in drawn if len(c.orders) >= 5]
    assert np.corrcoef(per_customer, truth)[0, 1] > 0.9  # each customer's own level
    means = [shape.spend_shape / c.spend_rate for c in drawn]
    assert float(np.mean(means)) == pytest.approx(shape.mean_order, rel=0.1)  # E[s/ν] = s γ / (q − 1)


def test_regularity_keeps_the_rate_and_makes_the_gaps_regular() -> None:
    """Gaps of Gamma(k, kλ): the mean gap stays 1/λ, its coefficient of variation falls to 1/√k."""
    for k in (1.0, 3.0):
        busy = Shape(regularity=k, r=5.0, alpha=50.0, a=0.01, b=50)  # about 70 orders each, hardly any dropout
        found = customers(1000, seed=5, days=DAYS, future_days=0, shape=busy)
        scaled, cvs = [], []
        for c in found:
            gaps = np.diff([day for day, _ in c.orders])
            if c.rate * DAYS > 60 and len(gaps) >= 30:  # many gaps: the window's end biases few
                scaled.extend(gaps * c.rate)  # in units of the customer's own mean gap
                cvs.append(gaps.std() / gaps.mean())
        assert len(cvs) > 50
        assert float(np.mean(scaled)) == pytest.approx(1.0, rel=0.1)
        assert float(np.median(cvs)) == pytest.approx(1 / np.sqrt(k), rel=0.2)


def test_cohorts_are_acquired_at_once_or_over_time_and_a_seed_draws_the_same_log() -> None:
    one = customers(500, seed=3, cohort="one")
    assert max(c.orders[0][0] for c in one) <= 30
    spread = customers(500, seed=3, cohort="continuous")
    births = [c.orders[0][0] for c in spread]
    assert max(births) > 0.7 * DAYS and sum(b > DAYS / 2 for b in births) > 100
    assert customers(200, seed=3) == customers(200, seed=3)
    assert customers(200, seed=3) != customers(200, seed=4)
    with pytest.raises(ValueError, match="cohort"):
        customers(1, cohort="weekly")


def test_the_log_and_its_future_are_written_apart_and_the_log_ingests(tmp_path: Path) -> None:
    out = tmp_path / "orders.jsonl"
    summary = write(out, 300, seed=5, days=365, future_days=FUTURE)
    past = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    future = [orjson.loads(line) for line in (tmp_path / "orders.jsonl.future.jsonl").read_bytes().splitlines()]
    end = summary["end"]
    assert len(past) == summary["orders"] and len(future) == summary["future_orders"] > 0
    assert all(e["occurred_at"] <= end for e in past) and all(e["occurred_at"] > end for e in future)
    assert [e["occurred_at"] for e in past] == sorted(e["occurred_at"] for e in past)
    truth = orjson.loads((tmp_path / "orders.jsonl.truth.json").read_bytes())["truth"]
    assert sum(t["future_orders"] for t in truth) == len(future)
    assert all(t["alive_at_end"] for t in truth if t["future_orders"])  # nobody buys after dropping out
    with Persona.init(Settings.load(tmp_path / "data", env={})) as p:
        report = ingest_jsonl(p, out.read_bytes().splitlines(), origin="orders.jsonl")
        assert (report.appended, report.quarantined, report.profiles_created) == (len(past), 0, 300)
