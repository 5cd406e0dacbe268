"""The built-in sources (`persona ingest FILE --source shop|social|web|app`) on their fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona import Persona
from persona.errors import ConfigurationError
from persona.ingest import ingest_file
from persona.ingest.mapping import BUILT_IN, builtin_mapping, mapped_records
from persona.ingest.quarantine import describe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sources"


def ingest(persona: Persona, source: str, name: str) -> object:
    path = FIXTURES / name
    with path.open("rb") as handle:
        records = mapped_records(builtin_mapping(source), handle, name=path.name)
        return ingest_file(persona, records, origin=path.name)


def test_shop_orders_group_item_rows_link_identifiers_and_read_amounts(persona: Persona) -> None:
    report = ingest(persona, "shop", "shop_orders.csv")
    assert {(r["line"], r["reason"]) for r in describe(persona)} == {
        (6, "data.amount: must not be negative"),
        (7, "row: no event could be made of it (no subject or no time)"),
    }
    li = persona.log.profile_for("shop_user", "u-10442")
    assert li is not None  # the shop's own id is the subject; the row's e-mail and phone are linked to it
    assert persona.log.profile_for("email", "li.wei@example.com") == li
    assert persona.log.profile_for("phone", "+86 139 1234 5678") == li
    order = next(e for e in persona.log.read(li) if e.type == "order_placed")
    assert (order.data["amount"], order.data["currency"], order.occurred_at) == (
        "1299.00", "CNY", "2025-03-04T06:05:00.000000Z")  # ¥, in Shanghai time
    assert order.data["items"] == [{"sku": "SKU-EL-1", "category": "electronics", "qty": 1, "price": "1299.00"}]
    maria = persona.log.profile_for("email", "maria.garcia@example.com")
    assert maria is not None
    [grouped] = [e for e in persona.log.read(maria) if e.type == "order_placed"]  # two rows, one order
    assert (grouped.data["amount"], grouped.data["currency"]) == ("45.50", "EUR")
    assert grouped.data["items"] == [{"sku": "SKU-BO-7", "category": "books", "qty": 2, "price": "12.75"},
                                     {"sku": "SKU-BO-9", "category": "books", "qty": 1, "price": "20.00"}]
    assert report.appended == 5  # type: ignore[attr-defined]


def test_social_interactions_keyed_by_handle_with_an_email_sometimes(persona: Persona) -> None:
    ingest(persona, "social", "social.jsonl")
    handle = persona.log.profile_for("social_user", "@li_wei")
    assert handle is not None and persona.log.profile_for("email", "li.wei@example.com") == handle
    actions = [e.data["action"] for e in persona.log.read(handle) if e.type == "social_interaction"]
    assert actions == ["like", "share"]  # "liked" mapped; the second one dated by epoch milliseconds
    assert [r["reason"] for r in describe(persona)] == ["data.action: must be one of like, share, comment,"
                                                        " follow, message"]


def test_web_clicks_link_the_cookie_to_the_logged_in_user(persona: Persona) -> None:
    ingest(persona, "web", "web_clicks.csv")
    cookie = persona.log.profile_for("cookie", "ck-1")
    assert cookie is not None and persona.log.profile_for("shop_user", "w-77") == cookie
    views = [e for e in persona.log.read(cookie) if e.type == "page_viewed"]
    assert [(v.data["duration_s"], v.occurred_at) for v in views] == [
        (35.5, "2025-03-05T09:00:00.000000Z"), (12.0, "2025-03-05T09:01:00.000000Z")]
    assert [r["reason"] for r in describe(persona)] == ["url: required, and the row has none"]


def test_app_sessions_last_from_start_to_end(persona: Persona) -> None:
    ingest(persona, "app", "app_usage.csv")
    device = persona.log.profile_for("device", "ios-4F2A-99C1")
    assert device is not None and persona.log.profile_for("shop_user", "a-5") == device
    [session] = [e for e in persona.log.read(device) if e.type == "app_session"]
    assert session.data == {"session_id": "as-1", "minutes": 12.5, "features_used": ["scan", "search"],
                            "platform": "ios"}
    assert [r["reason"] for r in describe(persona)] == ["minutes: ends before it starts"]


def test_every_built_in_source_loads_and_an_unknown_one_is_named() -> None:
    assert {builtin_mapping(name).source for name in BUILT_IN} == set(BUILT_IN)
    with pytest.raises(ConfigurationError, match="built in: shop"):
        builtin_mapping("crm")


def test_item_rows_of_one_order_must_agree_on_the_order_columns(persona: Persona, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,email,created_at,total,sku,category,qty,price\n"
                    "B-1,ann@example.com,2025-03-05 10:00:00,30,S1,books,1,10\n"
                    "B-1,,,,S2,books,1,20\n"  # later rows may leave the order's columns empty
                    "B-2,ben@example.com,2025-03-05 11:00:00,30,S1,books,1,10\n"
                    "B-2,ben@example.com,2025-03-05 11:00:00,99,S2,books,1,20\n")  # another total: refused
    with path.open("rb") as handle:
        report = ingest_file(persona, mapped_records(builtin_mapping("shop"), handle, name=path.name),
                             origin=path.name)
    assert (report.appended, report.quarantined) == (1, 1)
    assert [(r["line"], r["reason"]) for r in describe(persona)] == [
        (4, "total: the rows of one order_id disagree (give it on the first row, and repeat it or leave it empty"
             " after)")]
    ann = persona.log.profile_for("email", "ann@example.com")
    assert ann is not None
    order = next(e for e in persona.log.read(ann) if e.type == "order_placed")
    assert [i["sku"] for i in order.data["items"]] == ["S1", "S2"]


def test_an_item_price_in_another_currency_than_its_order_is_refused(persona: Persona, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,email,created_at,total,currency,sku,category,qty,price\n"
                    "C-1,ann@example.com,2025-03-05 10:00:00,€30.00,EUR,S1,books,1,€30.00\n"
                    "C-2,ann@example.com,2025-03-06 10:00:00,¥30.00,,S1,books,1,$30.00\n")
    with path.open("rb") as handle:
        report = ingest_file(persona, mapped_records(builtin_mapping("shop"), handle, name=path.name),
                             origin=path.name)
    assert (report.appended, report.quarantined) == (1, 1)
    assert [(r["line"], r["reason"]) for r in describe(persona)] == [
        (3, "items: an item's price is marked with another currency than the order's")]


def test_item_rows_agree_by_value_and_may_not_add_what_the_first_lacks(persona: Persona, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,email,phone,created_at,total,sku,category,qty,price\n"
                    "D-1,Ann@Example.com,,2025-03-05 10:00,¥30.00,S1,books,1,10\n"
                    "D-1,ann@example.com,,2025-03-05 10:00:00,30,S2,books,1,20\n"  # the same, written otherwise
                    "D-2,ben@example.com,,2025-03-05 11:00,5,S3,home,1,5\n"
                    "D-2,ben@example.com,+86 139 1234 5678,2025-03-05 11:00,5,S4,home,1,5\n")  # a phone only here
    with path.open("rb") as handle:
        report = ingest_file(persona, mapped_records(builtin_mapping("shop"), handle, name=path.name),
                             origin=path.name)
    assert (report.appended, report.quarantined) == (1, 1)
    assert [(r["line"], r["reason"].split(":")[0]) for r in describe(persona)] == [(4, "phone")]


@pytest.mark.parametrize("name", ["<stdin>", "clicks.log"])
def test_a_source_without_a_telling_name_is_read_by_its_first_line(persona: Persona, name: str) -> None:
    import io

    lines = (b'{"cookie_id": "ck-s1", "url": "https://shop.example/a", "ts": 1741165200000}\n'
             b'{"cookie_id": "ck-s2", "url": "https://shop.example/b", "ts": 1741165260000}\n')
    report = ingest_file(persona, mapped_records(builtin_mapping("web"), io.BytesIO(lines), name=name),
                         origin=name)
    assert (report.appended, report.quarantined) == (2, 0)
    as_csv = b"cookie_id,url,ts\nck-s3,https://shop.example/c,1741165300000\n"
    report = ingest_file(persona, mapped_records(builtin_mapping("web"), io.BytesIO(as_csv), name=name),
                         origin=name)
    assert (report.appended, report.quarantined) == (1, 0)


def test_an_unreadable_csv_header_is_an_error_not_an_empty_file(persona: Persona) -> None:
    import io

    broken = b'cookie_id,"url,ts\nck-1,https://a,1741165300000\n'
    with pytest.raises(ConfigurationError, match="header"):
        ingest_file(persona, mapped_records(builtin_mapping("web"), io.BytesIO(broken), name="c.csv"),
                    origin="c.csv")
