"""Units of meter channels, methodology parameters and fixed values, and conversion
between them.

A unit is one symbol or ``numerator/denominator`` of two symbols (``tCO2/MWh``,
``GJ/t``, ``kg/Nm3``). Each symbol has a dimension and a scale to that dimension's base;
two units convert when their dimensions match (``kgCO2/MWh`` to ``tCO2/MWh`` is 10⁻³,
``kWh`` to ``MWh`` is 10⁻³, ``MJ/kg`` to ``GJ/t`` is 1) and are refused otherwise
(``kg`` to ``MWh``). Methane and CO2-equivalent masses share the CO2 dimension.
"""

from __future__ import annotations

from fractions import Fraction

#: symbol -> (dimension, scale to the dimension's base unit), scales exact
SYMBOLS: dict[str, tuple[str, Fraction]] = {k: (d, Fraction(s)) for k, (d, s) in {
    # energy, base J (1 Wh = 3600 J)
    "J": ("energy", 1), "kJ": ("energy", 10**3), "MJ": ("energy", 10**6), "GJ": ("energy", 10**9),
    "TJ": ("energy", 10**12), "Wh": ("energy", 3600), "kWh": ("energy", 3600 * 10**3),
    "MWh": ("energy", 3600 * 10**6), "GWh": ("energy", 3600 * 10**9),
    # power, base W
    "W": ("power", 1), "kW": ("power", 10**3), "MW": ("power", 10**6), "VA": ("power", 1), "kVA": ("power", 10**3),
    # mass of anything but CO2, base g
    "g": ("mass", 1), "kg": ("mass", 10**3), "t": ("mass", 10**6), "Gg": ("mass", 10**9),
    # mass of CO2 or CO2 equivalent, base g
    "gCO2": ("co2", 1), "kgCO2": ("co2", 10**3), "tCO2": ("co2", 10**6),
    "gCO2e": ("co2", 1), "kgCO2e": ("co2", 10**3), "tCO2e": ("co2", 10**6),
    # volume, base L; normal cubic metres are their own quantity (a volume at 0 °C, 101.325 kPa)
    "L": ("volume", 1), "kL": ("volume", 10**3), "m3": ("volume", 10**3), "Nm3": ("normal_volume", 1),
    # time, base s
    "s": ("time", 1), "min": ("time", 60), "h": ("time", 3600), "d": ("time", 86400),
    # dimensionless
    "-": ("", 1), "%": ("", Fraction(1, 100)),
}.items()}


def parse(unit: str) -> tuple[tuple[tuple[str, int], ...], Fraction]:
    """The dimension (sorted ``(name, power)`` pairs) and scale of ``unit``.

    Raises
    ------
    ValueError
        Naming the unit and the symbols known.
    """
    parts = unit.split("/")
    if len(parts) > 2 or any(p not in SYMBOLS for p in parts):
        raise ValueError(f"unknown unit '{unit}' (a symbol or symbol/symbol of: {', '.join(SYMBOLS)})")
    powers: dict[str, int] = {}
    scale = Fraction(1)
    for p, sign in zip(parts, (1, -1)):
        dim, s = SYMBOLS[p]
        scale = scale * s if sign > 0 else scale / s
        if dim:
            powers[dim] = powers.get(dim, 0) + sign
    return tuple(sorted((d, n) for d, n in powers.items() if n)), scale


def ratio(from_unit: str, to_unit: str) -> Fraction:
    """Exactly what a value in ``from_unit`` is multiplied by to get ``to_unit``.

    Raises
    ------
    ValueError
        A unit is unknown, or the two measure different quantities.
    """
    (dim_a, scale_a), (dim_b, scale_b) = parse(from_unit), parse(to_unit)
    if dim_a != dim_b:
        raise ValueError(f"'{from_unit}' cannot be converted to '{to_unit}': they measure different quantities")
    return scale_a / scale_b


def factor(from_unit: str, to_unit: str) -> float:
    """``ratio`` as a float, to scale a series of values."""
    return 1.0 if from_unit == to_unit else float(ratio(from_unit, to_unit))


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` [from_unit] in ``to_unit``: the decimal figure written (its shortest repr)
    times the exact ratio, rounded once, so that 797 kgCO2/MWh is 0.797 tCO2/MWh and
    0.000797 tCO2/kWh is 0.797 too, not 0.7969999999999999."""
    return value if from_unit == to_unit else float(Fraction(repr(float(value))) * ratio(from_unit, to_unit))
