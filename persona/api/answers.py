"""The answer cache and the event-sourced ETag: a profile query answered again without running it.

A profile's answer is a function of its log and of a few rows derived from it. Each request
for a cacheable query (persona.api.plan, `Cacheable`: only `profile(id: …)` roots) is keyed by

- what it asks: the document, the operation name and the variables;
- who asks: the token's scopes and the person a minted token is bound to, so that nothing is
  ever served across scopes or to another person's token;
- the stamp of every profile it reads: the person the id belongs to now, their log's version
  (every event, merge and consent), their index row's version, RFM scores, predictions (model,
  version, when scored) and live-segment memberships; an erased person has no stamp. Stamps are
  read from the store, and remembered only while its change mark (SQLite: data_version and this
  connection's own writes) stays the same: any write anywhere, and they are read again;
- the clock's tick, when the query selects a value the clock moves (recency, lifecycle, decay,
  age: every Profile field outside `CLOCK_FREE`): such an answer is at most `ttl_s` old.

The key and the answer's bytes, hashed with a secret derived from the store's pepper, make its
ETag: a GET whose `If-None-Match` names it is answered 304 by any worker (a POST, 412: RFC 9110
answers 304 to GET and HEAD only). A hit is audited exactly as the read it repeats (the same
entries, under the asking token's name), and refused the same way when the audit log cannot
keep up. Answers with errors are never kept; every entry expires
after `ttl_s`, and the whole cache is dropped when anyone erases anyone.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from persona.api.plan import Cacheable
from persona.core import Persona
from persona.reading import change_mark, stamps
from persona.tokens import Token

STAMPS_KEPT = 20_000  # profiles whose stamps are remembered while the store is unchanged
ENTRY_OVERHEAD = 400  # bytes an answer costs beyond its own strings: its key, objects, the dictionary's slot
AuditEntry = tuple[str, str, str, str]  # operation, profile id, fields, detail: as AuditBuffer.record takes them


@dataclass(frozen=True)
class Answer:
    body: bytes
    etag: str
    audit: tuple[AuditEntry, ...]
    expires: float  # time.monotonic()

    @property
    def size(self) -> int:
        """What it is charged against the cache's bytes: a null answer for a made-up id is not free."""
        return (len(self.body) + len(self.etag) + ENTRY_OVERHEAD
                + sum(len(part) for entry in self.audit for part in entry))


class AnswerCache:
    """Answers by key, at most `max_bytes` of them (bodies, audit entries and overhead), in the order
    they were kept: each lives `ttl_s`, so the oldest is also the first to expire, and the first
    pushed out when full."""

    def __init__(self, secret: bytes, max_bytes: int, ttl_s: float) -> None:
        self._secret = secret
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._answers: OrderedDict[bytes, Answer] = OrderedDict()
        self._bytes = 0
        self._mark: Any = None  # the store's change mark the stamps below were read under
        self._stamps: dict[str, Any] = {}
        self.hits = self.misses = self.revalidated = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.ttl_s > 0

    def stamps(self, persona: Persona, ids: list[str]) -> list[Any]:
        """Each profile's stamp (persona.reading.stamps), read from the store unless it was read since
        the last write to it. The mark is read before the stamps: a write landing between the two
        leaves a mark that the next request finds changed, never a stale stamp taken for current."""
        mark = change_mark(persona)
        if mark is None:
            return stamps(persona, ids)
        if mark != self._mark or len(self._stamps) >= STAMPS_KEPT:
            self._stamps.clear()
            self._mark = mark
        missing = [pid for pid in dict.fromkeys(ids) if pid not in self._stamps]
        if missing:
            self._stamps.update(zip(missing, stamps(persona, missing), strict=True))
        return [self._stamps[pid] for pid in ids]

    def key(self, query: str, operation_name: str | None, variables: dict[str, Any] | None, token: Token,
            cacheable: Cacheable, stamped: list[Any]) -> bytes:
        tick = int(time.time() // self.ttl_s) if cacheable.clocked else None
        material = orjson.dumps([query, operation_name, variables, sorted(token.scopes), token.subject, stamped, tick],
                                option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(material, digest_size=18, key=self._secret).digest()

    def etag(self, key: bytes, body: bytes) -> str:
        """The answer's ETag: its key and its bytes, hashed with the secret. The bytes make it change
        with whatever the key cannot see (a new release's rendering, a rebuilt index), so a client's
        copy is never confirmed after the server would answer differently."""
        digest = hashlib.blake2b(key + hashlib.blake2b(body, digest_size=32).digest(), digest_size=18,
                                 key=self._secret).digest()
        return '"' + base64.urlsafe_b64encode(digest).decode() + '"'

    def get(self, key: bytes) -> Answer | None:
        found = self._answers.get(key)
        if found is None:
            return None
        if found.expires <= time.monotonic():
            self._drop(key)
            return None
        return found

    def put(self, key: bytes, body: bytes, audit: list[AuditEntry]) -> Answer:
        answer = Answer(body, self.etag(key, body), tuple(audit), time.monotonic() + self.ttl_s)
        size = answer.size
        if size > self.max_bytes // 4:  # one answer never takes most of the cache
            return answer
        if key in self._answers:
            self._drop(key)
        self._answers[key] = answer
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))
        return answer

    def _drop(self, key: bytes) -> None:
        gone = self._answers.pop(key)
        self._bytes -= gone.size

    def drop_expired(self) -> None:
        """Answers past their time, out of memory (they would never be served anyway)."""
        now = time.monotonic()
        while self._answers:
            key, oldest = next(iter(self._answers.items()))
            if oldest.expires > now:
                return
            self._drop(key)

    def clear(self) -> None:
        self._answers.clear()
        self._bytes = 0
        self._stamps.clear()
        self._mark = None

    def __len__(self) -> int:
        return len(self._answers)


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (one of a list; weak or strong). `*` never
    does: it would answer 304 for an answer the client never held."""
    if not if_none_match:
        return False
    return any(candidate.strip().removeprefix("W/") == etag for candidate in if_none_match.split(","))
