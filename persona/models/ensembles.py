"""Contributions of a gradient-boosted model without scoring every tree again for each feature.

A contribution (persona.models.scoring) is what a prediction loses when one feature is set to its
training median. Scored as it is, that is a pass over every tree of the ensemble for each feature
explained: 1,080 trees for `next_category` at 100,000 people (135 rounds of 8 classes; its most
used feature is split on by 44% of them). But a tree that never splits on a feature reaches the
same leaf whatever the feature's value. So the ensemble's raw score (before its link: the value,
the log-odds, the class scores) is summed tree by tree once, keeping beside it each explained
feature's share: the sum of the trees that split on it. With the feature changed, only those trees
are scored again, and the raw score is the total less the old share plus the new.

The rest of the served model — the imputer and scaler in front of the ensemble, its link, the
BG/NBD column it sits on top of, a blend, a calibration — then runs as it is, on a shallow copy
whose ensemble answers with that raw score (the way scikit-learn's own early stopping reuses raw
scores). The unchanged raw score is the ensemble's to the bit (the same sums in the same order); a
changed one differs from scoring every tree by the rounding of one subtraction, ~1e-16 of it
relative to its size, and not at all where the change moved no tree to another leaf (the effect is
then 0, as it is scored in full).

Only a HistGradientBoosting model whose pipeline keeps every column where it is (an imputer that
drops none, a scaler, nothing reducing them) is split; anything else is scored in full.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from persona.models.train import OnTopOf, Served


@dataclass(frozen=True)
class Split:
    """A batch's raw scores, (rows, trees per round) each: the total, and each explained column's
    share (the sum of the trees that split on it)."""

    raw: NDArray[np.float64]
    shares: dict[int, NDArray[np.float64]]
    seen: NDArray[np.float64]  # the rows as the ensemble saw them


class Ensemble:
    """A served model's gradient-boosted ensemble, scored tree by tree."""

    def __init__(self, served: Any, pipeline: Pipeline, boosted: Any) -> None:
        self.served, self.pipeline, self.boosted = served, pipeline, boosted
        # each tree: its class (its place in the round), the tree, and the columns it splits on
        self.trees = [(k, tree, frozenset(tree.nodes["feature_idx"][tree.nodes["is_leaf"] == 0].tolist()))
                      for round_ in boosted._predictors for k, tree in enumerate(round_)]
        self.baseline = boosted._baseline_prediction
        self.bitsets, self.f_idx_map = boosted._bin_mapper.make_known_categories_bitsets()

    @classmethod
    def of(cls, served: Any) -> Ensemble | None:
        """The ensemble inside a served model (Served, OnTopOf, then a Pipeline), or None when there
        is none or the columns it sees are not the model's own, in order."""
        inner = served
        while isinstance(inner, Served | OnTopOf):
            inner = inner.estimator if isinstance(inner, Served) else getattr(inner, "estimator_", None)
        if not isinstance(inner, Pipeline):
            return None
        boosted = inner.steps[-1][1]
        keeps = all(step is None or step == "passthrough" or isinstance(step, SimpleImputer | StandardScaler)
                    for _, step in inner.steps[:-1])
        if (not isinstance(boosted, BaseHistGradientBoosting) or not keeps
                or getattr(boosted, "_preprocessor", None) is not None  # categorical features: remapped
                or getattr(inner, "n_features_in_", None) != getattr(boosted, "n_features_in_", None)):
            return None
        try:
            return cls(served, inner, boosted)
        except (AttributeError, KeyError, ValueError):  # another release's internals: score in full
            return None

    def _seen(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """The rows as the ensemble sees them (imputed and scaled)."""
        seen = x
        for _, step in self.pipeline.steps[:-1]:
            if step is not None and step != "passthrough":
                seen = step.transform(seen)
        return np.ascontiguousarray(seen, dtype=np.float64)

    def _tree(self, tree: Any, seen: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = tree.predict(seen, self.bitsets, self.f_idx_map, 1)
        return out

    def split(self, x: NDArray[np.float64], columns: Sequence[int]) -> Split:
        """Every tree scored once on these rows, summed as the ensemble sums them."""
        seen = self._seen(x)
        raw = np.zeros((len(x), self.boosted.n_trees_per_iteration_), dtype=self.baseline.dtype, order="F")
        raw += self.baseline
        wanted = frozenset(columns)
        shares = {j: np.zeros_like(raw) for j in columns}
        for k, tree, splits_on in self.trees:
            out = self._tree(tree, seen)
            raw[:, k] += out
            for j in splits_on & wanted:
                shares[j][:, k] += out
        return Split(raw, shares, seen)

    def changed(self, split: Split, rows: NDArray[np.intp], x: NDArray[np.float64], column: int) -> Any:
        """The served model answering for these rows of the split batch, with `column` changed to
        x's (x: those rows, changed, all to one value): only the trees that split on the column
        scored again. The imputer and scaler work column by column, so the rows as the ensemble
        sees them are those it saw with that one column's value changed as they change it.
        (Scoring again only the rows with a threshold of the tree between their old value and the
        new, before and after, was slower: copying those rows cost more than the trees.)"""
        seen = split.seen[rows]
        seen[:, column] = self._seen(x[:1])[0, column]
        moved = np.zeros((len(rows), self.boosted.n_trees_per_iteration_))
        for k, tree, splits_on in self.trees:
            if column in splits_on:
                moved[:, k] += self._tree(tree, seen)
        moved -= split.shares[column][rows]
        raw = split.raw[rows]  # a row whose trees all reached the same leaves keeps its raw score to the bit
        return self.answering(np.where(moved == 0, raw, raw + moved))

    def answering(self, raw: NDArray[np.float64]) -> Any:
        """A shallow copy of the served model whose ensemble gives these raw scores (for as many
        rows, in order) instead of scoring its trees. The model itself is left as it is."""
        boosted = copy.copy(self.boosted)
        # laid out as the ensemble lays its own out (column by column): a softmax sums each row of 8
        # classes or more in another order otherwise, and a probability moves by a last bit
        raw = np.asfortranarray(raw)

        def raw_predict(x: Any, n_threads: int | None = None) -> NDArray[np.float64]:
            if len(x) != len(raw):
                raise ValueError(f"raw scores for {len(raw)} rows, asked for {len(x)}")
            return raw

        boosted._raw_predict = raw_predict
        return _with(self.served, self.pipeline, boosted)


def _with(model: Any, pipeline: Pipeline, boosted: Any) -> Any:
    """A shallow copy of `model` down to `pipeline`, whose last step is `boosted`."""
    if model is pipeline:  # the steps in front pass the rows through: the ensemble answers without them
        out = copy.copy(pipeline)
        out.steps = [*((name, "passthrough") for name, _ in pipeline.steps[:-1]), (pipeline.steps[-1][0], boosted)]
        return out
    out = copy.copy(model)
    if isinstance(model, Served):
        out.estimator = _with(model.estimator, pipeline, boosted)
    else:
        out.estimator_ = _with(model.estimator_, pipeline, boosted)
    return out
