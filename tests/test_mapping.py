"""TOML mappings: any CSV or JSONL export becomes canonical events, without code."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.erasure import erase_subject
from persona.errors import ConfigurationError
from persona.ingest import ingest_records
from persona.ingest.mapping import load_mapping, mapped_records, parse_mapping
from persona.ingest.quarantine import describe
from persona.profiles import profile_view

SHOP = """
source = "shop"
timezone = "Asia/Shanghai"

[[events]]
type = "order_placed"
id = "{order_id}"
when = "created"
subject = { namespace = "email", column = "email" }
[events.data]
order_id = { column = "order_id", required = true }
amount = { column = "total", kind = "amount" }
currency = { column = "currency", default = "CNY" }
items = { column = "items", kind = "json" }

[[events]]
type = "profile_updated"
id = "{order_id}-profile"
when = "created"
subject = { namespace = "email", column = "email" }
[events.data]
gender = { column = "sex", kind = "gender", labels = { "1" = "male", "2" = "female" } }
country = { column = "country", kind = "country" }

[[events]]
type = "identity_linked"
id = "{order_id}-phone"
when = "created"
subject = { namespace = "email", column = "email" }
other = { namespace = "phone", column = "phone" }
"""

ORDERS = '''order_id,email,phone,created,total,items,sex,country
A-1,Ann@Example.com,+86 139 0000 1111,2025年3月4日 14:05,"¥1,299.00","[{""sku"":""S1"",""qty"":1}]",2,中国
A-2,ben@example.com,,20250305,$12.50,,男,USA
A-3,,,2025-03-06,¥5,,,
A-4,cara@example.com,,2025-03-07,-¥3.00,,,
A-5,dan@example.com,,not a date,¥5,,,
A-6,eve@example.com,,2025-03-08,"¥8,00",,x9,
A-7,fay@example.com,,2025-03-09
"A-8","gus@example.com",,2025-03-10,"¥9","[{""sku"":
""S9""}]",,
'''


def mapping_file(tmp_path: Path, text: str = SHOP) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def ingest_csv(persona: Persona, mapping: Path, text: str, name: str = "orders.csv") -> Any:
    records = mapped_records(load_mapping(mapping), io.BytesIO(text.encode()), name=name)
    return ingest_records(persona, records, origin=name)


def test_a_shop_export_becomes_orders_profiles_and_links(persona: Persona, tmp_path: Path) -> None:
    report = ingest_csv(persona, mapping_file(tmp_path), ORDERS)
    # order + profile + link; A-2: order + profile (no phone: no link); A-8: order (items over 2 lines)
    assert (report.appended, report.quarantined) == (6, 5)
    held = {(row["line"], row["reason"]) for row in describe(persona)}
    assert held == {
        (4, "row: no event could be made of it (no subject or no time)"),
        (5, "data.amount: must not be negative"),
        (6, "when: not a date or time in a known format"),
        (7, "gender: not a gender label this source's mapping knows"),  # one bad field refuses the whole row
        (8, "row: 4 columns where the header has 8"),
    }
    ann = persona.log.profile_for("phone", "+8613900001111")
    assert ann is not None and ann == persona.log.profile_for("email", "ann@example.com")  # linked by the row
    events = {e.event_id: e for e in persona.log.read(ann)}
    assert events["A-1"].occurred_at == "2025-03-04T06:05:00.000000Z"  # 14:05 in Shanghai
    assert events["A-1"].data["amount"] == "1299.00" and events["A-1"].data["currency"] == "CNY"
    assert events["A-1"].data["items"] == [{"sku": "S1", "qty": 1}]
    view = profile_view(persona, ann)["attributes"]
    assert (view["gender"]["value"], view["country"]["value"]) == ("female", "CN")  # declared code 2, 中国
    ben = persona.log.profile_for("email", "ben@example.com")
    assert ben is not None
    order = next(e for e in persona.log.read(ben) if e.type == "order_placed")
    assert (order.data["amount"], order.data["currency"]) == ("12.50", "USD")  # the mark beats the default
    gus = persona.log.profile_for("email", "gus@example.com")
    assert gus is not None and persona.log.read(gus)[0].data["items"] == [{"sku": "S9"}]


def test_the_same_export_again_appends_nothing(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path)
    first = ingest_csv(persona, mapping, ORDERS)
    again = ingest_csv(persona, mapping, ORDERS)
    assert (again.appended, again.duplicates) == (0, first.appended)


def test_a_quarantined_row_is_purged_with_the_person(persona: Persona, tmp_path: Path) -> None:
    ingest_csv(persona, mapping_file(tmp_path), ORDERS)
    assert any(row["line"] == 5 for row in describe(persona))  # cara's row: a negative amount
    with pytest.raises(Exception, match="purged"):
        erase_subject(persona, "email", "cara@example.com")  # no profile, but the row carrying her goes
    assert not any(row["line"] == 5 for row in describe(persona))


def test_jsonl_exports_with_nested_fields_epochs_lists_and_value_maps(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, """
        source = "app"
        format = "jsonl"
        [[events]]
        type = "app_session"
        when = { column = "start_ms", unit = "ms" }
        subject = { namespace = "device", column = "device.id" }
        [events.data]
        session_id = { column = "sid", required = true }
        minutes = { column = "mins", kind = "number" }
        features_used = { column = "features", kind = "list", separator = "|" }
        platform = { column = "os", map = { "a" = "android", "i" = "ios" } }
    """)
    lines = [
        {"device": {"id": "dev-1"}, "start_ms": 1741097106250, "sid": "s1", "mins": "3,5", "features": "scan|pay",
         "os": "a"},
        {"device": {"id": "dev-1"}, "start_ms": 1741097206250, "sid": "s2", "mins": 1, "os": "i"},
        {"device": {"id": "dev-2"}, "start_ms": 1741097306250, "mins": 2},
    ]
    text = "\n".join(orjson.dumps(line).decode() for line in lines) + "\nnot json\n"
    records = mapped_records(load_mapping(mapping), io.BytesIO(text.encode()), name="usage.log")
    report = ingest_records(persona, records, origin="usage.log")
    assert (report.appended, report.quarantined) == (2, 2)
    assert {(r["line"], r["reason"]) for r in describe(persona)} == {
        (3, "session_id: required, and the row has none"), (4, "record: not valid JSON")}
    device = persona.log.profile_for("device", "dev-1")
    assert device is not None
    first, second = persona.log.read(device)
    assert first.occurred_at == "2025-03-04T14:05:06.250000Z" and first.data == {
        "session_id": "s1", "minutes": 3.5, "features_used": ["scan", "pay"], "platform": "android"}
    assert second.data["platform"] == "ios"


def test_a_transaction_log_needs_nothing_but_a_mapping(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, """
        source = "pos"
        delimiter = ";"
        [[events]]
        type = "order_placed"
        id = "{customer_id}-{date}-{amount}"
        when = { column = "date", formats = ["%d.%m.%Y"] }
        subject = { namespace = "pos_user", column = "customer_id" }
        [events.data]
        order_id = { column = "receipt", default = "unknown" }
        amount = { column = "amount", kind = "amount" }
        currency = "EUR"
        items = { column = "quantity", kind = "json" }
    """)
    text = "customer_id;date;quantity;amount\nc-9;04.03.2025;[];12,50\nc-9;05.03.2025;[];1.299,00\n"
    report = ingest_csv(persona, mapping, text, name="pos.csv")
    assert (report.appended, report.quarantined) == (2, 0)
    pid = persona.log.profile_for("pos_user", "c-9")
    assert pid is not None
    assert [(e.data["amount"], e.data["currency"], e.data["order_id"]) for e in persona.log.read(pid)] == [
        ("12.50", "EUR", "unknown"), ("1299.00", "EUR", "unknown")]  # a constant, and a declared fill


@pytest.mark.parametrize(("text", "words"), [
    ("[[events]]\ntype='order_placed'", "`source`"),
    ("source='x'", "[[events]]"),
    ("source='x'\ntimezone='Mars/Olympus'\n[[events]]\ntype='order_placed'", "timezone"),
    ("source='x'\n[[events]]\ntype='bought'", "events[0].type"),
    ("source='x'\n[[events]]\ntype='order_placed'\nwhen='t'", "events[0].subject"),
    ("source='x'\n[[events]]\ntype='order_placed'\nsubject={namespace='email', column='e'}", "events[0].when"),
    ("source='x'\n[[events]]\ntype='order_placed'\nwhen='t'\nsubject={namespace='email', column='e'}\n"
     "[events.data]\namount={column='a', kind='money'}", "events[0].data.amount.kind"),
    ("source='x'\n[[events]]\ntype='order_placed'\nwhen='t'\nsubject={namespace='email', column='e'}\n"
     "[events.data]\namount={column='a', colour='red'}", "unknown setting(s) colour"),
    ("source='x'\n[[events]]\ntype='identity_linked'\nwhen='t'\nsubject={namespace='email', column='e'}",
     "events[0].other"),
    ("source = ", "not valid TOML"),
])
def test_a_broken_mapping_says_where(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as refused:
        load_mapping(path)
    assert words in str(refused.value)


def test_the_cli_takes_a_mapping_and_may_rename_the_source(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Persona.init(Settings.load(data, env={})):
        pass
    export = tmp_path / "orders.csv"
    export.write_text(ORDERS, encoding="utf-8")
    mapping = mapping_file(tmp_path)
    runner = CliRunner()
    done = runner.invoke(cli, ["--data", str(data), "ingest", str(export), "--mapping", str(mapping),
                               "--source", "tmall", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.output)["appended"] == 6
    with Persona.open(Settings.load(data, env={})) as p:
        ben = p.log.profile_for("email", "ben@example.com")
        assert ben is not None and {e.source for e in p.log.read(ben)} == {"tmall"}
    refused = runner.invoke(cli, ["--data", str(data), "ingest", str(export), "--source", "crm"])
    assert refused.exit_code == 1 and "no built-in source" in refused.output and "--mapping" in refused.output


def test_parse_mapping_keeps_the_declared_settings() -> None:
    mapping = parse_mapping({"source": "s", "delimiter": "\t", "currencies": {"¥": "JPY"}, "events": [
        {"type": "searched", "when": "t", "subject": {"namespace": "cookie", "column": "c"},
         "data": {"query": {"column": "q", "required": True}}}]})
    assert (mapping.delimiter, dict(mapping.currencies), mapping.events[0].data[0].required) == ("\t", {"¥": "JPY"},
                                                                                                  True)


def test_an_amounts_currency_mark_and_a_currency_column_must_agree(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, """
        source = "shop"
        [[events]]
        type = "order_placed"
        when = "t"
        subject = { namespace = "email", column = "e" }
        [events.data]
        order_id = { column = "o" }
        amount = { column = "a", kind = "amount" }
        currency = { column = "c" }
    """)
    text = "o,e,t,a,c\n1,x@example.com,2025-01-01,$5,usd\n2,x@example.com,2025-01-02,$5,EUR\n"
    report = ingest_csv(persona, mapping, text)
    assert (report.appended, report.quarantined) == (1, 1)
    assert [r["reason"] for r in describe(persona)] == [
        "currency: the amount's currency mark and the currency column disagree"]
