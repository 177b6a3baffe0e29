"""The embedded store's layout, before and after: a row per channel value against a row per message.

    python bench/store_layout.py                      # write 60,000 messages; mn-solar and ph-biogas, March 2025
    python bench/store_layout.py --sites mn-solar --month 2025-06 --messages 0

The store kept a row per channel value (``readings``: site, device, channel, ts, value,
...; primary key in that order). It now keeps a row per message (store/sqlite_store.py,
store/message_rows.py: primary key site, device, ts; the numbers one float64 array in the
order of a channel layout, texts and qualities as JSON), built after this bench measured
such a layout (bench/README.md "Store layout"). The bench keeps asking whether that was
worth it, in one run: ``RowPerValue`` below is the layout before, frozen (its schema, upsert
and ``read_sources`` as the store had them, cut to what the bench needs), against
``SqliteStore`` as it is.

Write: ``--messages`` of the collector bench's messages (bench/collector_throughput.py
``messages()``: ten meters of twenty channels) in transactions of 500, WAL and
``synchronous=FULL``, upserted (the first batch is written again and must overwrite
itself: the count of values is checked); CPU time of the process (``time.process_time``),
best of ``--repeat``, the layouts alternated, each into a new file; bytes on disk a message.

Read: a month of the sites' monitored sources with ``EDGE`` either side, through each
layout's ``read_sources``; every run's frames are checked identical
(``pd.testing.assert_frame_equal``, exact), and once against the year store they came from.
Both layouts are written, into a temporary directory, with the same messages: the window's
readings of bench/processing_year.py's year store (run that first; a store of the layout
before is converted when first opened, once, a minute or two), regrouped per (device, ts)
and each widened to ``--width`` channels (made-up ones after its own): those stores hold
only the channels processing needs, a real meter's message ~20. Each read is timed
``--repeat`` times, the layouts alternated, least time kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.collector_throughput import cpu_model, messages  # noqa: E402
from contract.config import load_site  # noqa: E402
from contract.gc_paused import gc_paused  # noqa: E402
from contract.message import Quality, Reading  # noqa: E402
from processing.monthly import month_bounds  # noqa: E402
from processing.period import EDGE  # noqa: E402
from store import row_per_value  # noqa: E402
from store.sqlite_store import SEEN, SqliteStore, from_ms, to_ms  # noqa: E402

BATCH = 500
#: messages a transaction when the read bench's stores are filled
FILL = 10_000
BEFORE, AFTER = "row per value (before)", "row per message (now)"


class RowPerValue:
    """The embedded store's layout before the row per message (up to 30 Nov 2026; its tables
    and upsert frozen in store/row_per_value.py, its read here), measured against the store: a
    row per (site, device, channel, ts), the primary key the only index. Opened as the store opened it (WAL,
    ``synchronous=FULL``, autocommit, a transaction per write); what the bench does not use
    (refusal one by one, signed messages, dead letters, the other reads) is left out."""

    READ = ("SELECT ts, value, quality FROM readings WHERE site = ? AND device = ? AND channel = ? "
            "AND ts >= ? AND ts < ? AND text_value IS NULL")

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(row_per_value.SCHEMA)

    def write(self, readings: list[Reading]) -> None:
        seen: dict[tuple, tuple] = {}
        for r in readings:
            key = (r.site, r.device)
            ms = to_ms(r.ts)
            if key not in seen or seen[key][3] <= ms:
                seen[key] = (r.site, r.device, r.gateway, ms, r.status.value)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(row_per_value.UPSERT,
                                 [row for r in readings for row in row_per_value.value_rows(r, to_ms(r.ts))])
            self._db.executemany(SEEN, list(seen.values()))
            self._db.execute("COMMIT")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def read_sources(self, site, start, end, sources) -> dict[str, pd.DataFrame]:
        lo, hi = to_ms(start), to_ms(end)
        out = {}
        with gc_paused():
            for src in sources:
                device, channel = src.split(".", 1)
                rows = self._db.execute(self.READ, (site, device, channel, lo, hi)).fetchall()
                ts, value, quality = zip(*rows) if rows else ((), (), ())
                out[src] = pd.DataFrame({"ts": pd.to_datetime(np.array(ts, np.int64), unit="ms", utc=True),
                                         "value": np.array(value, float),  # a NULL value becomes NaN
                                         "quality": pd.Series(np.array(quality, object), dtype=object)})
        return out

    def count(self) -> int:
        """Channel values stored, as ``SqliteStore.count`` counts them."""
        return self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def open_layout(name: str, path: Path) -> RowPerValue | SqliteStore:
    return RowPerValue(path) if name == BEFORE else SqliteStore(path)


def bench_write(n: int, repeat: int) -> None:
    readings = [Reading.from_json(payload) for _, payload in messages(n)]
    batches = [readings[i:i + BATCH] for i in range(0, n, BATCH)]
    cpu: dict[str, list[float]] = {BEFORE: [], AFTER: []}
    wall: dict[str, list[float]] = {BEFORE: [], AFTER: []}
    size: dict[str, int] = {}  # the file's bytes once closed
    for _ in range(repeat):
        for name in cpu:
            with tempfile.TemporaryDirectory() as tmp:
                store = open_layout(name, Path(tmp) / "store.sqlite")
                w, c = time.monotonic(), time.process_time()
                for batch in batches:
                    store.write(batch)
                cpu[name].append(time.process_time() - c)
                wall[name].append(time.monotonic() - w)
                store.write(batches[0])  # written twice: overwrites itself
                assert store.count() == n * 20, (name, store.count())
                store.close()
                size[name] = sum(f.stat().st_size for f in Path(tmp).iterdir())
    us = {name: min(v) / n * 1e6 for name, v in cpu.items()}
    print(f"write {n:,} messages of 20 values, {BATCH} a transaction: " + "; ".join(
        f"{name} {us[name]:.1f} us CPU a message ({', '.join(f'{t / n * 1e6:.1f}' for t in cpu[name])}; "
        f"wall {min(wall[name]):.2f} s; {size[name] / n:.0f} bytes a message on disk)" for name in cpu)
          + f": now / before {us[AFTER] / us[BEFORE]:.3f}", flush=True)


def window_readings(rows: pd.DataFrame, site: str, width: int) -> list[Reading]:
    """The messages of ``read``'s long rows, regrouped per (device, ts), each widened to
    ``width`` channels if narrower; in ts order, as they arrive, and numbered as an outbox would."""
    grouped: dict[tuple, list] = {}
    stamps = ((rows["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy()
    for ms, gateway, device, channel, value, quality in zip(stamps, rows["gateway"], rows["device"], rows["channel"],
                                                             rows["value"].to_numpy(), rows["quality"]):
        m = grouped.setdefault((int(ms), device), [gateway, {}, {}])
        m[1][channel] = None if np.isnan(value) else float(value)
        if quality is not None:
            m[2][channel] = Quality(quality)
    return [Reading(site=site, gateway=gateway, device=device, ts=from_ms(ms), quality=quality, seq=i + 1,
                    values=values | {f"pad{k}": k + 0.25 for k in range(width - len(values))})
            for i, ((ms, device), (gateway, values, quality)) in enumerate(sorted(grouped.items()))]


def bench_read(name: str, args) -> None:
    site = load_site(ROOT / "config" / "sites" / f"{name}.yaml")
    path = ROOT / "bench" / "results" / f"year-{args.year}-{args.step}s-{name}.sqlite"
    first, last = month_bounds(args.month)
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone) - EDGE
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone) + EDGE
    sources = site.monitoring_sources
    if not path.exists():
        sys.exit(f"{path} does not exist: run python bench/processing_year.py --sites {name} "
                 f"--year {args.year} --step {args.step} first")
    year = SqliteStore(path, create=False)
    readings = window_readings(year.read(name, start, end), name, args.width)
    expected = year.read_sources(name, start, end, sources)
    year.close()
    widths = sorted({len(r.values) for r in readings})
    with tempfile.TemporaryDirectory() as tmp:
        files = {BEFORE: Path(tmp) / "before.sqlite", AFTER: Path(tmp) / "now.sqlite"}
        size = {}
        for label, file in files.items():
            store = open_layout(label, file)
            for i in range(0, len(readings), FILL):
                store.write(readings[i:i + FILL])
            store.close()
            size[label] = sum(f.stat().st_size for f in Path(tmp).glob(f"{file.name}*"))
        stores = {label: open_layout(label, file) for label, file in files.items()}
        times: dict[str, list[float]] = {label: [] for label in stores}
        for _ in range(args.repeat):
            frames = {}
            for label, store in stores.items():
                t = time.monotonic()
                frames[label] = store.read_sources(name, start, end, sources)
                times[label].append(time.monotonic() - t)
            for s in sources:
                pd.testing.assert_frame_equal(frames[BEFORE][s], frames[AFTER][s], check_exact=True)
        for s in sources:
            pd.testing.assert_frame_equal(expected[s], frames[AFTER][s], check_exact=True)
        for store in stores.values():
            store.close()
    n_values = sum(len(f) for f in expected.values())
    best = {k: min(v) for k, v in times.items()}
    print(f"{name} {args.month}: {n_values:,} values of {len(sources)} monitored sources on "
          f"{len({s.split('.')[0] for s in sources})} devices, {len(readings):,} messages of "
          f"{'/'.join(map(str, widths))} numbers; " + "; ".join(
              f"{k} {b:.3f} s ({', '.join(f'{t:.3f}' for t in times[k])}; {size[k] / len(readings):.0f} bytes "
              f"a message on disk)" for k, b in best.items()) + f": now / before {best[AFTER] / best[BEFORE]:.2f}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="*", default=["mn-solar", "ph-biogas"])
    ap.add_argument("--month", default="2025-03")
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--messages", type=int, default=60_000, help="messages written (0: no write bench)")
    ap.add_argument("--width", type=int, default=20,
                    help="channels of a message in the read bench's stores (0: as the year store has them)")
    args = ap.parse_args()
    print(f"{cpu_model()}, load {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
    if args.messages:
        bench_write(args.messages, args.repeat)
    for name in args.sites:
        bench_read(name, args)
    print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)


if __name__ == "__main__":
    main()
