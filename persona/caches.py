"""Every cache in this process that can hold a person's data, and the one way to drop them.

Memory must not outlive a deleted key: after an erasure (by this process or any other) the
caches below go, whichever of them the caller holds. Reads never serve an erased person from
them (each read checks the key); this is about what stays in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from persona.pseudonyms import admit, normalise

if TYPE_CHECKING:
    from persona.core import Persona


def forget_caches(persona: Persona | None = None, also: Iterable[Callable[[], None]] = (), *,
                  identifiers: bool = True) -> None:
    """Drop the unwrapped keys of `persona`'s log; with `identifiers`, this process's normalised
    identifiers (persona.pseudonyms); and the caches whose `clear` (or `forget`) the caller
    passes in `also`: a projector's decrypted states, a server's plans with identifiers typed
    into them, the keys its worker threads hold.

    An erasure drops the keys of the store it erased in (persona.erasure); a process that lives
    on (the API server) drops everything else when it sees an erasure by anyone."""
    if identifiers:
        normalise.cache_clear()
        admit.cache_clear()
    if persona is not None:
        persona.log.forget_cached_keys()
    for clear in also:
        clear()
