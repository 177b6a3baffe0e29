"""A month of processing on InfluxDB 1.x (the store's api=v1 mode) against its read floor.

    python bench/processing_influx.py                  # mn-solar, March 2025, 1-minute readings
    python bench/processing_influx.py --site ph-biogas

Starts a private ``influxd`` (Debian's 1.6.7) in a temporary directory, writes the
month's simulated readings (with ``EDGE`` either side) through ``InfluxStore.write``,
then times, ``--repeat`` times alternately, least time kept:

- floor: the InfluxQL queries the store sends for the month (the monitored channels, a
  day per query, grouped by device), each answer ``json.loads``-ed and made a DataFrame
  per series with ``pd.to_datetime`` of its times: the least any reader of this server pays;
- ``read_sources`` of the monitored sources;
- ``PeriodProcessor.process`` of the month (its read included);
- ``export_period`` of the month (its revision recorded first): workbook, charts, and the
  raw readings read back a week at a time, formatted and compressed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.config import load_site  # noqa: E402
from contract.gc_paused import gc_paused  # noqa: E402
from jcm.broker import stop_process, wait_for_port  # noqa: E402
from jcm.influxd import influxd_config  # noqa: E402
from processing.export import export_period  # noqa: E402
from processing.ledger import Ledger  # noqa: E402
from processing.monthly import month_bounds, process_month  # noqa: E402
from processing.period import EDGE, PeriodProcessor  # noqa: E402
from simulators.history import SIMULATED_CHANNEL, history  # noqa: E402
from store.influx_store import MEASUREMENT, InfluxStore, _lit, _q, to_ns  # noqa: E402


def start_influxd(d: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("influxd")
    if not exe:
        sys.exit("influxd is not installed (apt-get install -y influxdb)")
    conf, port = influxd_config(d)
    proc = subprocess.Popen([exe, "-config", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        urllib3.PoolManager().request("POST", f"http://127.0.0.1:{port}/query", fields={"q": "CREATE DATABASE jcm"},
                                      encode_multipart=False)
    except BaseException:
        stop_process(proc, timeout=15)
        raise
    return proc, port


def floor(port: int, site, start: dt.datetime, end: dt.datetime) -> int:
    """The store's queries for the month, answers decoded and framed; the points read."""
    http = urllib3.PoolManager()
    fields = ", ".join(_q(c) for c in [*site.monitoring_channels, "quality"])
    devices = " OR ".join(f'"device" = {_lit(d)}' for d in site.monitoring_devices)
    points, t = 0, start
    while t < end:
        stop = min(end, t + dt.timedelta(hours=24))
        q = (f'SELECT {fields} FROM {_q(MEASUREMENT)} WHERE "site" = {_lit(site.site)} AND ({devices}) '
             f'AND time >= {to_ns(t)} AND time < {to_ns(stop)} GROUP BY "device", "gateway"')
        resp = http.request("POST", f"http://127.0.0.1:{port}/query", fields={"q": q, "db": "jcm", "epoch": "ms"},
                            encode_multipart=False)
        for series in json.loads(resp.data)["results"][0].get("series", []):
            frame = pd.DataFrame(series["values"], columns=series["columns"])
            frame["time"] = pd.to_datetime(frame["time"], unit="ms", utc=True)
            points += len(frame)
        t = stop
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default="mn-solar")
    ap.add_argument("--month", default="2025-03")
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    site = load_site(ROOT / "config" / "sites" / f"{args.site}.yaml")
    first, last = month_bounds(args.month)
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone) - EDGE
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone) + EDGE
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_influxd(Path(tmp))
        try:
            store = InfluxStore(f"http://127.0.0.1:{port}", api="v1", db="jcm", timeout_s=120)
            t, pending, n = time.monotonic(), [], 0
            for batch in history(site, first - dt.timedelta(days=1), last + dt.timedelta(days=1), step_s=args.step,
                                 channels={*site.monitoring_channels, SIMULATED_CHANNEL}):
                pending += batch
                if len(pending) >= 5000:
                    store.write(pending)
                    n, pending = n + len(pending), []
            store.write(pending)
            print(f"{args.site}: wrote {n + len(pending):,} readings in {time.monotonic() - t:.0f} s", flush=True)
            floors, reads, processes, exports = [], [], [], []
            ledger = Ledger(Path(tmp) / "ledger.sqlite")
            process_month(site, store, ledger, args.month)
            for _ in range(args.repeat):
                t = time.monotonic()
                with gc_paused():
                    points = floor(port, site, start, end)
                floors.append(time.monotonic() - t)
                t = time.monotonic()
                rows = store.read_sources(site.site, start, end, site.monitoring_sources)
                reads.append(time.monotonic() - t)
                t = time.monotonic()
                result = PeriodProcessor(site).process(store, first, last)
                processes.append(time.monotonic() - t)
                t = time.monotonic()
                export_period(site, store, ledger, first, last, Path(tmp) / "export", force=True)
                exports.append(time.monotonic() - t)
            values = sum(len(f) for f in rows.values())
            f, r, p, e = min(floors), min(reads), min(processes), min(exports)
            print(f"{args.site} {args.month} on InfluxDB 1.6.7: {points:,} points, {values:,} values; floor {f:.2f} s, "
                  f"read_sources {r:.2f} s ({r / f:.2f}x), process {p:.2f} s ({p / f:.2f}x), export {e:.2f} s "
                  f"({e / f:.2f}x); {result.status}, ER {result.calc.ER if result.calc else None}")
        finally:
            stop_process(proc, timeout=15)


if __name__ == "__main__":
    main()
