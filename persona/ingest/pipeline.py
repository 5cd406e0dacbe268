"""A file ingest on two cores: reading, mapping and validating in a forked process while the
ingesting process appends, encrypts and keeps projections current.

The child only reads the source and checks records; it never touches the database (it
inherits the open connection through fork and must not use or close it: it leaves with
`os._exit`, which runs no finalisers). Validated items come back in chunks, in file order,
through a bounded queue, so memory stays bounded and a record's events still go in whole or
not at all — the ingesting process alone decides what is committed, as before. If the
ingesting process is killed, the child notices its parent is gone and stops.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from persona.errors import PersonaError
from persona.ingest.jsonl import Item

CHUNK = 1024  # items per message: pickling many small objects at once is what keeps this cheap
DEPTH = 8  # chunks in flight at most
DONE = "done"


class ReaderError(PersonaError):
    """The reading process failed in a way that has no persona error of its own."""


def pipelined(produce: Callable[[], Iterable[Item | None]]) -> Iterator[Item]:
    """The items `produce()` makes, made in a child process (fork: `produce` is not pickled)."""
    context = multiprocessing.get_context("fork")
    channel: Any = context.Queue(maxsize=DEPTH)
    child = context.Process(target=_produce, args=(produce, channel, os.getpid()), name="persona-reader",
                            daemon=True)
    child.start()
    try:
        while True:
            try:
                message = channel.get(timeout=1.0)
            except queue.Empty:
                if not child.is_alive():
                    raise ReaderError(f"the reading process ended unexpectedly (exit code {child.exitcode})") \
                        from None
                continue
            if message == DONE:
                return
            if isinstance(message, tuple):  # ("error", exception)
                raise message[1]
            yield from message
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=5)
        channel.close()


def _produce(produce: Callable[[], Iterable[Item | None]], channel: Any, parent: int) -> None:
    """In the child: make the items and send them in chunks; a failure is sent as it is when it
    is one of persona's (their messages never carry personal data), else by its class only."""
    chunk: list[Item] = []
    try:
        for item in produce():
            if item is None:
                continue  # a file has no pauses
            chunk.append(item)
            if len(chunk) >= CHUNK:
                _send(channel, chunk, parent)
                chunk = []
        if chunk:
            _send(channel, chunk, parent)
        _send(channel, DONE, parent)
    except BaseException as e:
        failure = e if isinstance(e, PersonaError | OSError) else ReaderError(
            f"reading the source failed ({type(e).__name__})")
        try:
            if chunk:  # what was read before the failure is kept, as in one process
                _send(channel, chunk, parent)
            _send(channel, ("error", failure), parent)
        except BaseException:
            _send(channel, ("error", ReaderError(f"reading the source failed ({type(e).__name__})")), parent)
    finally:
        channel.close()
        channel.join_thread()  # everything sent is flushed to the pipe before the process ends


def _send(channel: Any, message: Any, parent: int) -> None:
    while True:
        try:
            channel.put(message, timeout=1.0)
            return
        except queue.Full:
            if os.getppid() != parent:  # the ingesting process died: nobody will read this
                os._exit(1)
