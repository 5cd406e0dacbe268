"""Population scans — insights and filtered listings, which may read every profile of the index.

They run in worker processes of their own, at a lower CPU priority, never in the server's
process: a scan is seconds of Python work, and in a thread it holds the interpreter lock
against the event loop, so that every point read waits on it. Measured at 100,000 profiles
with 10 scans running (scripts/bench-scans --baseline, 2 cores): point reads' p99 is 2.4 ms
with the scans in processes against 21.9 ms with them on two threads (1.1 ms idle), and
4.6 times as many point reads are answered meanwhile (docs/benchmarks.md).

In front of the processes, a gate: each token runs at most `per_token` scans at once and
has at most `queue_per_token` waiting; at most `queue` wait in all. Past those a scan is
refused at once with a clean error — RATE_LIMITED for a token's own excess, BUSY when the
server is full — and a scan is only handed to a process when one is free, so nothing
queues unseen behind the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from multiprocessing import get_context
from typing import Any, TypeVar

from persona.api.errors import ApiError
from persona.core import Persona
from persona.insights import Insights, exact, mechanism, private
from persona.population import IndexedProfile, ProfileFilter, indexed, list_profiles
from persona.settings import Settings

T = TypeVar("T")
NICENESS = 10  # scan processes yield the CPU to the server's own


class ScanGate:
    """Admission of scans: who may start now, who waits (in arrival order), who is refused."""

    def __init__(self, slots: int, per_token: int, queue: int, queue_per_token: int) -> None:
        self.free = slots
        self.per_token = per_token
        self.queue = queue
        self.queue_per_token = queue_per_token
        self.running: Counter[str] = Counter()
        self.waiting: deque[tuple[str, asyncio.Future[None]]] = deque()
        self.waiting_of: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def slot(self, token: str) -> AsyncIterator[None]:
        """Held while this token's scan runs; waits its turn, or raises ApiError at once."""
        await self.acquire(token)
        try:
            yield
        finally:
            self.release(token)

    async def acquire(self, token: str) -> None:
        """A slot for this token's scan (release it after): at once, after waiting, or ApiError."""
        if self.free and self.running[token] < self.per_token:
            self._start(token)
            return
        if self.waiting_of[token] >= self.queue_per_token:
            raise ApiError(f"this token already has {self.running[token]} scan(s) running and"
                           f" {self.waiting_of[token]} waiting; wait for them", "RATE_LIMITED")
        if len(self.waiting) >= self.queue:
            raise ApiError(f"the server is busy: {len(self.waiting)} scans are waiting already; try again shortly",
                           "BUSY")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((token, turn))
        self.waiting_of[token] += 1
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # the slot was handed over just before: give it back
                self.release(token)
            else:
                self.waiting.remove((token, turn))
                self._unwait(token)
            raise

    def _start(self, token: str) -> None:
        self.free -= 1
        self.running[token] += 1

    def _unwait(self, token: str) -> None:
        self.waiting_of[token] -= 1
        if not self.waiting_of[token]:
            del self.waiting_of[token]

    def release(self, token: str) -> None:
        self.free += 1
        self.running[token] -= 1
        if not self.running[token]:
            del self.running[token]
        for entry in list(self.waiting):  # the longest waiting whose token may run another
            if not self.free:
                break
            waiter, turn = entry
            if self.running[waiter] < self.per_token:
                self.waiting.remove(entry)
                self._unwait(waiter)
                self._start(waiter)
                turn.set_result(None)


# -- the processes ---------------------------------------------------------------------------
_persona: Persona | None = None


def _open(settings: Settings) -> None:
    global _persona
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    _persona = Persona.open(settings)


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    assert _persona is not None
    try:
        return fn(_persona, *args)
    finally:  # a past listing replays logs: no key outlives the job (an erasure meanwhile is not seen here)
        _persona.log.forget_cached_keys()


class ScanPool:
    """Processes with a store each, started when first needed; `run(fn, ...)` calls
    fn(persona, ...) in one of them (fn and its arguments travel by pickle)."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.processes, mp_context=get_context("spawn"),
                                                 initializer=_open, initargs=(self.settings,))
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._pool()
        try:
            return await asyncio.wrap_future(pool.submit(_call, fn, args))
        except BrokenProcessPool:  # a process died (killed, out of memory): the next scan gets new ones
            if self._executor is pool:
                self._executor = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ApiError("the scan was interrupted; try again", "UNAVAILABLE") from None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


# -- the scans (run in those processes) ----------------------------------------------------------
def insights_scan(persona: Persona, where: ProfileFilter | None, group_by: tuple[str, ...], metric: str | None,
                  k: int, bounds: tuple[float, float] | None, epsilon: float | None,
                  charged: tuple[float, float] | None) -> tuple[Insights, int]:
    """The answer, and how many profiles were read. A private answer's mechanism is built here
    again from the same question (OpenDP's measurements do not travel between processes): it
    must cost what the server charged (ε, δ), or nothing is answered."""
    scanned = 0

    def people() -> Iterator[IndexedProfile]:
        nonlocal scanned
        for profile in indexed(persona):
            scanned += 1
            if where is None or where.accepts(profile):
                yield profile

    if epsilon is None:
        answer = exact(people(), group_by=group_by, metric=metric, k=k, bounds=bounds)
    else:
        measured = mechanism(metric=metric, epsilon=epsilon, k=k, bounds=bounds)
        if (measured.epsilon, measured.delta) != charged:
            raise RuntimeError("the mechanism built for the scan is not the one charged")
        answer = private(people(), group_by=group_by, mechanism=measured)
    return answer, scanned


def listing_scan(persona: Persona, where: ProfileFilter | None, first: int, after: str | None,
                 as_of: datetime | None, rfm_scores: bool) -> list[IndexedProfile]:
    return list_profiles(persona, where, first=first, after=after, as_of=as_of, rfm_scores=rfm_scores)
