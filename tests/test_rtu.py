"""Modbus RTU over a real serial-line pair (socat ptys): several devices on one
RS-485 bus, one of them dead and backed off so that it does not hog the bus."""

import shutil
import subprocess
import time
import pytest

from contract.message import DeviceStatus, Quality
from gateway.device_poller import DevicePoller
from gateway.modbus_link import ModbusLink
from gateway.service import Gateway
from tests.conftest import load_site, write_site


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
    import threading

    from contract.config.site import RtuConnection
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


@pytest.mark.parametrize("noise", [b"\x00", b"\xff", b"\x00\xff\x00\x13"])
def test_a_glitch_before_the_answer_on_the_line_is_skipped(serial_pair, noise):
    """An RS-485 line often carries a byte of noise as the device's driver turns on. pymodbus
    took the noise for the start of a frame and, its CRC wrong, threw away what it had read,
    the answer too: every read of the device timed out, and it was backed off as dead."""
    import serial
    import struct
    import threading

    from contract.config.site import RtuConnection

    sim_end, gw_end = serial_pair
    line = serial.Serial(sim_end, 19200, timeout=0.05)
    stop = threading.Event()

    def device():
        while not stop.is_set():
            request = line.read(8)
            if len(request) == 8:
                unit, fc, _, count = struct.unpack(">BBHH", request[:6])
                answer = bytes([unit, fc, 2 * count]) + b"".join(struct.pack(">H", 1000 + i) for i in range(count))
                line.write(noise + answer + crc16(answer))

    answering = threading.Thread(target=device, daemon=True)
    answering.start()
    link = ModbusLink(RtuConnection(type="rtu", port=gw_end, baudrate=19200, timeout=0.3))
    try:
        assert [link.read("holding", 0, 10, 1) for _ in range(3)] == [list(range(1000, 1010))] * 3
    finally:
        stop.set()
        answering.join(5)
        link.close()
        line.close()
