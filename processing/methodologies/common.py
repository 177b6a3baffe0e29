"""Rules every JCM methodology shares: ER = RE - PE, and how the period's ER is rounded.

References
----------
JCM rules of implementation: ER_p = RE_p - PE_p; leakage is not counted. Issued
credits are whole tonnes: the period's ER is rounded down (ROUNDDOWN) at the very end,
intermediate values keep full precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def emission_reductions(RE, PE):
    """Emission reductions of the period.

    .. math:: ER_p = RE_p - PE_p

    Parameters
    ----------
    RE : float or Series
        Reference emissions [tCO2/p].
    PE : float or Series
        Project emissions [tCO2/p].

    Returns
    -------
    ER : float or Series
        Emission reductions [tCO2/p], unrounded.
    """
    return RE - PE


def round_period_er(ER: float, mode: str = "down") -> int:
    """Round a monitoring period's final ER to whole tonnes: ROUNDDOWN unless the
    methodology says nearest (ex-ante estimates). Only ever applied to the final figure."""
    if mode == "down":
        # toward zero, as Excel's ROUNDDOWN; the 1e-9 keeps a float sum such as
        # 18437.999999999996 (meaning 18438) from losing a tonne
        return math.trunc(ER + 1e-9)
    if mode == "nearest":
        return math.floor(ER + 0.5)
    raise ValueError(f"unknown rounding mode '{mode}'")


@dataclass
class Calculation:
    """One period's result: what went in, what came out, and how."""

    methodology: str
    version: str
    RE: float
    PE: float
    ER_unrounded: float
    ER: int
    provisional: bool
    parameters: dict = field(default_factory=dict)  # period-level values used
    units: list[dict] = field(default_factory=list)  # per-unit values used
    defaults_used: dict = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "methodology": self.methodology, "version": self.version,
            "RE": self.RE, "PE": self.PE, "ER": self.ER, "ER_unrounded": self.ER_unrounded,
            "provisional": self.provisional, "parameters": self.parameters, "units": self.units,
            "defaults_used": self.defaults_used,
        }
