"""Rows → canonical events: the events a row (or a group of rows, an order's item rows) makes
under a mapping, or the reason it is refused; rows grouped into records (`group_by`, `where`);
and the columns a mapping reads, for checking a file's header before it is read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from persona.errors import ValidationError
from persona.ingest.engine import PAUSE, Record
from persona.ingest.mapping.columnar import ColumnConverter
from persona.ingest.mapping.converters import field_value, once, template_value
from persona.ingest.mapping.spec import TEMPLATE, EventRule, Field, SourceMapping, column_value, is_missing, safe_name

REFUND = "order_refunded"  # its amount is the amount refunded: a mapping reads `-¥39.00` there as 39.00
Row = tuple[int, bytes, dict[str, Any], int]  # (line, raw, row, size): a row read, not yet mapped
# A live feed's group (an order's item rows) is closed after this long without a row: its rows
# must arrive together; a row of the same order coming later is a new record (a duplicate id).
GROUP_HOLD_S = 0.5


def _items(mapping: SourceMapping, rows: Sequence[Mapping[str, Any]], marks: set[str],
           values: Sequence[Callable[[Field], Any] | None] = ()) -> list[dict[str, Any]]:
    """One item per row of the record (rows that carry none add none); the currency marks
    their prices were written with go into `marks`. `values`: each row's converted fields, when
    they were converted already (as `row_events` takes them)."""
    out = []
    for at, row in enumerate(rows):
        item: dict[str, Any] = {}
        converted = values[at] if at < len(values) else None
        for spec in mapping.items:
            value = converted(spec) if converted is not None else field_value(spec, row, mapping)
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
               group: Sequence[Mapping[str, Any]] | None = None,
               value_of: Callable[[Field], Any] | None = None,
               values: Sequence[Callable[[Field], Any] | None] = ()) -> list[dict[str, Any]]:
    """The canonical event records one row (or group of rows, the first speaking for all)
    makes; raises ValidationError to refuse it. `value_of` gives a field's value for this row
    when it was converted already (a batch's columns, persona.ingest.mapping.columnar): it
    answers, or raises, exactly as `field_value` would; `values` does for each row of the group
    (or None for a row to read as it is), for the items they carry."""
    if group is not None and len(group) > 1:
        _check_agreement(mapping, row, group)
    get = value_of or (lambda spec: field_value(spec, row, mapping))
    out = []
    for rule in mapping.events:
        occurred = get(rule.when)
        namespace, subject = next(((ns, value) for ns, spec in rule.subjects
                                   if (value := get(spec)) is not None), ("", None))
        if occurred is None or subject is None:
            continue  # this row does not carry this kind of event
        kind = rule.type if rule.type_field is None else _event_type(rule.type_field, row)
        data: dict[str, Any] = {}
        marked = None  # a currency the amount itself was written with ("¥1,299.00")
        item_marks: set[str] = set()  # and the currencies item prices were written with
        for spec in rule.data:
            value = None if spec.group and spec.column is None else get(spec)
            if spec.group and value is None:  # no items column: the items of the record's rows
                value = _items(mapping, group or [row], item_marks, values or (value_of,)) or None
            if spec.kind == "amount" and value is not None:
                amount, currency = value
                value = str(abs(amount) if kind == REFUND and spec.name == "amount" else amount)
                marked = marked or currency
            if value is not None:
                data[spec.name] = value
        if marked is not None:
            currency_rule = next((spec for spec in rule.data if spec.name == "currency"), None)
            said = currency_rule is not None and (  # a constant, a template or a column's own value
                currency_rule.column is None or not is_missing(column_value(row, currency_rule.column)))
            if said and str(data.get("currency")).strip().upper() != marked:
                raise ValidationError("currency: the amount's currency mark and the mapped currency disagree")
            data["currency"] = marked  # the mark beats a declared default (a fill for when nothing says)
        if item_marks and item_marks != {str(data.get("currency", "")).strip().upper()}:
            raise ValidationError("items: an item's price is marked with another currency than the order's")
        if rule.data and not data:
            continue  # every field of it is missing from this row: nothing to say
        if rule.other is not None:
            other = get(rule.other)
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
    value = column_value(row, column)
    kind = spec.map.get(str(value).strip()) if isinstance(value, str | int) else None
    if kind is None:
        raise ValidationError(f"{safe_name(column)}: a value the mapping's type map does not list")
    return str(kind)


def _check_agreement(mapping: SourceMapping, first: Mapping[str, Any], group: Sequence[Mapping[str, Any]]) -> None:
    """The rows of one group (an order's item rows) repeat the record's own columns, or leave
    them empty: a later row saying otherwise (another total, another customer) — or the only
    one saying it at all — is refused, rather than silently losing what it says to the first
    row's word. Values are compared as read (`30` and `30.00`, `A@x` and `a@x` agree)."""
    fields: dict[str, Field] = once((mapping,), lambda: _record_columns(mapping))
    for column, plain in fields.items():
        said = _comparable(plain, first, mapping)
        for row in group[1:]:
            if is_missing(column_value(row, column)):
                continue
            if said is None or _comparable(plain, row, mapping) != said:
                raise ValidationError(f"{safe_name(column)}: the rows of one {safe_name(mapping.group_by or '')}"
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
    value = field_value(spec, row, mapping)
    if spec.kind == "amount" and value is not None:
        return value[0]  # "¥30.00" and "30" agree; a currency mark is checked against the currency
    if isinstance(value, str):  # identifiers and labels: "A@x" and "a@x", "CNY" and "cny" agree
        return value.strip().lower()
    return value


def _event_id(template: str, row: Mapping[str, Any], kind: str) -> str:
    """An `id` template filled in: its columns, and `{_type}` the event's type."""
    return TEMPLATE.sub(lambda m: kind if m.group(1) == "_type" else template_value(m.group(1), row), template)


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
    ids = [] if rule.id is None else [column for column in TEMPLATE.findall(rule.id) if not column.startswith("_")]
    return ([subjects] if subjects else []) + [(column,) for spec in fields for column in _field_columns(spec)] + [
        (column,) for column in ids]


def _field_columns(spec: Field) -> list[str]:
    """The columns one field reads: its column, a duration's two, or those of its template (whose
    names with a leading underscore, {_line}, are persona's own)."""
    named = [spec.column] if spec.column is not None else []
    if spec.kind == "minutes_between":
        named += spec.columns
    if spec.template is not None:
        named += [column for column in TEMPLATE.findall(spec.template) if not column.startswith("_")]
    return named


# -- rows into records ---------------------------------------------------------------------------
def mapped_rows(mapping: SourceMapping, rows: Iterable[Record | Row | None], max_bytes: int,
                every: float = 0.0, columnar: bool = False) -> Iterator[Record | None]:
    """Rows (as a reader gives them, with a live feed's PAUSEs, `every` seconds apart) as records:
    each row one, or with `group_by`, each run of rows with the same value there. `columnar` (a
    file, not a feed): the fields are converted a window of rows at a time
    (persona.ingest.mapping.columnar), with the same results."""
    converter = None
    if columnar:
        converter = ColumnConverter(mapping)
        rows = converter.rows(rows)  # type: ignore[arg-type]  # a file's rows: no PAUSE among them
    if mapping.group_by is None:
        for item in rows:
            yield item if item is PAUSE or isinstance(item, Record) else _record(mapping, [item], max_bytes, converter)
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
        value = column_value(item[2], mapping.group_by)
        value = None if is_missing(value) else str(value).strip()
        if value is not None and value == taken:
            yield Record(item[0], item[1], (), f"{safe_name(mapping.group_by)}: a row of a record already taken"
                         f" (its rows came more than {GROUP_HOLD_S:g} s apart); send it again with all its rows",
                         decoded={"identifiers": _identifiers(mapping, [item])}, size=item[3])
            continue
        taken = None
        if group and value != key:
            yield _record(mapping, group, max_bytes, converter)
            group = []
        group.append(item)
        key = value
    if group:
        yield _record(mapping, group, max_bytes, converter)


def _record(mapping: SourceMapping, rows: list[Row], max_bytes: int, converter: ColumnConverter | None = None
            ) -> Record:
    number, first = rows[0][0], rows[0][2]
    raw = b"\n".join(r[1] for r in rows)
    size = sum(r[3] for r in rows)
    if len(raw) > max_bytes:
        return Record(number, raw, (), f"record: larger than the {max_bytes}-byte limit", size=size)
    try:
        if mapping.group_by is not None and is_missing(column_value(first, mapping.group_by)):
            raise ValidationError(f"{mapping.group_by}: the column rows are grouped by is empty")
        if not all(condition.holds(first) for condition in mapping.where):
            if len(rows) > 1:  # filtered out whole, or refused when its rows disagree on what it says
                _check_agreement(mapping, first, [r[2] for r in rows])
            return Record(number, raw, (), size=size, filtered=True)
        # the first row speaks for the record: its fields as converted with its window
        values = [] if converter is None else [converter.value_of(r) for r in rows]
        events = row_events(mapping, first, [r[2] for r in rows] if len(rows) > 1 else None,
                            values[0] if values else None, values)
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
                value = column_value(row, spec.column) if spec.column is not None else None
                if isinstance(value, str | int) and str(value).strip():
                    found.append({"namespace": namespace, "value": str(value)})
    return found
