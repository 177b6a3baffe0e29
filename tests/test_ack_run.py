"""The gateway's run id, echoed by acknowledgements (contract/acknowledgement.py, "Run" and
"Shortened list"): after a start with a shortened ``outbox.acknowledged_by``, an acknowledgement
built before its collector heard this run's status deletes nothing, even when it arrives live (and so
does one of a collector added to the list, built while it did not count); a
collector never carries a claim merged under the longer list into an acknowledgement of the new run."""

import datetime as dt
import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest

from collector.acknowledgement import Acknowledgements
from contract import topics
from contract.acknowledgement import MAX_ACK_BYTES, MAX_RANGES, Ack
from contract.config import CollectorConfig
from contract.message import MAX_SEQ, Reading
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from tests.conftest import Subscriber, load_site, wait_until
from tests.test_collector import AckWatcher
from tests.test_end_to_end_ack import GATEWAY, PRODUCTION, STAGING, collector, e2e_site, polled

OLD_RUN = "0123456789abcdef"  # the run before the restart


def shortened(tmp_path):
    """The site with production and staging listed, and the same with production only."""
    both = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION, STAGING]))
    return both, both.model_copy(update={"outbox": both.outbox.model_copy(update={"acknowledged_by": [PRODUCTION]})})


class Broker:
    """Statuses and acknowledgements of the test gateway published by hand (retained), and the last
    acknowledgement seen on each collector's topic; ``stored`` has a collector store one seq."""

    KEY, EPOCH = ("test-site", GATEWAY), "00112233aabbccdd"

    def __init__(self, mosquitto, tmp_path):
        self.cfg = dict(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db",
                        sites_dir=str(tmp_path / "sites"))
        self.watcher = AckWatcher(mosquitto, "+", "+")
        self.seen = self.watcher.last

    def collector(self, client_id, listed=None) -> Acknowledgements:
        return Acknowledgements(CollectorConfig(client_id=client_id, **self.cfg), [self.KEY],
                                None if listed is None else {self.KEY: listed})

    def status(self, run, *listed):
        body = {"schema": 1, "state": "online", "epoch": self.EPOCH, "run": run, "floor": 1,
                **({"acknowledged_by": listed} if listed else {})}
        self.watcher.publish(topics.gateway_status(*self.KEY), body)

    def ack(self, collector, run, first, last, retain=True):
        body = {"schema": 1, "epoch": self.EPOCH, "ranges": [[first, last]], "run": run}
        self.watcher.publish(topics.ack(*self.KEY, collector), body, retain=retain)

    def stored(self, acks: Acknowledgements, seq: int) -> dict:
        """What ``acks``' collector publishes once its store has ``seq``."""
        self.seen.pop(acks.collector_id, None)
        acks.kept([Reading(site=self.KEY[0], gateway=GATEWAY, device="m0", ts=dt.datetime.now(dt.UTC), values={},
                           seq=seq, epoch=self.EPOCH)], [])
        assert wait_until(lambda: acks.collector_id in self.seen, 10)
        return self.seen[acks.collector_id]

    def close(self):
        self.watcher.close()


@pytest.mark.slow
def test_an_acknowledgement_built_under_the_old_run_deletes_nothing_even_live(tmp_path, mosquitto, caplog):
    """The production collector merged staging's claims while the gateway listed staging; the gateway is
    restarted with production alone, and the collector's acknowledgement built before it heard the new
    status arrives live just after. Before, the gateway took a live acknowledgement as built under this
    run's list and deleted what only the staging store held. Now it deletes only on one echoing this run,
    such as the real collector's once it has heard the status, which then empties the outbox."""
    both, site = shortened(tmp_path)
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    Publisher(both, outbox, broker_url=mosquitto.url)  # the run with the longer list: it is recorded
    polled(site, outbox, 20)
    status = Subscriber(mosquitto)
    stand_in = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector-prod-stand-in")
    stand_in.connect("127.0.0.1", mosquitto.port)
    stand_in.loop_start()
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    production = None
    try:
        with caplog.at_level(logging.WARNING):
            pub.start()
            assert wait_until(lambda: any(s["state"] == "online" for s in status.status), 10)
            time.sleep(0.3)  # the gateway has subscribed
            built_before = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 20]], "run": OLD_RUN})
            stand_in.publish(topics.ack(site.site, site.gateway, PRODUCTION), built_before, qos=1,
                             retain=True).wait_for_publish(5)
            time.sleep(1.5)  # it has reached the gateway, live
        assert outbox.depth == 20 and pub.confirmed == 0
        said = [r.getMessage() for r in caplog.records if "no longer lists" in r.getMessage()]
        assert len(said) == 1 and STAGING in said[0], said
        assert outbox.acknowledged_by() == (True, sorted([PRODUCTION, STAGING]))
        # the real collector hears the status, stores what is sent again, and echoes this run
        production = collector(mosquitto, tmp_path, client_id=PRODUCTION)
        assert wait_until(lambda: outbox.depth == 0, 30), outbox.depth
        assert outbox.acknowledged_by() == (True, [PRODUCTION])
        assert {s["run"] for s in status.status if s["state"] == "online"} == {pub.run}
    finally:
        pub.stop(timeout=0)
        if production:
            production.stop()
        stand_in.loop_stop()
        stand_in.disconnect()
        status.close()
        outbox.close()


@pytest.mark.parametrize("run, retained, deletes", [
    ("this", False, True), ("this", True, True),  # built under this run's status, retained or not
    (OLD_RUN, False, False), (OLD_RUN, True, False),  # built under another run's
    (None, True, False), (None, False, True),  # a collector from before runs: as before the run existed
])
def test_while_distrusting_only_this_runs_acknowledgement_deletes(tmp_path, run, retained, deletes):
    _, site = shortened(tmp_path)
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    polled(site, outbox, 5)
    outbox.record_acknowledged_by([PRODUCTION, STAGING])
    pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]],
                       **({} if run is None else {"run": pub.run if run == "this" else run})}).encode()
    try:
        assert pub._distrusted == {PRODUCTION}
        pub._store_acks.put((topics.ack(site.site, site.gateway, PRODUCTION).encode(), body, retained))
        pub._take_store_acks()
        assert outbox.depth == (0 if deletes else 5)
        assert pub._distrusted == (set() if deletes else {PRODUCTION})
    finally:
        outbox.close()


BAD_RUNS = ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", "0123456789abcdef\n",
            "", 81985529216486895, None, ["0123456789abcdef"]]


@pytest.mark.parametrize("run", BAD_RUNS)
def test_a_malformed_run_is_refused_with_a_reason(run):
    body = json.dumps({"schema": 1, "epoch": "00112233aabbccdd", "ranges": [[1, 5]], "run": run})
    with pytest.raises(ValueError, match="'run' is not 16 lower-case hex digits"):
        Ack.from_json(body)


def test_a_gateway_refuses_an_acknowledgement_with_a_malformed_run(tmp_path):
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    polled(site, outbox, 5)
    pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    topic = topics.ack(site.site, site.gateway, PRODUCTION).encode()
    refused = []
    pub._refused = lambda topic, why: refused.append(why)
    try:
        for run in BAD_RUNS:
            body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]], "run": run}).encode()
            pub._store_acks.put((topic, body, False))
            pub._take_store_acks()
        assert outbox.depth == 5
        assert refused == ["'run' is not 16 lower-case hex digits"] * len(BAD_RUNS)
    finally:
        outbox.close()


def test_the_run_fits_the_size_bound_and_comes_back():
    """The run takes its room from the bitmap: a full acknowledgement with it stays within MAX_ACK_BYTES."""
    ranges = [(MAX_SEQ - 10 ** 6 + 4 * i, MAX_SEQ - 10 ** 6 + 4 * i + 1) for i in range(MAX_RANGES)]
    base = ranges[-1][1] + 2
    ack = Ack.fitted("00112233aabbccdd", ranges, base, (1 << 200_000) - 1 & ~2, run=OLD_RUN)
    payload = ack.to_json()
    assert ack.bits and len(payload) <= MAX_ACK_BYTES
    assert Ack.from_json(payload) == ack


@pytest.mark.slow
def test_a_collector_never_carries_a_claim_merged_under_the_old_list_into_the_new_run(tmp_path, mosquitto):
    """Under the longer list the peer merged staging's claim into its own, and production merged the
    peer's. The gateway restarts listing production and the peer. Before, production kept what it had
    merged (the peer is still listed) and took the peer's acknowledgement built before the restart, and
    published staging's claim again under the new list: the gateway deleted what only staging's store held.
    Now the shortened list starts production's claims afresh, an acknowledgement of the old run is not
    merged, and production's echoes the new run; the peer's of the new run is merged."""
    e2e_site(tmp_path)
    broker, peer, new_run = Broker(mosquitto, tmp_path), "jcm-collector-peer", "fedcba9876543210"
    g = (prod := broker.collector(PRODUCTION))._gateways[Broker.KEY]
    try:
        broker.status(OLD_RUN, PRODUCTION, peer, STAGING)
        prod.start()
        assert wait_until(lambda: g.current == Broker.EPOCH, 10)
        broker.ack(peer, OLD_RUN, 1, 100)  # staging's 1..100, merged by the peer
        assert wait_until(lambda: g.merged == {peer}, 10)
        assert broker.stored(prod, 101) == {"schema": 1, "epoch": Broker.EPOCH, "ranges": [[1, 101]], "run": OLD_RUN}
        broker.status(new_run, PRODUCTION, peer)  # restarted with staging taken off its list
        assert wait_until(lambda: g.run == new_run, 10)
        broker.ack(peer, OLD_RUN, 1, 100)  # the peer's, built before it heard the new status, arrives now
        time.sleep(0.5)
        assert broker.stored(prod, 102) == {"schema": 1, "epoch": Broker.EPOCH, "ranges": [[102, 102]],
                                            "run": new_run}
        broker.ack(peer, new_run, 103, 103)  # built under the new list
        assert wait_until(lambda: g.merged == {peer}, 10)
        assert broker.stored(prod, 104) == {"schema": 1, "epoch": Broker.EPOCH, "ranges": [[102, 104]],
                                            "run": new_run}
    finally:
        prod.stop()
        broker.close()


@pytest.mark.slow
def test_a_misspelt_acknowledged_by_entry_is_said_once_with_a_hint(tmp_path, mosquitto, caplog):
    """The site file lists "jcm-colector-prod" for the collector "jcm-collector-prod". Before, the gateway only
    counted that collector's acknowledgements as ignored (a WARNING, as for a staging collector), deleted
    nothing, and its outbox grew to max_rows. Now, once no listed collector has acknowledged in
    confirm_timeout_s while an unlisted one does, it says so in one ERROR with the likely spelling, and its
    status names the silent listed collector (acks_missing)."""
    misspelt = "jcm-colector-prod"
    site = load_site(e2e_site(tmp_path, acknowledged_by=[misspelt]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    status = Subscriber(mosquitto)
    production = collector(mosquitto, tmp_path, client_id=PRODUCTION)
    pub = Publisher(site, outbox, broker_url=mosquitto.url, status_every=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
            pub.start()
            assert wait_until(lambda: pub.connection.connected.is_set(), 10)
            time.sleep(0.3)
            polled(site, outbox, 10)
            pub.notify()
            assert wait_until(lambda: any(s.get("acks_missing") == [misspelt] for s in status.status), 20)
            time.sleep(1)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and f"no acknowledgement from {misspelt}" in errors[0]
        assert f"(did you mean {PRODUCTION} for {misspelt}?)" in errors[0]
        assert outbox.depth == 10
    finally:
        pub.stop(timeout=0)
        production.stop()
        status.close()
        outbox.close()


def acknowledged_for_a_while(tmp_path, listed, *collectors) -> tuple[Publisher, Outbox]:
    """A gateway listing ``listed`` (confirm timeout 1 s, five rows; never started: fed by hand) to which
    ``collectors`` acknowledge seqs 1..2 live, then once more 1.1 s later."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=listed, confirm_timeout_s=1))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    polled(site, outbox, 5)
    pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")
    pub._live_cursor = 5
    body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 2]]}).encode()
    for collector_id in collectors:
        pub._store_acks.put((topics.ack(site.site, site.gateway, collector_id).encode(), body, False))
    pub._take_store_acks()
    time.sleep(1.1)
    pub._take_store_acks()
    return pub, outbox


def test_a_listed_collector_heard_beside_an_unlisted_one_is_not_said_missing(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="gateway.publisher"):
        pub, outbox = acknowledged_for_a_while(tmp_path, [PRODUCTION], STAGING, PRODUCTION)
    outbox.close()
    assert not caplog.records and pub.silent == [] and outbox.depth == 3


def test_a_silent_listed_collector_beside_a_heard_one_is_a_warning(tmp_path, caplog):
    """Two production collectors are listed, one is down, staging acknowledges. Before, an ERROR said the outbox
    fills up to max_rows; the heard one confirms what it stores, and what only the silent one stored is sent
    again to it. Now a WARNING, the same words; the status names the silent one all the same."""
    peer = "jcm-collector-peer"
    with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
        pub, outbox = acknowledged_for_a_while(tmp_path, [PRODUCTION, peer], STAGING, PRODUCTION)
    outbox.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "no acknowledgement from" in r.getMessage()]
    assert len(said) == 1 and said[0][0] == logging.WARNING and f"no acknowledgement from {peer}," in said[0][1]
    assert pub.silent == [peer] and outbox.depth == 3


@pytest.mark.slow
def test_the_run_is_the_same_after_a_reconnect_and_new_at_each_start(tmp_path, mosquitto):
    """Its status is published again when the connection comes back: same run, or every collector's
    acknowledgement built since would stop counting after a shortened list."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    status = Subscriber(mosquitto)
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    try:
        pub.start()
        assert wait_until(lambda: any(s["state"] == "online" for s in status.status), 10)
        mosquitto.stop()
        mosquitto.start()
        assert wait_until(lambda: sum(s["state"] == "online" for s in status.status) >= 2, 20)
        assert {s["run"] for s in status.status if s["state"] == "online"} == {pub.run}
    finally:
        pub.stop(timeout=0)
        status.close()
    again = Publisher(site, outbox, broker_url=mosquitto.url)
    assert again.run != pub.run
    outbox.close()


@pytest.mark.slow
def test_a_list_shortened_outside_our_copy_of_the_site_file_still_drops_merged_claims(tmp_path, mosquitto):
    """Our copy of the gateway's site file lists production and the peer; the gateway's own list had
    staging too, and the peer (whose copy lists staging) merged staging's claim under it, which production
    merged in turn. The gateway restarts listing production and the peer. Before, production compared the
    collectors it trusts (our copy and the status, both times production and the peer): nothing lost, its
    merged claims kept, and its acknowledgement of the new run carried staging's seqs, which the gateway,
    trusting that run, deleted. Now the list the status carries is compared: it lost staging, ours start
    afresh."""
    e2e_site(tmp_path)
    broker, peer, new_run = Broker(mosquitto, tmp_path), "jcm-collector-peer", "fedcba9876543210"
    g = (prod := broker.collector(PRODUCTION, [PRODUCTION, peer]))._gateways[Broker.KEY]
    try:
        broker.status(OLD_RUN, PRODUCTION, peer, STAGING)
        prod.start()
        assert wait_until(lambda: g.current == Broker.EPOCH, 10)
        broker.ack(peer, OLD_RUN, 1, 100)  # staging's seqs, which the peer merged under the longer list
        assert wait_until(lambda: g.merged == {peer}, 10)
        assert broker.stored(prod, 101)["ranges"] == [[1, 101]]
        broker.status(new_run, PRODUCTION, peer)  # restarted with staging taken off its list
        assert wait_until(lambda: g.run == new_run, 10)
        assert broker.stored(prod, 102) == {"schema": 1, "epoch": Broker.EPOCH, "ranges": [[102, 102]],
                                            "run": new_run}
    finally:
        prod.stop()
        broker.close()


def test_a_silent_listed_collector_is_not_told_to_be_an_unlisted_one_that_merely_looks_alike(tmp_path, caplog):
    """Production is listed and down; the staging collector acknowledges live. Before, the ERROR asked "did you
    mean jcm-collector-staging for jcm-collector-prod?" (difflib's default cutoff takes any shared prefix such
    as "jcm-collector-"): an operator following it lists staging, and the gateway then deletes what only
    staging's store holds. Now only an id a slip of a character or two away is offered."""
    with caplog.at_level(logging.ERROR, logger="gateway.publisher"):
        pub, outbox = acknowledged_for_a_while(tmp_path, [PRODUCTION], STAGING)
    outbox.close()
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and f"no acknowledgement from {PRODUCTION}" in errors[0], errors
    assert "did you mean" not in errors[0], errors[0]
    assert pub.silent == [PRODUCTION]


@pytest.mark.slow
def test_a_gateway_keeps_what_only_staging_holds_when_our_copy_never_listed_staging(tmp_path, mosquitto):
    """End to end with the real gateway: it listed production, the peer and staging, and the peer's
    acknowledgement of that run carried staging's seqs 1..19, which production (whose copy of the site file
    lists production and the peer) merged. The gateway restarts without staging and distrusts both until
    they echo its new run. Before, production then stored seq 20 and acknowledged 1..20 under the new run:
    the gateway deleted 1..19, which no production store holds. Now it deletes seq 20 alone."""
    peer = "jcm-collector-peer"
    site3 = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION, peer, STAGING]))
    site = site3.model_copy(update={"outbox": site3.outbox.model_copy(update={"acknowledged_by": [PRODUCTION, peer]})})
    key = (site.site, site.gateway)
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    Publisher(site3, outbox, broker_url=mosquitto.url)  # the run with the longer list: it is recorded
    polled(site, outbox, 20)
    stand_in = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stand-in")
    stand_in.connect("127.0.0.1", mosquitto.port)
    stand_in.loop_start()
    old = {"schema": 1, "state": "online", "epoch": outbox.epoch, "run": OLD_RUN, "floor": 1,
           "acknowledged_by": sorted([PRODUCTION, peer, STAGING])}
    stand_in.publish(topics.gateway_status(*key), json.dumps(old), qos=1, retain=True).wait_for_publish(5)
    cfg = dict(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db", sites_dir=str(tmp_path / "sites"))
    prod = Acknowledgements(CollectorConfig(client_id=PRODUCTION, **cfg), [key], {key: [PRODUCTION, peer]})
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    try:
        prod.start()
        assert wait_until(lambda: prod._gateways[key].run == OLD_RUN, 10)
        staging_via_peer = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 19]], "run": OLD_RUN})
        stand_in.publish(topics.ack(*key, peer), staging_via_peer, qos=1, retain=True).wait_for_publish(5)
        assert wait_until(lambda: prod._gateways[key].merged == {peer}, 10)
        assert pub._distrusted == {PRODUCTION, peer}
        pub.start()
        assert wait_until(lambda: prod._gateways[key].run == pub.run, 10)
        prod.kept([Reading(site=site.site, gateway=site.gateway, device=site.devices[0].id, ts=dt.datetime.now(dt.UTC),
                           values={}, seq=20, epoch=outbox.epoch)], [])
        assert wait_until(lambda: pub.confirmed, 10)
        time.sleep(0.5)
        assert (pub.confirmed, outbox.depth) == (1, 19)
    finally:
        pub.stop(timeout=0)
        prod.stop()
        stand_in.loop_stop()
        stand_in.disconnect()
        outbox.close()


@pytest.mark.slow
def test_our_own_acknowledgement_taken_back_under_no_list_is_dropped_when_a_list_comes(tmp_path, mosquitto):
    """The gateway listed no collector, and production merged staging's claims then; its retained
    acknowledgement carries them. Production restarts and takes it back (the status lists no one: any claim
    counts), while staging's own is not merged (of an older run). The gateway then restarts listing production
    alone, distrusting it until it echoes the new run. Before, production had merged no other collector's
    claim as far as it knew, so its claims were kept, and its acknowledgement of the new run carried staging's
    seqs. Now its own taken back counts as carrying anyone's: the list starts its claims afresh."""
    e2e_site(tmp_path)
    broker, run, new_run = Broker(mosquitto, tmp_path), "1111111111111111", "fedcba9876543210"
    broker.status(run)  # no list
    broker.ack(PRODUCTION, run, 1, 100)  # staging's 1..100, merged before the restart
    broker.ack(STAGING, OLD_RUN, 1, 100)  # staging's own, of the run before
    g = (prod := broker.collector(PRODUCTION))._gateways[Broker.KEY]
    try:
        prod.start()
        assert wait_until(lambda: Broker.EPOCH in g.epochs and g.epochs[Broker.EPOCH].ack(Broker.EPOCH).ranges
                          == ((1, 100),), 10)
        broker.status(new_run, PRODUCTION)
        assert wait_until(lambda: g.run == new_run, 10)
        assert broker.stored(prod, 101) == {"schema": 1, "epoch": Broker.EPOCH, "ranges": [[101, 101]],
                                            "run": new_run}
        # the broker's echo of one of ours published live, older than the last: no one else's claim in it
        broker.ack(PRODUCTION, new_run, 101, 101, retain=False)
        time.sleep(0.5)
        assert g.merged == set()
    finally:
        prod.stop()
        broker.close()


@pytest.mark.slow
def test_a_collector_added_to_the_list_counts_only_once_it_acknowledges_under_this_run(tmp_path, mosquitto, caplog):
    """The outbox ran listing production alone; staging, whose store is not the one MRV reads, acknowledged
    every row then (its retained acknowledgement claims them all). It is promoted: the gateway restarts
    listing both. Before, only a list that lost a member was distrusted: staging's retained claim deleted
    the 20 rows at once, though the production store holds none of them. Now it deletes nothing, with one
    WARNING naming staging as added, until staging acknowledges under this run what it stores from now on."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    both = site.model_copy(update={"outbox": site.outbox.model_copy(update={"acknowledged_by": [PRODUCTION,
                                                                                                 STAGING]})})
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    Publisher(site, outbox, broker_url=mosquitto.url)  # the run listing production alone: it is recorded
    polled(site, outbox, 20)
    broker = Broker(mosquitto, tmp_path)
    pub = Publisher(both, outbox, broker_url=mosquitto.url)
    promoted = None
    try:
        broker.watcher.publish(topics.ack(site.site, site.gateway, STAGING),
                               {"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 20]], "run": OLD_RUN})
        with caplog.at_level(logging.WARNING):
            pub.start()
            assert wait_until(lambda: STAGING in pub._heard, 10)  # its retained claim has been read
        assert outbox.depth == 20 and pub.confirmed == 0
        said = [r.getMessage() for r in caplog.records if "acknowledged_by" in r.getMessage()]
        assert len(said) == 1 and f"now lists {STAGING}, not counted when this outbox last ran" in said[0], said
        assert outbox.acknowledged_by() == (True, [PRODUCTION])
        # promoted for good: it hears this run's status, stores what is sent again, and echoes this run
        promoted = collector(mosquitto, tmp_path, client_id=STAGING)
        assert wait_until(lambda: outbox.depth == 0, 30), outbox.depth
        assert outbox.acknowledged_by() == (True, sorted([PRODUCTION, STAGING]))
    finally:
        pub.stop(timeout=0)
        if promoted:
            promoted.stop()
        broker.close()
        outbox.close()


@pytest.mark.parametrize("recorded, collector_id, run, retained, deletes", [
    ([PRODUCTION], STAGING, OLD_RUN, True, False),  # added: its retained claim of another run
    ([PRODUCTION], STAGING, OLD_RUN, False, False),  # added: built before it heard this run's status
    ([PRODUCTION], STAGING, None, True, False),  # added, from before runs: retained, from before this run
    ([PRODUCTION], STAGING, None, False, True),  # added, from before runs: live, as for a shortened list
    ([PRODUCTION], STAGING, "this", True, True),  # added, and built under this run's status
    ([PRODUCTION], PRODUCTION, OLD_RUN, True, True),  # listed before too: trusted as before
    ([PRODUCTION, STAGING], STAGING, OLD_RUN, True, True),  # the list unchanged: no one distrusted
    (None, STAGING, OLD_RUN, True, False),  # no list before: everyone is added
])
def test_a_collector_added_since_the_outbox_last_ran_is_distrusted_until_it_echoes_this_run(
        tmp_path, recorded, collector_id, run, retained, deletes):
    """Production and staging listed; the outbox last ran with ``recorded``. Before, only a list that lost a
    member was distrusted: the added staging's retained claim of another run deleted the rows."""
    both = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION, STAGING]))
    outbox = Outbox(both.outbox.path, both.outbox.max_rows, durable=False)
    polled(both, outbox, 5)
    outbox.record_acknowledged_by(recorded)
    pub = Publisher(both, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]],
                       **({} if run is None else {"run": pub.run if run == "this" else run})}).encode()
    try:
        pub._store_acks.put((topics.ack(both.site, both.gateway, collector_id).encode(), body, retained))
        pub._take_store_acks()
        assert outbox.depth == (0 if deletes else 5)
        assert (collector_id in pub._distrusted) == (not deletes)
        # the longer list is recorded once no listed collector is distrusted any more
        assert outbox.acknowledged_by() == (True, sorted([PRODUCTION, STAGING]) if not pub._distrusted else recorded)
    finally:
        outbox.close()


def test_a_collector_dropped_then_listed_again_before_the_list_is_recorded_is_distrusted(tmp_path):
    """Staging is dropped from the list (its store no longer counts) and the gateway runs so, but production
    never echoes that run (down), so the longer list stays recorded; staging acknowledges meanwhile, unlisted.
    Then staging is listed again. Before, the list was the one recorded: unchanged, and staging's retained
    claim, built while it did not count, deleted the rows at once. Now the start that dropped it narrowed whom
    the outbox trusts: staging is added, and only its acknowledgement of this run deletes."""
    both, site = shortened(tmp_path)
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    polled(site, outbox, 5)
    outbox.record_acknowledged_by([PRODUCTION, STAGING])
    Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # the run without staging: no one echoes it
    pub = Publisher(both, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    topic = topics.ack(site.site, site.gateway, STAGING).encode()
    try:
        for run, deletes in ((OLD_RUN, False), (pub.run, True)):
            body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]], "run": run}).encode()
            pub._store_acks.put((topic, body, True))
            pub._take_store_acks()
            assert outbox.depth == (0 if deletes else 5)
            assert pub._distrusted == (set() if deletes else {STAGING})
        assert outbox.acknowledged_by() == outbox.trusted_by() == (True, sorted([PRODUCTION, STAGING]))
    finally:
        outbox.close()
