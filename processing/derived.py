"""Parameters computed per monitoring interval from several channels, before any
daily total: the PH biogas site's flare methane (PE_flare)."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from processing.daily_values import by_day, counter_increments, day_dates, interval_day_numbers
from processing.methodologies.ph_prov_biogas import flare_emissions


@dataclass
class FlareResult:
    """PE_flare per local day [tCO2e] with the methane behind it, and every conservative
    choice made, as adjustment rows."""

    values: pd.Series
    #: methane sent to the flare per day [Nm3], and the part sent while the flame burned [Nm3]:
    #: PE_flare = (CH4 − η_burning × CH4 burning) × ρ_CH4 × GWP_CH4 × 10⁻³
    ch4: pd.Series
    ch4_burning: pd.Series
    adjustments: list[dict] = field(default_factory=list)


def _utc(index: pd.DatetimeIndex) -> np.ndarray:
    """UTC instants as naive ``datetime64[ns]``, for array arithmetic."""
    return index.tz_convert("UTC").as_unit("ns").asi8.view("datetime64[ns]")


def _at(series: pd.Series, times: pd.DatetimeIndex) -> np.ndarray:
    """``series[times]`` as an array, of a series whose index holds each of ``times`` once: found by
    a binary search in an index in time order (a counter's readings), not a hash table of it."""
    index = series.index
    if not index.is_monotonic_increasing:
        return series[times].to_numpy()
    return series.to_numpy()[np.searchsorted(index.as_unit("ns").asi8, times.as_unit("ns").asi8)]


def _bracket(times: np.ndarray, a0: np.ndarray, a1: np.ndarray, max_age: np.timedelta64):
    """For each interval [a0, a1]: the last reading at or before a0 and the first at or
    after a1 (indices into ``times``), and whether both exist within ``max_age``."""
    i0 = np.searchsorted(times, a0, side="right") - 1
    i1 = np.searchsorted(times, a1, side="left")
    j0, j1 = np.maximum(i0, 0), np.minimum(i1, len(times) - 1)
    known = (i0 >= 0) & (i1 < len(times)) & (a0 - times[j0] <= max_age) & (times[j1] - a1 <= max_age)
    return j0, j1, known


#: intervals holding up to this many readings take their highest one reading at a time (most hold two)
FEW = 2


def _highest(values: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The highest of ``values[first:end]`` for each pair (first, end); -inf where it holds none.
    Up to ``FEW`` readings an interval are compared column by column, any more by ``reduceat`` over
    their pairs (which took ~3 x as long for all of them)."""
    if not len(values):
        return np.full(len(first), -np.inf)
    n = end - first
    last = len(values) - 1
    highest = np.where(n > 0, values[np.minimum(first, last)], -np.inf)
    for k in range(1, FEW):
        highest = np.where(n > k, np.maximum(highest, values[np.minimum(first + k, last)]), highest)
    many = np.flatnonzero(n > FEW)
    if len(many):
        pairs = np.column_stack([first[many], end[many]]).ravel()
        highest[many] = np.maximum.reduceat(np.append(values, -np.inf), pairs)[::2]
    return highest


def flare_daily(bg_flare: pd.Series, ch4_pct: pd.Series, flame: pd.Series, zone: ZoneInfo, days: pd.Index,
                GWP_CH4: float, CH4_density: float, eta_flare_burning: float, rollover: float | None = None,
                max_age_s: float = 900.0, sources: tuple[str, str, str] = ("BG_flare", "w_CH4", "flame"),
                max_rate_per_h: float | None = None) -> FlareResult:
    """PE_flare per local day [tCO2e] from the flare gas counter [Nm3], the methane
    fraction [%] and the flame detector, interval by interval of the counter.

    Conservative where data are missing, each case an adjustment row with its figures:

    - the flame burns (η = ``eta_flare_burning``) only where the detector said so from
      its last reading at or before the interval to its first at or after it, each
      within ``max_age_s``, with no "out" and no silence longer than ``max_age_s``
      between; a missing flame status means not burning (η = 0), never the last value
      carried forward;
    - the methane fraction is the highest reading within the interval; an interval
      without one takes the highest fraction measured in the period (100 % if none
      was), never the last reading carried forward;
    - the totaliser's increments are those of every counter (``counter_increments``, with
      PE_flare's conservative direction): a wrap at ``rollover`` counts its exact increment,
      never 0; an outlier is dropped, a reset must be confirmed, a rise beyond
      ``max_rate_per_h`` is bounded. The QA's reduction of the same channel reports those
      findings and rows in Nm3; here a wrap gets a row in PE_flare's terms.

    Each interval belongs to the local day of its end (``interval_day``: a reading at
    local midnight closes the day before).

    Parameters
    ----------
    bg_flare : Series
        Flare gas totaliser [Nm3], UTC index.
    ch4_pct : Series
        Methane volume fraction [%], UTC index.
    flame : Series
        Flame detector, 1 = burning, UTC index.
    zone : ZoneInfo
    days : Index of date
    GWP_CH4, CH4_density, eta_flare_burning : float
        [-], [kg/Nm3], [-]
    rollover : float, optional
        Value at which the totaliser wraps to 0 [Nm3].
    max_age_s : float
        Longest a flame or methane reading stands for the state of the channel [s].
    sources : tuple of str
        Names of the three inputs, for the adjustment rows.
    max_rate_per_h : float, optional
        Largest physically possible flow [Nm3/h] (nameplate × margin).
    """
    empty = pd.Series(np.nan, index=days, dtype=float)
    inc = counter_increments(bg_flare, sources[0], rollover, max_rate_per_h, "lowers", "Nm3", zone)
    if len(inc.value) == 0:
        return FlareResult(empty, empty.copy(), empty.copy())
    t0, t1, volume = inc.start, inc.end, inc.value
    bg = bg_flare.dropna()
    bg = bg[~bg.index.duplicated(keep="last")]
    settled = {(a["start"], a["end"]) for a in inc.adjustments}
    wrapped = (_at(bg, t1) < _at(bg, t0)) & (volume > 0)
    for i in np.flatnonzero(wrapped):  # the few falls, not every interval: a str per Timestamp was a quarter of a month
        wrapped[i] = (str(t0[i]), str(t1[i])) not in settled
    max_age = np.timedelta64(int(max_age_s * 1e9), "ns")
    a0, a1 = _utc(t0), _utc(t1)

    ch4 = ch4_pct.dropna().sort_index()
    w_max = float(ch4.max()) / 100 if len(ch4) else 1.0
    w = np.full(len(volume), w_max)
    carried = np.full(len(volume), np.nan)  # what the last reading carried forward would have said
    measured = np.zeros(len(volume), dtype=bool)
    if len(ch4):
        ct, cv = _utc(ch4.index), ch4.to_numpy() / 100
        first = np.searchsorted(ct, a0, side="left")  # readings first..end-1 lie within the interval
        end = np.searchsorted(ct, a1, side="right")
        measured = first < end
        w = np.where(measured, _highest(cv, first, end), w_max)
        carried = np.where(end > 0, cv[np.maximum(end - 1, 0)], np.nan)
    ch4_missing = ~measured & (volume > 0)

    fl = flame.dropna().sort_index()
    on = np.zeros(len(volume), dtype=bool)
    flame_missing = volume > 0
    if len(fl):
        ft, fv = _utc(fl.index), fl.to_numpy() > 0.5
        j0, j1, known = _bracket(ft, a0, a1, max_age)
        # readings "out", and silences between readings, counted up to each reading
        outs = np.concatenate([[0], np.cumsum(~fv)])
        silences = np.concatenate([[0, 0], np.cumsum(np.diff(ft) > max_age)])
        known &= silences[j1 + 1] - silences[j0 + 1] == 0
        on = known & (outs[j1 + 1] - outs[j0] == 0)
        flame_missing = ~known & (volume > 0)

    def pe(vol, frac, burning):
        return flare_emissions(vol, frac, burning, GWP_CH4, CH4_density, eta_flare_burning)

    per_interval = pe(volume, w, on)
    day_numbers = interval_day_numbers(t1, zone)
    local = day_dates(day_numbers)  # interval_day

    def daily(values) -> pd.Series:
        return by_day(values, day_numbers, days, "sum")

    adjustments = []

    def rows(mask, kind, source, before, after, reason):
        if not mask.any():
            return
        frame = pd.DataFrame({"day": local, "hours": (a1 - a0) / np.timedelta64(1, "h"), "volume": volume,
                              "before": before, "after": after})[mask]
        for day, g in frame.groupby("day", sort=True):
            if day not in days:
                continue
            adjustments.append({"kind": kind, "parameter": "PE_flare", "source": source, "meter": "", "days": str(day),
                                "before": float(g["before"].sum()) if g["before"].notna().all() else None,
                                "factor": None, "after": float(g["after"].sum()),
                                "reason": reason(float(g["hours"].sum()), float(g["volume"].sum()))})

    rows(flame_missing, "flare_flame_missing", sources[2], pe(volume, w, np.ones(len(volume), bool)), per_interval,
         lambda h, v: f"no flame status for {h:.2f} h while {v:,.1f} Nm3 went to the flare: counted as not burning "
                      "(η = 0); 'before' is the figure had it burned")
    rows(ch4_missing, "flare_ch4_missing", sources[1], pe(volume, carried, on), per_interval,
         lambda h, v: f"no CH4 reading for {h:.2f} h while {v:,.1f} Nm3 went to the flare: the period's highest "
                      f"fraction {w_max:.2%} is used; 'before' is the last reading carried forward")
    for i in np.flatnonzero(wrapped):
        day = local[i]
        if day in days:
            adjustments.append({
                "kind": "flare_counter_rollover", "parameter": "PE_flare", "source": sources[0], "meter": "",
                "days": str(day), "before": 0.0, "factor": None, "after": float(per_interval[i]),
                "reason": f"flare gas totaliser wrapped at {rollover:g} Nm3 between {t0[i]} and {t1[i]}: "
                          f"{volume[i]:,.1f} Nm3 counted, not clipped to 0"})
    return FlareResult(daily(per_interval), daily(volume * w), daily(volume * w * on), adjustments)
