"""Hostile sequence numbers (a gateway's password in the wrong hands, or a broken gateway):
what crafted seqs and epochs can cost the collector is bounded, none stops or blinds it,
every reading is still stored and acknowledged, and the anomaly is named."""

import datetime as dt
import json
import logging
import random
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.acknowledgement import Acknowledgements
from collector.claim import MAX_KEPT_RANGES
from collector.sequence_gaps import SequenceGaps, epoch_churn, far_seqs, holes_cap, own_blocks
from collector.sequence_gaps.far_seqs import FAR_HELD
from collector.sequence_gaps.own_blocks import OWN_BLOCKS
from contract.acknowledgement import MAX_RANGES
from contract.message import MAX_AHEAD, MAX_SEQ, Reading
from contract.store import BLOCK_SEQS, CustodyFinding, SequenceFinding, SignedMessage
from store import open_store
from store.sqlite_store import SqliteStore
from tests.conftest import fuzz_examples
from tests.test_collector import Publisher, config, wait_until
from tests.test_sequence_gaps import (E1, T0, SharedSubscription, collector, message, sites_dir,  # noqa: F401
                                      stored_ranges, subscribed)

GW = ("s", "gw")


def _store(backend: str, tmp_path, request):
    if backend == "sqlite":
        return SqliteStore(tmp_path / "jcm.db")
    return open_store(f"influxdb://127.0.0.1:{request.getfixturevalue('influxdb').port}?api=v1&db=jcm&timeout=5")


def _readings(seqs, epoch=E1, gateway="gw"):
    return [Reading("s", gateway, "d", T0 + dt.timedelta(seconds=s % 10**6), {"x": 1.0}, seq=s, epoch=epoch)
            for s in seqs]


def _judged(gaps: SequenceGaps, clock: list[float]) -> None:
    """Let every hole outlive the grace period (10 s) and be judged."""
    for clock[0] in (clock[0] + 100.0, clock[0] + 200.0):
        gaps.check()


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_seqs_far_beyond_the_epoch_are_named_not_followed_and_cost_a_block_at_most_each(backend, tmp_path, request,
                                                                                       caplog):
    """Seqs of 2**62, MAX_SEQ and k * 8 Mi among an honest stream: before, a block each in the store
    and the collector, and one gap of up to 2**63 seqs that no later seq could ever resolve."""
    store = _store(backend, tmp_path, request)
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    hostile = [k * 2 * MAX_AHEAD for k in range(1, 301)] + [2**62, MAX_SEQ]
    with caplog.at_level(logging.WARNING, logger="collector.sequence_gaps"):
        gaps.stored(_readings(range(1, 101)))
        for i in range(0, len(hostile), 50):
            gaps.stored(_readings(hostile[i:i + 50]))
        gaps.stored(_readings(s for s in range(101, 201) if s != 150))  # an honest reading lost: still found
        _judged(gaps, clock)
    found = store.sequence_findings("s")
    assert [(f.first, f.last) for f in found if f.kind == "gap"] == [(150, 150)]
    [jump] = [f for f in found if f.kind == "jump"]
    assert (jump.gateway, jump.epoch, jump.first, jump.last, jump.resolved) == ("gw", E1, hostile[0], MAX_SEQ, None)
    assert f"{len(hostile)} reading(s) of epoch {E1}" in jump.cause
    # beyond the honest block, one block for each seq held (so that a restarted collector holds it too)
    assert stored_ranges(store, *GW) == [(E1, 1, 149), (E1, 151, 200)] + [(E1, s, s) for s in hostile]
    track = gaps._gateways[GW][E1]
    assert len(track.far) == len(hostile) and len(track.own) <= 1
    warnings = [r.getMessage() for r in caplog.records if "beyond seq" in r.getMessage()]
    assert len(warnings) == 1
    assert f"site s: gateway gw: 50 reading(s) of epoch {E1} with seqs {hostile[0]}" in warnings[0]
    store.close()


def test_far_seqs_held_beyond_the_bound_are_counted_and_the_rest_followed(tmp_path):
    """More far seqs than are held: the first ``FAR_HELD`` met are held (each written as a block: the
    lowest would cost a block for every reading of a descending stream), the finding says how many
    were not."""
    store = SqliteStore(tmp_path / "jcm.db")
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: 0.0)
    gaps.stored(_readings([1]))
    far = [MAX_AHEAD * 4 + k for k in range(FAR_HELD + 10, 0, -1)]
    gaps.stored(_readings(far))
    track = gaps._gateways[GW][E1]
    assert [s for s, _ in track.far] == sorted(far[:FAR_HELD])
    [jump] = store.sequence_findings("s")
    assert "10 of them not held" in jump.cause and jump.last == max(far)


def test_a_backlog_the_live_lane_overtook_is_followed_once_the_epoch_reaches_it(tmp_path, monkeypatch):
    """A young epoch whose live lane runs more than ``MAX_AHEAD`` ahead of its backlog (a gateway
    offline from its start; the bound made small): the live seqs are held, followed as the backlog
    drains, the finding resolved, and no gap is recorded."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    live = far_seqs.MAX_AHEAD + 20_000
    gaps.stored(_readings(range(live, live + 100)))  # first the live lane
    assert gaps._gateways[GW][E1].known == 0
    for i in range(1, live, 1000):  # then the backlog, in batches
        gaps.stored(_readings(range(i, min(i + 1000, live))))
    _judged(gaps, clock)
    [jump] = store.sequence_findings("s")
    assert jump.kind == "jump" and jump.resolved is not None
    assert stored_ranges(store, *GW) == [(E1, 1, live + 99)]


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_sparse_seqs_hold_a_bounded_number_of_blocks_and_lose_no_seq(backend, tmp_path, request):
    """Seqs 4,096 apart (each in a block of its own, never covered whole): before, the collector kept
    every block (5 KB each) for ever. Now at most ``OWN_BLOCKS`` per epoch, and a block dropped and
    touched again is written beside what was written of it (no seq forgotten)."""
    store = _store(backend, tmp_path, request)
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: 0.0)
    sparse = [k * BLOCK_SEQS for k in range(1, 4 * OWN_BLOCKS)]
    for i in range(0, len(sparse), 32):
        gaps.stored(_readings(sparse[i:i + 32]))
        assert len(gaps._gateways[GW][E1].own) <= OWN_BLOCKS
    gaps.stored(_readings([s + 1 for s in sparse[:3]]))  # blocks dropped long ago
    assert stored_ranges(store, *GW) == sorted([(E1, s, s + 1) for s in sparse[:3]] + [(E1, s, s) for s in sparse[3:]])
    store.close()


def test_a_custody_finding_at_the_highest_seq_is_kept_by_influxdb(influxdb):
    """InfluxDB's last time is 2**63 - 2 ns (2262-04-11): before, a custody finding at seq MAX_SEQ was
    refused, the collector retried it for ever and stored nothing more."""
    store = open_store(f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm&timeout=5")
    for seq in (MAX_SEQ, MAX_SEQ - 1, 0, 1):
        store.record_custody_finding(CustodyFinding("conflict", "s", "gw", E1, seq, T0, T0, f"at {seq}"))
        store.record_finding(SequenceFinding("jump", "s", "gw", E1, seq, MAX_SEQ, T0, f"at {seq}"))
    assert sorted((f.seq, f.detail) for f in store.custody_findings("s")) == [
        (s, f"at {s}") for s in (0, 1, MAX_SEQ - 1, MAX_SEQ)]
    assert sorted(f.first for f in store.sequence_findings("s")) == [0, 1, MAX_SEQ - 1, MAX_SEQ]
    # a signed message of MAX_SEQ has no time in InfluxDB: its reading is refused (a dead letter), not lost
    [r] = _readings([MAX_SEQ])
    [(refused, why)] = store.write([r], messages=[SignedMessage("s", "gw", E1, MAX_SEQ, r.ts, "h", "p", "k", b"{}")])
    assert refused is r and "its signed message" in why and "time outside range" in why
    store.close()


def test_hostile_sparse_seqs_of_one_gateway_leave_the_others_ranges_and_forgetting_is_logged(tmp_path, sites_dir,
                                                                                              caplog):
    """Ranges are kept per gateway and epoch: a gateway sending seqs 2 apart fills only its own, and
    the ranges it forgets (resent by the gateway after its confirm timeout) are logged once. Far above
    the window of bits (the floor is not known here: 1), the seqs are kept as ranges."""
    broker = type("Broker", (), {"url": "mqtt://127.0.0.1:1"})  # never connected: nothing is published
    acks = Acknowledgements(config(broker, f"sqlite:///{tmp_path}/jcm.db", sites_dir),
                            [("s", "gw"), ("s", "honest")])
    with caplog.at_level(logging.WARNING, logger="collector.acknowledgement"):
        acks.kept(_readings(range(1, 50), gateway="honest"), [])
        for i in range(0, 12 * MAX_RANGES, 2000):
            acks.kept(_readings(range(10**6 + i, 10**6 + i + 2000, 2)), [])
        acks.kept(_readings(range(50, 60), gateway="honest"), [])
    assert list(acks._gateways[("s", "honest")].epochs[E1].runs()) == [(1, 59)]
    assert len(acks._gateways[GW].epochs[E1].above) == MAX_KEPT_RANGES
    forgot = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(forgot) == 1 and "gateway gw" in forgot[0] and E1 in forgot[0], forgot


@pytest.mark.fuzz
def test_hostile_seqs_and_epochs_never_stop_the_collector_nor_lose_a_reading(mosquitto, sites_dir, tmp_path):
    """Any seq (negative, 0, bool, float, text, huge, MAX_SEQ, far apart) and any epoch, then honest
    readings: each valid reading is stored, each invalid one a dead letter, and the collector runs on."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = collector(mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    subscribed(c, pub)
    seqs = st.one_of(st.integers(-2**64, 2**64), st.sampled_from([0, 1, MAX_SEQ, MAX_SEQ - 1, 2**62, True, False]),
                     st.floats(allow_nan=False), st.text(max_size=5), st.none())
    epochs = st.one_of(st.just(E1), st.text("0123456789abcdef", min_size=16, max_size=16), st.text(max_size=20),
                       st.integers())
    assert wait_until(lambda: c.stored >= 1, 10)
    time.sleep(0.5)  # the probes sent until one landed
    sent = {"valid": c.stored, "dead": c.dead}
    honest = [1000]

    @settings(max_examples=fuzz_examples(15), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(seqs, epochs), min_size=1, max_size=20))
    def run(pairs):
        topic, body = message(1)
        out = []
        for seq, epoch in pairs:
            fields = {**json.loads(body), "seq": seq, "epoch": epoch}
            valid = (type(seq) is int and 0 <= seq <= MAX_SEQ and isinstance(epoch, str)
                     and len(epoch) == 16 and all(ch in "0123456789abcdef" for ch in epoch))
            fields["ts"] = (T0 + dt.timedelta(seconds=len(out) + 10 * honest[0])).isoformat().replace("+00:00", "Z")
            out.append((topic, json.dumps(fields).encode()))
            sent["valid" if valid else "dead"] += 1
        for _ in range(5):  # the honest stream goes on
            honest[0] += 1
            out.append(message(honest[0]))
            sent["valid"] += 1
        pub.send(out)
        assert wait_until(lambda: c.stored + c.dead >= sent["valid"] + sent["dead"], 20), (c.stored, c.dead, sent)
        assert c.failure is None and c.alive()

    try:
        run()
        assert (c.stored, c.dead) == (sent["valid"], sent["dead"])
    finally:
        c.stop()
        pub.close()


def test_epoch_churn_follows_a_bounded_number_of_epochs_and_names_the_rest(tmp_path, caplog):
    """A reading under a new random epoch each: before, each new epoch re-read a block of every epoch
    met so far and was kept for ever (1,000 epochs: 143 s, quadratic). Now at most ``MAX_EPOCHS`` are
    followed, the others are stored and named in one churn finding, the honest epoch is still followed,
    and a churned epoch followed later (once another is idle) is followed from where it is met."""
    class Counting(SqliteStore):
        reads = 0

        def seq_blocks(self, *args):
            Counting.reads += 1
            return super().seq_blocks(*args)

    store = Counting(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    churned = [f"{k:016x}" for k in range(1, 501)]
    with caplog.at_level(logging.WARNING, logger="collector.sequence_gaps"):
        gaps.stored(_readings(range(1, 11)))
        for i in range(0, len(churned), 50):
            gaps.stored([r for e in churned[i:i + 50] for r in _readings([1, 2], epoch=e)])
        gaps.stored(_readings(s for s in range(11, 21) if s != 15))
        _judged(gaps, clock)
    assert len(gaps._gateways[GW]) <= epoch_churn.MAX_EPOCHS and Counting.reads < 100
    found = store.sequence_findings("s")
    assert [(f.epoch, f.first, f.last) for f in found if f.kind == "gap"] == [(E1, 15, 15)]
    assert len([f for f in found if f.kind == "epoch"]) == epoch_churn.MAX_EPOCHS - 1
    [churn] = [f for f in found if f.kind == "churn"]
    n = len(churned) - (epoch_churn.MAX_EPOCHS - 1)
    assert churn.epoch == churned[epoch_churn.MAX_EPOCHS - 1] and f"{2 * n} reading(s) of {n} epoch(s)" in churn.cause
    assert sum("epoch(s) new to the collector" in r.getMessage() for r in caplog.records) <= 4
    clock[0] += 2 * epoch_churn.EPOCH_IDLE_S  # every epoch but E1 idle: a churned one comes back
    gaps.stored(_readings(range(21, 23)))
    gaps.stored(_readings([9, 10, 12], epoch=churned[-1]))
    _judged(gaps, clock)
    assert [(f.epoch, f.first, f.last) for f in store.sequence_findings("s") if f.kind == "gap"] == [
        (E1, 15, 15), (churned[-1], 11, 11)]  # not 3..8: its seqs met before were not followed


def test_seqs_beyond_the_bound_that_the_outbox_cap_dropped_are_followed(tmp_path):
    """A young epoch whose outbox cap dropped more than ``MAX_AHEAD`` readings (its status says so):
    the seqs after them are followed, and the gap is the cap's, not a jump."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    dropped = 2 * MAX_AHEAD
    gaps.on_status("s", "gw", {"outbox_dropped": dropped, "epoch": E1})
    gaps.stored(_readings(range(1, 11)))
    gaps.stored(_readings(range(dropped + 11, dropped + 21)))
    _judged(gaps, clock)
    [gap] = store.sequence_findings("s")
    assert (gap.kind, gap.first, gap.last, gap.explained) == ("gap", 11, dropped + 10, dropped)


def test_jump_churn_and_holes_findings_are_for_review_and_live_view_alarms():
    """What a verifier and an operator see of them (before: a jump or churn shown as a new epoch,
    no alarm; a holes finding shown as a new epoch)."""
    import pandas as pd

    from liveview.alarms import sequence_conditions
    from processing.period import sequence_findings
    jump = SequenceFinding("jump", "s", "gw", E1, 2**62, MAX_SEQ, T0, "2 reading(s) ...", start=T0, end=T0)
    churn = SequenceFinding("churn", "s", "gw", E1, 1, 1, T0, "500 reading(s) ...", start=T0, end=T0)
    holes = SequenceFinding("holes", "s", "gw", E1, 2050, 7998, T0, "too many holes: ...", start=T0,
                            end=T0 + dt.timedelta(days=40))
    qa = sequence_findings([jump, churn, holes], pd.Timestamp(T0), pd.Timestamp(T0 + dt.timedelta(days=30)))
    assert [(f.check, f.severity) for f in qa] == [("sequence_jump", "review"), ("sequence_churn", "review"),
                                                   ("sequence_holes", "review")]
    later = pd.Timestamp(T0 + dt.timedelta(days=30))  # every month the holes span is for review
    assert [f.check for f in sequence_findings([holes], later, later + pd.Timedelta(days=30))] == ["sequence_holes"]
    qa = sequence_findings([replace(jump, resolved=T0)], pd.Timestamp(T0), pd.Timestamp(T0 + dt.timedelta(days=30)))
    assert [(f.check, f.severity) for f in qa] == [("sequence_jump", "info")]
    assert [c.kind for c in sequence_conditions([jump, churn, holes], T0 + dt.timedelta(days=1))] == [
        "sequence_jump", "sequence_churn", "sequence_holes"]


@pytest.mark.fuzz
def test_hostile_seqs_among_an_honest_stream_split_across_restarted_collectors_cost_no_honest_seq(
        tmp_path, monkeypatch):
    """An honest stream with losses, and hostile seqs (sparse within the bound, far beyond it, MAX_SEQ)
    shuffled in, split between two collectors that restart now and then (the bounds made small): every
    honest lost seq lies in exactly one gap and no stored seq in any, each collector holds at most
    ``OWN_BLOCKS`` blocks after a batch beyond those it touched, and the store no block beyond the bound."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 16 * BLOCK_SEQS)
    monkeypatch.setattr(own_blocks, "OWN_BLOCKS", 4)
    monkeypatch.setattr(far_seqs, "FAR_HELD", 8)
    store = SqliteStore(tmp_path / "jcm.db")
    examples = iter(range(10**9))
    honest = range(1, 301)

    @settings(max_examples=fuzz_examples(10), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sets(st.sampled_from(honest[:-1]), max_size=8),
           st.lists(st.one_of(st.integers(1, 40).map(lambda k: k * BLOCK_SEQS + k),
                              st.integers(300, 2**62), st.just(MAX_SEQ)), max_size=30, unique=True),
           st.randoms(use_true_random=False))
    def one_example(lost, hostile, rnd):
        site = f"s{next(examples)}"  # one store for every example
        shared = SharedSubscription(store, site)
        sent = [s for s in honest if s not in lost] + [s for s in hostile if s not in honest]
        rnd.shuffle(sent)

        def own_bounded(c: SequenceGaps, batch: list[int]) -> None:
            own = c._gateways[(site, "gw")][E1].own
            assert len(own) <= own_blocks.OWN_BLOCKS + len({s // BLOCK_SEQS for s in batch})

        shared.feed(sent, rnd, batch=20, restart=0.1, steps=(0.05, 0.2, 0.3), each=own_bounded)
        shared.judge(100, 200, 300)
        found = store.sequence_findings(site)
        gaps = [(f.first, f.last) for f in found if f.kind == "gap"]
        unheld = any("not held" in f.cause for f in found if f.kind == "jump")
        stored = [s for s in (*honest, *hostile) if s not in lost and (s in honest or not unheld)]
        assert not [s for s in stored if any(a <= s <= b for a, b in gaps)], gaps
        assert all(sum(a <= s <= b for a, b in gaps) == 1 for s in lost), (gaps, lost)
        bound = len(honest) + 2 * (len(honest) + len(hostile)) + far_seqs.MAX_AHEAD
        beyond = store.seq_blocks(site, "gw", E1, bound // BLOCK_SEQS + 1, MAX_SEQ // BLOCK_SEQS)
        assert len(beyond) <= len(hostile)  # a block for each seq held, none else

    one_example()
    store.close()


def test_a_far_seq_and_epoch_churn_are_acknowledged_only_once_named_in_the_store(mosquitto, sites_dir, tmp_path,
                                                                                  monkeypatch):
    """Through the real broker and collector: readings with a far seq and under churned epochs are
    stored, but while the store refuses their findings the collector acknowledges none of them
    (stopped meanwhile, the broker redelivers them), so the next collector names them all the same."""
    from contract.store import StoreUnavailable

    monkeypatch.setattr(epoch_churn, "MAX_EPOCHS", 1)
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    pub = Publisher(mosquitto)
    first = collector(mosquitto, store_url, sites_dir)
    subscribed(first, pub)
    pub.send([message(s) for s in range(2, 5)])
    assert wait_until(lambda: first.stored >= 4)
    time.sleep(0.3)

    def down(self, finding):
        raise StoreUnavailable("down for the findings")

    with monkeypatch.context() as m:
        m.setattr(SqliteStore, "record_finding", down)
        far = Reading("test-site", "gw-test", "m1", T0 + dt.timedelta(seconds=5), {"energy_import": 1.0}, seq=2**62,
                      epoch=E1)
        pub.send([(message(1)[0], far.to_json().encode()), message(1, "00000000000000b2")])
        assert wait_until(lambda: first.stored >= 6)
        time.sleep(0.5)
        first.stop()
    second = collector(mosquitto, store_url, sites_dir)
    try:
        assert wait_until(lambda: {f.kind for f in SqliteStore(tmp_path / "jcm.db").sequence_findings("test-site")}
                          >= {"jump", "churn"}, 10)
    finally:
        second.stop()
        pub.close()
    found = SqliteStore(tmp_path / "jcm.db").sequence_findings("test-site")
    [jump] = [f for f in found if f.kind == "jump"]
    [churn] = [f for f in found if f.kind == "churn"]
    assert (jump.first, churn.epoch) == (2**62, "00000000000000b2")


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_seqs_held_are_followed_after_the_collector_restarts(backend, tmp_path, request, monkeypatch):
    """A young epoch's live lane held beyond the bound (two of its seqs in one block), then the
    collector restarts before the backlog reaches it: before, the held seqs lived only in memory, so
    the next collector judged them a gap although their readings were stored, and the jump finding
    stayed open for ever (the month in review, an alarm)."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    store = _store(backend, tmp_path, request)
    clock = [0.0]
    live = far_seqs.MAX_AHEAD + 20_000
    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    first.stored(_readings(range(1, 11)))
    first.stored(_readings(range(live, live + 5)))  # held, not followed
    first.save()
    _judged(first, clock)
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])  # restarted: the live lane is not sent again
    for i in range(11, live, 4000):
        second.stored(_readings(range(i, min(i + 4000, live))))
    second.stored(_readings(range(live + 5, live + 10)))
    _judged(second, clock)
    found = store.sequence_findings("s")
    assert [(f.first, f.last) for f in found if f.kind == "gap"] == []
    [jump] = [f for f in found if f.kind == "jump"]
    assert jump.resolved is not None
    assert stored_ranges(store, *GW) == [(E1, 1, live + 9)]
    store.close()


def test_a_new_epoch_after_the_collector_restarts_is_followed_however_many_epochs_the_gateway_had(tmp_path):
    """An honest gateway whose outbox was replaced more than ``MAX_EPOCHS`` times over the years, and
    a collector restarted: before, the restarted collector took every epoch in the store as in use
    (seen at its start), so the gateway's next new epoch within the hour was churn: not followed, its
    lost readings never a gap."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    old = [f"{k:016x}" for k in range(1, epoch_churn.MAX_EPOCHS + 5)]
    for epoch in old:  # one after the other, each left long before the next
        gaps.stored(_readings(range(1, 6), epoch=epoch))
        _judged(gaps, clock)
        clock[0] += 2 * epoch_churn.EPOCH_IDLE_S
    assert not [f for f in store.sequence_findings("s") if f.kind == "churn"]
    restarted = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    restarted.stored(_readings(range(1, 6), epoch=old[-1]))  # redelivered
    restarted.stored(_readings([s for s in range(1, 11) if s != 5]))  # the new outbox
    _judged(restarted, clock)
    found = store.sequence_findings("s")
    assert not [f for f in found if f.kind == "churn"]
    assert [(f.epoch, f.first, f.last) for f in found if f.kind == "gap"] == [(E1, 5, 5)]
    assert len([f for f in found if f.kind == "epoch" and f.epoch == E1]) == 1
    store.close()


def test_a_jump_with_seqs_not_held_stays_open_after_the_collector_restarts(tmp_path, monkeypatch):
    """Held seqs are held again by a restarted collector, but those not held (beyond ``FAR_HELD``) are
    not: once the held are followed the finding is not resolved, and says how many were not held."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    monkeypatch.setattr(far_seqs, "FAR_HELD", 4)
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    live = far_seqs.MAX_AHEAD + 20_000
    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    first.stored(_readings(range(1, 11)))
    first.stored(_readings(range(live, live + 6)))  # 4 held, 2 not
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    for i in range(11, live, 4000):
        second.stored(_readings(range(i, min(i + 4000, live))))
    assert not second._gateways[GW][E1].far  # the held, followed
    [jump] = [f for f in store.sequence_findings("s") if f.kind == "jump"]
    assert jump.resolved is None and jump.explained == 2 and "2 of them not held" in jump.cause
    store.close()


@pytest.mark.parametrize("backend, restart", [("sqlite", "before"), ("sqlite", "after"), ("sqlite", "never"),
                                              ("influxdb", "before")])
def test_jump_findings_of_two_collectors_are_all_resolved_once_the_backlog_is_stored(backend, restart, tmp_path,
                                                                                    request, monkeypatch):
    """A young epoch on a shared subscription: B meets it, A meets a far seq L (a jump finding from L),
    then B one below L (B never learnt A's: a second finding); the backlog, all to B, fills every seq,
    and both collectors restart before it arrives, after it, or never; then the live lane goes on.
    Before: a restarted collector continued only the open finding noticed last (or none, when the
    backlog was in), and A never learnt what B stored: a finding stayed open for ever (a
    ``sequence_jump`` alarm, months in review) although no seq is missing."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    store = _store(backend, tmp_path, request)
    clock = [0.0]
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))
    live = far_seqs.MAX_AHEAD + 20_000
    b.stored(_readings(range(1, 11)))
    a.stored(_readings([live + 5]))
    b.stored(_readings([live]))
    assert sorted(f.first for f in store.sequence_findings("s") if f.kind == "jump") == [live, live + 5]
    if restart == "before":
        a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))
    for i in range(11, live + 11, 4000):
        b.stored(_readings(s for s in range(i, min(i + 4000, live + 11)) if s not in (live, live + 5)))
    if restart == "after":
        a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))
    for c, seq in ((a, live + 11), (b, live + 12)):  # the live lane goes on
        c.stored(_readings([seq]))
    for c in (a, b):
        _judged(c, clock)
    found = store.sequence_findings("s")
    assert [(f.first, f.last) for f in found if f.kind == "gap"] == []
    assert sorted((f.first, f.resolved is not None) for f in found if f.kind == "jump") == [(live, True),
                                                                                           (live + 5, True)]
    assert stored_ranges(store, *GW) == [(E1, 1, live + 12)]
    store.close()


@pytest.mark.parametrize("backend, extended", [("sqlite", "by the other"), ("sqlite", "by both"),
                                               ("influxdb", "by both")])
def test_a_jump_finding_two_restarted_collectors_continue_stays_open_while_a_seq_it_names_is_held(
        backend, extended, tmp_path, request, monkeypatch):
    """A holds a far seq L (a jump finding from L); both collectors restart and hold L again, both
    continuing that one finding; A then holds 2**62 (and B, by both, L + 3), and the backlog up to L
    reaches B. Before: B resolved the finding with its own copy (or had already written its copy over
    A's, naming L + 3 as the last), so the alarm went although 2**62 is held and never followed."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    store = _store(backend, tmp_path, request)
    clock = [0.0]
    live = far_seqs.MAX_AHEAD + 20_000
    a = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    a.stored(_readings(range(1, 11)))
    a.stored(_readings([live]))
    a, b = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2))  # both restarted
    a.stored(_readings([11]))
    b.stored(_readings([12]))
    assert a._gateways[GW][E1].jump.first == b._gateways[GW][E1].jump.first == live  # both continue it
    a.stored(_readings([2**62]))
    held = (live, live + 3) if extended == "by both" else (live,)
    if extended == "by both":
        b.stored(_readings([live + 3]))
    for i in range(13, live + 11, 4000):
        b.stored(_readings(s for s in range(i, min(i + 4000, live + 11)) if s not in held))
    for c in (a, b):
        _judged(c, clock)
    found = store.sequence_findings("s")
    assert [(f.first, f.last) for f in found if f.kind == "gap"] == []
    assert [(f.first, f.last, f.resolved) for f in found if f.kind == "jump"] == [(live, 2**62, None)]
    store.close()


def test_a_jump_finding_of_an_epoch_met_after_loading_the_gateway_is_resolved_by_the_collector_that_meets_it(
        tmp_path, monkeypatch):
    """B met the gateway in epoch E0; a new epoch E1 is met by A and by C, which each hold a far seq
    (two jump findings) and stop. B meets E1 only then (after loading the gateway), holds both seqs
    again, continuing C's finding (the newer), and the backlog reaches them. Before: B learnt the
    open findings it does not continue only when it loaded the gateway, so A's stayed open for ever
    although every seq is stored."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 8 * BLOCK_SEQS)
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    a, b, c = (SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(3))
    live = far_seqs.MAX_AHEAD + 20_000
    b.stored(_readings(range(1, 11), epoch="00000000000000e0"))
    clock[0] += 100.0
    a.stored(_readings(range(1, 11)))
    c.stored(_readings([11]))
    a.stored(_readings([live]))
    c.stored(_readings([live + 5]))
    assert sorted(f.first for f in store.sequence_findings("s") if f.kind == "jump") == [live, live + 5]
    for i in range(12, live + 11, 4000):  # a and c stopped: all to b
        b.stored(_readings(s for s in range(i, min(i + 4000, live + 11)) if s not in (live, live + 5)))
    _judged(b, clock)
    found = store.sequence_findings("s")
    assert [(f.first, f.last) for f in found if f.kind == "gap"] == []
    assert sorted((f.first, f.resolved is not None) for f in found if f.kind == "jump") == [(live, True),
                                                                                           (live + 5, True)]
    assert stored_ranges(store, *GW) == [("00000000000000e0", 1, 10), (E1, 1, live + 10)]
    store.close()


@pytest.mark.fuzz
def test_jump_findings_on_a_shared_subscription_are_all_resolved_once_the_whole_stream_is_stored(tmp_path,
                                                                                                 monkeypatch):
    """A young epoch whose live lane runs ahead of its backlog, up to beyond the bound (made small), on a
    shared subscription of two collectors that restart now and then: the head of the backlog, the live
    lane (some of it redelivered later), then the rest of the backlog with the live lane's late seqs
    strewn in, all within the grace period; and maybe hostile seqs from 2**62 among them (never followed).
    Once the whole stream is stored and the live lane goes on, no seq is a gap and no jump finding is open
    but one naming the hostile seqs; and after every batch, while a collector holds a hostile seq a
    finding naming it is open, and none naming one is resolved."""
    monkeypatch.setattr(far_seqs, "MAX_AHEAD", 2 * BLOCK_SEQS)
    store = SqliteStore(tmp_path / "jcm.db")
    examples = iter(range(10**9))

    @settings(max_examples=fuzz_examples(8), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(1, 60), st.integers(-100, 2 * BLOCK_SEQS), st.integers(1, 30), st.integers(0, 8),
           st.integers(0, 2**32))
    def one_example(head, beyond, n_live, hostile, seed):
        rnd = random.Random(seed)  # thousands of draws: more than hypothesis's own randoms take
        site = f"s{next(examples)}"  # one store for every example
        shared = SharedSubscription(store, site)
        start = far_seqs.MAX_AHEAD + head + beyond
        live = list(range(start, start + n_live))
        early = [s for s in live if rnd.random() < 0.7] + rnd.sample(live, n_live // 3)
        rest = [s for s in live if s not in early] + rnd.sample(live, n_live // 3)
        backlog = sorted(range(head + 1, start), key=lambda s: s + rnd.randint(0, 50))
        for s in rest:
            backlog.insert(rnd.randrange(len(backlog) + 1), s)
        sent = [*range(1, head + 1), *early, *backlog]
        for seq in range(2**62, 2**62 + hostile):
            sent.insert(rnd.randrange(len(sent) + 1), seq)

        def held(c: SequenceGaps) -> list[int]:
            track = c._gateways.get((site, "gw"), {}).get(E1)
            return [seq for seq, _ in track.far] if track else []

        def never_resolved_naming_the_hostile(*_):
            jumps = [f for f in store.sequence_findings(site) if f.kind == "jump"]
            assert [f for f in jumps if f.resolved and f.last >= 2**62] == []
            for seq in {s for c in shared.collectors for s in held(c) if s >= 2**62}:
                assert [f for f in jumps if not f.resolved and f.last >= seq], seq

        shared.feed(sent, rnd, batch=500, restart=0.15, steps=(0.0, 0.01), each=never_resolved_naming_the_hostile)
        shared.go_on([start + n_live, start + n_live + 1])
        shared.judge(100, 200, 300)
        never_resolved_naming_the_hostile()
        found = store.sequence_findings(site)
        assert [(f.first, f.last) for f in found if f.kind == "gap"] == []
        still = [(f.first, f.last, f.cause) for f in found if f.kind == "jump" and f.resolved is None]
        assert [f for f in still if f[1] < 2**62] == [] and bool(still) == bool(hostile)
        assert stored_ranges(store, site, "gw") == ([(E1, 1, start + n_live + 1)]
                                                    + [(E1, 2**62, 2**62 + hostile - 1)] * bool(hostile))

    one_example()
    store.close()


def test_every_other_seq_costs_a_bounded_number_of_runs_and_gap_findings(tmp_path, caplog):
    """A hostile gateway sending seqs 1, 3, 5, ... within the bound: each missing seq is a hole of its
    own. Measured before (100,000 readings, SQLite): 90,000 gap findings and WARNING lines, 81,000 runs
    held (75 MB), a check taking 1.9 s and growing with every reading. Now ``MAX_GAPS`` gaps are
    recorded one by one (their runs held, so that late seqs resolve them), the other holes are named in
    one ``holes`` finding whose runs are dropped, the WARNING lines are a few a minute, the mark moves
    over every hole judged, and a late seq still resolves its gap."""
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="collector.sequence_gaps"):
        for i in range(1, 8001, 1000):
            gaps.stored(_readings(range(i, i + 1000, 2)))
            clock[0] += 20.0
            gaps.check()
        gaps.stored(_readings([2]))  # a late seq
        gaps.check()
    track = gaps._gateways[GW][E1]
    # one run either side of each gap recorded one by one, and the highest
    assert len(track.runs) <= holes_cap.MAX_GAPS + 2
    found = store.sequence_findings("s")
    recorded = [f for f in found if f.kind == "gap"]
    assert len(recorded) == holes_cap.MAX_GAPS
    assert [(f.first, f.last, f.resolved is not None) for f in recorded[:2]] == [(2, 2, True), (4, 4, False)]
    [holes] = [f for f in found if f.kind == "holes"]
    top = recorded[-1].last
    assert (holes.first, holes.last) == (top + 2, 7998)
    n = (7998 - top) // 2
    assert f"too many holes: {n} hole(s) ({n} seq(s) missing) over seqs {top + 2}..7998" in holes.cause
    gaps._next_mark = 0.0
    gaps.check()
    assert store.seq_marks("s", "gw")[E1] == 7999
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 2 * holes_cap.LOG_LINES
    more = f"site s: gateway gw: {holes_cap.MAX_GAPS - holes_cap.LOG_LINES} more gap(s) of epoch {E1} recorded"
    assert [line for line in lines if line.startswith(more)]
    store.close()


def test_an_honest_stream_split_across_two_collectors_records_no_gap_however_low_the_cap(tmp_path, monkeypatch):
    """A shared subscription: each collector gets every other seq, and holds a run for each until it
    learns (every ``REFRESH_S``) what the other stored: thousands of holes at once, none a gap, so the
    cap on gaps is never reached, and the runs held fall back to one after each refresh."""
    monkeypatch.setattr(holes_cap, "MAX_GAPS", 2)
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]
    collectors = [SequenceGaps(store, grace_s=10, clock=lambda: clock[0]) for _ in range(2)]
    held = []
    for i in range(1, 40_001, 1000):  # 1,000 readings a second
        for k, c in enumerate(collectors):
            c.stored(_readings(range(i + k, i + 1000, 2)))
            c.check()
        held.append(len(collectors[0]._gateways[GW][E1].runs))
        clock[0] += 1.0
    for clock[0] in (clock[0] + 20, clock[0] + 40):
        for c in collectors:
            c.check()
    assert store.sequence_findings("s") == []
    # measured: 2,500 at most (5 s of the other's seqs), 500 after a refresh
    assert max(held) >= 2500 and min(held) <= 500
    assert [len(c._gateways[GW][E1].runs) for c in collectors] == [1, 1]
    store.close()


@pytest.mark.fuzz
def test_beyond_the_cap_every_lost_seq_is_still_named_and_no_stored_seq_is_a_gap(tmp_path, monkeypatch):
    """Seqs 1..n, many lost, the rest shuffled, redelivered and split between two collectors that
    restart now and then, judged in stretches, with a cap of 2 gaps an epoch: every lost seq lies in
    a gap or a ``holes`` finding (a collector that has not met the other's ``holes`` finding may name
    a seq in both), no stored seq in a gap, and every seq up to the mark is stored or named."""
    monkeypatch.setattr(holes_cap, "MAX_GAPS", 2)
    store = SqliteStore(tmp_path / "jcm.db")
    examples = iter(range(10**9))

    @settings(max_examples=fuzz_examples(20), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(10, 80).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1), max_size=n // 2), st.randoms(use_true_random=False))),
        st.sampled_from([0.0, 30.0, 3600.0]))
    def one_example(case, quiet):
        n, lost, rnd = case
        monkeypatch.setattr(holes_cap, "HOLES_QUIET_S", quiet)
        site = f"s{next(examples)}"
        shared = SharedSubscription(store, site)
        kept = [s for s in range(1, n + 1) if s not in lost]
        for stretch in range(0, n + 1, 20):
            sent = [s for s in kept if stretch <= s < stretch + 20]
            sent += rnd.sample(sent, len(sent) // 4)  # redeliveries
            rnd.shuffle(sent)
            # within the grace period: none is late
            shared.feed(sent, rnd, batch=6, restart=0.05, steps=(0.05, 0.3, 1.0))
            if rnd.random() < 0.5:  # all of the stretch is in: its holes are judged
                shared.judge(20, 40)
        shared.judge(100, 200)
        found = store.sequence_findings(site)
        gaps = [(f.first, f.last) for f in found if f.kind == "gap"]
        named = gaps + [(f.first, f.last) for f in found if f.kind == "holes"]
        assert not [s for s in kept if any(a <= s <= b for a, b in gaps)], gaps
        assert all(any(a <= s <= b for a, b in named) for s in lost), (named, lost)
        assert len(gaps) <= 2 * 2  # the cap, for each collector
        mark = store.seq_marks(site, "gw")[E1]
        assert mark == n and all(s in kept or any(a <= s <= b for a, b in named) for s in range(1, mark + 1))

    one_example()
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "influxdb"])
def test_holes_beyond_the_cap_are_named_once_across_a_restart_and_a_late_seq_still_resolves_its_gap(
        backend, tmp_path, request, monkeypatch):
    """Every other seq, with a cap of 8 gaps, in either store: the holes beyond are one ``holes``
    finding, which a restarted collector reads back (it suspects no hole inside it again) before
    naming the holes it judges in one of its own; every even seq is named once, no odd one in a gap,
    and a late seq resolves its gap."""
    store = _store(backend, tmp_path, request)
    clock = [0.0]
    first = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    cap = 8
    monkeypatch.setattr(holes_cap, "MAX_GAPS", cap)
    first.stored(_readings(range(1, 401, 2)))
    _judged(first, clock)
    second = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    second.stored(_readings(range(201, 401, 2)))  # redelivered: below the mark, inside the holes finding
    second.stored(_readings(range(401, 801, 2)))
    second.stored(_readings([2]))  # late
    _judged(second, clock)
    found = store.sequence_findings("s")
    gaps = [(f.first, f.last, f.resolved is not None) for f in found if f.kind == "gap"]
    assert gaps == [(s, s, s == 2) for s in range(2, 2 * cap + 1, 2)]
    holes = sorted((f.first, f.last) for f in found if f.kind == "holes")
    assert holes == [(2 * cap + 2, 398), (400, 798)]
    named = [(a, b) for a, b, _ in gaps] + holes
    assert all(sum(a <= s <= b for a, b in named) == 1 for s in range(2, 800, 2))
    assert not [s for s in range(1, 800, 2) if any(a <= s <= b for a, b, _ in gaps)]
    assert len(second._gateways[GW][E1].runs) <= cap + 2  # about the gaps recorded one by one, and the highest
    store.close()


def test_the_mark_never_passes_holes_whose_holes_finding_the_store_refused(tmp_path, monkeypatch):
    """Beyond the cap, the store refuses the ``holes`` finding: its holes stay suspected, the mark
    stays below them, and once the store takes it the holes are named and the mark moves on."""
    from contract.store import StoreUnavailable
    monkeypatch.setattr(holes_cap, "MAX_GAPS", 2)
    store = SqliteStore(tmp_path / "jcm.db")
    clock = [0.0]

    def refuse(f):
        if f.kind == "holes":
            raise StoreUnavailable("down for that one")
        type(store).record_finding(store, f)

    store.record_finding = refuse
    gaps = SequenceGaps(store, grace_s=10, clock=lambda: clock[0])
    gaps.stored(_readings(range(1, 41, 2)))
    for clock[0] in (20.0, 40.0):
        with pytest.raises(StoreUnavailable):
            gaps.check()
    assert store.seq_marks("s", "gw")[E1] < 6  # below the third hole, the first not recorded
    assert len(gaps._gateways[GW][E1].runs) == 20
    del store.record_finding
    for clock[0] in (60.0, 80.0):
        gaps.check()
    assert [(f.kind, f.first, f.last) for f in store.sequence_findings("s")] == [
        ("gap", 2, 2), ("gap", 4, 4), ("holes", 6, 38)]
    assert store.seq_marks("s", "gw") == {E1: 39}
    store.close()
