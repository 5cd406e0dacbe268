"""A Dask cluster on this machine, started as a deployment starts one (docs/scale.md): a
`dask scheduler` that steals no work and `dask worker` processes on 127.0.0.1, each worker one
process of one thread with no memory limit (so nothing it holds can spill to disk). For the tests and
scripts/bench-engines.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson


@contextmanager
def local_cluster(where: Path, env: Mapping[str, str], *, workers: int = 2, memory_limit: str = "0",
                  work_stealing: bool = False) -> Iterator[str]:
    """A scheduler and `workers` worker processes, their files under `where`, in environment `env`
    (the caller's, as a rule): the scheduler's address, once every worker has joined. The scheduler
    steals no work unless told to (persona.engine refuses one that does). Everything is stopped on leaving."""
    import distributed

    where.mkdir(parents=True, exist_ok=True)
    file = where / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    env = {**env, "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": str(work_stealing)}
    quiet = {"env": env, "cwd": where, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # (with no dashboard, each still serves its health and metrics over HTTP: on loopback too)
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file)],
                              **quiet)]  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip().endswith("}"):
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.1)
        address = str(orjson.loads(file.read_bytes())["address"])
        for n in range(workers):
            procs.append(subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--memory-limit", memory_limit,
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1",
                 "--local-directory", str(where / f"worker{n}")], **quiet))  # type: ignore[call-overload]
        connect: Any = distributed.Client  # (untyped)
        with connect(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
