"""The prediction tasks: what each predicts, from which window, and the naive guesses it must beat."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from persona.errors import ValidationError
from persona.models.dataset import Row

Kind = Literal["regression", "classification", "multiclass"]
DEFAULT_HORIZON = timedelta(days=91)
MAX_HORIZON_DAYS = 3650
_WINDOWED = {"purchases_next": "regression", "churn": "classification", "clv": "regression"}
_PLAIN = {"days_to_next_purchase": "regression", "next_category": "multiclass"}
_NAME = re.compile(r"^(purchases_next|churn|clv)_(\d+)([dw])$")
FAMILIES = ("purchases_next_{H}d", "churn_{H}d", "clv_{H}d", "days_to_next_purchase", "next_category")


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    kind: Kind
    horizon: timedelta

    @property
    def horizon_days(self) -> float:
        return self.horizon.total_seconds() / 86_400

    def labels(self, rows: Sequence[Row]) -> tuple[list[Row], NDArray[np.float64] | NDArray[np.str_]]:
        """The rows this task can learn from and their labels (taken only from (cutoff, cutoff + H])."""
        if self.family == "purchases_next":
            return list(rows), np.array([r.orders_after for r in rows], dtype=np.float64)
        if self.family == "churn":
            return list(rows), np.array([1.0 if r.orders_after == 0 else 0.0 for r in rows], dtype=np.float64)
        if self.family == "clv":
            return list(rows), np.array([r.spend_after for r in rows], dtype=np.float64)
        if self.family == "days_to_next_purchase":  # those who bought again within the horizon
            kept = [r for r in rows if r.days_to_next is not None]
            return kept, np.array([r.days_to_next for r in kept], dtype=np.float64)
        kept = [r for r in rows if r.next_category is not None]  # next_category
        return kept, np.array([r.next_category for r in kept], dtype=np.str_)


def parse_horizon(text: str) -> timedelta:
    """`91d` or `13w`."""
    match = re.fullmatch(r"\s*(\d+)\s*([dw])\s*", text or "")
    if match is None or int(match.group(1)) <= 0:
        raise ValidationError("horizon: write it as days or weeks, e.g. 91d or 13w")
    days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
    if days > MAX_HORIZON_DAYS:
        raise ValidationError(f"horizon: at most {MAX_HORIZON_DAYS} days")
    return timedelta(days=days)


def parse_task(name: str, horizon: str | None = None) -> Task:
    """A task by its model name (`purchases_next_91d`, `churn_30d`, `clv_182d`,
    `days_to_next_purchase`, `next_category`); --horizon may restate a windowed name's window
    (it must agree) or set the others' (default 91 days)."""
    given = parse_horizon(horizon) if horizon else None
    match = _NAME.match(name)
    if match is not None:
        family, n, unit = match.groups()
        window = parse_horizon(n + unit)
        if given is not None and given != window:
            raise ValidationError(f"horizon: {name} names its own window ({window.days}d)")
        return Task(name, family, _WINDOWED[family], window)  # type: ignore[arg-type]
    if name in _PLAIN:
        return Task(name, name, _PLAIN[name], given or DEFAULT_HORIZON)  # type: ignore[arg-type]
    raise ValidationError("name: not a prediction task; one of " + ", ".join(FAMILIES))
