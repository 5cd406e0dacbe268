"""The made-up people of the exports: who uses which channel, with which identifiers, when; and the
constants every export shares (file names, channels, bad-row kinds and rates, price ranges)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

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
