"""The live view: alarm rules and their stored transitions (pure), and the whole page
in headless Chromium against a running demo: a live value changes, an injected fault
raises an alarm, and a screenshot is kept as a test artefact."""

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from contract.config import load_site
from contract.message import DeviceStatus, Quality, Reading
from jcm.broker import free_port
from liveview.alarms import AlarmBook, calibration_conditions
from liveview.state import LiveState
from tests.conftest import REPO

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
T0 = dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC)
ARTEFACTS = REPO / "var" / "test-artifacts"


def reading(device="poc-meter", seconds=0, status=DeviceStatus.ok, quality=None, **values):
    values = values or {"active_power": -1500.0, "energy_export": 1000.0 + seconds, "energy_import": 5.0}
    return Reading(site=SITE.site, gateway=SITE.gateway, device=device, ts=T0 + dt.timedelta(seconds=seconds),
                   values=values, quality=quality or {}, status=status, seq=seconds + 1)


def kinds(state, now):
    return sorted((c.subject, c.kind) for c in state.conditions(SITE.site, now, None) if not c.kind.startswith("calib"))


def test_stale_faulted_out_of_range_counter_and_gateway_conditions():
    state = LiveState([SITE])
    state.on_reading(reading(seconds=0))
    assert kinds(state, T0 + dt.timedelta(seconds=5)) == []
    assert kinds(state, T0 + dt.timedelta(seconds=31)) == [("poc-meter", "device_stale")]  # 3 × 10 s polls
    state.on_reading(reading(seconds=40, active_power=99999.0, energy_export=900.0, energy_import=5.0,
                             quality={"active_power": Quality.out_of_range}))
    assert kinds(state, T0 + dt.timedelta(seconds=41)) == [("poc-meter", "device_faulted"),
        ("poc-meter.active_power", "out_of_range"), ("poc-meter.energy_export", "counter_backwards")]
    state.on_reading(reading(seconds=50, status=DeviceStatus.offline, quality={"active_power": Quality.timeout},
                             active_power=None, energy_export=None, energy_import=None))
    assert ("poc-meter", "device_offline") in kinds(state, T0 + dt.timedelta(seconds=51))
    state.on_message(f"jcm/v1/{SITE.site}/{SITE.gateway}/status",
                     json.dumps({"site": SITE.site, "gateway": SITE.gateway, "state": "offline"}).encode())
    assert (SITE.gateway, "gateway_offline") in kinds(state, T0 + dt.timedelta(seconds=52))


def timeout_reading(seconds):
    return reading(seconds=seconds, status=DeviceStatus.offline, active_power=None, energy_export=None,
                   energy_import=None, quality={c: Quality.timeout for c in ("active_power", "energy_export",
                                                                             "energy_import")})


def test_a_device_the_gateway_backs_off_has_one_state_and_one_alarm(tmp_path):
    """Timeouts at 10, 20, 40, 80, 160 s apart (the gateway's backoff), then answers again:
    one state on every view, one device_offline alarm opened once and closed once."""
    state, book = LiveState([SITE]), AlarmBook(tmp_path / "alarms.sqlite")
    state.on_reading(reading(seconds=0))
    polls = [10, 30, 70, 150, 310]
    answers = [470, 480, 490]
    events = {s: timeout_reading(s) for s in polls} | {s: reading(seconds=s) for s in answers}
    seen_states, transitions = set(), []
    for now_s in range(1, 500):
        if now_s in events:
            state.on_reading(events[now_s])
        now = T0 + dt.timedelta(seconds=now_s)
        (poc,) = [d for d in state.snapshot(SITE.site, now)["devices"] if d["id"] == "poc-meter"]
        conds = [c for c in state.conditions(SITE.site, now, None) if c.subject == "poc-meter"]
        if polls[0] <= now_s < answers[1]:
            seen_states.add(poc["state"])
            assert [c.kind for c in conds] == ["device_offline"], now_s
        transitions += book.update((SITE.site, {"device_stale", "device_offline", "device_faulted"}), conds, now)
    assert seen_states == {"offline"}  # never "stale" between the backed-off polls
    assert [(c["kind"], c["ended"] is None) for c in transitions] == [("device_offline", True),
                                                                         ("device_offline", False)]
    assert transitions[1]["ended"] == (T0 + dt.timedelta(seconds=answers[1])).isoformat()  # two good readings


def test_redelivered_old_reading_does_not_move_the_live_view_back():
    state = LiveState([SITE])
    assert state.on_reading(reading(seconds=10)) is not None
    assert state.on_reading(reading(seconds=5)) is None


def test_calibration_due_and_overdue():
    ph = load_site(REPO / "config" / "sites" / "ph-biogas.yaml")
    conds = {(c.subject, c.kind) for c in calibration_conditions(ph, dt.date(2026, 11, 29))}
    assert ("aux-meter", "calibration_overdue") in conds
    assert ("boiler-meter", "calibration_due") not in conds
    soon = {(c.subject, c.kind) for c in calibration_conditions(ph, dt.date(2026, 12, 15))}
    assert ("genset-meter", "calibration_due") in soon  # due 2027-01-09: within 30 days


def test_alarm_transitions_are_stored_with_start_and_end(tmp_path):
    book = AlarmBook(tmp_path / "alarms.sqlite")
    state = LiveState([SITE])
    state.on_reading(reading(seconds=0))
    scope = (SITE.site, {"device_stale"})
    started = book.update(scope, [c for c in state.conditions(SITE.site, T0 + dt.timedelta(seconds=60), None)
                                  if c.kind == "device_stale"], T0 + dt.timedelta(seconds=60))
    assert [(c["kind"], c["ended"]) for c in started] == [("device_stale", None)]
    assert book.update(scope, [c for c in state.conditions(SITE.site, T0 + dt.timedelta(seconds=61), None)
                               if c.kind == "device_stale"], T0 + dt.timedelta(seconds=61)) == []  # still open
    state.on_reading(reading(seconds=70))
    ended = book.update(scope, [], T0 + dt.timedelta(seconds=71))
    assert ended[0]["ended"] == (T0 + dt.timedelta(seconds=71)).isoformat(timespec="seconds")
    (row,) = book.recent(SITE.site)
    assert row["started"] and row["ended"] and not book.active(SITE.site)


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which("chromium") and shutil.which("chromedriver"), \
        "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1700", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


@pytest.fixture
def running_demo(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "jcm.cli", "demo", "--sites", "mn-solar", "--duration", "300",
                             "--port", str(free_port()), "--control-port", str(free_port()),
                             "--workdir", str(tmp_path / "demo")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "fault control:" in line or time.monotonic() > deadline:
            break
    out = "".join(lines)
    url = re.search(r"live view: +(http://127\.0\.0\.1:\d+/)", out)
    faults = re.search(r"mn-solar (http://127\.0\.0\.1:\d+/faults)", out)
    assert url and faults, "".join(lines[-30:])
    yield url.group(1), faults.group(1)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def inject(faults, **fault):
    req = urllib.request.Request(faults, method="POST", data=json.dumps(fault).encode())
    assert json.load(urllib.request.urlopen(req))["ok"]


def api_get(url):
    return json.load(urllib.request.urlopen(url, timeout=30))


def set_language(driver, lang):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "lang")).select_by_value(lang)  # reloads the page


@pytest.mark.slow
def test_site_page_and_overview_in_a_browser(running_demo):
    """One demo, offline Chromium: live values, an out-of-range alarm, a counter reset that
    leaves today's energy right, a device in backoff with one state everywhere, a chart with
    a time axis, Swagger UI without internet, and the language switch; screenshots of both
    pages in both languages."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, faults = running_demo
    driver = chrome()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(url + "sites/mn-solar")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "title").text.startswith("Ulaanbaatar"))
        assert driver.find_element(By.ID, "sim").is_displayed()  # every page says the data are simulated
        cell = lambda: driver.execute_script(  # noqa: E731 (one read: the row is re-rendered often)
            "return document.querySelector('#dev-inv-01 .seen')?.textContent ?? ''")
        wait.until(lambda d: re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08", cell()))  # local time, zone
        first = cell()
        WebDriverWait(driver, 15).until(lambda d: cell() != first)  # pushed over server-sent events

        # a counter reset: today's energy stays what it was and keeps rising (no -1.5 GWh)
        today = lambda: api_get(url + "api/sites/mn-solar")["energy"]["EG[PV-1]"]  # noqa: E731
        before = today()
        assert before["today"] >= 0 and before["unit"] in ("kWh", "MWh")
        inject(faults, device="poc-meter", kind="counter_reset")
        # and a device in timeout: the gateway backs off (5, 10, 20, 40 s between tries)
        inject(faults, device="inv-02", kind="timeout", seconds=50)
        inject(faults, device="inv-01", kind="out_of_range", channel="ac_power", seconds=120)
        state = lambda: driver.execute_script(  # noqa: E731 (one read: the row is re-rendered often)
            "return document.querySelector('#dev-inv-02 [data-state]').dataset.state")
        WebDriverWait(driver, 40).until(lambda d: state() == "offline")
        seen = set()
        deadline = time.monotonic() + 40  # past the 20 s pause, where the old model said "stale"
        while time.monotonic() < deadline:
            seen.add(state())
            overview = next(s for s in api_get(url + "api/sites")["sites"] if s["site"] == "mn-solar")
            seen.add("offline" if overview["devices"]["offline"] >= 1 else "not offline on the overview")
            time.sleep(2)
        assert seen == {"offline"}
        kinds = [a["kind"] for a in api_get(url + "api/alarms?site=mn-solar") if a["subject"] == "inv-02"]
        assert kinds == ["device_offline"]  # opened once; never device_stale or device_faulted
        after = today()
        scale = {"kWh": 1, "MWh": 1e3}
        assert after["today"] * scale[after["unit"]] >= before["today"] * scale[before["unit"]] - 1e-6
        assert after["today"] * scale[after["unit"]] < before["today"] * scale[before["unit"]] + 5000  # no jump either

        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#alarms tr.alarm-active[data-kind='out_of_range']"))
        row = driver.find_element(By.CSS_SELECTOR, "#alarms tr.alarm-active[data-kind='out_of_range']")
        assert "inv-01.ac_power" in row.text
        assert driver.execute_script("return document.querySelector('#dev-inv-01 [data-state]').dataset.state") \
            == "faulted"

        # the chart: uPlot, a time axis in the site's zone, units on the value axis, day/week/month
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#charts .uplot"))
        assert driver.find_element(By.CSS_SELECTOR, "#charts .axis-zone").text == "local time, Asia/Ulaanbaatar (+08)"
        axes = driver.execute_script("return charts.map((c) => c.axes.map((a) => a.label))")
        assert axes == [["local time, Asia/Ulaanbaatar (+08)", "kW"]]  # every power in kW: one chart
        over = driver.find_element(By.CSS_SELECTOR, "#charts .uplot .u-over")
        ActionChains(driver).move_to_element_with_offset(over, 100, 20).perform()  # hover: the legend shows values
        WebDriverWait(driver, 5).until(lambda d: any(
            v.text.endswith(" kW") for v in d.find_elements(By.CSS_SELECTOR, "#charts .u-legend .u-value")))
        driver.find_element(By.CSS_SELECTOR, "#ranges button[data-range='week']").click()
        wait.until(lambda d: "on" in d.find_element(By.CSS_SELECTOR, "#ranges button[data-range='week']")
                   .get_attribute("class") and d.find_elements(By.CSS_SELECTOR, "#charts .uplot"))
        api = api_get(url + "api/sites/mn-solar")
        assert api["last_verified"]["status"] == "verified" and api["months"]
        driver.save_screenshot(str(ARTEFACTS / "liveview-site-en.png"))

        driver.get(url)  # the overview: the site needing attention first
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#fleet tbody tr"))
        assert "kW" in driver.find_element(By.CSS_SELECTOR, "#fleet tbody tr").text
        driver.save_screenshot(str(ARTEFACTS / "liveview-overview-en.png"))

        set_language(driver, "ja")
        WebDriverWait(driver, 20).until(lambda d: "ライブビュー" in d.find_element(By.TAG_NAME, "header").text)
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#fleet tbody tr"))
        driver.save_screenshot(str(ARTEFACTS / "liveview-overview-ja.png"))
        driver.get(url + "sites/mn-solar")  # remembered
        wait.until(lambda d: re.fullmatch(r"\d{4}年\d\d月\d\d日 \d\d:\d\d:\d\d \+08", cell()))
        assert "機器" in driver.find_element(By.TAG_NAME, "main").text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#charts .uplot"))
        driver.save_screenshot(str(ARTEFACTS / "liveview-site-ja.png"))
        set_language(driver, "en")
        wait.until(lambda d: "last seen" in d.find_element(By.TAG_NAME, "main").text)

        driver.get(url + "api/docs")  # Chromium here resolves no name but 127.0.0.1: no CDN
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    finally:
        driver.quit()
