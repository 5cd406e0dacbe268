"""Population scans cost what they cost: priced by the population, admitted per token through a
bounded queue, run in processes of their own.

In-process servers (Starlette's TestClient), real SQLite files, real scan processes. Nothing
waits on a clock: a scan is held by taking the gate's only slot, and the tests wait for what
they can observe (a scan in the queue) before going on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from persona import Persona, Settings
from persona.api.app import create_app
from persona.api.context import ServerOptions
from persona.api.errors import ApiError
from persona.api.plan import PROFILES_PER_UNIT, SCAN_COST, Limits, about, plan, scan_cost
from persona.api.scans import ScanGate, ScanPool
from persona.api.schema import schema
from persona.ingest import ingest_jsonl
from persona.tokens import create_token, list_tokens
from tests.api_world import SAMPLE, Api, TestClient
from tests.scan_jobs import die, where_am_i

INSIGHTS = "{ insights { k } }"
PROFILE = "query($id: ID!) { profile(id: $id) { version } }"
EXACT = frozenset({"insights:read", "insights:exact", "profiles:read"})  # exact answers: the quickest scans
TOKENS = {"a": EXACT, "b": frozenset({"insights:read"}), "c": EXACT, "d": EXACT}


@dataclass
class Store:
    settings: Settings
    tokens: dict[str, str]
    someone: str


@pytest.fixture
def store(tmp_path: Path) -> Store:
    settings = Settings.load(tmp_path / "data", env={})
    with Persona.init(settings) as p:
        ingest_jsonl(p, SAMPLE.read_bytes().splitlines(), origin="sample")
        tokens = {name: create_token(p, name, scopes, epsilon_budget=5.0) for name, scopes in TOKENS.items()}
        someone = p.log.profile_for("email", "li.wei@example.com") or ""
    return Store(settings, tokens, someone)


def code(response: Any) -> str | None:
    errors = response.json().get("errors")
    return errors[0]["extensions"]["code"] if errors else None


# -- the planner -------------------------------------------------------------------------------
def test_a_scan_costs_in_proportion_to_the_population() -> None:
    one = plan(schema._schema, INSIGHTS, None, Limits())
    assert one.scans == 1 and not one.errors
    assert one.cost_at(0) == one.cost + SCAN_COST  # a small population still costs a replay's worth
    assert one.cost_at(1_000_000) == one.cost + 1_000_000 // PROFILES_PER_UNIT
    assert scan_cost(80_000) < scan_cost(800_000) < scan_cost(8_000_000)
    assert one.too_costly(1_000_000, Limits()) is None  # one scan of a million profiles fits
    message = one.too_costly(2_000_000, Limits())
    assert message is not None and "about 2,000,000 profiles" in message.message
    # rounded: the refusal does not tell a caller that one person came or went
    neighbours = [one.too_costly(n, Limits()) for n in (2_012_344, 2_012_345)]
    assert neighbours[0] is not None and neighbours[1] is not None
    assert neighbours[0].message == neighbours[1].message and "about 2,000,000 profiles" in neighbours[0].message
    assert [about(n) for n in (7, 99, 100, 1_234, 98_765, 2_012_345)] == [7, 99, 100, 1_200, 99_000, 2_000_000]
    filtered = plan(schema._schema, "{ a: profiles(filter: {}) { nodes { id } } b: profiles { nodes { id } } }",
                    None, Limits())
    assert filtered.scans == 1  # a filtered listing may read the whole index to fill a page; a plain one does not
    spread = ("fragment F on Query { insights { k } }"
              " { ...F x: insights { k } y: profiles(filter: {}) { nodes { id } } }")
    three = plan(schema._schema, spread, None, Limits())
    assert three.scans == 3 and three.too_costly(400_000, Limits()) is None
    assert three.too_costly(600_000, Limits()) is not None  # together they read too much for one request


def test_thirty_aliased_insights_are_one_refused_request(store: Store) -> None:
    many = "{ " + " ".join(f"i{n}: insights {{ k }}" for n in range(30)) + " }"
    assert plan(schema._schema, many, None, Limits()).over == ("scans",)
    with TestClient(create_app(store.settings)) as client:
        refused = Api(client, store.tokens, default="a").post(many)
        assert refused.status_code == 400 and code(refused) == "BAD_REQUEST"
        assert "scans the population 30 times" in refused.json()["errors"][0]["message"]
        four = Api(client, store.tokens, default="a").data("{ " + " ".join(
            f"i{n}: insights {{ k }}" for n in range(4)) + " }")  # four fit, and run one after another
        assert [four[f"i{n}"]["k"] for n in range(4)] == [5] * 4


def test_the_population_prices_a_scan_when_it_is_asked_for(store: Store) -> None:
    with TestClient(create_app(store.settings, ServerOptions(population_every_s=1e9))) as client:  # not recounted
        api = Api(client, store.tokens, default="a")
        state = client.app.state.api  # type: ignore[attr-defined]
        assert state.population == 6  # counted at startup: the sample's people
        assert api.data(INSIGHTS)["insights"]["k"] == 5
        state.population = 10_000_000  # as if the index held ten million people
        refused = api.post(INSIGHTS)
        assert refused.status_code == 400 and "about 10,000,000 profiles" in refused.json()["errors"][0]["message"]
        assert api.post("{ profiles(first: 1, filter: {}) { nodes { id } } }").status_code == 400
        assert api.data("{ profiles(first: 1) { nodes { id } } }")["profiles"]["nodes"]  # a page: no scan
        assert api.data(PROFILE, {"id": store.someone})["profile"]["version"] > 0


PAST_LISTING = '{ profiles(first: 1, filter: {}, asOf: "2025-10-01T00:00:00Z") { nodes { id } } }'


def test_a_past_filtered_listing_is_priced_by_the_population_it_replays(store: Store) -> None:
    """Review finding D: a filtered listing with asOf brings every profile it meets back to that
    instant by replaying its log (the index cannot be shifted backwards): a population scan of
    replays, each many times an index read, priced as one index scan (one unit per 250 profiles).
    It is priced by the population it replays, and refused where that is too much."""
    past = plan(schema._schema, PAST_LISTING, None, Limits())
    present = plan(schema._schema, PAST_LISTING.replace(', asOf: "2025-10-01T00:00:00Z"', ""), None, Limits())
    assert past.scans == present.scans == 1 and not past.errors
    assert past.too_costly(100_000, Limits()) is not None  # 100,000 logs replayed in one request
    assert present.too_costly(100_000, Limits()) is None  # 100,000 index rows read: fits
    assert past.cost_at(100_000) - past.cost > 10 * (present.cost_at(100_000) - present.cost)
    assert past.cost_at(6) == past.cost + SCAN_COST  # a small population still costs a replay's worth
    with TestClient(create_app(store.settings, ServerOptions(population_every_s=1e9))) as client:
        api = Api(client, store.tokens, default="a")
        state = client.app.state.api  # type: ignore[attr-defined]
        assert api.data(PAST_LISTING)["profiles"]["nodes"]  # the sample's six people: fine
        state.population = 100_000
        refused = api.post(PAST_LISTING)
        assert refused.status_code == 400 and "about 100,000 profiles" in refused.json()["errors"][0]["message"]
        assert api.data(PAST_LISTING.replace(', asOf: "2025-10-01T00:00:00Z"', ""))["profiles"]["nodes"]


# -- the gate ----------------------------------------------------------------------------------
def test_scans_wait_their_turn_per_token_and_a_full_queue_refuses_cleanly(store: Store) -> None:
    options = ServerOptions(scan_processes=1, scans_per_token=1, scan_queue=2, scan_queue_per_token=1)
    with TestClient(create_app(store.settings, options)) as client:
        api = Api(client, store.tokens)
        state = client.app.state.api  # type: ignore[attr-defined]
        portal = client.portal
        assert portal is not None
        portal.call(state.gate.acquire, "someone else")  # the only process is busy
        answers: dict[str, Any] = {}

        def ask(name: str, query: str) -> threading.Thread:
            thread = threading.Thread(target=lambda: answers.__setitem__(name, api.post(query, token=name)))
            thread.start()
            return thread

        def waiting(n: int) -> None:  # the scans in the queue, as the gate sees them
            for _ in range(10_000):
                if portal.call(lambda: _after_a_turn(lambda: len(state.gate.waiting))) == n:
                    return
            raise AssertionError(f"{n} scans never waited")

        first = ask("a", INSIGHTS)
        waiting(1)
        again = api.post(INSIGHTS, token="a")  # a second of a's: past its share of the queue
        assert code(again) == "RATE_LIMITED" and again.json()["data"] is None
        second = ask("b", "{ insights(epsilon: 1.0) { k epsilonRemaining } }")
        waiting(2)
        full = api.post("{ insights(epsilon: 1.0) { k } }", token="c")  # the queue is full
        assert code(full) == "BUSY" and "busy" in full.json()["errors"][0]["message"]
        listing = api.post("{ profiles(first: 2, filter: {lifecycleStages: [\"active\"]}) { nodes { id } } }",
                           token="d")
        assert code(listing) == "BUSY"  # a filtered listing is a scan too
        # meanwhile reads that scan nothing are answered
        assert api.data(PROFILE, {"id": store.someone}, token="d")["profile"]["version"] > 0
        assert api.data("{ profiles(first: 2) { nodes { id } } }", token="d")["profiles"]["nodes"]
        portal.call(state.gate.release, "someone else")
        first.join()
        second.join()
        assert answers["a"].json()["data"]["insights"]["k"] == 5
        assert 4.0 <= answers["b"].json()["data"]["insights"]["epsilonRemaining"] < 4.1  # charged its ε, once
        assert not state.gate.waiting and not state.gate.running and state.gate.free == 1
    with Persona.open(store.settings) as p:
        spent = {t.name: t.epsilon_spent for t in list_tokens(p)}
    assert spent["c"] == 0.0 and 0.9 < spent["b"] <= 1.0  # a refused scan spends no budget


async def _after_a_turn(read: Any) -> Any:
    await asyncio.sleep(0)  # the loop runs what is ready (a request reaching the gate) before reading
    return read()


def test_the_gate_admits_refuses_and_forgets_a_cancelled_wait() -> None:
    async def scenario() -> None:
        gate = ScanGate(slots=2, per_token=1, queue=2, queue_per_token=1)
        await gate.acquire("a")
        await gate.acquire("b")
        assert gate.free == 0
        a_next = asyncio.create_task(gate.acquire("a"))  # a runs one already: it waits, though…
        c_next = asyncio.create_task(gate.acquire("c"))
        await asyncio.sleep(0)
        assert [t for t, _ in gate.waiting] == ["a", "c"]
        for token, expected in (("a", "RATE_LIMITED"), ("d", "BUSY")):
            with pytest.raises(ApiError) as refused:
                await gate.acquire(token)
            assert refused.value.code == expected
        gate.release("b")  # a slot frees: a may not take a second, so c (later) runs first
        await asyncio.sleep(0)
        assert c_next.done() and not a_next.done() and gate.running == {"a": 1, "c": 1}
        a_next.cancel()  # a client that went away: its place in the queue is given up
        with pytest.raises(asyncio.CancelledError):
            await a_next
        assert not gate.waiting and not gate.waiting_of
        gate.release("a")
        gate.release("c")
        assert gate.free == 2 and not gate.running
        # a wait cancelled just after its turn came gives the slot back
        await gate.acquire("a")
        await gate.acquire("b")
        late = asyncio.create_task(gate.acquire("c"))
        await asyncio.sleep(0)
        gate.release("a")  # hands the slot to c…
        late.cancel()  # …whose client leaves before it can use it
        with pytest.raises(asyncio.CancelledError):
            await late
        assert gate.free == 1 and gate.running == {"b": 1}
        # turns go in the order of arrival
        await gate.acquire("x")
        y, z = asyncio.create_task(gate.acquire("y")), asyncio.create_task(gate.acquire("z"))
        await asyncio.sleep(0)
        gate.release("b")
        await asyncio.sleep(0)
        assert y.done() and not z.done()
        gate.release("x")
        await z
        assert gate.running == {"y": 1, "z": 1}

    asyncio.run(scenario())


# -- the processes -----------------------------------------------------------------------------
@pytest.fixture
def pool(store: Store) -> Iterator[ScanPool]:
    scans = ScanPool(store.settings, 1)
    try:
        yield scans
    finally:
        scans.close()


def test_scans_run_in_processes_of_their_own_at_a_lower_priority(pool: ScanPool) -> None:
    pid, niceness, population = asyncio.run(pool.run(where_am_i))
    assert pid != os.getpid() and niceness >= os.nice(0) + 10 and population == 6


def test_a_scan_process_that_dies_is_a_clean_error_and_the_next_scan_works(pool: ScanPool) -> None:
    async def scenario() -> tuple[str, int]:
        with pytest.raises(ApiError) as failed:
            await pool.run(die)
        _, _, population = await pool.run(where_am_i)
        return failed.value.code, population

    assert asyncio.run(scenario()) == ("UNAVAILABLE", 6)
