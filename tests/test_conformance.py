"""The store's contract, run against every backend (tests/conftest.py: CONFORMANCE).

Each test here takes the `persona` or `settings` fixture and so runs once on SQLite and once
on a fresh schema of the real PostgreSQL server: a behaviour cannot exist in only one.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from persona import Persona, Settings
from persona.backup import backup, restore
from persona.crypto import Keyring
from persona.erasure import erase_subject
from persona.errors import ConcurrencyError, ConfigurationError, DuplicateEventError, KeyMismatchError, PersonaError
from persona.feed import ChangeFeed
from persona.migrate import migrate
from persona.store import open_recorder
from persona.store.base import SCHEMA_REVISION
from persona.store.copy import row_counts
from persona.verify import verify
from tests.conftest import event, store_bytes
from tests.hardening import tally

WRITERS = 8
SHARED_EMAILS = [f"shared{n}@example.com" for n in range(6)]


def test_the_database_refuses_a_second_copy_of_a_version_or_an_event(persona: Persona) -> None:
    """Optimistic concurrency, gapless versions and idempotency hold in the database itself, for a
    writer that skips persona's checks: a version taken twice, a version skipped, a chunk whose
    keys or types do not match its versions, an event id stored twice."""
    persona.log.append([event(event_id="v1"), event(event_id="v2")])
    rec = persona.recorder
    row = next(rec.scan_chains())
    assert (row.first_version, row.last_version) == (1, 2)  # one batch, one chunk
    head = next(iter(rec.heads([row.stream_id]).values()))
    def keys(n: int) -> bytes:  # n new event keys
        return b"".join(bytes([i + 1]) * 16 for i in range(n))

    for first, last, types, new in ((2, 2, "page_viewed", keys(1)),  # version 2 again
                                    (1, 3, "page_viewed page_viewed page_viewed", keys(3)),  # overlapping
                                    (4, 4, "page_viewed", keys(1)),  # version 3 skipped
                                    (3, 4, "page_viewed page_viewed", keys(1)),  # a key short
                                    (3, 4, "page_viewed", keys(2))):  # a type short
        with pytest.raises(ConcurrencyError), rec.transaction():
            rec.insert_chunks([(head.no, first, last, row.recorded_at, types, new, row.payload, row.hash)])
    with pytest.raises(DuplicateEventError), rec.transaction():
        rec.insert_chunks([(head.no, 3, 3, row.recorded_at, "page_viewed", row.keys[16:], row.payload, row.hash)])
    assert rec.counts()["events"] == 2 and verify(persona).events == 2  # every refusal rolled back whole


def test_data_version_changes_when_another_connection_commits(persona: Persona) -> None:
    rec = persona.recorder
    before = rec.data_version()
    persona.log.append([event(event_id="mine")])
    assert rec.data_version() == before  # our own commit is not news to us
    other = open_recorder(persona.settings)
    try:
        with other.transaction():
            other.set_meta("touched", "1")
    finally:
        other.close()
    assert rec.data_version() != before


def waiting_in(thread: threading.Thread, function: str, local: str) -> bool:
    """Whether `thread` is inside `function` and past the line that sets `local` (read from its
    live stack): an event the test can observe, instead of guessing a sleep long enough."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function and local in frame.f_locals:
            return True
        frame = frame.f_back
    return False


def test_the_change_feed_wakes_on_another_connections_commit(persona: Persona) -> None:
    """Long before its timeout (an hour): NOTIFY on PostgreSQL, a 50 ms poll on SQLite. The other
    connection commits only once the feed is seen waiting, past reading the newest position, so
    what ends the wait can only be the commit's wake-up."""
    persona.log.append([event(event_id="old")])
    feed = ChangeFeed(persona.recorder)
    woken: list[list[Any]] = []
    waiter = threading.Thread(target=lambda: woken.append(feed.wait(timeout=3600)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 60  # these deadlines end a hang; they measure nothing
    while not waiting_in(waiter, "wait_for_events", "newest"):
        assert waiter.is_alive() and time.monotonic() < deadline, "the feed never started waiting"
        time.sleep(0.01)
    with Persona.open(persona.settings) as other:
        other.log.append([event("bea@example.com", event_id="new1"), event(event_id="new2")])
    waiter.join(timeout=60)
    assert not waiter.is_alive() and woken, "the feed slept on: no wake-up reached it"
    rows = woken[0] + feed.wait(timeout=0.5)  # both events, whichever wake-up came first
    assert sorted(r.last_version for r in rows) == [1, 2] and len({r.stream_id for r in rows}) == 2
    assert feed.wait(timeout=0.1) == []  # nothing twice


def test_an_append_that_commits_late_is_never_skipped_by_a_follower(persona: Persona) -> None:
    """Catch-up by position never skips an event that commits late (docs/scale.md): writer A
    appends beside others and holds its transaction open while writer B appends; a follower
    reads throughout, and ends with both events, each once. (On PostgreSQL B waits for A's turn
    at the log; a design that hands out positions without ordering commits fails here: the
    follower moves past B's position while A's lower one is still uncommitted.)"""
    feed = ChangeFeed.of(persona)
    holding, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def late() -> None:
        try:
            # concurrent: an append in flight beside others (PostgreSQL: it does not keep B out)
            with Persona.open(persona.settings) as a, a.recorder.transaction(concurrent=True):
                a.log.append([event("late@example.com", event_id="late")])
                holding.set()
                release.wait(30)
        except BaseException as e:
            failures.append(e)
            holding.set()

    def early() -> None:
        try:
            with Persona.open(persona.settings) as b:
                b.log.append([event("early@example.com", event_id="early")])
        except BaseException as e:
            failures.append(e)

    writer_a = threading.Thread(target=late)
    writer_a.start()
    assert holding.wait(30)
    writer_b = threading.Thread(target=early)
    writer_b.start()
    seen = []
    until = time.monotonic() + 1.0
    while time.monotonic() < until:  # the follower reads while A's append is still open
        seen += feed.wait(timeout=0.1)
    release.set()
    writer_a.join(60)
    writer_b.join(60)
    assert not failures, failures
    until = time.monotonic() + 30
    while time.monotonic() < until and sum(ChangeFeed.events_in([r], 0) for r in seen) < 2:
        seen += feed.wait(timeout=0.2)
    late_id, early_id = (persona.log.profile_for("email", e) for e in ("late@example.com", "early@example.com"))
    assert sorted(r.stream_id for r in seen) == sorted([late_id, early_id])  # each once, neither skipped
    assert feed.position == persona.recorder.last_position() and feed.wait(timeout=0.2) == []


def _write_concurrently(settings: Settings, writer: int, ready: Any) -> int:
    """One of WRITERS processes: batches over shared people, with event ids some other writers
    send too. Returns how many events it appended."""
    appended = 0
    with Persona.open(settings) as persona:
        ready.wait(timeout=120)  # every process starts appending at once, whatever its imports took
        for batch in range(6):
            events = [event(SHARED_EMAILS[(writer + batch + n) % len(SHARED_EMAILS)], event_id=f"w{writer}-{batch}-{n}")
                      for n in range(15)]
            events += [event(SHARED_EMAILS[n % len(SHARED_EMAILS)], event_id=f"everyone-{batch}-{n}") for n in range(5)]
            appended += persona.log.append(events).appended
    return appended


@pytest.mark.slow
def test_many_writer_processes_lose_nothing_and_never_duplicate_a_version(settings: Settings) -> None:
    Persona.init(settings).close()
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(WRITERS) as pool:
        ready = manager.Barrier(WRITERS)  # one task per process: each holds its own until all are in
        appended = pool.starmap_async(_write_concurrently, [(settings, w, ready) for w in range(WRITERS)]).get(300)
    own, everyone = WRITERS * 6 * 15, 6 * 5
    assert sum(appended) == own + everyone  # each shared event appended by exactly one writer
    tally("concurrent writer processes racing on shared streams", WRITERS)
    with Persona.open(settings) as persona:
        ids = Counter(e.event_id for e in persona.log.iter_all())
        assert len(ids) == own + everyone and set(ids.values()) == {1}
        report = verify(persona)  # versions 1..n with no gap, every chain intact, every event opens
        assert report.events == own + everyone and report.streams == len(SHARED_EMAILS)
        people = {persona.log.profile_for("email", email) for email in SHARED_EMAILS}
        assert None not in people and len(people) == len(SHARED_EMAILS)  # one profile per person, never two


def test_a_retiring_rotation_makes_a_recovered_wrapped_key_useless(persona: Persona, tmp_path: Path) -> None:
    """An erased person's wrapped key survives elsewhere (a backup; on PostgreSQL also dead rows,
    WAL segments and base backups). Before the rotation it still opens their history; after
    `keys rotate --retire` it opens nothing, under any version the key file holds."""
    persona.log.append([event("gone@example.com", event_id="g1"), event(event_id="a1")])
    pid = persona.log.profile_for("email", "gone@example.com")
    assert pid is not None
    version, wrapped = next((v, bytes(w)) for p, v, w in persona.recorder.wrapped_keys() if p == pid)
    assert wrapped in store_bytes(persona)  # what an attacker copying the store's pages would hold
    old_backup = backup(persona, tmp_path / "before.db")
    erase_subject(persona, "email", "gone@example.com")
    assert persona.keyring.unwrap(pid, version, wrapped)  # the risk is real: the old copy still opens

    result = persona.rotate_keys(retire=True)
    assert result["retired"] == 1 and result["kek_version"] == version + 1
    on_disk = Keyring.read(persona.settings.key_file)
    assert set(on_disk.keks) == {version + 1}
    for ring in (persona.keyring, on_disk):
        for v in (version, *ring.keks):
            with pytest.raises(PersonaError):
                ring.unwrap(pid, v, wrapped)
    assert verify(persona).opened == 1  # the living are re-wrapped and open
    persona.close()  # a restore needs the store to itself
    with pytest.raises(KeyMismatchError, match="lacks master key version"):  # a backup from before brings no one back
        restore(persona.settings, old_backup.path)
    with Persona.open(persona.settings) as again:  # and the refused restore changed nothing
        assert verify(again).erased == 1 and again.log.profile_for("email", "gone@example.com") is None
        assert again.log.profile_for("email", "alice@example.com") is not None


def test_a_process_that_missed_a_rotation_never_wraps_under_a_retired_key(persona: Persona) -> None:
    persona.log.append([event(event_id="x1")])
    other = Persona.open(persona.settings)  # another process: its keyring read before the rotation
    try:
        other.log.append([event("b@example.com", event_id="b1")])
        assert persona.rotate_keys(retire=True)["kek_version"] == 2
        other.log.append([event("late@example.com", event_id="late")])  # a new person: a new key to wrap
        late = other.log.profile_for("email", "late@example.com")
        assert {v for p, v, _ in persona.recorder.wrapped_keys() if p == late} == {2}
    finally:
        other.close()
    with Persona.open(persona.settings) as fresh:
        assert verify(fresh).opened == 3


def test_a_retiring_rotation_refuses_keys_from_the_environment(tmp_path: Path) -> None:
    import base64
    import os

    env = {"PERSONA_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "PERSONA_PEPPER": base64.b64encode(os.urandom(32)).decode(),
           "PERSONA_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode()}
    with Persona.init(Settings.load(tmp_path / "data", env=env)) as persona, \
            pytest.raises(ConfigurationError, match="PERSONA_MASTER_KEY"):
        persona.rotate_keys(retire=True)


def test_migrate_copies_the_store_to_the_other_backend_and_back(persona: Persona, tmp_path: Path) -> None:
    """Every table, numbers kept (positions, stream numbers), ciphertext as it is: a copy to the
    other backend and back again reads the same rows as the original."""
    from tests.conftest import pg_schema

    persona.log.append([event(f"m{n}@example.com", event_id=f"m{n}") for n in range(30)])
    persona.log.append([event("m1@example.com", "identity_linked",
                              {"other": {"namespace": "phone", "value": "13800138000"}}, event_id="link")])
    erase_subject(persona, "email", "m2@example.com")
    expected = row_counts(persona.recorder)
    on_sqlite = persona.settings.database_url is None
    here = f"sqlite:{persona.settings.data_dir}" if on_sqlite else str(persona.settings.database_url)
    with pg_schema() as first, pg_schema() as second:
        there = first if on_sqlite else f"sqlite:{tmp_path / 'there'}"
        back = f"sqlite:{tmp_path / 'back'}" if on_sqlite else second
        report = migrate(persona.settings, here, there)
        assert report.rows == expected and (report.events, report.opened) == (31, 30)
        assert migrate(persona.settings, there, back).rows == expected
        copy = open_recorder(Settings.load(tmp_path / "back", env={"PERSONA_DATABASE_URL": "" if on_sqlite
                                                                   else second}))
        try:
            assert copy.read_all(0, 100) == persona.recorder.read_all(0, 100)
            assert copy.heads(copy.stream_ids()) == persona.recorder.heads(persona.recorder.stream_ids())
        finally:
            copy.close()
        with pytest.raises(ConfigurationError, match=r"not empty|already"):
            migrate(persona.settings, here, there)


def test_follow_catches_up_from_any_position_and_refreshes_what_grew(persona: Persona) -> None:
    """`persona follow`: the catch-up worker. Events appended without a refresh (as a bulk copy
    would) leave the index behind; `follow --refresh` brings it up to date, RFM scores too."""
    import orjson
    from click.testing import CliRunner

    from persona.cli import cli

    persona.log.append([event(f"f{n}@example.com", event_id=f"f{n}") for n in range(12)])
    persona.log.append([event("f1@example.com", "order_placed", {"order_id": "o1", "amount": "5", "currency": "EUR"},
                              event_id="f1-again", source="shop")])
    lagging = persona.recorder.lagging_persons()
    assert len(lagging) == 12 and persona.recorder.rfm_scores() == {}  # appended, never indexed nor scored
    data = ["--data", str(persona.settings.data_dir)]
    result = CliRunner().invoke(cli, [*data, "follow", "--after", "0", "--once", "--refresh"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    assert sum(line["events"] for line in lines) == 13 and lines[-1]["position"] == persona.recorder.last_position()
    assert {pid for line in lines for pid in line["profiles"]} == set(lagging)
    assert sum(line["refreshed"] for line in lines) >= 12 and persona.recorder.lagging_persons() == []
    assert persona.recorder.rfm_scores() == {persona.log.profile_for("email", "f1@example.com"): {"r": 3, "f": 3,
                                                                                                  "m": 3}}
    assert "f1@example.com" not in result.output  # ids only, never an identifier
    later = CliRunner().invoke(cli, [*data, "follow", "--after", str(lines[-1]["position"]), "--once"])
    assert later.exit_code == 0 and later.output == ""  # caught up: nothing twice


def test_replay_never_opens_someone_erased_elsewhere_with_a_key_it_still_holds(persona: Persona) -> None:
    """Replay keeps each stream's key between pages; an erasure by another process drops them."""
    persona.log.append([event("bob@example.com", event_id=f"b{n}") for n in range(3)] + [event(event_id="a1")])
    bob = persona.log.profile_for("email", "bob@example.com")
    assert sum(1 for e in persona.log.iter_all() if e.profile_id == bob) == 3  # bob's key is now held here
    with Persona.open(persona.settings) as other:
        erase_subject(other, "email", "bob@example.com")
    assert [e.event_id for e in persona.log.iter_all()] == ["a1"]


def _drop_token_columns(settings: Settings) -> None:
    """Make the store look as an earlier release left it: no token bindings or δ budget."""
    added = ("delta_budget", "delta_spent", "sources", "types")
    if settings.database_url:
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for column in added:
                conn.execute(f"ALTER TABLE api_tokens DROP COLUMN {column}")  # constant names
            conn.execute("DELETE FROM meta WHERE key = 'schema_revision'")
        return
    import sqlite3

    conn = sqlite3.connect(settings.db_path, isolation_level=None)
    try:
        for column in added:
            conn.execute(f"ALTER TABLE api_tokens DROP COLUMN {column}")
        conn.execute("DELETE FROM meta WHERE key = 'schema_revision'")
    finally:
        conn.close()


def test_a_store_from_an_earlier_release_gains_the_new_token_columns(settings: Settings) -> None:
    from persona.tokens import create_token, list_tokens

    with Persona.init(settings) as p:
        create_token(p, "old", frozenset({"profiles:read"}), epsilon_budget=2.0)
    _drop_token_columns(settings)
    with Persona.open(settings) as p:  # upgraded on open: the old token keeps what it had
        assert p.recorder.get_meta("schema_revision") == str(SCHEMA_REVISION)
        (old,) = list_tokens(p)
        assert (old.name, old.scopes, old.epsilon_budget) == ("old", frozenset({"profiles:read"}), 2.0)
        assert (old.delta_budget, old.sources, old.types) == (0.0, frozenset(), frozenset())
        create_token(p, "new", frozenset({"events:write"}), delta_budget=1e-6, sources=frozenset({"web", "app"}),
                     types=frozenset({"page_viewed"}))
    with Persona.open(settings) as p:  # and a second open changes nothing
        new = {t.name: t for t in list_tokens(p)}["new"]
        assert (new.delta_budget, new.sources, new.types) == (1e-6, frozenset({"app", "web"}),
                                                              frozenset({"page_viewed"}))


def test_epsilon_and_delta_are_charged_together_or_not_at_all(settings: Settings) -> None:
    """A private answer's charge: both budgets or neither, never past either, whoever races."""
    from persona.tokens import create_token, list_tokens, revoke_token

    def spent(p: Persona, name: str) -> tuple[float, float]:
        token = {t.name: t for t in list_tokens(p)}[name]
        return token.epsilon_spent, token.delta_spent

    with Persona.init(settings) as p:
        create_token(p, "dp", frozenset({"insights:read"}), epsilon_budget=1.0, delta_budget=3e-12)
        create_token(p, "race", frozenset({"insights:read"}), epsilon_budget=1.0, delta_budget=1e-11)
        rec = p.recorder

        def spend(epsilon: float, delta: float) -> tuple[float, float] | None:
            with rec.transaction():
                return rec.spend_privacy("dp", epsilon, delta)

        assert spend(0.5, 1e-12) == (pytest.approx(0.5), pytest.approx(2e-12))
        assert spend(0.6, 1e-12) is None  # ε would overdraw: δ is not charged either
        assert spend(0.1, 2.5e-12) is None  # δ would overdraw: ε is not charged either
        assert spent(p, "dp") == (0.5, pytest.approx(1e-12))
        assert spend(0.5, 2e-12) == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0, abs=1e-24))  # both, to the end
        assert spend(1e-6, 0.0) is None and spend(0.0, 1e-15) is None  # nothing is left of either
        for bad in ((-0.1, 0.0), (0.0, -1e-12), (float("nan"), 0.0), (0.0, float("nan")), (float("inf"), 0.0)):
            with pytest.raises(ValueError), rec.transaction():
                rec.spend_privacy("dp", *bad)
        assert spent(p, "dp") == (pytest.approx(1.0), pytest.approx(3e-12))
        revoke_token(p, "dp")
        assert spend(0.0, 0.0) is None  # a revoked token is charged nothing at all

    granted: list[tuple[float, float]] = []

    def racer() -> None:  # each with its own connection, as several API workers would be
        with Persona.open(settings) as mine:
            for _ in range(10):
                with mine.recorder.transaction():
                    left = mine.recorder.spend_privacy("race", 0.1, 1e-13)
                if left is not None:
                    granted.append(left)

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 10  # 40 tries, ε enough for 10 of them (δ for 100)
    with Persona.open(settings) as p:
        assert spent(p, "race") == (pytest.approx(1.0), pytest.approx(1e-12))


def _drop_row_tags(settings: Settings) -> None:
    """Make the store look as a release before row tags left it: no `tag` columns, no mark."""
    from persona.integrity import RETAGGED, TAGGED
    from persona.store.schema import COLUMNS_ADDED

    later = ("segments", "segment_members", "segment_changes",  # schema revisions 5 and 6: not there yet
             "destinations", "destination_people", "deliveries")
    statements = [f"DROP TABLE {table}" for table in later]  # constant names
    statements += [f"DROP INDEX {table}_untagged" for table in RETAGGED if table not in later]
    statements += [f"ALTER TABLE {table} DROP COLUMN tag" for table in TAGGED if table not in later]
    statements += [f"ALTER TABLE {table} DROP COLUMN {column}"  # added after the tags (revision 6)
                   for revision, table, column, _ in COLUMNS_ADDED if revision > 4]
    statements += ["DELETE FROM meta WHERE key IN ('schema_revision', 'row_tags')"]
    if settings.database_url:
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]
        return
    import sqlite3

    conn = sqlite3.connect(settings.db_path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_a_store_made_before_row_tags_adopts_them_once_and_then_checks_them(settings: Settings) -> None:
    from persona.audit import record_local
    from persona.tokens import create_token
    from tests.conftest import raw_execute

    with Persona.init(settings) as p:
        p.log.append([event("ann@example.com", event_id="a1"), event("bob@example.com", event_id="b1")])
        erase_subject(p, "email", "bob@example.com")  # a tombstone: append-only, like the audit log
        create_token(p, "old", frozenset({"profiles:read"}))
        record_local(p, "profile", "profile read")
    _drop_row_tags(settings)
    with Persona.open(settings) as p:  # the columns come back, and every row is tagged as it stands
        assert p.recorder.get_meta("row_tags") == "1"
        verify(p)
        assert p.recorder.schema_problems() == []
        # on the record, with how many rows were taken as they stood (a store made to look older
        # than it is would have its rows adopted: the audit log shows when that happened)
        *_, (_, _, writer, operation, _, _, outcome, detail) = p.recorder.audit_rows(limit=1000)
        assert (writer, operation, outcome) == ("local:open", "adopt row tags", "ok")
        assert json.loads(detail)["rows"] >= 4
    raw_execute(p, "UPDATE api_tokens SET scopes = 'profiles:read history:read'")
    with Persona.open(settings) as p, pytest.raises(PersonaError, match="table api_tokens"):
        verify(p)
