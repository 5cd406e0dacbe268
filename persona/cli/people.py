"""Reading and linking people: `persona profile`, `history`, `link`, `unlink`, `profiles`, `stats`."""

from __future__ import annotations

from typing import Any

import click
import orjson

from persona.audit import filter_shape, named, namespace_of, record_local
from persona.cli.common import (
    emit_json,
    friendly,
    opened,
    parse_instant,
    parse_subject,
    profile_id_of,
    require_one,
    who_shape,
    with_who,
)
from persona.events import local
from persona.population import (
    GROUPABLE,
    LABELS,
    RANGEABLE,
    ProfileFilter,
    indexed,
    list_profiles,
    population,
)
from persona.profiles import profile_view, read_person
from persona.rules import RuleError, compile_rule
from persona.services.people import link_identities, unlink_identities
from persona.services.people import person as person_of


@click.command()
@with_who
@click.option("--as-of", "as_of", metavar="TIME",
              help="Show the profile as it was at TIME (events that had happened by then), ISO 8601.")
@click.option("--known-at", "known_at", metavar="TIME",
              help="Believe only what had been recorded by TIME: what did we know then?")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def profile(ctx: click.Context, subject: str | None, profile: str | None, as_of: str | None, known_at: str | None,
            as_json: bool) -> None:
    """Show a profile: id, version, identities (hashed) and attributes with their provenance.

    Replayed from the person's log; with --as-of and --known-at, as it was at an instant.
    """
    require_one(subject, profile)
    when, known = parse_instant(as_of, "--as-of"), parse_instant(known_at, "--known-at")
    with opened(ctx) as persona:
        doc = profile_view(persona, profile_id_of(persona, subject, profile), as_of=when, known_at=known)
        record_local(persona, "profile", "profile", [doc["id"]], fields="attributes,features,identities",
                     asOf=when is not None, knownAt=known is not None, **who_shape(subject))
    if as_json:
        emit_json(doc)
        return
    click.echo(f"profile {doc['id']}: version {doc['version']}, {doc['events']} events"
               + (f" as of {doc['as_of']}" if doc["as_of"] else "")
               + (f", known at {doc['known_at']}" if doc["known_at"] else ""))
    if doc["merged"]:
        click.echo(f"  merged with {', '.join(doc['merged'])} (linked identifiers; `persona unlink` undoes it)")
    for identity in doc["identities"]:
        click.echo(f"  identity {identity['namespace']}:{identity['hash']}…")
    for name, attribute in doc["attributes"].items():
        if name == "consent":
            granted = ", ".join(f"{p}={v['granted']}" for p, v in attribute.items())
            click.echo(f"  consent: {granted}")
        else:
            sources = ", ".join(sorted({f"{p['source']} by {p['writer']}" + ("" if p["vouched"] else " (unvouched)")
                                        for p in attribute["provenance"]}))
            click.echo(f"  {name}: {attribute['value']}  ({attribute['strategy']}; {sources})")
    f = doc["features"]
    shown = ("lifecycle_stage", "frequency", "monetary", "aov", "recency_days", "page_views", "sessions",
             "top_categories", "conversion_rate")
    click.echo("  features: " + ", ".join(f"{k}={f[k]}" for k in shown if f.get(k) not in (None, [], {})))


@click.command()
@with_who
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@friendly
def history(ctx: click.Context, subject: str | None, profile: str | None, as_json: bool) -> None:
    """Print a person's events, opened, in the order they were recorded (a merged person's
    from every profile merged into them)."""
    require_one(subject, profile)
    with opened(ctx) as persona:
        person = person_of(persona, profile_id_of(persona, subject, profile))
        record_local(persona, "history", "history", [person.id], **who_shape(subject))
        for event in read_person(persona, person):
            if as_json:
                click.echo(orjson.dumps(event.as_dict()).decode())
            else:
                where = f"{event.profile_id} " if person.merged else ""
                click.echo(f"{where}{event.version:>5} {event.occurred_at} {event.source:<8} {event.type:<18} "
                           f"{orjson.dumps(event.data).decode()}")


@click.command()
@click.argument("first", metavar="NS:VALUE")
@click.argument("second", metavar="NS:VALUE")
@click.pass_context
@friendly
def link(ctx: click.Context, first: str, second: str) -> None:
    """Declare two identifiers one person. If they belong to two profiles, the profiles are
    merged: each keeps its own events and key, and the person folds them all. One of the
    two must be known already; a new one gets a profile of its own, merged the same way, where
    what arrives for it from then on goes. `persona unlink` undoes the merge."""
    with opened(ctx) as persona:
        linked = link_identities(persona, parse_subject(first), parse_subject(second), local("link"))
        record_local(persona, "link", "link", [linked.person], namespaces=_namespaces(first, second),
                     merged=linked.merged)
    if linked.created:
        click.echo(f"merged into profile {linked.person}, the new identifier with a profile of its own"
                   " (`persona unlink` undoes it)")
    elif linked.merged:
        click.echo(f"merged into profile {linked.person} (`persona unlink` undoes it)")
    else:
        click.echo(f"already one person: profile {linked.person} (no merge made)")


@click.command()
@click.argument("first", metavar="NS:VALUE")
@click.argument("second", metavar="NS:VALUE")
@click.pass_context
@friendly
def unlink(ctx: click.Context, first: str, second: str) -> None:
    """Undo the merge that joined two identifiers' profiles (a wrong link: a shared phone, a
    mistyped e-mail). Both people come back with their own histories, and a later record
    linking the two does not merge them again (only `persona link` does)."""
    with opened(ctx) as persona:
        unlinked = unlink_identities(persona, parse_subject(first), parse_subject(second), local("unlink"))
        record_local(persona, "unlink", "unlink", unlinked.people, namespaces=_namespaces(first, second),
                     mergesUndone=unlinked.merges_undone)
    click.echo(f"separated: profiles {unlinked.people[0]} and {unlinked.people[1]}"
               f" ({unlinked.merges_undone} merge(s) undone)")


def _namespaces(*subjects: str) -> list[str]:
    return sorted({namespace_of(subject.partition(":")[0]) for subject in subjects})


@click.command("profiles")
@click.option("--stage", "stages", multiple=True, type=click.Choice(["new", "active", "at_risk", "churned"]),
              help="Only profiles in this lifecycle stage (repeatable).")
@click.option("--min", "minimums", multiple=True, metavar="FEATURE=N", help="A feature at least N (repeatable).")
@click.option("--max", "maximums", multiple=True, metavar="FEATURE=N", help="A feature at most N (repeatable).")
@click.option("--where", "rule", metavar="RULE", help='A segment rule (docs/segments.md), e.g. "monetary > 1000 and'
                                                          ' consent.marketing".')
@click.option("--first", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Page size.")
@click.option("--after", metavar="ID", help="Continue after this profile id (the previous page's last).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@friendly
def profiles_list(ctx: click.Context, stages: tuple[str, ...], minimums: tuple[str, ...], maximums: tuple[str, ...],
                  rule: str | None, first: int, after: str | None, as_json: bool) -> None:
    """List profiles from the profile index, filtered by lifecycle stage, feature ranges and a rule."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for spec, side in [(m, 0) for m in minimums] + [(m, 1) for m in maximums]:
        name, sep, number = spec.partition("=")
        try:
            value = float(number)
        except ValueError:
            raise click.BadParameter(f"use FEATURE=N, not {spec!r}", param_hint="--min/--max") from None
        if not sep or not name:
            raise click.BadParameter(f"use FEATURE=N, not {spec!r}", param_hint="--min/--max")
        name = known_name(name, RANGEABLE, "--min/--max", "a numeric feature")
        lo, hi = ranges.get(name, (None, None))
        ranges[name] = (value, hi) if side == 0 else (lo, value)
    try:
        compiled = None if rule is None else compile_rule(rule)
    except RuleError as e:
        raise click.BadParameter(e.reason.removeprefix("rule: "), param_hint="--where") from None
    where = ProfileFilter(lifecycle_stages=frozenset(stages), ranges=ranges, rule=compiled)
    with opened(ctx) as persona:
        page = list_profiles(persona, where, first=first, after=after)
        more = 0
        if page and len(page) == first and not as_json:  # counted for a person reading, who pages by hand
            more = sum(1 for p in indexed(persona, after=page[-1].id, rfm_scores=False) if where.accepts(p))
        record_local(persona, "profiles", "profiles", [p.id for p in page], fields="attributes,features",
                     filter=filter_shape(where))
    for p in page:
        f = p.features
        if as_json:
            click.echo(orjson.dumps({"id": p.id, "version": p.version, "attributes": p.attributes,
                                     "features": f, "rfm": p.rfm, "segments": p.segments}).decode())
        else:
            rfm = "".join(str(p.rfm[k]) for k in "rfm") if p.rfm else "-"
            click.echo(f"{p.id}  v{p.version:<5} {f.get('lifecycle_stage') or '-':<8} orders {f.get('frequency', 0):<4}"
                       f" spent {f.get('monetary', 0):>10.2f}  rfm {rfm}")
    if as_json:
        return
    filtered = bool(stages or minimums or maximums or rule)
    if not page:
        click.echo("no profiles " + ("match" if filtered else "in the index" + (" after that id" if after else
                   " (ingest events first, or `persona rebuild` if they are in the log)")), err=True)
    elif more:
        click.echo(f"{more} more; the next page: persona profiles --after {page[-1].id}"
                   + (" with the same filters" if filtered else ""), err=True)


@click.command("stats")
@click.option("--by", "group_by", multiple=True, default=["lifecycle_stage"], show_default=True,
              help="Group by this attribute or feature, or rfm_segment (champions, loyal, ...) (repeatable).")
@click.option("--metric", "metrics", multiple=True, default=["frequency", "monetary"], show_default=True,
              help="Average this numeric feature per group (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def stats(ctx: click.Context, group_by: tuple[str, ...], metrics: tuple[str, ...], as_json: bool) -> None:
    """Population aggregates from the profile index: counts and means per group.

    A list-valued name (languages, top_categories) groups the profiles whose lists are equal."""
    group_by = tuple(known_name(g, GROUPABLE, "--by", "an attribute or feature") for g in group_by)
    metrics = tuple(known_name(m, RANGEABLE, "--metric", "a numeric feature") for m in metrics)
    with opened(ctx) as persona:
        rows = population(persona, group_by=tuple(group_by), metrics=tuple(metrics))
        record_local(persona, "stats", "stats", groupBy=[named(g) for g in group_by],
                     metrics=[named(m) for m in metrics])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no profiles in the index (ingest events first, or `persona rebuild` if they are in the log)",
                   err=True)
    for row in rows:
        click.echo("  ".join(f"{k}={_shown(v)}" for k, v in row.items()))


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def known_name(name: str, valid: frozenset[str], option: str, what: str) -> str:
    """A feature or attribute name as typed, or as `persona profiles` labels it; else a usage
    error listing the valid ones (the name typed is the user's own, safe to repeat)."""
    name = LABELS.get(name, name)
    if name not in valid:
        labels = [label for label, meant in LABELS.items() if meant in valid]
        raise click.BadParameter(f"{name!r} is not {what} persona knows; use one of "
                                 + ", ".join(sorted(valid) + labels), param_hint=option)
    return name
