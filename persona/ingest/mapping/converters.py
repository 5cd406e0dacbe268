"""A mapping's fields as functions of a row: where each raw value comes from (a column, a dotted
path, a constant or a {template}), its value map and default, and its conversion to the kind it
declares (text, int, number, amount, instant, gender, country, bool, json, list,
minutes_between) — each compiled once per field rather than decided on every row."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import Any

import orjson

from persona.errors import ValidationError
from persona.events import utc_text
from persona.ingest.clean import parse_amount, parse_country, parse_gender, parse_instant, parse_number
from persona.ingest.mapping.spec import TEMPLATE, Field, SourceMapping, column_value, is_missing

_TRUE = frozenset({"true", "t", "yes", "y", "1", "是", "对"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "否", "不"})


def field_value(rule: Field, row: Mapping[str, Any], mapping: SourceMapping) -> Any:
    """The field's canonical value from a row (None: missing and not required)."""
    return compiled(rule, mapping)(row)


def compiled(rule: Field, mapping: SourceMapping) -> Getter:
    """The field as one function of a row (made once per field and mapping)."""
    getter: Getter = once((rule, mapping), lambda: _compile(rule, mapping))
    return getter


Getter = Callable[[Mapping[str, Any]], Any]
_ONCE: dict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = {}


def once(owners: tuple[Any, ...], build: Callable[[], Any]) -> Any:
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
            raw = render(template, row)
        elif column is None:
            raw = constant
        else:
            raw = row.get(column)
            if raw is None and dotted:
                raw = column_value(row, column)
        missing = raw is None or (isinstance(raw, str) and (not raw or raw.isspace()))
        if not missing and mapped:
            raw = mapped.get(str(raw).strip(), raw)
            missing = is_missing(raw)
        if missing:
            raw = default
            if is_missing(raw):
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
    ends = [parse_instant(column_value(row, column), field=rule.name, formats=rule.formats, tz=mapping.timezone,
                          unit=rule.unit) for column in rule.columns]
    if ends[0] is None or ends[1] is None:
        if rule.required:
            raise ValidationError(f"{rule.name}: required, and the row lacks a start or an end")
        return None
    minutes = (ends[1] - ends[0]).total_seconds() / 60
    if minutes < 0:
        raise ValidationError(f"{rule.name}: ends before it starts")
    return round(minutes, 3)


def render(template: str, row: Mapping[str, Any]) -> str | None:
    """A template with its columns filled in; None when one of them is empty."""
    try:
        return TEMPLATE.sub(lambda m: template_value(m.group(1), row), template)
    except ValidationError:
        return None


def template_value(column: str, row: Mapping[str, Any]) -> str:
    value = column_value(row, column)
    if is_missing(value):
        raise ValidationError(f"id: the column {column!r} it is made of is empty")
    return str(value).strip()
