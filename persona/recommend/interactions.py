"""Implicit feedback from the log, point in time (issue 24, item 1).

Every event that names a product is an interaction: a product view, a cart addition, an order's
items, a review. One pass over the log lays them out as arrays (stream, item, time, kind); the
matrix of any instant T is then array work over them:

- only interactions that had happened by T count, each weighted by its kind (`Weights`) and
  halved for every `half_life_days` between it and T;
- a person is who they were at T: streams merged by then are one user, named by the oldest;
  a merge after T does not reach back;
- an interaction made while the person's personalization consent stood withdrawn does not count
  (granted until withdrawn, as for behaviour's affinities; a change at the very instant of an
  interaction applies to it);
- the window after T, (T, T + H], says what each person went on to engage with: the held-out
  targets of an evaluation.

Reviews count by their rating: 4 or 5 stars as a review, 3 as a view, 1 or 2 not at all. A cart
update that removes (a negative quantity) is not an interest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from persona import identity
from persona.core import Persona
from persona.events import RecordedEvent, from_micros, micros, text_micros
from persona.models.dataset import History, add_joins
from persona.projections.behavior import DAY_US, consent_changes

KINDS = ("view", "cart", "order", "review")
VIEW, CART, ORDER, REVIEW = range(4)
PURPOSE = "personalization"


@dataclass(frozen=True)
class Weights:
    """What each kind of interaction is worth, and how fast it fades."""

    view: float = 1.0
    cart: float = 3.0
    order: float = 5.0
    review: float = 4.0  # a review of 4 or 5 stars; 3 stars weighs as a view, 1 or 2 nothing
    half_life_days: float = 60.0

    def of(self) -> NDArray[np.float64]:
        return np.array([self.view, self.cart, self.order, self.review])


DEFAULT = Weights()


@dataclass
class Log:
    """Every interaction, one entry each, in (stream, time) order, and what is needed to say who
    was whom and what was consented at any instant."""

    streams: list[str]  # stream index -> profile id
    items: list[str]  # item index -> SKU
    item_category: list[str | None]  # the category the item was first seen with
    stream: NDArray[np.int32]
    item: NDArray[np.int32]
    time: NDArray[np.int64]  # µs
    kind: NDArray[np.int8]
    strength: NDArray[np.float64]  # 1, or a 3-star review's share of a view's weight
    people: dict[str, History] = field(default_factory=dict)  # streams of several (merged) people
    consents: dict[int, list[Any]] = field(default_factory=dict)  # stream -> its consent facts
    end: datetime | None = None

    @property
    def size(self) -> int:
        return len(self.time)

    def users_at(self, instant: datetime) -> tuple[NDArray[np.int32], list[str]]:
        """Each stream's user at the instant (an index into the returned names: the oldest stream
        of who they were then)."""
        at = micros(instant)
        name = {}
        for history in self.people.values():
            for part in history.parts(at):
                for member in part:
                    name[member] = part[0]
        names: dict[str, int] = {}
        user = np.empty(len(self.streams), dtype=np.int32)
        for s, pid in enumerate(self.streams):
            user[s] = names.setdefault(name.get(pid, pid), len(names))
        return user, list(names)

    def allowed(self, user: NDArray[np.int32]) -> NDArray[np.bool_]:
        """Which interactions the consent in force when each happened lets count, for these users:
        a user's consent is that of all the streams they are made of."""
        ok = np.ones(self.size, dtype=bool)
        if not self.consents:
            return ok
        streams_of: dict[int, list[int]] = {}
        for s in range(len(self.streams)):
            streams_of.setdefault(int(user[s]), []).append(s)
        starts = np.searchsorted(self.stream, np.arange(len(self.streams) + 1))
        for u in sorted({int(user[s]) for s in self.consents}):
            changes = withdrawals([f for s in streams_of[u] for f in self.consents.get(s, [])])
            if not changes:
                continue
            for s in streams_of[u]:
                lo, hi = starts[s], starts[s + 1]
                ok[lo:hi] = granted_at(changes, self.time[lo:hi])
        return ok

    def matrix(self, instant: datetime, weights: Weights = DEFAULT) -> Matrix:
        """Who engaged with what by the instant, decayed to it."""
        user, names = self.users_at(instant)
        at = micros(instant)
        keep = (self.time <= at) & self.allowed(user)
        u, i = user[self.stream[keep]], self.item[keep]
        age = (at - self.time[keep]) / DAY_US
        value = weights.of()[self.kind[keep]] * self.strength[keep] * 0.5 ** (age / weights.half_life_days)
        shape = (len(names), len(self.items))
        affinity = sp.csr_matrix((value, (u, i)), shape=shape)
        affinity.sum_duplicates()
        bought = sp.csr_matrix(((self.kind[keep] == ORDER).astype(np.float64), (u, i)), shape=shape)
        bought.sum_duplicates()
        bought.eliminate_zeros()
        strongest = _strongest(u, i, self.kind[keep], value, shape)
        active = np.zeros(len(names), dtype=bool)
        active[u] = True
        return Matrix(instant, names, affinity, bought, strongest, active, self.withdrawn(user, names, at))

    def withdrawn(self, user: NDArray[np.int32], names: Sequence[str], at: int) -> NDArray[np.bool_]:
        """Users whose personalization consent stood withdrawn at the instant."""
        out = np.zeros(len(names), dtype=bool)
        users: dict[int, list[Any]] = {}
        for s, facts in self.consents.items():
            users.setdefault(int(user[s]), []).extend(f for f in facts if f[0] <= at)
        for u, facts in users.items():
            changes = withdrawals(facts)
            out[u] = bool(changes) and not changes[-1][1]
        return out

    def targets(self, instant: datetime, until: datetime, matrix: Matrix) -> list[NDArray[np.int32]]:
        """What each user at the instant engaged with in (instant, until] and had not bought by
        the instant: the held-out answer (consent applied as in training)."""
        user, names = self.users_at(instant)
        lo, hi = micros(instant), micros(until)
        keep = (self.time > lo) & (self.time <= hi) & self.allowed(user)
        pairs = np.unique(np.stack([user[self.stream[keep]], self.item[keep]], axis=1), axis=0)
        out: list[NDArray[np.int32]] = [np.empty(0, dtype=np.int32)] * len(names)
        if len(pairs):
            bought = matrix.bought[pairs[:, 0], pairs[:, 1]].A1 if matrix.bought.nnz else np.zeros(len(pairs))
            pairs = pairs[bought == 0]
            splits = np.searchsorted(pairs[:, 0], np.arange(len(names) + 1))
            for u in np.flatnonzero(np.diff(splits)):
                out[u] = pairs[splits[u]:splits[u + 1], 1].astype(np.int32)
        return out


@dataclass
class Matrix:
    """Users by items at one instant: decayed interest, what was bought, each pair's strongest kind."""

    instant: datetime
    users: list[str]
    affinity: sp.csr_matrix
    bought: sp.csr_matrix
    strongest: sp.csr_matrix  # kind + 1 of the interaction that weighed most for the pair
    active: NDArray[np.bool_]  # had an interaction that counts by the instant
    withdrawn: NDArray[np.bool_]  # personalization consent withdrawn at the instant


def _strongest(u: NDArray[Any], i: NDArray[Any], kind: NDArray[Any], value: NDArray[np.float64],
               shape: tuple[int, int]) -> sp.csr_matrix:
    if not len(u):
        return sp.csr_matrix(shape, dtype=np.int8)
    order = np.lexsort((value, i, u))  # the last of each pair weighs most
    u, i, kind = u[order], i[order], kind[order]
    last = np.ones(len(u), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return sp.csr_matrix(((kind[last] + 1).astype(np.int8), (u[last], i[last])), shape=shape)


def withdrawals(facts: Iterable[Any]) -> list[tuple[int, bool]]:
    """Personalization consent's changes that count (the vouched rule), in time order."""
    found = consent_changes(sorted(facts, key=lambda f: (f[0], f[1]))).get(PURPOSE, [])
    return [(int(f[0]), bool(f[4])) for f in found]


def granted_at(changes: list[tuple[int, bool]], times: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether consent stood granted at each time (granted until withdrawn)."""
    at = np.array([c[0] for c in changes], dtype=np.int64)
    state = np.array([True] + [c[1] for c in changes])
    return np.asarray(state[np.searchsorted(at, times, side="right")], dtype=bool)


def interactions(event: RecordedEvent) -> list[tuple[int, str, str | None, float]]:
    """(kind, SKU, category, strength) of each product an event names."""
    d = event.data
    if event.type == "product_viewed":
        return [(VIEW, d["sku"], d.get("category"), 1.0)]
    if event.type == "cart_updated":
        return [(CART, d["sku"], None, 1.0)] if d["qty"] > 0 else []
    if event.type == "order_placed":
        return [(ORDER, i["sku"], i.get("category"), 1.0) for i in d.get("items") or () if i.get("sku")]
    if event.type == "review_posted":
        rating = d["rating"]
        return [(REVIEW, d["sku"], None, 1.0 if rating >= 4 else 0.25 if rating == 3 else 0.0)]  # 0: dropped
    return []


def read(persona: Persona, *, page: int = 20_000) -> Log:
    """Every interaction in the log, in one pass."""
    return collect(persona, persona.log.iter_all(page=page))


def read_person(persona: Persona, members: Sequence[str]) -> Log:
    """One person's interactions (their streams), read stream by stream."""
    return collect(persona, (event for member in members for event in persona.log.read(member)))


def collect(persona: Persona, events: Iterable[RecordedEvent]) -> Log:
    """The interactions of these events laid out, with who was merged into whom and when."""
    streams: dict[str, int] = {}
    items: dict[str, int] = {}
    category: list[str | None] = []
    rows: list[tuple[int, int, int, int, float]] = []
    consents: dict[int, list[Any]] = {}
    merged_at: dict[int, int] = {}
    last = None
    for event in events:
        s = streams.setdefault(event.profile_id, len(streams))
        kind = event.type
        if kind == "consent_changed":
            d = event.data
            consents.setdefault(s, []).append((text_micros(event.occurred_at), event.event_id, "c", d["purpose"],
                                               bool(d["granted"]), event.vouched))
            continue
        if kind == identity.MERGED:
            if isinstance(event.data.get("edge"), int):
                merged_at[event.data["edge"]] = text_micros(event.occurred_at)
            continue
        found = interactions(event)
        if not found:
            continue
        t = text_micros(event.occurred_at)
        last = t if last is None or t > last else last
        for k, sku, cat, strength in found:
            if strength == 0:
                continue
            i = items.get(sku)
            if i is None:
                i = items[sku] = len(items)
                category.append(cat)
            elif category[i] is None and cat is not None:
                category[i] = cat
            rows.append((s, t, i, k, strength))
    rows.sort()
    table = np.array([r[:4] for r in rows], dtype=np.int64).reshape(-1, 4)
    ids = list(streams)
    people = identity.persons(persona.recorder, ids)
    merged = {p.id: History(p.id, p.members) for p in people.values() if p.merged}
    add_joins(persona.recorder, merged, merged_at)
    return Log(ids, list(items), category, table[:, 0].astype(np.int32), table[:, 2].astype(np.int32),
               table[:, 1].copy(), table[:, 3].astype(np.int8), np.array([r[4] for r in rows], dtype=np.float64),
               merged, consents, from_micros(last) if last is not None else None)
