"""PE_flare is conservative where data are missing: a silent flame detector means not
burning, a CH4 analyser gap takes the period's highest fraction, a totaliser wrap counts
its exact increment; each is an adjustment row with its figures."""

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.derived import flare_daily
from tests.conftest import fuzz_examples

UTC = ZoneInfo("UTC")
DAY = pd.Index([dt.date(2026, 10, 1)], name="day")
K = 0.716 * 28 * 1e-3  # ρ_CH4 × GWP_CH4 × 10⁻³ [tCO2e per Nm3 CH4]


def series(values, step_min=15, start="2026-10-01 00:00"):
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq=f"{step_min}min", tz="UTC"),
                     dtype=float)


def run(bg, ch4, flame, rollover=None):
    return flare_daily(bg, ch4, flame, UTC, DAY, 28, 0.716, 0.5, rollover=rollover, max_age_s=1350,
                       sources=("gas.flare", "gas.ch4", "gas.flame"))


def test_a_silent_flame_detector_means_not_burning():
    """Before: the last 'burning' was carried over the 2 h outage: PE 0.5 × the figure."""
    bg = series([i * 100.0 for i in range(13)])  # 12 intervals of 100 Nm3 over 3 h
    ch4 = series([50.0] * 13)
    flame = series([1.0] * 5)  # burning for the first hour, then the detector is silent
    r = run(bg, ch4, flame)
    burning, silent = 4 * 100 * 0.5, 8 * 100 * 0.5  # Nm3 of CH4
    assert r.values.iloc[0] == pytest.approx((burning * 0.5 + silent) * K)
    assert r.ch4_burning.iloc[0] == pytest.approx(burning) and r.ch4.iloc[0] == pytest.approx(burning + silent)
    [row] = [a for a in r.adjustments if a["kind"] == "flare_flame_missing"]
    assert row["source"] == "gas.flame" and row["after"] == pytest.approx(silent * K)
    assert row["before"] == pytest.approx(silent * 0.5 * K) and "800.0 Nm3" in row["reason"]


def test_a_flame_out_between_two_burning_readings_is_not_burning():
    bg = series([0.0, 100.0])
    flame = series([1.0, 0.0, 1.0, 1.0], step_min=5)  # out for a moment inside the interval
    r = run(bg, series([50.0, 50.0]), flame)
    assert r.values.iloc[0] == pytest.approx(100 * 0.5 * K) and not r.adjustments


def test_a_ch4_gap_takes_the_period_maximum_not_the_last_reading():
    """Before: the gap took the last reading, 40 %, where 70 % was measured in the period."""
    bg = series([i * 100.0 for i in range(9)])
    ch4 = series([70.0, 70.0, 40.0, 40.0, 40.0])  # then silent for 1 h
    r = run(bg, ch4, series([0.0] * 9))
    assert r.values.iloc[0] == pytest.approx((100 * (0.7 + 0.7 + 0.4 + 0.4 + 0.4) + 300 * 0.7) * K)
    [row] = r.adjustments
    assert row["kind"] == "flare_ch4_missing" and row["source"] == "gas.ch4"
    assert row["before"] == pytest.approx(300 * 0.4 * K) and row["after"] == pytest.approx(300 * 0.7 * K)
    assert "70.00%" in row["reason"]


def test_a_totaliser_wrap_counts_the_exact_increment():
    """Before: the wrap was clipped to 0 Nm3."""
    bg = series([999_900.0, 50.0, 150.0])  # wraps at 1,000,000
    r = run(bg, series([50.0] * 3), series([0.0] * 3), rollover=1_000_000)
    assert r.values.iloc[0] == pytest.approx(250 * 0.5 * K)
    [row] = r.adjustments
    assert row["kind"] == "flare_counter_rollover" and row["before"] == 0.0
    assert row["after"] == pytest.approx(150 * 0.5 * K) and "150.0 Nm3 counted" in row["reason"]


@pytest.mark.fuzz
def test_losing_flame_readings_never_lowers_pe_flare():
    """Whatever flame readings go missing, PE_flare never falls below the figure of the
    complete data; whatever CH4 readings go missing too, it never exceeds the figure of a
    flare that never burned at the period's highest CH4 fraction."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.conftest import fuzz_examples

    n = 24  # intervals of 15 min, the recording interval: a lost reading is a silence beyond max_age_s
    readings = st.lists(st.booleans(), min_size=n + 1, max_size=n + 1)

    @settings(max_examples=fuzz_examples(40), deadline=None)
    @given(flows=st.lists(st.floats(0, 500), min_size=n, max_size=n), flame=readings,
           ch4=st.lists(st.floats(30, 75), min_size=n + 1, max_size=n + 1),
           lost_flame=readings, lost_ch4=readings)
    def check(flows, flame, ch4, lost_flame, lost_ch4):
        bg = series([0.0] + list(pd.Series(flows).cumsum()))
        f, c = series(flame), series(ch4)
        kept_f = f[~pd.Series(lost_flame, index=f.index)]
        kept_c = c[~pd.Series(lost_ch4, index=c.index) | (c == c.max())]  # the period maximum stays known
        full, partial = run(bg, c, f), run(bg, c, kept_f)
        assert full.adjustments == []
        assert partial.values.iloc[0] >= full.values.iloc[0] - 1e-9
        assert all(a["after"] >= a["before"] - 1e-9 for a in partial.adjustments)
        assert run(bg, kept_c, kept_f).values.iloc[0] <= math.fsum(flows) * c.max() / 100 * K + 1e-9

    check()


def test_a_glitch_of_the_flare_totaliser_is_an_outlier_not_its_whole_register():
    """Before (the flare's own reset rule): a reading of 0 counted 0, then the next interval
    counted the whole register, 500,400 Nm3, as gas sent to the flare in 15 minutes."""
    bg = series([500_000.0, 500_100.0, 0.0, 500_300.0, 500_400.0])
    r = run(bg, series([50.0] * 5), series([0.0] * 5))
    assert r.values.iloc[0] == pytest.approx(400 * 0.5 * K)
    assert not [a for a in r.adjustments if a["kind"] == "flare_counter_rollover"]


def test_the_flare_interval_ending_at_midnight_belongs_to_the_day_before():
    """Before: the flare took the day of the interval's end, so the interval ending at
    00:00 went to the next day, unlike every counter."""
    days = pd.Index([dt.date(2026, 10, 1), dt.date(2026, 10, 2)], name="day")
    bg = series([0.0, 100.0, 300.0], start="2026-10-01 23:30")  # 23:30, 23:45, 00:00
    r = flare_daily(bg, series([50.0] * 3, start="2026-10-01 23:30"), series([0.0] * 3, start="2026-10-01 23:30"),
                    UTC, days, 28, 0.716, 0.5, max_age_s=1350)
    assert r.values.iloc[0] == pytest.approx(300 * 0.5 * K) and r.values.iloc[1:].isna().all()


def test_a_late_calibration_of_the_flare_gas_meter_reaches_pe_flare(tmp_path):
    """Before: the overdue gas train's correction was a row of BG_flare (QA only) and a finding,
    while PE_flare was computed from the uncorrected gas."""
    from contract.config.site import Calibration
    from processing.period import PeriodProcessor
    from store.sqlite_store import SqliteStore
    from tests.conftest import fill_history, reference_site

    s = reference_site("ph-biogas")
    overdue = s.model_copy(update={"devices": [
        d.model_copy(update={"calibrations": [Calibration(date=dt.date(2025, 1, 10), next_due=dt.date(2026, 1, 10),
                                                          error_found_pct=0.0, mpe_pct=2.0, certificate="test")]})
        if d.id == "gas-train" else d for d in s.devices]})
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2026, 10, 1), dt.date(2026, 10, 3))
    day = (dt.date(2026, 10, 2), dt.date(2026, 10, 2))
    clean, late = PeriodProcessor(s).process(store, *day), PeriodProcessor(overdue).process(store, *day)
    assert clean.parameters["PE_flare"] > 0
    assert late.parameters["PE_flare"] == pytest.approx(clean.parameters["PE_flare"] * 1.02, rel=1e-12)
    (row,) = [a for a in late.adjustments if a["parameter"] == "PE_flare" and a["kind"] == "late_calibration"]
    assert row["factor"] == pytest.approx(1.02) and row["meter"] == "gas-train"


def test_a_confirmed_reset_of_the_totaliser_is_not_reported_as_a_wrap():
    """The fall is settled by counter_increments (the interval counts its physical bound,
    PE_flare's direction): no flare_counter_rollover row, with or without a rollover."""
    bg = series([500_000.0, 500_100.0, 50.0, 150.0, 250.0])
    for rollover in (None, 1_000_000):
        r = flare_daily(bg, series([50.0] * 5), series([0.0] * 5), UTC, DAY, 28, 0.716, 0.5, rollover=rollover,
                        max_rate_per_h=1000, max_age_s=1350, sources=("gas.flare", "gas.ch4", "gas.flame"))
        assert r.values.iloc[0] == pytest.approx((100 + 250 + 100 + 100) * 0.5 * K)
        assert not [a for a in r.adjustments if a["kind"] == "flare_counter_rollover"]


def test_a_ch4_fraction_no_meter_can_read_fails_the_period_and_is_recorded(tmp_path):
    """A methane fraction of 1e300 (its point's range is 0 - 1: a QA finding) made PE_flare finite but
    so large that ER had 300 digits: the ledger could not hold it and processing stopped with an
    OverflowError. Figures beyond 2**53 tCO2 cannot be right: the period fails, named, and is recorded."""
    from processing.ledger import Ledger
    from processing.monthly import details, versions
    from processing.period import PeriodProcessor
    from store.sqlite_store import SqliteStore
    from tests.conftest import fill_history, reference_site, rewrite_channel

    s = reference_site("ph-biogas")
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2026, 10, 1), dt.date(2026, 10, 3))
    day = dt.datetime(2026, 10, 2, tzinfo=s.zone)
    assert rewrite_channel(store, s.site, "gas-train", "ch4_fraction", day, day + dt.timedelta(days=1),
                           lambda v, _: 1e300)
    r = PeriodProcessor(s).process(store, dt.date(2026, 10, 2), dt.date(2026, 10, 2))
    assert r.status == "failed" and r.calc is None
    assert any("cannot compute" in why and "no figure can be right" in why for why in r.reasons), r.reasons
    rev = Ledger(tmp_path / "ledger.sqlite").record(s.site, "2026-10", r.summary(), details(r), versions(s))
    assert rev.status == "failed" and rev.ER is None


@pytest.mark.parametrize("fraction", [1e308, -1e308])
def test_a_ch4_fraction_beyond_any_product_fails_the_period_without_numpys_warnings(tmp_path, fraction):
    """A methane fraction of ±1e308 makes the day's mean and PE_flare overflow to infinity: the
    period cannot be computed, which it says; numpy's "overflow encountered" RuntimeWarnings leaked
    to the operator's terminal besides (the daily mean's reduceat, PE_flare's product). None now."""
    import warnings

    from processing.period import PeriodProcessor
    from store.sqlite_store import SqliteStore
    from tests.conftest import fill_history, reference_site, rewrite_channel

    s = reference_site("ph-biogas")
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2026, 10, 1), dt.date(2026, 10, 3))
    day = dt.datetime(2026, 10, 2, tzinfo=s.zone)
    assert rewrite_channel(store, s.site, "gas-train", "ch4_fraction", day, day + dt.timedelta(days=1),
                           lambda v, _: fraction)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as -W error
        r = PeriodProcessor(s).process(store, dt.date(2026, 10, 1), dt.date(2026, 10, 3))
    assert r.status == "failed" and r.calc is None
    assert r.reasons == [f"cannot compute: parameters.PE_flare: expected a finite number, got "
                         f"{'-' if fraction < 0 else ''}Infinity"], r.reasons


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(50), deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), max_size=30), spans=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)),
                                                                          max_size=20))
def test_the_highest_methane_reading_of_each_interval_is_that_of_its_readings(values, spans):
    """The intervals' highest readings, taken a few columns at a time (most intervals hold two
    readings) and by reduceat beyond, are the max of each interval's readings."""
    import numpy as np

    from processing.derived import _highest

    v = np.array(values, float)
    first = np.array([min(a, len(v)) for a, _ in spans], np.int64)
    end = np.minimum(first + np.array([n for _, n in spans], np.int64), len(v))
    want = [max(values[a:b]) if b > a else -math.inf for a, b in zip(first, end)]
    assert _highest(v, first, end).tolist() == want
