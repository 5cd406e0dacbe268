"""What a client may see of an error, and what the log may say of it.

Known kinds keep their message (written to be safe: no data, no internals). Anything
else is shown as "internal error (reference …)" and logged by class and place under
that reference — never its message or traceback, which might hold a person's data.
"""

from __future__ import annotations

import functools
import logging
import re
import traceback
import uuid
from typing import Any

from graphql import (
    DocumentNode,
    FloatValueNode,
    GraphQLError,
    GraphQLSchema,
    IntValueNode,
    StringValueNode,
    Visitor,
    visit,
)
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from persona.errors import ConcurrencyError, ErasedError, LinkError, UnknownProfileError, ValidationError

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
_FOUND = re.compile(r",? found:? .*$", re.DOTALL | re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_SHORTEST_REDACTED = 3  # shorter values identify no one, and would mangle words like "at"


def request_values(document: DocumentNode | None, variables: Any, names: frozenset[str]) -> list[str]:
    """Every value a client sent — literals in the document, leaves of the variables — as
    text, longest first: what an error message must not repeat. `names`: the schema's own
    (schema_names), which a misspelt field name is not taken for."""
    found: set[str] = set()
    if document is not None:
        visit(document, _Literals(found))

    def leaves(value: Any) -> None:
        if isinstance(value, dict):  # a misspelt field name is repeated as given: it could be anything
            found.update(k for k in map(str, value) if k not in names)
            for item in value.values():
                leaves(item)
        elif isinstance(value, list):
            for item in value:
                leaves(item)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            found.add(str(value))
            if isinstance(value, str):
                found.add(repr(value)[1:-1])  # as Python quotes it inside a message

    for value in (variables or {}).values() if isinstance(variables, dict) else ():
        leaves(value)  # the variables' own names are the client's, and messages name them
    return sorted((v for v in found if len(v) >= _SHORTEST_REDACTED), key=len, reverse=True)


@functools.cache
def schema_names(schema: GraphQLSchema) -> frozenset[str]:
    """Every name the schema defines (types, fields, arguments): never redacted from messages."""
    names: set[str] = set()
    for named in schema.type_map.values():
        names.add(named.name)
        for field in getattr(named, "fields", {}).values():
            names.update(getattr(field, "args", {}))
        names.update(getattr(named, "fields", {}))
    return frozenset(names)


class _Literals(Visitor):
    def __init__(self, found: set[str]) -> None:
        super().__init__()
        self.found = found

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        self.found.add(node.value)

    def enter_int_value(self, node: IntValueNode, *_: Any) -> None:
        self.found.add(node.value)

    def enter_float_value(self, node: FloatValueNode, *_: Any) -> None:
        self.found.add(node.value)


def scrub(message: str, values: list[str] | None = None) -> str:
    """graphql-core's messages about bad input quote what was given ("Int cannot represent
    non-integer value: 'a@b.c'", "Did you mean …? Found: {…}", "Unexpected Int '138…'"):
    keep what was wrong, never the value, which may be personal."""
    if message.startswith("Syntax Error:"):
        message = _QUOTED.sub("…", message)
    found = _CANNOT_REPRESENT.search(message)
    if found is not None:
        message = message[: found.end()].rstrip() + "."
    message = _FOUND.sub(".", message)
    for value in values or ():
        message = message.replace(value, "…")
    return message


def known(original: BaseException | None) -> tuple[str, str] | None:
    """(message, code) for errors a client may read as they are; None for faults of ours."""
    if isinstance(original, GraphQLError):  # input that does not fit the schema (variables, scalars)
        return scrub(original.message), "BAD_REQUEST"
    if isinstance(original, CannotGetOperationTypeError | InvalidOperationTypeError | MissingQueryError):
        return "no operation to run: check the query and its operationName", "BAD_REQUEST"
    if isinstance(original, ApiError):
        return str(original), original.code
    if isinstance(original, ValidationError | LinkError):
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


def masked(e: GraphQLError, values: list[str] | None = None) -> dict[str, Any]:
    """One error as the client sees it; `values` are the request's own values, never repeated."""
    original = e.original_error
    if original is None or isinstance(original, GraphQLError):  # the request does not fit the schema
        return error(scrub(e.message, values), "BAD_REQUEST", e.path)
    shown = known(original)
    if shown is not None:
        return error(scrub(shown[0], values), shown[1], e.path)
    return error(f"internal error (reference {fault(original, e.path)})", "INTERNAL", e.path)
