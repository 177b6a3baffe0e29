"""Reduce a channel's readings to daily values in the site's local calendar.

Pure functions on pandas Series indexed by UTC timestamps. Each returns the daily
values and the findings that the quality checks and the audit trail need, so nothing
is changed silently.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from contract.counter import Finding, counter_increments
from contract.counter import fmt as _fmt


@dataclass
class DailyResult:
    values: pd.Series  # index: local date, NaN where the day cannot be known
    findings: list[Finding] = field(default_factory=list)
    #: days whose value includes (or lost to a neighbour) the total of a gap the counter spans
    spanned_days: set = field(default_factory=set)
    #: changes to what the plain counter differences would give, as adjustment rows (kind, source,
    #: days, before, factor, after, reason; the caller adds parameter and meter)
    adjustments: list[dict] = field(default_factory=list)
    #: intervals longer than the gap threshold the counter spans: (start, end, credited total)
    spanned_gaps: list[tuple[pd.Timestamp, pd.Timestamp, float]] = field(default_factory=list)


def local_days(start: dt.date, end: dt.date) -> pd.Index:
    return pd.Index(pd.date_range(start, end, freq="D").date, name="day")


#: day 0 of the day numbers (``_day_numbers``)
EPOCH = dt.date(1970, 1, 1)
NS_PER_DAY = 86_400 * 10**9


def _day_numbers(local: pd.DatetimeIndex) -> np.ndarray:
    """The calendar day of each of the local times (in a time zone, or naive), as days since
    ``EPOCH``: what ``DatetimeIndex.date`` tells, without a date object per reading."""
    return local.tz_localize(None).as_unit("ns").asi8 // NS_PER_DAY


def day_dates(day: np.ndarray) -> np.ndarray:
    """The dates of day numbers, each distinct day made once."""
    if len(day) and (day[1:] >= day[:-1]).all():  # the days of times in order: their runs, without a sort
        starts = np.flatnonzero(np.diff(day, prepend=day[0] - 1))
        distinct, which = day[starts], np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(day))))
    else:
        distinct, which = np.unique(day, return_inverse=True)
    return np.array([EPOCH + dt.timedelta(days=int(d)) for d in distinct], object)[which]


def by_day(values: np.ndarray, day: np.ndarray, days: pd.Index, how: str, fill: float = np.nan) -> pd.Series:
    """``values`` reduced per day number (pandas' compensated groupby ``how``, "sum" or "mean"), on
    ``days`` (``fill`` where none fell): as grouping by date objects gives it, at a fraction of the cost.
    A day whose values add up beyond any float is infinite, silently: its period cannot be computed,
    which the period says (no warning of numpy's for the operator)."""
    with np.errstate(over="ignore"):
        per_day = getattr(pd.Series(values, dtype=float).groupby(day), how)()
    wanted = np.array([(d - EPOCH).days for d in days], np.int64)
    return pd.Series(per_day.reindex(wanted, fill_value=fill).to_numpy(), index=days)


def interval_day_numbers(ends: pd.DatetimeIndex, zone: ZoneInfo) -> np.ndarray:
    """``interval_day`` as day numbers."""
    return _day_numbers(ends.tz_convert(zone) - pd.Timedelta(1, "ns"))


def interval_day(ends: pd.DatetimeIndex, zone: ZoneInfo) -> np.ndarray:
    """The local day an interval belongs to, from its end time.

    An interval (t0, t1] belongs to the local day of t1, except that one ending exactly
    at local midnight closes the day before: the reading stamped 00:00:00 is the last of
    the previous day and the first of the next. So a crediting period of whole local days
    [first 00:00, last + 1 00:00) gets every interval that ends after its first midnight up
    to and including the midnight that ends it.
    """
    return day_dates(interval_day_numbers(ends, zone))


def midnights(days: pd.Index, zone: ZoneInfo) -> pd.DatetimeIndex:
    """The local midnights that start each of ``days`` and end the last one, in UTC [ns]."""
    return _midnights(tuple(days), zone)


@functools.lru_cache(maxsize=64)
def _midnights(days: tuple[dt.date, ...], zone: ZoneInfo) -> pd.DatetimeIndex:
    # each counter of a period asks for the same ones (an index cannot be changed in place: it is shared)
    edges = [*days, days[-1] + dt.timedelta(days=1)]
    return pd.DatetimeIndex([dt.datetime.combine(d, dt.time(), tzinfo=zone) for d in edges]).tz_convert("UTC").as_unit("ns")


def counter_daily(values: pd.Series, zone: ZoneInfo, days: pd.Index, source: str, rollover: float | None = None,
                  max_rate_per_h: float | None = None, gap_s: float = 60.0, effect: str = "raises",
                  rating_per_h: float | None = None, unit: str = "") -> DailyResult:
    """Daily totals of a cumulative counter: the sum of its increments, each counted on
    the local day its interval ends (see ``interval_day``), with outliers, resets, jumps
    and rollovers resolved by ``counter_increments``.

    A counter read on both sides of a gap gives the exact total over it, counted on the
    day the gap ends; the days inside the gap are known (0). An interval across readings
    dropped as outliers is not a gap (no reading is missing). The split of an interval
    across the start or the end of the days wanted is unknown, and each period must be
    conservative on its own. For a quantity that raises reductions, a gap's total counts
    in the period it ends in and 0 in the others, with an adjustment row in each; a shorter
    interval follows the day convention. For one that lowers them, every interval across
    a boundary (a gap or not: a reading missing or dropped next to the boundary hides where
    the split would have been) is charged, in each period it touches, an upper bound of its
    share there, min(total, ``max_rate_per_h`` × its hours inside the period), or the whole
    total when no bound is known, on the day it ends or on the period's last day, with an
    adjustment row in each period. With a nameplate rating,
    a day above the theoretical maximum (rating × the hours its intervals cover, at least
    the day's length) is a finding, and a quantity that raises reductions is bounded to it;
    a bound charged for the share of an interval that ends in a later period is not a
    measured value and is not compared with it.

    Parameters
    ----------
    values : Series
        Counter readings [counter unit], UTC DatetimeIndex; NaN for readings flagged bad.
        Readings before the first day and after the last one let the boundary intervals
        and gaps be known.
    zone : ZoneInfo
        The site's time zone: days are local calendar days.
    days : Index of date
        The days wanted (consecutive).
    source : str
        ``device.channel``.
    rollover : float, optional
        Value at which the register wraps to 0 [counter unit].
    max_rate_per_h : float, optional
        Largest physically possible rise per interval hour [counter unit/h] (nameplate × margin).
    gap_s : float
        An interval longer than this is a gap [s].
    effect : {"raises", "lowers"}
        The conservative direction of the quantity.
    rating_per_h : float, optional
        Nameplate rating [counter unit/h], without margin: the daily plausibility bound.
    unit : str
        Counter unit, for the findings.

    Returns
    -------
    DailyResult
        Daily increments [counter unit] (NaN for a day with no interval ending in it),
        findings, adjustment rows, the days and intervals of gaps the counter spans.
    """
    bounds = midnights(days, zone)
    period_start, period_end = bounds[0], bounds[-1]
    inc = counter_increments(values, source, rollover, max_rate_per_h, effect, unit, zone)
    # what happened in intervals of a neighbouring period is that period's to report
    findings = [f for f in inc.findings if period_start < pd.Timestamp(f.end) <= period_end]
    adjustments = [{**a, "days": str(interval_day(pd.DatetimeIndex([pd.Timestamp(a["end"])]), zone)[0])}
                   for a in inc.adjustments if period_start < pd.Timestamp(a["end"]) <= period_end]
    if len(inc.value) == 0:
        return DailyResult(pd.Series(np.nan, index=days, dtype=float), findings, set(), adjustments)
    # the intervals' ends and starts [ns], compared as numbers rather than Timestamps
    end_ns, start_ns = inc.end.as_unit("ns").asi8, inc.start.as_unit("ns").asi8
    hours = (inc.end.array - inc.start.array).total_seconds() / 3600
    # day k holds the intervals ending in (midnight k, midnight k+1]: interval_day, vectorised
    k = np.searchsorted(bounds.asi8, end_ns, side="left") - 1
    inside = (k >= 0) & (k < len(days))
    k = k[inside]
    counted = np.bincount(k, minlength=len(days)) > 0
    per_day = pd.Series(np.where(counted, np.bincount(k, inc.value[inside], len(days)), np.nan), index=days)
    spanned, spanned_gaps = set(), []
    overlaps = (end_ns > period_start.value) & (start_ns < period_end.value)
    is_gap = inc.longest_h * 3600 > gap_s
    crosses = (start_ns < period_start.value) | (end_ns > period_end.value)
    charged_last_day = 0.0  # bounds charged for intervals that end in a later period
    # for a quantity that lowers reductions every interval across a boundary is split conservatively,
    # a gap's or not: readings missing or dropped near the boundary hide where the split would have been
    for i in np.flatnonzero(overlaps & (is_gap | (crosses & (effect == "lowers")))):
        a, b, total = inc.start[i], inc.end[i], float(inc.value[i])
        day = interval_day(pd.DatetimeIndex([b]), zone)[0]
        ends_here = b <= period_end
        what = "the gap" if is_gap[i] else "the interval"
        span = f"{what} from {a.tz_convert(zone):%Y-%m-%d %H:%M} to {b.tz_convert(zone):%Y-%m-%d %H:%M}"
        if is_gap[i]:
            for d in pd.date_range(a.tz_convert(zone).date(), day, freq="D").date:
                spanned.add(d)
                if d in per_day.index and np.isnan(per_day[d]):
                    per_day[d] = 0.0
        if not crosses[i]:
            findings.append(Finding("gap_spanned_by_counter", source, "info",
                                    f"{hours[i]:.2f} h without readings; the counter gives the exact total {_fmt(total)} "
                                    f"{unit}, assigned to the day the gap ends ({day})", str(a), str(b), total))
            spanned_gaps.append((a, b, total))
            continue
        lo, hi = max(a, period_start), min(b, period_end)
        if effect == "lowers":
            # the share of the total registered inside this period is unknown: charge an upper bound of it
            here_h = (hi - lo).total_seconds() / 3600
            charge = min(total, max_rate_per_h * here_h) if max_rate_per_h else total
            bound = (f"min(the total {_fmt(total)} {unit}, the physical bound {_fmt(max_rate_per_h)} {unit}/h × "
                     f"{here_h:.2f} h of it in this period) = {_fmt(charge)} {unit}" if max_rate_per_h else
                     f"the whole total {_fmt(total)} {unit}, as no physical bound of the meter is known")
            on = day if ends_here else days[-1]
            edges = " and ".join(e for e, crossed in (("start", a < period_start), ("end", not ends_here)) if crossed)
            rule = (f"the counter's total {_fmt(total)} {unit} over {span} crosses the period's {edges}: "
                    "its split between the periods is unknown, so this period is "
                    f"charged an upper bound of its share here (a quantity that lowers reductions): {bound}, "
                    f"counted on {on}")
            before = total if ends_here else 0.0
            if ends_here:
                per_day[day] += charge - total
            else:
                charged_last_day += charge
            if is_gap[i]:
                spanned_gaps.append((lo, hi, charge))
        elif ends_here:
            charge, before = total, 0.0
            rule = (f"the counter's total {_fmt(total)} {unit} over {span}, which began in the previous period, "
                    f"is counted on {day}, the day the gap ends")
            spanned_gaps.append((a, b, total))
        else:
            charge, before = 0.0, total
            rule = (f"the counter's total {_fmt(total)} {unit} over {span} is counted on {day}, the day the gap ends, "
                    "in a later period; 0 here")
        if is_gap[i]:
            findings.append(Finding("gap_spanned_by_counter", source, "info",
                                    f"{hours[i]:.2f} h without readings; {rule}", str(a), str(b), total))
        adjustments.append({"kind": "gap_across_periods", "source": source, "start": str(a), "end": str(b),
                            "days": str(day) if ends_here else f"{lo.tz_convert(zone).date()}..{days[-1]}",
                            "before": before, "factor": None, "after": charge, "reason": rule})
    if rating_per_h:
        covered = np.bincount(k, hours[inside], len(days))
        cap = rating_per_h * np.maximum(covered, np.diff(bounds.asi8) / 3.6e12)
        for k in np.flatnonzero(per_day.to_numpy() > cap * (1 + 1e-9)):
            day, before = days[k], float(per_day.iloc[k])
            after = float(cap[k]) if effect == "raises" else before
            detail = (f"{day}: {_fmt(before)} {unit} is above the theoretical maximum {_fmt(cap[k])} {unit} "
                      f"(nameplate {_fmt(rating_per_h)} {unit}/h over {cap[k] / rating_per_h:.2f} h); counted {_fmt(after)}")
            findings.append(Finding("theoretical_maximum", source, "review", detail, str(day), str(day), before))
            if after != before:
                per_day.iloc[k] = after
                adjustments.append({"kind": "theoretical_maximum", "source": source, "days": str(day), "before": before,
                                    "factor": after / before, "after": after, "reason": detail})
    if charged_last_day:
        per_day.iloc[-1] = np.nan_to_num(per_day.iloc[-1]) + charged_last_day
    return DailyResult(per_day, findings, spanned, adjustments, spanned_gaps)


def mean_daily(values: pd.Series, zone: ZoneInfo, days: pd.Index) -> DailyResult:
    """Daily mean of an instantaneous value (QA display, e.g. methane fraction); NaN without data."""
    s = values.dropna()
    if s.empty:
        return DailyResult(pd.Series(np.nan, index=days, dtype=float), [])
    return DailyResult(by_day(s.to_numpy(dtype=float), _day_numbers(s.index.tz_convert(zone)), days, "mean"), [])


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
    return DailyResult(by_day(counted, interval_day_numbers(s.index[1:], zone), days, "sum", 0.0), [])


def gaps(index: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp, gap_s: float) -> list[tuple]:
    """Intervals longer than ``gap_s`` without a reading, within [start, end): (start, end, seconds)."""
    t = index.as_unit("ns").asi8
    if not (t[1:] >= t[:-1]).all():
        t = np.sort(t)
    lo, hi = start.as_unit("ns").value, end.as_unit("ns").value
    edges = np.concatenate([[lo], t[np.searchsorted(t, lo):np.searchsorted(t, hi)], [hi]])
    # find the few long intervals with array arithmetic (a loop over Timestamps cost a
    # second a month), then state each one exactly as Timestamps do, margin included
    long = np.flatnonzero(np.diff(edges) > (gap_s - 1) * 1e9)
    out = []
    for i in long:
        a, b = (pd.Timestamp(edges[j], tz=start.tz) for j in (i, i + 1))
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
    with np.errstate(over="ignore"):  # powers no meter reads make infinite energy, which the cross-check names
        energy = np.where(secs <= gap_s, 0.5 * (v[:-1] + v[1:]) * secs / 3600, 0.0)
    ends = interval_day_numbers(s.index[1:], zone)
    incomplete = set(day_dates(np.unique(ends[secs > gap_s])))
    covered = set(day_dates(np.unique(ends)))
    incomplete |= {d for d in days if d not in covered}
    return by_day(energy, ends, days, "sum"), incomplete
