"""The `persona` command: a thin shell over the library. Each command's help is its documentation.

One module per family of commands; each imports the library, and nothing outside this package
imports it (`python -m persona` runs it). The shared helpers (opening the store, audit entries,
`friendly`, which turns persona's errors into one line) are persona.cli.common's.
"""

from __future__ import annotations

import click

from persona import __version__
from persona.cli import erasure, ingest, models, people, serve, store
from persona.errors import PersonaError
from persona.settings import Settings


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


for command in (
    store.init, ingest.ingest, people.profile, people.history, people.link, people.unlink, erasure.erase,
    erasure.purge, erasure.receipt, erasure.keys, store.backup, store.follow, store.migrate, store.restore,
    people.profiles_list, people.stats, store.rebuild, store.verify, erasure.ledger, ingest.quarantine,
    serve.serve, serve.tokens, serve.audit, models.train, models.models, models.predict,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="persona")
