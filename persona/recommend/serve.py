"""Storing the recommender and recommending for one person (issue 24, items 2, 4 and 5).

A person's list is scored from their own interactions, read from their streams when asked, and
the promoted version's items: what they bought a moment ago is left out at once, without
retraining. Each item says why: the person's own items that weigh most for it under the model
("because you viewed X and bought Y"), or the popularity it was picked by.

No personal list without personalization consent: a person whose consent stands withdrawn (or
who has no history yet) gets the items popular overall, and is told so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from persona import identity
from persona.core import Persona
from persona.errors import ValidationError
from persona.models import registry
from persona.recommend import NAME, interactions
from persona.recommend.interactions import KINDS, Weights
from persona.recommend.models import Recommender, top
from persona.recommend.train import BASELINES, K, Trained

MAX_FIRST = 100
SAID = {"view": "viewed {}", "cart": "put {} in your cart", "order": "bought {}", "review": "reviewed {}"}


def save(persona: Persona, trained: Trained, *, promote: bool | None = None) -> registry.ModelVersion:
    """Store a version; it serves at once when it beats every baseline on NDCG@10 (or as asked)."""
    main = f"ndcg@{K}"
    against, baseline = max(((n, b[main]) for n, b in trained.baselines.items()), key=lambda nb: nb[1],
                            default=("none", 0.0))
    improvement = (trained.metrics[main] - baseline) / baseline if baseline else 0.0
    shortfalls = []
    if trained.chosen["candidate"] in BASELINES:
        shortfalls.append(f"serves {trained.chosen['candidate']}: no personalised model beat it when choosing")
    elif not improvement > 0:
        shortfalls.append(f"NDCG@{K} {trained.metrics[main]:.4g} is no better than {against}'s ({baseline:.4g})")
    cutoffs = [c.isoformat() for c in trained.cutoffs]
    meta = {
        "task": {"name": NAME, "family": NAME, "kind": "ranking", "horizon_days": trained.window.days},
        "metrics": trained.metrics, "baselines": trained.baselines, "validation": trained.validation,
        "lift": {"metric": main, "model": trained.metrics[main], "baseline": baseline, "against": against,
                 "improvement": improvement},
        "chosen": trained.chosen, "rows": trained.rows, "k": K,
        "fingerprint": hashlib.sha256("\x00".join(sorted(trained.people) + cutoffs).encode()).hexdigest(),
        "window": {"cutoffs": cutoffs, "horizon_days": trained.window.days},
        "people": len(trained.people), "seconds": round(trained.seconds, 3), "notes": trained.notes,
        "code": registry.code_versions(), "seed": trained.seed,
    }
    return registry.store(persona, NAME, trained.model, meta, trained.people, shortfalls, promote=promote)


@dataclass(frozen=True)
class Reason:
    sku: str
    interaction: str  # view | cart | order | review


@dataclass(frozen=True)
class Recommendation:
    sku: str
    category: str | None
    score: float
    reasons: tuple[Reason, ...]  # the person's own items behind it, strongest first
    because: str  # the reasons in words


@dataclass(frozen=True)
class Recommendations:
    profile_id: str
    basis: str  # personal | popular: no consent | popular: no history
    model: str  # name and version
    items: list[Recommendation]


def recommend(persona: Persona, profile_id: str, *, first: int = K, category: str | None = None,
              exclude_purchased: bool = True, as_of: datetime | None = None,
              loaded: registry.Loaded | None = None) -> Recommendations:
    """One person's `first` best items now (or as of an instant), best first."""
    if not 1 <= first <= MAX_FIRST:
        raise ValidationError(f"first: between 1 and {MAX_FIRST}")
    loaded = loaded or registry.load(persona, NAME)
    model: Recommender = loaded.pipeline
    person = identity.person_of(persona.recorder, profile_id)
    log = interactions.read_person(persona, person.members)
    now = as_of or datetime.now(UTC)
    row, bought, strongest, withdrawn = _row(log, model, now)
    allowed = np.ones(len(model.items), dtype=bool)
    if category is not None:
        allowed = model.categories == category
    if withdrawn or row.nnz == 0:
        basis = "popular: no consent" if withdrawn else "popular: no history"
        scores = model.popular(np.full(1, -1))
    else:
        basis = "personal"
        scores = model.scores(row)
    scores[0, ~allowed] = -np.inf
    excluded = bought if exclude_purchased and not withdrawn else None
    picked = [int(i) for i in top(scores, first, excluded)[0] if i >= 0]
    items = [_explained(model, i, float(scores[0, i]), row, strongest, basis) for i in picked]
    return Recommendations(person.id, basis, f"{NAME} v{loaded.version.version}", items)


def _row(log: interactions.Log, model: Recommender, now: datetime
         ) -> tuple[sp.csr_matrix, sp.csr_matrix, dict[int, int], bool]:
    """The person's decayed interest over the model's items, what they bought, each item's
    strongest kind, and whether their consent stands withdrawn."""
    index = {sku: i for i, sku in enumerate(model.items)}
    shape = (1, len(model.items))
    if log.end is None and not log.consents:
        return sp.csr_matrix(shape), sp.csr_matrix(shape), {}, False
    m = log.matrix(now, Weights(**model.weighting))
    withdrawn = bool(m.withdrawn.any())
    mine = np.array([index.get(sku, -1) for sku in log.items], dtype=np.int64)

    def onto(matrix: sp.csr_matrix) -> sp.csr_matrix:
        coo = matrix.tocoo()
        keep = mine[coo.col] >= 0
        return sp.csr_matrix((coo.data[keep], (np.zeros(int(keep.sum()), dtype=np.int64), mine[coo.col[keep]])),
                             shape=shape)

    strong = m.strongest.tocoo()
    strongest = {int(mine[c]): int(k) - 1 for c, k in zip(strong.col, strong.data, strict=True) if mine[c] >= 0}
    return onto(m.affinity), onto(m.bought), strongest, withdrawn


def _explained(model: Recommender, item: int, score: float, row: sp.csr_matrix, strongest: dict[int, int],
               basis: str) -> Recommendation:
    category = str(model.categories[item]) or None
    reasons: tuple[Reason, ...] = ()
    if basis == "personal" and row.nnz:
        mine = row.indices.astype(np.int64)
        weight = row.data * model.related(item, mine)
        order = [j for j in np.argsort(-weight, kind="stable")[:2] if weight[j] > 0]
        reasons = tuple(Reason(str(model.items[mine[j]]), KINDS[strongest.get(int(mine[j]), 0)]) for j in order)
    if reasons:
        because = "because you " + " and ".join(SAID[r.interaction].format(r.sku) for r in reasons)
    elif basis == "personal" and getattr(model, "by_segment", False):
        because = f"popular with people who like {category}" if category else "popular"
    else:
        because = "popular" + (" (no personalization consent)" if basis == "popular: no consent" else "")
    return Recommendation(str(model.items[item]), category, score, reasons, because)


def summary(found: Recommendations) -> dict[str, Any]:
    return {"basis": found.basis, "model": found.model,
            "items": [{"sku": r.sku, "category": r.category, "score": round(r.score, 6), "because": r.because,
                       "reasons": [{"sku": x.sku, "interaction": x.interaction} for x in r.reasons]}
                      for r in found.items]}


