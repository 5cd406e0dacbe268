"""Live segments: named rules (persona.rules) whose members persona keeps current.

A segment is a name and a rule over what persona keeps of each person (docs/segments.md). Who
is in it is a read model kept beside the profile index, with the instant each member entered
(`since`), and every entry and exit is noted, in order, as a change (what subscriptions and,
later, destinations follow):

- **On every index write** (`follow`, called by Projector.refresh inside the transaction that
  writes the index rows): the refreshed people are tested against every segment, so a person's
  membership changes in the same commit as the event that changed it.
- **When the clock or the RFM scores move it** (`sweep`): a rule on `recency_days`,
  `lifecycle_stage` or `age` can start or stop holding with no event, and RFM scores rank the
  whole population, so their segments are swept — by `persona serve` every
  PERSONA_SEGMENT_SWEEP seconds and after each RFM scoring, by `persona segments refresh`, and
  after a rebuild. A sweep reads outside the write lock and writes a change only for a person
  whose index row is still the one it read (a refresh meanwhile has already done it).

A rebuild reconciles memberships rather than emptying them: a member since last month stays
one since last month. Erasure deletes a person's memberships and changes with their other
read-model rows; a backup leaves them out, and a restore makes them anew (their `since` then).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from persona.core import Persona
from persona.errors import ValidationError
from persona.events import from_micros, micros
from persona.indexed import IndexedProfile, present
from persona.rules import Rule, compile_rule

NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")
MAX_SEGMENTS = 100  # a refresh tests every one against every person it touches
# names whose value moves with the clock alone (rules.NAMES, and the labels accepted for them)
CLOCKED = frozenset({"recency_days", "lifecycle_stage", "stage", "age"})
RFM_NAMES = frozenset({"rfm.r", "rfm.f", "rfm.m"})
_PAGE = 1_000  # index rows a sweep reads at a time
_SWEPT = "segments.swept"  # meta: when the clocked segments were last swept (µs), by any process


class SegmentError(ValidationError):
    """A segment that cannot be made or found: the message names it, never a person."""


@dataclass(frozen=True)
class Segment:
    name: str
    rule: Rule
    created_at: datetime
    created_by: str

    @property
    def clocked(self) -> bool:
        """Its members can change with no event: it reads a value the clock moves."""
        return not CLOCKED.isdisjoint(self.rule.names)

    @property
    def scored(self) -> bool:
        """It reads RFM scores, which rank the whole population."""
        return not RFM_NAMES.isdisjoint(self.rule.names)


@dataclass(frozen=True)
class Membership:
    segment: str
    since: datetime


@dataclass(frozen=True)
class Change:
    seq: int
    at: datetime
    segment: str
    profile_id: str
    entered: bool


@dataclass(frozen=True)
class Swept:
    entered: int
    left: int
    people: int


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise SegmentError("a segment's name is 1 to 64 characters: a lower-case letter, then lower-case letters,"
                           " digits, '_' or '-'")
    return name


_compiled = functools.lru_cache(maxsize=4 * MAX_SEGMENTS)(compile_rule)  # parsed once per process


def definitions(persona: Persona) -> list[Segment]:
    return [Segment(name, _compiled(rule), from_micros(at), by)
            for name, rule, at, by in persona.recorder.segment_definitions()]


def segment(persona: Persona, name: str) -> Segment:
    found = next((s for s in definitions(persona) if s.name == name), None)
    if found is None:
        raise SegmentError(f"no segment named {name!r}")
    return found


def add_segment(persona: Persona, name: str, rule: str, *, by: str, now: datetime | None = None) -> Segment:
    """Define a segment and find its members now. Refused: a bad name or rule (RuleError says
    where), a name taken, or more than MAX_SEGMENTS segments."""
    check_name(name)
    compiled = compile_rule(rule)
    now = now or datetime.now(UTC)
    rec = persona.recorder
    with rec.transaction():
        if len(rec.segment_definitions()) >= MAX_SEGMENTS:
            raise SegmentError(f"there are {MAX_SEGMENTS} segments already, the most a store keeps")
        if not rec.add_segment(name, compiled.text, micros(now), by):
            raise SegmentError(f"a segment named {name!r} exists; remove it first to change its rule")
    made = Segment(name, compiled, now, by)
    sweep(persona, only=[name], now=now)
    return made


def remove_segment(persona: Persona, name: str) -> None:
    """The segment goes, with its memberships and its changes (no exit is noted for its members)."""
    check_name(name)
    with persona.recorder.transaction():
        if not persona.recorder.remove_segment(name):
            raise SegmentError(f"no segment named {name!r}")


def memberships(persona: Persona, profile_id: str) -> list[Membership]:
    """The segments a person is in, by name, each with when they entered it."""
    return [Membership(segment, from_micros(since))
            for segment, _, since in persona.recorder.memberships([profile_id])]


def of_many(persona: Persona, profile_ids: Sequence[str]) -> dict[str, list[Membership]]:
    """The segments each of these persons is in (those in none are left out)."""
    out: dict[str, list[Membership]] = {}
    for segment, pid, since in persona.recorder.memberships(profile_ids):
        out.setdefault(pid, []).append(Membership(segment, from_micros(since)))
    return out


def members_of(persona: Persona, name: str, *, after: str = "", limit: int = 1000) -> list[tuple[str, datetime]]:
    """A segment's members after a profile id, in id order, each with when they entered."""
    return [(pid, from_micros(since)) for pid, since in persona.recorder.segment_members(name, after, limit)]


def sizes(persona: Persona) -> dict[str, int]:
    """Members of every segment (0 for an empty one), by name."""
    counted = persona.recorder.segment_sizes()
    return {name: counted.get(name, 0) for name, *_ in persona.recorder.segment_definitions()}


def size_history(persona: Persona, days: int, *, now: datetime | None = None) -> dict[str, list[tuple[date, int]]]:
    """Each segment's size at the end of each of the last `days` days (today last), walked back
    from its size now through the entries and exits kept (PERSONA_SEGMENT_CHANGES_DAYS: a day
    older than that shows the size the kept changes lead back to)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    net: dict[str, dict[int, int]] = {}
    for name, number, entered, left in persona.recorder.segment_daily_changes(micros(start)):
        net.setdefault(name, {})[number] = entered - left
    epoch = date(1970, 1, 1)
    out: dict[str, list[tuple[date, int]]] = {}
    for name, size in sizes(persona).items():
        moves, series = net.get(name, {}), []
        for offset in range(days):
            day = today - timedelta(days=offset)
            series.append((day, size))
            size -= moves.get((day - epoch).days, 0)  # the size at the end of the day before
        out[name] = series[::-1]
    return out


def changes(persona: Persona, after: int = 0, limit: int = 1000) -> list[Change]:
    """Entries and exits after a change's number, in order."""
    return [Change(seq, from_micros(at), segment, pid, entered)
            for seq, at, segment, pid, entered in persona.recorder.segment_changes(after, limit)]


def last_change(persona: Persona) -> int:
    """The number of the latest entry or exit kept: a follower starts after it."""
    return persona.recorder.last_segment_change()


def _wanted(segments: Sequence[Segment], profile: IndexedProfile) -> set[str]:
    return {s.name for s in segments if s.rule(profile.attributes, profile.features, profile.rfm)}


def follow(persona: Persona, rows: Sequence[tuple[str, int, str]], absorbed: Collection[str] = (),
           now: datetime | None = None) -> int:
    """Bring the memberships of these people up to date with their index rows (profile_id,
    version, doc), just written in the caller's transaction; `absorbed`: ids that are no longer a
    person of their own (merged into another), whose memberships end. Returns the changes made."""
    rec = persona.recorder
    segments = definitions(persona)
    if not segments or not (rows or absorbed):
        return 0
    now = now or datetime.now(UTC)
    # only the rows the index holds now: put_index writes no row of a person erased meanwhile, nor
    # over a newer one (another writer's), and memberships follow what it holds
    held_at = rec.index_versions([pid for pid, _, _ in rows])
    rows = [row for row in rows if held_at.get(row[0]) == row[1]]
    ids = [pid for pid, _, _ in rows]
    rfm = rec.rfm_of_many(ids) if any(s.scored for s in segments) else {}
    wanted = {pid: _wanted(segments, present(pid, version, orjson.loads(doc), rfm.get(pid), now))
              for pid, version, doc in rows}
    held: dict[str, set[str]] = {}
    for name, pid, _ in rec.memberships([*ids, *absorbed]):
        held.setdefault(pid, set()).add(name)
    entered = [(name, pid) for pid, names in wanted.items() for name in sorted(names - held.get(pid, set()))]
    left = [(name, pid) for pid, names in held.items() for name in sorted(names - wanted.get(pid, set()))]
    if entered or left:
        rec.change_memberships(entered, left, micros(now))
    return len(entered) + len(left)


def _index(persona: Persona) -> Iterator[tuple[str, int, str, dict[str, int] | None]]:
    after = ""
    while True:
        rows = persona.recorder.index_rows(after, _PAGE)
        for pid, version, doc, r, f, m in rows:
            yield pid, version, doc, ({"r": r, "f": f, "m": m} if r is not None and f is not None
                                      and m is not None else None)
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


def sweep(persona: Persona, *, only: Collection[str] | None = None,
          which: Callable[[Segment], bool] | None = None, now: datetime | None = None,
          progress: Callable[[int], None] | None = None) -> Swept:
    """Test every person in the index against these segments (`only` names them; `which` picks
    them; all by default) as of `now`, and write the entries and exits found. Read outside the
    write lock; a change is written only for a person whose index row and RFM scores are still
    those tested, and only for a segment still defined as it was."""
    rec = persona.recorder
    segments = [s for s in definitions(persona) if (only is None or s.name in only) and (which is None or which(s))]
    if not segments:
        return Swept(0, 0, 0)
    scored = any(s.scored for s in segments)
    now = now or datetime.now(UTC)
    tested: dict[str, tuple[int, dict[str, int] | None]] = {}  # profile -> index version and RFM scores tested
    wanted: dict[str, set[str]] = {}
    for pid, version, doc, rfm in _index(persona):
        tested[pid] = (version, rfm if scored else None)
        found = _wanted(segments, present(pid, version, orjson.loads(doc), rfm, now))
        if found:
            wanted[pid] = found
        if progress is not None and len(tested) % _PAGE == 0:
            progress(_PAGE)
    with rec.transaction():
        # a segment removed (or removed and defined anew) meanwhile is left alone
        still_defined = {(d.name, d.rule.text, d.created_at) for d in definitions(persona)}
        names = {s.name for s in segments if (s.name, s.rule.text, s.created_at) in still_defined}
        wanted = {pid: found & names for pid, found in wanted.items()}
        held: dict[str, set[str]] = {}
        for name, pid, _ in rec.memberships(segments=sorted(names)):
            held.setdefault(pid, set()).add(name)
        entering = {pid: found - held.get(pid, set()) for pid, found in wanted.items()}
        leaving = {pid: found - wanted.get(pid, set()) for pid, found in held.items()}
        touched = sorted({pid for pid, n in entering.items() if n} | {pid for pid, n in leaving.items() if n})
        versions = rec.index_versions(touched)
        scores = rec.rfm_of_many(touched) if scored else {}
        # unchanged since it was tested, or out of the index (erased, merged into another) and not tested
        still = {pid for pid in touched
                 if (versions.get(pid), scores.get(pid)) == tested.get(pid, (None, None))}
        entered = [(name, pid) for pid in touched if pid in still for name in sorted(entering.get(pid, ()))]
        left = [(name, pid) for pid in touched if pid in still for name in sorted(leaving.get(pid, ()))]
        if entered or left:
            rec.change_memberships(entered, left, micros(now))
        rec.prune_segment_changes(micros(now - timedelta(days=persona.settings.segment_changes_days)))
    return Swept(len(entered), len(left), len(tested))


def sweep_if_due(persona: Persona, every_s: float, *, now: datetime | None = None) -> Swept | None:
    """The server's sweep of the clocked segments, at most once every `every_s` seconds across
    every process of the store (several workers take turns: the first to find it due sweeps)."""
    rec = persona.recorder
    moment = now or datetime.now(UTC)
    if not any(s.clocked for s in definitions(persona)):
        return None
    with rec.transaction():
        last = int(rec.get_meta(_SWEPT) or 0)
        if micros(moment) - last < every_s * 1_000_000 * 0.9:
            return None  # another process swept just now
        rec.set_meta(_SWEPT, str(micros(moment)))
    return sweep(persona, which=lambda s: s.clocked, now=moment)


def any_scored(persona: Persona) -> bool:
    """Whether a segment reads RFM scores (and so is swept after each scoring)."""
    return any(s.scored for s in definitions(persona))


def after_scoring(persona: Persona) -> Swept:
    """RFM scores were written: the segments that read them are swept."""
    return sweep(persona, which=lambda s: s.scored)


def describe(persona: Persona) -> list[dict[str, Any]]:
    """Every segment with its rule, its size and what keeps it current (for the command line)."""
    counted = sizes(persona)
    out = []
    for s in definitions(persona):
        n = counted.get(s.name, 0)
        out.append({"name": s.name, "rule": s.rule.text, "created_at": s.created_at.isoformat(),
                    "created_by": s.created_by, "members": n,
                    "swept": "clock" if s.clocked else ("rfm" if s.scored else "events")})
    return out
