"""The erasure ledger: profile ids (or keyed identifier hashes) and erasure times, one JSON
object a line, fsynced, kept beside the key file, so that a restored backup can be brought
up to date with every erasure made after it was taken. Nothing personal is in it.

Each line is signed and chained: `mac` is an HMAC-SHA256, under a key derived from the key
file, of the line's other fields, among them its number (`seq`) and the previous line's MAC
(`prev`). So a line altered, removed, inserted, moved, or copied from another ledger (of
another store, or of another machine sharing this one's key file) fails to verify, and
reading refuses the whole ledger. The one exception is a torn final line (a crash
mid-write, before the erasing transaction committed): it is passed over, and said so.

What a chain cannot show is that lines were cut off its end, or that the whole file was
swapped for an older one: `persona restore` therefore also applies the current database's
tombstones (see persona.backup).

A ledger written by an older persona (plain JSON lines, no MAC) is never adopted on sight:
unsigned, it proves nothing (anyone could have written it, leaving out erasures or naming
people who were never erased), so reading it and appending to it are refused (UNSIGNED)
until an operator has looked at its entries and signs them with `persona ledger adopt`
(`adopt()`), line by line and in order; the old file is kept beside it, renamed. Lines
without a MAC after that are refused like any other alteration.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from persona.crypto import Keyring
from persona.errors import LedgerError, UnsignedLedgerError
from persona.events import from_micros, micros

_DOMAIN = b"persona-erasure-ledger/2\x00"
_FIELDS = ("seq", "erased_at", "profile_id", "purged", "prev", "mac")
_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\n\r\x0b\x0c")
_TAIL_WINDOW = 4096  # bytes read from the end to find the last line: a line is ~200 bytes
UNSIGNED = ("the erasure ledger is not signed: an older persona wrote it, or someone replaced it; nothing was"
            " read from it and nothing was erased. Check its entries and sign them with `persona ledger adopt`")

log = logging.getLogger("persona.ledger")


@dataclass(frozen=True)
class LedgerEntry:
    erased_at: int
    profile_id: str | None = None  # a profile erased
    purged: bytes | None = None  # or: the keyed hash of an identifier with no profile, whose quarantine was purged


@dataclass(frozen=True)
class LedgerRead:
    entries: list[LedgerEntry]
    torn: bool = False  # a torn final line (a crash mid-write) was passed over
    adopted: int = 0  # lines of an unsigned, older ledger signed into the chain (by adopt())


@dataclass(frozen=True)
class _Signed:
    seq: int
    mac: str
    entry: LedgerEntry


class ErasureLedger:
    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._genesis = self._mac({"genesis": True})

    @classmethod
    def of(cls, path: Path, keyring: Keyring) -> ErasureLedger:
        return cls(path, keyring.derived("erasure-ledger"))

    # -- writing ---------------------------------------------------------------------------
    def record(self, entry: LedgerEntry) -> None:
        """Append one entry, chained to the last, and fsync it. An unsigned ledger is refused
        (UNSIGNED): nothing is chained to lines nobody signed."""
        with self._locked(create=True) as fd:
            if self._unsigned(fd):
                raise UnsignedLedgerError(UNSIGNED)
            seq, prev = self._head(fd)
            _write_all(fd, self._line(seq + 1, entry, prev))
            os.fsync(fd)

    def _line(self, seq: int, entry: LedgerEntry, prev: str) -> bytes:
        doc: dict[str, Any] = {"seq": seq, "erased_at": from_micros(entry.erased_at).isoformat()}
        if entry.profile_id is not None:
            doc["profile_id"] = entry.profile_id
        if entry.purged is not None:
            doc["purged"] = entry.purged.hex()
        doc["prev"] = prev
        doc["mac"] = self._mac(doc)
        return orjson.dumps(doc) + b"\n"

    def _head(self, fd: int) -> tuple[int, str]:
        """The last line's number and MAC (0 and the genesis for an empty ledger). A torn tail
        is cut off first; a tail that lost only its line break gets it back."""
        start, last, tail = _last_lines(fd)
        if tail:
            found = self._verified(tail)
            if found is not None:
                _write_all(fd, b"\n")
                return found.seq, found.mac
            if not _torn(tail):
                raise LedgerError("the erasure ledger ends in a line that was altered; nothing was erased."
                                  " Run `persona verify` and put back a good copy of the ledger")
            os.ftruncate(fd, start + len(last))  # a crash mid-write: that erasure never committed
        if not last:
            return 0, self._genesis
        found = self._verified(last.rstrip(b"\n"))
        if found is None:
            raise LedgerError("the erasure ledger's last line does not verify, so nothing can be chained to it;"
                              " nothing was erased. Run `persona verify` and put back a good copy of the ledger")
        return found.seq, found.mac

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> LedgerRead:
        """Every entry, each line checked. Raises LedgerError naming the first bad line."""
        if not self.path.exists():
            return LedgerRead([])
        with self._locked(create=False) as fd:
            if self._unsigned(fd):
                raise UnsignedLedgerError(UNSIGNED)
            raw = _read_all(fd)
        entries, torn = self._check(raw)
        return LedgerRead(entries, torn)

    def entries(self) -> list[LedgerEntry]:
        return self.read().entries

    def _check(self, raw: bytes) -> tuple[list[LedgerEntry], bool]:
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a line break
        entries: list[LedgerEntry] = []
        prev = self._genesis
        for n, line in enumerate(lines, start=1):
            signed = self._follow(n, line, prev)
            entries.append(signed.entry)
            prev = signed.mac
        if tail:
            try:
                entries.append(self._follow(len(lines) + 1, tail, prev).entry)
            except LedgerError:
                if not _torn(tail):
                    raise
                return entries, True
        return entries, False

    def _follow(self, n: int, line: bytes, prev: str) -> _Signed:
        """Line n, if it is genuine and follows the line before it (whose MAC is prev)."""
        doc = _parse(line)
        if doc is None:
            raise LedgerError(f"erasure ledger line {n} cannot be read: it is not a ledger entry")
        if "mac" not in doc:
            raise LedgerError(f"erasure ledger line {n} is not signed: an unsigned line in a signed ledger was"
                              " added or changed by hand (or by an older persona)")
        found = self._verified(line)
        if found is None:
            raise LedgerError(f"erasure ledger line {n} was altered, or signed with another key file")
        if found.seq != n:
            raise LedgerError(f"erasure ledger line {n} holds entry {found.seq}: a line was removed, inserted or"
                              " moved")
        if doc["prev"] != prev:
            raise LedgerError(f"erasure ledger line {n} does not follow the line before it: it was copied from"
                              " another ledger, or a line was removed or moved")
        return found

    def _verified(self, line: bytes) -> _Signed | None:
        """The line's entry if its MAC checks out and it is byte for byte as written."""
        doc = _parse(line)
        if doc is None or set(doc) - set(_FIELDS) or not {"seq", "erased_at", "prev", "mac"} <= set(doc):
            return None
        if orjson.dumps(doc) != line:  # not even a space added
            return None
        body = {k: v for k, v in doc.items() if k != "mac"}
        if not isinstance(doc["mac"], str) or not hmac.compare_digest(self._mac(body), doc["mac"]):
            return None
        entry = _entry(doc)
        if entry is None or not isinstance(doc["seq"], int):
            return None
        return _Signed(doc["seq"], doc["mac"], entry)

    def _mac(self, body: dict[str, Any]) -> str:
        return hmac.new(self._key, _DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                        hashlib.sha256).hexdigest()

    # -- adopting an unsigned ledger (written before lines were signed) --------------------
    def unsigned_entries(self) -> LedgerRead:
        """The entries of an older, unsigned ledger, as adopt() would sign them, changing nothing
        (none if the ledger is signed, or absent). Raises LedgerError if a line other than a
        torn last one cannot be read."""
        if not self.path.exists():
            return LedgerRead([])
        with self._locked(create=False) as fd:
            return self._unsigned_read(fd) or LedgerRead([])

    def adopt(self, expected: list[LedgerEntry] | None = None) -> LedgerRead:
        """Sign an older, unsigned ledger as a chain of the same entries, in order (the old file
        is kept beside it, renamed), if an operator asked for it: never on sight (UNSIGNED).
        With `expected` (the entries they were shown), refuses if the file holds others by now.
        Returns the entries signed (none if the ledger was signed already)."""
        if not self.path.exists():
            return LedgerRead([])
        with self._locked(create=False) as fd:
            found = self._unsigned_read(fd)
            if found is None:
                return LedgerRead([])
            entries, torn = found.entries, found.torn
            if expected is not None and entries != expected:
                raise LedgerError("the unsigned erasure ledger changed since its entries were listed; nothing was"
                                  " signed: run `persona ledger adopt` again")
            self._sign(entries)
        log.warning("signed %d entries of an older, unsigned erasure ledger into the chain, as asked%s;"
                    " the old file is kept beside it with the suffix .unsigned", len(entries),
                    " (a torn last line, a crash mid-write, was passed over)" if torn else "")
        return LedgerRead(entries, torn, len(entries))

    def _unsigned_read(self, fd: int) -> LedgerRead | None:
        """The entries of an older, unsigned ledger (None if it is signed)."""
        if not self._unsigned(fd):
            return None
        entries, torn = _unsigned_entries(_read_all(fd))
        return LedgerRead(entries, torn)

    def _unsigned(self, fd: int) -> bool:
        """Whether the file is an older, unsigned ledger: no line of it is signed. (A signed
        ledger is never adopted again: an unsigned line inside it is refused by _check.)"""
        os.lseek(fd, 0, os.SEEK_SET)
        first = _parse(os.read(fd, _TAIL_WINDOW).split(b"\n", 1)[0])
        if first is not None and "mac" in first:
            return False  # the usual case, read from the first line alone
        lines = _read_all(fd).split(b"\n")
        signed = any(doc is not None and "mac" in doc for doc in map(_parse, lines))
        return not signed and any(_unsigned_entry(line) is not None for line in lines)

    def _sign(self, entries: list[LedgerEntry]) -> None:
        """Replace the (locked) unsigned ledger by a signed chain of these entries; keep the old
        file beside it."""
        prev, out = self._genesis, bytearray()
        for seq, entry in enumerate(entries, start=1):
            line = self._line(seq, entry, prev)
            prev = str(orjson.loads(line)["mac"])
            out += line
        kept = self.path.with_name(f"{self.path.name}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.unsigned")
        fresh = self.path.with_name(f".{self.path.name}.signing")
        new = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(new, bytes(out))
            os.fsync(new)
        finally:
            os.close(new)
        os.link(self.path, kept)  # the old file stays, under a new name
        os.replace(fresh, self.path)
        _fsync_dir(self.path.parent)

    # -- locking ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self, *, create: bool) -> Iterator[int]:
        """The ledger file, open for appending, under an exclusive lock (writers on this machine
        take turns; an adoption replaces the file, so the lock is taken again on the new one)."""
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        while True:
            fd = os.open(self.path, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield fd
                    return
            finally:
                os.close(fd)


def _entry(doc: dict[str, Any]) -> LedgerEntry | None:
    try:
        at = micros(datetime.fromisoformat(doc["erased_at"]))
        purged = bytes.fromhex(doc["purged"]) if "purged" in doc else None
        profile_id = doc.get("profile_id")
    except (KeyError, TypeError, ValueError):
        return None
    if (profile_id is None) == (purged is None) or not isinstance(profile_id, str | None):
        return None
    return LedgerEntry(at, profile_id, purged)


def _unsigned_entries(raw: bytes) -> tuple[list[LedgerEntry], bool]:
    """The entries of an older, unsigned ledger, in order, and whether a torn last line (a crash
    mid-write) was passed over. Refuses if any other line cannot be read."""
    lines = raw.split(b"\n")
    tail = lines.pop()
    entries = []
    for n, line in enumerate(lines, start=1):
        entry = _unsigned_entry(line)
        if entry is None:
            raise LedgerError(f"erasure ledger line {n} cannot be read, so the older, unsigned ledger cannot be"
                              " adopted; nothing was changed: correct or remove that line by hand")
        entries.append(entry)
    last = _unsigned_entry(tail) if tail else None
    if last is not None:
        entries.append(last)  # complete but for its line break
    elif tail and not _torn(tail):
        raise LedgerError("the older, unsigned erasure ledger ends in a line that cannot be read, so it cannot"
                          " be adopted; nothing was changed: correct or remove that line by hand")
    return entries, bool(tail) and last is None


def _unsigned_entry(line: bytes) -> LedgerEntry | None:
    """A line of the older, unsigned kind. One glued to a torn write before it (older persona
    appended after a crash mid-write without a line break) is read from its own start."""
    doc = _parse(line)
    if doc is None:
        start = line.rfind(b'{"erased_at":')
        doc = _parse(line[start:]) if start > 0 else None
    if doc is None or "mac" in doc or set(doc) - {"erased_at", "profile_id", "purged"}:
        return None
    return _entry(doc)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _torn(tail: bytes) -> bool:
    """What a write cut short leaves: the start of a line (printable, opening the object), never
    its closing brace (a line holds no other)."""
    return tail[:1] == b"{" and b"}" not in tail and all(b in _PRINTABLE for b in tail)


def _last_lines(fd: int) -> tuple[int, bytes, bytes]:
    """(where the last complete line starts, that line with its break, the unterminated tail)."""
    size = os.fstat(fd).st_size
    window = _TAIL_WINDOW
    while True:
        start = max(0, size - window)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = _read_exactly(fd, size - start)
        cut = chunk.rfind(b"\n")
        tail = chunk[cut + 1:]
        before = chunk.rfind(b"\n", 0, cut) if cut >= 0 else -1
        if before >= 0 or start == 0:
            last = chunk[before + 1 : cut + 1]
            return start + before + 1, last, tail
        window *= 4


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    return _read_exactly(fd, size)


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        part = os.read(fd, left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
