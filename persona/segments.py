"""Segments: named groups a profile belongs to, derived from its read model by fixed rules.

They are labels for targeting, recomputed whenever the profile is read, never stored:

- ``stage:<lifecycle stage>`` — new, active, at_risk, churned, … (from the behaviour features)
- ``rfm:<segment>`` — from the 1–5 RFM quintile scores (kept current by ingest and rebuild):
  champions (r≥4, f≥4), loyal (f≥4), at_risk (r≤2, f≥3), hibernating (r≤2, f≤2),
  new_customers (r≥4, f≤2), needs_attention (everyone else scored). A churned profile is
  at_risk (f≥3) or hibernating whatever its scores: r ranks recency within the population,
  the stage is absolute (no order for a year), and in a population that has mostly lapsed the
  least lapsed would otherwise be called champions. The stage is the reader's, so this holds
  however old the scores are.
- ``high_value`` — monetary quintile 5
- ``affinity:<category>`` — the profile's top category
- ``consent:<purpose>`` — consent given for a purpose (marketing, personalization, analytics)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rfm_segment(r: int, f: int, stage: str | None = None) -> str:
    if stage == "churned":  # lapsed, however recent they are next to the others
        return "at_risk" if f >= 3 else "hibernating"
    if r >= 4 and f >= 4:
        return "champions"
    if f >= 4:
        return "loyal"
    if r <= 2 and f >= 3:
        return "at_risk"
    if r <= 2:
        return "hibernating"
    if r >= 4:
        return "new_customers"
    return "needs_attention"


def segments(attributes: Mapping[str, Any], features: Mapping[str, Any],
             rfm: Mapping[str, int] | None) -> list[str]:
    out = []
    stage = features.get("lifecycle_stage")
    if isinstance(stage, str):
        out.append(f"stage:{stage}")
    if rfm:
        out.append(f"rfm:{rfm_segment(rfm['r'], rfm['f'], stage if isinstance(stage, str) else None)}")
        if rfm["m"] == 5:
            out.append("high_value")
    top = features.get("top_categories")
    if isinstance(top, list) and top:
        out.append(f"affinity:{top[0]}")
    consent = attributes.get("consent")
    if isinstance(consent, Mapping):
        out.extend(f"consent:{purpose}" for purpose, given in sorted(consent.items()) if given is True)
    return out
