"""Hostile messages against a real Mosquitto and the real collector: one message never
stops ingestion. Each trigger is followed by valid readings; every valid reading is
stored, the trigger is a dead letter with its reason, and the worker keeps running."""

import datetime as dt
import json

import pytest

from collector.service import Collector
from contract import topics
from store import open_store
from tests.test_collector import DEVICES, Publisher, config, payload, sites_dir, wait_until  # noqa: F401

TOPIC = topics.reading("test-site", "gw-test", DEVICES[0])


def _valid_body() -> dict:
    return json.loads(payload(0)[1])


def running(c: Collector, pub: Publisher) -> int:
    """Wait until the collector's subscription is in place (a probe reading lands); return stored."""
    assert wait_until(lambda: pub.send([payload(0)]) or c.stored >= 1, 10)
    return c.stored


def _with(**fields) -> bytes:
    return json.dumps({**_valid_body(), **fields}).encode()


def _with_value(name: str, raw: str) -> bytes:
    """A valid reading with one more value, spliced in as raw JSON text (numbers JSON
    allows but Python would not dump, and lone surrogates)."""
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
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_one_hostile_message_does_not_stop_ingestion(trigger, tmp_path, mosquitto, sites_dir):
    topic, body, reason = TRIGGERS[trigger]
    store_url = f"sqlite:///{tmp_path}/jcm.db"
    c = Collector(config(mosquitto, store_url, sites_dir, batch_timeout=0.05))
    c.start()
    pub = Publisher(mosquitto)
    try:
        probes = running(c, pub)
        pub.send([(topic, body)] + [payload(i) for i in range(1, 201)])
        assert wait_until(lambda: c.stored - probes >= 200 and c.dead == 1, 20), (c.stored, c.dead)
        assert c._worker.is_alive()
    finally:
        c.stop()
        pub.close()
    store = open_store(store_url)
    assert store.count() == 201 * 2
    (letter,) = store.dead_letters()
    assert reason in letter.reason
    assert letter.reason.isprintable()
    store.close()
