"""One Modbus client per endpoint: a TCP host:port or an RS-485 serial port.

pymodbus serialises requests per client, so every device behind one endpoint shares
its client and its lock, while different endpoints are polled in parallel. Errors
come back as two exceptions the poller can act on: the device answered, but not with
the values asked for (``DeviceRejected``: an exception code, or an answer that does not
fit the request), or it did not answer at all (``LinkDown``).
"""

from __future__ import annotations

import logging
import threading
import time

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ModbusPDU

from contract.config.site import RtuConnection, TcpConnection
from contract.message import Quality

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS_CODES = {2, 3}  # illegal data address, illegal data value
#: a Modbus gateway (TCP to a serial bus) answers these when the device behind it did not:
#: gateway path unavailable, gateway target device failed to respond
NO_ANSWER_CODES = {10, 11}
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class DeviceRejected(Exception):
    """The device answered, but not with the values asked for: an exception response
    (``code``), or an answer that does not fit the request (``code`` None)."""

    def __init__(self, code: int | None, detail: str = ""):
        super().__init__(detail or f"exception response code {code}")
        self.code = code

    @property
    def quality(self) -> Quality:
        return Quality.illegal_address if self.code in ILLEGAL_ADDRESS_CODES else Quality.device_error


class LinkDown(Exception):
    """No answer: timeout, refused connection or a dropped link."""

    def __init__(self, quality: Quality, detail: str):
        super().__init__(detail)
        self.quality = quality


class HuntingFramerRTU(FramerRTU):
    """pymodbus's RTU framer, hunting for the answer past noise on the line.

    pymodbus takes the first byte that could start a frame for its start and, its CRC
    wrong, throws away everything read: one glitch byte before an answer (an RS-485 driver
    turning on) made every read of the device time out. Here each offset is tried in turn,
    and the first whole frame with a right CRC is taken; what follows it stays for the next
    look, so that a frame of another unit (a late answer on a shared bus) does not take the
    answer after it with it.

    Hunting stops at the start of the answer awaited (``awaiting``: the request's unit,
    function code and byte count) while it is not whole yet: the values inside an answer
    still arriving may hold bytes that form a frame with a right CRC (an exception answer,
    say), and taken for the answer they named a fault the device did not have. Offsets that
    can no longer start a frame are dropped, so a long burst of noise costs each new byte
    one look, not one per byte read before it."""

    _awaited = b""
    _echo = b""

    def awaiting(self, request: ModbusPDU) -> None:
        """The answer to ``request`` is the one to wait for."""
        count = getattr(request, "count", 0)
        byte_count = (count + 7) // 8 if request.function_code in (1, 2) else 2 * count
        self._awaited = bytes([request.dev_id, request.function_code, byte_count & 0xFF])
        # a two-wire RS-485 adapter may hear the request it sends; some requests (coils at
        # 0x0300-0x03FF, 17 to 24 of them) read as an answer with a right CRC
        self._echo = self.buildFrame(request)

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        undecided = max(0, len(data) - self.MIN_SIZE + 1)  # the first offset that may still start a frame
        for start in range(len(data) - self.MIN_SIZE + 1):
            try:
                pdu_class = self.decoder.lookupPduClass(data[start:])
                size = pdu_class.calculateRtuFrameSize(data[start:]) if pdu_class else None
            except ModbusException:  # a function code whose frames have no known size: not a start
                continue
            if size is None or size > self.MAX_SIZE:  # longer than any RTU frame (256 bytes): not a start
                continue
            end = start + size
            if not size or end > len(data):  # not whole yet
                undecided = min(undecided, start)
                if data[start:start + 3] == self._awaited:
                    break
                continue
            if data[start:end] == self._echo:
                continue
            if self.check_CRC(data[start:end - 2], int.from_bytes(data[end - 2:end], "big")):
                return end, data[start], 0, data[start + 1:end - 2]
        return undecided, 0, 0, self.EMPTY


class SerialClient(ModbusSerialClient):
    """pymodbus's serial client, with ``HuntingFramerRTU`` and its wait for an answer timed
    on the monotonic clock.

    pymodbus times it on the wall clock: NTP setting the clock back while the gateway waited
    for a silent device held the bus, and every device behind it, for as long as the step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.framer = self.transaction.framer = HuntingFramerRTU(self.framer.decoder)

    def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        self.framer.awaiting(request)
        return super().execute(no_response_expected, request)

    def _wait_for_data(self) -> int:
        # pymodbus 3.16.1's loop (pinned), with time.monotonic for time.time
        size, more_data = 0, False
        deadline = time.monotonic() + self.comm_params.timeout_connect
        while time.monotonic() <= deadline:
            available = self._in_waiting()
            if more_data and available in (0, size):  # the answer stopped growing
                break
            if available and available != size:
                more_data, size = True, available
            time.sleep(self._recv_interval)
        return size


class ModbusLink:
    def __init__(self, connection: TcpConnection | RtuConnection):
        self.endpoint = connection.endpoint
        self.lock = threading.Lock()
        if isinstance(connection, TcpConnection):
            self.client = ModbusTcpClient(
                connection.host, port=connection.port, timeout=connection.timeout, retries=0
            )
        else:
            self.client = SerialClient(
                connection.port, baudrate=connection.baudrate, parity=connection.parity,
                stopbits=connection.stopbits, bytesize=connection.bytesize,
                timeout=connection.timeout, retries=0,
            )

    def read(self, table: str, address: int, count: int, unit_id: int) -> list[int] | list[bool]:
        """One read request; raise ``DeviceRejected`` or ``LinkDown``."""
        with self.lock:
            if not self.client.connected and not self.client.connect():
                raise LinkDown(Quality.disconnected, f"cannot connect to {self.endpoint}")
            try:
                if table == "holding":
                    rr = self.client.read_holding_registers(address, count=count, device_id=unit_id)
                elif table == "input":
                    rr = self.client.read_input_registers(address, count=count, device_id=unit_id)
                elif table == "coil":
                    rr = self.client.read_coils(address, count=count, device_id=unit_id)
                else:
                    rr = self.client.read_discrete_inputs(address, count=count, device_id=unit_id)
            except ConnectionException as exc:
                self.client.close()
                raise LinkDown(Quality.disconnected, f"{self.endpoint}: {exc}") from None
            except ModbusIOException as exc:
                # a late answer could be taken for the next request's: start afresh
                self.client.close()
                raise LinkDown(Quality.timeout, f"{self.endpoint} unit {unit_id}: {exc}") from None
            except ModbusException as exc:
                self.client.close()
                raise LinkDown(Quality.disconnected, f"{self.endpoint} unit {unit_id}: {exc}") from None
            except OSError as exc:  # pymodbus lets a reset met while reading the answer out as it is
                self.client.close()
                raise LinkDown(Quality.disconnected, f"{self.endpoint} unit {unit_id}: {exc}") from None
            if rr.function_code == FUNCTION_CODES[table] | 0x80:  # an exception answer to this request
                code = getattr(rr, "exception_code", 4)
                if code in NO_ANSWER_CODES:  # no answer, as a timeout: the device is backed off
                    raise LinkDown(Quality.timeout, f"{self.endpoint} unit {unit_id}: no answer from the device "
                                                    f"behind this Modbus gateway (exception code {code})")
                raise DeviceRejected(code)
            bits = table in ("coil", "discrete")
            got = len(rr.bits) if bits else len(rr.registers)
            # bits come in whole bytes; registers exactly as asked: pymodbus checks neither
            expected = -(-count // 8) * 8 if bits else count
            if rr.function_code != FUNCTION_CODES[table] or got != expected:
                # not the answer to this request (decoded, it would shift or drop values): start afresh
                self.client.close()
                raise DeviceRejected(None, f"an answer that does not fit the request: function {rr.function_code} "
                                           f"with {got} {'bits' if bits else 'registers'} for function "
                                           f"{FUNCTION_CODES[table]} of {count} at {address}")
            return rr.bits[:count] if bits else rr.registers

    def close(self) -> None:
        with self.lock:
            self.client.close()
