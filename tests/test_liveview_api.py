"""The live view's server for real (uvicorn, a real Mosquitto): the token, and live
values that keep coming over server-sent events while the database is down."""

import datetime as dt
import json
import socket
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from contract import topics
from contract.config import load_site
from contract.message import Reading
from jcm.broker import free_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from store import open_store
from tests.conftest import REPO

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")


@pytest.fixture
def live(tmp_path, mosquitto):
    dead_store = open_store(f"influxdb://127.0.0.1:{free_port()}?api=v1&timeout=1")  # the database is down
    view = LiveView([SITE], mosquitto.url, dead_store, str(tmp_path / "alarms.sqlite"), token="s3cret")
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    yield f"http://127.0.0.1:{port}", pub
    pub.disconnect()
    pub.loop_stop()
    dash.stop()


def publish(pub, seq, power):
    r = Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter", ts=dt.datetime.now(dt.UTC),
                values={"active_power": power, "energy_export": 1000.0 + seq, "energy_import": 5.0}, seq=seq)
    pub.publish(topics.reading(r.site, r.gateway, r.device), r.to_json(), qos=1).wait_for_publish(5)


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    return urllib.request.urlopen(req, timeout=10)


def test_token_is_required_when_set(live):
    base, _ = live
    with pytest.raises(urllib.error.HTTPError) as exc:
        get(base + "/api/sites")
    assert exc.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        get(base + "/api/sites", token="wrong")
    assert json.load(get(base + "/api/sites", token="s3cret"))["sites"][0]["site"] == "mn-solar"


def test_live_values_flow_over_sse_while_the_store_is_down(live):
    base, pub = live
    time.sleep(0.5)  # the live view's subscription is in place
    stream = urllib.request.urlopen(base + "/api/stream?site=mn-solar&token=s3cret", timeout=10)
    publish(pub, 1, -1234.5)
    events = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = stream.readline().decode()
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
            if events[-1].get("type") == "reading":
                break
    assert events[-1]["device"] == "poc-meter" and events[-1]["values"]["active_power"] == -1234.5
    detail = json.load(get(base + "/api/sites/mn-solar", token="s3cret"))
    poc = next(d for d in detail["devices"] if d["id"] == "poc-meter")
    assert poc["state"] == "online" and poc["values"]["active_power"] == -1234.5
    assert "error" in detail["energy"]  # the store part says it is unavailable; the live part works
    with pytest.raises(urllib.error.HTTPError) as exc:
        get(base + "/api/sites/mn-solar/history", token="s3cret")
    assert exc.value.code == 503


@pytest.fixture
def hung_store():
    """An InfluxDB that accepts connections and never answers (overloaded, or a half-open link)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield open_store(f"influxdb://127.0.0.1:{server.getsockname()[1]}?api=v1&timeout=1")
    server.close()


def test_a_store_that_does_not_answer_does_not_freeze_the_pages(tmp_path, hung_store):
    """Each request waited for the store's timeout, for each site and twice per site page (10 s
    each by default): the overview of five sites answered after 50 s or more, a site page
    began to follow its live values only after 20 s, and every 5 s each open page asked again.
    Once the store has failed, the live view asks it again after a while, not on every request."""
    view = LiveView([SITE], f"mqtt://127.0.0.1:{free_port()}", hung_store, str(tmp_path / "alarms.sqlite"))
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    try:
        base = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        assert "error" in json.load(get(base + "/api/sites/mn-solar"))["energy"]
        first = time.monotonic() - t0
        assert first < 1.9, first  # one wait for the store, not one per figure
        t0 = time.monotonic()
        for _ in range(3):
            row = json.load(get(base + "/api/sites"))["sites"][0]
            assert row["energy_error"] and "unavailable" in row["energy_error"]
            with pytest.raises(urllib.error.HTTPError) as exc:
                get(base + "/api/sites/mn-solar/history")
            assert exc.value.code == 503
        assert time.monotonic() - t0 < 1.5, time.monotonic() - t0
    finally:
        dash.stop()
