"""Turn the registers of one read into engineering values with quality flags.

value = (raw x gain + offset) x 10**sf, where sf comes from the scale-factor register
of the *same* read. Sentinels ("not implemented") become null; values outside the
point's valid range are kept and flagged.

NaN is a sentinel only where SunSpec makes it one (its float32 "not implemented" is the
quiet NaN 0x7FC00000). Elsewhere a NaN is a meter that answers without a number, most
often a dead measuring board behind a live Modbus interface: null with ``decode_error``,
a failure, so that such a device is never ``ok``.
"""

from __future__ import annotations

import math

from contract.config.profile import SUNSPEC_NOT_IMPLEMENTED, Kind, Point, Profile
from contract.message import MAX_INT, Quality
from contract.register_codec import registers_to_raw, registers_to_raws

Value = float | int | str | bool | None


def _is_sentinel(raw: int | float, point: Point, profile: Profile) -> bool:
    if isinstance(raw, float) and math.isnan(raw):
        return profile.sunspec
    if point.not_implemented is not None:
        return raw in point.not_implemented
    if profile.sunspec:
        if point.kind is Kind.counter and point.type in ("uint16", "uint32", "uint64"):
            return raw == 0  # SunSpec acc16/32/64: 0 means not implemented
        return raw == SUNSPEC_NOT_IMPLEMENTED.get(point.type)
    return False


def decode_points(
    points: list[Point], profile: Profile, block_start: int, block: list[int] | list[bool]
) -> list[tuple[Value, Quality | None]]:
    """Decode ``points`` from ``block``, the registers (or bits) read from ``block_start``.

    Back-to-back points of one numeric type and order are converted in one pymodbus call
    (a meter's 20 float32s in one), then each is checked and scaled on its own.
    """
    out: list[tuple[Value, Quality | None]] = []
    i = 0
    while i < len(points):
        first = points[i]
        if first.type in ("bool", "string"):
            out.append(decode_point(first, profile, block_start, block))
            i += 1
            continue
        order = first.order or profile.order
        j, end = i + 1, first.address + first.registers
        while (j < len(points) and points[j].address == end and points[j].type == first.type
               and (points[j].order or profile.order) == order):
            end += points[j].registers
            j += 1
        raws = registers_to_raws(block[first.address - block_start : end - block_start], first.type, order)
        out.extend(_engineering(p, profile, raw, block_start, block) for p, raw in zip(points[i:j], raws))
        i = j
    return out


def decode_point(
    point: Point, profile: Profile, block_start: int, block: list[int] | list[bool]
) -> tuple[Value, Quality | None]:
    """Decode one ``point`` from ``block``, the registers (or bits) read from ``block_start``."""
    i = point.address - block_start
    if point.type == "bool":
        return bool(block[i]), None
    words = block[i : i + point.registers]
    order = point.order or profile.order
    if point.type == "string":
        try:
            return registers_to_raw(words, "string", order), None
        except (UnicodeDecodeError, ValueError):
            return None, Quality.decode_error
    return _engineering(point, profile, registers_to_raw(words, point.type, order), block_start, block)


def _engineering(
    point: Point, profile: Profile, raw: int | float, block_start: int, block: list[int]
) -> tuple[Value, Quality | None]:
    """A raw number -> its value in engineering units, or null with the reason."""
    if _is_sentinel(raw, point, profile):
        return None, Quality.not_implemented
    if isinstance(raw, float) and not math.isfinite(raw):  # NaN (not a sentinel here) or infinity
        return None, Quality.decode_error
    exponent = 0
    if point.scale_factor is not None:
        sf = registers_to_raw([block[point.scale_factor.address - block_start]], "int16")
        if sf == point.scale_factor.not_implemented:
            return None, Quality.not_implemented
        if not -10 <= sf <= 10:
            return None, Quality.decode_error
        exponent = sf
    # an integer beyond 2**53 is sent as the float the stores would keep: the contract refuses it as an integer
    if point.gain == 1.0 and point.offset == 0.0 and exponent == 0 and (isinstance(raw, float) or abs(raw) <= MAX_INT):
        value: float | int = raw + 0.0 if isinstance(raw, float) else raw  # + 0.0: what scaling by 1 gives (-0.0 -> 0.0)
    else:
        value = _scale(_scale(raw, point.gain) + point.offset, 10.0**exponent)
        if not math.isfinite(value):  # a huge raw number scaled past float64: no value, and say why
            return None, Quality.decode_error
    if point.range is not None and not point.range[0] <= value <= point.range[1]:
        return value, Quality.out_of_range
    return value, None


def _scale(x: float, factor: float) -> float:
    """x x factor, dividing where factor is 1/n so that 12345 x 0.1 gives 1234.5 exactly."""
    if 0 < abs(factor) < 1:
        inverse = 1 / factor
        if abs(inverse - round(inverse)) < 1e-9:
            return x / round(inverse)
    return x * factor
