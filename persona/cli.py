"""The `persona` command: a thin shell over the library. Each command's help is its documentation."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import orjson

from persona import __version__
from persona.audit import OK, filter_shape, named, namespace_of, record_local
from persona.backup import backup as backup_db
from persona.backup import restore as restore_db
from persona.core import Persona, load_keyring
from persona.erasure import ledger_of, verify_receipt, write_receipt
from persona.errors import ConfigurationError, ErasedError, PersonaError, TamperError, UnknownProfileError
from persona.events import from_micros, local, micros
from persona.ingest import IngestReport, ingest_records
from persona.ingest.dryrun import dry_run as dry_run_records
from persona.ingest.jsonl import jsonl_records
from persona.ingest.mapping import SourceMapping, builtin_mapping, live_records, load_mapping, mapped_records
from persona.ingest.preflight import preflight
from persona.ingest.quarantine import describe, open_quarantined
from persona.population import (
    GROUPABLE,
    LABELS,
    RANGEABLE,
    ProfileFilter,
    RfmSchedule,
    compute_rfm,
    indexed,
    list_profiles,
    population,
)
from persona.profiles import profile_view, read_person
from persona.progress import Interruption, ProgressLines, counting, reading, stopped_by_signals
from persona.services.people import erase as erase_person
from persona.services.people import link_identities, unlink_identities
from persona.services.people import person as person_of
from persona.services.store import drop_quarantined, live_and_erased, stream_count
from persona.settings import Settings
from persona.verify import UNREADABLE
from persona.verify import verify as verify_store

F = TypeVar("F", bound=Callable[..., Any])


def emit_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def friendly(func: F) -> F:
    """Turn persona's own errors into one clear line and a non-zero exit, never a traceback."""

    @wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TamperError as e:
            click.echo(f"TAMPERED: {e}", err=True)
            sys.exit(2)
        except PersonaError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except sqlite3.Error as e:  # SQLite's messages name tables and states, never values…
            text = str(e)
            if "decode" in text:  # …but one: "Could not decode to UTF-8 column 'c' with text '…'"
                text = "a damaged text value could not be decoded (the file was altered?)"
            click.echo(f"error: database: {text}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"error: {e.strerror or e}{where}", err=True)
            sys.exit(1)
        except Exception as e:
            from persona.store.postgres import describe_error, is_database_error

            if not is_database_error(e):
                raise
            click.echo(f"error: database: {describe_error(e)}", err=True)  # never the row's values
            sys.exit(1)

    return run  # type: ignore[return-value]


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]()
    return settings


@contextmanager
def opened(ctx: click.Context) -> Iterator[Persona]:
    settings = settings_of(ctx)
    if not settings.database_url and not settings.db_path.exists():  # before anything is created there
        where = settings.data_dir
        if where.exists() and not where.is_dir():
            raise ConfigurationError(f"--data {where} is a file, not a data directory")
        raise ConfigurationError(f"no persona store in {where}" + ("" if where.is_dir() else " (no such directory)")
                                 + f"; create one with `persona --data {where} init`")
    with Persona.open(settings) as persona:
        yield persona


def parse_subject(text: str) -> tuple[str, str]:
    namespace, sep, value = text.partition(":")
    if not sep or not namespace or not value:
        raise click.BadParameter("use NAMESPACE:VALUE, e.g. email:a@example.com", param_hint="--subject")
    return namespace.strip(), value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", metavar="DIR", envvar="PERSONA_DATA",
              help="Data directory (or PERSONA_DATA). Holds the database; the key file sits in it "
                   "unless PERSONA_KEY_FILE says otherwise.")
@click.version_option(__version__, prog_name="persona")
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None) -> None:
    """persona: user profiles kept as encrypted, append-only event logs.

    Every fact about a person is an event in that person's own log, sealed with the
    person's key. Erasing a person deletes the key.
    """

    def load() -> Settings:
        try:
            return Settings.load(data_dir)
        except PersonaError as e:
            raise click.UsageError(str(e)) from e

    ctx.obj = {"settings": load}


@cli.command()
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
    from persona.store.postgres import is_postgres_url, without_password

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


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A TOML mapping: how a CSV/JSONL export's columns become events (docs/ingest.md).")
@click.option("--source", metavar="NAME",
              help="A built-in source (shop, social, web, app: see docs/ingest.md), or with --mapping the"
                   " events' source name.")
@click.option("--format", "form", type=click.Choice(["jsonl", "csv"]),
              help="How FILE is written (default: the mapping's format, else the file's extension, else its first"
                   " line). Canonical events are JSONL.")
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
    CSV or JSONL export the mapping describes. Standard input is read as a live feed:
    what arrives is committed and shown in profiles within about a second. Valid records are appended in atomic
    batches; re-ingesting the same file appends nothing. Bad records are quarantined
    (sealed) with the reason and line number and never stop the run. Prints a report: the
    input lines read, the events appended (a line can hold several), the duplicate events
    skipped, the lines quarantined and the records a mapping's `where` filtered out (--json keeps
    the keys lines, appended, duplicates, quarantined, and adds filtered).

    A mistake about the whole file is refused before anything is stored or quarantined, with
    one error: a file that is not text (a zip or .xlsx workbook, gzip, PDF), one not in UTF-8
    (or the mapping's `encoding`), a CSV file given without --mapping or --source, a mapping
    naming a namespace persona does not know or a CSV column the file's header lacks. A run
    that appended nothing, found no duplicate and quarantined something exits with status 1
    (after its report).
    """
    mapping = None
    if mapping_file is not None:
        mapping = load_mapping(mapping_file)
        if source:
            mapping = dataclasses.replace(mapping, source=source)
    elif source:
        mapping = builtin_mapping(source)
    if form is not None and mapping is not None:
        mapping = dataclasses.replace(mapping, format=form)
    elif form == "csv":
        raise click.BadParameter("canonical events are JSONL: a CSV export needs --source or --mapping",
                                 param_hint="--format")
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
            compute_rfm(persona)
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
INTERRUPTED = "INTERRUPTED"  # the audit outcome of a run stopped by Ctrl+C or SIGTERM before its end


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
        records = (jsonl_records(handle, limit) if mapping is None
                   else mapped_records(mapping, handle, name=name, max_bytes=limit))
        report = dry_run_records(persona, records, origin=name, writer=INGEST)
        record_local(persona, "ingest", "ingest dry run", appended=report.appended, duplicates=report.duplicates,
                     quarantined=report.quarantined)
    if as_json:
        emit_json({"dry_run": True, **report.as_dict()})
    else:
        click.echo("dry run: nothing was stored or quarantined; a real run would report:\n" + report.summary())
    refuse_if_all_quarantined(report, dry_run=True)


def _ingest(persona: Persona, handle: BinaryIO, name: str, mapping: SourceMapping | None,
            progress: Callable[[int], None] | None = None, *, stream: bool = False,
            stop: threading.Event | None = None) -> Any:
    limit = persona.settings.max_event_bytes
    if stream and mapping is not None:  # rows are paced, so that an order's last item rows do not wait
        return ingest_records(persona, live_records(mapping, handle, name=name, max_bytes=limit, stop=stop),
                              origin=name, stream=True, paced=True, catch_up=True, stop=stop, writer=INGEST)
    if mapping is None:
        records: Iterable[Any] = jsonl_records(handle, limit)
    else:
        records = mapped_records(mapping, handle, name=name, max_bytes=limit)
    # a file on a machine with cores to spare: read, map and validate in a second process
    parallel = not stream and (os.cpu_count() or 1) > 1
    # catch_up: the index of whatever a killed ingest committed is brought up to date too
    return ingest_records(persona, records, origin=name, progress=progress, stream=stream, parallel=parallel,
                          catch_up=True, stop=stop, writer=INGEST)


@contextmanager
def stopped_at_once(persona: Persona, stop: Interruption) -> Iterator[None]:
    """A second Ctrl+C or SIGTERM: the ingest stops without indexing or reporting what it
    committed (whole batches; the next ingest indexes them). Said in one line, and audited."""
    try:
        yield
    except KeyboardInterrupt:
        _record_failure("ingest", KeyboardInterrupt(), lambda outcome: record_local(persona, "ingest", "ingest",
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


def require_one(subject: str | None, profile: str | None) -> None:
    if bool(subject) == bool(profile):
        raise click.UsageError("give exactly one of --subject NS:VALUE or --profile ID")


def _who(subject: str | None) -> dict[str, Any]:
    """How a command was told whom it is about, for the audit log (never the identifier)."""
    return {"subject": namespace_of(subject.partition(":")[0])} if subject else {}


def _profile_id(persona: Persona, subject: str | None, profile: str | None) -> str:
    if profile:
        return profile
    assert subject
    found = persona.log.profile_for(*parse_subject(subject))
    if found is None:
        raise UnknownProfileError("no profile is linked to that identifier")
    return found


who = [
    click.option("--subject", metavar="NS:VALUE", help="An identifier, e.g. email:a@example.com."),
    click.option("--profile", metavar="ID", help="A profile id (prf_...)."),
]


def with_who(func: F) -> F:
    for option in reversed(who):
        func = option(func)
    return func


def parse_instant(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-01-01T00:00:00Z", param_hint=option) from None
    if not 1900 <= moment.year <= 9998:
        raise click.BadParameter("use a year from 1900 to 9998", param_hint=option)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cli.command()
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
        doc = profile_view(persona, _profile_id(persona, subject, profile), as_of=when, known_at=known)
        record_local(persona, "profile", "profile", [doc["id"]], fields="attributes,features,identities",
                     asOf=when is not None, knownAt=known is not None, **_who(subject))
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


@cli.command()
@with_who
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@friendly
def history(ctx: click.Context, subject: str | None, profile: str | None, as_json: bool) -> None:
    """Print a person's events, opened, in the order they were recorded (a merged person's
    from every profile merged into them)."""
    require_one(subject, profile)
    with opened(ctx) as persona:
        person = person_of(persona, _profile_id(persona, subject, profile))
        record_local(persona, "history", "history", [person.id], **_who(subject))
        for event in read_person(persona, person):
            if as_json:
                click.echo(orjson.dumps(event.as_dict()).decode())
            else:
                where = f"{event.profile_id} " if person.merged else ""
                click.echo(f"{where}{event.version:>5} {event.occurred_at} {event.source:<8} {event.type:<18} "
                           f"{orjson.dumps(event.data).decode()}")


@cli.command()
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


@cli.command()
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


@cli.command()
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
            record_local(persona, "erase", "erase", outcome="NOT_FOUND", quarantinePurged=purged, **_who(subject))
            raise
        except PersonaError as e:
            _record_failure("erase", e, lambda outcome: record_local(persona, "erase", "erase", outcome=outcome,
                                                                     **_who(subject)))
            raise
        body = erasure.receipt["receipt"]
        record_local(persona, "erase", "erase", [body["profile_id"], *body.get("merged_profiles", {})],
                     **_who(subject))
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


@cli.command()
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
    from persona.purge import last_purge, run

    with opened(ctx) as persona, audited(persona, "purge", now=force, full=rewrite) as audit:
        outcome = run(persona, force=force, rewrite=rewrite, wait_s=wait_s)
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


@cli.group()
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


@cli.group()
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


@cli.command()
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


@cli.command()
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
    from persona.feed import ChangeFeed
    from persona.projector import Projector

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
                    rows = feed.wait(0 if once else wait, limit=5_000)
                    if not rows:
                        if rfm.pending:  # caught up: the scores too
                            rfm.scoring()
                            compute_rfm(persona)
                        if once:
                            break
                        continue
                    grew = sorted({row.stream_id for row in rows})
                    line: dict[str, Any] = {"position": feed.position, "events": len(rows), "profiles": grew}
                    if projector is not None:
                        erased = live_and_erased(persona, grew)[1]
                        line["refreshed"] = projector.refresh([pid for pid in grew if pid not in erased])
                        audit["batches"] += 1
                        audit["events"] += len(rows)
                        audit["refreshed"] += line["refreshed"]
                        if line["refreshed"]:
                            rfm.changed()
                        if rfm.due():
                            rfm.scoring()
                            compute_rfm(persona)
                    click.echo(orjson.dumps(line).decode())
            except KeyboardInterrupt:
                click.echo(f"stopped after position {feed.position}", err=True)


@cli.command()
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
    from persona.migrate import audit as migrate_audit
    from persona.migrate import migrate as migrate_store
    from persona.migrate import parse_target

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
        if table == "events" and counted[table] % 100_000 < rows:
            click.echo(f"  {counted[table]:,} events copied", err=True)

    kinds = {"from": parse_target(source)[0], "to": parse_target(target)[0]}
    try:
        report = migrate_store(settings, source, target, progress)
    except PersonaError as e:
        _record_failure("migrate", e, lambda outcome: migrate_audit(settings, source, outcome, **kinds))
        raise
    done = {"events": report.rows["events"], "rows": sum(report.rows.values()), **kinds}
    migrate_audit(settings, target, "ok", **done)  # the copy's own log says how it was made
    migrate_audit(settings, source, "ok", **done)  # and the source's, that everything in it was copied out
    click.echo(f"copied {report.rows['events']:,} events of {report.rows['streams']:,} streams,"
               f" {report.rows['keys']:,} wrapped keys, {sum(report.rows.values()):,} rows in all")
    click.echo(f"checked: row counts of {len(report.rows)} tables match; {report.events:,} events verified,"
               f" {report.opened:,} opened")
    kind, where = parse_target(target)
    if kind == "postgresql":
        click.echo("to use it: set PERSONA_DATABASE_URL to the target URL (the key file stays as it is)")


@contextmanager
def audited(persona: Persona, command: str, *, operation: str | None = None,
            **detail: Any) -> Iterator[dict[str, Any]]:
    """An entry in the audit log for a command that reads (or replaces) everyone's data:
    `local:COMMAND`, ok with the counts the body puts in the dict it is given, or the outcome
    it failed with (TAMPERED, FAILED; the counts so far with it): one entry per run, written
    when the run ends (an interrupted one included, as FAILED)."""
    found: dict[str, Any] = {}
    what = operation or command
    try:
        yield found
    except (PersonaError, KeyboardInterrupt) as e:
        _record_failure(command, e, lambda outcome: record_local(persona, command, what, outcome=outcome,
                                                                 **detail, **found))
        raise
    record_local(persona, command, what, **detail, **found)


def _record_failure(command: str, error: BaseException, write: Callable[[str], None]) -> None:
    """The failed run's entry, if the store takes one (it may be what failed): the failure itself
    is what the user is told about either way."""
    try:
        write("TAMPERED" if isinstance(error, TamperError)
              else INTERRUPTED if isinstance(error, KeyboardInterrupt) else "FAILED")
    except Exception:  # the original error goes on; this one is only noted
        click.echo(f"note: this {command} could not be recorded in the audit log", err=True)


TORN_LEDGER = ("note: the erasure ledger's last line was cut short by a crash mid-write (that erasure never"
               " committed) and was passed over")


@cli.command()
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

            _record_failure("restore", e, write)
        raise
    if info.ledger_torn:
        click.echo(TORN_LEDGER, err=True)
    click.echo(f"restored the backup taken {info.taken_at}; re-applied {len(info.reapplied)} later erasure(s);"
               f" rebuilt the read models of {info.rebuilt} profile(s)")


@cli.command("profiles")
@click.option("--stage", "stages", multiple=True, type=click.Choice(["new", "active", "at_risk", "churned"]),
              help="Only profiles in this lifecycle stage (repeatable).")
@click.option("--min", "minimums", multiple=True, metavar="FEATURE=N", help="A feature at least N (repeatable).")
@click.option("--max", "maximums", multiple=True, metavar="FEATURE=N", help="A feature at most N (repeatable).")
@click.option("--first", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Page size.")
@click.option("--after", metavar="ID", help="Continue after this profile id (the previous page's last).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@friendly
def profiles_list(ctx: click.Context, stages: tuple[str, ...], minimums: tuple[str, ...], maximums: tuple[str, ...],
                  first: int, after: str | None, as_json: bool) -> None:
    """List profiles from the profile index, filtered by lifecycle stage and feature ranges."""
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
    where = ProfileFilter(lifecycle_stages=frozenset(stages), ranges=ranges)
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
    filtered = bool(stages or minimums or maximums)
    if not page:
        click.echo("no profiles " + ("match" if filtered else "in the index" + (" after that id" if after else
                   " (ingest events first, or `persona rebuild` if they are in the log)")), err=True)
    elif more:
        click.echo(f"{more} more; the next page: persona profiles --after {page[-1].id}"
                   + (" with the same filters" if filtered else ""), err=True)


@cli.command("stats")
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


@cli.command()
@click.option("--projection", metavar="NAME", help="Rebuild only this projection's snapshots (and the index).")
@click.option("--workers", type=click.IntRange(1, 64), help="Processes to use (default: one per core).")
@click.pass_context
@friendly
def rebuild(ctx: click.Context, projection: str | None, workers: int | None) -> None:
    """Drop the profile index and snapshots and rebuild them from the log, in parallel.

    Nothing outside the log and the keys is authoritative: the result is what ingest
    maintains incrementally (the snapshots' plaintext and the index rows, byte for byte).
    Without a terminal, a progress line goes to stderr every PERSONA_PROGRESS_S seconds (10).
    """
    with opened(ctx) as persona, audited(persona, "rebuild", projection=projection is not None) as audit:
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


@cli.command()
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


@cli.group()
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


@cli.command()
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
    export's header is not kept: copy it from the source file), in order; correct them and
    ingest the file like the original. Rows already in the log are skipped as duplicates;
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


# the API server's commands (serve, tokens, audit) live beside it
from persona.api import commands as _api_commands  # noqa: E402,F401 - registers them on `cli`
from persona.models import commands as _model_commands  # noqa: E402,F401 - train, models, predict


def main() -> None:
    cli(prog_name="persona")
