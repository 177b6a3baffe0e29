"""Parameters computed per monitoring interval from several channels, before any
daily total: the PH biogas site's flare methane (PE_flare)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from processing.methodologies.ph_prov_biogas import flare_emissions


def flare_daily(bg_flare: pd.Series, ch4_pct: pd.Series, flame: pd.Series, zone: ZoneInfo, days: pd.Index,
                GWP_CH4: float, CH4_density: float, eta_flare_burning: float) -> pd.Series:
    """PE_flare per local day [tCO2e] from the flare gas counter [Nm3], the methane
    fraction [%] and the flame detector, interval by interval.

    Conservative where a channel is missing: the flame counts as out (η = 0) unless the
    detector said burning at both ends of the interval, and a missing methane fraction
    takes the highest fraction measured in the period (100 % if none was).
    """
    bg = bg_flare.dropna().sort_index()
    if len(bg) < 2:
        return pd.Series(np.nan, index=days, dtype=float)
    volume = np.maximum(np.diff(bg.to_numpy()), 0.0)
    t0, t1 = bg.index[:-1], bg.index[1:]
    ch4 = ch4_pct.dropna().sort_index()
    w_max = float(ch4.max()) / 100 if len(ch4) else 1.0
    w = (ch4.reindex(t1, method="ffill") / 100).fillna(w_max).to_numpy() if len(ch4) else np.full(len(t1), w_max)
    fl = flame.dropna().sort_index().astype(bool)
    if len(fl):
        on = fl.reindex(t0, method="ffill").fillna(False).to_numpy(bool) & fl.reindex(t1, method="ffill").fillna(False).to_numpy(bool)
    else:
        on = np.zeros(len(t1), dtype=bool)
    pe = flare_emissions(volume, w, on, GWP_CH4, CH4_density, eta_flare_burning)
    return pd.Series(pe, index=t1.tz_convert(zone).date).groupby(level=0).sum().reindex(days)
