"""What the hardening suite tried, counted as it runs and printed at the end of the run
(conftest's terminal summary): inputs fuzzed, faults injected, processes killed."""

from __future__ import annotations

from collections import Counter

TRIED: Counter[str] = Counter()


def tally(what: str, n: int = 1) -> None:
    TRIED[what] += n
