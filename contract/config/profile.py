"""Register-map profiles: how a kind of meter lays out its values in Modbus tables.

A profile is data (``config/profiles/*.yaml``); a device names one and may override
single points. Addresses are protocol (0-based, on-the-wire) addresses: SunSpec's
"40001" in 1-based documentation is ``40000`` here.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.config.problems import Loc, raise_problems
from contract.message import CHANNEL_PATTERN, RESERVED_CHANNELS

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
#: Byte order of the value as the device sends it, A being the most significant byte.
#: ABCD big-endian; CDAB word-swapped; BADC byte-swapped; DCBA little-endian.
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

REGISTERS_PER_TYPE: dict[str, int] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
    "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
}

#: SunSpec "not implemented" values, by data type, for points of a SunSpec profile.
SUNSPEC_NOT_IMPLEMENTED: dict[str, int] = {
    "int16": -0x8000, "uint16": 0xFFFF, "int32": -0x80000000, "uint32": 0xFFFFFFFF,
    "int64": -0x8000000000000000, "uint64": 0xFFFFFFFFFFFFFFFF,
}


#: last protocol address of a Modbus table
LAST_ADDRESS = 65535
#: registers one Modbus read carries (bits: 2000)
MAX_READ_REGISTERS = 125


class Strict(BaseModel):
    # NaN and infinity pass every bound check (or fail it silently): no setting is either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Kind(str, Enum):
    instantaneous = "instantaneous"
    counter = "counter"  #: cumulative register, wraps at ``rollover``


class ScaleFactor(Strict):
    """A SunSpec-style scale-factor register: value x 10**sf, sf an int16 read in the same request."""

    address: int = Field(ge=0, le=65535)
    #: SunSpec marks an unimplemented scale factor with 0x8000; the value is then null.
    not_implemented: int | None = -0x8000


class Point(Strict):
    """One value of a meter: where it is, how to decode it, what it means."""

    channel: str = Field(pattern=CHANNEL_PATTERN)
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: DataType = "uint16"
    #: registers of a ``string`` point
    length: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)
    order: ByteOrder | None = None  # None: the profile's default
    gain: float = 1.0
    offset: float = 0.0
    scale_factor: ScaleFactor | None = None
    unit: str = ""
    kind: Kind = Kind.instantaneous
    #: the value at which a counter wraps to 0 (e.g. 4294967296 for a 32-bit accumulator),
    #: in engineering units after gain and scale
    rollover: float | None = Field(default=None, gt=0)
    #: valid physical range [min, max] in engineering units; outside it is flagged
    range: tuple[float, float] | None = None
    #: raw values meaning "not implemented / not available": decoded as null
    not_implemented: list[int] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        if self.type == "string" and self.length is None:
            raise ValueError("a string point needs 'length' (registers)")
        if self.table in ("coil", "discrete") and self.type != "bool":
            raise ValueError(f"table '{self.table}' holds single bits: type must be 'bool'")
        if self.type == "bool" and self.table in ("holding", "input"):
            raise ValueError("type 'bool' is for coil and discrete tables")
        if self.range is not None and not self.range[0] <= self.range[1]:
            raise ValueError(f"range {list(self.range)}: min is above max")
        if self.kind is Kind.counter and self.type in ("string", "bool"):
            raise ValueError(f"a counter cannot be of type {self.type}")
        if self.rollover is not None and self.kind is not Kind.counter:
            raise_problems([(("rollover",), "only a counter wraps: set kind: counter or remove rollover")])
        if self.scale_factor is not None and self.table not in ("holding", "input"):
            raise ValueError("a scale factor applies to register tables only")
        if not math.isfinite(self.gain) or self.gain == 0:
            raise ValueError("gain must be a finite non-zero number")
        last = self.address + self.registers - 1
        if last > LAST_ADDRESS:
            raise_problems([(("address",), f"a {self.type} at {self.address} needs registers {self.address}-{last}, "
                                           f"past the table's last address {LAST_ADDRESS}")])
        if self.scale_factor is not None:  # a value and its scale factor are read in one request
            sf = self.scale_factor.address
            span = max(last, sf) - min(self.address, sf) + 1
            if span > MAX_READ_REGISTERS:
                raise_problems([(("scale_factor", "address"),
                                 f"register {sf} and '{self.channel}' ({self.address}-{last}) span {span} registers: "
                                 f"a value and its scale factor are read in one request, at most {MAX_READ_REGISTERS}")])
        return self

    @property
    def registers(self) -> int:
        """Number of registers (or bits) the value occupies."""
        return self.length if self.type == "string" else REGISTERS_PER_TYPE[self.type]


def _overlaps(points: list[Point]) -> list[tuple[Loc, str]]:
    """Points of one table that share a register: one of them decodes the other's bytes."""
    problems = []
    reach: dict[str, tuple[int, Point]] = {}  # per table: the furthest last register so far, and whose
    for i in sorted(range(len(points)), key=lambda i: (points[i].table, points[i].address)):
        p = points[i]
        last = p.address + p.registers - 1
        if p.table in reach and p.address <= reach[p.table][0]:
            other = reach[p.table][1]
            problems.append((("points", i, "address"),
                             f"{p.table} registers {p.address}-{last} of '{p.channel}' overlap '{other.channel}' "
                             f"({other.address}-{other.address + other.registers - 1})"))
        if p.table not in reach or last > reach[p.table][0]:
            reach[p.table] = (last, p)
    return problems


class Profile(Strict):
    """A register map shared by every device of one make and model."""

    profile: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    manufacturer: str = ""
    #: default byte order of multi-register values
    order: ByteOrder = "ABCD"
    #: SunSpec device: sentinels of each data type read as null, accumulators of 0 too
    sunspec: bool = False
    #: largest gap (registers) bridged when merging neighbouring points into one read
    max_gap: int = Field(default=16, ge=0, le=124)
    points: list[Point] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Profile:
        problems: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for i, p in enumerate(self.points):
            if p.channel in seen:
                problems.append((("points", i, "channel"), f"channel '{p.channel}' appears twice"))
            if p.channel in RESERVED_CHANNELS:
                problems.append((("points", i, "channel"),
                                 f"channel name '{p.channel}' is reserved (the stores use it for tags and metadata)"))
            seen.add(p.channel)
        problems += _overlaps(self.points)
        raise_problems(problems)
        return self

    def point(self, channel: str) -> Point:
        for p in self.points:
            if p.channel == channel:
                return p
        raise KeyError(channel)
