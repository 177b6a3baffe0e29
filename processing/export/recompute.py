"""A period's figures recomputed from readings, as ``jcm verify`` does from an export's
signed messages, with nothing but the export: the site settings it recorded
(``site.json``), the fixed values its manifest recorded and the processing code.

The figures of an export come from the ledger's monthly revisions; a revision is the
processor's run over a whole month. So the recomputation runs the same processor over
the same whole months, takes the period's days of their daily parameter values and
runs the methodology's equations once on the period's sums, as ``collect`` does. The
signed messages an export holds therefore cover what the months' processing read
(``message_window``): the whole months, ``EDGE`` either side to settle the intervals
across their boundaries, and further where a counter's neighbours were read. Those it
holds stamped outside that window (witnesses, covering messages) are no readings of the
figures: ``jcm verify`` leaves them out (``reading_window``), as the revisions never read them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from contract.config.site import Site
from contract.store import ReadingStore
from processing.export.json_file import write_json
from processing.export.period_figures import (PeriodFigures, daily_frame, local_bounds, months_between,
                                              period_calculation, period_totals)
from processing.fixed_values import FixedValue
from processing.methodologies import Calculation
from processing.monthly import daily_parameters, details, month_bounds
from processing.period import EDGE, HASH_VERSIONS, PeriodProcessor, PeriodResult

#: the site settings the export's figures were computed with, as JSON
SITE_SETTINGS = "site.json"


def message_window(figures: PeriodFigures) -> tuple[dt.datetime, dt.datetime]:
    """UTC start and end (exclusive) of the readings a recomputation of the period reads
    (``reading_window`` of its revisions' read spans)."""
    return reading_window(figures.site, figures.first, figures.last, [r.read_span for r in figures.revisions])


def reading_window(site: Site, first: dt.date, last: dt.date,
                   spans: list[tuple[str, str] | None]) -> tuple[dt.datetime, dt.datetime]:
    """UTC start and end (exclusive) of the readings a recomputation of the days ``first..last``
    reads: those its revisions read (``spans``, ``read_span``: UTC ISO start and end, ``None``
    when not recorded), at least the whole months the days touch and ``EDGE`` either side
    (all a revision recorded before it recorded its span)."""
    months = months_between(first, last)
    start, _ = local_bounds(site, *month_bounds(months[0]))
    _, end = local_bounds(site, *month_bounds(months[-1]))
    spans = [(dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)) for a, b in (s for s in spans if s)]
    return (min([start - EDGE.to_pytimedelta(), *(a for a, _ in spans)]),
            max([end + EDGE.to_pytimedelta(), *(b for _, b in spans)]))


def write_site_settings(site: Site, path: Path) -> Path:
    """The site's settings (monitoring plan, devices and register maps, quality bounds,
    nameplate, calibrations, keys) as the processor read them."""
    return write_json(path, site.model_dump(mode="json"), indent=1)


def read_site_settings(path: Path) -> Site:
    """``write_site_settings``' file as a ``Site``; ``ValueError`` naming the file and key."""
    try:
        return Site.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read: {exc.strerror}") from None
    except RecursionError:
        raise ValueError(f"{path.name}: nested too deeply to be site settings") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top)"
        raise ValueError(f"{path.name}: {where}: {e['msg']}"
                         + (f" ({exc.error_count() - 1} more)" if exc.error_count() > 1 else "")) from None
    except ValueError as exc:
        raise ValueError(f"{path.name}: not JSON: {exc}") from None


@dataclass
class Recomputed:
    """A period recomputed: ``daily`` as ``PeriodFigures.daily``, the period's exact
    ``totals``, the calculation on them (``None`` when it cannot be computed, ``cannot``
    saying why, as the export's reason does), and each whole month's input hash in each
    version (``HASH_VERSIONS``: a revision's may be in any) and status; ``results``: each whole
    month's result as a ledger revision records it (``Revision.result``), for ``assemble``."""

    daily: pd.DataFrame
    totals: dict[str, Decimal]
    calc: Calculation | None
    cannot: str | None
    months: dict[str, tuple[dict[int, str], str]]
    results: dict[str, dict]


def recompute(site: Site, store: ReadingStore, first: dt.date, last: dt.date, fixed: list[FixedValue]) -> Recomputed:
    """The figures of the period ``first..last`` from the readings in ``store``.

    Parameters
    ----------
    site : Site
        The settings the export recorded.
    store : ReadingStore
        The readings (and sequence findings) to compute from.
    first, last : date
        The period's first and last local day.
    fixed : list of FixedValue
        The fixed values the export's figures used (its manifest's ``fixed_parameters``).
    """
    processor = PeriodProcessor(site)
    results = {m: processor.process(store, *month_bounds(m), HASH_VERSIONS) for m in months_between(first, last)}
    daily = daily_frame((r for result in results.values() for r in daily_parameters(result)), first, last)
    totals = period_totals(daily, processor.spec)
    return Recomputed(daily, totals, *period_calculation(processor, totals, fixed),
                      {m: (r.figures["input_hashes"], r.status) for m, r in results.items()},
                      {m: as_recorded(r) for m, r in results.items()})


def as_recorded(result: PeriodResult) -> dict:
    """A month's result as the ledger records it and reads it back (``Ledger.record``: JSON)."""
    return json.loads(json.dumps({"summary": result.summary(), **details(result)}, sort_keys=True, default=str))
