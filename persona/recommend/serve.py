"""Storing the recommender and recommending for one person (issue 24, items 2, 4 and 5).

A person's list is scored from their own interactions, read from their streams when asked, and
the promoted version's items: what they bought a moment ago is left out at once, without
retraining. Each item says why: the person's own items that weigh most for it under the model
("because you viewed X and bought Y"), or the popularity it was picked by.

No personal list without personalization consent: a person whose consent stands withdrawn gets
the items popular overall, and is told so. A person with no interactions with products yet (cold
start) gets the items popular in their segment — the people whose favourite category is the one
they browse most (their profile's top category: page views, social interactions) — or, with no
category known, the items popular overall.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import scipy.sparse as sp
from numpy.typing import NDArray

from persona import identity
from persona.core import Persona
from persona.errors import ValidationError
from persona.events import micros
from persona.models import registry
from persona.recommend import NAME, interactions
from persona.recommend.interactions import KINDS, Weights
from persona.recommend.models import Recommender, top
from persona.recommend.train import BASELINES, K, Trained, batch_of

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
    basis: str  # personal | popular: no consent | popular in segment: no history | popular: no history
    model: str  # name and version
    items: list[Recommendation]


@dataclass
class Onto:
    """Users' interest laid over a model's items (interactions with items it does not know dropped)."""

    affinity: sp.csr_matrix
    bought: sp.csr_matrix
    strongest: sp.csr_matrix
    withdrawn: np.ndarray
    users: list[str]

    @classmethod
    def of(cls, log: interactions.Log, model: Recommender, now: datetime) -> Onto:
        index = {sku: i for i, sku in enumerate(model.items)}
        m = log.matrix(now, Weights(**model.weighting))
        mine = np.array([index.get(sku, -1) for sku in log.items], dtype=np.int64)
        shape = (len(m.users), len(model.items))

        def onto(matrix: sp.csr_matrix) -> sp.csr_matrix:
            coo = matrix.tocoo()
            keep = mine[coo.col] >= 0
            return sp.csr_matrix((coo.data[keep], (coo.row[keep], mine[coo.col[keep]])), shape=shape)

        return cls(onto(m.affinity), onto(m.bought), onto(m.strongest), m.withdrawn, m.users)


def recommend(persona: Persona, profile_id: str, *, first: int = K, category: str | None = None,
              exclude_purchased: bool = True, as_of: datetime | None = None,
              loaded: registry.Loaded | None = None) -> Recommendations:
    """One person's `first` best items now (or as of an instant), best first, each explained."""
    if not 1 <= first <= MAX_FIRST:
        raise ValidationError(f"first: between 1 and {MAX_FIRST}")
    loaded = loaded or registry.load(persona, NAME)
    model: Recommender = loaded.pipeline
    person = identity.person_of(persona.recorder, profile_id)
    log = interactions.read_person(persona, person.members)
    found = Onto.of(log, model, as_of or datetime.now(UTC))
    # one user: who they are now (at a past instant, the part of them that named this profile)
    user = found.users.index(person.id) if person.id in found.users else None
    if user is None and profile_id in found.users:
        user = found.users.index(profile_id)
    withdrawn = user is not None and bool(found.withdrawn[user])
    if user is None or withdrawn:
        row = sp.csr_matrix((1, len(model.items)))
        bought, strongest = row, row
    else:
        row, bought, strongest = found.affinity[[user]], found.bought[[user]], found.strongest[[user]]
    allowed = None if category is None else model.categories == category
    # cold start: what they browse, as their profile shows it now (not at a past instant)
    cold = user is not None and not withdrawn and not row.nnz and as_of is None
    hint = np.array([_browsed(persona, profile_id, model) if cold else -1])
    made = lists(model, row, bought if exclude_purchased else None, strongest, np.array([withdrawn]), first, allowed,
                 hint)
    return Recommendations(person.id, made.basis[0], f"{NAME} v{loaded.version.version}", made.items(model, 0))


def _browsed(persona: Persona, profile_id: str, model: Recommender) -> int:
    """The segment (index into the model's categories) of the category a person browses most, by
    their profile's features (−1: none the model knows, or one whose fans engaged with nothing)."""
    from persona.reading import person_rows

    row = person_rows(persona, [profile_id]).get(profile_id)
    if row is None or row.index_doc is None:
        return -1
    top = (orjson.loads(row.index_doc).get("features") or {}).get("top_categories") or []
    known = {str(c): g for g, c in enumerate(model.category_names) if model.segment_popularity[g].sum() > 0}
    return next((known[c] for c in top if c in known), -1)


REASONS = 2  # reasons given per item
AMONG = 32  # ... found among the person's items of most interest


@dataclass
class Lists:
    """Users' lists: item indices best first (−1: the list ran short), their scores, and for each
    the person's own items behind it (−1: none) with the kind of interaction that weighed most."""

    picked: NDArray[np.int64]  # users × k
    scores: NDArray[np.float64]
    reasons: NDArray[np.int64]  # users × k × REASONS
    kinds: NDArray[np.int64]
    basis: list[str]
    segments: list[str | None]  # the category whose fans' popular items a list is, if it is one

    def items(self, model: Recommender, u: int) -> list[Recommendation]:
        out = []
        for c, i in enumerate(self.picked[u]):
            if i < 0:
                break
            why = tuple(Reason(str(model.items[r]), KINDS[k])
                        for r, k in zip(self.reasons[u, c], self.kinds[u, c], strict=True) if r >= 0)
            category = str(model.categories[i]) or None
            out.append(Recommendation(str(model.items[i]), category, float(self.scores[u, c]), why,
                                      because(why, self.basis[u], self.segments[u])))
        return out

    def document(self, model: Recommender, u: int) -> dict[str, Any]:
        """A user's list as the read model holds it: [sku, category, score, [[sku, kind], …]] an item."""
        chosen = self.picked[u][self.picked[u] >= 0]
        skus, categories = model.items[chosen].tolist(), model.categories[chosen].tolist()
        scores = np.round(self.scores[u, :len(chosen)], 6).tolist()
        reasons, kinds = self.reasons[u].tolist(), self.kinds[u].tolist()
        names = model.items
        return {"basis": self.basis[u], "segment": self.segments[u],
                "items": [[skus[c], categories[c] or None, scores[c],
                           [[str(names[r]), KINDS[k]] for r, k in zip(reasons[c], kinds[c], strict=True) if r >= 0]]
                          for c in range(len(chosen))]}


def lists(model: Recommender, affinity: sp.csr_matrix, bought: sp.csr_matrix | None, strongest: sp.csr_matrix,
          withdrawn: NDArray[np.bool_], first: int, allowed: NDArray[np.bool_] | None = None,
          hints: NDArray[np.int64] | None = None) -> Lists:
    """Each user's list: personal from their interest; with no history, the items popular in the
    segment `hints` names (an index into the model's categories; −1 or None: none), else overall;
    with personalization consent withdrawn, the items popular overall."""
    users = affinity.shape[0]
    plain = withdrawn | (np.diff(affinity.indptr) == 0)
    hint = np.where(withdrawn, -1, np.full(users, -1) if hints is None else hints)
    scores = model.scores(affinity) if not plain.all() else np.empty((users, len(model.items)))
    if plain.any():
        scores[plain] = model.ranked_popular(np.where(plain, hint, -1)[plain])
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    excluded = bought
    if excluded is not None and withdrawn.any():
        excluded = sp.diags((~withdrawn).astype(np.float64)) @ excluded  # what they bought is not read either
    picked = top(scores, first, excluded)
    ranked = np.take_along_axis(scores, np.maximum(picked, 0), axis=1)
    basis = ["popular: no consent" if withdrawn[u] else "popular in segment: no history" if plain[u] and hint[u] >= 0
             else "popular: no history" if plain[u] else "personal" for u in range(users)]
    segment = np.where(plain, hint, model.segments(affinity) if getattr(model, "by_segment", False) else -1)
    names = [str(c) for c in model.category_names]
    mine, weight, kinds = _strongest_items(affinity, strongest, plain)
    related = model.related(mine, np.where(plain[:, None], -1, picked)) * weight[:, :, None]
    best = np.argsort(-related, axis=1, kind="stable")[:, :REASONS, :]  # users × REASONS × k
    found = np.take_along_axis(related, best, axis=1) > 0
    width = picked.shape[1]
    reasons = np.where(found, np.take_along_axis(np.repeat(mine[:, :, None], width, 2), best, axis=1), -1)
    kind = np.where(found, np.take_along_axis(np.repeat(kinds[:, :, None], width, 2), best, axis=1), 0)
    return Lists(picked, ranked, reasons.transpose(0, 2, 1), kind.transpose(0, 2, 1), basis,
                 [names[g] if g >= 0 else None for g in segment])


def _strongest_items(affinity: sp.csr_matrix, strongest: sp.csr_matrix, skip: NDArray[np.bool_]
                     ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    """Each user's AMONG items of most interest (users × AMONG, −1 padded), that interest, and the
    kind of interaction that weighed most for each."""
    users = affinity.shape[0]
    mine = np.full((users, AMONG), -1, dtype=np.int64)
    weight = np.zeros((users, AMONG))
    kinds = np.zeros((users, AMONG), dtype=np.int64)
    affinity, strongest = affinity.tocsr(), strongest.tocsr()
    affinity.sort_indices()
    strongest.sort_indices()
    for u in np.flatnonzero(~skip):
        lo, hi = affinity.indptr[u], affinity.indptr[u + 1]
        data, items = affinity.data[lo:hi], affinity.indices[lo:hi]
        keep = np.argsort(-data, kind="stable")[:AMONG]
        mine[u, :len(keep)] = items[keep]
        weight[u, :len(keep)] = data[keep]
        s_lo, s_hi = strongest.indptr[u], strongest.indptr[u + 1]
        if s_hi > s_lo:
            where = np.minimum(np.searchsorted(strongest.indices[s_lo:s_hi], items[keep]), s_hi - s_lo - 1)
            kinds[u, :len(keep)] = np.maximum(strongest.data[s_lo:s_hi][where].astype(np.int64) - 1, 0)
    return mine, weight, kinds


def because(reasons: tuple[Reason, ...], basis: str, segment: str | None) -> str:
    """An item's reasons in words."""
    if reasons:
        return "because you " + " and ".join(SAID[r.interaction].format(r.sku) for r in reasons)
    if segment:
        return f"popular with people who like {segment}"
    return "popular" + (" (no personalization consent)" if basis == "popular: no consent" else "")


def summary(found: Recommendations) -> dict[str, Any]:
    return {"model": found.model, "basis": found.basis,
            "items": [{"sku": r.sku, "category": r.category, "score": round(r.score, 6), "because": r.because,
                       "reasons": [{"sku": x.sku, "interaction": x.interaction} for x in r.reasons]}
                      for r in found.items]}


KEEP = 50  # items kept per person in the read model: enough for a page after purchases and a category
BATCH = 5_000


def score_everyone(persona: Persona, *, loaded: registry.Loaded | None = None, keep: int = KEEP,
                   progress: Any = None) -> int:
    """Every person's list now, into the read model (the promoted version's rows replace the old
    ones). A person whose personalization consent stands withdrawn, or with no history, gets no
    row: they are served the popular items when asked. Returns the rows written."""
    loaded = loaded or registry.load(persona, NAME)
    model: Recommender = loaded.pipeline
    now = datetime.now(UTC)
    if progress is not None:
        progress("reading every interaction…")
    found = Onto.of(interactions.read(persona), model, now)
    users = np.flatnonzero((np.diff(found.affinity.indptr) > 0) & ~found.withdrawn)
    if progress is not None:
        progress(f"recommending for {len(users):,} people…")
    rows = []
    at = micros(now)
    batch = batch_of(len(model.items), BATCH)
    for lo in range(0, len(users), batch):
        part = users[lo:lo + batch]
        made = lists(model, found.affinity[part], found.bought[part], found.strongest[part], found.withdrawn[part],
                     keep)
        rows += [(found.users[u], orjson.dumps(made.document(model, n)).decode()) for n, u in enumerate(part)]
    rec = persona.recorder
    with rec.transaction():
        # checked under the write lock: someone erased while this ran gets no row back, and a merge
        # or an unlink meanwhile leaves only the rows of ids that still name a person
        ids = [pid for pid, _ in rows]
        heads, people = rec.heads(ids), identity.persons(rec, ids)
        kept = [(pid, NAME, loaded.version.version, at, doc) for pid, doc in rows
                if pid in heads and heads[pid].wrapped is not None and people[pid].id == pid]
        rec.put_predictions(kept, model=NAME)
    return len(kept)


def stored(persona: Persona, profile_id: str) -> dict[str, Any] | None:
    """A person's row of the read model (None: no row)."""
    found = persona.recorder.predictions_of([profile_id], NAME)
    if not found:
        return None
    _, model, version, at, doc = found[0]
    return {"model": model, "version": version, "computed_at": at, **orjson.loads(doc)}


def from_read_model(row: dict[str, Any], first: int, category: str | None = None) -> dict[str, Any] | None:
    """The first items of a stored row (of one category, if asked), each with why; None when the
    row holds fewer than asked for (purchases since took some): then made afresh."""
    items = [item for item in row["items"] if category is None or item[1] == category]
    if len(items) < first and len(row["items"]) >= KEEP:
        return None
    items = items[:first]
    said = [because(tuple(Reason(sku, kind) for sku, kind in item[3]), row["basis"], row.get("segment"))
            for item in items]
    return {"basis": row["basis"], "model": f"{row['model']} v{row['version']}", "computed_at": row["computed_at"],
            "items": items, "because": said}


def fresh(persona: Persona, profile_id: str, first: int, category: str | None, exclude_purchased: bool
          ) -> dict[str, Any]:
    """A list made for the request, in from_read_model's form."""
    found = recommend(persona, profile_id, first=first, category=category, exclude_purchased=exclude_purchased,
                      loaded=promoted(persona))
    return {"basis": found.basis, "model": found.model, "computed_at": None,
            "because": [r.because for r in found.items],
            "items": [[r.sku, r.category, r.score, [[x.sku, x.interaction] for x in r.reasons]] for r in found.items]}


_LOADED: dict[str, registry.Loaded] = {}  # sha256 -> the version loaded (a server asks again and again)


def promoted(persona: Persona) -> registry.Loaded:
    """The promoted version, loaded once per process (checked against the registry each time)."""
    version = registry.get(persona, NAME)
    found = _LOADED.get(version.sha256)
    if found is None or found.version != version:
        found = registry.load(persona, NAME, version.version)
        _LOADED.clear()
        _LOADED[version.sha256] = found
    return found
