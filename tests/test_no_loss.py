"""Nothing polled is lost: broker outages and a SIGKILLed gateway, checked by an
independent subscriber that must see every sequence number exactly once after
dropping QoS 1 redeliveries by (gateway, seq)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from gateway.service import Gateway
from tests.conftest import REPO, free_port, load_site, tcp_device, write_site

pytestmark = pytest.mark.slow


def fast_site(tmp_path, backlog_rate=200.0):
    """No collector here: rows are confirmed by the broker's PUBACK (the store's acknowledgement
    is tested in test_end_to_end_ack.py)."""
    port = free_port()
    devices = [tcp_device(f"m{i}", "power_meter_3ph", port, unit_id=i + 1, interval=0.1) for i in range(4)]
    return write_site(tmp_path, devices, outbox={"path": str(tmp_path / "outbox.sqlite"), "backlog_rate": backlog_rate,
                                                 "confirmed_by": "broker"})


def last_seq(outbox_path) -> int:
    with sqlite3.connect(outbox_path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return row[0] if row else 0


def assert_every_seq_once(subscriber, gateway_id, n):
    seqs = subscriber.seqs(gateway_id)
    unique = set(seqs)
    assert unique == set(range(1, n + 1)), f"missing {sorted(set(range(1, n + 1)) - unique)[:20]}"
    return len(seqs) - len(unique)  # redeliveries


def test_broker_down_for_a_while_loses_nothing(tmp_path, mosquitto, subscriber, simulate):
    site = load_site(fast_site(tmp_path, backlog_rate=50.0))
    simulate(site)
    gw = Gateway(site, broker_url=mosquitto.url)
    gw.start()
    try:
        assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= 20)
        mosquitto.stop()
        depth_before = gw.outbox.depth
        time.sleep(4)  # ~160 readings pile up in the outbox
        assert gw.outbox.depth > depth_before + 100
        boundary = gw.outbox.last_seq()
        mosquitto.start()
        assert subscriber.wait_for(lambda: gw.outbox.depth < 20, timeout=30), gw.outbox.depth
    finally:
        gw.stop()
    # live readings kept flowing while the backlog drained at its bounded rate
    arrival = subscriber.seqs("gw-test")
    first_live = next(i for i, s in enumerate(arrival) if s > boundary + 5)
    last_backlog = max(i for i, s in enumerate(arrival) if s <= boundary)
    assert first_live < last_backlog
    n = last_seq(site.outbox.path)
    assert n > 250
    assert subscriber.wait_for(lambda: set(subscriber.seqs("gw-test")) >= set(range(1, n + 1)), 15)
    assert_every_seq_once(subscriber, "gw-test", n)
    assert gw.outbox.depth == 0


def _gateway_process(site_path, broker_url):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "jcm.cli", "gateway", "--site", str(site_path), "--broker", broker_url],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_publish_and_during_backlog_loses_nothing(tmp_path, mosquitto, subscriber, simulate):
    site_path = fast_site(tmp_path, backlog_rate=60.0)
    site = load_site(site_path)
    simulate(site)
    gw = _gateway_process(site_path, mosquitto.url)
    assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= 30, 20)
    gw.send_signal(signal.SIGKILL)  # mid-publish: 40 readings/s are flowing
    gw.wait()
    # the broker announces the death with the gateway's retained last will
    assert subscriber.wait_for(lambda: subscriber.status and subscriber.status[-1]["state"] == "offline", 10)
    # a backlog builds up with the broker away, then the gateway dies again while draining it
    mosquitto.stop()
    gw = _gateway_process(site_path, mosquitto.url)
    time.sleep(4)
    mosquitto.start()
    time.sleep(1.5)  # draining at 60/s: far from done
    gw.send_signal(signal.SIGKILL)
    gw.wait()
    gw = _gateway_process(site_path, mosquitto.url)

    def outbox_rows():
        with sqlite3.connect(site.outbox.path) as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    # and more than 200 readings in all: how many the two lives before polled depends on how fast
    # the gateway starts (a loaded machine took seconds of their fixed windows)
    assert subscriber.wait_for(lambda: outbox_rows() < 10 and last_seq(site.outbox.path) > 200, timeout=60), \
        (outbox_rows(), last_seq(site.outbox.path))
    gw.send_signal(signal.SIGTERM)  # a clean stop delivers what is left
    gw.wait(timeout=30)
    assert outbox_rows() == 0
    n = last_seq(site.outbox.path)
    assert n > 200
    assert subscriber.wait_for(lambda: set(subscriber.seqs("gw-test")) >= set(range(1, n + 1)), 20)
    redelivered = assert_every_seq_once(subscriber, "gw-test", n)
    print(f"{n} readings, {redelivered} redeliveries dropped by (gateway, seq)")
