"""Where batch work runs: this machine's processes (the default), or a Dask cluster.

`persona rebuild`, `persona train` and `persona predict` split the people into parts and hand
each part to a worker, which reads and folds those people's streams and hands back what it made
(index rows and sealed snapshots; histories; feature rows). A person's streams are always in the
same part, and profile ids are random, so slicing the people in id order is a hash partition of
the store by stream (docs/scale.md, "Batch work on a distributed engine").

What a worker gets is a `Part`: the people, and the data keys of their streams, unwrapped by the
process that holds the key file. It never gets the key file, the master key, the pepper or
another part's keys, and it keeps nothing once the part is done: it opens the store's database
(`StoreAddress`: a URL or a SQLite file, no secret of persona's), reads, and closes it. On Dask,
parts go out a few at a time (so the keys in the cluster are those of the parts in hand), every
result is released once taken, and a worker that could spill task data to disk is refused.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from persona.crypto import Sealer
from persona.errors import ConfigurationError, EngineError, PersonaError, StoreError
from persona.store import open_recorder
from persona.store.base import Head, Recorder

if TYPE_CHECKING:
    from persona.core import Persona

R = TypeVar("R")
ENGINES = ("local", "dask")
IN_FLIGHT = 2  # parts handed to each of a cluster's task slots at a time: one running, one waiting


@dataclass(frozen=True)
class StoreAddress:
    """Where a worker reads the store: PostgreSQL's URL, or the SQLite file. Never a key."""

    database_url: str | None
    db_path: Path

    @classmethod
    def of(cls, persona: Persona) -> StoreAddress:
        return cls(persona.settings.database_url, persona.settings.db_path)

    def __repr__(self) -> str:  # a task's arguments end up in a cluster's logs when it fails
        from persona.store.postgres_pool import without_password  # psycopg loads only when used

        return f"StoreAddress({without_password(self.database_url)[0] if self.database_url else self.db_path})"


@dataclass(frozen=True)
class Part:
    """A part of the people (each their streams, the first naming them) and their streams' data
    keys, unwrapped: with the store's address, all a worker is given."""

    people: list[list[str]]
    keys: dict[str, bytes] = field(repr=False)

    def __repr__(self) -> str:  # never the keys, nor the ids: a failed task's arguments are logged
        return f"Part({len(self.people)} people, {len(self.keys)} keys)"

    @property
    def streams(self) -> list[str]:
        return [member for members in self.people for member in members]

    @contextmanager
    def opened(self, where: StoreAddress) -> Iterator[tuple[Recorder, dict[str, Head], dict[str, Sealer]]]:
        """In a worker: the store, and the heads and sealers of the part's streams that are not
        erased (one erased since the part was made is left out: its key opens nothing now)."""
        if where.database_url is None and not where.db_path.exists():
            raise ConfigurationError(f"this worker has no SQLite store at {where.db_path}: a SQLite store's "
                                     "workers must run on its machine (or use PostgreSQL, docs/scale.md)")
        rec = open_recorder(where)
        try:
            heads = rec.heads(self.streams)
            if len(heads) < len(self.streams):  # (an erased stream keeps its row: only another store lacks one)
                raise ConfigurationError("this worker's store lacks streams of its part: its database is not the "
                                         "command's (a URL naming localhost names each worker's own)")
            yield rec, heads, {pid: Sealer(self.keys[pid]) for pid, head in heads.items()
                               if head.wrapped is not None and pid in self.keys}
        finally:
            rec.close()


def parts(persona: Persona, people: Sequence[Sequence[str]], size: int) -> Iterator[Part]:
    """The people in parts of `size`, each with its streams' data keys: unwrapped as each part
    is asked for, so that only the parts handed out so far have keys out of the key file."""
    rec, log = persona.recorder, persona.log
    for i in range(0, len(people), size):
        some = [list(members) for members in people[i:i + size]]
        heads = rec.heads([member for members in some for member in members])
        yield Part(some, {pid: log.data_key(pid, head) for pid, head in heads.items() if head.wrapped is not None})


def tasks(persona: Persona, people: Sequence[Sequence[str]], size: int, *rest: Any) -> Iterator[tuple[Any, ...]]:
    """A task a part (`parts`): the store's address, the part, and `rest`."""
    where = StoreAddress.of(persona)
    return ((where, part, *rest) for part in parts(persona, people, size))


class Engine(Protocol):
    name: str

    def slots(self) -> int:
        """How many parts run at once."""
        ...

    def map(self, fn: Callable[..., R], tasks: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        """fn(*task) for each task, somewhere; the results in the tasks' order."""
        ...

    def close(self) -> None: ...


class Local:
    """This machine: spawned processes (no inherited connection or lock), or this process alone."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def slots(self) -> int:
        return self.workers

    def map(self, fn: Callable[..., R], tasks: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        tasks = list(tasks)
        if self.workers <= 1 or len(tasks) <= 1:
            yield from (fn(*task) for task in tasks)
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            yield from pool.map(fn, *zip(*tasks, strict=True))

    def close(self) -> None:
        pass


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_scheduler(address: str) -> None:
    """Refuse a scheduler that data keys would reach in clear over a network: `tcp://` only on
    this machine; anywhere else `tls://` (with dask's TLS configuration, docs/scale.md)."""
    try:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise ConfigurationError("a Dask scheduler is named tcp://HOST:PORT or tls://HOST:PORT") from None
    if parts.scheme == "tls":
        return
    if parts.scheme != "tcp":
        raise ConfigurationError(f"a Dask scheduler is named tcp://HOST:PORT or tls://HOST:PORT, not {parts.scheme}://")
    if not _loopback(parts.hostname or ""):
        raise ConfigurationError("the scheduler is on another machine over plain tcp://: data keys would cross the "
                                 "network in clear; use tls:// with dask's TLS settings (docs/scale.md)")


def _steals(dask_scheduler: Any) -> bool:
    """On the scheduler: whether it moves queued tasks between workers."""
    return "stealing" in dask_scheduler.extensions


def _version() -> str:
    """The persona installed where this runs (a scheduler and its workers unpickle persona's parts)."""
    from importlib.metadata import version

    return version("persona")


def on_worker(fn: Callable[..., R], *args: Any) -> R:
    """Run on a Dask worker: refused where the worker could spill what it holds to disk (its
    memory limit turns spilling on; start workers with `--memory-limit 0`)."""
    from distributed import get_worker

    if type(get_worker().data) is not dict:
        raise ConfigurationError("this Dask worker may spill task data to its disk; start its workers with "
                                 "`--memory-limit 0` (docs/scale.md): persona's parts carry data keys")
    try:
        return fn(*args)
    except (PersonaError, StoreError, MemoryError):  # persona's messages carry no value (persona.errors)
        raise
    except Exception as e:  # anyone else's may (a value it choked on): the worker logs it, so only its type
        raise EngineError(f"a part failed on a Dask worker ({type(e).__name__})") from None


class Dask:
    """A Dask cluster (distributed): the scheduler given, or dask's own configuration's
    (DASK_SCHEDULER_ADDRESS, or `scheduler-address` in its YAML)."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, timeout: float = 30.0) -> None:
        try:
            import dask
            import distributed
        except ImportError:
            raise ConfigurationError("--engine dask needs Dask's distributed package: "
                                     "pip install 'persona[dask]'") from None
        address = scheduler or dask.config.get("scheduler-address", None)
        if not address:
            raise ConfigurationError("--engine dask needs a scheduler: --scheduler tcp://HOST:PORT, or "
                                     "DASK_SCHEDULER_ADDRESS")
        check_scheduler(address)
        # made, then started, so that a client that fails to connect can be stopped: it marks itself
        # closed but leaves its event loop's thread running (and a process with a thread never forks,
        # which persona's parallel work, the batch scoring here among it, would do afterwards)
        client: Any = distributed.Client.__new__(distributed.Client)  # (untyped)
        try:
            client.__init__(address, timeout=timeout, set_as_default=False)
        except Exception as e:  # unreachable, or TLS asked for without Dask's TLS settings, or a bad address
            runner = getattr(client, "_loop_runner", None)  # distributed's own (no public way to stop it)
            if runner is not None:
                runner.stop()
            why = "no Dask scheduler answers at" if isinstance(e, OSError | TimeoutError) else "cannot connect to"
            raise ConfigurationError(f"{why} {address} ({type(e).__name__}; docs/scale.md)") from None
        self.client = client
        try:
            self.client.wait_for_workers(1, timeout=timeout)
            self._check_cluster()
        except TimeoutError:
            self.close()
            raise ConfigurationError(f"the Dask scheduler at {address} has no workers") from None
        except BaseException:
            self.close()
            raise

    def _check_cluster(self) -> None:
        """Refuse a cluster whose scheduler could hand a part to a worker other than the one that runs
        it (work stealing moves queued tasks), whose workers it reaches in clear over a network, or where
        persona is missing or another version (they unpickle its parts)."""
        try:
            steals = self.client.run_on_scheduler(_steals)
            found = {self.client.run_on_scheduler(_version), *self.client.run(_version).values()}
        except Exception as e:  # (the check itself is persona's: it does not unpickle where persona is missing)
            raise ConfigurationError(f"persona's check does not run on the Dask cluster ({type(e).__name__}): the "
                                     "scheduler and every worker need persona installed (docs/scale.md)") from None
        if found != {_version()}:
            raise ConfigurationError(f"the Dask cluster runs persona {', '.join(sorted(found))}, this is "
                                     f"{_version()}: install the same version on the scheduler and every worker")
        if steals:
            raise ConfigurationError("the Dask scheduler steals work between workers: a part's keys would reach "
                                     "workers that do not process it; start it with work stealing off "
                                     "(DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False, docs/scale.md)")
        for worker in self.client.scheduler_info(n_workers=-1)["workers"]:
            try:
                check_scheduler(worker)
            except ConfigurationError:
                raise ConfigurationError("a Dask worker is reached over plain tcp:// from another machine: parts' "
                                         "keys would cross the network in clear; use tls:// (docs/scale.md)") from None

    def slots(self) -> int:
        return max(1, int(sum(self.client.nthreads().values())))

    def map(self, fn: Callable[..., R], tasks: Iterable[tuple[Any, ...]]) -> Iterator[R]:
        self._check_cluster()  # workers may have joined since
        batch = uuid.uuid4().hex[:12]
        window = IN_FLIGHT * self.slots()
        pending: deque[Any] = deque()
        try:
            for n, task in enumerate(tasks):
                pending.append(self.client.submit(on_worker, fn, *task, pure=False,
                                                  key=f"persona-{fn.__name__}-{batch}-{n}"))
                while len(pending) >= window:
                    yield self._take(pending.popleft())
            while pending:
                yield self._take(pending.popleft())
        finally:
            for future in pending:  # stopped early (an error): nothing of ours is left running
                future.cancel()
                future.release()

    @staticmethod
    def _take(future: Any) -> Any:
        try:
            return future.result()
        except (PersonaError, StoreError, MemoryError):  # the part's own failure (a tampered chunk), as raised there
            raise
        except Exception as e:  # the cluster's (a worker lost, the scheduler gone), or a bug's: said without values
            if isinstance(e, ModuleNotFoundError) or "deserializ" in str(e).lower():
                raise EngineError("the Dask cluster could not unpickle a part: the scheduler and every worker need "
                                  "persona installed, at this version (docs/scale.md)") from None
            said = f": {str(e)[:200]}" if type(e).__module__.startswith("distributed") else ""
            raise EngineError(f"the Dask cluster failed a part ({type(e).__name__}{said})") from None
        finally:
            future.release()  # the worker forgets the task, its arguments and its result

    def close(self) -> None:
        self.client.close()


_ACTIVE: ContextVar[Engine | None] = ContextVar("persona_engine", default=None)


def active() -> Engine | None:
    """The engine batch work runs on here (`running_on`); None: this machine, as each batch decides."""
    return _ACTIVE.get()


@contextmanager
def running_on(engine: Engine) -> Iterator[Engine]:
    """Run the batch work started inside (a rebuild, a training's read of every history, a batch
    scoring's rows) on `engine`, and close it at the end."""
    token = _ACTIVE.set(engine)
    try:
        yield engine
    finally:
        _ACTIVE.reset(token)
        engine.close()


def open_engine(name: str | None = None, *, scheduler: str | None = None, workers: int | None = None) -> Engine:
    """The engine `--engine` names (local by default)."""
    if name in (None, "local"):
        if scheduler is not None:
            raise ConfigurationError("--scheduler goes with --engine dask")
        return Local(workers)
    if name == "dask":
        if workers is not None:
            raise ConfigurationError("--workers is for --engine local: a Dask cluster has the workers it was given")
        return Dask(scheduler)
    raise ConfigurationError(f"no engine named {name!r}; there are: {', '.join(ENGINES)}")
