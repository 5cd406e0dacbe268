"""What the hardening suite tried, counted as it runs and printed at the end of the run
(conftest's terminal summary): inputs fuzzed, faults injected, processes killed.

The suite has two sizes: CI's (the default, minutes) and a long one, `PERSONA_HARDEN=long`
(`scripts/harden`), in which the tests that say so with `sized` run their long figure: a hundred
SIGKILLs, tens of thousands of fuzzed requests, a hundred thousand fuzzed source rows. With
`PERSONA_HARDEN_REPORT=path`, the counts are also written there as JSON at the end of the run
(added to what the file already holds, so that several runs make one report)."""

from __future__ import annotations

import os
from collections import Counter

TRIED: Counter[str] = Counter()
LONG = os.environ.get("PERSONA_HARDEN") == "long"

# The counts scripts/harden holds to its floors (tests tally these exact names).
KILLS = "server processes killed with SIGKILL mid-ingest, then checked (acknowledged events kept, none twice, verify)"
ACKNOWLEDGED = "events acknowledged by a server later killed with SIGKILL"
ACKNOWLEDGED_LOST = "acknowledged events lost to a SIGKILL"
DUPLICATED = "events stored twice after a SIGKILL and the client's retries"
VERIFY_FAILED = "stores failing verify after a SIGKILL"
REQUESTS = "GraphQL requests fuzzed (schemathesis)"
ANSWERED_5XX = "GraphQL requests answered with a 5xx"
ECHOED = "GraphQL answers echoing an identifier (seeded or sent)"
SOURCE_ROWS = "source adapter rows fuzzed (shop, social, web, app)"
SOURCE_APPENDED = "source adapter rows fuzzed: appended"
SOURCE_DUPLICATES = "source adapter rows fuzzed: found a duplicate"
SOURCE_QUARANTINED = "source adapter rows fuzzed: quarantined with a reason"
SOURCE_BLANK = "source adapter rows fuzzed: blank (nothing to ingest)"
SOURCE_DROPPED = "source adapter rows fuzzed: dropped without a word"
TAMPER_FLIPS = "single-byte flips of a sample store, each caught by verify or changing nothing a reader sees"
TAMPER_CAUGHT = "single-byte flips of a sample store: caught by verify"
TAMPER_UNCHANGED = "single-byte flips of a sample store: changing nothing a reader sees"
TAMPER_MISSED = "single-byte flips of a sample store that verify missed (or a reader crashed on)"
TAMPER_SKIPPED = "bytes of the sample store left unflipped"


def tally(what: str, n: int = 1) -> None:
    TRIED[what] += n


def sized(ci: int, long: int) -> int:
    """A test's size: `ci` in CI and by default, `long` under PERSONA_HARDEN=long."""
    return long if LONG else ci
