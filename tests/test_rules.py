"""Segment rules (persona.rules): what they mean on real profiles, and what they refuse."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.rules import MAX_DEPTH, MAX_RULE, MAX_TERMS, NAMES, RuleError, names_in, parse

BUYER: tuple[dict[str, Any], dict[str, Any], dict[str, int] | None] = (
    {"country": "FR", "age": 41, "languages": ["fr", "en"], "consent": {"marketing": True, "analytics": False}},
    {"monetary": 1250.5, "recency_days": 12.0, "frequency": 4, "lifecycle_stage": "active",
     "top_categories": ["books", "garden"], "aov": None},
    {"r": 5, "f": 4, "m": 5},
)
BROWSER: tuple[dict[str, Any], dict[str, Any], dict[str, int] | None] = (
    {"consent": {}},
    {"monetary": 0.0, "recency_days": None, "frequency": 0, "lifecycle_stage": "new", "top_categories": []},
    None,
)


def holds(rule: str, profile: tuple[dict[str, Any], dict[str, Any], dict[str, int] | None]) -> bool:
    return parse(rule)(*profile)


@pytest.mark.parametrize(("rule", "buyer", "browser"), [
    ("monetary > 1000 and recency_days < 30 and consent.marketing", True, False),
    ("monetary >= 1250.5 and monetary <= 1250.5", True, False),
    ("frequency = 0", False, True),
    ("frequency == 4", True, False),
    ('lifecycle_stage in ["active", "at_risk"]', True, False),
    ('stage = "new"', False, True),  # an alias, as `persona profiles` labels it
    ('top_categories contains "books"', True, False),
    ('languages contains "en" and country != "CN"', True, False),
    ("consent.analytics", False, False),  # said no / never said
    ("not consent.analytics", True, True),
    ("consent.marketing = true", True, False),
    ("rfm.r >= 4 and rfm.m = 5", True, False),
    ("rfm.r < 4", False, False),  # not scored: no test on a missing value holds
    ("recency_days is null", False, True),
    ("recency_days is not null and age is not null", True, False),
    ("recency_days < 30", True, False),  # the browser never ordered: null, and null < 30 is false
    ("not recency_days < 30", False, True),
    ('country != "FR"', False, False),  # the browser has no country: != says nothing either
    ("aov > 0 or frequency > 3", True, False),
    ('(monetary > 2000 or (frequency >= 4 and not country = "CN")) and age < 65', True, False),
    ("NOT consent.marketing OR frequency > 10", False, True),
])
def test_a_rule_means_what_it_says(rule: str, buyer: bool, browser: bool) -> None:
    assert (holds(rule, BUYER), holds(rule, BROWSER)) == (buyer, browser)


def test_keywords_are_case_insensitive_names_are_not() -> None:
    assert holds("monetary > 10 AND NOT consent.analytics", BUYER)
    with pytest.raises(RuleError, match=r"an unknown name .*, found 'Monetary'"):
        parse("Monetary > 10")


@pytest.mark.parametrize(("rule", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("monetary >", r"expected a number, found the end of the rule"),
    ("monetary > 'a lot'", "monetary holds a number: expected a number"),
    ('country > "FR"', "compares numbers only"),
    ("monetary", r"monetary is a number: compare it \(e.g. monetary > 100\)"),
    ("country", "compare it"),
    ("top_categories = 'books'", "use 'contains'"),
    ("frequency contains 'x'", "not a list"),
    ("consent.marketing in [true]", "'in \\[...\\]' takes a number or a text"),
    ("consent.sharing", "found 'consent.sharing'"),
    ("__import__('os').system('id')", "not part of the rule language, found '.' \\(character 17\\)"),
    ("__import__('os')", "an unknown name \\(known: .*\\), found '__import__'"),
    ("monetary > 1 and", "expected a name"),
    ("monetary > 1 or or frequency > 1", "expected a name"),
    ("(monetary > 1", "expected '\\)'"),
    ("monetary > 1)", "expected 'and', 'or' or the end of the rule"),
    ("monetary > 1 frequency > 1", "expected 'and', 'or' or the end of the rule, found 'frequency' \\(character 14\\)"),
    ("monetary ; drop table x", "not part of the rule language, found ';' \\(character 10\\)"),
    ("country = \"FR", "not part of the rule language, found '\"' \\(character 11\\)"),
    ("lifecycle_stage in [\"a\",]", 'expected a text in quotes'),
    ("lifecycle_stage in []", "expected a text in quotes"),
    ("age is 3", "expected 'null' after 'is'"),
    ("monetary > 1e999", "expected a finite number, found '1e999'"),
    ("rfm.x > 1", "found 'rfm.x'"),
    ("top_categories contains 5", "top_categories holds a list: expected a text in quotes"),
])
def test_a_bad_rule_is_refused_saying_what_and_where(rule: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse(rule)


def test_huge_and_deep_rules_are_refused_before_they_cost_anything() -> None:
    with pytest.raises(RuleError, match=f"longer than {MAX_RULE}"):
        parse("monetary > 1 and " * 200 + "frequency > 1")
    with pytest.raises(RuleError, match=f"more than {MAX_TERMS} tests"):
        parse(" or ".join(["frequency > 1"] * (MAX_TERMS + 1)))
    assert parse(" or ".join(["frequency > 1"] * MAX_TERMS))(*BUYER)
    with pytest.raises(RuleError, match=f"nested more than {MAX_DEPTH}"):
        parse("(" * 500 + "frequency > 1" + ")" * 500)  # no RecursionError: refused at MAX_DEPTH
    with pytest.raises(RuleError, match=f"nested more than {MAX_DEPTH}"):
        parse("not " * 400 + "consent.marketing")
    assert parse("not " * MAX_DEPTH + "consent.marketing")(*BUYER) is True  # 16 nots: even, so as is
    assert parse("(" * MAX_DEPTH + "consent.marketing" + ")" * MAX_DEPTH)(*BUYER) is True
    with pytest.raises(RuleError, match=f"nested more than {MAX_DEPTH}"):
        parse("not " * (MAX_DEPTH + 1) + "consent.marketing")
    with pytest.raises(RuleError, match="more than 100 values"):
        parse("lifecycle_stage in [" + ", ".join(f'"s{n}"' for n in range(101)) + "]")


@pytest.mark.parametrize("rule", [
    'city = "Secretville" and', "not " * 17 + "Secretville", "Secretville = 'x'", "monetary > 13812345678e999",
    'city = "Secretville" frequency > 1', 'city = "Secretville\'', "Secretville ! 1", "age > 'Secretville'",
    'lifecycle_stage in ["Secretville" "x"]', "(" * 3000 + "Secretville",
])
def test_what_the_api_says_of_a_bad_rule_never_quotes_it(rule: str) -> None:
    """The API drops what follows ", found" and any whole value a client sent (persona.api.errors.scrub):
    every message quotes the rule only there, so no value of a rule comes back in an error."""
    from persona.api.errors import scrub
    from persona.rules import compile_rule

    with pytest.raises(RuleError) as refused:
        compile_rule(rule)
    said = scrub(f"filter.{refused.value.reason}", [rule])
    assert "Secretville" not in said and "13812345678" not in said, said
    assert said.startswith("filter.rule: ")


def test_text_values_are_taken_literally() -> None:
    tricky = ({"city": 'O"Brien\\town'}, {}, None)
    assert parse(r'city = "O\"Brien\\town"')(*tricky)
    assert parse("city = 'O\"Brien\\\\town'")(*tricky)
    assert not parse('city = "O"')(*tricky)


def test_a_value_of_the_wrong_kind_never_matches_nor_raises() -> None:
    odd = ({"age": "forty", "country": 7, "languages": "fr"}, {"monetary": True, "top_categories": None}, {"r": 5})
    for rule in ("age > 30", 'country = "7"', "country in [\"FR\"]", 'languages contains "fr"', "monetary > 0",
                 'top_categories contains "x"', "rfm.f > 1"):
        assert parse(rule)(*odd) is False


def test_names_in_a_rule_are_listed_resolved() -> None:
    assert names_in('stage = "new" and monetary > 1 or spent < 5 and consent.marketing') == [
        "lifecycle_stage", "monetary", "consent.marketing"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        predicate = parse(text)
    except RuleError as e:
        assert e.reason.startswith("rule: ")
    else:
        assert predicate(*BUYER) in (True, False)


def test_random_rules_agree_with_a_direct_reading() -> None:
    """Random conjunctions and disjunctions of comparisons, against the same tests done by hand."""
    rng = random.Random(7)
    numbers = [name for name, kind in NAMES.items() if kind == "number" and name not in ("age", "birth_year")
               and not name.startswith("rfm.")]
    people = [({"age": rng.choice([None, rng.randint(18, 90)])},
               {name: rng.choice([None, rng.uniform(0, 100)]) for name in numbers}, None) for _ in range(50)]
    numbers.append("age")
    for _ in range(200):
        terms = [(rng.choice(numbers), rng.choice(["<", ">="]), round(rng.uniform(0, 100), 2)) for _ in range(3)]
        joiner = rng.choice(["and", "or"])
        rule = f" {joiner} ".join(f"{n} {op} {v}" for n, op, v in terms)
        for person in people:
            def one(name: str, op: str, value: float, person: Any = person) -> bool:
                held = person[1].get(name, person[0].get(name))
                return held is not None and (held < value if op == "<" else held >= value)
            expected = (all if joiner == "and" else any)(one(*t) for t in terms)
            assert parse(rule)(*person) is expected, rule


def test_persona_profiles_where(tmp_path: Any) -> None:
    """`persona profiles --where RULE` on a real store: exactly the profiles the rule holds for, a bad
    rule refused with its place (exit 2), and the audit entry naming what the rule read, no value."""
    from pathlib import Path

    import orjson
    from click.testing import CliRunner

    from persona import Persona, Settings
    from persona.cli import cli

    sample = Path(__file__).resolve().parent.parent / "fixtures" / "sample_events.jsonl"
    data = str(tmp_path / "data")
    run = CliRunner().invoke
    assert run(cli, ["--data", data, "init"]).exit_code == 0
    assert run(cli, ["--data", data, "ingest", str(sample)]).exit_code == 0
    everyone = [orjson.loads(line) for line in run(cli, ["--data", data, "profiles", "--json"]).output.splitlines()]
    rule = 'country = "CN" or behavior_events >= 10'
    listed = run(cli, ["--data", data, "profiles", "--json", "--where", rule])
    assert listed.exit_code == 0, listed.output
    found = [orjson.loads(line)["id"] for line in listed.output.splitlines()]
    holds = parse(rule)
    assert found == [p["id"] for p in everyone if holds(p["attributes"], p["features"], p["rfm"])] and found
    bad = run(cli, ["--data", data, "profiles", "--where", "behavior_events >= ten"])
    assert bad.exit_code == 2 and "behavior_events holds a number: expected a number, found 'ten' (character 20)" \
        in bad.output
    with Persona.open(Settings.load(data, env={})) as p:
        details = [orjson.loads(r[7]) for r in p.recorder.audit_rows(limit=1_000_000) if r[3] == "profiles"]
    assert {"rule": ["country", "behavior_events"]} in [d.get("filter") for d in details]
    assert '"CN"' not in str(details)
