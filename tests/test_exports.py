"""The synthetic dataset generator (persona.testing.exports): deterministic, and its truth.json true to its files."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from persona import Persona
from persona.ingest import ingest_file
from persona.ingest.clean import parse_amount
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.ingest.quarantine import describe
from persona.population import indexed
from persona.pseudonyms import normalise
from persona.rfm import compute_rfm
from persona.testing.exports import APP, BAD_KINDS, FILES, SHOP, SOCIAL, WEB, main

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "people"
SOURCES = {SHOP: "shop", SOCIAL: "social", WEB: "web", APP: "app"}
Identifier = tuple[str, str]


def generate(out: Path, people: int, seed: int, *more: str) -> Path:
    assert main(["--people", str(people), "--seed", str(seed), "--out", str(out), *more]) == 0
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), 45, 3)


def truth_of(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((directory / "truth.json").read_text(encoding="utf-8"))
    return doc


def rows(directory: Path, name: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number as the ingest counts it, the record; None for a line that is not JSON)."""
    lines = (directory / name).read_text(encoding="utf-8").splitlines()
    if name.endswith(".jsonl"):
        for number, line in enumerate(lines, start=1):
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, None
        return
    header, *body = list(csv.reader(lines))
    for number, values in enumerate(body, start=2):  # the header is line 1
        yield number, dict(zip(header, values, strict=True))


def valid_rows(directory: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    bad = set(truth_of(directory)["bad_rows"][name])
    for number, row in rows(directory, name):
        if number not in bad:
            assert row is not None
            yield number, row


def identifiers_of(name: str, row: dict[str, Any]) -> list[Identifier]:
    """The identifiers one record carries together, as the built-in mappings name them."""
    named = {SHOP: (("shop_user", "user_id"), ("email", "email"), ("phone", "phone")),
             SOCIAL: (("social_user", "handle"), ("email", "email")),
             WEB: (("cookie", "cookie_id"), ("shop_user", "user_id")),
             APP: (("device", "device_id"), ("shop_user", "user_id"))}[name]
    return [(ns, normalise(ns, str(row[column]))) for ns, column in named if str(row.get(column) or "").strip()]


def test_the_same_arguments_write_the_same_bytes(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", 30, 5, "--orders-per-person", "2.5", "--end", "2026-01-01")
    two = generate(tmp_path / "two", 30, 5, "--orders-per-person", "2.5", "--end", "2026-01-01")
    for name in (*FILES, "truth.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    other = generate(tmp_path / "other", 30, 6, "--orders-per-person", "2.5", "--end", "2026-01-01")
    for name in (*FILES, "truth.json"):
        assert (one / name).read_bytes() != (other / name).read_bytes(), name


def test_the_committed_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    # scripts/generate --people 60 --seed 7 --start 2024-01-01 --days 365 --out fixtures/people: a committed
    # file cannot move with the clock, so its dates are fixed
    fresh = generate(tmp_path, 60, 7, "--start", "2024-01-01", "--days", "365")
    for name in (*FILES, "truth.json"):
        assert (SAMPLE / name).read_bytes() == (fresh / name).read_bytes(), f"regenerate fixtures/people: {name}"


def test_the_summary_counts_and_names_no_identifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path, 20, 1)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "20 people" in printed
    assert "@" not in printed and "u-" not in printed and "ck-" not in printed


def test_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--people", "--out", "--seed", "--end", "--start", "--days", "--orders-per-person",
                   "--scale-events"):
        assert option in text


def order_times(directory: Path) -> list[datetime]:
    """When each valid order of the sample happened (the shop's exact time formats only)."""
    out = []
    for _, row in valid_rows(directory, SHOP):
        written = row["created_at"]
        if written.endswith("Z") or written[10:11] == "T":
            out.append(datetime.fromisoformat(written.replace("Z", "+00:00")))
    return out


def test_the_activity_ends_before_today_unless_told_otherwise(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    recent = generate(tmp_path / "recent", 40, 2)
    assert truth_of(recent)["arguments"]["start"] == (today - timedelta(days=730)).isoformat()
    times = order_times(recent)
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    assert times and max(times) < midnight and min(times) >= midnight - timedelta(days=730)
    assert max(times) > midnight - timedelta(days=60)  # people still buying: the data looks current

    fixed = generate(tmp_path / "fixed", 40, 2, "--end", "2025-07-01", "--days", "100")
    assert truth_of(fixed)["arguments"]["start"] == "2025-03-23"
    assert max(order_times(fixed)) < datetime(2025, 7, 1, tzinfo=UTC)
    same = generate(tmp_path / "same", 40, 2, "--start", "2025-03-23", "--days", "100")
    for name in (*FILES, "truth.json"):  # --end counts back to the --start it names
        assert (fixed / name).read_bytes() == (same / name).read_bytes(), name
    with pytest.raises(SystemExit) as refused:
        main(["--people", "3", "--out", str(tmp_path / "x"), "--start", "2025-01-01", "--end", "2025-02-01"])
    assert refused.value.code == 2


def test_generated_people_are_a_realistic_mix_of_lifecycle_stages(tmp_path: Path, persona: Persona) -> None:
    """Ingested the day they are generated, the people are new, active, at risk and churned, no
    stage most of them; and no RFM segment contradicts the stage (docs/projections.md)."""
    out = generate(tmp_path / "gen", 300, 4)
    for name in FILES:
        with (out / name).open("rb") as handle:
            ingest_file(persona, mapped_records(builtin_mapping(SOURCES[name]), handle, name=name), origin=name)
    compute_rfm(persona)
    profiles = list(indexed(persona))
    stages = Counter(p.features["lifecycle_stage"] for p in profiles)
    assert set(stages) == {"new", "active", "at_risk", "churned"}, stages
    assert all(count <= 0.6 * len(profiles) for count in stages.values()), stages
    assert stages["new"] >= 0.02 * len(profiles) and stages["churned"] >= 0.05 * len(profiles), stages
    labels = [set(p.segments) for p in profiles]
    assert sum("rfm:champions" in s for s in labels) >= 10
    assert not any({"stage:churned", "rfm:champions"} <= s for s in labels)
    lapsed = [p for p in profiles if p.features["lifecycle_stage"] == "churned" and p.rfm is not None]
    assert lapsed and {s for p in lapsed for s in p.segments if s.startswith("rfm:")} <= {"rfm:at_risk",
                                                                                          "rfm:hibernating"}


def test_counts_add_up(sample: Path) -> None:
    truth = truth_of(sample)
    people = truth["people"]
    for name in FILES:
        stats = truth["files"][name]
        lines = (sample / name).read_text(encoding="utf-8").splitlines()
        assert stats["lines"] == len(lines) - (not name.endswith(".jsonl"))
        assert stats["records"] == stats["valid"] + stats["duplicates"] + stats["bad"]
        assert stats["bad"] == len(truth["bad_rows"][name]) == truth["expected_ingest"][name]["quarantined"]
        assert stats["duplicates"] == sum(truth["duplicates"][name].values())
        assert stats["late"] == truth["late"].get(name, 0)
    for name in (SOCIAL, WEB, APP):  # one record a line: the lines not bad, less the repeats, are the valid ones
        kept = [json.dumps(row, sort_keys=True) for _, row in valid_rows(sample, name)]
        assert len(kept) - len(set(kept)) == truth["duplicates"][name]["exact"]
        assert len(set(kept)) == truth["files"][name]["valid"]
        assert sum(p["records"].get(SOURCES[name], 0) for p in people) == truth["files"][name]["valid"]
    orders = [(row["order_id"], row["created_at"]) for _, row in valid_rows(sample, SHOP)]
    groups = [key for n, key in enumerate(orders) if n == 0 or key[0] != orders[n - 1][0]]
    assert len(groups) + len(truth["bad_rows"][SHOP]) == truth["files"][SHOP]["records"]
    copies = Counter(groups)  # (order id, created_at): an order re-exported as it was
    ids = Counter(order_id for order_id, _ in groups)  # ...or with its time written another way
    assert len(groups) - len(copies) == truth["duplicates"][SHOP]["exact"]
    assert len(copies) - len(ids) == truth["duplicates"][SHOP]["reformatted"]
    assert len(ids) == truth["files"][SHOP]["valid"] == sum(p["orders"] for p in people)


def test_every_kind_of_mess_is_in_the_committed_sample() -> None:
    truth = truth_of(SAMPLE)
    for name in FILES:
        assert set(truth["bad_row_kinds"][name].values()) == set(BAD_KINDS[name]), name
        assert all(truth["duplicates"][name].values()), name
    assert truth["late"][WEB] and truth["late"][APP]
    assert Counter(len(p["channels"]) for p in truth["people"]).most_common(1)[0][0] > 1


def test_each_bad_row_is_at_its_line_and_bad_in_its_way(sample: Path) -> None:
    truth = truth_of(sample)
    for name in FILES:
        kinds = truth["bad_row_kinds"][name]
        found = {str(number): row for number, row in rows(sample, name) if str(number) in kinds}
        assert found.keys() == kinds.keys()
        for number, kind in kinds.items():
            row = found[number]
            if kind == "not_json":
                assert row is None
                continue
            assert row is not None
            assert bad_in_its_way(kind, row), (name, number, kind)


def bad_in_its_way(kind: str, row: dict[str, Any]) -> bool:
    when = str(row.get("created_at") or row.get("at") or row.get("start") or "")
    if kind == "negative_total":
        return str(row["total"]).startswith("-")
    if kind == "bad_date":
        return when == "not a date"
    if kind == "future":
        return when.startswith("2099") or int(row.get("ts") or 0) >= 4_070_908_800_000  # 2099-01-01
    if kind == "no_identifier":
        return not (row["user_id"] + row["email"] + row["phone"]).strip()
    if kind == "currency_conflict":
        return str(row["total"]).startswith("€") and row["currency"] == "CNY"
    if kind == "empty_url":
        return bool(row["url"] == "")
    if kind == "end_before_start":
        return bool(row["end"] < row["start"])
    return kind == "unknown_action" and bool(row["action"] == "wave")


def test_the_truth_is_recoverable_from_the_valid_records(sample: Path) -> None:
    """Joining the identifiers that each valid record carries together gives exactly the people."""
    parent: dict[Identifier, Identifier] = {}

    def root(x: Identifier) -> Identifier:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name in FILES:
        for _, row in valid_rows(sample, name):
            found = identifiers_of(name, row)
            assert found, (name, row)
            root(found[0])
            for other in found[1:]:
                parent[root(other)] = root(found[0])
    groups: dict[Identifier, set[Identifier]] = {}
    for x in list(parent):
        groups.setdefault(root(x), set()).add(x)
    people = {frozenset((ns, value) for ns, value in p["identifiers"]) for p in truth_of(sample)["people"]}
    assert {frozenset(g) for g in groups.values()} == people
    assert sum(len(p) for p in people) == len(parent)  # no identifier is anyone else's


def test_orders_and_spend_are_the_valid_distinct_orders(sample: Path) -> None:
    truth = truth_of(sample)
    owner = {(ns, value): p["person"] for p in truth["people"] for ns, value in p["identifiers"]}
    orders: Counter[str] = Counter()
    spend: dict[str, dict[str, Decimal]] = {}
    seen = set()
    for _, row in valid_rows(sample, SHOP):
        if row["order_id"] in seen:
            continue  # the next rows of the order, or the order again
        seen.add(row["order_id"])
        person = owner[identifiers_of(SHOP, row)[0]]
        parsed = parse_amount(row["total"], field="total")
        assert parsed is not None
        amount, mark = parsed
        currency = mark or row["currency"] or "CNY"
        orders[person] += 1
        sums = spend.setdefault(person, {})
        sums[currency] = sums.get(currency, Decimal(0)) + amount
    for p in truth["people"]:
        assert p["orders"] == orders[p["person"]]
        want = {c: Decimal(v) for c, v in p["spend"].items()}
        assert want == dict(spend.get(p["person"], {})), p["person"]
        assert ("shop" in p["channels"]) == bool(p["orders"])


def test_the_web_and_app_files_end_with_their_late_records(sample: Path) -> None:
    truth = truth_of(sample)
    for name, column in ((WEB, "ts"), (APP, "start")):
        times = [int(row[column]) if name == WEB else row[column] for _, row in valid_rows(sample, name)]
        late = truth["late"][name]
        on_time = times[: len(times) - late]
        assert on_time == sorted(on_time)
        assert late and all(t < on_time[-1] for t in times[len(times) - late:])


def test_ingest_quarantines_exactly_the_bad_rows_and_drops_the_duplicates(persona: Persona) -> None:
    truth = truth_of(SAMPLE)
    for name in FILES:
        with (SAMPLE / name).open("rb") as handle:
            records = mapped_records(builtin_mapping(SOURCES[name]), handle, name=name)
            report = ingest_file(persona, records, origin=name)
        expected = truth["expected_ingest"][name]
        assert (report.duplicates, report.quarantined) == (expected["duplicates"], expected["quarantined"]), name
        assert report.appended >= expected["events"]  # identity resolution may add its own (merges)
    listed = {(row["origin"], row["line"]) for row in describe(persona)}
    assert listed == {(name, line) for name, lines in truth["bad_rows"].items() for line in lines}
    for p in truth["people"]:
        for namespace, value in p["identifiers"]:
            assert persona.log.profile_for(namespace, value) is not None
