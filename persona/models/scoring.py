"""Predictions: a promoted model applied to people's projections as of an instant, each value with
the features that moved it most, and the batch that writes the predictions read model.

A contribution is what the prediction loses when one feature is set to its training median,
all else kept: model-agnostic, exact for the model as fitted, and cheap enough to compute for
every feature of every person in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from persona import identity
from persona.core import Persona
from persona.events import micros
from persona.models import registry
from persona.models.dataset import (
    Row,
    fork_workers,
    history_of,
    in_forks,
    instant_rows,
    matrix,
    rows_at,
    rows_then,
)
from persona.models.threads import batch, one_thread, settle
from persona.models.train import Classic, Histories, bgnbd_columns, fit_at, fits_at

TOP = 5  # contributions kept per prediction


@dataclass(frozen=True)
class Prediction:
    person: str  # the person's id (as of a past instant: who they were then)
    members: tuple[str, ...]  # their streams
    model: str
    version: int
    value: float  # the count, amount or days; the probability of churn; the top class's probability
    label: str | None  # the class, for classifiers
    probabilities: dict[str, float] | None
    contributions: list[dict[str, Any]]
    as_of: datetime

    def doc(self) -> dict[str, Any]:
        return {"value": self.value, "label": self.label, "probabilities": self.probabilities,
                "contributions": self.contributions, "as_of": self.as_of.isoformat()}


@batch
@one_thread
def predict(persona: Persona, name: str, *, as_of: datetime | None = None, profile_ids: Sequence[str] | None = None,
            version: int | None = None, read: Histories | None = None, moment: datetime | None = None
            ) -> list[Prediction]:
    """Score everyone (or these profiles) as of an instant with a version (the promoted one by
    default). People with nothing by then get no prediction. Without `as_of`, people are who
    they are today (one prediction per person, under the person's id); as of a past instant,
    who they were then (a merge that had not happened yet keeps its streams apart). `read`:
    every history already read, shared by the models scored together (`score_many`, which also
    gives them one `moment` for "now")."""
    loaded = registry.load(persona, name, version)
    moment = as_of or moment or datetime.now(UTC)
    meta = loaded.version.meta
    window = window_of(meta)
    if profile_ids is None:
        # BG/NBD and Gamma-Gamma need no labels: scoring everyone, they are fitted on everyone as of the instant scored
        # (issue 21, item 3), once for all the models of one horizon scored together
        read = read or Histories.read(persona)
        key = (moment, window, as_of is None)
        if key not in read.instants:
            rows = rows_then(read.found, moment, window, whole=as_of is None, columns=read.columns)
            settle()
            read.instants[key] = (rows, fit_at(rows))
        rows, at_instant = read.instants[key]
    else:  # a few people: BG/NBD as fitted at the end of the training data
        found = {}
        for pid in profile_ids:
            history = history_of(persona, pid)
            found[history.person] = history
        rows = [row for person in sorted(found) for row in rows_at(found[person], moment, window, whole=as_of is None)]
        at_instant = None
    if not rows:
        return []
    fitted = at_instant or Classic.of(meta)
    x = matrix(rows, meta["features"], bgnbd_columns(fitted, rows, meta["task"]["horizon_days"], meta["mean_order"]))
    kind, family = meta["task"]["kind"], meta["task"]["family"]
    pipeline = loaded.pipeline
    score = _scorer(pipeline, kind, family)
    workers = fork_workers(len(rows))
    columns = explained(score, x, meta, workers)
    size = -(-len(rows) // workers)

    def part(k: int) -> tuple[NDArray[np.float64], list[str] | None, NDArray[np.float64] | None, NDArray[np.float64]]:
        """The values, labels, probabilities and contributions of one slice of the rows."""
        some = x[k * size:(k + 1) * size]
        values, labels, probabilities = score(some)
        return values, labels, probabilities, _effects(score, some, columns, meta, (values, probabilities))

    parts = in_forks(part, workers, workers)  # a slice a core: the rows are independent
    values = np.concatenate([v for v, _, _, _ in parts])
    labels = None if parts[0][1] is None else [label for _, some, _, _ in parts for label in some or ()]
    probabilities = None if parts[0][2] is None else np.concatenate([q for _, _, q, _ in parts if q is not None])
    effects = np.zeros_like(x)
    effects[:, columns] = np.concatenate([e for _, _, _, e in parts])
    classes = [str(c) for c in getattr(pipeline, "classes_", ())]
    return _predictions(name, loaded.version.version, rows, x, meta["features"], values, labels, classes,
                        probabilities, effects, moment)


def _predictions(name: str, version: int, rows: Sequence[Row], x: NDArray[np.float64], features: list[str],
                 values: NDArray[np.float64], labels: list[str] | None, classes: list[str],
                 probabilities: NDArray[np.float64] | None, effects: NDArray[np.float64], moment: datetime
                 ) -> list[Prediction]:
    """A Prediction per row, with its TOP contributions (largest effect first; none of effect 0),
    rounded to 6 places; whole arrays are rounded and ordered at once, then read a row at a time."""
    rounded = np.round(effects, 6)
    order = np.argsort(-np.abs(rounded), axis=1, kind="stable")[:, :TOP]
    at = np.arange(len(rows))[:, None]
    tops, shown = rounded[at, order].tolist(), np.round(x[at, order], 6).tolist()
    names = np.asarray(features, dtype=object)[order].tolist()
    rounded_values = np.round(values, 6).tolist()
    shares = np.round(probabilities, 6).tolist() if probabilities is not None else None
    out = []
    for i, row in enumerate(rows):
        contributions = [{"feature": f, "value": v if v == v and v not in (_INF, -_INF) else None, "effect": e}
                         for f, v, e in zip(names[i], shown[i], tops[i], strict=True) if e != 0]
        out.append(Prediction(row.person, row.members, name, version, rounded_values[i],
                              labels[i] if labels is not None else None,
                              dict(zip(classes, shares[i], strict=True)) if shares is not None else None,
                              contributions, moment))
    return out


_INF = float("inf")


Scorer = Any


def _scorer(pipeline: Any, kind: str, family: str) -> Scorer:
    def score(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], list[str] | None, NDArray[np.float64] | None]:
        """Values; the labels of classifiers; a multiclass model's probabilities (a row per row)."""
        if kind == "regression":
            values = pipeline.predict(x)
            if family in ("purchases_next", "clv", "days_to_next_purchase"):
                values = np.clip(values, 0, None)
            return np.asarray(values, dtype=np.float64), None, None
        proba = pipeline.predict_proba(x)
        classes = [str(c) for c in pipeline.classes_]
        if kind == "classification":
            positive = proba[:, [float(c) for c in pipeline.classes_].index(1.0)]
            return positive, ["churn" if p >= 0.5 else "stays" for p in positive], None
        top = np.argmax(proba, axis=1)
        return proba[np.arange(len(top)), top], [classes[k] for k in top], np.asarray(proba, dtype=np.float64)
    return score


EXPLAINED = 8  # in a large batch, the features whose contributions every row gets
PROBE = 2_000  # ... chosen as those that move a seeded sample of this many rows most


def explained(score: Scorer, x: NDArray[np.float64], meta: dict[str, Any], workers: int = 1) -> list[int]:
    """The columns whose contributions are computed: every feature with a training median; in a
    batch of more than PROBE rows, the EXPLAINED of them with the largest mean effect on a seeded
    sample of PROBE rows (its columns shared among `workers` forked processes)."""
    columns = [j for j, name in enumerate(meta["features"]) if _median(meta, name) is not None]
    if len(x) <= PROBE or len(columns) <= EXPLAINED:
        return columns
    probe = x[np.sort(np.random.default_rng(0).choice(len(x), PROBE, replace=False))]
    values, _, probabilities = score(probe)
    groups = [columns[k::workers] for k in range(workers)]
    moved = in_forks(lambda k: _effects(score, probe, groups[k], meta, (values, probabilities)), workers, workers)
    strength = {j: float(np.abs(m[:, n]).mean()) for group, m in zip(groups, moved, strict=True)
                for n, j in enumerate(group)}
    strongest = sorted(columns, key=lambda j: -strength[j])[:EXPLAINED]  # stable: the earlier column on a tie
    return sorted(strongest)


def _median(meta: dict[str, Any], name: str) -> float | None:
    median: float | None = meta["reference"].get(name, {}).get("median")
    return median


def _effects(score: Scorer, x: NDArray[np.float64], columns: list[int], meta: dict[str, Any],
             scored: tuple[NDArray[np.float64], NDArray[np.float64] | None]) -> NDArray[np.float64]:
    """The effects of these columns (a column each); a row whose value is the median already is not
    scored again (its effect is 0)."""
    base, probabilities = scored
    medians = {j: _median(meta, meta["features"][j]) for j in columns}
    top = np.argmax(probabilities, axis=1) if probabilities is not None else None
    out = np.zeros((len(x), len(columns)))
    for k, j in enumerate(columns):
        moves = np.flatnonzero(x[:, j] != medians[j])  # NaN included: imputed, it may not be the median
        if not len(moves):
            continue
        changed = x[moves]
        changed[:, j] = medians[j]
        moved, _, moved_probabilities = score(changed)
        if top is not None and moved_probabilities is not None:  # multiclass: the predicted class's probability
            moved = moved_probabilities[np.arange(len(moves)), top[moves]]
        out[moves, k] = base[moves] - moved
    return out


def score_all(persona: Persona, name: str, *, as_of: datetime | None = None) -> int:
    """Predictions of the promoted version for everyone, into the read model (replacing the model's
    earlier rows). Returns how many were written."""
    return score_many(persona, [name], as_of=as_of)[name]


@batch
@one_thread
def score_many(persona: Persona, names: Sequence[str], *, as_of: datetime | None = None,
               progress: Any = None) -> dict[str, int]:
    """score_all for several models from one read of every history, at one instant (for the models
    of one horizon, one set of rows and one BG/NBD fit too), written in one transaction. Returns how
    many rows each wrote."""
    moment = as_of or datetime.now(UTC)
    whole = as_of is None
    windows = {window_of(registry.get(persona, name).meta) for name in names}
    if progress is not None:
        progress("reading every history and building everyone's rows…")
    read = Histories({}, None, None)  # each model's rows, made here at once: no history is read again
    built = instant_rows(persona, moment, sorted(windows), whole=whole)
    settle()
    for (window, everyone), fitted in zip(built.items(), fits_at(list(built.values()), [0] * len(built)),
                                          strict=True):
        read.instants[(moment, window, whole)] = (everyone, fitted)
    made: dict[str, list[Prediction]] = {}
    for name in names:
        if progress is not None:
            progress(f"scoring every profile with {name}…")
        made[name] = predict(persona, name, as_of=as_of, read=read, moment=moment)
    if progress is not None:
        progress("writing the predictions…")
    rec = persona.recorder
    written: dict[str, int] = {}
    with rec.transaction():
        # checked under the write lock: someone erased while this scored gets no row back, and a
        # merge or an unlink meanwhile leaves only the rows of ids that still name a person
        ids = sorted({p.person for found in made.values() for p in found})
        heads, people = rec.heads(ids), identity.persons(rec, ids)
        current = {pid for pid in ids if pid in heads and heads[pid].wrapped is not None and people[pid].id == pid}
        for name, found in made.items():
            at = micros(found[0].as_of) if found else micros(moment)
            rows = [(p.person, p.model, p.version, at, orjson.dumps(p.doc()).decode()) for p in found
                    if p.person in current]
            rec.put_predictions(rows, model=name)
            written[name] = len(rows)
    return written


def rescore(persona: Persona, *, as_of: datetime | None = None) -> int:
    """The predictions read model written again for every promoted model (after a rebuild)."""
    return sum(score_many(persona, promoted_names(persona), as_of=as_of).values())


def promoted_names(persona: Persona) -> list[str]:
    return sorted({v.name for v in registry.versions(persona) if v.status == "promoted"})


def stored(persona: Persona, profile_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The read model's predictions for these profiles (by person), newest model first."""
    out: dict[str, list[dict[str, Any]]] = {pid: [] for pid in profile_ids}
    for pid, model, version, computed_at, doc in persona.recorder.predictions_of(list(profile_ids)):
        out.setdefault(pid, []).append({"model": model, "version": version, "computed_at": computed_at,
                                        **orjson.loads(doc)})
    return out


def window_of(meta: dict[str, Any]) -> int:
    """A version's horizon in µs."""
    return int(meta["task"]["horizon_days"] * 86_400_000_000)


def horizon_of(meta: dict[str, Any]) -> timedelta:
    return timedelta(days=float(meta["task"]["horizon_days"]))
