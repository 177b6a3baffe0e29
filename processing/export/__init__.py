"""Export of a monitoring period: one folder with what a JCM verifier is handed.

``export_period`` writes ``<out>/<site>_<first>_<last>/``: the monitoring workbook
(plan, report with live formulas, monthly revisions, daily values, QA findings,
adjustments), the daily values, each source channel's completeness in each month (the chart's data) and the raw
readings as CSV (the raw readings gzip-compressed), the messages of the site the collector refused in the period
(``dead_letters.csv.gz``), two charts, an HTML summary,
the site settings the figures were computed with (``site.json``), the signed messages behind them with the keys
and sequence findings (``custody/``, when the readings were signed), a manifest with every file's SHA-256 and
``SHA256SUMS`` for ``sha256sum -c``: ``jcm verify`` recomputes the figures from these alone. The same
inputs give byte-identical files. The store is read in this process; when it runs no other thread,
the workbook, the charts and the raw readings' text are made by two forked processes meanwhile
(a year's export then takes about the time of reading its rows, on two cores), else here; they end with it
(killed, interrupted or failed), and one that gives no result for ``csv_files.HUNG_S`` (stopped, hung)
fails the export and is killed. The folder is written beside its final place and
moved there whole, so a failed export leaves nothing half-written (one killed leaves it hidden,
``.<name>.partial-<pid>``, for the next export of the period to remove) and an earlier
export is replaced only when asked to (one killed while replacing it leaves it aside,
``.<name>.replaced-<pid>``, for the next export of the period to put back).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from pathlib import Path

from contract.config.site import Site
from contract.store import ReadingStore
from processing.export.custody_folder import write_custody
from processing.export.csv_files import (Hung, made, write_completeness, write_daily_values, write_dead_letters,
                                         write_raw_readings)
from processing.export.json_file import read_json
from processing.export.manifest import file_entries, file_entry, write_manifest, write_sha256sums
from processing.export.period_figures import PeriodFigures, collect, export_name
from processing.export.recompute import SITE_SETTINGS, write_site_settings
from processing.export.summary_html import write_summary
from processing.export.workbook import write_workbook
from processing.ledger import Ledger

log = logging.getLogger(__name__)

#: processes beside the export's (``_apart``)
APART = 2
#: when the export fails or is interrupted, how long its processes beside may take to end the work
#: they began (~1 s of drawing) before they are taken to be stuck and killed [s]
STUCK_S = 10.0
#: an export replaced by ``--force`` is moved aside, to ``.<name>.replaced-<pid>``, until it is removed
REPLACED = "replaced"
#: the messages of the site the collector refused during the period (csv_files.write_dead_letters)
DEAD_LETTERS = "dead_letters.csv.gz"


def export_period(site: Site, store: ReadingStore, ledger: Ledger, first: dt.date, last: dt.date, out: Path,
                  force: bool = False, progress: Callable[[int, int, str], None] | None = None) -> Path:
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
    force : bool
        Replace an existing export folder of the same period (else refused).
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
    final = Path(out) / export_name(site, first, last)
    _put_back(final)
    for stale in _left(final, "partial"):  # of exports killed (SIGKILL, SIGTERM) before
        shutil.rmtree(stale, ignore_errors=True)
    taken = f"{final} exists: an export is never overwritten silently (use --force to replace it)"
    if final.exists() and not force:
        raise ValueError(taken)
    # one still aside belongs to a running process (an export --force between its renames, or one that took
    # the number of such an export killed, after a restart), or is not whole: not replaced unasked
    if not final.exists() and not force and (aside := sorted(final.parent.glob(f".{final.name}.{REPLACED}-*"))):
        raise ValueError(f"{final} is aside, at {aside[-1].name}: process {aside[-1].name.rsplit('-', 1)[1]} moved "
                         "it there to replace it (export --force) and runs, or another took that number once it "
                         "ended, or it is not whole (killed as it was being removed): run again once that process "
                         f"ends, or check it and rename {aside[-1].name} back to {final.name}")
    steps = 7
    tell = progress or (lambda done, total, label: None)
    figures = collect(site, store, ledger, first, last)
    tell(1, steps, "monthly figures")
    Path(out).mkdir(parents=True, exist_ok=True)
    folder = Path(out) / f".{figures.name}.partial-{os.getpid()}"
    folder.mkdir()
    try:
        _write(figures, store, folder, tell, steps)
        if final.exists() and not force:  # made meanwhile, by another export of the period
            raise ValueError(taken)
        if final.exists():
            old = Path(out) / f".{figures.name}.{REPLACED}-{os.getpid()}"
            final.rename(old)  # killed from here until it is gone, ``_put_back`` puts it back or removes it
            folder.rename(final)
            _remove(old)
        else:
            folder.rename(final)
    except BrokenProcessPool:  # one killed from outside (the OOM killer, say): its files are not whole
        raise ValueError(f"{final.name}: a process making the charts or the raw readings' text ended before its "
                         "work was done (killed, or out of memory?): nothing was exported; run again") from None
    except Hung as exc:  # ``_apart`` killed it
        raise ValueError(f"{final.name}: {exc}: it was killed and nothing was exported; run again") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return final


def _left(final: Path, kind: str) -> list[Path]:
    """What exports of ``final``'s period killed (SIGKILL, SIGTERM) left beside it: their half-made
    folders (``kind`` "partial") or the exports they were replacing (``REPLACED``)."""
    return [p for p in final.parent.glob(f".{final.name}.{kind}-*") if not _running(p.name.rsplit("-", 1)[1])]


def _put_back(final: Path) -> None:
    """The export a ``--force`` killed between its renames was replacing is put back in its place: it
    is the only copy (the new one, still hidden, goes as a half-made one); one whose replacement took
    its place is removed. One whose place holds anything else (an empty folder, a copy of it cut short)
    stays aside, as does one not whole (killed while it was removed: it goes once a whole one is in place)."""
    # the whole ones first, the latest first
    for old in sorted(_left(final, REPLACED), key=lambda p: (_whole(p), p.lstat().st_ctime), reverse=True):
        if _whole(final):
            _remove(old)
        elif final.exists() or final.is_symlink():
            log.warning("%s is not a whole export: the export it was to replace stays aside, at %s", final, old.name)
        elif _whole(old):
            old.rename(final)
            log.warning("%s: put back: an export of the period replacing it (--force) was killed before the new "
                        "export took its place", final)


def _whole(folder: Path) -> bool:
    """Whether ``folder`` holds an export whole: every file its manifest lists, of the listed size."""
    try:
        files = read_json(folder / "manifest.json", "manifest.json")["files"]
        return all((folder / name).stat().st_size == entry["bytes"] for name, entry in files.items())
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # not an export's manifest, or a file gone
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:  # --out/<name> was a file, or a link (what it leads to is not the export's to remove)
        path.unlink()


def _running(pid: str) -> bool:
    """Whether process ``pid`` (the end of a folder's name), not this one, runs on this machine or
    may (another user's; a name not made here): the folder is then left to it."""
    if pid == str(os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OverflowError, OSError):
        pass
    return True


def file_names(name: str) -> dict[str, str]:
    """The names of the export ``name``'s files by role (``summary_html.render``'s ``files``)."""
    return {"workbook": f"monitoring_{name}.xlsx", "daily_csv": "daily_values.csv", "raw_csv": "raw_readings.csv.gz",
            "daily_chart": "daily_values.png", "completeness_chart": "completeness.png",
            "completeness_csv": "completeness.csv"}


def _write(figures: PeriodFigures, store: ReadingStore, folder: Path, tell: Callable[[int, int, str], None],
           steps: int) -> None:
    names = file_names(figures.name)
    files = []
    with _apart(figures) as apart:
        # the workbook and the charts need the figures alone: drawn there while the readings are read here
        drawn = apart.submit(_drawn, folder, names) if apart else None
        files.append(write_daily_values(figures, folder / names["daily_csv"]))
        files.append(write_completeness(figures, folder / names["completeness_csv"]))  # the chart's data, as text
        tell(2, steps, names["daily_csv"])
        files.append(write_raw_readings(figures, store, folder / names["raw_csv"], apart))
        tell(3, steps, names["raw_csv"])
        letters, refused = write_dead_letters(figures, store, folder / DEAD_LETTERS)
        files += [letters, write_site_settings(figures.site, folder / SITE_SETTINGS)]
        custody_files, custody = write_custody(figures, store, folder)
        files += custody_files
        tell(4, steps, "custody/")
        files += made(drawn) if drawn else _from_figures(figures, folder, names)
    tell(5, steps, f"{names['workbook']}, charts")
    files += write_summary(figures, names, custody, folder)
    tell(6, steps, "summary.html")
    entries = file_entries(files, folder)
    manifest = write_manifest(figures, entries, folder / "manifest.json", custody, {"file": DEAD_LETTERS,
                                                                                   "count": refused})
    write_sha256sums({**entries, manifest.name: file_entry(manifest)}, folder / "SHA256SUMS", figures.simulated)
    tell(7, steps, "manifest.json")


@contextlib.contextmanager
def _apart(figures: PeriodFigures) -> Iterator[ProcessPoolExecutor | None]:
    """Processes beside this one, forked, when this process runs no other thread (a fork copies
    every lock, not the threads that would release them); else None (then all is made here).
    Two: one draws the charts (~1 s) while both format the weeks of readings this one reads.
    They are given ``figures`` as they fork (a site's public keys do not pickle)."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        yield None
        return
    # the objects made so far are left alone by the children's garbage collections, which would
    # otherwise write to every one of them and so copy the whole heap, page by page; not if the caller
    # froze objects itself: they could not be told from these afterwards, and would be unfrozen with them
    freezes = gc.get_freeze_count() == 0
    if freezes:
        gc.freeze()
    before = set(multiprocessing.active_children())
    try:
        with ProcessPoolExecutor(APART, mp_context=multiprocessing.get_context("fork"), initializer=_beside,
                                 initargs=(figures,)) as pool:
            try:
                yield pool
            except BaseException:  # Ctrl-C or a failure: the work not begun is dropped, what is begun may
                # end (one killed amid sending its result would leave the pool waiting for the rest forever)
                pool.shutdown(wait=False, cancel_futures=True)
                deadline = time.monotonic() + STUCK_S
                left = {helper.sentinel: helper for helper in set(multiprocessing.active_children()) - before}
                while left and (ended := wait(list(left), max(0.0, deadline - time.monotonic()))):
                    for sentinel in ended:
                        del left[sentinel]
                for helper in left.values():  # stuck
                    helper.kill()
                raise
    finally:
        if freezes:
            gc.unfreeze()


#: in a process beside the export's: the figures it was given (``_apart``)
_HELD: list[PeriodFigures] = []


def _beside(figures: PeriodFigures) -> None:
    """Start of a process beside the export's: it keeps ``figures``, ends when the export's process
    ends (killed, it would never tell it to: it would wait for work forever, holding a copy of the
    export's memory and its open files), and leaves Ctrl-C to the export's process, which ends it
    (interrupted, one idle would end with a traceback, one busy amid sending its result)."""
    _HELD.append(figures)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(multiprocessing.parent_process().sentinel,), daemon=True).start()


def _end_with(parent: int) -> None:
    wait([parent])  # ready once the export's process is gone
    os._exit(1)


def _drawn(folder: Path, names: dict[str, str]) -> list[Path]:
    """``_from_figures`` in a process beside the export's."""
    return _from_figures(_HELD[0], folder, names)


def _from_figures(figures: PeriodFigures, folder: Path, names: dict[str, str]) -> list[Path]:
    """The workbook and the charts, made from ``figures`` alone."""
    from processing.export import charts  # matplotlib takes 0.35 s to import: only what draws loads it (not verify)

    return [write_workbook(figures, folder / names["workbook"]),
            charts.daily_values_chart(figures, folder / names["daily_chart"]),
            charts.completeness_chart(figures, folder / names["completeness_chart"])]


__all__ = ["PeriodFigures", "collect", "export_period"]
