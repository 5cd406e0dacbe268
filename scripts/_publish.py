"""Publishing a benchmark: its JSON beside docs/benchmarks.md, and its own section of that file
(between `<!-- NAME:begin -->` and `<!-- NAME:end -->`), the other sections left as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def machine(extra: str | None = None) -> str:
    """The machine a benchmark ran on, as every report names it."""
    import os
    import platform
    import sqlite3

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            + (extra if extra is not None else f"SQLite {sqlite3.sqlite_version}"))


def cell(d: dict[str, float], fmt: str) -> str:
    """A median, with its min–max when there were several runs."""
    if d.get("runs", 2) == 1:
        return format(d["median"], fmt)
    return f"{format(d['median'], fmt)} ({format(d['min'], fmt)}–{format(d['max'], fmt)})"


def publish(out: Path, name: str, result: Any, text: str, *, first: bool = False) -> None:
    """first: a section new to the file goes right under its title, not at the end."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"benchmarks-{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    doc = out / "benchmarks.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = doc.read_text() if doc.exists() else "# Benchmarks\n\nProduced by the scripts in `scripts/`; " \
        "never edited by hand.\n"
    if begin not in current and first:
        title, sep, body = current.partition("\n<!-- ")
        current = title.rstrip("\n") + "\n\n" + begin + "\n" + end + "\n" + (sep.lstrip("\n") + body if sep else "")
    elif begin not in current:
        current = current.rstrip("\n") + "\n\n" + begin + "\n" + end + "\n"
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    doc.write_text(head + begin + "\n" + text + end + tail)
