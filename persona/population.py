"""Queries across profiles, answered from the profile index (a read model rebuilt from the log):
listing and filtering, and population aggregates (the RFM scores they show: persona.rfm)."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from persona.core import Persona
from persona.errors import ErasedError, UnknownProfileError
from persona.indexed import IndexedProfile, aged, computed_at, present
from persona.profiles import profile_view
from persona.projections import FEATURES
from persona.projections.profile import DEFAULT_STRATEGIES, attribute_values
from persona.rfm import index_rows
from persona.rules import Rule

__all__ = ["GROUPABLE", "LABELS", "RANGEABLE", "RFM_SEGMENT", "IndexedProfile", "ProfileFilter", "from_index",
           "indexed", "list_profiles", "past_profile", "population"]

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


@dataclass(frozen=True)
class ProfileFilter:
    lifecycle_stages: frozenset[str] = frozenset()
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # feature -> [lo, hi]
    rfm_min: Mapping[str, int] = field(default_factory=dict)  # "r" / "f" / "m" -> lowest score wanted
    attributes: Mapping[str, Any] = field(default_factory=dict)  # attribute -> value wanted
    segments: frozenset[str] = frozenset()  # every one of these wanted (see persona.segments)
    rule: Rule | None = None  # a segment rule the profile must satisfy (persona.rules)

    def accepts(self, profile: IndexedProfile) -> bool:
        if self.segments and not self.segments <= set(profile.segments):
            return False
        if self.rule is not None and not self.rule(profile.attributes, profile.features, profile.rfm):
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




def past_profile(persona: Persona, profile_id: str, moment: datetime) -> IndexedProfile | None:
    """A profile replayed to an earlier instant: its version is the number of events up to
    then, and it has no RFM scores (they rank today's population). None if nothing of the
    person had happened yet, or they are erased."""
    try:
        past = profile_view(persona, profile_id, as_of=moment)
    except (ErasedError, UnknownProfileError):
        return None
    if past["events"] == 0:
        return None
    return aged(IndexedProfile(past["id"], past["events"], attribute_values(past["attributes"]),
                               past["features"], None), moment)


def from_index(profile_id: str, version: int, doc: str, rfm: dict[str, int] | None,
               moment: datetime, persona: Persona, *, past: bool = False) -> IndexedProfile | None:
    """One index row brought to `moment` (None: erased or gone since). `past`: `moment` is a
    question about an earlier instant, not the present."""
    parsed = orjson.loads(doc)
    computed = computed_at(parsed)
    if past and computed is not None and moment < computed:
        # the index was computed after that instant and cannot be shifted backwards
        return past_profile(persona, profile_id, moment)
    return present(profile_id, version, parsed, rfm, moment)


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
