"""Shoppers with latent tastes, for recommendations (issue 24, item 7).

A catalogue of `categories × per_category` items, each with a style (one of `styles`) and a
popularity that falls off as a power of its rank in its category (a long tail). Each person has a
taste: a few favourite categories and styles, drawn from a Dirichlet (concentration `focus`: the
smaller, the fewer). They visit in sessions, at their own rate; each session views products drawn
with probability ∝ popularity^`herd` × category taste × style taste, sometimes views again one they
viewed before, puts some in the cart, buys some of those, and reviews some purchases (liked items
get 4 or 5 stars). So what a person does next follows their own past, beyond what is popular: a
recommender that learns tastes has something to find, and popularity alone does not.

    python -m persona.testing.tastes --people 10000 --out shoppers.jsonl [--seed 1] [--days 365]

Writes canonical JSONL (docs/events.md) in time order, and the truth (each person's favourite
categories and styles; the catalogue) as `<out>.truth.json`. Deterministic for a seed. A share
of people (`withdrawn`) withdraw personalization consent at a random moment.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from persona.testing.planted import CATEGORIES

START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Shape:
    per_category: int = 250  # items in each category
    styles: int = 6
    tail: float = 1.1  # an item's popularity: 1 / rank^tail within its category
    herd: float = 0.7  # how much popularity weighs in a person's choice against their taste
    focus: float = 0.3  # Dirichlet concentration of tastes: small, a few favourites
    sessions: float = 12.0  # mean sessions per person over their time (Gamma-distributed rates)
    views: float = 2.0  # mean product views per session (1 + Poisson(views - 1))
    again: float = 0.2  # the chance a view is of a product the person viewed before
    cart: float = 0.3  # the chance a viewed product goes into the cart
    buy: float = 0.5  # the chance a session with a cart ends in an order
    review: float = 0.3  # the chance an order's item is reviewed
    withdrawn: float = 0.05  # the share of people who withdraw personalization consent


@dataclass(frozen=True)
class Catalogue:
    skus: list[str]
    category: np.ndarray  # index into CATEGORIES
    style: np.ndarray
    popularity: np.ndarray  # sums to 1
    price: np.ndarray

    @classmethod
    def drawn(cls, rng: np.random.Generator, shape: Shape) -> Catalogue:
        n = shape.per_category
        category = np.repeat(np.arange(len(CATEGORIES)), n)
        rank = np.tile(np.arange(1, n + 1), len(CATEGORIES))
        popularity = rank ** -shape.tail
        skus = [f"{CATEGORIES[c]}-{r - 1:03d}" for c, r in zip(category, rank, strict=True)]
        return cls(skus, category, rng.integers(0, shape.styles, len(skus)), popularity / popularity.sum(),
                   np.round(np.exp(rng.normal(3.5, 0.7, len(skus))), 2))


def person_events(rng: np.random.Generator, n: int, days: int, catalogue: Catalogue, shape: Shape
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    subject = {"namespace": "shop_user", "value": f"t-{n:06d}"}
    likes_category = rng.dirichlet(np.full(len(CATEGORIES), shape.focus))
    likes_style = rng.dirichlet(np.full(shape.styles, shape.focus))
    weights = catalogue.popularity ** shape.herd * likes_category[catalogue.category] * likes_style[catalogue.style]
    weights /= weights.sum()
    cumulative = np.cumsum(weights)
    born = float(rng.uniform(0, days * 0.7))
    rate = rng.gamma(1.5, shape.sessions / 1.5) / (days - born)  # sessions a day over their time here
    out: list[dict[str, Any]] = []
    seq = 0

    def add(kind: str, at: float, data: dict[str, Any], source: str = "web") -> None:
        nonlocal seq
        seq += 1
        out.append({"event_id": f"t{n}-{seq}", "source": source, "type": kind, "occurred_at": _at(at),
                    "subject": subject, "data": data})

    add("profile_updated", born, {"gender": str(rng.choice(("female", "male"))),
                                  "birth_year": int(rng.integers(1955, 2006)), "country": "CN"})
    if rng.random() < shape.withdrawn:
        add("consent_changed", float(rng.uniform(born, days)), {"purpose": "personalization", "granted": False},
            source="crm")
    viewed: list[int] = []
    t, orders = born, 0
    while rate > 0:
        t += rng.exponential(1.0 / rate)
        if t > days:
            break
        session = f"s{n}-{seq}"
        seen = []
        for k in range(1 + rng.poisson(shape.views - 1)):
            if viewed and rng.random() < shape.again:
                item = viewed[rng.integers(len(viewed))]
            else:
                item = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1])), len(weights) - 1)
            viewed.append(item)
            seen.append(item)
            add("product_viewed", t + k / 1440, {"sku": catalogue.skus[item],
                                                 "category": CATEGORIES[catalogue.category[item]],
                                                 "session_id": session})
        carted = sorted({i for i in seen if rng.random() < shape.cart})
        at = t + len(seen) / 1440
        for item in carted:
            add("cart_updated", at, {"sku": catalogue.skus[item], "qty": 1})
        if carted and rng.random() < shape.buy:
            orders += 1
            amount = float(sum(catalogue.price[i] for i in carted))
            add("order_placed", at + 1 / 1440, {
                "order_id": f"t{n}-o{orders}", "amount": f"{amount:.2f}", "currency": "CNY",
                "items": [{"sku": catalogue.skus[i], "category": CATEGORIES[catalogue.category[i]], "qty": 1,
                           "price": f"{catalogue.price[i]:.2f}"} for i in carted]}, source="shop")
            for item in carted:
                if rng.random() < shape.review:
                    liked = weights[item] >= np.median(weights)
                    rating = int(rng.integers(4, 6) if liked else rng.integers(1, 4))
                    add("review_posted", at + float(rng.uniform(2, 20)), {"sku": catalogue.skus[item],
                                                                          "rating": rating}, source="shop")
    truth = {"subject": subject["value"], "born_day": born,
             "categories": [CATEGORIES[c] for c in np.argsort(-likes_category)[:2]],
             "styles": [int(s) for s in np.argsort(-likes_style)[:2]],
             "likes_category": [round(float(v), 6) for v in likes_category],
             "likes_style": [round(float(v), 6) for v in likes_style]}
    return [e for e in out if e["occurred_at"] <= _at(days)], truth


def _at(day: float) -> str:
    return (START + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def generate(people: int, seed: int = 1, days: int = 365, shape: Shape = Shape()
             ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    catalogue = Catalogue.drawn(rng, shape)
    for n in range(people):
        yield person_events(rng, n, days, catalogue, shape)


def write(out: Path, people: int, seed: int = 1, days: int = 365, shape: Shape = Shape()) -> dict[str, Any]:
    """The events of `people` shoppers, in time order, and the truth beside them."""
    events: list[dict[str, Any]] = []
    truths = []
    for person, truth in generate(people, seed, days, shape):
        events += person
        truths.append(truth)
    events.sort(key=lambda e: e["occurred_at"])
    with out.open("wb") as handle:
        for start in range(0, len(events), 50_000):
            handle.write(b"".join(orjson.dumps(e) + b"\n" for e in events[start:start + 50_000]))
    catalogue = Catalogue.drawn(np.random.default_rng(seed), shape)
    summary = {"people": people, "seed": seed, "days": days, "events": len(events), "end": _at(days),
               "shape": asdict(shape), "items": len(catalogue.skus), "truth": truths,
               "catalogue": {"skus": catalogue.skus, "style": catalogue.style.tolist(),
                             "popularity": catalogue.popularity.tolist()}}
    out.with_name(out.name + ".truth.json").write_bytes(orjson.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = write(args.out, args.people, args.seed, args.days)
    print(f"{summary['events']:,} events of {args.people:,} people, {summary['items']:,} items → {args.out}")


if __name__ == "__main__":
    main()
