"""The log's key set in generations (store format 3): what keeps per-event idempotency from costing
more as the store grows.

Every event's idempotency key (a 16-byte keyed hash of its id, uniform already) is kept for good,
erasure included. Format 2 kept them in one table keyed by the key itself: each append inserted
its keys at random places in one B-tree that grows with the store, and each commit wrote most of
its leaf pages again (docs/store-v2.md). Format 3 splits the set by the events' positions: the key
of the event at position p belongs to generation (p - 1) // GENERATION_KEYS. Appends insert only
into the newest generation, whose pages stay few and hot. When the log's last position passes a
generation's end, that generation is *sealed*: a Bloom filter is built once from its keys and
stored beside it in `key_filters`, and the database then refuses any key into it. A new batch's
keys are checked against the open generation by its primary key and against the sealed ones by
their filters, held in memory (2 MiB per generation), with an exact lookup only for a key a filter
does not rule out (about one new key in 1,400 per sealed generation: batched, one query per
generation and batch).

The filters are built the same way from the same keys every time, so `persona verify` rebuilds
each one and compares it byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

GENERATION_KEYS = 1 << 20  # keys per generation (events at 1,048,576 consecutive positions)
FILTER_BITS = 1 << 24  # bits of every generation's filter: 16 per key of a full generation (2 MiB)
PROBES = 7  # bit positions tested per key: ≈1 false positive in 1,400 other keys for a full generation
_MASK = FILTER_BITS - 1
_SMALL = 32  # batches up to this many keys are probed in Python: numpy's fixed cost per call is larger


def generation_of(position: int) -> int:
    """The generation that holds the key of the event at this position."""
    return (position - 1) // GENERATION_KEYS


def sealed_by(last_position: int) -> int:
    """How many generations are sealed once the log ends at this position: every one it has passed."""
    return last_position // GENERATION_KEYS


class KeyFilter:
    """A Bloom filter over 16-byte keys: the two little-endian 64-bit halves (h1, h2) of a key give
    PROBES bit positions by double hashing, (h1 + i * (h2 | 1)) mod FILTER_BITS; bit b is bit
    b % 8 of byte b // 8."""

    __slots__ = ("_array", "bits")

    def __init__(self, bits: bytes) -> None:
        if len(bits) != FILTER_BITS // 8:
            raise ValueError(f"a key filter is {FILTER_BITS // 8} bytes, not {len(bits)}")
        self.bits = bits
        self._array: Any = None  # a numpy view of bits, made on the first large probe

    @classmethod
    def build(cls, parts: Iterable[bytes]) -> KeyFilter:
        """The filter of these keys, given as concatenations of 16-byte keys (in any order and any
        slices: the same keys give the same bytes)."""
        import numpy as np

        bits = np.zeros(FILTER_BITS // 8, dtype=np.uint8)
        one = np.uint8(1)
        for part in parts:
            # in slices of 16,384 keys (0.9 MB of positions), each bit set in place: no array of
            # 2^24 flags, whose 16 MB the C heap kept after each sealing of a long ingest
            for start in range(0, len(part), 16 * 16_384):
                p = _positions(part[start : start + 16 * 16_384]).ravel()
                np.bitwise_or.at(bits, p >> np.uint64(3), one << (p & np.uint64(7)).astype(np.uint8))
        return cls(bits.tobytes())

    def maybe(self, keys: list[bytes]) -> list[int]:
        """The indexes of the keys this filter does not rule out (a key absent from it: never)."""
        if len(keys) <= _SMALL:
            bits = self.bits
            found = []
            for n, key in enumerate(keys):
                h1 = int.from_bytes(key[:8], "little")
                h2 = int.from_bytes(key[8:16], "little") | 1
                for i in range(PROBES):
                    b = (h1 + i * h2) & _MASK
                    if not bits[b >> 3] >> (b & 7) & 1:
                        break
                else:
                    found.append(n)
            return found
        import numpy as np

        if self._array is None:
            self._array = np.frombuffer(self.bits, dtype=np.uint8)
        p = _positions(b"".join(keys))
        hit = ((self._array[p >> np.uint64(3)] >> (p & np.uint64(7)).astype(np.uint8)) & 1).all(axis=1)
        return [int(n) for n in hit.nonzero()[0]]


def _positions(keys: bytes) -> Any:
    """The PROBES bit positions of each 16-byte key of a concatenation (an array of n × PROBES)."""
    import numpy as np

    halves = np.frombuffer(keys, dtype="<u8").reshape(-1, 2)
    steps = np.arange(PROBES, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64, then the mask: as the scalar probe
        return (halves[:, :1] + steps * (halves[:, 1:] | np.uint64(1))) & np.uint64(_MASK)
