"""ID_PROV_BIOMASS 0.1: empty-fruit-bunch biomass power displacing grid electricity [provisional].

No approved JCM methodology was found; the pattern of the Indonesian grid-displacing
methodologies (ID_AM001): net generation replaces grid electricity, no project
emissions from the non-fossil plant itself.

References
----------
docs/methodologies.md, section 6. ID_PROV_BIOMASS version 0.1 (this project's provisional methodology), after JCM ID_AM001:
RE_p = EG_net,p × EF_grid ; PE_p = FC_diesel,p × NCV_diesel × EF_diesel + EC_import,p × EF_grid.
"""

from __future__ import annotations

METHODOLOGY = "ID_PROV_BIOMASS"


def reference_emissions(EG_net, EF_grid):
    """RE_p = EG_net,p × EF_grid.

    Parameters
    ----------
    EG_net : float or Series
        Export at the interconnection [MWh/p].
    EF_grid : float
        [tCO2/MWh]

    Returns
    -------
    float or Series
        [tCO2/p]
    """
    return EG_net * EF_grid


def project_emissions(FC_diesel, NCV_diesel, EF_diesel, EC_import, EF_grid):
    """PE_p = FC_diesel,p × NCV_diesel × EF_diesel + EC_import,p × EF_grid.

    Parameters
    ----------
    FC_diesel : float or Series
        Diesel burned [kL/p].
    NCV_diesel : float
        [GJ/kL]
    EF_diesel : float
        [tCO2/GJ]
    EC_import : float or Series
        Grid import while the plant is down [MWh/p].
    EF_grid : float
        [tCO2/MWh]

    Returns
    -------
    float or Series
        [tCO2/p]
    """
    return FC_diesel * NCV_diesel * EF_diesel + EC_import * EF_grid


def compute(period: dict, units: list[dict]) -> tuple[float, float, list[str]]:
    p = period
    RE = reference_emissions(p["EG_net"], p["EF_grid"])
    PE = project_emissions(p["FC_diesel"], p["NCV_diesel"], p["EF_diesel"], p["EC_import"], p["EF_grid"])
    lines = [
        f"RE = EG_net × EF_grid = {p['EG_net']} × {p['EF_grid']} = {RE}",
        f"PE = FC_diesel × NCV_diesel × EF_diesel + EC_import × EF_grid = {p['FC_diesel']} × {p['NCV_diesel']} × "
        f"{p['EF_diesel']} + {p['EC_import']} × {p['EF_grid']} = {PE}",
    ]
    return RE, PE, lines
