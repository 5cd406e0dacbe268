"""Training and scoring run their native thread pools (OpenMP in gradient boosting, BLAS) on
one thread.

Left alone, those pools start one thread per core and spin-wait for each other. When anything
else shares the machine — a server's requests, an ingest, another training — the spinning
threads fight it and a run collapses: training `next_category` on 1,500 people took 278 s with
the default pools on a loaded 2-core machine and 27 s on one thread (identical model and
metrics; docs/models.md). One thread costs little on an idle machine and never collapses.
"""

from __future__ import annotations

import functools
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
