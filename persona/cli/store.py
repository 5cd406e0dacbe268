"""The store as a whole: `persona init`, `backup`, `restore`, `verify`, `rebuild`, `follow`, `migrate`."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import click
import orjson

from persona.audit import record_local
from persona.backup import backup as backup_db
from persona.backup import restore as restore_db
from persona.cli.common import (
    TORN_LEDGER,
    audited,
    engine_options,
    friendly,
    on_engine,
    opened,
    record_failure,
    settings_of,
)
from persona.core import Persona
from persona.errors import PersonaError, TamperError
from persona.feed import ChangeFeed
from persona.migrate import audit as migrate_audit
from persona.migrate import migrate as migrate_store
from persona.progress import ProgressLines, counting
from persona.projector import Projector
from persona.rfm import RfmSchedule
from persona.rfm import score as score_rfm
from persona.services.store import live_and_erased, stream_count
from persona.settings import Settings
from persona.store import parse_target
from persona.verify import UNREADABLE
from persona.verify import verify as verify_store


@click.command()
@click.option("--backend", metavar="URL",
              help="Keep the store in PostgreSQL (postgresql://user@host:5432/db) instead of the data directory's"
                   " SQLite file. PERSONA_DATABASE_URL does the same for every command.")
@click.pass_context
@friendly
def init(ctx: click.Context, backend: str | None) -> None:
    """Create the data directory, its database and a key file (mode 0600).

    The key file holds a versioned master key, the pseudonym pepper and the receipt
    signing key. Back it up separately from the data: without it nothing opens. When
    PERSONA_MASTER_KEY, PERSONA_PEPPER and PERSONA_SIGNING_KEY are set no key file is written.

    With --backend the log, wrapped keys, links and read models live in PostgreSQL; the
    key file stays here, and the URL is kept in DIR/backend.url (without any password:
    give that by PGPASSWORD or ~/.pgpass). Other machines need only a copy of the key file
    and PERSONA_DATABASE_URL.
    """
    from persona.store.postgres import is_postgres_url, without_password  # heavy: psycopg, loaded when the command runs

    settings = settings_of(ctx)
    if backend is not None:
        if not is_postgres_url(backend):
            raise click.BadParameter("give a postgresql://... URL", param_hint="--backend")
        settings = dataclasses.replace(settings, database_url=backend)
    with Persona.init(settings):
        pass
    if backend is not None:
        kept, had_password = without_password(backend)
        fd = os.open(settings.backend_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(kept + "\n")
        if had_password:
            click.echo("the password was not written to the data directory: give it by PGPASSWORD or ~/.pgpass")
    click.echo(f"initialised {settings.data_dir}" + (" (store: PostgreSQL)" if settings.database_url else ""))
    if not settings.keys_from_env:
        click.echo(f"key file: {settings.key_file} (keep a copy somewhere safe, apart from the data)")


@click.command()
@click.argument("dest", type=click.Path())
@click.pass_context
@friendly
def backup(ctx: click.Context, dest: str) -> None:
    """Write a consistent copy of the store to DEST (a new file, or a folder): never the key file, nor a read model.

    A DEST that is a folder, or ends in `/`, gets a new file inside it named after the time
    (the folder is created if need be).

    The log stays sealed and the data keys wrapped; the read models that hold values in
    plaintext (profile index, RFM scores, predictions) are left out, and `persona restore`
    rebuilds them. Whoever holds the key file can open a backup: `persona keys rotate
    --retire` makes every backup taken before it unreadable.
    """
    with opened(ctx) as persona, audited(persona, "backup") as audit:
        info = backup_db(persona, Path(dest), folder=dest.endswith(("/", os.sep)))
        audit.update(events=info.events, profiles=info.profiles)
    click.echo(f"backup {info.path}: {info.events} events, {info.profiles} live profiles, "
               f"{info.bytes / 1e6:.1f} MB, taken {info.taken_at}")


@click.command()
@click.option("--after", type=click.IntRange(0), default=None, metavar="POSITION",
              help="Start after this global position (0: from the first event). Default: only events from now on.")
@click.option("--refresh", is_flag=True,
              help="Bring the profile index and snapshots of every person that grows up to date: a catch-up worker"
                   " for a store that other processes append to without doing so (a bulk copy, say).")
@click.option("--once", is_flag=True, help="Stop when caught up, instead of waiting for more.")
@click.option("--wait", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, metavar="SECONDS",
              help="Longest wait between looks at the log (on PostgreSQL a commit wakes it at once).")
@click.pass_context
@friendly
def follow(ctx: click.Context, after: int | None, refresh: bool, once: bool, wait: float) -> None:
    """Follow the log as events are committed by any process, on any machine.

    Prints one JSON line per batch of new events: the last position read, how many
    events, and the profiles that grew (pseudonymous ids; nothing is opened). Stop with
    Ctrl+C; carry on later with --after set to the last position printed. With --refresh,
    the RFM scores are computed again after changes, at most every 5 seconds and when caught up.
    """
    with opened(ctx) as persona:
        feed = ChangeFeed.of(persona, after)
        projector = Projector(persona) if refresh else None
        refreshing: AbstractContextManager[dict[str, Any]] = (
            audited(persona, "follow", refresh=True) if refresh else nullcontext({}))
        if refresh:  # a stop by SIGTERM too ends the run as Ctrl+C does: its entry is written
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
            ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
        rfm = RfmSchedule()
        with refreshing as audit:  # --refresh opens people: one entry per run, with its counts, when it stops
            audit.update(batches=0, events=0, refreshed=0)
            try:
                while True:
                    was = feed.position
                    rows = feed.wait(0 if once else wait, limit=5_000)
                    if not rows:
                        if rfm.pending:  # caught up: the scores too
                            rfm.scoring()
                            score_rfm(persona)
                        if once:
                            break
                        continue
                    grew = sorted({row.stream_id for row in rows})
                    events = feed.events_in(rows, was)
                    line: dict[str, Any] = {"position": feed.position, "events": events, "profiles": grew}
                    if projector is not None:
                        erased = live_and_erased(persona, grew)[1]
                        line["refreshed"] = projector.refresh([pid for pid in grew if pid not in erased])
                        audit["batches"] += 1
                        audit["events"] += events
                        audit["refreshed"] += line["refreshed"]
                        if line["refreshed"]:
                            rfm.changed()
                        if rfm.due():
                            rfm.scoring()
                            score_rfm(persona)
                    click.echo(orjson.dumps(line).decode())
            except KeyboardInterrupt:
                click.echo(f"stopped after position {feed.position}", err=True)


@click.command()
@click.option("--from", "source", required=True, metavar="STORE",
              help="The store to copy: sqlite:DIR (a data directory or a .db file) or postgresql://...")
@click.option("--to", "target", required=True, metavar="STORE", help="A new, empty store, named the same way.")
@click.pass_context
@friendly
def migrate(ctx: click.Context, source: str, target: str) -> None:
    """Copy a whole store to another backend, then check the copy.

    Events are copied as ciphertext and data keys as wrapped, in one snapshot of the
    source and one transaction on the target; the check compares row counts of every
    table, verifies every hash chain and opens every live event. The key file is the
    data directory's (--data), or that of a sqlite:DIR source.
    """
    try:
        settings = settings_of(ctx)
    except click.UsageError:
        kind, where = parse_target(source)
        if kind != "sqlite":
            raise
        settings = Settings.load(Path(where).parent)
    counted: dict[str, int] = {}

    def progress(table: str, rows: int) -> None:
        counted[table] = counted.get(table, 0) + rows
        if table == "event_keys" and counted[table] % 100_000 < rows:  # one key per event
            click.echo(f"  {counted[table]:,} events copied", err=True)

    kinds = {"from": parse_target(source)[0], "to": parse_target(target)[0]}
    try:
        report = migrate_store(settings, source, target, progress)
    except PersonaError as e:
        record_failure("migrate", e, lambda outcome: migrate_audit(settings, source, outcome, **kinds))
        raise
    done = {"events": report.rows["event_keys"], "rows": sum(report.rows.values()), **kinds}
    migrate_audit(settings, target, "ok", **done)  # the copy's own log says how it was made
    migrate_audit(settings, source, "ok", **done)  # and the source's, that everything in it was copied out
    click.echo(f"copied {report.rows['event_keys']:,} events of {report.rows['streams']:,} streams,"
               f" {report.rows['keys']:,} wrapped keys, {sum(report.rows.values()):,} rows in all")
    click.echo(f"checked: row counts of {len(report.rows)} tables match; {report.events:,} events verified,"
               f" {report.opened:,} opened")
    kind, where = parse_target(target)
    if kind == "postgresql":
        click.echo("to use it: set PERSONA_DATABASE_URL to the target URL (the key file stays as it is)")


@click.command()
@click.argument("source", metavar="BACKUP", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask before replacing the database.")
@click.pass_context
@friendly
def restore(ctx: click.Context, source: Path, yes: bool) -> None:
    """Replace the database with BACKUP, re-applying every erasure made since and rebuilding the read models.

    The erasures come from the ledger beside the key file (refused if any line of it does
    not verify) and from the tombstones of the store being replaced. The copy is prepared
    and verified beside the store, then swapped in: a failure half-way leaves the store as
    it was (on PostgreSQL it is replaced in one transaction). Stop every process using the
    data directory first (on PostgreSQL: every process using the store, on every machine).
    An unsigned ledger (written by an older persona) is refused: check it and sign it with
    `persona ledger adopt` first.
    """
    settings = settings_of(ctx)
    if (settings.database_url or settings.db_path.exists()) and not yes:
        click.confirm("replace the current database with the backup?", abort=True)
    try:
        info = restore_db(settings, source)  # a restore that is done audits itself, in the store it made
    except PersonaError as e:
        if settings.database_url or settings.db_path.exists():  # in the store it left as it was

            def write(outcome: str) -> None:
                with Persona.open(settings) as persona:
                    record_local(persona, "restore", "restore", outcome=outcome)

            record_failure("restore", e, write)
        raise
    if info.ledger_torn:
        click.echo(TORN_LEDGER, err=True)
    click.echo(f"restored the backup taken {info.taken_at}; re-applied {len(info.reapplied)} later erasure(s);"
               f" rebuilt the read models of {info.rebuilt} profile(s)")


@click.command()
@click.option("--projection", metavar="NAME", help="Rebuild only this projection's snapshots (and the index).")
@click.option("--workers", type=click.IntRange(1, 64), help="Processes to use (default: one per core).")
@engine_options
@click.pass_context
@friendly
def rebuild(ctx: click.Context, projection: str | None, workers: int | None, engine: str,
            scheduler: str | None) -> None:
    """Drop the profile index and snapshots and rebuild them from the log, in parallel.

    Nothing outside the log and the keys is authoritative: the result is what ingest
    maintains incrementally (the snapshots' plaintext and the index rows, byte for byte).
    Without a terminal, a progress line goes to stderr every PERSONA_PROGRESS_S seconds (10).
    With --engine dask the parts run on a Dask cluster's workers, and so do the promoted
    models' rescoring reads (docs/scale.md).
    """
    with opened(ctx) as persona, on_engine(engine, scheduler, workers), \
            audited(persona, "rebuild", projection=projection is not None, engine=engine) as audit:
        from persona.services.models import rebuild_and_rescore  # heavy: loaded when the command runs

        total = stream_count(persona)
        started = time.perf_counter()
        if sys.stderr.isatty():
            with click.progressbar(length=total, label="rebuilding", file=sys.stderr, show_eta=True) as bar:
                rebuilt = rebuild_and_rescore(persona, projection=projection, workers=workers, progress=bar.update)
        else:  # a log or a CI job: a line every PERSONA_PROGRESS_S seconds, not a bar
            lines = ProgressLines(persona.settings.progress_s, lambda line: click.echo(line, err=True),
                                  counting("rebuilding", total, "profiles"))
            rebuilt = rebuild_and_rescore(persona, projection=projection, workers=workers, progress=lines)
        done, events, scored = rebuilt.profiles, rebuilt.events, rebuilt.predictions
        audit.update(profiles=done, predictions=scored)
    seconds = time.perf_counter() - started
    click.echo(f"rebuilt {done} profiles ({events} events in the log) in {seconds:.2f}s"
               + (f"; {scored} predictions of the promoted models rescored" if scored else ""))


@click.command()
@click.pass_context
@friendly
def verify(ctx: click.Context) -> None:
    """Check the whole store: hash chains, that live events open, every row's tag, erasures, ledger, schema.

    Exit 0 when everything checks out; 2 naming the first bad event, table or ledger line
    otherwise (1 when the file is too damaged to open). An unsigned ledger (written by an older
    persona) is refused until `persona ledger adopt` has signed it.
    """
    try:
        with opened(ctx) as persona, audited(persona, "verify") as audit:
            report = verify_store(persona)
            audit.update(events=report.events, streams=report.streams, opened=report.opened, erased=report.erased,
                         ledgerEntries=report.ledger_entries, ledgerTorn=report.ledger_torn)
    except UNREADABLE as e:  # opening read a damaged schema or meta row
        raise TamperError(f"the store does not read as persona wrote it ({type(e).__name__})") from None
    if report.ledger_torn:
        click.echo(TORN_LEDGER, err=True)
    click.echo(f"ok: {report.events} events in {report.streams} streams verified "
               f"({report.opened} opened, {report.erased} erased profiles hold no key);"
               f" {report.ledger_entries} erasure ledger entries verified")
