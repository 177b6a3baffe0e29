"""Run a month (or month-to-date) for a site: compute, record in the ledger, and
publish the figures to the time-series store for the dashboards."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import logging

from contract.config.site import Site
from contract.message import Reading
from contract.store import ReadingStore
from processing.ledger import Ledger, Revision, SignedOff, code_version, sha256_text
from processing.methodologies.spec import SPEC_DIR
from processing.period import EDGE, HASH_VERSION, HASH_VERSIONS, PeriodProcessor, PeriodResult

log = logging.getLogger(__name__)

#: monthly figures appear in the store as readings of this pseudo-device
RESULT_DEVICE = "monthly-result"


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    try:
        year, mon = (int(x) for x in month.split("-"))
        first = dt.date(year, mon, 1)
    except ValueError:
        raise ValueError(f"month '{month}' is not YYYY-MM") from None
    return first, dt.date(year, mon, calendar.monthrange(year, mon)[1])


def versions(site: Site) -> dict:
    config = {"monitoring": [m.model_dump() for m in site.monitoring],
              "fixed": [p.model_dump() for p in site.fixed_parameters],
              "calibrations": {d.id: [c.model_dump(mode="json") for c in d.calibrations] for d in site.devices},
              "quality": site.quality.model_dump(),
              # ratings bound what a counter may credit: a changed rating may change a figure
              "nameplate": site.nameplate.model_dump(mode="json")}
    return {
        "defaults_hash": sha256_text((SPEC_DIR / f"{site.methodology}.yaml").read_text()),
        "config_hash": sha256_text(json.dumps(config, sort_keys=True, default=str)),
        "code_version": code_version(),
    }


def details(result: PeriodResult) -> dict:
    return {
        "reasons": result.reasons,
        "calculation": result.calc.to_dict() if result.calc else None,
        "explanation": result.calc.explanation if result.calc else [],
        "findings": [f.to_dict() for f in result.findings],
        "adjustments": result.adjustments,
        # what each fixed value was, so that an export of this month computes with it
        "fixed_parameters": [f.to_dict() for f in result.fixed],
        "daily": [{**r, "day": r["day"].isoformat()} for r in result.daily.to_dict("records")],
        # final daily value of each parameter (after check meters and missing-data treatment)
        "daily_parameters": daily_parameters(result),
        # the readings read: an export's signed messages cover them, so that a verifier can recompute the month
        "read_span": result.figures["read"],
    }


def daily_parameters(result: PeriodResult) -> list[dict]:
    """``{day, parameter, value, unit}`` per day and parameter key, as a revision records them."""
    return [{"day": day.isoformat(), "parameter": key, "value": float(v), "unit": result.figures["units"].get(key, "")}
            for key, series in sorted(result.figures["daily_totals"].items()) for day, v in series.items()]


def last_closed_day(site: Site, now: dt.datetime | None = None) -> dt.date:
    """The last day (site time) of which every reading a month reads is in: a month is read with ``EDGE``
    of the next (counters' neighbours), so a revision recorded sooner lacked readings an export made
    later holds, and ``jcm verify`` of that export found its input hash not the revision's."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(site.zone)
    return (now - EDGE.to_pytimedelta()).date() - dt.timedelta(days=1)


def process_month(site: Site, store: ReadingStore, ledger: Ledger, month: str) -> tuple[PeriodResult, Revision | None]:
    """Compute a whole month and record it; returns the result and its ledger revision
    (``None`` when the month is signed off and the data changed since). The readings are
    hashed in the version of the month's latest revision, so that unchanged readings keep
    their recorded hash (a new month: ``HASH_VERSION``)."""
    first, last = month_bounds(month)
    if last > last_closed_day(site):
        raise ValueError(f"{site.site} {month} is not over yet: its readings are read up to "
                         f"{EDGE.total_seconds() / 3600:g} h into the next month; until then its figures are "
                         "month-to-date, not a ledger revision")
    latest = ledger.latest(site.site, month)
    version = latest.input_hash_version if latest else HASH_VERSION
    if version not in HASH_VERSIONS:
        raise ValueError(f"{site.site} {month}: revision {latest.revision} in the ledger has an input hash of version "
                         f"{version}, which this code does not know (it knows {', '.join(map(str, HASH_VERSIONS))}): "
                         "the ledger was written by a newer jcm-telemetry")
    result = PeriodProcessor(site).process(store, first, last, (version,))
    try:
        revision = ledger.record(site.site, month, result.summary(), details(result), versions(site))
    except SignedOff as exc:
        log.warning("%s", exc)
        return result, None
    if revision.new:
        log.info("%s %s: revision %d, %s, ER %s tCO2", site.site, month, revision.revision, revision.status, revision.ER)
        publish_figures(store, site, first, result, revision.revision)
    return result, revision


def process_month_to_date(site: Site, store: ReadingStore, ledger: Ledger, today: dt.date) -> PeriodResult | None:
    """Provisional figures of the current month through yesterday (nothing on the 1st)."""
    first = today.replace(day=1)
    last = today - dt.timedelta(days=1)
    if last < first:
        return None
    result = PeriodProcessor(site).process(store, first, last)
    summary = {**result.summary(), "status": "provisional" if result.status != "failed" else "failed",
               "month_to_date": True}
    ledger.save_month_to_date(site.site, first.strftime("%Y-%m"), last.isoformat(), summary)
    return result


def publish_figures(store: ReadingStore, site: Site, first: dt.date, result: PeriodResult, revision: int) -> None:
    c = result.calc
    values = {"RE": c.RE if c else None, "PE": c.PE if c else None, "ER_unrounded": c.ER_unrounded if c else None,
              "ER": float(c.ER) if c else None, "revision": float(revision), "result_status": result.status,
              "verified": 1.0 if result.status == "verified" else 0.0}
    ts = dt.datetime.combine(first, dt.time(), tzinfo=site.zone).astimezone(dt.UTC)
    store.write([Reading(site=site.site, gateway="processor", device=RESULT_DEVICE, ts=ts, values=values,
                         units={"RE": "tCO2", "PE": "tCO2", "ER": "tCO2", "ER_unrounded": "tCO2"})])
