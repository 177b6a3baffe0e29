"""Would another layout of the embedded store read a month faster?

    python bench/store_layout.py                      # mn-solar and ph-biogas, March 2025
    python bench/store_layout.py --sites mn-solar --month 2025-06

Today the store keeps a row per channel value (``readings``: site, device, channel, ts,
value, ...; primary key in that order). The alternative measured here keeps a row per
message: (site, device, ts) and the message's numbers as one JSON object, the layout a
collector would write with one row per MQTT message. Both are read the way processing
reads: the month's monitored sources with ``EDGE`` either side, into one array of
timestamps and one of values per source (the row-per-value layout through the store's
``read_sources``; the row-per-message layout by one primary-key range per device and
``json.loads`` of each row). The copy is made from bench/processing_year.py's stores
(run that first) into a temporary file; each read is timed ``--repeat`` times, alternately,
least time kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.config import load_site  # noqa: E402
from contract.gc_paused import gc_paused  # noqa: E402
from processing.monthly import month_bounds  # noqa: E402
from processing.period import EDGE  # noqa: E402
from store.sqlite_store import SqliteStore, to_ms  # noqa: E402

MESSAGES = """
CREATE TABLE messages (site TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL, gateway TEXT NOT NULL,
                       "values" TEXT NOT NULL, quality TEXT, PRIMARY KEY (site, device, ts)) WITHOUT ROWID
"""


def copy_as_messages(src: Path, dst: Path, site: str, lo: int, hi: int) -> int:
    """The window's rows of ``src`` regrouped as one row per (device, ts) in ``dst``. The JSON
    is written by Python (exact floats): SQLite's ``json_group_object`` renders a REAL with
    15 significant digits, which does not read back as the same number."""
    messages: dict[tuple, list] = {}
    for device, ts, gateway, channel, value, quality in sqlite3.connect(src).execute(
            "SELECT device, ts, gateway, channel, value, quality FROM readings "
            "WHERE site = ? AND ts >= ? AND ts < ? AND text_value IS NULL", (site, lo, hi)):
        m = messages.setdefault((device, ts), [gateway, {}, {}])
        m[1][channel] = value
        if quality is not None:
            m[2][channel] = quality
    db = sqlite3.connect(dst)
    db.execute(MESSAGES)
    db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?)",
                   [(site, d, ts, g, json.dumps(v), json.dumps(q) if q else None)
                    for (d, ts), (g, v, q) in messages.items()])
    db.commit()
    db.close()
    return len(messages)


def read_messages(db: sqlite3.Connection, site, sources: list[str], lo: int, hi: int) -> dict[str, tuple]:
    """Per source: timestamps [ms] and values, from one JSON object per message."""
    wanted: dict[str, list[str]] = {}
    for s in sources:
        dev, ch = s.split(".")
        wanted.setdefault(dev, []).append(ch)
    out = {}
    for dev, channels in wanted.items():
        rows = db.execute('SELECT ts, "values" FROM messages WHERE site = ? AND device = ? AND ts >= ? AND ts < ?',
                          (site, dev, lo, hi)).fetchall()
        ts = np.array([r[0] for r in rows], np.int64)
        decoded = [json.loads(r[1]) for r in rows]
        for ch in channels:
            out[f"{dev}.{ch}"] = (ts, np.array([d.get(ch) for d in decoded], float))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="*", default=["mn-solar", "ph-biogas"])
    ap.add_argument("--month", default="2025-03")
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for name in args.sites:
        site = load_site(ROOT / "config" / "sites" / f"{name}.yaml")
        path = ROOT / "bench" / "results" / f"year-{args.year}-{args.step}s-{name}.sqlite"
        first, last = month_bounds(args.month)
        start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone) - EDGE
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone) + EDGE
        lo, hi = to_ms(start), to_ms(end)
        with tempfile.TemporaryDirectory() as tmp:
            n_msgs = copy_as_messages(path, Path(tmp) / "messages.sqlite", name, lo, hi)
            store, db = SqliteStore(path, create=False), sqlite3.connect(Path(tmp) / "messages.sqlite")
            per_value, per_message = [], []
            for _ in range(args.repeat):
                t = time.monotonic()
                rows = store.read_sources(name, start, end, site.monitoring_sources)
                per_value.append(time.monotonic() - t)
                t = time.monotonic()
                with gc_paused():
                    got = read_messages(db, name, site.monitoring_sources, lo, hi)
                    {src: pd.to_datetime(ts, unit="ms", utc=True) for src, (ts, _) in got.items()}
                per_message.append(time.monotonic() - t)
            n_values = sum(len(f) for f in rows.values())
            assert all(np.array_equal(rows[s]["value"].to_numpy(), got[s][1], equal_nan=True) for s in rows)
            print(f"{name} {args.month}: {n_values:,} values of the monitored sources in {n_msgs:,} messages; "
                  f"row per value (read_sources) {min(per_value):.3f} s, row per message (JSON) "
                  f"{min(per_message):.3f} s: {min(per_message) / min(per_value):.2f}x", flush=True)


if __name__ == "__main__":
    main()
