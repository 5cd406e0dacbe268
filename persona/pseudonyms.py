"""External identifiers → normalised → keyed hash. The raw value goes no further."""

from __future__ import annotations

import hmac
import re
from functools import lru_cache

import phonenumbers

from persona.errors import ValidationError

FIXED_NAMESPACES = frozenset({"email", "phone", "device", "cookie"})
_SOURCE_USER = re.compile(r"^[a-z][a-z0-9]{0,30}_user$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_ID_CHARS = 256


def check_namespace(namespace: str) -> None:
    if namespace not in FIXED_NAMESPACES and not _SOURCE_USER.match(namespace):
        raise ValidationError(
            "subject.namespace: must be email, phone, device, cookie or <source>_user"
        )


@lru_cache(maxsize=65_536)  # the same people recur batch after batch
def normalise(namespace: str, value: str, default_region: str = "CN") -> str:
    """The canonical spelling of an identifier; raises ValidationError (without the value)."""
    check_namespace(namespace)
    text = value.strip()
    if not text:
        raise ValidationError("subject.value: empty")
    if len(text) > MAX_ID_CHARS:
        raise ValidationError(f"subject.value: longer than {MAX_ID_CHARS} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("subject.value: not valid UTF-8 text") from None
    if namespace == "email":
        text = text.lower()
        if not _EMAIL.match(text):
            raise ValidationError("subject.value: not an e-mail address")
        return text
    if namespace == "phone":
        try:
            number = phonenumbers.parse(text, default_region)
        except phonenumbers.NumberParseException as e:
            raise ValidationError("subject.value: not a phone number") from e
        if not phonenumbers.is_possible_number(number):
            raise ValidationError("subject.value: not a possible phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return text


@lru_cache(maxsize=65_536)
def admit(namespace: str, value: str, default_region: str = "CN") -> str:
    """The canonical spelling of an identifier a new event may carry: as `normalise`, and a phone
    must also be a valid number for its region (a 10-digit `1860000333` is a possible CN number
    but no CN number has it: refused, never a person of its own). Looking an identifier up, or
    erasing it, takes `normalise` alone, so that what was stored before this rule is still found."""
    text = normalise(namespace, value, default_region)
    if namespace == "phone" and not phonenumbers.is_valid_number(phonenumbers.parse(text)):
        raise ValidationError("subject.value: not a valid phone number for its region")
    return text


def subject_hash(pepper: bytes, namespace: str, normalised: str) -> bytes:
    """HMAC-SHA256(pepper, namespace NUL value): the only form in which an identifier is kept."""
    return hmac.digest(pepper, namespace.encode() + b"\x00" + normalised.encode(), "sha256")


def short_hash(digest: bytes) -> str:
    """What a person may be shown of a link: enough to tell links apart, no more."""
    return digest.hex()[:12]
