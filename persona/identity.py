"""Persons made of profiles: merging the streams that turn out to be one person, and undoing it.

Identity resolution links every identifier seen on one record (an order's e-mail and
phone, an app login's device and user id) to one profile. When such a link joins two
profiles that already exist — a cookie browsed anonymously for a week, then logged in —
they are **merged**: a `profiles_merged` event is appended to both streams and the merge
is recorded in the `merges` table. Nothing is moved or re-encrypted. Each stream keeps its
own events under its own key; the person is the group of streams, named by its oldest
stream's id, and every projection of the person folds all of its streams' events.

Keeping the streams apart is what makes the two hard cases right:

- **undo**: a wrong link is a real-world error (a shared phone, a typo in an e-mail). Undoing
  a merge appends `profiles_unmerged` to both streams and regroups; each stream's events are
  still only its own, so both people come back exactly as they were, plus what each has
  done since. The undone merge is remembered: the same two people are not merged again by
  another record, only by an explicit `link`.
- **erasure**: erasing a merged person deletes the key of every stream in it, so every
  event of theirs becomes unreadable at once; after an undo, erasing one of the two people
  leaves the other's history readable, because it was never sealed under the erased key.

New identifiers seen with a known one on a record go to that identifier's stream, so after
an undo they stay with the person they arrived with. A link asked for by hand is different
(persona.linking): a new identifier it names gets a stream of its own, merged, so that an
undo can take it back out with whatever arrived for it since.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from persona.events import RESERVED_SOURCE
from persona.store.base import Recorder

MERGE_SOURCE = RESERVED_SOURCE  # the source of the events identity resolution appends itself (refused on input)
MERGED = "profiles_merged"
UNMERGED = "profiles_unmerged"
SYSTEM_TYPES = frozenset({MERGED, UNMERGED})


@dataclass(frozen=True)
class Person:
    """One person: a profile, or several merged ones (their streams, oldest first)."""

    id: str
    members: tuple[str, ...]

    @property
    def merged(self) -> bool:
        return len(self.members) > 1


def persons(rec: Recorder, profile_ids: Iterable[str]) -> dict[str, Person]:
    """The person each profile id belongs to (itself, unless it was merged): two queries."""
    ids = list(dict.fromkeys(profile_ids))
    of = rec.persons_of(ids) if ids else {}
    grouped = rec.members_of(sorted(set(of.values()))) if of else {}
    out = {}
    for pid in ids:
        root = of.get(pid)
        members = grouped.get(root) if root is not None else None
        out[pid] = Person(root, tuple(members)) if root is not None and members else Person(pid, (pid,))
    return out


def hold_persons(rec: Recorder, profile_ids: Iterable[str]) -> dict[str, Person]:
    """`persons`, each held to the end of the caller's transaction where other writers write
    beside it (PostgreSQL's concurrent transactions): the row of its first stream locked, so
    that another writer's merge of it, or write of its read-model rows, waits. Read again
    until every person read is held (a merge may have changed them while they were taken)."""
    ids = list(dict.fromkeys(profile_ids))
    if not rec.beside_others():
        return persons(rec, ids)  # (an exclusive transaction holds everyone already)
    held: set[str] = set()
    while True:
        found = persons(rec, ids)
        roots = {person.id for person in found.values()} - held
        if not roots:
            return found
        rec.heads(sorted(roots), lock=True)
        held |= roots


def person_of(rec: Recorder, profile_id: str) -> Person:
    return persons(rec, [profile_id])[profile_id]


def everyone(rec: Recorder) -> list[list[str]]:
    """Every person not erased, as their streams (the first naming them), in person id order:
    ids are random, so a slice of them is a hash partition of the store (persona.engine)."""
    erased = {pid for pid, _ in rec.tombstones()}
    found = persons(rec, [pid for pid in rec.stream_ids() if pid not in erased])
    return [list(members) for _, members in sorted({p.id: p.members for p in found.values()}.items())]


def components(rec: Recorder, seeds: Iterable[str]) -> list[list[str]]:
    """The groups of streams joined by active merges that hold these streams."""
    seen: set[str] = set()
    found = []
    for seed in seeds:
        if seed in seen:
            continue
        group, frontier = {seed}, [seed]
        while frontier:
            edges = rec.merge_edges(frontier)
            frontier = []
            for edge in edges:
                if edge.undone_at is not None:
                    continue
                for stream in (edge.a, edge.b):
                    if stream not in group:
                        group.add(stream)
                        frontier.append(stream)
        seen |= group
        found.append(sorted(group))
    return found


def regroup(rec: Recorder, seeds: Iterable[str]) -> list[Person]:
    """Recompute the persons holding these streams from the active merges (inside the
    caller's transaction). Each person is named by its oldest stream. Their read-model rows
    are dropped, to be written afresh by the next refresh: a person's row replaces its
    streams' rows, and a split person's rows are rewritten from scratch."""
    groups = components(rec, seeds)
    heads = rec.heads([s for group in groups for s in group])
    rows: list[tuple[str, str]] = []
    singles: list[str] = []
    out = []
    for group in groups:
        ordered = sorted((s for s in group if s in heads), key=lambda s: heads[s].no)
        if not ordered:
            continue
        root = ordered[0]
        if len(ordered) > 1:
            rows.extend((member, root) for member in ordered)
        else:
            singles.append(root)
        out.append(Person(root, tuple(ordered)))
    rec.set_members(rows, singles)
    rec.drop_derived([s for person in out for s in person.members])
    return out


def edges_between(rec: Recorder, one: Sequence[str], other: Sequence[str]) -> list[int]:
    """Active merges with one end in each group of streams."""
    theirs = set(other)
    return [edge.edge for edge in rec.merge_edges(list(one))
            if edge.undone_at is None and ((edge.a in one and edge.b in theirs) or
                                           (edge.b in one and edge.a in theirs))]
