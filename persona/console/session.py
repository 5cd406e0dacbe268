"""The console's session: an API token sealed into a cookie, and the CSRF token of each form.

Signing in turns the token a person pastes into a cookie that holds it sealed (AES-256-GCM
under a key derived from the data directory's pepper, so every worker of the server opens
it, and nobody else): `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's
page sends it), `Secure` over HTTPS, `Path=/console`. The server keeps nothing: each request
opens the cookie and looks its token up again, so revoking the token ends every session made
from it at once, and a session lasts at most SESSION_S whatever the cookie says.

Every form that changes something carries a CSRF token: an HMAC of the session's own random
id, so it is worth nothing in another session, and is checked (in constant time) with the
request's Origin before anything happens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE = "persona_console"
SESSION_S = 8 * 3600  # a sign-in lasts a working day at most
CLOCK_SKEW_S = 60  # a cookie made this far in the future (another worker's clock) is still taken
_AAD = b"persona-console-session-v1"
MAX_ENDED = 100_000  # sessions signed out and remembered until they expire
_MAX_COOKIE = 512  # a sealed token is about 200 characters: anything far longer is not ours


@dataclass(frozen=True)
class Session:
    token: str  # the API token, as pasted at sign-in (never logged, never in a page)
    sid: str  # this sign-in's random id: what CSRF tokens are bound to
    at: int  # when it was made (seconds since the epoch)


class Sessions:
    """Seals and opens session cookies; makes and checks CSRF tokens."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(_derive(secret, "seal"))
        self._csrf = _derive(secret, "csrf")
        self._ended: dict[str, int] = {}  # sessions signed out in this process -> when they would expire

    def end(self, session: Session, now: float) -> None:
        """Sign a session out: its cookie, even copied before, opens nothing in this process again
        (every process of the server forgets it only when it would have expired anyway)."""
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        if len(self._ended) < MAX_ENDED:
            self._ended[session.sid] = session.at + SESSION_S

    def seal(self, token: str, now: float) -> tuple[str, Session]:
        session = Session(token, secrets.token_hex(16), int(now))
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, orjson.dumps({"t": session.token, "s": session.sid, "a": session.at}), _AAD)
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("="), session

    def open(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie holds, or None: not ours, tampered with, expired, or malformed."""
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], _AAD)
            doc = orjson.loads(plain)
        except (ValueError, binascii.Error, InvalidTag, orjson.JSONDecodeError):
            return None
        if not isinstance(doc, dict):
            return None
        token, sid, at = doc.get("t"), doc.get("s"), doc.get("a")
        if not (isinstance(token, str) and isinstance(sid, str) and isinstance(at, int)):
            return None
        if not at - CLOCK_SKEW_S <= now < at + SESSION_S or sid in self._ended:
            return None
        return Session(token, sid, at)

    def csrf(self, session: Session) -> str:
        return hmac.new(self._csrf, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(self.csrf(session), given)


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, b"persona-console\x00" + purpose.encode(), hashlib.sha256).digest()
