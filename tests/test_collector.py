"""The collector against a real Mosquitto and real stores: batches acknowledged only
after the store has them, bad messages kept aside with a reason, nothing lost when
the collector is SIGKILLed or the store goes away, and two collectors sharing one
stream through a shared subscription."""

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import yaml

from collector.service import SWITCH_INTERVAL, Collector
from contract import topics
from contract.config import CollectorConfig
from contract.message import Reading
from store import open_store
from tests.conftest import REPO, tcp_device, wait_until, write_site

DEVICES = [f"m{i}" for i in range(1, 5)]
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture
def sites_dir(tmp_path):
    path = write_site(tmp_path, [tcp_device(d, "power_meter_3ph", 1502, unit_id=i + 1) for i, d in enumerate(DEVICES)])
    return path.parent


def payload(i: int, site="test-site", gateway="gw-test", device=None) -> tuple[str, bytes]:
    device = device or DEVICES[i % len(DEVICES)]
    r = Reading(site=site, gateway=gateway, device=device, ts=T0 + dt.timedelta(seconds=i),
                values={"energy_import": 1000.0 + i, "active_power": 5.0}, units={"energy_import": "kWh"}, seq=i + 1)
    return topics.reading(site, gateway, device), r.to_json().encode()


class Publisher:
    """A gateway stand-in: QoS 1 publishes, waiting for every PUBACK."""

    def __init__(self, broker):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, messages, rate: float | None = None):
        infos = []
        for topic, body in messages:
            infos.append(self.client.publish(topic, body, qos=1))
            if rate:
                time.sleep(1 / rate)
        for info in infos:
            info.wait_for_publish(timeout=60)
        assert all(i.is_published() for i in infos)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def running(c: Collector, pub: Publisher) -> int:
    """Wait until the collector's subscription is in place (a probe reading lands: the
    broker drops what is published before it) and the probes still in flight have landed
    too; return how many readings it stored."""
    assert wait_until(lambda: pub.send([payload(0)]) or c.stored >= 1, 10)
    time.sleep(0.5)
    return c.stored


def config(broker, store_url, sites_dir, **extra) -> CollectorConfig:
    return CollectorConfig(broker={"url": broker.url}, store=store_url, sites_dir=str(sites_dir), **extra)


def test_valid_readings_land_and_bad_messages_become_dead_letters(tmp_path, mosquitto, sites_dir):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = Collector(config(mosquitto, store_url, sites_dir))
    c.start()
    pub = Publisher(mosquitto)
    good = [payload(i) for i in range(200)]
    topic, body = payload(0)
    future = Reading.from_json(body)
    bad = {
        "not JSON": (topic, b"{garbage"),
        "schema": (topic, json.dumps({**json.loads(body), "schema": 2}).encode()),
        "not finite": (topic, body.replace(b'"active_power":5.0', b'"active_power":1e999')),
        "topic says device 'm2'": (topics.reading("test-site", "gw-test", "m2"), body),
        "unknown site 'nowhere'": payload(1, site="nowhere"),
        "is served by gateway 'gw-test', not 'gw-evil'": payload(2, gateway="gw-evil"),
        "has no device 'm9'": payload(3, device="m9"),
        "is in the future": (topic, body.replace(b'"2026-11-01T', b'"2036-11-01T')),
        "before site 'test-site' was commissioned": (topic, body.replace(b'"2026-11-01T', b'"2016-11-01T')),
        "exceeds the limit": (topic, body[:-1] + b', "pad": "' + b"x" * 70000 + b'"}'),
    }
    probes = running(c, pub)
    pub.send(good + list(bad.values()))
    assert wait_until(lambda: c.stored - probes + c.dead == 210), (c.stored, c.dead)
    c.stop()
    pub.close()
    store = open_store(store_url)
    assert store.count() == 200 * 2
    letters = store.dead_letters(100)
    assert len(letters) == len(bad)
    for expected in bad:
        assert any(expected in d.reason for d in letters), expected
    assert any(d.payload == b"{garbage" for d in letters)
    assert future.seq == 1
    listing = subprocess.run([sys.executable, "-m", "jcm.cli", "deadletters", "--store", store_url, "--limit", "100"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "has no device 'm9'" in listing and "payload: {garbage" in listing
    assert f"{len(bad)} dead letter(s) shown" in listing


def _collector_process(tmp_path, broker, store_url, sites_dir):
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(yaml.safe_dump({"broker": {"url": broker.url}, "store": store_url, "sites_dir": str(sites_dir),
                                   "client_id": "jcm-collector-test", "batch_size": 500, "batch_timeout": 0.1}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "jcm.cli", "collector", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing(tmp_path, mosquitto, sites_dir):
    n = 10_000
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    store = open_store(store_url)
    proc = _collector_process(tmp_path, mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    # once a probe lands, the collector's persistent session exists at the broker
    assert wait_until(lambda: pub.send([payload(0)]) or store.count() == 2, 30)
    sender = threading.Thread(target=pub.send, args=([payload(i) for i in range(1, n)],))
    sender.start()
    assert wait_until(lambda: store.count() >= 2 * 2000, 60), store.count()
    proc.send_signal(signal.SIGKILL)  # mid-stream: messages are in flight and unacknowledged
    proc.wait()
    killed_at = store.count()
    sender.join(120)  # the broker queues the rest in the collector's persistent session
    assert killed_at < 2 * n
    proc = _collector_process(tmp_path, mosquitto, store_url, sites_dir)
    try:
        assert wait_until(lambda: store.count() >= 2 * n, 120), store.count()
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        pub.close()
    assert store.count() == 2 * n  # every reading once: nothing lost, redeliveries overwrote themselves
    seqs = {r[0] for r in store._query("SELECT DISTINCT seq FROM readings", ())}
    assert seqs == set(range(1, n + 1))


@pytest.mark.slow
def test_store_going_away_and_back_loses_nothing(tmp_path, mosquitto, sites_dir, influxdb):
    n = 3000
    store_url = f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm&timeout=2"
    c = Collector(config(mosquitto, store_url, sites_dir))
    c.start()
    pub = Publisher(mosquitto)
    sender = threading.Thread(target=pub.send, args=([payload(i) for i in range(n)], 1500.0))
    sender.start()
    assert wait_until(lambda: c.stored >= 500, 30)
    influxdb.stop()
    stored_while_down = c.stored
    time.sleep(3)
    assert c.stored - stored_while_down <= 500  # at most the batch in flight when it went down
    influxdb.start()
    sender.join(120)
    assert wait_until(lambda: c.stored >= n, 120), c.stored
    c.stop()
    pub.close()
    reader = open_store(store_url)
    counts = reader.query('SELECT COUNT("energy_import") FROM "reading"')
    assert counts[0]["values"][0][1] == n


@pytest.mark.slow
def test_two_collectors_share_one_stream(tmp_path, mosquitto, sites_dir):
    n = 4000
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    collectors = [Collector(config(mosquitto, store_url, sites_dir, share_group="collectors", client_id=f"jcm-collector-{i}"))
                  for i in (1, 2)]
    for c in collectors:
        c.start()
    time.sleep(1)  # both subscribed before the stream starts
    pub = Publisher(mosquitto)
    pub.send([payload(i) for i in range(n)])
    assert wait_until(lambda: sum(c.stored for c in collectors) >= n, 60)
    time.sleep(0.5)
    for c in collectors:
        c.stop()
    pub.close()
    shares = [c.stored for c in collectors]
    assert sum(shares) == n  # no message went to both
    assert min(shares) > n // 10, shares  # and both did part of the work
    assert open_store(store_url).count() == 2 * n


def test_collector_is_back_within_2_s_of_the_broker_returning(tmp_path, sites_dir):
    """Stopped for 3 s, restarted on the same port: both of the collector's connections (the
    readings' and the store acknowledgements') must not have backed off past 2 s."""
    from jcm.broker import Mosquitto

    broker = Mosquitto(tmp_path / "mq").start()
    c = Collector(config(broker, f"sqlite:///{tmp_path}/jcm.db", sites_dir))
    connections = [c.connection, c.acknowledgements.connection]
    try:
        c.start()
        assert wait_until(lambda: all(x.connected.is_set() for x in connections), 10)
        broker.stop()
        assert wait_until(lambda: not any(x.connected.is_set() for x in connections), 5)
        time.sleep(3)  # doubling from 1 s, the next attempt would be at 7 s
        broker = Mosquitto(tmp_path / "mq", port=broker.port).start()  # returns once the port listens
        back = time.monotonic()
        assert wait_until(lambda: all(x.connected.is_set() for x in connections), 10)
        assert time.monotonic() - back <= 2.0
    finally:
        c.stop()
        broker.stop()


def test_a_checker_that_dies_stops_the_collector_and_is_named(tmp_path, mosquitto, sites_dir, monkeypatch, caplog):
    """The checker thread's death is named as the checker's (it was logged as the worker's), and
    stops the collector as the worker's does: nothing is acknowledged that was not stored."""
    c = Collector(config(mosquitto, f"sqlite:///{tmp_path}/jcm.db", sites_dir))

    def broken(batch):
        raise RuntimeError("checker broke")

    monkeypatch.setattr(c, "_check", broken)
    c.start()
    pub = Publisher(mosquitto)
    try:
        # sent again until it arrives: the broker drops what is published before the subscription
        assert wait_until(lambda: pub.send([payload(0)]) or c.done.is_set(), 20)
        assert isinstance(c.failure, RuntimeError)
        assert "the collector's checker died (thread collector-check)" in caplog.text
        assert c.stored == 0
    finally:
        c.stop()
        pub.close()


def test_a_collector_process_keeps_its_start_up_objects_out_of_the_cyclic_collector():
    """``jcm collector`` settles its process (``settle_process``) before it starts: it freezes what start-up made (the
    cyclic garbage collector walked those ~90,000 objects again at each full collection,
    which the stream of readings brings about every ~15,000 messages (~3 us a message);
    and the readings of the batches in flight no longer start young collections), and it shortens the switch interval."""
    code = """
import gc, sys, threading, types
import collector.service, jcm.cli

class Started:
    def __init__(self, config):
        self.done, self.failure, self.stored, self.dead = threading.Event(), None, 0, 0
    def start(self):
        print(gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()[0], sys.getswitchinterval())
        self.done.set()
    def stop(self):
        pass

collector.service.Collector = Started
jcm.cli._collector_config = lambda args: None
jcm.cli.cmd_collector(types.SimpleNamespace(duration=5))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    frozen, walked, young, switch = out.stdout.split()
    frozen, walked, young = int(frozen), int(walked), int(young)
    # and the writer gets the GIL back soon after each SQLite call (settle_process)
    assert float(switch) == SWITCH_INTERVAL < sys.getswitchinterval(), switch
    assert frozen > 10_000 and walked < frozen / 10, (frozen, walked)
    assert young >= 10_000  # the readings in flight do not start a collection of the youngest generation


def test_a_dead_letter_is_acknowledged_only_when_the_store_keeps_it_whole(tmp_path, mosquitto, sites_dir):
    """A gateway deletes what an acknowledgement claims. A refused reading over the site's dead-letter
    budget is only counted, and one over KEPT_PAYLOAD bytes is kept cut (a signed reading of a big
    inverter is more): the store holds neither, so neither may be claimed (the gateway sends them again
    after its confirm timeout; once the cause is fixed, a key or device configured, they are stored)."""
    epoch = "00112233445566aa"

    def reading(seq, device="m1", channels=2):
        r = Reading(site="test-site", gateway="gw-test", device=device, ts=T0 + dt.timedelta(seconds=seq),
                    values={"energy_import": 1000.0 + seq, "active_power": 5.0} if device == "m1" else
                    {f"c{i}": float(i) for i in range(channels)}, units={}, seq=seq, epoch=epoch)
        return topics.reading("test-site", "gw-test", device), r.to_json().encode()

    messages = [reading(s) for s in (1, 2, 3)] + [reading(4, "m9", channels=100)]  # refused, cut when kept
    messages += [reading(s, "m9") for s in (5, 6, 7, 8)] + [reading(9)]  # 5 kept whole; 6-8 over the budget
    assert len(messages[3][1]) > 1024 >= len(messages[4][1])
    c = Collector(config(mosquitto, f"sqlite:///{tmp_path}/jcm.db", sites_dir, dead_letters_per_window=2))
    c.start()
    pub = Publisher(mosquitto)
    try:
        with acknowledgements(mosquitto) as seen:
            running(c, pub)
            dead = c.dead
            pub.send(messages)
            assert wait_until(lambda: c.dead - dead == 5 and seen and seen[-1]["ranges"][-1][1] >= 9, 20), (c.dead,
                                                                                                           seen)
            time.sleep(0.5)  # a later acknowledgement, if any, has arrived
        assert claimed(seen[-1]) == {1, 2, 3, 5, 9}
    finally:
        c.stop()
        pub.close()


class AckWatcher:
    """The acknowledgements published for ``gateway`` of ``site`` (``+`` for any), parsed, as they arrive
    (retained ones first): ``seen`` in order, ``last`` the latest on each collector's topic, ``sizes`` their
    lengths [bytes]. Subscribed once made; its client also publishes statuses and acknowledgements by hand."""

    def __init__(self, broker, site="test-site", gateway="gw-test"):
        self.seen, self.last, self.sizes = [], {}, []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topics.acks_of(site, gateway), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the acknowledgement watcher never subscribed"

    def _on_message(self, client, userdata, msg):
        self.sizes.append(len(msg.payload))
        ack = json.loads(msg.payload)
        self.seen.append(ack)
        self.last[msg.topic.rsplit("/", 1)[1]] = ack

    def publish(self, topic: str, body: dict, retain: bool = True) -> None:
        """``body`` published at QoS 1 (retained unless told), once the broker has it."""
        self.client.publish(topic, json.dumps(body), qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def acknowledgements(broker, site="test-site", gateway="gw-test"):
    """The acknowledgements published for ``gateway`` (a retained one first), parsed, as they arrive."""
    watcher = AckWatcher(broker, site, gateway)
    try:
        yield watcher.seen
    finally:
        watcher.close()


def claimed(ack: dict) -> set[int]:
    """The seqs an acknowledgement's ranges claim."""
    return {s for a, b in ack["ranges"] for s in range(a, b + 1)}
