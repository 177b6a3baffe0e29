"""The export's two charts: the monitored parameters day by day, and how complete
each source channel's readings were in each month.

Drawn on a bare ``Figure`` with the Agg renderer (no pyplot, no display, no global
backend switch), at a fixed size and resolution, and saved without the PNG
``Software`` entry, so the same figures give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.collections import PolyCollection
from matplotlib.dates import DateFormatter, date2num
from matplotlib.figure import Figure

from processing.export.chart_sizes import DPI, completeness_inches, daily_values_inches
from processing.export.period_figures import PeriodFigures

BAR = "#2f6f9f"


def _save(fig: Figure, path: Path) -> Path:
    # the whole figure, whatever a matplotlibrc says: its ``savefig.bbox: tight`` crops the PNG to what is
    # drawn, a size that depends on the fonts, and ``jcm verify`` checks the size ``chart_sizes`` gives
    with rc_context({"savefig.bbox": None}):
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _title(figures: PeriodFigures, what: str) -> str:
    flag = "  [SIMULATED DATA]" if figures.simulated else ""
    return f"{figures.site.site}: {what}, {figures.first}..{figures.last}{flag}"


def _total(value: float) -> str:
    """A period total for a title: in full to the thousandth, or, past any meter's figure (the period
    then cannot be computed), in 6 significant digits: 300 of them made a title wider than the chart,
    which matplotlib could not lay out (a warning on the operator's terminal)."""
    return f"{value:,.3f}" if abs(value) < 1e15 else f"{value:.6g}"


def _bars(ax, days, values: np.ndarray) -> None:
    """One bar per day, 0.8 of a day wide, as ``ax.bar`` draws them, but as one collection:
    a patch per bar made a year's chart cost more than the rest of the export but the raw
    readings (its data limits were updated bar by bar)."""
    drawn = ~np.isnan(values)  # ``bar`` draws nothing for a missing value, nor counts its day in the limits
    x, top = date2num(list(days))[drawn], values[drawn]
    left, right, base = x - 0.4, x + 0.4, np.zeros(len(x))
    bars = PolyCollection(np.stack([np.c_[left, base], np.c_[left, top], np.c_[right, top], np.c_[right, base]], 1),
                          facecolors=BAR, edgecolors="none", linewidths=0)
    bars.sticky_edges.y.append(0)  # the axis starts at the bars' base, as for ``bar``
    ax.xaxis_date()
    ax.add_collection(bars, autolim=True)
    ax.autoscale_view()


def daily_values_chart(figures: PeriodFigures, path: Path) -> Path:
    """One bar panel per monitored methodology parameter (per unit), one bar per day."""
    keys = sorted(figures.parameters)
    daily = figures.daily[figures.daily["key"].isin(keys)]
    fig = Figure(figsize=daily_values_inches(len(keys)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        rows = daily[daily["key"] == key].sort_values("day")
        _bars(ax, rows["day"], rows["value"].to_numpy(dtype=float))
        ax.set_title(f"{key}: period total {_total(figures.parameters[key])} {rows['unit'].iloc[0]}", loc="left",
                     fontsize=9)
        ax.set_ylabel(rows["unit"].iloc[0])
        ax.grid(axis="y", alpha=0.3)
    axes[-1].xaxis.set_major_formatter(DateFormatter("%m-%d"))
    fig.suptitle(_title(figures, "daily values of the monitored parameters"), fontsize=11)
    return _save(fig, path)


def completeness_chart(figures: PeriodFigures, path: Path) -> Path:
    """Horizontal bars: per source channel, one bar per month, with the review and fail
    thresholds of the site's quality settings."""
    months = sorted(figures.completeness)
    sources = sorted({s for by_source in figures.completeness.values() for s in by_source})
    height = 0.8 / max(1, len(months))
    fig = Figure(figsize=completeness_inches(len(sources), len(months)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for i, month in enumerate(months):
        values = [100 * figures.completeness[month].get(s, 0.0) for s in sources]
        positions = [j - 0.4 + height * (i + 0.5) for j in range(len(sources))]
        ax.barh(positions, values, height=height, label=month)
    quality = figures.site.quality
    ax.axvline(100 * quality.completeness_review, color="#d08000", linestyle="--", linewidth=1,
               label=f"review below {quality.completeness_review:.0%}")
    ax.axvline(100 * quality.completeness_fail, color="#c00000", linestyle="--", linewidth=1,
               label=f"fails below {quality.completeness_fail:.0%}")
    ax.set_yticks(range(len(sources)), sources, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("readings present, % of the recording intervals of the whole month")
    ax.legend(loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(_title(figures, "completeness per source channel and month"), fontsize=11)
    return _save(fig, path)
