"""A synthetic, messy, multi-source dataset with planted ground truth.

    python -m persona.testing.exports --people 60 --seed 7 --out fixtures/people

writes four exports that the built-in sources read (`persona ingest FILE --source NAME`) and
`truth.json`, what a perfect system would conclude from them. The same arguments always give
the same bytes: one `random.Random` per file, seeded from `--seed`. The one use of the wall clock
is the default span: the `--days` before today (UTC), so that the people look current when
ingested — a mix of new, active, at-risk and churned customers. `--end` or `--start` fixes it.

The people
----------
Each person uses a random subset of the four channels (most two to four, every one at least
one), and is only ever known by identifiers, never by a name in the data:

- shop (`shop_orders.csv`): an account (`shop_user`, `u-<n>`) and/or e-mail and/or phone on
  each order. An account holder's orders all carry the account, except a few paid with an
  e-mail or phone already seen beside it; the first order with a new e-mail or phone always
  carries the account too. Some account holders change e-mail: orders 1..k use one, later
  orders another, the account links them. A guest's orders all carry the e-mail (or, without
  one, the phone).
- web (`web_clicks.csv`), app (`app_usage.csv`): one to three cookies, one or two devices.
  They log in with the shop account (web, app and shop share one login), so only account
  holders use them; every cookie and device has a logged-in row, though not necessarily its
  first (a cookie first seen anonymously is the hard case for identity resolution).
- social (`social.jsonl`): a handle. A person on social and elsewhere puts their first
  e-mail, which their shop orders also carry, on some lines (always their first line); a
  social-only person may have an e-mail on social or be just a handle.

No two people share an identifier. So the truth is recoverable from the valid records alone:
joining the identifiers that one valid record carries together gives exactly the people.

The mess (each counted or listed in truth.json)
-----------------------------------------------
- Spellings: e-mails in other cases and with spaces around, phones as `+86 139 1234 5678`,
  `13912345678`, `139-1234-5678`, `+8613912345678`; ids with stray spaces; truth holds them
  normalised as persona does (`persona.pseudonyms.normalise`).
- Times written seven ways in the shop (ISO with an offset or Z, `2025-03-05 18:00:00` and
  compact forms in Shanghai time, `2025年3月4日 14:05`, a date alone, epoch seconds); ISO or
  epoch milliseconds on social; epoch ms on the web; UTC `YYYY-MM-DD HH:MM:SS` in the app.
- Amounts as `¥1,299.00`, `1299`, `1,299.00`, `CNY 1299.5`, `RMB 12.00`, `￥88.00`, and a few
  orders in EUR (`€45.50`) or USD (`$12.00`); items as a JSON column or one row per item.
- Exact duplicates: an order re-exported later in the file, a line repeated (all files).
- Natural-key duplicates: an order re-exported later with its time in another format (the
  same instant): still one order.
- Late events: some web clicks and app sessions written at the end of their file.
- Bad rows (about 1.5%; more in a small file, which gets every kind at least once) that the
  ingest must quarantine, listed by the line number it reports (CSV lines count the header):
  a negative total, `not a date`, the year 2099, no identifier, a € total booked as CNY, an
  empty url, a session ending before it starts, a truncated JSON line, an unknown action
  (`wave`). Bad rows are extra records, no two alike (quarantine keeps identical ones once):
  none is ever the only record linking two identifiers, and truth counts valid orders only.

truth.json: `people` (identifiers, valid distinct orders, spend per currency, channels,
records per source), `files` (lines, records, valid, duplicates, bad, late per file),
`expected_ingest` (what `persona ingest --json` should report into an empty store: the
duplicates and the quarantined records exactly; `events`, the events the records make, is
what is appended before identity resolution adds its own), `bad_rows` (line numbers) with
`bad_row_kinds`, `duplicates` and `late`. The data spans `--days` up to `--end` (default today),
or from `--start`: keep it in the past, as the ingest refuses events from the future.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from persona.testing.exports.files import Out, write_app, write_shop, write_social, write_web
from persona.testing.exports.people import (
    APP,
    APP_HEADER,
    BAD_KINDS,
    CHANNELS,
    DAYS,
    FILES,
    SHOP,
    SHOP_HEADER,
    SOCIAL,
    WEB,
    WEB_HEADER,
    Options,
    build_people,
)
from persona.testing.exports.truth import write_truth

__all__ = ["APP", "BAD_KINDS", "CHANNELS", "FILES", "SHOP", "SOCIAL", "WEB", "Options", "generate", "main",
           "parser"]


def generate(directory: Path, options: Options) -> dict[str, Any]:
    """Write the four exports and truth.json into `directory`; returns the per-file counts."""
    directory.mkdir(parents=True, exist_ok=True)
    people = build_people(options)
    outs = {SHOP: Out(directory, SHOP, SHOP_HEADER), SOCIAL: Out(directory, SOCIAL, None),
            WEB: Out(directory, WEB, WEB_HEADER), APP: Out(directory, APP, APP_HEADER)}
    writers = {SHOP: write_shop, SOCIAL: write_social, WEB: write_web, APP: write_app}
    for name, out in outs.items():
        try:
            writers[name](out, people, options)
        finally:
            out.close()
    write_truth(directory, options, people, outs)
    return {name: out.stats() for name, out in outs.items()}



# -- command line -----------------------------------------------------------------------------------
def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than zero")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m persona.testing.exports",
        description="Write a synthetic, messy, multi-source dataset with planted ground truth: shop_orders.csv, "
                    "social.jsonl, web_clicks.csv and app_usage.csv (for `persona ingest FILE --source NAME`) and "
                    "truth.json (who is who, valid orders and spend per person, bad rows by line, duplicates, "
                    "late events). The same arguments always write the same bytes.",
        epilog="With the defaults a person makes about 26 lines: --people 38500 writes about 1M (or --people 20000 "
               "--scale-events 2: fewer, busier people). The activity ends before today unless --end or --start "
               "says otherwise (give one for the same bytes on another day); keep it in the past: the ingest "
               "refuses events from the future.")
    p.add_argument("--people", type=_positive(int), required=True, metavar="N", help="how many people")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write into (created)")
    p.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--end", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                      help="the activity stops before this day, UTC (default today: current-looking people)")
    when.add_argument("--start", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                      help="first day of activity, UTC, instead of counting back from --end")
    p.add_argument("--days", type=_positive(int), default=DAYS, metavar="D",
                   help=f"days of activity (default {DAYS})")
    p.add_argument("--orders-per-person", type=_positive(float), default=3.0, metavar="F",
                   help="mean orders of a person who shops (default 3)")
    p.add_argument("--scale-events", type=_positive(float), default=1.0, metavar="F",
                   help="multiplies web sessions, app sessions and social interactions per person (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    start = args.start or (args.end or datetime.now(UTC).date()) - timedelta(days=args.days)
    options = Options(args.people, args.seed, start, args.days, args.orders_per_person, args.scale_events)
    stats = generate(args.out, options)
    files = ", ".join(f"{name} {s['lines']} lines ({s['bad']} bad, {s['duplicates']} duplicates)"
                      for name, s in stats.items())
    total = sum(s["lines"] for s in stats.values())
    print(f"wrote {args.out}: {options.people} people, {total} lines: {files}; truth.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
