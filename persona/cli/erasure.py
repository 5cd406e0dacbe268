"""Erasure and its keys: `persona erase`, `purge`, `receipt`, `ledger`, `keys`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from persona.audit import record_local
from persona.cli.common import (
    TORN_LEDGER,
    audited,
    emit_json,
    friendly,
    opened,
    parse_subject,
    record_failure,
    require_one,
    settings_of,
    who_shape,
    with_who,
)
from persona.core import load_keyring
from persona.erasure import ledger_of, verify_receipt, write_receipt
from persona.errors import ErasedError, PersonaError, UnknownProfileError
from persona.events import from_micros, micros
from persona.purge import last_purge
from persona.purge import run as run_purge
from persona.services.people import erase as erase_person
from persona.services.store import live_and_erased


@click.command()
@with_who
@click.option("--receipt", "receipt_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the receipt to this file (it is always kept under DIR/receipts/).")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON only.")
@click.pass_context
@friendly
def erase(ctx: click.Context, subject: str | None, profile: str | None, receipt_path: Path | None,
          as_json: bool) -> None:
    """Erase a person: delete their key, identity links and derived rows; print a signed receipt.

    The events stay in the log as ciphertext nobody can open. The erasure is also
    recorded (profile id and time only) in the ledger beside the key file, so that
    restoring an older backup cannot bring the person back.
    """
    require_one(subject, profile)
    if receipt_path is not None and not receipt_path.parent.is_dir():
        raise click.BadParameter("its folder does not exist", param_hint="--receipt")
    with opened(ctx) as persona:
        try:
            erasure = erase_person(persona, profile_id=profile, subject=parse_subject(subject) if subject else None)
        except (UnknownProfileError, ErasedError) as e:  # nobody erased; a subject's quarantined records may be
            purged = e.purged if isinstance(e, UnknownProfileError) else 0
            record_local(persona, "erase", "erase", outcome="NOT_FOUND", quarantinePurged=purged, **who_shape(subject))
            raise
        except PersonaError as e:
            record_failure("erase", e, lambda outcome: record_local(persona, "erase", "erase", outcome=outcome,
                                                                     **who_shape(subject)))
            raise
        body = erasure.receipt["receipt"]
        record_local(persona, "erase", "erase", [body["profile_id"], *body.get("merged_profiles", {})],
                     **who_shape(subject))
        kept = write_receipt(persona, erasure)
    if receipt_path:
        receipt_path.write_bytes(kept.read_bytes())
    if as_json:
        emit_json(erasure.receipt)
    else:
        body = erasure.receipt["receipt"]
        counts = ", ".join(f"{k} {v}" for k, v in body["counts"].items())
        click.echo(f"erased {body['profile_id']} in {erasure.seconds * 1000:.1f} ms ({counts})")
        if body.get("merged_profiles"):
            click.echo(f"  with the profiles merged into it: {', '.join(body['merged_profiles'])}")
        if "purged_at" in body:
            click.echo(f"physical purge: done at once ({body['purged_at']})")
        elif erasure.wal_truncated is None:
            click.echo(f"physical purge: due by {body['purge_due_by']} (`persona serve` runs it, or `persona purge`)")
        click.echo(f"receipt: {receipt_path or kept}")
    if erasure.wal_truncated is False:
        click.echo("warning: a reader kept the WAL busy; the erased key may linger in it until the next "
                   "checkpoint. Stop long readers and run `persona purge`.", err=True)
        sys.exit(3)
    if erasure.purge_due_by is not None and erasure.purge_due_by < micros(datetime.now(UTC)):
        click.echo("warning: an earlier purge is overdue: keep `persona serve` running, or run `persona purge`"
                   " from cron at least once a window (PERSONA_PURGE_WINDOW).", err=True)


@click.command()
@click.option("--now", "force", is_flag=True, help="Purge even if no purge is due yet.")
@click.option("--full", "rewrite", is_flag=True,
              help="PostgreSQL: rewrite the tables (VACUUM FULL), so that no page keeps an erased row's bytes"
                   " in its free space. Reads of each table wait while it is rewritten: run it off-hours.")
@click.option("--wait", "wait_s", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for readers that may still see the deleted rows.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
@friendly
def purge(ctx: click.Context, force: bool, rewrite: bool, wait_s: float, as_json: bool) -> None:
    """Physically purge what erasures deleted, if a purge is due: for cron.

    On PostgreSQL an erasure deletes the person's rows at once, and one VACUUM of the tables
    erasure deletes from serves every erasure of a window (PERSONA_PURGE_WINDOW seconds,
    900 by default): `persona serve` runs it when due; without a server, run this at least
    once a window. On SQLite each erasure purges at once; this retries one a reader held up.
    Exit 0 when done or not due, 3 when it could not finish (it stays due).
    """
    with opened(ctx) as persona, audited(persona, "purge", now=force, full=rewrite) as audit:
        outcome = run_purge(persona, force=force, rewrite=rewrite, wait_s=wait_s)
        last = last_purge(persona)
        audit.update(ran=outcome.ran, unfinished=outcome.ran and not outcome.done)
    when = {"due": outcome.due, "finished": outcome.finished, "last_purge": last}
    doc: dict[str, Any] = {"ran": outcome.ran, "done": outcome.done, "why_not": outcome.why,
                           "seconds": round(outcome.seconds, 3),
                           **{k: from_micros(v).isoformat() if v is not None else None for k, v in when.items()}}
    if as_json:
        emit_json(doc)
    elif outcome.why is not None and not outcome.ran:
        click.echo(f"not now: {outcome.why}")
    elif outcome.why is not None:
        click.echo(f"could not purge: {outcome.why}; it stays due ({doc['due'] or 'now'})", err=True)
    elif outcome.ran:
        click.echo(f"purged in {outcome.seconds * 1000:.0f} ms" + (f"; next due {doc['due']}" if doc["due"] else ""))
    elif outcome.due is not None:
        click.echo(f"not due until {doc['due']} (--now to purge now)")
    else:
        click.echo("nothing awaits a purge" + (f" (last purge {doc['last_purge']})" if last else ""))
    if outcome.ran and not outcome.done:
        sys.exit(3)


@click.group()
def receipt() -> None:
    """Erasure receipts: check them offline against a published public key."""


@receipt.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key", metavar="KEY|@FILE",
              help="The signer's published public key (from `persona keys public`); "
                   "defaults to the data directory's own.")
@click.pass_context
@friendly
def receipt_verify(ctx: click.Context, file: Path, public_key: str | None) -> None:
    """Check an erasure receipt's signature offline. Exit 0 if genuine, 1 if not."""
    if public_key is None:
        key = load_keyring(settings_of(ctx)).public_key
    elif public_key.startswith("@"):
        key = Path(public_key[1:]).read_text("utf-8").strip()
    elif Path(public_key).is_file():  # a key is base64 text, never a file's path: the user meant @FILE
        raise click.BadParameter(f"{public_key!r} is a file; pass its contents with @{public_key}",
                                 param_hint="--public-key")
    else:
        key = public_key
    try:
        doc = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError:
        doc = None
    body = verify_receipt(doc, key)
    click.echo(f"valid: profile {body['profile_id']} erased at {body['erased_at']}")


@click.group()
def keys() -> None:
    """Master key rotation, re-wrapping, and the public key that verifies receipts."""


@keys.command("public")
@click.pass_context
@friendly
def keys_public(ctx: click.Context) -> None:
    """Print the Ed25519 public key that verifies this store's erasure receipts."""
    click.echo(load_keyring(settings_of(ctx)).public_key)


@keys.command("rotate")
@click.option("--retire", is_flag=True,
              help="Then destroy every older master key version: wrapped keys copied anywhere before (backups,"
                   " PostgreSQL's dead rows and WAL, an erased person's key) open nothing any more.")
@click.pass_context
@friendly
def keys_rotate(ctx: click.Context, retire: bool) -> None:
    """Add a new master key version and re-wrap every data key under it.

    Events are not touched. Older versions stay in the key file so that backups
    taken before the rotation still restore, unless --retire destroys them: backups
    taken before can then no longer be restored, and every other process must be
    restarted with (or given a copy of) the new key file.
    """
    with opened(ctx) as persona, audited(persona, "keys", operation="keys rotate", retire=retire) as audit:
        result = persona.rotate_keys(retire=retire)
        audit.update(rewrapped=result["rewrapped"], retired=result.get("retired", 0))
    click.echo(f"master key is now version {result['kek_version']}; re-wrapped {result['rewrapped']} data keys")
    if retire:
        click.echo(f"retired {result['retired']} older version(s): destroy every other copy of the old key file,"
                   " and give other machines the new one")


@keys.command("rewrap")
@click.pass_context
@friendly
def keys_rewrap(ctx: click.Context) -> None:
    """Re-wrap every data key under the newest master key version (after adding one to PERSONA_MASTER_KEY)."""
    with opened(ctx) as persona, audited(persona, "keys", operation="keys rewrap") as audit:
        result = persona.rewrap()
        audit.update(rewrapped=result["rewrapped"])
    click.echo(f"re-wrapped {result['rewrapped']} data keys under version {result['kek_version']}")


@click.group()
def ledger() -> None:
    """The erasure ledger beside the key file: adopt one an older persona wrote, unsigned."""


@ledger.command("adopt")
@click.option("--yes", is_flag=True, help="Do not ask before signing the entries listed.")
@click.pass_context
@friendly
def ledger_adopt(ctx: click.Context, yes: bool) -> None:
    """Sign the entries of an erasure ledger an older persona wrote unsigned, after you have checked them.

    An unsigned ledger is never trusted on sight: `verify`, `restore` and `erase` refuse it,
    since anyone who could write the file could have left erasures out (a restore would then
    bring those people back) or named people never erased. This lists its entries (profile
    ids and keyed hashes, never an identifier) and names those whose profile is still live
    here: an erasure that never committed (a crash), or a line someone added. Once you have
    compared the list with a copy of the ledger you trust, the entries are signed into the
    chain, in order; the old file is kept beside it as erasures.jsonl.*.unsigned.
    """
    with opened(ctx) as persona:
        book = ledger_of(persona)
        found = book.unsigned_entries()
        if not found.entries:
            click.echo("nothing to adopt: the erasure ledger is signed already (or there is none)")
            return
        named = sorted({e.profile_id for e in found.entries if e.profile_id})
        live, erased = live_and_erased(persona, named)
        click.echo(f"the erasure ledger {persona.settings.ledger_path} is not signed; the entries it holds"
                   f" ({len(found.entries)}), in order:")
        for n, entry in enumerate(found.entries, start=1):
            when = from_micros(entry.erased_at).isoformat()
            if entry.profile_id is None:
                assert entry.purged is not None
                click.echo(f"  {n:>5}  {when}  quarantine purged of identifier {entry.purged.hex()[:16]}…")
                continue
            note = ""
            if entry.profile_id in live:
                note = ("  <- still has a live profile here: an erasure that never committed, or a line someone"
                        " added (after adopting, `persona verify` names it and `persona erase --profile` finishes it)")
            elif entry.profile_id not in erased:
                note = "  (no such profile in this store)"
            click.echo(f"  {n:>5}  {when}  profile {entry.profile_id}{note}")
        if found.torn:
            click.echo(TORN_LEDGER)
        detail: dict[str, Any] = {"entries": len(found.entries), "profiles": len(named), "live": len(live),
                                  "torn": found.torn}
        if not yes and not click.confirm("sign these entries into the erasure ledger?"):
            record_local(persona, "ledger", "ledger adopt", outcome="declined", **detail)
            click.echo("nothing was signed", err=True)
            sys.exit(1)
        adopted = book.adopt(expected=found.entries)
        record_local(persona, "ledger", "ledger adopt", **detail)
    click.echo(f"signed {adopted.adopted} erasure ledger entries; the old file is kept beside it (*.unsigned)")
    if live:
        click.echo(f"warning: {len(live)} of them name a live profile: run `persona verify`", err=True)
