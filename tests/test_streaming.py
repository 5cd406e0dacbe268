"""`persona ingest -` as a live feed: what arrives is durable and visible while the feed stays open."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from persona import Persona, Settings
from persona.ingest.quarantine import describe
from tests.conftest import record


def visible(settings: Settings, email: str) -> bool:
    """The person has a profile, and the profile index (what listings read) shows them."""
    with Persona.open(settings) as p:
        pid = p.log.profile_for("email", email)
        return pid is not None and any(row[0] == pid for row in p.recorder.index_rows())


def wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    """Poll for what the test waits for. The deadline only ends a hang: it is no measure of speed
    (a `persona` process alone can take seconds to start on a busy machine)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def wait_until_read(feed: subprocess.Popen[bytes], what: str) -> None:
    """The feed process has taken everything written to its standard input off the pipe (FIONREAD
    on the pipe's write end: the bytes still unread). What it has read is its to commit."""
    assert feed.stdin is not None
    pipe = feed.stdin.fileno()

    def unread() -> int:
        count: int = struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0" * 4))[0]
        return count

    wait_until(lambda: unread() == 0, what)


def fresh_store(tmp_path: Path) -> Settings:
    settings = Settings.load(tmp_path / "data", env={})
    Persona.init(settings).close()
    return settings


def open_feed(settings: Settings, *options: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """`persona ingest -` as a real process, its standard input the feed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    feed = subprocess.Popen([sys.executable, "-m", "persona", "--data", str(settings.data_dir), "ingest", "-",
                             *options], stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE, env=env)
    assert feed.stdin is not None
    return feed


def test_a_live_feed_is_committed_and_indexed_while_it_stays_open(tmp_path: Path) -> None:
    settings = fresh_store(tmp_path)
    feed = open_feed(settings, "--json")
    try:
        feed.stdin.write(orjson.dumps(record("first@example.com", event_id="s1")) + b"\n")
        feed.stdin.flush()
        wait_until(lambda: visible(settings, "first@example.com"), "the first record, committed and indexed")
        assert feed.poll() is None  # the feed is still open: nothing waited for its end
        feed.stdin.write(b"{not json\n" + orjson.dumps(record("second@example.com", event_id="s2")) + b"\n")
        feed.stdin.flush()
        wait_until(lambda: visible(settings, "second@example.com"), "the second record")

        def quarantined() -> bool:
            with Persona.open(settings) as p:
                return [r["reason"] for r in describe(p)] == ["record: not valid JSON"]

        wait_until(quarantined, "the bad line, in quarantine")
        assert feed.poll() is None
    finally:
        out, err = feed.communicate(timeout=30)  # closes stdin: the feed ends
    assert feed.returncode == 0, err.decode(errors="replace")
    report = orjson.loads(out)
    assert (report["appended"], report["quarantined"], report["lines"]) == (2, 1, 3)


def test_a_feed_that_never_pauses_is_still_committed_as_it_goes(tmp_path: Path) -> None:
    settings = fresh_store(tmp_path)
    feed = open_feed(settings, stdout=subprocess.DEVNULL)
    try:
        sent = 0
        deadline = time.monotonic() + 60  # ends a hang; no measure of speed
        while not visible(settings, "steady0@example.com"):  # one record every 50 ms: never a 0.2 s pause
            assert time.monotonic() < deadline, "a steady feed was never committed"
            feed.stdin.write(orjson.dumps(record(f"steady{sent}@example.com", event_id=f"t{sent}")) + b"\n")
            feed.stdin.flush()
            sent += 1
            time.sleep(0.05)
        assert feed.poll() is None
    finally:
        feed.communicate(timeout=30)
    assert feed.returncode == 0


def test_a_live_shop_feed_shows_an_order_without_waiting_for_the_next_one(tmp_path: Path) -> None:
    """Rows are grouped by order id: the last order of a quiet feed is closed after a short hold,
    not kept until the next order's first row arrives."""
    settings = fresh_store(tmp_path)
    feed = open_feed(settings, "--source", "shop", "--json")

    def items_of(email: str) -> int | None:
        with Persona.open(settings) as p:
            pid = p.log.profile_for("email", email)
            if pid is None:
                return None
            orders = [e for e in p.log.read(pid) if e.type == "order_placed"]
            return len(orders[0].data.get("items") or []) if orders else None

    try:
        feed.stdin.write(b"order_id,email,created_at,total,sku,category,qty,price\n"
                         b"A-1,live.one@example.com,2025-03-05 10:00:00,30,S1,books,1,10\n"
                         b"A-1,live.one@example.com,2025-03-05 10:00:00,30,S2,books,1,20\n")
        feed.stdin.flush()
        wait_until(lambda: items_of("live.one@example.com") == 2, "the open order, both of its item rows")
        assert feed.poll() is None
        feed.stdin.write(b"A-2,live.two@example.com,2025-03-05 11:00:00,5,S3,home,1,5\n")
        feed.stdin.flush()
        wait_until(lambda: items_of("live.two@example.com") == 1, "the next order")
    finally:
        out, err = feed.communicate(timeout=30)
    assert feed.returncode == 0, err.decode(errors="replace")
    report = orjson.loads(out)
    assert (report["appended"], report["duplicates"], report["quarantined"]) == (2, 0, 0)


def test_a_late_row_of_a_taken_order_is_quarantined_not_lost_as_a_duplicate(tmp_path: Path) -> None:
    from collections.abc import Iterator

    from persona.ingest import ingest_feed
    from persona.ingest.mapping import GROUP_HOLD_S, builtin_mapping, live_records

    settings = Settings.load(tmp_path / "data", env={})

    def taken() -> bool:
        with Persona.open(settings) as p:
            pid = p.log.profile_for("email", "late@example.com")
            return pid is not None and [len(e.data["items"]) for e in p.log.read(pid)] == [1]

    def feed() -> Iterator[bytes]:  # read by the feed's reader thread, while the ingest goes on
        yield b"order_id,email,created_at,total,sku,category,qty,price\n"
        yield b"L-1,late@example.com,2025-03-05 10:00:00,30,S1,books,1,10\n"
        # quiet for longer than GROUP_HOLD_S: the order is taken with its one row and committed
        wait_until(taken, f"the order, closed after {GROUP_HOLD_S} s of quiet and committed")
        yield b"L-1,late@example.com,2025-03-05 10:00:00,30,S2,books,1,20\n"

    with Persona.init(settings) as persona:
        report = ingest_feed(persona, live_records(builtin_mapping("shop"), feed(), name="<stdin>"), origin="<stdin>")
        assert (report.appended, report.duplicates, report.quarantined) == (1, 0, 1)
        assert [r["reason"].split(":")[0] for r in describe(persona)] == ["order_id"]


def test_ctrl_c_ends_a_live_feed_with_everything_committed_and_reported(tmp_path: Path) -> None:
    import signal

    settings = fresh_store(tmp_path)
    for stop in (signal.SIGINT, signal.SIGTERM):
        feed = open_feed(settings, "--json")
        feed.stdin.write(orjson.dumps(record(f"first{stop}@example.com", event_id=f"y{stop}")) + b"\n")
        feed.stdin.flush()
        first = f"first{stop}@example.com"
        wait_until(lambda: visible(settings, first), "the feed, started and committing")  # noqa: B023
        feed.stdin.write(orjson.dumps(record(f"last{stop}@example.com", event_id=f"z{stop}")) + b"\n")
        feed.stdin.flush()
        wait_until_read(feed, "the last record, read")  # (most likely not yet committed: that waits for a pause)
        feed.send_signal(stop)
        out, err = feed.communicate(timeout=30)
        assert feed.returncode == 0, err.decode(errors="replace")
        report = orjson.loads(out)
        assert (report["appended"], report["interrupted"]) == (2, True)
        assert visible(settings, f"last{stop}@example.com")


def test_sigterm_keeps_the_order_a_shop_feed_was_still_holding_open(tmp_path: Path) -> None:
    import signal

    settings = fresh_store(tmp_path)
    feed = open_feed(settings, "--source", "shop", "--json")
    feed.stdin.write(b"order_id,email,created_at,total,sku,category,qty,price\n"
                     b"T-1,held.one@example.com,2025-03-05 10:00:00,30,S1,books,1,10\n")
    feed.stdin.flush()
    wait_until(lambda: visible(settings, "held.one@example.com"), "the feed, started and committing")
    feed.stdin.write(b"T-2,held.two@example.com,2025-03-05 11:00:00,30,S1,books,1,10\n"
                     b"T-2,held.two@example.com,2025-03-05 11:00:00,30,S2,books,1,20\n")
    feed.stdin.flush()
    wait_until_read(feed, "both rows of T-2, read (and held open: its order might have more rows)")
    feed.send_signal(signal.SIGTERM)
    out, err = feed.communicate(timeout=30)
    assert feed.returncode == 0, err.decode(errors="replace")
    report = orjson.loads(out)
    assert (report["appended"], report["quarantined"], report["interrupted"]) == (2, 0, True)
    with Persona.open(settings) as persona:
        pid = persona.log.profile_for("email", "held.two@example.com")
        assert pid is not None
        order = next(e for e in persona.log.read(pid) if e.type == "order_placed")
        assert len(order.data["items"]) == 2


def test_a_live_feed_keeps_each_quarantined_record_from_when_it_came(tmp_path: Path) -> None:
    """A feed runs for days: what it quarantines is kept PERSONA_QUARANTINE_DAYS from its own
    arrival, not from when the feed began (which would cut its time short, or end it at once)."""
    settings = fresh_store(tmp_path)
    feed = open_feed(settings, "--json")

    def held() -> list[dict[str, Any]]:
        with Persona.open(settings) as p:
            return describe(p)

    try:
        feed.stdin.write(orjson.dumps(record("early@example.com", event_id="q1")) + b"\n")
        feed.stdin.flush()
        wait_until(lambda: visible(settings, "early@example.com"), "the feed, started and committing")
        sent = datetime.now(UTC)  # the feed began before this
        feed.stdin.write(b"{not json\n")
        feed.stdin.flush()
        wait_until(lambda: len(held()) == 1, "the bad line, in quarantine")
    finally:
        feed.communicate(timeout=60)
    assert feed.returncode == 0
    (row,) = held()
    recorded, expires = (datetime.fromisoformat(row[k]) for k in ("recorded_at", "expires_at"))
    assert recorded >= sent
    assert expires - recorded == timedelta(days=settings.quarantine_days)
