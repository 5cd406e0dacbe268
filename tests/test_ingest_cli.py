"""`persona ingest` and `persona quarantine` as a new user meets them, run as the real command on
real files: a whole-file mistake (a column the header lacks, an unknown namespace, a CSV without
a mapping, a workbook, a GB18030 export) is refused with one error before anything is quarantined;
a run that quarantined everything fails; --dry-run stores nothing and predicts the real run; the
quarantine shows each run's reason, and --resolve / --purge remove records."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from persona import Persona, Settings
from persona.ingest.quarantine import describe
from persona.store.base import TABLES

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ROOT / "fixtures" / "sources" / "zh_orders.csv"  # UTF-8 with a BOM, CRLF: 3 orders, 4 rows
MAPPING = ROOT / "fixtures" / "sources" / "zh_orders.toml"
HEADER = "订单编号,下单时间,买家手机,商品编码,商品名称,数量,单价,订单金额,订单状态"
ORDERS = ("E1,2025/3/4 14:05,138 0013 8000,SKU-1001,保温杯 500ml,2,¥59.00,¥157.00,已完成",  # two rows, one order
          "E1,2025/3/4 14:05,138 0013 8000,SKU-2002,帆布袋,1,¥39.00,¥157.00,已完成",
          'E2,2025年3月5日 09:30,+86 139-0013-9000,SKU-3003,"茶叶礼盒, 铁观音",1,"¥1,299.00","¥1,299.00",已完成',
          "E3,2025-03-05 21:12:40,13800138000,SKU-1001,保温杯 500ml,1,¥59.00,¥59.00,已完成")
UNPRICED = "E4,2025/3/4 14:05,13700137000,S,x,1,¥1,待定,已完成"  # its total is required: quarantined
UNPAID = "E5,2025/3/6 10:00,13600136000,SKU-1001,保温杯 500ml,1,¥59.00,¥59.00,待付款"  # the mapping's where: filtered


def persona(data: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "persona", "--data", str(data), *args], input=input,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    assert persona(folder, "init").returncode == 0
    return folder


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a refused command (no traceback), which stored nothing to report."""
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    return done.stderr


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def quarantined(data: Path) -> list[dict[str, Any]]:
    """What `persona quarantine --json` lists (read here: one process fewer per look)."""
    with Persona.open(Settings.load(data, env={})) as opened:
        return describe(opened)


def every_row(data: Path) -> dict[str, list[tuple[object, ...]]]:
    with Persona.open(Settings.load(data, env={})) as opened:
        return {table: [row for page in opened.recorder.dump(table) for row in page] for table in TABLES}


def audit_operations(data: Path) -> list[str]:
    return [str(row[3]) for row in every_row(data)["audit"]]


def mapping_with(tmp_path: Path, old: str, new: str, name: str = "mine.toml") -> Path:
    text = MAPPING.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def export_of(tmp_path: Path, *rows: str, name: str = "orders.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text("\r\n".join([header, *rows]) + "\r\n", encoding="utf-8")
    return path


# -- whole-file mistakes ---------------------------------------------------------------------------
def test_a_mapping_naming_a_column_the_header_lacks_is_refused_naming_it_and_the_header(data: Path,
                                                                                       tmp_path: Path) -> None:
    wrong = mapping_with(tmp_path, 'column = "订单金额"', 'column = "订单总额"')
    error = refused(persona(data, "ingest", str(EXPORT), "--mapping", str(wrong)))
    assert "mine.toml" in error and "zh_orders.csv lacks: 订单总额;" in error
    assert f"the header's columns are {HEADER.replace(',', ', ')} (" in error
    assert "13800138000" not in error and "138 0013 8000" not in error  # column names, never a value
    assert quarantined(data) == [] and every_row(data)["event_keys"] == []
    done = persona(data, "ingest", str(EXPORT), "--mapping", str(MAPPING), "--json")  # the right mapping: control
    assert done.returncode == 0 and report(done)["appended"] > 0


def test_a_where_on_a_column_the_header_lacks_is_refused_not_left_to_keep_every_row(data: Path,
                                                                                      tmp_path: Path) -> None:
    """A filter on a misspelt column would read "" on every row: `not_in` would keep the unpaid
    orders, `in` would drop them all. Either way the whole file is wrong: refused before a row."""
    wrong = mapping_with(tmp_path, '"订单状态" = { not_in', '"订单状况" = { not_in')
    error = refused(persona(data, "ingest", str(EXPORT), "--mapping", str(wrong), "--dry-run"))
    assert "zh_orders.csv lacks: 订单状况;" in error
    assert quarantined(data) == [] and every_row(data)["event_keys"] == []


def test_a_built_in_source_checks_only_the_columns_every_row_needs(data: Path, tmp_path: Path) -> None:
    """The shop's export may lack user_id, phone, currency, items…: a copy of its mapping given with
    --mapping describes one export and wants them all; the built-in wants the time, the order id,
    the total and one identifier."""
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,email,created_at,total\nS-1,ann@example.com,2025-03-04 14:05,¥12.00\n")
    done = persona(data, "ingest", str(orders), "--source", "shop", "--json")
    assert done.returncode == 0 and report(done)["appended"] > 0
    copy = tmp_path / "shop.toml"
    copy.write_text((ROOT / "persona" / "ingest" / "sources" / "shop.toml").read_text(encoding="utf-8"))
    error = refused(persona(data, "ingest", str(orders), "--mapping", str(copy)))
    assert "lacks: channel, items, user_id or phone, phone, sku, category, qty, price;" in error
    assert "currency" not in error.split(";")[0]  # a field with a default may be missing
    dateless = tmp_path / "dateless.csv"
    dateless.write_text("order_id,email,total\nS-2,bo@example.com,¥12.00\n")
    error = refused(persona(data, "ingest", str(dateless), "--source", "shop"))
    assert "the built-in source shop names column(s) the header of dateless.csv lacks: created_at;" in error
    assert "ann@example.com" not in error and "bo@example.com" not in error


def test_a_file_without_a_header_line_is_not_listed_as_one(data: Path, tmp_path: Path) -> None:
    """Its first line holds a customer's values: the error says what is wrong without showing them."""
    rows = EXPORT.read_text(encoding="utf-8-sig").splitlines()[1:]
    headless = tmp_path / "headless.csv"
    headless.write_text("\n".join(rows) + "\n", encoding="utf-8")
    error = refused(persona(data, "ingest", str(headless), "--mapping", str(MAPPING)))
    assert "not a header" in error and "header = false" in error
    assert "138 0013 8000" not in error and "E20250304001" not in error
    assert quarantined(data) == []


def test_an_unknown_namespace_is_refused_naming_it_and_the_valid_ones(data: Path, tmp_path: Path) -> None:
    wrong = mapping_with(tmp_path, 'namespace = "phone"', 'namespace = "mobile"')
    error = refused(persona(data, "ingest", str(EXPORT), "--mapping", str(wrong)))
    assert "'mobile'" in error and "email, phone, device, cookie or SOURCE_user" in error
    assert quarantined(data) == []


def test_a_csv_given_without_a_mapping_is_refused_pointing_to_mapping_and_source(data: Path, tmp_path: Path) -> None:
    error = refused(persona(data, "ingest", str(EXPORT)))
    assert "zh_orders.csv looks like CSV" in error
    assert "--mapping" in error and "--source" in error and "docs/ingest.md" in error
    unnamed = tmp_path / "export.txt"  # no telling extension: its delimited first line says it
    unnamed.write_bytes(EXPORT.read_bytes())
    assert "export.txt looks like CSV" in refused(persona(data, "ingest", str(unnamed)))
    assert quarantined(data) == []


def xlsx() -> bytes:
    book = io.BytesIO()
    with zipfile.ZipFile(book, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("xl/worksheets/sheet1.xml", "<worksheet><sheetData/></worksheet>")
    return book.getvalue()


@pytest.mark.parametrize(("name", "content", "said"), [
    ("orders.zip", xlsx(), "a zip archive (an .xlsx workbook is one: name it .xlsx"),  # (an .xlsx: tables)
    ("orders.csv.gz", gzip.compress(EXPORT.read_bytes()), "a gzip-compressed file"),
    ("orders.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document"),
    ("orders.csv", HEADER.encode("utf-16"), "UTF-16 text"),
    ("orders.csv", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", "NUL bytes"),
], ids=["xlsx", "gzip", "pdf", "utf-16", "binary"])
def test_a_file_that_is_not_text_is_refused_as_what_it_looks_like(data: Path, tmp_path: Path, name: str,
                                                                   content: bytes, said: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    error = refused(persona(data, "ingest", str(path), "--mapping", str(MAPPING)))
    assert f"{name} " in error and said in error and "export it as CSV (UTF-8)" in error
    assert quarantined(data) == []


def test_a_gb18030_export_is_refused_naming_the_encoding_and_ingests_with_it_set(data: Path, tmp_path: Path) -> None:
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(EXPORT.read_text(encoding="utf-8-sig").encode("gb18030"))  # as Chinese Excel saves it
    error = refused(persona(data, "ingest", str(gbk), "--mapping", str(MAPPING)))
    assert "gbk.csv is not UTF-8 text; it looks like GB18030" in error and 'encoding = "gb18030"' in error
    assert quarantined(data) == []
    set_ = mapping_with(tmp_path, '# encoding = "gb18030"', 'encoding = "gb18030"')
    first = persona(data, "ingest", str(gbk), "--mapping", str(set_), "--json")
    assert first.returncode == 0 and report(first)["appended"] > 0
    same = report(persona(data, "ingest", str(EXPORT), "--mapping", str(MAPPING), "--json"))
    assert (same["appended"], same["duplicates"]) == (0, report(first)["appended"])  # the very same events
    assert same["quarantined"] == report(first)["quarantined"]
    assert not [row for row in quarantined(data) if "not valid" in row["reason"]]


def test_a_stray_bad_byte_in_one_row_is_quarantined_not_the_file_refused(data: Path, tmp_path: Path) -> None:
    raw = export_of(tmp_path, *ORDERS).read_bytes()
    at = raw.index("帆布袋".encode())
    damaged = tmp_path / "damaged.csv"
    damaged.write_bytes(raw[:at] + b"\xff" + raw[at + 1:])  # one row, not the file, is not UTF-8
    done = persona(data, "ingest", str(damaged), "--mapping", str(MAPPING), "--json")
    assert done.returncode == 0 and report(done)["appended"] > 0 and report(done)["quarantined"] == 1
    assert [row["reason"] for row in quarantined(data)] == ["row: not valid utf-8 text (set `encoding` in the mapping)"]


# -- exit status -----------------------------------------------------------------------------------
def test_a_run_that_quarantined_every_record_exits_1_after_its_report(data: Path, tmp_path: Path) -> None:
    bad = export_of(tmp_path, UNPRICED, UNPRICED.replace("E4,", "E5,"))
    done = persona(data, "ingest", str(bad), "--mapping", str(MAPPING))
    assert done.returncode == 1 and "0 events appended" in done.stdout and "2 lines quarantined" in done.stdout
    assert "nothing was appended: every record was quarantined" in done.stderr
    assert len(quarantined(data)) == 2  # reported, and kept
    assert persona(data, "ingest", str(export_of(tmp_path, *ORDERS, name="good.csv")), "--mapping",
                   str(MAPPING)).returncode == 0
    # duplicates found: the run did what it could, it does not fail for the bad row beside them
    mixed = export_of(tmp_path, *ORDERS[:2], UNPRICED, name="mixed.csv")
    again = persona(data, "ingest", str(mixed), "--mapping", str(MAPPING), "--json")
    assert again.returncode == 0 and (report(again)["duplicates"], report(again)["quarantined"]) == (1, 1)


# -- dry run ---------------------------------------------------------------------------------------
def test_a_dry_run_stores_nothing_and_predicts_the_real_run(data: Path, tmp_path: Path) -> None:
    """An order already in the log, new ones, one repeated later in the file and a bad row: the
    dry run counts each as the real run then does, and changes no row of any table but for one
    audit entry saying it ran."""
    assert persona(data, "ingest", str(export_of(tmp_path, *ORDERS[:2], name="first.csv")), "--mapping",
                   str(MAPPING)).returncode == 0
    later = export_of(tmp_path, *ORDERS, ORDERS[2], UNPRICED, UNPAID)
    before = every_row(data)
    dry = persona(data, "ingest", str(later), "--mapping", str(MAPPING), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    predicted = report(dry)
    assert predicted["dry_run"] is True
    assert (predicted["appended"], predicted["duplicates"], predicted["quarantined"], predicted["filtered"]) == (
        2, 2, 1, 1)
    after = every_row(data)
    assert {t: r for t, r in after.items() if t != "audit"} == {t: r for t, r in before.items() if t != "audit"}
    assert after["audit"][:-1] == before["audit"] and after["audit"][-1][3] == "ingest dry run"
    assert quarantined(data) == []
    human = persona(data, "ingest", str(later), "--mapping", str(MAPPING), "--dry-run")
    assert human.stdout.startswith("dry run: nothing was stored or quarantined")
    real = report(persona(data, "ingest", str(later), "--mapping", str(MAPPING), "--json"))
    counted = ("lines", "appended", "duplicates", "quarantined", "filtered", "blank", "profiles_created", "merges",
               "quarantine_reasons")
    assert {k: predicted[k] for k in counted} == {k: real[k] for k in counted}
    assert len(quarantined(data)) == 1


def test_a_dry_run_that_would_quarantine_everything_exits_1(data: Path, tmp_path: Path) -> None:
    bad = export_of(tmp_path, UNPRICED)
    done = persona(data, "ingest", str(bad), "--mapping", str(MAPPING), "--dry-run")
    assert done.returncode == 1 and "1 lines quarantined" in done.stdout and "would be quarantined" in done.stderr
    assert quarantined(data) == []


def test_a_dry_run_is_refused_a_whole_file_mistake_too(data: Path) -> None:
    assert "looks like CSV" in refused(persona(data, "ingest", str(EXPORT), "--dry-run"))


# -- quarantine: each run's reason, resolve, purge -----------------------------------------------
def test_a_second_run_with_another_mapping_shows_its_own_reason(data: Path, tmp_path: Path) -> None:
    """The row has a bad order time and a bad total; the first mapping reads the time from
    下单时间, the second from 付款时间, and so refuses it for its total."""
    header = HEADER + ",付款时间"
    export = export_of(tmp_path, "E1,2025/3/4 14:05,13800138000,S,x,1,¥1,¥1,已完成,2025/3/4 14:06",
                       "E2,尚未,13900139000,S,x,1,¥1,待定,已完成,2025/3/4 14:06", header=header)
    persona(data, "ingest", str(export), "--mapping", str(MAPPING))
    first = quarantined(data)
    assert [(r["line"], r["reason"].split(":")[0]) for r in first] == [(3, "下单时间")]
    paid = mapping_with(tmp_path, 'when = "下单时间"', 'when = "付款时间"', name="paid.toml")
    persona(data, "ingest", str(export), "--mapping", str(paid))
    second = quarantined(data)
    assert [(r["id"], r["line"]) for r in second] == [(first[0]["id"], 3)]  # the same record, held once
    assert second[0]["reason"].split(":")[0] == "amount" and second[0]["recorded_at"] > first[0]["recorded_at"]
    listed = persona(data, "quarantine").stdout
    assert "amount:" in listed and "下单时间:" not in listed


def quarantine_two_files(data: Path, tmp_path: Path) -> dict[str, list[int]]:
    """Two runs of two files, two bad lines each: the ids each file's records got."""
    for name in ("a.jsonl", "b.jsonl"):
        path = tmp_path / name
        path.write_text(json.dumps({"x": 1}) + "\n" + json.dumps({"x": 2}) + "\n", encoding="utf-8")
        persona(data, "ingest", str(path))
    held: dict[str, list[int]] = {}
    for row in quarantined(data):
        held.setdefault(row["origin"], []).append(row["id"])
    assert sorted(map(len, held.values())) == [2, 2]
    return held


def test_resolve_removes_the_records_named_and_refuses_an_unknown_id(data: Path, tmp_path: Path) -> None:
    held = quarantine_two_files(data, tmp_path)
    unknown = max(held["a.jsonl"] + held["b.jsonl"]) + 1
    stopped = persona(data, "quarantine", "--resolve", str(held["a.jsonl"][0]), str(unknown))
    assert stopped.returncode == 2 and f"no quarantined record #{unknown}" in stopped.stderr
    assert "nothing was removed" in stopped.stderr and "Traceback" not in stopped.stderr
    assert len(quarantined(data)) == 4
    done = persona(data, "quarantine", "--resolve", str(held["a.jsonl"][0]), f"#{held['b.jsonl'][1]}")  # two runs'
    assert done.returncode == 0 and "removed 2 quarantined record(s)" in done.stdout
    assert sorted(r["id"] for r in quarantined(data)) == sorted([held["a.jsonl"][1], held["b.jsonl"][0]])
    assert audit_operations(data).count("quarantine resolve") == 1
    assert persona(data, "quarantine", "--resolve").returncode == 2  # which ones?
    assert persona(data, "quarantine", str(held["a.jsonl"][1])).returncode == 2  # an id without --resolve


def test_purge_asks_first_and_removes_every_record(data: Path, tmp_path: Path) -> None:
    quarantine_two_files(data, tmp_path)
    declined = persona(data, "quarantine", "--purge", input="n\n")
    assert declined.returncode == 1 and len(quarantined(data)) == 4
    done = persona(data, "quarantine", "--purge", "--yes")
    assert done.returncode == 0 and "removed 4 quarantined record(s)" in done.stdout
    assert quarantined(data) == [] and audit_operations(data).count("quarantine purge") == 1
