"""The five methodologies' equations as live Excel formulas.

A JCM monitoring spreadsheet computes RE, PE and ER with formulas over the period's
input cells, so a verifier can trace every figure. Each function here lays out one
methodology's steps through ``put`` (which writes a row and returns its cell) over the
input cells named by ``ref``; the Python figure of each step goes beside it as a check.
Intermediate checks use the methodology modules' own functions; RE, PE and ER come
from ``calculate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

from processing.methodologies import Calculation, load_spec, mn_am003, mv_am002, vn_am005
from processing.methodologies.common import exact

#: ``ref(parameter, unit_id)``: the cell holding an input value
Ref = Callable[[str, str | None], str]
#: ``put(symbol, unit_id, formula, unit, check, equation)``: write a step, return its cell
Put = Callable[[str, str | None, str, str, float, str], str]


def _mn_am003(calc: Calculation, ref: Ref, put: Put) -> tuple[str, str]:
    terms = [put("RE_i", u["id"], f"={ref('EG', u['id'])}*{ref('EF_RE', u['id'])}", "tCO2",
                 mn_am003.reference_emissions_unit(u["EG"], u["EF_RE"]), "RE_i = EG_i,p × EF_RE,i")
             for u in calc.units]
    RE = put("RE", None, f"=SUM({terms[0]}:{terms[-1]})", "tCO2", calc.RE, "RE_p = Σ_i RE_i")
    PE = put("PE", None, "=0", "tCO2", calc.PE, "PE_p = 0")
    return RE, PE


def _mv_am002(calc: Calculation, ref: Ref, put: Put) -> tuple[str, str]:
    p = calc.parameters
    disp = put("EG_disp", None, f"={ref('EG_PV', None)}-MAX(0,{ref('EC_BESS', None)}-{ref('EG_BESS', None)})", "MWh",
               float(mv_am002.displaced_generation(p["EG_PV"], p["EC_BESS"], p["EG_BESS"])),
               "EG_disp,p = EG_PV,p − max(0, EC_BESS,p − EG_BESS,p)")
    RE = put("RE", None, f"={disp}*{ref('EF_diesel', None)}", "tCO2", calc.RE, "RE_p = EG_disp,p × EF_diesel")
    PE = put("PE", None, "=0", "tCO2", calc.PE, "PE_p = 0")
    return RE, PE


def _vn_am005(calc: Calculation, ref: Ref, put: Put) -> tuple[str, str]:
    ef, EF = calc.parameters["EF_grid"], ref("EF_grid", None)
    sides = {}
    for side, nll in (("RE", "NLL_RE"), ("PE", "NLL_PJ")):
        terms = [put(f"{side}_i", u["id"], f"={ref(nll, u['id'])}*{ref('OH', u['id'])}*0.001*{EF}", "tCO2",
                     vn_am005.no_load_emissions(u[nll], u["OH"], ef), f"{side}_i = {nll},i × OH_i,p × 10⁻³ × EF_grid")
                 for u in calc.units]
        sides[side] = put(side, None, f"=SUM({terms[0]}:{terms[-1]})", "tCO2", getattr(calc, side),
                          f"{side}_p = Σ_i {side}_i")
    return sides["RE"], sides["PE"]


def _ph_prov_biogas(calc: Calculation, ref: Ref, put: Put) -> tuple[str, str]:
    r = {name: ref(name, None) for name in calc.parameters}
    RE = put("RE", None, f"={r['EG_BG']}*{r['EF_grid']}+{r['HG']}/{r['eta_BL']}*{r['EF_fuel']}", "tCO2", calc.RE,
             "RE_p = EG_BG,p × EF_grid + HG_p / η_BL × EF_fuel")
    PE = put("PE", None, f"={r['EC_aux']}*{r['EF_grid']}+{r['FC_fossil']}*{r['NCV_fossil']}*{r['EF_fossil']}"
             f"+{r['PE_flare']}", "tCO2", calc.PE,
             "PE_p = EC_aux,p × EF_grid + FC_fossil,p × NCV_fossil × EF_fossil + PE_flare,p")
    return RE, PE


def _id_prov_biomass(calc: Calculation, ref: Ref, put: Put) -> tuple[str, str]:
    r = {name: ref(name, None) for name in calc.parameters}
    RE = put("RE", None, f"={r['EG_net']}*{r['EF_grid']}", "tCO2", calc.RE, "RE_p = EG_net,p × EF_grid")
    PE = put("PE", None, f"={r['FC_diesel']}*{r['NCV_diesel']}*{r['EF_diesel']}+{r['EC_import']}*{r['EF_grid']}",
             "tCO2", calc.PE, "PE_p = FC_diesel,p × NCV_diesel × EF_diesel + EC_import,p × EF_grid")
    return RE, PE


STEPS: dict[str, Callable[[Calculation, Ref, Put], tuple[str, str]]] = {
    "MN_AM003": _mn_am003,
    "MV_AM002": _mv_am002,
    "VN_AM005": _vn_am005,
    "PH_PROV_BIOGAS": _ph_prov_biogas,
    "ID_PROV_BIOMASS": _id_prov_biomass,
}

#: the period's rounding as a formula over the unrounded ER cell plus ``noise_guard``
ROUNDING = {
    "down": ("=ROUNDDOWN({cell}{guard},0)", "ER_p rounded down to whole tCO2 (ROUNDDOWN), once, for the period; "
             "{guard} absorbs the sheet's binary rounding noise (see docs/methodologies.md, section 1.7)"),
    "nearest": ("=ROUND({cell}{guard},0)", "ER_p rounded to the nearest whole tCO2, once, for the period; "
                "{guard} absorbs the sheet's binary rounding noise (see docs/methodologies.md, section 1.7)"),
}
#: a bound of the relative error of the sheet's binary arithmetic: each SUM of daily values,
#: product and quotient loses at most one unit roundoff (1.1e-16) of its size; a period's
#: chain has far fewer than the 9,000 operations this allows
SHEET_ERROR = 1e-12


def noise_guard(calc: Calculation, rounding: str) -> float:
    """What the rounding formula adds to the sheet's unrounded ER, so that the sheet's
    binary arithmetic rounds to the tonnes of the exact decimal ER (``calc.ER``).

    The sheet's ER differs from the exact ER by at most ``tol``: ``SHEET_ERROR`` × the sum
    of the monitored period totals × the largest fixed factor (or inverse of one) squared,
    raised to a power of ten. An exact ER of 18,438 may come out 18,437.999999999996; one
    of 999.9999999995 is 999.99999999949995. Moving the sheet's value by ``tol`` toward the
    middle of the values that round to ``calc.ER`` keeps it among them (``tol`` < 0.25 t),
    so ROUNDDOWN (ROUND) gives the exact figure's tonnes in every case.

    Parameters
    ----------
    calc : Calculation
        The period's calculation, with its exact ER (``ER_exact``).
    rounding : {"down", "nearest"}
        The methodology's rounding rule.

    Returns
    -------
    float
        +tol or -tol [tCO2].
    """
    kinds = load_spec(calc.methodology).parameters
    values = [(k, v) for group in (calc.parameters, *calc.units) for k, v in group.items() if k in kinds]
    monitored = sum(abs(v) for k, v in values if kinds[k].kind == "monitored")
    factor = max([1.0] + [max(abs(v), 1 / abs(v)) for k, v in values if kinds[k].kind != "monitored" and v])
    tol = 10.0 ** math.ceil(math.log10(SHEET_ERROR * max(1.0, monitored) * factor ** 2))
    if tol >= 0.25:
        raise ValueError(f"period totals of {monitored:,.0f} are too large for the sheet's binary arithmetic to give "
                         "the whole tonnes of the exact figure")
    exact_er = Decimal(calc.ER_exact) if calc.ER_exact else exact(calc.ER_unrounded)
    # the values that round to calc.ER: [ER, ER+1) (down, ER >= 0), (ER-1, ER] (down, < 0), ER ± 0.5 (nearest)
    middle = calc.ER + (0 if rounding == "nearest" else Decimal("0.5") if exact_er >= 0 else Decimal("-0.5"))
    return tol if exact_er < middle else -tol


def write_calculation(calc: Calculation, rounding: str, ref: Ref, put: Put) -> str:
    """Lay out RE, PE, ER and the rounded ER of the period; returns the rounded ER's cell.

    Parameters
    ----------
    calc : Calculation
        The period's calculation; its inputs are in the cells ``ref`` names.
    rounding : str
        The methodology's rounding rule (``spec.rounding``).
    ref, put : callable
        See ``Ref`` and ``Put``.

    Returns
    -------
    str
        The cell of the period's ER (rounded).
    """
    RE, PE = STEPS[calc.methodology](calc, ref, put)
    unrounded = put("ER_unrounded", None, f"={RE}-{PE}", "tCO2", calc.ER_unrounded, "ER_p = RE_p − PE_p")
    formula, equation = ROUNDING[rounding]
    guard = f"{noise_guard(calc, rounding):+.0E}"
    return put("ER", None, formula.format(cell=unrounded, guard=guard), "tCO2", calc.ER, equation.format(guard=guard))
