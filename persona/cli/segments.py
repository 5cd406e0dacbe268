"""`persona segments`: named rules whose members persona keeps current (persona.memberships)."""

from __future__ import annotations

import click

from persona import memberships
from persona.audit import record_local
from persona.cli.common import audited, emit_json, friendly, opened
from persona.rules import RuleError, compile_rule


@click.group()
def segments() -> None:
    """Live segments: named rules kept current on ingest (add, list, members, refresh, remove).

    A segment's rule is written in the language of docs/segments.md, e.g.
    "monetary > 1000 and recency_days < 30 and consent.marketing". Every ingest tests the people
    it touches, in the commit that indexes them; segments the clock moves (recency_days,
    lifecycle_stage, age) or that read RFM scores are swept by `persona serve` and by
    `persona segments refresh`.
    """


@segments.command("add")
@click.argument("name")
@click.argument("rule")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def segments_add(ctx: click.Context, name: str, rule: str, as_json: bool) -> None:
    """Define segment NAME by RULE and find its members now.

    NAME: a lower-case letter, then up to 63 lower-case letters, digits, '_' or '-'.
    """
    try:
        memberships.check_name(name)
        compile_rule(rule)  # refused before the store is opened, with where the rule goes wrong
    except RuleError as e:
        raise click.BadParameter(e.reason.removeprefix("rule: "), param_hint="RULE") from None
    except memberships.SegmentError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    with opened(ctx) as persona:
        made = memberships.add_segment(persona, name, rule, by="local:segments")
        size = memberships.sizes(persona)[name]
        record_local(persona, "segments", "segments add", segment=name, names=list(made.rule.names), members=size)
    if as_json:
        emit_json({"name": name, "rule": made.rule.text, "members": size})
        return
    click.echo(f"segment {name}: {size} member{'' if size == 1 else 's'} now"
               + ("; the clock moves it, swept by `persona serve` and `persona segments refresh`"
                  if made.clocked else ""))


@segments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def segments_list(ctx: click.Context, as_json: bool) -> None:
    """Every segment: its rule, members, and what keeps it current (events; the clock; RFM scoring)."""
    with opened(ctx) as persona:
        rows = memberships.describe(persona)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no segments; define one with `persona segments add NAME RULE`")
    for r in rows:
        kept = "events" if r["swept"] == "events" else f"events, {r['swept']}"
        click.echo(f"{r['name']:<24} {r['members']:>9,} members  ({kept})  {r['rule']}")


@segments.command("members")
@click.argument("name")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="At most this many members.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: profile id and since.")
@click.pass_context
@friendly
def segments_members(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """The profiles in segment NAME, each with when it entered (audited: it says who is in it)."""
    with opened(ctx) as persona:
        memberships.segment(persona, name)
        with audited(persona, "segments", operation="segments members", segment=name) as counts:
            found = memberships.members_of(persona, name, limit=limit)
            counts["profiles"] = len(found)
    for profile_id, since in found:
        if as_json:
            emit_json({"id": profile_id, "since": since.isoformat()})
        else:
            click.echo(f"{profile_id}  since {since.isoformat()}")


@segments.command("refresh")
@click.option("--segment", "names", multiple=True, metavar="NAME", help="Only this segment (repeatable).")
@click.pass_context
@friendly
def segments_refresh(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Test every person against the segments now and write who entered and left: what the
    clock and RFM scoring moved since the last sweep (for cron, when no `persona serve` runs)."""
    with opened(ctx) as persona:
        for name in names:
            memberships.segment(persona, name)
        swept = memberships.sweep(persona, only=names or None)
        record_local(persona, "segments", "segments refresh", segments=len(names) or "all", entered=swept.entered,
                     left=swept.left)
    click.echo(f"{swept.people:,} people tested: {swept.entered:,} entered, {swept.left:,} left")


@segments.command("remove")
@click.argument("name")
@click.pass_context
@friendly
def segments_remove(ctx: click.Context, name: str) -> None:
    """Remove segment NAME with its memberships and changes."""
    with opened(ctx) as persona:
        memberships.remove_segment(persona, name)
        record_local(persona, "segments", "segments remove", segment=name)
    click.echo(f"removed segment {name}")
