"""Erasing, linking and unlinking people, and finding who a profile id belongs to."""

from __future__ import annotations

from collections.abc import Iterable

from persona import identity
from persona.core import Persona
from persona.erasure import Erasure, erase_profile, erase_subject
from persona.events import Writer
from persona.linking import Linked, Unlinked, link, unlink


def erase(persona: Persona, *, profile_id: str | None = None, subject: tuple[str, str] | None = None) -> Erasure:
    """Erase the person with this profile id, or whoever this identifier (namespace, value) points
    at (its quarantined records go too): exactly one of the two is given."""
    if subject is not None:
        return erase_subject(persona, *subject)
    assert profile_id is not None, "give a profile id or a subject"
    return erase_profile(persona, profile_id)


def link_identities(persona: Persona, a: tuple[str, str], b: tuple[str, str], writer: Writer,
                    source: str = "cli") -> Linked:
    """Declare two identifiers one person, written by `writer` as `source` (persona.linking.link)."""
    return link(persona, a, b, source=source, writer=writer)


def unlink_identities(persona: Persona, a: tuple[str, str], b: tuple[str, str], writer: Writer) -> Unlinked:
    """Undo the merge that joined two identifiers' profiles (persona.linking.unlink)."""
    return unlink(persona, a, b, writer=writer)


def person(persona: Persona, profile_id: str) -> identity.Person:
    """The person a profile id belongs to (a merged person's streams with it)."""
    return identity.person_of(persona.recorder, profile_id)


def persons(persona: Persona, profile_ids: Iterable[str]) -> dict[str, identity.Person]:
    """The person each of these profile ids belongs to."""
    return identity.persons(persona.recorder, profile_ids)
