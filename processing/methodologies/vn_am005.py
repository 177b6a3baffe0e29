"""VN_AM005 Ver1.0: amorphous high-efficiency distribution transformers (Viet Nam).

Only no-load (core) losses are credited; load losses are excluded by an
eligibility condition [provisional].

References
----------
docs/methodologies.md, section 4. JCM VN_AM005 Ver1.0 (projects VN004, VN008, VN013):
RE_p = Σ_i NLL_RE,i × OH_i,p / 1000 × EF_grid ; PE_p = Σ_i NLL_PJ,i × OH_i,p / 1000 × EF_grid.
"""

from __future__ import annotations

METHODOLOGY = "VN_AM005"


def no_load_emissions(NLL, OH, EF_grid):
    """Emissions of one transformer's no-load losses over the period.

    .. math:: E_{i,p} = NLL_i \\times OH_{i,p} \\times 10^{-3} \\times EF_{grid}

    Parameters
    ----------
    NLL : float or Series
        No-load loss of the transformer [kW] (NLL_RE,i for the reference, NLL_PJ,i for the project).
    OH : float or Series
        Hours the transformer was energised [h/p].
    EF_grid : float or Series
        Grid emission factor [tCO2/MWh].

    Returns
    -------
    float or Series
        [tCO2/p]
    """
    return NLL * OH / 1000 * EF_grid


def compute(period: dict, units: list[dict]) -> tuple[float, float, list[str]]:
    ef = period["EF_grid"]
    re_terms = [no_load_emissions(u["NLL_RE"], u["OH"], ef) for u in units]
    pe_terms = [no_load_emissions(u["NLL_PJ"], u["OH"], ef) for u in units]
    lines = []
    for u, r, p in zip(units, re_terms, pe_terms):
        lines.append(f"RE_{u['id']} = NLL_RE × OH × 10⁻³ × EF_grid = {u['NLL_RE']} × {u['OH']} × 0.001 × {ef} = {r}")
        lines.append(f"PE_{u['id']} = NLL_PJ × OH × 10⁻³ × EF_grid = {u['NLL_PJ']} × {u['OH']} × 0.001 × {ef} = {p}")
    RE, PE = sum(re_terms), sum(pe_terms)
    lines += [f"RE = Σ_i RE_i = {RE}", f"PE = Σ_i PE_i = {PE}"]
    return RE, PE, lines
