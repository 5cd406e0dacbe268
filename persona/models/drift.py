"""Drift: has the population a model scores moved away from the one it was trained on?

The population stability index of each input feature, between its training distribution (bins
kept in the registry) and the same feature across today's people; a version is stale when a
feature's PSI passes PSI_LIMIT (0.2: the field's rule of thumb for a shift worth acting on),
when it is older than MAX_AGE, or when a person it was trained on has been erased.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from persona.core import Persona
from persona.models import registry
from persona.models.dataset import histories, matrix, rows_then
from persona.models.train import Classic, bgnbd_columns, fit_at, shares

PSI_LIMIT = 0.2
MAX_AGE = timedelta(days=30)
_FLOOR = 1e-4  # an empty bin counts as this share: PSI stays finite


def psi(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray) -> float:
    if len(expected) != len(actual):
        raise ValueError("PSI: the two distributions must have the same bins")
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def measure(persona: Persona, version: registry.ModelVersion, *, now: datetime | None = None,
            save: bool = True) -> dict[str, Any]:
    """PSI of every feature of `version` on today's population; stored with the version."""
    moment = now or datetime.now(UTC)
    meta = version.meta
    window = int(meta["task"]["horizon_days"] * 86_400_000_000)
    rows = rows_then(histories(persona), moment, window)
    fitted = fit_at(rows) or Classic.of(meta)  # as scoring everyone does: BG/NBD as of the instant
    x = matrix(rows, meta["features"], bgnbd_columns(fitted, rows, meta["task"]["horizon_days"], meta["mean_order"]))
    by_feature = {}
    for j, name in enumerate(meta["features"]):
        ref = meta["reference"].get(name)
        if ref is not None and rows:
            by_feature[name] = round(psi(ref["shares"], shares(x[:, j], ref["edges"])), 6)
    worst = sorted(by_feature.items(), key=lambda kv: -kv[1])
    age = moment - version.created_at
    reasons = []
    if worst and worst[0][1] > PSI_LIMIT:
        reasons.append(f"feature drift: PSI {worst[0][1]:.3f} on {worst[0][0]} (limit {PSI_LIMIT})")
    if age > MAX_AGE:
        reasons.append(f"age: trained {age.days} days ago (limit {MAX_AGE.days})")
    if version.stale:
        reasons.append(version.stale)
    out = {"measured_at": moment.isoformat(), "people": len(rows), "psi_max": worst[0][1] if worst else 0.0,
           "psi_top": [{"feature": f, "psi": v} for f, v in worst[:5]], "psi_limit": PSI_LIMIT,
           "age_days": round(age.total_seconds() / 86_400, 3), "stale": bool(reasons), "reasons": reasons}
    if save:
        with persona.recorder.transaction():
            persona.recorder.set_model_drift(version.name, version.version, orjson.dumps(out).decode())
    return out
