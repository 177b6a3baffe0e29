"""Deliver the outbox over MQTT, QoS 1, deleting a row only on its PUBACK.

Two lanes share one connection: *live* readings (polled since the connection came
up) go out at once, the *backlog* (what piled up while the broker was away) oldest
first at a bounded rate, so a site returning after days offline neither floods the
broker nor delays its live values. Each lane keeps sequence order. At most
``window`` messages are unacknowledged at a time; paho re-sends them itself after
a reconnect, and nothing is handed to paho while disconnected, so its memory stays
bounded however long the outage.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import datetime as dt

from contract import topics
from contract.config.site import Site
from contract.message import format_ts
from contract.mqtt_connection import BrokerConnection
from gateway.outbox import Outbox

log = logging.getLogger(__name__)


def status_payload(site: Site, state: str, **extra) -> str:
    body = {"schema": 1, "site": site.site, "gateway": site.gateway, "state": state,
            "ts": format_ts(dt.datetime.now(dt.UTC)), **extra}
    return json.dumps(body, separators=(",", ":"))


class Publisher:
    def __init__(self, site: Site, outbox: Outbox, broker_url: str | None = None,
                 window: int = 100, status_every: float = 30.0):
        self.site, self.outbox, self.window = site, outbox, window
        self.backlog_rate = site.outbox.backlog_rate
        self.status_every = status_every
        self.status_topic = topics.gateway_status(site.site, site.gateway)
        mq = site.mqtt
        if broker_url is not None:
            mq = mq.model_copy(update={"url": broker_url})
            type(mq).model_validate(mq.model_dump())  # same validation as the file
        self.mqtt_config = mq
        self.connection = BrokerConnection(mq, f"jcm-{site.gateway}", f"site {site.site}: mqtt",
                                           reconnect_delay=(1, 60), on_connect=self._on_connect,
                                           on_disconnect=self._on_disconnect)
        self.client = self.connection.client
        self.client.max_inflight_messages_set(window)
        self.client.will_set(self.status_topic, status_payload(site, "offline"), qos=1, retain=True)
        self.client.on_publish = self._on_publish
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._boundary = self.outbox.last_seq()  # rows up to here are backlog
        self._live_cursor = self._boundary
        self._backlog_cursor = 0
        self.published = 0
        self.acknowledged = 0
        self._said: tuple[int, int, str | None] = (0, 0, None)  # outbox health in the last status

    # paho callbacks: tiny and never raising (an exception stops paho's network thread)
    def _on_connect(self, session_present: bool) -> None:
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self) -> None:
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._acks.put(mid)
        self._wake.set()

    def start(self) -> None:
        self.connection.start()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A new row is in the outbox."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered in ``timeout`` (the rest stays in the outbox), say offline, disconnect."""
        deadline = time.monotonic() + timeout
        while (self.outbox.depth or self._inflight) and time.monotonic() < deadline and self._connected.is_set():
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._take_acks()
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, status_payload(self.site, "offline"), qos=1, retain=True)
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        was_connected = False
        tokens, last = 0.0, time.monotonic()
        next_status = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.2)
            self._wake.clear()
            try:
                self._take_acks()
                if not self._connected.is_set():
                    was_connected = False
                    continue
                if not was_connected:
                    was_connected = True
                    # everything stored before this moment and not in paho's hands is backlog
                    self._boundary = self.outbox.last_seq()
                    self._live_cursor = max(self._live_cursor, self._boundary)
                    self._backlog_cursor = 0
                    self._publish_status()
                    next_status = time.monotonic() + self.status_every
                now = time.monotonic()
                tokens = min(self.backlog_rate, tokens + (now - last) * self.backlog_rate)
                last = now
                self._send_live()
                tokens -= self._send_backlog(int(tokens))
                if now >= next_status or self._status_changed():
                    self._publish_status()
                    next_status = now + self.status_every
            except Exception:  # never let the delivery thread die
                log.exception("publisher loop error; continuing")
                time.sleep(1)

    def _room(self) -> int:
        return self.window - len(self._inflight)

    def _send(self, rows) -> int:
        for seq, topic, payload in rows:
            # if the link just dropped, paho queues the message (MQTT_ERR_NO_CONN) and
            # sends it on reconnect under the same mid: it stays tracked either way
            info = self.client.publish(topic, payload, qos=1)
            self._inflight[info.mid] = seq
            self.published += 1
        return len(rows)

    def _send_live(self) -> None:
        room = self._room()
        if room > 0:
            rows = self.outbox.after(self._live_cursor, room)
            if rows:
                self._live_cursor = rows[-1][0]
                self._send(rows)

    def _send_backlog(self, budget: int) -> int:
        room = min(self._room(), budget)
        if room <= 0 or self._backlog_cursor >= self._boundary:
            return 0
        in_paho = set(self._inflight.values())
        rows = [r for r in self.outbox.after(self._backlog_cursor, room + len(in_paho), upto=self._boundary)
                if r[0] not in in_paho][:room]
        if not rows:
            self._backlog_cursor = self._boundary
            log.info("gateway %s: backlog delivered", self.site.gateway)
            return 0
        self._backlog_cursor = rows[-1][0]
        return self._send(rows)

    def _take_acks(self) -> None:
        done = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                done.append(seq)
        if done:
            self.outbox.delete(done)
            self.acknowledged += len(done)

    def _outbox_health(self) -> tuple[int, int, str | None]:
        return self.outbox.unsaved, self.outbox.dropped, self.outbox.error

    def _status_changed(self) -> bool:
        """Readings held unsaved or dropped, or the disk writing again: say so at once, not at the next period."""
        unsaved, dropped, _ = self._outbox_health()
        return (unsaved > 0, dropped) != (self._said[0] > 0, self._said[1])

    def _publish_status(self) -> None:
        self._said = self._outbox_health()
        unsaved, dropped, error = self._said
        body = status_payload(self.site, "online", outbox_depth=self.outbox.depth, outbox_dropped=dropped,
                              outbox_unsaved=unsaved, outbox_error=error)
        self.client.publish(self.status_topic, body, qos=1, retain=True)
