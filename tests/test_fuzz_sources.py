"""Fuzzing every built-in source adapter: whatever a row holds, ingesting it never crashes
and never drops it silently — it is appended, found a duplicate, or quarantined with a reason.

Rows are made of each source's own columns, every value drawn from the fixture's real
values, odd text (unicode, control characters, very long), numbers, odd dates, or nothing;
each row is ingested on its own, so the count proves it was accounted for."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona import Persona, Settings
from persona.ingest import ingest_file
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.verify import verify
from tests.hardening import (
    SOURCE_APPENDED,
    SOURCE_BLANK,
    SOURCE_DROPPED,
    SOURCE_DUPLICATES,
    SOURCE_QUARANTINED,
    SOURCE_ROWS,
    sized,
    tally,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sources"
SOURCES = {"shop": "shop_orders.csv", "social": "social.jsonl", "web": "web_clicks.csv", "app": "app_usage.csv"}
ROWS = sized(60, 25_500)  # per source: 102,000 rows in the long run
ODD = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "null", "NaN", "-1", "0", "1e308", "2025-02-30", "2025-03-05T25:61:00Z",
                     "9999-12-31 23:59:59", "1741165200000", "-62135596800000", "\x00", "a,b", '"', "é" * 3000]),
)


def fixture_columns(name: str) -> dict[str, list[Any]]:
    """Each column (or key) of a fixture, with the values it takes there."""
    path = FIXTURES / name
    rows: list[dict[str, Any]]
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    else:
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return columns


def rows_of(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly real values (so that rows are often valid), with odd ones and gaps mixed in."""
    columns = fixture_columns(name)

    def value(values: list[Any]) -> st.SearchStrategy[Any]:
        real = st.sampled_from(values)
        odd: st.SearchStrategy[Any] = st.one_of(ODD, st.none()) if name.endswith(".jsonl") else ODD
        return st.one_of(real, real, real, real, odd)

    keys = list(columns)
    return st.fixed_dictionaries({key: value(columns[key]) for key in keys}).flatmap(
        lambda row: st.sets(st.sampled_from(keys), max_size=2).map(
            lambda dropped: {k: v for k, v in row.items() if k not in dropped}))


def encode(name: str, row: dict[str, Any]) -> bytes:
    if name.endswith(".jsonl"):
        return orjson.dumps(row) + b"\n"
    header = list(fixture_columns(name))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerow({key: row.get(key, "") for key in header})
    return out.getvalue().encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, Persona]]:
    """One store per source, shared by that source's examples (a row seen twice is a duplicate)."""
    with tempfile.TemporaryDirectory(prefix="persona-fuzz-") as tmp:
        opened = {source: Persona.init(Settings.load(Path(tmp) / source, env={})) for source in SOURCES}
        try:
            yield opened
        finally:
            for persona in opened.values():
                verify(persona)  # whatever went in, the store is whole
                persona.close()


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_fuzzed_row_is_appended_or_quarantined_never_dropped(source: str, stores: dict[str, Persona]) -> None:
    name = SOURCES[source]
    mapping = builtin_mapping(source)
    persona = stores[source]
    seen = {"rows": 0, "appended": 0, "quarantined": 0}

    @settings(max_examples=ROWS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(row=rows_of(name))
    def one_row(row: dict[str, Any]) -> None:
        data = encode(name, row)
        report = ingest_file(persona, mapped_records(mapping, io.BytesIO(data), name=name), origin=name)
        accounted = report.appended + report.duplicates + report.quarantined + report.blank
        tally(SOURCE_ROWS)
        tally(SOURCE_APPENDED, report.appended)
        tally(SOURCE_DUPLICATES, report.duplicates)
        tally(SOURCE_QUARANTINED, report.quarantined)
        tally(SOURCE_BLANK, report.blank)
        tally(SOURCE_DROPPED, accounted < 1)
        assert accounted >= 1, (row, report)  # never dropped without a word
        seen["rows"] += 1
        seen["appended"] += report.appended
        seen["quarantined"] += report.quarantined

    one_row()
    assert seen["rows"] >= 30 and seen["appended"] and seen["quarantined"]  # both ends were reached
