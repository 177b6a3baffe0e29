"""The one way every MQTT client of the project (gateway, collector, live view, ``jcm
watch``, the demo) connects to the broker.

Settings come from the ``Mqtt`` model (a site's ``mqtt:`` block, the collector's
``broker:``, or the command line options of the live view and ``jcm watch``):

- ``mqtt://host[:1883]`` is plaintext, ``mqtts://host[:8883]`` is TLS verified against
  ``ca_file`` (the system's CAs without it), with ``cert_file``/``key_file`` as the
  client certificate. ``mqtts://`` never falls back to plaintext, and TLS files with an
  ``mqtt://`` URL are an error rather than silently unused.
- Credentials never appear in a URL or a file: ``username_env``/``password_env`` name
  environment variables. ``user:password@`` in a URL is an error.
- Why the client cannot connect (refused socket, TLS failure, bad password, not
  authorised), why it was disconnected and which subscriptions the broker refused are
  logged with the broker's reason; a failure repeating itself is logged once a minute.
- paho reconnects by itself with the caller's delays; callers get a tiny hook on each
  connection and disconnection, which can never stop paho's network thread.
"""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from contract.config.loader import ConfigError
from contract.config.problems import KeyProblems
from contract.config.site import Mqtt

log = logging.getLogger(__name__)

#: a connection problem that keeps repeating is logged again after this long [s]
REPEAT_LOG_S = 60.0
_TLS_FILES = ("ca_file", "cert_file", "key_file")


def _label(where: str, names: dict[str, str] | None, key: str) -> str:
    """What the user calls a setting: ``site mn-solar: mqtt.ca_file``, or ``--ca-file`` via ``names``."""
    return (names or {}).get(key, f"{where}.{key}")


def checked(settings: Mqtt | str, where: str, names: dict[str, str] | None = None) -> Mqtt:
    """The settings validated by the ``Mqtt`` model, the one place their rules live (also
    for settings built or copied without validation, or given as a bare URL); a problem is
    a ``ConfigError`` naming the setting as the user calls it (``names``: ``{"ca_file":
    "--ca-file"}``, else ``where.key``)."""
    data = {"url": settings} if isinstance(settings, str) else settings.model_dump()
    try:
        return Mqtt.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            error = (e.get("ctx") or {}).get("error")
            found = error.problems if isinstance(error, KeyProblems) else [(e["loc"], e["msg"].removeprefix("Value error, "))]
            for loc, message in found:
                for key, label in (names or {}).items():  # say it as the user calls it: --password-env
                    message = re.sub(rf"\b{key}\b", label, message)
                problems.append(f"{_label(where, names, str(loc[0]) if loc else 'url')}: {message}")
        raise ConfigError("\n".join(problems)) from None


def credentials(settings: Mqtt, where: str, names: dict[str, str] | None = None) -> tuple[str, str | None] | None:
    """(username, password) from the environment variables the settings name, or None."""
    if not settings.username_env:
        return None
    values = []
    for key in ("username_env", "password_env"):
        var = getattr(settings, key)
        value = os.environ.get(var) if var else None
        if var and value is None:
            raise ConfigError(f"{_label(where, names, key)}: environment variable {var} is not set")
        values.append(value)
    return values[0], values[1]


def tls_context(settings: Mqtt, where: str, names: dict[str, str] | None = None) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name (TLS 1.2 or later)."""
    for key in _TLS_FILES:
        path = getattr(settings, key)
        if path and not os.access(path, os.R_OK):
            missing = "" if Path(path).exists() else " (no such file)"
            raise ConfigError(f"{_label(where, names, key)}: cannot read '{path}'{missing}")
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(f"{k}={getattr(settings, k)}" for k in _TLS_FILES if getattr(settings, k))
        raise ConfigError(f"{where}: the TLS files do not load ({files}): {exc}") from None
    return context


_PUBACK = struct.Struct("!BBH")
#: paho's reconnect back-off [s] of the stages that carry readings (gateway, collector): back
#: within 2 s of the broker's return, at one attempt a second and a half at most while it is
#: away (a SYN and its refusal, ~120 bytes)
RECONNECT_DELAY = (0.5, 1.5)
#: how much of the socket one read takes [bytes]
RECV_CHUNK = 65536


class _Received(mqtt.MQTTMessage):
    """A PUBLISH received whole in a chunk (``_Client._publish``): paho's message, but its
    ``info`` (a lock, which only messages sent need) and its MQTT 5 ``properties`` (none:
    a PUBLISH with some is paho's) made only when asked for. Both were a fifth of paho's
    work a message."""

    __slots__ = ("_v5",)

    def __init__(self, mid: int, topic: bytes, qos: int, dup: bool, retain: bool, payload: bytes, v5: bool):
        self.timestamp = mqtt.time_func()
        self.state = mqtt.mqtt_ms_invalid
        self.mid, self._topic, self.qos, self.dup, self.retain = mid, topic, qos, dup, retain
        self.payload = payload
        self._v5 = v5

    @property
    def properties(self) -> Properties | None:
        return Properties(PacketTypes.PUBLISH) if self._v5 else None  # MQTT 3.1.1 has none

    @property
    def info(self) -> mqtt.MQTTMessageInfo:
        return mqtt.MQTTMessageInfo(self.mid)


def _var_int(buf: bytes, pos: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at ``pos`` (at most 4 bytes): (value, position after it),
    or None when ``buf`` ends first or it runs longer."""
    value = shift = 0
    for i in range(pos, min(pos + 4, len(buf))):
        byte = buf[i]
        value |= (byte & 127) << shift
        if not byte & 128:
            return value, i + 1
        shift += 7
    return None


class _Client(mqtt.Client):
    """paho's client, keeping the exception of the last failed connection attempt:
    paho swallows it in its reconnect loop and tells ``on_connect_fail`` nothing.

    It also reads the socket in chunks: paho asks the socket for each packet's first byte,
    each byte of its length, then its body (four system calls a reading), which was a
    third of the collector's receive path. What a chunk holds beyond the packet waits in
    ``_rbuf`` and is handed out before the socket is read again; ``loop_read`` goes on
    while any is left, as ``select`` cannot see it, and meanwhile reads the socket only for
    the packet the chunk ends in: a sender faster than we read would otherwise keep us
    reading (a chunk seldom ends on a packet's end), and the PUBACKs and pings waiting to be
    written would wait with it.

    A packet wholly in the chunk is cut from it at once (``_packet_read``) rather than fed
    to paho a byte at a time, and a QoS 0 or 1 PUBLISH among them goes to ``on_message``
    without paho's decoding (``_publish``): paho's work a message was most of the
    collector's network thread. Anything else, and a packet the chunk holds only part of,
    is paho's."""

    last_error: BaseException | None = None
    _rbuf: bytes = b""
    _rpos: int = 0
    _draining = False

    def reconnect(self):
        self._rbuf, self._rpos = b"", 0  # what the last connection left is not this one's
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(bufsize if self._draining else max(bufsize, RECV_CHUNK))
            if len(data) <= bufsize:
                return data
            self._rbuf, pos = data, 0
        end = pos + bufsize
        self._rpos = end
        return self._rbuf[pos:end]

    def ack_all(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``): their PUBACKs as one write, where
        ``ack`` queues, wakes the network thread for and sends each alone."""
        if mids:
            joined = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids)  # PUBACK, length 2, mid
            self._packet_queue(0x40, joined, 0, 1)

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        buf, pos = self._rbuf, self._rpos
        if self._in_packet["command"] or pos >= len(buf):  # paho has begun a packet, or nothing is read ahead
            return super()._packet_read()
        length = _var_int(buf, pos + 1)
        if length is None or length[1] + length[0] > len(buf):  # not all here (or malformed: paho's to say)
            return super()._packet_read()
        header, (size, start) = buf[pos], length
        self._rpos = end = start + size
        body = buf[start:end]
        rc = self._publish(header, body) if header & 0xF0 == 0x30 else None
        if rc is None:  # as paho's _packet_read hands a whole packet on
            self._in_packet.update(command=header, have_remaining=1, remaining_length=size, packet=body)
            try:
                rc = self._packet_handle()
            except MalformedPacket as exc:
                self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                               "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def _publish(self, header: int, body: bytes) -> mqtt.MQTTErrorCode | None:
        """A PUBLISH of QoS 0 or 1 handed to ``on_message`` as paho's ``_handle_publish`` would;
        None for what paho must handle: QoS 2 (its state), a packet paho would call malformed
        (a QoS of 3 too), MQTT 5 properties (paho refuses the connection for ones it cannot
        read; none of our senders sets any) and topic filters' own callbacks
        (``message_callback_add``, matched by paho)."""
        qos = (header >> 1) & 3
        if qos > 1 or self._on_message_filtered._root._children or len(body) < 2:
            return None
        pos = 2 + (body[0] << 8 | body[1])
        topic = body[2:pos]
        mid = 0
        if qos:
            mid = body[pos] << 8 | body[pos + 1] if pos + 2 <= len(body) else 0
            pos += 2
        v5 = self._protocol == mqtt.MQTTv5
        if v5:
            if pos >= len(body) or body[pos]:  # MQTT 5 properties, or none where their length should be
                return None
            pos += 1
        elif not topic:  # paho: "topic can't be empty in MQTTv3"
            return None
        if pos > len(body) or (qos and not mid):
            return None
        message = _Received(mid, topic, qos, bool(header & 8), bool(header & 1), body[pos:], v5)
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        self._draining = True
        try:
            while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
                rc = super().loop_read(max_packets)
        finally:
            self._draining = False
        return rc


class BrokerConnection:
    """A configured paho client and its logged connection life.

    ``client`` is the paho client: callers set ``on_message``/``on_publish``, publish
    and acknowledge on it. ``on_connect(session_present)`` and ``on_disconnect()`` run
    on paho's thread after each connection and loss; keep them tiny."""

    def __init__(self, settings: Mqtt | str, client_id: str, where: str, *, names: dict[str, str] | None = None,
                 mqtt5: bool = False, persistent: bool = False, session_expiry: int | None = None,
                 receive_maximum: int | None = None, manual_ack: bool = False,
                 subscriptions: Iterable[tuple[str, int]] = (), reconnect_delay: tuple[float, float] = RECONNECT_DELAY,
                 on_connect: Callable[[bool], None] | None = None, on_disconnect: Callable[[], None] | None = None):
        settings = checked(settings, where, names)
        self.settings, self.where, self.names = settings, where, names
        self.mqtt5, self.persistent = mqtt5, persistent
        self.session_expiry, self.receive_maximum = session_expiry, receive_maximum
        self.subscriptions = list(subscriptions)
        self._hooks = (on_connect, on_disconnect)
        if mqtt5:
            self.client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  manual_ack=manual_ack)
        else:  # MQTT 3.1.1 keeps a session with clean_session=False
            self.client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=not persistent, manual_ack=manual_ack)
        login = credentials(settings, where, names)
        if login:
            self.client.username_pw_set(*login)
        if settings.tls:
            self.client.tls_set_context(tls_context(settings, where, names))
        self.client.reconnect_delay_set(*reconnect_delay)
        self.reconnect_delay = reconnect_delay  # [s], each wait drawn from it
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        #: the broker's reason for refusing the last connection attempt, None once connected
        self.refusal: str | None = None
        self._pending_subs: dict[int, list[str]] = {}
        self._problem: tuple[str, float] | None = None  # last logged problem and when
        self._failures = 0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.settings.tls else 'mqtt'}://{self.settings.host}:{self.settings.port}"

    def start(self) -> None:
        """Connect in the background; paho retries until it succeeds or ``stop()``."""
        log.info("%s: connecting to %s", self.where, self.url)
        kwargs = {}
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
            kwargs = {"clean_start": not self.persistent, "properties": props}
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive, **kwargs)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # paho callbacks: never raising (an exception stops paho's network thread)
    def _problem_seen(self, text: str) -> None:
        self._failures += 1
        now = time.monotonic()
        if self._problem is None or self._problem[0] != text or now - self._problem[1] >= REPEAT_LOG_S:
            repeats = f" (attempt {self._failures})" if self._failures > 1 else ""
            log.error("%s: %s%s; retrying", self.where, text, repeats)
            self._problem = (text, now)

    def _next_wait(self) -> None:
        """Draw paho's next reconnect wait from the back-off's range: paho has no jitter, so the
        clients that lost a broker at the same moment (every gateway, when it restarts) would try
        again at the same moments and all come back in the same millisecond."""
        wait = random.uniform(*self.reconnect_delay)
        self.client.reconnect_delay_set(wait, wait)

    def _on_connect_fail(self, client, userdata):
        self._next_wait()
        exc = self.client.last_error
        self._problem_seen(f"cannot connect to {self.url}: {exc or 'connection failed'}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refusal = str(reason_code)
            user = self.settings.username_env
            whose = (f"user from ${user}" if user else
                     f"no credentials given: name them in {_label(self.where, self.names, 'username_env')}")
            self._problem_seen(f"broker {self.url} refused the connection: {reason_code} ({whose})")
            return
        log.info("%s: connected to %s (session %s)", self.where, self.url,
                 "resumed" if flags.session_present else "new")
        self.refusal, self._problem, self._failures = None, None, 0
        self.connected.set()
        self._call(self._hooks[0], bool(flags.session_present))
        if self.subscriptions:
            _, mid = client.subscribe(self.subscriptions)
            self._pending_subs[mid] = [t for t, _ in self.subscriptions]

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        topics = self._pending_subs.pop(mid, [])
        for topic, rc in zip(topics, reason_codes):
            if rc.is_failure:
                log.error("%s: broker %s refused the subscription to %s: %s (check its ACL)",
                          self.where, self.url, topic, rc)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._next_wait()
        if not self.connected.is_set():
            return  # a refused connection, already logged
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("%s: disconnected from %s: %s; reconnecting", self.where, self.url, reason_code)
        else:
            log.info("%s: disconnected from %s", self.where, self.url)
        self._call(self._hooks[1])

    def _call(self, hook, *args) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("%s: connection hook failed", self.where)
