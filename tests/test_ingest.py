from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import orjson

from persona import Persona
from persona.events import micros
from persona.ingest import Quarantine, ingest_jsonl
from persona.ingest.quarantine import describe, open_quarantined
from persona.profiles import profile_view
from persona.store.base import TABLES
from persona.verify import verify
from tests.conftest import NOW, jsonl, order, record, store_bytes


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
    from persona.ingest import engine as module

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
    from persona.ingest import ingest_file
    from persona.ingest.jsonl import jsonl_records
    from tests.conftest import event

    ingest_jsonl(persona, jsonl(record("ann@example.com", event_id="a1")).splitlines(), origin="t")
    persona.log.append([event("ann@example.com", event_id="a2"), event("bo@example.com", event_id="b1")])
    assert len(persona.recorder.lagging_persons()) == 2  # committed, never indexed (the process died)
    lines = jsonl(record("cy@example.com", event_id="c1")).splitlines()
    ingest_file(persona, jsonl_records(lines, 1 << 16), origin="next", catch_up=True)
    assert persona.recorder.lagging_persons() == []
    assert {row[1] for row in persona.recorder.index_rows()} == {1, 2}


def every_row(persona: Persona) -> dict[str, list[tuple[object, ...]]]:
    return {table: [row for page in persona.recorder.dump(table) for row in page] for table in TABLES}


def test_a_dry_run_stores_nothing_and_counts_what_the_real_run_then_does(persona: Persona) -> None:
    """Duplicates of the log and within the file, a link that merges two people (its marker
    events are appended too), a bad line and a blank: the dry run's report is the real run's, and
    no row of any table (keys, links, merges, quarantine, the audit log…) differs after it."""
    from persona.ingest import ingest_file
    from persona.ingest.dryrun import dry_run
    from persona.ingest.jsonl import jsonl_records

    ingest_jsonl(persona, jsonl(record("ann@example.com", event_id="a1"),
                                record("13800138000", namespace="phone", event_id="p1")).splitlines(), origin="t")
    data = jsonl(record("ann@example.com", event_id="a1"), record("cy@example.com", event_id="c1"),
                 record("cy@example.com", event_id="c1"), b"", b"{broken",
                 record("ann@example.com", "identity_linked", {"other": {"namespace": "phone", "value": "13800138000"}},
                        event_id="l1"))
    before = every_row(persona)
    dry = dry_run(persona, jsonl_records(data.splitlines(keepends=True), 1 << 16), origin="f.jsonl")
    assert every_row(persona) == before and describe(persona) == []
    assert (dry.appended, dry.duplicates, dry.quarantined, dry.blank, dry.merges) == (4, 2, 1, 1, 1)
    real = ingest_file(persona, jsonl_records(data.splitlines(keepends=True), 1 << 16), origin="f.jsonl")
    counted = ("lines", "appended", "duplicates", "quarantined", "blank", "profiles_created", "merges",
               "quarantine_reasons")
    assert {k: getattr(dry, k) for k in counted} == {k: getattr(real, k) for k in counted}
    assert persona.recorder.counts()["events"] == len(before["event_keys"]) + real.appended


def test_a_record_refused_again_is_held_once_with_the_latest_reason(persona: Persona) -> None:
    bad = b'{"source": "web", "type": "page_viewed", "subject": {"namespace": "email", "value": "eve@example.com"}}'
    ingest_jsonl(persona, [bad], origin="f.jsonl", now=NOW)
    first = describe(persona)
    assert [r["reason"].split(":")[0] for r in first] == ["occurred_at"]
    later = NOW + timedelta(days=1)
    with persona.recorder.transaction():  # another run's reason for the same line of the same file
        persona.recorder.quarantine([(micros(later), "f.jsonl", 1, "data: another run's reason", len(bad), b"sealed",
                                      first_hash(persona, bad), micros(later + timedelta(days=3)))], [[]])
    again = describe(persona)
    assert len(again) == 1 and again[0]["id"] == first[0]["id"]
    assert again[0]["reason"] == "data: another run's reason" and again[0]["recorded_at"] == later.isoformat()
    assert open_quarantined(persona, again[0]["id"]) == bad  # the content held is the first run's, unchanged
    ingest_jsonl(persona, [bad], origin="f.jsonl", now=later)  # and a real second run of the same file
    assert len(describe(persona)) == 1
    verify(persona)  # the row rewritten with the run's reason is tagged again: no "altered since written"
    # erasing eve still finds the record by the first run's tag
    assert persona.recorder.purge_tagged([persona.log.hash_identifier("email", "eve@example.com")]) == 1


def first_hash(persona: Persona, raw: bytes) -> bytes:
    """The content hash Quarantine gives line 1 of f.jsonl holding `raw`."""
    quarantine = Quarantine(persona, "f.jsonl", clock=lambda: NOW)
    quarantine.add(1, raw, "x: y")
    return quarantine.rows[0][6]


def test_drop_quarantined_removes_those_records_and_their_tags_only(persona: Persona) -> None:
    ingest_jsonl(persona, jsonl(b'{"x": "ann@example.com"}', b'{"x": "bob@example.com"}',
                                b'{"x": "cy@example.com"}').splitlines(), origin="f.jsonl")
    held = [r["id"] for r in describe(persona)]
    with persona.recorder.transaction():
        persona.recorder.drop_quarantined([held[0], held[2], 10_000])  # an id not held is passed over
    assert [r["id"] for r in describe(persona)] == [held[1]]
    tags = [row[1] for page in persona.recorder.dump("quarantine_tags") for row in page]
    assert tags == [persona.log.hash_identifier("email", "bob@example.com")]


def test_absurd_amounts_are_quarantined_and_large_ones_do_not_break_features(persona: Persona) -> None:
    report = ingest_jsonl(persona, io.BytesIO(jsonl(order("a@example.com", "x1", "1e30"),
                                                    order("a@example.com", "x2", "0.0000001"),
                                                    *[order("a@example.com", f"ok{i}", "999999999999999.99")
                                                      for i in range(3)])), origin="f")
    assert (report.appended, report.quarantined) == (3, 2)
    assert all("below 10^15" in r["reason"] for r in describe(persona))
    pid = persona.log.profile_for("email", "a@example.com")
    assert pid is not None
    assert profile_view(persona, pid)["features"]["monetary"] == 2999999999999999.97
    assert len(persona.recorder.index_rows()) == 1


def test_an_ingest_short_of_memory_drops_cached_states_and_indexes_the_same(tmp_path: Path,
                                                                           monkeypatch: object) -> None:
    """Above PERSONA_INGEST_MEMORY_MB an ingest drops half of its cached states (read back from
    snapshots and the log when next needed): the index it leaves is the same as with memory to spare."""
    from persona.projector import Projector
    from persona.settings import Settings

    shrunk: list[int] = []
    original = Projector.shrink

    def spy(self: Projector) -> int:
        shrunk.append(original(self))
        return shrunk[-1]

    monkeypatch.setattr(Projector, "shrink", spy)  # type: ignore[attr-defined]
    data = jsonl(*(order(f"u{i % 23}@example.com", f"o{i}", f"{i % 9 + 1}.50", f"2026-05-{i % 28 + 1:02d}T10:00:00Z")
                   if i % 3 == 0 else record(f"u{i % 23}@example.com", event_id=f"e{i}") for i in range(600)))
    docs = []
    for name, budget in (("roomy", "100000"), ("short", "1")):
        env = {"PERSONA_BATCH_SIZE": "60", "PERSONA_INGEST_MEMORY_MB": budget}
        persona = Persona.init(Settings.load(tmp_path / name, env=env))
        report = ingest_jsonl(persona, lines(data), origin="f", now=NOW)
        assert report.appended == 600
        docs.append(sorted(row[2] for row in persona.recorder.index_rows()))
        persona.close()
        assert bool(shrunk) == (name == "short")  # 1 MB: dropped at the first batch, not at every one after
    assert len(docs[0]) == 23 and docs[0] == docs[1]
    assert 1 <= len(shrunk) < 10


def test_a_quarantines_origin_names_no_phone_number_or_email_but_keeps_dates(persona: Persona) -> None:
    for origin, shown in (("export-+447700900125.jsonl", "export-<phone>.jsonl"),
                          ("calls-447700900125.csv", "calls-<phone>.csv"),
                          ("orders of ann@example.com", "orders of <email>"),
                          ("orders-2026-01-31.csv", "orders-2026-01-31.csv")):
        assert Quarantine(persona, origin, clock=lambda: NOW).origin == shown
