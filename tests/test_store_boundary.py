"""The store package is a leaf, and the database drivers stop at its boundary."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from persona.errors import StoreBusyError, StoreDamagedError, StoreError
from persona.store.sqlite import SQLiteRecorder, read_meta

PACKAGE = Path(__file__).resolve().parent.parent / "persona"
DRIVERS = ("sqlite3", "sqlite_utils", "psycopg", "psycopg_pool")


def imports(path: Path) -> set[str]:
    """Every module a file imports, wherever in it (in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_no_module_outside_the_store_imports_a_database_driver() -> None:
    assert "sqlite3" in imports(PACKAGE / "store" / "sqlite.py"), "the positive control: a driver import is seen"
    outside = {str(path.relative_to(PACKAGE)): sorted(name for name in imports(path)
                                                      if name.split(".")[0] in DRIVERS)
               for path in PACKAGE.rglob("*.py") if "store" not in path.relative_to(PACKAGE).parts}
    assert {path: names for path, names in outside.items() if names} == {}


def test_a_file_that_is_not_a_database_is_a_damaged_store(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StoreDamagedError, match="not a database"):
        SQLiteRecorder(path)
    with pytest.raises(StoreError):
        read_meta(path)


def test_a_write_lock_held_past_the_wait_is_a_busy_store(tmp_path: Path) -> None:
    path = tmp_path / "persona.db"
    SQLiteRecorder(path, create=True).close()
    other = sqlite3.connect(path, isolation_level=None)
    store = SQLiteRecorder(path, busy_timeout_ms=50)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusyError, match="locked"), store.transaction():
            pass
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_an_error_raised_inside_a_transaction_passes_through_as_it_is(tmp_path: Path) -> None:
    """The boundary translates the store's own errors, not its callers' (which it only sees pass)."""
    store = SQLiteRecorder(tmp_path / "persona.db", create=True)
    try:
        raised = sqlite3.OperationalError("raised by the caller")
        with pytest.raises(sqlite3.OperationalError) as info, store.transaction():
            raise raised
        assert info.value is raised
        assert not store.in_transaction()
    finally:
        store.close()
