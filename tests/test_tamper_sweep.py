"""Every single-byte change to a SQLite store is caught by `persona verify`, or changes nothing a
reader sees.

A small sample store is built with the CLI (people from two sources, a merge, an erasure, a
quarantined record, an API token, audit entries, rebuilt snapshots and RFM scores; no model,
whose training needs far more people than a sample has), closed, and rewritten with small pages (so
that a few hundred offsets reach every kind of page). Then, for each offset in a seeded sample
(every byte with PERSONA_HARDEN=long), one byte of a copy is flipped and `persona verify` runs
on it, in this process: either it reports a problem (a non-zero exit and one clear line, never a
traceback), or a full dump of what readers see — every table's rows, the schema, every
profile's events opened, the quarantined records opened — is the original's.

Nothing is skipped in the long mode: the sample file is vacuumed, so it has no free pages, and
a byte of unused space inside a page can only ever count as unchanged.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.ingest.quarantine import open_quarantined
from persona.store.base import TABLES
from tests import hardening as h
from tests.hardening import tally

pytestmark = pytest.mark.sqlite_only

LONG = os.environ.get("PERSONA_HARDEN") == "long"
SAMPLE = 400  # offsets in the CI run
SEED = 20261205
PAGE_SIZE = 512  # the sample is rewritten with small pages: more pages (and page kinds) per offset
PEOPLE = ("ann.lee@example.com", "bob.stone@example.org", "cy.nakamura@example.net", "dan.ruiz@example.com")


def _record(email: str, kind: str, data: dict[str, Any], event_id: str, source: str, day: int) -> bytes:
    return orjson.dumps({
        "event_id": event_id, "source": source, "type": kind, "occurred_at": f"2026-05-{day:02d}T10:00:00+00:00",
        "subject": {"namespace": "email", "value": email}, "data": data,
    })


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data directory (closed, its database rewritten with PAGE_SIZE pages)."""
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    _run("--data", str(data), "init")
    web = [_record(p, "page_viewed", {"url": f"https://shop.example/p/{i}"}, f"w-{n}-{i}", "web", 1 + i)
           for n, p in enumerate(PEOPLE) for i in range(n + 1)]
    web.append(b"{not json at all")  # quarantined, no subject
    web.append(_record(PEOPLE[0], "order_placed", {"order_id": "o-x", "amount": -5, "currency": "USD"}, "w-bad",
                       "web", 9))  # quarantined, tagged with its subject
    (root / "web.jsonl").write_bytes(b"\n".join(web) + b"\n")
    shop = [_record(p, "order_placed", {"order_id": f"o-{n}", "amount": 10 + n, "currency": "USD"}, f"s-{n}",
                    "web", 10 + n) for n, p in enumerate(PEOPLE[:3])]
    (root / "shop.jsonl").write_bytes(b"\n".join(shop) + b"\n")
    _run("--data", str(data), "ingest", str(root / "web.jsonl"))
    _run("--data", str(data), "ingest", str(root / "shop.jsonl"))
    _run("--data", str(data), "link", "email:" + PEOPLE[0], "email:" + PEOPLE[1])  # a merge
    _run("--data", str(data), "erase", "--subject", "email:" + PEOPLE[3])
    _run("--data", str(data), "tokens", "create", "--name", "reader", "--scopes", "profiles:read")
    _run("--data", str(data), "profile", "--subject", "email:" + PEOPLE[2])  # an audit entry
    _run("--data", str(data), "rebuild")  # sealed snapshots and RFM scores too
    db = Settings.load(data, env={}).db_path
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    assert _verify(data)[0] == 0
    return data


def _verify(data: Path) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, ["--data", str(data), "verify"])
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.output, crash


def _dump(data: Path) -> Any:
    """Everything a reader sees: the schema, every table's rows, every profile's events and every
    quarantined record opened (a read that fails is part of what it sees)."""
    settings = Settings.load(data, env={})
    out: dict[str, Any] = {}
    with closing(sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)) as conn:
        out["schema"] = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name").fetchall()
    with Persona.open(settings) as persona:
        rec = persona.recorder
        for table in TABLES:  # less the entry each run of verify adds to the audit log (its own)
            out[table] = sorted(r for page in rec.dump(table) for r in map(repr, page) if "'local:verify'" not in r)
        for sid in sorted(rec.stream_ids()):
            try:
                out["log " + sid] = [repr(e) for e in persona.log.read(sid)]
            except Exception as e:
                out["log " + sid] = type(e).__name__
        for q in rec.quarantined():
            try:
                out[f"quarantined {q.id}"] = open_quarantined(persona, q.id)
            except Exception as e:
                out[f"quarantined {q.id}"] = type(e).__name__
    return out


def _pages(db: Path) -> dict[int, str]:
    """Which table or index each page belongs to (for the report of what escaped)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {pageno: name for name, pageno in conn.execute("SELECT name, pageno FROM dbstat")}


@dataclass
class Outcome:
    offset: int
    kind: str  # detected, unchanged, missed, crashed
    where: str
    note: str = ""


def _flip(sample: Path, work: Path, original: Any, offset: int, where: str) -> Outcome:
    db_name = Settings.load(sample, env={}).db_path.name
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(sample, work)
    db = work / db_name
    raw = bytearray(db.read_bytes())
    raw[offset] ^= 0xFF
    db.write_bytes(bytes(raw))
    code, output, crash = _verify(work)
    if crash is not None:
        return Outcome(offset, "crashed", where, f"{type(crash).__name__}")
    if code != 0:
        message = output.strip().splitlines()[-1] if output.strip() else ""
        assert "Traceback" not in output and message, output
        for person in PEOPLE:  # messages never carry personal data
            assert person.split("@")[0] not in output
        return Outcome(offset, "detected", where, message[:100])
    try:
        seen = _dump(work)
    except Exception as e:
        return Outcome(offset, "missed", where, f"reader fails: {type(e).__name__}")
    if seen == original:
        return Outcome(offset, "unchanged", where)
    changed = sorted(k for k in set(seen) | set(original) if seen.get(k) != original.get(k))
    return Outcome(offset, "missed", where, "differs: " + ", ".join(changed[:3]))


def test_every_flipped_byte_is_caught_or_changes_nothing(sample: Path, tmp_path: Path) -> None:
    db = Settings.load(sample, env={}).db_path
    size = db.stat().st_size
    pages = _pages(db)
    offsets = range(size) if LONG else sorted(random.Random(SEED).sample(range(size), min(SAMPLE, size)))
    original = _dump(sample)
    outcomes = []
    for offset in offsets:
        page = offset // PAGE_SIZE + 1
        outcomes.append(_flip(sample, tmp_path / "work", original, offset, pages.get(page, "?")))
    counts: Counter[str] = Counter(o.kind for o in outcomes)
    tally(h.TAMPER_FLIPS, len(outcomes))
    tally(h.TAMPER_CAUGHT, counts["detected"])
    tally(h.TAMPER_UNCHANGED, counts["unchanged"])
    tally(h.TAMPER_MISSED, counts["missed"] + counts["crashed"])
    if LONG:  # every byte, or scripts/harden says how many were left out
        tally(h.TAMPER_SKIPPED, size - len(outcomes))
    bad = [o for o in outcomes if o.kind in ("missed", "crashed")]
    by_table = Counter((o.kind, o.where) for o in bad)
    summary = f"{dict(counts)}; escaped by table: {dict(by_table)}"
    examples = "\n".join(f"  offset {o.offset} ({o.where}): {o.kind} {o.note}" for o in bad[:40])
    assert not bad, summary + "\n" + examples


def test_rows_tagged_rightly_but_naming_no_stream_or_an_erased_one_are_found(sample: Path, tmp_path: Path) -> None:
    """What tags cannot say (they bind a row's content, not its company): a key for a stream
    that is not there, identity links left to an erased profile. Forged here with the tag key."""
    work = tmp_path / "data"
    shutil.copytree(sample, work)
    settings = Settings.load(work, env={})
    with Persona.open(settings) as persona:
        tagger = persona.recorder.tagger
        assert tagger is not None
        erased = next(iter(dict(persona.recorder.tombstones())))
    cases = {
        "do not exist": ("keys", ("prf_nobody", 1, b"\0" * 40)),
        "erased profile": ("links", (b"\1" * 32, erased, "email", 1)),
    }
    for why, (table, values) in cases.items():
        copy = tmp_path / why.replace(" ", "_")
        shutil.copytree(work, copy)
        with closing(sqlite3.connect(Settings.load(copy, env={}).db_path, isolation_level=None)) as conn:
            marks = ",".join("?" * (len(values) + 1))  # constant shapes: the test's own rows
            conn.execute(f"INSERT INTO {table} ({', '.join(TABLES[table])}) VALUES ({marks})",
                         (*values, tagger(table, values)))
        code, output, crash = _verify(copy)
        assert crash is None and code == 2 and why in output, output


def test_a_tag_binds_the_table_each_value_and_its_type() -> None:
    from persona.integrity import Tagger

    tag = Tagger(b"k" * 32)
    one = tag("links", (b"ab", "c", 1, None))
    assert len(one) == 16 and tag.matches("links", (b"ab", "c", 1, None), one)
    for table, values in [("keys", (b"ab", "c", 1, None)), ("links", (b"a", "bc", 1, None)),
                          ("links", (b"ab", "c", "1", None)), ("links", (b"ab", "c", 1.0, None)),
                          ("links", (b"ab", "c", 1, "")), ("links", ("ab", "c", 1, None))]:
        assert not tag.matches(table, values, one), (table, values)
    assert not Tagger(b"K" * 32).matches("links", (b"ab", "c", 1, None), one)  # another store's key
    assert not tag.matches("links", (b"ab", "c", 1, None), None)  # untagged
