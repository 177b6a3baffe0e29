"""Registers <-> raw numbers, in any byte and word order.

Built on pymodbus's ``convert_from_registers`` / ``convert_to_registers``, which know
word order but not byte order: BADC and DCBA swap the two bytes of every register
around them. Shared by the gateway (decode) and the simulators (encode) so that both
sides agree on one definition of each order.
"""

from __future__ import annotations

from pymodbus.client.mixin import ModbusClientMixin

_DT = ModbusClientMixin.DATATYPE
DATATYPES = {
    "int16": _DT.INT16, "uint16": _DT.UINT16, "int32": _DT.INT32, "uint32": _DT.UINT32,
    "int64": _DT.INT64, "uint64": _DT.UINT64, "float32": _DT.FLOAT32, "float64": _DT.FLOAT64,
    "string": _DT.STRING,
}
#: order -> (pymodbus word order, swap bytes inside each register)
_ORDERS = {"ABCD": ("big", False), "CDAB": ("little", False), "BADC": ("big", True), "DCBA": ("little", True)}


def _swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def registers_to_raw(registers: list[int], data_type: str, order: str = "ABCD") -> int | float | str:
    """Decode one value from its registers, e.g. ``[0x3F80, 0]`` as float32 ABCD -> 1.0."""
    if data_type == "string":
        regs = _swap_bytes(registers) if _ORDERS[order][1] else list(registers)
        # strings are byte sequences: word order does not apply
        return ModbusClientMixin.convert_from_registers(regs, _DT.STRING).rstrip("\x00 ")
    (raw,) = registers_to_raws(registers, data_type, order)
    return raw


def registers_to_raws(registers: list[int], data_type: str, order: str = "ABCD") -> list[int | float]:
    """Decode back-to-back values of one numeric type in one pymodbus call, e.g. a block of float32s."""
    word_order, swap = _ORDERS[order]
    regs = _swap_bytes(registers) if swap else list(registers)
    raws = ModbusClientMixin.convert_from_registers(regs, DATATYPES[data_type], word_order=word_order)
    return raws if isinstance(raws, list) else [raws]


def raw_to_registers(value: int | float | str, data_type: str, order: str = "ABCD", length: int | None = None) -> list[int]:
    """Encode one raw value into registers (the inverse of ``registers_to_raw``)."""
    word_order, swap = _ORDERS[order]
    if data_type == "string":
        regs = ModbusClientMixin.convert_to_registers(str(value), _DT.STRING)
        if length is not None:
            regs = (regs + [0] * length)[:length]
    else:
        regs = ModbusClientMixin.convert_to_registers(value, DATATYPES[data_type], word_order=word_order)
    return _swap_bytes(regs) if swap else regs
