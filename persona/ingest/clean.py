"""Turning what exports actually contain into canonical values: times, amounts, numbers,
gender labels and country names. Pure functions, used by the source adapters.

Every parser either returns a clean value or raises ValidationError with a reason that
names the field and what was expected — never the value itself, which may be personal.
A missing value (None, "" or whitespace) is None: left unknown, never invented.
"""

from __future__ import annotations

import gettext
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import pycountry

from persona.errors import ValidationError

# -- times -------------------------------------------------------------------------------------
EPOCH_MS_FROM = 100_000_000_000  # larger epochs are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973

_ISO_LIKE = re.compile(
    r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?)?"
    r"\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?$"
)
_CHINESE = re.compile(
    r"^(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"
    r"(?:\s*(上午|中午|下午|晚上|凌晨|早上)?\s*(\d{1,2})\s*[时点:：]\s*(\d{1,2})?\s*(?:分|[:：])?\s*(?:(\d{1,2})\s*秒?)?)?$"
)
_COMPACT = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _offset(text: str) -> tzinfo:
    if text in ("Z", "z", "UTC"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_instant(value: Any, *, field: str, formats: Sequence[str] = (), tz: tzinfo = UTC,
                  unit: str | None = None) -> datetime | None:
    """An instant, in UTC, from what exports write for one:

    - epoch numbers (or strings of 10/13 digits) in seconds or milliseconds — `unit` "s" or
      "ms" says which, else the magnitude does;
    - `YYYYMMDD`, `YYYYMMDDHHMM`, `YYYYMMDDHHMMSS`;
    - ISO 8601 and its relatives: `-`, `/` or `.` between date parts, unpadded months and
      days, `T` or a space, seconds and fractions optional, `Z` or an offset;
    - Chinese dates: `2025年3月4日`, `2025年03月04日 14:05`, `2025年3月4日 下午2点30分`;
    - anything `formats` (strptime patterns) describe, tried first.

    A time without an offset is in `tz` (the source's zone, declared by its mapping).
    """
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{field}: not a date or time")
    if isinstance(value, int) and unit is None and len(str(value)) in (8, 14):
        value = str(value)  # 20250304 written as a number is a date, not an epoch in 1970
        # (12 digits stay an epoch: milliseconds from 1973 to 2001 have 12 digits too)
    elif isinstance(value, int | float):
        return _epoch(float(value), field, unit)
    if not isinstance(value, str):
        raise ValidationError(f"{field}: not a date or time")
    text = value.strip()
    moment = _by_formats(text, formats) or _by_shape(text, field, unit)
    if moment is None:
        raise ValidationError(f"{field}: not a date or time in a known format"
                              + (" or the mapping's formats" if formats else ""))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError(f"{field}: out of range") from None


def _epoch(number: float, field: str, unit: str | None) -> datetime:
    if unit not in (None, "s", "ms"):
        raise ValidationError(f"{field}: the mapping's unit must be s or ms")
    milliseconds = unit == "ms" or (unit is None and abs(number) >= EPOCH_MS_FROM)
    try:
        return datetime.fromtimestamp(number / 1000 if milliseconds else number, UTC)
    except (OverflowError, ValueError, OSError):
        raise ValidationError(f"{field}: epoch time out of range") from None


def _by_formats(text: str, formats: Sequence[str]) -> datetime | None:
    for pattern in formats:
        try:
            moment = datetime.strptime(text, pattern)
        except ValueError:
            continue
        if "%Z" in pattern and moment.tzinfo is None and re.search(r"\b(UTC|GMT|Z)\b", text):
            moment = moment.replace(tzinfo=UTC)  # strptime reads the zone's name but keeps the time naive
        return moment
    return None


def _by_shape(text: str, field: str, unit: str | None) -> datetime | None:
    try:
        if text.isascii() and text.isdigit():
            if len(text) in (10, 13):
                return _epoch(float(text), field, unit or ("ms" if len(text) == 13 else "s"))
            pattern = _COMPACT.get(len(text))
            return datetime.strptime(text, pattern) if pattern else None
        found = _ISO_LIKE.match(text)
        if found:
            y, mo, d, h, mi, s, frac, zone = found.groups()
            micro = int((frac or "0").ljust(6, "0"))
            moment = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro)
            return moment.replace(tzinfo=_offset(zone)) if zone else moment
        found = _CHINESE.match(text)
        if found:
            y, mo, d, half, h, mi, s = found.groups()
            hour = int(h or 0)
            day = datetime(int(y), int(mo), int(d))
            if half == "上午" and hour == 12:  # 上午12点: midnight, as 12 a.m.
                hour = 0
            elif half == "晚上" and hour == 12:  # 晚上12点: the midnight that ends the day
                hour, day = 0, day + timedelta(days=1)
            elif (half in ("下午", "晚上") and hour < 12) or (half == "中午" and hour < 6):  # 中午1点: 13:00
                hour += 12
            return day.replace(hour=hour, minute=int(mi or 0), second=int(s or 0))
    except ValueError:  # a 30 February, an hour 25, an offset of 25 hours
        raise ValidationError(f"{field}: not a valid date or time") from None
    return None


# -- numbers and amounts -------------------------------------------------------------------------
# symbols and words that mark a currency, longest first where one contains another
CURRENCY_MARKS: dict[str, str] = {
    "US$": "USD", "HK$": "HKD", "NT$": "TWD", "S$": "SGD", "A$": "AUD", "C$": "CAD", "CN¥": "CNY",
    "JP¥": "JPY", "RMB": "CNY", "¥": "CNY", "￥": "CNY", "元": "CNY", "円": "JPY", "$": "USD", "€": "EUR",
    "£": "GBP", "₩": "KRW", "₹": "INR", "₽": "RUB",
}
_CODE = re.compile(r"^([A-Z]{3})\s*|\s*([A-Z]{3})$")
_GROUPED_COMMA = re.compile(r"^[1-9]\d{0,2}(,\d{3})+$")  # not "0,500": that is a decimal comma
_GROUPED_DOT = re.compile(r"^[1-9]\d{0,2}(\.\d{3}){2,}$")
_SPACES = re.compile(r"[\s\u00a0\u202f\u2009']")


def parse_number(value: Any, *, field: str) -> Decimal | None:
    """A number written for people: `1,299.00`, `1.299,00`, `1 299,5`, `12,50`, `-3`, `(12.00)`.

    With both `,` and `.`, the last one is the decimal point; `,` alone is thousands only in
    groups of three (`1,299`, `12,345,678`), else a decimal comma (`12,5`); `.` alone is a
    decimal point unless it groups thousands at least twice (`1.299.000`).
    """
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{field}: not a number")
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value))
    elif isinstance(value, str):
        number = _decimal(value.strip(), field)
    else:
        raise ValidationError(f"{field}: not a number")
    if not number.is_finite():
        raise ValidationError(f"{field}: not a finite number")
    return number


def _decimal(text: str, field: str) -> Decimal:
    negative = False
    if text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1].strip()
    if text.startswith(("-", "−")):
        negative, text = True, text[1:].strip()
    elif text.endswith("-"):
        negative, text = True, text[:-1].strip()
    digits = _SPACES.sub("", text)
    if "," in digits and "." in digits:
        decimal_mark = "," if digits.rfind(",") > digits.rfind(".") else "."
        thousands = "." if decimal_mark == "," else ","
        digits = digits.replace(thousands, "").replace(decimal_mark, ".")
    elif "," in digits:
        digits = digits.replace(",", "") if _GROUPED_COMMA.match(digits) else digits.replace(",", ".")
    elif _GROUPED_DOT.match(digits):
        digits = digits.replace(".", "")
    if not re.fullmatch(r"\d+(\.\d+)?|\.\d+", digits):
        raise ValidationError(f"{field}: not a number")
    try:
        number = Decimal(digits)
    except InvalidOperation:
        raise ValidationError(f"{field}: not a number") from None
    return -number if negative else number


def parse_amount(value: Any, *, field: str, currencies: Mapping[str, str] | None = None
                 ) -> tuple[Decimal, str | None] | None:
    """(amount, ISO 4217 currency or None) from `¥1,299.00`, `CNY 1299`, `12,50 €`, `US$ 5`.

    `currencies` overrides what a mark means for this source (e.g. {"¥": "JPY"})."""
    if _missing(value):
        return None
    if not isinstance(value, str):
        number = parse_number(value, field=field)
        return None if number is None else (number, None)
    marks = {**CURRENCY_MARKS, **(currencies or {})}
    text = value.strip()
    currency = None
    for mark in sorted(marks, key=len, reverse=True):
        at = text.find(mark)
        if at >= 0 and (at == 0 or at + len(mark) == len(text) or text[:at].strip() in ("", "-", "(")):
            currency = marks[mark]
            text = (text[:at] + text[at + len(mark):]).strip()
            break
    if currency is None:
        code = _CODE.search(text)
        if code and (code.group(1) or code.group(2)) in _currency_codes():
            currency = code.group(1) or code.group(2)
            text = _CODE.sub("", text, count=1).strip()
    number = parse_number(text, field=field)
    if number is None:
        raise ValidationError(f"{field}: a currency without an amount")
    return number, currency


@cache
def _currency_codes() -> frozenset[str]:
    return frozenset(c.alpha_3 for c in pycountry.currencies)


# -- labels -----------------------------------------------------------------------------------------
GENDER_LABELS: dict[str, str] = {
    "male": "male", "m": "male", "man": "male", "men": "male", "boy": "male", "男": "male", "男性": "male",
    "先生": "male",
    "female": "female", "f": "female", "woman": "female", "women": "female", "girl": "female", "女": "female",
    "女性": "female", "女士": "female",
    "other": "other", "diverse": "other", "x": "other", "non-binary": "other", "nonbinary": "other",
    "其他": "other",
    "unknown": "unknown", "u": "unknown", "未知": "unknown", "保密": "unknown", "prefer not to say": "unknown",
}


def parse_gender(value: Any, *, field: str, labels: Mapping[str, str] | None = None) -> str | None:
    """female / male / other / unknown from a source's label. The built-in labels cover
    English and Chinese words and M/F; codes such as 1/0 mean different things in different
    systems, so they count only when the source's mapping declares them in `labels`."""
    if _missing(value):
        return None
    key = str(value).strip().lower()
    declared = {str(k).strip().lower(): v for k, v in (labels or {}).items()}
    found = declared.get(key) or GENDER_LABELS.get(key)
    if found not in ("female", "male", "other", "unknown"):
        raise ValidationError(f"{field}: not a gender label this source's mapping knows")
    return found


# Names people write that ISO 3166 spells otherwise
COUNTRY_ALIASES: dict[str, str] = {
    "usa": "US", "u.s.": "US", "u.s.a.": "US", "us": "US", "america": "US", "united states of america": "US",
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "russia": "RU", "south korea": "KR", "korea": "KR",
    "north korea": "KP", "vietnam": "VN", "iran": "IR", "syria": "SY", "laos": "LA", "czech republic": "CZ",
    "czechia": "CZ", "taiwan": "TW", "hong kong": "HK", "macau": "MO", "macao": "MO", "holland": "NL",
    "uae": "AE", "turkey": "TR", "burma": "MM", "swaziland": "SZ", "cape verde": "CV", "kosovo": "XK",
    "palestine": "PS", "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ", "moldova": "MD", "ivory coast": "CI",
    "中国": "CN", "中國": "CN", "中华人民共和国": "CN", "中華人民共和國": "CN", "中國大陸": "CN",
    "中国大陆": "CN", "大陆": "CN",
    "香港": "HK", "澳门": "MO", "澳門": "MO", "台湾": "TW", "台灣": "TW", "美国": "US", "美國": "US",
    "英国": "GB", "英國": "GB", "韩国": "KR", "韓國": "KR", "南韩": "KR", "南韓": "KR",
    "俄罗斯联邦": "RU", "朝鲜": "KP", "日本": "JP",
    "德国": "DE", "德國": "DE", "法国": "FR", "法國": "FR", "俄罗斯": "RU", "俄羅斯": "RU",
    "新加坡": "SG", "马来西亚": "MY", "泰国": "TH", "越南": "VN", "印度": "IN", "澳大利亚": "AU",
    "加拿大": "CA", "意大利": "IT", "西班牙": "ES", "荷兰": "NL", "瑞士": "CH", "瑞典": "SE",
}


@cache
def _country_names() -> dict[str, str]:
    """Lower-cased English names (common, short and official) and their Chinese translations."""
    names: dict[str, str] = {}
    chinese = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["zh_CN"], fallback=True)
    for country in pycountry.countries:
        code = country.alpha_2
        for attribute in ("name", "common_name", "official_name"):
            name = getattr(country, attribute, None)
            if name:
                names[name.lower()] = code
                names[chinese.gettext(name).lower()] = code
        names[country.alpha_3.lower()] = code
        names[code.lower()] = code
    names.update(COUNTRY_ALIASES)
    return names


def parse_country(value: Any, *, field: str) -> str | None:
    """An ISO 3166-1 alpha-2 code from a code (`CN`, `CHN`), an English name (`Germany`,
    `United Kingdom`, `USA`) or a Chinese one (`中国`, `德国`, `台灣`)."""
    if _missing(value):
        return None
    key = re.sub(r"\s+", " ", str(value).strip()).lower()
    code = _country_names().get(key)
    if code is None:
        raise ValidationError(f"{field}: not a country name or ISO code")
    return code
