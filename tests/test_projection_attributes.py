"""Profile attributes: fusion rules, provenance, order independence, time travel, snapshots."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from persona import Persona
from persona.cli import cli
from persona.events import RecordedEvent, micros, utc_text
from persona.ingest import ingest_jsonl
from persona.projections import ATTRIBUTES, FusionPolicy, ProfileAttributes, replay
from persona.projections.base import visible
from tests.conftest import jsonl, record

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def fact(kind: str, data: dict[str, Any], *, source: str, at: str, event_id: str, recorded: str | None = None,
         version: int = 1) -> RecordedEvent:
    moment = datetime.fromisoformat(at)
    return RecordedEvent(version, "prf_test", version, event_id, kind, source, utc_text(moment),
                         micros(datetime.fromisoformat(recorded) if recorded else moment), ("email", "abc"), data)


HISTORY = [
    fact("profile_updated", {"gender": "female", "birth_year": 1990, "city": "Shanghai", "language": "zh",
                             "signup_at": "2025-01-05T00:00:00.000000Z"},
         source="crm", at="2025-01-05T09:00:00+00:00", event_id="c1"),
    fact("profile_updated", {"gender": "male", "age": 35, "city": "Hangzhou", "language": "en"},
         source="shop", at="2025-03-01T09:00:00+00:00", event_id="s1"),
    fact("profile_updated", {"gender": "other", "birth_year": 1994, "signup_at": "2024-12-01T00:00:00.000000Z"},
         source="social", at="2025-06-01T09:00:00+00:00", event_id="x1"),
    fact("consent_changed", {"purpose": "marketing", "granted": True},
         source="crm", at="2025-01-05T09:00:00+00:00", event_id="c2"),
    fact("consent_changed", {"purpose": "marketing", "granted": False},
         source="app", at="2025-07-01T09:00:00+00:00", event_id="a1"),
]


def view(events: list[RecordedEvent], projection: ProfileAttributes = ATTRIBUTES, **kw: Any) -> dict[str, Any]:
    return projection.view(replay(projection, events, **kw), AS_OF)


def test_every_rule_on_a_worked_example() -> None:
    out = view(HISTORY)
    # precedence: the CRM outranks later claims from the shop and social media
    assert out["gender"]["value"] == "female" and out["gender"]["provenance"][0]["event_id"] == "c1"
    # weighted: crm 1990 (w 4), shop age 35 in 2025 -> 1990 (w 2), social 1994 (w 0.5) -> 1990.31 -> 1990
    assert out["birth_year"]["value"] == 1990
    assert [(p["source"], p["weight"]) for p in out["birth_year"]["provenance"]] == [
        ("crm", 4.0), ("shop", 2.0), ("social", 0.5)]
    assert out["age"]["value"] == 36 and out["age"]["derived_from"] == "birth_year"
    # latest: the shop's newer city wins; union keeps every language with its first claim
    assert out["city"]["value"] == "Hangzhou" and out["city"]["provenance"][0]["source"] == "shop"
    assert out["language"]["value"] == "en"
    assert out["languages"]["value"] == ["zh", "en"]
    # precedence again: the CRM's signup date, not social media's
    assert out["signup_at"]["value"] == "2025-01-05T00:00:00.000000Z"
    # consent: the latest change per purpose
    assert out["consent"]["marketing"]["granted"] is False
    assert out["consent"]["marketing"]["provenance"][0]["event_id"] == "a1"
    assert out["consent"]["analytics"] == {"granted": None, "provenance": []}


def test_the_trust_order_and_weights_are_configurable() -> None:
    social_first = ProfileAttributes(FusionPolicy(trust=("social", "shop", "crm"), weights={"social": 1.0},
                                                  default_weight=0.0))
    out = view(HISTORY, social_first)
    assert out["gender"]["value"] == "other"
    assert out["birth_year"]["value"] == 1994  # only social carries weight


def test_as_of_and_known_at() -> None:
    late = fact("profile_updated", {"city": "Beijing"}, source="crm", at="2025-02-01T00:00:00+00:00",
                event_id="late", recorded="2025-08-01T00:00:00+00:00")
    events = [*HISTORY, late]
    assert view(events, as_of=datetime(2025, 2, 15, tzinfo=UTC))["city"]["value"] == "Beijing"
    # what did we believe on 2025-02-15? the late record had not arrived: Shanghai
    believed = view(events, as_of=datetime(2025, 2, 15, tzinfo=UTC), known_at=datetime(2025, 2, 15, tzinfo=UTC))
    assert believed["city"]["value"] == "Shanghai"
    before_anything = view(events, as_of=datetime(2024, 1, 1, tzinfo=UTC))
    assert set(before_anything) == {"consent"}


claims = st.lists(
    st.tuples(
        st.sampled_from(["crm", "shop", "web", "social", "partner"]),
        st.sampled_from(["gender", "birth_year", "age", "city", "language", "signup_at", "consent"]),
        st.integers(0, 5),  # value choice
        st.integers(0, 6),  # day: ties are likely, broken by event id
    ),
    min_size=1,
    max_size=25,
)


def build(spec: list[tuple[str, str, int, int]]) -> list[RecordedEvent]:
    values = {
        "gender": ["female", "male", "other", "unknown", "female", "male"],
        "birth_year": [1970, 1980, 1990, 1991, 2000, 2001],
        "age": [20, 30, 40, 50, 60, 70],
        "city": ["A", "B", "C", "D", "E", "F"],
        "language": ["zh", "en", "de", "ja", "fr", "es"],
        "signup_at": [f"2024-0{i + 1}-01T00:00:00.000000Z" for i in range(6)],
    }
    out = []
    for n, (source, name, choice, day) in enumerate(spec):
        at = f"2025-01-0{day + 1}T00:00:00+00:00"
        if name == "consent":
            out.append(fact("consent_changed", {"purpose": "marketing", "granted": bool(choice % 2)},
                            source=source, at=at, event_id=f"e{n:03d}"))
        else:
            out.append(fact("profile_updated", {name: values[name][choice]}, source=source, at=at,
                            event_id=f"e{n:03d}"))
    return out


@given(claims, st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_attributes(spec: list[tuple[str, str, int, int]], rnd: Any) -> None:
    events = build(spec)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = replay(ATTRIBUTES, events), replay(ATTRIBUTES, shuffled)
    assert ATTRIBUTES.view(a, AS_OF) == ATTRIBUTES.view(b, AS_OF)
    assert orjson.dumps(ATTRIBUTES.dump(a)) == orjson.dumps(ATTRIBUTES.dump(b))  # byte for byte


@given(claims, st.integers(0, 7))
def test_snapshot_plus_catch_up_equals_full_replay(spec: list[tuple[str, str, int, int]], cut: int) -> None:
    events = build(spec)
    head, tail = events[:cut], events[cut:]
    restored = ATTRIBUTES.load(orjson.loads(orjson.dumps(ATTRIBUTES.dump(replay(ATTRIBUTES, head)))))
    for event in tail:
        restored = ATTRIBUTES.apply(restored, event)
    full = replay(ATTRIBUTES, events)
    assert ATTRIBUTES.dump(restored) == ATTRIBUTES.dump(full)
    assert ATTRIBUTES.view(restored, AS_OF) == ATTRIBUTES.view(full, AS_OF)


@given(claims, st.integers(1, 7))
def test_as_of_equals_replaying_only_the_events_up_to_it(spec: list[tuple[str, str, int, int]], day: int) -> None:
    events = build(spec)
    moment = datetime(2025, 1, day, tzinfo=UTC)
    upto = [e for e in events if e.occurred_at <= utc_text(moment)]
    assert ATTRIBUTES.view(replay(ATTRIBUTES, events, as_of=moment), AS_OF) == view(upto)
    assert list(visible(events, as_of=moment)) == upto


def test_cli_profile_shows_attributes_as_of_and_known_at(persona: Persona, tmp_path: Any) -> None:
    data = jsonl(
        record("ann@example.com", "profile_updated", {"city": "Paris", "gender": "female"}, source="crm",
               occurred_at="2025-01-01T00:00:00Z", event_id="p1"),
        record("ann@example.com", "profile_updated", {"city": "Lyon"}, source="shop",
               occurred_at="2025-05-01T00:00:00Z", event_id="p2"),
    )
    ingest_jsonl(persona, io.BytesIO(data), origin="f")
    folder = str(persona.settings.data_dir)
    persona.close()
    now = json.loads(CliRunner().invoke(cli, ["--data", folder, "profile", "--subject", "email:ann@example.com",
                                              "--json"]).output)
    assert now["attributes"]["city"]["value"] == "Lyon" and now["events"] == 2
    assert now["attributes"]["gender"]["provenance"] == [
        {"source": "crm", "writer": "library", "vouched": True, "event_id": "p1",
         "occurred_at": "2025-01-01T00:00:00.000000Z"}]
    then = json.loads(CliRunner().invoke(cli, ["--data", folder, "profile", "--subject", "email:ann@example.com",
                                               "--as-of", "2025-02-01T00:00:00Z", "--json"]).output)
    assert then["attributes"]["city"]["value"] == "Paris" and then["events"] == 1
    before = json.loads(CliRunner().invoke(cli, ["--data", folder, "profile", "--subject", "email:ann@example.com",
                                                 "--known-at", "2000-01-01T00:00:00Z", "--json"]).output)
    assert before["events"] == 0 and "city" not in before["attributes"]
    bad = CliRunner().invoke(cli, ["--data", folder, "profile", "--subject", "email:ann@example.com",
                                   "--as-of", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def test_erased_profiles_stay_erased_in_every_past_view(persona: Persona) -> None:
    import pytest

    from persona.erasure import erase_subject
    from persona.errors import ErasedError
    from persona.profiles import profile_view

    ingest_jsonl(persona, io.BytesIO(jsonl(record("gone@example.com", event_id="g1"))), origin="f")
    pid = persona.log.profile_for("email", "gone@example.com")
    assert pid is not None
    assert profile_view(persona, pid, as_of=datetime(2026, 5, 2, tzinfo=UTC))["events"] == 1
    erase_subject(persona, "email", "gone@example.com")
    for as_of, known_at in [(None, None), (datetime(2026, 5, 2, tzinfo=UTC), None),
                            (None, datetime(2030, 1, 1, tzinfo=UTC))]:
        with pytest.raises(ErasedError):
            profile_view(persona, pid, as_of=as_of, known_at=known_at)


@given(claims, st.lists(st.integers(0, 2), min_size=25, max_size=25))
def test_combining_streams_equals_one_fold_of_all_their_events(spec: list[tuple[str, str, int, int]],
                                                               owner: list[int]) -> None:
    """A merged person: the events split over up to three streams, each folded alone, then combined."""
    events = build(spec)
    parts = [[e for n, e in enumerate(events) if owner[n] == k] for k in range(3)]
    states = [replay(ATTRIBUTES, part) for part in parts]
    dumps = [orjson.dumps(ATTRIBUTES.dump(s)) for s in states]
    combined = ATTRIBUTES.combine(states)
    assert orjson.dumps(ATTRIBUTES.dump(combined)) == orjson.dumps(ATTRIBUTES.dump(replay(ATTRIBUTES, events)))
    assert [orjson.dumps(ATTRIBUTES.dump(s)) for s in states] == dumps  # the inputs are untouched
