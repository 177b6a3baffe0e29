"""What the live view claims about a site: no more than it knows. A device heard from
never, a reading stamped ahead of our clock, a reading the collector would refuse."""

import datetime as dt
import json

import pytest

from contract.config import load_site
from contract.message import Reading
from jcm.broker import free_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from store.sqlite_store import SqliteStore
from tests.conftest import REPO

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")


def view_of(tmp_path) -> LiveView:
    """A live view fed by calling it, as if connected to its broker (else it judges no alarm of what MQTT brings)."""
    view = LiveView([SITE], f"mqtt://127.0.0.1:{free_port()}", SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    view.broker.connected.set()
    return view


def status(view, state):
    body = {"schema": 1, "site": SITE.site, "gateway": SITE.gateway, "state": state}
    view.state.on_message(f"jcm/v1/{SITE.site}/{SITE.gateway}/status", json.dumps(body).encode())


def test_devices_never_heard_from_are_not_a_site_that_is_ok(tmp_path):
    """A gateway that died without its last will (a broker restart) leaves its retained status
    "online": after a live view restart its devices stayed "unknown" for ever, raised no alarm,
    and the overview said the site was "ok"."""
    view = view_of(tmp_path)
    status(view, "online")
    now = dt.datetime.now(dt.UTC)
    assert view.site_summary(SITE.site, now)["attention"] == "ok"  # a moment after start: nothing is late yet
    later = now + dt.timedelta(seconds=3 * max(d.poll_interval for d in SITE.devices) + 1)
    row = view.site_summary(SITE.site, later)
    assert row["devices"]["stale"] == len(SITE.devices) and row["attention"] == "devices_down"
    (poc,) = [d for d in view.state.snapshot(SITE.site, later)["devices"] if d["id"] == "poc-meter"]
    assert poc["state"] == "stale" and "no reading since the live view started" in poc["state_reason"]
    stale = {c.subject for c in view.state.conditions(SITE.site, later, None) if c.kind == "device_stale"}
    assert stale == {d.id for d in SITE.devices}


def reading(ts, seq, status="ok", **values):
    return Reading.from_json(json.dumps({
        "schema": 1, "site": SITE.site, "gateway": SITE.gateway, "device": "poc-meter", "seq": seq,
        "ts": ts.isoformat(), "status": status,
        "values": values or {"active_power": -1500.0, "energy_export": 1000.0 + seq, "energy_import": 5.0}}))


def poc_of(state, now):
    return next(d for d in state.snapshot(SITE.site, now)["devices"] if d["id"] == "poc-meter")


def test_a_reading_stamped_ahead_of_our_clock_does_not_hide_the_next_ones(tmp_path):
    """A gateway clock 290 s fast (within the 300 s accepted), then set right: every later
    reading was "older than the newest" and ignored for 290 s, so a meter that stopped
    answering stayed "online" with its old values for 5 minutes (290 s + 3 polls)."""
    view = view_of(tmp_path)
    status(view, "online")
    topic = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
    now = dt.datetime.now(dt.UTC)
    assert view.state.on_message(topic, reading(now + dt.timedelta(seconds=290), 1).to_json().encode(), now)
    # nothing more: stale after 3 polls of *our* clock, not 3 polls after the stamp
    assert poc_of(view.state, now + dt.timedelta(seconds=31))["state"] == "stale"
    # the clock set right; the meter stops answering
    later = now + dt.timedelta(seconds=10)
    gone = reading(later, 2, "offline", active_power=None, energy_export=None, energy_import=None)
    event = view.state.on_message(topic, gone.to_json().encode(), later)
    assert event is not None and event["state"] == "offline"
    assert poc_of(view.state, later)["state"] == "offline"
    # a redelivered older reading still changes nothing
    assert view.state.on_message(topic, reading(now, 3).to_json().encode(), later) is None


def test_a_reading_the_collector_refuses_is_not_shown_and_raises_no_alarm(tmp_path):
    """The collector dead-letters a reading with channels outside the device's register map, or
    text for a number: the live view showed it as live, and a gateway could open an alarm for
    each of up to 512 invented channels per reading, then end them and open 512 more with the
    next one, every second, in the alarm book on disk (MRV evidence, kept for ever)."""
    view = view_of(tmp_path)
    status(view, "online")
    topic = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
    now = dt.datetime.now(dt.UTC)
    for n in range(3):
        invented = {f"x{n}_{i}": 1.0 for i in range(200)}
        body = json.loads(reading(now + dt.timedelta(seconds=n), n + 1).to_json())
        body["values"].update(invented)
        body["quality"] = {k: "out_of_range" for k in invented}
        view.state.on_message(topic, json.dumps(body).encode(), now + dt.timedelta(seconds=n))
        view.evaluate_alarms(now + dt.timedelta(seconds=n))
    assert [a for a in view.alarms.recent(SITE.site, 10_000) if a["kind"] == "out_of_range"] == []  # before: 600
    text = reading(now + dt.timedelta(seconds=5), 9, active_power="\u202e0051-", energy_export=1.0, energy_import=1.0)
    assert view.state.on_message(topic, text.to_json().encode(), now + dt.timedelta(seconds=5)) is None
    assert poc_of(view.state, now)["last_seen"] is None


def test_power_now_leaves_out_a_value_its_gateway_flags(tmp_path):
    """A meter read out of its valid range is kept with its flag (the gateway's evidence); the
    overview summed it into the site's power now: 9,900 MW on a plant of 8.3 MW."""
    view = view_of(tmp_path)
    status(view, "online")
    topic = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
    now = dt.datetime.now(dt.UTC)
    view.state.on_message(topic, reading(now, 1, active_power=-1500.0).to_json().encode(), now)
    assert view.site_summary(SITE.site, now)["power_kw"] == 1500.0
    body = json.loads(reading(now + dt.timedelta(seconds=1), 2, active_power=-9.9e6).to_json())
    body["quality"] = {"active_power": "out_of_range"}
    view.state.on_message(topic, json.dumps(body).encode(), now + dt.timedelta(seconds=1))
    assert poc_of(view.state, now)["state"] == "faulted"
    assert view.site_summary(SITE.site, now + dt.timedelta(seconds=1))["power_kw"] is None


def test_the_power_chart_leaves_out_values_their_gateway_flags(tmp_path):
    """One reading out of range (kept in the store with its flag) set the chart's axis to
    9,900 MW: every real value of the day drew as a flat line at 0."""
    view = view_of(tmp_path)
    now = dt.datetime.now(dt.UTC)
    rows = [reading(now - dt.timedelta(minutes=30 - i), i + 1, active_power=-1500.0 - i) for i in range(3)]
    flagged = json.loads(reading(now - dt.timedelta(minutes=20), 10, active_power=-9.9e6).to_json())
    flagged["quality"] = {"active_power": "out_of_range"}
    view.store.write([*rows, Reading.from_json(json.dumps(flagged))])
    series = view.history(SITE.site, 1.0)["series"]["poc-meter"]
    assert series["v"] == [-1500.0, -1501.0, -1502.0] and len(series["t"]) == 3


def test_a_flapping_condition_is_one_alarm_not_a_row_a_flip(tmp_path):
    """A value flagged out of range every other reading (noise around a limit, or a gateway
    doing it on purpose on every channel) opened and ended an alarm at each flip: a row in the
    alarm book per 2 s per channel, for ever. Back within 10 minutes, it is the same alarm."""
    view = view_of(tmp_path)
    status(view, "online")
    topic = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    for n in range(200):
        at = now + dt.timedelta(seconds=n)
        body = json.loads(reading(at, n + 1, active_power=-1500.0).to_json())
        if n % 2:
            body["quality"] = {"active_power": "out_of_range"}
        view.state.on_message(topic, json.dumps(body).encode(), at)
        view.evaluate_alarms(at)
    rows = [a for a in view.alarms.recent(SITE.site, 10_000) if a["kind"] == "out_of_range"]
    assert len(rows) == 1, len(rows)  # before: 100
    assert rows[0]["started"] == (now + dt.timedelta(seconds=1)).isoformat(timespec="seconds")
    assert rows[0]["ended"] is None
    at = now + dt.timedelta(seconds=200)
    view.state.on_message(topic, reading(at, 201, active_power=-1500.0).to_json().encode(), at)
    view.evaluate_alarms(at)
    (row,) = [a for a in view.alarms.recent(SITE.site, 10_000) if a["kind"] == "out_of_range"]
    assert row["ended"] == at.isoformat(timespec="seconds")
    # over 10 minutes later: a new alarm
    at = now + dt.timedelta(seconds=200 + 601)
    body = json.loads(reading(at, 999, active_power=-1500.0).to_json())
    body["quality"] = {"active_power": "out_of_range"}
    view.state.on_message(topic, json.dumps(body).encode(), at)
    view.evaluate_alarms(at)
    assert len([a for a in view.alarms.recent(SITE.site, 10_000) if a["kind"] == "out_of_range"]) == 2


def test_a_gateway_whose_status_stops_coming_is_not_online(tmp_path):
    """A connected gateway publishes its status every 30 s. One that died without its last
    will (a broker restart, a half-open link) left "online", retained, for ever: the overview
    said the gateway was online, and sent the operator to look at its devices."""
    view = view_of(tmp_path)
    now = dt.datetime.now(dt.UTC)
    body = json.dumps({"schema": 1, "site": SITE.site, "gateway": SITE.gateway, "state": "online"}).encode()
    view.state.on_message(f"jcm/v1/{SITE.site}/{SITE.gateway}/status", body, now)
    assert view.site_summary(SITE.site, now + dt.timedelta(seconds=60))["gateway_state"] == "online"
    view.state.on_message(f"jcm/v1/{SITE.site}/{SITE.gateway}/status", body, now + dt.timedelta(seconds=60))
    assert view.site_summary(SITE.site, now + dt.timedelta(seconds=149))["gateway_state"] == "online"
    row = view.site_summary(SITE.site, now + dt.timedelta(seconds=151))
    assert row["gateway_state"] == "stale" and row["attention"] == "gateway_down"
    gw = view.state.snapshot(SITE.site, now + dt.timedelta(seconds=151))["gateways"][SITE.gateway]
    assert "no status since" in gw["state_reason"]


def test_a_live_event_says_the_state_the_pages_say(tmp_path):
    """A gateway clock an hour slow: the device is stale by our clock (its newest reading is an
    hour old) on every page, but each live event said "online" (the state at the reading's own
    time), so its row flipped between the two every few seconds."""
    view = view_of(tmp_path)
    status(view, "online")
    now = dt.datetime.now(dt.UTC)
    topic = f"jcm/v1/{SITE.site}/{SITE.gateway}/poc-meter/reading"
    event = view.state.on_message(topic, reading(now - dt.timedelta(hours=1), 1).to_json().encode(), now)
    assert event["state"] == poc_of(view.state, now)["state"] == "stale"


@pytest.mark.slow
def test_the_overview_keeps_updating_after_a_failed_request_and_says_it_failed(tmp_path):
    """The overview refreshes every 5 s by asking again after each answer: one failed request (the
    live view restarting, a proxy's 502) ended the chain, and the page kept showing what it last
    had, looking live, for as long as it stayed open."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    view = view_of(tmp_path)
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    overview, failing = view.overview, [True]

    def flaky():
        if failing[0]:
            raise RuntimeError("the live view is restarting")
        return overview()

    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        gateway = "return document.querySelector('#fleet tbody tr td:nth-child(3) [data-state]')?.dataset.state"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(gateway) == "unknown")
        view.overview = flaky
        WebDriverWait(driver, 20).until(lambda d: d.find_element("id", "error").is_displayed())
        failing[0] = False
        status(view, "online")
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(gateway) == "online")
        assert not driver.find_element("id", "error").is_displayed()
    finally:
        driver.quit()
        dash.stop()
