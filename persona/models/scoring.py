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
from persona.models.dataset import histories, history_of, matrix, rows_at, rows_then
from persona.models.threads import one_thread
from persona.models.train import Classic, Histories, bgnbd_columns, fit_at

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
    window = int(meta["task"]["horizon_days"] * 86_400_000_000)
    if profile_ids is None:
        # BG/NBD needs no labels: scoring everyone, it is fitted on everyone as of the instant scored
        # (issue 21, item 3), once for all the models of one horizon scored together
        read = read or Histories(histories(persona), None, None)
        key = (moment, window, as_of is None)
        if key not in read.instants:
            rows = rows_then(read.found, moment, window, whole=as_of is None)
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
    values, labels, probabilities = score(x)
    classes = [str(c) for c in getattr(pipeline, "classes_", ())]
    effects = _contributions(score, x, meta)
    features = meta["features"]
    out = []
    for i, row in enumerate(rows):
        order = np.argsort(-np.abs(effects[i]))[:TOP]
        contributions = [{"feature": features[j], "value": _plain(x[i, j]), "effect": round(float(effects[i, j]), 6)}
                         for j in order if round(float(effects[i, j]), 6) != 0]
        out.append(Prediction(row.person, row.members, name, loaded.version.version, round(float(values[i]), 6),
                              labels[i] if labels is not None else None,
                              {c: round(float(p), 6) for c, p in zip(classes, probabilities[i], strict=True)}
                              if probabilities is not None else None, contributions, moment))
    return out


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


def _contributions(score: Scorer, x: NDArray[np.float64], meta: dict[str, Any]) -> NDArray[np.float64]:
    """value(x) − value(x with feature j at its training median), for every row and feature. In a
    batch of more than PROBE rows, only for the EXPLAINED features with the largest mean effect
    on a seeded sample of PROBE of them (the others: 0; a prediction keeps its TOP five anyway)."""
    out = np.zeros_like(x)
    reference = meta["reference"]
    medians = {j: reference.get(name, {}).get("median") for j, name in enumerate(meta["features"])}
    columns = [j for j, median in medians.items() if median is not None]
    if len(x) > PROBE and len(columns) > EXPLAINED:
        probe = x[np.sort(np.random.default_rng(0).choice(len(x), PROBE, replace=False))]
        moved = _effects(score, probe, columns, medians)
        strongest = np.argsort(-np.abs(moved).mean(axis=0), kind="stable")[:EXPLAINED]
        columns = [columns[k] for k in sorted(strongest)]
    out[:, columns] = _effects(score, x, columns, medians)
    return out


def _effects(score: Scorer, x: NDArray[np.float64], columns: list[int], medians: dict[int, Any]
             ) -> NDArray[np.float64]:
    base, _, probabilities = score(x)
    top = np.argmax(probabilities, axis=1) if probabilities is not None else None
    out = np.zeros((len(x), len(columns)))
    for k, j in enumerate(columns):
        changed = x.copy()
        changed[:, j] = medians[j]
        moved, _, moved_probabilities = score(changed)
        if top is not None and moved_probabilities is not None:  # multiclass: the predicted class's probability
            moved = moved_probabilities[np.arange(len(top)), top]
        out[:, k] = base - moved
    return out


def _plain(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def score_all(persona: Persona, name: str, *, as_of: datetime | None = None) -> int:
    """Predictions of the promoted version for everyone, into the read model (replacing the model's
    earlier rows). Returns how many were written."""
    return score_many(persona, [name], as_of=as_of)[name]


@one_thread
def score_many(persona: Persona, names: Sequence[str], *, as_of: datetime | None = None,
               progress: Any = None) -> dict[str, int]:
    """score_all for several models from one read of every history, at one instant (for the models
    of one horizon, one set of rows and one BG/NBD fit too). Returns how many rows each wrote."""
    read = Histories(histories(persona), None, None)
    moment = as_of or datetime.now(UTC)
    written: dict[str, int] = {}
    for name in names:
        if progress is not None:
            progress(f"scoring every profile with {name}…")
        found = predict(persona, name, as_of=as_of, read=read, moment=moment)
        at = micros(found[0].as_of) if found else micros(moment)
        rec = persona.recorder
        with rec.transaction():
            # checked under the write lock: someone erased while this scored gets no row back, and a
            # merge or an unlink meanwhile leaves only the rows of ids that still name a person
            ids = [p.person for p in found]
            heads, people = rec.heads(ids), identity.persons(rec, ids)
            rows = [(p.person, p.model, p.version, at, orjson.dumps(p.doc()).decode()) for p in found
                    if p.person in heads and heads[p.person].wrapped is not None and people[p.person].id == p.person]
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


def horizon_of(meta: dict[str, Any]) -> timedelta:
    return timedelta(days=float(meta["task"]["horizon_days"]))
