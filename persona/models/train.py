"""Training: a point-in-time set, a time-ordered split, a cross-validated search over
scikit-learn pipelines, and held-out metrics side by side with naive baselines and BG/NBD.

Rows of the last cutoff are the test set and nothing else; the search validates on each
training cutoff with the cutoffs before it, never the other way round. BG/NBD is fitted on
training rows only; its expectations are then both a baseline and two features.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
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
    get_scorer,
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
from persona.engine import Local, active
from persona.errors import ValidationError
from persona.models import bgnbd, gammagamma
from persona.models.columns import Columns
from persona.models.dataset import (
    PACE_FEATURES,
    VIEW_FEATURES,
    WINDOW_FEATURES,
    Dataset,
    History,
    Row,
    build,
    category_columns,
    check_cutoffs,
    closed_before,
    data_end,
    data_start,
    default_cutoffs,
    fork_workers,
    histories,
    histories_on,
    in_forks,
    matrix,
    rows_then,
)
from persona.models.tasks import Task
from persona.models.threads import batch, one_thread, settle

BGNBD_FEATURES = ("bgnbd_expected", "bgnbd_p_alive", "bgnbd_expected_spend", "bgnbd_p_none")
SEED = 7
MIN_TRAIN, MIN_TEST = 30, 10
BACKTEST_FOLDS = 3  # the latest cutoffs a model is validated (and shrunk toward BG/NBD) on
FIT_SAMPLE = 10_000  # the customers a BG/NBD fit at an instant reads at most (a seeded sample)
SEARCH_ROWS = 20_000  # the training rows the search and the backtest learn from at most (a seeded sample)
FIT_ROWS = 100_000  # the rows the evaluation fit and the serving refit learn from at most
PARALLEL_SEARCH_ROWS = 5_000
WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # the model's share in a blend with BG/NBD
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
    gamma_gamma: dict[str, float] | None = None  # the spend model at the end of the data (None: too few orders)


@dataclass(frozen=True)
class Classic:
    """The classic customer-base models fitted at one instant: BG/NBD for how many orders, and
    Gamma-Gamma for what each is worth (None: too few orders with a value to fit it, or a version
    trained before it was: each person's own average order value then)."""

    bgnbd: bgnbd.BGNBD
    spend: gammagamma.GammaGamma | None = None

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Classic:
        """The fits a version recorded at the end of its training data."""
        spend = meta.get("gamma_gamma")
        return cls(bgnbd.BGNBD(**meta["bgnbd"]), gammagamma.GammaGamma(**spend) if spend else None)


def bgnbd_columns(model: Classic, rows: Sequence[Row], horizon_days: float, mean_order: float
                  ) -> dict[str, NDArray[np.float64]]:
    """BG/NBD's expected purchases in the horizon, P(alive), the expected purchases priced by
    Gamma-Gamma's expected order value (without a Gamma-Gamma fit: the person's average order, the
    training rows' average for those who never bought), and P(no purchase in the horizon)."""
    x = np.array([r.x for r in rows])
    t_x = np.array([r.t_x for r in rows])
    age = np.array([r.age_days for r in rows])
    fitted = model.bgnbd
    expected = fitted.expected(horizon_days, x, t_x, age)
    if model.spend is not None:
        bought = np.array([r.aov is not None for r in rows], dtype=bool)
        aov = model.spend.expected(np.where(bought, x + 1.0, 0.0),
                                   np.array([r.aov if r.aov is not None else np.nan for r in rows], dtype=np.float64))
    else:
        aov = np.array([r.aov if r.aov is not None else mean_order for r in rows], dtype=np.float64)
    return {"bgnbd_expected": expected, "bgnbd_p_alive": fitted.p_alive(x, t_x, age),
            "bgnbd_expected_spend": expected * aov, "bgnbd_p_none": fitted.p_none(horizon_days, x, t_x, age)}


def fit_at(rows: Sequence[Row], seed: int = 0) -> Classic | None:
    """BG/NBD and Gamma-Gamma fitted on everyone known at one instant (rows of one cutoff, or of the
    scoring instant): they need no labels, so they may use all the data up to then (issue 21, item
    3). None when too few people had bought. Above FIT_SAMPLE customers, a seeded sample of them."""
    customers = [r for r in rows if r.aov is not None]
    if len(customers) < MIN_TRAIN:
        return None
    if len(customers) > FIT_SAMPLE:
        keep = np.sort(np.random.default_rng(seed).choice(len(customers), FIT_SAMPLE, replace=False))
        customers = [customers[i] for i in keep]
    purchases = bgnbd.fit([r.x for r in customers], [r.t_x for r in customers], [r.age_days for r in customers])
    valued = [r for r in customers if r.aov is not None and r.aov > 0]
    spend = None
    if len(valued) >= MIN_TRAIN:
        spend = gammagamma.fit([r.x + 1.0 for r in valued], [float(r.aov or 0.0) for r in valued])
    return Classic(purchases, spend)


def fits_at(instants: Sequence[Sequence[Row]], seeds: Sequence[int]) -> list[Classic | None]:
    """fit_at at each of several instants (the rows of each), from many rows on in a forked process
    per core (each sees the rows as they are; only the fitted parameters come back)."""
    workers = min(fork_workers(sum(len(rows) for rows in instants)), len(instants))
    return list(in_forks(lambda i: fit_at(instants[i], seeds[i]), len(instants), workers))


def columns_by_cutoff(fits: dict[int, Classic], rows: Sequence[Row], horizon_days: float, mean_order: float
                      ) -> dict[str, NDArray[np.float64]]:
    """The BG/NBD columns of rows from several cutoffs, each from the fit at its own cutoff."""
    out = {name: np.zeros(len(rows)) for name in BGNBD_FEATURES}
    at = np.array([r.cutoff for r in rows], dtype=np.int64)
    for cutoff, model in fits.items():
        where = np.flatnonzero(at == cutoff)
        if len(where):
            for name, values in bgnbd_columns(model, [rows[int(i)] for i in where], horizon_days, mean_order).items():
                out[name][where] = values
    return out


def mean_order_value(rows: Sequence[Row]) -> float:
    values = [r.aov for r in rows if r.aov is not None]
    return float(np.mean(values)) if values else 0.0


# regression tasks whose BG/NBD baseline is also a feature: their models learn the correction to it
ON_TOP_OF = {"purchases_next": "bgnbd_expected", "clv": "bgnbd_expected_spend"}
# tasks with a BG/NBD prediction of their own: what a served model is shrunk toward
BASE_COLUMN = {**ON_TOP_OF, "churn": "bgnbd_p_none"}


class OnTopOf(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """A regressor of what a baseline column misses: fitted to y − X[:, column], predicting
    X[:, column] + the correction. With nothing to correct it falls back to the baseline, so the
    search starts from BG/NBD rather than from nothing."""

    def __init__(self, estimator: Any = None, column: int = 0) -> None:
        self.estimator = estimator
        self.column = column

    def fit(self, x: NDArray[np.float64], y: NDArray[np.float64],
            sample_weight: NDArray[np.float64] | None = None) -> OnTopOf:
        self.estimator_ = fit_with(self.estimator, x, y - x[:, self.column], sample_weight)
        return self

    def predict(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(x[:, self.column] + self.estimator_.predict(x), dtype=np.float64)


def fit_with(unfitted: Any, x: NDArray[np.float64], y: NDArray[Any], weights: NDArray[np.float64] | None) -> Any:
    """A fresh copy of a pipeline (or of OnTopOf around one) fitted, each row weighted if `weights`."""
    model = clone(unfitted)
    if weights is None:
        return model.fit(x, y)
    if isinstance(model, OnTopOf):
        return model.fit(x, y, sample_weight=weights)
    return model.fit(x, y, model__sample_weight=weights)


HALF_LIFE_DAYS = 182.0  # recency weights: a row a half-life older than the latest counts half


def recency_weights(cutoffs: Sequence[datetime], cutoff_of_row: NDArray[np.int64]) -> NDArray[np.float64]:
    """Each row's weight by how long before the latest of these rows' cutoffs it was taken, halving
    every HALF_LIFE_DAYS, scaled to a mean of 1 (so that a penalty means the same with or without)."""
    latest = max(cutoffs[int(c)] for c in set(cutoff_of_row.tolist()))
    ages = np.array([(latest - c).total_seconds() / 86_400 for c in cutoffs])[cutoff_of_row]
    weights = 0.5 ** (ages / HALF_LIFE_DAYS)
    return np.asarray(weights / weights.mean(), dtype=np.float64)


class Served(BaseEstimator):  # type: ignore[misc]
    """What a version serves: a fitted model shrunk toward the BG/NBD column of the same task,
    weight × model + (1 − weight) × BG/NBD (weight 1: the model alone; 0: BG/NBD itself), the
    weight chosen on the backtest; for a classifier, then optionally recalibrated (Platt: the
    probability's logit scaled and shifted) where that lowered the backtest's log-loss."""

    def __init__(self, estimator: Any = None, column: int = -1, weight: float = 1.0,
                 calibration: list[float] | None = None) -> None:
        self.estimator = estimator
        self.column = column
        self.weight = weight
        self.calibration = calibration

    @property
    def classes_(self) -> Any:
        return self.estimator.classes_

    def predict(self, x: NDArray[np.float64]) -> NDArray[Any]:
        if hasattr(self.estimator, "predict_proba"):
            return np.asarray(np.where(self.predict_proba(x)[:, 1] >= 0.5, self.classes_[1], self.classes_[0]))
        return blend(np.asarray(self.estimator.predict(x), dtype=np.float64), self._base(x), self.weight)

    def predict_proba(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        positive = [float(c) for c in self.classes_].index(1.0)
        mixed = calibrate(blend(self.estimator.predict_proba(x)[:, positive], self._base(x), self.weight),
                          self.calibration)
        out = np.empty((len(x), 2))
        out[:, positive], out[:, 1 - positive] = mixed, 1.0 - mixed
        return out

    def _base(self, x: NDArray[np.float64]) -> NDArray[np.float64] | None:
        return x[:, self.column] if self.column >= 0 else None


def blend(model: NDArray[np.float64], base: NDArray[np.float64] | None, weight: float) -> NDArray[np.float64]:
    if base is None or weight >= 1.0:
        return model
    return np.asarray(weight * model + (1.0 - weight) * np.nan_to_num(base, nan=0.0), dtype=np.float64)


def calibrate(proba: NDArray[np.float64], calibration: list[float] | None) -> NDArray[np.float64]:
    if not calibration:
        return proba
    scale, shift = calibration
    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    return np.asarray(1.0 / (1.0 + np.exp(-(scale * np.log(clipped / (1 - clipped)) + shift))), dtype=np.float64)


def platt(proba: NDArray[np.float64], y: NDArray[np.float64]) -> list[float]:
    """Scale and shift of the logit that best fit these outcomes (logistic regression on it)."""
    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    fitted = LogisticRegression(C=1e4, max_iter=1000).fit(np.log(clipped / (1 - clipped))[:, None], y)
    return [float(fitted.coef_[0, 0]), float(fitted.intercept_[0])]


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
        {"model": [forest(n_estimators=60, min_samples_leaf=10, max_features=0.5, max_samples=0.3,
                          random_state=SEED)],  # each tree on a third of the rows: three times faster
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
    fits = ((end - start).days - 31) // 3  # default cutoffs then leave a fold: a month, then three horizons
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


def backtest_folds(cutoffs: Sequence[datetime], horizon: timedelta, learn: Sequence[int],
                   count: int = BACKTEST_FOLDS) -> list[tuple[list[int], int]]:
    """The latest `count` cutoffs a model can be validated on, each with the cutoffs whose label
    windows had closed by then (a model learns only from what was known at the cutoff it is
    validated on: a rolling origin, as it will be served)."""
    folds = [(closed_before(cutoffs, horizon, v), v) for v in learn]
    return [(before, v) for before, v in folds if before][-count:]


def time_folds(cutoff_of_row: NDArray[np.int64], folds: Sequence[tuple[list[int], int]]
               ) -> list[tuple[NDArray[np.int64], NDArray[np.int64], int]]:
    """The backtest's folds as row indices (train, validate) and the cutoff validated on."""
    out = []
    for before, v in folds:
        train, valid = np.flatnonzero(np.isin(cutoff_of_row, before)), np.flatnonzero(cutoff_of_row == v)
        if len(train) and len(valid):
            out.append((train, valid, v))
    return out


def search_jobs(rows: int) -> int:
    """Processes the search runs its candidates in: one per core (at most two) on enough rows to
    pay for starting them. Each candidate's fit and score are the same either way."""
    return max(1, min(2, os.cpu_count() or 1)) if rows >= PARALLEL_SEARCH_ROWS else 1


@contextmanager
def _no_workers_left() -> Iterator[None]:
    """joblib keeps its worker processes, and threads to manage them, for minutes after a parallel
    search: they are stopped as soon as it ends, so that nothing of the search outlives it (an
    ingest in the same process forks only when it has no other thread)."""
    try:
        yield
    finally:
        from joblib.externals.loky import get_reusable_executor  # type: ignore[import-untyped]

        get_reusable_executor().shutdown(wait=True)


def sample(n: int, limit: int, seed: int = SEED) -> NDArray[np.int64]:
    """All of range(n), or a seeded sample of `limit` of them, in order."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False)).astype(np.int64)


def _predicted(task: Task, model: Any, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """A regressor's values (counts and amounts clipped at 0) or a classifier's P(class 1)."""
    if task.kind == "classification":
        return np.asarray(model.predict_proba(x)[:, [float(c) for c in model.classes_].index(1.0)], dtype=np.float64)
    values = np.asarray(model.predict(x), dtype=np.float64)
    return np.clip(values, 0, None) if task.family in ("purchases_next", "clv") else values


def _loss(task: Task, y: NDArray[np.float64], predicted: NDArray[np.float64]) -> float:
    return float(np.mean(_row_losses(task, y, predicted)))


def _row_losses(task: Task, y: NDArray[np.float64], predicted: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each row's squared error, or its log-loss (classification)."""
    if task.kind == "classification":
        p = np.clip(predicted, 1e-6, 1 - 1e-6)
        return np.asarray(-(y * np.log(p) + (1 - y) * np.log(1 - p)), dtype=np.float64)
    return np.asarray((predicted - y) ** 2, dtype=np.float64)


CONFIDENCE = 2.0  # standard errors: a blend must beat BG/NBD by more than chance at every backtest cutoff


def shrink(task: Task, backtest: list[tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]]
           ) -> tuple[float, list[float] | None]:
    """The model's weight in its blend with BG/NBD, and a classifier's calibration, from the
    backtest's (model, BG/NBD, outcome) at each fold. A weight is judged at its worst fold, by how
    much it could lose to BG/NBD there: the mean of its rows' losses less BG/NBD's, plus two
    standard errors of that mean, over BG/NBD's loss. The best such worst case wins (the smaller
    weight on a tie), so a model that beats BG/NBD at some cutoffs and loses at others is shrunk
    until it loses at none, a gain within chance is not taken, and weight 0 — BG/NBD itself, whose
    worst case is 0 — is served unless some blend beats it clearly everywhere. Platt scaling is
    kept only if, fitted on the other folds, it lowers each held-out fold's loss on average."""
    y = np.concatenate([t for _, _, t in backtest])
    bases = [_row_losses(task, t, b) for _, b, t in backtest]

    def worst(weight: float) -> float:
        out = -np.inf
        for (m, b, t), base in zip(backtest, bases, strict=True):
            d = _row_losses(task, t, blend(m, b, weight)) - base
            bound = float(d.mean()) + CONFIDENCE * float(d.std()) / np.sqrt(max(len(d), 1))
            out = max(out, bound / max(float(base.mean()), 1e-12))
        return out

    scores = [0.0 if w == 0.0 else worst(float(w)) for w in WEIGHTS]
    weight = float(WEIGHTS[int(np.argmin(np.round(scores, 9)))])
    if task.kind != "classification" or len(backtest) < 2:
        return weight, None
    mixed = [blend(m, b, weight) for m, b, _ in backtest]
    plain, scaled = [], []
    for k, (_, _, y_k) in enumerate(backtest):
        others = [i for i in range(len(backtest)) if i != k]
        y_rest = np.concatenate([backtest[i][2] for i in others])
        if len(set(y_rest.tolist())) < 2:
            return weight, None
        fitted = platt(np.concatenate([mixed[i] for i in others]), y_rest)
        plain.append(_loss(task, y_k, mixed[k]))
        scaled.append(_loss(task, y_k, calibrate(mixed[k], fitted)))
    if float(np.mean(scaled)) < float(np.mean(plain)):
        return weight, platt(np.concatenate(mixed), y)
    return weight, None


@dataclass
class Shared:
    """What every task of one horizon and set of cutoffs learns from, made once (`train_many`):
    the point-in-time rows, BG/NBD at each cutoff and at the end of the data, and the feature
    matrix of every row."""

    dataset: Dataset
    index: dict[int, int]  # id(row) -> its line in x
    fits: dict[int, Classic]
    serving_fit: Classic | None
    categories: list[str]
    mean_order: float
    features: list[str]
    x: NDArray[np.float64]


@dataclass
class Histories:
    """Every person's history, read once for several tasks, and the Shared parts made from it."""

    found: dict[str, History]
    end: datetime | None
    start: datetime | None
    shared: dict[tuple[float, tuple[datetime, ...]], Shared] = field(default_factory=dict)
    # scoring: (instant, window, whole) -> everyone's rows then, and BG/NBD fitted on them
    instants: dict[tuple[datetime, int, bool], tuple[list[Row], Classic | None]] = field(default_factory=dict)
    # ... and their feature matrices, by instant and columns (before each version's BG/NBD columns are set in them)
    matrices: dict[tuple[Any, ...], NDArray[np.float64]] = field(default_factory=dict)

    @classmethod
    def read(cls, persona: Persona) -> Histories:
        """Every history: from one pass over the log here, or a part of the people at a time on
        the engine the batch runs on (persona.engine); either way in the order of the log."""
        engine = active()
        found = histories(persona) if engine is None or isinstance(engine, Local) else histories_on(persona, engine)
        settle()  # kept until the batch ends
        return cls(found, data_end(found.values()), data_start(found.values()))

    @cached_property
    def columns(self) -> Columns:
        """Everyone's facts laid out as columns, once for every set and instant made from them."""
        laid_out = Columns(self.found, list(self.found))
        settle()
        return laid_out


def _shared(read: Histories, dataset: Dataset, learn: list[int], task: Task, say: Any) -> Shared:
    """BG/NBD at each cutoff on everyone known then (its clock starts at a first purchase; no labels
    needed) and at the end of the data for serving — a baseline, and features — and the matrix."""
    say("fitting BG/NBD at each cutoff…")
    known = [r for r in dataset.rows if r.cutoff in learn]
    at = dict(enumerate(fits_at([[r for r in dataset.rows if r.cutoff == i] for i in range(len(dataset.cutoffs))],
                                [SEED + i for i in range(len(dataset.cutoffs))])))
    fits: dict[int, Classic] = {i: f for i, f in at.items() if f is not None}
    if len(fits) < len(at):  # too few customers at some cutoff: the training rows' fit there
        pooled = fit_at(known, SEED)
        assert pooled is not None  # the caller checked there are enough
        fits = {i: f or pooled for i, f in at.items()}
    window = int(task.horizon.total_seconds() * 1_000_000)
    assert read.end is not None
    serving_fit = fit_at(rows_then(read.found, read.end, window, columns=read.columns), SEED)
    categories = category_columns(known)
    mean_order = mean_order_value(known)
    features = [*VIEW_FEATURES, *WINDOW_FEATURES, *PACE_FEATURES, *(f"affinity_{c}" for c in categories),
                *BGNBD_FEATURES]
    x = matrix(dataset.rows, features, columns_by_cutoff(fits, dataset.rows, task.horizon_days, mean_order))
    return Shared(dataset, {id(r): i for i, r in enumerate(dataset.rows)}, fits, serving_fit, categories,
                  mean_order, features, x)


@batch
@one_thread
def train_many(persona: Persona, tasks: Sequence[Task], cutoffs: Sequence[datetime] | None = None,
               progress: Any = None) -> dict[str, Trained | ValidationError]:
    """Several tasks from one read of every history, and — for the tasks of one horizon — one
    point-in-time set, one BG/NBD fit per cutoff and one feature matrix (`persona train --all`).
    A task that cannot be trained gets its error, and the others go on."""
    say = progress or (lambda message: None)
    say("reading every person's history…")
    read = Histories.read(persona)
    out: dict[str, Trained | ValidationError] = {}
    for task in tasks:
        say(f"{task.name}:")
        try:
            out[task.name] = train(persona, task, cutoffs, progress=progress, read=read)
        except ValidationError as e:
            out[task.name] = e
    return out


@batch
@one_thread
def train(persona: Persona, task: Task, cutoffs: Sequence[datetime] | None = None,
          progress: Any = None, read: Histories | None = None) -> Trained:
    """Train one task. `read`: histories already read (and the parts made from them), shared by
    the tasks trained together (`train_many`)."""
    started = time.perf_counter()
    say = progress or (lambda message: None)
    if read is None:
        say("reading every person's history…")
        read = Histories.read(persona)
    end = read.end
    if end is None:
        raise ValidationError("no events to learn from")
    start = read.start or end
    chosen_cutoffs = check_cutoffs(cutoffs or default_cutoffs(end, task.horizon, start), task.horizon, end)
    key = (task.horizon.total_seconds(), tuple(chosen_cutoffs))
    shared = read.shared.get(key)
    if shared is None:
        say(f"building the point-in-time set at {len(chosen_cutoffs)} cutoffs…")
        rows = build(read.found, chosen_cutoffs, task.horizon, read.columns)
        dataset = Dataset(chosen_cutoffs, task.horizon, rows, end)
        settle()
    else:
        dataset = shared.dataset
    rows, y = task.labels(dataset.rows)
    last = len(chosen_cutoffs) - 1
    examples = Counter(r.cutoff for r in rows)

    def too_little(problem: str, counts: Counter[int] = examples, what: str = "examples") -> ValidationError:
        return too_little_data(task, problem, chosen_cutoffs, [counts[i] for i in range(len(chosen_cutoffs))],
                               what, start, end)

    # the held-out test is the last cutoff; the evaluation fit learns only from cutoffs whose labels
    # had closed by then; the version that serves is refit on every cutoff (issue 21, item 2)
    learn = closed_before(chosen_cutoffs, task.horizon, last)
    cutoff_of_row = np.array([r.cutoff for r in rows], dtype=np.int64)
    train_idx = np.flatnonzero(np.isin(cutoff_of_row, learn))
    test_idx = np.flatnonzero(cutoff_of_row == last)
    if len(train_idx) < MIN_TRAIN or len(test_idx) < MIN_TEST:
        raise too_little(f"too few examples to learn from ({len(train_idx)} to train, {len(test_idx)} to test; "
                         f"need {MIN_TRAIN} and {MIN_TEST})")
    train_rows = [rows[i] for i in train_idx]
    test_rows = [rows[i] for i in test_idx]
    y_train, y_test = y[train_idx], y[test_idx]
    if task.kind != "regression" and len(set(y_train.tolist())) < 2:
        raise ValidationError(f"{task.name}: the training rows all have the same label")
    customers = [r for r in train_rows if r.aov is not None]
    if len(customers) < MIN_TRAIN:
        raise too_little(f"too few people had bought anything by the training cutoffs ({len(customers)}; need "
                         f"{MIN_TRAIN})", Counter(r.cutoff for r in customers), "people who had bought")
    if shared is None:
        shared = read.shared[key] = _shared(read, dataset, learn, task, say)
    features = shared.features
    fits = shared.fits
    x_all = shared.x[[shared.index[id(r)] for r in rows]]
    x_train, x_test = x_all[train_idx], x_all[test_idx]

    notes: list[str] = []
    if task.kind == "multiclass":  # a class the training rows lack cannot be predicted: kept out of the test
        known = set(y_train.tolist())
        keep = np.array([label in known for label in y_test.tolist()])
        if not keep.all():
            notes.append(f"{int((~keep).sum())} test rows had a class never seen in training")
        x_test, y_test, test_rows = x_test[keep], y_test[keep], [r for r, k in zip(test_rows, keep, strict=True) if k]
        if len(test_rows) < MIN_TEST:
            raise too_little(f"too few test examples of classes seen in training ({len(test_rows)}; need {MIN_TEST})")

    on = f"{len(train_rows):,}"
    if len(train_rows) > SEARCH_ROWS:
        on = f"a sample of {SEARCH_ROWS:,} of {on}"
    say(f"searching {task.kind} pipelines on {on} training rows…")
    backtest = backtest_folds(chosen_cutoffs, task.horizon, learn)
    folds = time_folds(cutoff_of_row[train_idx], backtest)
    if not folds:
        raise too_little("the training cutoffs leave nothing to validate on (no training cutoff has another "
                         "a horizon before it with people in both)")
    # on many rows the search and the backtest learn from a seeded sample (they compare, and the
    # comparison holds on a sample); the version that serves learns from up to FIT_ROWS
    searched = sample(len(train_idx), SEARCH_ROWS)
    kept = np.zeros(len(train_idx), dtype=bool)
    kept[searched] = True
    scoring: Any = "neg_mean_squared_error" if task.kind == "regression" else labelled_log_loss(sorted(set(
        y_train.tolist())))
    grid, estimator = candidates(task), pipeline()
    on_top = ON_TOP_OF.get(task.family)
    if on_top is not None:  # learn what BG/NBD misses, on top of its own prediction
        estimator = OnTopOf(estimator, features.index(on_top))
        grid = [{f"estimator__{k}": v for k, v in space.items()} for space in grid]
    search = GridSearchCV(estimator, grid, cv=[(a, b) for a, b, _ in time_folds(cutoff_of_row[train_idx][searched],
                                                                                 backtest)],
                          scoring=scoring, refit=False, n_jobs=search_jobs(len(searched)), error_score=np.nan)
    with _quiet(), _no_workers_left():
        search.fit(x_train[searched], y_train[searched])
    if not np.isfinite(search.cv_results_["mean_test_score"]).any():
        raise ValidationError(f"{task.name}: no candidate pipeline could be fitted and validated on these rows")
    unfitted = clone(estimator).set_params(**search.best_params_)
    learnt = sample(len(train_idx), FIT_ROWS)
    steps: Pipeline = unfitted.estimator if isinstance(unfitted, OnTopOf) else unfitted
    model = steps.named_steps["model"]
    chosen: dict[str, Any] = {"family": type(model).__name__, "reduce": type(steps.named_steps["reduce"]).__name__
              if steps.named_steps["reduce"] != "passthrough" else None,
              "on_top_of": on_top, "cv_score": float(search.best_score_), "folds": len(folds),
              "searched_rows": len(searched),
              "params": {k.removeprefix("estimator__"): v for k, v in search.best_params_.items()
                         if k.removeprefix("estimator__") not in ("model", "reduce")}}

    # the backtest: the chosen pipeline refit at each fold's cutoff on what was known then, beside BG/NBD;
    # at the latest (nearest to serving), also with rows weighted by recency, kept only if it does better
    base = BASE_COLUMN.get(task.family)
    column = features.index(base) if base is not None else -1
    say(f"backtesting at {len(folds)} cutoff{'s' if len(folds) > 1 else ''}"
        f"{' against BG/NBD' if base is not None else ''}, and rows weighted by recency at the latest…")
    measure = get_scorer(scoring) if isinstance(scoring, str) else scoring
    fold_fits: dict[tuple[int, bool], Any] = {}

    def fold_fit(k: int, recent: bool) -> Any:
        if (k, recent) not in fold_fits:
            fold_train = folds[k][0][kept[folds[k][0]]]
            at = cutoff_of_row[train_idx][fold_train]
            fold_fits[k, recent] = fit_with(unfitted, x_train[fold_train], y_train[fold_train],
                                            recency_weights(chosen_cutoffs, at) if recent else None)
        return fold_fits[k, recent]

    latest = folds[-1][1]
    with _quiet():
        tried = {recent: -float(measure(fold_fit(len(folds) - 1, recent), x_train[latest], y_train[latest]))
                 for recent in (False, True)}
        recent = tried[True] < tried[False]
        outcomes = [(_predicted(task, fold_fit(k, recent), x_train[valid]), x_train[valid, column],
                     np.asarray(y_train[valid], dtype=np.float64))
                    for k, (_, valid, _) in enumerate(folds)] if base is not None else []
    chosen["recency"] = {"half_life_days": HALF_LIFE_DAYS, "weighted": recent,
                         "latest_fold": {"weighted": tried[True], "unweighted": tried[False]}}
    notes.append(f"rows weighted by recency (half-life {HALF_LIFE_DAYS:.0f} days): "
                 f"{'kept' if recent else 'not kept'}, {METRIC_NAMES[MAIN_METRIC[task.kind]]} at the latest backtest "
                 f"cutoff {tried[True]:.4g} weighted, {tried[False]:.4g} not")
    with _quiet():
        best = fit_with(unfitted, x_train[learnt], y_train[learnt],
                        recency_weights(chosen_cutoffs, cutoff_of_row[train_idx][learnt]) if recent else None)
    weight, calibration = 1.0, None
    if base is not None:
        weight, calibration = shrink(task, outcomes)
        chosen["backtest"] = [{"cutoff": chosen_cutoffs[v].isoformat(), "rows": len(t),
                               "model": _loss(task, t, m), "BG/NBD": _loss(task, t, b),
                               "served": _loss(task, t, calibrate(blend(m, b, weight), calibration))}
                              for (_, _, v), (m, b, t) in zip(folds, outcomes, strict=True)]
        notes.append(served_as(weight, calibration is not None))
    chosen["served"] = {"weight": weight, "calibrated": calibration is not None, "as": _as(weight, base)}
    evaluated = Served(best, column, weight, calibration) if base is not None else best

    metrics, baselines, classes = evaluate(task, evaluated, x_test, y_test, test_rows, train_rows, y_train, fits[last])
    if weight < 1.0:
        metrics_alone = evaluate(task, best, x_test, y_test, test_rows, train_rows, y_train, fits[last])[0]
        chosen["model_alone"] = metrics_alone
    main = MAIN_METRIC[task.kind]
    compared = {k: v for k, v in baselines.items() if not (weight == 0.0 and k.startswith("BG/NBD"))}
    against = min(compared, key=lambda k: compared[k][main])
    best_baseline = compared[against][main]
    lift = {"metric": main, "baseline": best_baseline, "against": against, "model": metrics[main],
            "improvement": (best_baseline - metrics[main]) / best_baseline if best_baseline else 0.0}

    say(f"refitting on {'all ' if len(rows) <= FIT_ROWS else ''}{min(len(rows), FIT_ROWS):,} rows for serving…")
    serving = sample(len(rows), FIT_ROWS)
    with _quiet():
        refit = fit_with(unfitted, x_all[serving], y[serving],
                         recency_weights(chosen_cutoffs, cutoff_of_row[serving]) if recent else None)
    reference = {name: reference_of(x_all[:, j]) for j, name in enumerate(features)}
    return Trained(
        task=task, pipeline=Served(refit, column, weight, calibration) if base is not None else refit,
        features=features, categories=shared.categories,
        bgnbd=(shared.serving_fit or fits[last]).bgnbd.params(), mean_order=shared.mean_order,
        gamma_gamma=spend.params() if (spend := (shared.serving_fit or fits[last]).spend) is not None else None,
        classes=classes, metrics=metrics, baselines=baselines, lift=lift, chosen=chosen,
        cutoffs=chosen_cutoffs, horizon=task.horizon, fingerprint=dataset.fingerprint,
        people=sorted({m for r in rows for m in r.members}),
        rows={"train": len(learnt), "test": len(test_rows), "serving": len(serving)},
        reference=reference, seconds=time.perf_counter() - started, notes=notes,
        shortfalls=shortfalls(task, metrics, {k: v for k, v in baselines.items() if k in compared}, lift),
    )


def _as(weight: float, base: str | None) -> str:
    return "model" if base is None or weight >= 1.0 else "BG/NBD" if weight <= 0.0 else "blend"


def served_as(weight: float, calibrated: bool) -> str:
    how = " (recalibrated)" if calibrated else ""
    if weight >= 1.0:
        return f"serving the learned model{how}: it beat BG/NBD across the backtest"
    if weight <= 0.0:
        return f"serving BG/NBD itself{how}: the learned model did not beat it across the backtest"
    return (f"serving {weight:.2f} × the learned model + {1 - weight:.2f} × BG/NBD{how}: the blend did best "
            f"across the backtest")


class _quiet(warnings.catch_warnings):
    """Convergence and numeric warnings of candidates the search then rejects stay out of the output."""

    def __enter__(self) -> None:
        super().__enter__()
        for category in (ConvergenceWarning, RuntimeWarning, UserWarning):
            warnings.simplefilter("ignore", category=category)


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
             train_rows: list[Row], y_train: NDArray[Any], classic: Classic
             ) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str]]:
    """Held-out metrics of the model and of each baseline, on the same test rows."""
    h = task.horizon_days
    fitted = classic.bgnbd
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
            baselines[clv_baseline(classic)] = bgnbd_columns(classic, test_rows, h, mean_order_value(train_rows))[
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


def clv_baseline(classic: Classic) -> str:
    return "BG/NBD × Gamma-Gamma" if classic.spend is not None else "BG/NBD × order value"


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
