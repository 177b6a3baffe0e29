"""Daily reduction of counters and signals, and the late-calibration rule (pure functions)."""

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config.site import Calibration
from processing.calibration import correction_factor, uncovered_periods
from processing.daily_values import counter_daily, energised_hours_daily, gaps, local_days
from tests.conftest import fuzz_examples

UB = ZoneInfo("Asia/Ulaanbaatar")  # UTC+8
DAYS = local_days(dt.date(2026, 10, 1), dt.date(2026, 10, 3))


def series(points):
    idx = pd.DatetimeIndex([pd.Timestamp(t, tz="UTC") for t, _ in points])
    return pd.Series([v for _, v in points], index=idx, dtype=float)


def test_counter_increments_go_to_the_local_day_their_interval_ends():
    # 2026-09-30T16:00Z is local midnight of Oct 1 in Ulaanbaatar
    s = series([("2026-09-30T15:50Z", 100.0), ("2026-09-30T16:10Z", 110.0), ("2026-10-01T15:50Z", 150.0),
                ("2026-10-01T16:10Z", 155.0)])
    r = counter_daily(s, UB, DAYS, "m.e", gap_s=3600)
    assert r.values[dt.date(2026, 10, 1)] == 50.0  # 10 + 40
    assert r.values[dt.date(2026, 10, 2)] == 5.0
    assert np.isnan(r.values[dt.date(2026, 10, 3)])  # nothing known about Oct 3


def test_rollover_is_added_back_and_a_reset_counts_only_what_is_known():
    s = series([("2026-10-01T00:00Z", 4294967000.0), ("2026-10-01T00:15Z", 200.0), ("2026-10-01T00:30Z", 300.0),
                ("2026-10-01T00:45Z", 2.0), ("2026-10-01T01:00Z", 5.0)])
    r = counter_daily(s, UB, DAYS, "inv.wh", rollover=4294967296.0, gap_s=3600)
    # reset to 0, confirmed by the next reading: the 2 since then are known
    assert r.values[dt.date(2026, 10, 1)] == (296 + 200) + 100 + 2 + 3
    assert [f.check for f in r.findings] == ["counter_reset"]
    assert r.findings[0].severity == "review"
    (adj,) = r.adjustments
    assert (adj["kind"], adj["before"], adj["after"]) == ("counter_reset", -298.0, 2.0)


def test_jump_beyond_physical_rate_is_not_counted():
    s = series([("2026-10-01T00:00Z", 0.0), ("2026-10-01T00:15Z", 2.0), ("2026-10-01T00:30Z", 5000.0)])
    r = counter_daily(s, UB, DAYS, "m.e", max_rate_per_h=100.0, gap_s=3600)
    assert r.values[dt.date(2026, 10, 1)] == 2.0
    assert [f.check for f in r.findings] == ["counter_jump"]


def test_gap_spanned_by_the_counter_counts_in_full_on_the_day_it_ends():
    s = series([("2026-09-30T20:00Z", 10.0), ("2026-10-02T04:00Z", 70.0)])  # Oct 1 04:00 to Oct 2 12:00 local
    r = counter_daily(s, UB, DAYS, "m.e", gap_s=3600)
    assert r.values[dt.date(2026, 10, 1)] == 0.0  # known: its share sits on the day the gap ends
    assert r.values[dt.date(2026, 10, 2)] == 60.0
    assert r.findings[0].check == "gap_spanned_by_counter"


def test_energised_hours_count_only_intervals_on_at_both_ends_and_not_gaps():
    s = series([("2026-10-01T00:00Z", 1), ("2026-10-01T01:00Z", 1), ("2026-10-01T02:00Z", 0),
                ("2026-10-01T03:00Z", 1), ("2026-10-01T09:00Z", 1), ("2026-10-01T10:00Z", 1)])
    r = energised_hours_daily(s, UB, DAYS, gap_s=5400)
    assert r.values[dt.date(2026, 10, 1)] == pytest.approx(2.0)  # 00-01 and 09-10; the 6 h gap counts 0
    assert r.values[dt.date(2026, 10, 2)] == 0.0


def test_gaps_are_listed_with_start_end_length():
    idx = pd.DatetimeIndex([pd.Timestamp("2026-10-01T00:10Z"), pd.Timestamp("2026-10-01T05:00Z")])
    g = gaps(idx, pd.Timestamp("2026-10-01T00:00Z"), pd.Timestamp("2026-10-01T06:00Z"), 1800)
    assert [(a.hour, b.hour, s / 3600) for a, b, s in g] == [(0, 5, pytest.approx(4.8333, abs=1e-3)), (5, 6, 1.0)]


def test_late_calibration_uses_the_larger_of_mpe_and_error_found():
    cals = [Calibration(date=dt.date(2025, 3, 1), next_due=dt.date(2026, 3, 1), mpe_pct=0.5),
            Calibration(date=dt.date(2026, 3, 20), next_due=dt.date(2027, 3, 20), mpe_pct=0.5, error_found_pct=-0.8)]
    (u,) = uncovered_periods(cals, dt.date(2026, 12, 31))
    assert (u.start, u.end, u.error_pct) == (dt.date(2026, 3, 1), dt.date(2026, 3, 19), 0.8)
    assert correction_factor(0.8, "raises") == pytest.approx(0.992)
    assert correction_factor(0.8, "lowers") == pytest.approx(1.008)


def test_overdue_and_not_yet_calibrated_runs_to_the_end():
    cals = [Calibration(date=dt.date(2025, 9, 30), next_due=dt.date(2026, 9, 30), mpe_pct=0.2)]
    (u,) = uncovered_periods(cals, dt.date(2026, 10, 31))
    assert (u.start, u.end, u.error_pct) == (dt.date(2026, 9, 30), dt.date(2026, 10, 31), 0.2)
    assert uncovered_periods(cals, dt.date(2026, 9, 29)) == []


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zone=st.sampled_from(["Asia/Ulaanbaatar", "America/Santiago", "Asia/Tehran", "America/St_Johns", "UTC"]),
       seconds=st.lists(st.integers(-3 * 86_400, 40 * 86_400), max_size=300),
       seed=st.integers(0, 2**32 - 1))
def test_reductions_by_day_number_are_those_by_date(zone, seconds, seed):
    """The daily sums and means group readings by day number, not by a date object per reading:
    the same days, the same figures to the bit (pandas' compensated sums, in the same order), and
    the same sets of dates, in zones whose midnights move (DST at midnight) or are not whole hours."""
    from processing.daily_values import integrated_daily, interval_day, mean_daily

    zone = ZoneInfo(zone)
    rng = np.random.default_rng(seed)
    first = pd.Timestamp("2026-03-01", tz=zone).tz_convert("UTC")
    index = pd.DatetimeIndex(sorted({first + pd.Timedelta(seconds=s, milliseconds=int(rng.integers(0, 1000)))
                                     for s in seconds}), dtype="datetime64[ns, UTC]")
    values = pd.Series(rng.normal(50, 40, len(index)) * 10.0 ** rng.integers(-3, 9), index=index)
    values[rng.random(len(index)) < 0.1] = np.nan
    days = local_days(dt.date(2026, 3, 1), dt.date(2026, 3, 31))

    def by_date(v, index, how):  # the definition: grouped by the date of each reading
        return getattr(pd.Series(v, index=index).groupby(level=0), how)().reindex(days)

    ends = interval_day(index, zone)
    assert list(ends) == list((index.tz_convert(zone) - pd.Timedelta(1, "ns")).date)
    assert all(type(d) is dt.date for d in ends)
    s = values.dropna()
    pd.testing.assert_series_equal(mean_daily(values, zone, days).values,
                                   by_date(s.to_numpy(), s.index.tz_convert(zone).date, "mean"), check_exact=True)
    on = (values > 50).astype(float)
    if len(on) >= 2:
        secs = (on.index[1:] - on.index[:-1]).total_seconds().to_numpy()
        counted = np.where((on.to_numpy()[:-1] > 0.5) & (on.to_numpy()[1:] > 0.5) & (secs <= 900), secs, 0.0) / 3600
        expected = pd.Series(counted, index=interval_day(on.index[1:], zone)).groupby(level=0).sum()
        pd.testing.assert_series_equal(energised_hours_daily(on, zone, days, 900).values,
                                       expected.reindex(days, fill_value=0.0), check_exact=True)
    energy, incomplete = integrated_daily(values, zone, days, 900)
    if len(s) >= 2:
        secs = (s.index[1:] - s.index[:-1]).total_seconds().to_numpy()
        v = s.to_numpy()
        ends = (s.index[1:].tz_convert(zone) - pd.Timedelta(1, "ns")).date
        expected = np.where(secs <= 900, 0.5 * (v[:-1] + v[1:]) * secs / 3600, 0.0)
        pd.testing.assert_series_equal(energy, by_date(expected, ends, "sum"), check_exact=True)
        assert incomplete == ({d for d, gap in zip(ends, secs > 900) if gap} | {d for d in days if d not in set(ends)})


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.integers(1, 400), st.one_of(st.just(np.nan), st.floats(-50, 500))), min_size=0,
                      max_size=60),
       seed=st.integers(0, 2**16), effect=st.sampled_from(["raises", "lowers"]))
def test_readings_in_time_order_reduce_as_readings_in_any_order(steps, seed, effect):
    """A store gives a counter's readings in time order, and the daily values and the gaps take them
    as they are (no sort, no hash table of the instants); the same readings in another order take
    the general path. Both give the same figures, findings and rows."""
    from processing.daily_values import day_dates, interval_day_numbers

    t0 = pd.Timestamp("2026-09-30T14:00Z")
    times = t0 + pd.to_timedelta(np.cumsum([m for m, _ in steps]).astype(np.int64), unit="min")
    values = np.cumsum([0.0 if np.isnan(v) else v for _, v in steps])  # mostly rising, with falls
    values[[i for i, (_, v) in enumerate(steps) if np.isnan(v)]] = np.nan
    ordered = pd.Series(values, index=pd.DatetimeIndex(times, name="ts"), dtype=float)
    shuffled = ordered.sample(frac=1, random_state=seed)
    got = [counter_daily(s, UB, DAYS, "m.e", max_rate_per_h=60.0, gap_s=900, effect=effect, rating_per_h=40.0,
                         unit="kWh") for s in (ordered, shuffled)]
    pd.testing.assert_series_equal(got[0].values, got[1].values)
    assert got[0].findings == got[1].findings
    assert got[0].adjustments == got[1].adjustments
    assert got[0].spanned_days == got[1].spanned_days and got[0].spanned_gaps == got[1].spanned_gaps
    start, end = pd.Timestamp("2026-09-30T16:00Z"), pd.Timestamp("2026-10-03T16:00Z")
    assert gaps(ordered.index, start, end, 900) == gaps(shuffled.index, start, end, 900)
    day = interval_day_numbers(ordered.index, UB)
    order = np.random.default_rng(seed).permutation(len(day))
    assert list(day_dates(day)[order]) == list(day_dates(day[order]))
