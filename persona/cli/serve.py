"""`persona serve`, `persona tokens …` and `persona audit`: the API server's commands."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import orjson

from persona.audit import entries, record_local
from persona.cli.common import emit_json, friendly, opened, settings_of
from persona.core import Persona
from persona.events import from_micros
from persona.settings import cors_origins
from persona.tokens import check_bindings, create_token, list_tokens, parse_names, parse_scopes, revoke_token

GRACEFUL_SHUTDOWN_S = 10  # on SIGTERM, open requests and subscriptions get this long before they are cancelled
WS_MAX_BYTES = 64 * 1024  # a websocket message (a subscription document): HTTP allows 20 KB of query text


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each keeps its own caches and rate-limit counters).")
@click.option("--dev", is_flag=True, help="Serve GraphiQL at /graphql for browsers.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="Server log verbosity (request lines are never logged).")
@click.option("--proxy-headers", is_flag=True,
              help="Take the client's address from X-Forwarded-For (and the scheme from X-Forwarded-Proto) when"
                   " the connection comes from an address of --forwarded-allow-ips: only behind a reverse proxy"
                   " that sets them. Off by default: the address is the connection's own.")
@click.option("--forwarded-allow-ips", metavar="ADDRESSES",
              help="With --proxy-headers: the proxies trusted to set those headers (comma-separated addresses"
                   " or networks, e.g. 10.0.0.5,10.1.0.0/16).")
@click.option("--cors-origin", "cors_origin", multiple=True, metavar="ORIGIN",
              help="A browser origin allowed to call the API, e.g. https://shop.example (repeatable; adds to"
                   " PERSONA_CORS_ORIGINS). None by default: pages of other origins cannot call it.")
@click.option("--segment-sweep", "segment_sweep", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="How often live segments the clock moves (rules on recency_days, lifecycle_stage, age) are swept"
                   " for who entered or left with no event [default: PERSONA_SEGMENT_SWEEP, or 60].")
@click.option("--answer-cache-mb", "answer_cache_mb", type=click.IntRange(min=0), metavar="MB",
              help="Memory each worker gives to profile answers kept for the next identical read (0: none)"
                   " [default: PERSONA_ANSWER_CACHE_MB, or 64].")
@click.option("--answer-cache-seconds", "answer_cache_s", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="How long a kept answer lives: the most its clock-moved values (recency, lifecycle) can lag"
                   " [default: PERSONA_ANSWER_CACHE_S, or 10].")
@click.pass_context
@friendly
def serve(ctx: click.Context, host: str, port: int, workers: int, dev: bool, log_level: str, proxy_headers: bool,
          forwarded_allow_ips: str | None, cors_origin: tuple[str, ...], segment_sweep: float | None,
          answer_cache_mb: int | None, answer_cache_s: float | None) -> None:
    """Serve the GraphQL API at /graphql (HTTP and graphql-transport-ws), the web console at
    /console (sign in with a token; docs/console.md) and /healthz.

    Every request needs a bearer token (see `persona tokens create`). Request lines are
    not logged: a GET query string may carry identifiers. Forwarded headers are ignored
    unless --proxy-headers and --forwarded-allow-ips name the proxy that sets them: a
    client could otherwise choose the address its limits are counted under. A profile query's
    answer is kept for the next identical read until the profile changes (at most
    --answer-cache-seconds), and carries an ETag: If-None-Match is answered 304. On SIGTERM or
    Ctrl-C, requests and subscriptions still open get 10 seconds, then are cancelled; the
    audit is written before the server exits.
    """
    import uvicorn  # heavy: loaded when the command runs

    from persona.api.app import create_app, log_config  # heavy: loaded when the command runs
    from persona.api.context import ServerOptions  # heavy: loaded when the command runs
    settings = settings_of(ctx)
    settings = dataclasses.replace(settings, cors_origins=cors_origins([*settings.cors_origins, *cors_origin]),
                                   segment_sweep_s=segment_sweep or settings.segment_sweep_s,
                                   answer_cache_mb=settings.answer_cache_mb if answer_cache_mb is None
                                   else answer_cache_mb,
                                   answer_cache_s=answer_cache_s or settings.answer_cache_s)
    proxies = uvicorn_proxies(proxy_headers, forwarded_allow_ips)
    with Persona.open(settings) as persona:  # a clear error now, not one per worker later
        active = [t for t in list_tokens(persona) if t.revoked_at is None]
    if not active:
        click.echo("note: no API tokens yet; create one with `persona tokens create --name NAME --scopes …`",
                   err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"console: http://{shown}:{port}/console (sign in with an API token)", err=True)
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": False,
                              "loop": "uvloop", "http": "httptools", "ws": "websockets-sansio", "server_header": False,
                              "ws_max_size": WS_MAX_BYTES, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
                              "log_config": log_config(), **proxies}
    if workers == 1:
        uvicorn.run(create_app(settings, ServerOptions(dev=dev, cors_origins=settings.cors_origins)), **common)
        return
    dataclasses.replace(settings, api_dev=dev).export()
    uvicorn.run("persona.api.app:app_from_env", factory=True, workers=workers, **common)


def uvicorn_proxies(proxy_headers: bool, forwarded_allow_ips: str | None) -> dict[str, Any]:
    """uvicorn's settings for forwarded headers: trusted only when both options name a proxy
    (uvicorn by default trusts them from 127.0.0.1, or from FORWARDED_ALLOW_IPS)."""
    if proxy_headers != (forwarded_allow_ips is not None):
        raise click.UsageError("--proxy-headers and --forwarded-allow-ips go together: trust forwarded headers"
                               " only from the proxies named")
    if not proxy_headers:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    addresses = [part.strip() for part in (forwarded_allow_ips or "").split(",") if part.strip()]
    if not addresses:
        raise click.BadParameter("name at least one address or network", param_hint="--forwarded-allow-ips")
    return {"proxy_headers": True, "forwarded_allow_ips": addresses}


@click.group()
def tokens() -> None:
    """API bearer tokens: create (shown once), list, revoke."""


@tokens.command("create")
@click.option("--name", required=True, help="Who or what holds it; appears in the audit log.")
@click.option("--scopes", "scopes", multiple=True, required=True, metavar="SCOPE[,SCOPE…]",
              help="profiles:read history:read predictions:read insights:read insights:exact events:write"
                   " erasure:write models:write segments:read segments:write tokens:mint")
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Requests per second allowed (per server worker), with bursts of twice that.")
@click.option("--epsilon", "epsilon", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Differential-privacy budget (ε) for private insights (each answer spends 0.01 to 2).")
@click.option("--delta", "delta", default=1e-9, show_default=True,
              type=click.FloatRange(min=0, max=1, max_open=True),
              help="Differential-privacy budget (δ) for private insights (each answer spends at most 1e-12).")
@click.option("--sources", "sources", multiple=True, metavar="SOURCE[,SOURCE…]",
              help="With events:write: the only sources its events may name (e.g. web,app). Its attribute claims"
                   " then take these sources' rank in fusion; an unbound token's rank below every source.")
@click.option("--types", "types", multiple=True, metavar="TYPE[,TYPE…]",
              help="With events:write: the only event types it may write (e.g. page_viewed,app_session)."
                   " profile_updated, consent_changed and identity_linked (and linkIdentities/unlinkIdentities)"
                   " need naming here.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def tokens_create(ctx: click.Context, name: str, scopes: tuple[str, ...], rate: float, epsilon: float,
                  delta: float, sources: tuple[str, ...], types: tuple[str, ...], as_json: bool) -> None:
    """Create a token. It is printed once; only a keyed hash of it is stored.

    A writing token may be bound to sources and event types; every event it writes records
    its name (sealed), as `token:NAME`.
    """
    wanted = parse_scopes(scopes)
    bound, kinds = parse_names(sources), parse_names(types)
    check_bindings(wanted, bound, kinds)  # before the store is opened
    with opened(ctx) as persona:
        token = create_token(persona, name, wanted, rate_per_s=rate, epsilon_budget=epsilon, delta_budget=delta,
                             sources=bound, types=kinds)
        record_local(persona, "tokens", "tokens create", token=name, scopes=sorted(wanted), sources=sorted(bound),
                     types=sorted(kinds))
    if as_json:
        emit_json({"name": name, "scopes": sorted(wanted), "sources": sorted(bound), "types": sorted(kinds),
                   "token": token})
        return
    click.echo(token)
    click.echo(f"(token {name!r} with {', '.join(sorted(wanted))}{_writes(bound, kinds, wanted)};"
               " it is not shown again)", err=True)


def _writes(sources: frozenset[str] | list[str], types: frozenset[str] | list[str], scopes: Any) -> str:
    """What a token may write, said briefly ("" for a token that does not write)."""
    if "events:write" not in scopes:
        return ""
    where = f"as {','.join(sorted(sources))}" if sources else "as any source (unbound: no source's rank)"
    what = (f"only {','.join(sorted(types))}" if types
            else "any type but profile_updated, consent_changed, identity_linked")
    return f"; writes {where}, {what}"


@tokens.command("list")
@click.option("--minted", is_flag=True, help="Also the tokens minted for one person (mintToken) still working.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@friendly
def tokens_list(ctx: click.Context, minted: bool, as_json: bool) -> None:
    """Tokens by name, with scopes, rate, privacy budget, what they may write (sources, event types)
    and state (never the token itself). Tokens minted for one person are left out unless --minted
    (and then only those that still work)."""
    with opened(ctx) as persona:
        found = [t for t in list_tokens(persona)
                 if not t.subject or (minted and t.revoked_at is None and not t.expired())]
    rows: list[dict[str, Any]] = [{"name": t.name, "scopes": sorted(t.scopes), "rate_per_s": t.rate_per_s,
             "epsilon_budget": t.epsilon_budget, "epsilon_spent": round(t.epsilon_spent, 6),
             "delta_budget": t.delta_budget, "delta_spent": t.delta_spent,
             "sources": sorted(t.sources), "types": sorted(t.types),
             "created_at": t.created_at.isoformat(),
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
             "profile_id": t.subject or None,
             "expires_at": t.expires_at.isoformat() if t.expires_at else None} for t in found]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no tokens")
    for r in rows:
        state = f"revoked {r['revoked_at'][:19]}" if r["revoked_at"] else (
            f"for {r['profile_id']} until {r['expires_at'][:19]}" if r["profile_id"] else "active")
        click.echo(f"{r['name']:<20} {state:<28} ε {r['epsilon_spent']}/{r['epsilon_budget']}  "
                   f"δ {r['delta_spent']:.3g}/{r['delta_budget']:.3g}  {r['rate_per_s']:g}/s  {' '.join(r['scopes'])}"
                   f"{_writes(r['sources'], r['types'], r['scopes'])}")


@tokens.command("revoke")
@click.argument("name")
@click.pass_context
@friendly
def tokens_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token; running servers refuse it within two seconds."""
    with opened(ctx) as persona:
        revoke_token(persona, name)
        record_local(persona, "tokens", "tokens revoke", token=name)
    click.echo(f"revoked {name}")


@click.command()
@click.option("--profile", "profile_id", metavar="ID", help="Only entries about this profile.")
@click.option("--after", default=0, show_default=True, type=click.IntRange(min=0), help="Entries after this number.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="At most this many entries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@friendly
def audit(ctx: click.Context, profile_id: str | None, after: int, limit: int, as_json: bool) -> None:
    """Every access to people's data, through the API or this command line, and every refusal
    (append-only).

    An entry names the writer (a token, `local:<command>`, or `-` for a request without a
    valid token), the operation, the profile (empty: the population, or nothing was read),
    the Profile fields read, the outcome (`ok` or the code of the refusal; refusals are
    counted, `detail.count`) and the shape of the question — names and counts, never a value.
    """
    with opened(ctx) as persona:
        rows = entries(persona, after=after, limit=limit, profile_id=profile_id)
    for seq, at, token, operation, pid, fields, outcome, detail in rows:
        when = from_micros(at).isoformat()
        if as_json:
            click.echo(orjson.dumps({"seq": seq, "at": when, "token": token, "operation": operation,
                                     "profile_id": pid, "fields": fields.split(",") if fields else [],
                                     "outcome": outcome, "detail": orjson.loads(detail or "{}")}).decode())
        else:
            shown = "" if detail in ("", "{}") else f" {detail}"
            click.echo(f"#{seq:<6} {when[:23]} {token:<16} {operation:<16} {outcome:<16} {pid or '-'} {fields}{shown}")
    if not rows and not as_json:
        click.echo("no audit entries")
