"""A synthetic, messy, multi-source dataset with planted ground truth.

    python -m persona.synth --people 60 --seed 7 --out fixtures/people

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
import csv
import heapq
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from persona.pseudonyms import normalise

SHOP, SOCIAL, WEB, APP = "shop_orders.csv", "social.jsonl", "web_clicks.csv", "app_usage.csv"
FILES = (SHOP, SOCIAL, WEB, APP)
CHANNELS = ("shop", "social", "web", "app")
NAMESPACES = ("email", "phone", "shop_user", "social_user", "cookie", "device")
SHOP_HEADER = ["order_id", "user_id", "email", "phone", "created_at", "total", "currency", "channel", "items",
               "sku", "category", "qty", "price"]
WEB_HEADER = ["cookie_id", "user_id", "session_id", "url", "ts", "dwell_s", "category", "referrer"]
APP_HEADER = ["device_id", "user_id", "session_id", "start", "end", "features", "platform"]
SHANGHAI = timezone(timedelta(hours=8))  # no daylight saving since 1991
DAY = 86_400
YEAR_2099_MS = 4_070_908_800_000  # 2099-01-01T00:00:00Z
DAYS = 730  # the default span: long enough for people who left a year ago, and ones who just came

BAD_KINDS = {
    SHOP: ("negative_total", "bad_date", "future", "no_identifier", "currency_conflict"),
    SOCIAL: ("not_json", "unknown_action", "future", "bad_date"),
    WEB: ("empty_url", "future"),
    APP: ("end_before_start", "bad_date", "future"),
}
BAD_RATE = 0.015
DUP_RATE = {SHOP: 0.02, SOCIAL: 0.01, WEB: 0.01, APP: 0.01}
REFORMAT_RATE = 0.015  # shop: the same order again, its time written another way
LATE_RATE = {WEB: 0.005, APP: 0.01}

SURNAMES = ("li", "wang", "zhang", "liu", "chen", "yang", "zhao", "huang", "zhou", "wu", "xu", "sun", "hu", "zhu",
            "gao", "lin", "he", "guo", "ma", "luo", "smith", "garcia", "muller", "rossi", "kim", "tanaka")
GIVEN = ("wei", "fang", "na", "min", "jing", "lei", "jun", "yan", "hui", "tao", "ming", "xin", "yu", "hao", "lan",
         "ping", "qiang", "ying", "maria", "anna", "tom", "lukas", "sofia", "ken", "emma", "leo")
DOMAINS = ("example.com", "example.cn", "example.net", "example.org", "mail.example.com")
MOBILE = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155", "157", "158",
          "159", "166", "177", "180", "181", "182", "186", "187", "188", "189", "191", "198", "199")
PRICES = {"electronics": (199, 6999), "books": (19, 129), "home": (29, 899), "beauty": (39, 599),
          "fashion": (59, 1299), "food": (9, 199), "sports": (49, 1599), "toys": (29, 499)}
CATEGORIES = tuple(PRICES)
SHOP_CHANNELS = ("tmall", "jd", "web", "app", "wechat", "store")
ACTIONS = ("like", "share", "comment", "follow", "message")
PAST = {"like": "liked", "share": "shared", "comment": "commented", "follow": "followed", "message": "messaged"}
REFERRERS = ("https://search.example/", "https://social.example/", "https://mail.example/")
FEATURES = ("scan", "search", "wishlist")
# how created_at is written: (name, weight); "chinese" keeps minutes, "date" the day only
TIME_FORMATS = (("iso_offset", 15), ("iso_z", 15), ("local", 30), ("chinese", 15), ("date", 8), ("compact", 9),
                ("epoch", 8))
EXACT_FORMATS = ("iso_offset", "iso_z", "local", "compact", "epoch")  # to the second
OFFSETS = (1, -5, 0, 9, 8, 2)


@dataclass(slots=True)
class Person:
    index: int
    channels: tuple[str, ...]
    window: tuple[int, int]  # epoch seconds: when this person is active
    categories: tuple[str, ...]
    uid: str | None = None
    emails: list[str] = field(default_factory=list)  # as the person types it (mixed case)
    phone: str | None = None  # 11 digits
    handle: str | None = None
    social_email: bool = False
    cookies: list[str] = field(default_factory=list)
    devices: list[tuple[str, str]] = field(default_factory=list)  # (device id, platform)
    n_orders: int = 0
    split: int = 0  # with two e-mails: orders from this one on use the second
    n_social: int = 0
    n_web: int = 0
    n_app: int = 0
    # filled in while writing
    done: dict[str, int] = field(default_factory=dict)  # sessions/orders written per file
    anchored: set[str] = field(default_factory=set)  # identifiers already written beside the account
    instants: list[int] = field(default_factory=list)  # order times, as written (no two alike)
    seen: dict[tuple[str, str], None] = field(default_factory=dict)  # (namespace, raw) in valid records
    records: dict[str, int] = field(default_factory=dict)  # valid distinct records per channel
    spend: dict[str, Decimal] = field(default_factory=dict)


class Out:
    """One file being written: lines numbered as the ingest numbers them, and what was planted."""

    def __init__(self, directory: Path, name: str, header: list[str] | None) -> None:
        self.name = name
        self.handle: IO[str] = (directory / name).open("w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.handle, lineterminator="\n") if header is not None else None
        self.number = 0  # the last line written (a CSV header is line 1)
        self.lines = self.records = self.valid = self.duplicates = self.reformatted = self.late = 0
        self.events = self.duplicate_events = 0
        self.bad: list[tuple[int, str]] = []
        if header is not None:
            self.write(header)

    def write(self, row: list[str] | str) -> int:
        if isinstance(row, str):
            self.handle.write(row + "\n")
        else:
            assert self.writer is not None
            self.writer.writerow(row)
        self.number += 1
        return self.number

    def data(self, row: list[str] | str) -> int:
        self.lines += 1
        return self.write(row)

    def keep(self, row: list[str] | str, events: int, again: bool) -> None:
        """A valid record written — and written again when it is `again` re-exported (a duplicate)."""
        self.data(row)
        self.records += 1
        if again:
            self.data(row)
            self.records += 1
            self.duplicates += 1
            self.duplicate_events += events

    def plant(self, row: list[str] | str, kind: str) -> None:
        """A bad record, noted with its line and kind."""
        self.bad.append((self.data(row), kind))
        self.records += 1

    def close(self) -> None:
        self.handle.close()

    def stats(self) -> dict[str, int]:
        return {"lines": self.lines, "records": self.records, "valid": self.valid,
                "duplicates": self.duplicates + self.reformatted, "bad": len(self.bad), "late": self.late}


class Plan:
    """Where the mess goes in one file: at random, at each kind's rate, and every kind at least
    once within the first half of the file (so a small sample has them all)."""

    def __init__(self, rng: random.Random, expected: int, bad_kinds: Sequence[str], extras: Sequence[str]) -> None:
        self.rng = rng
        half = max(expected // 2, 1)
        spots = rng.sample(range(half), min(len(bad_kinds), half))
        self.bad_at = dict(zip(sorted(spots), rng.sample(list(bad_kinds), len(bad_kinds)), strict=False))
        self.bad_kinds = bad_kinds
        self.first = {what: rng.randrange(half) for what in extras}
        self.calls = dict.fromkeys(["bad", *extras], 0)

    def happens(self, what: str, rate: float) -> bool:
        """Asked once per chance of it (a duplicate, a late record...)."""
        n = self.calls[what]
        self.calls[what] = n + 1
        return n == self.first[what] or self.rng.random() < rate

    def bad(self) -> str | None:
        """Asked after each valid record written in place: the kind of bad row to write next, if any."""
        n = self.calls["bad"]
        self.calls["bad"] = n + 1
        kind = self.bad_at.pop(n, None)
        if kind is None and self.rng.random() < BAD_RATE:
            kind = self.rng.choice(self.bad_kinds)
        return kind


@dataclass(frozen=True)
class Options:
    people: int
    seed: int
    start: date
    days: int
    orders_per_person: float
    scale_events: float

    @property
    def start_s(self) -> int:
        return int(datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC).timestamp())


# -- people ---------------------------------------------------------------------------------------
def _count(rng: random.Random, mean: float, cap: int = 999) -> int:
    """At least one; about `mean` on average (one plus an exponential)."""
    extra = rng.expovariate(1.0 / (mean - 1)) if mean > 1 else 0.0
    return min(cap, 1 + int(extra + rng.random()))


def _unique(used: set[str], make: Callable[[], str]) -> str:
    while True:
        value = make()
        key = value.strip().lower()
        if key not in used:
            used.add(key)
            return value


def _pick_channels(rng: random.Random) -> tuple[str, ...]:
    size = rng.choices((1, 2, 3, 4), weights=(25, 35, 25, 15))[0]
    pool, weights, chosen = list(CHANNELS), [0.7, 0.5, 0.6, 0.45], []
    for _ in range(size):
        [pick] = rng.choices(range(len(pool)), weights=weights)
        chosen.append(pool.pop(pick))
        weights.pop(pick)
    if "social" in chosen and len(chosen) > 1 and "shop" not in chosen:
        chosen.append("shop")  # social is linked through an e-mail that the shop has seen too
    return tuple(c for c in CHANNELS if c in chosen)


def build_people(options: Options) -> list[Person]:
    rng = random.Random(f"persona.synth:{options.seed}:people")
    used: set[str] = set()
    span = options.days * DAY
    ids = rng.sample(range(10_000, 10_000 + 20 * options.people + 1000), options.people)
    people = []
    for index in range(options.people):
        channels = _pick_channels(rng)
        # they stay 30-100% of the span, and come any day of it: those who come late are cut short
        # by its end, still active (the last month's newcomers are new), the others lapse
        length = int(span * rng.uniform(0.3, 1.0))
        begin = options.start_s + (span - DAY) * rng.randrange(span - length + 1) // (span - length + 1)
        end = min(begin + length, options.start_s + span)
        person = Person(index, channels, (begin, max(end, begin + DAY)), tuple(rng.sample(CATEGORIES, 3)))
        surname, given = rng.choice(SURNAMES), rng.choice(GIVEN)
        shop, web, app, social = (c in channels for c in ("shop", "web", "app", "social"))
        if web or app or (shop and rng.random() < 0.7):
            person.uid = f"u-{ids[index]}"
        if shop:
            guest = person.uid is None
            wants_email = (social and len(channels) > 1) or rng.random() < (0.75 if guest else 0.8)
            wants_phone = rng.random() < 0.5 or (guest and not wants_email)
            if wants_email:
                person.emails.append(_email(rng, used, given, surname))
            if wants_phone:
                person.phone = _unique(used, lambda: rng.choice(MOBILE) + f"{rng.randrange(10**8):08d}")
            person.n_orders = _count(rng, options.orders_per_person)
            if person.uid and person.emails and person.n_orders >= 2 and rng.random() < 0.15:
                person.emails.append(_email(rng, used, given, surname))
                person.split = rng.randint(1, min(3, person.n_orders - 1))
        if social:
            person.handle = _handle(rng, used, given, surname)
            person.social_email = len(channels) > 1 or rng.random() < 0.3
            if person.social_email and not person.emails:
                person.emails.append(_email(rng, used, given, surname))  # social-only: known there alone
            person.n_social = _count(rng, 10 * options.scale_events)
        if web:
            person.cookies = [_unique(used, lambda: f"ck-{rng.getrandbits(64):016x}")
                              for _ in range(rng.choices((1, 2, 3), weights=(55, 30, 15))[0])]
            person.n_web = max(len(person.cookies), _count(rng, 6 * options.scale_events))
        if app:
            platform = rng.choices(("ios", "android", "harmony"), weights=(45, 45, 10))[0]
            for _ in range(rng.choices((1, 2), weights=(75, 25))[0]):
                person.devices.append((_device(rng, used, platform), platform))
            person.n_app = max(len(person.devices), _count(rng, 8 * options.scale_events))
        people.append(person)
    return people


def _email(rng: random.Random, used: set[str], given: str, surname: str) -> str:
    def make() -> str:
        local = rng.choice((f"{given}.{surname}", f"{surname}.{given}", f"{given}{surname}{rng.randrange(100)}",
                            f"{given[0]}{surname}{rng.randrange(1960, 2008)}"))
        if rng.random() < 0.5:  # how the person typed it at signup: capitals here and there
            local = ".".join(part.capitalize() for part in local.split("."))
        return f"{local}@{rng.choice(DOMAINS)}"

    return _unique(used, make)


def _handle(rng: random.Random, used: set[str], given: str, surname: str) -> str:
    return _unique(used, lambda: "@" + rng.choice((f"{given}_{surname}", f"{surname}{given}{rng.randrange(1000)}",
                                                   f"{given}{rng.randrange(100, 10000)}")))


def _device(rng: random.Random, used: set[str], platform: str) -> str:
    def make() -> str:
        if platform == "ios":
            return f"ios-{rng.getrandbits(32):08X}-{rng.getrandbits(16):04X}"
        if platform == "android":
            return f"and-{rng.getrandbits(64):016x}"
        return f"hm-{rng.getrandbits(48):012x}"

    return _unique(used, make)


def schedule(rng: random.Random, people: Sequence[Person], count: Callable[[Person], int]) -> list[tuple[int, int]]:
    """(time, person index) of every session or order of every person, in time order; a
    person's times are distinct seconds."""
    keys: list[tuple[int, int]] = []
    for person in people:
        n = count(person)
        if n:
            lo, hi = person.window
            keys.extend((t, person.index) for t in rng.sample(range(lo, max(hi, lo + n)), n))
    keys.sort()
    return keys


# -- spellings --------------------------------------------------------------------------------------
def messy_email(rng: random.Random, email: str) -> str:
    return rng.choices((email.lower(), email, email.upper(), f" {email} ", f"{email.lower()} "),
                       weights=(40, 35, 8, 10, 7))[0]


def messy_phone(rng: random.Random, digits: str) -> str:
    return rng.choice((f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}", digits,
                       f"{digits[:3]}-{digits[3:7]}-{digits[7:]}", f"+86{digits}"))


def messy_id(rng: random.Random, value: str) -> str:
    return f" {value}" if rng.random() < 0.03 else (f"{value} " if rng.random() < 0.03 else value)


def written_time(t: int, form: str, offset_h: int = 8) -> str:
    """An instant as one of the shop's ways of writing it (times without an offset are Shanghai's)."""
    local = datetime.fromtimestamp(t, SHANGHAI)
    if form == "iso_offset":
        return datetime.fromtimestamp(t, timezone(timedelta(hours=offset_h))).isoformat()
    if form == "iso_z":
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == "local":
        return local.strftime("%Y-%m-%d %H:%M:%S")
    if form == "chinese":
        return f"{local.year}年{local.month}月{local.day}日 {local.hour:02d}:{local.minute:02d}"
    if form == "date":
        return local.strftime("%Y%m%d")
    if form == "compact":
        return local.strftime("%Y%m%d%H%M%S")
    return str(t)


def truncated(t: int, form: str) -> int:
    """The instant a form can hold: minutes for Chinese dates, Shanghai midnight for a date."""
    if form == "chinese":
        return t - t % 60
    if form == "date":
        return t - (t + 8 * 3600) % DAY
    return t


def future_time(rng: random.Random) -> str:
    """A time in 2099 (the ingest refuses what lies more than a day ahead)."""
    moment = datetime(2099, rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24), rng.randrange(60))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def written_total(rng: random.Random, total: Decimal, currency: str) -> tuple[str, str]:
    """(total, currency column) as exports write them; the mark and the column never disagree."""
    if currency == "EUR":
        return f"€{total:.2f}", rng.choice(("EUR", "EUR", ""))
    if currency == "USD":
        return f"${total:.2f}", rng.choice(("USD", "USD", ""))
    plain = str(int(total)) if total == total.to_integral_value() else f"{total:.2f}".rstrip("0")
    form = rng.choices(("¥grouped", "plain", "grouped", "code", "fullwidth", "rmb"), weights=(30, 20, 20, 12, 10, 8))[0]
    if form == "¥grouped":
        return f"¥{total:,.2f}", rng.choice(("", "CNY"))
    if form == "plain":
        return plain, rng.choice(("", "CNY"))
    if form == "grouped":
        return f"{total:,.2f}", rng.choice(("", "CNY"))
    if form == "code":
        return f"CNY {plain}", rng.choice(("", "CNY"))
    if form == "fullwidth":
        return f"￥{total:.2f}", ""
    return f"RMB {total:,.2f}", ""


# -- the shop ------------------------------------------------------------------------------------------
@dataclass
class Order:
    order_id: str
    instant: int
    form: str
    rows: list[list[str]]
    events: int


def order_ids(rng: random.Random) -> Callable[[], str]:
    state = [rng.randrange(100_000, 900_000)]

    def next_id() -> str:
        state[0] += rng.randint(1, 3)
        return f"SO-{state[0]}"

    return next_id


def shop_events(uid: str, email: str, phone: str) -> int:
    """Events the shop mapping makes of a row: the order, e-mail and phone each linked when
    another identifier is there to link them to."""
    return 1 + bool(email and (uid or phone)) + bool(phone and (uid or email))


def make_order(rng: random.Random, person: Person, t: int, next_id: Callable[[], str]) -> Order:
    j = person.done.get(SHOP, 0)
    person.done[SHOP] = j + 1
    email = person.emails[1 if person.split and j >= person.split else 0] if person.emails else None
    uid, phone = person.uid, person.phone
    use_email = use_phone = False
    if uid is not None:
        use_email = email is not None and (email not in person.anchored or rng.random() < 0.5)
        use_phone = phone is not None and (phone not in person.anchored or rng.random() < 0.3)
        new = (use_email and email not in person.anchored) or (use_phone and phone not in person.anchored)
        if not new and rng.random() < 0.12 and (email in person.anchored or phone in person.anchored):
            uid = None  # paid without logging in: with an identifier seen beside the account before
            use_email = email in person.anchored and (use_email or phone not in person.anchored)
            use_phone = phone in person.anchored and (use_phone or not use_email)
        else:
            person.anchored.update(x for x, used in ((email, use_email), (phone, use_phone)) if used and x)
    else:  # a guest: the e-mail on every order (else the phone), the phone now and then
        use_email = email is not None
        use_phone = phone is not None and (email is None or phone not in person.anchored or rng.random() < 0.4)
        person.anchored.update(x for x, used in ((email, use_email), (phone, use_phone)) if used and x)
    uid_text = messy_id(rng, uid) if uid else ""
    email_text = messy_email(rng, email) if use_email and email else ""
    phone_text = messy_phone(rng, phone) if use_phone and phone else ""
    for namespace, raw, text in (("shop_user", uid, uid_text), ("email", email, email_text),
                                 ("phone", phone, phone_text)):
        if text and raw:
            person.seen[(namespace, raw)] = None

    form = rng.choices([f for f, _ in TIME_FORMATS], weights=[w for _, w in TIME_FORMATS])[0]
    if truncated(t, form) in person.instants:
        form = "iso_z"  # two orders of a person never share an instant
    instant = truncated(t, form)
    person.instants.append(instant)
    offset = rng.choice(OFFSETS)
    created = written_time(instant, form, offset)

    currency = rng.choices(("CNY", "EUR", "USD"), weights=(95, 3, 2))[0]
    items = []
    for _ in range(rng.choices((1, 2, 3, 4), weights=(50, 30, 15, 5))[0]):
        category = rng.choice(person.categories) if rng.random() < 0.7 else rng.choice(CATEGORIES)
        lo, hi = PRICES[category]
        price = Decimal(rng.randint(lo, hi))
        if currency != "CNY":
            price = (price / 8).quantize(Decimal("0.01"))
        elif rng.random() < 0.2:
            price -= Decimal(rng.choice(("0.10", "0.50", "0.01")))
        items.append((f"SKU-{category[:2].upper()}-{rng.randint(1, 400)}", category, rng.choices(
            (1, 2, 3), weights=(80, 15, 5))[0], price))
    total = sum((qty * price for _, _, qty, price in items), Decimal(0))
    total_text, currency_text = written_total(rng, total, currency)
    person.spend[currency] = person.spend.get(currency, Decimal(0)) + total
    channel = rng.choice(SHOP_CHANNELS)
    order_id = next_id()
    head = [order_id, uid_text, email_text, phone_text, created, total_text, currency_text, channel]
    if rng.random() < 0.6:
        blob = json.dumps([{"sku": s, "category": c, "qty": q, "price": money(p)} for s, c, q, p in items],
                          separators=(",", ":"))
        rows = [[*head, blob, "", "", "", ""]]
    else:
        rows = [[*head, "", s, c, str(q), money(p)] for s, c, q, p in items]
    return Order(order_id, instant, form, rows, shop_events(uid_text, email_text, phone_text))


def bad_order(rng: random.Random, person: Person, t: int, kind: str, next_id: Callable[[], str]) -> list[str]:
    """One row the ingest must refuse; it carries at most an identifier the person's valid
    orders carry too, so it never holds the only link between two of them."""
    uid, email, phone = "", "", ""
    if kind != "no_identifier":
        if person.uid:
            uid = person.uid
        elif person.emails:
            email = messy_email(rng, person.emails[0])
        else:
            phone = messy_phone(rng, person.phone or "")
    created = written_time(t, rng.choice(("local", "iso_z", "chinese")))
    total, currency = f"{rng.randint(20, 500)}.00", ""
    if kind == "negative_total":
        total = rng.choice(("-50", "-¥50.00", f"-{rng.randint(1, 300)}"))
    elif kind == "bad_date":
        created = "not a date"
    elif kind == "future":
        created = future_time(rng)
    elif kind == "currency_conflict":
        total, currency = f"€{rng.randint(10, 90)}.50", "CNY"
    category = rng.choice(CATEGORIES)
    blob = json.dumps([{"sku": f"SKU-{category[:2].upper()}-{rng.randint(1, 400)}", "category": category,
                        "qty": 1, "price": total.lstrip("-¥€")}], separators=(",", ":"))
    return [next_id(), uid, email, phone, created, total, currency, rng.choice(SHOP_CHANNELS), blob, "", "", "", ""]


def write_shop(out: Out, people: list[Person], options: Options) -> None:
    rng = random.Random(f"persona.synth:{options.seed}:shop")
    keys = schedule(rng, people, lambda p: p.n_orders)
    plan = Plan(rng, len(keys), BAD_KINDS[SHOP], ("duplicate", "reformatted"))
    next_id = order_ids(rng)
    later: list[tuple[int, Order, bool]] = []  # (orders to wait, order, reformatted)
    last = ""  # the order id of the group written last: a copy right after it would join that group

    def put(order: Order) -> None:
        nonlocal last
        for row in order.rows:
            out.data(row)
        out.records += 1
        last = order.order_id

    for t, index in keys:
        person = people[index]
        order = make_order(rng, person, t, next_id)
        put(order)
        out.valid += 1
        out.events += order.events
        person.records["shop"] = person.records.get("shop", 0) + 1
        if plan.happens("duplicate", DUP_RATE[SHOP]):
            later.append((rng.randint(1, 30), order, False))
        elif plan.happens("reformatted", REFORMAT_RATE):
            form = rng.choice([f for f in EXACT_FORMATS if f != order.form])
            created = written_time(order.instant, form, rng.choice(OFFSETS))
            rows = [[*row[:4], created, *row[5:]] for row in order.rows]
            later.append((rng.randint(1, 30), Order(order.order_id, order.instant, form, rows, order.events), True))
        kind = plan.bad()
        if kind is not None:
            row = bad_order(rng, person, t, kind, next_id)
            out.plant(row, kind)
            last = row[0]
        waiting = []
        for wait, copy, reformatted in later:
            if wait > 1 or copy.order_id == last:
                waiting.append((wait - 1, copy, reformatted))
                continue
            put(copy)
            out.duplicate_events += copy.events
            if reformatted:
                out.reformatted += 1
            else:
                out.duplicates += 1
        later = waiting
    for _, copy, reformatted in later:  # the end of the export: the copies still waiting go last,
        if copy.order_id != last:  # but never right after their own order (they would join its group)
            put(copy)
            out.duplicate_events += copy.events
            out.reformatted += reformatted
            out.duplicates += not reformatted


# -- social ------------------------------------------------------------------------------------------
def write_social(out: Out, people: list[Person], options: Options) -> None:
    rng = random.Random(f"persona.synth:{options.seed}:social")
    keys = schedule(rng, people, lambda p: p.n_social)
    plan = Plan(rng, len(keys), BAD_KINDS[SOCIAL], ("duplicate",))
    for t, index in keys:
        person = people[index]
        assert person.handle is not None
        j = person.done.get(SOCIAL, 0)
        person.done[SOCIAL] = j + 1
        line: dict[str, Any] = {"handle": messy_id(rng, person.handle)}
        person.seen[("social_user", person.handle)] = None
        if person.social_email and (j == 0 or rng.random() < 0.3):
            line["email"] = messy_email(rng, person.emails[0])
            person.seen[("email", person.emails[0])] = None
        action = rng.choice(ACTIONS)
        line["action"] = PAST[action] if rng.random() < 0.25 else action
        line["target"] = {"follow": f"brand-{rng.randint(1, 300)}", "message": "shop-support"}.get(
            action, f"post-{rng.randint(1, 99_999)}")
        if rng.random() < 0.8:
            line["category"] = rng.choice(person.categories)
        roll = rng.random()
        if roll < 0.4:
            line["at"] = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif roll < 0.6:
            line["at"] = datetime.fromtimestamp(t, SHANGHAI).isoformat()
        else:
            line["at"] = t * 1000 + rng.randrange(1000)
        text = json.dumps(line, ensure_ascii=False)
        events = 1 + ("email" in line)
        out.valid += 1
        out.events += events
        person.records["social"] = person.records.get("social", 0) + 1
        out.keep(text, events, plan.happens("duplicate", DUP_RATE[SOCIAL]))
        kind = plan.bad()
        if kind is not None:
            out.plant(bad_social(rng, person.handle, t, kind, len(out.bad)), kind)


def bad_social(rng: random.Random, handle: str, t: int, kind: str, serial: int) -> str:
    """A line the ingest must refuse. No two alike: quarantine keeps identical records once."""
    target = f"post-{100_000 + serial}"
    if kind == "not_json":
        return json.dumps({"handle": handle, "target": target})[:-1] + ', "action":'
    line: dict[str, Any] = {"handle": handle, "action": rng.choice(ACTIONS), "target": target, "at": t * 1000}
    if kind == "unknown_action":
        line["action"] = "wave"
    elif kind == "future":
        line["at"] = future_time(rng).replace(" ", "T") + "Z"
    else:
        line["at"] = "not a date"
    return json.dumps(line, ensure_ascii=False)


# -- web -----------------------------------------------------------------------------------------------
def write_web(out: Out, people: list[Person], options: Options) -> None:
    rng = random.Random(f"persona.synth:{options.seed}:web")
    keys = schedule(rng, people, lambda p: p.n_web)
    plan = Plan(rng, len(keys), BAD_KINDS[WEB], ("duplicate", "late"))
    pending: list[tuple[int, int, list[str], int]] = []  # (ts ms, sequence, row, person): clicks not yet due
    late: list[list[str]] = []
    sequence = rng.randrange(1 << 28)

    def emit(row: list[str], person: Person) -> None:
        logged = bool(row[1])
        person.seen[("cookie", row[0].strip())] = None
        if logged and person.uid:
            person.seen[("shop_user", person.uid)] = None
        person.records["web"] = person.records.get("web", 0) + 1
        out.valid += 1
        out.events += 1 + logged
        if plan.happens("late", LATE_RATE[WEB]):
            late.append(row)
            return
        out.keep(row, 1 + logged, plan.happens("duplicate", DUP_RATE[WEB]))
        kind = plan.bad()
        if kind is not None:
            ts = int(row[4]) + 1 if kind == "empty_url" else YEAR_2099_MS + int(row[4]) % (365 * DAY * 1000)
            bad = [row[0], "", f"ws-{rng.getrandbits(40):010x}", "" if kind == "empty_url" else row[3], str(ts),
                   "3", "", ""]
            out.plant(bad, kind)

    for t, index in keys:
        while pending and pending[0][0] < t * 1000:
            _, _, row, who = heapq.heappop(pending)
            emit(row, people[who])
        person = people[index]
        assert person.uid is not None
        j = person.done.get(WEB, 0)
        person.done[WEB] = j + 1
        first = j < len(person.cookies)  # a cookie's first session: the person logs in during it
        cookie = person.cookies[j] if first else rng.choice(person.cookies)
        views = min(15, 1 + int(rng.expovariate(1 / 3)))
        login = (0 if rng.random() < 0.5 else rng.randrange(views)) if first or rng.random() < 0.45 else views
        session = f"ws-{sequence:08x}"
        sequence += 1
        clock = t
        for v in range(views):
            category = rng.choice(person.categories) if rng.random() < 0.7 else rng.choice(CATEGORIES)
            page = rng.random()
            if page < 0.6:
                url, cat = f"https://shop.example/{category}/sku-{rng.randint(1, 400)}", category
            elif page < 0.8:
                url, cat = f"https://shop.example/search?q={category}", ""
            else:
                url, cat = rng.choice(("https://shop.example/", "https://shop.example/cart")), ""
            dwell = rng.randint(2, 240)
            written = f"{dwell}.5" if rng.random() < 0.3 else str(dwell)
            referrer = rng.choice(REFERRERS) if v == 0 and rng.random() < 0.5 else ""
            row = [messy_id(rng, cookie), messy_id(rng, person.uid) if v >= login else "", session, url,
                   str(clock * 1000 + j % 1000), written, cat, referrer]  # ms: no two rows of a cookie alike
            heapq.heappush(pending, (int(row[4]), sequence * 64 + v, row, index))
            clock += dwell + 1
    while pending:
        _, _, row, who = heapq.heappop(pending)
        emit(row, people[who])
    for row in late:
        out.data(row)
        out.records += 1
    out.late = len(late)


# -- app -----------------------------------------------------------------------------------------------
def write_app(out: Out, people: list[Person], options: Options) -> None:
    rng = random.Random(f"persona.synth:{options.seed}:app")
    keys = schedule(rng, people, lambda p: p.n_app)
    plan = Plan(rng, len(keys), BAD_KINDS[APP], ("duplicate", "late"))
    late: list[list[str]] = []
    sequence = rng.randrange(1 << 28)
    stamp = "%Y-%m-%d %H:%M:%S"
    for t, index in keys:
        person = people[index]
        assert person.uid is not None
        j = person.done.get(APP, 0)
        person.done[APP] = j + 1
        first = j < len(person.devices)
        device, platform = person.devices[j] if first else rng.choice(person.devices)
        signed = first or rng.random() < 0.6
        end = t + rng.randint(20, 2400)
        features = "|".join(f for f in FEATURES if rng.random() < 0.4)
        row = [messy_id(rng, device), messy_id(rng, person.uid) if signed else "", f"as-{sequence:08x}",
               datetime.fromtimestamp(t, UTC).strftime(stamp), datetime.fromtimestamp(end, UTC).strftime(stamp),
               features, platform]
        sequence += 1
        person.seen[("device", device)] = None
        if signed:
            person.seen[("shop_user", person.uid)] = None
        person.records["app"] = person.records.get("app", 0) + 1
        out.valid += 1
        out.events += 1 + signed
        if plan.happens("late", LATE_RATE[APP]):
            late.append(row)
            continue
        out.keep(row, 1 + signed, plan.happens("duplicate", DUP_RATE[APP]))
        kind = plan.bad()
        if kind is not None:
            bad = [device, "", f"as-{sequence:08x}", row[3], row[4], "", platform]
            sequence += 1
            if kind == "end_before_start":
                bad[4] = datetime.fromtimestamp(t - rng.randint(60, 3600), UTC).strftime(stamp)
            elif kind == "bad_date":
                bad[3] = "not a date"
            else:
                bad[3] = future_time(rng)
                bad[4] = bad[3][:11] + "23:59:59"
            out.plant(bad, kind)
    for row in late:
        out.data(row)
        out.records += 1
    out.late = len(late)


# -- truth ---------------------------------------------------------------------------------------------
def truth_of(person: Person) -> dict[str, Any]:
    order = {ns: n for n, ns in enumerate(NAMESPACES)}
    identifiers = sorted(((ns, normalise(ns, raw)) for ns, raw in person.seen), key=lambda p: order[p[0]])
    return {
        "person": f"p{person.index + 1:05d}",
        "identifiers": [list(pair) for pair in identifiers],
        "orders": person.records.get("shop", 0),
        "spend": {c: money(person.spend[c]) for c in sorted(person.spend)},
        "channels": [c for c in CHANNELS if person.records.get(c)],
        "records": {c: person.records[c] for c in CHANNELS if person.records.get(c)},
    }


def write_truth(directory: Path, options: Options, people: list[Person], outs: dict[str, Out]) -> None:
    head: dict[str, Any] = {
        "generator": "persona.synth",
        "seed": options.seed,
        "arguments": {"people": options.people, "start": options.start.isoformat(), "days": options.days,
                      "orders_per_person": options.orders_per_person, "scale_events": options.scale_events},
        "files": {name: out.stats() for name, out in outs.items()},
        "expected_ingest": {name: {"events": out.events, "duplicates": out.duplicate_events,
                                   "quarantined": len(out.bad)} for name, out in outs.items()},
        "bad_rows": {name: [line for line, _ in out.bad] for name, out in outs.items()},
        "bad_row_kinds": {name: {str(line): kind for line, kind in out.bad} for name, out in outs.items()},
        "duplicates": {SHOP: {"exact": outs[SHOP].duplicates, "reformatted": outs[SHOP].reformatted},
                       **{name: {"exact": outs[name].duplicates} for name in (SOCIAL, WEB, APP)}},
        "late": {name: outs[name].late for name in (WEB, APP)},
    }
    with (directory / "truth.json").open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("{\n")  # one key, or one person, per line: readable, and diffs stay small
        for key, value in head.items():
            handle.write(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
        handle.write(' "people": [\n')
        for n, person in enumerate(people):
            handle.write("  " + json.dumps(truth_of(person), ensure_ascii=False))
            handle.write(",\n" if n + 1 < len(people) else "\n")
        handle.write(" ]\n}\n")


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
        prog="python -m persona.synth",
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
