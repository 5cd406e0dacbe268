"""The model registry: every trained version in the store, with what it was trained on and how
well it did, serialised with skops (never pickle), sealed, and checked by hash when loaded.

A version is stored as the skops file's bytes sealed under the store's `models` system key
(AES-GCM, bound to the model's name, version and hash): a model's split thresholds are values
from people's features, so they are kept like the rest. Loading opens the seal, checks the
SHA-256 recorded beside it, and refuses any type in the file that is not one of the
scikit-learn and NumPy types persona's pipelines are made of.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import orjson
import skops.io as sio

from persona.core import Persona
from persona.crypto import Sealer
from persona.errors import PersonaError, TamperError, ValidationError
from persona.events import from_micros, micros
from persona.models import ERASED_SINCE
from persona.models.train import Trained

MODELS_KEY = "models"
# The types a persona pipeline holds beyond those skops trusts by itself (measured over every
# candidate of persona.models.train, fitted). Any other type in a file is refused, whatever its
# hash: a function or class named in a model file is code that loading would run.
TRUSTED_TYPES = frozenset({
    "numpy.dtype",
    "persona.models.train.OnTopOf",
    "persona.models.train.Served",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.tree._tree.Tree",
    # the recommenders (persona/recommend/models.py): NumPy arrays and a sparse similarity matrix
    "persona.recommend.models.Blend",
    "persona.recommend.models.Factors",
    "persona.recommend.models.ItemSimilarity",
    "persona.recommend.models.Popular",
    "scipy.sparse._csr.csr_matrix",
})


class ModelError(PersonaError):
    """No such model or version, or one that cannot be loaded."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    created_at: datetime
    status: str  # candidate | promoted | retired (replaced by a promotion) | rolled_back
    promoted_at: datetime | None
    stale: str | None  # why it should be retrained (an erased person was in its training set), if so
    drift: dict[str, Any] | None  # the last drift measurement (persona.models.drift)
    meta: dict[str, Any]
    sha256: str

    def summary(self) -> dict[str, Any]:
        m = self.meta
        return {"name": self.name, "version": self.version, "status": self.status,
                "created_at": self.created_at.isoformat(),
                "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None,
                "stale": self.stale, "task": m["task"], "metrics": m["metrics"], "baselines": m["baselines"],
                "lift": m["lift"], "chosen": m["chosen"], "window": m["window"], "rows": m["rows"],
                "fingerprint": m["fingerprint"], "code": m["code"], "sha256": self.sha256,
                "drift": self.drift, "promotion": m.get("promotion"), "why": self.why()}

    def why(self) -> str | None:
        """Why a candidate was not promoted when trained, or why a promoted one was not by itself
        (versions stored before the rule was recorded say nothing)."""
        promotion = self.meta.get("promotion")
        if promotion is None:
            return None
        shortfalls = "; ".join(promotion["shortfalls"])
        if self.status == "candidate":
            if shortfalls:
                return f"kept as candidate: {shortfalls}"
            return "kept as candidate: asked not to promote it" if promotion["override"] == "no-promote" else None
        return f"promoted by request although {shortfalls}" if shortfalls else None


@dataclass(frozen=True)
class Loaded:
    version: ModelVersion
    pipeline: Any


def sealer(persona: Persona) -> Sealer:
    """The models' own data key, made on first use."""
    return persona.system_sealer(MODELS_KEY)


def _aad(name: str, version: int, sha256: str) -> bytes:
    return b"persona-model/1\x00" + name.encode() + b"\x00" + str(version).encode() + b"\x00" + sha256.encode()


def code_versions() -> dict[str, str]:
    out = {}
    for package in ("persona", "scikit-learn", "skops", "numpy", "scipy", "implicit"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def save(persona: Persona, trained: Trained, *, promote: bool | None = None, now: datetime | None = None
         ) -> ModelVersion:
    """Store a trained version. `promote`: serve it at once, or not; None (the default) promotes it
    when it has no shortfalls (persona.models.train.shortfalls: it beats its best baseline on the
    main metric and is no worse on the headline metric, on held-out rows). The shortfalls are kept
    with the version."""
    task = trained.task
    meta = {
        "task": {"name": task.name, "family": task.family, "kind": task.kind, "horizon_days": task.horizon_days},
        "features": trained.features, "categories": trained.categories, "classes": trained.classes,
        "bgnbd": trained.bgnbd, "gamma_gamma": trained.gamma_gamma, "mean_order": trained.mean_order,
        "metrics": trained.metrics, "baselines": trained.baselines, "lift": trained.lift,
        "chosen": trained.chosen, "rows": trained.rows, "fingerprint": trained.fingerprint,
        "window": {"cutoffs": [c.isoformat() for c in trained.cutoffs],
                   "horizon_days": trained.horizon.total_seconds() / 86_400},
        "reference": trained.reference, "people": len(trained.people), "seconds": round(trained.seconds, 3),
        "notes": trained.notes, "code": code_versions(), "seed": trained.seed,
    }
    return store(persona, task.name, trained.pipeline, meta, trained.people, trained.shortfalls, promote=promote,
                 now=now)


def store(persona: Persona, name: str, model: Any, meta: dict[str, Any], people: list[str], shortfalls: list[str],
          *, promote: bool | None = None, now: datetime | None = None) -> ModelVersion:
    """Seal and record a version of any model (a task's pipeline, a recommender): `people` are the
    profile ids it learnt from (an erasure of one marks it stale), `shortfalls` why it should not
    serve by itself."""
    data = sio.dumps(model)
    sha = hashlib.sha256(data).hexdigest()
    meta = {**meta, "promotion": {"eligible": not shortfalls, "shortfalls": shortfalls,
                                  "override": None if promote is None else "promote" if promote else "no-promote"}}
    at = micros(now or datetime.now(UTC))
    rec = persona.recorder
    box = sealer(persona)
    with rec.transaction():
        version = rec.next_model_version(name)  # taken under the write lock; the seal binds it
        sealed = box.seal(data, _aad(name, version, sha), os.urandom(12))
        # someone erased while this trained is not recorded (their profile id is gone everywhere
        # else) and the version is marked for retraining at once
        heads = rec.heads(people)
        kept = [pid for pid in people if pid in heads and heads[pid].wrapped is not None]
        rec.add_model(name, version, at, orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY).decode(), sha,
                      sealed, kept)
        if len(kept) < len(people):
            rec.mark_models_stale([(name, version)], ERASED_SINCE)
        if promote or (promote is None and not shortfalls):
            rec.promote_model(name, version, at)
    return get(persona, name, version)


def _version(row: tuple[str, int, int, str, int | None, str | None, str | None, str, str]) -> ModelVersion:
    name, version, created, status, promoted, stale, drift, meta, sha = row
    return ModelVersion(name, int(version), from_micros(created), status,
                        from_micros(promoted) if promoted is not None else None, stale,
                        orjson.loads(drift) if drift else None, orjson.loads(meta), sha)


def versions(persona: Persona, name: str | None = None) -> list[ModelVersion]:
    return [_version(row) for row in persona.recorder.model_rows(name)]


def get(persona: Persona, name: str, version: int | None = None) -> ModelVersion:
    """A version, or the promoted one."""
    found = versions(persona, name)
    if not found:
        raise ModelError(f"no model named {name}; train it with `persona train {name}`")
    if version is None:
        promoted = [v for v in found if v.status == "promoted"]
        if not promoted:
            raise ModelError(f"{name} has no promoted version (promote one with `persona models promote`)")
        return promoted[0]
    for v in found:
        if v.version == version:
            return v
    raise ModelError(f"{name} has no version {version}")


def load(persona: Persona, name: str, version: int | None = None) -> Loaded:
    """Open, hash-check and deserialise a version (the promoted one by default)."""
    info = get(persona, name, version)
    stored = persona.recorder.model_blob(info.name, info.version)
    if stored is None:
        raise ModelError(f"{name} has no version {info.version}")
    sha, sealed = stored
    data = sealer(persona).open(sealed, _aad(info.name, info.version, sha))
    if hashlib.sha256(data).hexdigest() != sha:
        raise TamperError(f"model {name} v{info.version}: the file's hash does not match the registry")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as e:  # skops raises many kinds on a malformed file
        raise TamperError(f"model {name} v{info.version}: not a readable skops file") from e
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise TamperError(f"model {name} v{info.version}: holds types persona does not load: {', '.join(refused)}")
    try:
        pipeline = sio.loads(data, trusted=untrusted)
    except Exception as e:
        raise TamperError(f"model {name} v{info.version}: the skops file does not load") from e
    return Loaded(info, pipeline)


def promote(persona: Persona, name: str, version: int, *, now: datetime | None = None) -> ModelVersion:
    get(persona, name, version)
    with persona.recorder.transaction():
        persona.recorder.promote_model(name, version, micros(now or datetime.now(UTC)))
    return get(persona, name, version)


def rollback(persona: Persona, name: str, *, now: datetime | None = None) -> ModelVersion:
    """Serve again the version that served before the current one. The current one is marked
    `rolled_back` and is never a rollback's target again: rolling back twice goes two back."""
    with persona.recorder.transaction():  # read under the write lock: a promotion meanwhile is seen
        current = get(persona, name)
        earlier = [v for v in versions(persona, name)
                   if v.version != current.version and v.promoted_at is not None and v.status != "rolled_back"
                   and current.promoted_at is not None and v.promoted_at <= current.promoted_at]
        if not earlier:
            raise ValidationError(f"{name}: no earlier promoted version to roll back to")
        target = max(earlier, key=lambda v: (v.promoted_at, v.version))
        persona.recorder.promote_model(name, target.version, micros(now or datetime.now(UTC)))
        persona.recorder.set_model_status(name, current.version, "rolled_back")
    return get(persona, name, target.version)
