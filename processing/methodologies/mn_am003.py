"""MN_AM003 Ver2.0 "Installation of Solar PV System" (Mongolia) [confirmed].

References
----------
docs/methodologies.md, section 2. JCM MN_AM003 Ver2.0, section on calculation of emission reductions:
RE_p = Σ_i EG_i,p × EF_RE,i ; PE_p = 0 ; ER_p = RE_p − PE_p.
"""

from __future__ import annotations

METHODOLOGY = "MN_AM003"


def reference_emissions_unit(EG, EF_RE):
    """Reference emissions of PV system i.

    .. math:: RE_{i,p} = EG_{i,p} \\times EF_{RE,i}

    Parameters
    ----------
    EG : float or Series
        AC output of PV system i in the period [MWh/p].
    EF_RE : float or Series
        Reference CO2 emission factor of PV system i [tCO2/MWh].

    Returns
    -------
    float or Series
        [tCO2/p]

    References
    ----------
    docs/methodologies.md, section 2; MN_AM003 Ver2.0, equation of reference emissions.
    """
    return EG * EF_RE


def project_emissions():
    """PE_p = 0: a PV system emits nothing in operation (MN_AM003 Ver2.0) [tCO2/p]."""
    return 0.0


def compute(period: dict, units: list[dict]) -> tuple[float, float, list[str]]:
    terms = [reference_emissions_unit(u["EG"], u["EF_RE"]) for u in units]
    RE = sum(terms)
    lines = [f"RE_{u['id']} = EG × EF_RE = {u['EG']} × {u['EF_RE']} = {t}" for u, t in zip(units, terms)]
    lines.append(f"RE = Σ_i RE_i = {RE}")
    lines.append("PE = 0")
    return RE, project_emissions(), lines
