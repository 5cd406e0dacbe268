"""Reading a mapped source: CSV (any delimiter or encoding, with or without a header) and JSONL
rows, the format told by the mapping, the file's extension or its first line — a file's, or a
live feed's, paced — each row kept as its original bytes for quarantine."""

from __future__ import annotations

import csv
import io
import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from persona.errors import ConfigurationError
from persona.ingest.engine import PAUSE, STREAM_PAUSE_S, Record, paced_records
from persona.ingest.mapping.rows import Row, mapped_rows
from persona.ingest.mapping.spec import SourceMapping
from persona.ingest.mapping.tables import parquet_rows, table_format, xlsx_rows

_SURROGATE = re.compile("[\udc80-\udcff]")
csv.field_size_limit(16 * 1024 * 1024)  # rows over the event size limit are refused by size, not by the reader


class _Lines:
    """A text stream's lines, remembering those a CSV row was read from (for quarantine)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def mapped_records(mapping: SourceMapping, handle: Iterable[bytes], *, name: str = "",
                   max_bytes: int = 64 * 1024, columnar: bool = True) -> Iterator[Record]:
    """Records of a CSV or JSONL file, each with the events the mapping makes of it (`columnar`:
    its fields converted a window of rows at a time; False: row by row — the same records)."""
    for item in mapped_rows(mapping, _rows(mapping, handle, name), max_bytes, columnar=columnar):
        if item is not PAUSE:
            yield item


def live_records(mapping: SourceMapping, handle: Iterable[bytes], *, name: str = "", max_bytes: int = 64 * 1024,
                 every: float = STREAM_PAUSE_S, stop: threading.Event | None = None) -> Iterator[Record | None]:
    """The records of a live feed (stdin), with a PAUSE whenever nothing arrived for `every`
    seconds. Rows are read by a thread, so that a group (an order's item rows) is closed after
    GROUP_HOLD_S of quiet rather than when the next group's first row arrives, maybe hours later.
    Once `stop` is set, the rows read so far (an open group included) are the last."""
    return mapped_rows(mapping, paced_records(_rows(mapping, handle, name), every, stop), max_bytes, every=every)


def _rows(mapping: SourceMapping, handle: Iterable[bytes], name: str) -> Iterator[Record | Row]:
    """Rows of a CSV or JSONL source: the mapping's `format`, else the file's extension, else
    (standard input, `usage.log`) what its first line looks like — a JSON object or not. A Parquet
    or Excel file's: persona.ingest.mapping.tables (their extension beats a mapping's csv or jsonl)."""
    table = table_format(mapping, name)
    if table is not None:
        yield from (parquet_rows if table == "parquet" else xlsx_rows)(handle, mapping, name=name)
        return
    form = mapping.format
    if form is None and name.endswith((".jsonl", ".ndjson", ".json")):
        form = "jsonl"
    elif form is None and name.endswith((".csv", ".tsv", ".txt")):
        form = "csv"
    if form is None:  # read here, lazily: for a live feed, in its reader thread
        lines = iter(handle)
        seen = []
        for line in lines:
            seen.append(line)
            if line.strip():
                break
        handle = itertools.chain(seen, lines)
        first = seen[-1] if seen else b""
        form = "jsonl" if first.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{") else "csv"
    yield from (_jsonl_rows(handle) if form == "jsonl" else _csv_rows(handle, mapping))


def _jsonl_rows(handle: Iterable[bytes]) -> Iterator[Record | Row]:
    for number, raw in enumerate(handle, start=1):
        line = raw.strip()
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not data
        if not line:
            yield Record(number, line, (), size=len(raw))
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield Record(number, line, (), "record: not valid JSON", size=len(raw))
            continue
        if not isinstance(row, dict):
            yield Record(number, line, (), "record: must be a JSON object", size=len(raw))
            continue
        yield number, line, row | {"_line": str(number)}, len(raw)


def _csv_rows(handle: Iterable[bytes], mapping: SourceMapping) -> Iterator[Record | Row]:
    encoding = mapping.encoding
    # undecodable bytes are kept (as surrogates) so that their row is refused whole, with its
    # original bytes: replacing them would make different names look alike
    text = io.TextIOWrapper(io.BufferedReader(_Binary(handle)), encoding="utf-8-sig" if encoding == "utf-8" else
                            encoding, errors="surrogateescape", newline="")  # utf-8-sig: a BOM is not data
    lines = _Lines(text)
    reader: Any = (_WhitespaceReader(lines) if mapping.delimiter == "whitespace"
                   else csv.reader(lines, delimiter=mapping.delimiter, strict=True))
    if mapping.header:
        try:
            header = [h.removeprefix("\ufeff").strip() for h in next(reader)]  # a BOM in any encoding
        except StopIteration:
            return  # an empty file
        except csv.Error:  # nothing after it can be read: said out loud, not skipped
            raise ConfigurationError("the first line (the header) is not valid CSV; check the mapping's"
                                     " `delimiter`, `encoding` and `header`") from None
    else:
        header = list(mapping.columns)
    lines.taken.clear()
    records = 0
    read = reader.line_num  # lines consumed so far: a row starts on the next one
    while True:
        try:
            values = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error:  # an unterminated quote, a field over the limit: this row only
            values, error = [], "row: not valid CSV (an unterminated quote, or a field over the size limit)"
        raw_text = "".join(lines.taken).rstrip("\r\n")
        raw = raw_text.encode(encoding, "surrogateescape")  # the row's bytes as they were in the file
        lines.taken.clear()
        number, read = read + 1, reader.line_num
        if error is not None:
            yield Record(number, raw, (), error, size=len(raw))
        elif any(_SURROGATE.search(v) for v in values):
            yield Record(number, raw, (), f"row: not valid {encoding} text (set `encoding` in the mapping)",
                         size=len(raw))
        elif not any(v.strip() for v in values):
            yield Record(number, raw, (), size=len(raw))
        elif len(values) != len(header):
            yield Record(number, raw, (), f"row: {len(values)} columns where the header has {len(header)}",
                         size=len(raw))
        else:
            records += 1
            yield number, raw, dict(zip(header, values, strict=True)) | {"_line": str(records)}, len(raw)


class _WhitespaceReader:
    """A reader of lines split on runs of blanks (the sectioned form's delimiter = "whitespace")."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.line_num = 0

    def __iter__(self) -> _WhitespaceReader:
        return self

    def __next__(self) -> list[str]:
        line = next(self._lines)
        self.line_num += 1
        return line.split()


class _Binary(io.RawIOBase):
    """A binary file-like over an iterable of byte chunks (a file, stdin, a list in tests)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
