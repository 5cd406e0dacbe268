"""What every command shares: opening the store, audit entries, errors as one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
import orjson

from persona.audit import namespace_of, record_local
from persona.core import Persona
from persona.engine import ENGINES, Engine, open_engine, running_on
from persona.errors import ConfigurationError, PersonaError, StoreError, TamperError, UnknownProfileError
from persona.settings import Settings

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
        except StoreError as e:  # the store's translation of its driver's error: never a row's values
            click.echo(f"error: database: {e}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"error: {e.strerror or e}{where}", err=True)
            sys.exit(1)

    return run  # type: ignore[return-value]


def engine_options(func: F) -> F:
    """--engine and --scheduler: where a command's batch work runs (persona.engine, docs/scale.md)."""
    func = click.option("--scheduler", metavar="ADDRESS",
                        help="With --engine dask: the scheduler, tcp://HOST:PORT on this machine or tls://HOST:PORT"
                             " (default: DASK_SCHEDULER_ADDRESS).")(func)
    return click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                        help="Where the batch work runs: this machine's processes, or a Dask cluster, each worker"
                             " given only its part's keys.")(func)


@contextmanager
def on_engine(engine: str, scheduler: str | None, workers: int | None = None) -> Iterator[Engine | None]:
    """The batch work started inside runs on this engine (this machine, as before, for local)."""
    if engine == "local" and scheduler is None:
        yield None
        return
    with running_on(open_engine(engine, scheduler=scheduler, workers=workers)) as running:
        yield running


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


INTERRUPTED = "INTERRUPTED"  # the audit outcome of a run stopped by Ctrl+C or SIGTERM before its end


def require_one(subject: str | None, profile: str | None) -> None:
    if bool(subject) == bool(profile):
        raise click.UsageError("give exactly one of --subject NS:VALUE or --profile ID")


def who_shape(subject: str | None) -> dict[str, Any]:
    """How a command was told whom it is about, for the audit log (never the identifier)."""
    return {"subject": namespace_of(subject.partition(":")[0])} if subject else {}


def profile_id_of(persona: Persona, subject: str | None, profile: str | None) -> str:
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
        record_failure(command, e, lambda outcome: record_local(persona, command, what, outcome=outcome,
                                                                 **detail, **found))
        raise
    record_local(persona, command, what, **detail, **found)


def record_failure(command: str, error: BaseException, write: Callable[[str], None]) -> None:
    """The failed run's entry, if the store takes one (it may be what failed): the failure itself
    is what the user is told about either way."""
    try:
        write("TAMPERED" if isinstance(error, TamperError)
              else INTERRUPTED if isinstance(error, KeyboardInterrupt) else "FAILED")
    except Exception:  # the original error goes on; this one is only noted
        click.echo(f"note: this {command} could not be recorded in the audit log", err=True)


TORN_LEDGER = ("note: the erasure ledger's last line was cut short by a crash mid-write (that erasure never"
               " committed) and was passed over")
