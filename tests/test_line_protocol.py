"""The store renders InfluxDB line protocol itself (influxdb_client.Point cost the collector
53 us a message): what it renders must be what Point renders, for hostile names and values
too (escapes, trailing backslashes, empty tags, nulls, non-finite floats, huge numbers)."""

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from contract.message import DeviceStatus, Quality, Reading
from store.influx_store import MEASUREMENT, line_protocol, reading_line, reading_lines
from tests.conftest import fuzz_examples

HOSTILE = ["", " ", ",", "=", '"', "\\", "a\\", "a b", "a,b=c", 'x"y', "\n", "\t", "\r", "#x", "é", "😀", "\\ ",
           "a\\\\", "k=v ,"]
names = st.sampled_from(HOSTILE) | st.text(min_size=1, max_size=10)
values = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1)
          | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(HOSTILE) | st.text(max_size=20))


def point_line(measurement, tags, fields, ms) -> str:
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    return p.time(ms, WritePrecision.MS).to_line_protocol()


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tags=st.dictionaries(names, names, max_size=4), fields=st.dictionaries(names, values, max_size=6),
       ms=st.integers(min_value=0, max_value=2**62))
def test_rendered_as_point_renders_it(tags, fields, ms):
    expected = point_line("reading", tags, fields, ms)
    if expected == "":  # Point writes nothing for a point without a field left; ours refuses it
        with pytest.raises(ValueError):
            line_protocol("reading", tags, fields, ms)
    else:
        assert line_protocol("reading", tags, fields, ms) == expected


@pytest.mark.parametrize("measurement", ["reading", "a b", "a,b", "a=b", "x\\"])
def test_measurement_escapes_as_point_does(measurement):
    assert line_protocol(measurement, {"t": "v"}, {"f": 1.0}, 5) == point_line(measurement, {"t": "v"}, {"f": 1.0}, 5)


def old_point(r: Reading) -> str:
    """The store's former rendering through Point, kept here as the reference, at the millisecond
    the SQLite store gives the stamp (``to_ms``: rounded; Point floored it)."""
    import json

    from contract.store import to_ms
    p = Point(MEASUREMENT).tag("site", r.site).tag("gateway", r.gateway).tag("device", r.device)
    for channel, v in r.values.items():
        if v is not None:
            p.field(channel, v if isinstance(v, str) else float(v))
    p.field("quality", json.dumps({k: q.value for k, q in sorted(r.quality.items())}, separators=(",", ":")))
    p.field("status", r.status.value)
    p.field("seq", int(r.seq or 0))
    return p.time(to_ms(r.ts if r.ts.tzinfo else r.ts.replace(tzinfo=dt.UTC)), WritePrecision.MS).to_line_protocol()


@pytest.mark.parametrize("ts", [dt.datetime(2026, 11, 29, 4, 30, 15, 120000, tzinfo=dt.UTC),
                                dt.datetime(2026, 11, 29, 4, 30, 15, 999999, tzinfo=dt.UTC),
                                dt.datetime(2001, 1, 1, 9, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=9))),
                                dt.datetime(2099, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
                                dt.datetime(2026, 1, 1, 12, 0, 0, 500)])
def test_a_reading_renders_as_point_rendered_it(ts):
    r = Reading(site="s-1", gateway="gw_1", device="m1", ts=ts,
                values={"p": 5.0, "e": 123456789012.25, "n": None, "b": True, "i": 2**53, "s": 'a "b" \\c,d=e f',
                        "z": -0.0, "t": 1e-300},
                quality={"n": Quality.timeout, "p": Quality.out_of_range}, status=DeviceStatus.degraded, seq=42)
    assert reading_line(r) == old_point(r)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from(["a", "ch0", "ch10", "ch2", "q", "qualityx", "r", "se", "seq0", "sequence",
                                               "st", "statusy", "zz", "a b", "k=v", "x,y", "é"]) | names,
                              st.floats(allow_nan=True, allow_infinity=True) | st.none() | st.integers(-2**53, 2**53)
                              | st.sampled_from([5.0, -0.0, 0.0, 1e16, 1e-5, 1e22, 123.0, 10.5, 1.7976931348623157e308]),
                              min_size=1, max_size=8),
       quality=st.sampled_from([{}, {"n": Quality.timeout}]), seq=st.integers(0, 2**63 - 1))
def test_a_reading_of_floats_renders_as_point_rendered_it(values, quality, seq):
    """The usual reading (every value a finite float) takes a rendering of its own."""
    values = {k: v for k, v in values.items() if k not in ("site", "gateway", "device", "time", "quality", "status",
                                                            "seq")}
    if not values:
        return
    r = Reading(site="s 1", gateway="gw,1", device="m=1", ts=dt.datetime(2026, 11, 29, 4, 30, 15, 120000, tzinfo=dt.UTC),
                values=values, quality=quality, status=DeviceStatus.ok, seq=seq)
    try:
        expected = old_point(r)
    except Exception:  # e.g. a point with no field left: ours refuses what Point cannot render
        return
    assert reading_line(r) == expected


@pytest.mark.parametrize("values", [{"a": float("nan"), "b": 1.0}, {"a": 2.0, "z": float("-inf")},
                                    {"ch1": 1e308, "ch2": 1e308}, {"r": 5.0, "qualitz": 1.0, "seq1": 2.5, "su": 3.0}])
def test_non_finite_floats_are_left_out_of_a_reading_of_floats(values):
    r = Reading(site="s", gateway="g", device="d", ts=dt.datetime(2026, 11, 29, tzinfo=dt.UTC), values=values, seq=1)
    assert reading_line(r) == old_point(r)


def _rendered(r: Reading) -> str | type:
    try:
        return reading_line(r).encode().decode()
    except (ValueError, TypeError, OverflowError) as exc:
        return type(exc)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(
    st.dictionaries(st.sampled_from(["a", "ch0", "ch10", "ch2", "qualityx", "seq0", "zz", "k=v", "x,y", "é", "{0}",
                                     "a}", "quality", "seq", "site", "a\ud800"]),
                    st.floats(allow_nan=True, allow_infinity=True) | st.none() | st.integers(-2**53, 2**53)
                    | st.sampled_from([5.0, -0.0, 1e16, 1e-5, 3.5e-7, 5e-324, 100.00001, 1e22, 10.5, 1.5, "a,b", "1.0,"])
                    | st.floats(min_value=-1e-3, max_value=1e-3), min_size=1, max_size=6),
    st.sampled_from([{}, {"a": Quality.timeout}]), st.sampled_from(list(DeviceStatus)),
    st.sampled_from(["m1", "m{1}", "m\udc00"])), min_size=1, max_size=8))
def test_a_batch_renders_each_reading_as_it_renders_alone(batch):
    """``reading_lines`` renders the usual readings of a batch together (their floats' texts in
    one call, cut apart by commas): a reading of any other kind beside them (text holding a
    comma, a null, an integer, NaN, a channel named like a field, a value below 1e-4) changes
    no other reading's line, and each line is the one ``reading_line`` renders alone."""
    t0 = dt.datetime(2026, 11, 29, 4, 30, 15, 120000, tzinfo=dt.UTC)
    readings = [Reading(site="s 1", gateway="gw,1", device=device, ts=t0 + dt.timedelta(microseconds=i), values=values,
                        quality={k: q for k, q in quality.items() if k in values}, status=status, seq=i)
                for i, (values, quality, status, device) in enumerate(batch)]
    lines = [line.decode() if isinstance(line, bytes) else type(line) for line in reading_lines(readings)]
    assert lines == [_rendered(r) for r in readings]


def test_the_usual_readings_of_a_batch_are_rendered_as_point_rendered_them():
    t0 = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    readings = [Reading(site="s", gateway="g", device=f"m{i % 3}", ts=t0 + dt.timedelta(seconds=i),
                        values={f"ch{k}": float(i * k) + 0.25 * (k % 2) for k in range(12)}, seq=i + 1)
                for i in range(50)]
    # text holding commas among them: the floats' texts of the readings after it stay theirs
    readings[7] = Reading(site="s", gateway="g", device="m1", ts=readings[7].ts, values={"ch1": "a,b", "ch2": 1.0},
                          seq=8)
    assert reading_lines(readings) == [old_point(r).encode() for r in readings]
