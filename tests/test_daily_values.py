"""Daily reduction of counters and signals, and the late-calibration rule (pure functions)."""

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from contract.config.site import Calibration
from processing.calibration import correction_factor, uncovered_periods
from processing.daily_values import counter_daily, energised_hours_daily, gaps, local_days

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
