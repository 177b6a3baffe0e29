"""Tell each gateway what the store holds of its readings (contract/acknowledgement.py).

After a batch is in the store, the collector publishes, for every gateway in it, the
seqs of the gateway's current epoch that the store holds above the gateway's floor,
retained, on ``jcm/v1/<site>/<gateway>/ack/<client id>``. It listens to every
acknowledgement (its own retained one from before a restart, and those of the other
collectors of its share group) and to the gateways' status (epoch and floor), so that
what it publishes is the union, contiguous and small, pruned below the floor. Each
claim is a :class:`~collector.claim.Claim`: the holes between the collectors' seqs
cost a bit each, not a range each. Of a gateway that lists the collectors it takes
acknowledgements from (``outbox.acknowledged_by``: in its status, and in our copy of its
site file when that lists any), only those collectors' claims are merged: a claim of another (a staging
collector with a store of its own) published again as ours would delete readings our store
does not hold. Until the gateway's status says whom it lists (retained acknowledgements come
before it, and our copy of its site file may be older), the other collectors' claims are held
aside, not merged; a status whose list lost a member since the last one, or that no longer lists a
collector whose claim was merged, starts our claims afresh if any other's is merged (ours can no
longer be told from the dropped collector's, which a listed peer may have merged into its own), and
the gateway sends the rest again. Our own retained acknowledgement from before a restart may hold
such merged claims too: it is taken back only when the status says the gateway lists no collectors,
and then counts as carrying any collector's claim (a list in a later status starts ours afresh).
Each acknowledgement we publish echoes the ``run`` of the gateway's status we built it under; of a
gateway whose status carries a run, only acknowledgements echoing that run are merged, so a claim
merged under an older list is not published again under the new run (contract/acknowledgement.py,
"Shortened list").

It has its own MQTT connection (a clean session: what it needs is retained), so the
readings' session, with its manual acknowledgements, is untouched.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Collection, Iterable, Mapping

from collector.claim import MAX_KEPT_RANGES, WINDOW, Claim
from contract import topics
from contract.acknowledgement import Ack, is_run
from contract.config import CollectorConfig
from contract.config.site import COLLECTOR_ID_PATTERN, MAX_ACKNOWLEDGED_BY
from contract.message import EPOCH_PATTERN, MAX_SEQ, Reading
from contract.mqtt_connection import BrokerConnection

log = logging.getLogger(__name__)

_EPOCH = re.compile(EPOCH_PATTERN)
_COLLECTOR_ID = re.compile(COLLECTOR_ID_PATTERN)
#: epochs kept per gateway until its status says which is current (readings may come before it)
MAX_EPOCHS = 4
#: other collectors whose claims are held per gateway until its status, or remembered as merged:
#: beyond that, the first ones only are held, and any list in a status starts the claims afresh
MAX_OTHERS = 64


class _Gateway:
    __slots__ = ("name", "current", "run", "floor", "epochs", "forgetting", "listed", "said", "trusted", "held",
                 "merged")

    def __init__(self, name: str, listed: frozenset[str] | None):
        self.name = name
        self.listed = listed  # the collectors our copy of its site file lists; None: any
        self.said: frozenset[str] | None = None  # the collectors its last status listed; None: any (or no list)
        self.trusted = listed  # the collectors whose claims count: those its status lists, else ``listed``
        self.forgetting = False  # whether a claim of it has no room for more ranges (logged once)
        self.current: str | None = None  # the epoch the gateway last announced in its status
        self.run: str | None = None  # the run that status carries (None: a gateway from before runs)
        self.floor = 1  # of the current epoch
        self.epochs: dict[str, Claim] = {}  # epoch -> what the store holds of it
        self.held: dict[str, Ack] = {}  # collector -> its latest acknowledgement, until the first status
        #: the other collectors whose claims ``epochs`` holds; None: not known (more than MAX_OTHERS, or our own
        #: acknowledgement from before a restart is merged)
        self.merged: set[str] | None = set()


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
    def __init__(self, config: CollectorConfig, gateways: Iterable[tuple[str, str]],
                 acknowledged_by: Mapping[tuple[str, str], Collection[str]] | None = None):
        """``acknowledged_by``: (site, gateway) -> the collectors its site file lists; a gateway not in it
        takes any collector's acknowledgements."""
        self.collector_id = config.client_id
        self.max_payload_bytes = config.max_payload_bytes
        listed = {key: frozenset(ids) for key, ids in (acknowledged_by or {}).items()}
        # (site, gateway): only those of the site files
        self._gateways = {g: _Gateway(g[1], listed.get(g)) for g in gateways}
        ignored = sorted(f"{site}/{gateway}" for (site, gateway), ids in listed.items()
                         if (site, gateway) in self._gateways and self.collector_id not in ids)
        if ignored:
            log.warning("acknowledgements: collector %s is not in outbox.acknowledged_by of %s: those gateways "
                        "delete nothing on its acknowledgements, and send again what only its store holds",
                        self.collector_id, ", ".join(ignored))
        self._lock = threading.Lock()
        self.connection = BrokerConnection(
            config.broker, f"{config.client_id}-ack", "collector: acknowledgements", mqtt5=config.protocol == "5",
            subscriptions=[(topics.ALL_ACKS, 1), (topics.ALL_STATUS, 1)])
        self.client = self.connection.client
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._refusal_logged = False
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
                    claim = self._claim(g, epoch)
                    if claim is not None:
                        claim.add_seqs(numbers)
                        self._forgetting(g, epoch, claim)
                # the epoch the gateway announced; before it has, the one of its latest reading
                epoch = g.current if g.current in g.epochs else epoch
                if g.epochs.get(epoch):
                    acks.append((key, g.epochs[epoch].ack(epoch, g.run)))
        # outside the lock, which paho's thread takes for incoming acknowledgements
        for key, ack in acks:
            self._publish(key, ack)

    @staticmethod
    def _claim(g: _Gateway, epoch: str) -> Claim | None:
        """What the store holds of ``epoch`` of the gateway; None for an epoch it has left."""
        if g.current is not None and epoch != g.current:
            return None  # no outbox holds its rows any more
        claim = g.epochs.get(epoch)
        if claim is None:
            if len(g.epochs) >= MAX_EPOCHS:
                del g.epochs[next(iter(g.epochs))]
            claim = g.epochs[epoch] = Claim(g.floor if epoch == g.current else 1)
        return claim

    @staticmethod
    def _forgetting(g: _Gateway, epoch: str, claim: Claim) -> None:
        if claim.full is not None and not g.forgetting:
            log.warning("acknowledgements: gateway %s epoch %s: more than %d seq ranges stored beyond the %d seqs "
                        "kept as bits from seq %d (the lowest not stored yet); seqs above %d are not acknowledged "
                        "until the gateway's floor rises, and it sends them again after its confirm timeout (a live "
                        "lane far ahead of its backlog, a drain outrunning the floor, or a gateway scattering its "
                        "seqs)", g.name, epoch, MAX_KEPT_RANGES, WINDOW, claim.edge, claim.full)
        g.forgetting = claim.full is not None  # logged once until there is room again

    def _publish(self, key: tuple[str, str], ack: Ack) -> None:
        if not self.connection.connected.is_set():
            return  # once connected again, the next batch says it all (the state is cumulative)
        topic, payload = topics.ack(*key, self.collector_id), ack.to_json().encode()
        self._sent[topic] = payload
        self.client.publish(topic, payload, qos=1, retain=True)
        self.published += 1

    # paho's thread: tiny and never raising
    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # an MQTT 5 broker says why it refused; a 3.1.1 one drops the message without a word
        if reason_code.is_failure and not self._refusal_logged:
            self._refusal_logged = True  # once: every later acknowledgement would be refused the same way
            log.error("acknowledgements: the broker refused one of ours (%s): gateways confirm nothing this collector "
                      "stores and send it all again. Is this collector's MQTT user the one whose ACL section writes "
                      "jcm/v1/+/+/ack/%s (README \"Per-collector users\")?", reason_code, self.collector_id)

    def _on_message(self, client, userdata, msg):
        try:
            topic = msg._topic.decode("utf-8", "replace")
            if topic.endswith("/status"):
                self._status(topics.parse_status(topic), msg.payload)
            elif self._sent.get(topic) == msg.payload:
                return  # ours, made from what we hold: nothing to fold in (one a batch)
            else:
                site, gateway, collector = topics.parse_ack(topic)
                g = self._gateways.get((site, gateway))
                ours = collector == self.collector_id
                # ours retained from before (a restart): it may carry the claims of a collector merged then,
                # which the gateway may list no more; no one can tell them from ours, so with a list it is
                # not merged (the gateway sends again what it has not seen confirmed)
                before = ours and msg.retain
                if g is None or (g.current is not None and g.trusted is not None and collector not in g.trusted
                                 and not ours) or (before and g.current is not None and g.trusted is not None):
                    return  # not a store the gateway's readings may be confirmed by
                ack = Ack.from_json(msg.payload)
                with self._lock:
                    if g.current is None and (not ours or before):
                        # whom the gateway lists is not known before its status: its own list may differ from
                        # our copy of its site file
                        if collector in g.held or len(g.held) < MAX_OTHERS:
                            g.held[collector] = ack
                        return
                    self._merge(g, collector, ack, before)
        except ValueError as exc:
            log.debug("ignored %r: %s", msg._topic[:120], exc)
        except Exception:
            log.exception("acknowledgements: could not take a message in")

    def _merge(self, g: _Gateway, collector: str, ack: Ack, before: bool) -> None:
        """Fold ``collector``'s claim into ours; ``before``: it is our own retained one from before a restart."""
        if g.run is not None and ack.run != g.run:
            return  # built under another run's status, maybe with claims merged under a longer list
        claim = self._claim(g, ack.epoch)
        if claim is None:
            return
        claim.add_ranges(ack.ranges)
        claim.add_bits(ack.bits_from, ack.bitmask())
        self._forgetting(g, ack.epoch, claim)
        if before:
            g.merged = None  # ours from before a restart, taken back under no list: it may carry anyone's claims
        elif collector != self.collector_id and g.merged is not None:
            g.merged.add(collector)
            if len(g.merged) > MAX_OTHERS:
                g.merged = None

    def _status(self, key: tuple[str, str], payload: bytes) -> None:
        if len(payload) > topics.MAX_STATUS_BYTES:
            raise ValueError("status too large")
        body = json.loads(payload)
        epoch, floor = (body.get("epoch"), body.get("floor")) if isinstance(body, dict) else (None, None)
        if not (isinstance(epoch, str) and _EPOCH.match(epoch) and type(floor) is int and 1 <= floor <= MAX_SEQ):
            return  # a last will, or a gateway from before epochs: nothing to learn
        with self._lock:
            g = self._gateways.get(key)
            if g is None:
                return
            if epoch != g.current:
                g.merged = set()  # the claims of another epoch are dropped below
            heard, before = g.current is not None, g.said
            g.current, g.floor = epoch, floor
            g.run = body.get("run") if is_run(body.get("run")) else None
            listed = body.get("acknowledged_by")
            if isinstance(listed, list) and 0 < len(listed) <= MAX_ACKNOWLEDGED_BY and all(
                    isinstance(c, str) and _COLLECTOR_ID.fullmatch(c) for c in listed):
                g.said = frozenset(listed)
                # what the gateway acts on, even where our copy of its site file is older; but never more than
                # that copy lists: the site's password can publish a status naming any collector (merging
                # less only leaves a listed peer's rows to its own acknowledgement)
                g.trusted = g.said if g.listed is None else g.listed.intersection(g.said)
            else:
                g.said, g.trusted = None, g.listed
            # a list that lost a member: a listed peer's claim merged into ours may have carried the dropped
            # one's (merged by the peer under the longer list), so every merged claim goes, not only the dropped
            # collector's own. The gateway's list is compared, not the collectors we trust: a member our copy of
            # its site file never listed may have been in a peer's copy, and so in the peer's claim
            shortened = heard and g.said is not None and (before is None or not before <= g.said)
            if g.trusted is not None and (g.merged is None or not g.merged <= g.trusted or (shortened and g.merged)):
                gone = None if before is None or g.merged is None else (before | g.merged) - (g.said or g.trusted)
                log.warning("acknowledgements: gateway %s no longer lists %s, whose claims may be merged into ours: "
                            "ours start afresh (the gateway sends again what it has not seen confirmed)", g.name,
                            ", ".join(sorted(gone)) if gone else "some of the collectors")
                g.epochs, g.merged = {}, set()
            claim = g.epochs.get(epoch) or Claim(floor)
            claim.prune(floor)
            g.epochs = {epoch: claim}
            held, g.held = g.held, {}
            for collector, ack in held.items():
                if g.trusted is None or (collector in g.trusted and collector != self.collector_id):
                    self._merge(g, collector, ack, collector == self.collector_id)  # ours is held only if retained
