"""Export of a monitoring period: one folder with what a JCM verifier is handed.

``export_period`` writes ``<out>/<site>_<first>_<last>/``: the monitoring workbook
(plan, report with live formulas, monthly revisions, daily values, QA findings,
adjustments), the daily values and raw readings as CSV, two charts, an HTML summary,
and a manifest with every file's SHA-256. The same inputs give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from contract.config.site import Site
from contract.store import ReadingStore
from processing.export.charts import completeness_chart, daily_values_chart
from processing.export.csv_files import write_daily_values, write_raw_readings
from processing.export.manifest import write_manifest
from processing.export.period_figures import PeriodFigures, collect
from processing.export.summary_html import write_summary
from processing.export.workbook import write_workbook
from processing.ledger import Ledger


def export_period(site: Site, store: ReadingStore, ledger: Ledger, first: dt.date, last: dt.date, out: Path,
                  progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Export the monitoring period ``first..last`` (inclusive local days) of ``site``.

    Parameters
    ----------
    site : Site
    store : ReadingStore
        The readings (the raw CSV, and months not yet in the ledger).
    ledger : Ledger
        Monthly revisions; a month without one is processed and recorded first.
    first, last : date
        First and last local day of the period.
    out : Path
        Parent folder of the export folder.
    progress : callable, optional
        Told (steps done, steps in all, the step's name) after each step.

    Returns
    -------
    Path
        The export folder.
    """
    if last < first:
        raise ValueError(f"period end {last} is before its start {first}")
    today = dt.datetime.now(site.zone).date()
    if last >= today:
        raise ValueError(f"period end {last} is not over yet at {site.site} (today is {today} there): "
                         "a monitoring period is made of whole past days")
    steps = 8
    tell = progress or (lambda done, total, label: None)
    figures = collect(site, store, ledger, first, last)
    tell(1, steps, "monthly figures")
    folder = Path(out) / figures.name
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        "workbook": f"monitoring_{figures.name}.xlsx", "daily_csv": "daily_values.csv",
        "raw_csv": "raw_readings.csv", "daily_chart": "daily_values.png", "completeness_chart": "completeness.png",
    }
    files = []
    for done, (name, write) in enumerate([
        ("workbook", lambda: write_workbook(figures, folder / names["workbook"])),
        ("daily_csv", lambda: write_daily_values(figures, folder / names["daily_csv"])),
        ("raw_csv", lambda: write_raw_readings(figures, store, folder / names["raw_csv"])),
        ("daily_chart", lambda: daily_values_chart(figures, folder / names["daily_chart"])),
        ("completeness_chart", lambda: completeness_chart(figures, folder / names["completeness_chart"])),
    ], 2):
        files.append(write())
        tell(done, steps, names[name])
    files.append(write_summary(figures, names, folder / "summary.html"))
    tell(7, steps, "summary.html")
    write_manifest(figures, files, folder / "manifest.json")
    tell(8, steps, "manifest.json")
    return folder


__all__ = ["PeriodFigures", "collect", "export_period"]
