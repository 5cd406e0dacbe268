"""Training: a point-in-time set, a time-ordered split, a cross-validated search over
scikit-learn pipelines, and held-out metrics side by side with naive baselines and BG/NBD.

Rows of the last cutoff are the test set and nothing else; the search validates on each
training cutoff with the cutoffs before it, never the other way round. BG/NBD is fitted on
training rows only; its expectations are then both a baseline and two features.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectKBest, f_classif, f_regression
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from persona.core import Persona
from persona.errors import ValidationError
from persona.models import bgnbd
from persona.models.dataset import (
    VIEW_FEATURES,
    WINDOW_FEATURES,
    Dataset,
    Row,
    build,
    category_columns,
    check_cutoffs,
    data_end,
    data_start,
    default_cutoffs,
    histories,
    matrix,
)
from persona.models.tasks import Task
from persona.models.threads import one_thread

BGNBD_FEATURES = ("bgnbd_expected", "bgnbd_p_alive", "bgnbd_expected_spend")
SEED = 7
MIN_TRAIN, MIN_TEST = 30, 10
MAIN_METRIC = {"regression": "mse", "classification": "log_loss", "multiclass": "log_loss"}  # the search's
METRIC_NAMES = {"mse": "MSE", "log_loss": "log-loss"}
FAVOURITE = "favourite category so far"


@dataclass
class Trained:
    """A fitted pipeline and everything the registry keeps beside it."""

    task: Task
    pipeline: Pipeline
    features: list[str]  # column names, in order
    categories: list[str]
    bgnbd: dict[str, float]
    mean_order: float  # the training rows' average order value (BG/NBD spend for those who never bought)
    classes: list[str]  # multiclass labels, in the pipeline's order
    metrics: dict[str, float]  # held out
    baselines: dict[str, dict[str, float]]  # name -> metrics, same rows
    lift: dict[str, Any]  # the model against its best baseline, by the task's main metric
    chosen: dict[str, Any]  # family and parameters the search picked
    cutoffs: list[datetime]
    horizon: timedelta
    fingerprint: str
    people: list[str]  # who the training set included (named again in erasure receipts)
    rows: dict[str, int]  # train / test row counts
    reference: dict[str, dict[str, Any]]  # per feature: training median, bins and shares (drift, explanations)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)  # why it should stay a candidate (none: promote it)
    seed: int = SEED  # every random choice of the search and the models (recorded in the registry)


def bgnbd_columns(model: bgnbd.BGNBD, rows: Sequence[Row], horizon_days: float, mean_order: float
                  ) -> dict[str, NDArray[np.float64]]:
    """BG/NBD's expected purchases in the horizon, P(alive), and the expected purchases priced at
    the person's average order (the training rows' average for those who never bought)."""
    x = np.array([r.x for r in rows])
    t_x = np.array([r.t_x for r in rows])
    age = np.array([r.age_days for r in rows])
    expected = model.expected(horizon_days, x, t_x, age)
    aov = np.array([r.aov if r.aov is not None else mean_order for r in rows], dtype=np.float64)
    return {"bgnbd_expected": expected, "bgnbd_p_alive": model.p_alive(x, t_x, age),
            "bgnbd_expected_spend": expected * aov}


def mean_order_value(rows: Sequence[Row]) -> float:
    values = [r.aov for r in rows if r.aov is not None]
    return float(np.mean(values)) if values else 0.0


# regression tasks whose BG/NBD baseline is also a feature: their models learn the correction to it
BASE_COLUMN = {"purchases_next": "bgnbd_expected", "clv": "bgnbd_expected_spend"}


class OnTopOf(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """A regressor of what a baseline column misses: fitted to y − X[:, column], predicting
    X[:, column] + the correction. With nothing to correct it falls back to the baseline, so the
    search starts from BG/NBD rather than from nothing."""

    def __init__(self, estimator: Any = None, column: int = 0) -> None:
        self.estimator = estimator
        self.column = column

    def fit(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> OnTopOf:
        self.estimator_ = clone(self.estimator).fit(x, y - x[:, self.column])
        return self

    def predict(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(x[:, self.column] + self.estimator_.predict(x), dtype=np.float64)


def reference_of(values: NDArray[np.float64]) -> dict[str, Any]:
    """A feature's training distribution, kept for drift and explanations: its median, decile
    edges, and the share of training rows in each bin (the last bin: missing values)."""
    known = values[np.isfinite(values)]
    if not len(known):
        return {"median": None, "edges": [], "shares": shares(values, []).tolist()}
    edges = np.unique(np.quantile(known, np.linspace(0.1, 0.9, 9)))
    return {"median": float(np.median(known)), "edges": edges.tolist(), "shares": shares(values, edges).tolist()}


def shares(values: NDArray[np.float64], edges: NDArray[np.float64] | list[float]) -> NDArray[np.float64]:
    """The share of values in each bin: (-inf, e1], (e1, e2], …, (ek, inf), then missing."""
    known = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(np.asarray(edges), known, side="left"), minlength=len(edges) + 1)
    out = np.append(counts, len(values) - len(known)).astype(np.float64)
    return out / max(len(values), 1)


def candidates(task: Task) -> list[dict[str, Any]]:
    """The search space: linear, tree, forest and boosting families; the linear ones also with
    PCA or univariate feature selection in front."""
    reduce = ["passthrough", PCA(n_components=0.95, random_state=SEED),
              SelectKBest(f_regression if task.kind == "regression" else f_classif, k=12)]
    if task.kind == "regression":
        linear: dict[str, Any] = {"model": [Ridge()], "model__alpha": [0.1, 1.0, 10.0]}
        tree, forest, boost = DecisionTreeRegressor, RandomForestRegressor, HistGradientBoostingRegressor
    else:
        linear = {"model": [LogisticRegression(max_iter=2000)], "model__C": [0.1, 1.0, 10.0]}
        tree, forest, boost = DecisionTreeClassifier, RandomForestClassifier, HistGradientBoostingClassifier
    return [
        {**linear, "reduce": reduce},
        {"model": [tree(random_state=SEED)], "model__max_depth": [4, 8], "model__min_samples_leaf": [20]},
        {"model": [forest(n_estimators=60, min_samples_leaf=10, max_features=0.5, random_state=SEED)],
         "model__max_depth": [10]},
        {"model": [boost(random_state=SEED, max_iter=150)], "model__learning_rate": [0.05, 0.1],
         "model__max_leaf_nodes": [15, 31]},
    ]


def pipeline() -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("reduce", "passthrough"), ("model", Ridge())])


def labelled_log_loss(classes: list[Any]) -> Any:
    """Log-loss over every training class (a scorer): a class missing from a fold's training rows
    gets no probability rather than breaking the fold."""
    def score(estimator: Any, x: NDArray[np.float64], y: NDArray[Any]) -> float:
        proba = estimator.predict_proba(x)
        full = np.full((len(y), len(classes)), 1e-6)
        for j, c in enumerate(estimator.classes_):
            full[:, classes.index(c)] = proba[:, j]
        full /= full.sum(axis=1, keepdims=True)
        return -float(log_loss(y, full, labels=classes))
    return score


def too_little_data(task: Task, problem: str, cutoffs: Sequence[datetime], counts: Sequence[int], what: str,
                    start: datetime, end: datetime) -> ValidationError:
    """A refusal for too little data: the problem, each cutoff tried with how many examples it gave,
    and what to try instead, by the options' real names."""
    tried = ", ".join(f"{_day(c)} ({n:,}{' — the test set' if i == len(cutoffs) - 1 else ''})"
                      for i, (c, n) in enumerate(zip(cutoffs, counts, strict=True)))
    days = int(task.horizon_days)
    fits = (end - start).days // 6  # default cutoffs then leave two horizons of history before the first
    tips = []
    if 0 < fits < days:
        tips.append(f"a shorter horizon ({task.family}_{fits}d)" if task.family != task.name
                    else f"a shorter --horizon (e.g. --horizon {fits}d)")
    first, latest = _midnight(start + timedelta(days=1) - timedelta(microseconds=1)), _midnight(end - task.horizon)
    if first <= latest:
        tips.append(f"other --cutoff instants (at least three, a horizon apart, from {_day(first)} to "
                    f"{_day(latest)})")
    return ValidationError(f"{task.name}: {problem}. Cutoffs tried ({what} at each): {tried}; the data runs from "
                           f"{start.date().isoformat()} to {end.date().isoformat()}."
                           + (f" Try {' or '.join(tips)}." if tips else ""))


def _midnight(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _day(instant: datetime) -> str:
    at = instant.astimezone(UTC)
    return at.date().isoformat() if at == _midnight(at) else at.isoformat(timespec="seconds").replace("+00:00", "Z")


def time_folds(cutoffs: NDArray[np.int64]) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Validate on each training cutoff after the first, training on the cutoffs before it."""
    folds = []
    for c in sorted(set(cutoffs.tolist()))[1:]:
        train, valid = np.flatnonzero(cutoffs < c), np.flatnonzero(cutoffs == c)
        if len(train) and len(valid):
            folds.append((train, valid))
    return folds


@one_thread
def train(persona: Persona, task: Task, cutoffs: Sequence[datetime] | None = None,
          progress: Any = None) -> Trained:
    started = time.perf_counter()
    say = progress or (lambda message: None)
    say("reading every person's history…")
    found = histories(persona)
    end = data_end(found.values())
    if end is None:
        raise ValidationError("no events to learn from")
    chosen_cutoffs = check_cutoffs(cutoffs or default_cutoffs(end, task.horizon), task.horizon, end)
    say(f"building the point-in-time set at {len(chosen_cutoffs)} cutoffs…")
    dataset = Dataset(chosen_cutoffs, task.horizon, build(found, chosen_cutoffs, task.horizon), end)
    rows, y = task.labels(dataset.rows)
    last = len(chosen_cutoffs) - 1
    examples = Counter(r.cutoff for r in rows)

    def too_little(problem: str, counts: Counter[int] = examples, what: str = "examples") -> ValidationError:
        return too_little_data(task, problem, chosen_cutoffs, [counts[i] for i in range(len(chosen_cutoffs))],
                               what, data_start(found.values()) or end, end)

    train_idx = np.array([i for i, r in enumerate(rows) if r.cutoff < last], dtype=np.int64)
    test_idx = np.array([i for i, r in enumerate(rows) if r.cutoff == last], dtype=np.int64)
    if len(train_idx) < MIN_TRAIN or len(test_idx) < MIN_TEST:
        raise too_little(f"too few examples to learn from ({len(train_idx)} to train, {len(test_idx)} to test; "
                         f"need {MIN_TRAIN} and {MIN_TEST})")
    train_rows = [rows[i] for i in train_idx]
    test_rows = [rows[i] for i in test_idx]
    y_train, y_test = y[train_idx], y[test_idx]
    if task.kind != "regression" and len(set(y_train.tolist())) < 2:
        raise ValidationError(f"{task.name}: the training rows all have the same label")

    # BG/NBD on the training rows of people who had bought (its clock starts at a first purchase):
    # a baseline, and features
    customers = [r for r in train_rows if r.aov is not None]
    if len(customers) < MIN_TRAIN:
        raise too_little(f"too few people had bought anything by the training cutoffs ({len(customers)}; need "
                         f"{MIN_TRAIN})", Counter(r.cutoff for r in customers), "people who had bought")
    fitted = bgnbd.fit([r.x for r in customers], [r.t_x for r in customers], [r.age_days for r in customers])
    categories = category_columns(train_rows)
    names = [*VIEW_FEATURES, *WINDOW_FEATURES]
    mean_order = mean_order_value(train_rows)
    x_train = matrix(train_rows, names, categories, bgnbd_columns(fitted, train_rows, task.horizon_days, mean_order))
    x_test = matrix(test_rows, names, categories, bgnbd_columns(fitted, test_rows, task.horizon_days, mean_order))
    features = [*names, *(f"affinity_{c}" for c in categories), *BGNBD_FEATURES]

    notes: list[str] = []
    if task.kind == "multiclass":  # a class the training rows lack cannot be predicted: kept out of the test
        known = set(y_train.tolist())
        keep = np.array([label in known for label in y_test.tolist()])
        if not keep.all():
            notes.append(f"{int((~keep).sum())} test rows had a class never seen in training")
        x_test, y_test, test_rows = x_test[keep], y_test[keep], [r for r, k in zip(test_rows, keep, strict=True) if k]
        if len(test_rows) < MIN_TEST:
            raise too_little(f"too few test examples of classes seen in training ({len(test_rows)}; need {MIN_TEST})")

    say(f"searching {task.kind} pipelines on {len(train_rows):,} training rows…")
    folds = time_folds(np.array([r.cutoff for r in train_rows], dtype=np.int64))
    if not folds:
        raise too_little("the training cutoffs leave nothing to validate on (people are seen at one training "
                         "cutoff only)")
    scoring: Any = "neg_mean_squared_error" if task.kind == "regression" else labelled_log_loss(sorted(set(
        y_train.tolist())))
    grid, estimator = candidates(task), pipeline()
    base = BASE_COLUMN.get(task.family)
    if base is not None:  # learn what BG/NBD misses, on top of its own prediction
        estimator = OnTopOf(estimator, features.index(base))
        grid = [{f"estimator__{k}": v for k, v in space.items()} for space in grid]
    search = GridSearchCV(estimator, grid, cv=folds, scoring=scoring, refit=True, n_jobs=1, error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        search.fit(x_train, y_train)
    if not np.isfinite(search.cv_results_["mean_test_score"]).any():
        raise ValidationError(f"{task.name}: no candidate pipeline could be fitted and validated on these rows")
    best = search.best_estimator_
    steps: Pipeline = best.estimator_ if isinstance(best, OnTopOf) else best
    model = steps.named_steps["model"]
    chosen = {"family": type(model).__name__, "reduce": type(steps.named_steps["reduce"]).__name__
              if steps.named_steps["reduce"] != "passthrough" else None,
              "on_top_of": base, "cv_score": float(search.best_score_), "folds": len(folds),
              "params": {k.removeprefix("estimator__"): v for k, v in search.best_params_.items()
                         if k.removeprefix("estimator__") not in ("model", "reduce")}}

    metrics, baselines, classes = evaluate(task, best, x_test, y_test, test_rows, train_rows, y_train, fitted)
    main = MAIN_METRIC[task.kind]
    against = min(baselines, key=lambda k: baselines[k][main])
    best_baseline = baselines[against][main]
    lift = {"metric": main, "baseline": best_baseline, "against": against, "model": metrics[main],
            "improvement": (best_baseline - metrics[main]) / best_baseline if best_baseline else 0.0}
    reference = {name: reference_of(x_train[:, j]) for j, name in enumerate(features)}
    return Trained(
        task=task, pipeline=best, features=features, categories=categories, bgnbd=fitted.params(),
        mean_order=mean_order,
        classes=classes, metrics=metrics, baselines=baselines, lift=lift, chosen=chosen,
        cutoffs=chosen_cutoffs, horizon=task.horizon, fingerprint=dataset.fingerprint(),
        people=sorted({m for r in rows for m in r.members}), rows={"train": len(train_rows), "test": len(test_rows)},
        reference=reference, seconds=time.perf_counter() - started, notes=notes,
        shortfalls=shortfalls(task, metrics, baselines, lift),
    )


def shortfalls(task: Task, metrics: dict[str, float], baselines: dict[str, dict[str, float]],
               lift: dict[str, Any]) -> list[str]:
    """Why a version should stay a candidate; none when it may be served. It must beat its best
    baseline on the task's main metric, and be no worse on the task's headline metric: R² ≥ 0
    (regression: no worse than the held-out rows' own mean), accuracy ≥ the favourite-category
    baseline's (next category), ROC-AUC above every baseline's (churn: better than chance, and
    ranking better than BG/NBD)."""
    out = []
    main = lift["metric"]
    if not lift["improvement"] > 0:
        out.append(f"{METRIC_NAMES[main]} {lift['model']:.4g} is no better than its best baseline's "
                   f"({lift.get('against', 'best baseline')}: {lift['baseline']:.4g})")
    if task.kind == "regression":
        if not metrics["r2"] >= 0:
            out.append(f"R² {metrics['r2']:.2f} < 0 (worse than predicting the held-out rows' mean)")
    elif task.kind == "classification":
        ranked = {k: b["roc_auc"] for k, b in baselines.items() if np.isfinite(b["roc_auc"])}
        auc = metrics["roc_auc"]
        if not np.isfinite(auc):
            out.append("ROC-AUC cannot be computed: the held-out rows are all of one class")
        elif ranked and auc <= max(ranked.values()):
            name = max(ranked, key=lambda k: ranked[k])
            out.append(f"ROC-AUC {auc:.3f} ≤ {ranked[name]:.3f} of the {name} baseline (ranks no better than it)")
    elif metrics["accuracy"] < baselines[FAVOURITE]["accuracy"]:
        out.append(f"accuracy {metrics['accuracy']:.3f} < {baselines[FAVOURITE]['accuracy']:.3f} of the {FAVOURITE}"
                   " baseline (guessing each person's favourite category does better)")
    return out


def evaluate(task: Task, model: Pipeline, x_test: NDArray[np.float64], y_test: NDArray[Any], test_rows: list[Row],
             train_rows: list[Row], y_train: NDArray[Any], fitted: bgnbd.BGNBD
             ) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str]]:
    """Held-out metrics of the model and of each baseline, on the same test rows."""
    h = task.horizon_days
    x = np.array([r.x for r in test_rows])
    t_x = np.array([r.t_x for r in test_rows])
    age = np.array([r.age_days for r in test_rows])
    if task.kind == "regression":
        predicted = model.predict(x_test)
        if task.family in ("purchases_next", "clv"):
            predicted = np.clip(predicted, 0, None)
        baselines: dict[str, NDArray[np.float64]] = {
            "training mean": np.full(len(y_test), float(np.mean(y_train)))}
        if task.family == "purchases_next":
            baselines["last window repeated"] = np.array([r.features["orders_last_window"] for r in test_rows])
            baselines["BG/NBD"] = fitted.expected(h, x, t_x, age)
        elif task.family == "clv":
            baselines["last window repeated"] = np.array([r.features["spend_last_window"] for r in test_rows])
            baselines["BG/NBD × order value"] = bgnbd_columns(fitted, test_rows, h, mean_order_value(train_rows))[
                "bgnbd_expected_spend"]
        else:  # days to the next purchase
            baselines["training median"] = np.full(len(y_test), float(np.median(y_train)))
        return _regression(y_test, predicted), {k: _regression(y_test, v) for k, v in baselines.items()}, []
    if task.kind == "classification":
        proba = model.predict_proba(x_test)[:, list(model.classes_).index(1.0)]
        rate = float(np.mean(y_train))
        return _classification(y_test, proba), {
            "population rate": _classification(y_test, np.full(len(y_test), rate)),
            "BG/NBD": _classification(y_test, fitted.p_none(h, x, t_x, age)),
        }, []
    classes = [str(c) for c in model.classes_]
    proba = model.predict_proba(x_test)
    prior = Counter(y_train.tolist())
    prior_row = np.array([prior[c] / len(y_train) for c in classes])
    favourite = []
    for r in test_rows:  # the category they liked most so far, else the most common one
        liked = [c for c in classes if r.categories.get(c)]
        top = max(liked, key=lambda c: r.categories[c]) if liked else classes[int(np.argmax(prior_row))]
        row = np.full(len(classes), 0.05 / max(len(classes) - 1, 1))
        row[classes.index(top)] = 0.95
        favourite.append(row)
    return _multiclass(y_test, proba, classes), {
        "population frequencies": _multiclass(y_test, np.tile(prior_row, (len(y_test), 1)), classes),
        FAVOURITE: _multiclass(y_test, np.array(favourite), classes),
    }, classes


def _regression(y: NDArray[np.float64], predicted: NDArray[np.float64]) -> dict[str, float]:
    return {"mse": float(mean_squared_error(y, predicted)), "mae": float(mean_absolute_error(y, predicted)),
            "r2": float(r2_score(y, predicted)), "rows": float(len(y))}


def _classification(y: NDArray[np.float64], proba: NDArray[np.float64]) -> dict[str, float]:
    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    auc = float(roc_auc_score(y, clipped)) if len(set(y.tolist())) > 1 else float("nan")
    return {"roc_auc": auc, "log_loss": float(log_loss(y, clipped, labels=[0.0, 1.0])),
            "brier": float(brier_score_loss(y, clipped)), "ece": expected_calibration_error(y, clipped),
            "rows": float(len(y))}


def expected_calibration_error(y: NDArray[np.float64], proba: NDArray[np.float64], bins: int = 10) -> float:
    """How far predicted probabilities are from what happened: the rows grouped in `bins`
    equal-width bins of probability, the gap between each bin's mean probability and its share
    of positives, weighted by the bin's rows (0: perfectly calibrated)."""
    if len(y) == 0:
        return float("nan")
    which = np.minimum((proba * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += float(inside.sum()) * abs(float(proba[inside].mean()) - float(y[inside].mean()))
    return gap / len(y)


def _multiclass(y: NDArray[Any], proba: NDArray[np.float64], classes: list[str]) -> dict[str, float]:
    clipped = np.clip(proba, 1e-6, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    predicted = [classes[i] for i in np.argmax(clipped, axis=1)]
    return {"log_loss": float(log_loss(y, clipped, labels=classes)),
            "accuracy": float(accuracy_score(y, predicted)), "rows": float(len(y))}
