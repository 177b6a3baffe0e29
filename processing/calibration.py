"""Delayed calibration (CDM VVS rule, applied by JCM verifiers): readings taken after a
meter's calibration fell due and before it was actually calibrated are corrected by
the meter's maximum permissible error, or by the error the late calibration found if
larger, in the conservative direction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from contract.config.site import Calibration


@dataclass(frozen=True)
class Uncovered:
    start: dt.date  # first day past due
    end: dt.date  # last day past due (inclusive)
    error_pct: float  # correction to apply [%]
    reason: str


def uncovered_periods(calibrations: list[Calibration], until: dt.date) -> list[Uncovered]:
    """Spans of days a meter was used past its calibration due date, up to ``until``."""
    records = sorted(calibrations, key=lambda c: c.date)
    out = []
    for i, c in enumerate(records):
        nxt = records[i + 1] if i + 1 < len(records) else None
        if nxt is not None and nxt.date <= c.next_due:
            continue  # recalibrated in time
        last_day = (nxt.date - dt.timedelta(days=1)) if nxt else until
        if last_day < c.next_due:
            continue
        if nxt is not None:
            error = max(c.mpe_pct, abs(nxt.error_found_pct))
            reason = (f"calibration due {c.next_due} done late on {nxt.date} (error found {nxt.error_found_pct:+g} %, "
                      f"MPE {c.mpe_pct:g} %)")
        else:
            error = c.mpe_pct
            reason = f"calibration due {c.next_due} not done yet: MPE {c.mpe_pct:g} % applied"
        out.append(Uncovered(c.next_due, last_day, error, reason))
    return out


def correction_factor(error_pct: float, effect: str) -> float:
    """Down for a quantity that raises emission reductions, up for one that lowers them."""
    return 1 - error_pct / 100 if effect == "raises" else 1 + error_pct / 100
