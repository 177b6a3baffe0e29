"""Rules every JCM methodology shares: ER = RE - PE, and how the period's ER is rounded.

References
----------
docs/methodologies.md, sections 1.1 and 1.7: ER_p = RE_p - PE_p, leakage not counted; issued
credits are whole tonnes, so the period's ER is rounded down (ROUNDDOWN) once, at the
very end, and every value before it keeps full precision.
"""

from __future__ import annotations

import decimal
import numbers
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

#: significant digits of the period arithmetic: sums and products of the inputs as
#: written (17 digits each at most) are exact; a division is carried to this many digits
PRECISION = 100


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


def exact(x) -> Decimal:
    """The decimal value a number is written as: a float by its repr (0.797, not the
    binary 0.79700000000000004174...), so decimal arithmetic on it is the report's.

    Parameters
    ----------
    x : float, int or Decimal
        A finite number [any unit].

    Returns
    -------
    Decimal
        The same value in the same unit.
    """
    if isinstance(x, Decimal):
        return x
    if isinstance(x, numbers.Integral):
        return Decimal(int(x))
    return Decimal(repr(float(x)))


def exact_sum(values) -> Decimal:
    """The exact sum of the decimal values ``values`` are written as (``exact`` of each): a
    period total that does not depend on the order or the binary rounding of a float sum.

    Parameters
    ----------
    values : iterable of float, int or Decimal
        Finite numbers [any unit, the same for all].

    Returns
    -------
    Decimal
        Their sum [the same unit].
    """
    with exact_arithmetic():
        return sum((exact(v) for v in values), Decimal(0))


def shown(x) -> str:
    """A figure for an explanation line: exact, unless a division made it run on (then
    20 significant digits and an ellipsis; the rounding still uses every digit)."""
    if isinstance(x, Decimal) and len(x.as_tuple().digits) > 20:
        return f"{x:.20g}…"
    return str(x)


def exact_arithmetic() -> decimal.localcontext:
    """A decimal context for a period's figures: ``PRECISION`` digits, and an error
    (never a silent NaN or infinity) for an invalid operation or a division by zero."""
    return decimal.localcontext(prec=PRECISION, traps=[decimal.InvalidOperation, decimal.DivisionByZero,
                                                       decimal.Overflow])


def round_period_er(ER, mode: str = "down") -> int:
    """Round a monitoring period's final ER to whole tonnes, as the spreadsheet does with
    the decimal figure the report shows. Only ever applied to the final figure.

    Parameters
    ----------
    ER : Decimal, float or int
        The period's emission reductions [tCO2/p], unrounded; a float counts as the
        decimal its repr writes.
    mode : {"down", "nearest"}
        ``down``: toward zero, as Excel's ROUNDDOWN (ex-post figures, the JCM rule);
        ``nearest``: halves away from zero, as Excel's ROUND (ex-ante estimates).

    Returns
    -------
    int
        Whole tonnes [tCO2/p].
    """
    modes = {"down": ROUND_DOWN, "nearest": ROUND_HALF_UP}
    if mode not in modes:
        raise ValueError(f"unknown rounding mode '{mode}'")
    return int(exact(ER).to_integral_value(rounding=modes[mode]))


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
    ER_exact: str = ""  # ER_unrounded as the exact decimal the rounding saw
    parameters: dict = field(default_factory=dict)  # period-level values used
    units: list[dict] = field(default_factory=list)  # per-unit values used
    defaults_used: dict = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "methodology": self.methodology, "version": self.version,
            "RE": self.RE, "PE": self.PE, "ER": self.ER, "ER_unrounded": self.ER_unrounded, "ER_exact": self.ER_exact,
            "provisional": self.provisional, "parameters": self.parameters, "units": self.units,
            "defaults_used": self.defaults_used,
        }
