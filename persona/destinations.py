"""Webhook destinations: the tools a team already uses, told who enters and leaves live segments,
whose chosen fields changed, and who was erased.

A destination is an HTTPS (or, for tests and local tools, HTTP) URL, the live segments it follows,
the fields it was granted, the fields whose change it wants to hear of, and optionally the consent
purpose it serves. Each POST is a JSON body signed with the destination's own secret:

    Persona-Signature: t=1765000000,v1=<hex HMAC-SHA256(secret, "1765000000." + body)>
    Persona-Delivery:  <the delivery's idempotency key: the same on every retry of it>
    Persona-Event:     entered | left | changed | erased

`verify` checks one as a receiver should: the signature, then the timestamp within a tolerance
(a replayed request is refused once it is older than that; the idempotency key catches a replay
inside it). Deliveries are an outbox in the store (at least once): each is tried until a 2xx
answer, again after 1 s, 5 s, 30 s, 2 min, 10 min, 30 min and 1 h, then kept as a dead letter
(`persona destinations status`, `persona destinations retry`). A body carries the profile id and
only the fields granted, read when it is sent; a destination serving a purpose (marketing,
personalization, analytics) is never sent a person without that consent.

Erasure reaches downstream: erasing a person queues, in the erasure's own transaction, a signed
deletion notice to every destination that ever received them, and forgets who received them and
what was still to be sent. The notices are tried at once; the erasure receipt lists each
destination notified and whether it acknowledged, and those that did not are retried like any
delivery. Secrets are sealed under a data key of their own; bodies, values and secrets are never
logged, and an outcome records the status code or the kind of failure only.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import secrets
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from persona import memberships
from persona.core import Persona
from persona.crypto import Sealer
from persona.errors import ValidationError
from persona.events import from_micros, micros
from persona.feed import ChangeFeed
from persona.indexed import present
from persona.projections.profile import CONSENT_PURPOSES
from persona.rules import NAMES, value_of
from persona.store.base import DeliveryRow

NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")
DESTINATIONS_KEY = "destinations"  # the system key sealing the secrets
SECRET_PREFIX = "whsec_"
RETRY_S = (1, 5, 30, 120, 600, 1800, 3600)  # after each failed attempt; then a dead letter
MAX_ATTEMPTS = len(RETRY_S) + 1
TIMEOUT_S = 5.0  # one POST
LEASE_S = 60  # a delivery being sent is not picked up by another sender for this long
TOLERANCE_S = 300  # a receiver refuses a signature older (or newer) than this
NOTICE_WAIT_S = 10.0  # an erasure waits this long, at most, for its notices' acknowledgements
KEPT_DAYS = 30  # delivered (or skipped) deliveries are kept this long for `status`; notices always
_CURSOR = "destinations.after"  # meta: the last segment change turned into deliveries
_POSITION = "destinations.position"  # meta: the log position up to which changes of fields were looked at
_PAGE = 1_000


class DestinationError(ValidationError):
    """A destination that cannot be made or found, or a signature that does not check out."""


@dataclass(frozen=True)
class Destination:
    name: str
    url: str
    segments: tuple[str, ...]
    fields: tuple[str, ...]  # granted: the only values a body carries
    on_change: tuple[str, ...]  # a change of any of these (granted) fields is sent
    purpose: str  # "" or a consent purpose: no one without that consent is sent
    created_at: datetime
    created_by: str
    sealed_secret: bytes


@dataclass(frozen=True)
class Attempt:
    destination: str
    seq: int
    kind: str
    status: str  # delivered, pending (to be retried), dead, skipped
    outcome: str


@dataclass(frozen=True)
class Pass:
    queued: int
    attempts: list[Attempt]

    @property
    def delivered(self) -> int:
        return sum(1 for a in self.attempts if a.status == "delivered")

    @property
    def failed(self) -> int:
        return sum(1 for a in self.attempts if a.status in ("pending", "dead"))


# -- definitions --------------------------------------------------------------------------------
def check_url(url: str) -> str:
    """An http(s) URL with a host, no user or password in it (a secret there would be stored as
    text) and no fragment. Any other scheme is refused."""
    if not isinstance(url, str) or len(url) > 2_000:
        raise DestinationError("a destination's URL is at most 2,000 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DestinationError("a destination's URL is http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise DestinationError("a destination's URL may not hold a user or password: its requests are signed")
    if parts.fragment:
        raise DestinationError("a destination's URL has no #fragment")
    try:
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise DestinationError("a destination's URL has a port out of range") from None
    return url


def _names(given: Iterable[str], what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(name.strip() for name in given if name.strip()))
    unknown = [name for name in out if name not in NAMES]
    if unknown:
        raise DestinationError(f"{what}: unknown field(s) {', '.join(sorted(unknown))} (fields are the names"
                               " rules read: docs/segments.md)")
    return out


def _sealer(persona: Persona) -> Sealer:
    """The destinations' own data key, made on first use."""
    rec = persona.recorder
    stored = rec.system_key(DESTINATIONS_KEY)
    if stored is None:
        with rec.transaction():
            stored = rec.system_key(DESTINATIONS_KEY)
            if stored is None:
                persona.log.check_current_kek()
                version, wrapped = persona.keyring.wrap(DESTINATIONS_KEY, persona.keyring.new_dek())
                rec.put_system_key(DESTINATIONS_KEY, version, wrapped)
                stored = (version, wrapped)
    return Sealer(persona.keyring.unwrap(DESTINATIONS_KEY, *stored))


def _aad(name: str) -> bytes:
    return b"persona-destination-secret/1\x00" + name.encode()


def add_destination(persona: Persona, name: str, url: str, *, segments: Iterable[str] = (),
                    fields: Iterable[str] = (), on_change: Iterable[str] = (), purpose: str = "", by: str,
                    now: datetime | None = None) -> tuple[Destination, str]:
    """A new destination and its secret (shown once by the command that makes it; the store keeps
    it sealed). Refused: a bad name or URL, a segment that does not exist, a field rules do not
    know, a change watched on a field not granted, an unknown purpose."""
    if not isinstance(name, str) or not NAME.match(name):
        raise DestinationError("a destination's name is 1 to 64 characters: a lower-case letter, then lower-case"
                               " letters, digits, '_' or '-'")
    check_url(url)
    followed = tuple(dict.fromkeys(s.strip() for s in segments if s.strip()))
    granted = _names(fields, "fields")
    watched = _names(on_change, "on-change")
    if not followed and not watched:
        raise DestinationError("a destination follows segments, changes of fields, or both: give at least one")
    if set(watched) - set(granted):
        raise DestinationError("on-change: only fields it was granted (a change of another would tell of it)")
    if purpose and purpose not in CONSENT_PURPOSES:
        raise DestinationError(f"purpose: one of {', '.join(CONSENT_PURPOSES)}")
    known = {s.name for s in memberships.definitions(persona)}
    missing = [s for s in followed if s not in known]
    if missing:
        raise DestinationError(f"segments: no segment named {', '.join(missing)} (see `persona segments list`)")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    sealed = _sealer(persona).seal(secret.encode(), _aad(name), secrets.token_bytes(12))
    at = now or datetime.now(UTC)
    row = (name, url, ",".join(followed), ",".join(granted), ",".join(watched), purpose, sealed, micros(at), by)
    rec = persona.recorder
    with rec.transaction():
        if any(d.name == name for d in destinations(persona)):
            raise DestinationError("a destination of that name exists; remove it first")
        # the changes the others have still to be told of are queued for them first: from here on,
        # every change is this one's too, and the segments' members now are sent to it as entries
        enqueue(persona, at)
        rec.add_destination(row)
        rec.set_meta(_CURSOR, str(rec.last_segment_change()))
        if watched and rec.get_meta(_POSITION) is None:
            rec.set_meta(_POSITION, str(rec.last_position()))
        at_us = micros(at)
        rec.enqueue_deliveries([(name, "entered", pid, segment, at_us, at_us) for segment in followed
                                for pid, _ in rec.segment_members(segment, "", 10_000_000)])
    return _of(row), secret


def _of(row: tuple[str, str, str, str, str, str, bytes, int, str]) -> Destination:
    name, url, segments, fields, on_change, purpose, sealed, at, by = row

    def split(text: str) -> tuple[str, ...]:
        return tuple(part for part in text.split(",") if part)

    return Destination(name, url, split(segments), split(fields), split(on_change), purpose, from_micros(at), by,
                       sealed)


def destinations(persona: Persona) -> list[Destination]:
    return [_of(row) for row in persona.recorder.destination_rows()]


def destination(persona: Persona, name: str) -> Destination:
    found = next((d for d in destinations(persona) if d.name == name), None)
    if found is None:
        raise DestinationError("no destination of that name")
    return found


def remove_destination(persona: Persona, name: str) -> None:
    with persona.recorder.transaction():
        if not persona.recorder.remove_destination(name):
            raise DestinationError("no destination of that name")


def secret_of(persona: Persona, found: Destination) -> bytes:
    return _sealer(persona).open(found.sealed_secret, _aad(found.name))


# -- signatures ---------------------------------------------------------------------------------
def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes | str, header: str | None, body: bytes, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> int:
    """What a receiver runs on each request: the signature header's timestamp, if the HMAC of the
    body is right and the timestamp within the tolerance; DestinationError otherwise. (A replay
    within the tolerance carries an idempotency key seen before: drop it.)"""
    key = secret.encode() if isinstance(secret, str) else secret
    parts = dict(part.split("=", 1) for part in (header or "").split(",") if "=" in part)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        raise DestinationError("the signature header has no timestamp") from None
    expected = sign(key, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, parts.get("v1", "")):
        raise DestinationError("the signature does not match the body")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise DestinationError("the signature is too old (or from the future): a replay?")
    return timestamp


def idempotency_key(persona: Persona, destination: str, seq: int) -> str:
    """The same for every attempt of one delivery, different for every delivery of every store."""
    key = persona.keyring.derived("delivery-keys")
    return "dlv_" + hmac.new(key, f"{destination}\x00{seq}".encode(), hashlib.sha256).hexdigest()[:32]


# -- turning changes into deliveries --------------------------------------------------------------
def _digest(persona: Persona, values: dict[str, Any]) -> bytes:
    """A keyed digest of the fields last sent: tells a change without keeping the values."""
    key = persona.keyring.derived("delivery-digests")
    return hmac.new(key, orjson.dumps(values, option=orjson.OPT_SORT_KEYS), hashlib.sha256).digest()[:16]


def _present(persona: Persona, profile_ids: Sequence[str], now: datetime) -> dict[str, Any]:
    """The present profile (attributes, features, rfm) of each of these persons with an index row."""
    out = {}
    for row in persona.recorder.profile_rows(profile_ids):
        if row.index_doc is None or not row.has_key or row.person_id not in (None, row.profile_id):
            continue
        rfm = None
        if row.r is not None and row.f is not None and row.m is not None:
            rfm = {"r": row.r, "f": row.f, "m": row.m}
        out[row.profile_id] = present(row.profile_id, row.index_version or 0, orjson.loads(row.index_doc), rfm, now)
    return out


def _values(found: Destination, profile: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: value_of(name, profile.attributes, profile.features, profile.rfm) for name in names}


def enqueue(persona: Persona, now: datetime | None = None) -> int:
    """Segment changes since the last pass, and changes of watched fields, as pending deliveries."""
    rec = persona.recorder
    found = destinations(persona)
    if not found:
        return 0
    at = micros(now or datetime.now(UTC))
    queued = 0
    followers = {segment: [d.name for d in found if segment in d.segments] for d in found for segment in d.segments}
    if followers and rec.last_segment_change() > int(rec.get_meta(_CURSOR) or 0):
        queued += _segment_changes(persona, followers, at)
    watching = [d for d in found if d.on_change]
    if watching and rec.last_position() > int(rec.get_meta(_POSITION) or 0):
        queued += _changed_fields(persona, watching, now or datetime.now(UTC))
    return queued


def _segment_changes(persona: Persona, followers: dict[str, list[str]], at: int) -> int:
    """The segment changes after the cursor, one delivery per destination following the segment;
    under the write lock, so that two senders never queue a change twice."""
    rec = persona.recorder
    queued = 0
    with rec.transaction():
        after = int(rec.get_meta(_CURSOR) or rec.last_segment_change())
        while True:
            changes = rec.segment_changes(after, _PAGE)
            rows = [(name, "entered" if entered else "left", pid, segment, at, at)
                    for _, _, segment, pid, entered in changes for name in followers.get(segment, ())]
            rec.enqueue_deliveries(rows)
            queued += len(rows)
            if changes:
                after = changes[-1][0]
            if len(changes) < _PAGE:
                break
        rec.set_meta(_CURSOR, str(after))
    return queued


def _changed_fields(persona: Persona, watching: list[Destination], now: datetime) -> int:
    """People whose events arrived after the position, each destination watching fields that it
    received, whose watched values differ from those it was last sent: one delivery each.
    (Two senders may both find one: a receiver drops the second by its content, as any retry.)"""
    rec = persona.recorder
    position = int(rec.get_meta(_POSITION) or rec.last_position())
    feed = ChangeFeed(rec, position)
    grown: set[str] = set()
    while True:
        chunks = feed.wait(0, limit=_PAGE)
        grown |= {chunk.stream_id for chunk in chunks}
        if len(chunks) < _PAGE:
            break
    if not grown:
        return 0
    people = sorted(grown | set(rec.persons_of(sorted(grown)).values()))
    received = {(d, pid): digest for d, pid, _, digest in rec.received_by(people)}
    profiles = _present(persona, people, now)
    at = micros(now)
    rows: list[tuple[str, str, str, str, int, int]] = []
    for d in watching:
        for pid, profile in profiles.items():
            if (d.name, pid) in received and received[(d.name, pid)] != _digest(persona, _values(d, profile,
                                                                                                  d.on_change)):
                rows.append((d.name, "changed", pid, "", at, at))
    with rec.transaction():
        rec.enqueue_deliveries(rows)
        rec.set_meta(_POSITION, str(feed.position))
    return len(rows)


def notify_erasure(persona: Persona, profile_ids: Sequence[str], at: int) -> int:
    """Inside an erasure's transaction: a deletion notice to every destination that received any of
    these profiles, and who received them (and what was still to go to them) forgotten."""
    rec = persona.recorder
    received = rec.received_by(profile_ids)
    rec.forget_received(profile_ids)
    rec.enqueue_deliveries([(d, "erased", pid, "", at, at) for d, pid, _, _ in received])
    return len(received)


# -- sending ------------------------------------------------------------------------------------
def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str:
    """POST once; the outcome as it is recorded ("HTTP 204", "timeout", …): never a body. No
    redirect is followed and no proxy is used."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65_536)
        return f"HTTP {response.status}"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "connection refused"
    except ssl.SSLError:
        return "TLS failure"
    except OSError as e:
        return f"network error ({type(e).__name__})"
    except http.client.HTTPException as e:
        return f"bad response ({type(e).__name__})"
    finally:
        connection.close()


def _body(persona: Persona, found: Destination, row: DeliveryRow, profile: Any, sent_at: datetime
          ) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": row.kind, "profile_id": row.profile_id, "sent_at": sent_at.isoformat(),
                           "queued_at": from_micros(row.created_at).isoformat()}
    if row.segment:
        doc["segment"] = row.segment
    if row.kind in ("entered", "changed") and profile is not None:
        doc["profile"] = _values(found, profile, found.fields)
    return doc


def _refusal(found: Destination, row: DeliveryRow, profile: Any, received: bool) -> str | None:
    """Why this delivery is not to be sent (it is then 'skipped'), or None."""
    if row.kind == "erased":
        return None
    if row.kind == "left":
        return None if received else "the destination never received the person"
    if profile is None:
        return "the person is gone (erased or merged)"
    if found.purpose:
        given = value_of(f"consent.{found.purpose}", profile.attributes, profile.features, profile.rfm)
        if given is not True:
            return f"no {found.purpose} consent"
    return None


def send_due(persona: Persona, *, now: datetime | None = None, only: Sequence[int] | None = None,
             limit: int = 500, deadline: float | None = None) -> list[Attempt]:
    """Send the deliveries due (or just those numbered `only`), each once: acknowledged (2xx), to
    be retried, or dead-lettered after its last attempt. `deadline` (time.monotonic()) stops the
    pass early."""
    rec = persona.recorder
    moment = now or datetime.now(UTC)
    at = micros(moment)
    if only is not None:
        due = [row for row in rec.deliveries_of(only) if row.status == "pending" and row.next_at <= at]
    else:
        due = rec.due_deliveries(at, limit)
    if not due:
        return []
    by_name = {d.name: d for d in destinations(persona)}
    keys: dict[str, bytes] = {}
    profiles = _present(persona, sorted({row.profile_id for row in due if row.kind != "erased"}), moment)
    received = {(d, pid) for d, pid, _, _ in rec.received_by(sorted({row.profile_id for row in due}))}
    out = []
    for row in due:
        if deadline is not None and time.monotonic() >= deadline:
            break
        found = by_name.get(row.destination)
        with rec.transaction():
            if found is None or not rec.lease_delivery(row.seq, at, at + LEASE_S * 1_000_000):
                continue  # removed meanwhile, or another sender has it
        profile = profiles.get(row.profile_id)
        why = _refusal(found, row, profile, (row.destination, row.profile_id) in received)
        if why is not None:
            with rec.transaction():
                rec.finish_delivery(row.seq, "skipped", row.attempts, row.next_at, why, micros(datetime.now(UTC)))
            out.append(Attempt(found.name, row.seq, row.kind, "skipped", why))
            continue
        if found.name not in keys:
            keys[found.name] = secret_of(persona, found)
        sent_at = datetime.now(UTC)
        body = orjson.dumps(_body(persona, found, row, profile, sent_at))
        headers = {"Content-Type": "application/json", "User-Agent": "persona-webhooks/1",
                   "Persona-Signature": sign(keys[found.name], int(sent_at.timestamp()), body),
                   "Persona-Delivery": idempotency_key(persona, found.name, row.seq), "Persona-Event": row.kind}
        timeout = TIMEOUT_S if deadline is None else max(0.1, min(TIMEOUT_S, deadline - time.monotonic()))
        outcome = _post(found.url, body, headers, timeout)
        attempts, done = row.attempts + 1, datetime.now(UTC)
        with rec.transaction():
            if outcome.startswith("HTTP 2"):
                rec.finish_delivery(row.seq, "delivered", attempts, row.next_at, outcome, micros(done))
                if row.kind in ("entered", "changed") and profile is not None:
                    rec.note_received([(found.name, row.profile_id, micros(done),
                                        _digest(persona, _values(found, profile, found.on_change)))])
                status = "delivered"
            elif attempts >= MAX_ATTEMPTS:
                rec.finish_delivery(row.seq, "dead", attempts, row.next_at, outcome, micros(done))
                status = "dead"
            else:
                retry = micros(done) + RETRY_S[attempts - 1] * 1_000_000
                rec.finish_delivery(row.seq, "pending", attempts, retry, outcome, None)
                status = "pending"
        out.append(Attempt(found.name, row.seq, row.kind, status, outcome))
    return out


_pruned: dict[str, float] = {}  # store -> when this process last pruned its deliveries (time.monotonic())


def deliver(persona: Persona, *, now: datetime | None = None, limit: int = 500) -> Pass:
    """One pass: queue what changed, send what is due, and (hourly) forget deliveries done long ago.
    Costs two small reads when nothing is to be done, and nothing is written."""
    if not persona.recorder.destination_rows():
        return Pass(0, [])
    queued = enqueue(persona, now)
    attempts = send_due(persona, now=now, limit=limit)
    where = str(persona.settings.database_url or persona.settings.db_path)
    if time.monotonic() - _pruned.get(where, -3600.0) >= 3600:
        _pruned[where] = time.monotonic()
        moment = now or datetime.now(UTC)
        with persona.recorder.transaction():
            persona.recorder.prune_deliveries(micros(moment) - KEPT_DAYS * 86_400 * 1_000_000)
    return Pass(queued, attempts)


def send_notices(persona: Persona, profile_ids: Sequence[str], *, wait_s: float = NOTICE_WAIT_S
                 ) -> list[dict[str, Any]]:
    """An erasure's deletion notices, sent now (within `wait_s` in all): for its receipt, each
    destination notified and whether it acknowledged; those that did not are retried later."""
    notices = _notices(persona, profile_ids)
    if not notices:
        return []
    done = {a.seq: a for a in send_due(persona, only=[row.seq for row in notices],
                                       deadline=time.monotonic() + wait_s)}
    out = []
    for row in notices:
        attempt = done.get(row.seq)
        out.append({"destination": row.destination, "profile_id": row.profile_id,
                    "acknowledged": attempt is not None and attempt.status == "delivered",
                    "outcome": attempt.outcome if attempt is not None else "not tried yet"})
    return out


def _notices(persona: Persona, profile_ids: Sequence[str]) -> list[DeliveryRow]:
    return persona.recorder.erasure_notices(profile_ids)


# -- status -------------------------------------------------------------------------------------
def status(persona: Persona, *, dead_letters: int = 20) -> list[dict[str, Any]]:
    """Each destination: what it follows and was granted, its deliveries by status, its last
    delivery, and its dead letters (the newest first, at most `dead_letters`)."""
    states: dict[str, dict[str, int]] = {}
    last: dict[str, int | None] = {}
    for name, state, count, latest in persona.recorder.delivery_states():
        states.setdefault(name, {})[state] = count
        if state == "delivered":
            last[name] = latest
    out = []
    for d in destinations(persona):
        dead = persona.recorder.deliveries(d.name, "dead", dead_letters)
        delivered_at = last.get(d.name)
        out.append({"name": d.name, "url": d.url, "segments": list(d.segments), "fields": list(d.fields),
                    "on_change": list(d.on_change), "purpose": d.purpose or None,
                    "created_at": d.created_at.isoformat(), "created_by": d.created_by,
                    "deliveries": {s: states.get(d.name, {}).get(s, 0)
                                   for s in ("pending", "delivered", "skipped", "dead")},
                    "last_delivered_at": None if delivered_at is None else from_micros(delivered_at).isoformat(),
                    "dead_letters": [{"delivery": row.seq, "kind": row.kind, "profile_id": row.profile_id,
                                      "segment": row.segment or None, "attempts": row.attempts,
                                      "outcome": row.outcome} for row in dead]})
    return out


def retry(persona: Persona, name: str) -> int:
    """A destination's dead letters, tried again from the start; how many."""
    destination(persona, name)
    with persona.recorder.transaction():
        return persona.recorder.requeue_dead(name, micros(datetime.now(UTC)))
