"""Serve a site's simulated devices as real Modbus servers (pymodbus), with faults.

Each endpoint of the site config (a TCP host:port, or a serial port given on the
command line) becomes one pymodbus server; devices behind it answer by unit id.
On every request the addressed table is re-rendered from the plant model through
the device's own register map, so the bytes on the wire follow the profile
exactly (byte/word order, gain, SunSpec scale factors chosen at run time).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from contract.config.profile import SUNSPEC_NOT_IMPLEMENTED, Point, Profile
from contract.config.site import Device, RtuConnection, Site
from contract.register_codec import raw_to_registers
from simulators.plants import Plant, plant_for

log = logging.getLogger(__name__)

FAULTS = ("timeout", "exception", "illegal_address", "drop", "counter_reset", "out_of_range", "not_implemented",
          "nan")
_TABLE_OF_FC = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_INT_LIMITS = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
               "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


@dataclass
class Fault:
    kind: str
    until: float = math.inf  # monotonic time
    channel: str | None = None  # out_of_range / not_implemented / illegal_address / nan (None: all)
    code: int = 4  # exception

    def active(self) -> bool:
        return time.monotonic() < self.until


@dataclass
class SimulatedDevice:
    device: Device
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0


def _bounds(points: list[Point], table: str) -> tuple[int, int] | None:
    addrs = []
    for p in points:
        if p.table != table:
            continue
        addrs += [p.address, p.address + p.registers - 1]
        if p.scale_factor:
            addrs.append(p.scale_factor.address)
    return (min(addrs), max(addrs)) if addrs else None


def _encode_int(point: Point, value: float, sf: int) -> int:
    raw = round(((value / 10.0**sf) - point.offset) / point.gain)
    lo, hi = _INT_LIMITS[point.type]
    if point.kind.value == "counter":
        span = hi - lo + 1
        return lo + (raw - lo) % span  # counters wrap like the real register
    return max(lo, min(hi, raw))


def _choose_sf(points: list[Point], values: dict) -> int:
    """Smallest exponent in [-3, 4] at which every value sharing the SF register fits."""
    for sf in range(-3, 5):
        ok = True
        for p in points:
            v = values.get(p.channel)
            if v is None or p.kind.value == "counter":
                continue
            raw = round(((v / 10.0**sf) - p.offset) / p.gain)
            lo, hi = _INT_LIMITS.get(p.type, (-(2**63), 2**63))
            if not lo < raw < hi - 1:
                ok = False
                break
        if ok:
            return sf
    return 4


def render(profile: Profile, table: str, values: dict, block_start: int, registers: list[int],
           not_implemented: set[str] = frozenset()) -> None:
    """Write ``values`` (channel -> engineering value) into a register/bit block in place."""
    points = [p for p in profile.points if p.table == table]
    if table in ("coil", "discrete"):
        for p in points:
            idx, bit = p.address // 16 - block_start, p.address % 16
            on = bool(values.get(p.channel, False))
            registers[idx] = (registers[idx] | (1 << bit)) if on else (registers[idx] & ~(1 << bit))
        return
    by_sf: dict[int, list[Point]] = {}
    for p in points:
        if p.scale_factor:
            by_sf.setdefault(p.scale_factor.address, []).append(p)
    sf_value = {addr: (0 if any(q.kind.value == "counter" for q in ps) else _choose_sf(ps, values))
                for addr, ps in by_sf.items()}
    for addr, sf in sf_value.items():
        registers[addr - block_start] = raw_to_registers(sf, "int16")[0]
    for p in points:
        order = p.order or profile.order
        v = values.get(p.channel)
        sf = sf_value.get(p.scale_factor.address, 0) if p.scale_factor else 0
        if p.type == "string":
            regs = raw_to_registers(str(v or ""), "string", order, p.length)
        elif p.channel in not_implemented:
            if p.type.startswith("float"):
                regs = raw_to_registers(float("nan"), p.type, order)
            else:
                sentinel = (p.not_implemented or [SUNSPEC_NOT_IMPLEMENTED[p.type]])[0]
                regs = raw_to_registers(sentinel, p.type, order)
        elif v is None:
            regs = [0] * p.registers  # a channel the plant does not model reads 0
        elif p.type.startswith("float"):
            regs = raw_to_registers((float(v) - p.offset) / p.gain / 10.0**sf, p.type, order)
        else:
            regs = raw_to_registers(_encode_int(p, float(v), sf), p.type, order)
        i = p.address - block_start
        registers[i : i + len(regs)] = regs


class SiteSimulator:
    """All servers of one site, sharing one plant model."""

    def __init__(self, site: Site, serial_ports: dict[str, str] | None = None, host: str | None = None,
                 plant: Plant | None = None):
        self.site = site
        self.serial_ports = serial_ports or {}
        self.host = host
        self.plant: Plant = plant or plant_for(site, dt.datetime.now(dt.UTC))
        self.devices = {d.id: SimulatedDevice(d) for d in site.devices}
        self.servers: list = []
        self.overrides: dict[str, dict] = {}  # device -> channel -> value, for tests

    # -- faults -------------------------------------------------------------------
    def inject(self, device_id: str, kind: str, seconds: float | None = None, channel: str | None = None, code: int = 4) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault '{kind}'; known: {', '.join(FAULTS)}")
        sim = self.devices[device_id]
        if kind == "counter_reset":
            self.plant.reset_counters(device_id)
            log.warning("%s: counters reset to 0", device_id)
            return
        until = time.monotonic() + seconds if seconds else math.inf
        sim.faults.append(Fault(kind, until, channel, code))
        log.warning("%s: fault %s injected%s", device_id, kind, f" for {seconds} s" if seconds else "")

    def clear(self, device_id: str | None = None) -> None:
        for sim in self.devices.values() if device_id is None else [self.devices[device_id]]:
            sim.faults.clear()

    # -- serving ------------------------------------------------------------------
    async def _action(self, sim: SimulatedDevice, server_ref: list, func_code, start_address, address, count,
                      registers, set_values):
        sim.requests += 1
        table = _TABLE_OF_FC.get(func_code)
        faults = [f for f in sim.faults if f.active()]
        sim.faults[:] = faults
        for f in faults:
            if f.kind == "timeout":
                raise NoSuchIdException("simulated timeout")  # the server then stays silent
            if f.kind == "drop":
                for conn in list(server_ref[0].active_connections.values()):
                    conn.close()
                raise NoSuchIdException("simulated dropped connection")
            if f.kind == "exception":
                return ExcCodes(f.code)
            if f.kind == "illegal_address" and f.channel:
                p = sim.device.register_map.point(f.channel)
                if p.table == table and address <= p.address < address + count:
                    return ExcCodes.ILLEGAL_ADDRESS
        if set_values is not None or table is None:
            return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only here
        values = self.plant.values(sim.device, dt.datetime.now(dt.UTC))
        values.update(self.overrides.get(sim.device.id, {}))
        missing = set()
        for f in faults:
            if f.kind == "out_of_range" and f.channel:
                p = sim.device.register_map.point(f.channel)
                values[f.channel] = (p.range[1] * 10 + 100) if p.range else 1e9
            if f.kind == "not_implemented" and f.channel:
                missing.add(f.channel)
            if f.kind == "nan":  # a dead measuring board behind a live interface: its floats read NaN
                for p in sim.device.register_map.points:
                    if p.type.startswith("float") and f.channel in (None, p.channel):
                        values[p.channel] = math.nan
        render(sim.device.register_map, table, values, start_address, registers, missing)
        return None

    def _sim_device(self, sim: SimulatedDevice, server_ref: list) -> SimDevice:
        profile = sim.device.register_map
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete", "holding", "input"):
            b = _bounds(list(profile.points), table)
            if b is None:
                blocks.append([SimData(0, values=[False] * 16, datatype=DataType.BITS)] if table in ("coil", "discrete")
                              else [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)])
            elif table in ("coil", "discrete"):
                start = b[0] - b[0] % 16
                n = (b[1] - start) // 16 * 16 + 16
                blocks.append([SimData(start, values=[False] * n, datatype=DataType.BITS)])
            else:
                blocks.append([SimData(b[0], count=b[1] - b[0] + 1, values=0, datatype=DataType.REGISTERS)])

        async def action(*args):
            return await self._action(sim, server_ref, *args)

        return SimDevice(sim.device.connection.unit_id, simdata=tuple(blocks), action=action)

    async def start(self) -> None:
        endpoints: dict[str, list[SimulatedDevice]] = {}
        for sim in self.devices.values():
            endpoints.setdefault(sim.device.connection.endpoint, []).append(sim)
        for endpoint, sims in endpoints.items():
            ref: list = []
            devices = [self._sim_device(s, ref) for s in sims]
            conn = sims[0].device.connection
            if isinstance(conn, RtuConnection):
                port = self.serial_ports.get(conn.port)
                if port is None:
                    log.warning("%s: serial endpoint %s not simulated (give --serial %s=<pty>)",
                                self.site.site, conn.port, conn.port)
                    continue
                server = ModbusSerialServer(devices, port=port, baudrate=conn.baudrate, parity=conn.parity,
                                            stopbits=conn.stopbits, bytesize=conn.bytesize,
                                            ignore_missing_devices=True)
            else:
                server = ModbusTcpServer(devices, address=(self.host or conn.host, conn.port), ignore_missing_devices=True)
            ref.append(server)
            await server.serve_forever(background=True)
            self.servers.append(server)
            log.info("%s: serving %s (%s)", self.site.site, endpoint, ", ".join(s.device.id for s in sims))

    async def stop(self) -> None:
        for server in self.servers:
            await server.shutdown()
        self.servers.clear()
