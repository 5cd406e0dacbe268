"""`persona train`, `persona models` and `persona predict`."""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from persona.audit import record_local
from persona.cli.common import (
    audited,
    emit_json,
    engine_options,
    friendly,
    on_engine,
    opened,
    parse_instant,
    profile_id_of,
    require_one,
    who_shape,
    with_who,
)
from persona.core import Persona
from persona.errors import PersonaError, ValidationError
from persona.models.tasks import FAMILIES, parse_task
from persona.services.people import persons

if TYPE_CHECKING:  # scikit-learn and skops load in seconds: only the model commands import them
    from persona.models import registry, scoring


def _say(message: str) -> None:
    click.echo(message, err=True)


def _train_one(persona: Persona, name: str, horizon: str | None, cutoffs: list[datetime] | None,
               promote: bool | None) -> registry.ModelVersion:
    from persona.services.models import train_and_publish  # heavy: loaded when the command runs

    parse_task(name, horizon)  # a name that is no task is refused before the audit entry opens
    shape: dict[str, Any] = {"model": name, "horizon": horizon is not None, "cutoffs": len(cutoffs or ())}
    with audited(persona, "train", **shape) as audit:  # written when done, with its outcome
        published = train_and_publish(persona, name, horizon, cutoffs, promote=promote, progress=_say)
        version = published.version
        audit.update(version=version.version, promoted=version.status == "promoted")
        if published.predictions is not None:
            audit["predictions"] = published.predictions
    return version


def _model(name: str) -> str:
    """A model's name as the audit log may repeat it: a task's name, or "other"."""
    if name == RECOMMENDER:
        return name
    try:
        parse_task(name)
    except ValidationError:
        return "other"
    return name


def _describe(v: registry.ModelVersion) -> str:
    m = v.meta
    lift = m["lift"]
    lines = [f"{v.name} v{v.version} [{v.status}{', stale' if v.stale else ''}] {m['chosen']['family']}"
             f" — trained on {m['rows']['train']:,} rows, tested on {m['rows']['test']:,} held-out rows"]
    def shown(metrics: dict[str, Any]) -> str:  # a metric that cannot be computed (AUC of one class) is null
        return ", ".join(f"{k} {'n/a' if val is None else f'{val:.4f}'}" for k, val in metrics.items() if k != "rows")

    lines.append(f"  model: {shown(m['metrics'])}")
    for name, b in m["baselines"].items():
        lines.append(f"  {name}: {shown(b)}")
    lines.append(f"  {lift['metric']}: {lift['improvement']:+.1%} against the best baseline")
    lines += [f"  {note}" for note in m.get("notes", [])]  # what serves after the backtest, among others
    why = v.why()
    if why:
        lines.append(f"  {why}")
    if v.drift:
        lines.append(f"  drift: max PSI {v.drift['psi_max']:.3f} (measured {v.drift['measured_at'][:19]})"
                     + (f" — stale: {'; '.join(v.drift['reasons'])}" if v.drift["stale"] else ""))
    elif v.stale:
        lines.append(f"  stale: {v.stale}")
    return "\n".join(lines)


DEFAULT_TASKS = ("purchases_next_91d", "churn_91d", "clv_91d", "days_to_next_purchase", "next_category")


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--horizon", metavar="SPAN", help="Label window, e.g. 91d or 13w (the windowed names carry their own).")
@click.option("--cutoff", "cutoffs", multiple=True, metavar="T",
              help="A cutoff instant (repeat; at least three, two of them a horizon or more before the last, which "
                   "is the test set). Default: monthly cutoffs, as many as the data allows up to 12, ending a "
                   "horizon before the data does.")
@click.option("--all", "every", is_flag=True,
              help=f"Retrain every model that has a promoted version; with none yet, train the {len(DEFAULT_TASKS)} "
                   f"tasks ({', '.join(DEFAULT_TASKS)}).")
@click.option("--if-stale", is_flag=True, help="With --all: only those whose inputs drifted, that are too old, or "
                                               "that were trained on someone since erased.")
@click.option("--promote/--no-promote", default=None,
              help="Serve the new version at once, or not (default: when it beats its best baseline on the "
                   "main metric and is no worse on the headline one: R² ≥ 0, accuracy, ROC-AUC).")
@click.option("--json", "as_json", is_flag=True, help="Print the new version(s) as JSON.")
@engine_options
@click.pass_context
@friendly
def train(ctx: click.Context, names: tuple[str, ...], horizon: str | None, cutoffs: tuple[str, ...], every: bool,
          if_stale: bool, promote: bool | None, as_json: bool, engine: str, scheduler: str | None) -> None:
    """Train each NAME on point-in-time features and store the versions in the registry.

    NAME is one of: purchases_next_{H}d, churn_{H}d, clv_{H}d, days_to_next_purchase,
    next_category (e.g. purchases_next_91d). Features are each person's projections as of
    each cutoff; labels come only from the horizon after it. The report shows held-out
    metrics beside naive baselines and BG/NBD. Several names (or --all) share one read of
    every history, and the tasks of one horizon one point-in-time set.

    NAME may also be `recommendations`: the recommender, judged on the last --horizon held out
    (default 28d) beside popularity (docs/recommendations.md).

    With --engine dask every history is read on a Dask cluster's workers, a part of the people
    each, and so are the rows the promoted versions then score; fitting runs here (docs/scale.md).
    """
    if every == bool(names):
        raise click.UsageError("give one or more model NAMEs, or --all")
    if if_stale and not every:
        raise click.UsageError("--if-stale goes with --all")
    from persona.models import drift, registry, scoring  # heavy: loaded when the command runs

    when = [parse_instant(c, "--cutoff") for c in cutoffs] or None
    recommender = RECOMMENDER in names
    if recommender and cutoffs:
        raise click.UsageError(f"{RECOMMENDER} holds out the last --horizon; it takes no --cutoff")
    names = tuple(n for n in names if n != RECOMMENDER)
    with opened(ctx) as persona, on_engine(engine, scheduler):
        wanted: list[tuple[str, str | None]] = [(n, horizon) for n in names]
        window = horizon
        if every:
            recommender, window = _retrain_recommender(persona, if_stale)
            promoted = scoring.promoted_names(persona)
            if not promoted and if_stale:
                _say("no promoted models to retrain")
            elif not promoted:
                wanted = [(n, horizon) for n in DEFAULT_TASKS]
            for model in promoted:
                current = registry.get(persona, model)
                if if_stale:
                    measured = drift.measure(persona, current)
                    if not measured["stale"]:
                        _say(f"{model} v{current.version}: current (max PSI {measured['psi_max']:.3f}, "
                             f"{measured['age_days']:.0f} days old)")
                        continue
                    _say(f"{model} v{current.version}: stale — {'; '.join(measured['reasons'])}")
                wanted.append((model, f"{round(current.meta['task']['horizon_days'])}d"))
        for model, span in wanted:  # a name that is no task is refused before anything is read
            parse_task(model, span)
        done = _train(persona, wanted, when, promote) if wanted else []  # type: ignore[arg-type]
        if recommender:
            done.append(_train_recommender(persona, window, promote))
    if as_json:
        emit_json([v.summary() for v in done])
        return
    for v in done:
        click.echo(_describe(v))


RECOMMENDER = "recommendations"


def _retrain_recommender(persona: Persona, if_stale: bool) -> tuple[bool, str | None]:
    """With --all: whether to retrain the recommender, and over the window it was trained with
    (only if a version serves; with --if-stale, only if it was trained on someone since erased)."""
    from persona.models import registry  # heavy: loaded when the command runs

    serving = [v for v in registry.versions(persona, RECOMMENDER) if v.status == "promoted"]
    if not serving:
        return False, None
    if if_stale and not serving[0].stale:
        _say(f"{RECOMMENDER} v{serving[0].version}: current")
        return False, None
    return True, f"{round(serving[0].meta['task']['horizon_days'])}d"


def _train_recommender(persona: Persona, horizon: str | None, promote: bool | None) -> registry.ModelVersion:
    from persona.services.models import train_and_publish  # heavy: loaded when the command runs

    with audited(persona, "train", model=RECOMMENDER, horizon=horizon is not None) as audit:
        published = train_and_publish(persona, RECOMMENDER, horizon, promote=promote, progress=_say)
        audit.update(version=published.version.version, promoted=published.version.status == "promoted")
        if published.predictions is not None:  # the read model follows the version that serves
            audit["predictions"] = published.predictions
    return published.version


def _train(persona: Persona, wanted: list[tuple[str, str | None]], cutoffs: list[datetime] | None,
           promote: bool | None) -> list[registry.ModelVersion]:
    """One task as before; several from one read (persona.services.models.train_and_publish_many),
    each with its own audit entry. A task that cannot be trained is reported, the others are kept,
    and the command then fails naming it."""
    if len(wanted) == 1:
        return [_train_one(persona, wanted[0][0], wanted[0][1], cutoffs, promote)]
    from persona.services.models import train_and_publish_many  # heavy: loaded when the command runs

    results = train_and_publish_many(persona, wanted, cutoffs, promote=promote, progress=_say)
    done, failed = [], []
    for model, span in wanted:
        result = results[parse_task(model, span).name]
        shape: dict[str, Any] = {"model": _model(model), "horizon": span is not None, "cutoffs": len(cutoffs or ())}
        if isinstance(result, PersonaError):
            record_local(persona, "train", "train", outcome="FAILED", **shape)
            said = str(result)
            _say(f"error: {said if said.startswith(f'{model}:') else f'{model}: {said}'}")
            failed.append(model)
            continue
        version = result.version
        shape.update(version=version.version, promoted=version.status == "promoted")
        if result.predictions is not None:
            shape["predictions"] = result.predictions
        record_local(persona, "train", "train", **shape)
        done.append(version)
    if failed:
        for v in done:
            click.echo(_describe(v))
        raise ValidationError(f"{len(failed)} of {len(wanted)} could not be trained: {', '.join(failed)}")
    return done


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (metrics, baselines, drift, windows).")
@click.pass_context
@friendly
def models(ctx: click.Context, as_json: bool) -> None:
    """The model registry: every version, its held-out metrics beside its baselines, and drift."""
    if ctx.invoked_subcommand is not None:
        return
    with opened(ctx) as persona:
        from persona.models import registry  # heavy: loaded when the command runs

        found = registry.versions(persona)
    if as_json:
        emit_json([v.summary() for v in found])
        return
    if not found:
        click.echo("no models yet; train one, e.g. `persona train purchases_next_91d` (tasks: "
                   + ", ".join(FAMILIES) + ")")
    for v in found:
        click.echo(_describe(v))


@models.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
@friendly
def models_promote(ctx: click.Context, name: str, version: int) -> None:
    """Serve VERSION of NAME (and rescore every profile with it)."""
    with opened(ctx) as persona, audited(persona, "models", operation="models promote", model=_model(name)) as audit:
        from persona.services.models import promote  # heavy: loaded when the command runs

        published = promote(persona, name, version)
        v = published.version
        audit.update(version=v.version, predictions=published.predictions)
    click.echo(f"{name} v{v.version} promoted")


@models.command("rollback")
@click.argument("name")
@click.pass_context
@friendly
def models_rollback(ctx: click.Context, name: str) -> None:
    """Serve again the version of NAME promoted before the current one."""
    with opened(ctx) as persona, audited(persona, "models", operation="models rollback", model=_model(name)) as audit:
        from persona.services.models import rollback  # heavy: loaded when the command runs

        published = rollback(persona, name)
        v = published.version
        audit.update(version=v.version, predictions=published.predictions)
    click.echo(f"{name} rolled back to v{v.version}")


@click.command()
@click.argument("name")
@click.option("--as-of", "as_of", metavar="T", help="Score as of this instant (features replayed to it).")
@click.option("--subjects", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Only these people: one NAMESPACE:VALUE a line, echoed back as given (never stored).")
@click.option("--version", "version", type=int, help="A version other than the promoted one.")
@click.option("--format", "form", type=click.Choice(["csv", "jsonl"]), default="jsonl", show_default=True,
              help="jsonl: one JSON object a line (contributions as a list); csv: one row each, contributions"
                   " as feature=effect pairs.")
@engine_options
@click.pass_context
@friendly
def predict(ctx: click.Context, name: str, as_of: str | None, subjects: Path | None, version: int | None,
            form: str, engine: str, scheduler: str | None) -> None:
    """Score every profile (or the --subjects) with NAME; one prediction a line on standard output,
    with the features that moved it most.

    With --engine dask every history is read on a Dask cluster's workers, a part of the people
    each; scoring runs here (docs/scale.md)."""
    from persona.models import scoring  # heavy: loaded when the command runs

    if subjects is not None and (engine != "local" or scheduler is not None):
        raise click.UsageError("--subjects scores a few people here: --engine is for scoring every profile")
    moment = parse_instant(as_of, "--as-of")
    with opened(ctx) as persona, on_engine(engine, scheduler):
        if subjects is None:
            with audited(persona, "predict", model=_model(name), asOf=moment is not None) as audit:
                found = scoring.predict(persona, name, as_of=moment, version=version)
                audit["predictions"] = len(found)
            rows: list[dict[str, Any]] = [{"profile_id": p.person, **_flat(p)} for p in found]
        else:
            rows = _for_subjects(persona, name, subjects, moment, version)
    _write(rows, form)


def _flat(p: scoring.Prediction) -> dict[str, Any]:
    return {"model": p.model, "version": p.version, "value": p.value, "label": p.label,
            "probabilities": p.probabilities, "contributions": p.contributions, "as_of": p.as_of.isoformat()}


def _for_subjects(persona: Persona, name: str, path: Path, moment: datetime | None, version: int | None
                  ) -> list[dict[str, Any]]:
    from persona.models import scoring  # heavy: loaded when the command runs

    wanted: list[tuple[str, str | None, str | None]] = []  # (as given, profile id, why none)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        given = line.strip()
        if not given:
            continue
        namespace, sep, value = given.partition(":")
        if not sep or not namespace or not value:
            raise ValidationError(f"--subjects line {number}: use NAMESPACE:VALUE")
        try:
            pid = persona.log.profile_for(namespace.strip(), value)
        except ValidationError as e:
            wanted.append((given, None, e.reason))
            continue
        wanted.append((given, pid, None if pid else "no profile is linked to that identifier"))
    ids = sorted({pid for _, pid, _ in wanted if pid})
    shape: dict[str, Any] = {"model": _model(name), "asOf": moment is not None}
    try:
        found = {p.person: p for p in scoring.predict(persona, name, as_of=moment, profile_ids=ids,
                                                      version=version)} if ids else {}
    except PersonaError:
        record_local(persona, "predict", "predict", outcome="FAILED", subjects=len(ids), **shape)
        raise
    record_local(persona, "predict", "predict", ids, **shape)  # once it has run: each person scored
    people = persons(persona, ids)
    by_stream = {m: p for p in found.values() for m in p.members}  # as of a past instant, a subject's
    out = []                                                       # stream may be a person of its own
    for given, pid, why in wanted:
        person = people[pid].id if pid else None
        p = by_stream.get(pid) if pid else None
        if p is None:
            out.append({"subject": given, "profile_id": person, "error": why or "nothing had happened by then"})
        else:
            out.append({"subject": given, "profile_id": p.person, **_flat(p)})
    return out


def _write(rows: list[dict[str, Any]], form: str) -> None:
    out = sys.stdout
    if form == "jsonl":
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return
    columns = ["subject", "profile_id", "model", "version", "value", "label", "probabilities", "contributions",
               "as_of", "error"]
    if not any("subject" in row for row in rows):
        columns.remove("subject")
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            if c == "contributions" and value is not None:
                value = ";".join(f"{x['feature']}={x['effect']:+g}" for x in value)
            elif c == "probabilities" and value is not None:
                value = ";".join(f"{label}={p:g}" for label, p in value.items())
            cells.append("" if value is None else value)
        writer.writerow(cells)


@click.command()
@with_who
@click.option("--first", default=10, show_default=True, type=click.IntRange(1, 100), help="How many items.")
@click.option("--category", help="Only items of this category.")
@click.option("--include-purchased", is_flag=True, help="Items the person already bought may come back.")
@click.option("--as-of", "as_of", metavar="T", help="As of this instant (their interactions up to it).")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@click.pass_context
@friendly
def recommend(ctx: click.Context, subject: str | None, profile: str | None, first: int, category: str | None,
              include_purchased: bool, as_of: str | None, as_json: bool) -> None:
    """What a person is likely to want next, best first, each with why: the promoted
    recommendations model (`persona train recommendations`) over their own interactions. With no
    history yet, the items popular with people who like the category they browse; without
    personalization consent, the items popular overall."""
    from persona.recommend import serve  # heavy: loaded when the command runs

    require_one(subject, profile)
    moment = parse_instant(as_of, "--as-of")
    with opened(ctx) as persona:
        found = serve.recommend(persona, profile_id_of(persona, subject, profile), first=first, category=category,
                                exclude_purchased=not include_purchased, as_of=moment)
        record_local(persona, "recommend", "recommend", [found.profile_id], fields="recommendations",
                     items=len(found.items), asOf=moment is not None, **who_shape(subject))
    if as_json:
        emit_json({"profile_id": found.profile_id, **serve.summary(found)})
        return
    click.echo(f"{found.profile_id}: {found.basis} ({found.model})")
    for n, item in enumerate(found.items, start=1):
        click.echo(f"{n:>3}. {item.sku}" + (f" [{item.category}]" if item.category else "") + f" — {item.because}")
