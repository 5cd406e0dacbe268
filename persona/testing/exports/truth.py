"""truth.json: what a perfect system would conclude from the exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona.pseudonyms import normalise
from persona.testing.exports.files import Out
from persona.testing.exports.people import APP, CHANNELS, NAMESPACES, SHOP, SOCIAL, WEB, Options, Person
from persona.testing.exports.spellings import money


# -- truth ---------------------------------------------------------------------------------------------
def truth_of(person: Person) -> dict[str, Any]:
    order = {ns: n for n, ns in enumerate(NAMESPACES)}
    identifiers = sorted(((ns, normalise(ns, raw)) for ns, raw in person.seen), key=lambda p: order[p[0]])
    return {
        "person": f"p{person.index + 1:05d}",
        "identifiers": [list(pair) for pair in identifiers],
        "orders": person.records.get("shop", 0),
        "spend": {c: money(person.spend[c]) for c in sorted(person.spend)},
        "channels": [c for c in CHANNELS if person.records.get(c)],
        "records": {c: person.records[c] for c in CHANNELS if person.records.get(c)},
    }


def write_truth(directory: Path, options: Options, people: list[Person], outs: dict[str, Out]) -> None:
    head: dict[str, Any] = {
        "generator": "persona.synth",
        "seed": options.seed,
        "arguments": {"people": options.people, "start": options.start.isoformat(), "days": options.days,
                      "orders_per_person": options.orders_per_person, "scale_events": options.scale_events},
        "files": {name: out.stats() for name, out in outs.items()},
        "expected_ingest": {name: {"events": out.events, "duplicates": out.duplicate_events,
                                   "quarantined": len(out.bad)} for name, out in outs.items()},
        "bad_rows": {name: [line for line, _ in out.bad] for name, out in outs.items()},
        "bad_row_kinds": {name: {str(line): kind for line, kind in out.bad} for name, out in outs.items()},
        "duplicates": {SHOP: {"exact": outs[SHOP].duplicates, "reformatted": outs[SHOP].reformatted},
                       **{name: {"exact": outs[name].duplicates} for name in (SOCIAL, WEB, APP)}},
        "late": {name: outs[name].late for name in (WEB, APP)},
    }
    with (directory / "truth.json").open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("{\n")  # one key, or one person, per line: readable, and diffs stay small
        for key, value in head.items():
            handle.write(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
        handle.write(' "people": [\n')
        for n, person in enumerate(people):
            handle.write("  " + json.dumps(truth_of(person), ensure_ascii=False))
            handle.write(",\n" if n + 1 < len(people) else "\n")
        handle.write(" ]\n}\n")
