"""Contributions of a gradient-boosted model, re-scoring only the trees that split on the feature
changed (persona.models.ensembles), against re-scoring the whole served model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from persona.models.ensembles import Ensemble
from persona.models.scoring import Scorer, _effects
from persona.models.train import OnTopOf, Served

FEATURES = 12


def _pipeline(model: Any, reduce: Any = "passthrough") -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("reduce", reduce), ("model", model)])


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, FEATURES))
    x[:, 4] = rng.integers(0, 3, size=1500)  # a count: many rows at its median already
    x[rng.random(1500) < 0.1, 6] = np.nan  # missing: imputed
    signal = 2 * x[:, 0] - x[:, 1] + x[:, 4] + np.nan_to_num(x[:, 6]) * x[:, 2]
    return x, signal + rng.normal(scale=0.3, size=1500)


def _served(kind: str) -> tuple[Any, str, str]:
    """A fitted model shaped as training serves it, its kind and family."""
    x, y = _data(1)
    if kind == "regression":  # on top of a baseline column, blended toward it
        fitted = OnTopOf(_pipeline(HistGradientBoostingRegressor(max_iter=40, random_state=0)), 3).fit(x, y)
        return Served(fitted, 3, 0.8), "regression", "purchases_next"
    if kind == "classification":  # blended and recalibrated
        fitted = _pipeline(HistGradientBoostingClassifier(max_iter=40, random_state=0)).fit(x, (y > 0).astype(float))
        return Served(fitted, 5, 0.9, [1.3, -0.2]), "classification", "churn"
    if kind == "missing":  # no imputer: the trees see missing values, and send them down each split's side for them
        fitted = Pipeline([("scale", StandardScaler()),
                           ("model", HistGradientBoostingRegressor(max_iter=40, random_state=0))]).fit(x, y)
        return fitted, "regression", "days_to_next_purchase"
    labels = np.digitize(y, np.quantile(y, np.linspace(0, 1, 9)[1:-1])).astype(str)  # eight, as next_category
    fitted = _pipeline(HistGradientBoostingClassifier(max_iter=30, random_state=0)).fit(x, labels)
    return fitted, "multiclass", "next_category"


@pytest.mark.parametrize("kind", ["regression", "classification", "multiclass", "missing"])
def test_effects_from_the_trees_that_split_are_those_of_scoring_every_tree(kind: str) -> None:
    model, task_kind, family = _served(kind)
    x, _ = _data(2)
    meta = {"features": [f"f{j}" for j in range(FEATURES)],
            "reference": {f"f{j}": {"median": float(np.nanmedian(x[:, j]))} for j in range(FEATURES)}}
    columns = list(range(FEATURES))
    score = Scorer(model, task_kind, family)
    assert Ensemble.of(model) is not None
    trees = Ensemble.of(model)
    assert trees is not None and any(len(used) < FEATURES for _, _, used in trees.trees)  # some trees skip columns
    fast_scored, fast = _effects(score, x, columns, meta)
    full_scored, full = _effects(lambda rows: score(rows), x, columns, meta)  # a plain function: every tree
    assert np.array_equal(fast_scored[0], full_scored[0])  # the unchanged scores: the same to the bit
    assert fast_scored[1] == full_scored[1]
    if full_scored[2] is not None:
        assert np.array_equal(fast_scored[2], full_scored[2])
    assert np.abs(full).max() > 0.01 and np.allclose(fast, full, rtol=0, atol=1e-12)
    assert np.array_equal(fast == 0, full == 0)  # rows at the median already: no effect, either way
    # the served model itself is left as it was: scored again, it scores every tree
    boosted = trees.boosted
    assert "_raw_predict" not in vars(boosted)
    assert np.array_equal(score(x)[0], full_scored[0])


def test_a_raw_score_is_only_given_for_as_many_rows_as_it_holds() -> None:
    model, kind, family = _served("regression")
    trees = Ensemble.of(model)
    assert trees is not None
    x, _ = _data(3)
    answering = trees.answering(trees.split(x[:10], [0]).raw)
    assert np.allclose(Scorer(answering, kind, family)(x[:10])[0], Scorer(model, kind, family)(x[:10])[0])
    with pytest.raises(ValueError, match="10 rows, asked for 11"):
        Scorer(answering, kind, family)(x[:11])


def test_models_whose_columns_move_or_that_are_not_boosted_are_scored_in_full() -> None:
    x, y = _data(4)
    assert Ensemble.of(_pipeline(RandomForestRegressor(n_estimators=5, random_state=0)).fit(x, y)) is None
    assert Ensemble.of(_pipeline(Ridge()).fit(x, y)) is None
    reduced = _pipeline(HistGradientBoostingRegressor(max_iter=5), PCA(n_components=4)).fit(x, y)
    assert Ensemble.of(reduced) is None  # its trees see components, not the features
    assert Ensemble.of(Served(OnTopOf(reduced, 3).fit(x, y), 3, 0.5)) is None


def test_a_median_exactly_at_a_threshold_goes_left_as_the_trees_send_it() -> None:
    """A value at a split's threshold goes left, one above it right: a row just above it moves."""
    x, y = _data(5)
    model = Pipeline([("model", HistGradientBoostingRegressor(max_iter=20, random_state=0))]).fit(x, y)
    trees = Ensemble.of(model)
    assert trees is not None
    threshold = float(next(t.nodes["num_threshold"][(t.nodes["feature_idx"] == 0) & (t.nodes["is_leaf"] == 0)][0]
                            for _, t, used in trees.trees if 0 in used))
    names = [f"f{j}" for j in range(FEATURES)]
    meta = {"features": names, "reference": {n: {"median": threshold if n == "f0" else None} for n in names}}
    near = x[:200].copy()
    near[:, 0] = np.nextafter(threshold, np.inf)  # just above it, in every tree that splits there
    score = Scorer(model, "regression", "days_to_next_purchase")
    _, fast = _effects(score, near, [0], meta)
    _, full = _effects(lambda rows: score(rows), near, [0], meta)
    assert np.abs(full).max() > 0 and np.allclose(fast, full, rtol=0, atol=1e-12)
