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
import ipaddress
import re
import secrets
import socket
import ssl
import threading
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
    host: str  # shown by `status`; the URL itself is sealed (a hook URL often holds a token)
    sealed_url: bytes
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
        parts.hostname.encode("idna")
    except UnicodeError:
        raise DestinationError("a destination's URL has a host name that is not valid") from None
    try:
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise DestinationError("a destination's URL has a port out of range") from None
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None  # a name: its addresses are checked whenever it is resolved to send
    why = _never(literal) if literal is not None else ""
    if why:
        raise DestinationError(f"a destination may not be at a {why} address")
    return url


def _never(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why no webhook may go to this address ("" if it may): link-local addresses hold cloud
    instances' metadata services (credentials, at 169.254.169.254), and multicast, unspecified or
    reserved ones are no web server's. Loopback and private networks stay allowed: a team's own
    tools often live there."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for why, hit in (("link-local", address.is_link_local), ("multicast", address.is_multicast),
                     ("unspecified", address.is_unspecified), ("reserved", address.is_reserved)):
        if hit:
            return why
    return ""


def _names(given: Iterable[str], what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(name.strip() for name in given if name.strip()))
    unknown = [name for name in out if name not in NAMES]
    if unknown:
        raise DestinationError(f"{what}: unknown field(s) {', '.join(sorted(unknown))} (fields are the names"
                               " rules read: docs/segments.md)")
    return out


def _sealer(persona: Persona) -> Sealer:
    """The destinations' own data key, made on first use."""
    return persona.system_sealer(DESTINATIONS_KEY)


def _aad(name: str, part: str) -> bytes:
    return b"persona-destination/1\x00" + part.encode() + b"\x00" + name.encode()


def add_destination(persona: Persona, name: str, url: str, *, segments: Iterable[str] = (),
                    fields: Iterable[str] = (), on_change: Iterable[str] = (), purpose: str = "", by: str,
                    now: datetime | None = None) -> tuple[Destination, str]:
    """A new destination and its secret (shown once by the command that makes it; the store keeps
    it, and the URL, sealed). It is sent the present members of its segments as entries, then
    every change. Refused: a bad name or URL, no segment or one that does not exist, a field
    rules do not know, a change watched on a field not granted, an unknown purpose."""
    if not isinstance(name, str) or not NAME.match(name):
        raise DestinationError("a destination's name is 1 to 64 characters: a lower-case letter, then lower-case"
                               " letters, digits, '_' or '-'")
    check_url(url)
    followed = tuple(dict.fromkeys(s.strip() for s in segments if s.strip()))
    granted = _names(fields, "fields")
    watched = _names(on_change, "on-change")
    if not followed:
        raise DestinationError("segments: a destination follows at least one live segment (whose members it is"
                               " sent, and whose changes of fields with --on-change)")
    if set(watched) - set(granted):
        raise DestinationError("on-change: only fields it was granted (a change of another would tell of it)")
    if purpose and purpose not in CONSENT_PURPOSES:
        raise DestinationError(f"purpose: one of {', '.join(CONSENT_PURPOSES)}")
    known = {s.name for s in memberships.definitions(persona)}
    missing = [s for s in followed if s not in known]
    if missing:
        raise DestinationError(f"segments: no segment named {', '.join(missing)} (see `persona segments list`)")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    sealer = _sealer(persona)
    at = now or datetime.now(UTC)
    host = urlsplit(url).hostname or ""
    row = (name, host, sealer.seal(url.encode(), _aad(name, "url"), secrets.token_bytes(12)), ",".join(followed),
           ",".join(granted), ",".join(watched), purpose,
           sealer.seal(secret.encode(), _aad(name, "secret"), secrets.token_bytes(12)), micros(at), by)
    rec = persona.recorder
    with rec.transaction():
        if any(d.name == name for d in destinations(persona)):
            raise DestinationError("a destination of that name exists; remove it first")
        # the changes the others have still to be told of are queued for them first: from here on,
        # every change is this one's too, and the segments' members now are sent to it as entries
        enqueue(persona, at)
        rec.add_destination(row)
        rec.set_meta(_CURSOR, str(rec.last_segment_change()))
        if watched:
            rec.set_meta(_POSITION, str(rec.last_position()))
        at_us = micros(at)
        for segment in followed:
            after = ""
            while True:
                members = rec.segment_members(segment, after, _PAGE)
                rec.enqueue_deliveries([(_new_key(), name, "entered", pid, segment, at_us, at_us)
                                        for pid, _ in members])
                if len(members) < _PAGE:
                    break
                after = members[-1][0]
    return _of(row), secret


def _new_key() -> str:
    """A delivery's idempotency key: random, so that no two deliveries of any store ever share one
    (a restore starts the deliveries' numbers again; their keys stay apart)."""
    return "dlv_" + secrets.token_hex(16)


def _of(row: tuple[str, str, bytes, str, str, str, str, bytes, int, str]) -> Destination:
    name, host, url, segments, fields, on_change, purpose, sealed, at, by = row

    def split(text: str) -> tuple[str, ...]:
        return tuple(part for part in text.split(",") if part)

    return Destination(name, host, url, split(segments), split(fields), split(on_change), purpose, from_micros(at),
                       by, sealed)


def any_defined(persona: Persona) -> bool:
    """Whether the store has a destination at all (one small read)."""
    return bool(persona.recorder.destination_rows())


def destinations(persona: Persona) -> list[Destination]:
    return [_of(row) for row in persona.recorder.destination_rows()]


def destination(persona: Persona, name: str) -> Destination:
    found = next((d for d in destinations(persona) if d.name == name), None)
    if found is None:
        raise DestinationError("no destination of that name")
    return found


def remove_destination(persona: Persona, name: str, *, forget: bool = False) -> None:
    """Remove a destination. While it holds people (received, not erased since), it is refused
    unless `forget`: their erasures could no longer reach it."""
    rec = persona.recorder
    with rec.transaction():
        destination(persona, name)
        held = rec.received_count(name)
        if held and not forget:
            raise DestinationError(f"the destination holds {held:,} people's data: once it is removed, their"
                                   " erasures cannot reach it (update its URL instead, or remove it with --forget)")
        rec.remove_destination(name)


def update_destination(persona: Persona, name: str, *, url: str | None = None, rotate_secret: bool = False
                       ) -> str | None:
    """A new URL, a new secret, or both; the new secret if one was made. Who it received stays."""
    found = destination(persona, name)
    if url is not None:
        check_url(url)
    sealer = _sealer(persona)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32) if rotate_secret else None
    new_url = sealer.seal(url.encode(), _aad(name, "url"), secrets.token_bytes(12)) if url else found.sealed_url
    host = urlsplit(url).hostname or "" if url else found.host
    new_secret = sealer.seal(secret.encode(), _aad(name, "secret"), secrets.token_bytes(12)) if secret \
        else found.sealed_secret
    with persona.recorder.transaction():
        if not persona.recorder.update_destination(name, host, new_url, new_secret):
            raise DestinationError("no destination of that name")
    return secret


def secret_of(persona: Persona, found: Destination) -> bytes:
    return _sealer(persona).open(found.sealed_secret, _aad(found.name, "secret"))


def url_of(persona: Persona, found: Destination) -> str:
    return _sealer(persona).open(found.sealed_url, _aad(found.name, "url")).decode()


# -- signatures ---------------------------------------------------------------------------------
def _mac(secret: bytes, timestamp: int, delivery: str, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.{delivery}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, delivery: str, body: bytes) -> str:
    """The Persona-Signature header: the HMAC binds the time, the delivery's key and the body."""
    return f"t={timestamp},v1={_mac(secret, timestamp, delivery, body)}"


def verify(secret: bytes | str, header: str | None, delivery: str | None, body: bytes, *,
           now: float | None = None, tolerance_s: float = TOLERANCE_S) -> int:
    """What a receiver runs on each request: the signature header's timestamp, if the HMAC of the
    time, the Persona-Delivery key and the body is right and the time within the tolerance;
    DestinationError otherwise. (A replay within the tolerance carries a key seen before: drop it.)"""
    key = secret.encode() if isinstance(secret, str) else secret
    parts = dict(part.split("=", 1) for part in (header or "").split(",") if "=" in part)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        raise DestinationError("the signature header has no timestamp") from None
    given = parts.get("v1", "").encode("utf-8", "replace")
    if not hmac.compare_digest(_mac(key, timestamp, delivery or "", body).encode(), given):
        raise DestinationError("the signature does not match the body")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise DestinationError("the signature is too old (or from the future): a replay?")
    return timestamp


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
            rows = [(_new_key(), name, "entered" if entered else "left", pid, segment, at, at)
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
    # (a digest not yet written: a first send under way, or never acknowledged: nothing to compare with)
    received = {(d, pid): digest for d, pid, _, digest in rec.received_by(people) if digest is not None}
    profiles = _present(persona, people, now)
    at = micros(now)
    rows: list[tuple[str, str, str, str, str, int, int]] = []
    for d in watching:
        for pid, profile in profiles.items():
            if (d.name, pid) in received and received[(d.name, pid)] != _digest(persona, _values(d, profile,
                                                                                                  d.on_change)):
                rows.append((_new_key(), d.name, "changed", pid, "", at, at))
    with rec.transaction():
        rec.enqueue_deliveries(rows)
        rec.set_meta(_POSITION, str(feed.position))
    return len(rows)


def after_restore(persona: Persona) -> None:
    """A restored store's memberships were made anew (their changes numbered from 1 again): the
    destinations follow the changes from here, and are not sent every member again."""
    rec = persona.recorder
    with rec.transaction():
        rec.set_meta(_CURSOR, str(rec.last_segment_change()))
        rec.set_meta(_POSITION, str(rec.last_position()))


def notify_erasure(persona: Persona, profile_ids: Sequence[str], at: int) -> int:
    """Inside an erasure's transaction: a deletion notice to every destination that received any of
    these profiles (or is being sent one now: a send holds its place before its request goes),
    and who received them, and what was still to go to them, forgotten."""
    rec = persona.recorder
    received = rec.received_by(profile_ids)
    rec.forget_received(profile_ids)
    rec.enqueue_notices([(_new_key(), d, pid, at, at) for d, pid, _, _ in received])
    return len(received)


# -- sending ------------------------------------------------------------------------------------
def _connected(addresses: list[str], port: int, timeout: float) -> socket.socket:
    """A socket to the first of these addresses that answers (as socket.create_connection does for a name)."""
    error: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as e:
            error = e
    raise error


class _Pinned(http.client.HTTPConnection):
    """A connection to the addresses already resolved and checked, whatever the name resolves to
    by the time it connects (DNS rebinding): the Host header keeps the name."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connected(self._addresses, self.port, self.timeout or TIMEOUT_S)


class _PinnedTLS(http.client.HTTPSConnection):
    """The same over TLS: the certificate is checked against the name, not the address."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._addresses = addresses

    def connect(self) -> None:
        sock = _connected(self._addresses, self.port, self.timeout or TIMEOUT_S)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses to send to: the name resolved within `timeout` (getaddrinfo has no timeout of
    its own: it runs on a thread of its own, which ends with it — no pool's threads outlive a send,
    so a process that sends and then ingests may still fork its reader; one still running after the
    timeout finishes unheeded). Raises TimeoutError, OSError, or DestinationError when any address
    it has is one no webhook may use."""
    found: list[Any] = []

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    worker = threading.Thread(target=resolve, name="persona-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        raise TimeoutError(f"resolving took over {timeout:.1f} s")
    if isinstance(found[0], OSError):
        raise found[0]
    infos = found[0]
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        why = _never(ipaddress.ip_address(address.partition("%")[0]))
        if why:
            raise DestinationError(f"the host resolves to a {why} address")
    if not addresses:
        raise OSError("no address")
    return list(dict.fromkeys(addresses))


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str:
    """POST once; the outcome as it is recorded ("HTTP 204", "timeout", …): never a body. No
    redirect is followed and no proxy is used; the host's name is resolved within the timeout and
    the connection made to the address checked (persona.destinations._never)."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = time.monotonic()
    try:
        addresses = _resolve(host, port, timeout)
    except TimeoutError:
        return "timeout (resolving the host)"
    except DestinationError as e:
        return f"refused: {e}"
    except OSError as e:
        return f"network error ({type(e).__name__})"
    left = max(0.1, timeout - (time.monotonic() - started))
    connection: http.client.HTTPConnection = (_PinnedTLS(host, port, addresses, left) if parts.scheme == "https"
                                              else _Pinned(host, port, addresses, left))
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
    except Exception as e:  # anything else (an encoding, a library's surprise): an outcome, never a crash
        return f"error ({type(e).__name__})"
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
    be retried, or dead-lettered after its last attempt. Each is leased before it is sent, and its
    outcome written only while the lease holds, so two senders never both send one within a
    lease. A destination that fails is left for the rest of the pass. `deadline`
    (time.monotonic()) ends the pass early; `now` is the pass's clock (tests move it)."""
    rec = persona.recorder

    def clock() -> datetime:
        return now if now is not None else datetime.now(UTC)

    at = micros(clock())
    if only is not None:
        due = [row for row in rec.deliveries_of(only) if row.status == "pending" and row.next_at <= at]
    else:
        due = rec.due_deliveries(at, limit)
    if not due:
        return []
    by_name = {d.name: d for d in destinations(persona)}
    keys: dict[str, tuple[bytes, str]] = {}
    failing: set[str] = set()
    out = []
    for row in due:
        if deadline is not None and time.monotonic() >= deadline:
            break
        found = by_name.get(row.destination)
        if found is None or found.name in failing:
            continue
        moment = clock()
        leased_until = micros(moment) + LEASE_S * 1_000_000
        with rec.transaction():
            attempts_so_far = rec.lease_delivery(row.seq, micros(moment), leased_until)
            if attempts_so_far is None:
                continue  # another sender has it, or its person was erased
            # read now, under the lease: consent and the granted values as they are when it goes
            profile = (_present(persona, [row.profile_id], moment).get(row.profile_id)
                       if row.kind != "erased" else None)
            received = any(d == found.name for d, *_ in rec.received_by([row.profile_id]))
            why = _refusal(found, row, profile, received)
            if why is None and row.kind in ("entered", "changed"):
                rec.hold_received(found.name, row.profile_id, micros(moment))  # an erasure from now on notifies it
        if why is not None:
            with rec.transaction():
                rec.finish_delivery(row.seq, leased_until, "skipped", attempts_so_far, leased_until, why,
                                    micros(clock()))
            out.append(Attempt(found.name, row.seq, row.kind, "skipped", why))
            continue
        if found.name not in keys:
            keys[found.name] = (secret_of(persona, found), url_of(persona, found))
        secret, url = keys[found.name]
        sent_at = datetime.now(UTC)
        body = orjson.dumps(_body(persona, found, row, profile, sent_at))
        headers = {"Content-Type": "application/json", "User-Agent": "persona-webhooks/1",
                   "Persona-Signature": sign(secret, int(sent_at.timestamp()), row.key, body),
                   "Persona-Delivery": row.key, "Persona-Event": row.kind}
        timeout = TIMEOUT_S if deadline is None else max(0.1, min(TIMEOUT_S, deadline - time.monotonic()))
        outcome = _post(url, body, headers, timeout)
        attempts, done = attempts_so_far + 1, clock()
        next_at, finished = leased_until, micros(done)
        if outcome.startswith("HTTP 2"):
            status = "delivered"
        elif attempts >= MAX_ATTEMPTS:
            status = "dead"
        else:
            status, next_at, finished = "pending", micros(done) + RETRY_S[attempts - 1] * 1_000_000, 0
        with rec.transaction():
            kept = rec.finish_delivery(row.seq, leased_until, status, attempts, next_at, outcome, finished or None)
            if kept and status == "delivered" and row.kind in ("entered", "changed") and profile is not None:
                rec.note_received([(found.name, row.profile_id, micros(done),
                                    _digest(persona, _values(found, profile, found.on_change)))])
        if status != "delivered":
            failing.add(found.name)  # its other deliveries wait for the next pass
        out.append(Attempt(found.name, row.seq, row.kind, status if kept else "lost lease", outcome))
    return out


_pruned: dict[str, float] = {}  # store -> when this process last pruned its deliveries (time.monotonic())


PASS_S = 30.0  # a delivery pass sends for at most this long (then the next pass goes on)


def deliver(persona: Persona, *, now: datetime | None = None, limit: int = 500) -> Pass:
    """One pass: queue what changed, send what is due, and (hourly) forget deliveries done long ago.
    Costs two small reads when nothing is to be done, and nothing is written."""
    if not persona.recorder.destination_rows():
        return Pass(0, [])
    queued = enqueue(persona, now)
    attempts = send_due(persona, now=now, limit=limit, deadline=time.monotonic() + PASS_S)
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
    notices = persona.recorder.erasure_notices(profile_ids)
    if not notices:
        return []
    deadline = time.monotonic() + wait_s
    done = {a.seq: (a.status, a.outcome) for a in send_due(persona, only=[row.seq for row in notices],
                                                           deadline=deadline)} if wait_s > 0 else {}
    # a notice the server's own delivery pass had leased first is that pass's to send: its outcome
    # is read back as it lands, within the same wait
    missing = [row.seq for row in notices if row.seq not in done]
    tried = {row.seq: row.attempts for row in notices}
    while missing and wait_s > 0:
        for row in persona.recorder.deliveries_of(missing):
            if row.status != "pending" or row.attempts > tried[row.seq]:  # landed, or failed and will be retried
                done[row.seq] = (row.status, row.outcome)
        missing = [seq for seq in missing if seq not in done]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    out = []
    for row in notices:
        status, outcome = done.get(row.seq, ("pending", "queued"))
        out.append({"destination": row.destination, "profile_id": row.profile_id,
                    "acknowledged": status == "delivered", "outcome": outcome if row.seq in done else "queued"})
    return out


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
        out.append({"name": d.name, "host": d.host, "segments": list(d.segments), "fields": list(d.fields),
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
