"""Identity resolution on the four-channel fixture (fixtures/people, written by `scripts/generate`),
checked against its planted ground truth: who is who, every bad row quarantined, features right.

The same people appear in the shop, on social media, on the web and in the app under different
identifiers; the files hold exact and re-formatted duplicates, late events and bad rows.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from itertools import combinations
from pathlib import Path
from typing import Any

import orjson
import pytest

from persona import Persona, Settings
from persona.identity import person_of
from persona.ingest import ingest_file
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.ingest.quarantine import describe
from persona.population import indexed
from persona.projections import FEATURES
from persona.projector import Projector
from tests.conftest import NOW

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "people"
FILES = (("shop", "shop_orders.csv"), ("social", "social.jsonl"), ("web", "web_clicks.csv"), ("app", "app_usage.csv"))
TRUTH: dict[str, Any] = orjson.loads((FIXTURE / "truth.json").read_bytes())


def ingest_all(persona: Persona, order: tuple[tuple[str, str], ...] = FILES) -> dict[str, Any]:
    reports = {}
    for source, name in order:
        with (FIXTURE / name).open("rb") as handle:
            reports[name] = ingest_file(persona, mapped_records(builtin_mapping(source), handle, name=name),
                                        origin=name, now=NOW)
    return reports


def resolved(persona: Persona) -> dict[tuple[str, str], str | None]:
    """Each planted identifier -> the person it resolved to (None: no profile holds it)."""
    out: dict[tuple[str, str], str | None] = {}
    for person in TRUTH["people"]:
        for namespace, value in person["identifiers"]:
            pid = persona.log.profile_for(namespace, value)
            out[(namespace, value)] = None if pid is None else person_of(persona.recorder, pid).id
    return out


def pairwise(predicted: dict[tuple[str, str], str | None]) -> tuple[float, float]:
    """Precision and recall over pairs of identifiers: "the same person" as resolved vs as planted."""
    truth = {tuple(i): p["person"] for p in TRUTH["people"] for i in p["identifiers"]}
    tp = fp = fn = 0
    for a, b in combinations(sorted(truth), 2):
        same = truth[a] == truth[b]
        said = predicted[a] is not None and predicted[a] == predicted[b]
        tp += same and said
        fp += said and not same
        fn += same and not said
    return tp / ((tp + fp) or 1), tp / ((tp + fn) or 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings.load(tmp_path_factory.mktemp("people") / "data", env={})
    with Persona.init(settings) as persona:
        reports = ingest_all(persona)
        yield persona, reports


def test_identity_resolution_precision_and_recall_on_the_planted_truth(world: Any) -> None:
    persona, reports = world
    predicted = resolved(persona)
    assert all(pid is not None for pid in predicted.values()), "a planted identifier has no profile"
    precision, recall = pairwise(predicted)
    print(f"identity resolution on {len(TRUTH['people'])} people, {len(predicted)} identifiers: "
          f"precision {precision:.4f}, recall {recall:.4f}")
    assert precision >= 0.99 and recall >= 0.99
    assert sum(r.merges for r in reports.values()) > 0  # the fixture makes the resolver merge profiles
    # one person in the index per planted person who left any valid record
    assert len(list(indexed(persona, as_of=NOW))) == len(set(predicted.values())) == len(TRUTH["people"])


def test_every_bad_row_is_quarantined_with_a_reason_and_nothing_else(world: Any) -> None:
    persona, reports = world
    held = Counter((r["origin"], r["line"]) for r in describe(persona))
    planted = Counter((name, line) for name, lines in TRUTH["bad_rows"].items() for line in lines)
    assert held == planted
    assert all(r["reason"] and ":" in r["reason"] for r in describe(persona))
    for name, expected in TRUTH["expected_ingest"].items():
        report = reports[name]
        assert (report.quarantined, report.duplicates) == (expected["quarantined"], expected["duplicates"]), name


def test_each_persons_orders_and_spend_are_counted_once(world: Any) -> None:
    persona, _ = world
    projector = Projector(persona)
    for person in TRUTH["people"]:
        pid = persona.log.profile_for(*person["identifiers"][0])
        assert pid is not None
        features = FEATURES.view(projector.current(pid).states[FEATURES.name], NOW)
        spend = sum((Decimal(v) for v in person["spend"].values()), Decimal(0))
        assert (features["frequency"], Decimal(str(features["monetary"]))) == (person["orders"], spend), \
            person["person"]


def test_re_ingesting_changes_nothing(world: Any) -> None:
    persona, _ = world
    before = persona.recorder.counts()
    again = ingest_all(persona)
    assert all((r.appended, r.merges) == (0, 0) for r in again.values())
    assert persona.recorder.counts() == before


def test_the_order_files_arrive_in_does_not_change_who_is_who(world: Any, tmp_path: Path) -> None:
    persona, _ = world
    settings = Settings.load(tmp_path / "reversed", env={})
    with Persona.init(settings) as other:
        ingest_all(other, tuple(reversed(FILES)))
        theirs = resolved(other)
    ours = resolved(persona)
    groups = lambda found: {frozenset(k for k in found if found[k] == v) for v in found.values()}  # noqa: E731
    assert groups(theirs) == groups(ours)


def test_a_larger_generated_population_resolves_too(tmp_path: Path) -> None:
    """400 freshly generated people (another seed): the fixture is not a lucky draw."""
    from persona.testing.exports import main as generate

    out = tmp_path / "gen"
    generate(["--people", "400", "--seed", "11", "--end", NOW.date().isoformat(), "--out", str(out)])
    truth = orjson.loads((out / "truth.json").read_bytes())
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as persona:
        for source, name in FILES:
            with (out / name).open("rb") as handle:
                ingest_file(persona, mapped_records(builtin_mapping(source), handle, name=name), origin=name,
                            now=NOW)
        where = {tuple(i): p["person"] for p in truth["people"] for i in p["identifiers"]}
        found: dict[Any, Any] = {}
        for key in where:
            pid = persona.log.profile_for(*key)
            found[key] = None if pid is None else person_of(persona.recorder, pid).id
        assert all(v is not None for v in found.values())
        truth_groups = {frozenset(k for k in where if where[k] == p) for p in where.values()}
        found_groups = {frozenset(k for k in found if found[k] == v) for v in found.values()}
        assert truth_groups == found_groups  # every person whole, no two people joined
        held = Counter((r["origin"], r["line"]) for r in describe(persona))
        assert held == Counter((n, line) for n, lines in truth["bad_rows"].items() for line in lines)
