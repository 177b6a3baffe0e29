"""The batch form of the backlog (contract/batch.py): bounds of the form, the collector
taking each line as the same message sent alone, the gateway sending its backlog in
batches under the broker's packet limit and live readings alone, and the gateway back
within 2 s of the broker's return."""

import datetime as dt
import os
import random
import re
import signal
import time
import zlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings, strategies as st

from collector.service import Collector
from contract import batch, topics
from contract.acknowledgement import Ack
from contract.config import CollectorConfig
from contract.message import Reading
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from jcm.broker import Mosquitto
from store import open_store
from tests.conftest import fuzz_examples, load_site, tcp_device, wait_until, write_site

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
DEVICES = [f"m{i}" for i in range(4)]
BATCH_TOPIC = topics.batch("test-site", "gw-test")


def message(seq: int, epoch: str = "0123456789abcdef", device: str | None = None, noisy: bool = False) -> bytes:
    rnd = random.Random(seq)
    values = ({f"ch_{k}": rnd.random() * 1000 for k in range(12)} if noisy
              else {"energy_import": 1000.0 + seq, "active_power": 5.0})
    return Reading(site="test-site", gateway="gw-test", device=device or DEVICES[seq % 4],
                   ts=T0 + dt.timedelta(seconds=seq), values=values, units={"energy_import": "kWh"}, seq=seq,
                   epoch=epoch).to_json().encode()


# -- the form ---------------------------------------------------------------------------
def test_lines_keep_their_exact_bytes_and_a_signed_suffix():
    signed = message(2)[:-1] + b',"prev":"' + b"0" * 64 + b'","key":"k1","sig":"' + b"A" * 86 + b'=="}'
    lines = [message(1), signed, message(3)]
    payload, n = batch.pack(lines)
    assert n == 3 and batch.unpack(payload) == lines
    assert batch.unpack(zlib.compress(b"\n".join(lines) + b"\n")) == lines  # a final newline is allowed


@pytest.mark.parametrize("payload, why", [
    (zlib.compress(b"{}" * (3 * batch.MAX_UNPACKED_BYTES), 9), "unpacks to more than"),  # a zip bomb
    (zlib.compress(b"{}\n" * (batch.MAX_MESSAGES + 1)), "messages: at most"),
    (zlib.compress(b"{}")[:-2], "truncated"),
    (zlib.compress(b"{}") + b"x", "after its zlib stream"),
    (b'{"schema":1}', "not a zlib stream"),
    (b"\x00" * (batch.MAX_PACKED_BYTES + 1), "compressed"),
])
def test_a_batch_out_of_bounds_is_refused_with_a_reason(payload, why):
    with pytest.raises(ValueError, match=why):
        batch.unpack(payload)


def test_a_message_that_cannot_be_a_line_goes_alone():
    assert batch.pack([b"x" * 10, b'{"a":\n1}'])[1] == 1  # a newline byte ends the batch before it
    assert batch.pack([b'{"a":\n1}'])[1] == 0
    assert batch.pack([b"x", b""])[1] == 1  # an empty line would read as the allowed final newline
    incompressible = random.Random(1).randbytes(batch.MAX_PACKED_BYTES)
    assert batch.pack([incompressible]) == (b"", 0)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(25), deadline=None)
@given(st.lists(st.binary(max_size=3000).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=300),
       st.integers(200, 20_000))
def test_pack_fits_its_limit_and_unpacks_to_its_prefix(messages, limit):
    payload, n = batch.pack(messages, limit)
    assert len(payload) <= limit
    assert batch.unpack(payload) == messages[:n] if n else payload == b""
    assert n == len(messages) or n < len(messages)  # a prefix, never more


# -- the collector ----------------------------------------------------------------------
def test_collector_stores_each_good_line_and_keeps_a_bad_one_and_a_bomb_aside(tmp_path, mosquitto):
    sites_dir = write_site(tmp_path, [tcp_device(d, "power_meter_3ph", 1502, unit_id=i + 1)
                                      for i, d in enumerate(DEVICES)]).parent
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = Collector(CollectorConfig(broker={"url": mosquitto.url}, store=store_url, sites_dir=str(sites_dir)))
    c.start()
    acks: list[Ack] = []
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="batch-pub")
    pub.on_message = lambda cl, u, m: acks.append(Ack.from_json(m.payload))
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.subscribe(topics.acks_of("test-site", "gw-test"), qos=1)
    try:
        assert wait_until(lambda: pub.publish(topics.reading("test-site", "gw-test", "m1"), message(1), qos=1)
                          and c.stored >= 1, 10)  # the collector's subscription is in place
        lines = [message(i) for i in range(1, 301)]
        lines[149] = message(150, device="m9")  # a device the site does not have
        lines[150] = b"{garbage"
        payload, n = batch.pack(lines)
        assert n == 300
        bomb = zlib.compress(b" " * (64 * 1024 * 1024), 9)
        for body in (payload, bomb):
            pub.publish(BATCH_TOPIC, body, qos=1).wait_for_publish(5)
        assert wait_until(lambda: c.dead >= 3 and acks and acks[-1].ranges == ((1, 150), (152, 300)), 20), \
            (c.dead, acks[-1:])
    finally:
        pub.loop_stop()
        c.stop()
    store = open_store(store_url)
    assert store.count() == 298 * 2  # two channels a reading
    letters = {d.payload: d.reason for d in store.dead_letters(10)}
    assert "has no device 'm9'" in letters[lines[149]] and "malformed reading" in letters[b"{garbage"]
    assert any("unpacks to more than" in why for why in letters.values())


def test_a_live_reading_is_not_stored_behind_the_backlog_queued_before_it(tmp_path, mosquitto):
    """The broker hands the collector its whole in-flight window of batches at once."""
    sites_dir = write_site(tmp_path, [tcp_device(d, "power_meter_3ph", 1502, unit_id=i + 1)
                                      for i, d in enumerate(DEVICES)]).parent
    c = Collector(CollectorConfig(broker={"url": mosquitto.url}, store=f"sqlite:///{tmp_path}/jcm.db",
                                  sites_dir=str(sites_dir)))
    stored_at: dict[int, float] = {}
    kept = c.acknowledgements.kept

    def timed(readings, rejected):
        stored_at.update((r.seq, time.monotonic()) for r in readings)
        kept(readings, rejected)
    c.acknowledgements.kept = timed
    c.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="batch-pub")
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    live = 100_000
    try:
        assert wait_until(lambda: pub.publish(topics.reading("test-site", "gw-test", "m1"), message(1), qos=1)
                          and 1 in stored_at, 10)
        backlog = range(2, 8002)
        # packed first, so that the backlog is queued before the live reading whatever the collector's pace
        payloads = [batch.pack([message(s) for s in backlog[i:i + 1000]])[0] for i in range(0, len(backlog), 1000)]
        infos = [pub.publish(BATCH_TOPIC, payload, qos=1) for payload in payloads]
        infos.append(pub.publish(topics.reading("test-site", "gw-test", "m0"), message(live), qos=1))
        for info in infos:
            info.wait_for_publish(5)
        assert wait_until(lambda: live in stored_at and all(s in stored_at for s in backlog), 60)
    finally:
        pub.loop_stop()
        c.stop()
    before_live = sum(1 for s in backlog if stored_at[s] <= stored_at[live])
    assert before_live <= len(backlog) / 2, before_live


# -- the gateway ------------------------------------------------------------------------
def gateway_site(tmp_path):
    site = load_site(write_site(tmp_path, [tcp_device(d, "power_meter_3ph", 1502, unit_id=i + 1)
                                            for i, d in enumerate(DEVICES)],
                                outbox={"path": str(tmp_path / "outbox.sqlite"), "confirmed_by": "broker",
                                        "backlog_rate": 100_000}))
    return site, Outbox(site.outbox.path, site.outbox.max_rows, durable=False)


def publishes_received(broker: Mosquitto, client_id: str, topic_end: str) -> list[str]:
    """The DUP flag (``d0``, ``d1``) of each PUBLISH the broker received from ``client_id`` on a topic ending
    ``topic_end``, in order, from its log (``log_type debug``): ``d1`` is paho sending again, after a
    reconnect, a message the broker may already have."""
    return re.findall(rf"Received PUBLISH from {re.escape(client_id)} \((d[01]), q\d, r\d, m\d+, '[^']*{topic_end}'",
                      (broker.workdir / "mosquitto.log").read_text(errors="replace"))


def connections(broker: Mosquitto, client_id: str) -> list[str]:
    """The broker's log lines on ``client_id`` connecting, taken over or gone (``log_type notice``)."""
    return [line for line in (broker.workdir / "mosquitto.log").read_text(errors="replace").splitlines()
            if client_id in line and re.search(r"onnect|closing", line) and "PUBLISH" not in line]


def test_backlog_goes_in_batches_under_the_packet_limit_and_live_readings_alone(tmp_path):
    broker = Mosquitto(tmp_path / "mq", extra_config="max_packet_size 65536\nlog_type debug\nlog_type notice\n").start()
    site, outbox = gateway_site(tmp_path)
    backlog = [message(seq, outbox.epoch, noisy=True) for seq in range(1, 3001)]
    for m in backlog:
        outbox.append(topics.reading("test-site", "gw-test", "m0"), lambda seq, m=m: m.decode())
    seen: list[tuple[str, bytes]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
    sub.on_message = lambda cl, u, m: seen.append((m.topic, m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("jcm/v1/test-site/gw-test/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    pub = Publisher(site, outbox, broker_url=broker.url)
    try:
        pub.start()
        # its status out, the gateway has taken the connection as its own: what is stored from now on is live
        assert wait_until(lambda: publishes_received(broker, "jcm-gw-test", "/status"), 10)
        live = [message(seq, outbox.epoch) for seq in range(3001, 3006)]
        for m in live:
            outbox.append(topics.reading("test-site", "gw-test", "m1"), lambda seq, m=m: m.decode())
            pub.notify()
        assert wait_until(lambda: outbox.depth == 0, 30), outbox.depth

        def delivered():  # the watcher's copies trail the gateway's PUBACKs (a loaded machine)
            return sum(len(batch.unpack(p)) if t == BATCH_TOPIC else 1 for t, p in list(seen))
        assert wait_until(lambda: delivered() >= len(backlog) + len(live), 10), delivered()
    finally:
        pub.stop(timeout=0)
        sub.loop_stop()
        outbox.close()
        broker.stop()
    batches = [p for t, p in seen if t == BATCH_TOPIC]
    assert len(batches) >= 2 and all(len(p) <= batch.MAX_PACKED_BYTES for p in batches)
    assert [line for p in batches for line in batch.unpack(p)] == backlog
    # live readings go alone, in order, each handed to paho once (one first send, d0, each): a second copy
    # can only be paho's own QoS 1 resend (d1) after a reconnect, which the collector takes once. One CI run
    # saw seq 3001 twice (not reproduced since in 350 runs): the broker's log now tells which it was
    readings = [p for t, p in seen if t.endswith("/reading")]
    sends = publishes_received(broker, "jcm-gw-test", "/reading")
    said = (sends, len(readings), connections(broker, "jcm-gw-test"))
    assert list(dict.fromkeys(readings)) == live, said
    assert sends.count("d0") == len(live) and len(readings) == len(sends), said
    wire = sum(len(p) for p in batches) / len(backlog)
    assert wire < 0.5 * sum(map(len, backlog)) / len(backlog)  # compressed, not merely packed


def test_a_live_reading_unacknowledged_at_a_reconnect_is_sent_again_by_paho_alone(tmp_path):
    """The broker dies holding a live reading it never acknowledged: paho sends it again after the
    reconnect (d1), and the gateway does not hand it over a second time (no other first send, no batch)."""
    debug = "log_type debug\n"
    broker = Mosquitto(tmp_path / "mq", extra_config=debug).start()
    site, outbox = gateway_site(tmp_path)
    pub = Publisher(site, outbox, broker_url=broker.url)
    try:
        pub.start()
        # its status out, the gateway has taken the connection as its own: what is stored from now on is live
        assert wait_until(lambda: publishes_received(broker, "jcm-gw-test", "/status"), 10)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # takes the reading into its socket and never answers
        stat = f"/proc/{broker.proc.pid}/stat"
        assert wait_until(lambda: Path(stat).read_text().rsplit(")", 1)[1].split()[0] == "T", 5)
        try:
            outbox.append(topics.reading("test-site", "gw-test", "m1"), lambda seq: message(seq, outbox.epoch).decode())
            pub.notify()
            assert wait_until(lambda: pub.published == 1, 5)
        finally:
            broker.proc.kill()  # a stopped process dies of SIGKILL too
            broker.proc.wait()
        broker = Mosquitto(tmp_path / "mq", port=broker.port, extra_config=debug).start()
        assert wait_until(lambda: outbox.depth == 0, 10), outbox.depth
    finally:
        pub.stop(timeout=0)
        outbox.close()
        broker.stop()
    assert publishes_received(broker, "jcm-gw-test", "/reading") == ["d1"]
    assert publishes_received(broker, "jcm-gw-test", "/batch") == []


def test_gateway_is_back_within_2_s_of_the_broker_returning(tmp_path):
    """Stopped for 3 s, restarted on the same port: paho's back-off must not have grown past 2 s."""
    broker = Mosquitto(tmp_path / "mq").start()
    site, outbox = gateway_site(tmp_path)
    pub = Publisher(site, outbox, broker_url=broker.url)
    try:
        pub.start()
        assert wait_until(lambda: pub.connection.connected.is_set(), 10)
        broker.stop()
        assert wait_until(lambda: not pub.connection.connected.is_set(), 5)
        time.sleep(3)  # doubling from 1 s, the next attempt would be at 7 s
        broker = Mosquitto(tmp_path / "mq", port=broker.port).start()  # returns once the port listens
        back = time.monotonic()
        assert wait_until(lambda: pub.connection.connected.is_set(), 10)
        assert time.monotonic() - back <= 2.0
    finally:
        pub.stop(timeout=0)
        outbox.close()
        broker.stop()
