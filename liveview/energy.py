"""Energy (and volume, mass, heat) registered today and month to date by the monitored
counters, counted with the processor's own counter logic (``contract.counter``): a
reset, a rollover, an outlier or a jump beyond the nameplate counts as the processor
counts it, so the live figure never reads −1.5 GWh after a meter restarts.

Display figures, not MRV results: an interval belongs to the local day it ends in, as
in the processor; readings with a quality flag are not counted.
"""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd

from contract.config.nameplate import COUNTER_UNITS
from contract.config.site import Site
from contract.counter import counter_increments
from contract.store import ReadingStore

#: readings this long before a boundary settle the interval that crosses it
LOOKBACK = dt.timedelta(hours=1)
#: per dimension, the units a figure is shown in, each with its scale to the base unit, smallest first;
#: a figure takes the largest whose value is at least 1 (10 000 kWh reads as 10 MWh)
READABLE: dict[str, list[tuple[str, float]]] = {
    "energy": [("kWh", 1e3), ("MWh", 1e6), ("GWh", 1e9)],
    "volume": [("m3", 1.0)],
    "normal volume": [("Nm3", 1.0)],
    "mass": [("t", 1.0)],
    "heat": [("GJ", 1.0)],
}


def readable_unit(value: float, dimension: str) -> tuple[str, float]:
    """The unit a figure reads best in, and its scale.

    Parameters
    ----------
    value : float
        The largest figure to be shown in the unit [base unit: Wh, m3, Nm3, t, GJ].
    dimension : str
        A dimension of ``contract.config.nameplate.COUNTER_UNITS``.

    Returns
    -------
    tuple
        The unit and its scale to the base unit: kWh below 10 MWh, MWh below 10 GWh, GWh above.
    """
    units = READABLE[dimension]
    unit, scale = units[0]
    for u, s in units[1:]:
        if abs(value) >= 10 * s:
            unit, scale = u, s
    return unit, scale


def unflagged(rows: pd.DataFrame) -> pd.Series:
    """Which rows of a store read have a value and no quality flag (``not_implemented`` aside):
    a value its gateway flags (out of range, say) is evidence, not a figure to count or draw."""
    return rows["value"].notna() & rows["quality"].fillna("").isin(["", "not_implemented"])


def local_midnight(day: dt.date, site: Site) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=site.zone).astimezone(dt.UTC)


def counted(site: Site, store: ReadingStore, source: str, start: dt.datetime, end: dt.datetime,
            max_rate_per_h: float | None = None) -> float:
    """What counter ``device.channel`` registered in the intervals ending in (start, end]
    [counter unit], resolved as the processor resolves them."""
    device, channel = source.split(".")
    point = site.device(device).register_map.point(channel)
    rows = store.read(site.site, start - LOOKBACK, end + dt.timedelta(milliseconds=1), channels=[channel],
                      devices=[device])
    good = unflagged(rows)
    values = pd.Series(rows.loc[good, "value"].astype(float).to_numpy(), index=pd.DatetimeIndex(rows.loc[good, "ts"]))
    if values.index.tz is None:
        values.index = values.index.tz_localize("UTC")
    inc = counter_increments(values, source, point.rollover, site.counter_limit_per_h(source, max_rate_per_h),
                             "raises", point.unit, site.zone)
    inside = (inc.end > pd.Timestamp(start)) & (inc.end <= pd.Timestamp(end))
    return float(inc.value[inside].sum())


class CounterTotals:
    """Today's and month-to-date totals of a site's monitored counters, per parameter.

    The part of the month before today is read once a day and kept; today's part is
    read on every call (a day of readings at most)."""

    def __init__(self, store: ReadingStore):
        self.store = store
        self._before_today: dict[tuple[str, str, dt.date], float] = {}
        self._lock = threading.Lock()

    def figures(self, site: Site, now: dt.datetime) -> dict[str, dict]:
        """``{parameter key: {"today": ..., "month": ..., "unit": ...}}`` for every monitored
        parameter whose sources are counters of one dimension, each pair in one readable unit.

        Raises
        ------
        StoreUnavailable
            When the store cannot be read.
        """
        today = now.astimezone(site.zone).date()
        midnight, first = local_midnight(today, site), local_midnight(today.replace(day=1), site)
        out = {}
        for m in site.monitoring:
            points = [site.device(src.split(".")[0]).register_map.point(src.split(".")[1]) for src in m.sources]
            dims = {COUNTER_UNITS.get(p.unit, (None, 0))[0] for p in points}
            if any(p.kind.value != "counter" for p in points) or len(dims) != 1 or None in dims:
                continue
            day_total = month_total = 0.0
            for src, p in zip(m.sources, points):
                scale = COUNTER_UNITS[p.unit][1]
                day = counted(site, self.store, src, midnight, now, m.max_rate_per_h)
                day_total += day * scale
                month_total += (day + self._month_before_today(site, src, first, midnight, today,
                                                               m.max_rate_per_h)) * scale
            unit, scale = readable_unit(max(abs(month_total), abs(day_total)), dims.pop())
            key = m.parameter if m.unit_id is None else f"{m.parameter}[{m.unit_id}]"
            out[key] = {"today": day_total / scale, "month": month_total / scale, "unit": unit}
        return out

    def _month_before_today(self, site: Site, source: str, first: dt.datetime, midnight: dt.datetime,
                            today: dt.date, max_rate_per_h: float | None) -> float:
        key = (site.site, source, today)
        with self._lock:
            if key in self._before_today:
                return self._before_today[key]
        value = counted(site, self.store, source, first, midnight, max_rate_per_h) if first < midnight else 0.0
        with self._lock:
            # only this site's earlier days go: another site's today may be another date (its time zone)
            self._before_today = {k: v for k, v in self._before_today.items() if k[0] != site.site or k[2] == today}
            self._before_today[key] = value
        return value
