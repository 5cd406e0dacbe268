"""Queries across profiles, answered from the profile index (a read model rebuilt from the log):
listing and filtering, RFM scores, and population aggregates."""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from persona.core import Persona
from persona.errors import ErasedError, UnknownProfileError
from persona.events import text_micros
from persona.projections import ATTRIBUTES, FEATURES
from persona.projections.profile import DEFAULT_STRATEGIES, attribute_values
from persona.segments import segments

RFM_SEGMENT = "rfm_segment"  # a group name: the profile's rfm:<segment> (persona.segments), if scored
_BLANK = FEATURES.view(FEATURES.initial(), datetime(2000, 1, 1, tzinfo=UTC))
# The names a range may bound (numbers, or none yet) and a population may be grouped by (one
# value, or a list: its values together are the group; a mapping per profile groups nothing).
RANGEABLE = frozenset(name for name, value in _BLANK.items() if not isinstance(value, bool) and (
    isinstance(value, int | float) or (value is None and not name.endswith("_at")))) - {"lifecycle_stage"}
GROUPABLE = frozenset(name for name, value in _BLANK.items() if not isinstance(value, dict)) | frozenset(
    DEFAULT_STRATEGIES) | {"age", RFM_SEGMENT}
# The labels `persona profiles` prints for a feature, accepted where the feature's name goes
LABELS = {"orders": "frequency", "spent": "monetary", "stage": "lifecycle_stage"}
RFM_EVERY_S = 5.0  # the server and `follow --refresh` score RFM again at most this often after a change


@dataclass(frozen=True)
class IndexedProfile:
    id: str
    version: int
    attributes: dict[str, Any]
    features: dict[str, Any]  # brought to the query's instant: recency, stage and affinities are current
    rfm: dict[str, int] | None

    @property
    def segments(self) -> list[str]:
        return segments(self.attributes, self.features, self.rfm)


@dataclass(frozen=True)
class ProfileFilter:
    lifecycle_stages: frozenset[str] = frozenset()
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # feature -> [lo, hi]
    rfm_min: Mapping[str, int] = field(default_factory=dict)  # "r" / "f" / "m" -> lowest score wanted
    attributes: Mapping[str, Any] = field(default_factory=dict)  # attribute -> value wanted
    segments: frozenset[str] = frozenset()  # every one of these wanted (see persona.segments)

    def accepts(self, profile: IndexedProfile) -> bool:
        if self.segments and not self.segments <= set(profile.segments):
            return False
        if self.lifecycle_stages and profile.features.get("lifecycle_stage") not in self.lifecycle_stages:
            return False
        for name, (lo, hi) in self.ranges.items():
            value = profile.features.get(name)
            if not isinstance(value, int | float) or (lo is not None and value < lo) or (
                    hi is not None and value > hi):
                return False
        for key, lowest in self.rfm_min.items():
            if profile.rfm is None or profile.rfm[key] < lowest:
                return False
        return all(profile.attributes.get(k) == v for k, v in self.attributes.items())


def index_rows(persona: Persona, after: str = "", page: int = 500
               ) -> Iterator[tuple[str, int, str, int | None, int | None, int | None]]:
    """The index in id order, read a page at a time: a first page costs one page."""
    while True:
        rows = persona.recorder.index_rows(after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def past_profile(persona: Persona, profile_id: str, moment: datetime) -> IndexedProfile | None:
    """A profile replayed to an earlier instant: its version is the number of events up to
    then, and it has no RFM scores (they rank today's population). None if nothing of the
    person had happened yet, or they are erased."""
    from persona.profiles import profile_view  # profiles -> projector -> population

    try:
        past = profile_view(persona, profile_id, as_of=moment)
    except (ErasedError, UnknownProfileError):
        return None
    if past["events"] == 0:
        return None
    return _aged(IndexedProfile(past["id"], past["events"], attribute_values(past["attributes"]),
                                past["features"], None), moment)


def _aged(profile: IndexedProfile, moment: datetime) -> IndexedProfile:
    born = profile.attributes.get("birth_year")
    if isinstance(born, int) and not isinstance(born, bool):
        return dataclasses.replace(profile, attributes=profile.attributes | {"age": moment.year - born})
    return profile


def from_index(profile_id: str, version: int, doc: str, rfm: dict[str, int] | None,
               moment: datetime, persona: Persona, *, past: bool = False) -> IndexedProfile | None:
    """One index row brought to `moment` (None: erased or gone since). `past`: `moment` is a
    question about an earlier instant, not the present."""
    parsed = orjson.loads(doc)
    computed = datetime.fromisoformat(parsed["as_of"]) if parsed["as_of"] else None
    attributes, features = parsed.get(ATTRIBUTES.name, {}), parsed.get(FEATURES.name, {})
    if computed is not None and moment < computed:
        if past:  # the index was computed after that instant and cannot be shifted backwards
            return past_profile(persona, profile_id, moment)
        # the present, with events dated a little ahead of the clock (ingest accepts up to a
        # day): the index is taken at its own instant rather than replayed on every read
        moment = computed
    elif computed is not None:
        features = FEATURES.shift(features, computed, moment)
    return _aged(IndexedProfile(profile_id, version, attributes, features, rfm), moment)


def indexed(persona: Persona, *, as_of: datetime | None = None, after: str = "",
            rfm_scores: bool = True) -> Iterator[IndexedProfile]:
    """Every live profile in the index after an id, in id order, with time-dependent features
    as of `as_of`. RFM scores rank the population as of the last rebuild: `rfm_scores=False`
    leaves them out (for questions about the past)."""
    moment = as_of or datetime.now(UTC)
    for profile_id, version, doc, r, f, m in index_rows(persona, after):
        rfm = None
        if rfm_scores and r is not None and f is not None and m is not None:
            rfm = {"r": r, "f": f, "m": m}
        profile = from_index(profile_id, version, doc, rfm, moment, persona, past=as_of is not None)
        if profile is not None:
            yield profile


def list_profiles(persona: Persona, where: ProfileFilter | None = None, *, first: int = 50,
                  after: str | None = None, as_of: datetime | None = None,
                  rfm_scores: bool = True) -> list[IndexedProfile]:
    """A page of profiles matching the filter, ordered by id; `after` is the last id of the previous page."""
    out = []
    for profile in indexed(persona, as_of=as_of, after=after or "", rfm_scores=rfm_scores):
        if where is None or where.accepts(profile):
            out.append(profile)
            if len(out) >= first:
                break
    return out


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


def _hashable(value: Any) -> Any:
    """A list's values together (a tuple), a mapping's sorted items: any value can name a group."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _group_of(profile: IndexedProfile, name: str) -> Any:
    if name == RFM_SEGMENT:
        return next((label.removeprefix("rfm:") for label in profile.segments if label.startswith("rfm:")), None)
    return _hashable(profile.features.get(name, profile.attributes.get(name)))


def population(persona: Persona, *, group_by: tuple[str, ...] = ("lifecycle_stage",),
               metrics: tuple[str, ...] = ("frequency", "monetary"), as_of: datetime | None = None
               ) -> list[dict[str, Any]]:
    """Counts and means of numeric features per group (an attribute or a feature's value, or
    the RFM segment)."""
    groups: dict[tuple[Any, ...], list[IndexedProfile]] = {}
    for profile in indexed(persona, as_of=as_of):
        key = tuple(_group_of(profile, g) for g in group_by)
        groups.setdefault(key, []).append(profile)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        row: dict[str, Any] = {g: k for g, k in zip(group_by, key, strict=True)}
        row["count"] = len(members)
        for metric in metrics:
            values = [p.features[metric] for p in members if isinstance(p.features.get(metric), int | float)]
            row[f"mean_{metric}"] = round(statistics.fmean(values), 4) if values else None
        out.append(row)
    return out
