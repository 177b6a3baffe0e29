"""Gaps along each gateway's sequence, found by the real collector behind a real
Mosquitto: a missing range is one gap with its first and last seq; seqs out of order or
redelivered are none; a restarted collector and two collectors on a shared subscription
raise no false gap and forget no real one (the store is the source of truth); a gap the
gateway's outbox cap explains says so; a new epoch is reported loudly and raises a live
view alarm; the processor lists a period's gaps in its QA findings."""

import datetime as dt
from dataclasses import replace
import json
import logging
import random
import sqlite3
import time

import paho.mqtt.client as mqtt
import pytest

from collector.sequence_gaps import SequenceGaps
from collector.service import Collector
from contract import topics
from contract.message import Reading
from contract.store import (BLOCK_SEQS, WORD_SEQS, WORDS, ReadUnsupported, SeqBlock, SeqMark, SeqRange,
                            SequenceFinding, StoreUnavailable, block_ranges, range_blocks, to_ms)
from liveview.alarms import sequence_conditions
from liveview.app import LiveView
from processing.period import PeriodProcessor
from store import open_store
from store.sqlite_store import SqliteStore
from tests.conftest import fill_history, fuzz_examples, load_site, reference_site, tcp_device, write_site
from tests.test_collector import Publisher, config, wait_until

E1, E2 = "0123456789abcdef", "fedcba9876543210"
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
GRACE = 1.0


@pytest.fixture
def sites_dir(tmp_path):
    return write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 1502)]).parent



def message(seq: int, epoch: str | None = E1) -> tuple[str, bytes]:
    r = Reading(site="test-site", gateway="gw-test", device="m1", ts=T0 + dt.timedelta(seconds=seq),
                values={"energy_import": 1000.0 + seq}, seq=seq, epoch=epoch)
    return topics.reading("test-site", "gw-test", "m1"), r.to_json().encode()


def collector(broker, store_url, sites_dir, **extra) -> Collector:
    c = Collector(config(broker, store_url, sites_dir, gap_grace_s=GRACE, **extra))
    c.start()
    return c


def subscribed(c: Collector, pub: Publisher, probe: int = 1, epoch: str = E1) -> None:
    """Wait until the collector's subscription is in place: a probe (a seq it gets anyway) lands."""
    assert wait_until(lambda: pub.send([message(probe, epoch)]) or c.stored >= 1, 10)


def findings(store_url: str, kind: str = "gap") -> list[SequenceFinding]:
    store = open_store(store_url)
    try:
        return [f for f in store.sequence_findings("test-site") if f.kind == kind]
    finally:
        store.close()


def stored_ranges(store, site: str = "test-site", gateway: str = "gw-test") -> list[tuple[str, int, int]]:
    """(epoch, first, last) of every run of seqs the store's bookkeeping holds."""
    return [(r.epoch, r.first, r.last) for epoch, top in sorted(store.seq_tops(site, gateway).items())
            for r in block_ranges(store.seq_blocks(site, gateway, epoch, 0, top))]


def settled(c: Collector, n: int) -> None:
    """Wait for ``n`` readings stored, then for the grace period to pass twice over."""
    assert wait_until(lambda: c.stored >= n, 30), c.stored
    time.sleep(2.5 * GRACE + 1.2)


class SharedSubscription:
    """Two collectors' bookkeeping on one store, fed as a shared subscription feeds them, with the
    clock they share (grace period 10 s): what the fuzz tests here and in test_hostile_seqs.py drive."""

    def __init__(self, store, site: str):
        self.store, self.site, self.clock = store, site, [0.0]
        self.collectors = [self.restarted(), self.restarted()]

    def restarted(self) -> SequenceGaps:
        return SequenceGaps(self.store, grace_s=10, clock=lambda: self.clock[0])

    def readings(self, seqs) -> list[Reading]:
        return [Reading(self.site, "gw", "d", T0 + dt.timedelta(seconds=s % 10**6), {"x": 1.0}, seq=s, epoch=E1)
                for s in seqs]

    def feed(self, sent: list[int], rnd, batch: int, restart: float = 0.0, steps: tuple[float, ...] = (),
             each=None) -> None:
        """Seqs ``sent``, in that order, in batches of 1..``batch``, each to one collector at random,
        restarted first with chance ``restart``; ``each(collector, seqs)`` after a batch is stored;
        then the clock moves on by one of ``steps`` (none: it stays) and that collector checks, as
        its worker does every second."""
        while sent:
            k = rnd.randint(1, batch)
            seqs, sent = sent[:k], sent[k:]
            i = rnd.randrange(len(self.collectors))
            if restart and rnd.random() < restart:
                self.collectors[i] = self.restarted()
            self.collectors[i].stored(self.readings(seqs))
            if each is not None:
                each(self.collectors[i], seqs)
            if steps:
                self.clock[0] += rnd.choice(steps)
            self.collectors[i].check()

    def go_on(self, seqs: list[int]) -> None:
        """The live lane goes on: one of ``seqs`` to each collector in turn (so a collector restarted
        meets the gateway again, and reads back what its predecessor left open)."""
        for c, seq in zip(self.collectors, seqs):
            c.stored(self.readings([seq]))

    def judge(self, *after: float) -> None:
        """Set the clock to each of ``after`` seconds from now in turn, and let every collector check."""
        for self.clock[0] in [self.clock[0] + a for a in after]:
            for c in self.collectors:
                c.check()


def gateway_status(broker, dropped: int = 0, unused: list | None = None) -> None:
    """The test gateway's retained status, published by hand: ``dropped`` readings the outbox cap
    dropped, the ``unused`` seq ranges it left after an unclean stop."""
    status = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-status")
    status.connect("127.0.0.1", broker.port)
    status.loop_start()
    body = {"schema": 1, "site": "test-site", "gateway": "gw-test", "state": "online", "epoch": E1, "floor": 1,
            "outbox_depth": 0, "outbox_dropped": dropped, "outbox_unsaved": 0, "outbox_error": None,
            "outbox_unused": unused or []}
    status.publish(topics.gateway_status("test-site", "gw-test"), json.dumps(body), qos=1,
                   retain=True).wait_for_publish(10)
    status.disconnect()
    status.loop_stop()


def reading(s: int) -> Reading:
    """Seq ``s`` of the test gateway's epoch E1, a reading at T0 + ``s`` seconds."""
    return Reading("s", "gw", "d", T0 + dt.timedelta(seconds=s), {"x": 1.0}, seq=s, epoch=E1)


def readings(seqs) -> list[Reading]:
    return [reading(s) for s in seqs]


def failing_merges(m, fail=lambda: True, error: BaseException | None = None) -> None:
    """Through ``m`` (a monkeypatch), the store's merge of a batch's seq records fails, inside the
    batch's transaction, while ``fail()`` is true: a disk I/O error, or ``error``."""
    merge = SqliteStore._merge_blocks

    def merge_or_fail(self, blocks):
        if fail():
            raise error or sqlite3.OperationalError("disk I/O error")
        merge(self, blocks)

    m.setattr(SqliteStore, "_merge_blocks", merge_or_fail)


def test_a_missing_range_is_one_gap_with_first_and_last(mosquitto, sites_dir, store_url):
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in range(1, 31) if not 11 <= s <= 15])
    assert wait_until(lambda: findings(store_url), 20)
    settled(c, 25)
    c.stop()
    pub.close()
    [gap] = findings(store_url)
    assert (gap.epoch, gap.first, gap.last, gap.missing, gap.explained) == (E1, 11, 15, 5, 0)
    assert (gap.start, gap.end) == (T0 + dt.timedelta(seconds=10), T0 + dt.timedelta(seconds=16))
    assert "not explained by the gateway's outbox counters" in gap.cause and gap.resolved is None


def test_seqs_out_of_order_and_redelivered_are_no_gap(mosquitto, sites_dir, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in range(40, 61)])  # the live lane overtakes the backlog
    time.sleep(GRACE / 2)
    backlog = [message(s) for s in range(1, 40)] + [message(s) for s in (5, 17, 45, 60)]
    random.Random(1).shuffle(backlog)
    pub.send(backlog)
    settled(c, 60)
    c.stop()
    pub.close()
    assert findings(store_url) == []
    store = open_store(store_url)
    assert stored_ranges(store) == [(E1, 1, 60)]


def test_a_restarted_collector_raises_no_false_gap_and_forgets_no_real_one(mosquitto, sites_dir, store_url):
    pub = Publisher(mosquitto)
    first = collector(mosquitto, store_url, sites_dir)
    subscribed(first, pub)
    pub.send([message(s) for s in range(1, 11)])
    assert wait_until(lambda: first.stored >= 10)
    first.stop()
    # a second process: it never saw 1..10, and 11..13 are lost while it starts
    second = collector(mosquitto, store_url, sites_dir)
    subscribed(second, pub, probe=14)
    pub.send([message(s) for s in range(14, 31)])
    assert wait_until(lambda: findings(store_url), 20)
    settled(second, 17)
    second.stop()
    [gap] = findings(store_url)
    assert (gap.first, gap.last) == (11, 13)
    # and a third one meeting the recorded gap again does not record it twice
    third = collector(mosquitto, store_url, sites_dir)
    subscribed(third, pub, probe=31)
    settled(third, 1)
    third.stop()
    pub.close()
    assert [(f.first, f.last) for f in findings(store_url)] == [(11, 13)]


def test_two_collectors_on_a_shared_subscription_raise_no_false_gap_and_write_a_record_per_batch(
        mosquitto, sites_dir, store_url):
    """The broker deals alternate seqs to each collector: each batch is one-seq runs, yet it
    writes one bookkeeping record per block of seqs it touched, and no gap is raised."""
    stores = [_counting(store_url) for _ in range(2)]
    collectors = []
    for i, (store, _) in enumerate(stores):
        c = Collector(config(mosquitto, store_url, sites_dir, gap_grace_s=GRACE, share_group="collectors",
                             client_id=f"jcm-collector-{i}", batch_size=7), store=store)
        c.start()
        collectors.append(c)
    pub = Publisher(mosquitto)
    subscribed(collectors[0], pub)
    assert wait_until(lambda: pub.send([message(1)]) or collectors[1].stored >= 1, 10)
    pub.send([message(s) for s in range(2, 301)], rate=500)
    assert wait_until(lambda: sum(c.stored for c in collectors) >= 300, 30)
    assert all(c.stored > 20 for c in collectors)  # both had a share, with holes in each one's view
    time.sleep(2.5 * GRACE + 1.2)
    for c in collectors:
        c.stop()
    pub.close()
    assert findings(store_url) == []
    for _, counts in stores:
        assert counts["records"] <= counts["batches"] + 2, counts  # seqs 1..300: one block
    store = open_store(store_url)
    assert stored_ranges(store) == [(E1, 1, 300)]


def test_a_gap_the_outbox_cap_explains_says_so(mosquitto, sites_dir, tmp_path):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    gateway_status(mosquitto, dropped=5)
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in range(1, 21) if not 6 <= s <= 10])
    assert wait_until(lambda: findings(store_url), 20)
    c.stop()
    pub.close()
    [gap] = findings(store_url)
    assert (gap.first, gap.last, gap.explained) == (6, 10, 5)
    assert "explained by the gateway's outbox cap: 5 readings dropped" in gap.cause


def test_a_gap_over_seqs_the_gateway_left_unused_says_so_and_leaves_the_cap_for_the_rest(mosquitto, sites_dir,
                                                                                           tmp_path):
    """A gateway started after an unclean stop and a power cut skips the seqs it had reserved and names
    them in its status (``outbox_unused``): a gap over them is explained by them, not taken for readings
    lost, and does not use up the outbox cap's count, which explains a gap elsewhere."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    gateway_status(mosquitto, dropped=2, unused=[[6, 10]])
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in range(1, 31) if not 6 <= s <= 10 and s not in (21, 22)])
    assert wait_until(lambda: len(findings(store_url)) >= 2, 20)
    c.stop()
    pub.close()
    unused, capped = sorted(findings(store_url), key=lambda f: f.first)
    assert (unused.first, unused.last, unused.explained) == (6, 10, 5)
    assert "left unused by the gateway" in unused.cause and "lost" not in unused.cause, unused.cause
    assert (capped.first, capped.last, capped.explained) == (21, 22, 2)
    assert "explained by the gateway's outbox cap: 2 readings dropped" in capped.cause


def test_an_unused_range_longer_than_a_power_cut_leaves_explains_nothing(mosquitto, sites_dir, tmp_path):
    """The status is not signed: one naming a range longer than a gateway leaves unused after a power cut
    (``MAX_UNUSED_SEQS``; damaged, or forged to hide a loss) explains nothing, and the gap over it is said
    lost; before, any range up to MAX_SEQ explained its gap (for information only)."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    last = 5 + topics.MAX_UNUSED_SEQS + 1  # the range 6..last is one seq too long
    gateway_status(mosquitto, unused=[[6, last], [last + 5, last + 5 + topics.MAX_UNUSED_SEQS - 1]])
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    top = last + 5 + topics.MAX_UNUSED_SEQS
    pub.send([message(s) for s in [*range(1, 6), *range(last + 1, last + 5), top, top + 1]])
    assert wait_until(lambda: len(findings(store_url)) >= 2, 20)
    c.stop()
    pub.close()
    lost, unused = sorted(findings(store_url), key=lambda f: f.first)
    assert (lost.first, lost.last, lost.explained) == (6, last, 0)
    assert "left unused" not in lost.cause and "lost" in lost.cause, lost.cause
    assert (unused.first, unused.last, unused.explained) == (last + 5, top - 1, topics.MAX_UNUSED_SEQS)


def test_an_unused_range_the_store_holds_a_seq_of_explains_nothing(mosquitto, sites_dir, tmp_path):
    """The status names 6..15 left unused, but seq 9 came: the range was given to readings (the outbox
    was a backup of its last seconds at the power cut), so the gaps 6..8 and 10..15 are readings lost, not
    seqs left unused (before: both said "left unused", for information only)."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    gateway_status(mosquitto, unused=[[6, 15]])
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in [*range(1, 6), 9, *range(16, 21)]])
    assert wait_until(lambda: len(findings(store_url)) >= 2, 20)
    c.stop()
    pub.close()
    gaps = sorted(findings(store_url), key=lambda f: f.first)
    assert [(f.first, f.last, f.explained) for f in gaps] == [(6, 8, 0), (10, 15, 0)]
    assert not [f.cause for f in gaps if "left unused" in f.cause]


def test_a_new_epoch_is_reported_loudly_and_raises_a_live_view_alarm(mosquitto, sites_dir, tmp_path, caplog):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    pub.send([message(s) for s in range(1, 11)])
    assert wait_until(lambda: c.stored >= 10)
    with caplog.at_level(logging.WARNING, logger="collector.sequence_gaps"):
        pub.send([message(s, E2) for s in range(1, 6)])  # the outbox was emptied: seq starts again
        assert wait_until(lambda: findings(store_url, "epoch"), 20)
        settled(c, 15)
    c.stop()
    pub.close()
    [epoch] = findings(store_url, "epoch")
    said = f"gateway gw-test started a new sequence epoch {E2} after {E1} at seq 10"
    assert (epoch.epoch, epoch.previous, epoch.first) == (E2, E1, 10) and said in epoch.cause
    assert any(said in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert findings(store_url) == []  # its seqs 1..5 are not confused with the old epoch's
    view = LiveView([load_site(sites_dir / "test-site.yaml")], mosquitto.url, SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    [alarm] = [a for a in view.evaluate_alarms() if a["kind"] == "sequence_epoch"]
    assert said in alarm["detail"] and alarm["ended"] is None


def test_an_open_gap_is_a_live_view_alarm_with_its_figures_until_it_arrives():
    gap = SequenceFinding("gap", "s", "gw", E1, 11, 15, T0, "lost on the way")
    [c] = sequence_conditions([gap], T0)
    assert (c.kind, c.subject) == ("sequence_gap", f"gw.{E1}.11")
    assert c.detail.startswith("5 reading(s) missing, seqs 11..15")
    assert sequence_conditions([SequenceFinding("gap", "s", "gw", E1, 11, 15, T0, "x", resolved=T0)], T0) == []


def test_a_gap_that_arrives_after_all_is_marked_resolved(tmp_path):
    store = SqliteStore(tmp_path / "jcm.db")
    gaps = SequenceGaps(store, grace_s=0)
    readings = {s: reading(s)
                for s in range(1, 9)}
    gaps.stored([readings[s] for s in (1, 2, 3, 7, 8)])
    gaps.check()
    assert [(f.first, f.last, f.resolved) for f in store.sequence_findings("s")] == [(4, 6, None)]
    gaps.stored([readings[4], readings[5]])
    assert store.sequence_findings("s")[0].resolved is None  # one still missing
    gaps.stored([readings[6]])
    assert store.sequence_findings("s")[0].resolved is not None


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_stores_keep_ranges_and_findings(backend, tmp_path, request):
    if backend == "sqlite":
        store = SqliteStore(tmp_path / "jcm.db")
    else:
        store = open_store(f"influxdb://127.0.0.1:{request.getfixturevalue('influxdb').port}?api=v1&db=jcm")
    ts = [T0 + dt.timedelta(seconds=s) for s in range(10)]

    def block(epoch, seqs, writer):
        return SeqBlock("s", "gw", epoch, 0, sum(1 << s for s in seqs),
                        (to_ms(ts[min(seqs)]), to_ms(ts[max(seqs)])) + (0,) * (2 * WORDS - 2), writer)

    store.record_seq_blocks([block(E1, [1, 2, 3, 6, 7], "a"), block("", [9], "a")])
    store.record_seq_blocks([block(E1, [4, 5], "b")])
    store.record_seq_blocks([block(E1, [1, 2, 3, 6, 7], "a")])  # a writer's block again: the other's stays
    assert store.seq_tops("s", "gw") == {"": 0, E1: 0}
    assert [(r.epoch, r.first, r.last, r.first_ts, r.last_ts) for e in ("", E1)
            for r in block_ranges(store.seq_blocks("s", "gw", e, 0, 0))] == [("", 9, 9, ts[9], ts[9]),
                                                                             (E1, 1, 7, ts[1], ts[7])]
    assert store.seq_blocks("s", "gw", E1, 1, 5) == []
    gap = SequenceFinding("gap", "s", "gw", E1, 8, 8, T0, "lost", start=ts[7], end=ts[9])
    store.record_finding(gap)
    store.record_finding(SequenceFinding("epoch", "s", "gw", E2, 9, 9, T0, "new epoch", previous=E1))
    store.record_finding(replace_resolved := SequenceFinding(**{**gap.__dict__, "resolved": ts[9]}))
    assert store.sequence_findings("s") == [replace_resolved, SequenceFinding("epoch", "s", "gw", E2, 9, 9, T0,
                                                                              "new epoch", previous=E1)]
    assert store.sequence_findings("elsewhere") == []
    store.close()


@pytest.mark.parametrize("explained, status", [(0, "needs_review"), (3, "verified")])
def test_the_processor_lists_a_periods_gaps(tmp_path, explained, status):
    site = reference_site("mn-solar")
    store = SqliteStore(tmp_path / "jcm.db")
    first, last = dt.date(2026, 10, 10), dt.date(2026, 10, 12)
    fill_history(store, site, first - dt.timedelta(days=1), last + dt.timedelta(days=1))
    noon = dt.datetime(2026, 10, 11, 4, tzinfo=dt.UTC)
    before = PeriodProcessor(site).process(store, first, last)
    store.record_finding(SequenceFinding("gap", site.site, site.gateway, E1, 100, 102, noon, "3 lost",
                                         explained=explained, start=noon, end=noon + dt.timedelta(minutes=45)))
    store.record_finding(SequenceFinding("gap", site.site, site.gateway, E1, 900, 901, noon + dt.timedelta(days=9),
                                         "another month", start=noon + dt.timedelta(days=9)))
    r = PeriodProcessor(site).process(store, first, last)
    [gap] = [f for f in r.findings if f.check == "sequence_gap"]
    assert (gap.source, gap.amount) == (f"{site.gateway}.seq", 3.0) and "3 lost" in gap.detail
    assert "a lost reading may hold a counter reset" in gap.detail
    assert r.status == status, r.reasons
    assert before.status == "verified" and before.input_hash != r.input_hash  # so the ledger gets a new revision


@pytest.mark.fuzz
def test_any_order_split_across_collectors_finds_exactly_what_is_missing(tmp_path):
    """Seqs 1..n, some never sent, the rest shuffled, redelivered and split between two
    collectors (a shared subscription) in batches: the gaps recorded are exactly the
    missing stretches, once each, whichever collector records them."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    examples = iter(range(10**9))

    @settings(max_examples=fuzz_examples(30), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(2, 60).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1), max_size=n // 2), st.randoms(use_true_random=False))))
    def one_example(case):
        n, missing, rnd = case
        store = SqliteStore(tmp_path / f"jcm-{next(examples)}.db")
        shared = SharedSubscription(store, "s")
        sent = [s for s in range(1, n + 1) if s not in missing]
        sent += rnd.sample(sent, len(sent) // 4)  # redeliveries
        rnd.shuffle(sent)
        shared.feed(sent, rnd, batch=5)
        shared.judge(100)  # the grace period is over (REFRESH_S too): each learns what the other stored
        expected, run = [], None
        for s in sorted(missing):
            run = (run[0], s) if run and run[1] == s - 1 else (s, s)
            expected = [*expected[:-1], run] if expected and expected[-1][0] == run[0] else [*expected, run]
        assert [(f.first, f.last) for f in store.sequence_findings("s")] == expected
        store.close()

    one_example()


def test_a_store_that_refuses_the_bookkeeping_for_a_while_costs_no_false_gap_nor_epoch_report(tmp_path):
    class Flaky(SqliteStore):
        down = True

        def record_seq_blocks(self, blocks):
            if self.down:
                raise StoreUnavailable("down")
            super().record_seq_blocks(blocks)

        def record_finding(self, finding):
            if self.down:
                raise StoreUnavailable("down")
            super().record_finding(finding)

    store = Flaky(tmp_path / "jcm.db")
    store.down = False
    gaps = SequenceGaps(store, grace_s=0)
    gaps.stored([reading(s)
                 for s in range(1, 4)])
    store.down = True
    gaps.stored([Reading("s", "gw", "d", T0 + dt.timedelta(seconds=s), {"x": 1.0}, seq=s, epoch=E2)
                 for s in range(1, 4)])
    store.down = False
    gaps.stored([Reading("s", "gw", "d", T0 + dt.timedelta(seconds=s), {"x": 1.0}, seq=s, epoch=E2)
                 for s in range(4, 6)])
    gaps.check()
    assert [(f.kind, f.epoch, f.first) for f in store.sequence_findings("s")] == [("epoch", E2, 3)]
    assert stored_ranges(store, "s", "gw") == [(E1, 1, 3), (E2, 1, 5)]


def _counting(store_url: str):
    """A store of ``store_url`` that counts the readings batches written and the sequence
    bookkeeping's records written (SQL statements that change its table; InfluxDB points)."""
    from store.influx_store import InfluxStore

    counts = {"batches": 0, "records": 0}
    base = open_store(store_url)
    if isinstance(base, SqliteStore):
        base.close()

        class Counting(SqliteStore):
            def write(self, *args, **kwargs):
                counts["batches"] += 1
                return super().write(*args, **kwargs)

        store = Counting(store_url.removeprefix("sqlite:///"))
        store._db.set_trace_callback(lambda sql: counts.__setitem__(
            "records", counts["records"] + (sql.lstrip().split()[0].upper() in ("INSERT", "DELETE", "REPLACE")
                                            and "sequence_" in sql and "sequence_findings" not in sql)))
        return store, counts

    class CountingInflux(InfluxStore):
        def write(self, *args, **kwargs):
            counts["batches"] += 1
            return super().write(*args, **kwargs)

        def _post_sequence(self, lines, precision):
            counts["records"] += sum(not line.startswith(b"sequence_finding") for line in lines)
            return super()._post_sequence(lines, precision)

    return CountingInflux(base.base_url, api=base.api, db=base.db), counts


def test_a_refresh_reads_the_blocks_of_the_holes_not_the_history(tmp_path):
    """A long history with many old recorded gaps: checking a new hole reads about its block
    from the store, not every run the gateway ever had."""
    read = []

    class Counting(SqliteStore):
        def _query(self, sql, params):
            rows = super()._query(sql, params)
            if "sequence_" in sql and "sequence_findings" not in sql:
                read.append(len(rows))
            return rows

    store = Counting(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    n = 3 * BLOCK_SEQS

    sent = [s for s in range(1, n + 1) if s % 50]  # 245 old gaps
    for i in range(0, len(sent), 500):
        gaps.stored(readings(sent[i:i + 500]))
    for clock[0] in (100.0, 200.0):  # holes are suspected when first checked, recorded a grace period on
        gaps.check()
    assert len(store.sequence_findings("s")) == n // 50
    read.clear()
    gaps.stored(readings(s for s in range(n + 1, n + 101) if s != n + 50))
    for clock[0] in (300.0, 400.0):
        gaps.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")][-1] == (n + 50, n + 50)
    assert sum(read) <= 4, read  # the hole's block and the one before (the newest gaps still open), twice


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_a_store_written_before_blocks_keeps_what_it_knew(backend, tmp_path, request, monkeypatch):
    """The runs of seqs a store kept before blocks (one row or point per run) are known after
    the upgrade: no false gap below them, a real one between them, and they are kept once."""
    from store import influx_store
    monkeypatch.setattr(influx_store, "MIGRATION_PAGE", 2)  # read in pages
    old = [(E1, 1, 10), (E1, 12, 20), ("", 5, 7)]
    if backend == "sqlite":
        SqliteStore(tmp_path / "jcm.db").close()
        import sqlite3
        db = sqlite3.connect(tmp_path / "jcm.db")
        db.executescript("DROP TABLE sequence_blocks; CREATE TABLE sequence_ranges (site TEXT NOT NULL, gateway "
                         "TEXT NOT NULL, epoch TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, first_ts "
                         "INTEGER NOT NULL, last_ts INTEGER NOT NULL, PRIMARY KEY (site, gateway, epoch, first)) "
                         "WITHOUT ROWID")
        db.executemany("INSERT INTO sequence_ranges VALUES ('s', 'gw', ?, ?, ?, ?, ?)",
                       [(e, f, la, int((T0 + dt.timedelta(seconds=f)).timestamp() * 1000),
                         int((T0 + dt.timedelta(seconds=la)).timestamp() * 1000)) for e, f, la in old])
        db.commit()
        db.close()
        url = f"sqlite:///{tmp_path}/jcm.db"
    else:
        port = request.getfixturevalue("influxdb").port
        # as the store wrote them: one point per writer's run, at its identity [ns]
        lines = [f"sequence_range,gateway=gw,site=s{',epoch=' + e if e else ''} first={f}i,"
                 f"first_ts={int((T0 + dt.timedelta(seconds=f)).timestamp() * 1000)}i,last={la}i,"
                 f"last_ts={int((T0 + dt.timedelta(seconds=la)).timestamp() * 1000)}i {1_000_000 + i}"
                 for i, (e, f, la) in enumerate(old + [(E1, 3, 8)])]
        import urllib3
        assert urllib3.PoolManager().request("POST", f"http://127.0.0.1:{port}/write?db=jcm&precision=ns",
                                             body="\n".join(lines).encode()).status == 204
        url = f"influxdb://127.0.0.1:{port}?api=v1&db=jcm"
    store = open_store(url)
    gaps = SequenceGaps(store, grace_s=0)
    gaps.stored([reading(s)
                 for s in range(21, 26)])
    gaps.check()
    [gap] = store.sequence_findings("s")
    assert (gap.epoch, gap.first, gap.last) == (E1, 11, 11)
    # runs inside one word of seqs: the gap is placed within it (the times of its lowest and highest seq)
    assert (gap.start, gap.end) == (T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=20))
    assert stored_ranges(store, "s", "gw") == [("", 5, 7), (E1, 1, 10), (E1, 12, 25)]
    store.close()
    store = open_store(url)  # opened again: nothing left to move, nothing moved twice
    assert stored_ranges(store, "s", "gw") == [("", 5, 7), (E1, 1, 10), (E1, 12, 25)]
    if backend == "sqlite":
        assert not store._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sequence_ranges'").fetchall()
    else:
        assert store.query('SELECT * FROM "sequence_range"') == []
    store.close()


@pytest.mark.fuzz
def test_blocks_hold_exactly_the_seqs_any_writers_stored():
    """Seqs in runs across block edges, dealt at random among writers (a shared
    subscription), each writer's blocks written: their union holds exactly those seqs,
    as runs with the readings' times at every block's lowest and highest seq; runs made
    blocks and back are the same runs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=fuzz_examples(50), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, 3 * BLOCK_SEQS), st.integers(1, BLOCK_SEQS + 2)), max_size=6),
           st.integers(1, 3), st.randoms(use_true_random=False))
    def one_example(spans, writers, rnd):
        seqs = sorted({s for a, k in spans for s in range(max(a, 1), a + k)})
        ts = {s: T0 + dt.timedelta(seconds=s) for s in range(-WORD_SEQS, 4 * BLOCK_SEQS + 2 * WORD_SEQS)}
        own: dict[tuple[int, int], list[int]] = {}
        for s in seqs:
            own.setdefault((rnd.randrange(writers), s // BLOCK_SEQS), []).append(s)
        blocks = [SeqBlock("s", "gw", E1, b, sum(1 << (s % BLOCK_SEQS) for s in mine), tuple(
            to_ms(ts[f(word)]) if word else 0 for w in range(WORDS)
            for word in [[s for s in mine if s % BLOCK_SEQS // WORD_SEQS == w]] for f in (min, max)), str(wr))
            for (wr, b), mine in own.items()]
        rnd.shuffle(blocks)
        runs = []
        for s in seqs:
            runs = [*runs[:-1], (runs[-1][0], s)] if runs and runs[-1][1] == s - 1 else [*runs, (s, s)]
        got = block_ranges(blocks)
        assert [(r.first, r.last) for r in got] == runs
        for r in got:  # exact where a run ends at its word's lowest or highest seq, within the word else
            assert ts[r.first] <= r.first_ts <= ts[r.first + WORD_SEQS]
            assert ts[r.last - WORD_SEQS] <= r.last_ts <= ts[r.last]
            if r.first == min(s for s in seqs if s // WORD_SEQS == r.first // WORD_SEQS):
                assert r.first_ts == ts[r.first]
            if r.last == max(s for s in seqs if s // WORD_SEQS == r.last // WORD_SEQS):
                assert r.last_ts == ts[r.last]
        back = block_ranges(range_blocks(got))  # runs kept before blocks, made blocks
        assert [(r.first, r.last) for r in back] == runs
        assert all(ts[r.first] <= r.first_ts and r.last_ts <= ts[r.last] for r in back)

    one_example()


def test_a_store_that_takes_writes_but_no_influxql_turns_the_bookkeeping_off_with_one_warning(victoriametrics,
                                                                                            caplog):
    """VictoriaMetrics takes InfluxDB's writes and answers every InfluxQL query with its list
    of databases: one clear WARNING, then nothing per batch (no error, no traceback)."""
    store = open_store(f"influxdb://127.0.0.1:{victoriametrics.port}?api=v2&bucket=jcm&org=jcm")
    gaps = SequenceGaps(store, grace_s=0)
    with caplog.at_level(logging.INFO, logger="collector.sequence_gaps"):
        for first in range(1, 40, 10):
            gaps.stored([reading(s)
                         for s in range(first, first + 5)])
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0][0] == "WARNING" and "list of databases" in said[0][1], said
    with pytest.raises(ReadUnsupported):
        store.seq_marks("s", "gw")
    store.close()


def test_a_collector_restarted_blocks_after_an_open_hole_still_records_it(tmp_path):
    """A hole suspected, then the collector stopped before its grace period ended: the next
    one, meeting the gateway thousands of seqs (several blocks) later, records it."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]

    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    sent = [s for s in range(1, 3 * BLOCK_SEQS) if s != 100]
    for i in range(0, len(sent), 500):
        first.stored(readings(sent[i:i + 500]))
    assert store.sequence_findings("s") == []  # stopped within the grace period
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    second.stored(readings(range(3 * BLOCK_SEQS, 3 * BLOCK_SEQS + 10)))
    for clock[0] in (100.0, 200.0):
        second.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(100, 100)]


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_a_hole_up_to_the_highest_seq_allowed_is_one_gap_read_in_one_span(backend, tmp_path, request):
    """A sender jumping as far as its epoch allows (``MAX_AHEAD``; beyond, see tests/test_hostile_seqs.py)
    leaves a hole of 2,048 blocks: it is read as one span of blocks (not block by block) and
    recorded as one gap."""
    from contract.message import MAX_AHEAD
    if backend == "sqlite":
        store = SqliteStore(tmp_path / "jcm.db")
    else:
        store = open_store(f"influxdb://127.0.0.1:{request.getfixturevalue('influxdb').port}?api=v1&db=jcm")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    gaps.stored([Reading("s", "gw", "d", T0 + dt.timedelta(seconds=s % 1000), {"x": 1.0}, seq=s, epoch=E1)
                 for s in (1, 2, 3, MAX_AHEAD)])
    for clock[0] in (100.0, 200.0):
        gaps.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(4, MAX_AHEAD - 1)]
    assert stored_ranges(store, "s", "gw") == [(E1, 1, 3), (E1, MAX_AHEAD, MAX_AHEAD)]
    store.close()


def test_a_check_looks_only_at_new_holes_while_none_changed(tmp_path, monkeypatch):
    """On a shared subscription each collector holds a hole for every seq the other took until
    it next refreshes from the store, and a check ran over all of them every CHECK_EVERY_S (the
    main cost of sharing): while no hole changed, it looks only at those above. The real gap is
    still found a grace period on, and no false one."""
    from collector.sequence_gaps.epoch import _Epoch
    walked = []
    holes = _Epoch.holes
    monkeypatch.setattr(_Epoch, "holes", lambda self: walked.append(1) or holes(self))
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    lost = 777
    for i in range(1, 4001, 200):  # the broker deals the seqs out in turn
        seqs = [s for s in range(i, i + 200) if s != lost]
        a.stored(readings(s for s in seqs if s % 2))
        b.stored(readings(s for s in seqs if not s % 2))
    clock[0] += 1
    a.check()  # a full look (a refresh is due), then the holes are as they were
    walked.clear()
    for clock[0] in (2.0, 3.0, 4.0):
        a.stored(readings(range(4001 + int(clock[0]) * 10, 4011 + int(clock[0]) * 10, 2)))
        a.check()
    assert walked == []
    for clock[0] in (20.0, 40.0):
        for gaps in (a, b):
            gaps.stored(readings([]))
            gaps.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s") if f.kind == "gap" and f.first <= 4000] == [
        (lost, lost)]


@pytest.mark.fuzz
def test_the_times_of_holes_are_those_of_a_full_look_at_every_check(tmp_path, monkeypatch):
    """Seqs in any order, split between two collectors, the clock moving on: at every check
    each hole suspected carries the time a full look over every hole would give it (that of
    the hole it was part of, or now for a new one), though a check looks at new holes only
    while none changed."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from collector.sequence_gaps.gaps import _missing_since

    suspect = SequenceGaps._suspect

    def checked(self, epochs, now):
        before = {e: sorted((f, last, t) for f, (last, t) in track.suspected.items()) for e, track in epochs.items()}
        oldest = suspect(self, epochs, now)
        times = []
        for e, track in epochs.items():
            full = {f: (last, _missing_since(before[e], f, last, now))
                    for f, last, *_ in track.holes() if not track.is_recorded(f, last)}
            assert track.suspected == full
            times += [t for _, t in full.values()]
        assert oldest == min(times, default=None)
        return oldest

    monkeypatch.setattr(SequenceGaps, "_suspect", checked)
    examples = iter(range(10**9))

    @settings(max_examples=fuzz_examples(30), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(2, 80).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1), max_size=n // 3), st.randoms(use_true_random=False))))
    def one_example(case):
        n, missing, rnd = case
        store = SqliteStore(tmp_path / f"jcm-{next(examples)}.db")
        sent = [s for s in range(1, n + 1) if s not in missing]
        sent = sorted(sent, key=lambda s: s + rnd.randint(0, 10))  # mostly in order, as a live stream
        SharedSubscription(store, "s").feed(sent, rnd, batch=5, steps=(0.0, 0.5, 1.0, 3.0))
        store.close()

    one_example()


def test_seqs_are_acknowledged_only_once_the_bookkeeping_has_them(mosquitto, sites_dir, tmp_path, monkeypatch):
    """The store refuses, for a while, the seqs' bookkeeping (and so the readings written in the same
    transaction), and the collector is stopped meanwhile: it acknowledged none of them (the broker
    redelivers them, the gateway keeps them), so the next collector raises no false gap."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    pub = Publisher(mosquitto)
    first = collector(mosquitto, store_url, sites_dir)
    subscribed(first, pub)
    pub.send([message(s) for s in range(1, 4)])
    assert wait_until(lambda: first.stored >= 3)
    time.sleep(0.3)  # their bookkeeping written too

    with monkeypatch.context() as m:
        failing_merges(m)
        pub.send([message(s) for s in range(4, 7)])
        time.sleep(1.0)
        first.stop()
    store = open_store(store_url)
    assert store.count() == 3  # seqs 1 – 3: those of 4 – 6 went with their bookkeeping
    store.close()
    second = collector(mosquitto, store_url, sites_dir)
    subscribed(second, pub, probe=7)
    pub.send([message(s) for s in range(8, 11)])
    settled(second, 4)
    second.stop()
    pub.close()
    assert [(f.first, f.last) for f in findings(store_url)] == []


def test_a_damaged_seq_record_of_a_gateway_followed_does_not_hold_the_collector_up(mosquitto, sites_dir, tmp_path,
                                                                                   caplog):
    """A row of the store's seq records is damaged (another program, a bad sector) while the collector
    follows that gateway: its seqs' books cannot be kept there, which is logged, but the readings are
    stored and acknowledged, not held with every later batch as a store unavailable for good."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    pub = Publisher(mosquitto)
    c = collector(mosquitto, store_url, sites_dir)
    subscribed(c, pub)
    pub.send([message(s) for s in (2, 3)])
    store = open_store(store_url)
    assert wait_until(lambda: stored_ranges(store) == [(E1, 1, 3)], 10)
    store.close()
    db = sqlite3.connect(tmp_path / "jcm.db")
    with db:
        db.execute("UPDATE sequence_blocks SET bits = 'damaged'")
    db.close()
    before = c.stored
    pub.send([message(s) for s in (4, 5, 6)])
    taken = wait_until(lambda: c.stored >= before + 3, 10)
    c.stop()
    pub.close()
    assert taken, c.stored
    assert "sequence bookkeeping" in caplog.text
    store = open_store(store_url)
    assert store.count() == 6
    store.close()


def test_a_crash_between_readings_and_their_seq_records_leaves_neither(mosquitto, sites_dir, tmp_path, monkeypatch):
    """The collector dies as the seqs' records of a batch are written (a crash, a power cut): the
    store holds neither that batch's readings nor their records (one transaction), so no reading
    is stored that the books do not know of; the broker redelivers the batch to the next collector,
    which stores both."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    pub = Publisher(mosquitto)
    first = collector(mosquitto, store_url, sites_dir)
    subscribed(first, pub)
    store = open_store(store_url)
    assert wait_until(lambda: stored_ranges(store) == [(E1, 1, 1)], 10)
    store.close()

    class Crash(BaseException):
        pass

    with monkeypatch.context() as m:
        failing_merges(m, error=Crash())
        pub.send([message(s) for s in range(2, 5)])
        assert first.done.wait(10) and isinstance(first.failure, Crash)
    first.stop()
    store = open_store(store_url)
    assert (store.count(), stored_ranges(store)) == (1, [(E1, 1, 1)])  # seq 1's reading and its record only
    store.close()
    second = collector(mosquitto, store_url, sites_dir)
    assert wait_until(lambda: second.stored >= 3, 30), second.stored
    second.stop()
    pub.close()
    store = open_store(store_url)
    assert (store.count(), stored_ranges(store)) == (4, [(E1, 1, 4)])
    store.close()


def test_the_findings_of_a_write_tried_again_are_written_with_it(mosquitto, sites_dir, tmp_path, monkeypatch):
    """The store fails a batch's write as its seqs' records are merged (a disk I/O error) and takes
    it when tried again: what following its seqs the first time wrote in that transaction (a gap its
    late seqs resolve, a new epoch's finding) went with the rollback, and is written with the retry."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    pub = Publisher(mosquitto)
    c = collector(mosquitto, store_url, sites_dir)
    subscribed(c, pub)
    pub.send([message(s) for s in (2, 3, 7)])
    assert wait_until(lambda: [(f.first, f.last) for f in findings(store_url)] == [(4, 6)], 20)
    failing: list[bool] = []
    failing_merges(monkeypatch, lambda: bool(failing) and failing.pop())
    for late in ([message(s) for s in (4, 5, 6)], [message(1, E2)]):
        failing[:], before = [True], c.stored
        pub.send(late)
        assert wait_until(lambda: c.stored >= before + len(late), 20), c.stored
        assert not failing
    resolved = wait_until(lambda: [f.resolved is not None for f in findings(store_url)] == [True], 10)
    c.stop()
    pub.close()
    assert (resolved, [(f.epoch, f.previous, f.first) for f in findings(store_url, "epoch")]) == (True, [(E2, E1, 7)])


def test_a_reading_the_store_refuses_only_when_its_write_is_tried_again_has_no_seq_recorded(tmp_path, monkeypatch):
    """A write fails as its seqs' records are merged; before it is tried again another collector
    stores a message at the instant of one of its readings whose channels and those of that
    reading are too many to merge: the retry refuses that reading, and its seq, followed by the
    try that rolled back, is not recorded as stored (a gap hidden)."""
    store, other = SqliteStore(tmp_path / "jcm.db"), SqliteStore(tmp_path / "jcm.db")
    gaps = SequenceGaps(store, grace_s=0)

    def reading(s, channels=("x",), at=None):
        return Reading("s", "gw", "d", T0 + dt.timedelta(seconds=at or s), dict.fromkeys(channels, 1.0), seq=s,
                       epoch=E1)

    batch = [reading(1, [f"a{i}" for i in range(300)]), reading(2), reading(3)]
    failing = [True]
    failing_merges(monkeypatch, lambda: bool(failing) and failing.pop())
    staged: list[SeqBlock] = []

    def books(refused):
        gone = {id(r) for r, _ in refused}
        staged[:] = gaps.staged([r for r in batch if id(r) not in gone])
        return staged

    with pytest.raises(StoreUnavailable):
        store.write(batch, books=books)
    other.write([reading(9, [f"b{i}" for i in range(300)], at=1)])  # seq 9, a message at seq 1's instant
    refused = store.write(batch, books=books)
    gaps.settled(staged)
    assert [r.seq for r, _ in refused] == [1]
    assert stored_ranges(store, "s", "gw") == [(E1, 2, 3)]


@pytest.mark.fuzz
def test_writes_refused_and_tried_again_across_two_collectors_keep_the_books_those_of_the_readings_held(
        tmp_path, monkeypatch):
    """Seqs 1..n, some never sent, some whose readings the store refuses (values it cannot hold),
    the rest shuffled, redelivered and split between two collectors on one SQLite store in
    batches written with their books (``ReadingStore.write``), whose seqs' records fail at random
    (a write tried again, the other collector's batch written meanwhile): the seqs recorded are
    exactly those of the readings held, every seq acknowledged is held, and after each phase every seq
    not held is in one gap (gaps do not overlap), a gap being resolved once all its seqs are held (those
    a late batch brings, after the grace period). A gap may also cover seqs held: those of a write tried
    again for longer than the grace period (the other collector's batches meanwhile), not in the store
    when it was judged; resolved once they are."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    examples = iter(range(10**9))
    failing = [None]
    failing_merges(monkeypatch, lambda: failing[0] is not None and failing[0].random() < 0.5)

    @settings(max_examples=fuzz_examples(15), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(2, 40).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1), max_size=n // 3), st.sets(st.integers(1, n - 1), max_size=n // 4),
        st.sets(st.integers(1, n - 1), max_size=n // 2), st.randoms(use_true_random=False))))
    def one_example(case):
        n, missing, refused, late, rnd = case
        path = tmp_path / f"jcm-{next(examples)}.db"
        stores = [SqliteStore(path), SqliteStore(path)]
        clock = [0.0]
        books = [SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for store in stores]

        def batched(sent: list[int]) -> list[list[Reading]]:
            sent += rnd.sample(sent, len(sent) // 4)  # redeliveries
            rnd.shuffle(sent)
            out = []
            while sent:
                k = rnd.randint(1, 5)
                out.append([Reading("s", "gw", "d", T0 + dt.timedelta(seconds=s), {"x": 10**400 if s in refused else 1.0},
                                    seq=s, epoch=E1) for s in sent[:k]])
                sent = sent[k:]
            return out

        batches, acked = [], set()

        def keep(i: int, batch: list[Reading]) -> None:
            """As the collector keeps a batch: written with its books, tried again (the other collector
            meanwhile) while the store is unavailable, settled, saved, then acknowledged."""
            staged = []

            def staging(refused):
                gone = {id(r) for r, _ in refused}
                staged[:] = books[i].staged([r for r in batch if id(r) not in gone])
                return staged

            while True:
                try:
                    taken = stores[i].write(batch, books=staging)
                    break
                except StoreUnavailable:
                    if batches and rnd.random() < 0.5:
                        failing[0], held = None, failing[0]
                        keep(1 - i, batches.pop(0))
                        failing[0] = held
            books[i].settled(staged)
            failing[0], held = None, failing[0]
            books[i].save()
            failing[0] = held
            acked.update(r.seq for r in batch if all(r is not t for t, _ in taken))
            clock[0] += rnd.choice((0.0, 1.0))
            books[i].check()

        for phase, unsent in (([s for s in range(1, n + 1) if s not in missing | late], missing | late),
                              (sorted(late - missing), missing)):
            batches[:] = batched(phase)
            failing[0] = rnd
            while batches:
                keep(rnd.randrange(2), batches.pop(0))
            failing[0] = None
            for clock[0] in (clock[0] + 100, clock[0] + 200):
                for b in books:
                    b.check()
            held = {seq for (seq,) in stores[0]._db.execute("SELECT seq FROM readings WHERE gateway = 'gw'")}
            assert acked <= held
            assert {s for _, first, last in stored_ranges(stores[0], "s", "gw") for s in range(first, last + 1)} == held
            assert held == set(range(1, n + 1)) - unsent - refused
            gaps = sorted((f.first, f.last, f.resolved is not None) for f in stores[0].sequence_findings("s")
                          if f.kind == "gap")
            assert all(a[1] < b[0] for a, b in zip(gaps, gaps[1:])), gaps
            assert all(any(first <= s <= last for first, last, _ in gaps) for s in set(range(1, n + 1)) - held), gaps
            assert all(resolved == (set(range(first, last + 1)) <= held) for first, last, resolved in gaps), gaps
        for store in stores:
            store.close()

    one_example()


def test_a_late_seq_resolves_a_gap_the_other_collector_recorded(tmp_path):
    """Two collectors on a shared subscription: one records a gap, the late seq reaches the
    other, which never looked at that hole: the gap is marked resolved all the same."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    a.stored([reading(s) for s in (1, 2, 3)])
    b.stored([reading(5)])  # learns 1..3 from the store: 4 is missing
    clock[0] = 20.0
    b.check()
    assert [(f.first, f.last, f.resolved) for f in store.sequence_findings("s")] == [(4, 4, None)]
    a.stored([reading(4)])
    clock[0] = 40.0
    for c in (a, b):
        c.check()
    [f] = store.sequence_findings("s")
    assert f.resolved is not None


def test_a_recorded_gap_whose_late_seqs_are_split_across_collectors_is_resolved(tmp_path):
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    a.stored([reading(s) for s in (1, 2, 3, 10)])
    b.stored([reading(s) for s in (11, 12)])
    clock[0] = 20.0
    for c in (a, b):
        c.check()
    assert [(f.first, f.last, f.resolved) for f in store.sequence_findings("s")] == [(4, 9, None)]
    a.stored([reading(s) for s in (4, 6, 8)])
    b.stored([reading(s) for s in (5, 7, 9)])
    clock[0] = 40.0
    for c in (a, b):
        c.check()
    [f] = store.sequence_findings("s")
    assert f.resolved is not None


def test_a_hole_inside_a_gap_another_collector_recorded_is_not_recorded_again(tmp_path):
    """Two collectors on a shared subscription: the one that met the gateway first does not know the gaps
    the other recorded since, and a late seq splits one of them: before, what it still missed of that gap
    (seq 7 of 6..7) was recorded as a gap of its own, its seqs counted missing twice."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    a.stored([reading(s) for s in (1, 2)])
    b.stored([reading(s) for s in (5, 8)])
    clock[0] = 20.0
    for c in (a, b):
        c.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(3, 4), (6, 7)]
    a.stored([reading(s) for s in (3, 4, 6)])
    for clock[0] in (40.0, 60.0, 80.0):
        for c in (a, b):
            c.check()
    assert {(f.first, f.last): f.resolved is not None for f in store.sequence_findings("s")} == {
        (3, 4): True, (6, 7): False}


def test_a_gap_whose_late_seqs_split_across_collectors_before_their_books_started_again_is_resolved(tmp_path):
    """The books of a collector start again when a write is tried again (or the collector restarts): the
    gaps it looked for in the store are forgotten. Before, a gap recorded by one collector, whose late seqs
    then reached both (each holding a part), was never resolved once their books started again: neither
    looked for it, and the monthly QA called a complete period incomplete."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    a.stored([reading(s) for s in (1, 2, 3, 13, 14)])
    clock[0] = 20.0
    a.check()
    b.stored([reading(15)])
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(4, 12)]
    a.stored([reading(s) for s in (4, 6, 8, 10, 12)])
    b.stored([reading(s) for s in (5, 7, 9, 11)])
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))  # books started again
    b.stored([reading(16)])
    for clock[0] in (40.0, 60.0):
        for c in (a, b):
            c.check()
    [f] = store.sequence_findings("s")
    assert f.resolved is not None


def test_a_hole_not_yet_judged_when_the_books_start_again_is_judged_though_its_gateway_sends_no_more(tmp_path):
    """A write tried again starts the books again from the store: before, a gateway that sent nothing
    more was not met again, and its hole (seqs 2..3, not yet judged) was never recorded: a silent loss."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    books = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    books.stored([reading(s) for s in (1, 4)])
    books.staged([])  # a write of readings the store refused whole, tried again
    books.settled(books.staged([]))
    for clock[0] in (20.0, 40.0):
        books.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(2, 3)]


def _restart_within_grace(tmp_path, blocks: int) -> list[tuple[int, int]]:
    """A gateway replays a backlog of ``blocks`` blocks within the grace period (as batches do),
    seqs 11..20 lost near its start, and the collector restarts before the grace period is
    over: the gaps the next collector records."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    top = blocks * BLOCK_SEQS
    seqs = [s for s in range(1, top) if not 11 <= s <= 20]
    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    for i in range(0, len(seqs), 5000):
        first.stored([Reading("s", "gw", "d", T0, {"x": 1.0}, seq=s, epoch=E1) for s in seqs[i:i + 5000]])
    clock[0] = 5.0  # restarted within the grace period
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    second.stored([Reading("s", "gw", "d", T0, {"x": 1.0}, seq=top, epoch=E1)])
    for clock[0] in (100.0, 200.0):
        second.check()
    return [(f.first, f.last) for f in store.sequence_findings("s")]


def test_a_collector_restarted_within_the_grace_period_of_a_backlog_finds_its_hole(tmp_path):
    """Before (16 blocks learnt): 18 blocks of backlog, and the hole at their start was a silent loss."""
    assert _restart_within_grace(tmp_path, 18) == [(11, 20)]


def test_a_collector_restarted_within_the_grace_period_of_a_hole_below_its_newest_blocks_records_it(
        tmp_path, monkeypatch):
    """Before (the newest LOAD_BLOCKS blocks learnt, made small here): a hole below them that
    the stopped collector had not yet judged was never looked at again, a silent loss."""
    monkeypatch.setattr("collector.sequence_gaps.marks.LOAD_BLOCKS", 4)
    assert _restart_within_grace(tmp_path, 6) == [(11, 20)]


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_gaps_noticed_in_the_same_millisecond_are_all_kept(backend, tmp_path, request):
    """A check records every hole past the grace period at once: InfluxDB keeps one point per
    series and time, so findings of one gateway and epoch noticed alike must not be one point."""
    if backend == "sqlite":
        store = SqliteStore(tmp_path / "jcm.db")
    else:
        store = open_store(f"influxdb://127.0.0.1:{request.getfixturevalue('influxdb').port}?api=v1&db=jcm")
    gaps = [SequenceFinding("gap", "s", "gw", E1, first, first + 1, T0, "lost") for first in (4, 1004, 2000)]
    for f in gaps:
        store.record_finding(f)
    store.record_finding(replace(gaps[1], resolved=T0 + dt.timedelta(seconds=5)))
    assert [(f.first, f.resolved) for f in store.sequence_findings("s")] == [
        (4, None), (1004, T0 + dt.timedelta(seconds=5)), (2000, None)]
    store.close()


def open_backend(backend: str, tmp_path, request):
    """An empty store: SQLite, or InfluxDB 1.6.7."""
    if backend == "sqlite":
        return SqliteStore(tmp_path / "jcm.db")
    return open_store(f"influxdb://127.0.0.1:{request.getfixturevalue('influxdb').port}?api=v1&db=jcm")


@pytest.mark.fuzz
@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_seqs_about_block_edges_split_across_restarted_collectors_give_every_lost_seq_one_gap(
        backend, tmp_path, request, monkeypatch):
    """Seqs about the edges of blocks and words (4095/4096/4097, 8191/8192), some lost, the
    rest redelivered, shuffled and split between two collectors that restart now and then (one
    block read a query when they meet the gateway), in stretches each within the grace period,
    the grace period passing after some (gaps recorded, marks moved on), both collectors
    restarted before the last stretch's holes are judged: every missing seq lies in exactly
    one gap recorded and no stored seq in any, in either store, and every seq up to the mark
    is stored or in a gap."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    monkeypatch.setattr("collector.sequence_gaps.marks.LOAD_BLOCKS", 1)
    store = open_backend(backend, tmp_path, request)
    domain = [*range(1, 6), *range(60, 70), *range(4090, 4102), *range(8188, 8198), 12287]
    examples = iter(range(10**9))

    @settings(max_examples=fuzz_examples(4), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sets(st.sampled_from(domain[:-1]), min_size=1, max_size=6),
           st.sets(st.integers(1, len(domain) - 2), max_size=3), st.randoms(use_true_random=False))
    def one_example(lost, cuts, rnd):
        site = f"s{next(examples)}"  # one store for every example
        shared = SharedSubscription(store, site)
        kept = [s for s in domain[:-1] if s not in lost]
        edges = [0, *sorted(c for c in cuts if c < len(kept)), len(kept)]
        for a, b in zip(edges, edges[1:]):
            sent = kept[a:b] + rnd.sample(kept[:b], min(b, 3))  # redeliveries
            rnd.shuffle(sent)
            # within the grace period: none is late
            shared.feed(sent, rnd, batch=4, restart=0.15, steps=(0.05, 0.2, 0.3))
            if b < len(kept) and rnd.random() < 0.5:  # all of the stretch is in: its holes are judged
                shared.judge(20, 40)
        shared.collectors = [shared.restarted(), shared.restarted()]
        shared.collectors[rnd.randrange(2)].stored(shared.readings([domain[-1]]))
        shared.judge(100, 200, 300)
        gaps = [(f.first, f.last) for f in store.sequence_findings(site) if f.kind == "gap"]
        stored = {*kept, domain[-1]}
        assert not [s for s in stored if any(a <= s <= b for a, b in gaps)], gaps
        assert all(sum(a <= s <= b for a, b in gaps) == 1 for s in range(1, domain[-1]) if s not in stored), (
            gaps, lost)
        mark = store.seq_marks(site, "gw")[E1]
        assert all(s in stored or any(a <= s <= b for a, b in gaps) for s in range(1, mark + 1)), (mark, gaps)

    one_example()
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_stores_keep_the_highest_mark_and_give_blocks_in_pages(backend, tmp_path, request):
    """Two collectors' marks: the highest of each epoch is read. Blocks of two writers read a
    few a query: each block once, joined, whatever the writers' records, and a page shorter
    than asked is the last."""
    store = open_backend(backend, tmp_path, request)
    store.record_seq_marks([SeqMark("s", "gw", E1, 100, "a"), SeqMark("s", "gw", "", 7, "a")])
    store.record_seq_marks([SeqMark("s", "gw", E1, 50, "b"), SeqMark("s", "other", E1, 900, "b")])
    assert store.seq_marks("s", "gw") == {E1: 100, "": 7}
    store.record_seq_marks([SeqMark("s", "gw", E1, 120, "b")])
    assert store.seq_marks("s", "gw") == {E1: 120, "": 7}
    assert store.seq_marks("s", "nobody") == {}

    def block(n, writer):
        return SeqBlock("s", "gw", E1, n, 1 << (n % 7) | 2, (to_ms(T0),) * (2 * WORDS), writer)

    store.record_seq_blocks([block(n, "a") for n in (0, 1, 2, 5, 9, 10)])
    store.record_seq_blocks([block(n, "b") for n in (1, 3, 4, 5, 11)])
    whole = store.seq_blocks("s", "gw", E1, 0, 20)
    for limit in (1, 2, 3):
        paged, first = [], 1
        while True:
            page = store.seq_blocks("s", "gw", E1, first, 20, limit)
            assert len(page) <= limit
            paged += page
            if len(page) < limit:  # the last page
                break
            first = page[-1].block + 1
        assert paged == whole[1:], limit
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_a_store_without_marks_is_judged_from_its_lowest_block(backend, tmp_path, request, monkeypatch):
    """A store a version before marks wrote, a hole left unjudged in its first block and five
    blocks above it (one block read a query): a collector meeting the gateway records the hole,
    then marks the epoch judged up to its highest seq."""
    monkeypatch.setattr("collector.sequence_gaps.marks.LOAD_BLOCKS", 1)
    store = open_backend(backend, tmp_path, request)
    top = 6 * BLOCK_SEQS - 1
    store.record_seq_blocks(range_blocks([SeqRange("s", "gw", E1, a, b, T0, T0) for a, b in ((1, 10), (21, top))]))
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    gaps.stored([Reading("s", "gw", "d", T0, {"x": 1.0}, seq=top + 1, epoch=E1)])
    for clock[0] in (100.0, 200.0):
        gaps.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(11, 20)]
    assert store.seq_marks("s", "gw") == {E1: top + 1}
    store.close()


def test_the_mark_never_passes_seqs_whose_blocks_the_store_refused(tmp_path):
    """Seqs followed whose block the store has not taken yet are no fact about the store: a
    check meanwhile moves the mark only up to the block before theirs."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])

    gaps.stored(readings(range(1, BLOCK_SEQS + 10)))
    assert store.seq_marks("s", "gw") == {E1: BLOCK_SEQS + 9}

    def down(blocks):
        raise StoreUnavailable("down for the bookkeeping")

    store.record_seq_blocks = down
    gaps.stored(readings(range(BLOCK_SEQS + 10, 3 * BLOCK_SEQS)))
    clock[0] = 10.0
    gaps.check()
    assert store.seq_marks("s", "gw") == {E1: BLOCK_SEQS + 9}
    del store.record_seq_blocks
    gaps.stored([])
    clock[0] = 20.0
    gaps.check()
    assert store.seq_marks("s", "gw") == {E1: 3 * BLOCK_SEQS - 1}


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_the_mark_never_passes_a_hole_whose_gap_the_store_refused(backend, tmp_path, request, monkeypatch):
    """The store refuses the finding of a hole whenever its grace period is over: the mark
    stays below the hole while the collector goes on, and the
    collector that takes over after a restart, with the hole far below its newest blocks (one
    block read a query), records it."""
    monkeypatch.setattr("collector.sequence_gaps.marks.LOAD_BLOCKS", 1)
    store = open_backend(backend, tmp_path, request)
    clock = [0.0]

    def refuse(f):
        if f.first == 11:
            refused.append(f)
            raise StoreUnavailable("down for that one")
        type(store).record_finding(store, f)

    refused = []
    store.record_finding = refuse
    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    top = 6 * BLOCK_SEQS
    seqs = [s for s in range(1, top) if not 11 <= s <= 20]
    for i in range(0, len(seqs), 5000):
        first.stored(readings(seqs[i:i + 5000]))
    for clock[0] in (20.0, 40.0, 60.0, 80.0):  # a check with each batch: its errors are logged, not raised
        first.stored(readings([top + int(clock[0])]))
    assert len(refused) >= 2 and store.seq_marks("s", "gw") == {E1: 10}
    del store.record_finding
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    second.stored(readings([top + 100]))
    for clock[0] in (100.0, 200.0):
        second.check()
    assert (11, 20) in [(f.first, f.last) for f in store.sequence_findings("s")]
    store.close()


def test_an_influxdb_finding_kept_at_its_time_noticed_is_still_read_and_resolved(influxdb):
    """Stores written before kept a finding at the time noticed: it reads as before, and its
    resolution (now a point at its first seq) replaces it."""
    from influxdb_client import WritePrecision

    store = open_store(f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm")
    store._post_sequence([f'sequence_finding,epoch={E1},gateway=gw,kind=gap,site=s cause="lost",explained=0i,'
                          f'first=4i,last=5i,previous="" {to_ms(T0)}'.encode()], WritePrecision.MS)
    [old] = store.sequence_findings("s")
    assert (old.first, old.last, old.noticed, old.resolved) == (4, 5, T0, None)
    store.record_finding(replace(old, resolved=T0 + dt.timedelta(seconds=5)))
    assert [(f.first, f.noticed, f.resolved) for f in store.sequence_findings("s")] == [
        (4, T0, T0 + dt.timedelta(seconds=5))]
    store.close()


def test_a_gap_below_the_mark_whose_late_seqs_straddle_a_restart_is_resolved(tmp_path):
    """A gap recorded and the mark moved blocks past it; part of the gap arrives, the collector
    restarts (it reads the blocks from the mark up only) and the rest arrives: every seq of
    the gap is stored, so it is resolved (before: it stayed open, a month for review)."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]

    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    first.stored(readings([s for s in range(1, 3 * BLOCK_SEQS) if not 4 <= s <= 9]))
    for clock[0] in (20.0, 40.0):
        first.check()
    assert [(f.first, f.last) for f in store.sequence_findings("s")] == [(4, 9)]
    assert store.seq_marks("s", "gw")[E1] >= 2 * BLOCK_SEQS
    first.stored(readings([4, 5, 6]))
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    second.stored(readings([7, 8, 9]))
    for clock[0] in (60.0, 80.0):
        second.check()
    [f] = store.sequence_findings("s")
    assert f.resolved is not None


def test_a_late_seq_of_a_gap_below_the_floor_is_looked_for_though_newer_gaps_are_open(tmp_path):
    """Gap 4..5 recorded, the books started again past it, then more gaps than ``OPEN_GAPS`` recorded above:
    its late seqs split between two collectors (4 to one, 5 to the other). Before, the late seq put the gap
    among those looked for only to evict it at once (the oldest), so neither read the other's seq from the
    store and the gap, whole in the store, stayed open: a complete period called incomplete."""
    from collector.sequence_gaps.epoch import OPEN_GAPS
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]

    a = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    a.stored([reading(s) for s in (1, 2, 3, 6, 7, 8)])
    for clock[0] in (20.0, 40.0):
        a.check()
    assert store.seq_marks("s", "gw")[E1] >= 8
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))  # books started again
    above = range(9, 9 + 2 * (OPEN_GAPS + 2), 2)  # from the floor up, a lost seq between each two held
    a.stored([reading(s) for s in above])
    b.stored([reading(above[-1] + 1)])
    for clock[0] in (60.0, 80.0):
        for c in (a, b):
            c.check()
    assert len([f for f in store.sequence_findings("s") if f.resolved is None]) == OPEN_GAPS + 2
    a.stored([reading(4)])
    b.stored([reading(5)])
    for clock[0] in (100.0, 120.0):
        for c in (a, b):
            c.check()
    assert {(f.first, f.last): f.resolved is not None for f in store.sequence_findings("s")}[(4, 5)]


def test_a_late_seq_of_an_old_gap_above_the_floor_is_looked_for_though_newer_gaps_are_open(tmp_path):
    """More gaps than ``OPEN_GAPS`` recorded, then the late seqs of the oldest (2..3) split between two
    collectors: each must read the other's seq from the store to find the gap whole."""
    from collector.sequence_gaps.epoch import OPEN_GAPS
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))

    held = range(1, 3 * (OPEN_GAPS + 2), 3)  # two lost seqs between each two held
    a.stored([reading(s) for s in held])
    b.stored([reading(held[-1] + 1)])
    for clock[0] in (20.0, 40.0):
        for c in (a, b):
            c.check()
    assert len([f for f in store.sequence_findings("s") if f.resolved is None]) == OPEN_GAPS + 1
    a.stored([reading(2)])
    b.stored([reading(3)])
    for clock[0] in (60.0, 80.0):
        for c in (a, b):
            c.check()
    assert {(f.first, f.last): f.resolved is not None for f in store.sequence_findings("s")}[(2, 3)]
