"""A file read, mapped and validated in a second process gives exactly what one process gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from persona import Persona, Settings
from persona.errors import ConfigurationError
from persona.ingest import ingest_file
from persona.ingest.engine import Item
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.ingest.pipeline import CHUNK, ReaderError, pipelined
from persona.ingest.quarantine import describe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def items(n: int) -> Iterator[Item]:
    for line in range(1, n + 1):
        yield line, 10, None, b"", None, []


def test_items_come_back_whole_and_in_order() -> None:
    n = 3 * CHUNK + 7
    assert list(pipelined(lambda: items(n))) == list(items(n))


def test_a_persona_error_in_the_reader_is_raised_as_it_is() -> None:
    def failing() -> Iterator[Item]:
        yield from items(5)
        raise ConfigurationError("no such encoding: set `encoding`")

    got = []
    with pytest.raises(ConfigurationError, match="no such encoding"):
        for item in pipelined(failing):
            got.append(item)
    assert got == list(items(5))  # what came before the failure is kept


def test_any_other_failure_is_named_by_its_class_only() -> None:
    def leaking() -> Iterator[Item]:
        raise ValueError("alice@example.com is not a number")
        yield from items(1)

    with pytest.raises(ReaderError) as raised:
        list(pipelined(leaking))
    assert "ValueError" in str(raised.value) and "alice" not in str(raised.value)


@pytest.mark.parametrize(("source", "name"), [("shop", "shop_orders.csv"), ("web", "web_clicks.csv"),
                                              ("social", "social.jsonl"), ("app", "app_usage.csv")])
def test_parallel_ingest_equals_one_process(tmp_path: Path, source: str, name: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import persona.ingest.pipeline as pipeline

    forked = []
    real = pipeline.pipelined
    monkeypatch.setattr(pipeline, "pipelined", lambda produce: forked.append(1) or real(produce))
    results = []
    for parallel in (False, True):
        settings = Settings.load(tmp_path / f"data-{parallel}", env={})
        with Persona.init(settings) as persona:
            path = FIXTURES / "people" / name
            with path.open("rb") as handle:
                report = ingest_file(persona, mapped_records(builtin_mapping(source), handle, name=name),
                                     origin=name, parallel=parallel)
            quarantined = [(r["line"], r["reason"]) for r in describe(persona)]
            results.append((report.appended, report.duplicates, report.quarantined, report.merges, report.lines,
                            quarantined, persona.recorder.counts()["events"]))
    assert forked == [1]  # the parallel run did read in a second process
    assert results[0] == results[1]
    assert results[0][0] > 0 and results[0][2] > 0  # the sample has both good and bad rows


def test_a_reader_killed_half_way_is_an_error_not_a_hang() -> None:
    import os
    import signal

    def dying() -> Iterator[Item]:
        yield from items(2 * CHUNK + 5)
        os.kill(os.getpid(), signal.SIGKILL)  # in the child: the OOM killer, say
        yield from items(1)

    got = 0
    with pytest.raises(ReaderError, match="ended unexpectedly"):
        for _ in pipelined(dying):
            got += 1
    assert got in (CHUNK, 2 * CHUNK)  # whole chunks only; the rest never arrived


def test_a_record_too_deep_to_pass_between_processes_is_quarantined_not_dropped(tmp_path: Path) -> None:
    import orjson

    from persona.ingest.jsonl import jsonl_records

    lines = [orjson.dumps({"source": "crm", "type": "page_viewed", "occurred_at": "2025-01-01T00:00:00Z",
                           "subject": {"namespace": "email", "value": f"u{i}@example.com"},
                           "data": {"url": f"/p{i}"}}) for i in range(50)]
    lines[20] = (b'{"source":"crm","type":"page_viewed","occurred_at":"2025-01-01T00:00:00Z","subject":'
                 b'{"namespace":"email","value":"deep@example.com"},"data":{"url":"/x","referrer":'
                 + b"[" * 600 + b"]" * 600 + b"}}")
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as persona:
        report = ingest_file(persona, jsonl_records(lines, 1 << 20), origin="deep.jsonl", parallel=True)
        assert (report.appended, report.quarantined) == (49, 1)
        assert [r["line"] for r in describe(persona)] == [21]
