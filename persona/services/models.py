"""Training, publishing and serving models: what `persona train`, `persona models promote|rollback`,
`persona rebuild` and the API's trainModel do.

scikit-learn and skops load with this module (seconds): import it when a command needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from persona.core import Persona
from persona.errors import ValidationError
from persona.models import registry, scoring
from persona.models.tasks import parse_horizon, parse_task
from persona.models.train import train, train_many
from persona.projector import rebuild
from persona.recommend import NAME as RECOMMENDER
from persona.recommend import serve as recommend_serve
from persona.recommend import train as recommend_train
from persona.services.store import event_count


class UnfittableError(ValidationError):
    """scikit-learn or SciPy refused the training rows (their own words are never repeated)."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(f"{name}: the model could not be fitted on these rows ({kind}); try other cutoffs or a"
                         " longer history")


@dataclass(frozen=True)
class Published:
    version: registry.ModelVersion
    predictions: int | None  # the profiles scored with it when it was promoted; None when it was not


def train_and_publish(persona: Persona, name: str, horizon: str | None = None, cutoffs: list[datetime] | None = None,
                      *, promote: bool | None = None, progress: Callable[[str], None] | None = None) -> Published:
    """Train the task NAME, store the version in the registry and, when it is promoted (`promote`,
    or by default when it beats its baselines: persona.models.registry.save), score every
    profile with it. Raises UnfittableError when the rows cannot be fitted. NAME may be the
    recommender (`recommendations`: its window is `horizon`, and it takes no cutoffs)."""
    if name == RECOMMENDER:
        return _train_recommender(persona, horizon, cutoffs, promote=promote, progress=progress)
    task = parse_task(name, horizon)
    try:
        trained = train(persona, task, cutoffs, progress=progress)
    except (ValueError, ArithmeticError) as e:  # scikit-learn or SciPy refusing these rows
        raise UnfittableError(name, type(e).__name__) from None
    version = registry.save(persona, trained, promote=promote)
    if version.status != "promoted":
        return Published(version, None)
    if progress is not None:
        progress(f"scoring every profile with {name} v{version.version}…")
    return Published(version, scoring.score_all(persona, name))


def train_and_publish_many(persona: Persona, wanted: Sequence[tuple[str, str | None]],
                           cutoffs: list[datetime] | None = None, *, promote: bool | None = None,
                           progress: Callable[[str], None] | None = None) -> dict[str, Published | ValidationError]:
    """train_and_publish for several tasks ((name, horizon) each) from one read of every history —
    one point-in-time set and one feature matrix per horizon — then one batch scoring of every
    profile by the versions promoted. A task that cannot be trained gets its error; the others go on."""
    tasks = [parse_task(name, horizon) for name, horizon in wanted]
    out: dict[str, Published | ValidationError] = {}
    promoted: dict[str, registry.ModelVersion] = {}
    for task_name, trained in train_many(persona, tasks, cutoffs, progress=progress).items():
        if isinstance(trained, ValidationError):
            out[task_name] = trained
            continue
        version = registry.save(persona, trained, promote=promote)
        out[task_name] = Published(version, None)
        if version.status == "promoted":
            promoted[task_name] = version
    if promoted:
        counts = scoring.score_many(persona, list(promoted), progress=progress)
        for task_name, version in promoted.items():
            out[task_name] = Published(version, counts[task_name])
    return out


def _train_recommender(persona: Persona, horizon: str | None, cutoffs: list[datetime] | None, *,
                       promote: bool | None, progress: Callable[[str], None] | None) -> Published:
    if cutoffs:
        raise ValidationError(f"{RECOMMENDER} holds out the last horizon; it takes no cutoffs")
    window = parse_horizon(horizon) if horizon else recommend_train.WINDOW
    trained = recommend_train.train(persona, window=window, progress=progress or (lambda _: None))
    version = recommend_serve.save(persona, trained, promote=promote)
    if version.status != "promoted":
        return Published(version, None)
    return Published(version, recommend_serve.score_everyone(persona, progress=progress))


def _publish(persona: Persona, name: str) -> int:
    """Every profile scored with the version of NAME now served."""
    if name == RECOMMENDER:
        return recommend_serve.score_everyone(persona)
    return scoring.score_all(persona, name)


def promote(persona: Persona, name: str, version: int) -> Published:
    """Serve VERSION of NAME, and score every profile with it."""
    promoted = registry.promote(persona, name, version)
    return Published(promoted, _publish(persona, name))


def rollback(persona: Persona, name: str) -> Published:
    """Serve again the version of NAME promoted before the current one, and score every profile with it."""
    served = registry.rollback(persona, name)
    return Published(served, _publish(persona, name))


@dataclass(frozen=True)
class Rebuilt:
    profiles: int  # rebuilt
    events: int  # in the log
    predictions: int  # of the promoted models, written again


def rebuild_and_rescore(persona: Persona, *, projection: str | None = None, workers: int | None = None,
                        progress: Callable[[int], None] | None = None) -> Rebuilt:
    """Rebuild the profile index and snapshots from the log (persona.projector.rebuild), then the
    predictions of every promoted model, which read them."""
    done = rebuild(persona, projection=projection, workers=workers, progress=progress)
    events = event_count(persona)
    return Rebuilt(done, events, scoring.rescore(persona))
