"""persona.caches.forget_caches: the one place that knows every cache of personal data."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona import Persona, Settings
from persona.caches import forget_caches
from persona.ingest.jsonl import ingest_jsonl
from persona.pseudonyms import admit, normalise
from tests.conftest import jsonl, record


def test_forget_caches_drops_identifiers_keys_and_what_it_is_given(tmp_path: Path) -> None:
    normalise("email", "someone@example.com")
    admit("email", "someone@example.com")
    assert normalise.cache_info().currsize and admit.cache_info().currsize
    cleared: list[str] = []
    with Persona.init(Settings.load(tmp_path / "data", env={})) as persona:
        ingest_jsonl(persona, jsonl(record("someone@example.com", event_id="1")).splitlines(), origin="test")
        assert persona.log._sealers  # the person's key, unwrapped: for reads,
        assert [tip[3] for tip in persona.log._tips.values()]  # and as the writer's tip holds it
        forget_caches(persona, also=(lambda: cleared.append("projector"), lambda: cleared.append("plans")))
        assert not persona.log._sealers and not persona.log._tips
    assert normalise.cache_info().currsize == 0 and admit.cache_info().currsize == 0
    assert cleared == ["projector", "plans"]


def test_an_erasure_keeps_the_process_identifier_caches_for_its_server_to_drop() -> None:
    """What an erasure drops itself (its store's keys) and what it leaves to a server that sees it
    (tests/test_api_hardening.py: an erasure elsewhere empties the server's caches)."""
    normalise("email", "other@example.com")
    forget_caches(identifiers=False)
    assert normalise.cache_info().currsize


def test_a_writer_keeps_data_keys_not_sealers_and_reads_keep_few(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory of a long ingest: a writer's tip per stream holds the 32-byte data key (a Sealer holds
    an OpenSSL context, ≈1.6 KB), and the readers' sealers are capped."""
    from persona import eventlog

    monkeypatch.setattr(eventlog, "_SEALER_LIMIT", 5)
    with Persona.init(Settings.load(tmp_path / "data", env={})) as persona:
        lines = jsonl(*(record(f"p{n}@example.com", event_id=str(n)) for n in range(12))).splitlines()
        ingest_jsonl(persona, lines, origin="test")
        tips = persona.log._tips
        assert len(tips) == 12 and all(isinstance(tip[3], bytes) and len(tip[3]) == 32 for tip in tips.values())
        for pid in tips:  # every stream read back: each read opens with its own key, the cache stays small
            assert [event.event_id for event in persona.log.read(pid)]
            assert len(persona.log._sealers) <= 5
