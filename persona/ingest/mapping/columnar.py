"""A file's rows mapped a column at a time: each field of a mapping is converted over a window of
rows at once, once per distinct value of its column (a customer's identifier, a category, a
currency, a time repeated by an order's two events), and the events are then assembled row by
row from the converted columns by the same code as the row-by-row path (`row_events`), so that
what a row becomes, and the reason it is refused, do not depend on the path.

A converted value that failed keeps its failure: the row is refused with the reason the
row-by-row rules give, at the moment they would give it (a field never read for a row, because
its event is skipped, refuses nothing). A record of several rows (an order's item rows) is
mapped row by row, as before: its rows must agree, and its items are gathered across them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from persona.errors import ValidationError
from persona.ingest.engine import Record
from persona.ingest.mapping.converters import Getter, compiled
from persona.ingest.mapping.spec import Field, SourceMapping, column_value

WINDOW = 4096  # rows converted together: enough to find the repeats, small enough to stay in cache
MEMO_LIMIT = 100_000  # distinct values remembered per field, at most
Row = tuple[int, bytes, dict[str, Any], int]  # as persona.ingest.mapping.rows names it
ValueOf = Callable[[Field], Any]


class _Failed:
    """A conversion that raised: raised again (a new exception, the same reason) when read."""

    __slots__ = ("args", "kind")

    def __init__(self, error: Exception) -> None:
        self.kind, self.args = type(error), error.args

    def raise_(self) -> Any:
        raise self.kind(*self.args)


class ColumnConverter:
    """The fields of a mapping, converted column-wise over windows of rows. `rows()` passes a
    reader's rows (and its records: blank or unreadable rows) through unchanged, converting
    each window as it is first reached; `value_of(row)` then reads a row's converted values."""

    def __init__(self, mapping: SourceMapping, window: int | None = None) -> None:
        self.mapping, self.window = mapping, window or WINDOW
        fields: dict[int, Field] = {}
        for rule in mapping.events:
            specs = [rule.when, *(spec for _, spec in rule.subjects), *rule.data]
            if rule.other is not None:
                specs.append(rule.other)
            for spec in specs:
                if not (spec.group and spec.column is None):  # a record's items: gathered from its rows
                    fields.setdefault(id(spec), spec)
        for spec in mapping.items:  # what each row adds to a record's items
            fields.setdefault(id(spec), spec)
        # fields that read the same column the same way (an event's time and its link's) are
        # converted once: one column, and one memo, per distinct field
        self.alike: dict[int, str] = {key: repr(spec) for key, spec in fields.items()}
        self.fields = list({repr(spec): spec for spec in fields.values()}.values())
        self.getters: dict[str, Getter] = {repr(spec): compiled(spec, mapping) for spec in self.fields}
        self.memos: dict[str, dict[Any, Any]] = {repr(spec): {} for spec in self.fields}
        # the rows of the last windows: line -> (its window's converted columns, its place there)
        self.windows: deque[dict[int, tuple[dict[int, list[Any]], int]]] = deque(maxlen=2)

    def rows(self, items: Iterable[Record | Row]) -> Iterator[Record | Row]:
        pending: list[Record | Row] = []
        for item in items:
            pending.append(item)
            if len(pending) >= self.window:
                self._convert(pending)
                yield from pending
                pending = []
        if pending:
            self._convert(pending)
            yield from pending

    def value_of(self, row: Row) -> ValueOf | None:
        """This row's converted values, as `row_events` reads them (None: not converted here,
        a row of a window already dropped — it is then read row by row)."""
        for window in self.windows:
            found = window.get(row[0])
            if found is not None:
                return _reader(*found)
        return None

    def _convert(self, items: list[Record | Row]) -> None:
        rows = [item for item in items if not isinstance(item, Record)]
        distinct = {repr(spec): self._column(spec, rows) for spec in self.fields}
        columns = {key: distinct[alike] for key, alike in self.alike.items()}
        self.windows.append({row[0]: (columns, at) for at, row in enumerate(rows)})

    def _column(self, spec: Field, rows: list[Row]) -> list[Any]:
        getter = self.getters[repr(spec)]
        if spec.template is not None or spec.kind == "minutes_between":  # several columns: row by row
            return [_call(getter, row[2]) for row in rows]
        column = spec.column
        if column is None:  # a constant
            return [_call(getter, {})] * len(rows)
        memo = self.memos.get(repr(spec))
        if memo is None:  # a column of (nearly) unique values: nothing to remember
            return [_call(getter, {column: column_value(row[2], column)}) for row in rows]
        if len(memo) > MEMO_LIMIT:
            memo.clear()
        before = len(memo)
        dotted = "." in column
        out = []
        for row in rows:
            values = row[2]
            raw = values.get(column)
            if raw is None and dotted:
                raw = column_value(values, column)
            kind = type(raw)
            if kind is str or raw is None:
                key: Any = raw
            elif kind is int or kind is float or kind is bool:
                key = (kind, raw)  # 1, 1.0 and True are equal keys, but not the same value
            else:  # a JSON object or list: converted where it is
                out.append(_call(getter, {column: raw}))
                continue
            got = memo.get(key, _UNSEEN)
            if got is _UNSEEN:
                got = memo[key] = _call(getter, {column: raw})
            out.append(got)
        if len(rows) >= 256 and len(memo) - before > len(rows) // 2:  # most values new: stop remembering
            del self.memos[repr(spec)]
        return out


_UNSEEN = object()


def _reader(columns: dict[int, list[Any]], at: int) -> ValueOf:
    def value(spec: Field) -> Any:
        got = columns[id(spec)][at]
        return got.raise_() if type(got) is _Failed else got

    return value


def _call(getter: Getter, row: Mapping[str, Any]) -> Any:
    try:
        return getter(row)
    except (ValidationError, ValueError, TypeError, ArithmeticError, RecursionError) as e:
        return _Failed(e)
