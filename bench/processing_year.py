"""One year of 1-minute readings for each reference site, from the embedded store to
monthly ledger results and a monitoring-period export of the whole year.

    python bench/processing_year.py                          # 2025, 60 s readings, all five sites
    python bench/processing_year.py --step 900 --sites mn-solar   # a quick look

The store is filled once per site and step (simulated plant physics, the channels the
methodology monitors, channel ``simulated`` = 1) under bench/results/ and reused by later
runs. The timed part, twelve ``process_month`` calls and one ``export_period`` into a
fresh ledger, runs in a child process per site, so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.config import load_site  # noqa: E402
from contract.config.site import Site  # noqa: E402
from simulators.history import SIMULATED_CHANNEL, history  # noqa: E402
from store.sqlite_store import SqliteStore  # noqa: E402

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


def child(site_name: str, year: int, step: int) -> None:
    """The timed part, in a process of its own: a year of months, then the year's export."""
    from processing.export import export_period
    from processing.ledger import Ledger
    from processing.monthly import process_month

    (site,) = sites([site_name])
    store = SqliteStore(store_path(site.site, year, step))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        months, t0 = [], time.monotonic()
        for m in range(1, 13):
            t = time.monotonic()
            result, revision = process_month(site, store, ledger, f"{year}-{m:02d}")
            months.append({"month": f"{year}-{m:02d}", "s": round(time.monotonic() - t, 2), "status": result.status,
                           "ER": result.calc.ER if result.calc else None})
        process_s = time.monotonic() - t0
        process_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.monotonic()
        folder = export_period(site, store, ledger, dt.date(year, 1, 1), dt.date(year, 12, 31), Path(tmp) / "export")
        export_s = time.monotonic() - t
        export_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    print(json.dumps({"site": site.site, "process_s": round(process_s, 1), "export_s": round(export_s, 1),
                      "export_mb": round(export_mb, 1), "months_peak_rss_mb": round(process_rss),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "months": months}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--step", type=int, default=60, help="seconds between readings (60: 1-minute readings)")
    ap.add_argument("--sites", nargs="*", help="site ids (default: all five)")
    ap.add_argument("--jobs", type=int, default=2, help="sites filled in parallel (one store file each)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.year, args.step)
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
                              "--step", str(args.step)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"\n{'site':<17}{'readings':>11}{'rows':>12}{'fill s':>8}{'12 months s':>13}{'s/month':>9}"
          f"{'export s':>10}{'export MB':>11}{'RSS MB months/all':>19}  statuses")
    print("-" * 126)
    for f, r in zip(fills, runs):
        statuses = {}
        for m in r["months"]:
            statuses[m["status"]] = statuses.get(m["status"], 0) + 1
        print(f"{r['site']:<17}{f['readings']:>11,}{f['rows']:>12,}{f['fill_s']:>8.0f}{r['process_s']:>13.1f}"
              f"{r['process_s'] / 12:>9.2f}{r['export_s']:>10.1f}{r['export_mb']:>11.1f}"
              f"{str(r['months_peak_rss_mb']) + ' / ' + str(r['peak_rss_mb']):>19}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    total = sum(r["process_s"] + r["export_s"] for r in runs)
    print(f"\nall sites, 12 months + export each: {total:.0f} s; largest peak RSS {max(r['peak_rss_mb'] for r in runs)} MB")
    out = RESULTS / f"processing-year-{args.year}-{args.step}s.json"
    out.write_text(json.dumps({"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.uname()._asdict(),
                               "year": args.year, "step_s": args.step, "fills": fills, "runs": runs}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
