"""A monitoring period's figures, assembled from the ledger's monthly revisions.

The ledger holds whole months; a monitoring period is any span of whole local days
(docs/methodologies.md, section 1.2). So the period is built from the days of each month's
revision that fall inside it: the final daily parameter values are summed over the
period, and the methodology's equations run once on those sums, with the ER rounded
once, for the period. Summing monthly ERs would round per month and is never done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal

import pandas as pd

from contract.config import ConfigError
from contract.config.site import Site
from contract.store import ReadingStore
from processing.fixed_values import FixedValue, changes, from_calculation, from_config, from_record
from processing.ledger import Ledger, Revision
from processing.methodologies import Calculation, InputError
from processing.methodologies.common import exact_sum
from processing.methodologies.spec import MethodologySpec
from processing.monthly import process_month, versions
from processing.period import STATUSES, PeriodProcessor

@dataclass(frozen=True)
class UsedRevision:
    """The ledger revision a month of the period was taken from."""

    site: str
    month: str
    revision: int
    created: str
    input_hash: str
    #: the version of the input hash's form (``period.HASH_VERSIONS``)
    input_hash_version: int
    code_version: str
    #: what ``monthly.versions`` gave: a recomputation with other site settings or defaults says so
    config_hash: str
    defaults_hash: str
    #: UTC start and end of the readings the revision read (``period.read_span``; None if not recorded)
    read_span: tuple[str, str] | None
    status: str
    RE: float | None
    PE: float | None
    ER_unrounded: float | None
    ER: int | None
    provisional: bool
    signed_off: bool
    signed_by: str | None
    signed_at: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PeriodFigures:
    """Everything the export writes, computed once.

    Attributes
    ----------
    daily : DataFrame
        ``day, key, parameter, unit_id, unit, value``: the revisions' final daily value of
        every parameter key (``"EG[PV-1]"``, ``"EC_aux"``) on the days of the period.
    parameters : dict
        Period totals of the methodology's monitored parameters, by key.
    findings, adjustments : list of dict
        The revisions' QA findings and adjustments, each with its ``month`` and
        ``revision``; they cover the revisions' whole months.
    completeness : dict
        ``{month: {source: fraction}}`` from the revisions' summaries.
    simulated : bool
        Some month of the period was computed from simulated readings.
    fixed : list of FixedValue
        The fixed values the revisions recorded, which the period's calculation uses.
    config_changes : list of str
        How today's configuration differs from what the revisions were computed with.
    """

    site: Site
    spec: MethodologySpec
    first: dt.date
    last: dt.date
    status: str
    reasons: list[str]
    parameters: dict[str, float]
    calc: Calculation | None  # None: the period's figures cannot be computed (failed; ``reasons`` say why)
    revisions: list[UsedRevision]
    daily: pd.DataFrame
    findings: list[dict]
    adjustments: list[dict]
    completeness: dict[str, dict[str, float]]
    simulated: bool
    fixed: list[FixedValue]
    config_changes: list[str]

    @property
    def stamp(self) -> dt.datetime:
        """A timestamp derived from the inputs (the period's last day), for file metadata
        that must not change from one export of the same inputs to the next."""
        return dt.datetime.combine(self.last, dt.time())

    @property
    def name(self) -> str:
        return export_name(self.site, self.first, self.last)


#: how the reason a period's figures cannot be computed begins
CANNOT_COMPUTE = "the period: cannot compute: "


def export_name(site: Site, first: dt.date, last: dt.date) -> str:
    """The export folder's name: ``<site>_<first>_<last>``."""
    return f"{site.site}_{first.isoformat()}_{last.isoformat()}"


def months_between(first: dt.date, last: dt.date) -> list[str]:
    """Calendar months (``YYYY-MM``) overlapping the days ``first..last``."""
    months, day = [], first.replace(day=1)
    while day <= last:
        months.append(day.strftime("%Y-%m"))
        day = (day + dt.timedelta(days=32)).replace(day=1)
    return months


def local_bounds(site: Site, first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """UTC start and end (exclusive) of the local days ``first..last``."""
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone).astimezone(dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=site.zone).astimezone(dt.UTC)
    return start, end


def ledger_revision(ledger: Ledger, site: str, month: str) -> tuple[Revision | None, tuple | None]:
    """The revision of a month an export holds, with its sign-off (``Ledger.signoff``): the one MRV staff
    signed off, which may be before the latest (``jcm signoff --revision``), else the latest (None: none)."""
    signed = ledger.signoff(site, month)
    if signed is not None:
        return next(r for r in ledger.revisions(site, month) if r.revision == signed[0]), signed
    return ledger.latest(site, month), None


def _month_revision(site: Site, store: ReadingStore, ledger: Ledger, month: str) -> tuple[Revision, tuple | None]:
    """``ledger_revision``; a month without any is processed now."""
    revision, signed = ledger_revision(ledger, site.site, month)
    if revision is None:
        revision = process_month(site, store, ledger, month)[1]
    summary = revision.result["summary"]
    if (summary["methodology"], summary["version"]) != (site.methodology, site.methodology_version):
        raise ConfigError(f"{site.site} {month}: revision {revision.revision} was computed with "
                          f"{summary['methodology']} {summary['version']}, the site is registered under "
                          f"{site.methodology} {site.methodology_version}; reprocess the month")
    return revision, signed


def used_revision(revision: Revision, signed: tuple | None) -> UsedRevision:
    """What an export records of a month's ``revision`` and its sign-off (``Ledger.signoff``)."""
    s = revision.result["summary"]
    return UsedRevision(
        site=revision.site, month=revision.month, revision=revision.revision, created=revision.created,
        input_hash=revision.input_hash, input_hash_version=revision.input_hash_version,
        code_version=revision.code_version, config_hash=revision.config_hash,
        defaults_hash=revision.defaults_hash, read_span=revision.result.get("read_span"), status=revision.status,
        RE=s["RE"], PE=s["PE"], ER_unrounded=s["ER_unrounded"], ER=s["ER"], provisional=bool(s["provisional"]),
        signed_off=signed is not None, signed_by=signed[1] if signed else None, signed_at=signed[2] if signed else None,
    )


def daily_frame(recorded: Iterable[dict], first: dt.date, last: dt.date) -> pd.DataFrame:
    """The ``daily`` frame of ``PeriodFigures`` from months' recorded daily parameter values
    (``monthly.daily_parameters``): the days ``first..last`` of them."""
    rows = []
    for r in recorded:
        day = dt.date.fromisoformat(r["day"])
        if first <= day <= last:
            key = r["parameter"]
            name, _, unit_id = key.partition("[")
            rows.append({"day": day, "key": key, "parameter": name, "unit_id": unit_id.removesuffix("]") or None,
                         "unit": r["unit"], "value": float(r["value"])})
    frame = pd.DataFrame(rows, columns=["day", "key", "parameter", "unit_id", "unit", "value"])
    return frame.sort_values(["day", "key"], kind="stable").reset_index(drop=True)


def period_totals(daily: pd.DataFrame, spec: MethodologySpec) -> dict[str, Decimal]:
    """Sum each monitored methodology parameter's daily values over the period, exactly
    (``exact_sum``), as the processor sums a month.

    QA-only keys (check meters, gas flows, CH4 fraction) are not methodology inputs and
    are left out; some of them are daily means, which do not add up.
    """
    totals = {}
    for key, group in daily.groupby("key", sort=True):
        p = spec.parameters.get(key.split("[")[0])
        if p is not None and p.kind == "monitored":
            totals[key] = exact_sum(group["value"])
    return totals


def recorded_fixed(revisions: list[Revision], spec: MethodologySpec, current: list[FixedValue]) -> list[FixedValue]:
    """The fixed values the revisions were computed with, which must agree: one period
    figure cannot use two emission factors. Where only the status differs, unconfirmed wins."""
    recorded = []
    for r in revisions:
        if "fixed_parameters" in r.result:
            recorded.append((r, from_record(r.result["fixed_parameters"])))
        elif r.result.get("calculation"):
            recorded.append((r, from_calculation(r.result["calculation"], spec, current)))
    if not recorded:  # no month could be computed: nothing was recorded to keep to
        return current
    first, reference = recorded[0]
    ref_values = {f.key: (f.value, f.unit) for f in reference}
    used: dict[str, FixedValue] = {}
    for r, fixed in recorded:
        values = {f.key: (f.value, f.unit) for f in fixed}
        differ = sorted(k for k in set(values) | set(ref_values) if values.get(k) != ref_values.get(k))
        if differ:
            raise ValueError(
                f"{r.month} (revision {r.revision}) and {first.month} (revision {first.revision}) were computed with "
                f"different fixed values ({', '.join(differ)}): one period figure cannot use both; reprocess the "
                "unsigned months with one configuration (jcm process), or end the monitoring period where it changed")
        for f in fixed:
            if f.key not in used or f.status != "confirmed":
                used[f.key] = f
    return sorted(used.values(), key=lambda f: f.key)


def config_changes(site: Site, revisions: list[Revision], used: list[FixedValue], current: list[FixedValue],
                   signed: set[str]) -> list[str]:
    """What changed since the revisions were computed, one line each: fixed values, the
    site configuration, the methodology's defaults, the processing code."""
    lines = [f"fixed value {line}" for line in changes(used, current)]
    now = versions(site)
    for r in revisions:
        what = [label for label, was, is_ in (
            ("the site configuration (monitoring plan, fixed values, calibrations, quality)", r.config_hash,
             now["config_hash"]),
            (f"the {site.methodology} default values", r.defaults_hash, now["defaults_hash"]),
            ("the processing code", r.code_version, now["code_version"])) if was != is_]
        if what:
            lines.append(f"{r.month} (revision {r.revision}): {' and '.join(what)} changed since it was computed; "
                         "this export keeps its recorded figures and values. "
                         + (f"Reprocess the month (jcm process --site {site.site} --month {r.month}) for a new "
                            "revision with today's configuration" if r.month not in signed else
                            "It is signed off and cannot change"))
    return lines


def period_calculation(processor: PeriodProcessor, totals: dict[str, Decimal],
                       fixed: list[FixedValue]) -> tuple[Calculation | None, str | None]:
    """The period's calculation on its ``totals`` (``period_totals``) with ``fixed``; or, when the
    totals are beyond any figure (or float: ``InputError``), ``None`` and the reason, starting with
    ``CANNOT_COMPUTE``: the period is failed, named, as such a month is. ``collect`` and a
    verifier's recomputation (``recompute``) both come to either through here."""
    try:
        return processor.calculate_period(totals, fixed), None
    except InputError as exc:
        return None, f"{CANNOT_COMPUTE}{exc}"


def period_status(months: Iterable[str], calc: Calculation | None) -> str:
    """The status of a period whose months have ``months`` statuses and whose figures are ``calc``: the
    months' worst (``STATUSES``); failed when its figures cannot be computed (None); provisional, not
    verified, when they use a fixed value not confirmed (one recorded without its status counts so)."""
    status = max(months, key=STATUSES.index)
    if calc is None:
        return "failed"
    return "provisional" if calc.provisional and status == "verified" else status


def _tagged(revision: Revision, rows: list[dict]) -> list[dict]:
    return [{"month": revision.month, "revision": revision.revision, **row} for row in rows]


def collect(site: Site, store: ReadingStore, ledger: Ledger, first: dt.date, last: dt.date) -> PeriodFigures:
    """Assemble the period ``first..last`` (inclusive local days) of a site.

    Parameters
    ----------
    site : Site
    store : ReadingStore
        Read by ``process_month`` for a month the ledger has no revision of yet.
    ledger : Ledger
    first, last : date
        The monitoring period's first and last local day.

    Returns
    -------
    PeriodFigures
    """
    processor = PeriodProcessor(site)
    picked = [_month_revision(site, store, ledger, m) for m in months_between(first, last)]
    revisions = [r for r, _ in picked]
    current = from_config(site, processor.spec)
    fixed = recorded_fixed(revisions, processor.spec, current)
    signed = {r.month for r, s in picked if s is not None}
    return assemble(processor, picked, first, last, fixed, config_changes(site, revisions, fixed, current, signed))


def assemble(processor: PeriodProcessor, picked: list[tuple[Revision, tuple | None]], first: dt.date, last: dt.date,
             fixed: list[FixedValue], changes: list[str]) -> PeriodFigures:
    """The period ``first..last`` from its months' revisions and their sign-offs (``picked``: each
    revision with ``(revision, by, at)`` or None), computed with ``fixed``; ``changes``: the
    ``config_changes`` lines. ``collect`` gives it the ledger's revisions; ``jcm verify`` gives it
    the revisions it recomputed from an export, to make the export's files again and compare them."""
    site = processor.site
    revisions = [r for r, _ in picked]
    daily = daily_frame((r for revision in revisions for r in revision.result["daily_parameters"]), first, last)
    totals = period_totals(daily, processor.spec)
    parameters = {key: float(total) for key, total in totals.items()}
    reasons = [f"{r.month} (revision {r.revision}): {reason}" for r in revisions for reason in r.result["reasons"]]
    calc, cannot = period_calculation(processor, totals, fixed)
    status = period_status([r.status for r in revisions], calc)
    if cannot:
        reasons.append(cannot)
    if status == "provisional" != max((r.status for r in revisions), key=STATUSES.index):
        reasons.append("fixed values unconfirmed: " + ", ".join(f"{f.key} ({f.source})" for f in fixed
                                                                 if f.status != "confirmed"))
    return PeriodFigures(
        site=site, spec=processor.spec, first=first, last=last, status=status, reasons=reasons,
        parameters=parameters, calc=calc, revisions=[used_revision(r, s) for r, s in picked], daily=daily,
        findings=[f for r in revisions for f in _tagged(r, r.result["findings"])],
        adjustments=[a for r in revisions for a in _tagged(r, r.result["adjustments"])],
        completeness={r.month: r.result["summary"]["completeness"] for r in revisions},
        simulated=any(r.result["summary"].get("simulated") for r in revisions),
        fixed=fixed, config_changes=changes,
    )
