"""`persona destinations`: webhooks to the tools a team already uses (persona.destinations)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import click

from persona import destinations as hooks
from persona.audit import record_local
from persona.cli.common import emit_json, friendly, opened


def _listed(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def default_name(url: str) -> str:
    """A name from the URL's host: hooks.example.com -> hooks-example-com."""
    host = (urlsplit(url).hostname or "destination").lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", host).strip("-")[:64] or "destination"
    return name if name[0].isalpha() else ("d-" + name)[:64]


@click.group()
def destinations() -> None:
    """Webhook destinations: signed POSTs on segment entries and exits, changes of chosen fields,
    and erasure (add, status, deliver, retry, update, remove).

    Each POST carries the profile id and only the fields the destination was granted, signed with
    HMAC-SHA256 (header Persona-Signature: t=TIMESTAMP,v1=HEX over "TIMESTAMP.KEY.BODY"), KEY being
    the delivery's idempotency key (header Persona-Delivery), the same on every retry. Failed deliveries are
    retried with backoff (1 s to 1 h), then kept as dead letters. Erasing a person sends every
    destination that received them a signed deletion notice. `persona serve` delivers
    continuously; `persona destinations deliver` runs one pass (for cron).
    """


@destinations.command("add")
@click.argument("url")
@click.option("--name", help="What to call it [default: from the URL's host].")
@click.option("--segments", "segments", multiple=True, metavar="A,B",
              help="Live segments whose entries and exits it is sent (see `persona segments list`).")
@click.option("--fields", "fields", multiple=True, metavar="F,G",
              help="Fields it is granted, sent with each entry and change (names as in segment rules, e.g."
                   " monetary,lifecycle_stage,country). None by default: the profile id only.")
@click.option("--on-change", "on_change", multiple=True, metavar="F,G",
              help="Granted fields whose change it is sent, for people it has received.")
@click.option("--purpose", type=click.Choice(["analytics", "marketing", "personalization"]),
              help="The consent purpose it serves: no one without that consent is ever sent to it.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def destinations_add(ctx: click.Context, url: str, name: str | None, segments: tuple[str, ...],
                     fields: tuple[str, ...], on_change: tuple[str, ...], purpose: str | None, as_json: bool) -> None:
    """Add a destination for URL; its signing secret is printed once (the store keeps it sealed)."""
    try:
        hooks.check_url(url)
    except hooks.DestinationError as e:
        raise click.BadParameter(e.reason, param_hint="URL") from None
    chosen = name or default_name(url)
    with opened(ctx) as persona:
        made, secret = hooks.add_destination(persona, chosen, url, segments=_listed(segments),
                                             fields=_listed(fields), on_change=_listed(on_change),
                                             purpose=purpose or "", by="local:destinations")
        record_local(persona, "destinations", "destinations add", destination=made.name, segments=list(made.segments),
                     granted=list(made.fields), on_change=list(made.on_change), purpose=made.purpose or None)
    if as_json:
        emit_json({"name": made.name, "host": made.host, "segments": list(made.segments), "fields": list(made.fields),
                   "on_change": list(made.on_change), "purpose": made.purpose or None, "secret": secret})
        return
    click.echo(secret)
    click.echo(f"(destination {made.name!r}: its signing secret, not shown again; verify each request's"
               " Persona-Signature with it)", err=True)


@destinations.command("status")
@click.argument("name", required=False)
@click.option("--dead-letters", default=20, show_default=True, type=click.IntRange(0, 10_000),
              help="Dead letters to list per destination.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def destinations_status(ctx: click.Context, name: str | None, dead_letters: int, as_json: bool) -> None:
    """Every destination (or NAME): what it follows and was granted, its deliveries pending,
    delivered, skipped and dead, and its dead letters with their last outcome."""
    with opened(ctx) as persona:
        if name is not None:
            hooks.destination(persona, name)
        rows = [r for r in hooks.status(persona, dead_letters=dead_letters) if name is None or r["name"] == name]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no destinations; add one with `persona destinations add URL --segments NAME`")
    for r in rows:
        d = r["deliveries"]
        click.echo(f"{r['name']}  {r['host']}")
        click.echo(f"  segments: {', '.join(r['segments']) or '-'}  fields: {', '.join(r['fields']) or '-'}"
                   f"  on change: {', '.join(r['on_change']) or '-'}  purpose: {r['purpose'] or '-'}")
        click.echo(f"  deliveries: {d['pending']} pending, {d['delivered']} delivered, {d['skipped']} skipped,"
                   f" {d['dead']} dead; last delivered {r['last_delivered_at'] or 'never'}")
        for letter in r["dead_letters"]:
            click.echo(f"  dead letter {letter['delivery']}: {letter['kind']} {letter['profile_id']}"
                       f"{' ' + letter['segment'] if letter['segment'] else ''} after {letter['attempts']} attempts"
                       f" ({letter['outcome']})")


@destinations.command("deliver")
@click.pass_context
@friendly
def destinations_deliver(ctx: click.Context) -> None:
    """One delivery pass now: queue what changed since the last, send what is due (for cron, when
    no `persona serve` runs)."""
    with opened(ctx) as persona:
        done = hooks.deliver(persona)
        record_local(persona, "destinations", "destinations deliver", queued=done.queued,
                     delivered=done.delivered, failed=done.failed)
    click.echo(f"{done.queued} queued, {len(done.attempts)} sent: {done.delivered} delivered, {done.failed} failed")


@destinations.command("retry")
@click.argument("name")
@click.pass_context
@friendly
def destinations_retry(ctx: click.Context, name: str) -> None:
    """Send destination NAME's dead letters again, from their first attempt."""
    with opened(ctx) as persona:
        count = hooks.retry(persona, name)
        record_local(persona, "destinations", "destinations retry", destination=name, deliveries=count)
    click.echo(f"{count} dead letter{'' if count == 1 else 's'} of {name} queued again")


@destinations.command("update")
@click.argument("name")
@click.option("--url", help="Its new address (the people it received stay: their erasures still reach it).")
@click.option("--rotate-secret", is_flag=True, help="A new signing secret, printed once; the old one stops now.")
@click.pass_context
@friendly
def destinations_update(ctx: click.Context, name: str, url: str | None, rotate_secret: bool) -> None:
    """Give destination NAME a new URL or a new signing secret."""
    if url is None and not rotate_secret:
        raise click.UsageError("give --url, --rotate-secret or both")
    if url is not None:
        try:
            hooks.check_url(url)
        except hooks.DestinationError as e:
            raise click.BadParameter(e.reason, param_hint="--url") from None
    with opened(ctx) as persona:
        secret = hooks.update_destination(persona, name, url=url, rotate_secret=rotate_secret)
        record_local(persona, "destinations", "destinations update", destination=name, url=url is not None,
                     rotated=rotate_secret)
    if secret is not None:
        click.echo(secret)
    click.echo(f"updated destination {name}" + ("; its new signing secret above is not shown again"
                                               if secret else ""), err=secret is not None)


@destinations.command("remove")
@click.argument("name")
@click.option("--forget", is_flag=True, help="Remove it although it holds people's data: their erasures will"
                                               " no longer reach it.")
@click.pass_context
@friendly
def destinations_remove(ctx: click.Context, name: str, forget: bool) -> None:
    """Remove destination NAME, its deliveries and who it received. Refused while it holds people
    it was sent (their erasures could not reach it any more) unless --forget."""
    with opened(ctx) as persona:
        hooks.remove_destination(persona, name, forget=forget)
        record_local(persona, "destinations", "destinations remove", destination=name, forget=forget)
    click.echo(f"removed destination {name}")
