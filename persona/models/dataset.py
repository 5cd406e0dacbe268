"""Point-in-time training sets (docs/design.md, invariant 7).

For a cutoff T and a horizon H, a person's features are their projections replayed as of T —
only facts that had happened by T count, never today's values — and their label comes only
from what they did in (T, T + H]. Several cutoffs stack into one set, each row tagged with its
cutoff so that models train on earlier cutoffs and are tested on later ones. Erased people
cannot be read, so they are in no set made after their erasure.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from persona import identity
from persona.core import Persona
from persona.crypto import Sealer
from persona.engine import Engine, Local, Part, StoreAddress, active, tasks
from persona.errors import ValidationError
from persona.eventlog import gc_paused, open_streams
from persona.events import RecordedEvent, from_micros, micros, text_micros
from persona.models.columns import Columns, order_category
from persona.projections import ATTRIBUTES, FEATURES
from persona.projections.base import replay
from persona.projections.behavior import DAY_US, Fact, consent_changes
from persona.store.base import Head

# Features read from the behaviour projection's view, as numbers (missing: NaN, imputed later)
VIEW_FEATURES = (
    "frequency", "monetary", "aov", "recency_days", "refunds", "refund_amount", "interpurchase_mean_days",
    "interpurchase_std_days", "page_views", "product_views", "searches", "sessions", "session_mean_duration_s",
    "app_sessions", "app_minutes", "reviews", "review_mean_rating", "viewed_skus", "converted_skus",
    "conversion_rate", "behavior_events", "active_days",
)
# ... and derived at the cutoff from the same projection (windows end at the cutoff)
WINDOW_FEATURES = ("days_since_first_seen", "days_since_last_seen", "orders_last_window", "spend_last_window",
                   "events_last_30d", "events_last_window", "age", "gender_female", "gender_male")
# ... and relative to the person's own age and pace, so that they mean the same at any age or season
# (issue 21): the trend of their last two windows, how late they are against their own cadence
PACE_FEATURES = ("orders_previous_window", "order_trend", "orders_per_month_since_first", "days_since_last_order",
                 "recency_over_cadence", "interpurchase_cv", "longest_gap_days")
ROW_FEATURES = (*VIEW_FEATURES, *WINDOW_FEATURES, *PACE_FEATURES)  # every row has each
MAX_CATEGORIES = 20  # affinity features: the categories most often seen at the training cutoffs


@dataclass
class History:
    """One person today: every event of each of their streams, folded once, and when (in the
    world) each merge that made them one person happened."""

    person: str
    members: tuple[str, ...] = ()  # their streams, oldest first (the first names the person)
    facts: dict[str, list[Fact]] = field(default_factory=dict)  # stream -> the behaviour projection's state
    profile_events: dict[str, list[RecordedEvent]] = field(default_factory=dict)
    joins: list[tuple[int, str, str]] = field(default_factory=list)  # (occurred µs, stream, stream)

    def all_facts(self) -> list[Fact]:
        return [f for facts in self.facts.values() for f in facts]

    def parts(self, at_us: int) -> list[tuple[str, ...]]:
        """Who this person was at an instant: their streams grouped by the merges that had
        happened by then (a cookie that logs in next month is someone else until then)."""
        members = self.members or tuple(self.facts)
        if len(members) == 1:
            return [members]
        root = {m: m for m in members}

        def find(m: str) -> str:
            while root[m] != m:
                root[m] = root[root[m]]
                m = root[m]
            return m

        for at, a, b in self.joins:
            if at <= at_us and a in root and b in root:
                root[find(a)] = find(b)
        groups: dict[str, list[str]] = {}
        for m in members:  # in stream order: each group is named by its oldest stream
            groups.setdefault(find(m), []).append(m)
        return [tuple(g) for g in groups.values()]


@dataclass(frozen=True)
class Row:
    """One person at one cutoff: what was known then, and what happened in the window after."""

    person: str  # who they were at the cutoff, named by their oldest stream
    members: tuple[str, ...]  # that person's streams then
    cutoff: int  # index into Dataset.cutoffs
    features: dict[str, float]
    categories: dict[str, float]  # category affinity at the cutoff
    # the BG/NBD summary at the cutoff (days, from the first purchase, or first seen if none)
    x: float
    t_x: float
    age_days: float
    aov: float | None
    # what happened after the cutoff, within the horizon
    orders_after: int
    spend_after: float
    days_to_next: float | None
    next_category: str | None


@dataclass
class Dataset:
    cutoffs: list[datetime]
    horizon: timedelta
    rows: list[Row]
    end: datetime  # the last instant any event happened

    def people(self) -> list[str]:
        return sorted({row.person for row in self.rows})

    @cached_property
    def fingerprint(self) -> str:
        """What the set was made of, as a hash: the same people, cutoffs and values give the same
        (computed once: the tasks of one horizon share the set)."""
        h = hashlib.sha256()
        for c in self.cutoffs:
            h.update(c.isoformat().encode())
        h.update(str(self.horizon.total_seconds()).encode())
        ordered = sorted(self.rows, key=lambda r: (r.cutoff, r.person))
        h.update("\x00".join(r.person for r in ordered).encode())
        h.update(np.array([r.cutoff for r in ordered], dtype=np.int64).tobytes())
        values = matrix(ordered, ROW_FEATURES)
        h.update(np.where(np.isnan(values), np.nan, values).tobytes())  # one NaN, whatever sign it was made with
        h.update(np.array([(r.orders_after, r.spend_after) for r in ordered], dtype=np.float64).tobytes())
        return h.hexdigest()


def histories(persona: Persona, *, page: int = 20_000) -> dict[str, History]:
    """Every person with readable events, folded from one pass over the log."""
    rec = persona.recorder
    people = identity.persons(rec, list(persona.log.profile_ids()))
    out: dict[str, History] = {}
    merged_at: dict[int, int] = {}  # merge edge -> when its link happened
    with gc_paused():  # millions of small acyclic facts: the cyclic collector would only slow it down
        for event in persona.log.iter_all(page=page):
            person = people.get(event.profile_id)
            key = person.id if person is not None else event.profile_id
            history = out.get(key)
            if history is None:
                history = out[key] = History(key, person.members if person is not None else (key,))
            _fold(history, event, merged_at)
    add_joins(rec, out, merged_at)
    return out


def history_of(persona: Persona, profile_id: str) -> History:
    """One person, read stream by stream."""
    person = identity.person_of(persona.recorder, profile_id)
    history = History(person.id, person.members)
    merged_at: dict[int, int] = {}
    for member in person.members:
        for event in persona.log.read(member):
            _fold(history, event, merged_at)
    add_joins(persona.recorder, {person.id: history}, merged_at)
    return history


def histories_of(persona: Persona, people: Sequence[Sequence[str]]) -> dict[str, History]:
    """These people (each their streams, the first naming them), read stream by stream in one scan:
    as `histories` folds them from the whole log."""
    rec, log = persona.recorder, persona.log
    heads = rec.heads([member for members in people for member in members])
    return histories_in(rec, people, heads, {pid: log.sealer(pid, head) for pid, head in heads.items()
                                             if head.wrapped is not None})


def histories_in(rec: Any, people: Sequence[Sequence[str]], heads: dict[str, Head], sealers: dict[str, Sealer],
                 firsts: dict[str, int] | None = None) -> dict[str, History]:
    """histories_of with the streams' keys given (a worker's, persona.engine.Part): every stream
    with a key, folded. `firsts`, if given, gets each person's first position in the log."""
    owner = {member: members for members in people for member in members}
    out: dict[str, History] = {}
    merged_at: dict[int, int] = {}
    first: dict[str, int] = {} if firsts is None else firsts
    with gc_paused():
        for event in open_streams(rec.read_streams([heads[pid].no for pid in sealers]), sealers):
            members = owner[event.profile_id]
            history = out.get(members[0])
            if history is None:
                history = out[members[0]] = History(members[0], tuple(members))
                first[members[0]] = event.position
            elif event.version == 1 and event.position < first[members[0]]:  # another stream of theirs, older
                first[members[0]] = event.position
            _fold(history, event, merged_at)
    add_joins(rec, out, merged_at)
    return out


def histories_on(persona: Persona, engine: Engine) -> dict[str, History]:
    """`histories`, read a part of the people at a time on an engine's workers (persona.engine),
    each given only its part's keys; in the order `histories` gives (each person's first event
    in the log), so that what is made of them is made in the same order."""
    people = identity.everyone(persona.recorder)
    found: dict[str, History] = {}
    firsts: dict[str, int] = {}
    for done, first in engine.map(_histories_part, tasks(persona, people, part_size(len(people), engine))):
        found.update(done)
        firsts.update(first)
    return {person: found[person] for person in sorted(found, key=firsts.__getitem__)}


def _histories_part(where: StoreAddress, part: Part) -> tuple[dict[str, History], dict[str, int]]:
    """In a worker: these people's histories, and where each first appears in the log."""
    firsts: dict[str, int] = {}
    with part.opened(where) as (rec, heads, sealers):
        return histories_in(rec, part.people, heads, sealers, firsts), firsts


def part_size(people: int, engine: Engine) -> int:
    """People a part: a few parts a worker, so that none waits long on another."""
    return max(1, min(PARALLEL_PART, -(-people // (engine.slots() * 4))))


PARALLEL_PART = 20_000  # people a worker reads and builds rows for at a time


def instant_rows(persona: Persona, moment: datetime, windows: Sequence[int], *, whole: bool = False,
                 workers: int | None = None, engine: Engine | None = None) -> dict[int, list[Row]]:
    """Everyone's rows at one instant for each of these windows (µs), as rows_then gives them from
    `histories`. From PARALLEL_PEOPLE people on (or on an engine), a part of the people at a time in
    worker processes: each is given the part's keys, reads and folds those people's streams and
    builds their rows (nothing of them is written anywhere; the rows come back to this process).
    A person's streams are always in the same part."""
    people = identity.everyone(persona.recorder)
    engine = engine or active()
    if engine is None:
        if workers is None:
            workers = min(os.cpu_count() or 1, 8) if len(people) >= PARALLEL_PEOPLE else 1
        if workers <= 1:
            found = histories(persona)
            columns = Columns(found, list(found))
            return {window: rows_then(found, moment, window, whole=whole, columns=columns) for window in windows}
        engine = Local(workers)
    out: dict[int, list[Row]] = {window: [] for window in windows}
    for done in engine.map(_instant_rows_part, tasks(persona, people, part_size(len(people), engine), moment,
                                                     list(windows), whole)):
        for window, rows in done.items():
            out[window].extend(rows)
    return out


def _instant_rows_part(where: StoreAddress, part: Part, moment: datetime, windows: list[int], whole: bool
                       ) -> dict[int, list[Row]]:
    """In a worker: these people's rows at the instant, for each window."""
    with gc_paused():  # the collector would only walk the histories
        found, _ = _histories_part(where, part)
        ordered = sorted(found)
        columns = Columns(found, ordered)  # laid out once for every window
        return {window: point_in_time(found, ordered, [moment], window, whole=whole, columns=columns)
                for window in windows}


def _fold(history: History, event: RecordedEvent, merged_at: dict[int, int]) -> None:
    FEATURES.apply(history.facts.setdefault(event.profile_id, []), event)
    if event.type == "profile_updated":
        history.profile_events.setdefault(event.profile_id, []).append(event)
    elif event.type == identity.MERGED and isinstance(event.data.get("edge"), int):
        merged_at[event.data["edge"]] = text_micros(event.occurred_at)


def add_joins(rec: Any, found: dict[str, History], merged_at: dict[int, int]) -> None:
    merged = [m for h in found.values() if len(h.members) > 1 for m in h.members]
    if not merged:
        return
    owner = {m: h for h in found.values() for m in h.members}
    for edge in rec.merge_edges(merged):
        if edge.undone_at is None and edge.a in owner:
            owner[edge.a].joins.append((merged_at.get(edge.edge, edge.merged_at), edge.a, edge.b))


def data_end(found: Iterable[History], now: datetime | None = None) -> datetime | None:
    """The last instant anything happened (events dated ahead of the clock do not count: the
    windows after them are not over)."""
    last = max((f[0] for h in found for facts in h.facts.values() for f in facts), default=None)
    return None if last is None else min(from_micros(last), now or datetime.now(UTC))


def data_start(found: Iterable[History]) -> datetime | None:
    """The first instant anything happened."""
    first = min((f[0] for h in found for facts in h.facts.values() for f in facts), default=None)
    return None if first is None else from_micros(first)


MAX_CUTOFFS = 12  # by default: about a year of monthly cutoffs
STEP = timedelta(days=30)


def step_of(horizon: timedelta) -> timedelta:
    """The default spacing of cutoffs: about a month, a whole fraction of the horizon (91 days: every
    30⅓ days, so that three steps are one horizon), never more than the horizon."""
    parts = max(1, round(horizon / STEP))
    return horizon / parts


def default_cutoffs(end: datetime, horizon: timedelta, start: datetime | None = None,
                    count: int = MAX_CUTOFFS) -> list[datetime]:
    """Rolling cutoffs about a month apart (`step_of`), the last one a horizon before the data ends
    (every label window is complete), going back as far as the data allows (a step of history
    before the first), at most `count`; at least three, however short the data."""
    last = _midnight(end - horizon)
    step = step_of(horizon)
    out = [last]
    while len(out) < count:
        earlier = _midnight(last - step * len(out))
        if len(out) >= 3 and start is not None and earlier < start + step:
            break
        out.append(earlier)
    return sorted(out)


def _midnight(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def check_cutoffs(cutoffs: Sequence[datetime], horizon: timedelta, end: datetime) -> list[datetime]:
    """Sorted, distinct, the last label window closed by the data, and at least two cutoffs whose
    label windows close before the last one (the held-out test) begins; else a clear error."""
    ordered = sorted({c.astimezone(UTC) for c in cutoffs})
    if len(ordered) < 3:
        raise ValidationError("cutoffs: need at least three (train on the earlier ones, test on the last)")
    if ordered[-1] + horizon > end:
        raise ValidationError(f"cutoffs: the last cutoff plus the horizon ends after the data does "
                              f"({end.date().isoformat()}): its labels would be incomplete")
    if len(closed_before(ordered, horizon, len(ordered) - 1)) < 2:
        raise ValidationError("cutoffs: need at least two a horizon or more before the last one (the test set): "
                              "a training label window must close before the test begins")
    return ordered


def closed_before(cutoffs: Sequence[datetime], horizon: timedelta, index: int) -> list[int]:
    """The cutoffs whose label windows had closed by cutoff `index`: all a model may learn from
    when it is tested there (a later one's labels would tell it what happened after the test began)."""
    return [i for i, c in enumerate(cutoffs) if c + horizon <= cutoffs[index]]


PARALLEL_PEOPLE = 20_000  # from this many people on, a batch works in a process per core


def build(found: dict[str, History], cutoffs: Sequence[datetime], horizon: timedelta,
          columns: Columns | None = None) -> list[Row]:
    """A row per person and cutoff, for people seen by that cutoff, as they were then, in the order
    people first appear in the log (the data decides, not their random ids). `columns`: everyone's
    facts laid out already (`Columns(found, list(found))`), shared with other sets and instants."""
    window = int(horizon.total_seconds() * 1_000_000)
    return point_in_time(found, list(found), cutoffs, window, labels=True, columns=columns)


def rows_then(found: dict[str, History], moment: datetime, window: int, *, whole: bool = False,
              columns: Columns | None = None) -> list[Row]:
    """Everyone's rows at one instant (rows_at without labels), people in the order of their ids."""
    return point_in_time(found, sorted(found), [moment], window, whole=whole, columns=columns)


def fork_workers(items: int) -> int:
    """Processes to fork for a batch of this many people or rows: one per core (at most 8) from
    PARALLEL_PEOPLE on, and only from a process with no other thread (whose locks a child would
    inherit held); else 1."""
    many = items >= PARALLEL_PEOPLE and threading.active_count() == 1
    return min(os.cpu_count() or 1, 8) if many and "fork" in multiprocessing.get_all_start_methods() else 1


def in_forks(work: Any, count: int, workers: int) -> list[Any]:
    """[work(0), …, work(count − 1)], by `workers` forked processes (which see this process's memory
    as it is now: nothing is sent to them but an index; each result comes back pickled over its own
    pipe, never stored); with one worker, here."""
    if workers <= 1:
        return [work(k) for k in range(count)]
    global _WORK
    _WORK = work
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_run_work, range(count), chunksize=1)
    finally:
        _WORK = None


_WORK: Any = None  # read by forked workers


def _run_work(index: int) -> Any:
    assert _WORK is not None
    return _WORK(index)


def point_in_time(found: dict[str, History], people: Sequence[str], cutoffs: Sequence[datetime], window: int, *,
                  labels: bool = False, whole: bool = False, columns: Columns | None = None) -> list[Row]:
    """These people's rows at each cutoff, person by person (each person's in cutoff order), as
    `rows_at` folds them: computed column-wise (persona.models.columns) for everyone whose rows
    follow from their own facts alone, and folded one by one for the others (a person of several
    streams, a consent withdrawn). `columns`: the people's columns, laid out already."""
    columns = columns or Columns(found, people)
    made: dict[str, list[Row]] = {}
    for index, cutoff in enumerate(cutoffs):
        for row in column_rows(columns, cutoff, window, index, labels=labels):
            made.setdefault(row.person, []).append(row)
        for person in columns.others:
            made.setdefault(person, []).extend(rows_at(found[person], cutoff, window, index, labels=labels,
                                                       whole=whole))
    return [row for person in people for row in made.get(person, ())]


def column_rows(columns: Columns, instant: datetime, window: int, index: int = 0, *, labels: bool = False
                ) -> list[Row]:
    """The rows of the people laid out in `columns` seen by the instant, in their order."""
    frame = columns.frame(instant, window, labels=labels)
    seen = np.flatnonzero(frame["seen"])
    values = np.column_stack([frame[name][seen] for name in ROW_FEATURES]).tolist()
    affinity = columns.affinities(instant)
    x, t_x, age_days, aov = (frame[k][seen].tolist() for k in ("x", "t_x", "age_days", "aov"))
    bought = (frame["frequency"][seen] > 0).tolist()
    nothing = [0] * len(seen)
    after, spend, days_to, label = ((frame[k][seen].tolist() for k in ("orders_after", "spend_after", "days_to_next",
                                                                        "next_category"))
                                    if labels else (nothing, nothing, nothing, nothing))
    names, people, members = columns.categories, columns.people, columns.members
    return [
        Row(person=people[p], members=members[p], cutoff=index,
            features=dict(zip(ROW_FEATURES, values[i], strict=True)), categories=affinity.get(p, {}), x=x[i],
            t_x=t_x[i], age_days=age_days[i], aov=aov[i] if bought[i] else None, orders_after=int(after[i]),
            spend_after=float(spend[i]), days_to_next=days_to[i] if after[i] else None,
            next_category=names[label[i]] if after[i] and label[i] >= 0 else None)
        for i, p in enumerate(seen.tolist())
    ]


def rows_at(history: History, cutoff: datetime, window: int, index: int = 0, *, labels: bool = False,
            whole: bool = False) -> list[Row]:
    """The person's rows at an instant: one for each person they were then (merges that had
    not happened yet keep their streams apart; `whole`: as they are today, one row). `labels`:
    also what happened in the window after — by the person as they were at its end, so that a
    cookie which logs in during the window and then orders on the account still counts."""
    now = micros(cutoff)
    end = now + window
    later = history.parts(end) if labels else []
    out = []
    for part in ((history.members or tuple(history.facts)),) if whole else history.parts(now):
        facts = [f for m in part for f in history.facts.get(m, ())]
        if not facts:
            continue
        label_facts: list[Fact] = []
        if labels:
            group = next((g for g in later if part[0] in g), part)
            grown = [f for m in group for f in history.facts.get(m, ())]
            if _analytics_withheld(grown, end):
                continue  # what they did in the window is not ours to count: no label, no row
            label_facts = [f for f in FEATURES.counted(grown, from_micros(end)) if f[0] > now]
        row = _row(part, facts, [e for m in part for e in history.profile_events.get(m, ())],
                   FEATURES.counted(facts, cutoff), label_facts, index, cutoff, window)
        if row is not None:
            out.append(row)
    return out


def _analytics_withheld(facts: list[Fact], end: int) -> bool:
    """Was analytics consent withdrawn by the end of the window (or changed within it)? Then the
    window's orders were partly or wholly not counted, and a label would read withdrawal as churn."""
    changes = sorted(consent_changes(f for f in facts if f[0] <= end).get("analytics", ()),
                     key=lambda f: (f[0], f[1]))
    return bool(changes) and not changes[-1][4]


def _row(part: tuple[str, ...], facts: list[Fact], profile_events: list[RecordedEvent], before: list[Fact],
         label_facts: list[Fact], index: int, cutoff: datetime, window: int) -> Row | None:
    now = micros(cutoff)
    if not before:
        return None  # not seen yet
    view = FEATURES.view(facts, cutoff)  # the projection as of the cutoff: consent and all
    features: dict[str, float] = {name: _number(view.get(name)) for name in VIEW_FEATURES}
    first, last = before[0][0], before[-1][0]
    orders = [f for f in before if f[2] == "o"]
    recent = [f for f in orders if f[0] > now - window]
    features["days_since_first_seen"] = (now - first) / DAY_US
    features["days_since_last_seen"] = (now - last) / DAY_US
    features["orders_last_window"] = float(len(recent))
    features["spend_last_window"] = float(sum(Decimal(f[3]) for f in recent))
    features["events_last_30d"] = float(sum(1 for f in before if f[0] > now - 30 * DAY_US))
    features["events_last_window"] = float(sum(1 for f in before if f[0] > now - window))
    attributes = ATTRIBUTES.view(replay(ATTRIBUTES, profile_events, as_of=cutoff), cutoff)
    age = attributes.get("age", {}).get("value")  # derived from birth_year at the cutoff
    features["age"] = float(age) if isinstance(age, int | float) and not isinstance(age, bool) else float("nan")
    gender = attributes.get("gender", {}).get("value")
    features["gender_female"] = 1.0 if gender == "female" else 0.0
    features["gender_male"] = 1.0 if gender == "male" else 0.0
    features.update(_pace(orders, now, window))
    after = [f for f in label_facts if now < f[0] <= now + window and f[2] == "o"]
    if orders:
        x, t_x, age_days = len(orders) - 1, (orders[-1][0] - orders[0][0]) / DAY_US, (now - orders[0][0]) / DAY_US
    else:
        x, t_x, age_days = 0, 0.0, (now - first) / DAY_US
    return Row(
        person=part[0], members=part, cutoff=index, features=features,
        categories={c: float(v) for c, v in view.get("category_affinity", {}).items()},
        x=float(x), t_x=t_x, age_days=age_days, aov=features["aov"] if orders else None,
        orders_after=len(after), spend_after=float(sum(Decimal(f[3]) for f in after)),
        days_to_next=(after[0][0] - now) / DAY_US if after else None,
        next_category=order_category(after[0]) if after else None,
    )


def _pace(orders: list[Fact], now: int, window: int) -> dict[str, float]:
    """The person's buying relative to their own history: the window before the last one and the
    trend between them; orders a month since their first; days since the last order, and that over
    their mean gap between orders (above 1: later than their habit); the gaps' coefficient of
    variation (0: clockwork) and the longest gap, the time since the last order included."""
    nan = float("nan")
    previous = sum(1 for f in orders if now - 2 * window < f[0] <= now - window)
    latest = sum(1 for f in orders if f[0] > now - window)
    out = {"orders_previous_window": float(previous), "order_trend": float(latest - previous),
           "orders_per_month_since_first": nan, "days_since_last_order": nan, "recency_over_cadence": nan,
           "interpurchase_cv": nan, "longest_gap_days": nan}
    if not orders:
        return out
    times = [f[0] for f in orders]
    since = (now - times[-1]) / DAY_US
    out["days_since_last_order"] = since
    out["orders_per_month_since_first"] = len(times) / max((now - times[0]) / DAY_US, 1.0) * 30.0
    gaps = np.diff(np.array(times, dtype=np.float64)) / DAY_US
    out["longest_gap_days"] = float(max(gaps.max(), since)) if len(gaps) else since
    if len(gaps):
        mean = float(gaps.mean())
        out["recency_over_cadence"] = since / mean if mean > 0 else nan
        out["interpurchase_cv"] = float(gaps.std()) / mean if mean > 0 and len(gaps) > 1 else nan
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def category_columns(rows: Sequence[Row]) -> list[str]:
    """The categories worth a feature: most often held by the rows given (training rows)."""
    counts: dict[str, int] = {}
    for row in rows:
        for c in row.categories:
            counts[c] = counts.get(c, 0) + 1
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:MAX_CATEGORIES])


def matrix(rows: Sequence[Row], features: Sequence[str], extra: dict[str, NDArray[np.float64]] | None = None
           ) -> NDArray[np.float64]:
    """Rows as a feature matrix, a column per name in `features`: a row feature, `affinity_<category>`,
    or a column of `extra` (a name the rows lack, as of a version trained before it existed: missing)."""
    out = np.full((len(rows), len(features)), np.nan, dtype=np.float64)
    if not rows:
        return out
    extra = extra or {}
    known = set(ROW_FEATURES)
    plain = [(j, n) for j, n in enumerate(features) if n not in extra and n in known]
    affinity = [(j, n.removeprefix("affinity_")) for j, n in enumerate(features)
                if n not in extra and n not in known and n.startswith("affinity_")]
    if plain:  # one C-level lookup of every name per row
        take = itemgetter(*(n for _, n in plain))
        block = np.array([take(row.features) for row in rows], dtype=np.float64).reshape(len(rows), len(plain))
        out[:, [j for j, _ in plain]] = block
    if affinity:
        out[:, [j for j, _ in affinity]] = 0.0
        where = {c: j for j, c in affinity}
        for i, row in enumerate(rows):
            for c, v in row.categories.items():
                j = where.get(c)
                if j is not None:
                    out[i, j] = v
    for j, name in enumerate(features):
        if name in extra:
            out[:, j] = extra[name]
    return out
