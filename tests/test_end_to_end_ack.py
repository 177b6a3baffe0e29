"""A reading leaves the site only when the store has it: a real Mosquitto (SIGKILLed,
with and without saved state), the real gateway polling a simulator, and the real
collector writing a SQLite store. Each test counts what the store holds by seq (one
epoch per test, or readings after a new epoch began): every polled reading is stored
exactly once, or the loss is visible as a new epoch."""

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from collector.acknowledgement import Acknowledgements
from collector.service import Collector
from contract import topics
from contract.acknowledgement import MAX_ACK_BYTES, Ack
from contract.config import CollectorConfig
from contract.message import Reading
from gateway.outbox import Outbox
from gateway.publisher import Publisher, status_payload
from gateway.service import Gateway
from jcm.broker import Mosquitto
from tests.conftest import REPO, Subscriber, free_port, load_site, tcp_device, wait_until, write_site
from tests.test_collector import AckWatcher

pytestmark = pytest.mark.slow

GATEWAY = "gw-test"


def e2e_site(tmp_path, **outbox) -> Path:
    port = free_port()
    devices = [tcp_device(f"m{i}", "power_meter_3ph", port, unit_id=i + 1, interval=0.1) for i in range(4)]
    return write_site(tmp_path, devices, outbox={"path": str(tmp_path / "outbox.sqlite"), "backlog_rate": 500.0,
                                                 "confirm_timeout_s": 3, **outbox})


def broker_without_saves(tmp_path) -> Mosquitto:
    """Persistence on, but nothing saved before a crash (the shipped config's window, made long)."""
    return Mosquitto(tmp_path / "mosquitto", extra_config="autosave_interval 3600\n").start()


def sigkill(broker: Mosquitto) -> None:
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait()
    broker.proc = None


def collector(broker, tmp_path, client_id="jcm-collector-e2e", **extra) -> Collector:
    c = Collector(CollectorConfig(broker={"url": broker.url}, store=f"sqlite:///{tmp_path}/jcm.db",
                                  sites_dir=str(tmp_path / "sites"), client_id=client_id, batch_timeout=0.1, **extra))
    c.start()
    return c


def finish(gw: Gateway, timeout=20.0) -> int:
    """Stop polling, wait until the store has confirmed every row, stop; return the last seq."""
    gw.scheduler.pause()
    time.sleep(0.3)  # a poll under way ends
    emptied = wait_until(lambda: gw.outbox.depth == 0, timeout)
    n = gw.outbox.last_seq()
    gw.stop()
    assert emptied, f"{gw.outbox.depth} row(s) never confirmed"
    return n


def stored(tmp_path, since: dt.datetime | None = None) -> dict[int, int]:
    """seq -> how many different readings (device, ts) the store holds under it."""
    ms = int(since.timestamp() * 1000) if since else 0
    with sqlite3.connect(tmp_path / "jcm.db") as db:
        return dict(db.execute("SELECT seq, COUNT(DISTINCT device || '@' || ts) FROM readings "
                               "WHERE gateway = ? AND ts >= ? GROUP BY seq", (GATEWAY, ms)))


def assert_each_stored_once(tmp_path, n, since=None):
    counts = stored(tmp_path, since)
    missing = sorted(set(range(1, n + 1)) - counts.keys())
    assert not missing, f"{len(missing)} of {n} readings lost: seq {missing[:10]}..."
    assert set(counts) == set(range(1, n + 1)) and set(counts.values()) == {1}, "a seq stored twice"


def polling(tmp_path, simulate, broker) -> tuple[Collector, Gateway]:
    """The site's meters simulated, a collector, and the gateway started polling them."""
    site = load_site(e2e_site(tmp_path))
    simulate(site)
    c = collector(broker, tmp_path)
    gw = Gateway(site, broker_url=broker.url)
    gw.start()
    return c, gw


def test_broker_crash_after_acking_with_the_collector_away_loses_nothing(tmp_path, simulate):
    broker = broker_without_saves(tmp_path)
    c, gw = polling(tmp_path, simulate, broker)
    try:
        assert wait_until(lambda: c.stored >= 20)
        c.stop()  # away: the broker queues for its session, acknowledging every reading to the gateway
        acked = gw.publisher.acknowledged
        assert wait_until(lambda: gw.publisher.acknowledged >= acked + 60)
        sigkill(broker)  # before its next save: what it queued is gone
        broker.start()
        c = collector(broker, tmp_path)
        n = finish(gw)
    finally:
        c.stop()
        broker.stop()
    assert n > 60
    assert_each_stored_once(tmp_path, n)


def test_broker_crash_with_no_saved_state_while_the_collector_is_connected(tmp_path, simulate):
    broker = broker_without_saves(tmp_path)
    c, gw = polling(tmp_path, simulate, broker)
    try:
        assert wait_until(lambda: c.stored >= 40)
        # the collector's session dies with the broker, and the gateway comes back first (the race the
        # issue measured): what it sends before the collector has subscribed again has no subscriber
        c.connection.reconnect_delay = (4, 4)
        sigkill(broker)
        # until the collector has seen its connection go, ``connected`` still says the old one
        assert wait_until(lambda: not c.connection.connected.is_set(), 10)
        broker.start()
        assert wait_until(lambda: c.connection.connected.is_set(), 15)
        assert wait_until(lambda: gw.outbox.last_seq() > 60, 10)
        n = finish(gw)
    finally:
        c.stop()
        broker.stop()
    assert n > 60
    assert_each_stored_once(tmp_path, n)


def _outbox_lost_while_down(tmp_path, mosquitto, simulate, lose) -> None:
    site = load_site(e2e_site(tmp_path))
    simulate(site)
    watcher = Subscriber(mosquitto)
    c = collector(mosquitto, tmp_path)
    gw = Gateway(site, broker_url=mosquitto.url)
    gw.start()
    try:
        assert wait_until(lambda: c.stored >= 40)
        c.stop()  # the last readings are kept in the outbox, awaiting the store
        time.sleep(0.5)
        gw.stop()
        old_epoch, kept = gw.outbox.epoch, gw.outbox.depth
        assert kept > 0
        lose(Path(site.outbox.path))
        restart = dt.datetime.now(dt.UTC)
        c = collector(mosquitto, tmp_path)
        gw = Gateway(site, broker_url=mosquitto.url)
        assert gw.outbox.epoch != old_epoch and gw.outbox.last_seq() == 0  # a new sequence, and it says so
        gw.start()
        assert wait_until(lambda: c.stored >= 80)
        n = finish(gw)
        # the retained status announces the new epoch to every subscriber
        assert watcher.wait_for(lambda: any(s.get("epoch") == gw.outbox.epoch for s in watcher.status), 10)
        assert any(s.get("epoch") == old_epoch for s in watcher.status)
    finally:
        c.stop()
        watcher.close()
    # seqs 1.. again under the new epoch: none of them is taken for a redelivery of the old ones
    assert_each_stored_once(tmp_path, n, since=restart)


def test_outbox_emptied_while_the_gateway_is_down_starts_a_new_epoch(tmp_path, mosquitto, simulate):
    def empty(path):
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM outbox")
            db.execute("DELETE FROM sqlite_sequence")
    _outbox_lost_while_down(tmp_path, mosquitto, simulate, empty)


def test_outbox_deleted_while_the_gateway_is_down_starts_a_new_epoch(tmp_path, mosquitto, simulate):
    def delete(path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    _outbox_lost_while_down(tmp_path, mosquitto, simulate, delete)


def jcm(*args, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "jcm.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_half_truncated_outbox_is_refused_and_new_outbox_starts_a_new_epoch(tmp_path, mosquitto):
    site_path = e2e_site(tmp_path)
    outbox = tmp_path / "outbox.sqlite"
    args = ["gateway", "--site", site_path, "--broker", mosquitto.url, "--duration", 1]
    assert jcm(*args).returncode == 0  # a healthy outbox with its epoch
    with sqlite3.connect(outbox) as db:
        old_epoch = db.execute("SELECT epoch FROM sequence_epoch").fetchone()[0]
    with open(outbox, "ab") as f:
        f.write(b"\0" * 40_000)
    os.truncate(outbox, outbox.stat().st_size // 2 + 100)
    refused = jcm(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(outbox) in lines[0] and "--new-outbox" in lines[0], refused.stderr
    res = jcm(*args, "--new-outbox")
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(outbox) as db:
        epoch = db.execute("SELECT epoch FROM sequence_epoch").fetchone()[0]
    assert epoch != old_epoch and f"sequence epoch {epoch}" in res.stderr


def _collector_process(tmp_path, broker, client_id):
    cfg = tmp_path / f"{client_id}.yaml"
    cfg.write_text(yaml.safe_dump({"broker": {"url": broker.url}, "store": f"sqlite:///{tmp_path}/jcm.db",
                                   "sites_dir": str(tmp_path / "sites"), "client_id": client_id,
                                   "share_group": "collectors", "batch_timeout": 0.1}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "jcm.cli", "collector", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_two_collectors_on_a_shared_subscription_one_sigkilled(tmp_path, mosquitto, simulate):
    site = load_site(e2e_site(tmp_path))
    simulate(site)
    survivor = collector(mosquitto, tmp_path, client_id="jcm-collector-a", share_group="collectors")
    victim = _collector_process(tmp_path, mosquitto, "jcm-collector-b")
    gw = Gateway(site, broker_url=mosquitto.url)
    gw.start()
    try:
        assert wait_until(lambda: survivor.stored >= 40 and gw.publisher.confirmed > survivor.stored + 10), \
            "the second collector never stored its share"
        victim.send_signal(signal.SIGKILL)  # mid-stream: what the broker dealt it is stuck in its session
        victim.wait()
        n = finish(gw)
    finally:
        survivor.stop()
        if victim.poll() is None:
            victim.kill()
    assert n >= 50  # the wait above saw 40 stored by the survivor and 10 more confirmed
    assert_each_stored_once(tmp_path, n)


def test_two_collectors_draining_thousands_of_single_messages_learn_each_others_claims_whole(tmp_path, mosquitto,
                                                                                             caplog):
    """A fast drain of single messages on a shared subscription, the gateway's floor still at 1 (its
    status comes every 30 s): each collector stores every other seq, 500 a batch. Before, each learnt
    only the other's lowest 256 ranges, the holes piled up past the 1,024 ranges kept, and it forgot
    those above (a WARNING calling the gateway broken or hostile): of 5,000 readings, hundreds were
    sent again after the confirm timeout. Now every reading is confirmed once, none sent again."""
    n = 5000
    site = load_site(e2e_site(tmp_path, confirm_timeout_s=15))  # well beyond a confirmation's lag under load
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    device = site.devices[0]
    shape = Reading(site=site.site, gateway=site.gateway, device=device.id, ts=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                    values={p.channel: 1.0 for p in device.register_map.points}, epoch=outbox.epoch)
    watcher = AckWatcher(mosquitto, site.site, site.gateway)
    a = collector(mosquitto, tmp_path, client_id="jcm-collector-a", share_group="collectors")
    b = collector(mosquitto, tmp_path, client_id="jcm-collector-b", share_group="collectors")
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    try:
        with caplog.at_level(logging.WARNING, logger="collector.acknowledgement"):
            pub.start()
            assert wait_until(lambda: all(c.connected.is_set() for c in (
                pub.connection, a.connection, b.connection, a.acknowledgements.connection,
                b.acknowledgements.connection)), 10)
            time.sleep(0.5)  # subscriptions in place
            topic = topics.reading(site.site, site.gateway, device.id)
            for _ in range(n):  # polled while connected: the live lane sends each alone
                outbox.put(topic, lambda seq: dataclasses.replace(
                    shape, seq=seq, ts=shape.ts + dt.timedelta(seconds=seq)).to_json())
            pub.notify()
            assert wait_until(lambda: outbox.last_seq() == n and outbox.depth == 0, 60), outbox.depth
    finally:
        pub.stop(timeout=0)
        a.stop()
        b.stop()
        watcher.close()
        outbox.close()
    assert min(a.stored, b.stored) > n // 4  # the broker dealt both a share
    assert pub.published == n, f"{pub.published - n} reading(s) sent again"
    assert pub.confirmed == n
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert watcher.sizes and max(watcher.sizes) <= MAX_ACK_BYTES
    assert_each_stored_once(tmp_path, n)


CRAFTED = [
    b"{not json",
    b"[" * 20_000,  # nesting, and beyond the size bound
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[5, 1]]}',  # reversed
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[1, 3], [2, 9]]}',  # overlapping
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[0, 9]]}',  # seq 0
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[1, 99999999999999999999999999]]}',  # beyond 64 bits
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[1.0, 9]]}',
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [[true, 9]]}',
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [' + b",".join(b"[%d,%d]" % (2 * i + 1, 2 * i + 1)
                                                 for i in range(300)) + b"]}",  # too many
    b'{"schema": 1, "epoch": "EPOCH\\u0000", "ranges": [[1, 9]]}',
    b'{"schema": 2, "epoch": "EPOCH", "ranges": [[1, 9]]}',
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [], "bits_from": 1, "bits": "//8*"}',  # not base64
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [], "bits": "/w=="}',  # no bits_from
    b'{"schema": 1, "epoch": "EPOCH", "ranges": [], "bits_from": 9223372036854775801, "bits": "/w=="}',  # > MAX_SEQ
    b'{"schema": 1, "epoch": "0123456789abcdef", "ranges": [[1, 9223372036854775807]]}',  # another epoch
]


def test_crafted_acknowledgements_delete_nothing_and_a_true_one_only_what_was_sent(tmp_path, mosquitto):
    site = load_site(e2e_site(tmp_path))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows)
    for _ in range(10):
        outbox.append("jcm/v1/test-site/gw-test/m0/reading", str)
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    pub.start()
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    attacker.connect("127.0.0.1", mosquitto.port)
    attacker.loop_start()

    def ack(body: bytes, collector="c1"):
        info = attacker.publish(topics.ack("test-site", GATEWAY, collector),
                                body.replace(b"EPOCH", outbox.epoch.encode()), qos=1, retain=True)
        info.wait_for_publish(5)

    try:
        assert wait_until(lambda: pub.acknowledged == 10)  # PUBACKed: awaiting the store, still kept
        assert outbox.depth == 10
        for i, body in enumerate(CRAFTED):
            ack(body, f"c{i}")
        time.sleep(1)
        assert outbox.depth == 10 and pub._thread.is_alive()
        ack(b'{"schema": 1, "epoch": "EPOCH", "ranges": [[1, 3], [5, 5]]}')
        assert wait_until(lambda: outbox.depth == 6)
        ack(b'{"schema": 1, "epoch": "EPOCH", "ranges": [], "bits_from": 6, "bits": "BQ=="}', "c3")  # 6 and 8
        assert wait_until(lambda: outbox.depth == 4)
        assert {s for s, _, _ in outbox.after(0, 10)} == {4, 7, 9, 10}
        # the whole sequence claimed: only what was sent is taken, never a seq polled later
        ack(b'{"schema": 1, "epoch": "EPOCH", "ranges": [[1, 9223372036854775807]]}', "c2")
        assert wait_until(lambda: outbox.depth == 0)
        for _ in range(5):
            outbox.append("jcm/v1/test-site/gw-test/m0/reading", str)
        pub.notify()
        assert wait_until(lambda: pub.acknowledged == 15)
        time.sleep(0.5)
        assert outbox.depth == 5 and pub.confirmed == 10
    finally:
        attacker.loop_stop()
        pub.stop(timeout=0)
        outbox.close()


@pytest.mark.parametrize("body", CRAFTED[:-1])
def test_ack_parser_refuses_with_a_reason(body):
    with pytest.raises(ValueError):
        Ack.from_json(body.replace(b"EPOCH", b"0123456789abcdef"))


def test_collectors_sharing_a_stream_publish_one_merged_range(tmp_path, mosquitto):
    """The broker deals a gateway's messages out in turn: alone, each collector would hold every
    other seq (one range per message); merged with the other's acknowledgement, one range."""
    e2e_site(tmp_path)
    cfg = dict(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db", sites_dir=str(tmp_path / "sites"))
    a = Acknowledgements(CollectorConfig(client_id="col-a", **cfg), [("test-site", GATEWAY)])
    b = Acknowledgements(CollectorConfig(client_id="col-b", **cfg), [("test-site", GATEWAY)])
    watcher = AckWatcher(mosquitto, "+", "+")
    seen = watcher.last
    epoch = "00112233aabbccdd"
    status = {"schema": 1, "state": "online", "epoch": epoch, "floor": 1}  # until it, no claim but ours is merged
    watcher.publish(topics.gateway_status("test-site", GATEWAY), status)

    def readings(seqs):
        return [Reading(site="test-site", gateway=GATEWAY, device="m0", ts=dt.datetime.now(dt.UTC), values={},
                        seq=s, epoch=epoch) for s in seqs]
    try:
        for ack in (a, b):
            ack.start()
        assert wait_until(lambda: a.connection.connected.is_set() and b.connection.connected.is_set(), 10)
        time.sleep(0.3)
        a.kept(readings(range(1, 200, 2)), [])
        assert wait_until(lambda: "col-a" in seen)
        assert len(seen["col-a"]["ranges"]) == 100  # alone: every other seq
        time.sleep(0.3)  # b has heard a
        dead_letter = (topics.reading("test-site", GATEWAY, "m0"), b'{"seq": 201, "epoch": "%s"}' % epoch.encode())
        b.kept(readings(range(2, 201, 2)), [dead_letter])
        assert wait_until(lambda: "col-b" in seen)
        assert seen["col-b"] == {"schema": 1, "epoch": epoch, "ranges": [[1, 201]]}  # dead letter 201 included
    finally:
        for ack in (a, b):
            ack.stop()
        watcher.close()


def test_a_collector_reads_back_its_own_acknowledgement_only_after_a_restart(tmp_path, mosquitto, monkeypatch):
    """Every acknowledgement comes back from the broker to the collector that published it (it
    listens to all of them): parsing and merging its own, a batch's worth of one-seq ranges on a
    shared subscription, after every batch told it nothing. Once restarted, it takes it back when the
    gateway's status says it lists no collectors (any counts): it may carry another's claims merged."""
    e2e_site(tmp_path)
    cfg = CollectorConfig(client_id="col-a", broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db",
                          sites_dir=str(tmp_path / "sites"))
    parsed = []
    from_json = Ack.from_json
    monkeypatch.setattr(Ack, "from_json", lambda payload: parsed.append(payload) or from_json(payload))
    epoch = "00112233aabbccdd"
    key = ("test-site", GATEWAY)
    readings = [Reading(site="test-site", gateway=GATEWAY, device="m0", ts=dt.datetime.now(dt.UTC), values={},
                        seq=s, epoch=epoch) for s in range(1, 200, 2)]
    a = Acknowledgements(cfg, [key])
    try:
        a.start()
        assert wait_until(a.connection.connected.is_set, 10)
        time.sleep(0.3)
        a.kept(readings, [])
        time.sleep(0.5)  # its echo is back
        assert parsed == []
    finally:
        a.stop()
    again = Acknowledgements(cfg, [key])
    try:
        again.start()
        assert wait_until(lambda: again._gateways[key].held, 10)  # its retained one from before, held
        assert not again._gateways[key].epochs
        gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gateway-stand-in")
        gateway.connect("127.0.0.1", mosquitto.port)
        gateway.loop_start()
        body = {"schema": 1, "state": "online", "epoch": epoch, "floor": 1}
        gateway.publish(topics.gateway_status(*key), json.dumps(body), qos=1).wait_for_publish(5)
        assert wait_until(lambda: again._gateways[key].epochs.get(epoch), 10)
        assert list(again._gateways[key].epochs[epoch].runs()) == [(s, s) for s in range(1, 200, 2)]
        gateway.loop_stop()
        gateway.disconnect()
    finally:
        again.stop()


def test_gateway_sigkilled_twice_keeps_what_the_store_has_not_confirmed(tmp_path, simulate):
    """What awaits the store is kept in memory only: a killed gateway sends it all again."""
    broker = broker_without_saves(tmp_path)
    site_path = e2e_site(tmp_path)
    site = load_site(site_path)
    simulate(site)
    c = collector(broker, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def gateway():
        return subprocess.Popen([sys.executable, "-m", "jcm.cli", "gateway", "--site", str(site_path), "--broker",
                                 broker.url], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for stored in (30, 90):
            gw = gateway()
            assert wait_until(lambda: c.stored >= stored)
            gw.send_signal(signal.SIGKILL)  # mid-stream: rows sending and awaiting the store
            gw.wait()
        gw = gateway()
        assert wait_until(lambda: c.stored >= 150)
        gw.send_signal(signal.SIGTERM)  # a clean stop waits a moment for the last confirmations
        assert gw.wait(timeout=20) == 0
    finally:
        c.stop()
        broker.stop()
    with sqlite3.connect(site.outbox.path) as db:
        n = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
        left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert n > 100 and left == 0
    assert_each_stored_once(tmp_path, n)


PRODUCTION, STAGING = "jcm-collector-prod", "jcm-collector-staging"


def staging_collector(broker, tmp_path, **extra) -> Collector:
    """A collector of another environment on the same broker, with a store of its own (not the one MRV reads)."""
    c = Collector(CollectorConfig(broker={"url": broker.url}, store=f"sqlite:///{tmp_path}/staging.db",
                                  sites_dir=str(tmp_path / "sites"), client_id=STAGING, batch_timeout=0.1, **extra))
    c.start()
    return c


def polled(site, outbox: Outbox, n: int) -> None:
    """``n`` valid readings of the site's first device into the outbox, as if polled."""
    device = site.devices[0]
    shape = Reading(site=site.site, gateway=site.gateway, device=device.id, ts=dt.datetime.now(dt.UTC),
                    values={p.channel: 1.0 for p in device.register_map.points}, epoch=outbox.epoch)
    topic = topics.reading(site.site, site.gateway, device.id)
    for _ in range(n):
        outbox.put(topic, lambda seq: dataclasses.replace(shape, seq=seq, ts=shape.ts - dt.timedelta(seconds=seq))
                   .to_json())
    outbox.flush()


def test_an_unlisted_collectors_acknowledgements_delete_nothing_and_a_listed_ones_do(tmp_path, mosquitto):
    """A staging collector pointed at the production broker stores every reading in its own store and
    acknowledges them. Before, the gateway deleted them all: lost from the production store, silently.
    Now they stay, counted in the status, until the listed collector's store has them."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    status = Subscriber(mosquitto)
    staging = staging_collector(mosquitto, tmp_path)
    pub = Publisher(site, outbox, broker_url=mosquitto.url, status_every=0.5)
    production = None
    try:
        pub.start()
        assert wait_until(lambda: pub.connection.connected.is_set() and staging.acknowledgements.connection
                          .connected.is_set(), 10)
        time.sleep(0.3)  # subscriptions in place
        polled(site, outbox, 20)
        pub.notify()
        assert wait_until(lambda: staging.stored == 20, 10)
        time.sleep(1)  # its acknowledgement of all 20 has reached the gateway
        assert outbox.depth == 20 and pub.confirmed == 0
        assert pub.unlisted[STAGING] > 0
        assert wait_until(lambda: any(s.get("acks_ignored", {}).get(STAGING) for s in status.status), 5)
        assert status.status[-1]["acknowledged_by"] == [PRODUCTION]  # what collectors merge by
        production = collector(mosquitto, tmp_path, client_id=PRODUCTION)
        # sent again after the confirm timeout, now stored where MRV reads, and only then deleted
        assert wait_until(lambda: outbox.depth == 0, 30), outbox.depth
    finally:
        pub.stop(timeout=0)
        staging.stop()
        if production:
            production.stop()
        status.close()
        outbox.close()
    assert_each_stored_once(tmp_path, 20)


@pytest.mark.parametrize("told_by", ["site file", "gateway status"])
def test_a_listed_collector_does_not_merge_an_unlisted_ones_claim(tmp_path, mosquitto, told_by):
    """Collectors publish the union of the claims they hear. Before, a listed collector took the staging
    collector's claim into its own, and the gateway deleted on it what only the staging store held. The
    list comes from the collectors' copy of the site file, or from the gateway's status when that copy
    is older than the gateway's."""
    e2e_site(tmp_path)
    cfg = dict(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db", sites_dir=str(tmp_path / "sites"))
    key = ("test-site", GATEWAY)
    trusted = [PRODUCTION, "jcm-collector-peer"]
    listed = {key: trusted} if told_by == "site file" else None
    prod = Acknowledgements(CollectorConfig(client_id=PRODUCTION, **cfg), [key], listed)
    peer = Acknowledgements(CollectorConfig(client_id="jcm-collector-peer", **cfg), [key], listed)
    staging = Acknowledgements(CollectorConfig(client_id=STAGING, **cfg), [key], listed)
    watcher = AckWatcher(mosquitto, "+", "+")
    seen = watcher.last
    epoch = "00112233aabbccdd"
    # a status without the list (a gateway from before it) leaves it to the site file
    status = {"schema": 1, "state": "online", "epoch": epoch, "floor": 1,
              **({"acknowledged_by": trusted} if told_by == "gateway status" else {})}
    watcher.publish(topics.gateway_status(*key), status)

    def readings(seqs):
        return [Reading(site="test-site", gateway=GATEWAY, device="m0", ts=dt.datetime.now(dt.UTC), values={},
                        seq=s, epoch=epoch) for s in seqs]
    try:
        for ack in (prod, peer, staging):
            ack.start()
        assert wait_until(lambda: all(a.connection.connected.is_set() for a in (prod, peer, staging)), 10)
        time.sleep(0.3)
        staging.kept(readings(range(1, 101)), [])
        peer.kept(readings([101]), [])
        assert wait_until(lambda: STAGING in seen and "jcm-collector-peer" in seen)
        time.sleep(0.3)  # prod has heard both
        prod.kept(readings([102]), [])
        assert wait_until(lambda: PRODUCTION in seen)
        assert seen[PRODUCTION] == {"schema": 1, "epoch": epoch, "ranges": [[101, 102]]}  # the peer's, not staging's
    finally:
        for ack in (prod, peer, staging):
            ack.stop()
        watcher.close()


def test_a_shortened_list_does_not_act_on_retained_acknowledgements_from_before(tmp_path, mosquitto, caplog):
    """The site file listed the staging collector too; the production collector merged its claims, and its
    retained acknowledgement keeps them. Before, the gateway restarted with the shorter list deleted on that
    message what only the staging store held. Now a retained acknowledgement from before the list lost a
    member deletes nothing, said once; the collector's next acknowledgement (this run's) does, and the list
    is then recorded, so the next run trusts retained acknowledgements again."""
    both = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION, STAGING]))
    site = both.model_copy(update={"outbox": both.outbox.model_copy(update={"acknowledged_by": [PRODUCTION]})})
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    Publisher(both, outbox, broker_url=mosquitto.url)  # the run with the longer list: it is recorded
    polled(site, outbox, 20)
    ack_topic = topics.ack(site.site, site.gateway, PRODUCTION)
    merged = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 20]]})  # staging's claim, merged
    other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector-prod-stand-in")
    other.connect("127.0.0.1", mosquitto.port)
    other.loop_start()
    other.publish(ack_topic, merged, qos=1, retain=True).wait_for_publish(5)
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    try:
        with caplog.at_level(logging.WARNING):
            pub.start()
            assert wait_until(lambda: pub.connection.connected.is_set(), 10)
            time.sleep(1.5)  # the retained acknowledgement has reached the gateway
        assert outbox.depth == 20 and pub.confirmed == 0
        said = [r.getMessage() for r in caplog.records if "no longer lists" in r.getMessage()]
        assert len(said) == 1 and STAGING in said[0], said
        assert outbox.acknowledged_by() == (True, sorted([PRODUCTION, STAGING]))
        fresh = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]]})
        other.publish(ack_topic, fresh, qos=1, retain=True).wait_for_publish(5)  # published in this run
        assert wait_until(lambda: outbox.depth == 15, 10), outbox.depth
        assert outbox.acknowledged_by() == (True, [PRODUCTION])
    finally:
        pub.stop(timeout=0)
        other.loop_stop()
        other.disconnect()
        outbox.close()


def test_on_a_shared_subscription_what_only_an_unlisted_collector_stored_is_sent_again(tmp_path, mosquitto):
    """A staging collector joins the production share group: the broker deals it a share of the
    readings. Before, the gateway deleted that share on its acknowledgement: missing from the production
    store. Now those rows stay, are sent again, and are deleted once the listed collector has them."""
    n = 40
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    production = collector(mosquitto, tmp_path, client_id=PRODUCTION, share_group="collectors")
    staging = staging_collector(mosquitto, tmp_path, share_group="collectors")
    pub = Publisher(site, outbox, broker_url=mosquitto.url)
    try:
        pub.start()
        assert wait_until(lambda: all(c.connected.is_set() for c in (
            pub.connection, production.connection, staging.connection, production.acknowledgements.connection,
            staging.acknowledgements.connection)), 10)
        time.sleep(0.3)
        polled(site, outbox, n)
        pub.notify()
        assert wait_until(lambda: staging.stored > 0 and outbox.depth == 0, 40), outbox.depth
    finally:
        pub.stop(timeout=0)
        staging.stop()
        production.stop()
        outbox.close()
    assert_each_stored_once(tmp_path, n)
    assert pub.unlisted.get(STAGING)


def test_unlisted_collectors_are_logged_once_each_and_the_status_stays_small(tmp_path, caplog):
    """Many collector ids (the legacy shared user can publish under any): each is logged once, at
    most 8 are named in the status, the rest counted under "*"; a listed one's still deletes."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    outbox = Outbox(site.outbox.path, site.outbox.max_rows, durable=False)
    polled(site, outbox, 5)
    pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]]}).encode()
    ids = [f"staging-{i}" for i in range(12)] + ["x" * 200, "bad\u202eid"]
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
            for _ in range(3):
                for c in ids:
                    pub._store_acks.put((topics.ack(site.site, site.gateway, c).encode(), body, False))
                pub._take_store_acks()
        assert outbox.depth == 5
        assert pub.unlisted == {**{f"staging-{i}": 3 for i in range(8)}, "*": 3 * 6}
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 9 and all("not in outbox.acknowledged_by (jcm-collector-prod)" in m for m in said)
        assert not any("\u202e" in m for m in said)
        status = json.loads(status_payload(site, "online", acks_ignored=pub.unlisted,
                                           acknowledged_by=[f"{'c' * 128}{i}"[-128:] for i in range(8)]))
        assert len(json.dumps(status)) < 4096 - 1024  # room left beside the outbox fields
        pub._store_acks.put((topics.ack(site.site, site.gateway, PRODUCTION).encode(), body, False))
        pub._take_store_acks()
        assert outbox.depth == 0
    finally:
        outbox.close()



@pytest.mark.parametrize("when", ["collector restarts", "gateway list narrowed", "status forged",
                                  "own claim from before"])
def test_a_collector_never_publishes_a_claim_merged_from_a_collector_the_gateway_does_not_list(
        tmp_path, mosquitto, when):
    """A collector (re)starting gets the retained acknowledgements before the gateway's retained status
    (the broker answers its subscriptions in order); a gateway restarted with a shorter list says so only
    in its next status. Before, a collector whose copy of the site file has no acknowledged_by merged the
    staging collector's (retained) claim meanwhile, kept it once the status named only production, and
    published it as its own: the gateway deleted what only the staging store held. A status published with
    the site's password naming staging (its collector user may publish its own acknowledgements) did the
    same where the collector's copy of the site file lists production only. A collector restarted took its
    own retained acknowledgement as its own claim, though it had merged staging's claim into it while the
    gateway listed staging: published afresh, it passed the gateway's distrust of retained ones."""
    e2e_site(tmp_path)
    cfg = dict(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db", sites_dir=str(tmp_path / "sites"))
    key = ("test-site", GATEWAY)
    epoch = "00112233aabbccdd"
    watcher = AckWatcher(mosquitto, "+", "+")
    seen = watcher.last

    def status(*listed):
        body = {"schema": 1, "state": "online", "epoch": epoch, "floor": 1, "acknowledged_by": list(listed)}
        watcher.publish(topics.gateway_status(*key), body)

    def staging_claims():
        watcher.publish(topics.ack(*key, STAGING), {"schema": 1, "epoch": epoch, "ranges": [[1, 100]]})

    # its copy of the site file: no list, or (status forged) production only
    prod = Acknowledgements(CollectorConfig(client_id=PRODUCTION, **cfg), [key],
                            {key: [PRODUCTION]} if when == "status forged" else None)
    try:
        if when == "status forged":
            status(PRODUCTION, STAGING)
            prod.start()
            assert wait_until(lambda: prod._gateways[key].current == epoch, 10)
            staging_claims()
        elif when == "collector restarts":
            status(PRODUCTION)
            staging_claims()
            prod.start()
            assert wait_until(lambda: prod._gateways[key].current == epoch, 10)  # the status is in
        elif when == "own claim from before":
            status(PRODUCTION)
            merged = {"schema": 1, "epoch": epoch, "ranges": [[1, 100]]}  # staging's, merged then
            watcher.publish(topics.ack(*key, PRODUCTION), merged)
            prod.start()
            assert wait_until(lambda: prod._gateways[key].current == epoch, 10)
        else:
            status(PRODUCTION, STAGING)
            prod.start()
            assert wait_until(lambda: prod._gateways[key].current == epoch, 10)
            staging_claims()
            assert wait_until(lambda: prod._gateways[key].epochs.get(epoch), 10)  # merged: the gateway lists it
            status(PRODUCTION)  # restarted with staging taken off its list
            assert wait_until(lambda: prod._gateways[key].trusted == {PRODUCTION}, 10)
        time.sleep(0.3)
        seen.clear()  # what was published before: only the collector's next acknowledgement is looked at
        prod.kept([Reading(site="test-site", gateway=GATEWAY, device="m0", ts=dt.datetime.now(dt.UTC), values={},
                           seq=101, epoch=epoch)], [])
        assert wait_until(lambda: PRODUCTION in seen)
        assert seen[PRODUCTION] == {"schema": 1, "epoch": epoch, "ranges": [[101, 101]]}
    finally:
        prod.stop()
        watcher.close()


def test_an_unnamed_collector_first_still_leaves_eight_named_in_the_status(tmp_path):
    """Before, the "*" bucket took one of the 8 places when an id no site file could list came first."""
    site = load_site(e2e_site(tmp_path, acknowledged_by=[PRODUCTION]))
    pub = Publisher(site, Outbox(site.outbox.path, site.outbox.max_rows, durable=False), broker_url="mqtt://127.0.0.1:1")
    try:
        for c in ["bad id", *(f"staging-{i}" for i in range(9))]:
            pub._unlisted(c)
        assert pub.unlisted == {"*": 2, **{f"staging-{i}": 1 for i in range(8)}}
    finally:
        pub.outbox.close()
