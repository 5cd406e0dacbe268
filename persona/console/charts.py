"""Charts as SVG drawn on the server: bars, a grid and a funnel, each with a text alternative.

The page's Content-Security-Policy allows no script and no inline style, so a chart is plain
markup: rectangles placed here, coloured by CSS classes from the console's stylesheet, each
with a <title> naming its value for a screen reader and a pointer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str  # as shown
    negative: bool = False


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[float, str]]  # (x, text) under the axis
    summary: str  # the text alternative: what the chart shows, in one sentence
    baseline: float  # y of the axis


def columns(values: Sequence[float], labels: Sequence[str], *, summary: str, width: int = 480, height: int = 140,
            label_every: int = 1, shown: Sequence[str] | None = None) -> Chart:
    """Vertical bars, one per value (a histogram, counts per hour or weekday)."""
    top = max((abs(v) for v in values), default=0.0) or 1.0
    axis = height - 18.0
    slot = width / max(len(values), 1)
    bars, ticks = [], []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = (axis - 4) * abs(value) / top
        text = shown[i] if shown is not None else _number(value)
        bars.append(Bar(i * slot + slot * 0.1, axis - h, slot * 0.8, h, label, text, value < 0))
        if i % label_every == 0:
            ticks.append((i * slot + slot / 2, label))
    return Chart(width, height, bars, ticks, summary, axis)


def rows(values: Sequence[float], labels: Sequence[str], *, summary: str, width: int = 480,
         shown: Sequence[str] | None = None, row: int = 22) -> Chart:
    """Horizontal bars from a middle line, one per value: signed values (contributions to a
    prediction) go left or right of it; others all go right."""
    signed = any(v < 0 for v in values)
    top = max((abs(v) for v in values), default=0.0) or 1.0
    label_w = 170.0
    span = width - label_w - 70
    zero = label_w + (span / 2 if signed else 0)
    reach = span / 2 if signed else span
    bars = []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        w = reach * abs(value) / top
        x = zero - w if value < 0 else zero
        text = shown[i] if shown is not None else _number(value)
        bars.append(Bar(x, i * row + 3, max(w, 1.0), row - 6, label, text, value < 0))
    return Chart(width, max(len(values), 1) * row, bars, [], summary, zero)


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
