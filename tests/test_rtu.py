"""Modbus RTU over a real serial-line pair (socat ptys): several devices on one
RS-485 bus, one of them dead and backed off so that it does not hog the bus."""

import contextlib
import random
import shutil
import struct
import subprocess
import threading
import time

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config.site import RtuConnection
from contract.message import DeviceStatus, Quality
from gateway.device_poller import DevicePoller
from gateway.modbus_link import HuntingFramerRTU, ModbusLink
from gateway.service import Gateway
from tests.conftest import fuzz_examples, load_site, write_site


@pytest.fixture
def serial_pair(tmp_path):
    socat = shutil.which("socat")
    assert socat, "socat is not installed (apt-get install -y socat)"
    a, b = tmp_path / "sim-end", tmp_path / "gateway-end"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.exists() and b.exists(), "socat did not create the pty pair"
    yield str(a), str(b)
    proc.terminate()
    proc.wait(5)


def rtu(device_id, profile, port, unit_id, kind, interval=0.5):
    return {"id": device_id, "kind": kind, "profile": profile, "poll_interval": interval,
            "connection": {"type": "rtu", "port": port, "baudrate": 19200, "unit_id": unit_id,
                           "timeout": 0.3}}


@pytest.fixture
def bus_site(tmp_path, serial_pair):
    sim_end, gw_end = serial_pair
    path = write_site(tmp_path, [
        rtu("meter", "power_meter_3ph", gw_end, 1, "power_meter"),
        rtu("tx-1", "transformer_monitor", gw_end, 2, "transformer_monitor"),
        rtu("dead", "power_meter_3ph", gw_end, 3, "power_meter"),
    ], methodology="VN_AM005", methodology_version="1.0")
    return load_site(path), {gw_end: sim_end}


def test_rtu_devices_decode_over_a_serial_line(bus_site, simulate):
    site, ports = bus_site
    sim = simulate(site, ports)
    link = ModbusLink(site.device("meter").connection)
    r = DevicePoller(site, site.device("meter"), link).poll()
    assert r.status is DeviceStatus.ok, r.quality
    expected = sim.plant.values(site.device("meter"), r.ts)
    assert r.values["voltage_l1"] == pytest.approx(expected["voltage_l1"], rel=1e-6)
    tx = DevicePoller(site, site.device("tx-1"), link).poll()  # same bus, same client, other unit id
    assert tx.status is DeviceStatus.ok and tx.values["voltage_present"] in (True, False)
    assert tx.quality == {}


def test_dead_device_on_the_bus_is_backed_off_and_others_keep_their_rate(bus_site, simulate, mosquitto, tmp_path):
    site, ports = bus_site
    sim = simulate(site, ports)
    sim.inject("dead", "timeout")
    gw = Gateway(site, broker_url=mosquitto.url, outbox_path=str(tmp_path / "outbox.sqlite"))
    gw.start()
    time.sleep(6)
    gw.stop()
    dead = next(p for p in gw.pollers if p.device.id == "dead")
    assert dead.failures >= 2
    # healthy devices: ~12 polls each in 6 s at 0.5 s; the dead one far fewer thanks to backoff
    for p in gw.pollers:
        if p is not dead:
            assert sim.devices[p.device.id].requests >= 8 * p.requests_per_poll, p.device.id
    assert sim.devices["dead"].requests <= 5


def test_a_wall_clock_set_back_while_waiting_on_the_bus_does_not_hold_it(serial_pair, monkeypatch):
    """pymodbus times its wait for a serial answer on the wall clock: NTP setting the clock
    back an hour while the gateway waited for a silent device held the bus (its lock, every
    device behind it) for that hour. The step is made by ``time.time`` alone here: libfaketime
    cannot be used, as pyserial's writes time out under it."""
    from gateway.modbus_link import LinkDown

    _, gw_end = serial_pair  # nothing answers on the other end
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.5))
    wall, started = time.time, time.monotonic()
    monkeypatch.setattr(time, "time", lambda: wall() - (3600 if time.monotonic() - started > 0.2 else 0))
    outcome = []

    def read():
        try:
            link.read("holding", 0, 10, 1)
        except LinkDown as exc:
            outcome.append(exc.quality)

    waiting = threading.Thread(target=read, daemon=True)
    waiting.start()
    waiting.join(5)
    assert not waiting.is_alive(), "the read still waits, 5 s after its 0.5 s timeout"
    assert outcome == [Quality.timeout]


def crc16(frame: bytes) -> bytes:
    """Modbus RTU's CRC, low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def answer_frame(unit: int, fc: int, registers) -> bytes:
    body = bytes([unit, fc, 2 * len(registers)]) + b"".join(r.to_bytes(2, "big") for r in registers)
    return body + crc16(body)


@contextlib.contextmanager
def raw_device(sim_end, answer):
    """A device on the line's other end: to each read request (unit, function, address, count)
    it writes the chunks ``answer`` returns, 50 ms apart."""
    line = serial.Serial(sim_end, 19200, timeout=0.05)
    stop = threading.Event()

    def device():
        while not stop.is_set():
            request = line.read(8)
            if len(request) == 8:
                for i, chunk in enumerate(answer(*struct.unpack(">BBHH", request[:6]))):
                    if i:
                        time.sleep(0.05)
                    line.write(chunk)

    answering = threading.Thread(target=device, daemon=True)
    answering.start()
    try:
        yield
    finally:
        stop.set()
        answering.join(5)
        line.close()


@pytest.mark.parametrize("noise", [b"\x00", b"\xff", b"\x00\xff\x00\x13"])
def test_a_glitch_before_the_answer_on_the_line_is_skipped(serial_pair, noise):
    """An RS-485 line often carries a byte of noise as the device's driver turns on. pymodbus
    took the noise for the start of a frame and, its CRC wrong, threw away what it had read,
    the answer too: every read of the device timed out, and it was backed off as dead."""
    sim_end, gw_end = serial_pair
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.3))
    with raw_device(sim_end, lambda unit, fc, _, count: [noise + answer_frame(unit, fc, range(1000, 1000 + count))]):
        try:
            assert [link.read("holding", 0, 10, 1) for _ in range(3)] == [list(range(1000, 1010))] * 3
        finally:
            link.close()


def test_another_units_frame_before_the_answer_does_not_take_the_answer_with_it(serial_pair):
    """A frame of another unit (its late answer, on a shared bus) came in one read with the
    answer: the framer consumed all it had read with that frame, pymodbus dropped the frame for
    its unit, and the answer was gone with it: the device asked timed out and was backed off."""
    sim_end, gw_end = serial_pair
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.3))
    with raw_device(sim_end, lambda unit, fc, _, count: [answer_frame(unit + 1, fc, [7] * count)
                                                        + answer_frame(unit, fc, range(count))]):
        try:
            assert link.read("holding", 0, 10, 1) == list(range(10))
        finally:
            link.close()


def test_a_frame_within_an_answer_still_arriving_is_not_taken_for_it(serial_pair):
    """Values in an answer can hold bytes that make a frame with a right CRC, here an exception
    answer (unit 1, illegal data address). Read while the answer's end was still on the line,
    hunting past its start found that frame and the device was said to refuse the address."""
    sim_end, gw_end = serial_pair
    inner = bytes([1, 0x83, 2])
    inner += crc16(inner)
    registers = [int.from_bytes((inner + b"\x00")[i:i + 2], "big") for i in (0, 2, 4)] + [5] * 7
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.5))

    def in_two_chunks(unit, fc, _, count):
        frame = answer_frame(unit, fc, registers)
        return [frame[:12], frame[12:]]

    with raw_device(sim_end, in_two_chunks):
        try:
            assert link.read("holding", 0, 10, 1) == registers
        finally:
            link.close()


def test_the_echo_of_the_request_is_not_taken_for_its_answer(serial_pair):
    """A two-wire RS-485 adapter hears the request it sends. Coils read at 0x0300-0x03FF, 17 to
    24 of them, make a request that reads as an answer of 3 bytes with a right CRC: its own
    address and count were returned as the coils' values."""
    sim_end, gw_end = serial_pair
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.3))

    def echo_then_answer(unit, fc, address, count):
        request = struct.pack(">BBHH", unit, fc, address, count)
        answer = bytes([unit, fc, 3, 0b10101010, 0b01010101, 0b00000001])
        return [request + crc16(request) + answer + crc16(answer)]

    with raw_device(sim_end, echo_then_answer):
        try:
            assert link.read("coil", 0x0300, 17, 1) == [False, True] * 4 + [True, False] * 4 + [True]
        finally:
            link.close()


def test_a_long_burst_of_noise_costs_linear_time():
    """Hunting looked at every offset read so far each time more noise came: 16 KB of noise
    in 16-byte bursts (8 s of a babbling line at 19200 baud) took 10 s of CPU, the bus's lock
    held. Offsets that can no longer start a frame are dropped."""
    from pymodbus.pdu import DecodePDU

    framer = HuntingFramerRTU(DecodePDU(False))
    noise = random.Random(1).randbytes(16_000)
    started, held = time.process_time(), b""
    for i in range(0, len(noise), 16):
        used, pdu = framer.handleFrame(held + noise[i:i + 16], 1, 0)
        held = (held + noise[i:i + 16])[used:]
        assert pdu is None and len(held) <= HuntingFramerRTU.MAX_SIZE + 16
    assert time.process_time() - started < 2.0


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(200), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_hunting_never_takes_a_wrong_answer(data):
    """Noise before and after the answer (random bytes, cut frames of any unit, whole frames
    of other units), all arriving in random chunks: the answer taken is the device's, or none
    (a timeout). A whole frame of the unit itself before its answer is left out: on RTU it
    cannot be told from a late answer (the link starts afresh after a timeout for that)."""
    from pymodbus.pdu import DecodePDU
    from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

    unit, count = data.draw(st.integers(1, 247)), data.draw(st.integers(1, 20))
    values = bytearray(data.draw(st.binary(min_size=2 * count, max_size=2 * count)))
    # the values may hold a frame of the unit with a right CRC: an exception answer or a short answer
    inner = data.draw(st.sampled_from([b"", bytes([unit, 0x83, 2]), bytes([unit, 3, 2, 0, 7])]))
    if inner and len(inner) + 2 <= len(values):
        at = data.draw(st.integers(0, len(values) - len(inner) - 2))
        values[at:at + len(inner) + 2] = inner + crc16(inner)
    registers = [int.from_bytes(values[i:i + 2], "big") for i in range(0, len(values), 2)]
    other_unit = st.integers(0, 255).filter(lambda u: u != unit)
    piece = st.one_of(
        st.binary(max_size=12),
        st.builds(lambda u, regs, cut: answer_frame(u, 3, regs)[:-1][:cut], st.integers(0, 255),
                  st.lists(st.integers(0, 0xFFFF), max_size=20), st.integers(0, 44)),
        st.builds(lambda u, regs: answer_frame(u, 3, regs), other_unit, st.lists(st.integers(0, 0xFFFF), max_size=20)),
    )
    answer = answer_frame(unit, 3, registers)
    line = b"".join(data.draw(st.lists(piece, max_size=4))) + answer + data.draw(st.binary(max_size=8))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(line) - 1), max_size=6)))
    framer = HuntingFramerRTU(DecodePDU(False))
    framer.awaiting(ReadHoldingRegistersRequest(address=0, count=count, dev_id=unit))
    held, pdu = b"", None
    for chunk in (line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)])):
        held += chunk
        used, pdu = framer.handleFrame(held, unit, 0)
        held = held[used:]
        if pdu is not None:
            break
    if pdu is not None:
        assert (pdu.dev_id, pdu.function_code, pdu.registers) == (unit, 3, registers)
