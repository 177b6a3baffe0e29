"""Reduce a channel's readings to daily values in the site's local calendar.

Pure functions on pandas Series indexed by UTC timestamps. Each returns the daily
values and the findings that the quality checks and the audit trail need, so nothing
is changed silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd


@dataclass
class Finding:
    """Something a reviewer must see: what, where, when and how much."""

    check: str  # e.g. counter_reset, counter_jump, gap, out_of_range, calibration_overdue
    source: str  # device.channel or parameter
    severity: str  # info | review | fail
    detail: str
    start: str | None = None
    end: str | None = None
    amount: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class DailyResult:
    values: pd.Series  # index: local date, NaN where the day cannot be known
    findings: list[Finding] = field(default_factory=list)
    #: days whose value includes (or lost to a neighbour) the total of a gap the counter spans
    spanned_days: set = field(default_factory=set)


def local_days(start: dt.date, end: dt.date) -> pd.Index:
    return pd.Index(pd.date_range(start, end, freq="D").date, name="day")


def _local_date(index: pd.DatetimeIndex, zone: ZoneInfo) -> np.ndarray:
    return index.tz_convert(zone).date


def backwards_step(prev: float, cur: float, rollover: float | None) -> tuple[float, bool]:
    """What a counter that went down from ``prev`` to ``cur`` counts for the interval, and
    whether it wrapped.

    Past half its ``rollover`` to below half of it, the register wrapped and the increment
    is exact; otherwise it was reset (or the meter replaced): what accrued since the reset
    is known when it restarted near zero, the rest is not.
    """
    if rollover and prev > 0.5 * rollover and cur < 0.5 * rollover:
        return cur - prev + rollover, True
    return (cur if cur < prev * 0.01 else 0.0), False


def counter_daily(values: pd.Series, zone: ZoneInfo, days: pd.Index, source: str, rollover: float | None = None,
                  max_rate_per_h: float | None = None, gap_s: float = 60.0) -> DailyResult:
    """Daily totals of a cumulative counter: the sum of its increments, each counted on
    the local day its interval ends (last-minus-first per day, without losing the
    interval that crosses midnight).

    Parameters
    ----------
    values : Series
        Counter readings [counter unit], UTC DatetimeIndex; NaN for readings flagged bad.
    zone : ZoneInfo
        The site's time zone: days are local calendar days.
    days : Index of date
        The days wanted.
    rollover : float, optional
        Value at which the register wraps to 0 [counter unit].
    max_rate_per_h : float, optional
        Largest physically possible increase per hour; a larger step is a jump, not counted.
    gap_s : float
        An interval longer than this is a gap; a counter read on both sides of it still
        gives the exact total, assigned to the day the gap ends.

    Returns
    -------
    DailyResult
        Daily increments [counter unit] (NaN for a day with no interval ending in it) and findings.
    """
    s = values.dropna().sort_index()
    s = s[~s.index.duplicated(keep="last")]
    findings: list[Finding] = []
    if len(s) < 2:
        return DailyResult(pd.Series(np.nan, index=days, dtype=float), findings)
    prev, cur = s.to_numpy()[:-1], s.to_numpy()[1:]
    t0, t1 = s.index[:-1], s.index[1:]
    step = cur - prev
    hours = (t1 - t0).total_seconds().to_numpy() / 3600
    delta = step.copy()
    for i in np.flatnonzero(step < 0):
        delta[i], wrapped = backwards_step(prev[i], cur[i], rollover)
        if wrapped:
            findings.append(Finding("counter_rollover", source, "info", f"wrapped at {rollover:g}",
                                    str(t0[i]), str(t1[i]), float(delta[i])))
        else:
            findings.append(Finding("counter_backwards", source, "review",
                                    f"went from {prev[i]:g} to {cur[i]:g}; counted {delta[i]:g} for the interval",
                                    str(t0[i]), str(t1[i]), float(delta[i])))
    if max_rate_per_h:
        for i in np.flatnonzero(delta > max_rate_per_h * np.maximum(hours, 1 / 3600)):
            findings.append(Finding("counter_jump", source, "review",
                                    f"rose {delta[i]:g} in {hours[i] * 3600:.0f} s, above the physical limit "
                                    f"{max_rate_per_h:g}/h; not counted", str(t0[i]), str(t1[i]), float(delta[i])))
            delta[i] = 0.0
    for i in np.flatnonzero(hours * 3600 > gap_s):
        findings.append(Finding("gap_spanned_by_counter", source, "info",
                                f"{hours[i]:.2f} h without readings; the counter gives the exact total {delta[i]:g}, "
                                "assigned to the day the gap ends", str(t0[i]), str(t1[i]), float(delta[i])))
    per_day = pd.Series(delta, index=_local_date(t1, zone)).groupby(level=0).sum().reindex(days)
    # days inside a gap the counter spans are known: their share sits on the day the gap ends
    spanned = set()
    for i in np.flatnonzero(hours * 3600 > gap_s):
        for day in pd.date_range(t0[i].tz_convert(zone).date(), t1[i].tz_convert(zone).date(), freq="D").date:
            spanned.add(day)
            if day in per_day.index and np.isnan(per_day[day]):
                per_day[day] = 0.0
    return DailyResult(per_day, findings, spanned)


def mean_daily(values: pd.Series, zone: ZoneInfo, days: pd.Index) -> DailyResult:
    """Daily mean of an instantaneous value (QA display, e.g. methane fraction); NaN without data."""
    s = values.dropna()
    if s.empty:
        return DailyResult(pd.Series(np.nan, index=days, dtype=float), [])
    per_day = pd.Series(s.to_numpy(dtype=float), index=_local_date(s.index, zone)).groupby(level=0).mean()
    return DailyResult(per_day.reindex(days), [])


def energised_hours_daily(values: pd.Series, zone: ZoneInfo, days: pd.Index, gap_s: float) -> DailyResult:
    """Hours per local day a signal was on, from samples of a boolean signal.

    An interval counts only when the samples at both ends say on and it is no longer
    than ``gap_s``: intervals without data count 0 (VN_AM005 monitoring rule).

    Returns
    -------
    DailyResult
        [h] per day; 0 for a day without data (a count of zero, not unknown).
    """
    s = values.dropna().sort_index().astype(float)
    if len(s) < 2:
        return DailyResult(pd.Series(0.0, index=days), [])
    on = (s.to_numpy()[:-1] > 0.5) & (s.to_numpy()[1:] > 0.5)
    secs = (s.index[1:] - s.index[:-1]).total_seconds().to_numpy()
    counted = np.where(on & (secs <= gap_s), secs, 0.0) / 3600
    per_day = pd.Series(counted, index=_local_date(s.index[1:], zone)).groupby(level=0).sum()
    return DailyResult(per_day.reindex(days, fill_value=0.0), [])


def gaps(index: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp, gap_s: float) -> list[tuple]:
    """Intervals longer than ``gap_s`` without a reading, within [start, end): (start, end, seconds)."""
    t = index.sort_values()
    t = t[(t >= start) & (t < end)]
    edges = [start, *t, end]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        secs = (b - a).total_seconds()
        if secs > gap_s:
            out.append((a, b, secs))
    return out


def integrated_daily(power: pd.Series, zone: ZoneInfo, days: pd.Index, gap_s: float) -> tuple[pd.Series, set]:
    """Energy per local day from samples of a power, by the trapezoid rule [power unit × h].

    Intervals longer than ``gap_s`` are not integrated; their days are returned as
    incomplete, so that a cross-check skips them.
    """
    s = power.dropna().sort_index().astype(float)
    if len(s) < 2:
        return pd.Series(np.nan, index=days, dtype=float), set(days)
    secs = (s.index[1:] - s.index[:-1]).total_seconds().to_numpy()
    v = s.to_numpy()
    energy = np.where(secs <= gap_s, 0.5 * (v[:-1] + v[1:]) * secs / 3600, 0.0)
    ends = _local_date(s.index[1:], zone)
    incomplete = {d for d, gap in zip(ends, secs > gap_s) if gap}
    covered = set(ends)
    incomplete |= {d for d in days if d not in covered}
    return pd.Series(energy, index=ends).groupby(level=0).sum().reindex(days), incomplete
