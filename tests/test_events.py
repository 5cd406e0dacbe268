from __future__ import annotations

from datetime import timedelta
from typing import Any

import phonenumbers
import pytest

from persona.errors import ValidationError
from persona.events import EVENT_TYPES, derive_event_id, utc_text, validate
from persona.pseudonyms import normalise
from tests.conftest import NOW, record


def check(raw: Any, **kwargs: Any) -> Any:
    return validate(raw, now=NOW, max_bytes=kwargs.pop("max_bytes", 64 * 1024), **kwargs)


def reason(raw: Any, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        check(raw, **kwargs)
    return info.value.reason


def test_valid_record_is_normalised() -> None:
    ev = check(record(" Alice@Example.COM ", "order_placed",
                      {"order_id": "o1", "amount": 12.5, "currency": "usd",
                       "items": [{"sku": "A", "category": "books", "qty": 2, "price": "6.25"}]},
                      occurred_at="2026-05-01T10:00:00+08:00", event_id="e-1"))
    assert ev.subject.value == "alice@example.com"
    assert ev.occurred_at == "2026-05-01T02:00:00.000000Z"  # stored as UTC
    assert ev.data["amount"] == "12.5" and ev.data["currency"] == "USD"
    assert ev.data["items"][0]["price"] == "6.25"
    assert ev.event_id == "e-1"


def test_date_only_is_midnight_utc() -> None:
    assert check(record(occurred_at="2026-01-31")).occurred_at == "2026-01-31T00:00:00.000000Z"


def test_phone_goes_to_e164_with_default_region() -> None:
    ev = check(record("138 0013 8000", namespace="phone", kind="searched", data={"query": "x"}))
    assert ev.subject.value == "+8613800138000"
    us = check(record("(415) 555-0100", namespace="phone", kind="searched", data={"query": "x"}),
               default_region="US")
    assert us.subject.value == "+14155550100"


def test_a_phone_must_be_valid_for_its_region_not_only_of_a_possible_length() -> None:
    """Issue 18: a 10-digit `1860000333` has the length of a CN number (fixed lines have 10 digits)
    but no CN number is written so, and it became a person of its own. A new event refuses it,
    naming the rule and not the number; looking it up still spells it as before, so that what was
    stored before the rule can be found and erased."""
    assert phonenumbers.is_possible_number(phonenumbers.parse("1860000333", "CN"))  # what let it in
    for spelled in ("1860000333", "+86 186 0000 333"):
        said = reason(record(spelled, namespace="phone", kind="searched", data={"query": "x"}))
        assert said == "subject.value: not a valid phone number for its region"
    linked = record(kind="identity_linked", data={"other": {"namespace": "phone", "value": "1860000333"}})
    assert reason(linked) == "data.other.value: not a valid phone number for its region"
    assert check(record("18600003333", namespace="phone", kind="searched", data={"query": "x"})).subject.value == (
        "+8618600003333")  # the same number with its eleventh digit: a valid mobile number
    assert normalise("phone", "1860000333") == "+861860000333"


def test_a_time_in_persona_s_form_is_kept_and_any_other_is_rewritten_to_it() -> None:
    kept = check(record() | {"occurred_at": "2024-02-10T10:00:00.000000Z"})
    assert kept.occurred_at == "2024-02-10T10:00:00.000000Z"
    moved = check(record() | {"occurred_at": "2024-02-10T18:00:00.5+08:00"})
    assert moved.occurred_at == "2024-02-10T10:00:00.500000Z"


def test_derived_event_id_is_deterministic_and_content_bound() -> None:
    a, b = record(), record()
    assert check(a).event_id == check(b).event_id == derive_event_id("web", a)
    b["data"]["url"] = "https://other.example/"
    assert check(a).event_id != check(b).event_id


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("source"), "source: required"),
        (lambda r: r.update(type="teleported"), "type: not a known event type"),
        (lambda r: r.update(occurred_at="yesterday"), "occurred_at: not an ISO 8601"),
        (lambda r: r.update(occurred_at="2026-05-01T10:00:00"), "occurred_at: a time needs a UTC offset"),
        (lambda r: r.update(occurred_at="2099-01-01T00:00:00Z"), "occurred_at: in the future"),
        # persona's own fixed-width form is kept as it is: still a real day, in range, not ahead
        (lambda r: r.update(occurred_at="2024-02-30T10:00:00.000000Z"), "occurred_at: not an ISO 8601"),
        (lambda r: r.update(occurred_at="1899-12-31T23:59:59.000000Z"), "occurred_at: outside the years"),
        (lambda r: r.update(occurred_at="2099-01-01T00:00:00.000000Z"), "occurred_at: in the future"),
        (lambda r: r.update(occurred_at="2024-02-10T10:00:00.000000Z\n"), "occurred_at: not an ISO 8601"),
        (lambda r: r["subject"].update(namespace="passport"), "subject.namespace"),
        (lambda r: r["subject"].update(value="not-an-email"), "subject.value: not an e-mail address"),
        (lambda r: r.update(data=[1]), "data: must be an object"),
        (lambda r: r["data"].pop("url"), "data.url: required"),
        (lambda r: r.update(event_id=""), "event_id"),
        (lambda r: r.update(extra_field=1), "record: unknown top-level field"),
    ],
)
def test_invalid_envelope(mutate: Any, expected: str) -> None:
    raw = record()
    mutate(raw)
    assert expected in reason(raw)


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("order_placed", {"order_id": "o", "amount": -1, "currency": "USD"}, "data.amount: must not be negative"),
        ("order_placed", {"order_id": "o", "amount": "abc", "currency": "USD"}, "data.amount"),
        ("order_placed", {"order_id": "o", "amount": 1, "currency": "US"}, "data.currency"),
        ("review_posted", {"sku": "s", "rating": 6}, "data.rating: must be between 1 and 5"),
        ("review_posted", {"sku": "s", "rating": True}, "data.rating: must be an integer"),
        ("profile_updated", {"age": 130}, "data.age"),
        ("profile_updated", {"gender": "robot"}, "data.gender"),
        ("app_session", {"session_id": "s", "minutes": -2}, "data.minutes"),
        ("social_interaction", {"action": "poke"}, "data.action"),
        ("consent_changed", {"purpose": "marketing", "granted": "yes"}, "data.granted"),
        ("identity_linked", {"other": {"namespace": "phone", "value": "12"}}, "data.other.value"),
    ],
)
def test_invalid_data(kind: str, data: dict[str, Any], expected: str) -> None:
    assert expected in reason(record(kind=kind, data=data))


def test_reasons_never_echo_the_offending_value() -> None:
    secret = "zz-secret-value-zz"
    for raw in (
        record(kind="profile_updated", data={"gender": secret}),
        record(secret, namespace="email"),
        record(kind="order_placed", data={"order_id": "o", "amount": secret, "currency": "USD"}),
        record(occurred_at=secret),
        {**record(), "type": secret},
    ):
        assert secret not in reason(raw)


def test_size_limit() -> None:
    raw = record(data={"url": "https://x.example/" + "a" * 2000})
    assert "larger than" in reason(raw, max_bytes=1000)


def test_future_tolerance_is_configurable() -> None:
    soon = (NOW + timedelta(hours=2)).isoformat()
    assert check(record(occurred_at=soon)).occurred_at
    assert "in the future" in reason(record(occurred_at=soon), max_future=timedelta(hours=1))


def test_identity_linked_carries_the_other_identifier() -> None:
    ev = check(record(kind="identity_linked", data={"other": {"namespace": "phone", "value": "+86 138 0013 8000"}}))
    assert ev.other is not None and ev.other.value == "+8613800138000"
    assert "other" not in ev.data  # the raw identifier is not kept in the payload


def test_every_type_has_a_spec() -> None:
    assert {"profile_updated", "order_placed", "order_refunded", "page_viewed", "searched", "product_viewed",
            "cart_updated", "social_interaction", "app_session", "review_posted", "identity_linked",
            "consent_changed"} == EVENT_TYPES


@pytest.mark.parametrize("text", ["2026-05-01T02:03:04.000005Z", "1999-12-31T23:59:59.999999Z",
                                  "2026-05-01T10:03:04+08:00", "2026-05-01"])
def test_text_micros_matches_the_slow_parse(text: str) -> None:
    from datetime import UTC, datetime

    from persona.events import micros, text_micros

    moment = datetime.fromisoformat(text)
    expected = micros(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    assert text_micros(text if moment.tzinfo else utc_text(moment.replace(tzinfo=UTC))) == expected
