"""Plain-text copies of the period's data for any tool: the daily parameter values
the figures were computed from, and the raw readings behind them (streamed from the
store a week at a time: a year of 1-minute readings is millions of rows, hundreds of
MB as text, so that file is gzip-compressed: ``raw_readings.csv.gz``).

Rows are sorted, lines end in LF, and numbers are written with ``repr`` (the
shortest text that reads back as the same float), so the same inputs give the same
bytes and a reader recovers the exact values; the gzip header holds no time (mtime 0),
so a re-export is byte-identical too. The raw readings are compressed with ISA-L's deflate
(``isal``, level 1), ~3.5 times as fast as zlib's level 1 for as many bytes, a gzip member a
week (so that each week can be formatted and compressed in another process while the next
are read; RFC 1952 allows members in a row, and gzip, zcat, Python's ``gzip`` and pandas
read them as one text). The messages of the site the collector refused during the
period go beside them (``dead_letters.csv.gz``): what was not counted, and why. A file of simulated readings says so in its first
line, a ``#`` comment (``pandas.read_csv(..., comment="#")`` skips it and reads the
``.gz`` as it is).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import gzip
import io
import time
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as NotYet
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from isal import igzip

from contract.store import DeadLetter, ReadingStore
from processing.export.period_figures import PeriodFigures, local_bounds
from contract.float_text import float_texts

CHUNK = dt.timedelta(days=7)
#: on 48 MB of readings, level 1 took 0.19 s for 7.5 MB, zlib's default (6) 1.19 s for 6.3 MB:
#: six times the time, longer than reading the rows, for 16 % fewer bytes
GZIP_LEVEL = 1
#: the raw readings' deflate (ISA-L's levels are 0 - 3): on 61 MB of ph-biogas's readings level 1
#: wrote as many bytes as zlib's level 1 (9.4 MB) at 1,200 MB/s against zlib's 330 MB/s, where
#: compressing a year took as long as formatting it; level 0 writes 30 % more, level 3 is 3 x slower
RAW_GZIP_LEVEL = 1
#: weeks read ahead of the one being written when other processes format them: one draws the
#: charts first (~1 s), while this one reads on (a week of ph-biogas is ~2 MB of arrays)
PENDING_WEEKS = 32
#: how long the export waits for one result of a process beside it (a week's text: ~0.1 s; the workbook
#: and charts of a year: ~1.2 s) before it takes that process as stopped or hung [s]
HUNG_S = 120.0
#: the wait for such a result looks at the clock this often [s] (``made``)
HUNG_TICK_S = 1.0


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
    values = float_texts(daily["value"].to_numpy(dtype=float))
    rows = ([d.isoformat(), p, u or "", unit, v] for (d, p, u, unit), v in
            zip(daily[["day", "parameter", "unit_id", "unit"]].itertuples(index=False), values))
    return _write(path, ["day", "parameter", "unit_id", "unit", "value"], rows, figures.simulated)


def write_completeness(figures: PeriodFigures, path: Path) -> Path:
    """``month, source, completeness``: how complete each source channel's readings were in each month
    (its readings present over the recording intervals of the whole month [1]), what the completeness
    chart draws, sorted by month and source (``jcm verify`` makes it again from its recomputation)."""
    rows = [(month, source) for month in sorted(figures.completeness) for source in sorted(figures.completeness[month])]
    values = float_texts(np.array([figures.completeness[m][s] for m, s in rows], dtype=float))
    return _write(path, ["month", "source", "completeness"], ([m, s, v] for (m, s), v in zip(rows, values)),
                  figures.simulated)


def write_raw_readings(figures: PeriodFigures, store: ReadingStore, path: Path,
                       apart: Executor | None = None) -> Path:
    """``ts, device, channel, value, quality``: the monitored sources' readings between the
    period's local-day bounds in time order (then device, channel), ``ts`` in UTC ISO 8601
    with milliseconds; gzip-compressed (``path`` ends in ``.gz``), a gzip member a week.

    The store is read here; each week's text is written and compressed by ``apart`` (a
    process beside this one) if given, while the next weeks are read, else here."""
    site = figures.site
    with path.open("wb") as f:
        f.write(igzip.compress((SIMULATED_NOTE * figures.simulated + "ts,device,channel,value,quality\n").encode(),
                               RAW_GZIP_LEVEL, mtime=0))
        start, end = local_bounds(site, figures.first, figures.last)
        pending: deque = deque()
        while start < end:
            week = _week(store.read_sources(site.site, start, min(start + CHUNK, end), site.monitoring_sources))
            pending.append(apart.submit(_member, week) if apart else _member(week))
            while len(pending) > (PENDING_WEEKS if apart else 0):
                f.write(made(pending.popleft()))
            start += CHUNK
        for member in pending:
            f.write(made(member))
    return path


#: columns of dead_letters.csv.gz
DEAD_LETTER_COLUMNS = ["received", "topic", "size", "sha256", "reason", "payload_start_base64"]


def write_dead_letters(figures: PeriodFigures, store: ReadingStore, path: Path) -> tuple[Path, int]:
    """``received, topic, size, sha256, reason, payload_start_base64``: the messages on the
    site's topics that the collector refused (dead letters) received within the period's
    local-day bounds, oldest first, ``received`` in UTC ISO 8601 with microseconds; the
    payload's first KiB as the store keeps it, base64 (a payload is bytes, not always text),
    its whole size [bytes] and SHA-256. Returns the path and how many letters it lists."""
    site = figures.site
    count = 0
    with (path.open("wb") as f, gzip.GzipFile(path.name.removesuffix(".gz"), "wb", GZIP_LEVEL, f, mtime=0) as z,
          io.TextIOWrapper(z, encoding="utf-8", newline="") as text):
        if figures.simulated:
            text.write(SIMULATED_NOTE)
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(DEAD_LETTER_COLUMNS)
        for d in store.site_dead_letters(site.site, *local_bounds(site, figures.first, figures.last)):
            writer.writerow(dead_letter_row(d))
            count += 1
    return path, count


def dead_letter_row(d: DeadLetter) -> list[str]:
    """A dead letter as its row of ``dead_letters.csv.gz`` (``DEAD_LETTER_COLUMNS``), as text (``jcm verify``
    reads each row back into a letter and compares it with this)."""
    return [d.received.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            d.topic, str(d.size), d.sha256, d.reason, base64.b64encode(d.payload).decode()]


@dataclass(frozen=True)
class Week:
    """A week of the sources' readings, in plain arrays (sent to another process as they are):
    ``keys`` the sources (``device.channel``) sorted by (device, channel), ``lengths`` how many
    readings each has; ``ts`` [ns since the epoch, UTC] and ``value`` of each reading, source
    after source, each in time order; ``flagged`` where those with a quality are, and
    ``flags`` their qualities."""

    keys: list[str]
    lengths: list[int]
    ts: np.ndarray
    value: np.ndarray
    flagged: np.ndarray
    flags: list[str]


def _week(rows: dict[str, pd.DataFrame]) -> Week:
    """``read_sources``' frames as a ``Week``."""
    keys = sorted(rows, key=lambda src: tuple(src.split(".", 1)))
    frames = [rows[k] for k in keys]
    if not frames:
        return Week([], [], np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), [])
    quality = np.concatenate([frame["quality"].to_numpy(dtype=object) for frame in frames])
    flagged = np.flatnonzero(pd.notna(quality))
    return Week(keys, [len(frame) for frame in frames],
                np.concatenate([frame["ts"].to_numpy(dtype="datetime64[ns]") for frame in frames]).view(np.int64),
                np.concatenate([frame["value"].to_numpy(dtype=float) for frame in frames]),
                flagged, [str(q) for q in quality[flagged]])


def _member(week: Week) -> bytes:
    """The week's CSV lines as one gzip member (none if it has no readings)."""
    text = _raw_text(week)
    return igzip.compress(text.encode(), RAW_GZIP_LEVEL, mtime=0) if text else b""


class Hung(Exception):
    """A process beside the export's gave no result within ``HUNG_S``."""


def made(result):
    """``result`` (a week's gzip member, the files drawn), once made: waited for if made in another
    process, ``HUNG_S`` at most (one stopped or hung would hold the export for ever). Only the time
    this process runs counts: stopped with its helpers (Ctrl-Z, then fg) or with the machine
    (suspended), a wait is longer than its tick, which is not the helpers' doing."""
    if not isinstance(result, Future):
        return result
    waited = 0.0
    while True:
        began = time.monotonic()
        try:
            return result.result(timeout=min(HUNG_TICK_S, HUNG_S - waited))
        except NotYet:
            if result.done():  # the process's own error, a timeout of its own
                raise
        waited += min(time.monotonic() - began, HUNG_TICK_S)
        if waited >= HUNG_S:
            raise Hung(f"a process making the charts or the raw readings' text gave no result for {HUNG_S:.0f} s "
                       "(stopped or hung)")


def _raw_text(week: Week) -> str:
    """The CSV lines ``csv.writer`` would write for the week's readings merged in time
    order, assembled column by column (a writer call per row took as long as the read)."""
    n = len(week.ts)
    if not n:
        return ""
    order = np.argsort(week.ts, kind="stable")  # ties keep the sources' (device, channel) order
    source = np.repeat(np.arange(len(week.keys)), week.lengths)[order]
    middles = np.array([f"Z,{_field(d)},{_field(c)}," for d, c in (k.split(".", 1) for k in week.keys)],
                       dtype=object)
    tails = [",\n"] * n  # the quality column, empty but for flagged readings
    if len(week.flagged):
        at = np.empty(n, np.int64)
        at[order] = np.arange(n)  # where each reading goes in time order
        for i, flag in zip(at[week.flagged].tolist(), week.flags):
            tails[i] = f",{_field(flag)}\n"
    parts: list = [None] * (4 * n)
    parts[0::4] = _ts_texts(week.ts[order].view("datetime64[ns]"))
    parts[1::4] = middles[source].tolist()
    parts[2::4] = float_texts(week.value[order])
    parts[3::4] = tails
    return "".join(parts)


def _ts_texts(ts: np.ndarray) -> list:
    """ISO 8601 text (milliseconds) of each of the sorted ``ts``: each distinct time is
    formatted once (every source shares the minute's time; formatting costs ~1 µs a value)."""
    new = np.empty(len(ts), bool)
    new[:1] = True
    np.not_equal(ts[1:], ts[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    texts = np.datetime_as_string(ts[starts], unit="ms").astype(object)
    return np.repeat(texts, np.diff(starts, append=len(ts))).tolist()


def _field(text: str) -> str:
    """``text`` as one CSV field: quoted as ``csv.writer`` quotes it when it must be."""
    if not set(text) & set(',"\r\n'):
        return text
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text])
    return buf.getvalue()[:-1]
