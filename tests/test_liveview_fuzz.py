"""Fuzz the live view's MQTT intake through a real Mosquitto: arbitrary bytes, arbitrary
JSON trees and near-valid readings and statuses with mutated fields, on reading and
status topics. After each batch a valid reading follows: the live view must show it,
and its API must keep answering. The live view's state carries over from one example
to the next on purpose (a message that freezes a device fails every later example), so
the example hypothesis reports may not hold the culprit: the log names it."""

import datetime as dt
import itertools
import json
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config import load_site
from contract.message import Reading, format_ts
from jcm.broker import Mosquitto, free_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, fuzz_examples

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
OTHER = load_site(REPO / "config" / "sites" / "ph-biogas.yaml")
READING_TOPIC = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
TOPICS = [READING_TOPIC, f"jcm/v1/{SITE.site}/{SITE.gateway}/inv-01/reading",
          f"jcm/v1/{SITE.site}/{SITE.gateway}/status", f"jcm/v1/{SITE.site}/gw-other/poc-meter/reading",
          f"jcm/v1/{OTHER.site}/{OTHER.gateway}/status", f"jcm/v1/{OTHER.site}/{OTHER.gateway}/genset-1/reading"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 300, max_value=10 ** 320)
           | st.floats() | st.text(max_size=30))
trees = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                     max_leaves=12)
timestamps = (st.text(max_size=30) | st.sampled_from(["2099-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                                                      "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00Z"])
              | st.datetimes(timezones=st.just(dt.UTC)).map(lambda t: t.isoformat()))
#: a field of a valid reading or status replaced (None: deleted)
mutations = st.tuples(st.sampled_from(["schema", "site", "gateway", "device", "seq", "ts", "values", "quality",
                                       "units", "status", "state", "outbox_depth"]),
                      trees | timestamps | st.none())
deep = st.integers(min_value=100, max_value=20_000).map(lambda n: b"[" * n + b"]" * n)
#: known attacks, so that even a short run tries them: far future, year 1 at +14:00, a
#: counter beyond float range, another site's name
known = st.sampled_from([[("ts", "2099-01-01T00:00:00Z")], [("ts", "0001-01-01T00:00:00+14:00")],
                         [("values", {"energy_export": -(10 ** 310), "active_power": 1.0})],
                         [("site", OTHER.site), ("state", "offline")]])
hostile = st.tuples(st.sampled_from(TOPICS),
                    known | st.lists(mutations, min_size=1, max_size=3)
                    | st.binary(max_size=300) | deep | trees.map(lambda t: json.dumps(t).encode()))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liveview-fuzz")
    broker = Mosquitto(tmp / "mq").start()
    view = LiveView([SITE, OTHER], broker.url, SqliteStore(tmp / "jcm.db"), str(tmp / "alarms.sqlite"))
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    deadline = time.monotonic() + 15
    while shown_power(port) is None and time.monotonic() < deadline:  # until the view is subscribed
        publish_valid(pub, 0)
        time.sleep(0.1)
    yield pub, port
    pub.disconnect()
    pub.loop_stop()
    dash.stop()
    broker.stop()


def body_of(topic: str, changes: list) -> bytes:
    """A valid reading or status for ``topic`` (stamped now) with ``changes`` applied."""
    site, gateway = topic.split("/")[2:4]
    now = format_ts(dt.datetime.now(dt.UTC))
    if topic.endswith("/status"):
        body = {"schema": 1, "site": site, "gateway": gateway, "state": "online", "ts": now, "outbox_depth": 0}
    else:
        body = {"schema": 1, "site": site, "gateway": gateway, "device": topic.split("/")[4], "seq": 1, "ts": now,
                "values": {"active_power": 1.0}, "quality": {}, "units": {}, "status": "ok"}
    for key, value in changes:
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        assert resp.status == 200
        return json.load(resp)


def shown_power(port: int):
    detail = get(port, "/api/sites/mn-solar")
    return next(d for d in detail["devices"] if d["id"] == "poc-meter")["values"].get("active_power")


COUNTER = itertools.count(1)


def publish_valid(pub, n: int) -> None:
    """A valid reading showing active_power -n - 0.5, newer than any near-valid one sent before it."""
    ts = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=n)
    valid = Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter", ts=ts,
                    values={"active_power": -n - 0.5, "energy_export": float(n), "energy_import": 0.0}, seq=n)
    pub.publish(READING_TOPIC, valid.to_json(), qos=1)


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages=st.lists(hostile, min_size=1, max_size=5))
def test_hostile_messages_never_break_the_live_view(live, messages):
    pub, port = live
    for topic, payload in messages:
        data = body_of(topic, payload) if isinstance(payload, list) else payload
        pub.publish(topic, data, qos=1)
    n = next(COUNTER)
    publish_valid(pub, n)
    deadline = time.monotonic() + 3  # a valid reading shows within ~50 ms here
    while shown_power(port) != -n - 0.5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shown_power(port) == -n - 0.5, messages
    assert {s["site"] for s in get(port, "/api/sites")["sites"]} == {SITE.site, OTHER.site}
