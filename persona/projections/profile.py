"""Profile attributes fused from the claims of many sources, each value with its provenance.

A claim is (value, source, event id, occurred_at, writer, vouched). Each attribute declares
how its claims are fused:

  latest      the claim that happened last (ties broken by event id)
  precedence  the most trusted source's latest claim (trust order configured, e.g. crm > shop)
  weighted    the weighted mean of each source's latest numeric claim (weights per source)
  union       every distinct value, each with the first claim that made it

A source's rank and weight are earned, not claimed: only a claim whose writer vouched for its
source (a token bound to it, or the operator) has them (docs/design.md, invariant 8). Any other claim
ranks below every source in `precedence`; in `latest` (and consent) it loses to any vouched
claim, however much newer; in `weighted` it is held under its writer rather than the source it
names and counts only while no vouched claim exists: it fills a gap, it never overrides.

Every rule is a selection by a total order or an exact merge, so conflicting claims are
resolved the same way whatever order they arrive in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import orjson

from persona.events import DATA_SPECS, RecordedEvent

Strategy = Literal["latest", "precedence", "weighted", "union"]
# value, source, event id, occurred_at (UTC, fixed width: sorts as time), writer, vouched (its writer vouched
# for its source: see persona.events.Writer)
Claim = tuple[Any, str, str, str, str, bool]

DEFAULT_STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "gender": "precedence",
    "birth_year": "weighted",
    "region": "latest",
    "city": "latest",
    "country": "latest",
    "language": "latest",
    "languages": "union",
    "signup_at": "precedence",
})
DEFAULT_TRUST = ("crm", "shop", "app", "web", "social")
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({"crm": 4.0, "shop": 2.0, "app": 1.5, "web": 1.0,
                                                         "social": 0.5})
CONSENT_PURPOSES = ("analytics", "marketing", "personalization")
CLAIMABLE = frozenset(DATA_SPECS["profile_updated"])  # the fields docs/events.md defines for profile_updated


@dataclass(frozen=True)
class FusionPolicy:
    """How claims are fused. The defaults trust a CRM over a shop over social media."""

    trust: tuple[str, ...] = DEFAULT_TRUST  # most trusted first; other sources rank after these
    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    default_weight: float = 1.0
    strategies: Mapping[str, Strategy] = field(default_factory=lambda: DEFAULT_STRATEGIES)

    def rank(self, source: str) -> int:
        try:
            return self.trust.index(source)
        except ValueError:
            return len(self.trust)

    def claim_rank(self, claim: Claim) -> int:
        """Its source's rank if its writer vouched for the source; else below every source."""
        return self.rank(claim[1]) if claim[5] else len(self.trust) + 1

    def weight(self, source: str) -> float:
        return float(self.weights.get(source, self.default_weight))


def _order(claim: Claim) -> tuple[str, str]:
    return claim[3], claim[2]  # when it happened, then the event id: a total order


def _later(old: Claim | None, new: Claim) -> Claim:
    return new if old is None or _order(new) > _order(old) else old


def _trusted_order(claim: Claim) -> tuple[bool, str, str]:
    return claim[5], claim[3], claim[2]  # any vouched claim first, then the latest: still a total order


def _latest(old: Claim | None, new: Claim) -> Claim:
    """The latest claim, an unvouched one only while no vouched claim is held (it fills a gap)."""
    return new if old is None or _trusted_order(new) > _trusted_order(old) else old


def _earlier(old: Claim | None, new: Claim) -> Claim:
    return new if old is None or _order(new) < _order(old) else old


# state: {"attributes": {name: selection}, "consent": {purpose: claim}}
#   latest / earliest / precedence -> Claim
#   weighted -> {slot: Claim}: a vouched claim's slot is its source, any other's UNVOUCHED + its writer
#   union -> {value: Claim}
State = dict[str, dict[str, Any]]
UNVOUCHED = "?"  # no source name starts with it (persona.events.valid_source)


def _slot(claim: Claim) -> str:
    return claim[1] if claim[5] else UNVOUCHED + claim[4]


class ProfileAttributes:
    """Who the person is, as the sources claim it: gender, age, location, language, signup, consent."""

    name = "attributes"
    # 2: claims carry their writer; a source's rank and weight need its writer's vouching.
    # 3: an unvouched claim never displaces a vouched one in `latest` attributes and consent
    version = 3

    def __init__(self, policy: FusionPolicy | None = None) -> None:
        self.policy = policy or FusionPolicy()

    def initial(self) -> State:
        return {"attributes": {}, "consent": {}}

    def apply(self, state: State, event: RecordedEvent) -> State:
        if event.type == "profile_updated":
            for name, value in event.data.items():
                if name not in CLAIMABLE:
                    continue  # extra fields a source sent along are kept in the log, not fused
                if name == "age":  # an age is a claim about the birth year, in the year it was made
                    self._claim(state, "birth_year", int(event.occurred_at[:4]) - int(value), event)
                elif name in self.policy.strategies:
                    self._claim(state, name, value, event)
                    if name == "language" and "languages" in self.policy.strategies:
                        self._claim(state, "languages", value, event)
        elif event.type == "consent_changed":
            purpose = event.data["purpose"]
            claim: Claim = (bool(event.data["granted"]), event.source, event.event_id, event.occurred_at,
                            event.writer, event.vouched)
            state["consent"][purpose] = _latest(state["consent"].get(purpose), claim)
        return state

    def _claim(self, state: State, name: str, value: Any, event: RecordedEvent) -> None:
        self._hold(state, name, (value, event.source, event.event_id, event.occurred_at, event.writer,
                                 event.vouched))

    def _hold(self, state: State, name: str, claim: Claim) -> None:
        strategy = self.policy.strategies.get(name)
        if strategy is None:
            return
        value = claim[0]
        held = state["attributes"]
        current = held.get(name)
        if strategy == "latest":
            held[name] = _latest(current, claim)
        elif strategy == "precedence":
            if current is None or self._precedes(claim, current):
                held[name] = claim
        elif strategy == "weighted":
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_slot = held.setdefault(name, {})
                slot = _slot(claim)
                by_slot[slot] = _later(by_slot.get(slot), claim)
        elif strategy == "union":
            values = held.setdefault(name, {})
            key = _hashable(value)
            values[key] = _earlier(values.get(key), claim)

    def combine(self, states: list[State]) -> State:
        """The state of several streams' events together (a merged person): every claim held
        is offered again under the same rules, so the result is what one fold of all their
        events gives. The inputs are left as they were."""
        out = self.initial()
        for state in states:
            for name, held in state["attributes"].items():
                for claim in (held.values() if isinstance(held, dict) else (held,)):
                    self._hold(out, name, claim)
            for purpose, claim in state["consent"].items():
                out["consent"][purpose] = _latest(out["consent"].get(purpose), claim)
        return out

    def _precedes(self, new: Claim, old: Claim) -> bool:
        rank = self.policy.claim_rank
        return (-rank(new), *_order(new)) > (-rank(old), *_order(old))

    def _weight(self, claim: Claim) -> float:
        return self.policy.weight(claim[1]) if claim[5] else self.policy.default_weight

    # -- read-out ------------------------------------------------------------------------
    def view(self, state: State, as_of: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, held in sorted(state["attributes"].items()):
            strategy = self.policy.strategies.get(name)
            if strategy in ("latest", "precedence"):
                out[name] = {"value": held[0], "strategy": strategy, "provenance": [_provenance(held)]}
            elif strategy == "weighted":
                claims = [held[s] for s in sorted(held)]  # summed in a fixed order: the same bits every time
                vouched = [c for c in claims if c[5]]
                claims = vouched or claims  # unvouched claims fill a gap only
                total = sum(self._weight(c) for c in claims)
                if total > 0:
                    mean = sum(self._weight(c) * c[0] for c in claims) / total
                    out[name] = {"value": _number(name, mean), "strategy": strategy,
                                 "provenance": [_provenance(c) | {"weight": self._weight(c)} for c in claims]}
            elif strategy == "union":
                claims = sorted(held.values(), key=_order)
                out[name] = {"value": [c[0] for c in claims], "strategy": strategy,
                             "provenance": [_provenance(c) for c in claims]}
        if "birth_year" in out:
            born = out["birth_year"]
            out["age"] = {"value": as_of.year - born["value"], "strategy": "derived",
                          "derived_from": "birth_year", "provenance": born["provenance"]}
        consent: dict[str, dict[str, Any]] = {}
        for purpose in sorted(set(CONSENT_PURPOSES) | set(state["consent"])):
            claim = state["consent"].get(purpose)
            if claim is None:
                consent[purpose] = {"granted": None, "provenance": []}
            else:
                consent[purpose] = {"granted": claim[0], "provenance": [_provenance(claim)]}
        out["consent"] = consent
        return out

    # -- snapshots -----------------------------------------------------------------------
    def dump(self, state: State) -> Any:
        attributes: dict[str, dict[str, Any]] = {}
        for name, held in sorted(state["attributes"].items()):
            if isinstance(held, dict):
                attributes[name] = {"claims": sorted((list(c) for c in held.values()), key=_dump_order)}
            else:
                attributes[name] = {"claim": list(held)}
        consent = {p: list(c) for p, c in sorted(state["consent"].items())}
        return {"attributes": attributes, "consent": consent}

    def load(self, dumped: Any) -> State:
        state = self.initial()
        for name, entry in dumped["attributes"].items():
            if "claim" in entry:
                state["attributes"][name] = tuple(entry["claim"])
            else:
                strategy = self.policy.strategies.get(name)
                claims = [tuple(c) for c in entry["claims"]]
                if strategy == "weighted":
                    state["attributes"][name] = {_slot(c): c for c in claims}
                else:
                    state["attributes"][name] = {_hashable(c[0]): c for c in claims}
        state["consent"] = {p: tuple(c) for p, c in dumped["consent"].items()}
        return state


def attribute_values(view: dict[str, Any]) -> dict[str, Any]:
    """Attribute values without provenance, as the profile index keeps them. Age is left out:
    it depends on the reader's instant and is derived from birth_year when read."""
    return {name: ({purpose: v["granted"] for purpose, v in held.items()} if name == "consent" else held["value"])
            for name, held in view.items() if name != "age"}


def _dump_order(claim: list[Any]) -> tuple[str, str, str, str]:
    return claim[3], claim[2], claim[1], claim[4]


def _hashable(value: Any) -> str:
    """A union's key for a value: strings as they are, anything else as tagged canonical JSON
    (so "['en']" and ["en"], or 1 and true, stay apart, and a dict keys the same after a snapshot)."""
    return value if isinstance(value, str) else "\x00" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _number(name: str, value: float) -> float | int:
    return round(value) if name == "birth_year" else round(value, 6)


def _provenance(claim: Claim) -> dict[str, Any]:
    return {"source": claim[1], "writer": claim[4], "vouched": claim[5], "event_id": claim[2],
            "occurred_at": claim[3]}


ATTRIBUTES = ProfileAttributes()
