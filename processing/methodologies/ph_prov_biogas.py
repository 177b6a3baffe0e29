"""PH_PROV_BIOGAS 0.1: biogas power and boiler fuel switch at a pineapple cannery [provisional].

No approved JCM methodology was found; the equations follow JCM VN_AM004 (biogas
from organic waste) and the CDM AMS-I.D / fuel-switch patterns.

References
----------
docs/methodologies.md, section 5. PH_PROV_BIOGAS version 0.1 (this project's provisional methodology), after JCM
VN_AM004 and CDM AMS-I.D:
RE_p = EG_BG,p × EF_grid + HG_p / η_BL × EF_fuel
PE_p = EC_aux,p × EF_grid + FC_fossil,p × NCV_fossil × EF_fossil + PE_flare,p
"""

from __future__ import annotations

import numpy as np

from processing.methodologies.common import shown

METHODOLOGY = "PH_PROV_BIOGAS"


def reference_emissions(EG_BG, EF_grid, HG, eta_BL, EF_fuel):
    """Grid electricity and boiler fuel the biogas displaces.

    .. math:: RE_p = EG_{BG,p} \\times EF_{grid} + HG_p / \\eta_{BL} \\times EF_{fuel}

    Parameters
    ----------
    EG_BG : float or Series
        Net electricity from the biogas gensets [MWh/p].
    EF_grid : float
        Grid emission factor [tCO2/MWh].
    HG : float or Series
        Heat delivered as steam by the biogas boilers [GJ/p].
    eta_BL : float
        Efficiency of the reference fossil boiler [-].
    EF_fuel : float
        Emission factor of the reference boiler's fuel [tCO2/GJ].

    Returns
    -------
    float or Series
        [tCO2/p]
    """
    return EG_BG * EF_grid + HG / eta_BL * EF_fuel


def project_emissions(EC_aux, EF_grid, FC_fossil, NCV_fossil, EF_fossil, PE_flare):
    """Auxiliary grid import, fossil fuel still burned and methane the flare let through.

    .. math:: PE_p = EC_{aux,p} \\times EF_{grid} + FC_{fossil,p} \\times NCV_{fossil} \\times EF_{fossil} + PE_{flare,p}

    Parameters
    ----------
    EC_aux : float or Series
        Electricity imported for the plant [MWh/p].
    EF_grid : float
        [tCO2/MWh]
    FC_fossil : float or Series
        Fossil fuel burned [t/p].
    NCV_fossil : float
        [GJ/t]
    EF_fossil : float
        [tCO2/GJ]
    PE_flare : float or Series
        Methane not destroyed by the flare [tCO2e/p], see ``flare_emissions``.

    Returns
    -------
    float or Series
        [tCO2/p]
    """
    return EC_aux * EF_grid + FC_fossil * NCV_fossil * EF_fossil + PE_flare


def flare_emissions(BG_flare, w_CH4, flame_on, GWP_CH4, CH4_density=0.716, eta_flare_burning=0.5):
    """Methane sent to the flare and not destroyed, per monitoring interval.

    .. math:: PE_{flare} = BG_{flare} \\times w_{CH4} \\times \\rho_{CH4} \\times (1 - \\eta_{flare}) \\times GWP_{CH4} \\times 10^{-3}

    with η_flare = 0.5 while the flame detector reports burning and 0 otherwise.

    Parameters
    ----------
    BG_flare : float or Series
        Biogas to the flare in the interval [Nm³].
    w_CH4 : float or Series
        Methane fraction of the biogas [-] (0.58, not 58 %).
    flame_on : bool or Series
        Flame detector state over the interval.
    GWP_CH4 : float
        [-]
    CH4_density : float
        [kg/Nm³]
    eta_flare_burning : float
        Flare efficiency while burning [-].

    Returns
    -------
    float or Series
        [tCO2e]; infinite for inputs whose product is beyond any float (no meter reads such: the period
        cannot be computed, which it says), without numpy's warning.
    """
    eta = np.where(flame_on, eta_flare_burning, 0.0)
    with np.errstate(over="ignore"):
        return BG_flare * w_CH4 * CH4_density * (1 - eta) * GWP_CH4 * 1e-3


def compute(period: dict, units: list[dict]) -> tuple[float, float, list[str]]:
    p = period
    RE = reference_emissions(p["EG_BG"], p["EF_grid"], p["HG"], p["eta_BL"], p["EF_fuel"])
    PE = project_emissions(p["EC_aux"], p["EF_grid"], p["FC_fossil"], p["NCV_fossil"], p["EF_fossil"], p["PE_flare"])
    lines = [
        f"RE = EG_BG × EF_grid + HG / eta_BL × EF_fuel = {p['EG_BG']} × {p['EF_grid']} + {p['HG']} / {p['eta_BL']} × {p['EF_fuel']} = {shown(RE)}",
        f"PE = EC_aux × EF_grid + FC_fossil × NCV_fossil × EF_fossil + PE_flare = {p['EC_aux']} × {p['EF_grid']} + "
        f"{p['FC_fossil']} × {p['NCV_fossil']} × {p['EF_fossil']} + {p['PE_flare']} = {PE}",
    ]
    return RE, PE, lines
