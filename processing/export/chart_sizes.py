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


def pixels(inches: tuple[float, float]) -> list[tuple[int, int]]:
    """The widths and heights [px] the PNG of a chart ``inches`` [in] in size may have at ``DPI``, as
    matplotlib's Agg renderer makes its canvas: releases before 3.11 truncate each, later ones first round
    up what is within 1e-8 of the next whole pixel (1.0 + 1.9 * 3 [in] is 669.9999999999999 px: 669 or
    670). The export may be drawn by either, so either is its size (one, mostly)."""
    return sorted({(int(inches[0] * DPI + e), int(inches[1] * DPI + e)) for e in (0.0, 1e-8)})
