"""MV_AM002 Ver1.0: smart mini-grid (PV + battery + EMS) displacing diesel (Maldives).

The equations follow the approved PV + storage methodologies (MV_AM001, ID_AM017,
MN_AM004) until the Ver1.0 text is supplied [provisional].

References
----------
docs/methodologies.md, section 3. JCM MV_AM002 Ver1.0 (project MV002, Addu City); MV_AM001, ID_AM017, MN_AM004.
"""

from __future__ import annotations

import numpy as np

METHODOLOGY = "MV_AM002"


def displaced_generation(EG_PV, EC_BESS, EG_BESS):
    """PV energy that displaced diesel, net of battery round-trip losses.

    .. math:: EG_{disp,p} = EG_{PV,p} - \\max(0, EC_{BESS,p} - EG_{BESS,p})

    Parameters
    ----------
    EG_PV : float or Series
        PV output [MWh/p].
    EC_BESS : float or Series
        Energy charged into the battery [MWh/p].
    EG_BESS : float or Series
        Energy discharged from the battery [MWh/p].

    Returns
    -------
    float or Series
        [MWh/p]
    """
    return EG_PV - np.maximum(EC_BESS - EG_BESS, 0)


def reference_emissions(EG_disp, EF_diesel):
    """RE_p = EG_disp,p × EF_diesel [tCO2/p]; EF_diesel in [tCO2/MWh]."""
    return EG_disp * EF_diesel


def project_emissions():
    """PE_p = 0 [tCO2/p]."""
    return 0.0


def compute(period: dict, units: list[dict]) -> tuple[float, float, list[str]]:
    p = period
    disp = displaced_generation(p["EG_PV"], p["EC_BESS"], p["EG_BESS"])
    RE = reference_emissions(disp, p["EF_diesel"])
    lines = [
        f"EG_disp = EG_PV − max(0, EC_BESS − EG_BESS) = {p['EG_PV']} − max(0, {p['EC_BESS']} − {p['EG_BESS']}) = {disp}",
        f"RE = EG_disp × EF_diesel = {disp} × {p['EF_diesel']} = {RE}",
        "PE = 0",
    ]
    return RE, project_emissions(), lines
