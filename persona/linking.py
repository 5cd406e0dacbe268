"""Linking and unlinking identifiers by hand: the operator's (or the API's) say over identity
resolution. A link of two people's identifiers merges them; an unlink undoes the merge that
joined them (see persona.identity for how persons are kept). A link that names a new
identifier gives it a profile of its own and merges it with the known one, so that it too can
be undone: whatever arrives for the new identifier afterwards goes to its own profile."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from persona import identity
from persona.core import Persona
from persona.errors import LinkError, UnknownProfileError
from persona.events import LIBRARY, Event, Subject, Writer, micros, utc_text
from persona.projector import Projector
from persona.pseudonyms import normalise

LINK_PREFIX = "link:"  # the event id of a link by hand


@dataclass(frozen=True)
class Linked:
    person: str  # the person both identifiers now belong to
    merged: bool  # a merge was made (False: they were one person already)
    created: bool  # the new identifier was given a profile of its own (merged, so unlink can undo it)


@dataclass(frozen=True)
class Unlinked:
    people: tuple[str, str]  # the two persons the identifiers belong to now
    merges_undone: int


def _subject(persona: Persona, namespace: str, value: str) -> Subject:
    return Subject(namespace, normalise(namespace, value, persona.settings.default_region))


def link(persona: Persona, a: tuple[str, str], b: tuple[str, str], *, source: str = "cli",
         now: datetime | None = None, writer: Writer = LIBRARY) -> Linked:
    """Declare two identifiers one person. At least one must be known already; a known pair of
    two people is merged, even if a merge of theirs was undone before (this is the explicit word).
    A new identifier gets a profile of its own, merged with the known one's person."""
    moment = now or datetime.now(UTC)
    one, other = _subject(persona, *a), _subject(persona, *b)
    if one == other:
        raise LinkError("give two different identifiers")
    log, rec = persona.log, persona.recorder
    if log.profile_for(*a) is None:
        one, other = other, one  # the event goes to a known identifier's profile
        if log.profile_for(*b) is None:
            raise UnknownProfileError("neither identifier is linked to a profile")
    event = Event(LINK_PREFIX + secrets.token_hex(12), source, "identity_linked", utc_text(moment), one, {}, other)
    result = log.append([event], now=moment, explicit=True, writer=writer)
    person = identity.person_of(rec, log.profile_for(*a) or "")
    Projector(persona).refresh(person.members)
    return Linked(person.id, result.merges > 0, result.profiles_created > 0)


def unlink(persona: Persona, a: tuple[str, str], b: tuple[str, str], *, now: datetime | None = None,
           writer: Writer = LIBRARY) -> Unlinked:
    """Undo the merge that joined these two identifiers' profiles. Each profile keeps its own
    events (they were never moved), so both people come back as they were, with what each
    has done since; the same two are not merged again by a later record, only by `link`."""
    moment = now or datetime.now(UTC)
    log, rec = persona.log, persona.recorder
    ha, hb = log.hash_identifier(*a), log.hash_identifier(*b)
    found = rec.resolve([ha, hb])
    if ha not in found or hb not in found:
        raise UnknownProfileError("an identifier is not linked to any profile")
    pa, pb = found[ha], found[hb]
    if pa == pb:
        if log.linked_by_hand(pa, ha, hb, LINK_PREFIX):
            raise LinkError("these identifiers were linked by an earlier release of persona, which joined the new one"
                            " to the known one's profile: they share its history, so that link cannot be undone"
                            " (a link made since gives a new identifier a profile of its own, which unlink splits)")
        raise LinkError("these identifiers were first seen together and share one profile's history, which cannot"
                        " be split; only a merge of two profiles can be undone")
    with rec.transaction():
        person = identity.person_of(rec, pa)
        if pb not in person.members:
            raise LinkError("these identifiers belong to two different people already")
        edges = [e for e in rec.merge_edges([pa]) if e.undone_at is None and {e.a_hash, e.b_hash} == {ha, hb}]
        chosen = [e.edge for e in edges] or identity.edges_between(rec, [pa], [pb])
        if not chosen:
            raise LinkError("these profiles were merged through other profiles: unlink the identifiers whose"
                            " link joined them (see the profiles_merged events in the history)")
        rec.undo_merges(chosen, micros(moment))
        groups = identity.components(rec, [pa, pb])
        if any(pa in group and pb in group for group in groups):
            raise LinkError("these profiles are also joined by other merges: unlink those too")
        markers = [Event(f"unmerge:{edge}:{side}", identity.MERGE_SOURCE, identity.UNMERGED, utc_text(moment),
                         _subject(persona, *who), {"with": peer, "edge": edge})
                   for edge in chosen for side, (who, peer) in enumerate(((a, pb), (b, pa)))]
        log.append(markers, now=moment, writer=writer)
        people = identity.regroup(rec, [pa, pb])
    Projector(persona).refresh([pa, pb])
    by_stream = {m: p.id for p in people for m in p.members}
    return Unlinked((by_stream[pa], by_stream[pb]), len(chosen))
