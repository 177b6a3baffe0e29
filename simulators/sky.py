"""Sun and clouds for the solar simulators: plausible, not meteorological."""

from __future__ import annotations

import datetime as dt
import math


def solar_elevation(t: dt.datetime, latitude: float, longitude: float) -> float:
    """Approximate solar elevation [deg] at UTC time ``t`` (Cooper's declination, no refraction)."""
    t = t.astimezone(dt.UTC)
    day = t.timetuple().tm_yday
    declination = 23.45 * math.sin(math.radians(360 / 365 * (284 + day)))
    solar_hours = t.hour + t.minute / 60 + t.second / 3600 + longitude / 15.0
    hour_angle = 15.0 * (solar_hours - 12.0)
    lat, dec, ha = map(math.radians, (latitude, declination, hour_angle))
    sin_el = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(ha)
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_el))))


def cloud_factor(t: dt.datetime, seed: int) -> float:
    """Smooth cloud attenuation in [0.25, 1]: a few incommensurate waves per seed."""
    x = t.timestamp() / 60.0
    s = sum(math.sin(x / p + seed * k) for k, p in enumerate((7.3, 19.1, 53.7, 131.0), start=1))
    return 0.25 + 0.75 * (0.5 + s / 8.0) ** 2 if s < 0 else min(1.0, 0.85 + s / 26.0)


def pv_fraction(t: dt.datetime, latitude: float, longitude: float, seed: int = 0) -> float:
    """Fraction of rated AC power a PV array gives at ``t`` (0 at night)."""
    el = solar_elevation(t, latitude, longitude)
    if el <= 0:
        return 0.0
    return min(1.0, math.sin(math.radians(el)) ** 1.2 * 1.05) * cloud_factor(t, seed)
