"""The gateway against Modbus servers that break the protocol, over real sockets: each
answer is scripted byte by byte, so that a test can send what no sane server sends."""

import socket
import struct
import threading
import time

import pytest

from contract.message import DeviceStatus, Quality
from gateway.device_poller import DevicePoller
from gateway.modbus_link import ModbusLink
from tests.conftest import free_port, load_site, tcp_device, write_site


#: what ``answer`` returns to reset the connection (RST) instead of answering
RESET = b"RST"


class ScriptedServer:
    """A Modbus TCP server that answers each read request with ``answer(tid, unit, fc, address,
    count)``: the bytes to send, None to stay silent, or ``RESET``."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while len(buf) >= 12:  # MBAP header, function code, address, count
                    tid, _, _, unit, fc, address, count = struct.unpack(">HHHBBHH", buf[:12])
                    buf = buf[12:]
                    self.requests += 1
                    out = self.answer(tid, unit, fc, address, count)
                    if out is RESET:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if out:
                        conn.sendall(out)

    def close(self):
        self.sock.close()
        for c in self.clients:
            c.close()


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def registers(fc: int, values: list[int]) -> bytes:
    body = b"".join(struct.pack(">H", v) for v in values)
    return bytes([fc, len(body)]) + body


@pytest.fixture
def scripted(tmp_path):
    servers = []

    def start(answer, profile="power_meter_3ph", kind="power_meter"):
        server = ScriptedServer(answer)
        servers.append(server)
        site = load_site(write_site(tmp_path, [tcp_device("m", profile, server.port, kind=kind)]))
        device = site.device("m")
        return server, DevicePoller(site, device, ModbusLink(device.connection))

    yield start
    for s in servers:
        s.close()


# what a broken server sends for a read of ``count`` registers at function ``fc``
MISFIT_ANSWERS = {
    "one register short": lambda fc, count: registers(fc, [0x4248] * (count - 1)),
    "two registers short": lambda fc, count: registers(fc, [0x4248] * (count - 2)),
    "two registers too many": lambda fc, count: registers(fc, [0x4248] * (count + 2)),
    "no registers": lambda fc, count: registers(fc, []),
    "another function's answer": lambda fc, count: registers(4 if fc == 3 else 3, [0x4248] * count),
    "another function's exception": lambda fc, count: bytes([(4 if fc == 3 else 3) | 0x80, 2]),
}


@pytest.mark.parametrize("misfit", MISFIT_ANSWERS)
def test_an_answer_that_does_not_fit_its_request_is_a_named_device_error(scripted, misfit):
    """pymodbus takes the registers an answer carries, whatever was asked: a short answer
    made the decoder raise (the whole poll lost, a traceback a poll) or, two registers short,
    dropped the last channels of the read from the reading without a word."""
    server, poller = scripted(lambda tid, unit, fc, address, count: frame(tid, unit, MISFIT_ANSWERS[misfit](fc, count)))
    reading = poller.poll()
    channels = {p.channel for p in poller.profile.points}
    assert set(reading.values) == channels  # every channel is reported, none silently left out
    assert all(v is None for v in reading.values.values()), reading.values
    assert reading.quality == dict.fromkeys(channels, Quality.device_error)
    assert reading.status is DeviceStatus.offline
    assert server.requests == poller.requests_per_poll  # each request asked once, none split


def test_coils_answered_short_are_a_named_device_error(scripted):
    """A bit read answered with fewer bytes than the bits asked for need."""
    def answer(tid, unit, fc, address, count):
        if fc in (1, 2):
            return frame(tid, unit, bytes([fc, 0]))
        return frame(tid, unit, registers(fc, [0] * count))

    _, poller = scripted(answer, profile="transformer_monitor", kind="transformer_monitor")
    reading = poller.poll()
    bits = {p.channel for p in poller.profile.points if p.table in ("coil", "discrete")}
    assert bits and {c: reading.quality.get(c) for c in bits} == dict.fromkeys(bits, Quality.device_error)
    assert reading.status is DeviceStatus.degraded


@pytest.mark.parametrize("code", [10, 11])
def test_a_device_silent_behind_a_modbus_gateway_is_backed_off_like_a_timeout(scripted, code):
    """A TCP-to-RS-485 gateway answers exception 10 or 11 for a device that did not answer it,
    after waiting its own timeout on the bus. Taken as a device error, the dead device was
    asked every request of every poll, each holding the shared endpoint for that wait."""
    server, poller = scripted(lambda tid, unit, fc, address, count: frame(tid, unit, bytes([fc | 0x80, code])))
    assert poller.requests_per_poll > 1
    reading = poller.poll()
    assert set(reading.quality.values()) == {Quality.timeout}
    assert reading.status is DeviceStatus.offline
    assert server.requests == 1  # the rest of the poll is not asked of a device that does not answer
    assert poller.poll() is None  # backed off
    assert server.requests == 1


def test_an_overloaded_endpoint_does_not_starve_another(tmp_path, mosquitto, simulate):
    """Eight meters behind one slow Modbus gateway (0.1 s an answer) are due faster than it
    answers. Their polls wait for the endpoint's lock; on the shared pool of threads they took
    every thread, and the meter on another endpoint was polled a few times instead of ~15."""
    from gateway.service import Gateway

    def slow(tid, unit, fc, address, count):
        time.sleep(0.1)
        return frame(tid, unit, registers(fc, [0] * count))

    server = ScriptedServer(slow)
    try:
        path = write_site(tmp_path, [tcp_device(f"slow{u}", "power_meter_3ph", server.port, unit_id=u, interval=0.2)
                                     for u in range(1, 9)] + [tcp_device("fast", "power_meter_3ph", free_port(), interval=0.2)],
                          outbox={"confirmed_by": "broker"})
        site = load_site(path)
        sim = simulate(site.model_copy(update={"devices": [site.device("fast")]}))  # the slow ones are scripted
        gw = Gateway(site, broker_url=mosquitto.url, outbox_path=str(tmp_path / "o.sqlite"))
        gw.start()
        time.sleep(3)
        gw.stop()
    finally:
        server.close()
    fast = next(p for p in gw.pollers if p.device.id == "fast")
    # 3 s at 0.2 s is 15 polls
    assert sim.devices["fast"].requests >= 12 * fast.requests_per_poll


def test_a_connection_reset_instead_of_an_answer_is_a_named_disconnection(scripted):
    """pymodbus lets a reset met while reading the answer out as ConnectionResetError: the poll
    raised, and the gateway logged a traceback and made no reading of it."""
    def reset_after_a_moment(tid, unit, fc, address, count):
        time.sleep(0.05)
        return RESET

    _, poller = scripted(reset_after_a_moment)
    for _ in range(3):
        poller.retry_at = 0.0  # each poll, not the backoff, is what is tested
        reading = poller.poll()
        assert set(reading.quality.values()) == {Quality.disconnected}
        assert reading.status is DeviceStatus.offline
