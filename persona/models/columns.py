"""Point-in-time rows computed column-wise (issue 21, item 6).

Folding one person's facts and replaying the behaviour view at a cutoff costs about 425 µs, and
a training set has a row per person and cutoff. Here the facts of many people are laid out once
as arrays — one per field, people one after another, each person's facts in time order — and a
cutoff's rows are array operations over everyone at once:

- a count or a sum by the cutoff is a difference of running totals between a person's first
  entry and the first entry after the cutoff (an integer total, so exact: money in cents);
- a distinct count (sessions, SKUs viewed, SKUs bought after a view, active days) counts the
  first time each was seen, kept per person in time order like any other entry;
- a session's length and a category's decayed affinity are sums over groups (a person's entries
  of one session or one category), each group's entries in time order;
- what the person told about themselves (age, gender) is the profile replayed at each instant it
  changed, and looked up at the cutoff.

The rows are those `dataset.rows_at` folds one person at a time (tests hold them side by side on
every kind of fact). People whose rows depend on more than their own facts in time order are still
folded one by one: a person of several streams, whose parts change as merges happen, and anyone who
ever withdrew a consent, which discounts their facts after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from persona.events import RecordedEvent, micros, text_micros
from persona.projections import ATTRIBUTES, FEATURES
from persona.projections.base import replay
from persona.projections.behavior import DAY_US, Fact

NOT_SEEN = np.iinfo(np.int64).max  # the time of something that never happened
_ORDER = itemgetter(0, 1)  # (occurred µs, event id): the view's order
_GENDERS = {"female": 1, "male": 2}


@dataclass
class Track:
    """Entries of several owners (people, or a person's sessions or categories) end to end, each
    owner's in time order: entries start[k]:start[k + 1] are owner k's."""

    time: NDArray[np.int64]
    start: NDArray[np.int64]  # one more than there are owners

    @classmethod
    def of(cls, times: list[int], counts: list[int]) -> Track:
        start = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=start[1:])
        return cls(np.asarray(times, dtype=np.int64).reshape(-1), start)

    @cached_property
    def owner(self) -> NDArray[np.int64]:
        """Whose each entry is."""
        return np.repeat(np.arange(len(self.start) - 1, dtype=np.int64), np.diff(self.start))

    def upto(self, instant: int) -> NDArray[np.int64]:
        """How many of each owner's entries had happened by the instant."""
        done = np.zeros(len(self.time) + 1, dtype=np.int64)
        np.cumsum(self.time <= instant, out=done[1:])
        return done[self.start[1:]] - done[self.start[:-1]]

    def summed(self, totals: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.int64]:
        """Each owner's sum over their first `counts` entries, from running totals (`totals`)."""
        return np.asarray(totals[self.start[:-1] + counts] - totals[self.start[:-1]], dtype=np.int64)

    def totals(self, values: list[int] | NDArray[np.int64]) -> NDArray[np.int64]:
        """Running totals of an integer value per entry (0 first): a sum over entries i:j is
        totals[j] − totals[i], exactly."""
        out = np.zeros(len(self.time) + 1, dtype=np.int64)
        np.cumsum(np.asarray(values, dtype=np.int64), out=out[1:])
        return out


def _segment_sums(values: NDArray[np.float64], track: Track) -> NDArray[np.float64]:
    """The sum of each owner's values, added one after another in time order, as Python's `sum`
    adds them (and so the same bits wherever the owner is laid out)."""
    return np.asarray(np.bincount(track.owner, weights=values, minlength=len(track.start) - 1), dtype=np.float64)


def _segment_max(values: NDArray[np.float64], track: Track) -> NDArray[np.float64]:
    out = np.full(len(track.start) - 1, -np.inf, dtype=np.float64)
    full = np.flatnonzero(track.start[1:] > track.start[:-1])
    if len(full):
        out[full] = np.maximum.reduceat(values, track.start[:-1][full])
    return out


class Columns:
    """Every fact of these people, as arrays: those whose rows follow from their own facts in time
    order (`people`); the others are left to fold one by one (`others`)."""

    def __init__(self, found: dict[str, Any], people: Sequence[str]) -> None:
        self.people: list[str] = []
        self.members: list[tuple[str, ...]] = []
        self.others: list[str] = []
        admitted: list[list[Fact]] = []
        money: list[int] = []
        profiles: list[list[RecordedEvent]] = []
        for person in people:
            history = found[person]
            made = None if len(history.members) > 1 or len(history.facts) > 1 else _admit(
                [f for facts in history.facts.values() for f in facts])
            if made is None:
                self.others.append(person)
                continue
            self.people.append(person)
            self.members.append(history.members or tuple(history.facts))
            admitted.append(made[0])
            money.extend(made[1])
            profiles.append([e for events in history.profile_events.values() for e in events])
        _Layout(admitted).lay_out(self, money)
        _profiles(self, profiles)

    # laid out by _Layout and _profiles
    facts: Track  # every counted fact
    new_day: NDArray[np.int64]  # totals: 1 where a fact is the first of its person's UTC day
    orders: Track
    order_cents: NDArray[np.int64]  # totals
    order_gap_days: NDArray[np.float64]  # from the person's previous order (0 at their first)
    order_has_gap: NDArray[np.bool_]  # not the person's first order
    order_label: NDArray[np.int64]  # the category an order is labelled with (-1: none)
    refunds: Track
    refund_cents: NDArray[np.int64]
    pages: Track
    products: Track
    searches: Track
    reviews: Track
    ratings: NDArray[np.int64]  # totals
    app: Track
    app_minutes: NDArray[np.float64]  # of each app session
    app_sessions: Track  # per person: when each app session was first seen
    sessions: Track  # per browsing session (a person's one session id): its facts
    session_dwell: NDArray[np.float64]  # the dwell of each of those facts (a page view's, else 0)
    session_owner: NDArray[np.int64]
    viewed: Track  # per person: when each SKU was first viewed
    converted: Track  # per person: when each SKU was first bought within the window after a view
    affinity: Track  # per (person, category): the facts that carry it
    affinity_owner: NDArray[np.int64]
    affinity_category: NDArray[np.int64]
    profile: Track  # per person: each instant their profile changed
    gender: NDArray[np.int64]  # after each change: 1 female, 2 male, 0 else
    birth_year: NDArray[np.float64]  # after each change (NaN: none)
    categories: list[str]

    def frame(self, instant: datetime, window: int, *, labels: bool = False) -> dict[str, NDArray[Any]]:
        """Every person's features at the instant, a column each (rows of people not seen by then
        are meaningless: `seen` says who was)."""
        now = micros(instant)
        nan = np.nan
        out: dict[str, NDArray[Any]] = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            facts = self.facts
            seen_count = facts.upto(now)
            first_fact, end_fact = facts.start[:-1], facts.start[:-1] + seen_count
            seen = seen_count > 0
            out["seen"] = seen
            first_at = _take(facts.time, first_fact, seen, now)
            last_at = _take(facts.time, end_fact - 1, seen, now)

            orders = self.orders
            n = orders.upto(now)
            o_first, o_end = orders.start[:-1], orders.start[:-1] + n
            spent = orders.summed(self.order_cents, n)
            refunds = self.refunds.upto(now)
            refunded = self.refunds.summed(self.refund_cents, refunds)
            has = n > 0
            last_order = _take(orders.time, o_end - 1, has, now)
            first_order = _take(orders.time, o_first, has, now)
            out["frequency"] = n.astype(np.float64)
            out["monetary"] = np.maximum(spent - refunded, 0) / 100
            out["aov"] = np.where(has, _half_even(spent, np.maximum(n, 1)) / 100, nan)
            since = (now - last_order) / DAY_US
            out["recency_days"] = np.where(has, _round(since, 4), nan)
            out["refunds"] = refunds.astype(np.float64)
            out["refund_amount"] = refunded / 100
            gaps = n - 1
            mean_gap = np.where(gaps > 0, (last_order - first_order) / DAY_US / np.maximum(gaps, 1), nan)
            counted = (orders.time <= now) & self.order_has_gap  # the gaps between orders by the instant
            deviation = np.where(counted, self.order_gap_days - mean_gap[orders.owner], 0.0)
            std = np.sqrt(_segment_sums(deviation * deviation, orders) / np.maximum(gaps, 1))
            out["interpurchase_mean_days"] = _round(mean_gap, 4)
            out["interpurchase_std_days"] = np.where(gaps > 0, _round(std, 4), nan)
            out["page_views"] = self.pages.upto(now).astype(np.float64)
            out["product_views"] = self.products.upto(now).astype(np.float64)
            out["searches"] = self.searches.upto(now).astype(np.float64)
            visits, visit_seconds = self._sessions(now)
            out["sessions"] = visits.astype(np.float64)
            out["session_mean_duration_s"] = np.where(visits > 0, _round(visit_seconds / np.maximum(visits, 1), 3),
                                                      nan)
            out["app_sessions"] = self.app_sessions.upto(now).astype(np.float64)
            # a sum over each person's own entries: the same bits wherever the person is laid out
            out["app_minutes"] = _segment_sums(np.where(self.app.time <= now, self.app_minutes, 0.0), self.app)
            reviews = self.reviews.upto(now)
            rated = self.reviews.summed(self.ratings, reviews)
            out["reviews"] = reviews.astype(np.float64)
            out["review_mean_rating"] = np.where(reviews > 0, _round(rated / np.maximum(reviews, 1), 4), nan)
            viewed = self.viewed.upto(now)
            converted = self.converted.upto(now)
            out["viewed_skus"] = viewed.astype(np.float64)
            out["converted_skus"] = converted.astype(np.float64)
            out["conversion_rate"] = np.where(viewed > 0, _round(converted / np.maximum(viewed, 1), 4), nan)
            out["behavior_events"] = seen_count.astype(np.float64)
            out["active_days"] = facts.summed(self.new_day, seen_count).astype(np.float64)

            out["days_since_first_seen"] = (now - first_at) / DAY_US
            out["days_since_last_seen"] = (now - last_at) / DAY_US
            before_window = orders.upto(now - window)
            latest = n - before_window
            out["orders_last_window"] = latest.astype(np.float64)
            out["spend_last_window"] = (self.order_cents[o_end] - self.order_cents[o_first + before_window]) / 100
            out["events_last_30d"] = (seen_count - facts.upto(now - 30 * DAY_US)).astype(np.float64)
            out["events_last_window"] = (seen_count - facts.upto(now - window)).astype(np.float64)
            out.update(self._told(instant, now))

            previous = before_window - orders.upto(now - 2 * window)
            out["orders_previous_window"] = previous.astype(np.float64)
            out["order_trend"] = (latest - previous).astype(np.float64)
            out["orders_per_month_since_first"] = np.where(
                has, n / np.maximum((now - first_order) / DAY_US, 1.0) * 30.0, nan)
            out["days_since_last_order"] = np.where(has, since, nan)
            # the pace features use the gaps as numpy averages them, unrounded
            out["recency_over_cadence"] = np.where((gaps > 0) & (mean_gap > 0), since / mean_gap, nan)
            out["interpurchase_cv"] = np.where((gaps > 1) & (mean_gap > 0), std / mean_gap, nan)
            longest = _segment_max(np.where(counted, self.order_gap_days, -np.inf), orders)
            out["longest_gap_days"] = np.where(has, np.maximum(longest, since), nan)

            out["x"] = np.where(has, n - 1, 0).astype(np.float64)
            out["t_x"] = np.where(has, (last_order - first_order) / DAY_US, 0.0)
            out["age_days"] = np.where(has, (now - first_order) / DAY_US, (now - first_at) / DAY_US)
            if labels:
                after = orders.upto(now + window) - n
                out["orders_after"] = after
                out["spend_after"] = (self.order_cents[o_end + after] - self.order_cents[o_end]) / 100
                next_at = _take(orders.time, o_end, after > 0, now)
                out["days_to_next"] = np.where(after > 0, (next_at - now) / DAY_US, nan)
                out["next_category"] = _take(self.order_label, o_end, after > 0, -1)
        return out

    def _sessions(self, now: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Each person's browsing sessions begun by the instant, and their seconds summed: from a
        session's first fact to its last by then, plus that last page's dwell."""
        groups = self.sessions
        counts = groups.upto(now)
        begun = np.flatnonzero(counts > 0)
        first = groups.start[:-1][begun]
        last = first + counts[begun] - 1
        seconds = (groups.time[last] - groups.time[first]) / 1_000_000 + self.session_dwell[last]
        owners = self.session_owner[begun]
        people = len(self.people)
        return (np.bincount(owners, minlength=people).astype(np.int64),
                np.asarray(np.bincount(owners, weights=seconds, minlength=people), dtype=np.float64))

    def _told(self, instant: datetime, now: int) -> dict[str, NDArray[np.float64]]:
        """Age and gender as the person's profile said them at the instant."""
        changes = self.profile.upto(now)
        told = changes > 0
        at = self.profile.start[:-1] + changes - 1
        gender = _take(self.gender, at, told, 0)
        born = _take(self.birth_year, at, told, np.nan)
        return {"age": instant.year - born, "gender_female": (gender == 1).astype(np.float64),
                "gender_male": (gender == 2).astype(np.float64)}

    def affinities(self, instant: datetime) -> dict[int, dict[str, float]]:
        """Each person's category affinity at the instant (the categories of what they bought, viewed
        and talked about by then, each weighing half as much a half-life later), by person index."""
        now = micros(instant)
        groups = self.affinity
        happened = groups.time <= now
        weights = np.where(happened, np.power(0.5, (now - groups.time) / DAY_US / FEATURES.config.half_life_days),
                           0.0)
        sums = _segment_sums(weights, groups)
        held = np.flatnonzero(groups.upto(now) > 0)
        out: dict[int, dict[str, float]] = {}
        names = self.categories
        for owner, category, value in zip(self.affinity_owner[held].tolist(), self.affinity_category[held].tolist(),
                                          sums[held].tolist(), strict=True):
            found = out.get(owner)
            if found is None:
                found = out[owner] = {}
            found[names[category]] = round(value, 6)
        return out


def order_category(order: Fact) -> str | None:
    """The category of an order; one spanning several is labelled with one of them chosen by a
    hash of the order's event id, so that no category is favoured (the alphabet would be)."""
    categories = order[4]
    if not categories:
        return None
    if len(categories) == 1:
        return str(categories[0])
    return str(min(categories, key=lambda c: hashlib.sha256(f"{order[1]}\x00{c}".encode()).digest()))


def _round(values: NDArray[np.float64], places: int) -> NDArray[np.float64]:
    """Rounded as Python's `round` rounds (the view's): numpy's agrees except near a tie, where it
    rounds the value scaled by 10^places and Python the value itself; those few are rounded again
    by Python."""
    out = np.asarray(np.round(values, places), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        scaled = values * 10.0 ** places
        near = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    for i in near.tolist():
        out[i] = round(float(values[i]), places)
    return out


def _take(values: NDArray[Any], index: NDArray[np.int64], ok: NDArray[np.bool_], fallback: Any) -> NDArray[Any]:
    """values[index] where ok, else the fallback (and never an index out of range)."""
    if not len(values):
        return np.full(len(index), fallback)
    return np.where(ok, values[np.clip(index, 0, len(values) - 1)], fallback)


def _half_even(cents: NDArray[np.int64], count: NDArray[np.int64]) -> NDArray[np.int64]:
    """cents / count to the cent, halves to even: the view's Decimal quantize, in integers."""
    whole, rest = np.divmod(cents, count)
    up = (2 * rest > count) | ((2 * rest == count) & (whole % 2 == 1))
    return np.asarray(whole + up, dtype=np.int64)


def _admit(facts: list[Fact]) -> tuple[list[Fact], list[int]] | None:
    """One person's counted facts in the view's order, and the cents of their orders and refunds
    among them; None if their rows do not follow from those facts in time order alone: a consent
    withdrawn (a grant changes nothing: everything counts until a withdrawal), or an amount finer
    than a cent or too large to sum exactly in cents."""
    if any(f[2] == "c" and not f[4] for f in facts):
        return None
    counted = sorted((f for f in facts if f[2] != "c"), key=_ORDER)
    money = [_cents(f[3]) for f in counted if f[2] in "or"]
    if None in money:
        return None
    return counted, money  # type: ignore[return-value]


class _Layout:
    """Everyone's facts at once, as arrays; Python touches each fact a few times, never per person
    and kind."""

    def __init__(self, admitted: list[list[Fact]]) -> None:
        self.people = len(admitted)
        counts = np.fromiter(map(len, admitted), dtype=np.int64, count=self.people)
        self.flat = [f for facts in admitted for f in facts]
        size = len(self.flat)
        self.time = np.fromiter((f[0] for f in self.flat), dtype=np.int64, count=size)
        self.kind = np.frombuffer("".join([f[2] for f in self.flat]).encode(), dtype=np.uint8)
        self.owner = np.repeat(np.arange(self.people, dtype=np.int64), counts)
        self.start = _starts(counts)
        self.category_code: dict[str, int] = {}

    def where(self, kinds: str) -> NDArray[np.int64]:
        """The positions of the facts of these kinds (in order: by person, then time)."""
        return np.flatnonzero(np.isin(self.kind, np.frombuffer(kinds.encode(), dtype=np.uint8)))

    def track(self, index: NDArray[np.int64]) -> Track:
        return Track(self.time[index], _starts(np.bincount(self.owner[index], minlength=self.people)))

    def per_person(self, owners: list[int] | NDArray[np.int64], times: list[int] | NDArray[np.int64]) -> Track:
        """A track of one entry per (owner, time) given, the owners' entries in time order."""
        owners, times = np.asarray(owners, dtype=np.int64), np.asarray(times, dtype=np.int64)
        order = np.lexsort((times, owners))
        return Track(times[order], _starts(np.bincount(owners, minlength=self.people)))

    def code(self, category: str) -> int:
        code = self.category_code.get(category)
        if code is None:
            code = self.category_code[category] = len(self.category_code)
        return code

    def lay_out(self, into: Columns, money: list[int]) -> None:
        flat, time, owner = self.flat, self.time, self.owner
        into.facts = Track(time, self.start)
        day = time // DAY_US
        first_of_day = np.ones(len(time), dtype=bool)
        first_of_day[1:] = (day[1:] != day[:-1]) | (owner[1:] != owner[:-1])
        into.new_day = into.facts.totals(first_of_day)

        orders, refunds = self.where("o"), self.where("r")
        cents = np.asarray(money, dtype=np.int64)
        is_order = self.kind[self.where("or")] == ord("o")
        into.orders, into.refunds = self.track(orders), self.track(refunds)
        into.order_cents = into.orders.totals(cents[is_order])
        into.refund_cents = into.refunds.totals(cents[~is_order])
        at, whose = time[orders], owner[orders]
        gaps = np.zeros(len(orders), dtype=np.float64)
        into.order_has_gap = np.zeros(len(orders), dtype=bool)
        into.order_has_gap[1:] = whose[1:] == whose[:-1]
        if len(orders) > 1:
            gaps[1:] = np.where(into.order_has_gap[1:], (at[1:] - at[:-1]) / DAY_US, 0.0)
        into.order_gap_days = gaps
        into.order_label = np.array([-1 if (label := order_category(flat[i])) is None else self.code(label)
                                     for i in orders.tolist()], dtype=np.int64)

        into.pages, into.products, into.searches = (self.track(self.where(k)) for k in "pvs")
        reviews, app = self.where("w"), self.where("a")
        into.reviews, into.app = self.track(reviews), self.track(app)
        into.ratings = into.reviews.totals([int(flat[i][3]) for i in reviews.tolist()])
        into.app_minutes = np.array([float(flat[i][4]) for i in app.tolist()], dtype=np.float64)
        first_app: dict[tuple[int, Any], int] = {}
        for i, who in zip(app.tolist(), owner[app].tolist(), strict=True):
            first_app.setdefault((who, flat[i][3]), flat[i][0])
        into.app_sessions = self.per_person([who for who, _ in first_app], list(first_app.values()))
        self._sessions(into)
        self._conversions(into, orders)
        self._affinity(into)
        into.categories = sorted(self.category_code, key=self.category_code.__getitem__)

    def _sessions(self, into: Columns) -> None:
        """Browsing sessions: a person's facts of one session id, each session's in time order, the
        sessions of a person in the order they began (their seconds sum as the view sums them)."""
        flat, browsing = self.flat, self.where("pvs")
        sessions = [flat[i][3] for i in browsing.tolist()]
        held = np.asarray([s is not None for s in sessions], dtype=bool)
        groups: dict[tuple[int, Any], int] = {}
        codes = [groups.setdefault(key, len(groups))
                 for key in zip(self.owner[browsing][held].tolist(), [s for s in sessions if s is not None],
                                strict=True)]
        order = np.argsort(np.asarray(codes, dtype=np.int64), kind="stable")
        at = browsing[held][order]
        dwell = np.array([float(f[4]) if f[2] == "p" and f[4] is not None else 0.0
                          for f in (flat[i] for i in at.tolist())], dtype=np.float64)
        into.sessions = Track(self.time[at], _starts(np.bincount(np.asarray(codes, dtype=np.int64),
                                                                minlength=len(groups))))
        into.session_dwell = dwell
        into.session_owner = np.array([who for who, _ in groups], dtype=np.int64)

    def _conversions(self, into: Columns, orders: NDArray[np.int64]) -> None:
        """SKUs viewed (when each first was, per person), and SKUs bought within the conversion
        window after a view of them (when each first was)."""
        flat, owner, views = self.flat, self.owner, self.where("v")
        groups: dict[tuple[int, str], int] = {}
        viewed = [groups.setdefault((who, flat[i][4]), len(groups))
                  for i, who in zip(views.tolist(), owner[views].tolist(), strict=True)]
        group_owner = np.array([who for who, _ in groups], dtype=np.int64)
        codes = np.asarray(viewed, dtype=np.int64)
        _, first = np.unique(codes, return_index=True)  # a group's first view (codes number groups as first seen)
        into.viewed = self.per_person(group_owner, self.time[views][first])
        bought, bought_at = [], []
        for i, who in zip(orders.tolist(), owner[orders].tolist(), strict=True):
            for sku in flat[i][5]:
                group = groups.get((who, sku))
                if group is not None:
                    bought.append(group)
                    bought_at.append(flat[i][0])
        code = np.concatenate((codes, np.asarray(bought, dtype=np.int64)))
        at = np.concatenate((self.time[views], np.asarray(bought_at, dtype=np.int64)))
        is_order = np.concatenate((np.zeros(len(codes), dtype=bool), np.ones(len(bought), dtype=bool)))
        order = np.lexsort((is_order, at, code))  # a view at the instant of the order comes before it
        code, at, is_order = code[order], at[order], is_order[order]
        last_view = np.maximum.accumulate(np.where(is_order, -1, np.arange(len(code))))
        seen = np.maximum(last_view, 0)
        window = FEATURES.config.conversion_days * DAY_US
        converts = is_order & (last_view >= 0) & (code[seen] == code) & (at - at[seen] <= window)
        converted, first = np.unique(code[converts], return_index=True)
        into.converted = self.per_person(group_owner[converted], at[converts][first])

    def _affinity(self, into: Columns) -> None:
        """The facts that carry each (person, category): what they bought, viewed, and talked about;
        a person's categories by name, each one's facts in time order."""
        flat = self.flat
        known = self.category_code
        positions, categories = [], []
        for kinds, field, always in (("v", 5, True), ("p", 5, False), ("x", 4, False)):  # one category each
            index = self.where(kinds)
            named = [flat[i][field] for i in index.tolist()]
            if not always:
                kept = [bool(c) for c in named]
                index = index[np.asarray(kept, dtype=bool)]
                named = [c for c, k in zip(named, kept, strict=True) if k]
            positions.append(index)
            categories.append(np.asarray([known[c] if c in known else self.code(c) for c in named], dtype=np.int64))
        bought = [(i, c) for i in self.where("o").tolist() for c in flat[i][4]]  # an order carries each of its own
        positions.append(np.asarray([i for i, _ in bought], dtype=np.int64))
        categories.append(np.asarray([known[c] if c in known else self.code(c) for _, c in bought], dtype=np.int64))
        at = np.concatenate(positions)
        category = np.concatenate(categories)
        who = self.owner[at]
        names = sorted(self.category_code)
        rank = np.zeros(len(self.category_code), dtype=np.int64)
        rank[[self.category_code[n] for n in names]] = np.arange(len(names))
        order = np.lexsort((at, rank[category], who))
        who, category, at = who[order], category[order], at[order]
        begins = np.ones(len(who), dtype=bool)
        begins[1:] = (who[1:] != who[:-1]) | (category[1:] != category[:-1])
        heads = np.flatnonzero(begins)
        into.affinity = Track(self.time[at], np.append(heads, len(who)).astype(np.int64))
        into.affinity_owner, into.affinity_category = who[heads], category[heads]


def _starts(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    start = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    return start


_TOLD = ("gender", "birth_year", "age")  # the claims age and gender are read from


def _profiles(into: Columns, profiles: list[list[RecordedEvent]]) -> None:
    """Each instant a person's profile changed, and their gender and birth year from then on. A
    single update says the same for everyone who sent the same claims from the same source in the
    same year (an age is a birth year counted from that year): replayed once for all of them."""
    times: list[int] = []
    counts: list[int] = []
    said: list[tuple[int, float]] = []
    once: dict[tuple[Any, ...], tuple[int, float]] = {}
    for events in profiles:
        if len(events) == 1:
            e = events[0]
            key = (e.source, e.writer, e.vouched, e.occurred_at[:4],
                   tuple((k, repr(v)) for k, v in e.data.items() if k in _TOLD))
            known = once.get(key)
            if known is None:
                known = once[key] = _said(events)
            times.append(text_micros(e.occurred_at))
            said.append(known)
            counts.append(1)
            continue
        instants = sorted({text_micros(e.occurred_at) for e in events})
        for instant in instants:
            times.append(instant)
            said.append(_said([e for e in events if text_micros(e.occurred_at) <= instant]))
        counts.append(len(instants))
    into.profile = Track.of(times, counts)
    into.gender = np.asarray([g for g, _ in said], dtype=np.int64)
    into.birth_year = np.asarray([b for _, b in said], dtype=np.float64)


def _said(events: list[RecordedEvent]) -> tuple[int, float]:
    """Gender (1 female, 2 male, 0 else) and birth year (NaN: none) as these updates fuse."""
    view = ATTRIBUTES.view(replay(ATTRIBUTES, events), datetime(2000, 1, 1))  # the year does not matter here
    gender = view.get("gender", {}).get("value")
    born = view.get("birth_year", {}).get("value")
    numeric = isinstance(born, int | float) and not isinstance(born, bool)
    return _GENDERS.get(gender, 0) if isinstance(gender, str) else 0, float(born) if numeric else np.nan


MAX_CENTS = 10 ** 11  # an order of up to a billion: the running totals of 10⁷ of them stay far inside int64


def _cents(amount: Any) -> int | None:
    """An amount in whole cents, if it is a whole number of them and not too large to sum exactly."""
    if isinstance(amount, str) and len(amount) > 3 and amount[-3] == "." and amount.isascii():
        digits = amount[:-3] + amount[-2:]  # "157.00", as amounts are written: read without a Decimal
        if digits.isdigit():
            cents = int(digits)
            return cents if cents < MAX_CENTS else None
    value = Decimal(amount).scaleb(2)
    if value != value.to_integral_value() or not 0 <= value < MAX_CENTS:
        return None
    return int(value)

