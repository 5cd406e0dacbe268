"""The `persona` command: a thin shell over the library. Each command's help is its documentation.

One module per family of commands; each imports the library, and nothing outside this package
imports it (`python -m persona` runs it). The shared helpers (opening the store, audit entries,
`friendly`, which turns persona's errors into one line) are persona.cli.common's.

A command's module is imported when that command runs, not before: `persona --help` and
`persona --version` load neither the store nor any command's libraries. COMMANDS says where
each command lives and the first paragraph of its help, which `persona --help` lists
(tests/test_cli.py holds it to the commands' own help).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click

from persona import __version__
from persona.errors import PersonaError
from persona.settings import Settings


class Entry(NamedTuple):
    module: str  # in persona.cli
    attribute: str  # the click command or group in it
    summary: str  # the first paragraph of its help


COMMANDS = {
    "audit": Entry("serve", "audit", "Every access to people's data, through the API or this command line, and every"
                                     " refusal (append-only)."),
    "backup": Entry("store", "backup", "Write a consistent copy of the store to DEST (a new file, or a folder): never"
                                       " the key file, nor a read model."),
    "destinations": Entry("destinations", "destinations", "Webhook destinations: signed POSTs on segment entries and"
                                                          " exits, changes of chosen fields, and erasure (add,"
                                                          " status, deliver, retry, update, remove)."),
    "erase": Entry("erasure", "erase", "Erase a person: delete their key, identity links and derived rows; print a"
                                       " signed receipt."),
    "follow": Entry("store", "follow", "Follow the log as events are committed by any process, on any machine."),
    "history": Entry("people", "history", "Print a person's events, opened, in the order they were recorded (a merged"
                                          " person's from every profile merged into them)."),
    "ingest": Entry("ingest", "ingest", "Append the events of FILE; '-' reads standard input."),
    "init": Entry("store", "init", "Create the data directory, its database and a key file (mode 0600)."),
    "keys": Entry("erasure", "keys", "Master key rotation, re-wrapping, and the public key that verifies receipts."),
    "ledger": Entry("erasure", "ledger", "The erasure ledger beside the key file: adopt one an older persona wrote,"
                                         " unsigned."),
    "link": Entry("people", "link", "Declare two identifiers one person. If they belong to two profiles, the profiles"
                                    " are merged: each keeps its own events and key, and the person folds them all."
                                    " One of the two must be known already; a new one gets a profile of its own,"
                                    " merged the same way, where what arrives for it from then on goes. `persona"
                                    " unlink` undoes the merge."),
    "migrate": Entry("store", "migrate", "Copy a whole store to another backend, then check the copy."),
    "models": Entry("models", "models", "The model registry: every version, its held-out metrics beside its"
                                        " baselines, and drift."),
    "predict": Entry("models", "predict", "Score every profile (or the --subjects) with NAME; one prediction a line"
                                          " on standard output, with the features that moved it most."),
    "profile": Entry("people", "profile", "Show a profile: id, version, identities (hashed) and attributes with their"
                                          " provenance."),
    "profiles": Entry("people", "profiles_list", "List profiles from the profile index, filtered by lifecycle stage,"
                                                 " feature ranges and a rule."),
    "purge": Entry("erasure", "purge", "Physically purge what erasures deleted, if a purge is due: for cron."),
    "quarantine": Entry("ingest", "quarantine", "List quarantined records: where they came from and why (their"
                                                " content stays sealed)."),
    "rebuild": Entry("store", "rebuild", "Drop the profile index and snapshots and rebuild them from the log, in"
                                         " parallel."),
    "receipt": Entry("erasure", "receipt", "Erasure receipts: check them offline against a published public key."),
    "recommend": Entry("models", "recommend", "What a person is likely to want next, best first, each with why: the"
                                              " promoted recommendations model (`persona train recommendations`)"
                                              " over their own interactions. With no history yet, the items"
                                              " popular with people who like the category they browse; without"
                                              " personalization consent, the items popular overall."),
    "restore": Entry("store", "restore", "Replace the database with BACKUP, re-applying every erasure made since and"
                                         " rebuilding the read models."),
    "segments": Entry("segments", "segments", "Live segments: named rules kept current on ingest (add, list, members,"
                                              " refresh, remove)."),
    "serve": Entry("serve", "serve", "Serve the GraphQL API at /graphql (HTTP and graphql-transport-ws), the"
                                     " web console at /console (sign in with a token; docs/console.md) and"
                                     " /healthz."),
    "stats": Entry("people", "stats", "Population aggregates from the profile index: counts and means per group."),
    "tokens": Entry("serve", "tokens", "API bearer tokens: create (shown once), list, revoke."),
    "train": Entry("models", "train", "Train each NAME on point-in-time features and store the versions in the"
                                      " registry."),
    "unlink": Entry("people", "unlink", "Undo the merge that joined two identifiers' profiles (a wrong link: a shared"
                                        " phone, a mistyped e-mail). Both people come back with their own histories,"
                                        " and a later record linking the two does not merge them again (only"
                                        " `persona link` does)."),
    "verify": Entry("store", "verify", "Check the whole store: hash chains, that live events open, every row's tag,"
                                       " erasures, ledger, schema."),
}


class Commands(click.Group):
    """A group whose commands are imported when one is run (or its help asked for)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f"persona.cli.{entry.module}")  # heavy: loaded when the command runs
        command: click.Command = getattr(module, entry.attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list `persona --help` shows, as click's own, from the summaries (no module imported)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.Command(name, help=COMMANDS[name].summary).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="persona")
