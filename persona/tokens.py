"""API bearer tokens: what each may ask (scopes) and write (sources, event types), its privacy
budget, and their storage (the audit log: persona.audit; a server's lookups and rate limits:
persona.api.access).

A token is shown once, when it is created; the database keeps only a keyed hash of it
(HMAC-SHA256 under a key derived from the pepper), so a copy of the database cannot be
used to forge or check tokens offline.

A token that writes may be bound to sources and event types (`Token.refusal`), and it is the
writer sealed into every event it appends (`Token.writer`, docs/design.md, invariant 8).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from persona.core import Persona
from persona.errors import ConfigurationError
from persona.events import EVENT_TYPES, PRIVILEGED_TYPES, Writer, from_micros, micros, valid_source
from persona.store.base import TokenRow

# scope -> what it allows (persona.api.plan.FIELD_SCOPES says which fields need which)
SCOPES: dict[str, str] = {
    "profiles:read": "read profiles: attributes, features, segments, identities (short hashes)",
    "history:read": "read a profile's decrypted event history",
    "predictions:read": "read model predictions",
    "insights:read": "population aggregates, differentially private (charged to the token's ε and δ budgets)",
    "insights:exact": "exact population aggregates (k-anonymous, not private against differencing): with insights:read",
    "events:write": "ingest events",
    "erasure:write": "erase profiles (right to erasure)",
    "models:write": "train models and publish their versions",
    "tokens:mint": "mint short-lived tokens that read one person's profile (for that person's own web page)",
    "segments:read": "live segments: their rules and k-anonymous sizes; with profiles:read, who enters and leaves",
    "segments:write": "define and remove live segments",
    "operations:read": "ingest runs, the quarantine's reasons, webhook destinations' deliveries and the audit log",
}
TOKEN_PREFIX = "pst_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
DEFAULT_RATE_PER_S = 200.0
DEFAULT_EPSILON_BUDGET = 10.0
DEFAULT_DELTA_BUDGET = 1e-9  # a thousand answers at persona.insights.DELTA (1e-12) each


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]
    rate_per_s: float
    epsilon_budget: float
    epsilon_spent: float
    created_at: datetime
    revoked_at: datetime | None
    delta_budget: float = 0.0
    delta_spent: float = 0.0
    sources: frozenset[str] = frozenset()  # the sources it may write as (empty: unbound)
    types: frozenset[str] = frozenset()  # the event types it may write (empty: any but the privileged)
    subject: str = ""  # minted for this person: reads their profile only ("": not bound)
    expires_at: datetime | None = None  # a minted token's end

    @classmethod
    def of(cls, row: TokenRow) -> Token:
        return cls(row.name, frozenset(row.scopes.split()), row.rate_per_s, row.epsilon_budget, row.epsilon_spent,
                   from_micros(row.created_at), from_micros(row.revoked_at) if row.revoked_at is not None else None,
                   row.delta_budget, row.delta_spent, frozenset(row.sources.split()), frozenset(row.types.split()),
                   row.subject, from_micros(row.expires_at) if row.expires_at is not None else None)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at

    @property
    def writer(self) -> Writer:
        """Who its events say wrote them; it vouches for the sources it is bound to (none when unbound)."""
        return Writer("token:" + self.name, self.sources)

    def grants(self, kind: str) -> bool:
        """Whether its event types name this one explicitly (what the privileged types need)."""
        return kind in self.types

    def refusal(self, source: str, kind: str) -> str | None:
        """Why this token may not write an event of this source and type; None if it may.
        The reasons repeat neither: both came from the client."""
        if self.sources and source not in self.sources:
            return "the token may not write as this source (it is bound to others: see `persona tokens list`)"
        if kind in PRIVILEGED_TYPES and not self.grants(kind):
            return ("this event type says who a person is or what their data may be used for, and needs an"
                    " explicit grant (the token's --types must name it)")
        if self.types and kind not in self.types:
            return "the token may not write this event type (it is bound to others: see `persona tokens list`)"
        return None


def parse_names(values: Iterable[str]) -> frozenset[str]:
    """Names from `--scopes a,b --scopes c` or "a b"."""
    return frozenset(part for value in values for part in re.split(r"[\s,]+", value) if part)


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    """Scopes from `--scopes a,b --scopes c` or "a b"; unknown names are refused."""
    scopes = parse_names(values)
    unknown = sorted(scopes - SCOPES.keys())
    if unknown:
        raise ConfigurationError(f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not scopes:
        raise ConfigurationError("a token needs at least one scope")
    return scopes


def token_digest(persona: Persona, token: str) -> bytes:
    return hmac.new(persona.keyring.derived("api-token"), token.encode(), hashlib.sha256).digest()


def create_token(persona: Persona, name: str, scopes: frozenset[str], *, rate_per_s: float = DEFAULT_RATE_PER_S,
                 epsilon_budget: float = DEFAULT_EPSILON_BUDGET, delta_budget: float = DEFAULT_DELTA_BUDGET,
                 sources: frozenset[str] = frozenset(), types: frozenset[str] = frozenset(),
                 now: datetime | None = None) -> str:
    """A new token (returned once; only its hash is stored)."""
    if not _NAME.match(name):
        raise ConfigurationError("a token name is 1–64 letters, digits or _.:@- (starting with a letter or digit)")
    if not rate_per_s > 0 or not epsilon_budget >= 0 or not 0 <= delta_budget < 1:
        raise ConfigurationError("the rate must be positive, the ε budget not negative and the δ budget in [0, 1)")
    check_bindings(scopes, sources, types)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    created = micros(now or datetime.now(UTC))
    with persona.recorder.transaction():
        persona.recorder.put_token(
            (name, token_digest(persona, token), " ".join(sorted(scopes)), created, rate_per_s, epsilon_budget,
             delta_budget, " ".join(sorted(sources)), " ".join(sorted(types)), "", None))
    return token


# What a minted token may be given: reads of its one person (their profile with its features,
# attributes, consent, live segments and identities; their predictions), never their history.
MINTABLE = frozenset({"profiles:read", "predictions:read"})
MINT_TTL_S = (60, 86_400)  # the shortest and longest life a minted token may be given
MINTED_RATE_PER_S = 20.0  # requests per second of one minted token (a page, not a crawler)


@dataclass(frozen=True)
class Minted:
    name: str
    token: str  # shown once, to the minter: a hash of it is kept
    profile_id: str
    scopes: frozenset[str]
    expires_at: datetime


def mint_token(persona: Persona, minter: Token, profile_id: str, *, ttl_s: int = 900,
               scopes: frozenset[str] = frozenset({"profiles:read"}), now: datetime | None = None) -> Minted:
    """A token for one person's own page: it reads that person's profile only, for `ttl_s` seconds,
    with at most the scopes of MINTABLE the minter holds itself. It dies with the person's erasure
    (persona.store: `erase` revokes it). The caller checks the profile is there."""
    if "tokens:mint" not in minter.scopes or minter.subject:
        raise ConfigurationError("only a token with tokens:mint, bound to no one, mints tokens")
    if not MINT_TTL_S[0] <= ttl_s <= MINT_TTL_S[1]:
        raise ConfigurationError(f"a minted token lives {MINT_TTL_S[0]} to {MINT_TTL_S[1]:,} seconds")
    if not scopes or scopes - MINTABLE:
        raise ConfigurationError(f"a minted token may read only: {', '.join(sorted(MINTABLE))}")
    if scopes - minter.scopes:
        raise ConfigurationError(f"the minting token lacks the scope(s) it would grant: "
                                 f"{', '.join(sorted(scopes - minter.scopes))}")
    moment = now or datetime.now(UTC)
    name = f"{minter.name[:40]}:{secrets.token_hex(8)}"
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = moment + timedelta(seconds=ttl_s)
    with persona.recorder.transaction():
        persona.recorder.put_token(
            (name, token_digest(persona, token), " ".join(sorted(scopes)), micros(moment),
             min(MINTED_RATE_PER_S, minter.rate_per_s), 0.0, 0.0, "", "", profile_id, micros(expires)))
    return Minted(name, token, profile_id, scopes, expires)


def check_bindings(scopes: frozenset[str], sources: frozenset[str], types: frozenset[str]) -> None:
    """A token's sources are names an event's `source` may take, its types known event types."""
    unknown = sorted(types - EVENT_TYPES)
    if unknown:
        raise ConfigurationError(f"unknown event type(s): {', '.join(unknown)}"
                                 f" (known: {', '.join(sorted(EVENT_TYPES))})")
    bad = sorted(source for source in sources if not valid_source(source))
    if bad:
        raise ConfigurationError(f"not a source name: {', '.join(bad)} (a lower-case name such as web or shop;"
                                 " 'persona' is reserved)")
    if (sources or types) and "events:write" not in scopes:
        raise ConfigurationError("sources and event types bind what a token writes: give it events:write too")


def list_tokens(persona: Persona) -> list[Token]:
    return [Token.of(row) for row in persona.recorder.tokens()]


def revoke_token(persona: Persona, name: str, *, now: datetime | None = None) -> None:
    with persona.recorder.transaction():
        if not persona.recorder.revoke_token(name, micros(now or datetime.now(UTC))):
            raise ConfigurationError(f"no active token named {name!r}")


MINTED_KEPT_S = 86_400  # an expired minted token is kept this long (for `tokens list`), then deleted


def prune_minted(persona: Persona, now: datetime | None = None) -> int:
    """Delete the minted tokens that expired over a day ago (a shop mints one per visit: they would
    pile up). Their audit entries stay, under their names."""
    before = micros(now or datetime.now(UTC)) - MINTED_KEPT_S * 1_000_000
    with persona.recorder.transaction():
        return persona.recorder.prune_minted(before)


def lookup_token(persona: Persona, token: str) -> Token | None:
    """The token a client presents, if it is one (active or revoked); None for anything else."""
    if not token.startswith(TOKEN_PREFIX) or len(token) >= 100:
        return None
    row = persona.recorder.token_by_digest(token_digest(persona, token))
    if row is None:
        return None
    found = Token.of(row)
    return None if found.expired() else found


def spend_privacy_budget(persona: Persona, name: str, epsilon: float, delta: float) -> tuple[float, float] | None:
    """Charge (ε, δ) to the token's privacy budget, atomically: what remains of both, or None
    (nothing charged) when either would be overspent."""
    with persona.recorder.transaction():
        return persona.recorder.spend_privacy(name, epsilon, delta)
