"""Deliver the outbox over MQTT, QoS 1, deleting a row only when the store has it.

Two lanes share one connection: *live* readings (polled since the connection came
up) go out at once, the *backlog* (what piled up while the broker was away) oldest
first at a bounded rate, so a site returning after days offline neither floods the
broker nor delays its live values. Each lane keeps sequence order. Live readings go
alone; the backlog goes in compressed batches (contract/batch.py), a few hundred
readings per MQTT message under the broker's packet limit (signed readings with one
signature per run of their chain, the last line's, which covers the rest), at most
``BATCHES_IN_FLIGHT`` unacknowledged: on a thin link a live reading waits behind at
most that many batches, and the PUBACKs pace the backlog to what the link carries. At
most ``window`` messages are unacknowledged at a time; paho re-sends them itself after
a reconnect, and nothing is handed to paho while disconnected, so its memory stays
bounded however long the outage.

A PUBACK moves a row from *sending* to *sent, awaiting store*; the collectors'
acknowledgements (contract/acknowledgement.py) delete it. Rows awaiting the store
longer than ``outbox.confirm_timeout_s``, and all of them when the connection comes
back, go round the backlog lane again. With ``outbox.confirmed_by: broker`` the PUBACK
deletes the row, as before acknowledgements existed. With ``outbox.acknowledged_by``, only
the listed collectors' acknowledgements count: another collector's (a staging or test one
on the production broker, whose store MRV does not read) deletes nothing, and is counted in
the status and logged, so that an operator sees it.
"""

from __future__ import annotations

import difflib
import json
import logging
import queue
import re
import threading
import time
import datetime as dt

from contract import acknowledgement, batch, topics
from contract.config.site import COLLECTOR_ID_PATTERN, Site
from contract.message import format_ts
from contract.mqtt_connection import BrokerConnection
from contract.text import printable
from gateway.outbox import Outbox

log = logging.getLogger(__name__)

#: backlog batches unacknowledged at a time: two keep the link busy during a PUBACK's round
#: trip, and a live reading waits behind at most two (about 1 s at 1 Mbit/s)
BATCHES_IN_FLIGHT = 2
#: collectors outside ``outbox.acknowledged_by`` named in the status, each with its count; any
#: more are counted together under "*": the status stays small (collectors read it whole only
#: up to ``topics.MAX_STATUS_BYTES``)
MAX_UNLISTED_SHOWN = 8
#: an unlisted collector's acknowledgements are logged at most this often, per collector [s]
UNLISTED_LOG_EVERY_S = 3600.0
#: how alike (difflib ratio) an unlisted collector id must be to a silent listed one to be offered as its
#: spelling: a slip of a character or two, not a sibling sharing a prefix (jcm-collector-staging for
#: jcm-collector-1 is 0.78), whose listing would make the gateway delete what only a staging store holds
TYPO_RATIO = 0.85
_COLLECTOR_ID = re.compile(COLLECTOR_ID_PATTERN)


def status_payload(site: Site, state: str, **extra) -> str:
    body = {"schema": 1, "site": site.site, "gateway": site.gateway, "state": state,
            "ts": format_ts(dt.datetime.now(dt.UTC)), **extra}
    return json.dumps(body, separators=(",", ":"))


class Publisher:
    def __init__(self, site: Site, outbox: Outbox, broker_url: str | None = None,
                 window: int = 100, status_every: float = topics.STATUS_EVERY_S):
        self.site, self.outbox, self.window = site, outbox, window
        self.backlog_rate = site.outbox.backlog_rate
        self.status_every = status_every
        self.status_topic = topics.gateway_status(site.site, site.gateway)
        mq = site.mqtt
        if broker_url is not None:
            mq = mq.model_copy(update={"url": broker_url})
            type(mq).model_validate(mq.model_dump())  # same validation as the file
        self.mqtt_config = mq
        self.by_store = site.outbox.confirmed_by == "store"
        listed = site.outbox.acknowledged_by
        self.acknowledged_by = None if listed is None else frozenset(listed)
        if self.by_store:
            log.info("gateway %s: rows are deleted on acknowledgements of %s", site.gateway,
                     "any collector (outbox.acknowledged_by is not set)" if listed is None else ", ".join(listed))
        self.confirm_timeout = site.outbox.confirm_timeout_s
        self.ack_topic = topics.acks_of(site.site, site.gateway)
        self.batch_topic = topics.batch(site.site, site.gateway)
        self.connection = BrokerConnection(mq, f"jcm-{site.gateway}", f"site {site.site}: mqtt",
                                           on_connect=self._on_connect,
                                           on_disconnect=self._on_disconnect,
                                           subscriptions=[(self.ack_topic, 1)] if self.by_store else [])
        self.client = self.connection.client
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(window)
        self.client.will_set(self.status_topic, status_payload(site, "offline"), qos=1, retain=True)
        self.client.on_publish = self._on_publish
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        # (topic, payload, retained: delivered from the broker's store at subscription, not as published)
        self._store_acks: queue.SimpleQueue[tuple[bytes, bytes, bool]] = queue.SimpleQueue()
        #: this run's id, in every status of it: acknowledgements built under it echo it
        self.run = acknowledgement.new_run()
        self._lost = ""  # why ``_distrusted`` is not empty: the collectors lost and added since the outbox last ran
        self._distrusted = self._distrusted_at_start() if self.by_store else set()
        self._said_distrust = False
        self._refused_acks = 0  # acknowledgements refused since the last log line about them
        self._next_refusal_log = 0.0
        #: acknowledgements of collectors not in ``acknowledged_by``, by collector (in the status)
        self.unlisted: dict[str, int] = {}
        self._next_unlisted_log: dict[str, float] = {}
        self._heard: set[str] = set()  # the listed collectors that acknowledged this epoch in this run
        self._unlisted_since: float | None = None  # when an unlisted collector first acknowledged live
        #: listed collectors not heard for ``confirm_timeout_s`` while unlisted ones acknowledge (in the status)
        self.silent: list[str] = []
        self._inflight: dict[int, list[int]] = {}  # mid -> seqs (one, or a batch's)
        self._batches: set[int] = set()  # mids of the backlog batches in flight
        self._full_batch = 1000  # rows the last batch cut by the packet limit held
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._boundary = self.outbox.last_seq()  # rows up to here are backlog
        self._live_cursor = self._boundary
        self._backlog_cursor = 0
        self.published = 0
        self.acknowledged = 0  # PUBACKs
        self.confirmed = 0  # rows the store confirmed
        self._said: tuple[int, int, str | None] = (0, 0, None)  # outbox health in the last status

    def _distrusted_at_start(self) -> set[str]:
        """The listed collectors whose retained acknowledgement may claim what the store MRV reads lacks. Every
        listed one when the list lost a collector this outbox counted before: a listed collector merged its claims
        while the gateway's status listed it, and its messages carry them until it builds one having heard the
        shorter list in this run's status: one that echoes this run's id. And each one added since the outbox
        last ran: its acknowledgements were built while it did not count (a staging collector promoted, one
        re-listed, one that merged others' claims under no list). Until a collector sends one echoing this run,
        its others delete nothing (one without a run, of a collector from before runs, counts when published in
        this run, as before); once every distrusted one has, the list is recorded and the next run trusts them."""
        known, before = self.outbox.acknowledged_by()
        now = None if self.acknowledged_by is None else sorted(self.acknowledged_by)
        if self.acknowledged_by is None or (not known and self.outbox.last_seq() == 0):  # no claim can cost a row
            if (known, before) != (True, now):
                self.outbox.record_acknowledged_by(now)
            return set()
        lost = set() if before is None else set(before) - self.acknowledged_by
        # the recorded ones still trusted: a start that drops some narrows this at once, the list being recorded
        # only once every listed collector echoes the run, so that one dropped and listed again before is added
        _, narrowed = self.outbox.trusted_by()
        trusted = set(before or ()) if narrowed is None else set(before or ()) & set(narrowed)
        if trusted - self.acknowledged_by:
            self.outbox.record_trusted_by(sorted(trusted & self.acknowledged_by))
        added = set() if before is None else set(self.acknowledged_by) - trusted
        shortened, reasons = not known or before is None or bool(lost), []
        if shortened:
            reasons.append("outbox.acknowledged_by no longer lists " + (
                "unknown collectors (no list recorded in the outbox)" if not known else
                "any collector" if before is None else ", ".join(sorted(lost))) + ", counted when this outbox last ran")
        if added:
            reasons.append(f"outbox.acknowledged_by now lists {', '.join(sorted(added))}, not counted when this "
                           "outbox last ran")
        self._lost = "; ".join(reasons)
        return set(self.acknowledged_by) if shortened else added

    # paho callbacks: tiny and never raising (an exception stops paho's network thread)
    def _on_connect(self, session_present: bool) -> None:
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self) -> None:
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client, userdata, msg):
        self._store_acks.put((msg._topic, msg.payload, bool(msg.retain)))
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
        self._take_store_acks()
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, status_payload(self.site, "offline"), qos=1, retain=True)
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        was_connected = False
        tokens, last = 0.0, time.monotonic()
        next_status = 0.0
        next_expiry_check = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.2)
            self._wake.clear()
            try:
                self._take_acks()
                self._take_store_acks()
                if not self._connected.is_set():
                    was_connected = False
                    continue
                if not was_connected:
                    was_connected = True
                    # everything stored before this moment and not in paho's hands is backlog, and
                    # so is what the broker had acknowledged: it may have died with it
                    again = self.outbox.forget_sent()
                    if again:
                        log.info("gateway %s: %d row(s) the store has not confirmed are sent again",
                                 self.site.gateway, again)
                    self._boundary = self.outbox.last_seq()
                    self._live_cursor = max(self._live_cursor, self._boundary)
                    self._backlog_cursor = 0
                    self._publish_status()
                    next_status = time.monotonic() + self.status_every
                now = time.monotonic()
                tokens = min(self.backlog_rate, tokens + (now - last) * self.backlog_rate)
                last = now
                if self.by_store and now >= next_expiry_check:
                    self._send_again_unconfirmed()
                    next_expiry_check = now + 1
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
            self._inflight[info.mid] = [seq]
            self.published += 1
        return len(rows)

    def _send_batch(self, rows) -> int:
        """Send the longest prefix of ``rows`` that fits in one batch (the first alone if it
        does not fit in one); how many rows went."""
        payload, n = batch.pack([p if isinstance(p, bytes) else p.encode() for _, _, p in rows])
        if not n:
            return self._send(rows[:1])
        info = self.client.publish(self.batch_topic, payload, qos=1)
        self._inflight[info.mid] = [seq for seq, _, _ in rows[:n]]
        self._batches.add(info.mid)
        self.published += n
        return n

    def _send_live(self) -> None:
        room = self._room()
        if room > 0:
            rows = self.outbox.after(self._live_cursor, room)
            if rows:
                self._live_cursor = rows[-1][0]
                self._send(rows)

    def _send_backlog(self, budget: int) -> int:
        """Send up to ``budget`` backlog rows in batches; how many went. A batch waits until the
        budget fills it (as many rows as the last full one held, at most a second's rate) or
        covers the rest of the backlog: a small batch compresses worse."""
        sent, behind = 0, self._backlog_cursor < self._boundary
        while (self._room() > 0 and len(self._batches) < BATCHES_IN_FLIGHT and self._backlog_cursor < self._boundary
               and budget - sent >= min(self._full_batch, self.backlog_rate, self._boundary - self._backlog_cursor)):
            rows = self._backlog_rows(min(batch.MAX_MESSAGES, budget - sent))
            if not rows:
                break
            n = self._send_batch(rows)
            if n < len(rows):  # the packet limit cut it: that many fill a batch
                self._full_batch = n
            self._backlog_cursor = rows[n - 1][0]  # the rest of ``rows`` goes in the next batch
            sent += n
        if behind and self._backlog_cursor >= self._boundary:
            log.info("gateway %s: backlog delivered", self.site.gateway)
        return sent

    def _backlog_rows(self, limit: int) -> list:
        """Up to ``limit`` backlog rows from the cursor on, oldest first, past rows paho has or
        the store is about to confirm; the cursor moves to the last row looked at."""
        in_paho = {s for seqs in self._inflight.values() for s in seqs}
        rows = []
        while len(rows) < limit:
            page = self.outbox.after(self._backlog_cursor, limit, upto=self._boundary)
            if not page:
                self._backlog_cursor = self._boundary
                break
            for r in page:
                if len(rows) == limit:
                    break
                self._backlog_cursor = r[0]
                if r[0] not in in_paho and not self.outbox.awaiting(r[0]):
                    rows.append(r)
        return rows

    def _send_again_unconfirmed(self) -> None:
        """Rows the store has not confirmed in time go round the backlog lane again."""
        late = self.outbox.expired(self.confirm_timeout)
        if late:
            log.warning("gateway %s: %d row(s) (seq %d..%d) not confirmed by the store after %.0f s: sending "
                        "them again", self.site.gateway, len(late), min(late), max(late), self.confirm_timeout)
            self._backlog_cursor = min(self._backlog_cursor, min(late) - 1)
            self._boundary = max(self._boundary, self._live_cursor)

    def _take_acks(self) -> None:
        done = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            done += self._inflight.pop(mid, ())
            self._batches.discard(mid)
        if done:
            if self.by_store:
                self.outbox.sent(done)
            else:
                self.outbox.delete(done)
            self.acknowledged += len(done)

    def _take_store_acks(self) -> None:
        """Delete the rows the collectors say the store has: acknowledgements of this epoch only,
        and never a seq not sent yet (a claim about it cannot be true). Each acknowledgement is its
        collector's whole claim, so of those queued meanwhile the latest on each topic is taken: an
        earlier one claims no more (but seqs its collector has since forgotten, sent again after the
        confirm timeout) and would cost the same look-ups, a bitmap's unset rows being still there."""
        latest: dict[bytes, tuple[bytes, bool]] = {}
        while True:
            try:
                topic, payload, retained = self._store_acks.get_nowait()
            except queue.Empty:
                break
            latest[topic] = payload, retained
        for topic, (payload, retained) in latest.items():
            try:
                site, gateway, collector = topics.parse_ack(topic.decode("utf-8", "replace"))
                if (site, gateway) != (self.site.site, self.site.gateway):
                    raise ValueError("not this gateway's acknowledgement topic")
                if self.acknowledged_by is not None and collector not in self.acknowledged_by:
                    self._unlisted(collector)
                    if not retained and self._unlisted_since is None:
                        self._unlisted_since = time.monotonic()
                    continue
                ack = acknowledgement.Ack.from_json(payload)
            except ValueError as exc:
                self._refused(topic, str(exc))
                continue
            if ack.epoch != self.outbox.epoch:
                continue  # of a sequence this outbox no longer has: nothing to delete
            if self.acknowledged_by is not None:  # only a list can miss a collector (``_check_silent``)
                self._heard.add(collector)
            if collector in self._distrusted:
                # another run's: built before the collector heard this run's status, with claims it may have merged
                # under the longer list; one without a run (a collector from before runs) cannot say: as before, a
                # retained one is from before this run and a live one is taken as built after this run's status
                if ack.run != self.run and (ack.run is not None or retained):
                    self._distrust(collector)
                    continue
                self._distrusted.discard(collector)  # built under the list in this run's status
                if not self._distrusted:
                    self.outbox.record_acknowledged_by(sorted(self.acknowledged_by))
            spans = ack.spans()  # none: no ranges, and a bitmap of zeros or none
            if spans:  # seqs never assigned: an outbox gone back in time (deletes nothing)
                self.outbox.claimed(spans[-1][1])
            # within the spans, a bitmap's unset bits are not claimed: each row found is looked up
            self.confirmed += self.outbox.confirm(acknowledgement.clip(spans, 1, self._live_cursor),
                                                  ack.holds if ack.bits else None)
        self._check_silent()

    def _check_silent(self) -> None:
        """A listed collector never heard while unlisted ones acknowledge live is most likely a misspelt
        ``outbox.acknowledged_by`` entry (or a collector down): with no listed collector heard the gateway deletes
        nothing and its outbox fills up to ``max_rows`` (an ERROR); beside one heard, what the silent one stores
        is sent again until a heard one has it (a WARNING). Said once, with the unlisted ids a slip away, and kept
        in the status (``acks_missing``) while it lasts."""
        if self._unlisted_since is None or time.monotonic() - self._unlisted_since < self.confirm_timeout:
            return
        silent = sorted(self.acknowledged_by - self._heard)
        if silent and not self.silent:
            others = [c for c in self.unlisted if c != "*"]
            hints = [f"{near[0]} for {c}" for c in silent
                     for near in [difflib.get_close_matches(c, others, 1, TYPO_RATIO)] if near]
            log.log(logging.ERROR if len(silent) == len(self.acknowledged_by) else logging.WARNING,
                    "gateway %s: no acknowledgement from %s, listed in outbox.acknowledged_by, for %.0f s while "
                    "%s acknowledge(s) readings here: theirs delete nothing, and what no listed collector "
                    "confirms fills the outbox up to max_rows. Is the list misspelt%s, or is the listed collector "
                    "down?", self.site.gateway, ", ".join(silent), self.confirm_timeout,
                    ", ".join(sorted(others)) or "unlisted collectors",
                    f" (did you mean {'; '.join(hints)}?)" if hints else "")
        self.silent = silent

    def _distrust(self, collector: str) -> None:
        if not self._said_distrust:
            self._said_distrust = True
            log.warning("gateway %s: %s: the acknowledgements of %s built before it heard this run's status may "
                        "claim what the store does not hold, so they delete nothing until each of %s acknowledges "
                        "under this run (run %s; rows are sent again meanwhile)", self.site.gateway, self._lost,
                        collector, ", ".join(sorted(self._distrusted)), self.run)

    def _refused(self, topic: bytes, why: str) -> None:
        self._refused_acks += 1
        if time.monotonic() >= self._next_refusal_log:
            log.warning("gateway %s: refused %d acknowledgement(s), the last on %s: %s", self.site.gateway,
                        self._refused_acks, printable(topic.decode("utf-8", "replace"))[:120], printable(why))
            self._refused_acks = 0
            self._next_refusal_log = time.monotonic() + 60

    def _unlisted(self, collector: str) -> None:
        """An acknowledgement of a collector not in ``outbox.acknowledged_by``: not acted on, counted, and
        logged at the first and then at most once an hour per collector."""
        named = _COLLECTOR_ID.fullmatch(collector) is not None  # an id a site file could list
        shown = len(self.unlisted) - ("*" in self.unlisted)
        key = collector if named and (collector in self.unlisted or shown < MAX_UNLISTED_SHOWN) else "*"
        self.unlisted[key] = self.unlisted.get(key, 0) + 1
        now = time.monotonic()
        if now >= self._next_unlisted_log.get(key, 0.0):
            self._next_unlisted_log[key] = now + UNLISTED_LOG_EVERY_S
            who = f"collector {collector}" if key != "*" else f"collector {printable(collector)[:120]!r} (and others)"
            log.warning("gateway %s: %s acknowledges readings here but is not in outbox.acknowledged_by (%s): its "
                        "acknowledgements delete nothing (%d so far; the status counts them in acks_ignored)",
                        self.site.gateway, who, ", ".join(sorted(self.acknowledged_by)), self.unlisted[key])

    def _outbox_health(self) -> tuple[int, int, str | None]:
        return self.outbox.unsaved, self.outbox.dropped, self.outbox.error

    def _status_changed(self) -> bool:
        """Readings held unsaved or dropped, or the disk writing again: say so at once, not at the next period."""
        unsaved, dropped, _ = self._outbox_health()
        return (unsaved > 0, dropped) != (self._said[0] > 0, self._said[1])

    def _publish_status(self) -> None:
        self._said = self._outbox_health()
        unsaved, dropped, error = self._said
        body = status_payload(self.site, "online", epoch=self.outbox.epoch, run=self.run, floor=self.outbox.floor(),
                              outbox_depth=self.outbox.depth, outbox_dropped=dropped, outbox_unsaved=unsaved,
                              outbox_error=error if error is None or len(error) <= topics.MAX_STATUS_ERROR_CHARS
                              else error[:topics.MAX_STATUS_ERROR_CHARS - 1] + "…",
                              **({"outbox_unused": self.outbox.unused} if self.outbox.unused else {}),
                              # collectors merge only these collectors' claims, whatever their site file copy says
                              **({"acknowledged_by": sorted(self.acknowledged_by)} if self.acknowledged_by else {}),
                              **({"acks_ignored": dict(self.unlisted)} if self.unlisted else {}),
                              **({"acks_missing": self.silent} if self.silent else {}))
        self.client.publish(self.status_topic, body, qos=1, retain=True)
