"""The size of each of the export's charts: ``charts`` draws them at it, and ``jcm verify`` checks
their PNGs against it without loading matplotlib. A fixed width; a height growing with what
each shows (the daily values: a panel per monitored parameter; completeness: a bar per source
channel and month)."""

from __future__ import annotations

DPI = 100
WIDTH_IN = 10.0


def daily_values_inches(parameters: int) -> tuple[float, float]:
    """The daily values' chart's width and height [in] for ``parameters`` panels."""
    return WIDTH_IN, 1.0 + 1.9 * parameters


def completeness_inches(sources: int, months: int) -> tuple[float, float]:
    """The completeness chart's width and height [in] for ``sources`` channels over ``months`` months."""
    return WIDTH_IN, 1.6 + 0.45 * sources * max(1, months) ** 0.5


def pixels(inches: tuple[float, float]) -> tuple[int, int]:
    """The width and height [px] of the PNG of a chart ``inches`` [in] in size, at ``DPI``: each truncated,
    as matplotlib's Agg renderer makes its canvas."""
    return int(inches[0] * DPI), int(inches[1] * DPI)
