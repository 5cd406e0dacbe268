"""How the exports write a value: e-mails, phones and ids with stray case and spaces, instants
seven ways, amounts with and without currency marks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from persona.testing.exports.people import DAY, SHANGHAI


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
