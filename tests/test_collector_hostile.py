"""Hostile messages against a real Mosquitto and the real collector: one message never
stops ingestion. Each trigger is followed by valid readings; every valid reading is
stored, the trigger is a dead letter with its reason, and the worker keeps running.
Also: a store refusing what a message holds, oversized messages, text crafted to forge
log lines or terminal output, no site files, and the process's exit code."""

import contextlib
import datetime as dt
import json
import logging
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import yaml

from collector.service import Collector
from contract import topics
from contract.config import ConfigError
from contract.store import DeadLetter
from jcm.broker import free_port
from store import open_store
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, tcp_device, write_site
from tests.test_collector import (DEVICES, Publisher, _collector_process, config, payload, running,  # noqa: F401
                                  sites_dir, wait_until)

TOPIC = topics.reading("test-site", "gw-test", DEVICES[0])


@contextlib.contextmanager
def collecting(broker, store_url, sites, **extra):
    """A running collector and a publisher; yields (collector, publisher, probes stored)."""
    c = Collector(config(broker, store_url, sites, **extra))
    c.start()
    pub = Publisher(broker)
    try:
        yield c, pub, running(c, pub)
        assert c.failure is None and c.alive()
    finally:
        c.stop()
        pub.close()


def _with(**fields) -> bytes:
    return json.dumps({**json.loads(payload(0)[1]), **fields}).encode()


def _with_value(name: str, raw: str) -> bytes:
    """A valid reading with one more value, spliced in as raw JSON text."""
    return payload(0)[1].replace(b'"values":{', b'"values":{' + json.dumps(name).encode() + b":" + raw.encode() + b",")


#: trigger -> (topic, payload, a fragment of the dead letter's reason)
TRIGGERS = {
    "deep nesting": (TOPIC, b'{"schema":1,"values":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    "ts year 0001 +14:00": (TOPIC, _with(ts="0001-01-01T00:00:00+14:00"), "'ts'"),
    "400-digit integer value": (TOPIC, payload(0)[1].replace(b'"active_power":5.0', b'"active_power":' + b"9" * 400),
                                "active_power"),
    "30-digit seq": (TOPIC, _with(seq=10 ** 30), "'seq'"),
    "lone surrogate in a channel": (TOPIC, _with_value("\ud800", "1.0"), "channel"),
    "lone surrogate in device": (TOPIC, _with(device="\ud800"), "device"),
    "seq given twice": (TOPIC, payload(0)[1].replace(b'"seq":', b'"seq":999,"seq":'), "repeated"),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_one_hostile_message_does_not_stop_ingestion(trigger, tmp_path, mosquitto, sites_dir):
    topic, body, reason = TRIGGERS[trigger]
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    with collecting(mosquitto, store_url, sites_dir, batch_timeout=0.05) as (c, pub, probes):
        pub.send([(topic, body)] + [payload(i) for i in range(1, 201)])
        assert wait_until(lambda: c.stored - probes >= 200 and c.dead == 1, 20), (c.stored, c.dead)
    store = open_store(store_url)
    assert store.count() == 201 * 2
    (letter,) = store.dead_letters()
    assert reason in letter.reason
    assert letter.reason.isprintable()
    store.close()


def test_every_trigger_with_influxdb(tmp_path, mosquitto, sites_dir, influxdb):
    store_url = f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm&timeout=5"
    with collecting(mosquitto, store_url, sites_dir, batch_timeout=0.05) as (c, pub, probes):
        pub.send([(topic, body) for topic, body, _ in TRIGGERS.values()] + [payload(i) for i in range(1, 201)])
        assert wait_until(lambda: c.stored - probes >= 200 and c.dead == len(TRIGGERS), 20), (c.stored, c.dead)
    store = open_store(store_url)
    assert store.query('SELECT COUNT("energy_import") FROM "reading"')[0]["values"][0][1] == 201
    letters = store.dead_letters()
    assert len(letters) == len(TRIGGERS)
    for _, body, reason in TRIGGERS.values():
        assert any(reason in d.reason and d.payload == body[:1024] for d in letters), reason
    store.close()


def _sqlite_with(tmp_path, trigger_sql: str) -> str:
    """A SQLite store with a trigger: a real store refusing some writes for what they hold."""
    s = SqliteStore(tmp_path / "jcm.db")
    s._db.execute(trigger_sql)
    s.close()
    return f"sqlite:///{tmp_path}/jcm.db"


def test_a_reading_the_store_refuses_is_a_dead_letter_and_the_batch_goes_on(tmp_path, mosquitto, sites_dir):
    store_url = _sqlite_with(tmp_path, "CREATE TRIGGER no_666 BEFORE INSERT ON readings WHEN "
                                       f"instr(NEW.numbers, X'{struct.pack('<d', 666).hex()}') "
                                       "BEGIN SELECT RAISE(ABORT, 'the value 666 is not allowed'); END")
    topic, body = payload(100)
    poisoned = (topic, body.replace(b'"active_power":5.0', b'"active_power":666'))
    with collecting(mosquitto, store_url, sites_dir) as (c, pub, probes):
        pub.send([payload(i) for i in range(1, 50)] + [poisoned] + [payload(i) for i in range(50, 100)])
        assert wait_until(lambda: c.stored - probes >= 99 and c.dead == 1, 20), (c.stored, c.dead)
    store = open_store(store_url)
    assert store.count() == 100 * 2
    (letter,) = store.dead_letters()
    assert "the value 666 is not allowed" in letter.reason and letter.payload == poisoned[1]
    store.close()


def test_a_dead_letter_the_store_refuses_is_kept_as_size_and_hash(tmp_path, mosquitto, sites_dir):
    store_url = _sqlite_with(tmp_path, "CREATE TRIGGER no_payloads BEFORE INSERT ON dead_letters WHEN NEW.topic != '' "
                                       "BEGIN SELECT RAISE(ABORT, 'dead letters need an empty topic'); END")
    with collecting(mosquitto, store_url, sites_dir) as (c, pub, probes):
        pub.send([(TOPIC, b"{garbage")] + [payload(i) for i in range(1, 20)])
        assert wait_until(lambda: c.stored - probes >= 19 and c.dead == 1, 20), (c.stored, c.dead)
    store = open_store(store_url)
    (letter,) = store.dead_letters()
    assert letter.size == len(b"{garbage") and "not JSON" in letter.reason and "empty topic" in letter.reason
    store.close()


def test_channels_outside_the_register_map_and_reserved_names_are_dead_letters(tmp_path, mosquitto, sites_dir):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    odd = {name: (TOPIC, _with_value(name, "1.0")) for name in ("quality", "status", "seq", "time", "not_in_profile")}
    with collecting(mosquitto, store_url, sites_dir) as (c, pub, probes):
        pub.send(list(odd.values()) + [payload(i) for i in range(1, 10)])
        assert wait_until(lambda: c.stored - probes >= 9 and c.dead == len(odd), 20), (c.stored, c.dead)
    store = open_store(store_url)
    reasons = [d.reason for d in store.dead_letters()]
    for name in odd:
        assert any(f"'{name}' is reserved" in r or f"no channel(s) {name}" in r for r in reasons), (name, reasons)
    assert store.count() == 10 * 2
    store.close()


def test_a_value_of_the_wrong_type_cannot_retype_a_field_in_influxdb(tmp_path, mosquitto, sites_dir, influxdb):
    """InfluxDB types a field by its first value in each shard (a week), for every site's
    series of the measurement: a text value of a number channel, written first into a new
    shard, would have every site's numbers of that channel refused for the week."""
    store_url = f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm&timeout=5"
    week_before = [(t, b.replace(b'"2026-11-01T', b'"2026-10-01T')) for t, b in (payload(i) for i in range(1, 51))]
    poison = (week_before[0][0], week_before[0][1].replace(b'"energy_import":1001.0', b'"energy_import":"poison"'))
    with collecting(mosquitto, store_url, sites_dir, batch_timeout=0.05) as (c, pub, probes):
        pub.send([poison])
        assert wait_until(lambda: c.dead + c.stored - probes >= 1, 10)
        pub.send(week_before)
        assert wait_until(lambda: c.stored - probes + c.dead >= 51, 20), (c.stored, c.dead)
    store = open_store(store_url)
    assert store.query("SELECT COUNT(\"energy_import\") FROM \"reading\" WHERE time < '2026-10-15T00:00:00Z'"
                       )[0]["values"][0][1] == 50
    (letter,) = store.dead_letters()
    assert "'energy_import' is text" in letter.reason
    store.close()


def test_a_flood_at_qos_0_while_the_store_is_down_does_not_fill_memory(tmp_path, mosquitto, sites_dir):
    """The broker's in-flight window holds back QoS 1 while nothing is acknowledged; QoS 0
    comes regardless, so the collector bounds what it keeps of it (3,000 x 50 KB were all held)."""
    store_url = f"influxdb://127.0.0.1:{free_port()}?api=v1&db=jcm&timeout=1"  # nothing listens: unavailable
    c = Collector(config(mosquitto, store_url, sites_dir, receive_maximum=100))
    c.start()
    flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        flood.connect("127.0.0.1", mosquitto.port)
        flood.loop_start()
        assert wait_until(lambda: flood.publish(*payload(0), qos=0) and c._queue.qsize() > 0, 10)
        infos = [flood.publish(TOPIC, b"x" * 50_000, qos=0) for _ in range(3000)]
        for info in infos:
            info.wait_for_publish(30)
        # 150 MB through a loaded machine: wait until all of it has arrived or arrivals stop for 2 s
        # (the broker may drop QoS 0 to a slow subscriber: not the collector's to count)
        arrived, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < 2 and arrived < 3000:
            now = c._queue.qsize() + c.dropped_qos0
            if now != arrived:
                arrived, last_change = now, time.monotonic()
            time.sleep(0.1)
        # the flood came (several times the bound: under load the broker drops QoS 0 to a slow
        # subscriber, so not all 3,000 need arrive), and was bounded
        assert c.dropped_qos0 >= 500, (c._queue.qsize(), c.dropped_qos0)
        assert c._queue.qsize() <= 100 + 1  # the worker may hold one batch besides
    finally:
        flood.loop_stop()
        c.stop()


def test_a_channel_that_is_text_at_one_site_and_a_number_at_another_stops_the_start(tmp_path, mosquitto, sites_dir):
    """Both would be stored in one InfluxDB field, which keeps the type of the first value
    in each shard: one site's readings of the channel would be refused for the week."""
    write_site(tmp_path, [tcp_device("t1", "power_meter_3ph", 1502,
                                     overrides={"active_power": {"type": "string", "length": 4}})], name="other-site")
    with pytest.raises(ConfigError) as exc:
        Collector(config(mosquitto, f"sqlite:///{tmp_path}/jcm.db", sites_dir))
    assert str(exc.value).startswith("collector: channel 'active_power' is text in site other-site, device t1 "
                                     "but a number in site test-site, device m1")


def test_oversized_messages_keep_only_head_size_and_hash(tmp_path, mosquitto, sites_dir):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    with collecting(mosquitto, store_url, sites_dir) as (c, pub, _):
        pub.send([(TOPIC, bytes([i]) * 2_000_000) for i in range(10)])  # 20 MB
        assert wait_until(lambda: c.dead == 10, 30), c.dead
    store = open_store(store_url)
    letters = store.dead_letters()
    assert {(d.size, len(d.payload)) for d in letters} == {(2_000_000, 1024)}
    assert len({d.sha256 for d in letters}) == 10
    store.close()
    assert sum(f.stat().st_size for f in tmp_path.glob("jcm.db*")) < 2_000_000


def test_payload_and_reason_text_cannot_forge_log_lines_or_terminal_output(tmp_path, mosquitto, sites_dir, caplog):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    # Mosquitto refuses control characters in topics, not bidirectional overrides or line separators
    forged = "m1\u202eFORGED\u2028line"
    with collecting(mosquitto, store_url, sites_dir) as (c, pub, _):
        with caplog.at_level("WARNING", logger="collector.service"):
            pub.send([(topics.reading("test-site", "gw-test", forged), payload(0)[1]),
                      (TOPIC, b'{"a": "\x1b]0;owned\x07\r\nFORGED 2026-11-29 ERROR all is well"}')])
            assert wait_until(lambda: c.dead == 2, 20)
    lines = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert lines and all(line.isprintable() for line in lines), lines
    listing = subprocess.run([sys.executable, "-m", "jcm.cli", "deadletters", "--store", store_url],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert listing.isascii() and all(line.isprintable() for line in listing.splitlines()), listing
    assert not any(line.startswith("FORGED") for line in listing.splitlines()), listing
    assert "\\x07\\x0d\\x0aFORGED" in listing and "m1\\u202eFORGED\\u2028line" in listing


def test_no_site_files_means_the_collector_refuses_to_start(tmp_path, mosquitto):
    empty = tmp_path / "sites"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"no site files .* in {empty}"):
        Collector(config(mosquitto, f"sqlite:///{tmp_path}/jcm.db", empty))
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(yaml.safe_dump({"broker": {"url": mosquitto.url}, "store": f"sqlite:///{tmp_path}/jcm.db",
                                   "sites_dir": str(empty)}))
    done = subprocess.run([sys.executable, "-m", "jcm.cli", "collector", "--config", str(cfg), "--duration", "3"],
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    assert done.returncode != 0 and str(empty) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "jcm.db").exists()


def test_the_process_exits_non_zero_when_its_worker_dies(tmp_path, mosquitto, sites_dir):
    store_url = _sqlite_with(tmp_path, "CREATE TRIGGER no_letters BEFORE INSERT ON dead_letters "
                                       "BEGIN SELECT RAISE(ABORT, 'no dead letters at all'); END")
    store = open_store(store_url)
    proc = _collector_process(tmp_path, mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    try:
        assert wait_until(lambda: pub.send([payload(0)]) or store.count() == 2, 20)
        pub.send([(TOPIC, b"{garbage")])  # a dead letter that cannot be kept anywhere: the worker cannot go on
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            code = proc.wait(15)
    finally:
        pub.close()
        store.close()
    err = proc.stderr.read().decode()
    assert code == 1, err
    assert "worker died" in err


def test_sigterm_exits_zero_when_healthy(tmp_path, mosquitto, sites_dir):
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    store = open_store(store_url)
    proc = _collector_process(tmp_path, mosquitto, store_url, sites_dir)
    pub = Publisher(mosquitto)
    try:
        assert wait_until(lambda: pub.send([payload(0)]) or store.count() == 2, 20)
    finally:
        pub.close()
        store.close()
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_a_flood_of_garbage_keeps_a_bounded_number_of_dead_letters_and_counts_the_rest(tmp_path, mosquitto, sites_dir):
    """Before: every one of them was kept (about 2 KB each in SQLite): one site sending
    garbage at the collector's rate filled the store's disk in a day, for every site."""
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    with collecting(mosquitto, store_url, sites_dir, batch_timeout=0.05, dead_letters_per_window=20,
                    dead_letter_window_s=2) as (c, pub, probes):
        pub.send([(TOPIC, b"garbage %d" % i) for i in range(300)] + [payload(i) for i in range(1, 51)])
        assert wait_until(lambda: c.stored - probes >= 50 and c.dead == 300, 20), (c.stored, c.dead)
        store = open_store(store_url)
        assert wait_until(lambda: any("more dead letter" in d.reason for d in store.dead_letters(1000)), 10)
    letters = store.dead_letters(1000)
    whole = [d for d in letters if d.payload.startswith(b"garbage")]
    summaries = [d for d in letters if "more dead letter" in d.reason]
    counted = [int(re.match(r"(\d+) more dead letter\(s\) of site 'test-site'", d.reason).group(1)) for d in summaries]
    assert len(whole) + sum(counted) == 300  # each refused message kept whole or counted
    assert len(whole) <= 20 * (len(summaries) + 1)  # at most 20 whole in each 2 s window
    assert all("not JSON" in d.reason for d in summaries)  # the last one's reason
    assert store.count() == 51 * 2  # the valid readings all stored
    store.close()


def test_stopping_while_the_store_is_down_with_summaries_due_is_no_failure(tmp_path, mosquitto, sites_dir, caplog):
    """The idle path writes the dead-letter budget's summaries; stopped while the store is down,
    the write gives up: that is a stop, not the worker's death (before: ``failure`` set, exit 1),
    and the counts it could not write are named in the log rather than lost in silence."""
    store_url = f"influxdb://127.0.0.1:{free_port()}?api=v1&db=jcm&timeout=1"  # nothing listens: unavailable
    c = Collector(config(mosquitto, store_url, sites_dir, dead_letters_per_window=1, dead_letter_window_s=1))
    then = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    c.budget.admit([DeadLetter(then, TOPIC, b"x", "not JSON") for _ in range(3)], then)  # 2 over the budget
    stopper = threading.Timer(1.0, c._stop.set)
    stopper.start()
    with caplog.at_level(logging.ERROR, logger="collector.service"):
        c._stage(c._keep_next)  # the worker's loop, until stopped
    stopper.join()
    c.store.close()
    assert c.failure is None and c.done.is_set()
    assert any("2 more dead letter(s) of site 'test-site'" in r.getMessage() and "unwritten" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
