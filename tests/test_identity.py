"""Identity resolution across profiles: merges when a link joins two people, persons folding
every stream, erasure of every key, undo, and the API's linkIdentities/unlinkIdentities.

Real SQLite files, real keys; the API through Starlette's TestClient around `create_app`.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from persona import Persona, Settings
from persona.api.app import create_app
from persona.cli import cli
from persona.erasure import erase_profile, erase_subject, verify_receipt
from persona.errors import ErasedError, LinkError, UnknownProfileError
from persona.identity import MERGED, UNMERGED, person_of
from persona.ingest import ingest_jsonl
from persona.linking import link, unlink
from persona.population import indexed
from persona.profiles import profile_view, read_person
from persona.projections import ATTRIBUTES, FEATURES, replay
from persona.projector import Projector, rebuild
from persona.reading import history_page
from persona.tokens import create_token
from tests.conftest import NOW, jsonl, record, store_bytes

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

USER = "u-1001"
COOKIE = "ck-77aa"
EMAIL = "kim.lee@example.com"


def ingest(persona: Persona, *records: dict[str, Any]) -> Any:
    return ingest_jsonl(persona, jsonl(*records).splitlines(), origin="test", now=NOW)


def view(n: int, cookie: str = COOKIE, day: int = 2) -> dict[str, Any]:
    return record(cookie, "page_viewed", {"url": f"https://shop.example/p/{n}", "category": "books"},
                  namespace="cookie", event_id=f"v{zlib.crc32(cookie.encode())}-{n}",
                  occurred_at=f"2026-03-0{day}T10:0{n}:00Z")


def order(n: int, amount: str, who: str = USER, namespace: str = "shop_user") -> dict[str, Any]:
    return record(who, "order_placed", {"order_id": f"o{n}", "amount": amount, "currency": "CNY"},
                  namespace=namespace, event_id=f"o{n}", occurred_at=f"2026-03-0{n}T12:00:00Z", source="shop")


def login(cookie: str = COOKIE, user: str = USER, event_id: str = "login-1") -> dict[str, Any]:
    return record(cookie, "identity_linked", {"other": {"namespace": "shop_user", "value": user}},
                  namespace="cookie", event_id=event_id, occurred_at="2026-03-04T09:00:00Z")


@pytest.fixture
def two(persona: Persona) -> tuple[str, str]:
    """A shopper (two orders, an e-mail) and a cookie that browsed anonymously: two profiles."""
    ingest(persona, order(1, "100.00"), order(2, "50.00"),
           record(USER, "identity_linked", {"other": {"namespace": "email", "value": EMAIL}},
                  namespace="shop_user", event_id="mail", occurred_at="2026-03-01T12:00:00Z", source="shop"),
           view(1), view(2), view(3))
    shop, cookie = persona.log.profile_for("shop_user", USER), persona.log.profile_for("cookie", COOKIE)
    assert shop and cookie and shop != cookie
    return shop, cookie


def features(persona: Persona, pid: str) -> dict[str, Any]:
    return FEATURES.view(Projector(persona).current(pid).states[FEATURES.name], NOW)


def test_a_link_joining_two_profiles_merges_them_into_one_person(persona: Persona, two: tuple[str, str]) -> None:
    shop, cookie = two
    report = ingest(persona, login())
    assert report.merges == 1 and report.profiles_created == 0
    person = person_of(persona.recorder, cookie)
    assert person.id == shop == person_of(persona.recorder, shop).id  # named by its oldest profile
    assert person.members == (shop, cookie)
    # nothing moved: each stream keeps its own events, plus the merge marker
    assert [e.type for e in persona.log.read(cookie)].count(MERGED) == 1
    assert [e.type for e in persona.log.read(shop)].count(MERGED) == 1
    # the person folds both histories, whichever id is asked
    for pid in (shop, cookie):
        f = features(persona, pid)
        assert (f["frequency"], f["monetary"], f["page_views"]) == (2, 150.0, 3)
    # one index row: the person's, under its id; listings count people
    rows = {p.id: p for p in indexed(persona, as_of=NOW)}
    assert shop in rows and cookie not in rows
    assert rows[shop].features["page_views"] == 3 and rows[shop].version == sum(
        persona.recorder.heads([shop, cookie])[m].version for m in (shop, cookie))


def test_merging_is_idempotent_and_a_batch_can_make_and_merge_a_profile(persona: Persona,
                                                                        two: tuple[str, str]) -> None:
    shop, _ = two
    first = ingest(persona, view(1, "ck-new"), login("ck-new", event_id="login-new"))
    assert first.merges == 1 and first.profiles_created == 1  # made anonymous, then merged, in one batch
    again = ingest(persona, view(1, "ck-new"), login("ck-new", event_id="login-new"))
    assert (again.appended, again.merges) == (0, 0)
    assert person_of(persona.recorder, persona.log.profile_for("cookie", "ck-new") or "").id == shop


def test_the_person_equals_one_fold_of_all_its_events(persona: Persona, two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, login(), record(COOKIE, "profile_updated", {"country": "KR", "birth_year": 1990},
                                    namespace="cookie", event_id="p1", occurred_at="2026-03-05T00:00:00Z"),
           record(USER, "profile_updated", {"country": "JP", "birth_year": 1992}, namespace="shop_user",
                  event_id="p2", occurred_at="2026-03-06T00:00:00Z", source="shop"))
    everything = [e for pid in (shop, cookie) for e in persona.log.read(pid)]
    current = Projector(persona).current(cookie)
    assert ATTRIBUTES.dump(current.states[ATTRIBUTES.name]) == ATTRIBUTES.dump(replay(ATTRIBUTES, everything))
    assert FEATURES.dump(current.states[FEATURES.name]) == FEATURES.dump(replay(FEATURES, everything))
    assert ATTRIBUTES.view(current.states[ATTRIBUTES.name], NOW)["country"]["value"] == "JP"  # the later claim
    # the stream states it was made from are untouched (they are cached and snapshotted as they are)
    assert FEATURES.view(Projector(persona).stream_current(cookie).states[FEATURES.name], NOW)["frequency"] == 0


def test_rebuild_reproduces_the_merged_index(persona: Persona, two: tuple[str, str]) -> None:
    ingest(persona, login())
    before = [row[:3] for row in persona.recorder.index_rows()]
    rebuild(persona, workers=1)
    assert [row[:3] for row in persona.recorder.index_rows()] == before  # RFM scores are added by rebuild
    assert len(before) == 1


def test_profile_view_and_history_cover_every_stream(persona: Persona, two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, login())
    doc = profile_view(persona, cookie, now=NOW)
    assert doc["id"] == shop and doc["merged"] == [cookie]
    assert {i["namespace"] for i in doc["identities"]} == {"shop_user", "email", "cookie"}
    events = read_person(persona, person_of(persona.recorder, cookie))
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert {e.profile_id for e in events} == {shop, cookie}
    # paged newest first across both streams, by log position
    seen, before = [], None
    while True:
        page = history_page(persona, cookie, first=2, before=before, by_position=True)
        seen.extend(page.events)
        if not page.has_next:
            break
        before = page.events[-1].position
    assert [e.position for e in seen] == sorted((e.position for e in events), reverse=True)
    past = profile_view(persona, shop, as_of=datetime(2026, 3, 2, 10, 1, 30, tzinfo=UTC))
    assert past["features"]["page_views"] == 1 and past["features"]["frequency"] == 1  # both streams, replayed


def test_erasing_a_merged_person_deletes_every_key(persona: Persona, two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, login())
    erasure = erase_subject(persona, "cookie", COOKIE)
    body = verify_receipt(erasure.receipt, persona.keyring.public_key)
    assert body["profile_id"] == shop and list(body["merged_profiles"]) == [cookie]
    heads = persona.recorder.heads([shop, cookie])
    assert all(h.wrapped is None for h in heads.values())
    assert persona.log.profile_for("email", EMAIL) is None and persona.log.profile_for("cookie", COOKIE) is None
    assert persona.recorder.merge_edges([shop, cookie]) == []  # the identifier hashes of the merge went too
    assert persona.recorder.persons_of([shop, cookie]) == {}
    assert not list(indexed(persona, as_of=NOW))
    for pid in (shop, cookie):
        with pytest.raises(ErasedError):
            erase_profile(persona, pid)
    persona.recorder.checkpoint()
    files = store_bytes(persona)
    assert EMAIL.encode() not in files and COOKIE.encode() not in files
    # a later event for the same cookie starts a new, unrelated person
    ingest(persona, view(4))
    fresh = persona.log.profile_for("cookie", COOKIE)
    assert fresh not in (None, shop, cookie)


def test_unlink_undoes_the_merge_and_keeps_them_apart(persona: Persona, two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, login())
    ingest(persona, view(5, day=6))  # browsed while merged: stays in the cookie's own stream
    undone = unlink(persona, ("cookie", COOKIE), ("shop_user", USER), now=NOW)
    assert undone.people == (cookie, shop) and undone.merges_undone == 1
    assert person_of(persona.recorder, cookie).members == (cookie,)
    assert [e.type for e in persona.log.read(cookie)][-1] == UNMERGED
    assert (features(persona, shop)["frequency"], features(persona, shop)["page_views"]) == (2, 0)
    assert (features(persona, cookie)["frequency"], features(persona, cookie)["page_views"]) == (0, 4)
    assert {p.id for p in indexed(persona, as_of=NOW)} == {shop, cookie}
    # the same wrong link, arriving again on another record, is not followed
    again = ingest(persona, login(event_id="login-2"))
    assert (again.merges, again.merges_refused) == (0, 1)
    assert person_of(persona.recorder, cookie).id == cookie
    # an explicit link is
    linked = link(persona, ("cookie", COOKIE), ("shop_user", USER), now=NOW)
    assert linked.person == shop and linked.merged
    # erasure after an undo erases only the person named
    unlink(persona, ("cookie", COOKIE), ("shop_user", USER), now=NOW)
    erase_subject(persona, "cookie", COOKIE)
    assert features(persona, shop)["frequency"] == 2


def test_unlink_refuses_what_is_not_a_merge(persona: Persona, two: tuple[str, str]) -> None:
    with pytest.raises(LinkError, match="first seen together"):
        unlink(persona, ("shop_user", USER), ("email", EMAIL))
    with pytest.raises(LinkError, match="different people"):
        unlink(persona, ("shop_user", USER), ("cookie", COOKIE))
    with pytest.raises(UnknownProfileError):
        unlink(persona, ("shop_user", USER), ("cookie", "ck-never-seen"))
    with pytest.raises(UnknownProfileError):
        link(persona, ("cookie", "ck-a"), ("cookie", "ck-b"))


def test_three_profiles_merge_and_one_unlink_splits_only_its_own_merge(persona: Persona,
                                                                       two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, record("dev-9", "app_session", {"session_id": "s1", "minutes": 3}, namespace="device",
                           event_id="a1", occurred_at="2026-03-03T00:00:00Z", source="app"))
    device = persona.log.profile_for("device", "dev-9")
    ingest(persona, login(), record("dev-9", "identity_linked", {"other": {"namespace": "shop_user", "value": USER}},
                                    namespace="device", event_id="a2", occurred_at="2026-03-03T00:01:00Z",
                                    source="app"))
    assert person_of(persona.recorder, device).members == (shop, cookie, device)
    unlink(persona, ("device", "dev-9"), ("shop_user", USER))
    assert person_of(persona.recorder, device).members == (device,)
    assert person_of(persona.recorder, cookie).members == (shop, cookie)


def test_cli_link_unlink_and_profile(settings: Settings, two: tuple[str, str]) -> None:
    shop, cookie = two
    runner = CliRunner()
    base = ["--data", str(settings.data_dir)]
    done = runner.invoke(cli, [*base, "link", f"cookie:{COOKIE}", f"shop_user:{USER}"])
    assert done.exit_code == 0 and f"merged into profile {shop}" in done.output
    shown = runner.invoke(cli, [*base, "profile", "--subject", f"cookie:{COOKIE}"])
    assert shown.exit_code == 0 and f"profile {shop}" in shown.output and f"merged with {cookie}" in shown.output
    history = runner.invoke(cli, [*base, "history", "--profile", cookie, "--json"])
    assert {orjson.loads(line)["profile_id"] for line in history.output.splitlines()} == {shop, cookie}
    undone = runner.invoke(cli, [*base, "unlink", f"cookie:{COOKIE}", f"shop_user:{USER}"])
    assert undone.exit_code == 0 and "1 merge(s) undone" in undone.output
    refused = runner.invoke(cli, [*base, "unlink", f"cookie:{COOKIE}", f"shop_user:{USER}"])
    assert refused.exit_code == 1 and "different people" in refused.output
    for result in (done, shown, history, undone, refused):
        assert COOKIE not in result.output.replace(f"cookie:{COOKIE}", "") and EMAIL not in result.output


# -- the API -----------------------------------------------------------------------------------
PROFILE = """query($ns: String!, $v: String!) {
  profile(subject: {namespace: $ns, value: $v}) { id version features identities { namespace } }
}"""
LINK = """mutation($a: SubjectInput!, $b: SubjectInput!) {
  linkIdentities(a: $a, b: $b) { id version features }
}"""
UNLINK = """mutation($a: SubjectInput!, $b: SubjectInput!) { unlinkIdentities(a: $a, b: $b) { id features } }"""
HISTORY = """query($id: ID!, $after: String) {
  profile(id: $id) { id history(first: 2, after: $after) { edges { node { id stream type } }
                                                           pageInfo { hasNextPage endCursor } } }
}"""
ERASE = "mutation($id: ID!) { eraseProfile(id: $id) { profileId mergedProfiles } }"


class Client:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client, self.token = client, token

    def post(self, query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables},
                                    headers={"Authorization": f"Bearer {token or self.token}"})
        assert response.status_code in (200, 403), response.text
        body = response.text.lower()
        assert EMAIL not in body and COOKIE not in body and USER not in body  # identifiers never come back
        doc: dict[str, Any] = response.json()
        return doc


@pytest.fixture
def api(settings: Settings, two: tuple[str, str], persona: Persona) -> Iterator[tuple[Client, str]]:
    writer = create_token(persona, "linker", frozenset({"events:write", "profiles:read", "history:read",
                                                        "erasure:write"}), types=frozenset({"identity_linked"}))
    reader = create_token(persona, "reader", frozenset({"profiles:read"}))
    with TestClient(create_app(settings)) as client:
        yield Client(client, writer), reader


def subject(namespace: str, value: str) -> dict[str, str]:
    return {"namespace": namespace, "value": value}


def test_api_link_unlink_history_and_erase(api: tuple[Client, str], two: tuple[str, str]) -> None:
    client, reader = api
    shop, cookie = two
    pair = {"a": subject("cookie", COOKIE), "b": subject("shop_user", USER)}
    denied = client.post(LINK, pair, token=reader)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    linked = client.post(LINK, pair)["data"]["linkIdentities"]
    assert linked["id"] == shop and linked["features"]["page_views"] == 3 and linked["features"]["frequency"] == 2
    by_cookie = client.post(PROFILE, {"ns": "cookie", "v": COOKIE})["data"]["profile"]
    assert by_cookie["id"] == shop and by_cookie["version"] == linked["version"]
    assert {i["namespace"] for i in by_cookie["identities"]} == {"shop_user", "email", "cookie"}
    # history pages run across both streams
    streams, after, types = set(), None, []
    while True:
        page = client.post(HISTORY, {"id": cookie, "after": after})["data"]["profile"]
        assert page["id"] == shop
        streams |= {edge["node"]["stream"] for edge in page["history"]["edges"]}
        types += [edge["node"]["type"] for edge in page["history"]["edges"]]
        if not page["history"]["pageInfo"]["hasNextPage"]:
            break
        after = page["history"]["pageInfo"]["endCursor"]
    assert streams == {shop, cookie} and types.count(MERGED) == 2 and len(types) == 9
    split = client.post(UNLINK, pair)["data"]["unlinkIdentities"]
    assert [p["id"] for p in split] == [cookie, shop]
    assert split[0]["features"]["page_views"] == 3 and split[1]["features"]["page_views"] == 0
    wrong = client.post(UNLINK, pair)
    assert wrong["errors"][0]["extensions"]["code"] == "BAD_REQUEST" and "different people" in wrong["errors"][0][
        "message"]
    unknown = client.post(LINK, {"a": subject("cookie", "ck-x"), "b": subject("device", "d-x")})
    assert unknown["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    client.post(LINK, pair)
    erased = client.post(ERASE, {"id": cookie})["data"]["eraseProfile"]
    assert erased == {"profileId": shop, "mergedProfiles": [cookie]}
    assert client.post(PROFILE, {"ns": "cookie", "v": COOKIE})["data"]["profile"] is None


def test_a_stale_version_cursor_of_a_merged_profile_is_a_clean_error(api: tuple[Client, str],
                                                                     two: tuple[str, str], persona: Persona) -> None:
    client, _ = api
    shop, _ = two
    first = client.post(HISTORY, {"id": shop, "after": None})["data"]["profile"]["history"]["pageInfo"]["endCursor"]
    client.post(LINK, {"a": subject("cookie", COOKIE), "b": subject("shop_user", USER)})
    stale = client.post(HISTORY, {"id": shop, "after": first})
    assert stale["errors"][0]["extensions"]["code"] == "BAD_REQUEST" and "merged" in stale["errors"][0]["message"]


def test_sources_merge_cookie_into_the_buyer(persona: Persona, tmp_path: Path) -> None:
    """The built-in web source: a cookie browsing anonymously, then logged in with a known shop account."""
    from persona.ingest import ingest_file
    from persona.ingest.mapping import builtin_mapping, mapped_records

    ingest(persona, order(1, "10.00"))
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("cookie_id,user_id,session_id,url,ts,dwell_s,category,referrer\n"
                      f"{COOKIE},,s1,https://shop.example/a,1741165200000,5,books,\n"
                      f"{COOKIE},,s1,https://shop.example/b,1741165260000,5,books,\n")
    mapping = builtin_mapping("web")
    with clicks.open("rb") as handle:
        ingest_file(persona, mapped_records(mapping, handle, name="clicks.csv"), origin="clicks", now=NOW)
    assert persona.log.profile_for("cookie", COOKIE) != persona.log.profile_for("shop_user", USER)
    clicks.write_text("cookie_id,user_id,session_id,url,ts,dwell_s,category,referrer\n"
                      f"{COOKIE},{USER},s2,https://shop.example/c,1741165300000,5,books,\n")
    with clicks.open("rb") as handle:
        report = ingest_file(persona, mapped_records(mapping, handle, name="clicks.csv"), origin="clicks2",
                             now=NOW)
    assert report.merges == 1
    shop = persona.log.profile_for("shop_user", USER) or ""
    assert features(persona, shop)["page_views"] == 3


# -- regressions found in review -----------------------------------------------------------------
def test_link_needs_profiles_read_to_answer_a_profile(api: tuple[Client, str], persona: Persona) -> None:
    client, _ = api
    ingester = create_token(persona, "ingester", frozenset({"events:write"}))
    pair = {"a": subject("cookie", "ck-fresh"), "b": subject("shop_user", USER)}
    refused = client.post(LINK, pair, token=ingester)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN" and refused.get("data") is None
    assert persona.log.profile_for("cookie", "ck-fresh") is None  # refused before anything ran


def _racing(persona: Persona, settings: Settings, meanwhile: Any, refresh: list[str]) -> None:
    """Another process refreshes these profiles; between its reads and its write, `meanwhile` runs."""
    with Persona.open(settings) as other:
        slow = Projector(other)
        real = slow.index_doc

        def index_doc(current: Any) -> str:
            doc = real(current)
            meanwhile()
            return doc

        slow.index_doc = index_doc  # type: ignore[method-assign]
        slow.refresh(refresh)


def test_a_stale_refresh_never_writes_a_split_persons_row(persona: Persona, settings: Settings,
                                                          two: tuple[str, str]) -> None:
    shop, cookie = two
    ingest(persona, record(COOKIE, "profile_updated", {"country": "KR"}, namespace="cookie", event_id="kr",
                           occurred_at="2026-03-03T00:00:00Z"))
    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    _racing(persona, settings, lambda: unlink(persona, ("cookie", COOKIE), ("shop_user", USER)), [shop])
    rows = {row[0]: row[2] for row in persona.recorder.index_rows()}
    assert set(rows) == {shop, cookie} and '"KR"' not in rows[shop] and '"KR"' in rows[cookie]
    erase_subject(persona, "cookie", COOKIE)
    persona.recorder.checkpoint()
    assert b'"KR"' not in store_bytes(persona)


def test_a_stale_refresh_never_writes_a_merged_profiles_own_row(persona: Persona, settings: Settings,
                                                                two: tuple[str, str]) -> None:
    shop, cookie = two
    _racing(persona, settings, lambda: link(persona, ("cookie", COOKIE), ("shop_user", USER)), [cookie])
    assert [row[0] for row in persona.recorder.index_rows()] == [shop]  # the person once, the cookie not alone
    assert len(list(indexed(persona, as_of=NOW))) == 1


def test_a_failed_unlink_leaves_no_stale_writer_cache(persona: Persona, two: tuple[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from persona import identity
    from persona.verify import verify

    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    ingest(persona, view(4, day=5))  # the writer cache holds both streams' tips

    def full_disk(rec: Any, seeds: Any) -> Any:
        raise OSError("no space left (injected)")

    with monkeypatch.context() as patched:
        patched.setattr(identity, "regroup", full_disk)
        with pytest.raises(OSError):
            unlink(persona, ("cookie", COOKIE), ("shop_user", USER))
    assert person_of(persona.recorder, two[1]).merged  # rolled back: still one person
    ingest(persona, view(5, day=6), order(3, "1.00"))
    link(persona, ("shop_user", USER), ("email", "second@example.com"))
    assert verify(persona).events == persona.recorder.counts()["events"]  # no version skipped


def test_merge_markers_are_never_lost_to_reused_numbers(persona: Persona, two: tuple[str, str]) -> None:
    shop, _ = two
    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    unlink(persona, ("cookie", COOKIE), ("shop_user", USER))
    erase_subject(persona, "cookie", COOKIE)  # deletes the newest merge row
    ingest(persona, view(1, "ck-second"))
    second = persona.log.profile_for("cookie", "ck-second") or ""
    link(persona, ("cookie", "ck-second"), ("shop_user", USER))
    unlink(persona, ("cookie", "ck-second"), ("shop_user", USER))
    assert [e.type for e in persona.log.read(second)][-2:] == [MERGED, UNMERGED]
    assert [e.type for e in persona.log.read(shop)].count(UNMERGED) == 2


def test_the_reserved_source_is_refused_on_input(persona: Persona) -> None:
    report = ingest(persona, record("x@example.com", event_id="unmerge:1:0", source="persona"))
    assert (report.appended, report.quarantined) == (0, 1)


def test_restoring_an_old_backup_erases_exactly_the_profiles_the_ledger_names(persona: Persona, settings: Settings,
                                                                              two: tuple[str, str]) -> None:
    from persona.backup import backup, restore

    shop, cookie = two
    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    taken = settings.data_dir.parent / "merged.db"
    backup(persona, taken)
    unlink(persona, ("cookie", COOKIE), ("shop_user", USER))
    erase_subject(persona, "cookie", COOKIE)  # the cookie person only: the shopper never asked
    persona.close()
    restore(settings, taken)
    with Persona.open(settings) as restored:
        heads = restored.recorder.heads([shop, cookie])
        assert heads[cookie].wrapped is None and heads[shop].wrapped is not None
        assert person_of(restored.recorder, shop).members == (shop,)
        assert [p.id for p in indexed(restored, as_of=NOW)] == [shop]
        assert features(restored, shop)["frequency"] == 2


def test_verify_checks_persons_against_the_recorded_merges(persona: Persona, two: tuple[str, str]) -> None:
    from persona.errors import TamperError
    from persona.verify import verify

    _, cookie = two
    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    unlink(persona, ("cookie", COOKIE), ("shop_user", USER))
    link(persona, ("cookie", COOKIE), ("shop_user", USER))
    verify(persona)  # consistent after merges, an undo and a relink
    with persona.recorder.transaction():
        persona.recorder.set_members([], [cookie])  # the cookie's membership lost
    with pytest.raises(TamperError, match="disagrees with the recorded merges"):
        verify(persona)


# -- a link by hand of a new identifier ----------------------------------------------------------
NEW = "new.kim@example.com"


@pytest.mark.parametrize("erased_first", ["new", "known"])
def test_a_link_by_hand_of_a_new_identifier_is_a_merge_unlink_undoes(persona: Persona, two: tuple[str, str],
                                                                     erased_first: str) -> None:
    from persona.verify import verify

    shop, _ = two
    linked = link(persona, ("shop_user", USER), ("email", NEW), now=NOW)
    new = persona.log.profile_for("email", NEW)
    assert linked.merged and linked.created and new not in (None, shop)
    assert person_of(persona.recorder, new or "").members == (shop, new) and linked.person == shop
    assert [e.type for e in persona.log.read(new or "")] == [MERGED]  # its own stream: nothing moved into it
    ingest(persona, order(7, "30.00", NEW, "email"))  # arrives for the new identifier: its own stream
    assert [e.type for e in persona.log.read(new or "")] == [MERGED, "order_placed"]
    assert features(persona, shop)["frequency"] == 3  # the person folds both
    undone = unlink(persona, ("shop_user", USER), ("email", NEW), now=NOW)
    assert undone.people == (shop, new) and undone.merges_undone == 1
    assert person_of(persona.recorder, new or "").members == (new,)
    assert (features(persona, shop)["frequency"], features(persona, shop)["monetary"]) == (2, 150.0)
    assert (features(persona, new or "")["frequency"], features(persona, new or "")["monetary"]) == (1, 30.0)
    assert {p.id for p in indexed(persona, as_of=NOW)} == {shop, two[1], new}
    verify(persona)
    gone, kept = (("email", NEW), shop) if erased_first == "new" else (("shop_user", USER), new or "")
    erase_subject(persona, *gone)
    assert features(persona, kept)["frequency"] == (2 if kept == shop else 1)  # the other is still readable
    verify(persona)
    erase_profile(persona, kept)
    verify(persona)


def test_a_link_by_an_earlier_release_of_a_new_identifier_is_refused_as_such(persona: Persona,
                                                                             two: tuple[str, str]) -> None:
    """Before, `link` joined a new identifier to the known profile's own stream (as a record does):
    one history, which no unlink can split. The refusal says which case it is."""
    from persona.events import Event, Subject

    shop, _ = two
    earlier = Event("link:" + "0" * 24, "cli", "identity_linked", "2026-03-05T00:00:00Z", Subject("shop_user", USER),
                    {}, Subject("email", NEW))
    persona.log.append([earlier], now=NOW)  # what the earlier release appended
    assert persona.log.profile_for("email", NEW) == shop
    with pytest.raises(LinkError, match="linked by an earlier release of persona") as refused:
        unlink(persona, ("email", NEW), ("shop_user", USER))
    assert NEW not in str(refused.value) and USER not in str(refused.value)
    with pytest.raises(LinkError, match="first seen together"):  # the e-mail came on the shop's own record
        unlink(persona, ("shop_user", USER), ("email", EMAIL))


def test_cli_links_a_new_identifier_and_unlinks_it_with_its_own_events(settings: Settings, two: tuple[str, str],
                                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    shop, _ = two

    def persona_cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "persona", "--data", str(settings.data_dir), *args],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert NEW not in done.stdout + done.stderr.replace(f"email:{NEW}", "")  # echoed as given only
        return done

    linked = persona_cli("link", f"shop_user:{USER}", f"email:{NEW}")
    assert f"merged into profile {shop}, the new identifier with a profile of its own" in linked.stdout
    assert "`persona unlink` undoes it" in linked.stdout
    events = tmp_path / "new.jsonl"
    events.write_bytes(jsonl(order(7, "30.00", NEW, "email")))
    persona_cli("ingest", str(events))
    assert orjson.loads(persona_cli("profile", "--subject", f"email:{NEW}", "--json").stdout)["id"] == shop
    assert "1 merge(s) undone" in persona_cli("unlink", f"shop_user:{USER}", f"email:{NEW}").stdout
    theirs = orjson.loads(persona_cli("profile", "--subject", f"email:{NEW}", "--json").stdout)
    ours = orjson.loads(persona_cli("profile", "--subject", f"shop_user:{USER}", "--json").stdout)
    assert theirs["id"] != shop and ours["id"] == shop and theirs["merged"] == ours["merged"] == []
    assert (theirs["features"]["frequency"], ours["features"]["frequency"]) == (1, 2)
    history = [orjson.loads(line) for line in persona_cli("history", "--subject", f"email:{NEW}", "--json"
                                                          ).stdout.splitlines()]
    assert {e["profile_id"] for e in history} == {theirs["id"]}
    assert [e["type"] for e in history if e["type"] not in (MERGED, UNMERGED)] == ["order_placed"]
    persona_cli("verify")
    persona_cli("erase", "--subject", f"email:{NEW}")
    after = orjson.loads(persona_cli("profile", "--subject", f"shop_user:{USER}", "--json").stdout)
    assert after["features"]["frequency"] == 2
    persona_cli("verify")
