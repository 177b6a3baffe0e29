"""Plain-text copies of the period's data for any tool: the daily parameter values
the figures were computed from, and the raw readings behind them (streamed from the
store a week at a time: a year of 1-minute readings is millions of rows).

Rows are sorted, lines end in LF, and numbers are written with ``repr`` (the
shortest text that reads back as the same float), so the same inputs give the same
bytes and a reader recovers the exact values. A file of simulated readings says so in
its first line, a ``#`` comment (``pandas.read_csv(..., comment="#")`` skips it).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path

from contract.store import ReadingStore
from processing.export.period_figures import PeriodFigures, local_bounds
from processing.period import read_monitored

CHUNK = dt.timedelta(days=7)


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))


#: first line of every text file of a simulated export
SIMULATED_NOTE = "# SIMULATED DATA: readings from the simulator, not from the plant's meters; not for verification\n"


def _write(path: Path, header: list[str], rows, simulated: bool) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        if simulated:
            f.write(SIMULATED_NOTE)
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_daily_values(figures: PeriodFigures, path: Path) -> Path:
    """``day, parameter, unit_id, unit, value``: every parameter's final daily value
    (after check meters and missing-data treatment) on the period's days."""
    daily = figures.daily.sort_values(["day", "parameter", "unit_id"], kind="stable", na_position="first")
    rows = ([d.isoformat(), p, u or "", unit, _number(v)]
            for d, p, u, unit, v in daily[["day", "parameter", "unit_id", "unit", "value"]].itertuples(index=False))
    return _write(path, ["day", "parameter", "unit_id", "unit", "value"], rows, figures.simulated)


def write_raw_readings(figures: PeriodFigures, store: ReadingStore, path: Path) -> Path:
    """``ts, device, channel, value, quality``: the monitored sources' readings between the
    period's local-day bounds in time order, ``ts`` in UTC ISO 8601 with milliseconds."""
    return _write(path, ["ts", "device", "channel", "value", "quality"], _raw_rows(figures, store), figures.simulated)


def _raw_rows(figures: PeriodFigures, store: ReadingStore):
    start, end = local_bounds(figures.site, figures.first, figures.last)
    while start < end:
        r = read_monitored(store, figures.site, start, min(start + CHUNK, end))
        r = r.sort_values(["ts", "device", "channel"], kind="stable")
        ts = r["ts"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
        quality = r["quality"].astype(object).where(r["quality"].notna(), "")
        yield from zip(ts, r["device"], r["channel"], map(_number, r["value"]), quality)
        start += CHUNK
