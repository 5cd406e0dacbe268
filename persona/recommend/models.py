"""The recommenders (issue 24, item 2): what each scores, and why it recommends an item.

Every recommender scores a user from their row of decayed interest (`interactions.Matrix`): a
person's scores come from their own interactions and what the model learnt from everyone's, so
a person who buys something new is scored anew from the read model without retraining.

- `Popular`: the items most engaged with (decayed), overall, or among the user's segment: the
  people whose favourite category (most interest) is the same. A person with no history, or
  whose personalization consent is withdrawn, gets the overall list.
- `ItemSimilarity` (SAR): item-item co-occurrence — how many people engaged with both — as a
  Jaccard similarity, each item's `neighbours` strongest kept; a user's score for an item is their
  decayed interest in each item times its similarity to it.
- `Factors`: implicit-feedback matrix factorisation (ALS, the `implicit` library): item factors
  learnt from everyone's interest as confidence; a user's factors are solved from their own row
  and the item factors (the least-squares step of ALS), so a new person needs no retraining.
- `Blend`: the person's own interest, item similarity, ALS, category share and popularity,
  weighed together by a logistic regression learnt on a window of what people did next.

A model holds items, categories and numbers learnt from many people: no person's row is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from persona.models.threads import one_thread


class Recommender:
    """What every recommender keeps: its items (SKUs), their categories and popularity."""

    family = "recommender"

    def __init__(self, items: list[str], categories: list[str | None], affinity: sp.csr_matrix,
                 segments: NDArray[np.int64]) -> None:
        self.weighting: dict[str, float] = {}  # interactions.Weights, as set by training
        self.items = np.array(items, dtype=np.str_)
        self.categories = np.array([c or "" for c in categories], dtype=np.str_)
        self.category_names = np.array(sorted({c for c in categories if c}), dtype=np.str_)
        self.popularity = np.asarray(affinity.sum(axis=0), dtype=np.float64).ravel()
        groups = len(self.category_names)
        by_segment = np.zeros((groups, len(items)), dtype=np.float64)
        for g in range(groups):
            rows = np.flatnonzero(segments == g)
            if len(rows):
                by_segment[g] = np.asarray(affinity[rows].sum(axis=0)).ravel()
        self.segment_popularity = by_segment

    def segments(self, affinity: sp.csr_matrix) -> NDArray[np.int64]:
        """Each user's favourite category (index into category_names), or −1 with no history."""
        return favourite(affinity, self.categories, self.category_names)

    def scores(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        """Users by items: higher is more likely wanted."""
        raise NotImplementedError

    def popular(self, segments: NDArray[np.int64]) -> NDArray[np.float64]:
        """Each user's segment's interest in every item (−1: everyone's)."""
        out = np.tile(self.popularity, (len(segments), 1))
        known = segments >= 0
        if known.any():
            out[known] = self.segment_popularity[segments[known]]
        return out

    def popularity_share(self) -> NDArray[np.float64]:
        """Each item's share of everyone's interest."""
        share: NDArray[np.float64] = self.popularity / max(float(self.popularity.sum()), 1e-300)
        return share

    def ranked_popular(self, segments: NDArray[np.int64]) -> NDArray[np.float64]:
        """`popular` as a ranking: the items a segment never engaged with after the rest, by
        everyone's interest (not by their order in the catalogue)."""
        out = self.popular(segments)
        return np.where(out > 0, out, self.popularity_share()[None, :] - 1.0)

    def related(self, mine: NDArray[np.int64], picked: NDArray[np.int64]) -> NDArray[np.float64]:
        """For users (first axis), how much each of their items (`mine`, users × m) says about each
        item picked for them (`picked`, users × k): users × m × k, what "because you …" is made of.
        Both may be padded with −1 (nothing)."""
        return np.zeros((mine.shape[0], mine.shape[1], picked.shape[1]))


class Popular(Recommender):
    family = "popular"

    def __init__(self, items: list[str], categories: list[str | None], affinity: sp.csr_matrix,
                 segments: NDArray[np.int64], *, by_segment: bool) -> None:
        super().__init__(items, categories, affinity, segments)
        self.by_segment = by_segment
        self.family = "popular by segment" if by_segment else "popular"

    def scores(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        segments = self.segments(affinity) if self.by_segment else np.full(affinity.shape[0], -1)
        return self.ranked_popular(segments)


class ItemSimilarity(Recommender):
    family = "item similarity"

    def __init__(self, items: list[str], categories: list[str | None], affinity: sp.csr_matrix,
                 segments: NDArray[np.int64], *, neighbours: int = 100, min_together: int = 2) -> None:
        super().__init__(items, categories, affinity, segments)
        self.neighbours, self.min_together = neighbours, min_together
        seen = (affinity > 0).astype(np.float64).tocsc()
        together = (seen.T @ seen).tocsr()  # items × items: people who engaged with both
        alone = together.diagonal()
        together.data[together.data < min_together] = 0
        together.eliminate_zeros()
        coo = together.tocoo()
        jaccard = coo.data / (alone[coo.row] + alone[coo.col] - coo.data)
        self.similarity = _top(sp.csr_matrix((jaccard, (coo.row, coo.col)), shape=together.shape), neighbours)

    def scores(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        """Interest times similarity; items it says nothing of come after, by their segment's popularity."""
        found = np.asarray((affinity @ self.similarity).toarray(), dtype=np.float64)
        fill = self.popular(self.segments(affinity))
        fill /= np.maximum(fill.max(axis=1, keepdims=True), 1e-300)
        return np.where(found > 0, found, fill - 1.0)

    def related(self, mine: NDArray[np.int64], picked: NDArray[np.int64]) -> NDArray[np.float64]:
        shape = (mine.shape[0], mine.shape[1], picked.shape[1])
        rows = np.broadcast_to(np.maximum(mine, 0)[:, :, None], shape).ravel()
        cols = np.broadcast_to(np.maximum(picked, 0)[:, None, :], shape).ravel()
        found = np.asarray(self.similarity[rows, cols], dtype=np.float64).reshape(shape)
        return np.where((mine >= 0)[:, :, None] & (picked >= 0)[:, None, :], found, 0.0)


class Factors(Recommender):
    family = "matrix factorisation (ALS)"

    def __init__(self, items: list[str], categories: list[str | None], affinity: sp.csr_matrix,
                 segments: NDArray[np.int64], *, factors: int = 64, regularization: float = 50.0,
                 alpha: float = 10.0, iterations: int = 15, seed: int = 0) -> None:
        super().__init__(items, categories, affinity, segments)
        self.factors, self.regularization, self.alpha, self.iterations = factors, regularization, alpha, iterations
        self.item_factors = _als(affinity, factors, regularization, alpha, iterations, seed)
        norms = np.linalg.norm(self.item_factors, axis=1)
        self.unit = self.item_factors / np.where(norms > 0, norms, 1.0)[:, None]

    def user_factors(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        """Each user's factors solved from their own row: (YᵀCᵤY + λI)⁻¹ YᵀCᵤpᵤ, with confidence
        Cᵤ = α × interest, as ALS's user step."""
        y = self.item_factors
        base = y.T @ y + self.regularization * np.eye(y.shape[1])
        out = np.zeros((affinity.shape[0], y.shape[1]))
        for u in range(affinity.shape[0]):
            lo, hi = affinity.indptr[u], affinity.indptr[u + 1]
            if lo == hi:
                continue
            items, confidence = affinity.indices[lo:hi], self.alpha * affinity.data[lo:hi]
            rows = y[items]
            a = base + (rows.T * (confidence - 1.0)) @ rows
            out[u] = np.linalg.solve(a, rows.T @ confidence)
        return out

    def scores(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        return np.asarray(self.user_factors(affinity) @ self.item_factors.T, dtype=np.float64)

    def related(self, mine: NDArray[np.int64], picked: NDArray[np.int64]) -> NDArray[np.float64]:
        cosine = np.einsum("bmf,bkf->bmk", self.unit[np.maximum(mine, 0)], self.unit[np.maximum(picked, 0)])
        found = np.clip(cosine, 0.0, None)
        return np.where((mine >= 0)[:, :, None] & (picked >= 0)[:, None, :], found, 0.0)


class Blend(Recommender):
    """The others' views of a person, weighed together: a logistic regression, learnt on a window
    of what people went on to engage with, over features of each (person, item) pair —

    - the person's own interest in the item (their share of it: as is, its root, its log; whether any),
    - what item similarity says from the person's other items,
    - the person's share of interest in the item's category,
    - the item's popularity, overall and in the person's segment,
    - the ALS score.

    So it learns how much people come back to what they looked at against how far their tastes
    carry to new items, and how much popularity counts, from the data rather than by hand. The
    weights are learnt by training (`learn`, on a window before the instant the model is made
    at, persona.recommend.train); "because you …" comes from item similarity."""

    family = "blend"
    FEATURES = ("interest", "interest (root)", "interest (log)", "seen", "similar items (log)",
                "category share (log)", "popular (log)", "popular in segment (log)", "factors")

    def __init__(self, items: list[str], categories: list[str | None], affinity: sp.csr_matrix,
                 segments: NDArray[np.int64], *, factors: int = 64, regularization: float = 50.0,
                 seed: int = 0) -> None:
        super().__init__(items, categories, affinity, segments)
        self.similar = ItemSimilarity(items, categories, affinity, segments)
        self.latent = Factors(items, categories, affinity, segments, factors=factors,
                              regularization=regularization, seed=seed)
        others = self.similar.similarity.tolil()
        others.setdiag(0)  # an item's own interest is a feature of its own
        self.others = others.tocsr()
        self.others.eliminate_zeros()
        index = {c: g for g, c in enumerate(self.category_names)}
        groups = len(self.category_names)  # and one more: items with no category
        self.item_group = np.array([index.get(c, groups) for c in self.categories], dtype=np.int64)
        by_group = np.bincount(self.item_group, weights=self.popularity, minlength=groups + 1)
        self.group_share = (by_group + 1e-9) / (by_group.sum() + 1e-9 * (groups + 1))
        self.weights: NDArray[np.float64] | None = None

    def features(self, affinity: sp.csr_matrix) -> Iterator[NDArray[np.float64]]:
        """Each feature of FEATURES in turn, users × items."""
        total = np.maximum(np.asarray(affinity.sum(axis=1), dtype=np.float64), 1e-12)  # users × 1
        own = affinity.toarray() / total
        yield own * 10.0
        yield np.sqrt(own)
        yield np.log(own + 1e-4)
        yield (own > 0).astype(np.float64)
        del own
        yield np.log(np.asarray((affinity @ self.others).toarray()) / total + 1e-4)
        groups = len(self.group_share)
        onto = sp.csr_matrix((np.ones(len(self.item_group)), (np.arange(len(self.item_group)), self.item_group)),
                             shape=(len(self.item_group), groups))
        in_group = np.asarray((affinity @ onto).toarray())
        share = (in_group + 2.0 * self.group_share) / (total + 2.0)  # smoothed towards everyone's
        yield np.log(share[:, self.item_group])
        overall = self.popularity_share()
        yield np.broadcast_to(np.log(overall + 1e-7), (affinity.shape[0], len(overall)))
        mine = self.popular(self.segments(affinity))
        yield np.log(mine / np.maximum(mine.sum(axis=1, keepdims=True), 1e-300) + 1e-7)
        yield self.latent.scores(affinity)

    def scores(self, affinity: sp.csr_matrix) -> NDArray[np.float64]:
        if self.weights is None:
            raise ValueError("the blend's weights are not learnt yet")
        out = np.zeros((affinity.shape[0], len(self.items)))
        for weight, feature in zip(self.weights, self.features(affinity), strict=True):
            out += weight * feature
        return out

    def learn(self, affinity: sp.csr_matrix, bought: sp.csr_matrix, targets: list[NDArray[np.int32]],
              users: NDArray[np.int64], seed: int, *, most: int = 20_000, negatives: int = 200,
              batch: int = 500) -> NDArray[np.float64]:
        """Weights that tell each user's next items (`targets`, what they engaged with in the window
        after the matrix's instant) from the rest: a logistic regression over up to `most` of these
        users, every one of their items they had not bought, and `negatives` of the items they did
        not engage with, drawn at random and weighted up to stand for all of them (so the rows
        grow with the people, not the catalogue). ValueError when there is nothing to contrast."""
        from sklearn.linear_model import LogisticRegression  # heavy: loaded when a model is trained

        rng = np.random.default_rng(seed)
        if len(users) > most:
            users = np.sort(rng.choice(users, most, replace=False))
        rows, labels, weights = [], [], []
        for lo in range(0, len(users), batch):
            chunk = users[lo:lo + batch]
            stacked = np.stack(list(self.features(affinity[chunk])), axis=-1)
            gone = bought[chunk].toarray() > 0
            for j, u in enumerate(chunk):
                wanted = np.zeros(len(self.items), dtype=bool)
                wanted[targets[u]] = True
                wanted &= ~gone[j]
                rest = np.flatnonzero(~gone[j] & ~wanted)
                drawn = rng.choice(rest, min(negatives, len(rest)), replace=False) if len(rest) else rest
                keep = np.concatenate([np.flatnonzero(wanted), drawn])
                rows.append(stacked[j, keep])
                labels.append(wanted[keep])
                weights.append(np.where(wanted[keep], 1.0, len(rest) / max(len(drawn), 1)))
        y = np.concatenate(labels)
        if not y.any() or y.all():
            raise ValueError("nothing to learn the blend's weights from: no one engaged with anything new")
        fitted = LogisticRegression(C=1.0, max_iter=2000).fit(np.concatenate(rows), y,
                                                              sample_weight=np.concatenate(weights))
        learnt: NDArray[np.float64] = np.asarray(fitted.coef_, dtype=np.float64).ravel()
        return learnt

    def related(self, mine: NDArray[np.int64], picked: NDArray[np.int64]) -> NDArray[np.float64]:
        return self.similar.related(mine, picked)


@one_thread
def _als(affinity: sp.csr_matrix, factors: int, regularization: float, alpha: float, iterations: int, seed: int
         ) -> NDArray[np.float64]:
    """Item factors of implicit's ALS on the users' interest (one thread: see models/threads.py)."""
    import warnings

    from implicit.cpu.als import AlternatingLeastSquares  # heavy: loaded when a model is trained

    with warnings.catch_warnings():  # the BLAS pool is held to one thread here, as implicit advises
        warnings.simplefilter("ignore", RuntimeWarning)
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed, num_threads=1,
                                        calculate_training_loss=False)
    with _no_progress_monitor():
        model.fit(affinity.astype(np.float32).tocsr(), show_progress=False)
    learnt: NDArray[np.float64] = np.asarray(model.item_factors, dtype=np.float64)
    return learnt


@contextmanager
def _no_progress_monitor() -> Iterator[None]:
    """implicit's fit makes a tqdm bar, hidden; tqdm starts its monitor thread even so, and that
    thread outlives the fit: a process with another thread no longer forks (an ingest then reads
    its file in-process, persona.ingest.engine). The monitor is off while the fit runs."""
    from tqdm import tqdm

    before = tqdm.monitor_interval
    tqdm.monitor_interval = 0
    try:
        yield
    finally:
        tqdm.monitor_interval = before


def _top(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's k largest entries."""
    rows, cols, vals = [], [], []
    for r in range(matrix.shape[0]):
        lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
        keep = lo + np.argpartition(-matrix.data[lo:hi], k - 1)[:k] if hi - lo > k else np.arange(lo, hi)
        rows.append(np.full(len(keep), r))
        cols.append(matrix.indices[keep])
        vals.append(matrix.data[keep])
    if not rows:
        return sp.csr_matrix(matrix.shape)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=matrix.shape)


def favourite(affinity: sp.csr_matrix, categories: NDArray[np.str_], names: NDArray[np.str_]) -> NDArray[np.int64]:
    """Each user's category of most interest (index into names), −1 with none."""
    index = {c: g for g, c in enumerate(names)}
    of_item = np.array([index.get(c, -1) for c in categories], dtype=np.int64)
    known = of_item >= 0
    if not len(names) or not known.any():
        return np.full(affinity.shape[0], -1)
    onto = sp.csr_matrix((np.ones(int(known.sum())), (np.flatnonzero(known), of_item[known])),
                         shape=(len(categories), len(names)))
    per = np.asarray((affinity @ onto).toarray())
    out = np.asarray(per.argmax(axis=1), dtype=np.int64)
    out[per.max(axis=1) <= 0] = -1
    return out


def top(scores: NDArray[np.float64], k: int, excluded: sp.csr_matrix | None = None) -> NDArray[np.int64]:
    """Each row's k best items, best first (excluded pairs never; ties by item order)."""
    scores = scores.copy()
    if excluded is not None and excluded.nnz:
        coo = excluded.tocoo()
        scores[coo.row, coo.col] = -np.inf
    k = min(k, scores.shape[1])
    if k == 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    ranked = np.take_along_axis(scores, best, axis=1)
    return np.where(np.isfinite(ranked), best, -1)


def describe(model: Recommender) -> dict[str, Any]:
    params = {name: getattr(model, name) for name in ("by_segment", "neighbours", "min_together", "factors",
                                                      "regularization", "alpha", "iterations") if hasattr(model, name)}
    if isinstance(model, Blend):
        params = {"factors": model.latent.factors, "regularization": model.latent.regularization,
                  "neighbours": model.similar.neighbours,
                  "weights": dict(zip(model.FEATURES, np.round(model.weights, 4).tolist(), strict=True))
                  if model.weights is not None else None}
    return {"family": model.family, "params": params, "items": len(model.items)}
