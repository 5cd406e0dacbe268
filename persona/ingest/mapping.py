"""Any CSV or JSONL export as canonical events, described by a TOML mapping: no code.

    source = "crm"                  # the events' source
    format = "csv"                  # csv | jsonl (default: from the file's extension)
    timezone = "Asia/Shanghai"      # for times written without an offset (default UTC)
    delimiter = ","                 # csv only
    currencies = { "¥" = "JPY" }    # what a currency mark means in this source

    [where]                         # optional: only the rows (records) every condition keeps
    status = { not_in = ["unpaid", "cancelled"] }   # or { in = [...] }, { equals = "..." }

    [[events]]                      # each row makes one event per [[events]] table
    type = "order_placed"           # or { column = "status", map = { "paid" = "order_placed", ... } }
    id = "{order_id}"               # optional: the event id, from columns (and {_type}); else derived from content
    when = { column = "created", formats = ["%d/%m/%Y %H:%M"] }
    subject = { namespace = "email", column = "email" }
    # other = { namespace = "phone", column = "phone" }   # identity_linked: the second identifier
    [events.data]
    order_id = { column = "order_id", required = true }
    amount = { column = "total", kind = "amount" }        # "¥1,299.00": amount, and currency if marked
    currency = { column = "currency", default = "CNY" }   # a declared fill when the column is empty
    items = { column = "items", kind = "json" }

A field is `{column, kind, map, default, required, formats, unit, labels, separator}` or a
constant (`channel = "tmall"`). Kinds: text (default), int, number, amount, instant, gender,
country, bool, json, list. `map` rewrites raw values first (`{ "Y" = "true" }`). A missing
value is left out unless the field is `required` (the row is quarantined) or has a
`default`. An event whose subject or time is missing, or all of whose fields are, is
skipped for that row; a row that yields no event at all is quarantined, as is any row a
rule refuses — with the reason. A row `where` leaves out is counted as filtered, not refused.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import itertools
import math
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from persona.errors import ConfigurationError, ValidationError
from persona.events import EVENT_TYPES, utc_text
from persona.ingest.clean import parse_amount, parse_country, parse_gender, parse_instant, parse_number
from persona.ingest.engine import PAUSE, STREAM_PAUSE_S, Record, paced_records

_SURROGATE = re.compile("[\udc80-\udcff]")
csv.field_size_limit(16 * 1024 * 1024)  # rows over the event size limit are refused by size, not by the reader
KINDS = frozenset({"text", "int", "number", "amount", "instant", "gender", "country", "bool", "json", "list",
                   "minutes_between"})
_TRUE = frozenset({"true", "t", "yes", "y", "1", "是", "对"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "否", "不"})
_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_UNITS = ("s", "ms")  # of epoch numbers read as instants
_OPERATORS = ("equals", "in", "not_in")  # of a `where` condition
REFUND = "order_refunded"  # its amount is the amount refunded: a mapping reads `-¥39.00` there as 39.00


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
        value = _get(row, self.column)
        if isinstance(value, dict | list):
            raise ValidationError(f"{_safe_name(self.column)}: `where` reads one value, and it holds several")
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
    if form not in (None, "csv", "jsonl"):
        raise ConfigurationError(f"{where}: `format` is csv or jsonl")
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
                         encoding=codecs.lookup(encoding).name, where=_conditions(doc.get("where", {}), where))


def _conditions(table: Any, where: str) -> tuple[Condition, ...]:
    """The `[where]` table: column = { equals = "x" } | { in = [...] } | { not_in = [...] }."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: [where] must be a table of column = {{ in | not_in | equals = … }}")
    conditions = []
    for column, test in table.items():
        at = f"{where}: where.{_safe_name(column)}"
        if not isinstance(test, dict) or len(test) != 1:
            raise ConfigurationError(f"{at}: one operator, e.g. {{ not_in = [\"unpaid\"] }} ({', '.join(_OPERATORS)})")
        [(operator, values)] = test.items()
        if operator not in _OPERATORS:
            raise ConfigurationError(f"{at}: unknown operator {_safe_name(str(operator))!r}"
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
    if isinstance(spec, str) and _TEMPLATE.search(spec):
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
    if form not in (None, "csv", "jsonl"):
        raise ConfigurationError(f"{where}: [source] format is csv or jsonl")
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
    if event_id is not None and not (isinstance(event_id, str) and _TEMPLATE.search(event_id)):
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
                         columns=tuple(str(c) for c in columns), where=_conditions(doc.get("where", {}), where))


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
    if template is not None and (not isinstance(template, str) or not _TEMPLATE.search(template)):
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
        when=_field(_safe_name(named) if isinstance(named, str) else "when", {"kind": "instant"} | when, where),
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


# -- applying it ---------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _get(row: Mapping[str, Any], column: str) -> Any:
    """A column, or a dotted path into a JSON record (`customer.email`)."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _value(rule: Field, row: Mapping[str, Any], mapping: SourceMapping) -> Any:
    """The field's canonical value from a row (None: missing and not required)."""
    getter: Getter = _once((rule, mapping), lambda: _compile(rule, mapping))
    return getter(row)


Getter = Callable[[Mapping[str, Any]], Any]
_ONCE: dict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = {}


def _once(owners: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """What `build` makes of these (unhashable, immutable) objects, made once while they live:
    kept by their ids, with the objects themselves, so that a reused id is never mistaken."""
    key = tuple(map(id, owners))
    entry = _ONCE.get(key)
    if entry is None or any(a is not b for a, b in zip(entry[0], owners, strict=True)):
        if len(_ONCE) > 10_000:
            _ONCE.clear()
        entry = _ONCE[key] = (owners, build())
    return entry[1]


def _compile(rule: Field, mapping: SourceMapping) -> Getter:
    """The field's rules as one function of a row, decided once rather than on every row: where
    the raw value comes from, its value map and default, and how it is converted."""
    if rule.kind == "minutes_between":
        return lambda row: _minutes(rule, row, mapping)
    template, column, constant = rule.template, rule.column, rule.constant
    mapped, default, required, kind, name = rule.map, rule.default, rule.required, rule.kind, rule.name
    dotted = column is not None and "." in column
    convert = _converter(rule, mapping)
    structured = kind in ("json", "list")

    def value(row: Mapping[str, Any]) -> Any:
        if template is not None:
            raw = _render(template, row)
        elif column is None:
            raw = constant
        else:
            raw = row.get(column)
            if raw is None and dotted:
                raw = _get(row, column)
        missing = raw is None or (isinstance(raw, str) and (not raw or raw.isspace()))
        if not missing and mapped:
            raw = mapped.get(str(raw).strip(), raw)
            missing = _missing(raw)
        if missing:
            raw = default
            if _missing(raw):
                if required:
                    raise ValidationError(f"{name}: required, and the row has none")
                return None
        if not structured and isinstance(raw, dict | list):
            raise ValidationError(f"{name}: not a single value")
        return convert(raw)

    return value


def _converter(rule: Field, mapping: SourceMapping) -> Callable[[Any], Any]:
    kind, name = rule.kind, rule.name
    if kind == "text":
        return lambda raw: raw.strip() if isinstance(raw, str) else str(raw).strip()
    if kind == "int":
        def integer(raw: Any) -> int:
            number = parse_number(raw, field=name)
            if number is None or number != number.to_integral_value():
                raise ValidationError(f"{name}: not a whole number")
            if not -(2**63) <= number < 2**63:
                raise ValidationError(f"{name}: out of range")
            return int(number)
        return integer
    if kind == "number":
        def real(raw: Any) -> float | None:
            number = parse_number(raw, field=name)
            if number is None:
                return None
            if not math.isfinite(float(number)):
                raise ValidationError(f"{name}: out of range")
            return float(number)
        return real
    if kind == "amount":
        currencies = mapping.currencies
        return lambda raw: parse_amount(raw, field=name, currencies=currencies)
    if kind == "instant":
        key = (name, rule.formats, rule.tz or mapping.timezone, rule.unit)
        if key not in _INSTANTS:  # shared by the rules that read the same column the same way
            _INSTANTS[key] = _instant(*key)
        return _INSTANTS[key]
    if kind == "gender":
        labels = rule.labels
        return lambda raw: parse_gender(raw, field=name, labels=labels)
    if kind == "country":
        return lambda raw: parse_country(raw, field=name)
    if kind == "bool":
        def yes_no(raw: Any) -> bool:
            word = str(raw).strip().lower()
            if word in _TRUE or raw is True:
                return True
            if word in _FALSE or raw is False:
                return False
            raise ValidationError(f"{name}: not a yes/no value")
        return yes_no
    if kind == "json":
        def decoded(raw: Any) -> Any:
            if not isinstance(raw, str):
                return raw
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ValidationError(f"{name}: not valid JSON") from None
        return decoded
    separator = rule.separator  # list

    def listed(raw: Any) -> Any:
        if isinstance(raw, list):
            return raw
        return [part.strip() for part in str(raw).split(separator) if part.strip()]
    return listed


def _instant(name: str, formats: tuple[str, ...], tz: tzinfo, unit: str | None) -> Callable[[Any], str | None]:
    """An instant reader. Two rules often read the same column of the same row (an event and its
    link): the last answer is remembered, so the second reading costs nothing."""
    last: list[tuple[Any, str | None]] = [(_UNSET, None)]  # one tuple, swapped whole: safe across threads

    def instant(raw: Any) -> str | None:
        seen, said = last[0]
        if raw == seen and type(raw) is type(seen):
            return said
        moment = parse_instant(raw, field=name, formats=formats, tz=tz, unit=unit)
        text = None if moment is None else utc_text(moment)
        last[0] = (raw, text)
        return text
    return instant


_UNSET = object()
_INSTANTS: dict[tuple[str, tuple[str, ...], tzinfo, str | None], Callable[[Any], str | None]] = {}


def _minutes(rule: Field, row: Mapping[str, Any], mapping: SourceMapping) -> float | None:
    """Minutes from one instant column to another (a session's start and end)."""
    ends = [parse_instant(_get(row, column), field=rule.name, formats=rule.formats, tz=mapping.timezone,
                          unit=rule.unit) for column in rule.columns]
    if ends[0] is None or ends[1] is None:
        if rule.required:
            raise ValidationError(f"{rule.name}: required, and the row lacks a start or an end")
        return None
    minutes = (ends[1] - ends[0]).total_seconds() / 60
    if minutes < 0:
        raise ValidationError(f"{rule.name}: ends before it starts")
    return round(minutes, 3)


def _items(mapping: SourceMapping, rows: Sequence[Mapping[str, Any]], marks: set[str]) -> list[dict[str, Any]]:
    """One item per row of the record (rows that carry none add none); the currency marks
    their prices were written with go into `marks`."""
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for spec in mapping.items:
            value = _value(spec, row, mapping)
            if spec.kind == "amount" and value is not None:
                if value[1] is not None:
                    marks.add(value[1])
                value = str(value[0])
            if value is not None:
                item[spec.name] = value
        if item:
            out.append(item)
    return out


def row_events(mapping: SourceMapping, row: Mapping[str, Any],
               group: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The canonical event records one row (or group of rows, the first speaking for all)
    makes; raises ValidationError to refuse it."""
    if group is not None and len(group) > 1:
        _check_agreement(mapping, row, group)
    out = []
    for rule in mapping.events:
        occurred = _value(rule.when, row, mapping)
        namespace, subject = next(((ns, value) for ns, spec in rule.subjects
                                   if (value := _value(spec, row, mapping)) is not None), ("", None))
        if occurred is None or subject is None:
            continue  # this row does not carry this kind of event
        kind = rule.type if rule.type_field is None else _event_type(rule.type_field, row)
        data: dict[str, Any] = {}
        marked = None  # a currency the amount itself was written with ("¥1,299.00")
        item_marks: set[str] = set()  # and the currencies item prices were written with
        for spec in rule.data:
            value = None if spec.group and spec.column is None else _value(spec, row, mapping)
            if spec.group and value is None:  # no items column: the items of the record's rows
                value = _items(mapping, group or [row], item_marks) or None
            if spec.kind == "amount" and value is not None:
                amount, currency = value
                value = str(abs(amount) if kind == REFUND and spec.name == "amount" else amount)
                marked = marked or currency
            if value is not None:
                data[spec.name] = value
        if marked is not None:
            currency_rule = next((spec for spec in rule.data if spec.name == "currency"), None)
            said = currency_rule is not None and (  # a constant, a template or a column's own value
                currency_rule.column is None or not _missing(_get(row, currency_rule.column)))
            if said and str(data.get("currency")).strip().upper() != marked:
                raise ValidationError("currency: the amount's currency mark and the mapped currency disagree")
            data["currency"] = marked  # the mark beats a declared default (a fill for when nothing says)
        if item_marks and item_marks != {str(data.get("currency", "")).strip().upper()}:
            raise ValidationError("items: an item's price is marked with another currency than the order's")
        if rule.data and not data:
            continue  # every field of it is missing from this row: nothing to say
        if rule.other is not None:
            other = _value(rule.other, row, mapping)
            if other is None or (rule.other_namespace == namespace and str(other) == str(subject)):
                continue  # nothing to link (or the subject itself)
            data["other"] = {"namespace": rule.other_namespace, "value": str(other)}
        event: dict[str, Any] = {"source": mapping.source, "type": kind, "occurred_at": occurred,
                                 "subject": {"namespace": namespace, "value": str(subject)},
                                 "data": data}
        if rule.id is not None:
            event["event_id"] = _event_id(rule.id, row, kind)
        out.append(event)
    if not out:
        raise ValidationError("row: no event could be made of it (no subject or no time)")
    # The record's links first: identifiers seen together are one person from the start, so a
    # new cookie that arrives logged in joins its account's profile instead of getting one of
    # its own that is merged a moment later.
    out.sort(key=lambda event: event["type"] != "identity_linked")
    return out


def _event_type(spec: Field, row: Mapping[str, Any]) -> str:
    """The event type the row's column names through the mapping's map. A value the map does
    not list (an empty one too) refuses the row: a status nobody mapped is never guessed at."""
    column = spec.column or ""  # _type_field always gives one
    value = _get(row, column)
    kind = spec.map.get(str(value).strip()) if isinstance(value, str | int) else None
    if kind is None:
        raise ValidationError(f"{_safe_name(column)}: a value the mapping's type map does not list")
    return str(kind)


def _check_agreement(mapping: SourceMapping, first: Mapping[str, Any], group: Sequence[Mapping[str, Any]]) -> None:
    """The rows of one group (an order's item rows) repeat the record's own columns, or leave
    them empty: a later row saying otherwise (another total, another customer) — or the only
    one saying it at all — is refused, rather than silently losing what it says to the first
    row's word. Values are compared as read (`30` and `30.00`, `A@x` and `a@x` agree)."""
    fields: dict[str, Field] = _once((mapping,), lambda: _record_columns(mapping))
    for column, plain in fields.items():
        said = _comparable(plain, first, mapping)
        for row in group[1:]:
            if _missing(_get(row, column)):
                continue
            if said is None or _comparable(plain, row, mapping) != said:
                raise ValidationError(f"{_safe_name(column)}: the rows of one {_safe_name(mapping.group_by or '')}"
                                      " disagree (give it on the first row, and repeat it or leave it empty after)")


def _record_columns(mapping: SourceMapping) -> dict[str, Field]:
    """Column -> a plain reading of it (no map, default or requirement), for every column a
    record's own fields read: what the rows of one group must agree on."""
    fields: dict[str, Field] = {}  # one field per column is enough to compare
    for rule in mapping.events:
        specs = [rule.when, *(spec for _, spec in rule.subjects), *(spec for spec in rule.data if not spec.group)]
        if rule.other is not None:
            specs.append(rule.other)
        if rule.type_field is not None:
            specs.append(rule.type_field)
        for spec in specs:
            if spec.column is not None and spec.kind != "minutes_between":
                fields.setdefault(spec.column, spec)
            for column in spec.columns:  # minutes_between: two instants
                fields.setdefault(column, Field(column, column=column, kind="instant", tz=spec.tz,
                                                formats=spec.formats, unit=spec.unit))
    for condition in mapping.where:  # a group is kept or filtered out whole
        fields.setdefault(condition.column, Field(condition.column, column=condition.column))
    return {column: dataclasses.replace(fields[column], map={}, default=None, required=False, template=None)
            for column in sorted(fields)}


def _comparable(spec: Field, row: Mapping[str, Any], mapping: SourceMapping) -> Any:
    value = _value(spec, row, mapping)
    if spec.kind == "amount" and value is not None:
        return value[0]  # "¥30.00" and "30" agree; a currency mark is checked against the currency
    if isinstance(value, str):  # identifiers and labels: "A@x" and "a@x", "CNY" and "cny" agree
        return value.strip().lower()
    return value


def _safe_name(name: str) -> str:
    return name if re.fullmatch(r"[\w.\-]{1,64}", name) else "<column>"


def _render(template: str, row: Mapping[str, Any]) -> str | None:
    """A template with its columns filled in; None when one of them is empty."""
    try:
        return _TEMPLATE.sub(lambda m: _template_value(m.group(1), row), template)
    except ValidationError:
        return None


def _event_id(template: str, row: Mapping[str, Any], kind: str) -> str:
    """An `id` template filled in: its columns, and `{_type}` the event's type."""
    return _TEMPLATE.sub(lambda m: kind if m.group(1) == "_type" else _template_value(m.group(1), row), template)


def _template_value(column: str, row: Mapping[str, Any]) -> str:
    value = _get(row, column)
    if _missing(value):
        raise ValidationError(f"id: the column {column!r} it is made of is empty")
    return str(value).strip()


# -- the columns a mapping reads -----------------------------------------------------------------
def columns_named(mapping: SourceMapping) -> list[tuple[str, ...]]:
    """Every column the mapping reads, but for fields with a `default` (which fills a column an
    export lacks), each entry a choice: a list of subjects is one entry (a row's subject is the
    first of them it has, so a header needs one of them), any other column is an entry of its own.
    In the order the mapping names them, each once."""
    choices = _grouping_columns(mapping)
    choices += [choice for rule in mapping.events for choice in _rule_columns(rule, needed_only=False)]
    choices += [(column,) for spec in mapping.items if spec.default is None for column in _field_columns(spec)]
    return list(dict.fromkeys(choices))


def columns_needed(mapping: SourceMapping) -> list[tuple[str, ...]]:
    """The columns without which no row makes its events (as `columns_named` gives them): the rows'
    grouping and, for each event other than a link (skipped when a row lacks it), its time, subject,
    id and type and the fields it requires. A built-in mapping also names columns an export may lack."""
    choices = _grouping_columns(mapping)
    choices += [choice for rule in mapping.events if rule.type != "identity_linked"
                for choice in _rule_columns(rule, needed_only=True)]
    return list(dict.fromkeys(choices))


def _grouping_columns(mapping: SourceMapping) -> list[tuple[str, ...]]:
    """The columns that decide which rows make a record and whether it is kept: `group_by` and
    every `[where]` column (a filter on a column the export lacks would keep or drop every row)."""
    grouping: list[tuple[str, ...]] = [(mapping.group_by,)] if mapping.group_by else []
    return grouping + [(condition.column,) for condition in mapping.where]


def _rule_columns(rule: EventRule, *, needed_only: bool) -> list[tuple[str, ...]]:
    subjects = tuple(spec.column for _, spec in rule.subjects if spec.column is not None)
    fields = [rule.when, *(spec for _, spec in rule.subjects if spec.column is None)]  # (templates)
    fields += [rule.type_field] if rule.type_field is not None else []
    fields += [spec for spec in rule.data if spec.default is None and (spec.required or not needed_only)]
    fields += [rule.other] if rule.other is not None and not needed_only else []
    ids = [] if rule.id is None else [column for column in _TEMPLATE.findall(rule.id) if not column.startswith("_")]
    return ([subjects] if subjects else []) + [(column,) for spec in fields for column in _field_columns(spec)] + [
        (column,) for column in ids]


def _field_columns(spec: Field) -> list[str]:
    """The columns one field reads: its column, a duration's two, or those of its template (whose
    names with a leading underscore, {_line}, are persona's own)."""
    named = [spec.column] if spec.column is not None else []
    if spec.kind == "minutes_between":
        named += spec.columns
    if spec.template is not None:
        named += [column for column in _TEMPLATE.findall(spec.template) if not column.startswith("_")]
    return named


# -- reading files -------------------------------------------------------------------------------
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


Row = tuple[int, bytes, dict[str, Any], int]  # (line, raw, row, size): a row read, not yet mapped
# A live feed's group (an order's item rows) is closed after this long without a row: its rows
# must arrive together; a row of the same order coming later is a new record (a duplicate id).
GROUP_HOLD_S = 0.5


def mapped_records(mapping: SourceMapping, handle: Iterable[bytes], *, name: str = "",
                   max_bytes: int = 64 * 1024) -> Iterator[Record]:
    """Records of a CSV or JSONL file, each with the events the mapping makes of it."""
    for item in _mapped(mapping, _rows(mapping, handle, name), max_bytes):
        if item is not PAUSE:
            yield item


def live_records(mapping: SourceMapping, handle: Iterable[bytes], *, name: str = "", max_bytes: int = 64 * 1024,
                 every: float = STREAM_PAUSE_S, stop: threading.Event | None = None) -> Iterator[Record | None]:
    """The records of a live feed (stdin), with a PAUSE whenever nothing arrived for `every`
    seconds. Rows are read by a thread, so that a group (an order's item rows) is closed after
    GROUP_HOLD_S of quiet rather than when the next group's first row arrives, maybe hours later.
    Once `stop` is set, the rows read so far (an open group included) are the last."""
    return _mapped(mapping, paced_records(_rows(mapping, handle, name), every, stop), max_bytes, every=every)


def _rows(mapping: SourceMapping, handle: Iterable[bytes], name: str) -> Iterator[Record | Row]:
    """Rows of a CSV or JSONL source: the mapping's `format`, else the file's extension, else
    (standard input, `usage.log`) what its first line looks like — a JSON object or not."""
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


def _mapped(mapping: SourceMapping, rows: Iterable[Record | Row | None], max_bytes: int,
            every: float = 0.0) -> Iterator[Record | None]:
    if mapping.group_by is None:
        for item in rows:
            yield item if item is PAUSE or isinstance(item, Record) else _record(mapping, [item], max_bytes)
        return
    group: list[Row] = []
    key = None
    quiet = 0.0
    taken = None  # a live feed: the group closed after a quiet spell, whose late rows are refused
    for item in rows:
        if item is PAUSE:  # a live feed, quiet: a group held long enough is complete
            quiet += every
            if group and quiet >= GROUP_HOLD_S:
                yield _record(mapping, group, max_bytes)
                group, key, taken = [], None, key
            yield item
            continue
        quiet = 0.0
        if isinstance(item, Record):  # a blank or unreadable row ends the group before it
            if group:
                yield _record(mapping, group, max_bytes)
                group, key = [], None
            yield item
            continue
        value = _get(item[2], mapping.group_by)
        value = None if _missing(value) else str(value).strip()
        if value is not None and value == taken:
            yield Record(item[0], item[1], (), f"{_safe_name(mapping.group_by)}: a row of a record already taken"
                         f" (its rows came more than {GROUP_HOLD_S:g} s apart); send it again with all its rows",
                         decoded={"identifiers": _identifiers(mapping, [item])}, size=item[3])
            continue
        taken = None
        if group and value != key:
            yield _record(mapping, group, max_bytes)
            group = []
        group.append(item)
        key = value
    if group:
        yield _record(mapping, group, max_bytes)


def _record(mapping: SourceMapping, rows: list[Row], max_bytes: int) -> Record:
    number, first = rows[0][0], rows[0][2]
    raw = b"\n".join(r[1] for r in rows)
    size = sum(r[3] for r in rows)
    if len(raw) > max_bytes:
        return Record(number, raw, (), f"record: larger than the {max_bytes}-byte limit", size=size)
    try:
        if mapping.group_by is not None and _missing(_get(first, mapping.group_by)):
            raise ValidationError(f"{mapping.group_by}: the column rows are grouped by is empty")
        if not all(condition.holds(first) for condition in mapping.where):
            if len(rows) > 1:  # filtered out whole, or refused when its rows disagree on what it says
                _check_agreement(mapping, first, [r[2] for r in rows])
            return Record(number, raw, (), size=size, filtered=True)
        events = row_events(mapping, first, [r[2] for r in rows])
        return Record(number, raw, events, decoded=first, size=size)
    except ValidationError as e:
        return Record(number, raw, (), e.reason, decoded={"identifiers": _identifiers(mapping, rows)}, size=size)


def _identifiers(mapping: SourceMapping, rows: list[Row]) -> list[dict[str, str]]:
    """The identifiers a refused row carries, as the mapping names them: quarantine tags the
    row with their hashes, so erasing the person purges the row too."""
    found = []
    for rule in mapping.events:
        named = [(ns, spec) for ns, spec in rule.subjects]
        if rule.other is not None and rule.other_namespace is not None:
            named.append((rule.other_namespace, rule.other))
        for namespace, spec in named:
            for _, _, row, _ in rows:
                value = _get(row, spec.column) if spec.column is not None else None
                if isinstance(value, str | int) and str(value).strip():
                    found.append({"namespace": namespace, "value": str(value)})
    return found


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
