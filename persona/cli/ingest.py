"""`persona ingest` and `persona quarantine`: appending events, and the records refused."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from persona.audit import OK, record_local
from persona.cli.common import (
    INTERRUPTED,
    emit_json,
    friendly,
    opened,
    record_failure,
)
from persona.core import Persona
from persona.events import local
from persona.ingest import IngestReport, ingest_feed, ingest_file
from persona.ingest.dryrun import dry_run as dry_run_records
from persona.ingest.jsonl import jsonl_records, live_jsonl_records
from persona.ingest.preflight import preflight
from persona.ingest.quarantine import describe, open_quarantined
from persona.progress import Interruption, ProgressLines, reading, stopped_by_signals
from persona.rfm import score as score_rfm
from persona.services.store import drop_quarantined

if TYPE_CHECKING:
    from persona.ingest.mapping import SourceMapping


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A TOML mapping: how a CSV/JSONL export's columns become events (docs/ingest.md).")
@click.option("--source", metavar="NAME",
              help="A built-in source (shop, social, web, app: see docs/ingest.md), or with --mapping the"
                   " events' source name.")
@click.option("--format", "form", type=click.Choice(["jsonl", "csv", "parquet", "xlsx"]),
              help="How FILE is written (default: the mapping's format, else the file's extension, else its first"
                   " line; a .parquet or .xlsx extension beats a mapping's csv or jsonl). Canonical events are"
                   " JSONL.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Read, map and validate everything and report what a real run would append, skip as"
                   " duplicates and quarantine, storing nothing (the audit log notes the dry run).")
@click.pass_context
@friendly
def ingest(ctx: click.Context, file: Path, mapping_file: Path | None, source: str | None, form: str | None,
           as_json: bool, dry_run: bool) -> None:
    """Append the events of FILE; '-' reads standard input.

    Ctrl+C or SIGTERM stops a FILE at the next record: what was read is committed and indexed, the
    report says the run was interrupted, and the exit status is 130 (SIGINT) or 143 (SIGTERM); run
    the same command again to append the rest (what is already in the log is skipped as
    duplicates). A second signal stops at once. Standard input ends so as a feed does, with status
    0. Without a terminal, a progress line goes to stderr every PERSONA_PROGRESS_S seconds (10).

    Without --mapping, FILE is canonical JSONL (docs/events.md). With --mapping, FILE is any
    CSV, JSONL, Parquet or Excel (.xlsx) export the mapping describes (Parquet and Excel from a
    file only, not standard input). Standard input is read as a live feed:
    what arrives is committed and shown in profiles within about a second. Valid records are appended in atomic
    batches; re-ingesting the same file appends nothing. Bad records are quarantined
    (sealed) with the reason and line number and never stop the run. Prints a report: the
    input lines read, the events appended (a line can hold several), the duplicate events
    skipped, the lines quarantined and the records a mapping's `where` filtered out (--json keeps
    the keys lines, appended, duplicates, quarantined, and adds filtered).

    A mistake about the whole file is refused before anything is stored or quarantined, with
    one error: a file that is not text where text is expected (a zip, gzip, PDF), a Parquet file or
    workbook that cannot be read or lacks the mapping's sheet, one not in UTF-8
    (or the mapping's `encoding`), a CSV file given without --mapping or --source, a mapping
    naming a namespace persona does not know or a CSV column the file's header lacks. A run
    that appended nothing, found no duplicate and quarantined something exits with status 1
    (after its report).
    """
    mapping = None
    if mapping_file is not None:
        from persona.ingest.mapping import load_mapping  # heavy: only a mapped ingest loads the mapping language

        mapping = load_mapping(mapping_file)
        if source:
            mapping = dataclasses.replace(mapping, source=source)
    elif source:
        from persona.ingest.mapping import builtin_mapping  # heavy: as above

        mapping = builtin_mapping(source)
    if form is not None and mapping is not None:
        mapping = dataclasses.replace(mapping, format=form)
    elif form in ("csv", "parquet", "xlsx"):
        raise click.BadParameter(f"canonical events are JSONL: a {form} export needs --source or --mapping",
                                 param_hint="--format")
    if str(file) == "-" and mapping is not None and mapping.format in ("parquet", "xlsx"):
        raise click.BadParameter(f"a {mapping.format} file is read from a file, not standard input (it is read"
                                 " by its end first): give its path", param_hint="FILE")
    if str(file) != "-" and file.is_file():
        preflight(file, mapping, mapping_name=mapping_file.name if mapping_file else f"the built-in source {source}",
                  builtin=mapping_file is None and source is not None, jsonl=form == "jsonl")
    if dry_run:
        _dry_run(ctx, file, mapping, as_json)
        return
    # Ctrl+C or SIGTERM: a feed (its usual end) or a file stops, what was read is committed and
    # indexed, and the report says so; a second signal stops at once
    with opened(ctx) as persona, stopped_by_signals() as stop, stopped_at_once(persona, stop):
        if str(file) == "-":
            report = _ingest(persona, sys.stdin.buffer, "<stdin>", mapping, stream=True, stop=stop)
        else:
            if not file.exists():
                raise click.BadParameter("no such file", param_hint="FILE")
            with file.open("rb") as handle:
                report = _ingest_file(persona, handle, file, mapping, stop)
        if report.appended:  # the scores rank the population: one new order can move everyone's
            score_rfm(persona)
        cut_short = report.interrupted and not report.live  # a file's rest is still to be appended
        record_local(persona, "ingest", "ingest", outcome=INTERRUPTED if cut_short else OK, appended=report.appended,
                     duplicates=report.duplicates, quarantined=report.quarantined,
                     profilesCreated=report.profiles_created, merges=report.merges)
        record_local(persona, "ingest", "ingest", sorted(report.changed))  # whose logs grew: pseudonyms only
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(report.summary())
    if cut_short:
        sys.exit(stop.exit_status)  # 130 (SIGINT) or 143 (SIGTERM), as a shell expects
    refuse_if_all_quarantined(report, dry_run=False)


INGEST = local("ingest")  # the writer sealed into what `persona ingest` appends


def refuse_if_all_quarantined(report: IngestReport, *, dry_run: bool) -> None:
    """Exit 1, after the report, from a run that appended nothing, found no duplicate and quarantined
    something: every record it read was refused, which a script must not take for success."""
    if report.quarantined and not report.appended and not report.duplicates:
        click.echo("error: nothing would be appended: every record would be quarantined (see the reasons above)"
                   if dry_run else "error: nothing was appended: every record was quarantined (see the reasons"
                   " above and `persona quarantine`)", err=True)
        sys.exit(1)


def _dry_run(ctx: click.Context, file: Path, mapping: SourceMapping | None, as_json: bool) -> None:
    """What `persona ingest` would report, with nothing stored (persona.ingest.dryrun)."""
    if str(file) != "-" and not file.exists():
        raise click.BadParameter("no such file", param_hint="FILE")
    with opened(ctx) as persona, (nullcontext(sys.stdin.buffer) if str(file) == "-" else file.open("rb")) as handle:
        name, limit = ("<stdin>" if str(file) == "-" else file.name), persona.settings.max_event_bytes
        report = dry_run_records(persona, _records(mapping, handle, name, limit), origin=name, writer=INGEST)
        record_local(persona, "ingest", "ingest dry run", appended=report.appended, duplicates=report.duplicates,
                     quarantined=report.quarantined)
    if as_json:
        emit_json({"dry_run": True, **report.as_dict()})
    else:
        click.echo("dry run: nothing was stored or quarantined; a real run would report:\n" + report.summary())
    refuse_if_all_quarantined(report, dry_run=True)


def _records(mapping: SourceMapping | None, handle: BinaryIO, name: str, limit: int, *, live: bool = False,
             stop: threading.Event | None = None) -> Iterable[Any]:
    """FILE's records: canonical JSONL, or the rows of an export through its mapping; `live`:
    a feed, paced so that a quiet one has what it sent committed."""
    if mapping is None:
        return live_jsonl_records(handle, limit, stop=stop) if live else jsonl_records(handle, limit)
    from persona.ingest.mapping import live_records, mapped_records  # loaded already, with the mapping

    if live:
        return live_records(mapping, handle, name=name, max_bytes=limit, stop=stop)
    return mapped_records(mapping, handle, name=name, max_bytes=limit)


def _ingest(persona: Persona, handle: BinaryIO, name: str, mapping: SourceMapping | None,
            progress: Callable[[int], None] | None = None, *, stream: bool = False,
            stop: threading.Event | None = None) -> Any:
    limit = persona.settings.max_event_bytes
    if stream:  # rows are paced, so that an order's last item rows do not wait
        feed = _records(mapping, handle, name, limit, live=True, stop=stop)
        return ingest_feed(persona, feed, origin=name, stop=stop, writer=INGEST)
    records = _records(mapping, handle, name, limit)
    # a file on a machine with cores to spare: read, map and validate in a second process; but
    # not a Parquet file: polars' threads do not survive a fork (persona.ingest.mapping.tables)
    parallel = (os.cpu_count() or 1) > 1 and not _parquet(mapping, name)
    # catch_up: the index of whatever a killed ingest committed is brought up to date too
    return ingest_file(persona, records, origin=name, progress=progress, parallel=parallel, catch_up=True,
                       stop=stop, writer=INGEST)


def _parquet(mapping: SourceMapping | None, name: str) -> bool:
    if mapping is None:
        return False
    from persona.ingest.mapping.tables import table_format  # loaded already, with the mapping

    return table_format(mapping, name) == "parquet"


@contextmanager
def stopped_at_once(persona: Persona, stop: Interruption) -> Iterator[None]:
    """A second Ctrl+C or SIGTERM: the ingest stops without indexing or reporting what it
    committed (whole batches; the next ingest indexes them). Said in one line, and audited."""
    try:
        yield
    except KeyboardInterrupt:
        record_failure("ingest", KeyboardInterrupt(), lambda outcome: record_local(persona, "ingest", "ingest",
                                                                                  outcome=outcome))
        click.echo("stopped at once by a second signal: the batches committed before it are kept (the next ingest"
                   " indexes them); ingesting the same input again appends the rest (what is already in the log is"
                   " skipped as duplicates)", err=True)
        sys.exit(stop.exit_status)


def _ingest_file(persona: Persona, handle: BinaryIO, file: Path, mapping: SourceMapping | None,
                 stop: Interruption) -> Any:
    if not sys.stderr.isatty():  # a log or a CI job: a line every PERSONA_PROGRESS_S seconds, not a bar
        lines = ProgressLines(persona.settings.progress_s, lambda line: click.echo(line, err=True),
                              reading(file.name, file.stat().st_size))
        return _ingest(persona, handle, file.name, mapping, lines, stop=stop)
    with click.progressbar(length=file.stat().st_size, label=f"ingesting {file.name}",
                           file=sys.stderr, show_eta=True) as bar:
        pending = 0

        def advance(size: int) -> None:  # redraw per MiB, not per line
            nonlocal pending
            pending += size
            if pending >= 1 << 20:
                bar.update(pending)
                pending = 0

        report = _ingest(persona, handle, file.name, mapping, advance, stop=stop)
        bar.update(pending)
        return report


@click.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--export", "export", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the records themselves, opened, to this file (outside the data directory) to fix them.")
@click.option("--origin", help="With --export: only the records of this source file (e.g. orders.csv).")
@click.option("--resolve", is_flag=True, help="Remove the records ID... (as listed: 12 or #12) once fixed.")
@click.option("--purge", is_flag=True, help="Remove every quarantined record (asks first, unless --yes).")
@click.option("--yes", is_flag=True, help="With --purge: do not ask first.")
@click.pass_context
@friendly
def quarantine(ctx: click.Context, ids: tuple[str, ...], as_json: bool, export: Path | None, origin: str | None,
               resolve: bool, purge: bool, yes: bool) -> None:
    """List quarantined records: where they came from and why (their content stays sealed).

    Each record shows the reason of the latest run that refused it: ingesting the same file
    again with another mapping shows that mapping's reason.

    To fix them: `--export fix.csv --origin orders.csv` writes their original rows (a CSV
    export's header is not kept: copy it from the source file; a Parquet file's or a workbook's
    rows are JSON lines, one object each), in order; correct them and ingest the file like the
    original. Rows already in the log are skipped as duplicates;
    the quarantined copies expire after PERSONA_QUARANTINE_DAYS, or go at once with
    `--resolve ID...` (those records; an ID not held refuses the whole command) or `--purge`
    (all of them). Both are written to the audit log.
    """
    if ids and not resolve:
        raise click.UsageError("record IDs are given with --resolve")
    if sum((resolve, purge, export is not None)) > 1:
        raise click.UsageError("give one of --resolve, --purge and --export")
    if resolve and not ids:
        raise click.UsageError("--resolve needs the IDs of the records to remove (as `persona quarantine` lists them)")
    if purge and not yes:
        click.confirm("remove every quarantined record?", abort=True)
    with opened(ctx) as persona:
        rows = describe(persona)
        if resolve or purge:
            gone = _quarantined_ids(ids, {row["id"] for row in rows}) if resolve else [row["id"] for row in rows]
            drop_quarantined(persona, gone)
            record_local(persona, "quarantine", "quarantine resolve" if resolve else "quarantine purge",
                         records=len(gone))
            click.echo(f"removed {len(gone)} quarantined record(s)")
            return
        if export is not None:
            if export.resolve().is_relative_to(persona.settings.data_dir.resolve()):
                raise click.BadParameter("opened records must not be written into the data directory",
                                         param_hint="--export")
            chosen = [row for row in rows if origin is None or row["origin"] == origin]
            record_local(persona, "quarantine", "quarantine export", records=len(chosen))
            fd = os.open(export, os.O_WRONLY | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)  # personal data: owner only, an existing file included, before a byte
            os.ftruncate(fd, 0)
            with os.fdopen(fd, "wb") as out:
                for row in chosen:
                    out.write((open_quarantined(persona, row["id"]) or b"").rstrip(b"\n") + b"\n")
            click.echo(f"wrote {len(chosen)} record(s) to {export}", err=True)
            return
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("quarantine is empty")
    for row in rows:
        click.echo(f"#{row['id']:<5} {row['origin']}:{row['line']:<6} {row['reason']}  "
                   f"({row['size']} bytes, kept until {row['expires_at'][:10]})")


def _quarantined_ids(given: Iterable[str], held: set[int]) -> list[int]:
    """The ids given (12 or #12, as listed), each one a record held: else nothing is removed."""
    ids = []
    for text in given:
        try:
            ids.append(int(text.strip().removeprefix("#")))
        except ValueError:
            raise click.BadParameter("an ID is a record's number, as `persona quarantine` lists it (12 or #12)",
                                     param_hint="ID") from None
    unknown = sorted(set(ids) - held)
    if unknown:
        raise click.BadParameter(f"no quarantined record {', '.join(f'#{n}' for n in unknown)} (nothing was removed;"
                                 " `persona quarantine` lists those held)", param_hint="ID")
    return sorted(set(ids))
