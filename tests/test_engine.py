"""Batch work on a Dask cluster (persona.engine): a scheduler and two worker processes on loopback,
started as a deployment starts them (`dask scheduler`, `dask worker --memory-limit 0`).

Rebuild, training and batch scoring there give what the local path gives; a worker is handed
only its part's keys and holds nothing afterwards; a cluster that could leak keys (plain TCP to
another machine, a worker that spills to disk) is refused; a tampered chunk read there fails the
run as it fails here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.engine import Dask, Local, Part, StoreAddress, check_scheduler, open_engine, parts, running_on
from persona.erasure import erase_profile
from persona.errors import ConfigurationError, EngineError, TamperError
from persona.identity import everyone
from persona.ingest import ingest_jsonl
from persona.models import scoring
from persona.models.dataset import histories, histories_on
from persona.models.tasks import parse_task
from persona.models.train import train
from persona.projections import ATTRIBUTES
from persona.projector import Current, _aad, rebuild, snapshot_rows
from persona.testing import planted
from persona.testing.cluster import local_cluster
from tests.conftest import pg_schema
from tests.test_tamper import attacker

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = 500
MERGED = 40  # of them also browse under a cookie they later log in from: two streams, one person


def cluster(tmp: Path, *, workers: int = 2, memory_limit: str = "0", work_stealing: bool = False) -> Any:
    """A scheduler and worker processes on 127.0.0.1, as `dask` starts them: its address. The
    workers import persona, and this module's probes (from the repository's root)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return local_cluster(tmp, {**os.environ, "PYTHONPATH": path}, workers=workers, memory_limit=memory_limit,
                         work_stealing=work_stealing)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with cluster(tmp_path_factory.mktemp("cluster")) as address:
        yield address


def worker_holdings(address: str) -> list[tuple[int, int]]:
    """What each worker holds, once what it was told to forget is forgotten (a message away, up
    to 10 s): (tasks it knows, results it keeps)."""
    import distributed

    with distributed.Client(address, timeout=30) as client:
        deadline = time.monotonic() + 10
        while True:
            held = list(client.run(lambda dask_worker: (len(dask_worker.state.tasks), len(dask_worker.data)))
                        .values())
            if not any(tasks or data for tasks, data in held) or time.monotonic() > deadline:
                return held
            time.sleep(0.1)


def population(tmp: Path, *, seed: int) -> list[bytes]:
    """Planted shoppers, MERGED of whom also browsed under a cookie and then logged in from it."""
    events = tmp / "planted.jsonl"
    planted.write(events, PEOPLE, seed=seed)
    lines = events.read_bytes().splitlines()
    for n in range(MERGED):
        cookie = {"namespace": "cookie", "value": f"ck-{n}"}
        for k in range(3):
            lines.append(orjson.dumps({"event_id": f"ck{n}-{k}", "source": "web", "type": "page_viewed",
                                       "occurred_at": f"2025-03-0{k + 1}T10:00:00Z", "subject": cookie,
                                       "data": {"url": f"https://shop.example/p/{k}", "category": "books"}}))
        lines.append(orjson.dumps({"event_id": f"ck{n}-login", "source": "web", "type": "identity_linked",
                                   "occurred_at": "2025-03-05T10:00:00Z", "subject": cookie,
                                   "data": {"other": {"namespace": "shop_user", "value": f"m-{n:06d}"}}}))
    return lines


@contextmanager
def store(tmp: Path, kind: str, *, seed: int = 5) -> Iterator[Persona]:
    @contextmanager
    def settings() -> Iterator[Settings]:
        if kind == "sqlite":
            yield Settings.load(tmp / "data", env={})
        else:
            with pg_schema() as url:
                yield Settings.load(tmp / "data", env={"PERSONA_DATABASE_URL": url})

    with settings() as where, Persona.init(where) as p:
        report = ingest_jsonl(p, population(tmp, seed=seed), origin="planted")
        assert report.quarantined == 0
        yield p


def read_models(p: Persona) -> tuple[list[Any], dict[tuple[str, str], tuple[int, int, bytes]]]:
    """The profile index, and every snapshot opened (their ciphertexts differ by nonce)."""
    rec = p.recorder
    ids = sorted(rec.stream_ids())
    heads = rec.heads(ids)
    index = [row[:3] for row in rec.index_rows()]
    opened = {}
    for pid, found in rec.snapshots_of_many(ids).items():
        sealer = p.log.sealer(pid, heads[pid])
        for name, (pv, sv, sealed) in found.items():
            opened[(pid, name)] = (pv, sv, sealer.open(sealed, _aad(pid, name, pv, sv)))
    return index, opened


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_rebuild_on_a_two_worker_cluster_makes_what_the_local_rebuild_makes(
        tmp_path: Path, kind: str, scheduler: str) -> None:
    with store(tmp_path, kind) as p:
        assert len(everyone(p.recorder)) == PEOPLE  # the cookies joined their shoppers
        assert rebuild(p, workers=2) == PEOPLE
        local = read_models(p)
        assert len(local[0]) == PEOPLE and len(local[1]) == 2 * (PEOPLE + MERGED)
        with running_on(open_engine("dask", scheduler=scheduler)):
            assert rebuild(p, chunk=37) == PEOPLE  # parts of 37 people: a merged person is never split
        assert read_models(p) == local
        # one projection rebuilt from the start on the cluster, the other from its snapshots: first its
        # snapshots replaced by sealed, valid, wrong ones (empty, at the head), which it must not start from
        rec = p.recorder
        heads = rec.heads(rec.stream_ids())
        with rec.transaction():
            rec.put_snapshots([row for pid, head in heads.items() for row in snapshot_rows(
                [ATTRIBUTES], Current(pid, head.version, {ATTRIBUTES.name: ATTRIBUTES.initial()}, {ATTRIBUTES.name: 0}),
                p.log.sealer(pid, head), None)])
        assert read_models(p) != local
        with running_on(open_engine("dask", scheduler=scheduler)):
            assert rebuild(p, projection="attributes", chunk=100) == PEOPLE
        assert read_models(p) == local
    assert worker_holdings(scheduler) == [(0, 0), (0, 0)]  # no task, argument or result left behind


def test_training_and_scoring_on_the_cluster_give_the_local_models_metrics_and_predictions(
        tmp_path: Path, scheduler: str) -> None:
    with store(tmp_path, "sqlite", seed=9) as p:
        task = parse_task("purchases_next_91d")
        local = train(p, task)
        engine = Dask(scheduler)
        try:  # every history, read a part at a time there, is the one read here in one pass, in its order
            assert list(histories_on(p, engine).items()) == list(histories(p).items())
        finally:
            engine.close()
        with running_on(open_engine("dask", scheduler=scheduler)):
            remote = train(p, task)
        assert remote.metrics == local.metrics and remote.baselines == local.baselines
        assert (remote.chosen, remote.features, remote.fingerprint, remote.rows, remote.bgnbd) == (
            local.chosen, local.features, local.fingerprint, local.rows, local.bgnbd)
        from persona.models import registry

        registry.save(p, local, promote=True)
        moment = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
        here = scoring.predict(p, task.name, as_of=moment)
        with running_on(open_engine("dask", scheduler=scheduler)):
            there = scoring.predict(p, task.name, as_of=moment)
            written = scoring.score_many(p, [task.name])  # the read model's rows, from parts read there
        assert there == here and len(here) > PEOPLE // 2
        assert written == {task.name: PEOPLE}
    assert worker_holdings(scheduler) == [(0, 0), (0, 0)]


def keys_of_part(where: StoreAddress, part: Part) -> tuple[list[list[str]], list[str], int]:
    """On a worker: the part's people, the streams it was given keys for, and the process."""
    return part.people, sorted(part.keys), os.getpid()


def test_a_worker_is_given_the_keys_of_its_part_and_no_other(tmp_path: Path, scheduler: str) -> None:
    with store(tmp_path, "sqlite") as p:
        people = everyone(p.recorder)
        engine = Dask(scheduler)
        try:
            seen = list(engine.map(keys_of_part, ((StoreAddress.of(p), part) for part in parts(p, people, 60))))
        finally:
            engine.close()
        given: list[str] = []
        for part_people, keys, _ in seen:
            assert keys == sorted(m for members in part_people for m in members)  # its streams' keys, each
            given += keys
        assert sorted(given) == sorted(p.recorder.stream_ids())  # every stream once, in one part only
        assert len({pid for *_, pid in seen}) == 2  # both workers had parts
        assert [part_people for part_people, *_ in seen] == [people[i:i + 60] for i in range(0, PEOPLE, 60)]


def test_what_a_failed_task_would_log_names_no_key_no_id_and_no_password(tmp_path: Path) -> None:
    part = Part([["prf_aaaaaaaaaaaaaaaaaaaaaaaa", "prf_bbbbbbbbbbbbbbbbbbbbbbbb"]],
                {"prf_aaaaaaaaaaaaaaaaaaaaaaaa": b"\x01" * 32, "prf_bbbbbbbbbbbbbbbbbbbbbbbb": b"\x02" * 32})
    assert repr(part) == "Part(1 people, 2 keys)"
    where = StoreAddress("postgresql://persona:s3cret@db.internal/persona?password=other", tmp_path)
    assert "s3cret" not in repr(where) and "other" not in repr(where) and "db.internal" in repr(where)


def test_a_person_erased_after_their_part_was_made_is_left_out_there(tmp_path: Path) -> None:
    with store(tmp_path, "sqlite") as p:
        people = everyone(p.recorder)[:5]
        (part,) = parts(p, people, 5)
        erase_profile(p, people[0][0])
        with part.opened(StoreAddress.of(p)) as (_, heads, sealers):
            assert set(heads) == {m for members in people for m in members}
            assert set(sealers) == {m for members in people[1:] for m in members}


def test_a_worker_whose_store_is_not_the_commands_refuses_its_part(tmp_path: Path) -> None:
    """A URL naming localhost names each worker's own database; a SQLite path, a file that may not
    be there: a part is refused, never folded as if its people had been erased."""
    with store(tmp_path / "one", "sqlite") as p:
        (part,) = parts(p, everyone(p.recorder)[:5], 5)
    with Persona.init(Settings.load(tmp_path / "other", env={})) as other, \
            pytest.raises(ConfigurationError, match="lacks streams of its part"), part.opened(StoreAddress.of(other)):
        pass
    with pytest.raises(ConfigurationError, match="no SQLite store at"), \
            part.opened(StoreAddress(None, tmp_path / "elsewhere" / "persona.db")):
        pass


def test_a_tampered_chunk_fails_the_rebuild_on_the_cluster_and_the_old_index_stays(
        tmp_path: Path, scheduler: str) -> None:
    with store(tmp_path, "sqlite") as p:
        rebuild(p, workers=1)
        before = read_models(p)
        with attacker(p.settings.db_path) as conn:
            (a, pa), (b, pb) = conn.execute("SELECT position, payload FROM chunks ORDER BY position DESC LIMIT 2")
            conn.execute("UPDATE chunks SET payload = ? WHERE position = ?", (pb, a))
            conn.execute("UPDATE chunks SET payload = ? WHERE position = ?", (pa, b))
        with pytest.raises(TamperError), running_on(open_engine("dask", scheduler=scheduler)):
            rebuild(p)
        assert read_models(p) == before
    assert worker_holdings(scheduler) == [(0, 0), (0, 0)]


def test_a_worker_that_could_spill_task_data_to_disk_is_refused(tmp_path: Path) -> None:
    with store(tmp_path, "sqlite") as p, cluster(tmp_path / "spilling", workers=1, memory_limit="2GB") as address, \
            pytest.raises(ConfigurationError, match="spill"), running_on(open_engine("dask", scheduler=address)):
        rebuild(p)


def test_a_scheduler_that_steals_work_between_workers_is_refused(tmp_path: Path) -> None:
    """Work stealing moves a queued task to another worker: the part's keys would be in a worker
    that never processes it."""
    threads = threading.active_count()
    with cluster(tmp_path, workers=1, work_stealing=True) as address, pytest.raises(ConfigurationError,
                                                                                   match="steals work"):
        open_engine("dask", scheduler=address)
    assert threading.active_count() == threads  # the refused client's thread stopped too


def leaky(where: StoreAddress, part: Part) -> None:
    """On a worker: fail as a careless library would, with a value in its message."""
    pid, key = next(iter(part.keys.items()))
    raise ValueError(f"cannot fold {pid}: key {key.hex()}")


def test_a_part_that_fails_leaves_no_key_and_no_id_in_the_clusters_logs(tmp_path: Path, scheduler: str) -> None:
    import distributed

    with store(tmp_path, "sqlite") as p:
        (part,) = parts(p, everyone(p.recorder)[:3], 3)
        engine = Dask(scheduler)
        try:
            with pytest.raises(EngineError, match=r"a part failed on a Dask worker \(ValueError\)$"):
                list(engine.map(leaky, [(StoreAddress.of(p), part)]))
        finally:
            engine.close()
    with distributed.Client(scheduler, timeout=30) as client:
        logs = str(client.get_worker_logs()) + str(client.get_scheduler_logs())
    assert "Compute Failed" in logs or "ValueError" in logs  # the failure is in the logs...
    for pid, key in part.keys.items():  # ...but no value of the part
        assert key.hex() not in logs and pid not in logs


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "10.1.2.3:8786", "tcp://scheduler.internal:8786",
                                     "ws://127.0.0.1:8786", "inproc://x", "tcp://[::1", "tcp://127.0.0.1:port"])
def test_a_scheduler_keys_would_reach_in_clear_is_refused(address: str) -> None:
    with pytest.raises(ConfigurationError):
        check_scheduler(address)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://localhost:1", "tcp://[::1]:8786",
                                     "tls://scheduler.internal:8786"])
def test_loopback_and_tls_schedulers_are_accepted(address: str) -> None:
    check_scheduler(address)


def test_a_missing_or_silent_scheduler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ConfigurationError, match="needs a scheduler"):
        open_engine("dask")
    threads = threading.active_count()
    with pytest.raises(ConfigurationError, match="no Dask scheduler answers"):
        Dask("tcp://127.0.0.1:9", timeout=2)
    assert threading.active_count() == threads  # its client's event loop stopped: this process may fork again
    with pytest.raises(ConfigurationError, match="--workers is for --engine local"):
        open_engine("dask", scheduler="tcp://127.0.0.1:9", workers=2)
    with pytest.raises(ConfigurationError, match="no engine named"):
        open_engine("spark")
    assert isinstance(open_engine(None, workers=3), Local)


def test_the_commands_run_on_the_cluster_and_say_so_in_the_audit(tmp_path: Path, scheduler: str) -> None:
    with store(tmp_path, "sqlite") as p:
        data = p.settings.data_dir
    runner = CliRunner()
    done = runner.invoke(cli, ["--data", str(data), "rebuild", "--engine", "dask", "--scheduler", scheduler])
    assert done.exit_code == 0, done.output
    assert f"rebuilt {PEOPLE} profiles" in done.output
    audit = runner.invoke(cli, ["--data", str(data), "audit", "--json"])
    assert audit.exit_code == 0, audit.output
    (entry,) = [e for e in map(orjson.loads, audit.output.splitlines()) if e["operation"] == "rebuild"]
    assert entry["detail"]["engine"] == "dask" and entry["outcome"] == "ok"
    alone = runner.invoke(cli, ["--data", str(data), "rebuild", "--scheduler", scheduler])
    assert alone.exit_code == 1 and "--scheduler goes with --engine dask" in alone.output
    who = tmp_path / "who.txt"
    who.write_text("shop_user:m-000001\n")
    few = runner.invoke(cli, ["--data", str(data), "predict", "churn_91d", "--subjects", str(who),
                              "--engine", "dask", "--scheduler", scheduler])
    assert few.exit_code == 2 and "--subjects scores a few people here" in few.output
