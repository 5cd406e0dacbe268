"""The canonical event format (docs/events.md): validation and normalisation.

Pure: no storage, no clock, no randomness. `now` arrives as an argument.
Error reasons name the field and the rule, never the offending value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from persona.errors import ValidationError
from persona.pseudonyms import admit

MAX_EVENT_ID = 128
RESERVED_SOURCE = "persona"  # the source of the events persona appends itself (persona.identity)
MAX_AMOUNT = Decimal(10) ** 15
MAX_TEXT = 2048
_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UPPER2 = re.compile(r"^[A-Za-z]{2}$")
_UPPER3 = re.compile(r"^[A-Za-z]{3}$")
_ENVELOPE = frozenset({"event_id", "source", "type", "occurred_at", "subject", "data"})


class Subject(NamedTuple):
    namespace: str
    value: str  # normalised; never stored, only hashed


class Event(NamedTuple):
    """A validated canonical event, ready to be appended (a tuple: cheap to make by the million)."""

    event_id: str
    source: str
    type: str
    occurred_at: str  # UTC, fixed-width ISO 8601: sorts as it reads
    subject: Subject
    data: dict[str, Any]
    other: Subject | None = None  # identity_linked: the identifier linked to `subject`


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


_EPOCH_DAY = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=65_536)
def _day_micros(day: str) -> int:
    return (date.fromisoformat(day).toordinal() - _EPOCH_DAY) * 86_400_000_000


def text_micros(text: str) -> int:
    """Microseconds since the epoch of a stored `occurred_at` (fast for the canonical
    `YYYY-MM-DDTHH:MM:SS.ffffffZ` that utc_text writes; any ISO 8601 with an offset works)."""
    if len(text) == 27 and text[26] == "Z" and text[10] == "T":
        return (_day_micros(text[:10]) + int(text[11:13]) * 3_600_000_000 + int(text[14:16]) * 60_000_000
                + int(text[17:19]) * 1_000_000 + int(text[20:26]))
    return micros(datetime.fromisoformat(text))


class Writer(NamedTuple):
    """Who appends events: an API token (`token:NAME`), a local command (`local:ingest`), or a
    program using the library (`library`). Its name is sealed into every event it writes.

    `sources` are the sources it vouches for: None for the operator (a local command or the
    library, which hold the keys anyway) — every source; for a token, those it is bound to
    (none when unbound). Only a vouched claim takes its source's rank in attribute fusion.
    """

    name: str
    sources: frozenset[str] | None = None

    def vouches(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def key_scope(self, source: str) -> bytes:
        """What binds the idempotency key of its event from this source to it: nothing for the
        operator (one key space, as ever: re-ingesting a file appends nothing, whoever runs it);
        for a token, its name, so that no token can send first an event id another writer will
        send (dropping theirs as a duplicate) or replay another writer's. Persona's own markers
        (RESERVED_SOURCE, ids it derives itself) stay in the common space."""
        if self.sources is None or source == RESERVED_SOURCE:
            return b""
        return self.name.encode() + b"\x01"  # no source name holds \x01 or ":": never a local key's prefix


LIBRARY = Writer("library")  # a program calling the library without naming itself
UNKNOWN_WRITER = "unknown"  # events written before writers were recorded


def local(command: str) -> Writer:
    """A command of the `persona` CLI, run by the operator."""
    return Writer("local:" + command)


class RecordedEvent(NamedTuple):
    """An event read back from the log, opened. A named tuple: replay makes one per event, and
    a tuple is made at a fraction of a frozen dataclass's cost (measured: bench-peer's replay).

    `writer` names who appended it (`Writer.name`; UNKNOWN_WRITER before writers were recorded)
    and `vouched` says whether that writer vouched for its source (an unknown writer's events
    keep their source's rank, as they always had: see docs/projections.md).
    """

    position: int
    profile_id: str
    version: int
    event_id: str
    type: str
    source: str
    occurred_at: str
    recorded_us: int  # microseconds since the epoch, UTC
    subject: tuple[str, str]  # (namespace, short hash): never the identifier itself
    data: dict[str, Any]
    writer: str = UNKNOWN_WRITER
    vouched: bool = True

    @property
    def recorded_at(self) -> datetime:
        return from_micros(self.recorded_us)

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "profile_id": self.profile_id,
            "version": self.version,
            "event_id": self.event_id,
            "type": self.type,
            "source": self.source,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at.isoformat(),
            "subject": {"namespace": self.subject[0], "hash": self.subject[1]},
            "data": self.data,
            "writer": self.writer,
            "vouched": self.vouched,
        }


# -- field checkers: value -> normalised value, or ValidationError --------------------------
Check = Callable[[str, Any], Any]


def utc_text(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601 with microseconds, so that text order is time order."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# the fixed-width UTC form `utc_text` writes: a time in it is read without being rewritten
_CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")


def _canonical_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as e:  # 2024-02-30: the right shape, not a day
        raise ValidationError("occurred_at: not an ISO 8601 date or time") from e


def parse_time(field: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be an ISO 8601 string")
    try:
        if _DATE_ONLY.match(value):
            moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValidationError(f"{field}: not an ISO 8601 date or time") from e
    if moment.tzinfo is None:
        raise ValidationError(f"{field}: a time needs a UTC offset (e.g. Z or +08:00)")
    if not 1900 <= moment.year <= 9998:
        raise ValidationError(f"{field}: outside the years 1900 to 9998")
    try:
        return moment.astimezone(UTC)
    except OverflowError as e:
        raise ValidationError(f"{field}: outside the years 1900 to 9998") from e


def text(max_len: int = MAX_TEXT) -> Check:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{field}: must be a non-empty string")
        if len(value) > max_len:
            raise ValidationError(f"{field}: longer than {max_len} characters")
        return value

    return check


def integer(lo: int, hi: int) -> Check:
    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{field}: must be an integer")
        if not lo <= value <= hi:
            raise ValidationError(f"{field}: must be between {lo} and {hi}")
        return value

    return check


def number(lo: float = 0.0) -> Check:
    def check(field: str, value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValidationError(f"{field}: must be a number")
        if value < lo:
            raise ValidationError(f"{field}: must be at least {lo:g}")
        return value

    return check


def money(field: str, value: Any) -> str:
    """Amounts are kept as exact decimal strings."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{field}: must be a decimal number")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as e:
        raise ValidationError(f"{field}: must be a decimal number") from e
    if not amount.is_finite():
        raise ValidationError(f"{field}: must be a finite number")
    if amount < 0:
        raise ValidationError(f"{field}: must not be negative")
    if amount >= MAX_AMOUNT or amount.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValidationError(f"{field}: must be below 10^15 with at most 6 decimal places")
    return str(amount)


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{field}: must be true or false")
    return value


def one_of(*choices: str) -> Check:
    allowed = frozenset(choices)

    def check(field: str, value: Any) -> str:
        if value not in allowed:
            raise ValidationError(f"{field}: must be one of {', '.join(choices)}")
        return str(value)

    return check


def code(pattern: re.Pattern[str], what: str) -> Check:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValidationError(f"{field}: must be {what}")
        return value.upper()

    return check


def timestamp(field: str, value: Any) -> str:
    return utc_text(parse_time(field, value))


def text_list(field: str, value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > 256:
        raise ValidationError(f"{field}: must be a list of at most 256 strings")
    return [text(256)(f"{field}[{i}]", v) for i, v in enumerate(value)]


def record(spec: Mapping[str, tuple[Check, bool]]) -> Check:
    required = _required(spec)

    def check(field: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValidationError(f"{field}: must be an object")
        return _fields(field, value, spec, required)

    return check


def records(spec: Mapping[str, tuple[Check, bool]], max_items: int = 1000) -> Check:
    one = record(spec)

    def check(field: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or len(value) > max_items:
            raise ValidationError(f"{field}: must be a list of at most {max_items} objects")
        return [one(f"{field}[{i}]", item) for i, item in enumerate(value)]

    return check


def _required(spec: Mapping[str, tuple[Check, bool]]) -> tuple[str, ...]:
    return tuple(name for name, (_, required) in spec.items() if required)


def _fields(prefix: str, value: dict[str, Any], spec: Mapping[str, tuple[Check, bool]],
            required: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in value.items():
        entry = spec.get(name)
        if entry is None:
            out[name] = item  # fields the spec does not know are kept: formats grow, never shrink
        elif item is not None:
            out[name] = entry[0](f"{prefix}.{name}", item)
    for name in required:
        if name not in out:
            raise ValidationError(f"{prefix}.{name}: required")
    return out


REQ, OPT = True, False
SUBJECT_SPEC: dict[str, tuple[Check, bool]] = {"namespace": (text(64), REQ), "value": (text(256), REQ)}
DATA_SPECS: dict[str, dict[str, tuple[Check, bool]]] = {
    "profile_updated": {
        "gender": (one_of("female", "male", "other", "unknown"), OPT),
        "birth_year": (integer(1880, 2200), OPT),
        "age": (integer(0, 120), OPT),
        "region": (text(128), OPT),
        "city": (text(128), OPT),
        "country": (code(_UPPER2, "an ISO 3166-1 alpha-2 code"), OPT),
        "language": (text(35), OPT),
        "signup_at": (timestamp, OPT),
    },
    "order_placed": {
        "order_id": (text(128), REQ),
        "amount": (money, REQ),
        "currency": (code(_UPPER3, "an ISO 4217 code"), REQ),
        "items": (
            records({
                "sku": (text(128), OPT),
                "category": (text(128), OPT),
                "qty": (integer(0, 1_000_000), OPT),
                "price": (money, OPT),
            }),
            OPT,
        ),
        "channel": (text(64), OPT),
    },
    "order_refunded": {"order_id": (text(128), REQ), "amount": (money, REQ)},
    "page_viewed": {
        "url": (text(), REQ),
        "category": (text(128), OPT),
        "duration_s": (number(), OPT),
        "session_id": (text(128), OPT),
        "referrer": (text(), OPT),
    },
    "searched": {"query": (text(), REQ), "session_id": (text(128), OPT)},
    "product_viewed": {
        "sku": (text(128), REQ),
        "category": (text(128), REQ),
        "session_id": (text(128), OPT),
    },
    "cart_updated": {"sku": (text(128), REQ), "qty": (integer(-1_000_000, 1_000_000), REQ)},
    "social_interaction": {
        "action": (one_of("like", "share", "comment", "follow", "message"), REQ),
        "target": (text(256), OPT),
        "category": (text(128), OPT),
    },
    "app_session": {
        "session_id": (text(128), REQ),
        "minutes": (number(), REQ),
        "features_used": (text_list, OPT),
        "platform": (text(64), OPT),
    },
    "review_posted": {
        "sku": (text(128), REQ),
        "rating": (integer(1, 5), REQ),
        "text_length": (integer(0, 10_000_000), OPT),
    },
    "identity_linked": {"other": (record(SUBJECT_SPEC), REQ)},
    "consent_changed": {
        "purpose": (one_of("analytics", "marketing", "personalization"), REQ),
        "granted": (boolean, REQ),
    },
}
EVENT_TYPES = frozenset(DATA_SPECS)
# Types that say who a person is (their attributes, their identifiers) or what may be done with their
# data (consent): a token writes them only when its event types name them (`persona tokens create
# --types`), never by default.
PRIVILEGED_TYPES = frozenset({"consent_changed", "identity_linked", "profile_updated"})


def derive_event_id(source: str, raw: Mapping[str, Any], body: bytes | None = None) -> str:
    """Deterministic id for a record that has none: the same record always gets the same id
    (`body`: the record as encoded here already)."""
    if body is None:
        body = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "auto-" + hashlib.sha256(source.encode() + b"\x00" + body).hexdigest()[:32]


DATA_REQUIRED = {kind: _required(spec) for kind, spec in DATA_SPECS.items()}


def _subject(field: str, value: Any, default_region: str) -> Subject:
    if not isinstance(value, dict):
        raise ValidationError(f"{field}: must be an object")
    namespace, ident = value.get("namespace"), value.get("value")
    if not isinstance(namespace, str) or not namespace:
        raise ValidationError(f"{field}.namespace: required")
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)  # numeric user ids are common in exports
    if not isinstance(ident, str):
        raise ValidationError(f"{field}.value: must be a string")
    try:
        return Subject(namespace, admit(namespace, ident, default_region))
    except ValidationError as e:
        raise ValidationError(e.reason.replace("subject.", f"{field}.", 1)) from None


def validate(
    raw: Any,
    *,
    now: datetime,
    max_bytes: int,
    default_region: str = "CN",
    max_future: timedelta = timedelta(days=1),
    size: int | None = None,
) -> Event:
    """Check one decoded record against docs/events.md and return it normalised."""
    if not isinstance(raw, dict):
        raise ValidationError("record: must be a JSON object")
    body = None  # the record as its derived id hashes it: sorted keys, and the same length as it is written
    if size is None:
        try:
            body = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)  # (keys that are not text: not JSON)
        except TypeError as e:
            raise ValidationError("record: contains values that are not JSON") from e
        size = len(body)
    if size > max_bytes:
        raise ValidationError(f"record: larger than the {max_bytes}-byte limit")
    for name in ("source", "type", "occurred_at", "subject", "data"):
        if raw.get(name) is None:
            raise ValidationError(f"{name}: required")
    source = raw["source"]
    if not isinstance(source, str) or not _valid_name(source):
        raise ValidationError("source: must be a lower-case name such as shop or web")
    if source == RESERVED_SOURCE:
        raise ValidationError("source: 'persona' names the events persona appends itself (merges); use another")
    kind = raw["type"]
    if kind not in DATA_SPECS:
        raise ValidationError("type: not a known event type")
    event_id = raw.get("event_id")
    if event_id is None:
        event_id = derive_event_id(source, raw, body)
    elif not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID:
        raise ValidationError(f"event_id: must be a non-empty string of at most {MAX_EVENT_ID} characters")
    occurred = raw["occurred_at"]
    if type(occurred) is str and _CANONICAL_TIME.match(occurred) and 1900 <= int(occurred[:4]) <= 9998:
        moment = _canonical_time(occurred)  # already as persona writes it (a mapping's times are): kept as it is
    else:
        moment = parse_time("occurred_at", occurred)
        occurred = moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # parse_time gave UTC
    if moment > now + max_future:
        raise ValidationError("occurred_at: in the future")
    subject = _subject("subject", raw["subject"], default_region)
    data = raw["data"]
    if not isinstance(data, dict):
        raise ValidationError("data: must be an object")
    data = _fields("data", data, DATA_SPECS[kind], DATA_REQUIRED[kind])
    other = None
    if kind == "identity_linked":
        other = _subject("data.other", data.pop("other"), default_region)
    if not _ENVELOPE.issuperset(raw):
        extra = set(raw) - _ENVELOPE
        raise ValidationError("record: unknown top-level field(s): " + ", ".join(sorted(_safe(k) for k in extra)))
    return Event(event_id, source, kind, occurred, subject, data, other)


def valid_source(name: str) -> bool:
    """A name that `validate` accepts as an event's `source`."""
    return _valid_name(name) and name != RESERVED_SOURCE


@lru_cache(maxsize=1024)
def _valid_name(name: str) -> bool:
    return _NAME.match(name) is not None


def _safe(name: str) -> str:
    """Field names are echoed in reasons; keep them short and plain."""
    return name if _NAME.match(name) else "<field>"
