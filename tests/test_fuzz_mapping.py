"""Fuzzing the mapping language (persona.ingest.mapping): any document a TOML file could hold
either loads or is refused with a ConfigurationError naming where; and a mapping that loads,
applied to any rows, never crashes and never drops a row — each is appended, a duplicate, or
quarantined with a reason.

Documents are drawn from the language's own grammar (both forms: `[[events]]` tables and
the sectioned `[source]`/`[fields]` form), every value now and then swapped for any other TOML value,
so that the draws reach both the checks and the code behind them."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from persona import Persona, Settings
from persona.errors import ConfigurationError
from persona.events import EVENT_TYPES
from persona.ingest import ingest_file
from persona.ingest.mapping import KINDS, SourceMapping, mapped_records, parse_mapping
from persona.verify import verify
from tests.hardening import sized, tally

COLUMNS = ("email", "phone", "when", "amount", "note", "kind", "qty")
FORMATS = ("%Y-%m-%d", "%d/%m/%Y %H:%M", "%Y-%m-%dT%H:%M:%S%z", "%s", "%Q nonsense", "")

# Any value a TOML document can hold.
toml_scalar = st.one_of(st.text(max_size=12), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                        st.floats(allow_nan=False), st.booleans(), st.datetimes(timezones=st.just(UTC)),
                        st.dates(), st.times())
toml_any = st.recursive(toml_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def chaos(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the grammar says; one time in twenty-five, any TOML value at all."""
    return st.integers(0, 24).flatmap(lambda n: toml_any if n == 0 else strategy)


columns = st.sampled_from(COLUMNS)
raw = st.one_of(st.text(max_size=10), st.integers(), st.booleans())
field_spec = chaos(st.one_of(
    raw,  # a constant
    st.fixed_dictionaries({"column": chaos(columns)}, optional={
        "kind": chaos(st.sampled_from(sorted(KINDS))),
        "map": chaos(st.dictionaries(st.text(max_size=6), raw, max_size=3)),
        "default": raw,
        "required": chaos(st.booleans()),
        "formats": chaos(st.lists(st.sampled_from(FORMATS), max_size=2)),
        "unit": chaos(st.sampled_from(["s", "ms", "us", "days", "fortnights"])),
        "labels": chaos(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2)),
        "separator": chaos(st.sampled_from([",", ";", "|", ""])),
        "columns": chaos(st.lists(columns, max_size=3)),
        "value": raw,
    }),
))
subject = chaos(st.one_of(st.just({"namespace": "email", "column": "email"}), st.fixed_dictionaries(
    {"namespace": chaos(st.sampled_from(["email", "phone", "customer_id"])), "column": chaos(columns)},
    optional={"kind": st.just("text")})))
type_map = chaos(st.fixed_dictionaries({"column": chaos(columns), "map": chaos(st.dictionaries(
    st.sampled_from(["a", "b", "3", ""]), chaos(st.sampled_from(sorted(EVENT_TYPES))), max_size=3))}))
where = chaos(st.dictionaries(columns, chaos(st.one_of(
    st.fixed_dictionaries({"equals": chaos(st.sampled_from(["a", "b", "3", ""]))}),
    st.sampled_from(["in", "not_in"]).flatmap(lambda operator: st.fixed_dictionaries(
        {operator: chaos(st.lists(st.sampled_from(["a", "b", "3", ""]), max_size=3))})),
    st.dictionaries(st.sampled_from(["in", "not_in", "equals", "like"]), raw, min_size=1, max_size=2))),
    max_size=2))
event_table = chaos(st.fixed_dictionaries(
    {"type": chaos(st.one_of(st.sampled_from(["profile_updated", "searched"]), st.sampled_from(sorted(EVENT_TYPES)),
                             type_map)),
     "when": chaos(st.one_of(st.just("when"), columns, field_spec)),
     "subject": st.one_of(subject, st.lists(subject, max_size=2))},
    optional={"id": chaos(st.sampled_from(["{note}", "{email}-{when}", "{missing}", "no template", "{note}-{_type}"])),
              "data": chaos(st.dictionaries(st.sampled_from(["amount", "note", "qty", "kind", "query", "x"]),
                                            field_spec, max_size=4)),
              "other": subject}))
events_doc = st.fixed_dictionaries(
    {"source": chaos(st.sampled_from(["crm", "pos", ""])), "events": chaos(st.lists(event_table, max_size=3))},
    optional={"format": chaos(st.sampled_from(["csv", "jsonl", "xml"])),
              "timezone": chaos(st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Paris", "Nowhere/Atlantis"])),
              "delimiter": chaos(st.sampled_from([",", ";", "\t", "ab"])),
              "currencies": chaos(st.dictionaries(st.sampled_from(["¥", "€", "$"]), st.sampled_from(["CNY", "EUR"]))),
              "group_by": chaos(columns),
              "items": chaos(st.dictionaries(st.sampled_from(["sku", "qty"]), field_spec, max_size=2)),
              "encoding": chaos(st.sampled_from(["utf-8", "gb18030", "latin-1", "klingon"])),
              "where": where})
contract_field = chaos(st.one_of(st.sampled_from(["{note}", "{email}", "constant"]), st.fixed_dictionaries(
    {"column": chaos(columns)},
    optional={"type": chaos(st.sampled_from(["string", "decimal", "int", "datetime", "bool", "unknown"])),
              "format": chaos(st.one_of(st.sampled_from(["iso", "auto", "epoch_s", "epoch_ms"]),
                                        st.sampled_from(FORMATS), st.lists(st.sampled_from(FORMATS), max_size=2))),
              "tz": chaos(st.sampled_from(["UTC", "Asia/Tokyo", "Mars/Olympus"])),
              "map": chaos(st.dictionaries(st.text(max_size=4), raw, max_size=2))})))
contract_doc = st.fixed_dictionaries(
    {"source": chaos(st.fixed_dictionaries({"name": chaos(st.sampled_from(["crm", ""]))}, optional={
        "format": chaos(st.sampled_from(["csv", "jsonl"])), "delimiter": chaos(st.sampled_from([",", "whitespace"])),
        "header": chaos(st.booleans()), "columns": chaos(st.lists(columns, max_size=4)),
        "timezone": chaos(st.sampled_from(["UTC", "Atlantis"]))})),
     "event": chaos(st.fixed_dictionaries({"type": chaos(st.one_of(
         st.sampled_from(sorted(EVENT_TYPES)), st.fixed_dictionaries({"column": columns, "map": st.just(
             {"a": "order_placed", "b": "page_viewed"})})))})),
     "subject": chaos(st.fixed_dictionaries({"namespace": chaos(st.sampled_from(["email", "phone"])),
                                             "value": contract_field},
                                            optional={"also": chaos(st.lists(st.fixed_dictionaries(
                                                {"namespace": st.just("phone"), "value": contract_field}),
                                                max_size=2))})),
     "fields": chaos(st.fixed_dictionaries({"occurred_at": contract_field}, optional={
         "event_id": chaos(st.sampled_from(["{note}", "plain", "{note}-{_type}"])), "data.amount": contract_field,
         "data.note": contract_field, "extra": contract_field}))},
    optional={"where": where})
documents = st.one_of(events_doc, contract_doc)


def load(doc: dict[str, Any]) -> SourceMapping | None:
    """The document as a mapping, or None when it is refused — with a ConfigurationError only."""
    try:
        mapping = parse_mapping(doc, where="fuzz.toml")
    except ConfigurationError as e:
        assert str(e).startswith("fuzz.toml"), f"a refusal that does not say where: {e}"
        tally("mapping documents refused with a clear error")
        return None
    tally("mapping documents loaded")
    return mapping


@settings(max_examples=sized(1500, 6000), deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents)
def test_any_document_loads_or_is_refused_with_a_clear_error(doc: dict[str, Any]) -> None:
    tally("mapping documents fuzzed")
    load(doc)


# -- applied to rows ---------------------------------------------------------------------------------
cell = st.one_of(
    st.sampled_from(["ann@example.com", "+86 138 0013 8000", "2025-03-05", "05/03/2025 14:30", "1741165200",
                     "2025-03-05T14:30:00+08:00", "¥1,299.00", "12.5", "3", "a", "b", "true", "[1, 2]", "", " "]),
    st.text(max_size=20), st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["\x00", "é" * 500, "NaN", "-0", "9999-12-31T23:59:59Z", '{"deep": [[[]]]}']))
emails = st.one_of(st.sampled_from(["ann@example.com", "bo@example.org", "chen.li@example.cn"]), cell)
moments = st.one_of(st.sampled_from(["2025-03-05", "2025-03-05T14:30:00Z", "05/03/2025 14:30", "1741165200"]), cell)
rows = st.lists(st.fixed_dictionaries({c: emails if c == "email" else moments if c == "when" else cell
                                       for c in COLUMNS}), min_size=1, max_size=3)


def encode(mapping: SourceMapping, rows: list[dict[str, str]], jsonl: bool) -> bytes:
    if jsonl:
        return b"".join(orjson.dumps(r) + b"\n" for r in rows)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=mapping.delimiter if mapping.delimiter != "whitespace" else " ")
    if mapping.header:
        writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r[c] for c in COLUMNS])
    return out.getvalue().encode(mapping.encoding, "replace")


@pytest.fixture(scope="module")
def store() -> Iterator[Persona]:
    with tempfile.TemporaryDirectory(prefix="persona-fuzz-mapping-") as tmp:
        persona = Persona.init(Settings.load(Path(tmp) / "data", env={}))
        try:
            yield persona
            verify(persona)  # whatever went in, the store is whole
        finally:
            persona.close()


# A mapping whose good row is appended and whose bad one is quarantined, so that both ends are
# reached whatever the random draws (one seed in eight appended nothing in 250 of them).
PLAIN = {"source": "crm", "events": [{"type": "profile_updated", "when": "when",
                                      "subject": {"namespace": "email", "column": "email"},
                                      "data": {"note": {"column": "note"}}}]}
GOOD_ROW = dict.fromkeys(COLUMNS, "x") | {"email": "ann@example.com", "when": "2025-03-05T14:30:00Z"}


def test_a_loaded_mapping_accounts_for_every_row(store: Persona) -> None:
    seen = {"examples": 0, "appended": 0, "quarantined": 0}

    @settings(max_examples=sized(250, 1000), deadline=None, suppress_health_check=list(HealthCheck))
    @given(doc=documents, rows=rows, jsonl=st.booleans())
    @example(doc=PLAIN, rows=[GOOD_ROW], jsonl=False)
    @example(doc=PLAIN, rows=[GOOD_ROW | {"when": "not a moment"}], jsonl=True)
    def apply(doc: dict[str, Any], rows: list[dict[str, str]], jsonl: bool) -> None:
        mapping = load(doc)
        assume(mapping is not None)
        assert mapping is not None
        if mapping.format is not None:
            jsonl = mapping.format == "jsonl"
        if mapping.group_by is not None:
            rows = rows[:1]  # grouped rows make one record: one row keeps the count exact
        name = "fuzz.jsonl" if jsonl else "fuzz.csv"
        for row in rows:
            data = encode(mapping, [row], jsonl)
            report = ingest_file(store, mapped_records(mapping, io.BytesIO(data), name=name), origin=name)
            accounted = report.appended + report.duplicates + report.quarantined + report.blank + report.filtered
            assert accounted >= 1, (doc, row, report)  # never dropped without a word (`where`: counted as filtered)
            if not jsonl and mapping.delimiter == "whitespace":  # no quoting there: a line break in a cell ends
                lines = io.StringIO(data.decode(mapping.encoding, "replace"), newline="").readlines()  # the line
                assert report.quarantined <= len(lines) - mapping.header, report  # each line whole
            else:
                assert report.quarantined <= 1 and not (report.quarantined and report.appended), report  # whole rows
                assert report.filtered <= 1 and not (report.filtered and accounted > 1), report  # filtered whole
            tally("rows mapped through fuzzed mappings")
            seen["appended"] += report.appended
            seen["quarantined"] += report.quarantined
        seen["examples"] += 1

    apply()
    assert seen["examples"] >= 50, seen  # enough documents loaded to mean something
    assert seen["appended"] and seen["quarantined"], seen  # both ends were reached
