"""The mapping language's spec: the TOML a mapping is written in (both forms, docs/ingest.md),
parsed and checked into frozen dataclasses — every mistake named with where it is — and how a
mapping names a row's values (columns, dotted paths, {templates}). Nothing here reads a row's
values into events (persona.ingest.mapping.converters and .rows do)."""

from __future__ import annotations

import codecs
import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from persona.errors import ConfigurationError, ValidationError
from persona.events import EVENT_TYPES

KINDS = frozenset({"text", "int", "number", "amount", "instant", "gender", "country", "bool", "json", "list",
                   "minutes_between"})
TEMPLATE = re.compile(r"\{([^{}]+)\}")
_UNITS = ("s", "ms")  # of epoch numbers read as instants
_OPERATORS = ("equals", "in", "not_in")  # of a `where` condition
FORMATS = (None, "csv", "jsonl", "parquet", "xlsx")  # of a mapped file (None: from its extension)


@dataclass(frozen=True)
class Field:
    name: str
    column: str | None = None
    constant: Any = None
    kind: str = "text"
    map: Mapping[str, Any] = field(default_factory=dict)
    default: Any = None
    required: bool = False
    formats: tuple[str, ...] = ()
    unit: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    separator: str = ","
    columns: tuple[str, ...] = ()  # minutes_between: (start, end); or a headerless file's column names
    group: bool = False  # the items of the record's rows (see `group_by`)
    template: str | None = None  # "{customer_id}-{date}": columns (and {_line}) filled in
    tz: tzinfo | None = None  # this field's zone, if not the source's


@dataclass(frozen=True)
class EventRule:
    type: str  # checked when the mapping loads; "" when `type_field` gives it row by row
    when: Field
    subjects: tuple[tuple[str, Field], ...]  # (namespace, field): the first a row has is the subject
    data: tuple[Field, ...]
    id: str | None = None
    other_namespace: str | None = None
    other: Field | None = None
    type_field: Field | None = None  # the event type from a column (with a map), row by row


@dataclass(frozen=True)
class Condition:
    """One `where` condition: a record is kept when its column's value, trimmed, is among
    `values` (`keep`: `in`, `equals`) or is not (`not_in`). An empty cell is the value ""."""

    column: str
    values: frozenset[str]
    keep: bool

    def holds(self, row: Mapping[str, Any]) -> bool:
        value = column_value(row, self.column)
        if isinstance(value, dict | list):
            raise ValidationError(f"{safe_name(self.column)}: `where` reads one value, and it holds several")
        return (("" if value is None else str(value).strip()) in self.values) == self.keep


@dataclass(frozen=True)
class SourceMapping:
    source: str
    format: str | None
    timezone: tzinfo
    delimiter: str
    currencies: Mapping[str, str]
    events: tuple[EventRule, ...]
    group_by: str | None = None  # consecutive rows with the same value here are one record
    encoding: str = "utf-8"  # of a CSV file (gb18030 for many Chinese exports)
    header: bool = True  # false: a CSV file's columns are named by `columns`
    columns: tuple[str, ...] = ()
    items: tuple[Field, ...] = ()  # what each row of a record adds to a `group = true` field
    where: tuple[Condition, ...] = ()  # a record is kept when all of them hold for its first row
    sheet: str | None = None  # of an Excel workbook (default: its first)


# -- reading the TOML ----------------------------------------------------------------------------
BUILT_IN = ("shop", "social", "web", "app")


def builtin_mapping(name: str) -> SourceMapping:
    """One of the mappings persona ships for common exports (persona/ingest/sources/*.toml)."""
    if name not in BUILT_IN:
        raise ConfigurationError(f"no built-in source {name!r} (built in: {', '.join(BUILT_IN)}); give --mapping")
    text = resources.files("persona.ingest.sources").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_mapping(tomllib.loads(text), f"{name}.toml")


def _zone(name: Any, where: str) -> tzinfo:
    """A mapping's time zone by its IANA name (none: UTC)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"{where}: not a known time zone (e.g. Asia/Shanghai)") from None


def load_mapping(path: Path) -> SourceMapping:
    """Read and check a mapping file; every mistake is named with where it is."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path.name}: not valid TOML ({e})") from None
    return parse_mapping(doc, path.name)


def parse_mapping(doc: Mapping[str, Any], where: str = "mapping") -> SourceMapping:
    if isinstance(doc.get("source"), dict):
        return _contract_mapping(doc, where)  # the sectioned form (docs/ingest.md): one event per record
    source = doc.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigurationError(f"{where}: `source` (the events' source name) is required")
    form = doc.get("format")
    if form not in FORMATS:
        raise ConfigurationError(f"{where}: `format` is csv, jsonl, parquet or xlsx")
    zone = _zone(doc.get("timezone"), f"{where}: `timezone`")
    delimiter = doc.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigurationError(f"{where}: `delimiter` is one character")
    currencies = doc.get("currencies", {})
    if not isinstance(currencies, dict) or not all(isinstance(v, str) for v in currencies.values()):
        raise ConfigurationError(f"{where}: `currencies` maps marks to ISO 4217 codes")
    tables = doc.get("events")
    if not isinstance(tables, list) or not tables:
        raise ConfigurationError(f"{where}: at least one [[events]] table is required")
    rules = tuple(_event_rule(t, f"{where}: events[{i}]") for i, t in enumerate(tables))
    group_by = doc.get("group_by")
    if group_by is not None and not isinstance(group_by, str):
        raise ConfigurationError(f"{where}: `group_by` names a column")
    items = doc.get("items", {})
    if not isinstance(items, dict):
        raise ConfigurationError(f"{where}: [items] must be a table of fields")
    encoding = doc.get("encoding", "utf-8")
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ConfigurationError(f"{where}: `encoding` is not a known text encoding (e.g. utf-8, gb18030)") from None
    return SourceMapping(source, form, zone, delimiter, currencies, rules, group_by=group_by,
                         items=tuple(_field(name, spec, f"{where}: items") for name, spec in items.items()),
                         encoding=codecs.lookup(encoding).name, where=_conditions(doc.get("where", {}), where),
                         sheet=_sheet(doc.get("sheet"), f"{where}: `sheet`"))


def _sheet(name: Any, where: str) -> str | None:
    """The workbook's sheet a mapping reads (None: the first)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"{where}: the name of a sheet of the workbook (text)")
    return name


def _conditions(table: Any, where: str) -> tuple[Condition, ...]:
    """The `[where]` table: column = { equals = "x" } | { in = [...] } | { not_in = [...] }."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: [where] must be a table of column = {{ in | not_in | equals = … }}")
    conditions = []
    for column, test in table.items():
        at = f"{where}: where.{safe_name(column)}"
        if not isinstance(test, dict) or len(test) != 1:
            raise ConfigurationError(f"{at}: one operator, e.g. {{ not_in = [\"unpaid\"] }} ({', '.join(_OPERATORS)})")
        [(operator, values)] = test.items()
        if operator not in _OPERATORS:
            raise ConfigurationError(f"{at}: unknown operator {safe_name(str(operator))!r}"
                                     f" (one of {', '.join(_OPERATORS)})")
        values = [values] if operator == "equals" else values
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigurationError(f"{at}.{operator}: " + ("a text" if operator == "equals" else
                                                            "a non-empty list of texts") + " (numbers in quotes)")
        conditions.append(Condition(column, frozenset(v.strip() for v in values), keep=operator != "not_in"))
    return tuple(conditions)


def _type_field(spec: Any, where: str) -> Field:
    """An event type read from a column: { column = "status", map = { "paid" = "order_placed", … } }."""
    unknown = set(spec) - {"column", "map"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}"
                                 " (a type from a column is {column, map})")
    column, table = spec.get("column"), spec.get("map")
    if not isinstance(column, str) or not column:
        raise ConfigurationError(f"{where}.column: the column the event type is read from")
    if not isinstance(table, dict) or not table or not all(isinstance(v, str) and v in EVENT_TYPES
                                                            for v in table.values()):
        raise ConfigurationError(f"{where}.map: a table of the column's values, each = an event type"
                                 f" ({', '.join(sorted(EVENT_TYPES))})")
    return Field("type", column=column, map={str(k).strip(): v for k, v in table.items()})


def _typed_id(template: str | None, type_field: Field | None, where: str) -> None:
    """An event type read from a column makes several types of one order (placed, refunded):
    an `id` template must tell them apart, else the refund is skipped as the order's duplicate."""
    if template is not None and type_field is not None and "{_type}" not in template:
        raise ConfigurationError(f"{where}: with the type read from a column, put {{_type}} in the id"
                                 " (e.g. \"{order_id}-{_type}\"): an order and its refund must not share one")


# type names of the sectioned form (docs/ingest.md) -> kinds
_TYPES = {"decimal": "amount", "amount": "amount", "int": "int", "integer": "int", "float": "number",
          "number": "number", "string": "text", "text": "text", "bool": "bool", "boolean": "bool", "json": "json",
          "list": "list", "gender": "gender", "country": "country", "date": "instant", "datetime": "instant",
          "instant": "instant", "timestamp": "instant"}


def _contract_field(name: str, spec: Any, where: str) -> Field:
    """A field as the sectioned form writes it: a constant, a "{template}", or {column, type, map, format, tz}."""
    if isinstance(spec, str) and TEMPLATE.search(spec):
        return Field(name, template=spec)
    if not isinstance(spec, dict):
        return Field(name, constant=spec)
    spec = dict(spec)
    named = spec.pop("type", "string")
    kind = _TYPES.get(named) if isinstance(named, str) else None
    if kind is None:
        raise ConfigurationError(f"{where}.{name}.type: one of {', '.join(sorted(_TYPES))}")
    form = spec.pop("format", None)
    zone = spec.pop("tz", None)
    if form is not None or name == "occurred_at":
        kind = "instant"
    unit = {"epoch_s": "s", "epoch_ms": "ms"}.get(form) if isinstance(form, str) else None
    if form in ("iso", "auto", "epoch_s", "epoch_ms", None):
        formats: list[str] = []
    elif isinstance(form, str):
        formats = [form]
    elif isinstance(form, list) and all(isinstance(f, str) for f in form):
        formats = form
    else:
        raise ConfigurationError(f"{where}.{name}.format: a strftime pattern, a list of them, iso, epoch_s,"
                                 " epoch_ms or auto")
    made = _field(name, {**spec, "kind": kind, "formats": formats, **({"unit": unit} if unit else {})}, where)
    if zone is not None:
        made = dataclasses.replace(made, tz=_zone(zone, f"{where}.{name}.tz"))
    return made


def _contract_mapping(doc: Mapping[str, Any], where: str) -> SourceMapping:
    """The sectioned form (docs/ingest.md): [source], [event], [subject] (+ [[subject.also]]), [fields]."""
    head = doc["source"]
    name = head.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: [source] name is required")
    form = head.get("format")
    if form not in FORMATS:
        raise ConfigurationError(f"{where}: [source] format is csv, jsonl, parquet or xlsx")
    delimiter = head.get("delimiter", ",")
    if not isinstance(delimiter, str) or (len(delimiter) != 1 and delimiter != "whitespace"):
        raise ConfigurationError(f"{where}: [source] delimiter is one character or \"whitespace\"")
    header = head.get("header", True)
    columns = head.get("columns", [])
    if not isinstance(header, bool) or not isinstance(columns, list) or (not header and not columns):
        raise ConfigurationError(f"{where}: [source] header = false needs its `columns`")
    event = doc.get("event", {})
    kind = event.get("type") if isinstance(event, dict) else None
    type_field = None
    if isinstance(kind, dict):
        type_field = _type_field(kind, f"{where}: [event] type")
        kind = ""
    elif not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ConfigurationError(f"{where}: [event] type: one of {', '.join(sorted(EVENT_TYPES))}, or"
                                 " {{column, map}}")
    subject = doc.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("namespace"), str) or "value" not in subject:
        raise ConfigurationError(f"{where}: [subject] needs a namespace and a value")
    fields = doc.get("fields", {})
    if not isinstance(fields, dict) or "occurred_at" not in fields:
        raise ConfigurationError(f"{where}: [fields] occurred_at is required")
    when = _contract_field("occurred_at", fields["occurred_at"], f"{where}: [fields]")
    main = (subject["namespace"], _contract_field("subject", subject["value"], f"{where}: [subject]"))
    data = tuple(_contract_field(key.removeprefix("data."), spec, f"{where}: [fields]")
                 for key, spec in fields.items() if key.startswith("data."))
    unknown = [key for key in fields if key not in ("occurred_at", "event_id") and not key.startswith("data.")]
    if unknown:
        raise ConfigurationError(f"{where}: [fields] {', '.join(unknown)}: only occurred_at, event_id and data.*")
    event_id = fields.get("event_id")
    if event_id is not None and not (isinstance(event_id, str) and TEMPLATE.search(event_id)):
        raise ConfigurationError(f"{where}: [fields] event_id is a template, e.g. \"{{order_id}}\"")
    _typed_id(event_id, type_field, f"{where}: [fields] event_id")
    rules = [EventRule(type=kind, when=when, subjects=(main,), data=data, id=event_id, type_field=type_field)]
    others = subject.get("also", [])
    if not isinstance(others, list):
        raise ConfigurationError(f"{where}: [[subject.also]] is a list of tables (namespace, value)")
    for i, also in enumerate(others):
        if not isinstance(also, dict) or not isinstance(also.get("namespace"), str) or "value" not in also:
            raise ConfigurationError(f"{where}: [[subject.also]] {i}: needs a namespace and a value")
        rules.append(EventRule(type="identity_linked", when=when, subjects=(main,), data=(),
                               other_namespace=also["namespace"],
                               other=_contract_field("other", also["value"], f"{where}: [[subject.also]]")))
    tz = _zone(head.get("timezone"), f"{where}: [source] timezone")
    return SourceMapping(name, form, tz, delimiter, {}, tuple(rules), header=header,
                         columns=tuple(str(c) for c in columns), where=_conditions(doc.get("where", {}), where),
                         sheet=_sheet(head.get("sheet"), f"{where}: [source] sheet"))


def _event_rule(table: Any, where: str) -> EventRule:
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: must be a table")
    kind = table.get("type")
    type_field = None
    if isinstance(kind, dict):  # read row by row from a column
        type_field = _type_field(kind, f"{where}.type")
        kind = ""
    elif not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ConfigurationError(f"{where}.type: one of {', '.join(sorted(EVENT_TYPES))}, or {{column, map}}")
    kinds = set(type_field.map.values()) if type_field is not None else {kind}
    subject = table.get("subject")
    choices: list[Any] = subject if isinstance(subject, list) else [subject]
    if not choices or not all(isinstance(c, dict) and isinstance(c.get("namespace"), str) for c in choices):
        raise ConfigurationError(f"{where}.subject: needs a namespace and a column (or a list of them)")
    other = table.get("other")
    if "identity_linked" in kinds and not isinstance(other, dict):
        raise ConfigurationError(f"{where}.other: identity_linked needs the second identifier")
    data = table.get("data", {})
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}.data: must be a table")
    template = table.get("id")
    if template is not None and (not isinstance(template, str) or not TEMPLATE.search(template)):
        raise ConfigurationError(f"{where}.id: a template naming columns, e.g. \"{{order_id}}\"")
    _typed_id(template, type_field, f"{where}.id")
    when = table.get("when")
    if when is None:
        raise ConfigurationError(f"{where}.when: the column holding when it happened is required")
    when = when if isinstance(when, dict) else {"column": when}
    named = when.get("column")  # refusals name the column the time was read from
    return EventRule(
        type=kind,
        type_field=type_field,
        when=_field(safe_name(named) if isinstance(named, str) else "when", {"kind": "instant"} | when, where),
        subjects=tuple((c["namespace"], _field("subject", {k: v for k, v in c.items() if k != "namespace"}, where))
                       for c in choices),
        data=tuple(_field(name, spec, f"{where}.data") for name, spec in data.items()),
        id=template,
        other_namespace=other.get("namespace") if isinstance(other, dict) else None,
        other=_field("other", {k: v for k, v in other.items() if k != "namespace"}, where)
        if isinstance(other, dict) else None,
    )


def _field(name: str, spec: Any, where: str) -> Field:
    if not isinstance(spec, dict):
        return Field(name, constant=spec)  # a constant value
    unknown = set(spec) - {"column", "value", "kind", "map", "default", "required", "formats", "unit", "labels",
                           "separator", "columns", "group"}
    if unknown:
        raise ConfigurationError(f"{where}.{name}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}")
    at = f"{where}.{name}"
    kind = spec.get("kind", "text")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigurationError(f"{at}.kind: one of {', '.join(sorted(KINDS))}")
    column = spec.get("column")
    if column is not None and not isinstance(column, str):
        raise ConfigurationError(f"{at}.column: a column name (text)")
    columns = spec.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ConfigurationError(f"{at}.columns: a list of column names")
    if kind == "minutes_between" and len(columns) != 2:
        raise ConfigurationError(f"{at}.columns: minutes_between needs [start, end]")
    if column is None and "value" not in spec and not spec.get("group") and kind != "minutes_between":
        raise ConfigurationError(f"{at}: needs a column (or a constant `value`)")
    formats = spec.get("formats", [])
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise ConfigurationError(f"{at}.formats: a strftime pattern or a list of them")
    for setting in ("map", "labels"):
        table = spec.get(setting, {})
        if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
            raise ConfigurationError(f"{at}.{setting}: a table of raw value = replacement")
    if not all(isinstance(v, str) for v in spec.get("labels", {}).values()):
        raise ConfigurationError(f"{at}.labels: a table of raw value = label (text)")
    unit = spec.get("unit")
    if unit is not None and unit not in _UNITS:
        raise ConfigurationError(f"{at}.unit: one of {', '.join(_UNITS)}")
    separator = spec.get("separator", ",")
    if not isinstance(separator, str) or not separator:
        raise ConfigurationError(f"{at}.separator: one or more characters")
    for flag in ("required", "group"):
        if not isinstance(spec.get(flag, False), bool):
            raise ConfigurationError(f"{at}.{flag}: true or false")
    return Field(name, column=column, constant=spec.get("value"), kind=kind, map=spec.get("map", {}),
                 default=spec.get("default"), required=spec.get("required", False),
                 formats=tuple(formats), unit=unit, labels=spec.get("labels", {}),
                 separator=separator, columns=tuple(columns), group=spec.get("group", False))


# -- naming a row's values -----------------------------------------------------------------------
def is_missing(value: Any) -> bool:
    """Nothing there: no value, or only blanks."""
    return value is None or (isinstance(value, str) and not value.strip())


def column_value(row: Mapping[str, Any], column: str) -> Any:
    """A column, or a dotted path into a JSON record (`customer.email`)."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def safe_name(name: str) -> str:
    """A column's name as an error may say it (a name that looks like data is not repeated)."""
    return name if re.fullmatch(r"[\w.\-]{1,64}", name) else "<column>"
