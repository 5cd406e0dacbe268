"""Reading a mapped source: CSV (any delimiter or encoding, with or without a header) and JSONL
rows, the format told by the mapping, the file's extension or its first line — a file's, or a
live feed's, paced — each row kept as its original bytes for quarantine."""

from __future__ import annotations

import csv
import io
import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from persona.errors import ConfigurationError
from persona.ingest import pipeline
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
    CSV parsed by polars a block at a time and the fields converted a window of rows at a time;
    False: row by row, as a live feed is read — the same records)."""
    for item in mapped_rows(mapping, _rows(mapping, handle, name, columnar), max_bytes, columnar=columnar):
        if item is not PAUSE:
            yield item


def live_records(mapping: SourceMapping, handle: Iterable[bytes], *, name: str = "", max_bytes: int = 64 * 1024,
                 every: float = STREAM_PAUSE_S, stop: threading.Event | None = None) -> Iterator[Record | None]:
    """The records of a live feed (stdin), with a PAUSE whenever nothing arrived for `every`
    seconds. Rows are read by a thread, so that a group (an order's item rows) is closed after
    GROUP_HOLD_S of quiet rather than when the next group's first row arrives, maybe hours later.
    Once `stop` is set, the rows read so far (an open group included) are the last."""
    return mapped_rows(mapping, paced_records(_rows(mapping, handle, name), every, stop), max_bytes, every=every)


def _rows(mapping: SourceMapping, handle: Iterable[bytes], name: str, blocks: bool = False
          ) -> Iterator[Record | Row]:
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
    yield from (_jsonl_rows(handle) if form == "jsonl" else _csv_rows(handle, mapping, blocks))


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


def _csv_rows(handle: Iterable[bytes], mapping: SourceMapping, blocks: bool) -> Iterator[Record | Row]:
    """A CSV file's rows. `blocks` (a file, not a live feed, whose rows must go on as they come):
    a UTF-8 file with a one-character delimiter is parsed by polars a block of lines at a time;
    the first block that is not plain — a quoted field over several lines, a quote the CSV rules
    do not allow where it is, a lone carriage return, bytes that are not UTF-8 — and everything
    after it are read by the csv module, as every other file is. Both give the same rows, line
    numbers and refusals."""
    count = _Count()
    delimiter = mapping.delimiter
    simple = len(delimiter) == 1 and delimiter.isascii() and delimiter not in "\"\r\n"
    if not blocks or mapping.encoding != "utf-8" or not simple or pipeline.POLARS_INHERITED:
        yield from _classic_rows(_text(handle, mapping.encoding), mapping, count, None)
        return
    plain = re.compile(_PLAIN_ROW.format(d=re.escape(delimiter)))
    header = None if mapping.header else list(mapping.columns)
    pieces = _blocks(handle)
    for block in pieces:
        if count.read == 0:
            block = block.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not data
        text = _plain_text(block, plain)
        if text is not None and header is None:
            line, _, text = text.partition("\n")
            header = [h.removeprefix("\ufeff").strip() for h in next(csv.reader([line], delimiter=delimiter), [])]
            count.read = 1
        parsed = None if text is None or header is None else _parse_plain(text, len(header), delimiter)
        if text is None or parsed is None:  # this block and the rest of the file, by the csv module
            rest = itertools.chain([block], pieces)
            yield from _classic_rows(_text(rest, "utf-8"), mapping, count, header)
            return
        assert header is not None  # read from the block's first line, or named by the mapping
        yield from _plain_rows(*parsed, header, delimiter, count)


# one CSV row on one line whose quotes are where RFC 4180 puts them: a field is quoted whole (a
# quote inside doubled) or holds no quote
_PLAIN_ROW = r'(?:"(?:[^"]|"")*"|[^"{d}]*)(?:{d}(?:"(?:[^"]|"")*"|[^"{d}]*))*'
BLOCK = 4 << 20  # bytes of CSV parsed together


class _Count:
    """Where a CSV file's reading is: lines consumed, and rows read (each row's `_line`)."""

    def __init__(self) -> None:
        self.read = 0
        self.records = 0


def _blocks(handle: Iterable[bytes]) -> Iterator[bytes]:
    """The file in blocks of about BLOCK bytes, each ending at a line's end (the last may not)."""
    read = getattr(handle, "read", None)
    pieces: Iterator[bytes] = iter(lambda: read(BLOCK), b"") if read is not None else iter(handle)
    carry = b""
    gathered: list[bytes] = []
    size = 0
    for piece in pieces:
        gathered.append(piece)
        size += len(piece)
        if size < BLOCK:
            continue
        data = carry + b"".join(gathered)
        gathered, size = [], 0
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
            carry = data[cut:]
        else:  # one line longer than a block: gathered on
            carry = data
    data = carry + b"".join(gathered)
    if data:
        yield data


def _plain_text(block: bytes, plain: re.Pattern[str]) -> str | None:
    """The block as text when each of its lines is one plain CSV row (None: read it otherwise)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None  # a lone carriage return ends a line for the csv module
        text = text.replace("\r\n", "\n")
    if "\x01" in text:  # the marker `_parse_plain` appends to each line
        return None
    if '"' in text and not all(plain.fullmatch(line) for line in text.split("\n") if '"' in line):
        return None
    return text


def _parse_plain(text: str, width: int, delimiter: str) -> tuple[list[str], list[list[Any]]] | None:
    """A block's lines, and the columns polars reads of those that are not blank, each line a row,
    plus a marker column: a field appended to every line, which is not where it belongs in a row
    with too few or too many fields. None: polars did not read one row per line (then the csv
    module reads the block)."""
    import polars  # imported with the first CSV file: its start-up is not every command's

    lines = text.split("\n") if text else []
    if text.endswith("\n"):
        lines.pop()
    filled = [line for line in lines if line.strip()]
    names = [f"c{i}" for i in range(width + 1)]
    if not filled:
        return lines, [[] for _ in names]
    marker = delimiter + "\x01\n"
    try:
        frame = polars.read_csv((marker.join(filled) + marker).encode(), has_header=False,
                                schema=dict.fromkeys(names, polars.String), extra_columns="ignore",
                                missing_columns="insert", empty_string_is_null=False, truncate_ragged_lines=True,
                                separator=delimiter, quote_char='"', comment_prefix=None, raise_if_empty=False)
    except polars.exceptions.PolarsError:
        return None
    if frame.height != len(filled) or frame.width != len(names):
        return None
    return lines, [frame.get_column(name).to_list() for name in names]


def _plain_rows(lines: list[str], columns: list[list[Any]], header: list[str], delimiter: str, count: _Count
                ) -> Iterator[Record | Row]:
    """The rows of a block of plain lines, as `_parse_plain` read them."""
    marks = columns[-1]
    values = zip(*columns[:-1], strict=True)
    base = count.read
    at = 0
    for offset, line in enumerate(lines):
        number = base + offset + 1
        raw = line.encode()
        if not line.strip():
            yield Record(number, raw, (), size=len(raw))
            continue
        row: Sequence[str] = next(values)
        if marks[at] != "\x01":  # too few or too many fields: the csv module says how many
            row = next(csv.reader([line], delimiter=delimiter, strict=True))
        at += 1
        yield _csv_row(number, raw, row, header, count)
    count.read = base + len(lines)


def _text(chunks: Iterable[bytes], encoding: str) -> io.TextIOWrapper:
    # undecodable bytes are kept (as surrogates) so that their row is refused whole, with its
    # original bytes: replacing them would make different names look alike
    return io.TextIOWrapper(io.BufferedReader(_Binary(chunks)), encoding="utf-8-sig" if encoding == "utf-8" else
                            encoding, errors="surrogateescape", newline="")  # utf-8-sig: a BOM is not data


def _classic_rows(text: io.TextIOWrapper, mapping: SourceMapping, count: _Count, header: list[str] | None
                  ) -> Iterator[Record | Row]:
    """Rows read by the csv module, from where `count` says the file's reading is (its header
    read already, or None: read here)."""
    encoding = mapping.encoding
    lines = _Lines(text)
    reader: Any = (_WhitespaceReader(lines) if mapping.delimiter == "whitespace"
                   else csv.reader(lines, delimiter=mapping.delimiter, strict=True))
    base = count.read
    if header is None and mapping.header:
        try:
            header = [h.removeprefix("\ufeff").strip() for h in next(reader)]  # a BOM in any encoding
        except StopIteration:
            return  # an empty file
        except csv.Error:  # nothing after it can be read: said out loud, not skipped
            raise ConfigurationError("the first line (the header) is not valid CSV; check the mapping's"
                                     " `delimiter`, `encoding` and `header`") from None
    elif header is None:
        header = list(mapping.columns)
    lines.taken.clear()
    read = base + reader.line_num  # lines consumed so far: a row starts on the next one
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
        number = read + 1
        read = count.read = base + reader.line_num
        if error is not None:
            yield Record(number, raw, (), error, size=len(raw))
        elif any(_SURROGATE.search(v) for v in values):
            yield Record(number, raw, (), f"row: not valid {encoding} text (set `encoding` in the mapping)",
                         size=len(raw))
        else:
            yield _csv_row(number, raw, values, header, count)


def _csv_row(number: int, raw: bytes, values: Sequence[str], header: list[str], count: _Count) -> Record | Row:
    """A row's fields, however they were parsed: a blank row, a row of another width than the
    header's (refused), or a row, numbered among the rows (its `_line`)."""
    if not any(v.strip() for v in values):
        return Record(number, raw, (), size=len(raw))
    if len(values) != len(header):
        return Record(number, raw, (), f"row: {len(values)} columns where the header has {len(header)}",
                      size=len(raw))
    count.records += 1
    return number, raw, dict(zip(header, values, strict=True)) | {"_line": str(count.records)}, len(raw)


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
