"""Parquet files and Excel workbooks through the mapping language (persona.ingest.mapping.tables):
the same rows as CSV, Parquet and .xlsx make the same events and are refused for the same reasons
(line numbers: Parquet's row, Excel's row as Excel shows it); typed values read as a CSV cell's
would be; a damaged file, a missing sheet or a pipe is refused with one clean error, never a
traceback and never a cell's value; a cell over the size limit quarantines its row."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from persona.errors import ConfigurationError
from persona.ingest.engine import Record
from persona.ingest.mapping import builtin_mapping, mapped_records, parse_mapping
from persona.ingest.mapping.tables import parquet_rows, xlsx_rows
from persona.testing.workbook import write_xlsx

ROOT = Path(__file__).resolve().parent.parent
HEADER = ["order_id", "email", "phone", "created_at", "total", "channel"]
ROWS: list[list[Any]] = [  # as a shop's export holds them: two orders, a row without a subject, a bad time
    ["A1", "ann@example.com", 13800138000, datetime(2025, 3, 4, 14, 5, 6), 12.5, "web"],
    ["A2", "bob@example.com", None, datetime(2025, 3, 5, 9, 30), 30, "app"],
    ["A3", None, None, datetime(2025, 3, 5, 9, 30), 30, "app"],
    ["A4", "cy@example.com", None, "not a time", 30, "app"],
]
SECRET = "carol-secret@example.com"


def persona(data: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "persona", "--data", str(data), *args], input=input,
                          capture_output=True, timeout=120, cwd=ROOT)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    assert persona(folder, "init").returncode == 0
    return folder


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a refused command: no traceback, nothing stored to report."""
    assert done.returncode != 0 and done.stdout == "", (done.stdout, done.stderr)
    assert "error" in done.stderr.lower() and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def as_text(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value)


def write_all(folder: Path) -> dict[str, Path]:
    """The same rows as CSV, Parquet (times as text: a column has one type) and .xlsx."""
    folder.mkdir(exist_ok=True)
    csv = folder / "orders.csv"
    csv.write_text("\n".join(",".join(as_text(v) for v in row) for row in [HEADER, *ROWS]) + "\n", encoding="utf-8")
    parquet = folder / "orders.parquet"
    columns = {name: [row[i] for row in ROWS] for i, name in enumerate(HEADER)}
    columns["created_at"] = [as_text(v) for v in columns["created_at"]]
    columns["total"] = [float(v) for v in columns["total"]]
    pl.DataFrame(columns).write_parquet(parquet)
    return {"csv": csv, "parquet": parquet, "xlsx": write_xlsx(folder / "orders.xlsx", {"Orders": [HEADER, *ROWS]})}


def records(path: Path, mapping: Any = None, max_bytes: int = 64 * 1024) -> list[Record]:
    with path.open("rb") as handle:
        return list(mapped_records(mapping or builtin_mapping("shop"), handle, name=path.name, max_bytes=max_bytes))


def outcome(found: list[Record]) -> list[tuple[Any, ...]]:
    """What each record became, without its line: (events, reason), in order."""
    return [(list(r.events), r.reason, r.filtered) for r in found]


# -- the same rows, three formats ------------------------------------------------------------------
def test_the_same_rows_as_csv_parquet_and_xlsx_make_the_same_events_and_refusals(tmp_path: Path) -> None:
    files = write_all(tmp_path)
    made = {form: records(path) for form, path in files.items()}
    assert outcome(made["csv"]) == outcome(made["parquet"]) == outcome(made["xlsx"])
    events = [event for record in made["csv"] for event in record.events]
    assert [e["type"] for e in events] == ["identity_linked", "identity_linked", "order_placed", "order_placed"]
    assert events[2]["data"] == {"order_id": "A1", "amount": "12.5", "currency": "CNY", "channel": "web"}
    assert events[2]["occurred_at"] == "2025-03-04T06:05:06.000000Z"  # naive: the source's zone (Shanghai)
    refusals = {form: [(r.line, r.reason) for r in found if r.reason] for form, found in made.items()}
    reasons = ["row: no event could be made of it (no subject or no time)",
               "created_at: not a date or time in a known format"]
    assert refusals["csv"] == refusals["xlsx"] == list(zip([4, 5], reasons, strict=True))  # the header is row 1
    assert refusals["parquet"] == list(zip([3, 4], reasons, strict=True))  # the rows' own numbers


def test_the_cli_ingests_each_format_alike_and_exports_refused_rows_as_json_lines(data: Path, tmp_path: Path) -> None:
    files = write_all(tmp_path / "files")
    reports = {}
    for form, path in files.items():
        dry = persona(data, "ingest", str(path), "--source", "shop", "--json", "--dry-run")
        done = persona(data, "ingest", str(path), "--source", "shop", "--json")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        reports[form] = json.loads(done.stdout)
        assert json.loads(dry.stdout)["appended"] == (4 if form == "csv" else 0)  # later formats: duplicates
    assert reports["csv"]["appended"] == 4 and reports["csv"]["quarantined"] == 2
    assert all(r["appended"] == 0 and r["duplicates"] == 4 and r["quarantined"] == 2 for r in
               (reports["parquet"], reports["xlsx"]))  # the same events: already in the log
    listed = json.loads(persona(data, "quarantine", "--json").stdout)
    assert sorted((row["origin"], row["line"]) for row in listed) == [
        ("orders.csv", 4), ("orders.csv", 5), ("orders.parquet", 3), ("orders.parquet", 4), ("orders.xlsx", 4),
        ("orders.xlsx", 5)]
    export = tmp_path / "fix.jsonl"
    assert persona(data, "quarantine", "--export", str(export), "--origin", "orders.xlsx").returncode == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert rows == [dict(zip(HEADER, ["A3", None, None, "2025-03-05T09:30:00", 30, "app"], strict=True)),
                    dict(zip(HEADER, ["A4", "cy@example.com", None, "not a time", 30, "app"], strict=True))]
    rows[0]["email"], rows[1]["created_at"] = "dee@example.com", "2025-03-06 10:00"  # fixed
    export.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    fixed = persona(data, "ingest", str(export), "--source", "shop", "--format", "jsonl", "--json")
    assert json.loads(fixed.stdout)["appended"] == 2 and json.loads(fixed.stdout)["quarantined"] == 0


# -- typed values ----------------------------------------------------------------------------------
TYPED = """
source = "crm"
timezone = "Asia/Shanghai"
[[events]]
type = "order_placed"
id = "{order_id}-{_line}"
when = "{when}"
subject = { namespace = "email", column = "customer.email" }
[events.data]
order_id = { column = "order_id", kind = "int" }
amount = { column = "amount", kind = "amount" }
tags = { column = "tags", kind = "list" }
paid_at = { column = "paid_at", kind = "instant" }
vip = { column = "vip", kind = "bool" }
"""


def typed_mapping(when: str) -> Any:
    import tomllib

    return parse_mapping(tomllib.loads(TYPED.replace("{when}", when)), "typed.toml")


def test_typed_parquet_columns_read_as_their_values(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pl.DataFrame({
        "order_id": pl.Series([9007199254740993, 2], dtype=pl.Int64),  # past a float's exact integers
        "amount": [1299.5, 30.0],
        "naive": [datetime(2025, 3, 4, 14, 5), datetime(2025, 3, 5, 8, 0)],  # the mapping's zone applies
        "paid_at": pl.Series([datetime(2025, 3, 4, 6, 0, tzinfo=UTC), None], dtype=pl.Datetime("us", "UTC")),
        "customer": [{"email": "Ann@Example.com", "tier": 1}, {"email": "bob@example.com", "tier": 2}],
        "tags": [["gift", "vip"], []],
        "vip": [True, False],
    }).write_parquet(path)
    found = records(path, typed_mapping("naive"))
    assert [r.reason for r in found] == [None, None]
    first, second = found[0].events[0], found[1].events[0]
    assert first["event_id"] == "9007199254740993-1" and second["event_id"] == "2-2"
    assert first["occurred_at"] == "2025-03-04T06:05:00.000000Z"  # naive: the mapping's zone (Shanghai)
    assert second["occurred_at"] == "2025-03-05T00:00:00.000000Z"
    assert first["subject"] == {"namespace": "email", "value": "Ann@Example.com"}  # normalised when appended
    assert first["data"] == {"order_id": 9007199254740993, "amount": "1299.5", "tags": ["gift", "vip"],
                             "paid_at": "2025-03-04T06:00:00.000000Z", "vip": True}
    assert second["data"] == {"order_id": 2, "amount": "30", "tags": [], "vip": False}
    assert found[0].decoded["customer"] == {"email": "Ann@Example.com", "tier": 1}


def test_parquet_is_read_a_batch_at_a_time_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona.ingest.mapping import tables

    path = tmp_path / "many.parquet"
    pl.DataFrame({"n": range(2_500)}).write_parquet(path, row_group_size=300)
    monkeypatch.setattr(tables, "BATCH", 1_000)
    seen = []
    original = pl.LazyFrame.collect_batches

    def counted(self: pl.LazyFrame, **options: Any) -> Any:
        seen.append(options.get("chunk_size"))
        return original(self, **options)

    monkeypatch.setattr(pl.LazyFrame, "collect_batches", counted)
    rows = list(parquet_rows(path, typed_mapping("n")))
    assert seen == [1_000]  # streamed, never collected whole
    assert [row[0] for row in rows] == list(range(1, 2_501))  # type: ignore[index]
    assert [row[2]["n"] for row in rows] == list(range(2_500))  # type: ignore[index]


def test_xlsx_values_dates_and_row_numbers_as_excel_shows_them(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "book.xlsx", {
        "Notes": [["not this sheet"]],
        "Orders": [[None], ["order_id", "email", "phone", "created_at", "total", "channel"],
                   ["B1", "ann@example.com", 13800138000, datetime(2025, 3, 4, 14, 5, 6), 1299.5, "web"],
                   [None, None, None],  # blank: skipped, counted as a blank line
                   ["B2", "bob@example.com", None, date(2025, 3, 5), "¥30.00", "app", "an extra cell"],
                   ["B3", "cy@example.com", None, "2025-03-06 12:00", 7, None]],
    })
    mapping = parse_mapping({**_shop_doc(), "sheet": "Orders"}, "shop.toml")
    found = records(path, mapping)
    assert [(r.line, r.reason) for r in found] == [
        (3, None), (4, None), (5, "row: 7 columns where the header has 6"), (6, None)]
    assert found[1].events == () and found[1].reason is None  # the blank row
    ann = next(e for e in found[0].events if e["type"] == "order_placed")
    assert ann["occurred_at"] == "2025-03-04T06:05:06.000000Z" and ann["data"]["amount"] == "1299.5"
    assert {e["data"].get("other", {}).get("value") for e in found[0].events} >= {"13800138000"}  # not 1.38e10
    cy = next(e for e in found[3].events if e["type"] == "order_placed")
    assert cy["occurred_at"] == "2025-03-06T04:00:00.000000Z" and cy["data"]["amount"] == "7"
    rows = list(xlsx_rows(path, mapping))
    assert rows[0][2]["_line"] == "1" and rows[3][2]["_line"] == "2"  # type: ignore[index]


def _shop_doc() -> dict[str, Any]:
    import tomllib

    text = (ROOT / "persona" / "ingest" / "sources" / "shop.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def test_a_headerless_sheet_is_named_by_the_mappings_columns(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "plain.xlsx", {"S": [["c1", "x@example.com", datetime(2025, 1, 2, 3, 4, 5)]]})
    mapping = parse_mapping({
        "source": {"name": "crm", "header": False, "columns": ["id", "email", "at"]},
        "event": {"type": "page_viewed"}, "subject": {"namespace": "email", "value": {"column": "email"}},
        "fields": {"occurred_at": {"column": "at"}, "event_id": "{id}"}}, "plain.toml")
    [record] = records(path, mapping)
    assert record.line == 1 and record.events[0]["occurred_at"] == "2025-01-02T03:04:05.000000Z"


def test_the_mapping_accepts_the_new_formats_and_a_sheet_and_refuses_others() -> None:
    base = {"source": "crm", "events": [{"type": "page_viewed", "when": "at", "subject": {
        "namespace": "email", "column": "email"}}]}
    assert parse_mapping({**base, "format": "parquet"}).format == "parquet"
    assert parse_mapping({**base, "format": "xlsx", "sheet": "订单"}).sheet == "订单"
    with pytest.raises(ConfigurationError, match="csv, jsonl, parquet or xlsx"):
        parse_mapping({**base, "format": "xls"})
    with pytest.raises(ConfigurationError, match="`sheet`"):
        parse_mapping({**base, "sheet": 3})
    sectioned = {"source": {"name": "crm", "format": "xlsx", "sheet": "Orders"}, "event": {"type": "page_viewed"},
                 "subject": {"namespace": "email", "value": {"column": "email"}}, "fields": {"occurred_at": "x"}}
    assert parse_mapping(sectioned).sheet == "Orders"
    with pytest.raises(ConfigurationError, match=r"\[source\] format is csv, jsonl, parquet or xlsx"):
        parse_mapping({**sectioned, "source": {"name": "crm", "format": "ods"}})


# -- attackers and accidents -----------------------------------------------------------------------
def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_damaged_files_and_a_missing_sheet_are_refused_cleanly_naming_no_value(data: Path, tmp_path: Path) -> None:
    rows = [HEADER, ["Z1", SECRET, None, datetime(2025, 3, 4), 1, "web"]]
    parquet = tmp_path / "orders.parquet"
    pl.DataFrame({name: [as_text(v) for v in column] for name, *column in zip(*rows, strict=True)}).write_parquet(
        parquet)
    cases = {
        "random.parquet": b"PAR1" + bytes(range(256)) * 8 + b"PAR1",
        "cut.parquet": truncated(parquet).read_bytes(),
        "cut.xlsx": truncated(write_xlsx(tmp_path / "whole.xlsx", {"S": rows * 200})).read_bytes(),
        "notabook.xlsx": _zip({"hello.txt": SECRET}),
        "random.xlsx": SECRET.encode() * 50,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        error = refused(persona(data, "ingest", str(path), "--source", "shop"))
        assert name in error and "cannot be read as" in error and SECRET not in error, error
    book = write_xlsx(tmp_path / "book.xlsx", {"Orders": rows})
    mapping = tmp_path / "mine.toml"
    mapping.write_text((ROOT / "persona/ingest/sources/shop.toml").read_text(encoding="utf-8").replace(
        'group_by = "order_id"', 'group_by = "order_id"\nsheet = "Sales"'), encoding="utf-8")
    error = refused(persona(data, "ingest", str(book), "--mapping", str(mapping)))
    assert "no sheet named 'Sales'" in error and "its sheets are Orders" in error
    assert json.loads(persona(data, "quarantine", "--json").stdout) == []  # refused whole: nothing quarantined


def test_a_damaged_file_is_a_configuration_error_in_the_library_too(tmp_path: Path) -> None:
    mapping = builtin_mapping("shop")
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ConfigurationError, match="cannot be read as a Parquet file"):
        list(parquet_rows(path, mapping, name=path.name))
    with pytest.raises(ConfigurationError, match="cannot be read as an Excel workbook"):
        list(xlsx_rows(io.BytesIO(_zip({"a.txt": "x"})), mapping, name="y.xlsx"))
    with pytest.raises(ConfigurationError, match="not from standard input"):
        list(parquet_rows(iter([b"PAR1"]), mapping, name="<stdin>"))


def test_standard_input_and_a_mapping_less_table_are_refused(data: Path, tmp_path: Path) -> None:
    files = write_all(tmp_path)
    mapping = tmp_path / "mine.toml"
    mapping.write_text((ROOT / "persona/ingest/sources/shop.toml").read_text(encoding="utf-8").replace(
        'format = "csv"', 'format = "parquet"'), encoding="utf-8")
    error = refused(persona(data, "ingest", "-", "--mapping", str(mapping), input=files["parquet"].read_bytes()))
    assert "standard input" in error
    error = refused(persona(data, "ingest", "-", "--source", "shop", "--format", "xlsx",
                            input=files["xlsx"].read_bytes()))
    assert "standard input" in error
    assert "--mapping" in refused(persona(data, "ingest", str(files["xlsx"])))


def test_a_column_the_table_lacks_is_refused_before_a_row_is_read(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    pl.DataFrame({"order_id": ["A1"], "email": [SECRET]}).write_parquet(path)
    error = refused(persona(data, "ingest", str(path), "--source", "shop"))
    assert "lacks" in error and "created_at" in error and SECRET not in error


def test_a_cell_over_the_size_limit_quarantines_its_row_only(data: Path, tmp_path: Path) -> None:
    huge = "x" * 100_000
    rows = [HEADER, ["H1", "ann@example.com", None, datetime(2025, 3, 4), 1, huge],
            ["H2", "bob@example.com", None, datetime(2025, 3, 4), 2, "web"]]
    book = write_xlsx(tmp_path / "big.xlsx", {"S": rows})
    parquet = tmp_path / "big.parquet"
    pl.DataFrame({name: list(column) for name, *column in zip(*rows, strict=True)}).write_parquet(parquet)
    for path, line in ((book, 2), (parquet, 1)):
        done = persona(data, "ingest", str(path), "--source", "shop", "--json")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert json.loads(done.stdout)["quarantined"] == 1
        [held] = [row for row in json.loads(persona(data, "quarantine", "--json").stdout)
                  if row["origin"] == path.name]
        assert held["line"] == line and "larger than the" in held["reason"] and huge not in done.stderr


def test_an_empty_sheet_or_file_ingests_nothing(tmp_path: Path) -> None:
    mapping = builtin_mapping("shop")
    assert records(write_xlsx(tmp_path / "empty.xlsx", {"S": []}), mapping) == []
    assert records(write_xlsx(tmp_path / "header.xlsx", {"S": [HEADER]}), mapping) == []
    path = tmp_path / "empty.parquet"
    pl.DataFrame({name: pl.Series([], dtype=pl.String) for name in HEADER}).write_parquet(path)
    assert records(path, mapping) == []


def _zip(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()


def test_the_workbook_helper_writes_what_calamine_reads() -> None:
    """A positive control for the tests above: the helper's dates come back as dates."""
    from python_calamine import CalamineWorkbook

    book = io.BytesIO()
    write_xlsx(book, {"S": [["a", 1, 2.5, True, datetime(2025, 3, 4, 14, 5, 6)]]})
    book.seek(0)
    [row] = CalamineWorkbook.from_filelike(book).get_sheet_by_index(0).iter_rows()
    assert row == ["a", 1.0, 2.5, True, datetime(2025, 3, 4, 14, 5, 6)]

