"""The cleaning parsers: what messy exports write, and the canonical value each must become."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persona.errors import ValidationError
from persona.ingest.clean import parse_amount, parse_country, parse_gender, parse_instant, parse_number

SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("value", "expected"), [
    ("2025-03-04T14:05:06Z", utc(2025, 3, 4, 14, 5, 6)),
    ("2025-03-04T14:05:06+08:00", utc(2025, 3, 4, 6, 5, 6)),
    ("2025-03-04 14:05:06.25-0500", utc(2025, 3, 4, 19, 5, 6, 250000)),
    ("2025/3/4 14:05", utc(2025, 3, 4, 6, 5)),  # no offset: the source's zone (Shanghai here)
    ("2025.03.04", utc(2025, 3, 3, 16, 0)),
    ("20250304", utc(2025, 3, 3, 16, 0)),
    ("20250304140506", utc(2025, 3, 4, 6, 5, 6)),
    ("2025年3月4日", utc(2025, 3, 3, 16, 0)),
    ("2025年03月04日 14:05", utc(2025, 3, 4, 6, 5)),
    ("2025年3月4日 下午2点30分", utc(2025, 3, 4, 6, 30)),
    ("2025年3月4日 14时05分06秒", utc(2025, 3, 4, 6, 5, 6)),
    ("2025年3月4日 上午12点", utc(2025, 3, 3, 16, 0)),  # 12 a.m.: midnight
    ("2025年3月4日 晚上12点30分", utc(2025, 3, 4, 16, 30)),  # half past the midnight that ends the 4th
    (20250304, utc(2025, 3, 3, 16, 0)),  # a compact date written as a number
    ("2025年3月4日 中午12点", utc(2025, 3, 4, 4, 0)), ("2025年3月4日 凌晨3点", utc(2025, 3, 3, 19, 0)),
    ("1741097106", utc(2025, 3, 4, 14, 5, 6)),  # epoch seconds, as text
    ("1741097106250", utc(2025, 3, 4, 14, 5, 6, 250000)),  # epoch milliseconds, as text
    (1741097106, utc(2025, 3, 4, 14, 5, 6)),
    (1741097106250, utc(2025, 3, 4, 14, 5, 6, 250000)),
])
def test_instants_in_the_shapes_exports_write(value: object, expected: datetime) -> None:
    assert parse_instant(value, field="created", tz=SHANGHAI) == expected


def test_declared_formats_come_first_and_decide_day_month_order() -> None:
    assert parse_instant("04/03/2025 14:05", field="t", formats=["%d/%m/%Y %H:%M"]) == utc(2025, 3, 4, 14, 5)
    assert parse_instant("03/04/2025 14:05", field="t", formats=["%m/%d/%Y %H:%M"]) == utc(2025, 3, 4, 14, 5)
    with pytest.raises(ValidationError, match="mapping's formats"):
        parse_instant("04/03/2025", field="t", formats=["%Y%m%d"])


def test_a_zone_name_read_by_a_declared_format_counts() -> None:
    shanghai_wall_clock = parse_instant("2025-03-04 12:00:00 UTC", field="t", formats=["%Y-%m-%d %H:%M:%S %Z"],
                                        tz=SHANGHAI)
    assert shanghai_wall_clock == utc(2025, 3, 4, 12, 0)  # UTC as written, not Shanghai's default


def test_a_declared_unit_overrides_the_magnitude() -> None:
    assert parse_instant(1741097106, field="t", unit="ms") == utc(1970, 1, 21, 3, 38, 17, 106000)
    with pytest.raises(ValidationError, match="s or ms"):
        parse_instant(1, field="t", unit="minutes")


@pytest.mark.parametrize("value", ["", "   ", None])
def test_a_missing_instant_is_unknown(value: object) -> None:
    assert parse_instant(value, field="t") is None


@pytest.mark.parametrize("value", ["yesterday", "2025-02-30", "2025-13-01", "20251301", "2025-03-04T25:00",
                                   "123", True, [2025], "1e999", "2025年2月30日"])
def test_what_is_not_an_instant_is_refused_without_repeating_it(value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_instant(value, field="created")
    assert refused.value.reason.startswith("created:") and str(value) not in refused.value.reason.removeprefix(
        "created:")


# Without a declared unit, epochs from 1e11 up are milliseconds: right for any time after
# March 1973 (in ms) and before the year 5138 (in s); the mapping declares `unit` otherwise.
@given(st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(2100, 1, 1),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])))
def test_iso_and_epoch_agree_for_any_instant(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # epoch ms keeps milliseconds
    as_ms = round(moment.timestamp() * 1000)
    assert parse_instant(moment.isoformat(), field="t") == moment.astimezone(UTC)
    assert parse_instant(as_ms, field="t") == moment.astimezone(UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("1,299.00", Decimal("1299.00")), ("1.299,00", Decimal("1299.00")), ("1 299,5", Decimal("1299.5")),
    ("12,50", Decimal("12.50")), ("1,299", Decimal("1299")), ("12,345,678", Decimal("12345678")),
    ("1.299.000", Decimal("1299000")), ("3.5", Decimal("3.5")), ("-3", Decimal("-3")), ("0,500", Decimal("0.500")),
    ("(12.00)", Decimal("-12.00")), ("12-", Decimal("-12")), (".5", Decimal("0.5")), (7, Decimal("7")),
])
def test_numbers_written_for_people(text: object, expected: Decimal) -> None:
    assert parse_number(text, field="qty") == expected


@pytest.mark.parametrize("text", ["12a", "1,2,3.4.5", "--3", "NaN", "inf", "", "¥"])
def test_what_is_not_a_number_is_refused(text: str) -> None:
    if text == "":
        assert parse_number(text, field="qty") is None
        return
    with pytest.raises(ValidationError, match="qty"):
        parse_number(text, field="qty")


@pytest.mark.parametrize(("text", "expected"), [
    ("¥1,299.00", (Decimal("1299.00"), "CNY")),
    ("￥ 88", (Decimal("88"), "CNY")),
    ("1,299.00元", (Decimal("1299.00"), "CNY")),
    ("RMB 1299", (Decimal("1299"), "CNY")),
    ("CNY 1,299.50", (Decimal("1299.50"), "CNY")),
    ("12,50 €", (Decimal("12.50"), "EUR")),
    ("US$ 5.00", (Decimal("5.00"), "USD")),
    ("HK$120", (Decimal("120"), "HKD")),
    ("$5", (Decimal("5"), "USD")),
    ("£3.20", (Decimal("3.20"), "GBP")),
    ("99.90 EUR", (Decimal("99.90"), "EUR")),
    ("-¥12.00", (Decimal("-12.00"), "CNY")),
    ("45.00", (Decimal("45.00"), None)),
    (45, (Decimal("45"), None)),
])
def test_amounts_with_their_currency(text: object, expected: tuple[Decimal, str | None]) -> None:
    assert parse_amount(text, field="amount") == expected


def test_a_source_may_say_what_its_yen_sign_means() -> None:
    assert parse_amount("¥1,200", field="amount", currencies={"¥": "JPY"}) == (Decimal("1200"), "JPY")


def test_a_currency_without_an_amount_is_refused() -> None:
    with pytest.raises(ValidationError, match="amount"):
        parse_amount("¥", field="amount")


@pytest.mark.parametrize(("label", "expected"), [
    ("男", "male"), ("女", "female"), ("M", "male"), ("f", "female"), (" Female ", "female"), ("MALE", "male"),
    ("保密", "unknown"), ("other", "other"), ("", None), (None, None),
])
def test_gender_labels(label: object, expected: str | None) -> None:
    assert parse_gender(label, field="gender") == expected


def test_numeric_gender_codes_count_only_when_the_mapping_declares_them() -> None:
    with pytest.raises(ValidationError, match="gender"):
        parse_gender("1", field="gender")
    assert parse_gender(1, field="gender", labels={"1": "male", "0": "female"}) == "male"
    assert parse_gender("0", field="gender", labels={"1": "male", "0": "female"}) == "female"
    assert parse_gender("2", field="gender", labels={"1": "female", "2": "male"}) == "male"  # another system
    with pytest.raises(ValidationError, match="gender"):
        parse_gender("1", field="gender", labels={"1": "maybe"})  # a mapping cannot invent a value


@pytest.mark.parametrize(("name", "code"), [
    ("CN", "CN"), ("chn", "CN"), ("China", "CN"), ("中国", "CN"), ("中華人民共和國", "CN"), ("中國", "CN"),
    ("Germany", "DE"), ("德国", "DE"), ("united   kingdom", "GB"), ("UK", "GB"), ("USA", "US"), ("美国", "US"),
    ("South Korea", "KR"), ("大韩民国", "KR"), ("台灣", "TW"), ("Hong Kong", "HK"), ("Türkiye", "TR"),
    ("Côte d'Ivoire", "CI"), ("Turkey", "TR"), ("南韓", "KR"), ("Atlantis", None), ("", None),
])
def test_country_names_and_codes(name: str, code: str | None) -> None:
    if code is None and name:
        with pytest.raises(ValidationError, match="country"):
            parse_country(name, field="country")
        return
    assert parse_country(name, field="country") == code


def test_an_unknown_country_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_country("Atlantis", field="country")
    assert "Atlantis" not in refused.value.reason
