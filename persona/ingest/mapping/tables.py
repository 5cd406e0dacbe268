"""Reading a mapped source's Parquet file or Excel (.xlsx) sheet: rows as the CSV and JSONL readers
give them (persona.ingest.mapping.readers), their typed values put into the mapping's world so that
its kinds read them as they read a CSV cell, and each row kept for quarantine as a JSON object.

Values: text stays text, a whole float (Excel's 13800138000.0) is an int, a date or time is ISO
text (naive stays naive: the mapping's time zone applies), a decimal is its text, a list or struct
a JSON list or object (`customer.email` reads into it), an empty cell or NaN is missing.

A Parquet file is read 10,000 rows at a time, however large; a sheet is read whole by calamine
(Excel holds at most 1,048,576 rows). Both need a file, not a pipe. Polars' threads do not
survive a fork: a process that has used polars must read a Parquet file itself (the CLI does),
not in a forked reader. A file that cannot be read is refused with ConfigurationError naming
the file and the problem, never a value of it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from persona.errors import ConfigurationError
from persona.ingest.engine import Record
from persona.ingest.mapping.spec import SourceMapping

TABLES = ("parquet", "xlsx")
BATCH = 10_000  # Parquet rows read at a time
Row = tuple[int, bytes, dict[str, Any], int]  # as persona.ingest.mapping.rows names it
Source = str | Path | BinaryIO | Iterable[bytes]
Numbered = tuple[int, dict[str, Any] | list[Any], str | None]  # (number, row or refused cells, reason)
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


def table_format(mapping: SourceMapping | None, name: str) -> str | None:
    """parquet or xlsx: the mapping's `format`, else the file's extension — which beats a mapping's
    csv or jsonl (a built-in source's): such a file is never text. None: a text format."""
    if mapping is not None and mapping.format in TABLES:
        return mapping.format
    suffix = Path(name).suffix.lower()
    return {".parquet": "parquet", ".pq": "parquet", ".xlsx": "xlsx", ".xlsm": "xlsx"}.get(suffix)


def parquet_rows(source: Source, mapping: SourceMapping, *, name: str = "") -> Iterator[Record | Row]:
    """The rows of a Parquet file, numbered from 1, read BATCH rows at a time."""
    import polars as pl  # heavy: loaded by a Parquet ingest only

    target = _seekable(source, name, "Parquet")
    said = _said(name, target)
    try:
        batches = pl.scan_parquet(target).collect_batches(chunk_size=BATCH)
        numbered = ((number, values, None) for number, values in
                    enumerate((values for batch in batches for values in batch.iter_rows(named=True)), start=1))
        yield from _rows(_guarded(numbered, lambda: _unreadable(said, "a Parquet file")))
    except ConfigurationError:
        raise
    except BaseException as e:  # polars' errors, and a panic of its native code on a damaged file
        if isinstance(e, _FATAL):
            raise
        raise _unreadable(said, "a Parquet file") from None


def xlsx_rows(source: Source, mapping: SourceMapping, *, name: str = "") -> Iterator[Record | Row]:
    """The rows of a workbook's first sheet (or the mapping's `sheet`), numbered as Excel shows
    them; the first row that is not empty is the header, unless the mapping says `header = false`."""
    yield from _rows(_sheet_rows(_sheet(source, mapping, name), mapping))


def _sheet(source: Source, mapping: SourceMapping, name: str) -> Iterator[list[Any]]:
    """The sheet's rows of cells, each row from the sheet's first (row 1), so that numbers are Excel's."""
    from python_calamine import CalamineWorkbook, PasswordError, WorksheetNotFound  # heavy: as above

    target = _seekable(source, name, "Excel")
    said = _said(name, target)
    try:
        book = (CalamineWorkbook.from_path(str(target)) if isinstance(target, str | Path)
                else CalamineWorkbook.from_filelike(target))
        if mapping.sheet is not None:
            sheet = book.get_sheet_by_name(mapping.sheet)
        elif book.sheet_names:
            sheet = book.get_sheet_by_index(0)
        else:
            raise ConfigurationError(f"{said} holds no sheet")
        return _guarded(sheet.iter_rows(), lambda: _unreadable(said, "an Excel workbook (.xlsx)"))
    except WorksheetNotFound:
        shown = ", ".join(_sheet_name(s) for s in book.sheet_names)
        raise ConfigurationError(f"{said} has no sheet named {_sheet_name(mapping.sheet or '')!r} (the mapping's"
                                 f" `sheet`); its sheets are {shown}") from None
    except PasswordError:
        raise ConfigurationError(f"{said} is password-protected: save it without a password, or as CSV") from None
    except ConfigurationError:
        raise
    except BaseException as e:  # calamine's errors (a damaged zip, XML that is not a sheet's), or a panic
        if isinstance(e, _FATAL):
            raise
        raise _unreadable(said, "an Excel workbook (.xlsx)") from None


def table_header(path: Path, mapping: SourceMapping, form: str) -> list[str]:
    """The columns a Parquet file or a sheet has, read as the ingest reads them — a Parquet struct's
    fields as dotted paths too (`customer.email`) — so that a file that cannot be read, or lacks
    the mapping's sheet, is refused before a row is: ConfigurationError."""
    if form == "xlsx":
        rows = _sheet(path, mapping, path.name)  # opened, and its sheet found, in any case
        if not mapping.header:
            return list(mapping.columns)
        cells = next((values for values in (_trimmed(row) for row in rows) if values), [])
        return [_header(cell) for cell in cells]
    import polars as pl  # heavy: as above

    try:
        schema = pl.read_parquet_schema(path)
    except BaseException as e:
        if isinstance(e, _FATAL):
            raise
        raise _unreadable(_said(path.name, path), "a Parquet file") from None
    return _paths(schema.items(), pl.Struct)


def _paths(fields: Iterable[tuple[str, Any]], struct: Any) -> list[str]:
    out = []
    for name, dtype in fields:
        out.append(name)
        if isinstance(dtype, struct):
            out += [f"{name}.{inner}" for inner in _paths(((f.name, f.dtype) for f in dtype.fields), struct)]
    return out


def _sheet_rows(cells: Iterable[list[Any]], mapping: SourceMapping) -> Iterator[Numbered]:
    """(Excel's row number, the row as a dict, None) for each row after the header; a row with more
    cells than the header has columns: (its number, its cells, the reason it is refused)."""
    header: list[str] | None = None if mapping.header else list(mapping.columns)
    for number, row in enumerate(cells, start=1):
        values = _trimmed(row)
        if header is None:
            if values:  # the first row that is not empty
                header = [_header(cell) for cell in values]
            continue
        if len(values) > len(header):
            yield number, values, f"row: {len(values)} columns where the header has {len(header)}"
            continue
        yield number, dict(zip(header, values + [None] * (len(header) - len(values)), strict=True)), None


def _trimmed(row: list[Any]) -> list[Any]:
    """A sheet's row of values, without the empty cells at its end (a sheet is as wide as its widest row)."""
    values = [_value(cell) for cell in row]
    while values and values[-1] is None:
        values.pop()
    return values


def _rows(numbered: Iterable[Numbered]) -> Iterator[Record | Row]:
    """Rows as readers give them: a Row, or a Record for an empty row (blank) or one refused whole."""
    records = 0
    for number, cells, reason in numbered:
        if isinstance(cells, list):  # refused whole: its cells, as a JSON list
            raw = orjson.dumps(cells)
            yield Record(number, raw, (), reason, size=len(raw))
            continue
        try:
            row = {str(key): _value(value) for key, value in cells.items()}
            raw = orjson.dumps(row)
        except (TypeError, ValueError, _Binary):  # an integer beyond 64 bits, bytes that are not text
            raw = orjson.dumps({"_row": number})
            yield Record(number, raw, (), "row: holds a value that is not text, a number or a time", size=len(raw))
            continue
        if all(value is None or (isinstance(value, str) and not value.strip()) for value in row.values()):
            yield Record(number, raw, (), size=len(raw))
            continue
        records += 1
        yield number, raw, row | {"_line": str(records)}, len(raw)


class _Binary(ValueError):
    """A binary value that is not UTF-8 text."""


def _value(value: Any) -> Any:
    """A typed value in the mapping's world: what a CSV cell holding it would be read as."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value if value else None  # calamine's empty cell
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):  # a duration: its seconds
        return _value(value.total_seconds())
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_value(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Binary from None
    return str(value)


def _header(cell: Any) -> str:
    return "" if cell is None else str(cell).strip()


def _guarded(rows: Iterator[Any], error: Any) -> Iterator[Any]:
    """`rows`, a reader's failure part-way (a truncated file) turned into `error()`."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except BaseException as e:
            if isinstance(e, _FATAL):
                raise
            raise error() from None
        yield row


def _seekable(source: Source, name: str, what: str) -> str | Path | BinaryIO:
    """The file to read: its path when it has one (an open file's), else the handle if it can seek."""
    if isinstance(source, str | Path):
        return source
    path = getattr(source, "name", None)
    if isinstance(path, str) and os.path.isfile(path):
        return path
    seekable = getattr(source, "seekable", None)
    if callable(seekable) and seekable():
        return source  # type: ignore[return-value]
    raise ConfigurationError(f"{name or 'standard input'}: a {what} file is read from a file, not from standard"
                             " input or a pipe (it is read by its end first): give its path")


def _said(name: str, target: str | Path | BinaryIO) -> str:
    """The file as an error names it (an address in its name is not repeated, as preflight does)."""
    shown = name or (Path(target).name if isinstance(target, str | Path) else "the file")
    return re.sub(r"[\w.%+\-]+@[\w.\-]+\.[A-Za-z]{2,24}", "<email>", shown)


def _unreadable(said: str, what: str) -> ConfigurationError:
    return ConfigurationError(f"{said} cannot be read as {what}: it is damaged, cut short or not one; export it"
                              " again (or as CSV)")


def _sheet_name(name: str) -> str:
    """A sheet's name as an error may say it (one that looks like data is not repeated)."""
    return name if re.fullmatch(r"[\w .\-]{1,64}", name) and not re.search(r"\d{5,}", name) else "<sheet>"
