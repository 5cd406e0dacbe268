"""Predictions: a promoted model applied to people's projections as of an instant, each value with
the features that moved it most, and the batch that writes the predictions read model.

A contribution is what the prediction loses when one feature is set to its training median,
all else kept: model-agnostic, exact for the model as fitted, and cheap enough to compute for
every feature of every person in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray

from persona import identity
from persona.core import Persona
from persona.errors import ValidationError
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
from persona.models.ensembles import Ensemble
from persona.models.threads import batch, one_thread, settle
from persona.models.train import Classic, Histories, bgnbd_columns, fit_at, fits_at
from persona.recommend import NAME as RECOMMENDER
from persona.recommend import current, serve
from persona.store.rows import RowTagger

TOP = 5  # contributions kept per prediction
T = TypeVar("T")


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
        return _document(self.value, self.label, self.probabilities, self.contributions, self.as_of.isoformat())


def _document(value: float, label: str | None, probabilities: dict[str, float] | None,
              contributions: list[dict[str, Any]], as_of: str) -> dict[str, Any]:
    """A prediction as the read model and the API hold it."""
    return {"value": value, "label": label, "probabilities": probabilities, "contributions": contributions,
            "as_of": as_of}


def predict(persona: Persona, name: str, *, as_of: datetime | None = None, profile_ids: Sequence[str] | None = None,
            version: int | None = None, read: Histories | None = None, moment: datetime | None = None
            ) -> list[Prediction]:
    """Score everyone (or these profiles) as of an instant with a version (the promoted one by
    default). People with nothing by then get no prediction. Without `as_of`, people are who
    they are today (one prediction per person, under the person's id); as of a past instant,
    who they were then (a merge that had not happened yet keeps its streams apart). `read`:
    every history already read, shared by the models scored together (`score_many`, which also
    gives them one `moment` for "now")."""
    _, made = _scored(persona, name, _predictions, as_of=as_of, profile_ids=profile_ids, version=version, read=read,
                      moment=moment)
    return made


Finish = Callable[..., list[T]]  # what becomes of a slice of scored rows: _predictions' arguments


@batch
@one_thread
def _scored(persona: Persona, name: str, finish: Finish[T], *, as_of: datetime | None = None,
            profile_ids: Sequence[str] | None = None, version: int | None = None, read: Histories | None = None,
            moment: datetime | None = None) -> tuple[int, list[T]]:
    """predict's work, each slice of the rows finished (made Predictions, or the read model's
    documents) where it was scored: in a forked process a core for a large batch. Returns the
    version scored and what `finish` made of every row, in order."""
    if name == RECOMMENDER:  # checked before the file is opened
        raise ValidationError(f"{name} ranks items for a person: `persona recommend` (docs/recommendations.md)")
    loaded = registry.load(persona, name, version)
    moment = as_of or moment or datetime.now(UTC)
    meta = loaded.version.meta
    window = window_of(meta)
    # with the other models scored together (score_many): the rows' own columns read into a matrix once
    matrices = read.matrices if read is not None and profile_ids is None else None
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
        return loaded.version.version, []
    fitted = at_instant or Classic.of(meta)
    extra = bgnbd_columns(fitted, rows, meta["task"]["horizon_days"], meta["mean_order"])
    if matrices is None:
        x = matrix(rows, meta["features"], extra)
    else:  # each version's BG/NBD columns set in its own copy
        shape = (key, tuple(meta["features"]), tuple(sorted(extra)))
        if shape not in matrices:
            matrices[shape] = matrix(rows, meta["features"], {name: np.full(len(rows), np.nan) for name in extra})
        x = matrices[shape].copy()
        for j, column in enumerate(meta["features"]):
            if column in extra:
                x[:, j] = extra[column]
    kind, family = meta["task"]["kind"], meta["task"]["family"]
    pipeline = loaded.pipeline
    score = Scorer(pipeline, kind, family)
    workers = fork_workers(len(rows))
    columns = explained(score, x, meta, workers)
    classes = [str(c) for c in getattr(pipeline, "classes_", ())]
    size = -(-len(rows) // workers)

    def part(k: int) -> list[T]:
        """One slice of the rows scored, explained and finished."""
        some = x[k * size:(k + 1) * size]
        (values, labels, probabilities), explaining = _effects(score, some, columns, meta)
        effects = np.zeros_like(some)
        effects[:, columns] = explaining
        return finish(name, loaded.version.version, rows[k * size:(k + 1) * size], some, meta["features"], values,
                      labels, classes, probabilities, effects, moment)

    # a slice a core: the rows are independent
    return loaded.version.version, [made for part_made in in_forks(part, workers, workers) for made in part_made]


def _predictions(name: str, version: int, rows: Sequence[Row], x: NDArray[np.float64], features: list[str],
                 values: NDArray[np.float64], labels: list[str] | None, classes: list[str],
                 probabilities: NDArray[np.float64] | None, effects: NDArray[np.float64], moment: datetime
                 ) -> list[Prediction]:
    """A Prediction per row (see _explained)."""
    return [Prediction(row.person, row.members, name, version, value, label, shares, contributions, moment)
            for row, (value, label, shares, contributions)
            in zip(rows, _explained(x, features, values, labels, classes, probabilities, effects), strict=True)]


def _documents(name: str, version: int, rows: Sequence[Row], x: NDArray[np.float64], features: list[str],
               values: NDArray[np.float64], labels: list[str] | None, classes: list[str],
               probabilities: NDArray[np.float64] | None, effects: NDArray[np.float64], moment: datetime,
               tagger: RowTagger | None = None) -> list[tuple[str, str, bytes | None]]:
    """_predictions as the read model stores them: each person's id, the document (JSON) that
    Prediction.doc gives, and the row's tag (with the store's tagger, if given)."""
    as_of, at = moment.isoformat(), micros(moment)
    dumps = orjson.dumps
    out = []
    for row, (value, label, shares, contributions) in zip(
            rows, _explained(x, features, values, labels, classes, probabilities, effects), strict=True):
        doc = dumps(_document(value, label, shares, contributions, as_of)).decode()
        tag = None if tagger is None else tagger("predictions", (row.person, name, version, at, doc))
        out.append((row.person, doc, tag))
    return out


def _explained(x: NDArray[np.float64], features: list[str], values: NDArray[np.float64], labels: list[str] | None,
               classes: list[str], probabilities: NDArray[np.float64] | None, effects: NDArray[np.float64]
               ) -> Iterator[tuple[float, str | None, dict[str, float] | None, list[dict[str, Any]]]]:
    """Each row's value, label, class probabilities and TOP contributions (largest effect first;
    none of effect 0; a feature's value None where it is missing or infinite), rounded to 6 places:
    whole arrays are rounded and ordered at once, then read a row at a time."""
    rounded = np.round(effects, 6)
    order = np.argsort(-np.abs(rounded), axis=1, kind="stable")[:, :TOP]
    at = np.arange(len(x))[:, None]
    tops = rounded[at, order].tolist()
    shown = np.round(x[at, order], 6)
    kept = shown.astype(object)
    kept[~np.isfinite(shown)] = None
    names, values_shown = np.asarray(features, dtype=object)[order].tolist(), kept.tolist()
    rounded_values = np.round(values, 6).tolist()
    shares = np.round(probabilities, 6).tolist() if probabilities is not None else None
    for i, value in enumerate(rounded_values):
        yield (value, labels[i] if labels is not None else None,
               dict(zip(classes, shares[i], strict=True)) if shares is not None else None,
               [{"feature": f, "value": v, "effect": e}
                for f, v, e in zip(names[i], values_shown[i], tops[i], strict=True) if e != 0])


Scored = tuple[NDArray[np.float64], list[str] | None, NDArray[np.float64] | None]


@dataclass(frozen=True)
class Scorer:
    """A served model scored as predictions show it."""

    model: Any
    kind: str
    family: str

    def __call__(self, x: NDArray[np.float64]) -> Scored:
        """Values; the labels of classifiers; a multiclass model's probabilities (a row per row)."""
        if self.kind == "regression":
            values = self.model.predict(x)
            if self.family in ("purchases_next", "clv", "days_to_next_purchase"):
                values = np.clip(values, 0, None)
            return np.asarray(values, dtype=np.float64), None, None
        proba = self.model.predict_proba(x)
        classes = [str(c) for c in self.model.classes_]
        if self.kind == "classification":
            positive = proba[:, [float(c) for c in self.model.classes_].index(1.0)]
            return positive, ["churn" if p >= 0.5 else "stays" for p in positive], None
        top = np.argmax(proba, axis=1)
        return proba[np.arange(len(top)), top], [classes[k] for k in top], np.asarray(proba, dtype=np.float64)

    def on(self, model: Any) -> Scorer:
        return replace(self, model=model)


EXPLAINED = 8  # in a large batch, the features whose contributions every row gets
PROBE = 2_000  # ... chosen as those that move a seeded sample of this many rows most


def explained(score: Any, x: NDArray[np.float64], meta: dict[str, Any], workers: int = 1) -> list[int]:
    """The columns whose contributions are computed: every feature with a training median; in a
    batch of more than PROBE rows, the EXPLAINED of them with the largest mean effect on a seeded
    sample of PROBE rows (its columns shared among `workers` forked processes)."""
    columns = [j for j, name in enumerate(meta["features"]) if _median(meta, name) is not None]
    if len(x) <= PROBE or len(columns) <= EXPLAINED:
        return columns
    probe = x[np.sort(np.random.default_rng(0).choice(len(x), PROBE, replace=False))]
    groups = [columns[k::workers] for k in range(workers)]
    moved = in_forks(lambda k: _effects(score, probe, groups[k], meta)[1], workers, workers)
    strength = {j: float(np.abs(m[:, n]).mean()) for group, m in zip(groups, moved, strict=True)
                for n, j in enumerate(group)}
    strongest = sorted(columns, key=lambda j: -strength[j])[:EXPLAINED]  # stable: the earlier column on a tie
    return sorted(strongest)


def _median(meta: dict[str, Any], name: str) -> float | None:
    median: float | None = meta["reference"].get(name, {}).get("median")
    return median


def _effects(score: Any, x: NDArray[np.float64], columns: list[int], meta: dict[str, Any]
             ) -> tuple[Scored, NDArray[np.float64]]:
    """The rows scored, and the effects of these columns (a column each); a row whose value is the
    median already is not scored again (its effect is 0). A gradient-boosted model scores again
    only the trees that split on the column changed (persona.models.ensembles)."""
    ensemble = Ensemble.of(score.model) if isinstance(score, Scorer) else None
    if ensemble is None:
        scored = score(x)

        def rescore(rows: NDArray[np.intp], changed: NDArray[np.float64], j: int) -> Any:
            return score
    else:
        split = ensemble.split(x, columns)
        scored = score.on(ensemble.answering(split.raw))(x)

        def rescore(rows: NDArray[np.intp], changed: NDArray[np.float64], j: int) -> Any:
            return score.on(ensemble.changed(split, rows, changed, j))
    base, _, probabilities = scored
    medians = {j: _median(meta, meta["features"][j]) for j in columns}
    top = np.argmax(probabilities, axis=1) if probabilities is not None else None
    out = np.zeros((len(x), len(columns)))
    for k, j in enumerate(columns):
        moves = np.flatnonzero(x[:, j] != medians[j])  # NaN included: imputed, it may not be the median
        if not len(moves):
            continue
        changed = x[moves]
        changed[:, j] = medians[j]
        moved, _, moved_probabilities = rescore(moves, changed, j)(changed)
        if top is not None and moved_probabilities is not None:  # multiclass: the predicted class's probability
            moved = moved_probabilities[np.arange(len(moves)), top[moves]]
        out[moves, k] = base[moves] - moved
    return scored, out


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
    made: dict[str, tuple[int, list[tuple[str, str, bytes | None]]]] = {}
    for name in names:
        if progress is not None:
            progress(f"scoring every profile with {name}…")
        made[name] = _scored(persona, name, partial(_documents, tagger=persona.recorder.tagger), as_of=as_of,
                             read=read, moment=moment)  # each row tagged where it was made, a core a slice
    if progress is not None:
        progress("writing the predictions…")
    rec = persona.recorder
    written: dict[str, int] = {}
    with rec.transaction():
        # checked under the write lock: someone erased while this scored gets no row back, and a
        # merge or an unlink meanwhile leaves only the rows of ids that still name a person
        ids = sorted({person for _, found in made.values() for person, _, _ in found})
        heads, people = rec.heads(ids), identity.persons(rec, ids)
        current = {pid for pid in ids if pid in heads and heads[pid].wrapped is not None and people[pid].id == pid}
        at = micros(moment)
        for name, (version, found) in made.items():
            kept = [(person, doc, tag) for person, doc, tag in found if person in current]
            rec.put_predictions([(person, name, version, at, doc) for person, doc, _ in kept], model=name,
                                tags=[tag for _, _, tag in kept])
            written[name] = len(kept)
    return written


def rescore(persona: Persona, *, as_of: datetime | None = None) -> int:
    """The predictions read model written again for every promoted model (after a rebuild), and
    the recommendations read model if a recommender serves (it is made for now only)."""
    written = sum(score_many(persona, promoted_names(persona), as_of=as_of).values())
    if as_of is None and current.serving(persona):
        written += serve.score_everyone(persona)
    return written


def promoted_names(persona: Persona) -> list[str]:
    """The tasks with a version serving (the recommender, scored apart, is not one)."""
    return sorted({v.name for v in registry.versions(persona)
                   if v.status == "promoted" and v.meta["task"]["kind"] != "ranking"})


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
