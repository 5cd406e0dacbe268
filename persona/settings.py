"""The only module that reads the environment. Everything else receives a Settings."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from persona.errors import ConfigurationError

DB_NAME = "persona.db"
KEY_FILE_NAME = "persona.key"
LEDGER_NAME = "erasures.jsonl"
LOCK_NAME = "persona.lock"
STAGING = ".restoring"  # the folder in the data directory where a restore prepares the backup
BACKEND_NAME = "backend.url"  # the PostgreSQL URL a data directory uses (no password: see docs/postgresql.md)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    key_file: Path
    master_key: str | None = None  # PERSONA_MASTER_KEY: "base64" or "1:base64,2:base64"
    pepper: str | None = None  # PERSONA_PEPPER: base64
    signing_key: str | None = None  # PERSONA_SIGNING_KEY: base64 Ed25519 private key
    default_region: str = "CN"  # phone numbers without a country code
    batch_size: int = 20_000  # events per ingest transaction
    ingest_memory_mb: int = 400  # PERSONA_INGEST_MEMORY_MB: an ingest drops cached states above this resident size
    max_event_bytes: int = 64 * 1024  # a larger record is quarantined
    quarantine_days: int = 30  # quarantined records are purged after this many days
    max_future_s: int = 24 * 3600  # occurred_at may be at most this far ahead of now
    snapshot_every: int = 100  # events of a stream between snapshots of its projections
    api_dev: bool = False  # PERSONA_API_DEV=1: the server offers GraphiQL to browsers
    cors_origins: tuple[str, ...] = ()  # PERSONA_CORS_ORIGINS, comma-separated: browser origins that may call the API
    database_url: str | None = None  # PERSONA_DATABASE_URL or DIR/backend.url: PostgreSQL; None: SQLite
    purge_window_s: int = 15 * 60  # PERSONA_PURGE_WINDOW: one physical purge serves the erasures of this many seconds
    progress_s: float = 10.0  # PERSONA_PROGRESS_S: seconds between progress lines when stderr is no terminal
    segment_sweep_s: float = 60.0  # PERSONA_SEGMENT_SWEEP: how often the server sweeps segments the clock moves
    segment_changes_days: int = 7  # PERSONA_SEGMENT_CHANGES_DAYS: segment entries and exits kept this long
    answer_cache_mb: int = 64  # PERSONA_ANSWER_CACHE_MB: profile answers a server worker keeps (0: none)
    answer_cache_s: float = 10.0  # PERSONA_ANSWER_CACHE_S: how long a kept answer lives (its clock values' age)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def backend_path(self) -> Path:
        return self.data_dir / BACKEND_NAME

    @property
    def backend(self) -> str:
        return "sqlite" if self.database_url is None else "postgresql"

    @property
    def ledger_path(self) -> Path:
        """The erasure ledger lives beside the key file, not in the database."""
        return self.key_file.parent / LEDGER_NAME

    @property
    def keys_from_env(self) -> bool:
        return any((self.master_key, self.pepper, self.signing_key))

    @classmethod
    def load(cls, data_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        chosen = data_dir or env.get("PERSONA_DATA")
        if not chosen:
            raise ConfigurationError("no data directory: pass --data DIR or set PERSONA_DATA")
        root = Path(chosen).expanduser()
        key_file = Path(env.get("PERSONA_KEY_FILE") or root / KEY_FILE_NAME).expanduser()
        database_url = env.get("PERSONA_DATABASE_URL") or None
        if database_url is None and (root / BACKEND_NAME).is_file():
            database_url = (root / BACKEND_NAME).read_text().strip() or None
        return cls(
            data_dir=root,
            key_file=key_file,
            master_key=env.get("PERSONA_MASTER_KEY") or None,
            pepper=env.get("PERSONA_PEPPER") or None,
            signing_key=env.get("PERSONA_SIGNING_KEY") or None,
            default_region=env.get("PERSONA_DEFAULT_REGION", "CN"),
            batch_size=_positive(env, "PERSONA_BATCH_SIZE", 20_000),
            ingest_memory_mb=_positive(env, "PERSONA_INGEST_MEMORY_MB", 400),
            quarantine_days=_positive(env, "PERSONA_QUARANTINE_DAYS", 30),
            snapshot_every=_positive(env, "PERSONA_SNAPSHOT_EVERY", 100),
            purge_window_s=_positive(env, "PERSONA_PURGE_WINDOW", 15 * 60),
            progress_s=_seconds(env, "PERSONA_PROGRESS_S", 10.0),
            segment_sweep_s=_seconds(env, "PERSONA_SEGMENT_SWEEP", 60.0),
            segment_changes_days=_positive(env, "PERSONA_SEGMENT_CHANGES_DAYS", 7),
            answer_cache_mb=_whole(env, "PERSONA_ANSWER_CACHE_MB", 64),
            answer_cache_s=_seconds(env, "PERSONA_ANSWER_CACHE_S", 10.0),
            api_dev=env.get("PERSONA_API_DEV") == "1",
            cors_origins=cors_origins(env.get("PERSONA_CORS_ORIGINS", "").split(",")),
            database_url=database_url,
        )

    def export(self) -> None:
        """Hand these settings to child processes (the server's workers) through the environment."""
        os.environ["PERSONA_DATA"] = str(self.data_dir.resolve())
        os.environ["PERSONA_KEY_FILE"] = str(self.key_file.resolve())
        os.environ["PERSONA_API_DEV"] = "1" if self.api_dev else "0"
        os.environ["PERSONA_CORS_ORIGINS"] = ",".join(self.cors_origins)
        os.environ["PERSONA_SEGMENT_SWEEP"] = str(self.segment_sweep_s)
        os.environ["PERSONA_ANSWER_CACHE_MB"] = str(self.answer_cache_mb)
        os.environ["PERSONA_ANSWER_CACHE_S"] = str(self.answer_cache_s)
        if self.database_url:
            os.environ["PERSONA_DATABASE_URL"] = self.database_url


_ORIGIN = re.compile(r"https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")


def cors_origins(given: Iterable[str]) -> tuple[str, ...]:
    """Browser origins allowed to call the API, each exactly scheme://host[:port] (what a browser
    sends in Origin: no path, no wildcard — a `*` would let any page use a token it holds)."""
    out = []
    for text in given:
        origin = text.strip().rstrip("/").lower()
        if not origin:
            continue
        if not _ORIGIN.fullmatch(origin):
            raise ConfigurationError(f"a CORS origin is scheme://host[:port], e.g. https://shop.example,"
                                     f" not {origin!r}")
        out.append(origin)
    return tuple(dict.fromkeys(out))


def _whole(env: Mapping[str, str], name: str, default: int, *, least: int = 0) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    if not text.strip().isdigit() or int(text) < least:
        raise ConfigurationError(f"{name} must be a positive whole number" if least else
                                 f"{name} must be a whole number (0 or more)")
    return int(text)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, least=1)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds")
    return seconds
