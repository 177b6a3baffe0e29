"""Decoding registers into values: byte/word orders, scale factors, sentinels, ranges."""

import datetime as dt
import math

import pytest

from contract.config.profile import Point, Profile
from contract.message import Quality, Reading
from contract.register_codec import raw_to_registers, registers_to_raw
from gateway.register_map import decode_point, decode_points

# float32 1.0 is 0x3F800000: bytes A=3F B=80 C=00 D=00
@pytest.mark.parametrize("order,registers", [
    ("ABCD", [0x3F80, 0x0000]), ("CDAB", [0x0000, 0x3F80]),
    ("BADC", [0x803F, 0x0000]), ("DCBA", [0x0000, 0x803F]),
])
def test_float32_in_every_order(order, registers):
    assert registers_to_raw(registers, "float32", order) == 1.0
    assert raw_to_registers(1.0, "float32", order) == registers


@pytest.mark.parametrize("order,registers", [
    ("ABCD", [0x0102, 0x0304]), ("CDAB", [0x0304, 0x0102]),
    ("BADC", [0x0201, 0x0403]), ("DCBA", [0x0403, 0x0201]),
])
def test_uint32_in_every_order(order, registers):
    assert registers_to_raw(registers, "uint32", order) == 0x01020304


def test_int64_and_float64_round_trip():
    for order in ("ABCD", "CDAB", "BADC", "DCBA"):
        assert registers_to_raw(raw_to_registers(-123456789012, "int64", order), "int64", order) == -123456789012
        assert registers_to_raw(raw_to_registers(2.5e-7, "float64", order), "float64", order) == 2.5e-7


def test_string_sunspec_marker():
    assert registers_to_raw([0x5375, 0x6E53], "string") == "SunS"


def _profile(*points, sunspec=False):
    return Profile(profile="t", sunspec=sunspec, points=list(points))


def test_scale_factor_from_the_same_block():
    w = Point(channel="ac_power", address=10, type="int16", scale_factor={"address": 11})
    prof = _profile(w, sunspec=True)
    block = [0] * 10 + [12345, 0xFFFF]  # W=12345, W_SF=-1
    assert decode_point(w, prof, 0, block) == (1234.5, None)
    block[11] = 2  # the inverter changed its scale factor: the same raw value means 1,234,500 W
    assert decode_point(w, prof, 0, block) == (1234500.0, None)


@pytest.mark.parametrize("type_,raw_regs", [
    ("int16", [0x8000]), ("uint16", [0xFFFF]), ("int32", [0x8000, 0x0000]), ("uint32", [0xFFFF, 0xFFFF]),
])
def test_sunspec_not_implemented_is_null(type_, raw_regs):
    p = Point(channel="x", address=0, type=type_)
    assert decode_point(p, _profile(p, sunspec=True), 0, raw_regs) == (None, Quality.not_implemented)


def test_sunspec_accumulator_zero_and_sf_sentinel_are_null():
    acc = Point(channel="wh", address=0, type="uint32", kind="counter", rollover=4294967296)
    assert decode_point(acc, _profile(acc, sunspec=True), 0, [0, 0]) == (None, Quality.not_implemented)
    w = Point(channel="w", address=0, type="int16", scale_factor={"address": 1})
    assert decode_point(w, _profile(w, sunspec=True), 0, [100, 0x8000]) == (None, Quality.not_implemented)


def test_float_nan_is_not_implemented_only_in_sunspec():
    """SunSpec's float32 "not implemented" is NaN; elsewhere NaN is a meter that gave no number."""
    p = Point(channel="x", address=0, type="float32")
    nan = raw_to_registers(math.nan, "float32")
    assert decode_point(p, _profile(p, sunspec=True), 0, nan) == (None, Quality.not_implemented)
    assert decode_point(p, _profile(p), 0, nan) == (None, Quality.decode_error)
    assert decode_point(p, _profile(p), 0, [0xFFFF, 0xFFFF]) == (None, Quality.decode_error)  # another NaN


def test_plain_device_keeps_0x8000_as_a_number():
    p = Point(channel="x", address=0, type="int16")
    assert decode_point(p, _profile(p), 0, [0x8000]) == (-32768, None)


def test_gain_offset_and_range():
    p = Point(channel="t", address=0, type="uint16", gain=0.1, offset=-40, range=(-40, 150))
    assert decode_point(p, _profile(p), 0, [655]) == (25.5, None)
    value, q = decode_point(p, _profile(p), 0, [2000])
    assert value == 160.0 and q is Quality.out_of_range  # kept, flagged


def test_bits_decode_as_bool():
    p = Point(channel="flame", table="discrete", address=3, type="bool")
    assert decode_point(p, _profile(p), 0, [False, False, False, True]) == (True, None)


def test_a_block_decodes_run_by_run_as_each_point_alone():
    """Back-to-back points of one type share one conversion; type, order or a gap ends the run."""
    layout = [  # (point, raw value), back to back from address 0 unless noted
        (Point(channel="a", address=0, type="float32", unit="kW"), 1.5),
        (Point(channel="b", address=2, type="float32", unit="kW", range=[0, 10]), 12.25),  # out of range
        (Point(channel="c", address=4, type="float32", order="CDAB"), -3.0),  # same type, other order
        (Point(channel="d", address=6, type="float32", order="CDAB"), math.nan),  # no number
        (Point(channel="e", address=8, type="uint32", gain=0.1), 123456),
        (Point(channel="f", address=10, type="int16", scale_factor={"address": 12}), -250),
        (Point(channel="sf", address=12, type="int16"), -1),
        (Point(channel="name", address=13, type="string", length=2), "SunS"),
        (Point(channel="g", address=20, type="float32"), 7.0),  # after a gap
    ]
    block = [0] * 22
    for point, raw in layout:
        regs = raw_to_registers(raw, point.type, point.order or "ABCD", point.length)
        block[point.address : point.address + len(regs)] = regs
    points = [p for p, _ in layout]
    prof = _profile(*points)
    together = decode_points(points, prof, 0, block)
    assert together == [decode_point(p, prof, 0, block) for p in points]
    assert together == [(1.5, None), (12.25, Quality.out_of_range), (-3.0, None), (None, Quality.decode_error),
                        (12345.6, None), (-25.0, None), (-1, None), ("SunS", None), (7.0, None)]


@pytest.mark.parametrize("type_,raw", [("uint64", 2**64 - 1), ("int64", -2**63), ("uint64", 2**53 + 1)])
def test_a_64_bit_integer_beyond_2_53_is_a_float_every_stage_accepts(type_, raw):
    """The contract refuses integers a 64-bit float does not hold exactly (every store keeps
    floats): sent as an integer, one such register had the collector refuse the whole reading."""
    p = Point(channel="x", address=0, type=type_)
    value, quality = decode_point(p, _profile(p), 0, raw_to_registers(raw, type_))
    assert quality is None and type(value) is float and value == float(raw)
    r = Reading(site="s1", gateway="g1", device="d1", ts=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), values={"x": value},
                seq=1)
    assert Reading.from_json(r.to_json()).values["x"] == float(raw)
    assert decode_point(p, _profile(p), 0, raw_to_registers(2**53, type_)) == (2**53, None)  # exact: kept


@pytest.mark.parametrize("point,regs", [
    (Point(channel="e", address=0, type="float64", gain=1000.0), raw_to_registers(1e306, "float64")),
    (Point(channel="e", address=0, type="float64", gain=1000.0, range=(0, 1e9)), raw_to_registers(1e306, "float64")),
    (Point(channel="e", address=0, type="float64", scale_factor={"address": 4}), raw_to_registers(1e305, "float64") + [5]),
])
def test_a_value_scaled_past_float64_is_a_decode_error_not_a_silent_null(point, regs):
    """1e306 x 1000 is infinity, which a message carries as null: it went out with no quality
    (a value missing without a reason) or flagged out_of_range (a null said to be out of range)."""
    assert decode_point(point, _profile(point), 0, regs) == (None, Quality.decode_error)
