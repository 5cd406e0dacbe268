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
from persona.ingest import ingest_file
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
    return ingest_file(persona, records, origin=name)


def test_a_shop_export_becomes_orders_profiles_and_links(persona: Persona, tmp_path: Path) -> None:
    report = ingest_csv(persona, mapping_file(tmp_path), ORDERS)
    # order + profile + link; A-2: order + profile (no phone: no link); A-8: order (items over 2 lines)
    assert (report.appended, report.quarantined) == (6, 5)
    held = {(row["line"], row["reason"]) for row in describe(persona)}
    assert held == {
        (4, "row: no event could be made of it (no subject or no time)"),
        (5, "data.amount: must not be negative"),
        (6, "created: not a date or time in a known format"),  # named by the column
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
    report = ingest_file(persona, records, origin="usage.log")
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
        "currency: the amount's currency mark and the mapped currency disagree"]


# -- shop exports with order statuses (issue 18): `where`, a type from a column, refunds -----------
STATUSES = """
source = "shop"
timezone = "Asia/Shanghai"

[where]
status = { not_in = ["待付款", "已取消"] }      # unpaid and cancelled orders are no orders

[[events]]
id = "{order_id}-{_type}"
when = "created"
subject = [{ namespace = "email", column = "email" }, { namespace = "phone", column = "phone" }]
[events.type]
column = "status"
map = { "已付款" = "order_placed", "已发货" = "order_placed", "已退款" = "order_refunded" }
[events.data]
order_id = { column = "order_id", required = true }
amount = { column = "total", kind = "amount", required = true }
currency = "CNY"

[[events]]
type = "identity_linked"
when = "created"
subject = { namespace = "email", column = "email" }
other = { namespace = "phone", column = "phone" }
"""

STATUS_ROWS = """order_id,email,phone,created,total,status
B-1,ann@example.com,,2025-03-04 10:00,¥100.00,已付款
B-2,ann@example.com,,2025-03-05 10:00,¥50.00,待付款
B-3,ann@example.com,,2025-03-06 10:00,¥30.00,已取消
B-1,ann@example.com,,2025-03-07 10:00,-¥40.00,已退款
B-4,ben@example.com,,2025-03-08 10:00,¥20.00,已发货
B-4,ben@example.com,,2025-03-09 10:00,¥20.00,已退款
B-5,ben@example.com,,2025-03-09 11:00,¥20.00,交易关闭
B-6,ben@example.com,,2025-03-09 12:00,¥20.00,
B-7,ben@example.com,,2025-03-10 10:00,-¥5.00,已付款
B-8,,1860000333,2025-03-11 10:00,¥9.00,已付款
B-9,cy@example.com,1860000333,2025-03-12 10:00,¥9.00,已付款
"""


def test_where_leaves_rows_out_counted_and_a_column_chooses_the_event_type(persona: Persona, tmp_path: Path) -> None:
    """Unpaid and cancelled rows are filtered out (counted, not quarantined); paid and shipped
    rows are orders, refunded rows refunds — `-¥40.00` or `¥20.00` alike a positive amount
    refunded, with ids of their own so that a refund is not taken for its order's duplicate. A
    status nobody mapped, a negative order and a phone invalid for its region are quarantined."""
    mapping = mapping_file(tmp_path, STATUSES)
    report = ingest_csv(persona, mapping, STATUS_ROWS)
    assert (report.appended, report.filtered, report.quarantined, report.blank) == (4, 2, 5, 0), report
    assert report.as_dict()["filtered"] == 2 and "2 records filtered out by the mapping's `where`" in report.summary()
    assert sorted((r["line"], r["reason"]) for r in describe(persona)) == [
        (8, "status: a value the mapping's type map does not list"),  # 交易关闭: not guessed at
        (9, "status: a value the mapping's type map does not list"),  # empty
        (10, "data.amount: must not be negative"),  # a minus sign is read as a refund's only
        (11, "subject.value: not a valid phone number for its region"),  # its only identifier
        (12, "data.other.value: not a valid phone number for its region"),  # a row is all or nothing
    ]
    ann = persona.log.profile_for("email", "ann@example.com")
    ben = persona.log.profile_for("email", "ben@example.com")
    assert ann is not None and ben is not None
    assert [(e.event_id, e.type, e.data["amount"]) for e in persona.log.read(ann)] == [
        ("B-1-order_placed", "order_placed", "100.00"), ("B-1-order_refunded", "order_refunded", "40.00")]
    assert [(e.event_id, e.type, e.data["amount"]) for e in persona.log.read(ben)] == [
        ("B-4-order_placed", "order_placed", "20.00"), ("B-4-order_refunded", "order_refunded", "20.00")]
    assert persona.log.profile_for("email", "cy@example.com") is None  # no person made of a refused row
    again = ingest_csv(persona, mapping, STATUS_ROWS)
    assert (again.appended, again.duplicates, again.filtered, again.quarantined) == (0, 4, 2, 5)


def test_a_row_refused_for_an_invalid_phone_is_purged_with_the_number(persona: Persona, tmp_path: Path) -> None:
    ingest_csv(persona, mapping_file(tmp_path, STATUSES), STATUS_ROWS)
    assert {r["line"] for r in describe(persona)} >= {11, 12}
    with pytest.raises(Exception, match=r"2 quarantined record\(s\) carrying it were purged"):
        erase_subject(persona, "phone", "1860000333")  # looked up as spelled before the rule
    assert not {r["line"] for r in describe(persona)} & {11, 12}


def test_a_group_is_filtered_out_whole_or_refused_when_its_rows_disagree(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, 'group_by = "order_id"\n' + STATUSES.replace(
        'currency = "CNY"', 'currency = "CNY"\nitems = { group = true }') + '[items]\nsku = { column = "sku" }\n')
    text = ("order_id,email,phone,created,total,status,sku\n"
            "G-1,ann@example.com,,2025-03-04 10:00,¥9.00,待付款,S1\n"
            "G-1,ann@example.com,,2025-03-04 10:00,¥9.00,待付款,S2\n"
            "G-2,ann@example.com,,2025-03-05 10:00,¥9.00,已付款,S1\n"
            "G-2,ann@example.com,,2025-03-05 10:00,¥9.00,,S2\n"
            "G-3,ann@example.com,,2025-03-06 10:00,¥9.00,已付款,S1\n"
            "G-3,ann@example.com,,2025-03-06 10:00,¥9.00,待付款,S2\n"
            "G-4,ann@example.com,,2025-03-07 10:00,¥9.00,待付款,S1\n"
            "G-4,ann@example.com,,2025-03-07 10:00,¥9.00,已付款,S2\n")
    report = ingest_csv(persona, mapping, text)
    assert (report.appended, report.filtered, report.quarantined) == (1, 1, 2), report
    assert sorted(r["line"] for r in describe(persona)) == [6, 8]
    assert {r["reason"].split(":")[0] for r in describe(persona)} == {"status"}  # the column they disagree on
    ann = persona.log.profile_for("email", "ann@example.com")
    assert ann is not None
    assert [(e.event_id, len(e.data["items"])) for e in persona.log.read(ann)] == [("G-2-order_placed", 2)]


def test_where_in_and_equals_compare_trimmed_text_and_every_condition_must_hold(persona: Persona,
                                                                               tmp_path: Path) -> None:
    mapping = load_mapping(mapping_file(tmp_path, WEB + '[where]\nstatus = { in = ["1", "paid"] }\n'
                                                        'channel = { equals = "web" }\n'))
    lines = [{"uid": "u1", "t": "2025-01-01", "url": "/a", "status": 1, "channel": " web "},  # kept: "1", "web"
             {"uid": "u2", "t": "2025-01-01", "url": "/b", "status": "paid", "channel": "app"},  # channel: out
             {"uid": "u3", "t": "2025-01-01", "url": "/c", "status": "unpaid", "channel": "web"},  # status: out
             {"uid": "u4", "t": "2025-01-01", "url": "/d", "channel": "web"},  # no status: "", out
             {"uid": "u5", "t": "2025-01-01", "url": "/e", "status": ["paid"], "channel": "web"}]  # not one value
    text = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    report = ingest_file(persona, mapped_records(mapping, io.BytesIO(text), name="pages.jsonl"), origin="pages")
    assert (report.appended, report.filtered, report.quarantined) == (1, 3, 1), report
    assert [r["reason"] for r in describe(persona)] == ["status: `where` reads one value, and it holds several"]
    assert persona.log.profile_for("web_user", "u1") is not None and persona.log.profile_for("web_user", "u2") is None


BASE = "source='x'\n[[events]]\nwhen='t'\nsubject={namespace='email', column='e'}\n"


@pytest.mark.parametrize(("text", "words"), [
    (BASE + "type='searched'\n[where]\nstatus={like='x'}", "where.status: unknown operator 'like'"),
    (BASE + "type='searched'\n[where]\nstatus={in=['a'], not_in=['b']}", "where.status: one operator"),
    (BASE + "type='searched'\n[where]\nstatus={in='a'}", "where.status.in: a non-empty list of texts"),
    (BASE + "type='searched'\n[where]\nstatus={not_in=[]}", "where.status.not_in: a non-empty list"),
    (BASE + "type='searched'\n[where]\nstatus={equals=3}", "where.status.equals: a text (numbers in quotes)"),
    ("where='status'\n" + BASE + "type='searched'", "[where] must be a table"),
    (BASE + "type={column='s', map={paid='bought'}}", "events[0].type.map: a table of the column's values"),
    (BASE + "type={column='s'}", "events[0].type.map"),
    (BASE + "type={map={paid='order_placed'}}", "events[0].type.column"),
    (BASE + "type={column='s', map={paid='order_placed'}, default='x'}", "events[0].type: unknown setting(s) default"),
    (BASE + "type={column='s', map={paid='order_placed'}}\nid='{o}'", "events[0].id: with the type read from a"),
    (BASE + "type={column='s', map={a='identity_linked'}}", "events[0].other"),
])
def test_a_broken_filter_or_type_map_says_where(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as refused:
        load_mapping(path)
    assert words in str(refused.value) and str(refused.value).startswith("broken.toml")


# -- the sectioned form ([source], [event], [subject], [fields]; docs/ingest.md) ------------------
CONTRACT = """
[source]
name = "crm"                 # the event's `source`
format = "csv"               # csv | jsonl
delimiter = ","              # for csv; "whitespace" splits on runs of blanks
header = true                # false: columns are named by `columns`
# columns = ["customer_id", "date", "qty", "amount"]

[event]
type = "order_placed"        # a constant, or { column = "kind", map = { buy = "order_placed" } }

[subject]
namespace = "crm_user"
value = "{customer_id}"      # templates use {column} and {_line} (1-based record number)

[[subject.also]]             # more identifiers on the same record: the same person, linked
namespace = "phone"
value = "{phone}"            # skipped when the column is empty

[fields]
occurred_at = { column = "date", format = "%Y%m%d", tz = "Asia/Shanghai" }
# format: a strftime pattern, a list of patterns tried in order, "iso", "epoch_s", "epoch_ms" or "auto"
"data.order_id" = "{customer_id}-{date}-{_line}"
"data.amount" = { column = "amount", type = "decimal" }   # "¥1,299.00" -> 1299.00
"data.currency" = "CNY"
"data.gender" = { column = "sex", map = { "男" = "male", "女" = "female", M = "male", F = "female" } }
"""


def test_the_mapping_format_of_events_md_as_written(persona: Persona, tmp_path: Path) -> None:
    text = ('customer_id,date,qty,amount,phone,sex\n'
            'c1,20250304,2,"¥1,299.00",+86 139 0000 2222,男\n'
            'c2,20250305,1,12.5,,F\n'
            'c3,20250306,1,$3,,M\n')  # a $ against the mapping's CNY: refused, not guessed
    report = ingest_csv(persona, mapping_file(tmp_path, CONTRACT), text, name="tx.csv")
    assert (report.appended, report.quarantined) == (3, 1)  # two orders and c1's phone link
    c1 = persona.log.profile_for("crm_user", "c1")
    assert c1 is not None and persona.log.profile_for("phone", "+8613900002222") == c1
    order = next(e for e in persona.log.read(c1) if e.type == "order_placed")
    assert order.occurred_at == "2025-03-03T16:00:00.000000Z"  # midnight in Shanghai
    assert (order.data["order_id"], order.data["amount"], order.data["currency"]) == ("c1-20250304-1", "1299.00",
                                                                                       "CNY")
    assert [r["reason"] for r in describe(persona)] == [
        "currency: the amount's currency mark and the mapped currency disagree"]


def test_headerless_whitespace_files_epochs_and_types_from_a_column(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, """
        [source]
        name = "pos"
        delimiter = "whitespace"
        header = false
        columns = ["kind", "who", "at", "amount"]
        [event]
        type = { column = "kind", map = { buy = "order_placed", back = "order_refunded" } }
        [subject]
        namespace = "pos_user"
        value = "{who}"
        [fields]
        occurred_at = { column = "at", format = "epoch_s" }
        "data.order_id" = "{who}-{_line}"
        "data.amount" = { column = "amount", type = "decimal" }
        "data.currency" = "EUR"
    """)
    text = "buy   u1  1741097106  12.50\nback  u1  1741097206  12.50\nsteal u1 1741097306 1\n"
    report = ingest_csv(persona, mapping, text, name="pos.txt")
    assert (report.appended, report.quarantined) == (2, 1)
    pid = persona.log.profile_for("pos_user", "u1")
    assert pid is not None
    assert [(e.type, e.data["order_id"], e.occurred_at) for e in persona.log.read(pid)] == [
        ("order_placed", "u1-1", "2025-03-04T14:05:06.000000Z"),
        ("order_refunded", "u1-2", "2025-03-04T14:06:46.000000Z")]
    assert [r["reason"] for r in describe(persona)] == ["kind: a value the mapping's type map does not list"]


# -- what broke the reader before ---------------------------------------------------------------
WEB = """
source = "web"
[[events]]
type = "page_viewed"
when = "t"
subject = { namespace = "web_user", column = "uid" }
[events.data]
url = { column = "url", required = true }
"""


def test_text_that_is_not_utf_8_is_refused_not_merged(persona: Persona, tmp_path: Path) -> None:
    rows = "uid,t,url\n张三,2025-01-01,/a\n李四,2025-01-02,/b\n".encode("gb18030")
    records = mapped_records(load_mapping(mapping_file(tmp_path, WEB)), io.BytesIO(rows), name="gbk.csv")
    report = ingest_file(persona, records, origin="gbk.csv")
    assert (report.appended, report.quarantined) == (0, 2)
    assert {r["reason"] for r in describe(persona)} == {"row: not valid utf-8 text (set `encoding` in the mapping)"}
    declared = mapping_file(tmp_path, 'encoding = "gb18030"\n' + WEB)  # as many Chinese exports are
    again = ingest_file(persona, mapped_records(load_mapping(declared), io.BytesIO(rows), name="gbk.csv"),
                        origin="gbk.csv")
    assert again.appended == 2
    zhang, li = persona.log.profile_for("web_user", "张三"), persona.log.profile_for("web_user", "李四")
    assert zhang is not None and li is not None and zhang != li


def test_broken_csv_quoting_and_huge_fields_are_quarantined_row_by_row(persona: Persona, tmp_path: Path) -> None:
    huge = "x" * 200_000
    text = f'uid,t,url\nu1,2025-01-01,/a\nu2,2025-01-02,"{huge}"\nu3,2025-01-03,"/unterminated\nu4,2025-01-04,/d\n'
    report = ingest_csv(persona, mapping_file(tmp_path, WEB), text, name="broken.csv")
    assert report.appended == 1  # u1; u2 is over the size limit; u3's quote swallows the rest of the file
    reasons = [r["reason"] for r in describe(persona)]
    assert reasons[0].startswith("record: larger than") and reasons[1].startswith("row: not valid CSV")


def test_integers_beyond_64_bits_are_refused_not_crashing(persona: Persona, tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, WEB + 'n = { column = "n", kind = "int" }\n')
    report = ingest_csv(persona, mapping, "uid,t,url,n\nu1,2025-01-01,/a," + "9" * 30 + "\nu2,2025-01-02,/b,7\n")
    assert (report.appended, report.quarantined) == (1, 1)
    assert [r["reason"] for r in describe(persona)] == ["n: out of range"]


def test_refused_rows_are_tagged_with_every_identifier_the_mapping_names(persona: Persona, tmp_path: Path) -> None:
    ingest_csv(persona, mapping_file(tmp_path, WEB), "uid,t,url\nu-77,2025-01-01,\n")  # no url: refused
    assert len(describe(persona)) == 1
    with pytest.raises(Exception, match="purged"):
        erase_subject(persona, "web_user", "u-77")  # no profile; the row naming them goes all the same
    assert describe(persona) == []
