"""The shipped Mosquitto config and ACL on a real Mosquitto, with certificates made by the
shipped script: who may publish what, oversized messages, TLS with client certificates."""

import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
import pytest
from pydantic import ValidationError

from collector.acknowledgement import Acknowledgements
from contract.config import CollectorConfig
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from jcm.broker import Mosquitto, free_port, wait_for_port
from tests.conftest import REPO, load_site, tcp_device, wait_until, write_site

COLLECTOR = "jcm-collector-1"  # the shipped collector's client id, and its user
USERS = {"mn-solar": "pw-mn", "vn-transformers": "pw-vn", COLLECTOR: "pw-col", "liveview": "pw-lv",
         "collector": "pw-legacy"}
MN_READING = "jcm/v1/mn-solar/gw-mn-01/inv-01/reading"
VN_READING = "jcm/v1/vn-transformers/gw-vn-01/tx-01/reading"
MN_BATCH = "jcm/v1/mn-solar/gw-mn-01/batch"
BODY = json.dumps({"v": 1, "note": "the broker does not look inside"}).encode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tls")
    res = subprocess.run([str(REPO / "deploy/tls/make-certs.sh"), "localhost", "mn-solar"], capture_output=True,
                         text=True, env={**os.environ, "JCM_TLS_DIR": str(out)})
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def broker(tmp_path, certs):
    """Mosquitto with the shipped mosquitto.conf and acl, paths and ports moved to the test's."""
    b = shipped_broker(tmp_path, certs, REPO / "deploy/mosquitto/acl")
    yield b
    b.stop()


def shipped_broker(tmp_path, certs, acl) -> Mosquitto:
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password], check=True)
    plain, tls = free_port(), free_port()
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    for shipped, here in (("/mosquitto/config/passwd", str(passwd)), ("/mosquitto/config/acl", str(acl)),
                          ("/mosquitto/data/", f"{tmp_path}/"), ("/mosquitto/certs/", f"{certs}/broker/"),
                          ("listener 1883\n", f"listener {plain} 127.0.0.1\n"), ("listener 8883\n", f"listener {tls} 127.0.0.1\n")):
        assert shipped in conf
        conf = conf.replace(shipped, here)
    b = Mosquitto(tmp_path / "mq", port=plain)
    b.conf.write_text(conf + ("user root\n" if os.geteuid() == 0 else ""))
    b.start()
    wait_for_port(tls)
    b.tls_port = tls
    return b


class Client:
    """A paho MQTT 5 client that records what it receives and the broker's answer to each publish."""

    def __init__(self, port: int, user: str | None, tls: dict | None = None, subscribe: str | None = None,
                 protocol=mqtt.MQTTv5, wait: float = 5.0, will: str | None = None):
        self.user = user
        self.connack: dict = {}
        self.received: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.result: list = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}",
                             protocol=protocol)
        if user:
            self.c.username_pw_set(user, USERS[user])
        if tls:
            self.c.tls_set(**tls)
        if will:
            self.c.will_set(will, BODY, qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.received.append(m)
        self.c.on_disconnect = lambda *args: self.disconnected.set()
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: (self.result.extend(r.value for r in rcs), self.subscribed.set())
        self.topic = subscribe
        try:
            self.c.connect("localhost", port)
        except (OSError, ssl.SSLError) as exc:
            self.result.append(exc)
            return
        self.c.loop_start()
        self.connected.wait(wait)
        if subscribe:
            self.subscribed.wait(wait)

    def _on_connect(self, c, u, flags, rc, p):
        self.result.append(rc.value)
        self.connack = p.json() if p else {}
        if rc.value == 0:
            if self.topic:
                c.subscribe(self.topic, qos=1)
            self.connected.set()

    def publish(self, topic: str, payload: bytes = BODY, retain: bool = False) -> int:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        return info.mid

    def topics(self) -> list[str]:
        return [m.topic for m in self.received]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def settle(observer: Client, last_topic: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while last_topic not in observer.topics() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything published before the last one has arrived by now


def test_a_site_writes_only_its_own_gateway_topics_and_readers_cannot_publish(broker):
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/#")
    mn, vn = Client(broker.port, "mn-solar"), Client(broker.port, "vn-transformers")
    collector, liveview = Client(broker.port, COLLECTOR), Client(broker.port, "liveview")
    forbidden = [
        (mn, VN_READING),  # another site's readings
        (mn, "jcm/v1/vn-transformers/gw-vn-01/batch"),  # another site's backlog
        (mn, "jcm/v1/mn-solar/gw-other/batch"),
        (collector, MN_BATCH),
        (mn, "jcm/v1/vn-transformers/gw-vn-01/status"),  # marking another site offline
        (mn, "jcm/v1/mn-solar/gw-other/inv-01/reading"),  # a gateway that is not the site's
        (mn, "jcm/v1/mn-solar/gw-mn-01/status/extra"),
        (collector, MN_READING),
        (collector, "jcm/v1/collector/gw/dev/reading"),  # what 'pattern write jcm/v1/%u/#' let it do
        (liveview, MN_READING),
        (liveview, "jcm/v1/liveview/gw/dev/reading"),
        (liveview, "jcm/v1/mn-solar/gw-mn-01/status"),
    ]
    refused = {(c.user, t): c.acks.get(c.publish(t)) for c, t in forbidden}
    allowed = [(mn, "jcm/v1/mn-solar/gw-mn-01/status"), (vn, VN_READING), (mn, MN_BATCH), (mn, MN_READING)]
    for c, t in allowed:
        c.publish(t)
    settle(observer, MN_READING)
    assert sorted(observer.topics()) == sorted(t for _, t in allowed)
    assert set(refused.values()) == {0x87}, refused  # MQTT 5 "not authorized" to the publisher
    for c in (observer, mn, vn, collector, liveview):
        c.close()


def test_the_collector_reads_readings_and_status_also_in_a_share_group(broker):
    """Status too: it carries the gateway's epoch and floor, which the acknowledgements follow,
    and its outbox drop counter, which explains gaps in its sequence. Batches of a backlog too."""
    plain = Client(broker.port, COLLECTOR, subscribe="jcm/v1/+/+/+/reading")
    shared = Client(broker.port, COLLECTOR, subscribe="$share/collectors/jcm/v1/+/+/+/reading")
    status = Client(broker.port, COLLECTOR, subscribe="jcm/v1/+/+/status")
    batches = Client(broker.port, COLLECTOR, subscribe="$share/collectors/jcm/v1/+/+/batch")
    mn = Client(broker.port, "mn-solar")
    mn.publish("jcm/v1/mn-solar/gw-mn-01/status")
    mn.publish(MN_READING)
    mn.publish(MN_BATCH)
    settle(plain, MN_READING)
    settle(shared, MN_READING)
    settle(status, "jcm/v1/mn-solar/gw-mn-01/status")
    settle(batches, MN_BATCH)
    assert plain.topics() == [MN_READING] and shared.topics() == [MN_READING]
    assert status.topics() == ["jcm/v1/mn-solar/gw-mn-01/status"]
    assert batches.topics() == [MN_BATCH]
    for c in (plain, shared, status, batches, mn):
        c.close()


def test_only_collectors_acknowledge_and_a_site_reads_only_its_own_acknowledgements(broker):
    mn_ack, vn_ack = "jcm/v1/mn-solar/gw-mn-01/ack/jcm-collector-1", "jcm/v1/vn-transformers/gw-vn-01/ack/jcm-collector-1"
    collector, mn, vn = Client(broker.port, COLLECTOR), Client(broker.port, "mn-solar"), Client(broker.port, "vn-transformers")
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/#")
    refused = {(c.user, t): c.acks.get(c.publish(t, retain=True)) for c, t in [
        (mn, "jcm/v1/mn-solar/gw-mn-01/ack/forged"),  # a site confirming its own readings
        (vn, mn_ack),
        (collector, "jcm/v1/mn-solar/gw-mn-01/status"),  # acknowledgement topics only
        (collector, "jcm/v1/mn-solar/gw-mn-01/ack/x/y"),
        (collector, "jcm/v1/mn-solar/gw-mn-01/ack/jcm-collector-2"),  # another collector's: a gateway may trust it
        (collector, "jcm/v1/mn-solar/gw-mn-01/ack/staging"),
    ]}
    assert set(refused.values()) == {0x87}, refused
    for topic in (vn_ack, mn_ack):
        assert collector.acks.get(collector.publish(topic, retain=True)) == 0
    settle(observer, mn_ack)
    mine = Client(broker.port, "mn-solar", subscribe="jcm/v1/mn-solar/gw-mn-01/ack/+")
    others = Client(broker.port, "mn-solar", subscribe="jcm/v1/vn-transformers/gw-vn-01/ack/+")
    everything = Client(broker.port, "mn-solar", subscribe="jcm/v1/+/+/ack/+")
    peer = Client(broker.port, COLLECTOR, subscribe="jcm/v1/+/+/ack/+")  # collectors read each other's
    settle(mine, mn_ack)
    settle(peer, mn_ack)
    assert mine.topics() == [mn_ack] and sorted(peer.topics()) == sorted([mn_ack, vn_ack])
    # Mosquitto grants the subscription and checks each message, retained ones too, against the ACL
    settle(everything, mn_ack)
    assert others.topics() == [] and everything.topics() == [mn_ack]
    assert sorted(observer.topics()) == sorted([mn_ack, vn_ack])
    for c in (collector, mn, vn, observer, mine, others, everything, peer):
        c.close()


def test_a_collector_user_cannot_speak_for_another_by_will_alias_or_mqtt_3(broker):
    """The other ways a message reaches a topic: a last will (sent by the broker when the client dies),
    a topic alias (MQTT 5) set up by a refused publish, an MQTT 3.1.1 session (not told it was refused).
    A collector's own acknowledgement topic by the same ways arrives: the probe would see a hole."""
    other, own = "jcm/v1/mn-solar/gw-mn-01/ack/jcm-collector-2", "jcm/v1/mn-solar/gw-mn-01/ack/jcm-collector-1"
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/+/+/ack/+")
    for topic in (other, own):
        dying = Client(broker.port, COLLECTOR, protocol=mqtt.MQTTv311, will=topic)
        dying.c.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
        dying.c.loop_stop()
        old = Client(broker.port, COLLECTOR, protocol=mqtt.MQTTv311)
        old.publish(topic, retain=True)
        old.close()
    aliased = Client(broker.port, COLLECTOR)
    for topic, alias in ((other, 1), ("", 1)):
        props = Properties(PacketTypes.PUBLISH)
        props.TopicAlias = alias
        aliased.c.publish(topic, BODY, qos=1, properties=props).wait_for_publish(5)
    aliased.close()
    settle(observer, own)
    late = Client(broker.port, "liveview", subscribe="jcm/v1/+/+/ack/+")  # what is retained
    settle(late, own)
    assert set(observer.topics()) == {own} and late.topics() == [own]
    for c in (observer, late):
        c.close()



def test_the_shared_collector_user_of_before_works_only_with_the_legacy_section_uncommented(broker, tmp_path, certs):
    """Shipped, the user every collector shared can do nothing (its password could publish any collector's
    acknowledgements); a deployment migrating uncomments the legacy section and runs as before."""
    ack = "jcm/v1/mn-solar/gw-mn-01/ack/anyone"
    legacy = Client(broker.port, "collector")
    assert legacy.acks.get(legacy.publish(ack)) == 0x87
    legacy.close()
    lines = (REPO / "deploy/mosquitto/acl").read_text().splitlines()
    start = lines.index("# user collector")
    uncommented = [line.removeprefix("# ") for line in lines[start:start + 5]]
    assert uncommented[0] == "user collector" and all(line.startswith("topic ") for line in uncommented[1:])
    acl = tmp_path / "legacy.acl"
    acl.write_text("\n".join(lines[:start] + uncommented + lines[start + 5:]) + "\n")
    (tmp_path / "legacy").mkdir()
    old = shipped_broker(tmp_path / "legacy", certs, acl)
    try:
        reader = Client(old.port, "collector", subscribe="jcm/v1/+/+/+/reading")
        legacy = Client(old.port, "collector")
        assert legacy.acks.get(legacy.publish(ack, retain=True)) in (0, 0x10)  # accepted (0x10: no subscriber yet)
        Client(old.port, "mn-solar").publish(MN_READING)
        settle(reader, MN_READING)
        assert reader.topics() == [MN_READING]
        for c in (reader, legacy):
            c.close()
    finally:
        old.stop()


def test_a_collector_logged_in_as_another_says_its_acknowledgements_are_refused(broker, monkeypatch, caplog):
    """The real collector publishing under a client id its user may not write: the broker refuses each
    acknowledgement (gateways send everything again), and the collector says why, once."""
    import datetime as dt

    from contract.message import Reading

    monkeypatch.setenv("COL_USER", COLLECTOR)
    monkeypatch.setenv("COL_PASSWORD", USERS[COLLECTOR])
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/+/+/ack/+")
    key = ("mn-solar", "gw-mn-01")
    readings = [Reading(site=key[0], gateway=key[1], device="inv-01", ts=dt.datetime.now(dt.UTC), values={}, seq=s,
                        epoch="00112233aabbccdd") for s in (1, 2)]
    for client_id, refused in (("jcm-collector-2", True), (COLLECTOR, False)):
        caplog.clear()
        acks = Acknowledgements(CollectorConfig(broker={"url": broker.url, "username_env": "COL_USER",
                                                        "password_env": "COL_PASSWORD"}, client_id=client_id), [key])
        try:
            acks.start()
            assert wait_until(acks.connection.connected.is_set, 10)
            with caplog.at_level(logging.ERROR, logger="collector.acknowledgement"):
                acks.kept(readings, [])
                acks.kept(readings, [])
                topic = f"jcm/v1/mn-solar/gw-mn-01/ack/{client_id}"
                settle(observer, topic, timeout=1 if refused else 5)
        finally:
            acks.stop()
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert (topic in observer.topics()) is not refused
        assert len(said) == refused and all(f"writes jcm/v1/+/+/ack/{client_id}" in m for m in said), said
    observer.close()


def test_a_sites_reading_topic_of_a_device_named_ack_is_no_acknowledgement(broker, tmp_path):
    """A site may write ``.../<device>/reading`` for any device, so ``.../ack/reading`` too: the one
    acknowledgement topic it can write (retained, even). Neither its gateway nor a collector takes it."""
    forged = "jcm/v1/mn-solar/gw-mn-01/ack/reading"
    gateway_view = Client(broker.port, "mn-solar", subscribe="jcm/v1/mn-solar/gw-mn-01/ack/+")
    collector_view = Client(broker.port, COLLECTOR, subscribe="jcm/v1/+/+/ack/+")
    outbox = Outbox(tmp_path / "outbox.sqlite", 100, durable=False)
    try:
        for _ in range(5):
            outbox.put("jcm/v1/mn-solar/gw-mn-01/m0/reading", str)
        outbox.flush()
        body = json.dumps({"schema": 1, "epoch": outbox.epoch, "ranges": [[1, 5]]}).encode()
        mn = Client(broker.port, "mn-solar")
        assert mn.acks.get(mn.publish(forged, body, retain=True)) == 0  # the ACL lets it through
        for view in (gateway_view, collector_view):
            settle(view, forged)
            assert view.topics() == [forged]
        site = load_site(write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", 1)], name="mn-solar",
                                    gateway="gw-mn-01"))
        pub = Publisher(site, outbox, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
        pub._live_cursor = 5
        msg = gateway_view.received[0]
        pub._store_acks.put((msg._topic, msg.payload, bool(msg.retain)))
        pub._take_store_acks()
        assert [s for s, _, _ in outbox.after(0, 10)] == [1, 2, 3, 4, 5]  # nothing deleted
        acks = Acknowledgements(CollectorConfig(broker={"url": broker.url}), [("mn-solar", "gw-mn-01")])
        acks._on_message(None, None, collector_view.received[0])
        assert not acks._gateways[("mn-solar", "gw-mn-01")].epochs.get(outbox.epoch)  # nothing claimed
    finally:
        outbox.close()
        for c in (gateway_view, collector_view, mn):
            c.close()
    with pytest.raises(ValidationError, match="reading"):
        CollectorConfig(broker={"url": broker.url}, client_id="reading")  # its acknowledgements would be on that topic

def test_oversized_messages_are_refused(broker):
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/#")
    assert observer.connack["MaximumPacketSize"] == 65536  # MQTT 5 clients are told the limit
    mn = Client(broker.port, "mn-solar", protocol=mqtt.MQTTv311)  # a 3.1.1 client is not told: it is cut off
    mn.publish(MN_READING, b"y" * 60_000)
    settle(observer, MN_READING)
    big = mn.c.publish(MN_READING, b"z" * 70_000, qos=1)
    assert mn.disconnected.wait(5) and not big.is_published()
    time.sleep(0.3)
    assert [len(m.payload) for m in observer.received] == [60_000]
    observer.close()
    mn.c.loop_stop()


def test_a_retained_reading_arrives_marked_and_mqtt5_subscribers_can_decline_it(broker):
    """Mosquitto 2.0 cannot refuse the retain flag per topic: a site may leave a retained
    reading on its own topics. It arrives marked retained, and an MQTT 5 subscription with
    Retain Handling 2 never receives it (our gateways retain only their status)."""
    mn = Client(broker.port, "mn-solar")
    mn.publish(MN_READING, retain=True)
    late = Client(broker.port, COLLECTOR, subscribe="jcm/v1/+/+/+/reading")
    declining = Client(broker.port, COLLECTOR)
    declining.c.subscribe("jcm/v1/+/+/+/reading", options=mqtt.SubscribeOptions(qos=1, retainHandling=2))
    settle(late, MN_READING)
    assert [(m.topic, m.retain) for m in late.received] == [(MN_READING, True)]
    mn.publish(MN_READING)  # a live one reaches both, not marked
    settle(declining, MN_READING)
    assert [m.retain for m in declining.received] == [False]
    for c in (mn, late, declining):
        c.close()


def test_tls_listener_with_the_scripts_certificates(broker, certs):
    site = certs / "sites" / "mn-solar"
    good = {"ca_certs": str(site / "ca.crt"), "certfile": str(site / "client.crt"), "keyfile": str(site / "client.key")}
    observer = Client(broker.port, "liveview", subscribe="jcm/v1/#")
    mn = Client(broker.tls_port, "mn-solar", tls=good)
    assert mn.result == [0]
    mn.publish(MN_READING)
    settle(observer, MN_READING)
    assert observer.topics() == [MN_READING]
    mn.close()
    no_client_cert = Client(broker.tls_port, "mn-solar", tls={"ca_certs": str(site / "ca.crt")}, wait=1)
    plaintext = Client(broker.tls_port, "mn-solar", wait=1)
    assert 0 not in no_client_cert.result and not no_client_cert.connected.is_set()
    assert 0 not in plaintext.result and not plaintext.connected.is_set()
    for c in (observer, no_client_cert, plaintext):
        c.c.loop_stop()
