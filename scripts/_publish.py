"""Publishing a benchmark: its JSON beside docs/benchmarks.md, and its own section of that file
(between `<!-- NAME:begin -->` and `<!-- NAME:end -->`), the other sections left as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def publish(out: Path, name: str, result: Any, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"benchmarks-{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    doc = out / "benchmarks.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = doc.read_text() if doc.exists() else "# Benchmarks\n\nProduced by the scripts in `scripts/`; " \
        "never edited by hand.\n"
    if begin not in current:
        current = current.rstrip("\n") + "\n\n" + begin + "\n" + end + "\n"
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    doc.write_text(head + begin + "\n" + text + end + tail)
