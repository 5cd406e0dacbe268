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

ROUNDED_4 = ("recency_days", "interpurchase_mean_days", "interpurchase_std_days", "review_mean_rating",
             "conversion_rate")
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
        b = _Builder()
        for person in people:
            history = found[person]
            if len(history.members) > 1 or len(history.facts) > 1 or not b.person(
                    [f for facts in history.facts.values() for f in facts],
                    [e for events in history.profile_events.values() for e in events]):
                self.others.append(person)
                continue
            self.people.append(person)
            self.members.append(history.members or tuple(history.facts))
        b.close(self)

    # laid out by _Builder.close
    facts: Track  # every counted fact
    new_day: NDArray[np.int64]  # totals: 1 where a fact is the first of its person's UTC day
    orders: Track
    order_cents: NDArray[np.int64]  # totals
    order_gap_days: NDArray[np.float64]  # from the person's previous order (0 at their first)
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
            spent = self.order_cents[o_end] - self.order_cents[o_first]
            refunds = self.refunds.upto(now)
            refunded = self.refund_cents[self.refunds.start[:-1] + refunds] - self.refund_cents[self.refunds.start[:-1]]
            has = n > 0
            last_order = _take(orders.time, o_end - 1, has, now)
            first_order = _take(orders.time, o_first, has, now)
            out["frequency"] = n.astype(np.float64)
            out["monetary"] = np.maximum(spent - refunded, 0) / 100
            out["aov"] = np.where(has, _half_even(spent, np.maximum(n, 1)) / 100, nan)
            since = (now - last_order) / DAY_US
            out["recency_days"] = np.where(has, np.round(since, 4), nan)
            out["refunds"] = refunds.astype(np.float64)
            out["refund_amount"] = refunded / 100
            gaps = n - 1
            mean_gap = np.where(gaps > 0, (last_order - first_order) / DAY_US / np.maximum(gaps, 1), nan)
            in_prefix = orders.time <= now
            later = np.ones(len(orders.time), dtype=bool)
            later[orders.start[:-1][orders.start[:-1] < orders.start[1:]]] = False  # a person's first order
            counted = in_prefix & later  # the gaps between orders by the instant
            deviation = np.where(counted, self.order_gap_days - mean_gap[orders.owner], 0.0)
            std = np.sqrt(_segment_sums(deviation * deviation, orders) / np.maximum(gaps, 1))
            out["interpurchase_mean_days"] = np.round(mean_gap, 4)
            out["interpurchase_std_days"] = np.where(gaps > 0, np.round(std, 4), nan)
            out["page_views"] = self.pages.upto(now).astype(np.float64)
            out["product_views"] = self.products.upto(now).astype(np.float64)
            out["searches"] = self.searches.upto(now).astype(np.float64)
            visits, visit_seconds = self._sessions(now)
            out["sessions"] = visits.astype(np.float64)
            out["session_mean_duration_s"] = np.where(visits > 0, np.round(visit_seconds / np.maximum(visits, 1), 3),
                                                      nan)
            out["app_sessions"] = self.app_sessions.upto(now).astype(np.float64)
            # a sum over each person's own entries: the same bits wherever the person is laid out
            out["app_minutes"] = _segment_sums(np.where(self.app.time <= now, self.app_minutes, 0.0), self.app)
            reviews = self.reviews.upto(now)
            rated = self.ratings[self.reviews.start[:-1] + reviews] - self.ratings[self.reviews.start[:-1]]
            out["reviews"] = reviews.astype(np.float64)
            out["review_mean_rating"] = np.where(reviews > 0, np.round(rated / np.maximum(reviews, 1), 4), nan)
            viewed = self.viewed.upto(now)
            converted = self.converted.upto(now)
            out["viewed_skus"] = viewed.astype(np.float64)
            out["converted_skus"] = converted.astype(np.float64)
            out["conversion_rate"] = np.where(viewed > 0, np.round(converted / np.maximum(viewed, 1), 4), nan)
            out["behavior_events"] = seen_count.astype(np.float64)
            out["active_days"] = (self.new_day[end_fact] - self.new_day[first_fact]).astype(np.float64)

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
    return str(min(categories, key=lambda c: hashlib.sha256(f"{order[1]}\x00{c}".encode()).digest()))


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


class _Builder:
    """Python lists filled person by person, then made arrays."""

    def __init__(self) -> None:
        self.category_code: dict[str, int] = {}
        self.facts: list[int] = []
        self.fact_counts: list[int] = []
        self.new_day: list[int] = []
        self.orders: list[int] = []
        self.order_counts: list[int] = []
        self.order_cents: list[int] = []
        self.order_gaps: list[float] = []
        self.order_label: list[int] = []
        self.refunds: list[int] = []
        self.refund_counts: list[int] = []
        self.refund_cents: list[int] = []
        self.kinds: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in "pvswa"}
        self.ratings: list[int] = []
        self.minutes: list[float] = []
        self.app_first: list[int] = []
        self.app_counts: list[int] = []
        self.session_times: list[int] = []
        self.session_dwell: list[float] = []
        self.session_counts: list[int] = []
        self.session_owner: list[int] = []
        self.viewed: list[int] = []
        self.viewed_counts: list[int] = []
        self.converted: list[int] = []
        self.converted_counts: list[int] = []
        self.affinity_times: list[int] = []
        self.affinity_counts: list[int] = []
        self.affinity_owner: list[int] = []
        self.affinity_category: list[int] = []
        self.profile_times: list[int] = []
        self.profile_counts: list[int] = []
        self.gender: list[int] = []
        self.birth_year: list[float] = []
        self.owner = 0

    def person(self, facts: list[Fact], profile_events: list[RecordedEvent]) -> bool:
        """Lay out one person of one stream; False (and nothing laid out) if their rows do not follow
        from their own facts in time order alone: a consent withdrawn (a grant changes nothing:
        everything counts until a withdrawal), or an amount finer than a cent or too large to sum
        exactly in cents."""
        if any(f[2] == "c" and not f[4] for f in facts):
            return False
        facts = sorted((f for f in facts if f[2] != "c"), key=_ORDER)
        money = [_cents(f[3]) for f in facts if f[2] in "or"]
        if None in money:
            return False
        cents = iter(money)
        me = self.owner
        self.owner += 1
        counts = {k: 0 for k in "pvswa"}
        orders = refunds = 0
        previous_day = None
        previous_order = None
        sessions: dict[Any, list[tuple[int, float]]] = {}
        app_first: dict[Any, int] = {}
        views: dict[str, list[int]] = {}
        bought: list[tuple[int, list[str]]] = []
        affinity: dict[str, list[int]] = {}
        for f in facts:
            t, kind = f[0], f[2]
            self.facts.append(t)
            day = t // DAY_US
            self.new_day.append(day != previous_day)
            previous_day = day
            if kind == "o":
                orders += 1
                self.orders.append(t)
                self.order_cents.append(next(cents))  # type: ignore[arg-type]
                self.order_gaps.append(0.0 if previous_order is None else (t - previous_order) / DAY_US)
                previous_order = t
                label = order_category(f)
                self.order_label.append(-1 if label is None else self._code(label))
                bought.append((t, list(f[5])))
                for c in f[4]:
                    affinity.setdefault(c, []).append(t)
            elif kind == "r":
                refunds += 1
                self.refunds.append(t)
                self.refund_cents.append(next(cents))  # type: ignore[arg-type]
            elif kind in "pvs":
                counts[kind] += 1
                self.kinds[kind][0].append(t)
                if f[3] is not None:
                    dwell = float(f[4]) if kind == "p" and f[4] is not None else 0.0
                    sessions.setdefault(f[3], []).append((t, dwell))
                if kind == "v":
                    views.setdefault(f[4], []).append(t)
                    affinity.setdefault(f[5], []).append(t)
                elif kind == "p" and f[5]:
                    affinity.setdefault(f[5], []).append(t)
            elif kind == "x":
                if f[4]:
                    affinity.setdefault(f[4], []).append(t)
            elif kind == "a":
                counts["a"] += 1
                self.kinds["a"][0].append(t)
                self.minutes.append(float(f[4]))
                app_first.setdefault(f[3], t)
            elif kind == "w":
                counts["w"] += 1
                self.kinds["w"][0].append(t)
                self.ratings.append(int(f[3]))
        self.fact_counts.append(len(facts))
        self.order_counts.append(orders)
        self.refund_counts.append(refunds)
        for k, n in counts.items():
            self.kinds[k][1].append(n)
        firsts = sorted(app_first.values())
        self.app_first.extend(firsts)
        self.app_counts.append(len(firsts))
        for entries in sessions.values():  # in the order sessions began: their seconds sum as the view sums them
            self.session_times.extend(t for t, _ in entries)
            self.session_dwell.extend(d for _, d in entries)
            self.session_counts.append(len(entries))
            self.session_owner.append(me)
        first_views = sorted(times[0] for times in views.values())
        self.viewed.extend(first_views)
        self.viewed_counts.append(len(first_views))
        conversions = sorted(_conversions(views, bought).values())
        self.converted.extend(conversions)
        self.converted_counts.append(len(conversions))
        for category in sorted(affinity):  # by name, as the view lists them
            times = affinity[category]
            self.affinity_times.extend(times)
            self.affinity_counts.append(len(times))
            self.affinity_owner.append(me)
            self.affinity_category.append(self._code(category))
        self._profile(profile_events)
        return True

    def _profile(self, events: list[RecordedEvent]) -> None:
        instants = sorted({text_micros(e.occurred_at) for e in events})
        for instant in instants:
            state = replay(ATTRIBUTES, [e for e in events if text_micros(e.occurred_at) <= instant])
            view = ATTRIBUTES.view(state, datetime(2000, 1, 1))  # the year does not matter: age is derived later
            gender = view.get("gender", {}).get("value")
            born = view.get("birth_year", {}).get("value")
            self.profile_times.append(instant)
            self.gender.append(_GENDERS.get(gender, 0) if isinstance(gender, str) else 0)
            numeric = isinstance(born, int | float) and not isinstance(born, bool)
            self.birth_year.append(float(born) if numeric else np.nan)
        self.profile_counts.append(len(instants))

    def _code(self, category: str) -> int:
        code = self.category_code.get(category)
        if code is None:
            code = self.category_code[category] = len(self.category_code)
        return code

    def close(self, into: Columns) -> None:
        into.facts = Track.of(self.facts, self.fact_counts)
        into.new_day = into.facts.totals(self.new_day)
        into.orders = Track.of(self.orders, self.order_counts)
        into.order_cents = into.orders.totals(self.order_cents)
        into.order_gap_days = np.asarray(self.order_gaps, dtype=np.float64)
        into.order_label = np.asarray(self.order_label, dtype=np.int64)
        into.refunds = Track.of(self.refunds, self.refund_counts)
        into.refund_cents = into.refunds.totals(self.refund_cents)
        into.pages, into.products, into.searches, into.reviews, into.app = (
            Track.of(*self.kinds[k]) for k in "pvswa")
        into.ratings = into.reviews.totals(self.ratings)
        into.app_minutes = np.asarray(self.minutes, dtype=np.float64)
        into.app_sessions = Track.of(self.app_first, self.app_counts)
        into.sessions = Track.of(self.session_times, self.session_counts)
        into.session_dwell = np.asarray(self.session_dwell, dtype=np.float64)
        into.session_owner = np.asarray(self.session_owner, dtype=np.int64)
        into.viewed = Track.of(self.viewed, self.viewed_counts)
        into.converted = Track.of(self.converted, self.converted_counts)
        into.affinity = Track.of(self.affinity_times, self.affinity_counts)
        into.affinity_owner = np.asarray(self.affinity_owner, dtype=np.int64)
        into.affinity_category = np.asarray(self.affinity_category, dtype=np.int64)
        into.profile = Track.of(self.profile_times, self.profile_counts)
        into.gender = np.asarray(self.gender, dtype=np.int64)
        into.birth_year = np.asarray(self.birth_year, dtype=np.float64)
        into.categories = sorted(self.category_code, key=self.category_code.__getitem__)


MAX_CENTS = 10 ** 11  # an order of up to a billion: the running totals of 10⁷ of them stay far inside int64


def _cents(amount: Any) -> int | None:
    """An amount in whole cents, if it is a whole number of them and not too large to sum exactly."""
    value = Decimal(amount).scaleb(2)
    if value != value.to_integral_value() or not 0 <= value < MAX_CENTS:
        return None
    return int(value)


def _conversions(views: dict[str, list[int]], bought: list[tuple[int, list[str]]]) -> dict[str, int]:
    """For each SKU bought within the conversion window after a view of it, when it first was."""
    window = FEATURES.config.conversion_days * DAY_US
    out: dict[str, int] = {}
    for t, skus in bought:
        for sku in skus:
            seen = views.get(sku)
            if seen and sku not in out and any(0 <= t - v <= window for v in seen):
                out[sku] = t
    return out
