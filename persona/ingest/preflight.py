"""Whole-file mistakes, found before a record is read into the store: a file that is not text (a
zip or .xlsx workbook, gzip, PDF) where text is expected, text in another encoding, a Parquet file
or workbook that cannot be read (or lacks the mapping's sheet), a CSV export given as canonical
JSONL, a mapping naming a namespace persona does not know or a column the file's header lacks.
Each is refused with one error that names the file and what to do; nothing is quarantined, since
every record would be, for the same reason. Errors name columns and namespaces, never a value.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import ConfigurationError, ValidationError
from persona.pseudonyms import check_namespace

if TYPE_CHECKING:
    from persona.ingest.mapping import SourceMapping

BLOCK = 64 * 1024  # how much of the file the checks look at
GUIDE = "see docs/ingest.md"
# the first bytes of files that are not text: (signature, what the file is)
SIGNATURES = (
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one: name it .xlsx, or give --format xlsx; an .ods"
                     " workbook too)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel workbook (.xls)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"%PDF", "a PDF document"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)
_ISOLATED_HIGH = re.compile(rb"(?<![\x80-\xff])[\x80-\xff](?![\x80-\xff])")
_EMAIL = re.compile(r"[\w.%+\-]+@[\w.\-]+\.[A-Za-z]{2,24}")
_VALUE_LIKE = re.compile(r"@|\d{5,}")  # an e-mail address or a long number: a row's values, not names


def preflight(path: Path, mapping: SourceMapping | None, *, mapping_name: str = "the mapping",
              builtin: bool = False, jsonl: bool = False) -> None:
    """Refuse FILE whole, before anything is stored, if it cannot be what the command was told:
    see the module's docstring. `builtin`: the mapping is a built-in source's, whose optional
    columns an export may lack (only the columns every row needs are checked). `jsonl`: the
    user said the file is JSONL (--format jsonl)."""
    if mapping is not None:
        check_namespaces(mapping, mapping_name)
    name = _EMAIL.sub("<email>", path.name)  # as quarantine names the file: an address in it is not repeated
    table = _table(mapping, path.name, name)
    if table is not None and mapping is not None:
        _check_table(path, mapping, table, name, mapping_name, builtin=builtin)
        return
    with path.open("rb") as handle:
        head = handle.read(BLOCK)
    whole = len(head) < BLOCK
    check_text(head, name)
    form = "jsonl" if jsonl and mapping is None else _format(mapping, path.name, head)
    encoding = mapping.encoding if mapping is not None and form == "csv" else "utf-8"
    check_encoding(head, name, encoding, whole=whole, settable=mapping is not None and form == "csv")
    if mapping is None and form == "csv":
        raise ConfigurationError(
            f"{name} looks like CSV, but without --mapping or --source a file is read as canonical JSONL"
            " events: give --mapping FILE.toml (how its columns become events) or --source NAME (a built-in"
            f" export layout: shop, social, web, app); {GUIDE}")
    if mapping is not None and form == "csv":
        header = _header(path, mapping) if mapping.header else list(mapping.columns)
        if header is not None:
            check_header(header, mapping, name, mapping_name, builtin=builtin)


def _table(mapping: SourceMapping | None, file_name: str, name: str) -> str | None:
    """parquet or xlsx, as the ingest will read the file (persona.ingest.mapping.tables), else None.
    Without a mapping, such a file is refused: canonical events are JSONL."""
    suffix = Path(file_name).suffix.lower()
    if mapping is None:
        if suffix in (".parquet", ".pq", ".xlsx", ".xlsm"):
            raise ConfigurationError(f"{name} is a Parquet or Excel file: give --mapping FILE.toml (how its columns"
                                     " become events) or --source NAME; without them a file is read as canonical"
                                     f" JSONL events; {GUIDE}")
        return None
    from persona.ingest.mapping.tables import table_format  # loaded already, with the mapping

    return table_format(mapping, file_name)


def _check_table(path: Path, mapping: SourceMapping, form: str, name: str, mapping_name: str, *,
                 builtin: bool) -> None:
    """A Parquet file or a workbook opens (and has the mapping's sheet), and has the columns the
    mapping names — a struct's fields as dotted paths."""
    from persona.ingest.mapping.tables import table_header  # loaded already, with the mapping

    header = table_header(path, mapping, form)
    if header:  # an empty sheet or file: nothing will be read, nothing to check
        check_header(header, mapping, name, mapping_name, builtin=builtin)


def check_namespaces(mapping: SourceMapping, mapping_name: str) -> None:
    """Every namespace the mapping gives an identifier is one persona knows."""
    named = [ns for rule in mapping.events for ns, _ in rule.subjects]
    named += [rule.other_namespace for rule in mapping.events if rule.other_namespace is not None]
    for namespace in dict.fromkeys(named):
        try:
            check_namespace(namespace)
        except ValidationError:
            raise ConfigurationError(
                f"{mapping_name}: the namespace {namespace!r} is not one persona knows; identifiers are email,"
                f" phone, device, cookie or SOURCE_user (e.g. shop_user: lower-case letters and digits); {GUIDE}"
            ) from None


def check_text(head: bytes, name: str) -> None:
    """The file is text: not a workbook, an archive or a document exported by mistake."""
    for signature, what in SIGNATURES:
        if head.startswith(signature):
            raise ConfigurationError(f"{name} looks like {what}, not CSV or JSONL text; export it as CSV"
                                     f" (UTF-8) and ingest that; {GUIDE}")
    if b"\x00" in head:
        raise ConfigurationError(f"{name} holds NUL bytes: it looks like a binary file (or UTF-16 text), not CSV"
                                 f" or JSONL; export it as CSV (UTF-8) and ingest that; {GUIDE}")


def check_encoding(head: bytes, name: str, encoding: str, *, whole: bool, settable: bool) -> None:
    """Most lines of the first block that hold non-ASCII text decode as `encoding`: a file in
    another encoding is refused whole, with the encoding it looks like; a stray bad row is left
    to quarantine, as any bad row is."""
    complete = whole or b"\n" in head
    lines = head.split(b"\n")[: None if whole or not complete else -1]  # the block's last line may be cut short
    foreign = [line for line in lines if not line.isascii()]
    failing = [line for line in foreign if not _decodes(line, encoding, final=complete)]
    if not failing or 2 * len(failing) <= len(foreign):
        return
    likely = _likely_encoding(b"\n".join(failing))
    said = f"; it looks like {likely[1]}" if likely else ""
    fix = f"re-save it as UTF-8, or set encoding = \"{likely[0]}\" in the mapping" if likely and settable else \
        "re-save it as UTF-8" + (", or set `encoding` in the mapping" if settable else "")
    raise ConfigurationError(f"{name} is not {codecs.lookup(encoding).name.upper()} text{said}: {fix}; {GUIDE}")


def check_header(header: list[str], mapping: SourceMapping, name: str, mapping_name: str, *,
                 builtin: bool) -> None:
    """Every column the mapping names (a built-in one: every column each row needs) is in the header."""
    from persona.ingest.mapping import (  # heavy: a JSONL ingest never loads the mapping language
        columns_named,
        columns_needed,
    )

    wanted = columns_needed(mapping) if builtin else columns_named(mapping)
    present = set(header)
    missing = [" or ".join(choice) for choice in wanted if not present.intersection(choice)]
    if not missing:
        return
    if not _names(header):
        raise ConfigurationError(
            f"{mapping_name} names column(s) {_listed(missing)}, and the first line of {name} is not a header (it"
            " holds values): a file without a header line needs header = false and its `columns` in the mapping;"
            f" {GUIDE}")
    raise ConfigurationError(
        f"{mapping_name} names column(s) the header of {name} lacks: {_listed(missing)}; the header's columns"
        f" are {_listed(header)} (check the mapping's column names, `delimiter` and `encoding`); {GUIDE}")


def _format(mapping: SourceMapping | None, name: str, head: bytes) -> str:
    """csv or jsonl. With a mapping, as persona.ingest.mapping decides: its `format`, else the file's
    extension, else whether the first line is a JSON object. Without one (canonical events): CSV
    when the file is not JSON lines and is named .csv/.tsv or opens with a delimited line."""
    lines = [line.strip() for line in head.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip()]
    first = lines[0] if lines else b""
    if mapping is not None:
        if mapping.format is not None:
            return mapping.format
        if name.endswith((".jsonl", ".ndjson", ".json")):
            return "jsonl"
        if name.endswith((".csv", ".tsv", ".txt")):
            return "csv"
        return "jsonl" if not first or first.startswith(b"{") else "csv"
    if not first or first.startswith((b"{", b"[")) or (len(lines) > 1 and lines[1].startswith(b"{")):
        return "jsonl"
    return "csv" if name.endswith((".csv", ".tsv")) or re.search(rb"[,;\t]", first) else "jsonl"


def _header(path: Path, mapping: SourceMapping) -> list[str] | None:
    """The header line's column names, read as the ingest reads them (None: nothing to read)."""
    encoding = "utf-8-sig" if mapping.encoding == "utf-8" else mapping.encoding
    with path.open("rb") as handle:
        text = io.TextIOWrapper(handle, encoding=encoding, errors="replace", newline="")
        try:
            if mapping.delimiter == "whitespace":
                first = next(text, None)
                return None if first is None else first.split()
            row = next(csv.reader(text, delimiter=mapping.delimiter, strict=True), None)
        except csv.Error:
            return None  # the ingest says so, naming the header, as it always has
    return None if row is None else [cell.removeprefix("\ufeff").strip() for cell in row]


def _decodes(data: bytes, encoding: str, *, final: bool = True) -> bool:
    try:
        codecs.getincrementaldecoder(encoding)().decode(data, final=final)
    except UnicodeDecodeError:
        return False
    return True


def _likely_encoding(data: bytes) -> tuple[str, str] | None:
    """(codec, how to say it) of the encoding these bytes are likely in: GB18030 when their
    non-ASCII bytes come mostly in runs, as Chinese characters do, else Windows-1252 if they decode so."""
    high = sum(1 for byte in data if byte >= 0x80)
    if _decodes(data, "gb18030") and len(_ISOLATED_HIGH.findall(data)) * 2 < high:
        return "gb18030", "GB18030 (GBK), as Chinese Excel and many Chinese systems write it"
    if _decodes(data, "cp1252"):
        return "cp1252", "Windows-1252 (Western European)"
    return None


def _names(header: Iterable[str]) -> bool:
    """Whether a first line reads as column names rather than a row of values (which may be personal)."""
    return all(len(cell) <= 64 and not _VALUE_LIKE.search(cell) for cell in header)


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)
