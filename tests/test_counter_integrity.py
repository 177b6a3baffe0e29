"""Counters a verifier can trust: a glitch reading is an outlier, not a meter's whole total;
a reset is confirmed by the readings after it; nothing is credited beyond what the
equipment can physically deliver (nameplate); gaps across a period boundary are counted
once, in the period they end in, for what raises reductions, and charged to each period up
to its physical bound for what lowers them; late calibration reaches a gap's total; the interval
ending at local midnight closes the previous day. Pure counter functions, then the
reference sites' simulated readings through a real SQLite store."""

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config import ConfigError, load_site
from contract.config.nameplate import Nameplate
from processing.daily_values import counter_daily, counter_increments, interval_day, local_days
from processing.period import PeriodProcessor
from store.sqlite_store import SqliteStore, to_ms
from tests.conftest import REPO, fill_history, fuzz_examples, reference_site, rewrite_channel, store_copy

JAKARTA = ZoneInfo("Asia/Jakarta")  # UTC+7
UB = ZoneInfo("Asia/Ulaanbaatar")  # UTC+8


def series(start: str, values, step_min: float = 15.0) -> pd.Series:
    idx = pd.date_range(pd.Timestamp(start, tz="UTC"), periods=len(values), freq=pd.Timedelta(minutes=step_min))
    return pd.Series(values, index=idx, dtype=float)


# -- pure counter functions ----------------------------------------------------------

def test_a_lone_zero_reading_is_an_outlier_stated_in_figures():
    s = series("2025-10-15T04:30Z", [24750600.0, 24750900.0, 0.0, 24751200.0, 24751500.0])
    r = counter_increments(s, "ic-meter.energy_export", max_rate_per_h=13200.0, unit="kWh", zone=JAKARTA)
    assert r.value.sum() == 900.0 and not r.adjustments
    (f,) = r.findings
    assert f.check == "counter_outlier"
    assert f.detail.startswith("reading of 0 at 2025-10-15 12:00 between 24,750,900 and 24,751,200 kWh ignored as an outlier")
    # without any nameplate the same glitch is still an outlier (the counter comes back to where it was)
    assert counter_increments(s, "m.e").value.sum() == 900.0


def test_a_spike_and_a_few_bad_readings_are_outliers():
    spike = series("2025-10-15T00:00Z", [100.0, 1e12, 101.0, 102.0])
    assert counter_increments(spike, "m.e").value.sum() == 2.0  # no bound needed: the fall after it shows it
    few = series("2025-10-15T00:00Z", [100.0, 101.0, 0.0, 0.0, 7.0, 103.0, 104.0])
    r = counter_increments(few, "m.e", max_rate_per_h=40.0, unit="kWh")
    assert r.value.sum() == 4.0 and [f.check for f in r.findings] == ["counter_outlier"]
    assert "3 readings (0, 0, 7)" in r.findings[0].detail


def test_a_reset_needs_the_next_reading_to_confirm_it():
    confirmed = series("2025-10-15T00:00Z", [5000.0, 5010.0, 4.0, 14.0, 24.0])
    r = counter_increments(confirmed, "m.e", max_rate_per_h=100.0, unit="kWh")
    assert r.value.sum() == 10 + 4 + 10 + 10
    (adj,) = r.adjustments
    assert adj["kind"] == "counter_reset" and adj["after"] == 4.0
    unconfirmed = series("2025-10-15T00:00Z", [5000.0, 5010.0, 4.0])
    r = counter_increments(unconfirmed, "m.e", max_rate_per_h=100.0, unit="kWh")
    assert r.value.sum() == 10.0 and r.adjustments[0]["kind"] == "counter_backwards"
    assert "not confirmed by a later reading" in r.findings[0].detail
    # for a quantity that lowers reductions the unknown part of the interval takes its physical bound
    lowers = counter_increments(confirmed, "m.e", max_rate_per_h=100.0, effect="lowers")
    assert lowers.value.sum() == 10 + 25 + 10 + 10


def test_a_rise_beyond_the_nameplate_is_not_credited_and_is_a_row():
    s = series("2025-10-15T00:00Z", [1000.0, 1020.0, 90000.0, 90020.0, 90040.0, 90060.0, 90080.0, 90100.0])
    r = counter_increments(s, "m.e", max_rate_per_h=110.0, unit="kWh")
    assert r.value.sum() == 20 * 6
    (adj,) = r.adjustments
    assert (adj["kind"], adj["before"], adj["after"]) == ("counter_jump", 88980.0, 0.0)
    assert "rose 88,980 kWh in 900 s" in r.findings[0].detail and "physical limit 27.5 kWh" in r.findings[0].detail
    lowers = counter_increments(s, "m.e", max_rate_per_h=110.0, effect="lowers")
    assert lowers.value.sum() == 20 * 6 + 27.5  # upper bound for what lowers reductions


def test_a_day_above_the_theoretical_maximum_is_bounded_and_a_finding():
    days = local_days(dt.date(2026, 10, 1), dt.date(2026, 10, 1))
    # 105 kWh every hour of the local day: each interval within 100 kW x 1.1, the day above 100 kW x 24 h
    s = series("2026-09-30T16:00Z", 1000.0 + 105.0 * np.arange(25), step_min=60)
    r = counter_daily(s, UB, days, "m.e", max_rate_per_h=110.0, gap_s=5400, rating_per_h=100.0, unit="kWh")
    assert r.values[dt.date(2026, 10, 1)] == pytest.approx(2400.0)
    (f,) = r.findings
    assert f.check == "theoretical_maximum" and f.severity == "review" and "2,520 kWh" in f.detail
    (adj,) = r.adjustments
    assert adj["before"] == pytest.approx(2520.0) and adj["after"] == pytest.approx(2400.0)


def test_a_reading_at_local_midnight_closes_the_previous_day():
    # 2026-09-30T16:00Z is 00:00 local on Oct 1 in Ulaanbaatar
    s = series("2026-09-30T15:45Z", [100.0, 110.0, 125.0])
    days = local_days(dt.date(2026, 9, 30), dt.date(2026, 10, 1))
    r = counter_daily(s, UB, days, "m.e", gap_s=3600)
    assert r.values[dt.date(2026, 9, 30)] == 10.0 and r.values[dt.date(2026, 10, 1)] == 15.0
    ends = pd.DatetimeIndex([pd.Timestamp("2026-09-30T16:00Z"), pd.Timestamp("2026-09-30T16:00:00.001Z")])
    assert list(interval_day(ends, UB)) == [dt.date(2026, 9, 30), dt.date(2026, 10, 1)]


def test_a_gap_across_the_period_end_is_counted_once_in_the_period_it_ends_in():
    idx = pd.DatetimeIndex(["2026-10-30T00:00Z", "2026-10-30T12:00Z", "2026-10-31T00:00Z", "2026-11-01T12:00Z",
                            "2026-11-02T00:00Z"])
    s = pd.Series([0.0, 10.0, 20.0, 500.0, 510.0], index=idx)  # gap: 31 Oct 08:00 -> 1 Nov 20:00 local
    october = counter_daily(s, UB, local_days(dt.date(2026, 10, 30), dt.date(2026, 10, 31)), "m.e", gap_s=13 * 3600)
    november = counter_daily(s, UB, local_days(dt.date(2026, 11, 1), dt.date(2026, 11, 2)), "m.e", gap_s=13 * 3600)
    assert october.values.sum() + november.values.sum() == 510.0
    assert october.values[dt.date(2026, 10, 31)] == 10.0  # the gap's days are known: its total is in November
    (out,) = [a for a in october.adjustments if a["kind"] == "gap_across_periods"]
    (into,) = [a for a in november.adjustments if a["kind"] == "gap_across_periods"]
    assert (out["before"], out["after"], into["before"], into["after"]) == (480.0, 0.0, 0.0, 480.0)


def test_a_gap_across_the_period_end_charges_each_period_an_upper_bound_for_what_lowers_reductions():
    idx = pd.DatetimeIndex(["2026-10-30T00:00Z", "2026-10-30T12:00Z", "2026-10-31T00:00Z", "2026-11-01T12:00Z",
                            "2026-11-02T00:00Z"])
    s = pd.Series([0.0, 10.0, 20.0, 500.0, 510.0], index=idx)  # gap: 31 Oct 08:00 -> 1 Nov 20:00 local (16 h + 20 h)
    oct_days, nov_days = local_days(dt.date(2026, 10, 30), dt.date(2026, 10, 31)), local_days(dt.date(2026, 11, 1),
                                                                                               dt.date(2026, 11, 2))
    october, november = (counter_daily(s, UB, d, "m.e", max_rate_per_h=20.0, gap_s=13 * 3600, effect="lowers",
                                       unit="kWh") for d in (oct_days, nov_days))
    # the whole 480 may have been registered in either month, but no more than 20 kWh/h x its hours there
    assert october.values.sum() == 10 + 10 + 320.0 and october.values[dt.date(2026, 10, 31)] == 330.0
    assert november.values.sum() == 400.0 + 10
    (out,) = [a for a in october.adjustments if a["kind"] == "gap_across_periods"]
    (into,) = [a for a in november.adjustments if a["kind"] == "gap_across_periods"]
    assert (out["before"], out["after"], into["before"], into["after"]) == (0.0, 320.0, 480.0, 400.0)
    assert "min(the total 480 kWh, the physical bound 20 kWh/h × 16.00 h of it in this period) = 320 kWh" in out["reason"]
    (f,) = [f for f in october.findings if f.check == "gap_spanned_by_counter"]
    assert "upper bound" in f.detail and "320 kWh" in f.detail
    # without a physical bound each period is charged the whole total, and the finding says why
    unbounded = counter_daily(s, UB, oct_days, "m.e", gap_s=13 * 3600, effect="lowers", unit="kWh")
    assert unbounded.values.sum() == 20.0 + 480.0
    assert "the whole total 480 kWh, as no physical bound of the meter is known" in unbounded.findings[0].detail
    # a quantity that raises reductions keeps the total in the period the gap ends in, 0 in the other
    raises = [counter_daily(s, UB, d, "m.e", max_rate_per_h=20.0, gap_s=13 * 3600, unit="kWh") for d in
              (oct_days, nov_days)]
    assert [r.values.sum() for r in raises] == [20.0, 490.0]


def test_an_outlier_next_to_a_period_boundary_is_split_conservatively_and_is_not_a_gap():
    # 2026-09-30T16:00Z is 00:00 local on Oct 1 in Ulaanbaatar: the midnight reading is a glitch
    s = series("2026-09-30T15:30Z", [100.0, 110.0, 0.0, 130.0, 140.0])
    sep, octo = local_days(dt.date(2026, 9, 30), dt.date(2026, 9, 30)), local_days(dt.date(2026, 10, 1),
                                                                                    dt.date(2026, 10, 1))
    for days, clean in ((sep, 20.0), (octo, 20.0)):  # a clean 120 at midnight splits 20 | 20
        r = counter_daily(s, UB, days, "m.e", max_rate_per_h=100.0, gap_s=1200, effect="lowers", unit="kWh")
        assert r.values.sum() >= clean  # September alone was 10 (the interval across midnight went to October)
        assert [f.check for f in r.findings if f.check == "gap_spanned_by_counter"] == []
        assert [a["kind"] for a in r.adjustments] == ["gap_across_periods"]
    raises = counter_daily(s, UB, sep, "m.e", max_rate_per_h=100.0, gap_s=1200, unit="kWh")
    assert raises.values.sum() == 10.0 and not raises.adjustments  # the day convention, as for any interval


def test_an_interval_across_a_dropped_outlier_is_not_a_gap():
    s = series("2025-10-15T04:30Z", [24750600.0, 24750900.0, 0.0, 24751200.0, 24751500.0])
    days = local_days(dt.date(2025, 10, 15), dt.date(2025, 10, 15))
    r = counter_daily(s, JAKARTA, days, "ic-meter.energy_export", max_rate_per_h=13200.0, gap_s=1200, unit="kWh")
    assert [f.check for f in r.findings] == ["counter_outlier"]  # was also "gap_spanned_by_counter 0.50 h"
    assert r.values.sum() == 900.0 and not r.spanned_days and not r.spanned_gaps
    missing = counter_daily(s.drop(s.index[2]), JAKARTA, days, "m.e", gap_s=1200)  # a reading really missing
    assert [f.check for f in missing.findings] == ["gap_spanned_by_counter"]


# -- property-based: random counter series with injected faults --------------------

RATE = 100.0  # nameplate [kWh/h]
MARGIN = 1.1
MIDNIGHT = pd.Timestamp("2026-10-01T16:00Z")  # 00:00 on 2 Oct in Ulaanbaatar


@st.composite
def faulty_counter(draw):
    """A clean counter (cumulative energy at up to the nameplate rate, from a meter that has run
    for a while, optionally about to wrap) and the same readings with faults injected, each
    fault clear of the others and of the two readings at either end (the period's known ends)."""
    n = draw(st.integers(12, 80))
    step_min = draw(st.sampled_from([1.0, 5.0, 15.0]))
    hours = np.full(n - 1, step_min / 60)
    load = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n - 1, max_size=n - 1)))
    rollover = draw(st.sampled_from([None, 1e7]))
    start = draw(st.floats(1e4, 1e6)) if rollover is None else 1e7 - draw(st.floats(10.0, 3 * RATE * hours.sum()))
    true = start + np.concatenate([[0.0], np.cumsum(load * RATE * hours)])
    clean = float(true[-1] - true[0])
    reading = true.copy()
    keep = np.ones(n, dtype=bool)
    spots = sorted(set(draw(st.lists(st.integers(2, n - 10), max_size=3))))
    spots = [i for k, i in enumerate(spots) if k == 0 or i - spots[k - 1] >= 8]
    held = []  # the readings of a register holding still
    for i in spots:
        # a register about to wrap that resets instead reads exactly like the wrap: no resets there
        kind = draw(st.sampled_from(["outlier", "outliers", "gap", "jump", "stuck"]
                                    + (["reset"] if rollover is None else [])))
        if kind == "outlier":
            reading[i] = draw(st.sampled_from([0.0, 1e12, float(reading[i] / 2)]))
        elif kind == "outliers":
            reading[i:i + draw(st.integers(2, 4))] = 0.0
        elif kind == "reset":  # the register restarts from 0 somewhere in the interval before reading i
            reading[i:] = true[i:] - (true[i - 1] + draw(st.floats(0.0, 1.0)) * (true[i] - true[i - 1]))
        elif kind == "stuck":  # the register holds its value for a few polls, then catches up
            held.append(range(i, i + draw(st.integers(1, 4))))
            reading[held[-1]] = reading[i - 1]
        elif kind == "gap":
            keep[i:i + draw(st.integers(1, 7))] = False
        else:  # a register preset: the counter continues from a much higher level
            reading[i:] += 5e5
    if rollover:
        reading = np.mod(reading, rollover)
    # the readings straddle local midnight 2 Oct (UB), where one period ends and the next begins, with
    # a poll at midnight: anywhere, or at or just after a fault (where conservative treatment is tested)
    at = draw(st.one_of(st.integers(1, n - 2),
                        *([st.tuples(st.sampled_from(spots), st.sampled_from([0, 1, 2])).map(sum)] if spots else [])))
    t = MIDNIGHT + pd.to_timedelta((np.arange(n) - at) * step_min, unit="min")
    s = pd.Series(reading, index=t)[keep]
    first_part = float(true[at] - true[0])  # the clean meter's share of the first period
    dupes = s.iloc[draw(st.lists(st.integers(0, len(s) - 1), max_size=3))]
    s = pd.concat([s, dupes]).sample(frac=1.0, random_state=0)  # unordered, with repeated deliveries
    # a register holding still up to midnight reads like no load, and its catch-up at midnight like an
    # outlier (a rise beyond the bound into it) that the held readings continue from: its share of
    # each period is not seen, only its total
    seen = not any(h.start <= at <= h.stop for h in held)
    return s, clean, rollover, float(hours.sum()), (first_part, clean - first_part, seen)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=faulty_counter(), effect=st.sampled_from(["raises", "lowers"]))
def test_faulty_counters_never_credit_more_than_possible_and_every_change_is_a_row(case, effect):
    s, clean, rollover, span_h, clean_parts = case
    r = counter_increments(s, "m.e", rollover=rollover, max_rate_per_h=RATE * MARGIN, effect=effect)
    total = float(r.value.sum())
    tol = 1e-6 * max(1.0, clean)
    assert total <= RATE * MARGIN * span_h + tol  # never above what the equipment can deliver
    if effect == "raises":
        assert total <= clean + tol  # conservative: never more than the clean counter
    else:
        assert total >= clean - tol  # conservative: never less than the clean counter
    if not r.adjustments:  # every change to the plain counter total is an adjustment row
        assert total == pytest.approx(clean, rel=1e-9, abs=1e-6)
    days = local_days(dt.date(2026, 10, 1), dt.date(2026, 10, 2))
    d = counter_daily(s, UB, days, "m.e", rollover, RATE * MARGIN, 3600.0, effect, RATE)
    assert d.values.sum() == pytest.approx(total, rel=1e-9, abs=1e-6)  # all within the two days
    assert (d.values.fillna(0.0) <= RATE * 24 + tol).all()  # no day above the theoretical maximum
    # the same readings as two periods, 1 Oct and 2 Oct: each conservative on its own
    parts = [float(counter_daily(s, UB, local_days(day, day), "m.e", rollover, RATE * MARGIN, 3600.0, effect,
                                 RATE).values.sum()) for day in (dt.date(2026, 10, 1), dt.date(2026, 10, 2))]
    # near a wrap, 0s read like the wrap: a few 0s and the readings on course to the wrap are each
    # a course from which the other are outliers, with the same total but the wrap's increment in a
    # different interval (0s that confirm each other and four readings at 9,999,997 before a wrap to
    # 22, with midnight between them: 28 or 25 before midnight). No rule can know which; only the
    # total is sure there, and the split across periods only without a rollover
    if effect == "raises":  # counted once, in the period its interval ends in
        assert sum(parts) == pytest.approx(total, rel=1e-9, abs=1e-6)
        assert rollover is not None or parts[0] <= clean_parts[0] + tol
    elif rollover is None and clean_parts[2]:  # each period charged at least its own share
        assert parts[0] >= clean_parts[0] - tol and parts[1] >= clean_parts[1] - tol and sum(parts) >= total - tol


# -- end to end through the store ----------------------------------------------------

OCT25 = (dt.date(2025, 10, 1), dt.date(2025, 10, 31))


@pytest.fixture(scope="module")
def aceh_october(tmp_path_factory):
    path = tmp_path_factory.mktemp("aceh") / "jcm.db"
    store = SqliteStore(path)
    fill_history(store, reference_site("id-aceh-biomass"), dt.date(2025, 9, 30), dt.date(2025, 11, 1))
    store.close()
    return path


@pytest.fixture
def aceh(aceh_october, tmp_path):
    store = store_copy(aceh_october, tmp_path)
    yield store
    store.close()


def _set(store, s, device, channel, local: str, change, until: str | None = None):
    """Rewrite the readings of one channel at (or from ``local`` until ``until``) local time to ``change(value)``."""
    a = dt.datetime.fromisoformat(local).replace(tzinfo=s.zone)
    b = dt.datetime.fromisoformat(until).replace(tzinfo=s.zone) if until else a + dt.timedelta(milliseconds=1)
    assert rewrite_channel(store, s.site, device, channel, a, b, lambda v, _: change(v))


def _value_at(store, s, device, channel, day: dt.date) -> float:
    at = dt.datetime.combine(day, dt.time(), tzinfo=s.zone)
    (value,) = store.read(s.site, at, at + dt.timedelta(milliseconds=1), devices=[device], channels=[channel])["value"]
    return value


def test_aceh_october_glitch_reading_is_an_outlier_not_the_meters_total(aceh):
    s = reference_site("id-aceh-biomass")
    clean = PeriodProcessor(s).process(aceh, *OCT25)
    _set(aceh, s, "ic-meter", "energy_export", "2025-10-15T12:00", lambda v: 0.0)
    r = PeriodProcessor(s).process(aceh, *OCT25)
    assert r.parameters["EG_net"] == pytest.approx(clean.parameters["EG_net"], rel=1e-12)  # was 7,403 -> 32,541 MWh
    assert r.calc.ER == clean.calc.ER
    (f,) = [f for f in r.findings if f.check == "counter_outlier"]
    assert f.source == "ic-meter.energy_export" and f.detail.startswith("reading of 0 at 2025-10-15 12:00 between 25,")


def test_without_a_nameplate_the_glitch_is_still_an_outlier_and_the_missing_rating_is_said(aceh):
    s = reference_site("id-aceh-biomass")
    unrated = s.model_copy(update={"nameplate": Nameplate()})
    clean = PeriodProcessor(unrated).process(aceh, *OCT25)
    _set(aceh, s, "ic-meter", "energy_export", "2025-10-15T12:00", lambda v: 0.0)
    r = PeriodProcessor(unrated).process(aceh, *OCT25)
    assert r.parameters["EG_net"] == pytest.approx(clean.parameters["EG_net"], rel=1e-12)
    assert "ic-meter.energy_export" in {f.source for f in r.findings if f.check == "no_nameplate"}


def test_aceh_a_jump_beyond_the_plants_capacity_is_not_credited(aceh):
    s = reference_site("id-aceh-biomass")
    clean = PeriodProcessor(s).process(aceh, *OCT25)
    # the register is preset 1,000 MWh higher at noon on the 20th and continues from there
    _set(aceh, s, "ic-meter", "energy_export", "2025-10-20T12:00", lambda v: v + 1000000, until="2025-11-02T00:00")
    r = PeriodProcessor(s).process(aceh, *OCT25)
    (adj,) = [a for a in r.adjustments if a["kind"] == "counter_jump"]
    assert adj["parameter"] == "EG_net" and adj["after"] == 0.0 and adj["before"] > 1000.0  # MWh
    assert clean.parameters["EG_net"] - r.parameters["EG_net"] == pytest.approx(adj["before"] - 1000.0, rel=1e-9)
    assert r.parameters["EG_net"] <= 12 * 24 * 31  # the 12 MW plant's theoretical maximum for October
    assert r.status == "needs_review" and any("counter_jump" in x for x in r.reasons)


def test_aceh_month_runs_from_midnight_reading_to_midnight_reading(aceh):
    s = reference_site("id-aceh-biomass")  # runs through the night: the intervals ending at midnight count
    r = PeriodProcessor(s).process(aceh, *OCT25)
    expected_kwh = (_value_at(aceh, s, "ic-meter", "energy_export", dt.date(2025, 11, 1))
                    - _value_at(aceh, s, "ic-meter", "energy_export", dt.date(2025, 10, 1)))
    assert r.parameters["EG_net"] == pytest.approx(expected_kwh / 1000, rel=1e-12)
    sept = PeriodProcessor(s).process(aceh, dt.date(2025, 9, 30), dt.date(2025, 9, 30))
    expected_sept = (_value_at(aceh, s, "ic-meter", "energy_export", dt.date(2025, 10, 1))
                     - _value_at(aceh, s, "ic-meter", "energy_export", dt.date(2025, 9, 30)))
    assert sept.parameters["EG_net"] == pytest.approx(expected_sept / 1000, rel=1e-12)


def _delete(store, s, device, start_local, end_local):
    a = to_ms(dt.datetime.fromisoformat(start_local).replace(tzinfo=s.zone))
    b = to_ms(dt.datetime.fromisoformat(end_local).replace(tzinfo=s.zone))
    with store._lock:
        store._db.execute("DELETE FROM readings WHERE site=? AND device=? AND ts > ? AND ts < ?", (s.site, device, a, b))


def test_mn_solar_gap_across_the_month_end_is_credited_once_with_a_row_in_each_month(tmp_path):
    s = reference_site("mn-solar")  # silent 29 Sep 12:00 to 9 Oct 12:00
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2026, 9, 27), dt.date(2026, 10, 11))
    sep, octo = (dt.date(2026, 9, 27), dt.date(2026, 9, 30)), (dt.date(2026, 10, 1), dt.date(2026, 10, 11))
    full = sum(PeriodProcessor(s).process(store, *p).parameters["EG[PV-1]"] for p in (sep, octo))
    _delete(store, s, "poc-meter", "2026-09-29T12:00", "2026-10-09T12:00")
    a, b = (PeriodProcessor(s).process(store, *p) for p in (sep, octo))
    assert a.parameters["EG[PV-1]"] + b.parameters["EG[PV-1]"] == pytest.approx(full, rel=1e-12)
    (out,) = [x for x in a.adjustments if x["kind"] == "gap_across_periods"]
    (into,) = [x for x in b.adjustments if x["kind"] == "gap_across_periods"]
    assert out["before"] == pytest.approx(into["after"]) and out["after"] == 0.0 and into["after"] > 50.0  # MWh
    assert into["days"] == "2026-10-09" and "began in the previous period" in into["reason"]
    assert not [x for x in a.adjustments if x["kind"] == "missing_data" and x["parameter"] == "EG[PV-1]"]


def test_mv_addu_battery_gap_across_the_month_end_keeps_each_month_conservative(tmp_path):
    s = reference_site("mv-addu")  # battery meter out 30 Oct 14:00 to 1 Nov 10:00
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2025, 10, 30), dt.date(2025, 11, 2))
    periods = ((dt.date(2025, 10, 30), dt.date(2025, 10, 31)), (dt.date(2025, 11, 1), dt.date(2025, 11, 2)))
    clean = [PeriodProcessor(s).process(store, *p).parameters for p in periods]
    _delete(store, s, "bess-meter", "2025-10-30T14:00", "2025-11-01T10:00")
    october, november = (PeriodProcessor(s).process(store, *p) for p in periods)
    # EC_BESS (charged into the battery) lowers reductions: each month alone is charged at least its own
    # share (October was 0.233 MWh against 0.637 clean: the gap's whole total had gone to November)
    assert october.parameters["EC_BESS"] >= clean[0]["EC_BESS"]
    assert november.parameters["EC_BESS"] >= clean[1]["EC_BESS"]
    (out,) = [x for x in october.adjustments if x["parameter"] == "EC_BESS"]
    (into,) = [x for x in november.adjustments if x["parameter"] == "EC_BESS"]
    assert out["kind"] == into["kind"] == "gap_across_periods" and out["before"] == 0.0
    assert out["after"] == pytest.approx(into["before"]) and "275 kWh/h × 34.00 h" in out["reason"]
    # EG_BESS (discharged) raises them: counted once, in November, where the gap ends
    assert october.parameters["EG_BESS"] <= clean[0]["EG_BESS"]
    assert october.parameters["EG_BESS"] + november.parameters["EG_BESS"] == pytest.approx(
        clean[0]["EG_BESS"] + clean[1]["EG_BESS"], rel=1e-12)
    (out,) = [x for x in october.adjustments if x["parameter"] == "EG_BESS"]
    assert (out["kind"], out["after"]) == ("gap_across_periods", 0.0)


def test_a_gap_ending_after_a_late_calibration_is_corrected_too(tmp_path):
    s = reference_site("mn-solar")  # calibration due 2025-09-30, done late on 2025-10-09 (+0.31 %)
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, s, dt.date(2025, 10, 1), dt.date(2025, 10, 12))
    days = (dt.date(2025, 10, 2), dt.date(2025, 10, 12))
    full = PeriodProcessor(s).process(store, *days)
    _delete(store, s, "poc-meter", "2025-10-07T00:00", "2025-10-10T12:00")  # ends after the calibration
    r = PeriodProcessor(s).process(store, *days)
    assert r.parameters["EG[PV-1]"] <= full.parameters["EG[PV-1]"] + 1e-9  # nothing escapes the correction
    (share,) = [a for a in r.adjustments if a["kind"] == "late_calibration" and a["days"] == "2025-10-10"]
    assert share["factor"] == pytest.approx(1 - 0.0031) and share["after"] == pytest.approx(share["before"] * 0.9969)


# -- nameplate figures in the site file -------------------------------------------

@pytest.mark.parametrize("rating, error", [
    ({"device": "nope", "capacity": 1, "unit": "MW"}, "device 'nope' is not a device of this site"),
    ({"device": "poc-meter", "capacity": 0, "unit": "MW"}, "greater than 0"),
    ({"device": "poc-meter", "capacity": ".inf", "unit": "MW"}, "finite number"),
    ({"device": "poc-meter", "capacity": "8.3 MW", "unit": "MW"}, "valid number"),
    ({"device": "poc-meter", "capacity": True, "unit": "MW"}, "valid number"),
    ({"device": "poc-meter", "capacity": 8.3, "unit": "MWp"}, "unit"),
    ({"device": "poc-meter", "capacity": 8.3, "unit": "L/h"}, "bounds no counter channel of 'poc-meter'"),
    ({"device": "poc-meter", "channels": ["active_power"], "capacity": 8.3, "unit": "MW"}, "no counter channel 'active_power'"),
    ({"device": "inv-01", "capacity": 2.1, "unit": "MW"}, "'inv-01.ac_energy' is already rated"),
])
def test_nameplate_errors_name_the_rating_and_the_problem(tmp_path, rating, error):
    data = yaml.safe_load((REPO / "config" / "sites" / "mn-solar.yaml").read_text())
    data["nameplate"]["ratings"].append(rating)
    path = tmp_path / "sites" / "mn-solar.yaml"
    path.parent.mkdir()
    text = yaml.safe_dump(data).replace("'.inf'", ".inf")
    path.write_text(text)
    (tmp_path / "profiles").symlink_to(REPO / "config" / "profiles")
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert "nameplate" in str(exc.value) and error in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.parametrize("name", ["mn-solar", "mv-addu", "vn-transformers", "ph-biogas", "id-aceh-biomass"])
def test_every_reference_site_rates_its_monitored_counters(name):
    s = reference_site(name)
    counters = [src for src in s.monitoring_sources
                if s.device(src.split(".")[0]).register_map.point(src.split(".")[1]).kind.value == "counter"]
    assert s.nameplate.ratings and all(s.rating_per_h(src) for src in counters)


@pytest.mark.parametrize("effect", ["raises", "lowers"])
def test_a_zero_read_just_before_a_wrap_is_an_outlier_not_a_wrap(effect):
    """A register a few units below its rollover reads 0 once, then goes on: the fall to 0 read as a
    wrap (credited) and the rise back as a jump (not), so the counter credited more than it counted
    (hypothesis found it: 10 against 8.33)."""
    t = pd.date_range("2026-10-01 16:00", periods=6, freq="5min", tz="UTC")
    s = pd.Series([9_999_990.0, 9_999_994.0, 0.0, 9_999_996.0, 9_999_998.0, 9_999_999.0], index=t)
    r = counter_increments(s, "m.e", rollover=1e7, max_rate_per_h=RATE * MARGIN, effect=effect)
    assert float(r.value.sum()) == pytest.approx(9.0)


@pytest.mark.parametrize("readings, clean", [
    # the counter has just been reset: it counts 3 kWh, is reset again to 0 and stays there; the 1.5 and 3
    # read like a spike that the fall back to 0 ends (hypothesis found it: 1.83 against 3.33)
    ([10_000.0, 0.0, 0.0, 1.5, 3.0, 0.0, 0.0], 3.0),
    # the same second reset, after which the counter rises back past 3 within four readings: those read
    # like outliers the 3.5 ends
    ([10_000.0, 0.0, 1.5, 3.0, 0.0, 1.0, 2.0, 3.5], 6.5),
])
def test_readings_that_may_be_the_counters_real_course_are_not_outliers_for_what_lowers_reductions(readings, clean):
    """Readings off the counter's course that it could have registered (every rise within the physical
    bound; a fall is a reset) are outliers or the real course: the exact difference across them is the
    lower count, so it is kept for what raises reductions, and the course is counted for what lowers them."""
    s = series("2026-10-01T16:00Z", readings, step_min=1.0)
    lowers = counter_increments(s, "m.e", max_rate_per_h=RATE * MARGIN, effect="lowers")
    assert float(lowers.value.sum()) >= clean
    assert "counter_outlier" not in [f.check for f in lowers.findings]
    assert [a["kind"] for a in lowers.adjustments] == ["counter_reset", "counter_reset"]
    raises = counter_increments(s, "m.e", max_rate_per_h=RATE * MARGIN, effect="raises")
    assert float(raises.value.sum()) <= clean and "counter_outlier" in [f.check for f in raises.findings]


@pytest.mark.parametrize("effect", ["raises", "lowers"])
@pytest.mark.parametrize("step_min, readings, clean", [
    # the first 0 too soon after the register to be a wrap, the last late enough: the 0s read as a wrap to
    # the last of them, then the rise back as a jump (hypothesis found it: 10 against 3.33)
    (1.0, [9_999_990.0, 9_999_990.0, 9_999_991.5, 9_999_993.0, 0.0, 0.0, 0.0, 0.0, 9_999_993.0, 9_999_993.0], 3.0),
    # two 0s, the first a wrap within the bound: the rise back comes after the second
    (5.0, [9_999_990.0, 9_999_994.0, 0.0, 0.0, 9_999_996.0, 9_999_998.0, 9_999_999.0], 9.0),
])
def test_zeros_read_just_before_a_wrap_are_outliers_not_a_wrap(effect, step_min, readings, clean):
    s = series("2026-10-01T16:00Z", readings, step_min=step_min)
    r = counter_increments(s, "m.e", rollover=1e7, max_rate_per_h=RATE * MARGIN, effect=effect)
    assert float(r.value.sum()) == pytest.approx(clean) and not r.adjustments
    assert [f.check for f in r.findings] == ["counter_outlier"]


@pytest.mark.parametrize("readings, clean", [
    # the register held 101 for four polls, then caught up: 5 kWh in 5 min is within the bound
    # (1.83 kWh/min), 5 in the last minute alone is not (was 3.83 for lowers: a jump counted at its bound)
    ([100.0, 101.0, 101.0, 101.0, 101.0, 101.0, 106.0, 107.0], 7.0),
    # the same after a register update lagging by two polls
    ([100.0, 101.0, 102.0, 102.0, 102.0, 105.5, 106.0], 6.0),
])
def test_a_register_that_catches_up_counts_its_whole_rise_for_what_lowers_reductions(readings, clean):
    """A register that held still and then caught up may have counted the whole rise over the readings
    it held for: for what lowers reductions that is the higher count, so it is counted, not the one
    interval's bound; for what raises them the rise beyond the bound stays a jump counted 0."""
    s = series("2026-10-01T16:00Z", readings, step_min=1.0)
    lowers = counter_increments(s, "m.e", max_rate_per_h=RATE * MARGIN, effect="lowers")
    assert float(lowers.value.sum()) >= clean
    assert [f.check for f in lowers.findings] == ["counter_outlier"] and not lowers.adjustments
    raises = counter_increments(s, "m.e", max_rate_per_h=RATE * MARGIN, effect="raises")
    assert float(raises.value.sum()) <= clean and [a["kind"] for a in raises.adjustments] == ["counter_jump"]
