"""Keyed row tags: what `verify` checks every table outside the hash-chained log by.

Each row of a tagged table carries `tag`, an HMAC (under a key derived from the pepper) of the
table's name and the row's values in its TAGGED columns, so a row altered on disk — a flipped
byte, a value changed by hand — no longer matches its tag. The tag binds the row's content,
its primary key included, never its place in the file.

Who writes them. Rows of most tables are inserted or updated with `tag` NULL (an UPDATE sets
it NULL in the same statement), and the recorder tags every untagged row just before the
transaction commits (`retag`: a partial index finds them). The audit log and the tombstones
refuse every UPDATE (append-only triggers), so their writers tag each row as they insert it.
So do the writers of many rows at once (links, keys, snapshots, the profile index, and the
predictions a batch scores, whose tags are made where their documents are): no row of theirs is
read back and written a second time at COMMIT.

Adoption. A store made before tags existed gets the `tag` columns by the additive migration
(COLUMNS_ADDED), and its rows are tagged once, as they are, the first time persona opens it
(meta `row_tags`): rows present at adoption are trusted as they stand then; `persona verify`
before upgrading checks them against the log as far as it can. A process of an older release
writing to the store afterwards leaves untagged rows, which verify reports.

What is not tagged: the events (their hash chain covers them) and, of `streams`, the version
and head that every append moves (verify recomputes both from the chain).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from typing import cast

from persona.store.schema import ADOPTED, RETAGGED, TAGGED, TAGGED_ON_INSERT, UNTAGGED_INDEXES

# Which columns each table's tag covers, and which tables are tagged by their writer, are the
# store's schema (persona.store.schema); they are named here too for the modules that check them.
__all__ = ["ADOPTED", "KEY_PURPOSE", "RETAGGED", "TAGGED", "TAGGED_ON_INSERT", "TAG_BYTES", "UNTAGGED_INDEXES",
           "Tagger"]

TAG_BYTES = 16
KEY_PURPOSE = "row-tags"


_LENGTH = struct.Struct(">I").pack


def _canonical(table: str, values: Sequence[object]) -> bytes:
    """An unambiguous encoding: each value typed and length-prefixed (the same from both backends)."""
    parts = [table.encode()]
    for value in values:
        kind = type(value)
        if kind is str:  # the usual cases first, by exact type (a bool is an int too: it is typed below)
            parts.append(b"s" + cast(str, value).encode("utf-8", "surrogatepass"))
        elif kind is int:
            parts.append(b"i" + str(value).encode())
        elif value is None:
            parts.append(b"n")
        elif isinstance(value, bool):
            parts.append(b"i" + str(int(value)).encode())
        elif isinstance(value, int):
            parts.append(b"i" + str(value).encode())
        elif isinstance(value, float):
            parts.append(b"f" + repr(value).encode())
        elif isinstance(value, str):
            parts.append(b"s" + value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, bytes | bytearray | memoryview):
            parts.append(b"b" + bytes(value))
        else:
            raise TypeError(f"a column of {table} holds a {type(value).__name__}")
    return b"".join([_LENGTH(len(p)) + p for p in parts])


class Tagger:
    """Computes row tags with one store's key (from Keyring.derived(KEY_PURPOSE))."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, table: str, values: Sequence[object]) -> bytes:
        return hmac.digest(self._key, _canonical(table, values), "sha256")[:TAG_BYTES]

    def matches(self, table: str, values: Sequence[object], tag: object) -> bool:
        if not isinstance(tag, bytes | bytearray | memoryview):
            return False
        return hmac.compare_digest(self(table, values), bytes(tag))
