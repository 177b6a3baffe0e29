"""The processor's schedule (APScheduler 3.11), per site in its own time zone:

- the previous month on day 1 at 07:00 site time (``MONTH_HOUR``: once its readings are all in);
- a provisional month-to-date every night at 02:30;
- at start-up, a catch-up of every past month without a result (not relying on
  misfires, which APScheduler drops after ``misfire_grace_time``).

Jobs get a misfire grace of days, coalesce, and one instance at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from contract.config.site import Site
from contract.store import ReadingStore, StoreUnavailable
from processing.ledger import Ledger
from processing.monthly import RESULT_DEVICE, last_closed_day, process_month, process_month_to_date

log = logging.getLogger(__name__)

MISFIRE_GRACE_S = 3 * 86400
#: the hour of day 1 (site time) the previous month is processed: after ``processing.period.EDGE``
#: (6 h) of the new month, which a month's counters read (``last_closed_day``)
MONTH_HOUR = 7


def previous_month(today: dt.date) -> str:
    return (today.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")


def months_to_catch_up(site: Site, store: ReadingStore, ledger: Ledger, today: dt.date) -> list[str]:
    """Past whole months since the site's first reading (or commissioning) with no ledger entry."""
    seen = [d for d in store.devices(site.site) if d.device != RESULT_DEVICE]
    if not seen:
        return []
    first = _first_reading_month(site, store) or site.commissioned.replace(day=1)
    months = []
    m = max(first, site.commissioned.replace(day=1))
    this_month = today.replace(day=1)
    while m < this_month:
        key = m.strftime("%Y-%m")
        if ledger.latest(site.site, key) is None:
            months.append(key)
        m = (m + dt.timedelta(days=32)).replace(day=1)
    return months


def _first_reading_month(site: Site, store: ReadingStore) -> dt.date | None:
    """The earliest of the last 24 months from which readings run without an empty month to the
    latest month with readings (months without any since are caught up from there, as failed)."""
    today = dt.datetime.now(site.zone).date().replace(day=1)
    first = None
    m = today
    for _ in range(24):
        m = (m - dt.timedelta(days=1)).replace(day=1)
        if m < site.commissioned.replace(day=1):
            break
        start = dt.datetime.combine(m, dt.time(), tzinfo=site.zone)
        end = dt.datetime.combine((m + dt.timedelta(days=32)).replace(day=1), dt.time(), tzinfo=site.zone)
        probe = store.read(site.site, start, end,
                           channels=[site.monitoring[0].sources[0].split(".")[1]] if site.monitoring else None,
                           limit=1)
        if probe.empty:
            if first is None:
                continue  # the latest months without readings (a gateway down since): the run ends before them
            break
        first = m
    return first


class Processor:
    def __init__(self, sites: list[Site], store: ReadingStore, ledger: Ledger,
                 progress: Callable[[int, int, str], None] | None = None):
        self.sites, self.store, self.ledger = sites, store, ledger
        #: told (months done, months to catch up, "site month") after each month of the catch-up
        self.progress = progress
        self.scheduler = BackgroundScheduler(job_defaults={"misfire_grace_time": MISFIRE_GRACE_S, "coalesce": True,
                                                           "max_instances": 1})

    def run_month(self, site: Site, month: str | None = None) -> None:
        month = month or previous_month(dt.datetime.now(site.zone).date())
        try:
            process_month(site, self.store, self.ledger, month)
        except StoreUnavailable as exc:  # says why and what to do: no traceback; the next run tries again
            log.error("%s %s: not processed now: the store cannot be used: %s", site.site, month, exc)
        except Exception:
            log.exception("%s %s: processing failed", site.site, month)

    def run_month_to_date(self, site: Site) -> None:
        try:
            process_month_to_date(site, self.store, self.ledger, dt.datetime.now(site.zone).date())
        except StoreUnavailable as exc:
            log.error("%s: month to date not processed now: the store cannot be used: %s", site.site, exc)
        except Exception:
            log.exception("%s: month-to-date failed", site.site)

    def catch_up(self) -> int:
        todo = [(site, month) for site in self.sites
                for month in months_to_catch_up(site, self.store, self.ledger,
                                                last_closed_day(site) + dt.timedelta(days=1))]
        for done, (site, month) in enumerate(todo, 1):
            self.run_month(site, month)
            if self.progress is not None:
                self.progress(done, len(todo), f"{site.site} {month}")
        for site in self.sites:
            self.run_month_to_date(site)
        return len(todo)

    def start(self) -> None:
        for site in self.sites:
            self.scheduler.add_job(self.run_month, CronTrigger(day=1, hour=MONTH_HOUR, minute=0, timezone=site.zone),
                                   args=[site], id=f"month-{site.site}", name=f"previous month of {site.site}")
            self.scheduler.add_job(self.run_month_to_date, CronTrigger(hour=2, minute=30, timezone=site.zone),
                                   args=[site], id=f"mtd-{site.site}", name=f"month to date of {site.site}")
        self.scheduler.start()
        log.info("processor: %d month(s) caught up at start-up", self.catch_up())

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
