"""RFM scores: every buyer ranked 1–5 on recency, frequency and monetary value against the
whole population, kept in a read model beside the profile index (which this module reads)."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Mapping

import orjson

from persona import memberships
from persona.core import Persona
from persona.events import text_micros
from persona.projections import FEATURES

RFM_EVERY_S = 5.0  # the server and `follow --refresh` score RFM again at most this often after a change


def index_rows(persona: Persona, after: str = "", page: int = 500
               ) -> Iterator[tuple[str, int, str, int | None, int | None, int | None]]:
    """The index in id order, read a page at a time: a first page costs one page."""
    while True:
        rows = persona.recorder.index_rows(after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def quintile_scores(values: Mapping[str, float], *, higher_is_better: bool = True) -> dict[str, int]:
    """1–5 by quintile of the population, by mid-rank: equal values always share a score,
    a larger value never scores lower, and with distinct values the ends score 1 and 5."""
    ordered = sorted(values.values())
    n = len(ordered)
    scores = {}
    for key, value in values.items():
        below = bisect.bisect_left(ordered, value)
        equal = bisect.bisect_right(ordered, value) - below
        score = min(5, 1 + int(5 * (below + equal / 2) / n))
        scores[key] = score if higher_is_better else 6 - score
    return scores


def compute_rfm(persona: Persona) -> int:
    """Score every buyer 1–5 on recency, frequency and monetary value against the whole
    population, and store the scores (done by `persona rebuild`, after `persona ingest`, and by
    RfmSchedule's owners). Returns how many were scored.

    Recency ranks the last order's instant, which orders buyers as recency_days does at any
    instant: the scores move with orders, never with the clock. Only the scores that changed
    are written (each written row is tagged: a full rewrite of 100,000 costs more than the read)."""
    bought: dict[str, tuple[int, float, float]] = {}
    for profile_id, _, doc, *_ in index_rows(persona):
        features = orjson.loads(doc).get(FEATURES.name, {})
        if features.get("frequency"):
            bought[profile_id] = (text_micros(features["last_order_at"]), features["frequency"], features["monetary"])
    r = quintile_scores({pid: facts[0] for pid, facts in bought.items()})
    f = quintile_scores({pid: facts[1] for pid, facts in bought.items()})
    m = quintile_scores({pid: facts[2] for pid, facts in bought.items()})
    with persona.recorder.transaction():
        old = persona.recorder.rfm_scores()
        rows = [(pid, r[pid], f[pid], m[pid]) for pid in bought
                if old.get(pid) != {"r": r[pid], "f": f[pid], "m": m[pid]}]
        persona.recorder.change_rfm(rows, [pid for pid in old if pid not in bought])
    return len(bought)


def score(persona: Persona) -> int:
    """compute_rfm, then a sweep of the live segments that read the scores (persona.memberships):
    for a command line; a server sweeps on a thread of its own."""
    scored = compute_rfm(persona)
    memberships.after_scoring(persona)
    return scored


class RfmSchedule:
    """When to score RFM again for a process that sees changes arrive one after another (the
    server, `follow --refresh`): after a change, at most every `every` seconds. A pass reads the
    whole index (docs/benchmarks.md has its cost), so it is coalesced rather than made per write;
    the scores are at most `every` seconds (plus a pass) behind the log."""

    def __init__(self, every: float = RFM_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._scored = -math.inf
        self.pending = False

    def changed(self) -> None:
        self.pending = True

    def due(self) -> bool:
        return self.pending and self._clock() - self._scored >= self.every

    def scoring(self) -> None:
        """A pass is starting: what changes from now on waits for the next one."""
        self.pending = False
        self._scored = self._clock()
