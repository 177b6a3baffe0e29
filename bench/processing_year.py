"""One year of 1-minute readings for each reference site, from the embedded store to
monthly ledger results and a monitoring-period export of the whole year.

    python bench/processing_year.py                          # 2025, 60 s readings, all five sites
    python bench/processing_year.py --step 900 --sites mn-solar   # a quick look

The store is filled once per site and step (simulated plant physics, the channels the
methodology monitors, channel ``simulated`` = 1) under bench/results/ and reused by later
runs. The timed part, twelve ``process_month`` calls and one ``export_period`` into a
fresh ledger, runs in a child process per site, so that its peak RSS is its own.

Each is set against its floor, measured in the same process just before it:

- a month's floor: reading the values the month reads, with their flags (its local days and
  ``EDGE`` either side, the monitored sources only; processing's quality checks read each
  value's flag) the fastest plain way we know, one primary-key range per device (``SELECT ts,
  numbers, quality``), its rows' float64 arrays joined and read
  as one 2-D array, the sources' columns of it and ``pd.to_datetime``: a frame of one column
  per source (before the store kept a row per message, the floor read a row per value and
  pivoted them). Also timed, and printed beside it: the same read with SQLite concatenating
  each device's range into one row (``group_concat``), as the store's ``read_sources`` now
  does, ~2.5 x faster than a Python row per reading;
- the export's floor: reading the values of the raw-readings file the same way, a week at a
  time, with the qualities (``SELECT ts, numbers, quality``); also timed aggregated by SQLite,
  and the exports printed against it.

Both floors run with the garbage collector paused, as the store's reads do. Other
sessions share this machine, so each month's floor and ``process_month`` are run
``--repeat`` times, alternately, and the ratio is the least time of each (the later runs
of a month find its ledger revision unchanged and add none); the year's total is the
first runs'. The export's floor is read before and after the export, its lesser time kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.config import load_site  # noqa: E402
from contract.config.site import Site  # noqa: E402
from simulators.history import SIMULATED_CHANNEL, history  # noqa: E402
from contract.gc_paused import gc_paused  # noqa: E402
from store.sqlite_store import SqliteStore, to_ms  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def sites(names: list[str] | None) -> list[Site]:
    found = [load_site(f) for f in sorted(glob.glob(str(ROOT / "config" / "sites" / "*.yaml")))]
    return [s for s in found if not names or s.site in names]


def store_path(site: str, year: int, step: int) -> Path:
    return RESULTS / f"year-{year}-{step}s-{site}.sqlite"


def fill(site_file: str, year: int, step: int) -> dict:
    """Write the site's year of readings unless an earlier run did; how long it took."""
    site = load_site(site_file)
    path = store_path(site.site, year, step)
    done = path.with_suffix(".filled")
    if done.exists():
        return {"site": site.site, "filled_before": True, **json.loads(done.read_text())}
    path.unlink(missing_ok=True)
    store = SqliteStore(path)
    channels = {*site.monitoring_channels, SIMULATED_CHANNEL}
    t0, readings, rows, pending = time.monotonic(), 0, 0, []
    for batch in history(site, dt.date(year, 1, 1), dt.date(year, 12, 31), step_s=step, channels=channels):
        pending += batch
        if len(pending) >= 20_000:
            store.write(pending)
            readings, rows = readings + len(pending), rows + sum(len(r.values) for r in pending)
            pending = []
    store.write(pending)
    readings, rows = readings + len(pending), rows + sum(len(r.values) for r in pending)
    store.close()
    info = {"readings": readings, "rows": rows, "fill_s": round(time.monotonic() - t0, 1),
            "db_mb": round(path.stat().st_size / 2**20)}
    done.write_text(json.dumps(info))
    return {"site": site.site, "filled_before": False, **info}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def read_floor(db: sqlite3.Connection, site: Site, start: dt.datetime, end: dt.datetime, quality: bool,
               aggregated: bool = False) -> pd.DataFrame:
    """The monitored sources' values in [start, end), one column per source (and one of qualities
    per device if ``quality``): one primary-key range per device, its rows' float64 arrays joined
    and read as one 2-D array, the sources' columns of it. ``aggregated``: SQLite concatenates the
    range's stamps, numbers and flagged rows into one row (as the store's ``read_sources`` does)."""
    by_device: dict[str, list[str]] = {}
    for src in site.monitoring_sources:
        dev, channel = src.split(".")
        by_device.setdefault(dev, []).append(channel)
    frames = []
    for dev, channels in by_device.items():
        ((layout,),) = db.execute("SELECT channels FROM layouts JOIN device_layouts ON id = layout WHERE site = ? "
                                  "AND device = ?", (site.site, dev)).fetchall()  # the bench's devices keep one
        names = json.loads(layout)[0]
        if aggregated:
            ((stamps, numbers, flagged),) = db.execute(
                "SELECT group_concat(ts), CAST(group_concat(numbers, '') AS BLOB), json_group_array(json_array(ts, "
                "quality)) FILTER (WHERE quality <> '') FROM readings WHERE site = ? AND device = ? AND ts >= ? AND "
                "ts < ?", (site.site, dev, to_ms(start), to_ms(end))).fetchall()
            ts = np.fromstring(stamps or "", np.int64, sep=",")
            matrix = np.frombuffer(numbers or b"", np.float64).reshape(len(ts), len(names))
            flags = (np.full(len(ts), None, object),)
            for t, q in json.loads(flagged) if quality else ():
                flags[0][np.searchsorted(ts, t)] = q
        else:
            rows = db.execute(f"SELECT ts, numbers{', quality' if quality else ''} FROM readings WHERE site = ? AND "
                              "device = ? AND ts >= ? AND ts < ?",
                              (site.site, dev, to_ms(start), to_ms(end))).fetchall()
            ts, numbers, *flags = zip(*rows) if rows else ((),) * (3 if quality else 2)
            matrix = np.frombuffer(b"".join(numbers), np.float64).reshape(len(rows), len(names))
        columns = {f"{dev}.{c}": matrix[:, names.index(c)] for c in channels if c in names}
        if quality:
            columns[f"{dev} quality"] = np.array(flags[0], object)
        frames.append(pd.DataFrame(columns, index=pd.to_datetime(np.array(ts, np.int64), unit="ms", utc=True)))
    return pd.concat(frames, axis=1)


def month_floor(db: sqlite3.Connection, site: Site, month: str, flags: bool = True,
                aggregated: bool = False) -> tuple[float, float]:
    """Seconds to read a month's values, with their flags unless not ``flags``, aggregated by SQLite
    if ``aggregated`` (see the module's docstring): wall, CPU."""
    from processing.monthly import month_bounds
    from processing.period import EDGE

    first, last = month_bounds(month)
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone) - EDGE
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone) + EDGE
    t, c = time.monotonic(), time.process_time()
    with gc_paused():
        read_floor(db, site, start, end, quality=flags, aggregated=aggregated)  # a column per source: no pivot
    return time.monotonic() - t, time.process_time() - c


def export_floor(db: sqlite3.Connection, site: Site, first: dt.date, last: dt.date,
                 aggregated: bool = False) -> tuple[float, int, float]:
    """Seconds to read the rows of the period's raw-readings file, a week at a time (aggregated by
    SQLite if ``aggregated``, as the store's ``read_sources`` does); the rows; CPU seconds."""
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone)
    t, c, n = time.monotonic(), time.process_time(), 0
    with gc_paused():
        while start < end:
            df = read_floor(db, site, start, min(end, start + dt.timedelta(days=7)), quality=True,
                            aggregated=aggregated)
            n += int(df.filter(like=".").count().sum())
            start += dt.timedelta(days=7)
    return time.monotonic() - t, n, time.process_time() - c


def _children_cpu() -> float:
    """CPU seconds of this process's ended children."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def child(site_name: str, year: int, step: int, repeat: int) -> None:
    """The timed part, in a process of its own: a year of months, then the year's export."""
    from processing.export import export_period
    from processing.ledger import Ledger
    from processing.monthly import process_month

    (site,) = sites([site_name])
    store = SqliteStore(store_path(site.site, year, step))
    db = sqlite3.connect(store_path(site.site, year, step))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        months, process_s, process_cpu, floors_cpu = [], 0.0, 0.0, 0.0
        for m in range(1, 13):
            month = f"{year}-{m:02d}"
            floors, times, cpu_floors, bare, aggregated = [], [], [], [], []
            for _ in range(repeat):
                wall, cpu = month_floor(db, site, month)
                floors.append(wall)
                cpu_floors.append(cpu)
                bare.append(month_floor(db, site, month, flags=False)[0])
                aggregated.append(month_floor(db, site, month, aggregated=True)[0])
                t, c = time.monotonic(), time.process_time()
                result, revision = process_month(site, store, ledger, month)
                times.append(time.monotonic() - t)
                if len(times) == 1:
                    process_cpu += time.process_time() - c
            process_s += times[0]
            floors_cpu += min(cpu_floors)
            months.append({"month": month, "s": round(times[0], 3), "best_s": round(min(times), 3),
                           "floor_s": round(min(floors), 3), "ratio": round(min(times) / min(floors), 2),
                           "values_floor_s": round(min(bare), 3), "values_ratio": round(min(times) / min(bare), 2),
                           "aggregated_floor_s": round(min(aggregated), 3),
                           "aggregated_ratio": round(min(times) / min(aggregated), 2),
                           "status": result.status, "ER": result.calc.ER if result.calc else None,
                           "input_hash": result.input_hash})
        process_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        read_s, read_rows, read_cpu = export_floor(db, site, dt.date(year, 1, 1), dt.date(year, 12, 31))
        t, c, kids = time.monotonic(), time.process_time(), _children_cpu()
        folder = export_period(site, store, ledger, dt.date(year, 1, 1), dt.date(year, 12, 31), Path(tmp) / "export")
        # the export's processes beside it (charts, the raw readings' text) count too
        export_s, beside = time.monotonic() - t, _children_cpu() - kids
        export_cpu = time.process_time() - c + beside
        again = export_floor(db, site, dt.date(year, 1, 1), dt.date(year, 12, 31))
        read_s, read_cpu = min(read_s, again[0]), min(read_cpu, again[2])
        aggregated_s = min(export_floor(db, site, dt.date(year, 1, 1), dt.date(year, 12, 31), True)[0]
                           for _ in range(2))
        export_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    print(json.dumps({"site": site.site, "process_s": round(process_s, 1), "export_s": round(export_s, 1),
                      "export_read_floor_s": round(read_s, 1), "export_rows": read_rows,
                      "export_read_aggregated_s": round(aggregated_s, 2),
                      "cpu_s": {"process": round(process_cpu, 1), "month_floors": round(floors_cpu, 1),
                                "export": round(export_cpu, 1), "export_beside": round(beside, 1),
                                "export_read_floor": round(read_cpu, 1)},
                      "export_mb": round(export_mb, 1), "months_peak_rss_mb": round(process_rss),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "months": months}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--step", type=int, default=60, help="seconds between readings (60: 1-minute readings)")
    ap.add_argument("--sites", nargs="*", help="site ids (default: all five)")
    ap.add_argument("--jobs", type=int, default=2, help="sites filled in parallel (one store file each)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each month and its floor, alternately")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.year, args.step, args.repeat)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    chosen = sites(args.sites)
    files = [str(ROOT / "config" / "sites" / f"{s.site}.yaml") for s in chosen]
    print(f"filling the stores ({args.year}, a reading every {args.step} s) ...", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        fills = list(pool.map(fill, files, [args.year] * len(files), [args.step] * len(files)))
    runs = []
    for s in chosen:
        print(f"processing {s.site} ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", s.site, "--year", str(args.year),
                              "--step", str(args.step), "--repeat", str(args.repeat)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"\n{'site':<17}{'readings':>11}{'rows':>12}{'12 months s':>13}{'s/month':>9}{'month/floor':>13}"
          f"{'median':>8}{'aggregated':>12}{'export s':>10}{'export/read':>13}{'export MB':>11}"
          f"{'RSS MB months/all':>19}  statuses")
    print("-" * 170)
    for f, r in zip(fills, runs):
        statuses = {}
        for m in r["months"]:
            statuses[m["status"]] = statuses.get(m["status"], 0) + 1
        ratios = [m["ratio"] for m in r["months"]]
        against = [m["aggregated_ratio"] for m in r["months"]]
        print(f"{r['site']:<17}{f['readings']:>11,}{f['rows']:>12,}{r['process_s']:>13.1f}"
              f"{r['process_s'] / 12:>9.2f}{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}{np.median(ratios):>8.2f}"
              f"{f'{min(against):.2f}-{max(against):.2f}':>12}{r['export_s']:>10.1f}"
              f"{r['export_s'] / r['export_read_floor_s']:>13.2f}{r['export_mb']:>11.1f}"
              f"{str(r['months_peak_rss_mb']) + ' / ' + str(r['peak_rss_mb']):>19}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    total = sum(r["process_s"] + r["export_s"] for r in runs)
    months = sum(m["best_s"] for r in runs for m in r["months"])
    floors = sum(m["floor_s"] for r in runs for m in r["months"])
    bare = sum(m["values_floor_s"] for r in runs for m in r["months"])
    aggregated = sum(m["aggregated_floor_s"] for r in runs for m in r["months"])
    count = sum(len(r["months"]) for r in runs)
    print(f"\nall sites, 12 months + export each: {total:.0f} s; the {count} months {months:.1f} s against their floors' "
          f"{floors:.1f} s ({months / floors:.2f}x; against reading their values without flags {bare:.1f} s, "
          f"{months / bare:.2f}x; against reading them with their flags aggregated by SQLite, as the store now "
          f"does, {aggregated:.1f} s, {months / aggregated:.2f}x); "
          f"the exports {sum(r['export_s'] for r in runs):.1f} s against reading their rows aggregated by SQLite "
          f"{sum(r['export_read_aggregated_s'] for r in runs):.1f} s ("
          + ", ".join(f"{r['site']} {r['export_s'] / r['export_read_aggregated_s']:.2f}x" for r in runs) + "); "
          f"largest peak RSS {max(r['peak_rss_mb'] for r in runs)} MB; "
          f"CPU {cpu_model()}, {os.cpu_count()} cores")
    cpu = {k: sum(r["cpu_s"][k] for r in runs) for k in runs[0]["cpu_s"]}
    print(f"CPU seconds (not slowed by other work on the machine; the export's processes beside it included): 12 months "
          f"+ export each {cpu['process'] + cpu['export']:.1f} s; months {cpu['process']:.1f} s (first runs) against "
          f"their floors' {cpu['month_floors']:.1f} s; exports {cpu['export']:.1f} s against reading their rows "
          f"{cpu['export_read_floor']:.1f} s ({cpu['export'] / cpu['export_read_floor']:.2f}x); per site: "
          + ", ".join(f"{r['site']} {r['cpu_s']['process']:.1f} + {r['cpu_s']['export']:.1f} s "
                      f"(export {r['cpu_s']['export'] / r['cpu_s']['export_read_floor']:.2f}x, "
                      f"{r['cpu_s']['export_beside']:.1f} s of it in its processes beside)" for r in runs))
    out = RESULTS / f"processing-year-{args.year}-{args.step}s.json"
    out.write_text(json.dumps({"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "machine": {**platform.uname()._asdict(), "cpu_model": cpu_model(),
                                           "cpus": os.cpu_count()},
                               "year": args.year, "step_s": args.step, "fills": fills, "runs": runs}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
