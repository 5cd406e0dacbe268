"""A profile index row brought to an instant: what listings, insights and live segments read.

The index holds each person's features as of their own latest event (persona.projector,
`index_doc`); a reader brings the time-dependent ones (recency, stage, affinities; age) to the
instant of its question. Questions about an earlier instant than the row replay the log instead
(persona.population.past_profile).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from persona.projections import ATTRIBUTES, FEATURES
from persona.segments import segments


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


def computed_at(parsed: dict[str, Any]) -> datetime | None:
    """The instant a parsed index row was computed for (its person's latest event)."""
    return datetime.fromisoformat(parsed["as_of"]) if parsed["as_of"] else None


def aged(profile: IndexedProfile, moment: datetime) -> IndexedProfile:
    born = profile.attributes.get("birth_year")
    if isinstance(born, int) and not isinstance(born, bool):
        return dataclasses.replace(profile, attributes=profile.attributes | {"age": moment.year - born})
    return profile


def present(profile_id: str, version: int, parsed: dict[str, Any], rfm: dict[str, int] | None,
            moment: datetime) -> IndexedProfile:
    """A parsed index row as of `moment`, now or later than the row. Events dated a little ahead
    of the clock (ingest accepts up to a day) leave a row computed after `moment`: it is taken at
    its own instant rather than replayed on every read."""
    computed = computed_at(parsed)
    attributes, features = parsed.get(ATTRIBUTES.name, {}), parsed.get(FEATURES.name, {})
    if computed is not None and moment < computed:
        moment = computed
    elif computed is not None:
        features = FEATURES.shift(features, computed, moment)
    return aged(IndexedProfile(profile_id, version, attributes, features, rfm), moment)
