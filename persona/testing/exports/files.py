"""The four exports, one writer each (shop orders, social, web clicks, app usage): valid records
with the mess planted among them — duplicates, late records and bad rows — counted as they go."""

from __future__ import annotations

import csv
import heapq
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from persona.testing.exports.people import (
    ACTIONS,
    APP,
    BAD_KINDS,
    BAD_RATE,
    CATEGORIES,
    DAY,
    DUP_RATE,
    EXACT_FORMATS,
    FEATURES,
    LATE_RATE,
    OFFSETS,
    PAST,
    PRICES,
    REFERRERS,
    REFORMAT_RATE,
    SHANGHAI,
    SHOP,
    SHOP_CHANNELS,
    SOCIAL,
    TIME_FORMATS,
    WEB,
    YEAR_2099_MS,
    Options,
    Person,
    schedule,
)
from persona.testing.exports.spellings import (
    future_time,
    messy_email,
    messy_id,
    messy_phone,
    money,
    truncated,
    written_time,
    written_total,
)


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
