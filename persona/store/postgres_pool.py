"""Connections to PostgreSQL: one pool per database and process, what a URL names (without its
password), and how psycopg's errors become persona's (without PostgreSQL's DETAIL line)."""

from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from persona.errors import ConfigurationError, StoreError
from persona.store.boundary import store_error

POOL_SIZE = 16  # connections per process and database: one per open store (thread), and the API's few

_pools: dict[tuple[int, str], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool_for(url: str) -> ConnectionPool:
    """One pool per database and process (a forked child makes its own: sockets are not shared)."""
    key = (os.getpid(), url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = ConnectionPool(url, min_size=1, max_size=POOL_SIZE, open=False, name="persona",
                                  check=ConnectionPool.check_connection,  # a dropped connection is replaced
                                  kwargs={"autocommit": True, "application_name": "persona"})
            try:
                pool.open(wait=True, timeout=10)
            except Exception as e:  # the message names the server, never the password
                pool.close()
                raise ConfigurationError(f"cannot connect to PostgreSQL ({where(url)}): {type(e).__name__}") from None
            _pools[key] = pool
        return pool


def is_database_error(error: BaseException) -> bool:
    return isinstance(error, (psycopg.Error, PoolTimeout))


def translate(error: BaseException) -> StoreError | None:
    """persona's error for one of psycopg's: its message without the DETAIL line (describe_error)."""
    if not is_database_error(error):
        return None
    return store_error(describe_error(error),
                       busy=isinstance(error, PoolTimeout | pg_errors.LockNotAvailable),
                       conflict=isinstance(error, pg_errors.DeadlockDetected),
                       damaged=isinstance(error, pg_errors.DataCorrupted | pg_errors.IndexCorrupted))


def describe_error(error: BaseException) -> str:
    """What went wrong, without the DETAIL line: PostgreSQL puts the row's values there
    ("Key (k)=(...) already exists", "Failing row contains (...)")."""
    if isinstance(error, psycopg.Error) and error.diag.message_primary:
        return f"{type(error).__name__}: {error.diag.message_primary}"
    return type(error).__name__


def close_pool(url: str) -> None:
    """Close this process's pool for a database (its connections end)."""
    with _pools_lock:
        pool = _pools.pop((os.getpid(), url), None)
    if pool is not None:
        pool.close()


def where(url: str) -> str:
    """host:port/database of a URL, without user or password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable URL"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def is_postgres_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("postgresql://", "postgres://"))


def without_password(url: str) -> tuple[str, bool]:
    """The URL with any password taken out (of its user part or its query), and whether it had
    one. Hosts are left as written: IPv6 literals and lists of hosts stay intact."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    had = at != "" and ":" in userinfo
    if had:
        userinfo = userinfo.split(":", 1)[0]
    query = parts.query.split("&") if parts.query else []
    kept = [item for item in query if unquote(item.partition("=")[0]) != "password"]  # the rest as written
    had = had or len(kept) != len(query)
    netloc = (userinfo + "@" if at else "") + hosts
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(kept))), had
