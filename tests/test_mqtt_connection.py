"""Every MQTT client connects through contract.mqtt_connection: the live view and
`jcm watch` against a real Mosquitto with a password file, an ACL and a TLS listener
that requires a client certificate; refusals and TLS failures are logged with the
reason; mqtts:// never becomes plaintext; credentials in a URL are an error."""

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from contract import topics
from contract.config import ConfigError, load_site
from contract.config.site import Mqtt
from contract.mqtt_connection import RECV_CHUNK, BrokerConnection
from contract.message import Reading
from gateway.service import Gateway
from jcm.broker import Mosquitto, free_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, fuzz_examples, tcp_device, wait_until, write_site

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
ACL = """\
user liveview
topic read jcm/v1/#

pattern write jcm/v1/%u/#
"""


@pytest.fixture
def secured(tmp_path, pki):
    """Mosquitto with passwords and an ACL on its loopback listener and on a TLS listener
    that also requires a client certificate; yields (broker, tls_port)."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "liveview", "lv-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), SITE.site, "site-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "no-reader", "nr-pw"], check=True)  # no ACL entry
    passwd.chmod(0o600)
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "mq", extra_config=(
        f"password_file {passwd}\nacl_file {acl}\nallow_anonymous false\n"
        f"listener {tls_port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
        "require_certificate true\n")).start()
    yield broker, tls_port
    broker.stop()


def tls_settings(pki, tls_port, **fields):
    return Mqtt(url=f"mqtts://localhost:{tls_port}", username_env="JCM_TEST_LV_USER",
                password_env="JCM_TEST_LV_PASS", ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client.crt"),
                key_file=str(pki / "client.key"), **fields)


@pytest.fixture
def site_publisher(secured):
    """The site's own gateway login on the plaintext loopback listener."""
    broker, _ = secured
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.username_pw_set(SITE.site, "site-pw")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    yield pub
    pub.disconnect()
    pub.loop_stop()


def publish(pub, seq, power):
    r = Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter", ts=dt.datetime.now(dt.UTC),
                values={"active_power": power, "energy_export": 1000.0 + seq, "energy_import": 5.0}, seq=seq)
    info = pub.publish(topics.reading(r.site, r.gateway, r.device), r.to_json(), qos=1)
    info.wait_for_publish(5)
    assert info.is_published()


def poc_meter(port):
    body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sites/mn-solar", timeout=10))
    return next(d for d in body["devices"] if d["id"] == "poc-meter")


def test_live_view_logs_in_over_tls_with_certificate_and_password(tmp_path, pki, secured, site_publisher,
                                                                  monkeypatch):
    _, tls_port = secured
    monkeypatch.setenv("JCM_TEST_LV_USER", "liveview")
    monkeypatch.setenv("JCM_TEST_LV_PASS", "lv-pw")
    view = LiveView([SITE], tls_settings(pki, tls_port), SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    try:
        assert view.broker.connected.wait(15)
        seq = 0

        def shows_the_reading():
            nonlocal seq
            seq += 1
            publish(site_publisher, seq, -321.0)
            return poc_meter(port)["values"].get("active_power") == -321.0

        assert wait_until(shows_the_reading)
        assert poc_meter(port)["state"] == "online"
    finally:
        dash.stop()


@contextlib.contextmanager
def serving(view):
    """The live view's server (and so its MQTT connection) running; yields its port."""
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    try:
        yield port
    finally:
        dash.stop()


def test_live_view_logs_a_wrong_password_with_the_reason(tmp_path, pki, secured, monkeypatch, caplog):
    _, tls_port = secured
    monkeypatch.setenv("JCM_TEST_LV_USER", "liveview")
    monkeypatch.setenv("JCM_TEST_LV_PASS", "wrong")
    view = LiveView([SITE], tls_settings(pki, tls_port), SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    with caplog.at_level(logging.ERROR), serving(view):
        assert wait_until(lambda: "refused the connection" in caplog.text, 10), caplog.text
    assert "Not authorized" in caplog.text and "$JCM_TEST_LV_USER" in caplog.text


def test_live_view_without_credentials_says_so(tmp_path, secured, caplog):
    broker, _ = secured
    view = LiveView([SITE], broker.url, SqliteStore(tmp_path / "jcm.db"), str(tmp_path / "alarms.sqlite"))
    with caplog.at_level(logging.ERROR), serving(view):
        assert wait_until(lambda: "refused the connection" in caplog.text, 10), caplog.text
    assert "no credentials given" in caplog.text


def test_live_view_says_when_the_acl_hides_every_topic(tmp_path, secured, site_publisher, monkeypatch, caplog):
    """Mosquitto grants a subscription its ACL forbids, then delivers nothing: the log says so."""
    broker, _ = secured
    site_publisher.publish(topics.gateway_status(SITE.site, SITE.gateway),
                           json.dumps({"site": SITE.site, "gateway": SITE.gateway, "state": "online"}),
                           qos=1, retain=True).wait_for_publish(5)
    views = {}
    for user, password in (("no-reader", "nr-pw"), ("liveview", "lv-pw")):
        var = f"JCM_TEST_{user.upper().replace('-', '_')}"
        monkeypatch.setenv(f"{var}_USER", user)
        monkeypatch.setenv(f"{var}_PASS", password)
        views[user] = LiveView([SITE], Mqtt(url=broker.url, username_env=f"{var}_USER", password_env=f"{var}_PASS"),
                               SqliteStore(tmp_path / f"{user}.db"), str(tmp_path / f"{user}-alarms.sqlite"))
        views[user].silence_warning_s = 1.0
    with caplog.at_level(logging.WARNING, logger="liveview.app"), serving(views["no-reader"]), \
            serving(views["liveview"]) as port:
        assert wait_until(lambda: "ACL does not let" in caplog.text, 10), caplog.text
        assert wait_until(lambda: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sites/mn-solar"))
                    ["gateway_state"] == "online", 10)
        time.sleep(1.5)
    warnings = [r.getMessage() for r in caplog.records if "ACL does not let" in r.getMessage()]
    assert len(warnings) == 1 and "$JCM_TEST_NO_READER_USER" in warnings[0]


def test_mqtts_never_falls_back_to_plaintext(tmp_path, mosquitto, caplog):
    """mqtts:// aimed at a plaintext listener fails the TLS handshake, logged; nothing is read."""
    view = LiveView([SITE], f"mqtts://localhost:{mosquitto.port}", SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        with caplog.at_level(logging.ERROR), serving(view) as port:
            for seq in range(1, 15):
                publish(pub, seq, -5.0)
                time.sleep(0.1)
            assert poc_meter(port)["values"] == {}
            assert wait_until(lambda: "cannot connect" in caplog.text, 10), caplog.text
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert "SSL" in caplog.text or "Connection reset" in caplog.text
    assert LiveView([SITE], "mqtts://broker.example", SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite")).broker.url == "mqtts://broker.example:8883"


def test_credentials_in_a_url_are_an_error_naming_the_env_settings(tmp_path):
    with pytest.raises(ConfigError, match="broker.url: the URL holds a password.*password_env"):
        LiveView([SITE], "mqtt://liveview:pw@127.0.0.1:1883", SqliteStore(tmp_path / "jcm.db"),
                 str(tmp_path / "alarms.sqlite"))
    path = write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", free_port())],
                      mqtt={"url": "mqtts://gw:secret@broker.example"})
    with pytest.raises(ConfigError, match="mqtt.url: .*holds a password"):
        Gateway(load_site(path), outbox_path=str(tmp_path / "outbox.sqlite"))


def test_tls_files_with_a_plaintext_url_are_an_error(tmp_path, pki):
    with pytest.raises(ConfigError, match="broker.ca_file: ca_file is set but the URL is mqtt://"):
        # settings that skipped validation (built in code) are checked when they connect
        LiveView([SITE], Mqtt.model_construct(url="mqtt://127.0.0.1:1883", ca_file=str(pki / "ca.crt")),
                 SqliteStore(tmp_path / "jcm.db"), str(tmp_path / "alarms.sqlite"))


def jcm(*args, **env):
    return subprocess.Popen([sys.executable, "-m", "jcm.cli", *args], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def tls_options(pki, tls_port):
    return ["--broker", f"mqtts://localhost:{tls_port}", "--username-env", "JCM_TEST_LV_USER",
            "--password-env", "JCM_TEST_LV_PASS", "--ca-file", str(pki / "ca.crt"),
            "--cert-file", str(pki / "client.crt"), "--key-file", str(pki / "client.key")]


def test_watch_reads_over_tls_with_certificate_and_password(pki, secured, site_publisher):
    _, tls_port = secured
    proc = jcm("watch", *tls_options(pki, tls_port), "--topic", "jcm/v1/+/+/+/reading", "--count", "1",
               "--duration", "30", JCM_TEST_LV_USER="liveview", JCM_TEST_LV_PASS="lv-pw")
    seq = 0
    while proc.poll() is None and seq < 200:  # until its subscription is in place and it has one
        seq += 1
        publish(site_publisher, seq, -99.5)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "mn-solar/poc-meter #" in out and "active_power=-99.5 " in out


def test_watch_with_a_wrong_password_exits_2_with_the_reason(pki, secured):
    _, tls_port = secured
    proc = jcm("watch", *tls_options(pki, tls_port), "--count", "1", "--duration", "30",
               JCM_TEST_LV_USER="liveview", JCM_TEST_LV_PASS="wrong")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    assert "refused the connection: Not authorized" in err


def test_watch_refuses_credentials_in_the_url():
    proc = jcm("watch", "--broker", "mqtt://liveview:lv-pw@127.0.0.1:1", "--count", "1")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--broker" in err and "--username-env" in err
    assert "Traceback" not in err


def test_watch_against_an_unreachable_broker_says_so_and_exits_non_zero():
    """Before: nothing printed and exit 0 after --duration."""
    port = free_port()  # nothing listens there
    for args in (["--duration", "3"], []):  # with a duration, and without (gives up after 10 s)
        proc = jcm("watch", "--broker", f"mqtt://127.0.0.1:{port}", *args)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, err
        assert f"could not connect to mqtt://127.0.0.1:{port}" in err and "Connection refused" in err


def _burst(settings: Mqtt, pub, topic: str, sizes: list[int], manual_ack: bool = False, client_id: str = "burst"):
    """Connect a BrokerConnection (persistent, MQTT 5) to ``topic``, publish one message of each
    size at once, and return (the connection, the payloads it got, when the last arrived);
    ``connection.mids`` are the messages' ids, in the order of the payloads."""
    got: list[bytes] = []
    last = [0.0]
    mids: list[int] = []

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        mids.append(msg.mid)
        last[0] = time.monotonic()

    conn = BrokerConnection(settings, client_id, "test", mqtt5=True, persistent=True, session_expiry=600,
                            manual_ack=manual_ack, subscriptions=[(topic, 1)])
    conn.client.on_message = on_message
    conn.mids = mids
    subscribed = threading.Event()
    conn.client.on_subscribe = lambda *a: (conn._on_subscribe(*a), subscribed.set())
    conn.start()
    assert subscribed.wait(10)
    for i, size in enumerate(sizes):
        pub.publish(topic, (f"{i:06d}" + "x" * size)[:max(size, 6)].encode(), qos=1)
    return conn, got, last


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_burst_read_in_chunks_arrives_whole_in_order_without_waiting_for_more(tls, tmp_path, pki, secured,
                                                                                  site_publisher, monkeypatch):
    """The client reads the socket in chunks of many packets: a packet split across chunks,
    one larger than a chunk, and the packets left in the last chunk once the socket has no
    more to tell ``select`` all arrive byte for byte, in order, at once."""
    broker, tls_port = secured
    monkeypatch.setenv("JCM_TEST_LV_USER", "liveview")
    monkeypatch.setenv("JCM_TEST_LV_PASS", "lv-pw")
    settings = tls_settings(pki, tls_port) if tls else Mqtt(
        url=f"mqtt://127.0.0.1:{broker.port}", username_env="JCM_TEST_LV_USER", password_env="JCM_TEST_LV_PASS")
    sizes = [7, 700, RECV_CHUNK - 5, 3, RECV_CHUNK * 3 + 17, 127, 128, 16383, 16384] + [300] * 2000
    topic = f"jcm/v1/{SITE.site}/burst"
    conn, got, last = _burst(settings, site_publisher, topic, sizes)
    try:
        wait_until(lambda: len(got) == len(sizes), timeout=30)
        sent_at = time.monotonic()
        assert [len(p) for p in got] == [max(s, 6) for s in sizes]
        assert [int(p[:6]) for p in got] == list(range(len(sizes)))
        time.sleep(0.5)
        assert len(got) == len(sizes)
        assert last[0] <= sent_at  # nothing was held back until more came
    finally:
        conn.stop()


def test_acks_sent_together_acknowledge_exactly_those_messages(tmp_path, mosquitto):
    """``ack_all`` sends the PUBACKs of many messages as one write: after a reconnect the broker
    redelivers exactly the messages left unacknowledged, no more, no fewer."""
    settings = Mqtt(url=f"mqtt://127.0.0.1:{mosquitto.port}")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        conn, got, _ = _burst(settings, pub, "t/acks", [40] * 300, manual_ack=True, client_id="acker")
        wait_until(lambda: len(got) == 300, timeout=20)
        # the messages and their mids, in the order paho delivered them
        acked = {int(p[:6]) for p in got if int(p[:6]) % 3}
        conn.client.ack_all([m for m, p in zip(conn.mids, got) if int(p[:6]) in acked])
        time.sleep(0.5)
        conn.stop()
        again, got2, _ = _burst(settings, pub, "t/acks", [], manual_ack=True, client_id="acker")
        try:
            wait_until(lambda: len(got2) >= 100, timeout=20)
            time.sleep(0.5)
            assert sorted(int(p[:6]) for p in got2) == [i for i in range(300) if i % 3 == 0]
        finally:
            again.stop()
    finally:
        pub.disconnect()
        pub.loop_stop()


def _flood(port: int, until: float, size: int) -> None:
    """Publish QoS 0 messages of ``size`` bytes to topic ``flood`` as fast as the broker takes
    them (whole buffers of packets, one system call each), until ``until`` (monotonic)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07flooder")  # CONNECT, clean, 60 s
        s.recv(4)
        body = b"\x00\x05flood" + b"x" * size
        packet = bytes([0x30, len(body) & 127 | 128, len(body) >> 7]) + body  # PUBLISH, QoS 0
        burst = packet * ((4 << 20) // len(packet))
        while time.monotonic() < until:
            s.sendall(burst)


def test_writes_wait_no_longer_than_a_chunk_while_a_sender_outpaces_the_reader(mosquitto):
    """A sender faster than the client reads keeps its socket full. Reading in chunks must
    still leave paho's thread to write between chunks: what the client publishes (and the
    PUBACKs, the pings) goes out within a chunk's reading, not once the sender pauses
    (before: a chunk seldom ends on a packet's end and the client went on reading, each
    write waiting about a second here, and longer for longer packets)."""
    conn = BrokerConnection(Mqtt(url=f"mqtt://127.0.0.1:{mosquitto.port}"), "reader", "test",
                            subscriptions=[("flood", 0)])
    got = [0]
    conn.client.on_message = lambda *a: got.__setitem__(0, got[0] + 1)
    subscribed = threading.Event()
    conn.client.on_subscribe = lambda *a: subscribed.set()
    conn.start()
    try:
        assert subscribed.wait(10)
        flood = threading.Thread(target=_flood, args=(mosquitto.port, time.monotonic() + 3.0, 291), daemon=True)
        flood.start()
        assert wait_until(lambda: got[0] > 10_000, timeout=10)
        waits = []
        while flood.is_alive() and len(waits) < 200:
            t = time.monotonic()
            conn.client.publish("probe", b"x").wait_for_publish(5)
            waits.append(time.monotonic() - t)
        flood.join()
        assert max(waits) < 0.25, (max(waits), len(waits), got[0])
    finally:
        conn.stop()


def test_clients_that_lost_the_broker_together_do_not_come_back_in_the_same_instant():
    """Eight gateways' connections wait for a broker that is down; when its port opens, their
    attempts arrive spread over the back-off's range, not in one burst (paho's back-off has
    no jitter: before, all eight came within a few milliseconds)."""
    port = free_port()
    connections = [BrokerConnection(f"mqtt://127.0.0.1:{port}", f"gw{i}", "test") for i in range(8)]
    for c in connections:
        c.start()
    arrived: list[float] = []
    try:
        time.sleep(1.0)  # attempts refused
        with socket.create_server(("127.0.0.1", port), backlog=16) as server:
            server.settimeout(3.0)
            accepted = []
            with contextlib.suppress(TimeoutError):
                while len(arrived) < len(connections):
                    accepted.append(server.accept()[0])
                    arrived.append(time.monotonic())
            for conn in accepted:
                conn.close()
    finally:
        for c in connections:  # all told first: each stop waits up to a second for its thread
            c.client.disconnect()
        for c in connections:
            c.client.loop_stop()
    assert len(arrived) == len(connections)
    assert max(arrived) - min(arrived) > 0.2, [round(t - min(arrived), 3) for t in arrived]


def _received(client: mqtt.Client, got: list) -> None:
    """Have ``client`` put what it receives in ``got``, as plain values to compare."""
    def on_message(c, userdata, msg):
        props = msg.properties
        got.append((msg._topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid > 0 if msg.qos else msg.mid,
                    sorted(props.json().items()) if props is not None else None))
    client.on_message = on_message


@pytest.mark.fuzz
@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_messages_read_from_chunks_are_those_paho_reads(v5, mosquitto):
    """The client cuts the packets it has read ahead from its chunk and hands QoS 0 and 1
    PUBLISHes to ``on_message`` without paho's decoding: what it delivers (topic bytes,
    payload, QoS, retain, dup, id, MQTT 5 properties) is what paho's own client delivers
    of the same messages, for topics, payloads of every size across chunk edges, QoS 0,
    1 and 2, retained and live, with and without properties; and it acknowledges the QoS 1
    ones itself when not ``manual_ack`` (else the broker stops at its in-flight window)."""
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    reference = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reference", protocol=protocol)
    ours = BrokerConnection(f"mqtt://127.0.0.1:{mosquitto.port}", "ours", "test", mqtt5=v5)
    got_ref: list = []
    got_ours: list = []
    _received(reference, got_ref)
    _received(ours.client, got_ours)
    for n, retained in enumerate((b"", b"r" * 70_000, "é".encode())):  # waiting for the subscribers
        pub.publish(f"eq/retained/{n}", b"kept" + retained, qos=n % 3, retain=True).wait_for_publish(5)
    reference.connect("127.0.0.1", mosquitto.port)
    reference.loop_start()
    ours.start()
    try:
        assert ours.connected.wait(10)
        for c in (reference, ours.client):
            c.subscribe("eq/#", qos=2)
        assert wait_until(lambda: len(got_ref) == len(got_ours) == 3, timeout=10)
        assert sorted(got_ours) == sorted(got_ref) and all(m[3] for m in got_ours)  # retained, as delivered

        # Mosquitto refuses control characters and non-characters in its strings (it drops the publisher)
        text = st.characters(blacklist_categories=["Cs", "Cc", "Cn"])
        topic = st.text(st.characters(blacklist_categories=["Cs", "Cc", "Cn"], blacklist_characters="+#"), max_size=40)
        payload = st.one_of(st.binary(max_size=300), st.integers(0, 3 * RECV_CHUNK).map(lambda n: b"p" * n))
        props = st.none() | st.builds(
            lambda user, ctype, cdata: (user, ctype, cdata),
            st.lists(st.tuples(st.text(text, max_size=20), st.text(text, max_size=20)), max_size=3),
            st.none() | st.text(text, max_size=30), st.none() | st.binary(max_size=30))
        message = st.tuples(topic, payload, st.integers(0, 2), props)

        @settings(max_examples=fuzz_examples(6), deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])  # shrinking waits on the broker for each try
        @given(st.lists(message, min_size=1, max_size=200))
        def check(messages):
            got_ref.clear()
            got_ours.clear()
            for i, (t, body, qos, p) in enumerate(messages):
                properties = None
                if p is not None:
                    properties = Properties(PacketTypes.PUBLISH)
                    user, ctype, cdata = p
                    if user:
                        properties.UserProperty = user
                    if ctype is not None:
                        properties.ContentType = ctype
                    if cdata is not None:
                        properties.CorrelationData = cdata
                pub.publish(f"eq/{i}/{t}", body, qos=qos, properties=properties)
            wait_until(lambda: len(got_ref) >= len(messages) and len(got_ours) >= len(messages), timeout=30)
            time.sleep(0.2)
            assert len(got_ours) == len(got_ref) == len(messages), (len(got_ours), len(got_ref), len(messages))
            assert sorted(got_ours) == sorted(got_ref)

        check()
        got_ours.clear()
        for i in range(1500):  # beyond the broker's in-flight window (1,000): flows only if each is acknowledged
            pub.publish("eq/acked", b"%d" % i, qos=1)
        assert wait_until(lambda: len(got_ours) == 1500, timeout=10), len(got_ours)
    finally:
        ours.stop()
        for c in (reference, pub):
            c.disconnect()
            c.loop_stop()


def _publish_packet(header: int, topic: bytes, mid: int | None = None, properties: bytes | None = None,
                    payload: bytes = b"x") -> bytes:
    body = (len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if mid is not None else b"")
            + (properties or b"") + payload)
    assert len(body) < 128
    return bytes([header, len(body)]) + body


def _fed(client: mqtt.Client, packets: bytes) -> tuple[list, bytes, bool]:
    """What ``client`` makes of a broker that accepts its CONNECT and then sends ``packets``
    in one write: the messages it delivers, the bytes it sends back, whether it dropped the
    connection (a protocol error) rather than the broker."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        got: list = []
        client.on_message = lambda c, userdata, msg: got.append((msg._topic, msg.payload, msg.qos, msg.mid))
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=60)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(4096)  # CONNECT
            v5 = client._protocol == mqtt.MQTTv5
            conn.sendall((b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00") + packets)  # CONNACK, then them
            deadline = time.monotonic() + 3
            while client._sock is not None and time.monotonic() < deadline:
                client.loop(0.05)
            dropped = client._sock is None
            conn.settimeout(0.2)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    answer += chunk
    with contextlib.suppress(Exception):
        client._sock_close()
    return got, answer, dropped


@pytest.mark.parametrize("v5, packet", [
    (False, _publish_packet(0x36, b"t/q3", 7)),  # QoS 3: no such QoS
    (True, _publish_packet(0x36, b"t/q3", 7, b"\x00")),
    (True, _publish_packet(0x32, b"t/p", 7, b"\x02\xff\x00")),  # a property of no known id
    (True, _publish_packet(0x30, b"t/p", None, b"\x03\x01\x05\x00")),  # payload format indicator 5, truncated
], ids=["qos3-mqtt311", "qos3-mqtt5", "unknown-property", "bad-property"])
def test_a_malformed_publish_after_a_good_one_in_a_chunk_is_refused_as_paho_refuses_it(v5, packet):
    """A PUBLISH cut from the read-ahead chunk is judged as paho judges it: one paho calls
    malformed (a QoS of 3, MQTT 5 properties it cannot read) is not delivered nor acknowledged,
    and the connection is dropped as a protocol error, as paho's own client does."""
    good = _publish_packet(0x30, b"t/good", None, b"\x00" if v5 else None)
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    ours = BrokerConnection("mqtt://127.0.0.1:1", "ours", "test", mqtt5=v5).client
    reference = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ours", protocol=protocol)
    expected = _fed(reference, good + packet)
    assert expected == ([(b"t/good", b"x", 0, 0)], b"", True)  # the bad one refused: paho's word
    assert _fed(ours, good + packet) == expected
