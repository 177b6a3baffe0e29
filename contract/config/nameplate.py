"""Nameplate figures of a site's equipment: the most its counters can physically register.

A rating bounds the counter channels of one device: a generator's or PV plant's capacity
(MW, kW) or a transformer's rated apparent power (kVA: active energy never exceeds it)
bounds energy counters, a meter's maximum flow (L/h, Nm3/h, t/h, GJ/h) bounds its
volume, mass or heat totaliser. The processor uses them for the "theoretical maximum
output" check of D-MRV practice: no counter interval may rise faster than the rating
times the site's margin, and no day may exceed the rating times the day's hours.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from contract.config.profile import Strict

#: rating unit -> (what it bounds, scale to that dimension's base unit per hour)
RATING_UNITS: dict[str, tuple[str, float]] = {
    "W": ("energy", 1.0), "kW": ("energy", 1e3), "MW": ("energy", 1e6),
    "VA": ("energy", 1.0), "kVA": ("energy", 1e3), "MVA": ("energy", 1e6),
    "L/h": ("volume", 1e-3), "kL/h": ("volume", 1.0), "m3/h": ("volume", 1.0),
    "Nm3/h": ("normal volume", 1.0),
    "kg/h": ("mass", 1e-3), "t/h": ("mass", 1.0),
    "MJ/h": ("heat", 1e-3), "GJ/h": ("heat", 1.0),
}
#: counter unit -> (dimension, scale to the dimension's base unit)
COUNTER_UNITS: dict[str, tuple[str, float]] = {
    "Wh": ("energy", 1.0), "kWh": ("energy", 1e3), "MWh": ("energy", 1e6),
    "L": ("volume", 1e-3), "kL": ("volume", 1.0), "m3": ("volume", 1.0),
    "Nm3": ("normal volume", 1.0),
    "kg": ("mass", 1e-3), "t": ("mass", 1.0),
    "MJ": ("heat", 1e-3), "GJ": ("heat", 1.0),
}

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


class Rating(Strict):
    """One device's nameplate figure."""

    device: str
    #: counter channels it bounds; default: every counter channel of the device in a unit it can bound
    channels: list[str] | None = Field(default=None, min_length=1)
    capacity: PositiveFinite
    unit: Literal[tuple(RATING_UNITS)]  # type: ignore[valid-type]
    description: str = ""

    def per_hour(self, counter_unit: str) -> float | None:
        """The rating as the most a counter in ``counter_unit`` can rise in an hour
        [counter unit/h]; ``None`` when the rating does not bound that unit."""
        dimension, scale = RATING_UNITS[self.unit]
        counted = COUNTER_UNITS.get(counter_unit)
        if counted is None or counted[0] != dimension:
            return None
        return self.capacity * (scale / counted[1])


class Nameplate(Strict):
    #: an interval may read up to this factor above the rating (meter error, short overload) [-]
    margin: float = Field(default=1.1, ge=1.0, le=2.0, allow_inf_nan=False, strict=True)
    ratings: list[Rating] = Field(default_factory=list)
