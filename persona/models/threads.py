"""Training and scoring run their native thread pools (OpenMP in gradient boosting, BLAS) on
one thread, and keep the cyclic garbage collector off what they read and build.

Left alone, those pools start one thread per core and spin-wait for each other. When anything
else shares the machine — a server's requests, an ingest, another training — the spinning
threads fight it and a run collapses: training `next_category` on 1,500 people took 278 s with
the default pools on a loaded 2-core machine and 27 s on one thread (identical model and
metrics; docs/models.md). One thread costs little on an idle machine and never collapses.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _pools() -> Any:
    from threadpoolctl import ThreadpoolController  # once scikit-learn and NumPy have loaded theirs

    return ThreadpoolController()


def one_thread(func: F) -> F:
    """Run `func` with every native thread pool of the process held to one thread."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _pools().limit(limits=1):
            return func(*args, **kwargs)

    return run  # type: ignore[return-value]


def settle() -> None:
    """What the process holds now will live until the batch ends (every history read, every row
    built): the cyclic collector stops looking at it. Each of its passes over millions of facts
    cost more than the work it interrupted (reading 100,000 people: 31 s with it, 19 s without).
    Objects settled are still freed when the last reference goes; `batch` hands them back to the
    collector when it ends."""
    gc.freeze()


def batch(func: F) -> F:
    """Run `func` as a batch that may `settle` what it made: at the end of the outermost batch,
    whatever was settled goes back to the collector (unless the process had settled objects
    before it began, as a server does at start: then they all stay so)."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        global _depth
        outermost = _depth == 0
        # counted once, when the heap is small: gc.get_freeze_count walks every settled object
        owner = outermost and gc.get_freeze_count() == 0
        _depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            _depth -= 1
            if owner:
                gc.unfreeze()

    return run  # type: ignore[return-value]


_depth = 0  # batches running in this process (nested: a batch calling another)
