from __future__ import annotations

import io
from pathlib import Path

import orjson

from persona import Persona
from persona.ingest import ingest_jsonl
from persona.ingest.quarantine import describe, open_quarantined
from tests.conftest import jsonl, record, store_bytes


def lines(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_ingest_appends_valid_lines_and_quarantines_the_rest(persona: Persona) -> None:
    bad_amount = record("eve@example.com", "order_placed", {"order_id": "o", "amount": -5, "currency": "USD"})
    data = jsonl(
        record(event_id="a"),
        b"{not json: eve@example.com}",
        bad_amount,
        b"",
        record("bob@example.com", event_id="b"),
        b"[1, 2, 3]",
    )
    report = ingest_jsonl(persona, lines(data), origin="mixed.jsonl")
    assert (report.appended, report.duplicates, report.quarantined, report.blank) == (2, 0, 3, 1)
    assert report.lines == 6
    rows = describe(persona)
    assert [(r["line"], r["reason"]) for r in rows] == [
        (2, "record: not valid JSON"),
        (3, "data.amount: must not be negative"),
        (6, "record: must be a JSON object"),
    ]
    assert all(r["origin"] == "mixed.jsonl" for r in rows)
    # content is sealed, not lost: the original bytes come back with the quarantine key
    assert orjson.loads(open_quarantined(persona, rows[1]["id"]) or b"") == bad_amount


def test_quarantined_content_is_never_in_clear_on_disk(persona: Persona) -> None:
    ingest_jsonl(persona, lines(jsonl(b'{"broken": "frank.secret@example.com", "url": "https://leak.example/zz"')),
                 origin="f.jsonl")
    persona.recorder.checkpoint()
    raw = store_bytes(persona)
    assert b"frank.secret" not in raw and b"leak.example" not in raw
    assert len(describe(persona)) == 1


def test_reingesting_the_same_file_appends_nothing(persona: Persona, tmp_path: Path) -> None:
    data = jsonl(*(record(f"u{i}@example.com", data={"url": f"https://x.example/{i}"}) for i in range(50)),
                 b"garbage")
    first = ingest_jsonl(persona, lines(data), origin="f")
    second = ingest_jsonl(persona, lines(data), origin="f")
    assert (first.appended, first.quarantined) == (50, 1)
    assert (second.appended, second.duplicates) == (0, 50)
    counts = persona.recorder.counts()
    assert counts["events"] == 50 and counts["quarantine"] == 1  # the same bad line is held once


def test_batches_commit_separately_and_memory_stays_bounded(persona: Persona) -> None:
    small = persona.settings.__class__(**{**persona.settings.__dict__, "batch_size": 7})
    persona.settings = small
    data = jsonl(*(record(f"u{i % 5}@example.com", event_id=f"e{i}") for i in range(40)))
    calls = []
    original = persona.log.append

    def spy(events: list[object], **kwargs: object) -> object:
        calls.append(len(events))
        return original(events, **kwargs)  # type: ignore[arg-type]

    persona.log.append = spy  # type: ignore[method-assign]
    report = ingest_jsonl(persona, lines(data), origin="f")
    assert report.appended == 40
    assert max(calls) <= 7 and sum(calls) == 40


def test_progress_reports_bytes(persona: Persona) -> None:
    data = jsonl(*(record(event_id=f"p{i}") for i in range(5)))
    seen: list[int] = []
    ingest_jsonl(persona, lines(data), origin="f", progress=seen.append)
    assert sum(seen) == len(data)


def test_oversized_line_is_quarantined_without_parsing(persona: Persona) -> None:
    huge = orjson.dumps(record(data={"url": "https://x.example/" + "a" * 70_000}))
    report = ingest_jsonl(persona, lines(huge + b"\n"), origin="f")
    assert report.quarantined == 1 and "larger than" in describe(persona)[0]["reason"]


def test_a_file_of_bad_lines_is_quarantined_in_bounded_batches(persona: Persona, monkeypatch: object) -> None:
    from persona.ingest import jsonl as module

    stored: list[int] = []
    original = persona.recorder.quarantine

    def spy(rows: list[object], tags: list[object]) -> int:
        stored.append(len(rows))
        return original(rows, tags)  # type: ignore[arg-type]

    persona.recorder.quarantine = spy  # type: ignore[method-assign]
    data = b"".join(b"bad line %d\n" % i for i in range(2 * module.QUARANTINE_BATCH + 5))
    report = ingest_jsonl(persona, lines(data), origin="f")
    assert report.quarantined == 2 * module.QUARANTINE_BATCH + 5
    assert max(stored) <= module.QUARANTINE_BATCH and sum(stored) == report.quarantined


def test_an_ingest_catches_up_the_index_a_killed_one_left_behind(persona: Persona) -> None:
    from persona.ingest import ingest_records
    from persona.ingest.jsonl import jsonl_records
    from tests.conftest import event

    ingest_jsonl(persona, jsonl(record("ann@example.com", event_id="a1")).splitlines(), origin="t")
    persona.log.append([event("ann@example.com", event_id="a2"), event("bo@example.com", event_id="b1")])
    assert len(persona.recorder.lagging_persons()) == 2  # committed, never indexed (the process died)
    lines = jsonl(record("cy@example.com", event_id="c1")).splitlines()
    ingest_records(persona, jsonl_records(lines, 1 << 16), origin="next", catch_up=True)
    assert persona.recorder.lagging_persons() == []
    assert {row[1] for row in persona.recorder.index_rows()} == {1, 2}
