"""Unit conversions between meter channels and methodology parameters."""

from __future__ import annotations

_FACTORS = {
    ("Wh", "MWh"): 1e-6, ("kWh", "MWh"): 1e-3, ("kWh", "Wh"): 1e3, ("Wh", "kWh"): 1e-3, ("MWh", "MWh"): 1.0, ("kWh", "kWh"): 1.0,
    ("L", "kL"): 1e-3, ("kL", "kL"): 1.0, ("m3", "kL"): 1.0,
    ("kg", "t"): 1e-3, ("t", "t"): 1.0, ("GJ", "GJ"): 1.0, ("MJ", "GJ"): 1e-3,
    ("h", "h"): 1.0, ("s", "h"): 1 / 3600, ("Nm3", "Nm3"): 1.0, ("%", "-"): 1e-2,
}


def factor(from_unit: str, to_unit: str) -> float:
    """Multiply a value in ``from_unit`` by this to get ``to_unit``; raise naming both if unknown."""
    if from_unit == to_unit:
        return 1.0
    try:
        return _FACTORS[(from_unit, to_unit)]
    except KeyError:
        raise ValueError(f"no conversion from '{from_unit}' to '{to_unit}'") from None
