"""A cumulative counter's increments, interval by interval, with glitches, resets,
rollovers and jumps resolved: one pure function that the processor's daily values and
the live view's energy of today both count with, so they agree.
"""

from __future__ import annotations

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


#: an outlier is one or a few readings: a longer run off the counter's course is a reset or a new level
OUTLIER_READINGS = 5
#: the bound of a shorter interval is a minute's worth: register resolution and clock jitter [h]
MIN_BOUND_H = 1 / 60


def fmt(x: float) -> str:
    return f"{x:,.3f}".rstrip("0").rstrip(".")


@dataclass
class Increments:
    """What a counter registered, interval by interval, after outliers, resets and jumps."""

    start: pd.DatetimeIndex  # the kept reading each interval starts from
    end: pd.DatetimeIndex
    value: np.ndarray  # credited increase [counter unit]
    findings: list[Finding] = field(default_factory=list)
    adjustments: list[dict] = field(default_factory=list)
    #: longest time between consecutive readings inside each interval, dropped outliers included [h]:
    #: an interval across dropped outliers is not a gap in the data
    longest_h: np.ndarray = field(default_factory=lambda: np.zeros(0))


def counter_increments(values: pd.Series, source: str, rollover: float | None = None,
                       max_rate_per_h: float | None = None, effect: str = "raises", unit: str = "",
                       zone: ZoneInfo | None = None) -> Increments:
    """Increments of a cumulative counter with glitches, resets, rollovers and jumps resolved.

    A step is suspect when the counter falls (other than a wrap at ``rollover``) or rises
    faster than ``max_rate_per_h``. A suspect step is, in this order of preference:

    1. an outlier: one to ``OUTLIER_READINGS`` readings off the counter's course, after
       (or before) which it continues where it was; those readings are dropped and the
       interval across them counts the exact difference of the readings around them.
       A return across a wrap must be continued by the next reading (0s read just below
       the rollover look like a wrap). For a quantity that lowers reductions, readings the
       counter could have registered (no rise into, between or out of them beyond the
       physical bound; a fall may be a reset) are not outliers when a bound is known: they
       may be its real course, which counts more than the difference across them; and
       the readings before a rise beyond the bound may be outliers (a register that held
       still and then caught up counted the whole rise across them, more than the bound);
    2. a reset: the counter fell to near zero (no more than the interval can physically
       register, or below 1 % of its last value when no bound is known) and the next
       reading continues from there; the interval counts what was registered since the
       reset for a quantity that raises reductions, the interval's physical bound for one
       that lowers them (what was registered before the reset is unknown);
    3. otherwise a new level (meter replaced, register preset, an unconfirmed drop at the
       end of the data, or a rise beyond the physical bound): the interval counts 0 for a
       quantity that raises reductions, its physical bound (if known) for one that lowers them.

    Parameters
    ----------
    values : Series
        Counter readings [counter unit], UTC DatetimeIndex; NaN for readings flagged bad.
    source : str
        ``device.channel``, for the findings.
    rollover : float, optional
        Value at which the register wraps to 0 [counter unit].
    max_rate_per_h : float, optional
        Largest physically possible rise [counter unit/h] (nameplate × margin); an interval
        shorter than ``MIN_BOUND_H`` is allowed a minute's worth.
    effect : {"raises", "lowers"}
        Whether the quantity raises or lowers emission reductions: the conservative direction.
    unit : str
        Counter unit, for the findings.
    zone : ZoneInfo, optional
        Time zone the findings state times in (UTC if not given).

    Returns
    -------
    Increments
        Interval starts and ends, credited increase [counter unit] per interval, findings,
        an adjustment row for every interval that does not count the plain difference,
        and per interval the longest time between consecutive readings, dropped ones included [h].
    """
    t, v = _kept(values)
    n = len(v)
    if n < 2:
        return Increments(t[:0], t[:0], np.zeros(0))
    ns = t.as_unit("ns").asi8
    hours = np.diff(ns) / 3.6e12
    raw = np.diff(v)
    wrapped = (raw < 0) & (v[:-1] > 0.5 * rollover) & (v[1:] < 0.5 * rollover) if rollover else np.zeros(n - 1, bool)
    credited = np.where(wrapped, raw + (rollover or 0.0), raw)
    limit = max_rate_per_h * np.maximum(hours, MIN_BOUND_H) if max_rate_per_h else np.full(n - 1, np.inf)
    first = np.arange(n - 1)  # the reading each interval starts from
    valid = np.ones(n - 1, dtype=bool)
    findings: list[Finding] = []
    adjustments: list[dict] = []
    local = t.tz_convert(zone) if zone else t

    def when(i: int) -> str:
        return local[i].strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00")

    def rise(a: int, b: int) -> float:
        d = v[b] - v[a]
        if d < 0 and rollover and v[a] > 0.5 * rollover and v[b] < 0.5 * rollover:
            d += rollover
        return d

    def fits(a: int, b: int) -> bool:
        """Reading b continues the course of reading a (a wrap only where a bound makes it plausible)."""
        if not max_rate_per_h:
            return v[b] >= v[a]
        d = rise(a, b)
        return 0 <= d <= max_rate_per_h * max((ns[b] - ns[a]) / 3.6e12, MIN_BOUND_H)

    def returns(a: int, b: int) -> bool:
        """Reading b continues the course of reading a, the readings between them off it; across a wrap
        only when the reading after b continues from b too: outliers of 0 just below the rollover read
        as a wrap to 0, which the first of them would continue."""
        if not fits(a, b):
            return False
        return not (rollover and v[b] < v[a]) or (b + 1 < n and fits(b, b + 1))

    def drop(a: int, b: int) -> None:
        """Readings a+1..b-1 are outliers: one interval from a to b."""
        valid[a:b - 1] = False
        first[b - 1], credited[b - 1] = a, rise(a, b)
        off = ", ".join(fmt(x) for x in v[a + 1:b])
        what = (f"reading of {off} at {when(a + 1)}" if b - a == 2 else
                f"{b - a - 1} readings ({off}) from {when(a + 1)} to {when(b - 1)}")
        findings.append(Finding("counter_outlier", source, "info",
                                f"{what} between {fmt(v[a])} and {fmt(v[b])} {unit} ignored as "
                                f"{'an outlier' if b - a == 2 else 'outliers'}; the interval counts the difference "
                                f"{fmt(credited[b - 1])} {unit}", str(t[a]), str(t[b]), float(credited[b - 1])))

    def adjust(i: int, kind: str, after: float, detail: str) -> None:
        before = float(rise(i, i + 1))
        credited[i] = after
        findings.append(Finding(kind, source, "review", detail, str(t[i]), str(t[i + 1]), float(after)))
        adjustments.append({"kind": kind, "source": source, "start": str(t[i]), "end": str(t[i + 1]),
                            "before": before, "factor": None, "after": float(after), "reason": detail})

    def outliers(a: int, b: int) -> bool:
        """Readings a+1..b-1 are taken as outliers. For a quantity that lowers reductions only when
        the counter cannot have registered them (a rise beyond the physical bound into, between or
        out of them): readings it could have registered (a fall may be a reset) may be its real
        course, and the exact difference across them is the lower count of the two."""
        return effect != "lowers" or not max_rate_per_h or bool((credited[a:b] > limit[a:b]).any())

    resume = 0  # intervals before this one are settled
    for i in np.flatnonzero((credited < 0) | (credited > limit)):
        if i < resume:
            continue
        ret = next((j for j in range(i + 2, min(n, i + 2 + OUTLIER_READINGS)) if returns(i, j)), None)
        if ret is not None and outliers(i, ret):
            drop(i, ret)
            resume = ret
            continue
        fell = raw[i] < 0
        # readings before the fall may be the outliers (a spike the missing bound let through); so may
        # readings a wrap led to, when the rise from them is out of bounds (0s read just below the
        # rollover read as a wrap, credited, and the rise back as a jump: more than the counter counted);
        # for what lowers reductions, so may readings before a jump: a register that held still and then
        # caught up counted the whole rise across them, more than the jump's bound
        if fell or effect == "lowers" or wrapped[max(resume, i - OUTLIER_READINGS):i].any():
            back = next((k for k in range(i, max(resume + 1, i + 1 - OUTLIER_READINGS, 1) - 1, -1)
                         if returns(k - 1, i + 1)), None)
            if back is not None and outliers(back - 1, i + 1):
                drop(back - 1, i + 1)
                resume = i + 1
                continue
        resume = i + 1
        bound = float(limit[i]) if max_rate_per_h else None
        fallback = bound if effect == "lowers" and bound is not None else 0.0
        near_zero = 0 <= v[i + 1] <= (bound if bound is not None else 0.01 * v[i])
        if fell and near_zero and i + 2 < n and fits(i + 1, i + 2):
            after = v[i + 1] if effect == "raises" or bound is None else bound
            adjust(i, "counter_reset", after,
                   f"fell from {fmt(v[i])} to {fmt(v[i + 1])} {unit} at {when(i + 1)}, a reset confirmed by the next "
                   f"reading {fmt(v[i + 2])}; counted {fmt(after)} for the interval")
        elif fell:
            why = ("not confirmed by a later reading" if i + 2 >= n else
                   "neither a confirmed reset nor an outlier")
            adjust(i, "counter_backwards", fallback,
                   f"went from {fmt(v[i])} to {fmt(v[i + 1])} {unit} at {when(i + 1)}, {why}; counted {fmt(fallback)} "
                   "for the interval and continued from the new level")
        else:
            adjust(i, "counter_jump", fallback,
                   f"rose {fmt(credited[i])} {unit} in {hours[i] * 3600:.0f} s to {when(i + 1)}, above the physical limit "
                   f"{fmt(limit[i])} {unit}; counted {fmt(fallback)} for the interval")
    longest = hours.copy()
    for j in np.flatnonzero(first != np.arange(n - 1)):
        longest[j] = hours[first[j]:j + 1].max()
    if valid.all():  # no outliers dropped: each interval from one reading to the next
        return Increments(t[:-1], t[1:], credited, findings, adjustments, longest)
    return Increments(t[first[valid]], t[1:][valid], credited[valid], findings, adjustments, longest[valid])


def _kept(values: pd.Series) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The readings with a value, in time order, the last of each instant: their times and values
    [counter unit]. Readings in time order without repeats (a store's) are taken as they are,
    without a sort and a hash table of the instants."""
    v = values.to_numpy(dtype=float)
    t = values.index
    if t.is_monotonic_increasing and t.is_unique:
        missing = np.isnan(v)
        if missing.any():
            return t[~missing], v[~missing]
        return t, v
    s = values.dropna().sort_index()
    s = s[~s.index.duplicated(keep="last")]
    return s.index, s.to_numpy(dtype=float)
