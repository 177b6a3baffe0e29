"""The collector process: MQTT in, store out, acknowledgement last.

paho delivers messages with ``manual_ack=True``; a checker thread gathers them into
batches (``batch_size`` messages or ``batch_timeout`` seconds, whichever comes first,
since the broker stops sending at its in-flight window) and validates each (contract,
site rules, signatures: nothing that reads the store); the worker then writes the batch
(readings and dead letters together), keeps its books and only then sends the PUBACKs.
The checker works on the next batch while the worker waits for the store, so the
store's time is not added to ours; batches reach the store one by one, in the order
they came. Killed at any point, the collector loses nothing: the broker redelivers every
message it has not acknowledged, and stored points are idempotent. When the store is
down the worker keeps the batch, retries with backoff and acknowledges nothing meanwhile.

A gateway's backlog comes in batches (contract/batch.py): each line is validated and
stored as the same message sent alone would be (a signed line whose signature the batch
left out, as its signed bytes, once the chain links it to a signature that verifies:
collector/custody.py; refused with the line that carries that signature when that one is
refused, so that no stored covered message lacks what covers it), and the batch is
acknowledged once all of them are stored.
Messages sent alone (live readings) are taken before batches.

One message never stops ingestion: whatever goes wrong with one message (parsing,
validation, rendering, binding, the store refusing it) makes that message a dead
letter with the reason, and the rest of its batch is stored. Should the checker or the
worker die anyway, ``failure`` holds why and ``done`` is set, so the process can exit
non-zero and be restarted.
"""

from __future__ import annotations

import datetime as dt
import gc
import glob
import hashlib
import json
import logging
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from collector.acknowledgement import Acknowledgements
from collector.clock_offset import ClockWatch
from collector.custody import CustodyCheck
from collector.dead_letter_budget import DeadLetterBudget
from collector.sequence_gaps import SequenceGaps
from collector.validation import Rejected, SiteRules, WrongStamp, rules_for, validate
from contract import batch as batch_form, topics
from contract.config import CollectorConfig, ConfigError, load_site
from contract.custody import Verdict, is_covered
from contract.message import Reading
from contract.mqtt_connection import BrokerConnection
from contract.store import Books, CustodyFinding, DeadLetter, ReadingStore, SeqBlock, SignedMessage, StoreUnavailable
from contract.text import printable
from store import open_store

log = logging.getLogger(__name__)


def _traceback(exc: BaseException) -> str:
    """The traceback on one escaped line: its messages may quote what a sender wrote."""
    return printable("".join(traceback.format_exception(exc)))


#: how long a thread of a collector process may hold the GIL while another waits for it [s]
#: (Python's default is 0.005); see ``settle_process``
SWITCH_INTERVAL = 0.0005


def settle_process() -> None:
    """For a process that is a collector and nothing else (``jcm collector``), once its
    ``Collector`` is made.

    The heap: the objects of start-up (modules, sites, the store's client: ~90,000)
    live as long as the process, yet Python's cyclic garbage collector walked every one of
    them at each full collection, which the readings passing through bring about every
    ~15,000 messages (~60 ms each: ~3 us a message). Collected once, then frozen
    (``gc.freeze``), so that later collections walk only what came since. And the youngest
    generation is collected after 20,000 more objects than were freed, not 700: the readings
    of the two batches in flight (~5,000 objects) no longer start a collection that walks them
    (0.5 us a message left, ~0 after).

    The GIL: the writer lets it go at each SQLite call, and the checker thread (checking the
    next batch) then kept it up to the switch interval, while the writer held the store's write
    lock and a second collector on the same store waited for it. With ``SWITCH_INTERVAL`` the
    writer gets it back ten times sooner: two SQLite collectors on the backlog's batch form
    waited for the lock 0.14 - 0.27 s of a run instead of 0.41 - 0.59 s (bench/README.md, "Two
    SQLite collectors on one store").

    Not for a process shared with other work (tests, the demo): a cycle frozen there would
    never be freed, and the switch interval is the whole process's."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])
    sys.setswitchinterval(SWITCH_INTERVAL)


class _Stopping(Exception):
    """Asked to stop while the store is unavailable: the batch stays unacknowledged."""


@dataclass(slots=True)  # not frozen: that costs 0.7 us more a message, on paho's thread
class Incoming:
    generation: int  # which connection delivered it: a mid is only valid on its own connection
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: dt.datetime
    custody: Verdict | None = None  # a batch line's verdict, found with its batch (contract.custody.open_batch)


@dataclass(slots=True)
class _Checked:
    """A batch as the checker leaves it to the worker: the messages it came as, what they
    hold, and what was found of each."""
    batch: list[Incoming]
    now: dt.datetime
    deliveries: list[Incoming]  # the messages of the batch, a backlog's lines each on its own
    readings: list[Reading]  # the valid ones
    letters: list[DeadLetter]  # the refused ones, with why
    source: dict[int, Incoming]  # each valid reading's message, by the reading's id
    signed: dict[int, SignedMessage]  # each signed reading's message, by the reading's id
    stamped: list[tuple[Reading, dt.datetime]]  # refused for their stamps alone: the clock's evidence too


class Collector:
    def __init__(self, config: CollectorConfig, store: ReadingStore | None = None, base_dir: Path = Path(".")):
        self.config = config
        sites_dir = base_dir / config.sites_dir
        site_files = sorted(glob.glob(str(sites_dir / "*.yaml")))
        if not site_files:  # fail closed: with no sites known, nothing can be checked
            raise ConfigError(f"collector: sites_dir: no site files (*.yaml) in {sites_dir}; "
                              "the collector accepts readings of the sites described there only")
        sites = [load_site(f) for f in site_files]
        self.rules: dict[str, SiteRules] = rules_for(sites)
        self.store = store or open_store(config.store)
        self.custody = CustodyCheck(sites, self.store)
        self.sequences = SequenceGaps(self.store, config.gap_grace_s)
        self.clocks = ClockWatch(self.store, config.clock_offset_max_s, config.clock_window_s)
        self.budget = DeadLetterBudget(config.dead_letters_per_window, config.dead_letter_window_s)
        self.topic = topics.ALL_READINGS
        self.batch_topic = topics.ALL_BATCHES
        if config.share_group:
            self.topic = f"$share/{config.share_group}/{topics.ALL_READINGS}"
            self.batch_topic = f"$share/{config.share_group}/{topics.ALL_BATCHES}"
        self._queue: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self._backlog: queue.SimpleQueue[Incoming] = queue.SimpleQueue()  # batches (contract/batch.py)
        self._generation = 0
        self._stop = threading.Event()
        self.stored = 0
        self.dead = 0
        self.dropped_qos0 = 0
        #: the seq blocks the last write recorded with its readings (``_books``)
        self._staged: list[SeqBlock] = []
        #: why the worker died, if it did; ``done`` is set whenever it ends
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.client = self._client()
        #: tells each gateway what the store holds, so that it deletes only that
        self.acknowledgements = Acknowledgements(
            config, [(s, r.gateway) for s, r in self.rules.items()],
            {(s.site, s.gateway): s.outbox.acknowledged_by for s in sites if s.outbox.acknowledged_by is not None})
        #: the batches checked and waiting for the worker: one, so that the checker is at most one ahead
        self._checked: queue.Queue[_Checked] = queue.Queue(maxsize=1)
        self._checker = threading.Thread(target=self._stage, args=(self._check_next,), name="collector-check",
                                         daemon=True)
        self._worker = threading.Thread(target=self._stage, args=(self._keep_next,), name="collector", daemon=True)

    def _client(self) -> mqtt.Client:
        self.v5 = self.config.protocol == "5"
        # a fixed client id and a kept session: the broker holds what we have not acknowledged
        self.connection = BrokerConnection(
            self.config.broker, self.config.client_id, "collector: broker", mqtt5=self.v5, persistent=True,
            session_expiry=self.config.session_expiry, receive_maximum=self.config.receive_maximum,
            manual_ack=True,
            # statuses unshared: every collector needs every gateway's drop counter
            subscriptions=[(self.topic, 1), (self.batch_topic, 1), (topics.ALL_STATUS, 1)],
            on_connect=self._on_connect)
        self.connection.client.on_message = self._on_message
        return self.connection.client

    # paho callbacks: tiny, never raising
    def _on_connect(self, session_present: bool) -> None:
        self._generation += 1

    def _on_message(self, client, userdata, msg):
        if msg.qos == 0 and self._queue.qsize() + self._backlog.qsize() >= self.config.receive_maximum:
            # QoS 0 bypasses the broker's in-flight window, the bound on everything else we hold: while
            # the worker waits for the store, a flood of them would fill memory (at-most-once: dropped)
            self.dropped_qos0 += 1
            if self.dropped_qos0 % 1000 == 1:
                log.warning("%d QoS 0 message(s) dropped so far: %d waiting to be stored (readings go at QoS 1)",
                            self.dropped_qos0, self._queue.qsize())
            return
        # msg.topic raises on a topic that is not UTF-8; the replacement fails validation as a dead letter
        topic = msg._topic.decode("utf-8", "replace")
        if topic.endswith("/status"):
            self._on_status(topic, msg.payload)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        incoming = Incoming(self._generation, msg.mid, msg.qos, topic, msg.payload, dt.datetime.now(dt.UTC))
        (self._backlog if topic.endswith("/batch") else self._queue).put(incoming)

    def _on_status(self, topic: str, payload: bytes) -> None:
        """A gateway's status: what its outbox dropped explains gaps in its sequence."""
        try:
            site, gateway = topics.parse_status(topic)
            rules = self.rules.get(site)
            if rules is None or rules.gateway != gateway or len(payload) > self.config.max_payload_bytes:
                return
            body = json.loads(payload)
            if isinstance(body, dict):
                self.sequences.on_status(site, gateway, body)
        except (ValueError, RecursionError) as exc:
            log.debug("ignored the status on %s: %s", printable(topic), printable(str(exc)))

    def start(self) -> None:
        self.connection.start()
        self.acknowledgements.start()
        self._checker.start()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._checker.join(timeout=30)
        self._worker.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
        self.acknowledgements.stop()
        self.store.close()

    # -- the worker ---------------------------------------------------------------
    def _next_batch(self) -> list[Incoming]:
        """The messages sent alone that are waiting (up to ``batch_size``, within ``batch_timeout``),
        then at most one batch of a backlog: a live reading never waits behind a backlog's batches
        (the broker hands over up to its in-flight window of them at once), and one write stays
        within ``batch_size`` + contract/batch.py's ``MAX_MESSAGES`` readings."""
        try:
            backlog = [self._backlog.get_nowait()]
        except queue.Empty:
            backlog = []
        try:
            first = self._queue.get(timeout=0 if backlog else 0.2)
        except queue.Empty:
            return backlog
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
        return batch + backlog

    def alive(self) -> bool:
        """Whether both threads are at work."""
        return self._checker.is_alive() and self._worker.is_alive()

    def _stage(self, step) -> None:
        """Run ``step`` until asked to stop; a stage that dies stops the collector (``failure``, ``done``)."""
        try:
            while not self._stop.is_set() and not self.done.is_set():
                step()
        except BaseException as exc:
            self.failure = exc
            log.critical("the collector's %s died (thread %s); nothing more is stored until it is restarted: %s",
                         "checker" if step == self._check_next else "worker", threading.current_thread().name,
                         _traceback(exc))
        finally:
            self.done.set()

    def _check_next(self) -> None:
        batch = self._next_batch()
        if batch:
            checked = self._check(batch)
            while not self._stop.is_set() and not self.done.is_set():  # else the worker will not take it
                try:
                    return self._checked.put(checked, timeout=0.2)
                except queue.Full:
                    pass

    def _keep_next(self) -> None:
        try:
            checked = self._checked.get(timeout=0.2)
        except queue.Empty:
            self.sequences.stored([])  # holes age while nothing arrives too
            summaries = self.budget.due(dt.datetime.now(dt.UTC))
            try:
                if summaries:
                    self._write([], summaries)
            except _Stopping:  # stopped while the store is down: nothing is held that the broker would resend
                log.error("stopping with %d dead-letter summary(ies) unwritten, the store being unavailable: "
                          "%s", len(summaries), "; ".join(printable(d.reason) for d in summaries))
            return
        self._keep(checked)

    def _check(self, batch: list[Incoming]) -> _Checked:
        """The batch's messages validated: what the worker needs to keep it. Reads nothing of the store."""
        now = dt.datetime.now(dt.UTC)
        future = dt.timedelta(seconds=self.config.max_future_s)
        readings, letters, source, signed = [], [], {}, {}
        stamped: list[tuple[Reading, dt.datetime]] = []  # refused for their stamps: the clock's evidence too
        deliveries: list[Incoming] = []
        for m in batch:
            try:
                deliveries += self._lines(m)
            except Rejected as exc:
                letters.append(DeadLetter(m.received, m.topic, m.payload, str(exc)))
        for m in deliveries:
            # a batch line that verified was read by the custody check: not read again (6 us a reading)
            parsed = m.custody.reading if m.custody is not None and m.custody.ok else None
            try:
                r = validate(m.topic, m.payload, self.rules, now, self.config.max_payload_bytes, future, parsed)
                message = self.custody.signed(m.payload, r, m.custody)
            except Rejected as exc:
                letters.append(DeadLetter(m.received, m.topic, m.payload, str(exc)))
                if isinstance(exc, WrongStamp) and self._authentic(m, exc.reading):
                    stamped.append((exc.reading, m.received))
                continue
            except Exception as exc:  # a fault of ours on this input must cost this message only
                log.error("could not validate a message from %s: %s", printable(m.topic), _traceback(exc))
                letters.append(DeadLetter(m.received, m.topic, m.payload,
                                          f"could not be validated: {type(exc).__name__}: {exc}"))
                continue
            readings.append(r)
            source[id(r)] = m
            if message is not None:
                signed[id(r)] = message
        return _Checked(batch, now, deliveries, readings, letters, source, signed, stamped)

    def _keep(self, checked: _Checked) -> None:
        """Write a checked batch, keep the books of what it held, then acknowledge it."""
        batch, now, deliveries, readings = checked.batch, checked.now, checked.deliveries, checked.readings
        letters, source, signed, stamped = checked.letters, checked.source, checked.signed, checked.stamped
        try:
            findings = self._conflicts(readings, letters, source, signed)
        except _Stopping:
            log.error("stopping with %d messages unstored: the broker will redeliver them", len(batch))
            return
        self._uncovered(deliveries, readings, letters, source, signed)
        refused_count = len(letters)
        letters = self.budget.admit(letters, now)  # what is not kept whole is counted in a summary
        try:
            # the seqs' records go in the readings' write (one transaction where the store has them)
            refused = self._write(readings, letters, signed, self._books(readings))
            refused_letters = [DeadLetter(source[id(r)].received, source[id(r)].topic, source[id(r)].payload,
                                          f"store refused it: {why}") for r, why in refused]
            if refused:  # the store took the rest; keep these aside with its reason
                self._write([], refused_letters)
            refused_ids = {id(r) for r, _ in refused}
            written = [signed[id(r)] for r in readings if id(r) in signed and id(r) not in refused_ids]
            # before the acknowledgement: a finding lost in a crash is found again on redelivery
            self._retrying(lambda: self.custody.record(findings + self.custody.chain_findings(written)), len(batch))
        except _Stopping:
            log.error("stopping with %d messages unstored: the broker will redeliver them", len(batch))
            return
        for letter in letters:
            log.warning("dead letter from %s: %s", letter.topic, letter.reason)
        for r, why in refused:
            log.warning("dead letter from %s: store refused it: %s", printable(source[id(r)].topic), printable(why))
        refused_ids = {id(r) for r, _ in refused}
        kept = [r for r in readings if id(r) not in refused_ids]
        self.sequences.settled(self._staged)
        try:
            self._retrying(self.sequences.save, len(batch))
        except _Stopping:
            log.error("stopping with %d messages' seqs unrecorded: the broker will redeliver them", len(batch))
            return
        self.clocks.received(sorted([(r, source[id(r)].received) for r in kept] + stamped, key=lambda x: x[1]))
        self.stored += len(readings) - len(refused)
        self.dead += refused_count + len(refused)
        # a dead letter only counted (over the budget) or kept cut (over KEPT_PAYLOAD) is not in the store,
        # and one its site's keys do not vouch for may be a forgery naming a real reading's seq: the gateway
        # keeps that reading and sends it again, to be stored once its cause is fixed
        self.acknowledgements.kept(kept, [(d.topic, d.payload) for d in letters + refused_letters
                                          if d.size == len(d.payload) and self._vouched(d)])
        # a batch's acknowledgement too comes once every line of it is stored
        self.client.ack_all([m.mid for m in batch if m.generation == self._generation and m.qos == 1])
        for m in batch:
            if m.generation == self._generation and m.qos == 2:
                self.client.ack(m.mid, m.qos)

    def _vouched(self, letter: DeadLetter) -> bool:
        try:
            site, gateway = topics.sender(letter.topic)
        except ValueError:
            return False  # no gateway's topic: no gateway to acknowledge
        return self.custody.vouches(site, gateway, letter.payload)

    def _lines(self, m: Incoming) -> list[Incoming]:
        """The messages of one delivery: itself, or each line of a batch (contract/batch.py),
        on the batch's topic, with its custody verdict; ``Rejected`` for a batch that does not
        unpack."""
        if not m.topic.endswith("/batch"):
            return [m]
        try:
            lines = batch_form.unpack(m.payload)
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        # made directly: dataclasses.replace cost 1.5 us a line
        return [Incoming(m.generation, m.mid, m.qos, m.topic, line, m.received, v)
                for line, v in self.custody.batch(lines)]

    def _authentic(self, m: Incoming, reading: Reading) -> bool:
        """Whether a reading refused for its stamp passes the custody checks: only then is it
        evidence of its gateway's clock (a forged one must not flag a site's readings)."""
        try:
            self.custody.signed(m.payload, reading, m.custody)
        except Rejected:
            return False
        return True

    def _conflicts(self, readings: list[Reading], letters: list[DeadLetter], source: dict[int, Incoming],
                   signed: dict[int, SignedMessage]) -> list[CustodyFinding]:
        """Move the signed readings whose seq is stored with other bytes from ``readings`` (and
        ``source``, ``signed``) to ``letters``, and from ``signed`` the covered messages stored
        already (their readings are written again); return their custody findings."""
        if not signed:  # unsigned readings: nothing to look up (and three passes over the batch saved)
            return []
        ids = [id(r) for r in readings if id(r) in signed]
        conflicts, kept = self._retrying(lambda: self.custody.conflicts([signed[i] for i in ids]), len(readings))
        for position in kept:
            del signed[ids[position]]
        findings = []
        for position, detail in conflicts.items():
            m = source.pop(ids[position])
            letters.append(DeadLetter(m.received, m.topic, m.payload, f"custody: conflict: {detail}"))
            findings.append(self.custody.conflict_finding(signed.pop(ids[position]), detail))
        readings[:] = [r for r in readings if id(r) in source]
        return findings

    @staticmethod
    def _uncovered(deliveries: list[Incoming], readings: list[Reading], letters: list[DeadLetter],
                   source: dict[int, Incoming], signed: dict[int, SignedMessage]) -> None:
        """Move from ``readings`` (and ``source``, ``signed``) to ``letters`` each covered line
        of a batch whose covering line was refused after the batch held together (its
        validation, a conflict): stored, it would be a covered message that nothing in the
        store covers, and no export of it would verify."""
        if not letters:  # nothing refused: the common case costs nothing per message
            return
        taken = {id(m): rid for rid, m in source.items()}
        why = {d.sha256: d.reason for d in letters}  # a letter keeps only the start of its payload
        cascaded: dict[int, str] = {}  # the lines refused here, with the reason of the line that covered them
        after = None  # the line after in the batch: a covered line is never a batch's last
        for m in reversed(deliveries):
            v = m.custody
            if (after is not None and id(after) not in taken and id(m) in taken and v is not None and v.ok
                    and is_covered(m.payload)):
                refused = why.get(hashlib.sha256(after.payload).hexdigest(), "see its dead letter")
                reason = cascaded.get(id(after)) or (f"custody: covered by seq {after.custody.reading.seq}, "
                                                     f"which was refused: {refused}")
                rid = taken.pop(id(m))
                del source[rid]
                signed.pop(rid, None)
                letters.append(DeadLetter(m.received, m.topic, m.payload, reason))
                cascaded[id(m)] = reason
            after = m
        if len(taken) < len(readings):
            readings[:] = [r for r in readings if id(r) in source]

    def _books(self, readings: list[Reading]) -> Books:
        """The ``books`` of a write of ``readings`` (``ReadingStore.write``): the seqs of those the
        store did not refuse followed, the blocks to record kept in ``_staged`` for ``settled``."""
        def books(refused: list[tuple[Reading, str]]) -> list[SeqBlock]:
            gone = {id(r) for r, _ in refused}
            self._staged = self.sequences.staged([r for r in readings if id(r) not in gone])
            return self._staged
        self._staged = []
        return books

    def _write(self, readings: list[Reading], letters: list[DeadLetter],
               signed: dict[int, SignedMessage] | None = None, books: Books | None = None) -> list[tuple[Reading, str]]:
        """Write (with the signed messages of the readings, by reading id, and ``books``: ``_books``);
        return the readings refused, with why. If the store raises for what is in the batch rather than
        being unavailable, halve the batch until the guilty message is alone, so that the others
        are stored and it is not retried forever (each part with the books of its own readings)."""
        signed = signed or {}
        try:
            return self._write_retrying(readings, letters, [signed[id(r)] for r in readings if id(r) in signed],
                                        books)
        except _Stopping:
            raise
        except Exception as exc:
            items: list[Reading | DeadLetter] = [*readings, *letters]
            if len(items) > 1:
                half = len(items) // 2
                parts = [([i for i in part if isinstance(i, Reading)], [i for i in part if isinstance(i, DeadLetter)])
                         for part in (items[:half], items[half:])]
                return [refused for rs, ds in parts
                        for refused in self._write(rs, ds, signed, self._books(rs) if books else None)]
            why = f"{type(exc).__name__}: {exc}"
            if readings:
                return [(readings[0], why)]
            letter = letters[0]
            log.error("the store refused a dead letter from %s (%s); keeping its size and hash only",
                      letter.topic, printable(why))
            self._write_retrying([], [DeadLetter(letter.received, "", b"", f"the store refused this dead letter "
                                                 f"({why}); it came from {letter.topic}: {letter.reason}",
                                                 letter.size, letter.sha256)])
            return []

    def _write_retrying(self, readings: list[Reading], letters: list[DeadLetter],
                        messages: list[SignedMessage] = (), books: Books | None = None) -> list[tuple[Reading, str]]:
        """Write, retrying with backoff while the store is unavailable."""
        return self._retrying(lambda: self.store.write(readings, letters, messages, books),
                              len(readings) + len(letters))

    def _retrying(self, call, holding: int):
        """``call()``, retried with backoff while the store is unavailable (``holding`` messages unacknowledged)."""
        pause = 0.5
        while True:
            try:
                return call()
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    raise _Stopping() from exc
                log.error("store unavailable (%s); holding %d messages unacknowledged, retrying in %.1f s",
                          printable(str(exc)), holding, pause)
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
