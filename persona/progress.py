"""Long work watched from outside: Ctrl+C and SIGTERM ask it to stop at a safe point, and
without a terminal it says how far it has got in a line to stderr every so often.

Neither ever shows a record or an identifier: only names of files, sizes, counts and rates.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

MiB = 1 << 20


class Interruption(threading.Event):
    """Set by the first SIGINT or SIGTERM; `signum` says which one (0 until then)."""

    signum = 0

    @property
    def exit_status(self) -> int:
        """What a shell expects of a command ended by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


@contextmanager
def stopped_by_signals() -> Iterator[Interruption]:
    """While inside, Ctrl+C (SIGINT) and SIGTERM set the event yielded: the work stops at its next
    safe point, keeps what it has done and says so. A second signal raises KeyboardInterrupt at
    once. The handlers there were before are put back on leaving. Only the main thread can
    handle signals: elsewhere (a test calling the command from a thread) the event is never set."""
    stop = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    previous = {signum: signal.signal(signum, ask_to_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ProgressLines:
    """A progress callback (called with the amount done since the last call: bytes of a file read,
    profiles rebuilt) that writes a line every `every_s` seconds, as `describe(done, calls, seconds)`
    words it: for stderr that is not a terminal (a log, a CI job), where a redrawn bar is noise.
    Never a line per call, however fast the work goes."""

    def __init__(self, every_s: float, write: Callable[[str], None],
                 describe: Callable[[int, int, float], str]) -> None:
        self.every_s, self.write, self.describe = every_s, write, describe
        self.started = time.monotonic()
        self.due = self.started + every_s
        self.done = 0
        self.calls = 0

    def __call__(self, amount: int) -> None:
        self.done += amount
        self.calls += 1
        now = time.monotonic()
        if now >= self.due:
            self.due = now + self.every_s
            self.write(self.describe(self.done, self.calls, now - self.started))


def reading(name: str, size: int) -> Callable[[int, int, float], str]:
    """Lines of a file read record by record: "ingesting orders.csv: 41% (12.3 MiB of 30.0 MiB),
    120,000 records read, 9,800 records/s"."""

    def describe(done: int, records: int, seconds: float) -> str:
        where = f"{min(done / size, 1.0):.0%} ({done / MiB:.1f} MiB of {size / MiB:.1f} MiB)" if size else (
            f"{done / MiB:.1f} MiB")  # a pipe has no size
        return (f"ingesting {name}: {where}, {records:,} records read,"
                f" {records / seconds if seconds > 0 else 0:,.0f} records/s")

    return describe


def counting(label: str, total: int, unit: str) -> Callable[[int, int, float], str]:
    """Lines of work counted in units: "rebuilding: 41% (4,100 of 10,000 profiles), 850 profiles/s"."""

    def describe(done: int, calls: int, seconds: float) -> str:
        share = min(done / total, 1.0) if total else 1.0
        return (f"{label}: {share:.0%} ({done:,} of {total:,} {unit}),"
                f" {done / seconds if seconds > 0 else 0:,.0f} {unit}/s")

    return describe
