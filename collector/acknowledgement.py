"""Tell each gateway what the store holds of its readings (contract/acknowledgement.py).

After a batch is in the store, the collector publishes, for every gateway in it, the
seq ranges of the gateway's current epoch that the store holds above the gateway's
floor, retained, on ``jcm/v1/<site>/<gateway>/ack/<client id>``. It listens to every
acknowledgement (its own retained one from before a restart, and those of the other
collectors of its share group) and to the gateways' status (epoch and floor), so that
what it publishes is the union, contiguous and small, pruned below the floor.

It has its own MQTT connection (a clean session: what it needs is retained), so the
readings' session, with its manual acknowledgements, is untouched.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable

from contract import acknowledgement, topics
from contract.acknowledgement import Ack, MAX_RANGES, Ranges
from contract.config import CollectorConfig
from contract.message import EPOCH_PATTERN, MAX_SEQ, Reading
from contract.mqtt_connection import BrokerConnection

log = logging.getLogger(__name__)

_EPOCH = re.compile(EPOCH_PATTERN)
#: a gateway's status is a few hundred bytes
MAX_STATUS_BYTES = 4096
#: ranges kept per gateway and epoch; the lowest MAX_RANGES are published, those above wait for the floor
MAX_KEPT_RANGES = 4 * MAX_RANGES
#: epochs kept per gateway until its status says which is current (readings may come before it)
MAX_EPOCHS = 4


class _Gateway:
    __slots__ = ("name", "current", "floor", "epochs", "forgetting")

    def __init__(self, name: str):
        self.name = name
        self.forgetting = False  # whether it holds more than MAX_KEPT_RANGES ranges (logged once)
        self.current: str | None = None  # the epoch the gateway last announced in its status
        self.floor = 1  # of the current epoch
        self.epochs: dict[str, Ranges] = {}  # epoch -> seq ranges the store holds


def sequence_of(payload: bytes, limit: int) -> tuple[str, int] | None:
    """(epoch, seq) of a message that is not a valid reading, when it names them."""
    if len(payload) > limit:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    epoch, seq = body.get("epoch"), body.get("seq")
    if isinstance(epoch, str) and _EPOCH.match(epoch) and type(seq) is int and 1 <= seq <= MAX_SEQ:
        return epoch, seq
    return None


class Acknowledgements:
    def __init__(self, config: CollectorConfig, gateways: Iterable[tuple[str, str]]):
        self.collector_id = config.client_id
        self.max_payload_bytes = config.max_payload_bytes
        self._gateways = {g: _Gateway(g[1]) for g in gateways}  # (site, gateway): only those of the site files
        self._lock = threading.Lock()
        self.connection = BrokerConnection(
            config.broker, f"{config.client_id}-ack", "collector: acknowledgements", mqtt5=config.protocol == "5",
            subscriptions=[(topics.ALL_ACKS, 1), (topics.ALL_STATUS, 1)])
        self.client = self.connection.client
        self.client.on_message = self._on_message
        self.published = 0
        #: topic -> the payload last published there: its echo from the broker tells us nothing new
        self._sent: dict[str, bytes] = {}

    def start(self) -> None:
        self.connection.start()

    def stop(self) -> None:
        self.connection.stop()

    def kept(self, readings: Iterable[Reading], rejected: Iterable[tuple[str, bytes]]) -> None:
        """The store has these readings, and these (topic, payload) messages as dead letters: say so."""
        seqs: dict[tuple[str, str], dict[str, list[int]]] = {}
        for r in readings:
            if r.epoch is not None and r.seq:
                seqs.setdefault((r.site, r.gateway), {}).setdefault(r.epoch, []).append(r.seq)
        for topic, payload in rejected:
            try:
                site, gateway = topics.sender(topic)  # a bad line of a batch is on the batch's topic
            except ValueError:
                continue
            found = sequence_of(payload, self.max_payload_bytes)
            if found:
                seqs.setdefault((site, gateway), {}).setdefault(found[0], []).append(found[1])
        acks = []
        with self._lock:
            for key, by_epoch in seqs.items():
                g = self._gateways.get(key)
                if g is None:
                    continue
                for epoch, numbers in by_epoch.items():
                    self._add(g, epoch, acknowledgement.from_seqs(numbers))
                # the epoch the gateway announced; before it has, the one of its latest reading
                epoch = g.current if g.current in g.epochs else epoch
                if g.epochs.get(epoch):
                    acks.append((key, Ack(epoch, tuple(g.epochs[epoch][:MAX_RANGES]))))
        # outside the lock, which paho's thread takes for incoming acknowledgements
        for key, ack in acks:
            self._publish(key, ack)

    @staticmethod
    def _add(g: _Gateway, epoch: str, ranges: Ranges) -> None:
        """Fold ``ranges`` of ``epoch`` in, pruned below the gateway's floor."""
        if g.current is not None and epoch != g.current:
            return  # an epoch the gateway has left: no outbox holds its rows any more
        if epoch not in g.epochs and len(g.epochs) >= MAX_EPOCHS:
            del g.epochs[next(iter(g.epochs))]
        merged = acknowledgement.merge([*g.epochs.get(epoch, []), *ranges])
        floor = g.floor if epoch == g.current else 1
        if merged and merged[0][0] < floor:  # else nothing to prune (up to a thousand ranges, twice a batch)
            merged = acknowledgement.clip(merged, floor, MAX_SEQ)
        if len(merged) > MAX_KEPT_RANGES and not g.forgetting:
            log.warning("acknowledgements: gateway %s epoch %s holds %d seq ranges above its floor %d; it forgets "
                        "those above seq %d (the gateway resends them after its confirm timeout: a gateway with "
                        "that many holes is broken or hostile)", g.name, epoch, len(merged), floor,
                        merged[MAX_KEPT_RANGES - 1][1])
        g.forgetting = len(merged) > MAX_KEPT_RANGES  # logged once until it holds few enough again
        g.epochs[epoch] = merged[:MAX_KEPT_RANGES]

    def _publish(self, key: tuple[str, str], ack: Ack) -> None:
        if not self.connection.connected.is_set():
            return  # once connected again, the next batch says it all (the state is cumulative)
        topic, payload = topics.ack(*key, self.collector_id), ack.to_json().encode()
        self._sent[topic] = payload
        self.client.publish(topic, payload, qos=1, retain=True)
        self.published += 1

    # paho's thread: tiny and never raising
    def _on_message(self, client, userdata, msg):
        try:
            topic = msg._topic.decode("utf-8", "replace")
            if topic.endswith("/status"):
                self._status(topics.parse_status(topic), msg.payload)
            elif self._sent.get(topic) == msg.payload:
                return  # ours, made from what we hold: nothing to fold in (one a batch)
            else:
                site, gateway, _ = topics.parse_ack(topic)
                ack = Ack.from_json(msg.payload)
                with self._lock:
                    g = self._gateways.get((site, gateway))
                    if g is not None:
                        self._add(g, ack.epoch, list(ack.ranges))
        except ValueError as exc:
            log.debug("ignored %r: %s", msg._topic[:120], exc)
        except Exception:
            log.exception("acknowledgements: could not take a message in")

    def _status(self, key: tuple[str, str], payload: bytes) -> None:
        if len(payload) > MAX_STATUS_BYTES:
            raise ValueError("status too large")
        body = json.loads(payload)
        epoch, floor = (body.get("epoch"), body.get("floor")) if isinstance(body, dict) else (None, None)
        if not (isinstance(epoch, str) and _EPOCH.match(epoch) and type(floor) is int and 1 <= floor <= MAX_SEQ):
            return  # a last will, or a gateway from before epochs: nothing to learn
        with self._lock:
            g = self._gateways.get(key)
            if g is None:
                return
            g.current, g.floor = epoch, floor
            g.epochs = {epoch: acknowledgement.clip(g.epochs.get(epoch, []), floor, MAX_SEQ)}
