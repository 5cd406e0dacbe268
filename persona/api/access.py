"""A server's view of tokens: lookups cached for a moment, and per-token rate limits (the tokens
themselves, their scopes and storage: persona.tokens)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from persona.core import Persona
from persona.tokens import Token, lookup_token


class TokenCache:
    """Token lookups for a server: a hit is reused for `ttl_s`, so a revocation takes effect
    within that time while a busy client costs no query per request."""

    def __init__(self, persona: Persona, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.persona = persona
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Token | None]] = {}

    def lookup(self, token: str) -> Token | None:
        now = self.clock()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < self.ttl_s and (hit[1] is None or not hit[1].expired()):
            return hit[1]
        found = lookup_token(self.persona, token)
        if found is None:
            self._cache.pop(token, None)  # only valid tokens are kept: garbage cannot evict them
        else:
            self._cache[token] = (now, found)
        return found


@dataclass
class RateLimiter:
    """A token bucket per token name: `rate_per_s` sustained, bursts of up to `burst_s` seconds' worth."""

    burst_s: float = 2.0
    clock: Callable[[], float] = time.monotonic  # seconds; a test passes a clock it moves itself
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (tokens, at)

    def exhausted(self, key: str, rate_per_s: float) -> bool:
        """Whether a request under `key` would be refused now (nothing is charged)."""
        if key not in self._buckets:
            return False
        level, at = self._buckets[key]
        return min(max(1.0, rate_per_s * self.burst_s), level + (self.clock() - at) * rate_per_s) < 1.0

    def allow(self, key: str, rate_per_s: float) -> float:
        """0.0 if a request under `key` may go ahead, else the seconds to wait."""
        now = self.clock()
        capacity = max(1.0, rate_per_s * self.burst_s)  # a slow token still gets its one request
        level, at = self._buckets.get(key, (capacity, now))
        level = min(capacity, level + (now - at) * rate_per_s)
        if level < 1.0:
            self._buckets[key] = (level, now)
            return (1.0 - level) / rate_per_s
        self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > 100_000:  # many clients: forget the ones that are back to full
            self._buckets = {k: (lvl, at) for k, (lvl, at) in self._buckets.items()
                             if lvl + (now - at) * rate_per_s < capacity}
        return 0.0
