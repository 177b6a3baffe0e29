"""Plain-text copies of the period's data for any tool: the daily parameter values
the figures were computed from, and the raw readings behind them (streamed from the
store a week at a time: a year of 1-minute readings is millions of rows, hundreds of
MB as text, so that file is gzip-compressed: ``raw_readings.csv.gz``).

Rows are sorted, lines end in LF, and numbers are written with ``repr`` (the
shortest text that reads back as the same float), so the same inputs give the same
bytes and a reader recovers the exact values; the gzip header holds no time (mtime 0),
so a re-export is byte-identical too. A file of simulated readings says so in its first
line, a ``#`` comment (``pandas.read_csv(..., comment="#")`` skips it and reads the
``.gz`` as it is).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from contract.store import ReadingStore
from processing.export.period_figures import PeriodFigures, local_bounds
from processing.period import read_monitored

CHUNK = dt.timedelta(days=7)
#: zlib's default: level 9 took twice as long for 3 % less
GZIP_LEVEL = 6


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
    period's local-day bounds in time order, ``ts`` in UTC ISO 8601 with milliseconds;
    gzip-compressed (``path`` ends in ``.gz``)."""
    with path.open("wb") as f, gzip.GzipFile(path.name.removesuffix(".gz"), "wb", GZIP_LEVEL, f, mtime=0) as z:
        if figures.simulated:
            z.write(SIMULATED_NOTE.encode())
        z.write(b"ts,device,channel,value,quality\n")
        start, end = local_bounds(figures.site, figures.first, figures.last)
        while start < end:
            z.write(_raw_text(read_monitored(store, figures.site, start, min(start + CHUNK, end))).encode())
            start += CHUNK
    return path


def _raw_text(r: pd.DataFrame) -> str:
    """CSV lines of readings as ``csv.writer`` writes them, a chunk at a time (the store
    returns them in time order)."""
    ts = np.datetime_as_string(r["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(), unit="ms").tolist()
    values = ["" if v != v else repr(v) for v in r["value"].to_numpy(dtype=float).tolist()]
    quality = r["quality"].astype(object).where(r["quality"].notna(), "").tolist()
    device, channel = r["device"].astype(object).tolist(), r["channel"].astype(object).tolist()
    if any(set(text) & set(',"\r\n') for text in {*device, *channel, *quality}):  # would need quoting
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(zip([t + "Z" for t in ts], device, channel, values, quality))
        return buf.getvalue()
    return "".join(map("{}Z,{},{},{},{}\n".format, ts, device, channel, values, quality))
