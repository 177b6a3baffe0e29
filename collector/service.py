"""The collector process: MQTT in, store out, acknowledgement last.

paho delivers messages with ``manual_ack=True``; a worker gathers them into batches
(``batch_size`` messages or ``batch_timeout`` seconds, whichever comes first, since
the broker stops sending at its in-flight window), validates each, writes the batch
(readings and dead letters together) and only then sends the PUBACKs. Killed at any
point, the collector loses nothing: the broker redelivers every message it has not
acknowledged, and stored points are idempotent. When the store is down the worker
keeps the batch, retries with backoff and acknowledges nothing meanwhile.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from collector.validation import Rejected, SiteRules, rules_for, validate
from contract import topics
from contract.config import CollectorConfig, load_site
from contract.mqtt_connection import BrokerConnection
from contract.store import DeadLetter, ReadingStore, StoreUnavailable
from store import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    generation: int  # which connection delivered it: a mid is only valid on its own connection
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: dt.datetime


class Collector:
    def __init__(self, config: CollectorConfig, store: ReadingStore | None = None, base_dir: Path = Path(".")):
        self.config = config
        self.store = store or open_store(config.store)
        sites_dir = base_dir / config.sites_dir
        site_files = sorted(glob.glob(str(sites_dir / "*.yaml")))
        self.rules: dict[str, SiteRules] = rules_for([load_site(f) for f in site_files])
        if not self.rules:
            log.warning("no site files in %s: accepting readings of any site", sites_dir)
        self.topic = topics.ALL_READINGS
        if config.share_group:
            self.topic = f"$share/{config.share_group}/{topics.ALL_READINGS}"
        self._queue: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self._generation = 0
        self._stop = threading.Event()
        self.stored = 0
        self.dead = 0
        self.client = self._client()
        self._worker = threading.Thread(target=self._run, name="collector", daemon=True)

    def _client(self) -> mqtt.Client:
        self.v5 = self.config.protocol == "5"
        # a fixed client id and a kept session: the broker holds what we have not acknowledged
        self.connection = BrokerConnection(
            self.config.broker, self.config.client_id, "collector: broker", mqtt5=self.v5, persistent=True,
            session_expiry=self.config.session_expiry, receive_maximum=self.config.receive_maximum,
            manual_ack=True, subscriptions=[(self.topic, 1)], reconnect_delay=(1, 30), on_connect=self._on_connect)
        self.connection.client.on_message = self._on_message
        return self.connection.client

    # paho callbacks: tiny, never raising
    def _on_connect(self, session_present: bool) -> None:
        self._generation += 1

    def _on_message(self, client, userdata, msg):
        self._queue.put(Incoming(self._generation, msg.mid, msg.qos, msg.topic, msg.payload, dt.datetime.now(dt.UTC)))

    def start(self) -> None:
        self.connection.start()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._worker.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()

    # -- the worker ---------------------------------------------------------------
    def _next_batch(self) -> list[Incoming]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.config.batch_timeout
        while len(batch) < self.config.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if batch:
                self._store(batch)

    def _store(self, batch: list[Incoming]) -> None:
        now = dt.datetime.now(dt.UTC)
        future = dt.timedelta(seconds=self.config.max_future_s)
        readings, letters, source = [], [], {}
        for m in batch:
            try:
                r = validate(m.topic, m.payload, self.rules, now, self.config.max_payload_bytes, future)
            except Rejected as exc:
                letters.append(DeadLetter(m.received, m.topic, m.payload, str(exc)))
                continue
            readings.append(r)
            source[id(r)] = m
        pause = 0.5
        while True:
            try:
                refused = self.store.write(readings, letters)
                if refused:  # the store took the rest; keep these aside with its reason
                    self.store.write([], [DeadLetter(source[id(r)].received, source[id(r)].topic,
                                                     source[id(r)].payload, f"store refused it: {why}")
                                          for r, why in refused])
                break
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    log.error("stopping with %d messages unstored: the broker will redeliver them", len(batch))
                    return
                log.error("store unavailable (%s); holding %d messages unacknowledged, retrying in %.1f s",
                          exc, len(batch), pause)
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
        for letter in letters:
            log.warning("dead letter from %s: %s", letter.topic, letter.reason)
        self.stored += len(readings) - len(refused)
        self.dead += len(letters) + len(refused)
        for m in batch:
            if m.generation == self._generation and m.qos > 0:
                self.client.ack(m.mid, m.qos)
