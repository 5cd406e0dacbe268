"""A purchase log with the shape of real ones, and what happens after it (issue 21, item 8).

Each customer buys as the models of customer-base analysis say, and nothing else: while
active, at a rate λ ~ Gamma(r, α) per day (heterogeneous rates; by default as a Poisson process,
or with more regular gaps, `--regularity k`); after each repeat purchase,
inactive for good with probability p ~ Beta(a, b) (beta-geometric dropout, BG/NBD); each order
worth z ~ Gamma(shape s, rate ν), with ν ~ Gamma(q, γ) per customer (the Gamma-Gamma spend
model). The defaults are the parameters fitted on the CDNOW log (Fader, Hardie and Lee 2005;
per day, in dollars), so BG/NBD is as strong a baseline here as it is on real data: a learned
model must earn its place against it.

Customers are acquired in one cohort (the first 30 days) or continuously (over the first 80% of
the period); the log covers `days` days (two years by default). The generator goes on for
`future_days` more: those orders are written apart, for an out-of-time check of what a model
predicted at the end of the log.

    python -m persona.testing.purchases --people 10000 --out orders.jsonl [--cohort one] [--seed 1]
        [--regularity 2]

writes orders.jsonl (canonical JSONL, docs/events.md), orders.jsonl.future.jsonl and
orders.jsonl.truth.json (each customer's λ, p, ν, birth and what they did after the log).
Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

START = datetime(2024, 1, 1, tzinfo=UTC)
COHORTS = ("one", "continuous")


@dataclass(frozen=True)
class Shape:
    """The population's parameters: BG/NBD's (rates per day) and Gamma-Gamma's."""

    r: float = 0.243
    alpha: float = 4.414 * 7  # CDNOW's α is per week
    a: float = 0.793
    b: float = 2.426
    spend_shape: float = 6.25  # s: an order's value ~ Gamma(s, rate ν)
    spend_q: float = 3.74  # ν ~ Gamma(q, rate γ)
    spend_gamma: float = 15.44
    # the shape k of the gaps between purchases, Gamma(k, rate kλ): the same mean 1/λ; 1 is Poisson
    # (BG/NBD exactly), above 1 more regular, as many real shoppers are (Platzer & Reutterer 2016,
    # "Ticking away the moments": k of 2 to 4 in several retail logs; CDNOW's is about 1)
    regularity: float = 1.0

    @property
    def mean_order(self) -> float:
        """The population's mean order value, E[s / ν] = s γ / (q − 1)."""
        return self.spend_shape * self.spend_gamma / (self.spend_q - 1)


@dataclass(frozen=True)
class Customer:
    subject: str
    birth_day: float
    rate: float  # λ, purchases per day while active
    dropout: float  # p
    spend_rate: float  # ν
    orders: list[tuple[float, float]]  # (day, value), the first at birth, through the future window
    inactive_after_day: float | None  # the day of the purchase they dropped out after, if they did


def customers(people: int, *, seed: int = 1, days: int = 730, future_days: int = 91, cohort: str = "continuous",
              shape: Shape = Shape()) -> list[Customer]:
    if cohort not in COHORTS:
        raise ValueError(f"cohort: one of {', '.join(COHORTS)}")
    rng = np.random.default_rng(seed)
    end = days + future_days
    births = rng.uniform(0, 30 if cohort == "one" else 0.8 * days, people)
    rates = rng.gamma(shape.r, 1.0 / shape.alpha, people)
    dropouts = rng.beta(shape.a, shape.b, people)
    spend_rates = rng.gamma(shape.spend_q, 1.0 / shape.spend_gamma, people)
    out = []
    for n in range(people):
        t, inactive = float(births[n]), None
        days_of = [t]
        while True:  # BG/NBD: alive at the first purchase; may drop out after each repeat one
            t += rng.gamma(shape.regularity, 1.0 / (shape.regularity * rates[n]))
            if t > end:
                break
            days_of.append(t)
            if rng.random() < dropouts[n]:
                inactive = t
                break
        values = rng.gamma(shape.spend_shape, 1.0 / spend_rates[n], len(days_of))
        out.append(Customer(f"c-{n:06d}", float(births[n]), float(rates[n]), float(dropouts[n]),
                            float(spend_rates[n]), [(d, round(float(v), 2)) for d, v in zip(days_of, values,
                                                                                               strict=True)],
                            inactive))
    return out


def order_event(customer: Customer, index: int, day: float, value: float) -> dict[str, Any]:
    return {"event_id": f"{customer.subject}-{index}", "source": "shop", "type": "order_placed",
            "occurred_at": at(day), "subject": {"namespace": "shop_user", "value": customer.subject},
            "data": {"order_id": f"{customer.subject}-{index}", "amount": f"{value:.2f}", "currency": "USD"}}


def at(day: float) -> str:
    return (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write(out: Path, people: int, *, seed: int = 1, days: int = 730, future_days: int = 91,
          cohort: str = "continuous", shape: Shape = Shape()) -> dict[str, Any]:
    """The log (orders up to `days`), the orders of the `future_days` after it, and the truth."""
    found = customers(people, seed=seed, days=days, future_days=future_days, cohort=cohort, shape=shape)
    past = [(day, c, i, v) for c in found for i, (day, v) in enumerate(c.orders) if day <= days]
    future = [(day, c, i, v) for c in found for i, (day, v) in enumerate(c.orders) if day > days]
    for name, rows in ((out, past), (out.with_name(out.name + ".future.jsonl"), future)):
        rows.sort(key=lambda row: row[0])
        with name.open("wb") as handle:
            handle.write(b"".join(orjson.dumps(order_event(c, i, day, v)) + b"\n" for day, c, i, v in rows))
    truth = [{"subject": c.subject, "birth_day": c.birth_day, "rate": c.rate, "dropout": c.dropout,
              "mean_order": shape.spend_shape / c.spend_rate,
              "alive_at_end": c.inactive_after_day is None or c.inactive_after_day > days,
              "future_orders": sum(1 for day, _ in c.orders if day > days),
              "future_spend": round(sum(v for day, v in c.orders if day > days), 2)} for c in found]
    summary = {"people": people, "seed": seed, "days": days, "future_days": future_days, "cohort": cohort,
               "shape": asdict(shape), "orders": len(past), "future_orders": len(future), "end": at(days),
               "truth": truth}
    out.with_name(out.name + ".truth.json").write_bytes(orjson.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=730, help="days the log covers")
    parser.add_argument("--future-days", type=int, default=91, help="days after the log written apart")
    parser.add_argument("--cohort", choices=COHORTS, default="continuous")
    parser.add_argument("--regularity", type=float, default=1.0,
                        help="shape k of the gaps between purchases (1: Poisson, BG/NBD exactly; 2-4: more regular)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = write(args.out, args.people, seed=args.seed, days=args.days, future_days=args.future_days,
                    cohort=args.cohort, shape=Shape(regularity=args.regularity))
    print(f"{summary['orders']:,} orders of {args.people:,} customers → {args.out};"
          f" {summary['future_orders']:,} in the {args.future_days} days after it → {args.out}.future.jsonl")


if __name__ == "__main__":
    main()
