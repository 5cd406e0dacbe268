"""A file ingest on two cores: reading, mapping and validating in a forked process while the
ingesting process appends, encrypts and keeps projections current.

The child only reads the source and checks records; it never touches the database (it
inherits the open connection through fork and must not use or close it: it leaves with
`os._exit`, which runs no finalisers). Validated items come back in chunks, in file order,
pickled — only between this process and its own child over a private pipe: nothing pickled is
stored, nothing from outside is unpickled (models, which are stored, use skops) — through a
one-way pipe whose other ends are closed on both sides, so that either
process dying is seen by the other: the ingest gets end-of-file (and raises) instead of
waiting for a chunk that never comes, and an orphaned reader gets a broken pipe and stops.
The reader ignores SIGINT and SIGTERM, which a terminal's Ctrl+C or a service manager sends
to the whole process group: the ingesting process alone decides when reading ends (it may
stop at the next record and commit what was read) and ends the reader itself. A
thread of the ingesting process drains the pipe into a bounded queue, so the reader keeps
working while a batch is committed, and memory stays bounded. A record's events still go in
whole or not at all: the ingesting process alone decides what is committed, as before.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from persona.errors import PersonaError

if TYPE_CHECKING:  # the engine imports this module (when it forks): the type alone, not a cycle
    from persona.ingest.engine import Item

# polars' thread pool does not survive a fork: a reader forked from a process that had loaded
# polars reads CSV with the csv module (persona.ingest.mapping.readers), and Parquet is never
# read in a forked reader (persona.cli.ingest)
POLARS_INHERITED = False
CHUNK = 1024  # items per message: pickling many small objects at once is what keeps this cheap
DEPTH = 32  # chunks received but not yet ingested, at most
UNPICKLABLE = "record: too deeply nested to be handled"
STOPPING = {signal.SIGINT, signal.SIGTERM}  # sent to the whole process group: the ingest handles them


class ReaderError(PersonaError):
    """The reading process failed in a way that has no persona error of its own."""


def pipelined(produce: Callable[[], Iterable[Item | None]]) -> Generator[Item, None, None]:
    """The items `produce()` makes, made in a child process (fork: `produce` is not pickled)."""
    context = multiprocessing.get_context("fork")
    inbound, outbound = context.Pipe(duplex=False)
    child = context.Process(target=_produce, args=(produce, inbound, outbound), name="persona-reader", daemon=True)
    frozen = gc.get_freeze_count()
    gc.freeze()  # what exists now is the child's too: its collector leaves it (and its finalisers) alone
    try:
        with _signals_blocked():  # until the child has made them ignored (none is lost here: they wait)
            child.start()
    finally:
        if not frozen:  # a process that froze its own (the API server does) keeps it frozen
            gc.unfreeze()
    outbound.close()  # the child holds the only writing end: its death is our end-of-file
    received: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=DEPTH)
    stop = threading.Event()

    def deliver(message: bytes | BaseException) -> None:
        while not stop.is_set():  # the ingest may stop listening (it failed): then give up
            try:
                received.put(message, timeout=0.5)
                return
            except queue.Full:
                continue

    def receive() -> None:
        try:
            while not stop.is_set():
                message = inbound.recv_bytes()
                deliver(message)
                if message == b"":
                    return
        except (EOFError, OSError) as e:  # the reader died, maybe half-way through a message
            deliver(e)

    receiver = threading.Thread(target=receive, name="persona-reader-pipe", daemon=True)
    receiver.start()
    try:
        while True:
            message = received.get()
            if isinstance(message, BaseException):
                child.join(timeout=5)
                raise ReaderError(f"the reading process ended unexpectedly (exit code {child.exitcode})")
            if message == b"":
                return
            kind, body = pickle.loads(message)
            if kind == "error":
                raise body
            yield from body
    finally:
        stop.set()
        if child.is_alive():
            child.kill()  # it ignores SIGTERM; it holds nothing to finish (it never touches the database)
        child.join(timeout=5)  # dead, its end of the pipe closes: the receiver's read ends too
        receiver.join(timeout=5)
        inbound.close()


def _produce(produce: Callable[[], Iterable[Item | None]], inbound: Any, outbound: Any) -> None:
    """In the child: make the items and send them in chunks, then an empty message. A failure
    is sent as it is when it is one of persona's (their messages never carry personal data),
    else by its class only."""
    global POLARS_INHERITED
    POLARS_INHERITED = "polars" in sys.modules
    for signum in STOPPING:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING)
    inbound.close()  # only the ingest reads: when it dies, writing here fails and this stops
    chunk: list[Item] = []
    try:
        for item in produce():
            if item is None:
                continue  # a file has no pauses
            chunk.append(item)
            if len(chunk) >= CHUNK:
                _send(outbound, chunk)
                chunk = []
        if chunk:
            _send(outbound, chunk)
            chunk = []
    except (BrokenPipeError, ConnectionResetError):
        os._exit(1)  # the ingesting process is gone: nobody will read this
    except BaseException as e:  # handed to the parent, which raises it
        failure = e if isinstance(e, PersonaError | OSError) else ReaderError(
            f"reading the source failed ({type(e).__name__})")
        try:
            if chunk:  # what was read before the failure is kept, as in one process
                _send(outbound, chunk)
            outbound.send_bytes(pickle.dumps(("error", failure)))
        except BaseException:  # the parent is gone, or the failure will not pickle
            os._exit(1)
    try:
        outbound.send_bytes(b"")
    except (BrokenPipeError, ConnectionResetError):
        os._exit(1)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread (a fork's child starts so); any that came
    meanwhile is delivered on leaving, when the thread's mask is put back as it was."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _send(outbound: Any, chunk: list[Item]) -> None:
    """Pickled here, not by a background thread that could drop a chunk it fails to pickle: an
    item that will not pickle (JSON nested hundreds deep) is refused like any bad record."""
    try:
        message = pickle.dumps(("items", chunk), protocol=pickle.HIGHEST_PROTOCOL)
    except (RecursionError, pickle.PicklingError, TypeError, ValueError):
        fixed: list[Item] = []
        for item in chunk:
            try:
                pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                fixed.append(item)
            except (RecursionError, pickle.PicklingError, TypeError, ValueError):
                line, size, _, raw, _, _ = item
                fixed.append((line, size, UNPICKLABLE, raw, None, None))
        message = pickle.dumps(("items", fixed), protocol=pickle.HIGHEST_PROTOCOL)
    outbound.send_bytes(message)
