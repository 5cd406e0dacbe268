"""What a client may see of an error, and what the log may say of it.

Known kinds keep their message (written to be safe: no data, no internals). Anything
else is shown as "internal error (reference …)" and logged by class and place under
that reference — never its message or traceback, which might hold a person's data.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from typing import Any

from graphql import GraphQLError

from persona.errors import ConcurrencyError, ErasedError, UnknownProfileError, ValidationError

log = logging.getLogger("persona.api")


class ApiError(Exception):
    """An error whose message is safe to show the client (no data, no internals)."""

    def __init__(self, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.code = code


def error(message: str, code: str, path: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"message": message, "extensions": {"code": code}}
    if path is not None:
        out["path"] = path
    return out


_CANNOT_REPRESENT = re.compile(r"cannot represent[^:]*")
_FOUND = re.compile(r",? found:? .*$", re.DOTALL)


def scrub(message: str) -> str:
    """graphql-core's messages about bad input quote the value given ("Int cannot represent
    non-integer value: 'a@b.c'"): keep what was wrong, drop the value, which may be personal."""
    found = _CANNOT_REPRESENT.search(message)
    if found is not None:
        message = message[: found.end()].rstrip() + "."
    return _FOUND.sub(".", message)


def known(original: BaseException | None) -> tuple[str, str] | None:
    """(message, code) for errors a client may read as they are; None for faults of ours."""
    if isinstance(original, GraphQLError):  # input that does not fit the schema (variables, scalars)
        return scrub(original.message), "BAD_REQUEST"
    if isinstance(original, ApiError):
        return str(original), original.code
    if isinstance(original, ValidationError):
        return original.reason, "BAD_REQUEST"
    if isinstance(original, UnknownProfileError | ErasedError):
        return "no such profile (unknown, or erased)", "NOT_FOUND"
    if isinstance(original, ConcurrencyError):
        return "the profile changed meanwhile; try again", "CONFLICT"
    return None


def fault(original: BaseException, path: Any = None) -> str:
    """Log an unforeseen error by class and place; the reference to give the client."""
    reference = uuid.uuid4().hex[:12]
    where = traceback.extract_tb(original.__traceback__)[-1:] if original.__traceback__ else []
    place = f"{where[0].filename}:{where[0].lineno} in {where[0].name}" if where else "?"
    log.error("internal error %s at %s (%s; reference %s)", type(original).__name__, path, place, reference)
    return reference


def masked(e: GraphQLError) -> dict[str, Any]:
    original = e.original_error
    if original is None:  # from graphql-core: the request itself is malformed
        return error(scrub(e.message), "BAD_REQUEST", e.path)
    if isinstance(original, GraphQLError):
        return error(scrub(e.message), "BAD_REQUEST", e.path)
    shown = known(original)
    if shown is not None:
        return error(shown[0], shown[1], e.path)
    return error(f"internal error (reference {fault(original, e.path)})", "INTERNAL", e.path)
