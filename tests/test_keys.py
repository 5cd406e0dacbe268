from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from persona import Persona, Settings
from persona.crypto import Keyring, Sealer
from persona.errors import ConfigurationError, KeyMismatchError, TamperError
from persona.pseudonyms import normalise, subject_hash
from tests.conftest import event, store_bytes


def test_init_writes_a_private_key_file_and_no_key_in_the_database(settings: Settings) -> None:
    with Persona.init(settings) as persona:
        db = store_bytes(persona)
    mode = stat.S_IMODE(settings.key_file.stat().st_mode)
    assert mode == 0o600
    ring = Keyring.read(settings.key_file)
    db = db.replace(settings.key_file.read_bytes(), b"")  # the key file itself is allowed its keys
    for secret in (*ring.keks.values(), ring.pepper):
        assert secret not in db
        assert base64.b64encode(secret) not in db


def test_init_refuses_an_existing_database(settings: Settings) -> None:
    Persona.init(settings).close()
    with pytest.raises(ConfigurationError, match="already holds"):
        Persona.init(settings)


def test_open_without_keys_says_how_to_get_them(settings: Settings) -> None:
    Persona.init(settings).close()
    settings.key_file.unlink()
    with pytest.raises(ConfigurationError, match="persona --data DIR init"):
        Persona.open(settings)


def test_wrong_key_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    Persona.init(settings).close()
    Keyring.generate().write(settings.key_file)
    with pytest.raises(KeyMismatchError):
        Persona.open(settings)


def test_keys_from_environment(tmp_path: Path) -> None:
    env = {
        "PERSONA_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "PERSONA_PEPPER": base64.b64encode(os.urandom(32)).decode(),
        "PERSONA_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    settings = Settings.load(tmp_path / "d", env=env)
    with Persona.init(settings) as p:
        p.log.append([event()])
    assert not settings.key_file.exists()
    with Persona.open(settings) as p:
        pid = p.log.profile_for("email", "alice@example.com")
        assert pid is not None and len(p.log.read(pid)) == 1
        with pytest.raises(ConfigurationError, match="PERSONA_MASTER_KEY"):
            p.rotate_keys()
    partial = Settings.load(tmp_path / "d", env={"PERSONA_MASTER_KEY": env["PERSONA_MASTER_KEY"]})
    with pytest.raises(ConfigurationError, match="missing PERSONA_PEPPER"):
        Persona.open(partial)


def test_versioned_master_key_from_environment() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = Keyring.from_env(
        f"1:{base64.b64encode(k1).decode()},2:{base64.b64encode(k2).decode()}",
        base64.b64encode(os.urandom(32)).decode(),
        base64.b64encode(os.urandom(32)).decode(),
    )
    assert ring.current == 2 and ring.keks == {1: k1, 2: k2}
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Keyring.from_env(base64.b64encode(b"short").decode(), "AA==", "AA==")


def test_wrap_binds_the_profile_id() -> None:
    ring = Keyring.generate()
    dek = ring.new_dek()
    version, wrapped = ring.wrap("prf_a", dek)
    assert ring.unwrap("prf_a", version, wrapped) == dek
    with pytest.raises(TamperError):
        ring.unwrap("prf_b", version, wrapped)  # a key moved to another profile does not open


def test_sealer_rejects_other_header_and_flipped_bytes() -> None:
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal(b"payload", b"header-1", os.urandom(12))
    assert sealer.open(sealed, b"header-1") == b"payload"
    with pytest.raises(TamperError):
        sealer.open(sealed, b"header-2")
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(TamperError):
        sealer.open(bytes(flipped), b"header-1")


def test_rotate_rewraps_every_key_and_leaves_events_untouched(persona: Persona) -> None:
    persona.log.append([event(f"u{i}@example.com", event_id=f"e{i}") for i in range(20)])
    before_events = persona.recorder.read_all(0, 1000)
    before_keys = {pid: bytes(w) for pid, _, w in persona.recorder.wrapped_keys()}
    result = persona.rotate_keys()
    assert result == {"kek_version": 2, "rewrapped": 20}
    after_keys = {pid: (v, bytes(w)) for pid, v, w in persona.recorder.wrapped_keys()}
    assert all(v == 2 and w != before_keys[pid] for pid, (v, w) in after_keys.items())
    assert persona.recorder.read_all(0, 1000) == before_events  # not one event byte changed
    ring = Keyring.read(persona.settings.key_file)
    assert set(ring.keks) == {1, 2}  # old versions stay: older backups must still restore
    settings = persona.settings
    persona.close()
    with Persona.open(settings) as reopened:
        for i in range(20):
            pid = reopened.log.profile_for("email", f"u{i}@example.com")
            assert pid is not None
            assert reopened.log.read(pid)[0].event_id == f"e{i}"
        reopened.log.append([event("new@example.com", event_id="after-rotation")])
        assert reopened.quarantine_sealer()  # system keys were re-wrapped too


def test_pseudonyms_are_keyed_and_normalised() -> None:
    pepper, other = os.urandom(32), os.urandom(32)
    a = subject_hash(pepper, "email", normalise("email", " Bob@Example.com"))
    b = subject_hash(pepper, "email", normalise("email", "bob@example.com"))
    assert a == b
    assert subject_hash(other, "email", "bob@example.com") != a  # without the pepper, no link
    assert subject_hash(pepper, "cookie", "bob@example.com") != a  # namespaces do not collide
