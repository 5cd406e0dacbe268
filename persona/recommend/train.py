"""Training and evaluating the recommenders (issue 24, items 2 and 3).

Leave the last window out: with the data ending at E and a window W (28 days by default),
- **choose** at V = E − 2W: each candidate learns from what was known at V and ranks for every
  person who engaged with something in (V, V + W]; the best NDCG@10 wins;
- **test** at T = E − W: the chosen one and every baseline learn from what was known at T and
  are scored on the same people's next window (T, E] — the published metrics;
- **serve**: the chosen one learns again from everything up to E.

The blend (models.Blend) learns its weights from a window too, always the one just before the
instant it is made at, so that no window it is judged on has taught it: made at V with weights
learnt at V − W on (V − W, V]; at T with weights learnt at V on (V, T]; served with weights
learnt at T on (T, E]. With less than three windows of history it is left out.

A person's held-out items are what they engaged with in the window (viewed, carted, bought,
liked) and had not bought before it; what they had bought is never recommended to them
(`excludePurchased`). Metrics at k = 10, averaged over the people: recall (hits over their
held-out items), NDCG, MAP; and over the lists: catalogue coverage (the share of items known at T
that appear in any list) and novelty (the mean of −log₂ of a recommended item's share of
people who engaged with it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from persona.core import Persona
from persona.errors import ValidationError
from persona.events import micros
from persona.recommend import interactions
from persona.recommend.interactions import Log, Matrix, Weights
from persona.recommend.models import Blend, Factors, ItemSimilarity, Popular, Recommender, describe, favourite, top

K = 10
WINDOW = timedelta(days=28)
MIN_PEOPLE = 20  # people with a held-out window needed to judge a model
SEED = 0
BASELINES = ("popular", "popular by segment")


@dataclass
class Candidate:
    name: str
    make: Callable[[Matrix, Log], Recommender]


def candidates(seed: int = SEED) -> list[Candidate]:
    def popular(by_segment: bool) -> Callable[[Matrix, Log], Recommender]:
        return lambda m, log: Popular(log.items, log.item_category, m.affinity, _segments(m, log),
                                      by_segment=by_segment)

    return [
        Candidate("popular", popular(False)),
        Candidate("popular by segment", popular(True)),
        Candidate("item similarity", lambda m, log: ItemSimilarity(log.items, log.item_category, m.affinity,
                                                                   _segments(m, log))),
        Candidate("matrix factorisation (ALS)", lambda m, log: Factors(log.items, log.item_category, m.affinity,
                                                                        _segments(m, log), seed=seed)),
        Candidate("blend", lambda m, log: Blend(log.items, log.item_category, m.affinity, _segments(m, log),
                                                seed=seed)),
    ]


def _segments(m: Matrix, log: Log) -> NDArray[np.int64]:
    categories = np.array([c or "" for c in log.item_category], dtype=np.str_)
    names = np.array(sorted({c for c in log.item_category if c}), dtype=np.str_)
    return favourite(m.affinity, categories, names)


@dataclass
class Trained:
    model: Recommender
    chosen: dict[str, Any]
    metrics: dict[str, float]  # the chosen one's, at the test cutoff
    baselines: dict[str, dict[str, float]]  # the same people, same window
    validation: dict[str, dict[str, float]]  # every candidate at the choosing cutoff
    cutoffs: list[datetime]  # choosing, test, end of the data
    window: timedelta
    people: list[str]  # every stream whose interactions the served model learnt from
    rows: dict[str, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    seed: int = SEED


def metrics(ranked: NDArray[np.int64], targets: list[NDArray[np.int32]], users: NDArray[np.int64],
            engaged: NDArray[np.float64], k: int = K) -> dict[str, float]:
    """Ranking metrics at k over these users (rows of `ranked`, −1 where a list ran short)."""
    recall, ndcg, ap = [], [], []
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for row, u in enumerate(users):
        truth = targets[u]
        picked = ranked[row, :k]
        hit = np.isin(picked, truth) & (picked >= 0)
        hits = int(hit.sum())
        recall.append(hits / len(truth))
        ndcg.append(float(discount[:k][hit].sum() / discount[:min(len(truth), k)].sum()))
        precision = np.cumsum(hit) / np.arange(1, k + 1)
        ap.append(float((precision * hit).sum() / min(len(truth), k)))
    shown = ranked[:, :k][ranked[:, :k] >= 0]
    novelty = float(np.mean(-np.log2(np.maximum(engaged[shown], 1e-12)))) if len(shown) else 0.0
    known = int((engaged > 0).sum())
    return {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg)), f"map@{k}": float(np.mean(ap)),
            "coverage": len(np.unique(shown)) / known if known else 0.0, "novelty": novelty,
            "rows": float(len(users))}


def judged(model: Recommender, m: Matrix, targets: list[NDArray[np.int32]], k: int = K,
           batch: int = 5_000) -> dict[str, float]:
    """A model's metrics on everyone with a history and a held-out window at the matrix's instant
    (those whose personalization consent stood withdrawn get the overall popular items, as served)."""
    users = np.array([u for u in range(len(m.users)) if m.active[u] and len(targets[u])], dtype=np.int64)
    ranked = recommend_rows(model, m.affinity, m.bought, users, m.withdrawn, k, batch)
    seen = (m.affinity > 0).astype(np.float64)
    engaged = np.asarray(seen.sum(axis=0)).ravel() / max(int(m.active.sum()), 1)
    return metrics(ranked, targets, users, engaged, k)


def batch_of(items: int, most: int = 5_000) -> int:
    """Users scored at once: dense users × items arrays stay near 10M cells, whatever the catalogue."""
    return max(16, min(most, 10_000_000 // max(items, 1)))


def recommend_rows(model: Recommender, affinity: sp.csr_matrix, bought: sp.csr_matrix, users: NDArray[np.int64],
                   withdrawn: NDArray[np.bool_], k: int, batch: int = 5_000) -> NDArray[np.int64]:
    """The k best items of each of these users, a batch of rows at a time."""
    batch = batch_of(affinity.shape[1], batch)
    out = np.full((len(users), k), -1, dtype=np.int64)
    for lo in range(0, len(users), batch):
        rows = users[lo:lo + batch]
        scores = model.scores(affinity[rows])
        plain = withdrawn[rows]
        if plain.any():
            scores[plain] = model.popular(np.full(int(plain.sum()), -1))
        out[lo:lo + len(rows)] = top(scores, k, bought[rows])
    return out


def train(persona: Persona, *, window: timedelta = WINDOW, seed: int = SEED, weights: Weights = interactions.DEFAULT,
          progress: Callable[[str], None] = lambda _: None, log: Log | None = None) -> Trained:
    started = time.monotonic()
    progress("reading every interaction…")
    log = log or interactions.read(persona)
    if log.end is None:
        raise ValidationError("no interactions with products yet (product views, carts, orders with SKUs, reviews)")
    end = log.end
    test_at, choose_at = end - window, end - 2 * window
    if not (log.time <= micros(choose_at)).any():
        raise ValidationError(f"too little history: nothing happened before {choose_at.isoformat()}, two windows "
                              f"({window.days} days each) before the data ends; give a shorter --window")
    found = candidates(seed)
    notes = []
    blend = next(c for c in found if c.name == "blend")
    learnt = _blend_weights(blend, log, choose_at - window, choose_at, weights, seed, progress)
    if learnt is None:
        found = [c for c in found if c.name != "blend"]
        notes.append(f"blend left out: it learns its weights on the window before the choosing one, and that"
                     f" window had too little to learn from (at least {MIN_PEOPLE} people with a history, consent"
                     " and something engaged with in it)")
    progress(f"choosing at {choose_at.date()} among {', '.join(c.name for c in found)}…")
    at_choice = log.matrix(choose_at, weights)
    choice_targets = log.targets(choose_at, test_at, at_choice)
    _enough(at_choice, choice_targets, choose_at)
    made = {c.name: _made(c, at_choice, log, learnt) for c in found}
    validation = {name: judged(model, at_choice, choice_targets) for name, model in made.items()}
    best = max(found, key=lambda c: (validation[c.name][f"ndcg@{K}"], -found.index(c)))
    chosen = made[best.name]
    if isinstance(chosen, Blend):
        progress(f"learning the blend's weights on the window after {choose_at.date()}…")
        learnt = _learn(chosen, at_choice, choice_targets, seed, learnt)
    progress(f"testing {best.name} at {test_at.date()} beside the baselines…")
    at_test = log.matrix(test_at, weights)
    test_targets = log.targets(test_at, end, at_test)
    _enough(at_test, test_targets, test_at)
    tested = {}
    for c in found:
        if c.name == best.name or c.name in BASELINES:
            at = _made(c, at_test, log, learnt)
            tested[c.name] = judged(at, at_test, test_targets)
            if isinstance(at, Blend):
                progress(f"learning the blend's weights on the window after {test_at.date()}…")
                learnt = _learn(at, at_test, test_targets, seed, learnt)
    progress(f"refitting {best.name} on everything up to {end.date()}…")
    at_end = log.matrix(end, weights)
    model = _made(best, at_end, log, learnt)
    model.weighting = asdict(weights)  # serving weighs a person's interactions as the model learnt them
    if best.name in BASELINES:
        notes.append(f"serving {best.name}: no personalised model beat it when choosing")
    user, _ = log.users_at(end)
    used = np.unique(log.stream[log.allowed(user) & (log.time <= micros(end))])
    return Trained(model, {**describe(model), "candidate": best.name}, tested[best.name],
                   {n: v for n, v in tested.items() if n in BASELINES and n != best.name}, validation,
                   [choose_at, test_at, end], window, [log.streams[s] for s in used],
                   {"train": int(at_test.active.sum()), "test": int(tested[best.name]["rows"]),
                    "items": len(log.items)}, time.monotonic() - started, notes, seed)


def _made(c: Candidate, m: Matrix, log: Log, learnt: NDArray[np.float64] | None) -> Recommender:
    model = c.make(m, log)
    if isinstance(model, Blend):
        model.weights = learnt
    return model


def _learners(m: Matrix, targets: list[NDArray[np.int32]]) -> NDArray[np.int64]:
    """The users whose next window teaches: a history, something in the window, consent standing."""
    return np.array([u for u in range(len(m.users)) if m.active[u] and len(targets[u]) and not m.withdrawn[u]],
                    dtype=np.int64)


def _learn(model: Blend, m: Matrix, targets: list[NDArray[np.int32]], seed: int,
           before: NDArray[np.float64] | None = None) -> NDArray[np.float64] | None:
    """The blend's weights learnt on this window; with too few people to learn from, the ones before."""
    learners = _learners(m, targets)
    if len(learners) < MIN_PEOPLE:
        return before
    try:
        return model.learn(m.affinity, m.bought, targets, learners, seed)
    except ValueError:  # nothing to contrast: every item engaged with, or none
        return before


def _blend_weights(blend: Candidate, log: Log, at: datetime, until: datetime, weights: Weights, seed: int,
                   progress: Callable[[str], None]) -> NDArray[np.float64] | None:
    """The blend's weights learnt at `at` on the window up to `until`; None with too few people in it."""
    if not (log.time <= micros(at)).any():
        return None
    m = log.matrix(at, weights)
    targets = log.targets(at, until, m)
    if len(_learners(m, targets)) < MIN_PEOPLE:
        return None
    progress(f"learning the blend's weights on the window after {at.date()}…")
    model = blend.make(m, log)
    assert isinstance(model, Blend)
    return _learn(model, m, targets, seed)


def _enough(m: Matrix, targets: list[NDArray[np.int32]], at: datetime) -> None:
    people = sum(1 for u in range(len(m.users)) if m.active[u] and len(targets[u]))
    if people < MIN_PEOPLE:
        raise ValidationError(f"too little history: {people} people engaged with something in the window after "
                              f"{at.isoformat()} (at least {MIN_PEOPLE} needed to judge a model)")
