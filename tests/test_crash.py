"""A crash mid-ingest leaves whole batches or nothing: SIGKILL a real ingest process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from persona import Persona, Settings
from persona.verify import verify
from tests.conftest import record


def stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_sigkill_during_ingest_loses_no_committed_batch_and_splits_none(tmp_path: Path) -> None:
    total, batch = 60_000, 1000
    source = tmp_path / "big.jsonl"
    with source.open("wb") as f:
        for i in range(total):
            f.write(orjson.dumps(record(f"u{i % 300}@example.com", event_id=f"k{i}")) + b"\n")
    data = tmp_path / "data"
    settings = Settings.load(data, env={})
    Persona.init(settings).close()
    env = {**os.environ, "PERSONA_DATA": str(data), "PERSONA_BATCH_SIZE": str(batch)}
    exe = Path(sys.executable).with_name("persona")
    proc = subprocess.Popen([exe, "ingest", str(source)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while stored(settings.db_path) < 3 * batch and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"

    survived = stored(settings.db_path)
    assert 0 < survived < total
    assert survived % batch == 0  # whole batches or nothing
    with Persona.open(settings) as p:
        assert verify(p).events == survived
    again = subprocess.run([exe, "ingest", str(source), "--json"], env=env, capture_output=True, check=True)
    report = orjson.loads(again.stdout)
    assert (report["appended"], report["duplicates"]) == (total - survived, survived)
    assert stored(settings.db_path) == total
