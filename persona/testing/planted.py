"""Canonical events of people with planted buying propensities, for training and testing models.

Each person buys as the BG/NBD model says — at a rate λ ~ Gamma(r, α) per day while active,
turning inactive after each purchase with probability p ~ Beta(a, b) — but also leaves traces
the BG/NBD model cannot see: they browse (at a rate that grows with λ) and use the app only
while active, and what they browse follows the same category taste as what they buy. So a
model that reads behaviour should beat BG/NBD on who buys next, how much, and what.

    python -m persona.testing.planted --people 10000 --out events.jsonl [--seed 1] [--days 730]

Writes canonical JSONL (docs/events.md), then `persona ingest events.jsonl`. Deterministic for a
seed. The truth (each person's λ, p and when they became inactive) goes beside it as
`<out>.truth.json`.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

CATEGORIES = ("books", "electronics", "fashion", "home", "sports", "toys", "beauty", "food")
START = datetime(2024, 1, 1, tzinfo=UTC)
SHAPE_R, RATE_ALPHA = 0.9, 45.0  # λ ~ Gamma(r, α): a purchase every 50 days on average while active
DROP_A, DROP_B = 1.0, 5.0  # p ~ Beta(a, b): about one in six purchases is the last


def person_events(rng: random.Random, n: int, days: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One person's events (unsorted) and what was planted in them."""
    subject = {"namespace": "shop_user", "value": f"m-{n:06d}"}
    lam = rng.gammavariate(SHAPE_R, 1.0 / RATE_ALPHA)
    drop = rng.betavariate(DROP_A, DROP_B)
    taste = [rng.gammavariate(0.4, 1.0) + 1e-9 for _ in CATEGORIES]
    spend = math.exp(rng.gauss(4.0, 0.6))  # their typical order, in CNY
    born = rng.uniform(0, days * 0.7)
    out: list[dict[str, Any]] = []
    seq = 0

    def add(kind: str, at: float, data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        out.append({"event_id": f"m{n}-{seq}", "source": "shop" if kind == "order_placed" else "web",
                    "type": kind, "occurred_at": _at(at), "subject": subject, "data": data})

    gender = rng.choice(("female", "male"))
    add("profile_updated", born, {"gender": gender, "birth_year": rng.randint(1955, 2005), "country": "CN"})
    # purchases: the first at birth, then the BG/NBD clock
    t, orders, active_until = born, [], float(days)
    while t <= days:
        orders.append(t)
        if rng.random() < drop:
            active_until = t
            break
        t += rng.expovariate(lam) if lam > 0 else days + 1
    for i, at in enumerate(orders):
        category = rng.choices(CATEGORIES, weights=taste)[0]
        amount = round(spend * math.exp(rng.gauss(0, 0.3)), 2)
        add("order_placed", at, {"order_id": f"o{n}-{i}", "amount": f"{amount:.2f}", "currency": "CNY",
                                 "items": [{"sku": f"{category}-{rng.randrange(200)}", "category": category,
                                            "qty": 1, "price": f"{amount:.2f}"}]})
    # browsing while active, more for keener buyers; a little noise after they stop
    browse_rate = 0.015 + 2.0 * lam
    t = born
    while True:
        t += rng.expovariate(browse_rate if t < active_until else 0.004)
        if t > days:
            break
        category = rng.choices(CATEGORIES, weights=taste)[0]
        session = f"s{n}-{int(t)}"
        for page in range(rng.randint(1, 3)):
            add("page_viewed", t + page / 1440, {"url": f"https://shop.example/{category}/{page}",
                                                 "category": category, "duration_s": rng.randint(5, 300),
                                                 "session_id": session})
    if rng.random() < 0.5:  # app users open it weekly-ish while active
        t = born
        while True:
            t += rng.expovariate(0.02 + 1.0 * lam)
            if t > min(days, active_until + 3):
                break
            add("app_session", t, {"session_id": f"a{n}-{int(t)}", "minutes": round(rng.uniform(1, 30), 1),
                                   "platform": "ios"})
    truth = {"subject": subject["value"], "lambda_per_day": lam, "drop": drop, "orders": len(orders),
             "active_until_day": active_until}
    return out, truth


def _at(day: float) -> str:
    return (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def generate(people: int, seed: int = 1, days: int = 730) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    rng = random.Random(seed)
    for n in range(people):
        yield person_events(rng, n, days)


def write(out: Path, people: int, seed: int = 1, days: int = 730) -> dict[str, Any]:
    truths, events = [], 0
    with out.open("wb") as handle:
        for person, truth in generate(people, seed, days):
            person.sort(key=lambda e: e["occurred_at"])
            handle.write(b"".join(orjson.dumps(e) + b"\n" for e in person))
            truths.append(truth)
            events += len(person)
    summary = {"people": people, "seed": seed, "days": days, "events": events,
               "end": _at(days), "truth": truths}
    out.with_name(out.name + ".truth.json").write_bytes(orjson.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = write(args.out, args.people, args.seed, args.days)
    print(f"{summary['events']:,} events of {args.people:,} people → {args.out}")


if __name__ == "__main__":
    main()
