"""Recommendations: the shoppers' generator, interactions point in time (merges, consent), the
models and their held-out metrics, the sealed registry, serving one person (purchases left out at
once, reasons of their own), erasure, and the CLI.

One module-scoped store holds shoppers with latent tastes (persona.testing.tastes), ingested
through the real pipeline, with a recommender trained and promoted on it.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from persona import Persona, Settings
from persona.cli import cli
from persona.erasure import erase_profile
from persona.errors import PersonaError, TamperError, ValidationError
from persona.ingest import ingest_jsonl
from persona.models import registry, scoring
from persona.recommend import NAME, interactions, serve, train
from persona.recommend.models import Blend, Factors
from persona.testing import tastes

PEOPLE = 1500


@dataclass
class Shop:
    settings: Settings
    trained: train.Trained
    version: registry.ModelVersion
    truth: dict[str, Any]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    root = tmp_path_factory.mktemp("shop")
    events = root / "shoppers.jsonl"
    summary = tastes.write(events, PEOPLE, seed=5, days=240)
    settings = Settings.load(root / "data", env={})
    with Persona.init(settings) as p:
        report = ingest_jsonl(p, events.read_bytes().splitlines(), origin="shoppers")
        assert report.appended == summary["events"] and report.quarantined == 0
        trained = train.train(p)
        version = serve.save(p, trained)
    return Shop(settings, trained, version, summary)


def _event(n: int, kind: str, at: str, subject: dict[str, str], data: dict[str, Any]) -> bytes:
    source = {"order_placed": "shop", "review_posted": "shop", "consent_changed": "crm"}.get(kind, "web")
    return orjson.dumps({"event_id": f"e{n}", "source": source, "type": kind, "occurred_at": at,
                         "subject": subject, "data": data})


def _view(n: int, at: str, subject: dict[str, str], sku: str, category: str = "books") -> bytes:
    return _event(n, "product_viewed", at, subject, {"sku": sku, "category": category, "session_id": f"s{n}"})


ALICE = {"namespace": "shop_user", "value": "alice"}


# -- the generator -------------------------------------------------------------------------------
def test_shoppers_follow_their_own_tastes_and_a_seed_draws_the_same_log(tmp_path: Path) -> None:
    first, again = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    summary = tastes.write(first, 300, seed=2, days=200)
    tastes.write(again, 300, seed=2, days=200)
    assert first.read_bytes() == again.read_bytes()
    favourites = {t["subject"]: set(t["categories"]) for t in summary["truth"]}
    kinds, inside, views = set(), 0, 0
    for line in first.read_bytes().splitlines():
        e = orjson.loads(line)
        kinds.add(e["type"])
        if e["type"] == "product_viewed":
            views += 1
            inside += e["data"]["category"] in favourites[e["subject"]["value"]]
    assert {"product_viewed", "cart_updated", "order_placed", "review_posted", "consent_changed"} <= kinds
    assert inside / views > 0.6  # two of eight categories: a quarter of views, were tastes not planted


# -- metrics ------------------------------------------------------------------------------------
def test_ranking_metrics_by_hand() -> None:
    ranked = np.array([[3, 1, 7, -1], [5, 6, 2, 0]])
    targets = [np.array([1, 9], dtype=np.int32), np.array([0], dtype=np.int32)]
    engaged = np.array([0.5, 0.5, 0.25, 0.5, 0.0, 0.125, 0.25, 1.0, 0.0, 0.5])
    found = train.metrics(ranked, targets, np.array([0, 1]), engaged, k=4)
    d = 1 / np.log2(np.arange(2, 6))
    assert found["recall@4"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert found["ndcg@4"] == pytest.approx((d[1] / (d[0] + d[1]) + d[3] / d[0]) / 2)
    assert found["map@4"] == pytest.approx(((1 / 2) / 2 + (1 / 4) / 1) / 2)
    shown = [3, 1, 7, 5, 6, 2, 0]
    assert found["coverage"] == pytest.approx(len(shown) / 8)  # 8 items anyone engaged with
    assert found["novelty"] == pytest.approx(np.mean(-np.log2(engaged[shown])))


# -- point in time --------------------------------------------------------------------------------
def test_an_interaction_after_the_cutoff_never_moves_the_matrix_and_becomes_the_target(persona: Persona) -> None:
    cutoff = datetime(2025, 3, 1, tzinfo=UTC)
    ingest_jsonl(persona, [_view(1, "2025-02-01T00:00:00Z", ALICE, "books-1"),
                           _event(2, "order_placed", "2025-02-02T00:00:00Z", ALICE,
                                  {"order_id": "o1", "amount": "10.00", "currency": "CNY",
                                   "items": [{"sku": "books-2", "category": "books"}]})], origin="test")
    before = interactions.read(persona).matrix(cutoff)
    ingest_jsonl(persona, [_view(3, "2025-03-01T00:00:00.000001Z", ALICE, "books-3"),
                           _view(4, "2025-03-01T00:00:00.000001Z", ALICE, "books-2")], origin="test")
    log = interactions.read(persona)
    after = log.matrix(cutoff)
    assert (before.affinity != after.affinity[:, :before.affinity.shape[1]]).nnz == 0
    assert after.affinity[:, log.items.index("books-3")].nnz == 0
    targets = log.targets(cutoff, cutoff + timedelta(days=28), after)
    assert [log.items[i] for i in targets[0]] == ["books-3"]  # books-2 was bought before: never a target
    ingest_jsonl(persona, [_view(5, "2025-03-01T00:00:00Z", ALICE, "books-4")], origin="test")
    log = interactions.read(persona)
    assert log.matrix(cutoff).affinity[0, log.items.index("books-4")] == pytest.approx(1.0)  # at it: counts
    # decay: a view a half-life before counts half; an order five views
    half = cutoff + timedelta(days=interactions.Weights().half_life_days)
    m = log.matrix(half)
    assert m.affinity[0, log.items.index("books-4")] == pytest.approx(0.5)
    assert m.strongest[0, log.items.index("books-2")] - 1 == interactions.ORDER


def test_a_merge_counts_from_when_its_link_happened(persona: Persona) -> None:
    cookie = {"namespace": "cookie", "value": "ck-1"}
    ingest_jsonl(persona, [_view(1, "2025-01-10T00:00:00Z", ALICE, "books-1"),
                           _view(2, "2025-02-01T00:00:00Z", cookie, "toys-1", "toys"),
                           _event(3, "identity_linked", "2025-04-01T00:00:00Z", cookie, {"other": ALICE})],
                 origin="test")
    log = interactions.read(persona)
    then = log.matrix(datetime(2025, 3, 1, tzinfo=UTC))
    now = log.matrix(datetime(2025, 5, 1, tzinfo=UTC))
    assert then.affinity.shape[0] == 2 and int(then.active.sum()) == 2  # two people before the link
    assert int(now.active.sum()) == 1 and now.affinity[int(np.flatnonzero(now.active)[0])].nnz == 2


def test_interest_under_withdrawn_consent_does_not_count(persona: Persona) -> None:
    ingest_jsonl(persona, [_view(1, "2025-01-10T00:00:00Z", ALICE, "books-1"),
                           _event(2, "consent_changed", "2025-02-01T00:00:00Z", ALICE,
                                  {"purpose": "personalization", "granted": False}),
                           _view(3, "2025-02-10T00:00:00Z", ALICE, "books-2"),
                           _event(4, "consent_changed", "2025-03-01T00:00:00Z", ALICE,
                                  {"purpose": "personalization", "granted": True}),
                           _view(5, "2025-03-10T00:00:00Z", ALICE, "books-3")], origin="test")
    log = interactions.read(persona)
    counted = log.matrix(datetime(2025, 4, 1, tzinfo=UTC))
    assert {log.items[i] for i in counted.affinity[0].indices} == {"books-1", "books-3"}
    assert not counted.withdrawn[0]
    assert log.matrix(datetime(2025, 2, 15, tzinfo=UTC)).withdrawn[0]
    targets = log.targets(datetime(2025, 2, 5, tzinfo=UTC), datetime(2025, 3, 5, tzinfo=UTC),
                          log.matrix(datetime(2025, 2, 5, tzinfo=UTC)))
    assert len(targets[0]) == 0  # what they did while withdrawn is no one's answer either


# -- models and their evaluation ----------------------------------------------------------------
def test_the_chosen_model_beats_popularity_on_held_out_windows(shop: Shop) -> None:
    t = shop.trained
    assert t.chosen["candidate"] not in train.BASELINES
    assert set(t.baselines) == set(train.BASELINES)
    for base in t.baselines.values():
        assert base["rows"] == t.metrics["rows"] > 100  # the same people
        assert t.metrics["ndcg@10"] > 1.5 * base["ndcg@10"] and t.metrics["recall@10"] > 1.5 * base["recall@10"]
    assert t.cutoffs[0] < t.cutoffs[1] < t.cutoffs[2]
    assert shop.version.status == "promoted" and shop.version.meta["lift"]["improvement"] > 0.5
    assert t.seconds > 0 and len(t.people) > PEOPLE * 0.9


def test_training_is_reproducible(shop: Shop) -> None:
    with Persona.open(shop.settings) as p:
        again = train.train(p)
    assert again.metrics == shop.trained.metrics and again.validation == shop.trained.validation


def test_the_user_step_is_als_least_squares() -> None:
    """A person's factors are solved from their own row exactly as ALS's user step (implicit's
    reference implementation), so scoring a new person needs no retraining."""
    from implicit.cpu.als import user_factor

    rng = np.random.default_rng(0)
    affinity = sp.random(200, 60, density=0.08, format="csr", random_state=1) * 3
    model = Factors([f"i{n}" for n in range(60)], ["c"] * 60, affinity, np.zeros(200, dtype=np.int64), factors=8)
    y = model.item_factors
    mine = model.user_factors(affinity)
    cui = (model.alpha * affinity).tocsr()
    for u in rng.choice(200, 20, replace=False):
        expected = user_factor(y, y.T @ y, cui, u, model.regularization, y.shape[1]) if cui[u].nnz else 0
        assert np.allclose(mine[u], expected)


def test_fitting_als_leaves_no_thread_behind() -> None:
    """A process with a thread more no longer forks an ingest's reader (tqdm's monitor outlived
    implicit's hidden progress bar and made later ingests in the process read in-process)."""
    before = set(threading.enumerate())
    affinity = sp.random(60, 40, density=0.2, format="csr", random_state=1)
    Factors([f"i{n}" for n in range(40)], ["books"] * 40, affinity, np.zeros(60, dtype=np.int64), iterations=2)
    assert set(threading.enumerate()) <= before


def test_the_blend_learns_its_weights_out_of_the_windows_it_is_judged_on(shop: Shop) -> None:
    """The blend's weights: one for each feature, learnt where its docstring says, and reproducible;
    a blend without weights refuses to score."""
    t = shop.trained
    assert "blend" in t.validation
    with Persona.open(shop.settings) as p:
        log = interactions.read(p)
    at, until = t.cutoffs[1], t.cutoffs[2]
    m = log.matrix(at)
    targets = log.targets(at, until, m)
    blend = train.candidates()[-1].make(m, log)
    assert isinstance(blend, Blend)
    with pytest.raises(ValueError, match="not learnt"):
        blend.scores(m.affinity[:1])
    learners = train._learners(m, targets)
    first = blend.learn(m.affinity, m.bought, targets, learners, seed=0)
    assert first.shape == (len(Blend.FEATURES),) and np.isfinite(first).all()
    assert np.array_equal(first, blend.learn(m.affinity, m.bought, targets, learners, seed=0))
    # what a person engaged with before weighs for their next items
    named = dict(zip(Blend.FEATURES, first, strict=True))
    assert named["seen"] > 0
    if t.chosen["candidate"] == "blend":  # served: with the weights learnt on the last window
        assert t.chosen["params"]["weights"] == dict(zip(Blend.FEATURES, np.round(first, 4).tolist(), strict=True))


# -- the registry ---------------------------------------------------------------------------------
def _set(settings: Settings, sql: str, *args: Any) -> None:
    with sqlite3.connect(settings.db_path) as db:
        db.execute(sql, args)


def test_the_model_is_sealed_with_skops_and_a_tampered_one_is_refused(shop: Shop) -> None:
    with Persona.open(shop.settings) as p:
        loaded = registry.load(p, NAME)
        assert list(loaded.pipeline.items) == list(shop.trained.model.items)
        spare = serve.save(p, shop.trained, promote=False)
        assert spare.status == "candidate"
        blob = p.recorder.model_blob(NAME, spare.version)
        assert blob is not None and b"books-" not in blob[1]  # sealed: not even the catalogue shows
        sealed = bytearray(blob[1])
        sealed[len(sealed) // 2] ^= 1
        _set(shop.settings, "UPDATE models SET blob = ? WHERE name = ? AND version = ?", bytes(sealed), NAME,
             spare.version)
        with pytest.raises(TamperError):
            registry.load(p, NAME, spare.version)


# -- serving --------------------------------------------------------------------------------------
def _someone(shop: Shop, p: Persona) -> str:
    for t in shop.truth["truth"]:
        pid = p.log.profile_for("shop_user", t["subject"])
        found = serve.recommend(p, pid)
        if found.basis == "personal" and len(found.items) == 10:
            return pid
    raise AssertionError("nobody with a personal list")


def test_a_purchase_leaves_the_list_at_once_and_reasons_are_the_persons_own(shop: Shop) -> None:
    with Persona.open(shop.settings) as p:
        pid = _someone(shop, p)
        found = serve.recommend(p, pid)
        own = {i for e in p.log.read(pid) for i in _skus(e)}
        assert all(r.sku in own for item in found.items for r in item.reasons)
        assert any(item.reasons for item in found.items) and all(item.because for item in found.items)
        scores = [item.score for item in found.items]
        assert scores == sorted(scores, reverse=True)
        best = found.items[0]
        subject = {"namespace": "shop_user", "value": _subject(shop, p, pid)}
        ingest_jsonl(p, [_event(90_001, "order_placed", datetime.now(UTC).isoformat(), subject,
                                {"order_id": "fresh", "amount": "9.00", "currency": "CNY",
                                 "items": [{"sku": best.sku, "category": best.category}]})], origin="test")
        after = serve.recommend(p, pid)
        assert best.sku not in [i.sku for i in after.items]
        assert best.sku in [i.sku for i in serve.recommend(p, pid, exclude_purchased=False, first=100).items]


def _skus(event: Any) -> list[str]:
    return [sku for _, sku, _, _ in interactions.interactions(event)]


def _subject(shop: Shop, p: Persona, pid: str) -> str:
    return next(t["subject"] for t in shop.truth["truth"] if p.log.profile_for("shop_user", t["subject"]) == pid)


def test_first_and_category_are_checked(shop: Shop) -> None:
    with Persona.open(shop.settings) as p:
        pid = _someone(shop, p)
        for bad in (0, -1, 101, 10**9):
            with pytest.raises(ValidationError):
                serve.recommend(p, pid, first=bad)
        books = serve.recommend(p, pid, category="books", first=20)
        assert books.items and {i.category for i in books.items} == {"books"}
        assert serve.recommend(p, pid, category="no such category").items == []
        with pytest.raises(PersonaError):
            serve.recommend(p, "prf_nosuchprofile00000000000")


def test_no_personal_list_without_consent_nor_history(shop: Shop, persona: Persona) -> None:
    with Persona.open(shop.settings) as p:
        loaded = registry.load(p, NAME)
    ingest_jsonl(persona, [_view(1, "2025-01-10T00:00:00Z", ALICE, "books-001"),
                           _event(2, "consent_changed", "2025-02-01T00:00:00Z", ALICE,
                                  {"purpose": "personalization", "granted": False}),
                           _view(3, "2025-01-10T00:00:00Z", {"namespace": "shop_user", "value": "bob"}, "toys-001",
                                 "toys"),
                           _event(4, "profile_updated", "2025-01-10T00:00:00Z",
                                  {"namespace": "shop_user", "value": "carol"}, {"country": "CN"})], origin="test")
    popular = [str(s) for s in loaded.pipeline.items[np.argsort(-loaded.pipeline.popularity, kind="stable")[:10]]]
    alice = serve.recommend(persona, persona.log.profile_for(*ALICE.values()), loaded=loaded)
    assert alice.basis == "popular: no consent" and [i.sku for i in alice.items] == popular
    assert all(not i.reasons for i in alice.items) and "no personalization consent" in alice.items[0].because
    carol = serve.recommend(persona, persona.log.profile_for("shop_user", "carol"), loaded=loaded)
    assert carol.basis == "popular: no history" and [i.sku for i in carol.items] == popular
    bob = serve.recommend(persona, persona.log.profile_for("shop_user", "bob"), loaded=loaded)
    assert bob.basis == "personal" and any(i.reasons for i in bob.items)
    assert {r.sku for i in bob.items for r in i.reasons} == {"toys-001"}


def test_cold_start_is_the_segment_of_the_category_a_person_browses_unless_consent_is_withdrawn(
        shop: Shop, persona: Persona) -> None:
    """No product interactions yet, only pages of a category: the items popular with people whose
    favourite category it is; the same person without personalization consent: popular overall."""
    with Persona.open(shop.settings) as p:
        loaded = registry.load(p, NAME)
    model = loaded.pipeline
    dave, erin = {"namespace": "shop_user", "value": "dave"}, {"namespace": "shop_user", "value": "erin"}

    def page(n: int, who: dict[str, str], category: str) -> bytes:
        return _event(n, "page_viewed", "2025-01-10T00:00:00Z", who, {"url": f"/c/{category}/{n}",
                                                                      "category": category})
    ingest_jsonl(persona, [page(1, dave, "toys"), page(2, dave, "toys"), page(3, dave, "books"),
                           page(4, erin, "toys"), _event(5, "consent_changed", "2025-02-01T00:00:00Z", erin,
                                                         {"purpose": "personalization", "granted": False})],
                 origin="test")
    toys = int(np.flatnonzero(model.category_names == "toys")[0])
    fans = [str(s) for s in model.items[np.argsort(-model.segment_popularity[toys], kind="stable")[:10]]]
    overall = [str(s) for s in model.items[np.argsort(-model.popularity, kind="stable")[:10]]]
    assert fans != overall
    found = serve.recommend(persona, persona.log.profile_for(*dave.values()), loaded=loaded)
    assert found.basis == "popular in segment: no history" and [i.sku for i in found.items] == fans
    assert all(not i.reasons and i.because == "popular with people who like toys" for i in found.items)
    withdrawn = serve.recommend(persona, persona.log.profile_for(*erin.values()), loaded=loaded)
    assert withdrawn.basis == "popular: no consent" and [i.sku for i in withdrawn.items] == overall
    # a category no one's favourite: its fans' list would be empty, so the next one browsed is taken,
    # and with none left, no segment is claimed
    model.segment_popularity[toys] = 0.0
    found = serve.recommend(persona, persona.log.profile_for(*dave.values()), loaded=loaded)
    assert found.basis == "popular in segment: no history" and found.items[0].because.endswith("like books")
    model.segment_popularity[model.category_names == "books"] = 0.0
    found = serve.recommend(persona, persona.log.profile_for(*dave.values()), loaded=loaded)
    assert found.basis == "popular: no history" and [i.sku for i in found.items] == overall
    assert all(i.because == "popular" for i in found.items)


def test_erasure_marks_the_recommender_stale_and_a_retrain_leaves_the_person_out(tmp_path: Path) -> None:
    events = tmp_path / "few.jsonl"
    tastes.write(events, 400, seed=8, days=200)
    with Persona.init(Settings.load(tmp_path / "data", env={})) as p:
        ingest_jsonl(p, events.read_bytes().splitlines(), origin="few")
        trained = train.train(p)
        serve.save(p, trained, promote=True)
        victim = trained.people[0]
        receipt = erase_profile(p, victim).receipt["receipt"]
        assert any(m.startswith(f"{NAME} v") for m in receipt["models_to_retrain"])
        assert registry.get(p, NAME).stale
        with pytest.raises(PersonaError):
            serve.recommend(p, victim)
        again = train.train(p)
        assert victim not in again.people and len(again.people) == len(trained.people) - 1
        assert "recommendations" not in scoring.promoted_names(p)  # scored apart from the tasks


# -- the command line ------------------------------------------------------------------------------
def test_cli_trains_and_recommends_without_writing_an_identifier_to_the_audit(tmp_path: Path) -> None:
    events = tmp_path / "few.jsonl"
    tastes.write(events, 400, seed=4, days=200)
    data = str(tmp_path / "data")
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", data, "init"]).exit_code == 0
    assert runner.invoke(cli, ["--data", data, "ingest", str(events)]).exit_code == 0
    trained = runner.invoke(cli, ["--data", data, "train", "recommendations"])
    assert trained.exit_code == 0, trained.output
    assert "recommendations v1 [promoted]" in trained.output and "ndcg@10" in trained.output
    shown = runner.invoke(cli, ["--data", data, "recommend", "--subject", "shop_user:t-000003"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "(recommendations v1)" in lines[0] and len(lines) == 11 and " — " in lines[1]
    as_json = runner.invoke(cli, ["--data", data, "recommend", "--subject", "shop_user:t-000003", "--json",
                                  "--first", "3"])
    doc = orjson.loads(as_json.output)
    assert len(doc["items"]) == 3 and doc["model"] == "recommendations v1" and "t-000003" not in as_json.output
    assert runner.invoke(cli, ["--data", data, "recommend", "--subject", "shop_user:t-000003", "--first",
                               "0"]).exit_code == 2
    unknown = runner.invoke(cli, ["--data", data, "recommend", "--subject", "shop_user:nobody"])
    assert unknown.exit_code != 0 and "nobody" not in unknown.output
    listed = orjson.loads(runner.invoke(cli, ["--data", data, "models", "--json"]).output)
    assert any(v["name"] == NAME for v in listed)
    refused = runner.invoke(cli, ["--data", data, "predict", NAME])
    assert refused.exit_code == 1 and "persona recommend" in refused.output and "Traceback" not in refused.output
    assert runner.invoke(cli, ["--data", data, "train", NAME, "--cutoff", "2024-05-01T00:00:00Z"]).exit_code == 2
    again = runner.invoke(cli, ["--data", data, "train", NAME, "--no-promote"])
    assert again.exit_code == 0 and "recommendations v2 [candidate]" in again.output
    promoted = runner.invoke(cli, ["--data", data, "models", "promote", NAME, "2"])
    assert promoted.exit_code == 0, promoted.output
    with Persona.open(Settings.load(Path(data), env={})) as p:
        pid = p.log.profile_for("shop_user", "t-000003")
        row = serve.stored(p, pid)
    assert row is not None and row["version"] == 2  # the read model follows the version served
    with Persona.open(Settings.load(Path(data), env={})) as p:
        rows = p.recorder.audit_latest(limit=20)
    said = repr(rows)
    assert "recommend" in said and "t-000003" not in said


# -- the read model ----------------------------------------------------------------------------------
def test_the_read_model_holds_each_list_drops_a_purchase_at_once_and_a_no_to_personalization(
        settings: Settings, tmp_path: Path) -> None:
    from persona.linking import link
    from persona.verify import verify

    events = tmp_path / "few.jsonl"
    summary = tastes.write(events, 400, seed=12, days=200)
    subjects = [t["subject"] for t in summary["truth"]]
    with Persona.init(settings) as p:
        ingest_jsonl(p, events.read_bytes().splitlines(), origin="few")
        serve.save(p, train.train(p), promote=True)
        # two of them found to be one person: one list, of the person, from both histories
        joined = link(p, ("shop_user", subjects[-1]), ("shop_user", subjects[-2]))
        written = serve.score_everyone(p)
        assert 0.8 * 399 < written <= 399
        streams = [p.log.profile_for("shop_user", s) for s in subjects[-2:]]
        assert joined.person in streams and [serve.stored(p, s) is not None for s in streams].count(True) == 1
        both = {sku for s in streams for e in p.log.read(s) for sku in _skus(e)}
        merged = serve.stored(p, joined.person)
        assert merged is not None and {r for item in merged["items"] for r, _ in item[3]} <= both
        pid = next(pid for pid in (p.log.profile_for("shop_user", s) for s in subjects)
                   if serve.stored(p, pid) is not None)
        row = serve.stored(p, pid)
        assert row is not None and row["basis"] == "personal" and len(row["items"]) == serve.KEEP
        live = serve.recommend(p, pid, first=serve.KEEP)
        assert [item[0] for item in row["items"]][:10] == [i.sku for i in live.items][:10]
        assert [[r.sku, r.interaction] for r in live.items[0].reasons] == row["items"][0][3]
        served = serve.from_read_model(row, 10)
        assert served is not None and served["because"][0] == live.items[0].because
        # a purchase: the item leaves the stored list in the commit that appends the order
        subject = {"namespace": "shop_user", "value": next(s for s in subjects if p.log.profile_for("shop_user", s)
                                                            == pid)}
        top_sku = row["items"][0][0]
        ingest_jsonl(p, [_event(70_001, "order_placed", datetime.now(UTC).isoformat(), subject,
                                {"order_id": "now", "amount": "5.00", "currency": "CNY",
                                 "items": [{"sku": top_sku, "category": row["items"][0][1]}]})], origin="shop")
        after = serve.stored(p, pid)
        assert after is not None and top_sku not in [i[0] for i in after["items"]]
        assert [i[0] for i in after["items"]] == [i[0] for i in row["items"][1:]]
        verify(p)  # the rewritten row carries its tag
        # someone else's list is left as it was
        other = next(q for q in (p.log.profile_for("shop_user", s) for s in subjects)
                     if q != pid and serve.stored(p, q) is not None)
        kept = serve.stored(p, other)
        # a no to personalization: the list goes at once
        ingest_jsonl(p, [_event(70_002, "consent_changed", datetime.now(UTC).isoformat(), subject,
                                {"purpose": "personalization", "granted": False})], origin="crm")
        assert serve.stored(p, pid) is None and serve.stored(p, other) == kept
        assert serve.recommend(p, pid).basis == "popular: no consent"
        # erased: the row goes with the person
        erase_profile(p, other)
        assert serve.stored(p, other) is None
        verify(p)


def test_api_recommendations_from_the_read_model_and_made_for_the_request(tmp_path: Path) -> None:
    """Through a real server: the scope, the stored list, a category, purchases included, bounds,
    no consent, another person's list, and an erased person."""
    import httpx

    from persona.tokens import create_token
    from tests.test_api_http import served

    events = tmp_path / "few.jsonl"
    summary = tastes.write(events, 300, seed=13, days=200)
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p:
        ingest_jsonl(p, events.read_bytes().splitlines(), origin="few")
        serve.save(p, train.train(p), promote=True)
        serve.score_everyone(p)
        subjects = [t["subject"] for t in summary["truth"]]
        ids = [pid for pid in (p.log.profile_for("shop_user", s) for s in subjects) if serve.stored(p, pid)]
        tokens = {"reader": create_token(p, "reader", frozenset({"predictions:read", "profiles:read"})),
                  "profiles": create_token(p, "profiles", frozenset({"profiles:read"})),
                  "trainer": create_token(p, "trainer", frozenset({"models:write", "predictions:read"}))}
        first, second = ids[0], ids[1]
        stored = serve.stored(p, first)
    assert stored is not None
    query = ("query($id: ID, $first: Int!, $context: RecommendationContext) { profile(id: $id) {"
             " recommendations(first: $first, context: $context) { basis model computedAt"
             " items { sku category score because reasons { sku interaction } } } } }")
    with served(settings, tmp_path, tokens, {}) as server, \
            httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
        def ask(pid: str, token: str = "reader", first: int = 10, context: dict[str, Any] | None = None
                ) -> dict[str, Any]:
            response = client.post("/graphql", json={"query": query, "variables": {
                "id": pid, "first": first, "context": context}}, headers={"Authorization": f"Bearer {tokens[token]}"})
            assert response.status_code in (200, 403), response.text
            assert "Traceback" not in response.text and "t-000" not in response.text
            doc: dict[str, Any] = response.json()
            return doc

        denied = ask(first, "profiles")
        assert "predictions:read" in denied["errors"][0]["message"]
        # trained through the API too: a second version, promoted, in the registry's listing
        trained = client.post("/graphql", json={"query": 'mutation { trainModel(name: "recommendations",'
                                                         ' horizon: "21d") { name version status task } }'},
                              headers={"Authorization": f"Bearer {tokens['trainer']}"}).json()
        assert trained["data"]["trainModel"] == {"name": NAME, "version": 2, "status": "promoted", "task": "ranking"}
        listed = client.post("/graphql", json={"query": "{ models { name version heldOut { name value } training {"
                                                        " horizonDays } } }"},
                             headers={"Authorization": f"Bearer {tokens['trainer']}"}).json()["data"]["models"]
        second_version = next(m for m in listed if m["version"] == 2)
        assert {m["name"] for m in listed} == {NAME} and second_version["training"]["horizonDays"] == 21
        assert "ndcg@10" in {f["name"] for f in second_version["heldOut"]}
        with Persona.open(settings) as p:
            stored = serve.stored(p, first)
        assert stored is not None and stored["version"] == 2
        found = ask(first)["data"]["profile"]["recommendations"]
        assert found["computedAt"] is not None and found["basis"] == "personal"  # from the read model
        assert [i["sku"] for i in found["items"]] == [i[0] for i in stored["items"][:10]]
        assert all(i["because"] for i in found["items"])
        mine = {i[0] for i in stored["items"]}
        theirs = ask(second)["data"]["profile"]["recommendations"]
        assert [i["sku"] for i in theirs["items"]] != [i["sku"] for i in found["items"]] or not mine
        category = found["items"][0]["category"]
        only = ask(first, context={"category": category})["data"]["profile"]["recommendations"]
        assert only["items"] and {i["category"] for i in only["items"]} == {category}
        everything = ask(first, context={"excludePurchased": False}, first=30)["data"]["profile"]["recommendations"]
        assert everything["computedAt"] is None and len(everything["items"]) == 30  # made for the request
        for bad in (0, -5, 101, 2**31 - 1):
            error = ask(first, first=bad)["errors"][0]
            assert "first" in error["message"] and "Traceback" not in error["message"]
        # the console's person page shows the list with its reasons
        signed = client.post("/console/sign-in", data={"token": tokens["reader"]}, headers={"Origin": server.url},
                             follow_redirects=False)
        assert signed.status_code == 303, signed.text
        page = client.get(f"/console/person/{first}").text
        assert "Recommendations" in page and found["items"][0]["sku"] in page, page[-1200:] + server.logs()[-3000:]
        assert found["items"][0]["because"].split(" and ")[0] in page.replace("&#39;", "'")
        with Persona.open(settings) as p:
            subject = next(s for s in subjects if p.log.profile_for("shop_user", s) == second)
            ingest_jsonl(p, [_event(80_001, "consent_changed", datetime.now(UTC).isoformat(),
                                    {"namespace": "shop_user", "value": subject},
                                    {"purpose": "personalization", "granted": False})], origin="crm")
        no = ask(second)["data"]["profile"]["recommendations"]
        assert no["basis"] == "popular: no consent" and all(not i["reasons"] for i in no["items"])
        with Persona.open(settings) as p:
            erase_profile(p, first)
        gone = ask(first)
        assert gone["data"]["profile"] is None or gone.get("errors")
