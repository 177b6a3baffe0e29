"""Would another layout of the embedded store write messages and read a month faster?

    python bench/store_layout.py                      # write 60,000 messages; mn-solar and ph-biogas, March 2025
    python bench/store_layout.py --sites mn-solar --month 2025-06 --messages 0

Today the store keeps a row per channel value (``readings``: site, device, channel, ts,
value, ...; primary key in that order). Two layouts with a row per message are measured
against it, primary key (site, device, ts):

- **JSON**: the message's numbers as one JSON object.
- **packed**: the message's numbers as one float64 array (NaN for null), in the order of a
  channel layout kept per (site, device) in a side table (a new layout when a device's
  channels change; the row names its layout), qualities as JSON only when there are any.

Write: ``--messages`` of the collector bench's messages (bench/collector_throughput.py
``messages()``: ten meters of twenty channels) in transactions of 500, WAL and
``synchronous=FULL``, upserted (a message written twice overwrites itself), the row per
value through ``SqliteStore.write`` itself and the packed layout the same way (devices
seen included); CPU time of the process (``time.process_time``), best of ``--repeat``,
the layouts alternated, each into a new file.

Read: the month's monitored sources with ``EDGE`` either side, into the frames
``read_sources`` returns (timestamps, values, qualities per source): the row per value
through ``read_sources``; the row per message by one primary-key range per device and
``json.loads`` of each row, or ``np.frombuffer`` of the device's concatenated arrays as one
2-D array and the sources' columns of it. The copies are made from
bench/processing_year.py's stores (run that first) into a temporary directory; those
stores hold only the monitored channels, so the packed copy is also made with its layouts
widened to ``--width`` channels (the bench meters' twenty), the width of a real message.
Each read is timed ``--repeat`` times, the layouts alternated, least time kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_throughput import cpu_model, messages  # noqa: E402
from contract.config import load_site  # noqa: E402
from contract.gc_paused import gc_paused  # noqa: E402
from contract.message import Reading  # noqa: E402
from processing.monthly import month_bounds  # noqa: E402
from processing.period import EDGE  # noqa: E402
from store.sqlite_store import SEEN, SqliteStore, to_ms  # noqa: E402

MESSAGES = """
CREATE TABLE messages (site TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL, gateway TEXT NOT NULL,
                       "values" TEXT NOT NULL, quality TEXT, PRIMARY KEY (site, device, ts)) WITHOUT ROWID
"""

PACKED = """CREATE TABLE IF NOT EXISTS layouts (site TEXT NOT NULL, device TEXT NOT NULL, layout INTEGER NOT NULL,
                                    channels TEXT NOT NULL, PRIMARY KEY (site, device, layout)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packed (site TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL,
                                   gateway TEXT NOT NULL, layout INTEGER NOT NULL, seq INTEGER, "values" BLOB NOT NULL,
                                   quality TEXT, PRIMARY KEY (site, device, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (site TEXT NOT NULL, device TEXT NOT NULL, gateway TEXT NOT NULL,
                                    last_seen INTEGER NOT NULL, status TEXT, PRIMARY KEY (site, device))
"""

UPSERT_PACKED = """
INSERT INTO packed (site, device, ts, gateway, layout, seq, "values", quality) VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (site, device, ts) DO UPDATE SET gateway = excluded.gateway, layout = excluded.layout,
    seq = excluded.seq, "values" = excluded."values", quality = excluded.quality
"""

BATCH = 500


class PackedStore:
    """The packed layout's writer and reader: one SQLite file opened as ``SqliteStore`` opens
    its own (WAL, ``synchronous=FULL``, autocommit, a transaction per write). Numbers only:
    a text channel is left out of the message's layout (a real store would need a column for
    it)."""

    def __init__(self, path: Path):
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        self.attach(db)

    def attach(self, db: sqlite3.Connection) -> None:
        """Keep the packed tables in ``db`` (an open connection, outside a transaction)."""
        self._db = db
        for table in PACKED.split(";"):
            db.execute(table)
        self._layouts: dict[tuple, int] = {(s, d, tuple(json.loads(c))): n for s, d, n, c in
                                           db.execute("SELECT site, device, layout, channels FROM layouts")}
        self._channels: dict[tuple, list[str]] = {}

    def write(self, readings: list[Reading]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            new = self.upsert(readings)
            self._db.execute("COMMIT")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        self._layouts.update(new)

    def upsert(self, readings: list[Reading]) -> dict[tuple, int]:
        """Upsert in the open transaction; return the layouts it made (known once it commits)."""
        new: dict[tuple, int] = {}
        seen: dict[tuple, tuple] = {}
        rows = []
        for r in readings:
            site, device, ms = r.site, r.device, to_ms(r.ts)
            try:
                values = array("d", r.values.values())  # floats, ints and booleans: the usual message
                channels = tuple(r.values)
            except TypeError:  # a null or a text
                numbers = {c: v for c, v in r.values.items() if not isinstance(v, str)}
                values = array("d", (float("nan") if v is None else v for v in numbers.values()))
                channels = tuple(numbers)
            key = (site, device, channels)
            layout = self._layouts.get(key)
            if layout is None:
                layout = new.get(key)
                if layout is None:
                    layout = new[key] = 1 + max((n for (s, d, _), n in (*self._layouts.items(), *new.items())
                                                 if s == site and d == device), default=0)
            rows.append((site, device, ms, r.gateway, layout, r.seq, values.tobytes(),
                         json.dumps({c: q.value for c, q in r.quality.items()}) if r.quality else None))
            if (site, device) not in seen or seen[site, device][3] <= ms:
                seen[site, device] = (site, device, r.gateway, ms, r.status.value)
        self._db.executemany("INSERT INTO layouts VALUES (?,?,?,?)",
                             [(s, d, n, json.dumps(c)) for (s, d, c), n in new.items()])
        self._db.executemany(UPSERT_PACKED, rows)
        self._db.executemany(SEEN, list(seen.values()))
        return new

    def read_sources(self, site: str, lo: int, hi: int, sources: list[str]) -> dict[str, pd.DataFrame]:
        """The frames ``SqliteStore.read_sources`` returns: per device one primary-key range,
        its arrays joined and read as one 2-D array per layout, the sources' columns of it."""
        wanted: dict[str, list[str]] = {}
        for s in sources:
            dev, ch = s.split(".", 1)
            wanted.setdefault(dev, []).append(ch)
        out = {}
        with gc_paused():
            for dev, channels in wanted.items():
                rows = self._db.execute('SELECT ts, layout, "values", quality FROM packed WHERE site = ? '
                                        'AND device = ? AND ts >= ? AND ts < ?', (site, dev, lo, hi)).fetchall()
                ts, layout, blobs, quality = zip(*rows) if rows else ((),) * 4
                ts = np.array(ts, np.int64)
                # qualities are JSON on the rows that have any only: most months have none
                quality = np.array(quality, object) if quality.count(None) < len(quality) else None
                parts: dict[str, list] = {ch: [] for ch in channels}
                kinds = set(layout)  # one but where the device's channels changed in the window
                for n in kinds:
                    at = slice(None) if len(kinds) == 1 else np.flatnonzero(np.array(layout) == n)
                    names = self._layout(site, dev, n)
                    matrix = np.frombuffer(b"".join(np.array(blobs, object)[at] if isinstance(at, np.ndarray)
                                                    else blobs), np.float64).reshape(-1, len(names))
                    for ch in channels:
                        if ch in names:
                            parts[ch].append((ts[at], matrix[:, names.index(ch)],
                                              None if quality is None else quality[at]))
                for ch in channels:
                    out[f"{dev}.{ch}"] = _frame(parts[ch], ch)
        return out

    def _layout(self, site: str, device: str, layout: int) -> list[str]:
        key = (site, device, layout)
        if key not in self._channels:
            [(text,)] = self._db.execute("SELECT channels FROM layouts WHERE site = ? AND device = ? AND layout = ?",
                                         key).fetchall()
            self._channels[key] = json.loads(text)
        return self._channels[key]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM packed").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _frame(parts: list[tuple], channel: str) -> pd.DataFrame:
    """``read_sources``'s frame of one source from its (ts, values, qualities or None) per layout."""
    if len(parts) == 1:
        ts, value, quality = parts[0]
    else:  # the device's layouts in ts order
        ts = np.concatenate([p[0] for p in parts] or [np.empty(0, np.int64)])
        order = np.argsort(ts, kind="stable")
        ts, value = ts[order], np.concatenate([p[1] for p in parts] or [np.empty(0)])[order]
        quality = (None if all(p[2] is None for p in parts) else
                   np.concatenate([np.full(len(p[0]), None, object) if p[2] is None else p[2] for p in parts])[order])
    q = np.full(len(ts), None, object)
    if quality is not None:
        for i in np.flatnonzero(quality != None):  # noqa: E711 (elementwise)
            q[i] = json.loads(quality[i]).get(channel)
    return pd.DataFrame({"ts": pd.to_datetime(ts, unit="ms", utc=True), "value": np.array(value, float),
                         "quality": pd.Series(q, dtype=object)})


def window_messages(src: Path, site: str, lo: int, hi: int) -> dict[tuple, list]:
    """The window's numeric rows of ``src`` regrouped per (device, ts): [gateway, seq, {channel: value},
    {channel: quality}]."""
    messages: dict[tuple, list] = {}
    for device, ts, gateway, seq, channel, value, quality in sqlite3.connect(src).execute(
            "SELECT device, ts, gateway, seq, channel, value, quality FROM readings "
            "WHERE site = ? AND ts >= ? AND ts < ? AND text_value IS NULL", (site, lo, hi)):
        m = messages.setdefault((device, ts), [gateway, seq, {}, {}])
        m[2][channel] = value
        if quality is not None:
            m[3][channel] = quality
    return messages


def copy_as_messages(msgs: dict[tuple, list], dst: Path, site: str) -> None:
    """The messages as one JSON row each in ``dst``. The JSON is written by Python (exact floats):
    SQLite's ``json_group_object`` renders a REAL with 15 significant digits, which does not read
    back as the same number."""
    db = sqlite3.connect(dst)
    db.execute(MESSAGES)
    db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?)",
                   [(site, d, ts, g, json.dumps(v), json.dumps(q) if q else None)
                    for (d, ts), (g, _, v, q) in msgs.items()])
    db.commit()
    db.close()


def copy_as_packed(msgs: dict[tuple, list], dst: Path, site: str, width: int) -> PackedStore:
    """The messages packed in ``dst``, each widened to ``width`` channels (made-up ones, after its
    own) if narrower, through ``PackedStore.write``."""
    store = PackedStore(dst)
    readings = []
    for (device, ts), (gateway, seq, values, quality) in msgs.items():
        values = values | {f"pad{k}": 0.0 for k in range(width - len(values))}
        readings.append(Reading(site=site, gateway=gateway, device=device, values=values, quality=quality, seq=seq,
                                ts=dt.datetime.fromtimestamp(ts / 1000, dt.UTC)))
        if len(readings) == 50_000:
            store.write(readings)
            readings = []
    store.write(readings)
    return store


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


def bench_write(n: int, repeat: int) -> None:
    readings = [Reading.from_json(payload) for _, payload in messages(n)]
    batches = [readings[i:i + BATCH] for i in range(0, n, BATCH)]
    cpu: dict[str, list[float]] = {"row per value": [], "packed": []}
    wall: dict[str, list[float]] = {"row per value": [], "packed": []}
    size: dict[str, int] = {}  # the file's bytes once closed
    for _ in range(repeat):
        for name in cpu:
            with tempfile.TemporaryDirectory() as tmp:
                store = (SqliteStore(Path(tmp) / "store.sqlite") if name == "row per value"
                         else PackedStore(Path(tmp) / "store.sqlite"))
                w, c = time.monotonic(), time.process_time()
                for batch in batches:
                    store.write(batch)
                cpu[name].append(time.process_time() - c)
                wall[name].append(time.monotonic() - w)
                store.write(batches[0])  # written twice: overwrites itself
                assert store.count() == n * (20 if name == "row per value" else 1), (name, store.count())
                store.close()
                size[name] = sum(f.stat().st_size for f in Path(tmp).iterdir())
    us = {name: min(v) / n * 1e6 for name, v in cpu.items()}
    print(f"write {n:,} messages of 20 values, {BATCH} a transaction: " + "; ".join(
        f"{name} {us[name]:.1f} us CPU a message ({', '.join(f'{t / n * 1e6:.1f}' for t in cpu[name])}; "
        f"wall {min(wall[name]):.2f} s; {size[name] / n:.0f} bytes a message on disk)" for name in cpu)
          + f": packed / row per value {us['packed'] / us['row per value']:.3f}", flush=True)


def bench_read(name: str, args) -> None:
    site = load_site(ROOT / "config" / "sites" / f"{name}.yaml")
    path = ROOT / "bench" / "results" / f"year-{args.year}-{args.step}s-{name}.sqlite"
    first, last = month_bounds(args.month)
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone) - EDGE
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone) + EDGE
    lo, hi = to_ms(start), to_ms(end)
    sources = site.monitoring_sources
    with tempfile.TemporaryDirectory() as tmp:
        msgs = window_messages(path, name, lo, hi)
        copy_as_messages(msgs, Path(tmp) / "messages.sqlite", name)
        packed = copy_as_packed(msgs, Path(tmp) / "packed.sqlite", name, 0)
        wide = copy_as_packed(msgs, Path(tmp) / "wide.sqlite", name, args.width)
        widths = sorted({len(v) for _, _, v, _ in msgs.values()})
        store, db = SqliteStore(path, create=False), sqlite3.connect(Path(tmp) / "messages.sqlite")
        times: dict[str, list[float]] = {"row per value": [], "JSON": [], "packed": [], f"packed x{args.width}": []}
        for _ in range(args.repeat):
            t = time.monotonic()
            rows = store.read_sources(name, start, end, sources)
            times["row per value"].append(time.monotonic() - t)
            t = time.monotonic()
            with gc_paused():
                got = read_messages(db, name, sources, lo, hi)
                {src: pd.to_datetime(ts, unit="ms", utc=True) for src, (ts, _) in got.items()}
            times["JSON"].append(time.monotonic() - t)
            for label, p in ((f"packed x{args.width}", wide), ("packed", packed)):
                t = time.monotonic()
                frames = p.read_sources(name, lo, hi, sources)
                times[label].append(time.monotonic() - t)
                for s in rows:
                    pd.testing.assert_frame_equal(rows[s], frames[s])
        assert all(np.array_equal(rows[s]["value"].to_numpy(), got[s][1], equal_nan=True) for s in rows)
        n_values = sum(len(f) for f in rows.values())
        best = {k: min(v) for k, v in times.items()}
        print(f"{name} {args.month}: {n_values:,} values of {len(sources)} monitored sources in {len(msgs):,} "
              f"messages of {'/'.join(map(str, widths))} numbers; " + "; ".join(
                  f"{k} {b:.3f} s ({b / best['row per value']:.2f}x)" for k, b in best.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="*", default=["mn-solar", "ph-biogas"])
    ap.add_argument("--month", default="2025-03")
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--messages", type=int, default=60_000, help="messages written (0: no write bench)")
    ap.add_argument("--width", type=int, default=20, help="channels of a message in the widened packed copy")
    args = ap.parse_args()
    print(f"{cpu_model()}, load {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
    if args.messages:
        bench_write(args.messages, args.repeat)
    for name in args.sites:
        bench_read(name, args)


if __name__ == "__main__":
    main()
