"""Webhook destinations (persona.destinations), against a real HTTP receiver on 127.0.0.1: signed
POSTs on segment entries and exits and on changes of chosen fields, granted fields only, consent
per purpose, retries with backoff, dead letters, and the deletion notice an erasure sends."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from persona import Persona, destinations, memberships
from persona.erasure import erase_subject, verify_receipt
from persona.verify import verify
from tests.test_memberships import buy, ingest, lives, pid
from tests.webhooks import Received, Receiver, receiving

LATER = timedelta(hours=2)  # past every backoff but the last ones


def consent(email: str, purpose: str, granted: bool, eid: str) -> dict[str, Any]:
    from tests.conftest import record

    return record(email, "consent_changed", {"purpose": purpose, "granted": granted}, source="crm",
                  occurred_at=(datetime.now(UTC) - timedelta(days=1)).isoformat(), event_id=eid)


def secret_of(persona: Persona, name: str) -> bytes:
    return destinations.secret_of(persona, destinations.destination(persona, name))


def checked(persona: Persona, name: str, request: Received) -> Any:
    """What a receiver does: the signature over the body, within the tolerance."""
    destinations.verify(secret_of(persona, name), request.headers["persona-signature"],
                        request.headers["persona-delivery"], request.body)
    return request.doc


@pytest.fixture
def hook() -> Any:
    with receiving() as receiver:
        yield receiver


def test_entries_and_exits_are_posted_signed_with_granted_fields_only(persona: Persona, hook: Receiver) -> None:
    memberships.add_segment(persona, "spenders", "monetary >= 1000", by="test")
    _, secret = destinations.add_destination(persona, "crm", hook.url, segments=["spenders"],
                                             fields=["monetary", "country"], by="test")
    assert secret.startswith("whsec_") and secret.encode() == secret_of(persona, "crm")
    ingest(persona, buy("ann@example.com", "a1", 1500, 3), lives("ann@example.com", "FR", "ap"),
           buy("bob@example.com", "b1", 20, 3))
    done = destinations.deliver(persona)
    assert (done.queued, done.delivered) == (1, 1)
    (request,) = hook.wait(1)
    doc = checked(persona, "crm", request)
    ann = pid(persona, "ann@example.com")
    assert doc["type"] == "entered" and doc["segment"] == "spenders" and doc["profile_id"] == ann
    assert doc["profile"] == {"monetary": 1500.0, "country": "FR"}  # what was granted, nothing else
    assert request.headers["persona-event"] == "entered"
    assert request.headers["persona-delivery"].startswith("dlv_")
    assert "ann@example.com" not in request.body.decode()
    # she leaves (a refund takes her under 1000): sent too
    from tests.conftest import record
    ingest(persona, record("ann@example.com", "order_refunded", {"order_id": "a1", "amount": "1500",
                                                                 "currency": "EUR"},
                           source="shop", occurred_at=(datetime.now(UTC) - timedelta(days=1)).isoformat(),
                           event_id="r1"))
    assert destinations.deliver(persona).delivered == 1
    left = checked(persona, "crm", hook.wait(2)[1])
    assert (left["type"], left["profile_id"], left["segment"]) == ("left", ann, "spenders") and "profile" not in left
    verify(persona)


def test_a_refused_delivery_is_retried_with_backoff_the_same_key_then_dead_lettered(persona: Persona,
                                                                                    hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "flaky", hook.url, segments=["buyers"], by="test")
    hook.answers = [500, 503]
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    first = destinations.deliver(persona)
    assert [(a.status, a.outcome) for a in first.attempts] == [("pending", "HTTP 500")]
    assert destinations.deliver(persona).attempts == []  # not due again for a second
    second = destinations.send_due(persona, now=datetime.now(UTC) + timedelta(seconds=2))
    assert [(a.status, a.outcome) for a in second] == [("pending", "HTTP 503")]
    third = destinations.send_due(persona, now=datetime.now(UTC) + timedelta(seconds=10))
    assert [a.status for a in third] == ["delivered"]
    keys = {r.headers["persona-delivery"] for r in hook.wait(3)}
    assert len(keys) == 1  # one delivery, one idempotency key, three attempts
    # a destination that never answers 2xx: given up after the attempts allowed, kept as a dead letter
    hook.answers = [500] * destinations.MAX_ATTEMPTS
    ingest(persona, buy("bob@example.com", "b1", 10, 3))
    destinations.deliver(persona)
    moment = datetime.now(UTC)
    for n in range(destinations.MAX_ATTEMPTS):
        moment += timedelta(seconds=destinations.RETRY_S[min(n, len(destinations.RETRY_S) - 1)] + 1)
        destinations.send_due(persona, now=moment)
    (state,) = destinations.status(persona)
    assert state["deliveries"]["dead"] == 1 and state["deliveries"]["delivered"] == 1
    (letter,) = state["dead_letters"]
    assert letter["attempts"] == destinations.MAX_ATTEMPTS and letter["outcome"] == "HTTP 500"
    assert letter["profile_id"] == pid(persona, "bob@example.com")
    assert destinations.retry(persona, "flaky") == 1
    assert destinations.deliver(persona).delivered == 1  # the receiver answers 204 again


def test_an_unreachable_destination_is_an_outcome_not_a_crash(persona: Persona) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    with receiving() as gone:
        url = gone.url  # a port nobody listens on once this block ends
    destinations.add_destination(persona, "gone", url, segments=["buyers"], by="test")
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    (attempt,) = destinations.deliver(persona).attempts
    assert attempt.status == "pending" and attempt.outcome == "connection refused"


def test_erasure_sends_every_destination_that_received_the_person_a_signed_notice(persona: Persona,
                                                                                  hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    memberships.add_segment(persona, "whales", "monetary >= 100000", by="test")
    with receiving() as other, receiving() as bystander:
        destinations.add_destination(persona, "crm", hook.url, segments=["buyers"], by="test")
        destinations.add_destination(persona, "ads", other.url, segments=["buyers"], by="test")
        destinations.add_destination(persona, "never", bystander.url, segments=["whales"], by="test")
        ingest(persona, buy("ann@example.com", "a1", 10, 3), buy("bob@example.com", "b1", 10, 3))
        destinations.deliver(persona)
        ann = pid(persona, "ann@example.com")
        other.answers = [500]  # the ads tool is down when she is erased
        erasure = erase_subject(persona, "email", "ann@example.com")
        notified = {n["destination"]: n for n in erasure.receipt["receipt"]["destinations_notified"]}
        assert set(notified) == {"crm", "ads"}
        assert notified["crm"]["acknowledged"] is True and notified["ads"]["acknowledged"] is False
        assert notified["ads"]["outcome"] == "HTTP 500"
        verify_receipt(erasure.receipt, persona.keyring.public_key)  # the list is signed with the rest
        notice = checked(persona, "crm", hook.wait(2)[-1])
        assert notice == {"type": "erased", "profile_id": ann, "sent_at": notice["sent_at"],
                          "queued_at": notice["queued_at"]}
        assert bystander.requests == []
        # the ads tool's notice is retried like any delivery, and nothing else of hers is left to send
        assert [a.kind for a in destinations.send_due(persona, now=datetime.now(UTC) + timedelta(seconds=2))] == [
            "erased"]
        assert other.wait(2)[-1].doc["type"] == "erased"
        assert persona.recorder.received_by([ann]) == []
        verify(persona)


def test_a_marketing_destination_never_receives_a_person_without_marketing_consent(persona: Persona,
                                                                                  hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "mailer", hook.url, segments=["buyers"], purpose="marketing", by="test")
    ingest(persona, consent("ann@example.com", "marketing", True, "c1"), buy("ann@example.com", "a1", 10, 3),
           consent("bob@example.com", "marketing", False, "c2"), buy("bob@example.com", "b1", 10, 3),
           buy("cid@example.com", "c1", 10, 3))  # never asked: no consent either
    done = destinations.deliver(persona)
    assert sorted((a.status, a.outcome) for a in done.attempts) == [
        ("delivered", "HTTP 204"), ("skipped", "no marketing consent"), ("skipped", "no marketing consent")]
    assert [checked(persona, "mailer", r)["profile_id"] for r in hook.wait(1)] == [pid(persona, "ann@example.com")]


def test_a_change_of_a_watched_field_is_sent_to_destinations_that_received_the_person(persona: Persona,
                                                                                     hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "crm", hook.url, segments=["buyers"], fields=["country", "frequency"],
                                 on_change=["country"], by="test")
    ingest(persona, buy("ann@example.com", "a1", 10, 3), lives("ann@example.com", "FR", "p1"))
    destinations.deliver(persona)
    ingest(persona, buy("ann@example.com", "a2", 10, 2))  # frequency moves: not watched
    assert destinations.deliver(persona).attempts == []
    ingest(persona, lives("ann@example.com", "DE", "p2"))  # country moves: watched
    done = destinations.deliver(persona)
    assert [a.kind for a in done.attempts] == ["changed"]
    changed = checked(persona, "crm", hook.wait(2)[-1])
    assert changed["profile"] == {"country": "DE", "frequency": 2} and changed["type"] == "changed"


@pytest.mark.parametrize(("url", "said"), [
    ("ftp://example.com/hook", "http:// or https://"),
    ("https://user:pw@example.com/hook", "user or password"),
    ("https:///nohost", "with a host"),
    ("https://example.com:99999/", "port out of range"),
    ("https://example.com/#x", "fragment"),
    ("https://" + "a" * 64 + ".example.com/", "host name that is not valid"),
    # where no webhook belongs: a cloud instance's metadata service (its credentials), link-local,
    # multicast, unspecified and reserved addresses, in IPv4, IPv6 and IPv4-mapped IPv6
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://0.0.0.0:8080/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://240.0.0.1/hook", "reserved"),
])
def test_bad_urls_are_refused(persona: Persona, url: str, said: str) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    with pytest.raises(destinations.DestinationError, match=said):
        destinations.add_destination(persona, "x", url, segments=["buyers"], by="test")


def test_a_stored_url_that_resolves_where_no_webhook_belongs_is_refused_when_sent() -> None:
    """A URL stored before the check (or whose name resolves there now) is refused at each send,
    resolved once and checked before any connection: nothing is sent to it."""
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]:8080/"):
        outcome = destinations._post(url, b"{}", {"Content-Type": "application/json"}, timeout=2.0)
        assert outcome == "refused: the host resolves to a link-local address", outcome


def test_a_name_is_resolved_and_the_checked_address_connected(hook: Receiver) -> None:
    """`localhost` (and not the receiver's literal address): the name is resolved within the timeout,
    each address checked, and the request reaches the receiver with the name in its Host header."""
    url = hook.url.replace("127.0.0.1", "localhost")
    assert destinations._post(url, b"{}", {"Content-Type": "application/json"}, timeout=5.0) == "HTTP 204"
    # no resolver thread outlives the send (a moment to end, once it has answered): a process whose
    # only thread is left forks its ingest's reader
    deadline = time.monotonic() + 2
    while [t for t in threading.enumerate() if t.name.startswith("persona-dns")]:
        assert time.monotonic() < deadline, "a resolver thread outlived the send"
        time.sleep(0.01)
    (got,) = hook.requests
    assert got.headers["host"].startswith("localhost:")


def test_bad_definitions_are_refused(persona: Persona) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    url = "https://hooks.example.com/in"
    cases = [({"segments": ["nope"]}, "no segment named nope"),
             ({"segments": ["buyers"], "fields": ["salary"]}, "unknown field"),
             ({"segments": ["buyers"], "fields": ["country"], "on_change": ["city"]}, "only fields it was granted"),
             ({}, "at least one"),
             ({"segments": ["buyers"], "purpose": "spam"}, "purpose")]
    for options, said in cases:
        with pytest.raises(destinations.DestinationError, match=said):
            destinations.add_destination(persona, "x", url, by="test", **options)
    destinations.add_destination(persona, "x", url, segments=["buyers"], by="test")
    with pytest.raises(destinations.DestinationError, match="exists"):
        destinations.add_destination(persona, "x", url, segments=["buyers"], by="test")


def test_a_receiver_refuses_a_forged_tampered_or_replayed_request() -> None:
    secret, body, key = b"whsec_test", b'{"type":"entered","profile_id":"prf_x"}', "dlv_1"
    now = int(time.time())
    good = destinations.sign(secret, now, key, body)
    assert destinations.verify(secret, good, key, body) == now
    with pytest.raises(destinations.DestinationError, match="does not match"):
        destinations.verify(secret, good, key, body.replace(b"prf_x", b"prf_y"))  # tampered
    with pytest.raises(destinations.DestinationError, match="does not match"):
        destinations.verify(b"whsec_other", good, key, body)  # forged with another key
    with pytest.raises(destinations.DestinationError, match="does not match"):
        destinations.verify(secret, good, "dlv_2", body)  # replayed under a fresh idempotency key
    with pytest.raises(destinations.DestinationError, match="too old"):
        old = now - destinations.TOLERANCE_S - 1
        destinations.verify(secret, destinations.sign(secret, old, key, body), key, body)  # replayed later
    for header in (None, "", "v1=abc", "t=abc,v1=00", f"t={now}", f"t={now},v1=\u00e9\u00e9"):
        with pytest.raises(destinations.DestinationError):
            destinations.verify(secret, header, key, body)


def test_secrets_are_sealed_and_no_file_holds_one(persona: Persona, hook: Receiver) -> None:
    from tests.conftest import store_bytes

    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    _, secret = destinations.add_destination(persona, "crm", hook.url + "?token=hunter2", segments=["buyers"],
                                             by="test")
    kept = store_bytes(persona)
    assert secret.encode() not in kept and b"hunter2" not in kept  # a hook URL's token is sealed too


def test_a_new_destination_is_sent_its_segments_members_and_only_later_changes(persona: Persona,
                                                                              hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    with receiving() as early:
        destinations.add_destination(persona, "early", early.url, segments=["buyers"], by="test")
        ingest(persona, buy("ann@example.com", "a1", 10, 3))  # a change the first has yet to be sent
        destinations.add_destination(persona, "late", hook.url, segments=["buyers"], by="test")
        destinations.deliver(persona)
        assert [r.doc["profile_id"] for r in early.wait(1)] == [pid(persona, "ann@example.com")]
    (backfill,) = hook.wait(1)  # her, once: as a member now, not also as the change before it was added
    assert (backfill.doc["type"], backfill.doc["profile_id"]) == ("entered", pid(persona, "ann@example.com"))
    ingest(persona, buy("bob@example.com", "b1", 10, 3))
    destinations.deliver(persona)
    assert [r.doc["profile_id"] for r in hook.wait(2)] == [pid(persona, "ann@example.com"),
                                                          pid(persona, "bob@example.com")]


def test_the_command_line_adds_shows_delivers_retries_and_removes(persona: Persona, hook: Receiver) -> None:
    from click.testing import CliRunner

    from persona.cli import cli

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--data", str(persona.settings.data_dir), *args], catch_exceptions=False)

    assert run("segments", "add", "buyers", "frequency >= 1").exit_code == 0
    bad = run("destinations", "add", "ftp://example.com/x", "--segments", "buyers")
    assert bad.exit_code == 2 and "http:// or https://" in bad.output
    made = run("destinations", "add", hook.url, "--segments", "buyers", "--fields", "monetary,country", "--json")
    assert made.exit_code == 0, made.output
    doc = orjson.loads(made.stdout)
    assert doc["name"] == "127-0-0-1" or doc["name"].startswith("d-127")
    assert doc["secret"].startswith("whsec_") and doc["fields"] == ["monetary", "country"]
    name = doc["name"]
    hook.answers = [500] * destinations.MAX_ATTEMPTS
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    delivered = run("destinations", "deliver")
    assert delivered.exit_code == 0 and "1 sent: 0 delivered, 1 failed" in delivered.output
    moment = datetime.now(UTC)
    for seconds in destinations.RETRY_S:
        moment += timedelta(seconds=seconds + 1)
        destinations.send_due(persona, now=moment)
    shown = orjson.loads(run("destinations", "status", "--json").stdout)
    assert shown[0]["deliveries"]["dead"] == 1 and shown[0]["dead_letters"][0]["outcome"] == "HTTP 500"
    text = run("destinations", "status", name).output
    assert "1 dead" in text and "dead letter" in text and "HTTP 500" in text
    assert "1 dead letter of" in run("destinations", "retry", name).output
    assert "1 delivered" in run("destinations", "deliver").output
    held = run("destinations", "remove", name)  # it holds ann now: her erasure could not reach it
    assert held.exit_code == 1 and "holds 1 people's data" in held.output
    rotated = run("destinations", "update", name, "--rotate-secret")
    assert rotated.exit_code == 0 and rotated.stdout.startswith("whsec_") and rotated.stdout.strip() != doc["secret"]
    assert secret_of(persona, name).decode() == rotated.stdout.strip()
    assert "removed destination" in run("destinations", "remove", name, "--forget").output
    assert "no destinations" in run("destinations", "status").output
    missing = run("destinations", "remove", name)
    assert missing.exit_code == 1 and "no destination of that name" in missing.output
    kinds = [r[3] for r in persona.recorder.audit_rows(limit=1000)]
    assert {"destinations add", "destinations deliver", "destinations retry", "destinations update",
            "destinations remove"} <= set(kinds)
    assert doc["secret"] not in str(persona.recorder.audit_rows(limit=1000))
    assert hook.url not in str(persona.recorder.audit_rows(limit=1000))


def test_an_erasure_during_a_send_still_notifies_and_leaves_nothing(persona: Persona, hook: Receiver,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The person is erased while their entry is on the wire: the destination that is receiving
    them is sent the deletion notice, and nothing of them is written back when the answer comes."""
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "crm", hook.url, segments=["buyers"], fields=["frequency"], by="test")
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    ann = pid(persona, "ann@example.com")
    posting = destinations._post
    receipts: list[Any] = []

    def erased_meanwhile(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str:
        outcome = posting(url, body, headers, timeout)
        if headers["Persona-Event"] == "entered":
            receipts.append(erase_subject(persona, "email", "ann@example.com", notice_wait_s=0))
        return outcome

    monkeypatch.setattr(destinations, "_post", erased_meanwhile)
    (attempt,) = destinations.deliver(persona).attempts
    assert attempt.status == "lost lease"  # its row went with her: nothing written back
    (receipt,) = receipts
    assert [n["destination"] for n in receipt.receipt["receipt"]["destinations_notified"]] == ["crm"]
    monkeypatch.setattr(destinations, "_post", posting)
    assert [a.kind for a in destinations.deliver(persona).attempts] == ["erased"]
    assert [r.doc["type"] for r in hook.wait(2)] == ["entered", "erased"]
    assert persona.recorder.received_by([ann]) == []
    verify(persona)


def test_a_leased_delivery_is_sent_by_one_sender_only(persona: Persona, hook: Receiver) -> None:
    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "crm", hook.url, segments=["buyers"], by="test")
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    destinations.enqueue(persona)
    (row,) = persona.recorder.due_deliveries(10**18, 10)
    now = int(datetime.now(UTC).timestamp() * 1e6)
    with persona.recorder.transaction():  # another sender holds it
        assert persona.recorder.lease_delivery(row.seq, now, now + 60_000_000) == 0
    assert destinations.send_due(persona) == []
    assert destinations.send_due(persona, now=datetime.now(UTC) + timedelta(seconds=61))[0].status == "delivered"
    with persona.recorder.transaction():  # the first sender's late answer changes nothing
        assert not persona.recorder.finish_delivery(row.seq, now + 60_000_000, "pending", 1, now, "HTTP 500", None)
    assert len(hook.wait(1)) == 1


def test_a_restore_neither_repeats_keys_nor_resends_every_member(persona: Persona, hook: Receiver,
                                                                tmp_path: Any) -> None:
    from persona.backup import backup, restore

    memberships.add_segment(persona, "buyers", "frequency >= 1", by="test")
    destinations.add_destination(persona, "crm", hook.url, segments=["buyers"], by="test")
    ingest(persona, buy("ann@example.com", "a1", 10, 3))
    destinations.deliver(persona)
    first = hook.wait(1)[0].headers["persona-delivery"]
    info = backup(persona, tmp_path / "b.db")
    settings = persona.settings
    persona.close()
    restore(settings, info.path)
    with Persona.open(settings) as p:
        assert destinations.deliver(p).attempts == []  # her membership was made anew, not re-sent
        ingest(p, buy("bob@example.com", "b1", 10, 3))
        assert destinations.deliver(p).delivered == 1
        second = hook.wait(2)[1]
        assert second.headers["persona-delivery"] != first and second.doc["profile_id"] == pid(p, "bob@example.com")
        verify(p)
