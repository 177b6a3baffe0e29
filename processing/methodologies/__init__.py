"""One module per JCM methodology of the reference sites, and the calculator that
feeds them: parameter resolution against the methodology's spec (defaults,
overrides, unknown and missing names), then RE, PE, ER and the rounding rule."""

from __future__ import annotations

import math
from decimal import Decimal
from types import ModuleType

from processing.methodologies import id_prov_biomass, mn_am003, mv_am002, ph_prov_biogas, vn_am005
from processing.methodologies.calc_input import InputError, validate_input
from processing.methodologies.common import (Calculation, emission_reductions, exact, exact_arithmetic,
                                              round_period_er, shown)
from processing.methodologies.spec import MethodologySpec, load_spec

MODULES: dict[str, ModuleType] = {m.METHODOLOGY: m for m in (mn_am003, mv_am002, vn_am005, ph_prov_biogas, id_prov_biomass)}


#: the largest |RE|, |PE| or |ER| computed [tCO2]: 2**53, the last whole number a float holds
#: exactly (the ledger keeps ER as one); the whole world emits about 4e10 t a year
LARGEST_FIGURE = 2 ** 53


def calculate(methodology: str, period: dict, units: list[dict] | None = None, version: str | None = None,
              spec: MethodologySpec | None = None) -> Calculation:
    """Compute one monitoring period from its monitored values.

    ``period`` holds period-level parameters, ``units`` one dict per unit i (with ``id``)
    for the parameters the methodology sums over units. Both are validated by the
    methodology's input model (``calc_input``): unknown or missing names, values that are
    not finite numbers or lie outside the parameter's physical range raise ``InputError``.
    Default values of the methodology version fill what the inputs do not give; a given
    value overrides one. Values are ints, floats or Decimals (period totals summed
    exactly). The arithmetic is exact decimal on the values as written (the repr of each
    float), so the period's ER is rounded as the report's decimal figure is.

    References
    ----------
    docs/methodologies.md, sections 1.7 (rounding) and 8 (``jcm calc``).
    """
    if methodology not in MODULES:
        raise InputError(f"unknown methodology '{methodology}' (known: {', '.join(MODULES)})")
    spec = spec or load_spec(methodology)
    data: dict = {"parameters": period, "units": units or []}
    if version is not None:
        data["version"] = version
    given = validate_input(spec, data)
    period = given.parameters.model_dump(exclude_none=True)
    units = [u.model_dump(exclude_none=True) for u in given.units]
    used_defaults: dict[str, dict] = {}
    for values, names in [(period, {n for n, p in spec.parameters.items() if not p.per_unit})] + \
            [(u, {n for n, p in spec.parameters.items() if p.per_unit}) for u in units]:
        for name in sorted(names - set(values)):
            values[name] = spec.defaults[name].value
            used_defaults[name] = spec.defaults[name].model_dump()
    unconfirmed = any(d["status"] != "confirmed" for d in used_defaults.values())
    with exact_arithmetic():
        RE, PE, lines = MODULES[methodology].compute(
            {k: exact(v) for k, v in period.items()},
            [{k: v if k == "id" else exact(v) for k, v in u.items()} for u in units])
        ER = emission_reductions(exact(RE), exact(PE))
    if not all(math.isfinite(float(x)) and abs(float(x)) < LARGEST_FIGURE for x in (RE, PE, ER)):
        raise InputError(f"RE {float(RE):g}, PE {float(PE):g} tCO2: beyond {LARGEST_FIGURE:,} t no figure can be "
                         "right (the readings behind it cannot be), nor be kept as a whole number")
    rounded = round_period_er(ER, spec.rounding)
    lines.append(f"ER = RE − PE = {shown(RE)} − {shown(PE)} = {shown(ER)}")
    lines.append(f"ER (period, rounded {spec.rounding} to whole tCO2) = {rounded}")
    return Calculation(
        methodology=methodology, version=spec.version, RE=float(RE), PE=float(PE), ER_unrounded=float(ER), ER=rounded,
        ER_exact=str(ER), provisional=spec.provisional or unconfirmed, parameters=_as_float(period),
        units=[_as_float(u) for u in units], defaults_used=used_defaults, explanation=lines,
    )


def _as_float(values: dict) -> dict:
    # the record of the values used holds plain numbers (ledger JSON, workbook cells); ER_exact keeps exactness
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in values.items()}


__all__ = ["MODULES", "Calculation", "InputError", "calculate", "load_spec"]
