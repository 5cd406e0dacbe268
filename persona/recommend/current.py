"""The recommendations read model kept current as events arrive (issue 24, item 4).

Each person's stored list (`persona.recommend.serve.score_everyone`) is made once per batch; the
index refresh that follows every ingest then keeps it honest in the same commit: an item the
person has bought leaves their list at once, and a person who withdraws personalization consent
loses the list altogether. Nothing here loads a model: ingest stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from persona.core import Persona
from persona.recommend import NAME

PURPOSE = "personalization"


def serving(persona: Persona) -> bool:
    """Whether a recommender serves (else there is no list to keep)."""
    return any(row[3] == "promoted" for row in persona.recorder.model_rows(NAME))


def follow(persona: Persona, people: Sequence[tuple[str, list[Any], bool]]) -> int:
    """For (person, their behaviour facts, personalization withdrawn) just refreshed, inside the
    refresh's transaction: drop what each has bought from their list, or the list of one who said
    no. Returns the rows changed."""
    if not people or not serving(persona):
        return 0
    # only those who ever bought or said no can have a list to change: the others are not read
    wanted = {pid: (facts, withdrawn) for pid, facts, withdrawn in people
              if withdrawn or any(f[2] == "o" for f in facts)}
    rec = persona.recorder
    changed = 0
    for pid, model, version, at, doc in rec.predictions_of(sorted(wanted), NAME):
        facts, withdrawn = wanted[pid]
        if withdrawn:
            rec.drop_prediction(pid, model)
            changed += 1
            continue
        bought = {sku for f in facts if f[2] == "o" for sku in f[5]}
        if not bought:
            continue
        found = orjson.loads(doc)
        kept = [item for item in found["items"] if item[0] not in bought]  # [sku, category, score, reasons]
        if len(kept) < len(found["items"]):
            rec.put_predictions([(pid, model, version, at, orjson.dumps({**found, "items": kept}).decode())])
            changed += 1
    return changed
