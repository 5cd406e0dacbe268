"""Ctrl+C or SIGTERM in the middle of a file ingest: a real `persona ingest` process on a file
big enough to be mid-run, and a real signal. What was read is committed and indexed, the report
says so and how to resume, and running the same command again appends exactly the rest. Without
a terminal, a long ingest says how far it has got in a line to stderr every so often."""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import orjson
import pytest

from persona import Persona, Settings
from persona.ingest import IngestReport, ingest_file
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.verify import verify
from tests.conftest import pg_schema, record
from tests.test_audit import entries
from tests.test_crash import alive, children, stored

LINES, PER_PERSON, BATCH = 30_000, 20, 1000  # 1,500 people, each on 20 consecutive lines
PROGRESS = re.compile(r"ingesting big\.jsonl: (\d+)% \((\d+\.\d) MiB of (\d+\.\d) MiB\), ([\d,]+) records read,"
                      r" ([\d,]+) records/s")


def _threads() -> list[str]:
    """This process's threads but the main one: an ingest forks its reader only when there are none."""
    return [t.name for t in threading.enumerate() if t is not threading.main_thread()]


def big_file(tmp_path: Path, lines: int = LINES) -> Path:
    source = tmp_path / "big.jsonl"
    with source.open("wb") as f:
        for i in range(lines):
            f.write(orjson.dumps(record(f"p{i // PER_PERSON}@example.com", event_id=f"k{i}")) + b"\n")
    return source


def fresh(tmp_path: Path, database_url: str | None = None) -> tuple[Settings, dict[str, str]]:
    settings = Settings.load(tmp_path / "data", env={"PERSONA_DATABASE_URL": database_url or ""})
    Persona.init(settings).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    env |= {"PERSONA_DATABASE_URL": database_url} if database_url else {}
    return settings, {**env, "PERSONA_BATCH_SIZE": str(BATCH), "PERSONA_PROGRESS_S": "0.1"}


def committed(settings: Settings) -> int:
    """Events in the store, read without opening it as persona does (nothing waits on this)."""
    if settings.database_url is None:
        return stored(settings.db_path)
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        found = conn.execute("SELECT count(*) FROM event_keys").fetchone()
    return int(found[0]) if found else 0


def persona(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "persona", "--data", str(settings.data_dir), *args]


def run(settings: Settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(persona(settings, *args), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def interrupted(settings: Settings, env: dict[str, str], source: Path, stop: signal.Signals, *, group: bool,
                json: bool = False) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """`persona ingest SOURCE`, sent `stop` once it has committed a few batches and said how far it
    got (to its whole process group, as a terminal's Ctrl+C is, or to it alone, as `kill` does);
    the finished process and the reader processes it had."""
    out, err = settings.data_dir.parent / "out", settings.data_dir.parent / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(persona(settings, "ingest", str(source), *(["--json"] if json else [])), env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + 300
    seen: set[int] = set()  # every reader seen while it ran (one may be done reading before the signal)
    while proc.poll() is None and not (committed(settings) >= 3 * BATCH and PROGRESS.search(err.read_text())):
        assert time.monotonic() < deadline, "the ingest never got going"
        seen.update(children(proc.pid))
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be interrupted"
    readers = sorted(seen | set(children(proc.pid)))
    if group:
        os.killpg(proc.pid, stop)
    else:
        proc.send_signal(stop)
    proc.wait(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text()), readers


def assert_no_reader_left(readers: list[int]) -> None:
    gone = time.monotonic() + 30
    while any(alive(pid) for pid in readers):
        assert time.monotonic() < gone, "the reading process outlived the interrupted ingest"
        time.sleep(0.05)


def assert_listed(settings: Settings, env: dict[str, str], events: int) -> None:
    """`persona profiles` and `persona stats` show every person of the first `events` lines, each
    indexed with all of their events, and `persona verify` passes on exactly that many events."""
    people = math.ceil(events / PER_PERSON)
    listed = [orjson.loads(line) for line in run(settings, env, "profiles", "--json", "--first", "10000")
              .stdout.splitlines()]
    assert len(listed) == people
    assert sum(row["version"] for row in listed) == events  # no index row lags its log
    assert sum(row["features"]["page_views"] for row in listed) == events
    assert sum(group["count"] for group in orjson.loads(run(settings, env, "stats", "--json").stdout)) == people
    assert run(settings, env, "verify").stdout.startswith(f"ok: {events} events in {people} streams verified")


def assert_indexed(settings: Settings, events: int) -> None:
    """The same, read through the library (each command takes seconds to start on a busy machine)."""
    with Persona.open(settings) as p:
        rows = p.recorder.index_rows()
        assert len(rows) == math.ceil(events / PER_PERSON)
        assert sum(row[1] for row in rows) == events
        assert p.recorder.lagging_persons() == []
        assert verify(p).events == events


def assert_rerun_appends_the_rest(settings: Settings, env: dict[str, str], source: Path, before: int) -> None:
    again = orjson.loads(run(settings, env, "ingest", str(source), "--json").stdout)
    assert (again["appended"], again["duplicates"], again["interrupted"]) == (LINES - before, before, False)
    assert committed(settings) == LINES  # what a clean run stores: nothing twice, nothing missing
    assert_indexed(settings, LINES)


def test_ctrl_c_mid_file_commits_and_indexes_what_was_read_reports_it_and_a_rerun_appends_the_rest(
        tmp_path: Path) -> None:
    source = big_file(tmp_path)
    settings, env = fresh(tmp_path)
    done, readers = interrupted(settings, env, source, signal.SIGINT, group=True)  # Ctrl+C in a terminal
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "example.com" not in done.stderr + done.stdout
    counts = re.search(r"big\.jsonl: (\d+) input lines read → (\d+) events appended, 0 duplicate events skipped",
                       done.stdout)
    assert counts, done.stdout
    lines, appended = int(counts[1]), int(counts[2])
    assert f"interrupted (Ctrl+C or SIGTERM) after input line {lines}: what was read is committed" in done.stdout
    assert "run the same command again to append the rest" in done.stdout
    assert 3 * BATCH <= appended == lines < LINES  # stopped mid-file: every line read is in the log
    assert stored(settings.db_path) == appended
    # (on SQLite; on PostgreSQL its pool has threads)
    assert readers, f"the file was not read in a second process (threads: {_threads()})"
    assert_no_reader_left(readers)
    assert_listed(settings, env, appended)
    [run_entry] = [e for e in entries(settings) if e.writer == "local:ingest" and "appended" in e.detail]
    assert (run_entry.outcome, run_entry.detail["appended"]) == ("INTERRUPTED", appended)
    assert_rerun_appends_the_rest(settings, env, source, appended)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_sigterm_mid_file_reports_as_json_exits_143_and_a_rerun_appends_the_rest(tmp_path: Path, store: str) -> None:
    with pg_schema() if store == "postgresql" else nullcontext(None) as url:
        sigterm_mid_file(tmp_path, url)


def sigterm_mid_file(tmp_path: Path, database_url: str | None) -> None:
    source = big_file(tmp_path)
    settings, env = fresh(tmp_path, database_url)
    done, readers = interrupted(settings, env, source, signal.SIGTERM, group=False, json=True)  # `kill PID`
    assert done.returncode == 143, done.stderr
    report = orjson.loads(done.stdout)
    assert report["interrupted"] is True
    assert 3 * BATCH <= report["appended"] == report["lines"] == committed(settings) < LINES
    assert_no_reader_left(readers)
    assert_indexed(settings, report["appended"])
    assert_rerun_appends_the_rest(settings, env, source, report["appended"])


def test_a_second_signal_stops_at_once_and_loses_nothing_committed(tmp_path: Path) -> None:
    """SIGINT, then SIGTERM before the ingest has wound down (a different signal: two SIGINTs sent
    together arrive as one): it stops without indexing, says so in one line, and the next run
    appends the rest and indexes everything."""
    source = big_file(tmp_path)
    settings, env = fresh(tmp_path)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(persona(settings, "ingest", str(source)), env=env, stdout=stdout, stderr=stderr,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and stored(settings.db_path) < 3 * BATCH:
        assert time.monotonic() < deadline, "the ingest never got going"
        time.sleep(0.02)
    readers = children(proc.pid)
    assert proc.poll() is None, "the ingest finished before it could be interrupted"
    assert readers, f"the file was not read in a second process (threads: {_threads()})"
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    # the status of the signal handled first: SIGINT's as a rule, SIGTERM's when the kernel hands that
    # one to the process first (both go to the group at once; a loaded machine did so once)
    assert proc.returncode in (130, 143), err.read_text()
    assert "stopped at once by a second signal" in err.read_text() and "Traceback" not in err.read_text()
    assert out.read_text() == ""  # no report: it would say the index is current, and it may not be
    assert_no_reader_left(readers)
    kept = stored(settings.db_path)
    with Persona.open(settings) as p:
        assert verify(p).events == kept
    assert "INTERRUPTED" in [e.outcome for e in entries(settings) if e.writer == "local:ingest"]
    assert_rerun_appends_the_rest(settings, env, source, kept)


def test_a_stopped_ingest_ends_at_a_whole_record_committed_indexed_and_its_reader_gone(persona: Persona,
                                                                                       tmp_path: Path) -> None:
    """The library's side, with no timing in it: `stop` is set while the 700th order (three rows,
    one per item) is handled, by the progress callback in the ingesting process, as a signal
    handler would. The ingest ends at that order: every order read is in the log whole, every
    person of them indexed, the reader process gone; ingesting the file again appends the rest."""
    orders, stop_at = 2_000, 700
    source = tmp_path / "orders.csv"
    with source.open("w") as f:
        f.write("order_id,email,created_at,total,sku,category,qty,price\n")
        for n in range(orders):
            f.write("".join(f"o{n},c{n // 4}@example.com,2025-03-05 10:00:00,60,S{k},books,1,20\n" for k in range(3)))
    stop = threading.Event()
    handled = 0
    readers: list[multiprocessing.process.BaseProcess] = []  # the file's reader, when it has its own process

    def progress(size: int) -> None:
        nonlocal handled
        handled += 1
        if handled == stop_at:
            readers.extend(multiprocessing.active_children())
            stop.set()

    def ingest() -> IngestReport:
        with source.open("rb") as handle:
            records = mapped_records(builtin_mapping("shop"), handle, name=source.name)
            return ingest_file(persona, records, origin=source.name, progress=progress, parallel=True,
                               catch_up=True, stop=stop)

    report = ingest()
    assert readers, f"the file was not read in a second process (threads: {_threads()})"
    assert multiprocessing.active_children() == []  # the reader is gone
    first_line = 2 + 3 * (stop_at - 1)  # of the last order taken (a record's line is where it starts)
    assert (report.interrupted, report.lines, report.appended) == (True, first_line, stop_at)
    assert f"interrupted (Ctrl+C or SIGTERM) after input line {first_line}:" in report.summary()
    placed = [e for e in persona.log.iter_all() if e.type == "order_placed"]
    assert sorted(e.data["order_id"] for e in placed) == sorted(f"o{n}" for n in range(stop_at))
    assert {len(e.data["items"]) for e in placed} == {3}  # no order split
    assert persona.recorder.lagging_persons() == []
    assert len(persona.recorder.index_rows()) == stop_at // 4
    stop.clear()
    rest = ingest()
    assert (rest.interrupted, rest.appended, rest.duplicates) == (False, orders - stop_at, stop_at)
    assert len(persona.recorder.index_rows()) == orders // 4


def test_without_a_terminal_a_file_ingest_prints_progress_lines_never_one_per_record(tmp_path: Path) -> None:
    source = big_file(tmp_path, 20_000)
    settings, env = fresh(tmp_path)
    began = time.monotonic()
    done = run(settings, env, "ingest", str(source))  # stderr is a pipe: no progress bar
    took = time.monotonic() - began
    shown = [PROGRESS.fullmatch(line) for line in done.stderr.splitlines()]
    assert shown and all(shown), done.stderr  # progress lines, and nothing else
    records = [int(m[4].replace(",", "")) for m in shown if m]
    assert records == sorted(set(records)) and records[-1] <= 20_000
    assert len(shown) <= took / 0.1 + 1  # at most one line every PERSONA_PROGRESS_S, however fast records come
    assert all(m[3] == f"{source.stat().st_size / (1 << 20):.1f}" for m in shown if m)
    quiet = run(settings, {**env, "PERSONA_PROGRESS_S": "3600"}, "ingest", str(source))
    assert quiet.stderr == "" and "20000 input lines read" in quiet.stdout
    # rebuild reports each part of 200 people it writes, when the interval is shorter than a part takes
    rebuilt = run(settings, {**env, "PERSONA_PROGRESS_S": "0.000001"}, "rebuild").stderr.splitlines()
    found = [re.fullmatch(r"rebuilding: \d+% \(([\d,]+) of 1,000 profiles\), [\d,]+ profiles/s", line)
             for line in rebuilt]
    assert [m[1] if m else line for m, line in zip(found, rebuilt, strict=True)] == ["200", "400", "600", "800",
                                                                                     "1,000"]
    refused = subprocess.run(persona(settings, "ingest", str(source)), env={**env, "PERSONA_PROGRESS_S": "soon"},
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "PERSONA_PROGRESS_S must be a positive number of seconds" in refused.stderr
    assert "Traceback" not in refused.stderr
