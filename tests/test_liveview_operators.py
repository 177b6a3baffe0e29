"""What operators read on the live view, without a browser: energy counted as the
processor counts it, the fleet overview's figures and order, months that say why,
Swagger UI from the package, the message catalogues, and the simulator's fault port."""

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from contract.config import load_site
from contract.message import Reading
from jcm.broker import free_port
from jcm.demo import Dashboard
from liveview import app
from liveview.app import STATIC, LiveView, create_app
from liveview.energy import CounterTotals, readable_unit
from liveview.fleet import attention, capacity_kw, power_now_kw
from processing.daily_values import counter_daily, local_days
from processing.ledger import Ledger
from store.sqlite_store import SqliteStore
from tests.conftest import REPO

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
ZONE = SITE.zone
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=ZONE).astimezone(dt.UTC)
MESSAGES = REPO / "liveview" / "messages"


def counter_readings(first: dt.datetime, last: dt.datetime, reset_at: dt.datetime) -> list[Reading]:
    """poc-meter's export counter read every 10 s, 1 kWh a reading, reset to 0 at ``reset_at``."""
    out, value, t, seq = [], 1_558_504.0, first, 0
    while t <= last:
        value = 0.5 if t == reset_at else value + 1.0
        seq += 1
        out.append(Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter", ts=t,
                           values={"energy_export": value}, seq=seq))
        t += dt.timedelta(seconds=10)
    return out


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "jcm.db")
    first = dt.datetime(2026, 11, 28, 22, 0, tzinfo=ZONE).astimezone(dt.UTC)
    reset = dt.datetime(2026, 11, 29, 10, 0, tzinfo=ZONE).astimezone(dt.UTC)
    s.write(counter_readings(first, NOW, reset))
    yield s
    s.close()


def test_energy_today_after_a_counter_reset_is_what_the_processor_counts(store):
    """Before: today's EG read the last value minus the first (-1,558,504 kWh after a reset)."""
    figures = CounterTotals(store).figures(SITE, NOW)
    eg = figures["EG[PV-1]"]
    # 12 h of 360 kWh/h; the reset interval counts what the meter registered since it restarted (0.5)
    assert eg == {"today": pytest.approx(4319.5), "month": pytest.approx(720 + 4319.5), "unit": "kWh"}
    # the same logic as the processor's daily values: the month so far agrees to the kWh
    rows = store.read(SITE.site, NOW - dt.timedelta(days=3), NOW + dt.timedelta(seconds=1))
    series = pd.Series(rows["value"].to_numpy(float), index=pd.DatetimeIndex(rows["ts"]))
    daily = counter_daily(series, ZONE, local_days(dt.date(2026, 11, 1), dt.date(2026, 11, 29)),
                          "poc-meter.energy_export", None, SITE.counter_limit_per_h("poc-meter.energy_export"),
                          unit="kWh")
    assert daily.values.sum() == pytest.approx(eg["month"])
    assert daily.values[dt.date(2026, 11, 29)] == pytest.approx(eg["today"])


def test_no_small_negatives_and_one_readable_unit(store):
    jitter = [Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter", ts=NOW + dt.timedelta(seconds=s),
                      values={"energy_export": v}, seq=10_000 + s) for s, v in ((5, 5000.0), (6, 4999.99953))]
    store.write(jitter)  # a register read 0.47 Wh lower: not a negative day
    eg = CounterTotals(store).figures(SITE, NOW + dt.timedelta(seconds=6))["EG[PV-1]"]
    assert eg["today"] >= 0 and eg["month"] >= eg["today"]
    assert readable_unit(9_999e3, "energy") == ("kWh", 1e3)
    assert readable_unit(10_000e3, "energy") == ("MWh", 1e6)  # 10 000 kWh reads as 10 MWh
    assert readable_unit(12e9, "energy") == ("GWh", 1e9)


def test_power_now_against_the_nameplate_and_attention_order():
    assert capacity_kw(SITE) == pytest.approx(8300.0)  # poc-meter is rated 8.3 MW
    live = [{"id": "poc-meter", "state": "online", "values": {"active_power": -1500.0}}]
    assert power_now_kw(SITE, live) == pytest.approx(1500.0)  # export is negative at the meter
    assert power_now_kw(SITE, [{**live[0], "state": "stale"}]) is None  # no live value, not a stale one
    ranked = sorted([("ok", attention("online", {"online": 5}, 0)),
                     ("alarms", attention("online", {"online": 5}, 2)),
                     ("gw", attention("offline", {"unknown": 5}, 1)),
                     ("dev", attention("online", {"online": 4, "offline": 1}, 1))],
                    key=lambda r: ("gateway_down", "devices_down", "alarms", "ok").index(r[1]))
    assert [r[0] for r in ranked] == ["gw", "dev", "alarms", "ok"]


def test_the_site_needing_attention_comes_first(tmp_path, store):
    biogas = load_site(REPO / "config" / "sites" / "ph-biogas.yaml")
    view = LiveView([SITE, biogas], "mqtt://127.0.0.1:1", store, str(tmp_path / "alarms.sqlite"))

    def gateway(site, state):
        body = {"site": site.site, "gateway": site.gateway, "state": state}
        view.state.on_message(f"jcm/v1/{site.site}/{site.gateway}/status", json.dumps(body).encode())

    gateway(SITE, "online"), gateway(biogas, "offline")
    assert [r["site"] for r in view.overview()] == ["ph-biogas", "mn-solar"]
    gateway(SITE, "offline"), gateway(biogas, "online")
    assert [r["site"] for r in view.overview()] == ["mn-solar", "ph-biogas"]


def record(ledger, month, status, er, er_unrounded, reasons=(), findings=()):
    summary = {"input_hash": f"h-{month}", "methodology": "MN_AM003", "version": "2.0", "status": status,
               "RE": er_unrounded, "PE": 0.0, "ER_unrounded": er_unrounded, "ER": er, "provisional": False,
               "reasons": list(reasons)}
    ledger.record(SITE.site, month, summary, {"findings": list(findings)},
                  {"defaults_hash": "d", "config_hash": "c", "code_version": "x"})


def test_months_say_why_and_a_month_rounding_to_zero_says_so(tmp_path, store):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record(ledger, "2026-08", "verified", 412, 412.8)
    record(ledger, "2026-09", "needs_review", 0, 0.734, ["completeness 91.0 % below 95 %"],
           [{"check": "gap", "source": "poc-meter.energy_export", "severity": "review", "detail": "3.5 h without a "
             "valid reading"}, {"check": "gateway_flag", "source": "x.y", "severity": "info", "detail": "noise"}])
    view = LiveView([SITE], "mqtt://127.0.0.1:1", store, str(tmp_path / "alarms.sqlite"), ledger=ledger)
    verified, months = view._months(SITE.site)
    assert verified["month"] == "2026-08"
    sep = months[1]
    assert sep["reasons"] == ["completeness 91.0 % below 95 %"]
    assert [f["check"] for f in sep["findings"]] == ["gap"]  # review and fail findings, not info
    assert sep["rounded_to_zero"] and sep["ER_unrounded"] == pytest.approx(0.734)
    assert not months[0]["rounded_to_zero"] and months[0]["findings"] == []


@pytest.fixture
def served(tmp_path, store):
    view = LiveView([SITE], f"mqtt://127.0.0.1:{free_port()}", store, str(tmp_path / "alarms.sqlite"))
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    yield f"http://127.0.0.1:{port}"
    dash.stop()


def test_api_docs_need_no_internet(served):
    """Before: /api/docs loaded Swagger UI from cdn.jsdelivr.net (a blank page offline)."""
    html = urllib.request.urlopen(served + "/api/docs", timeout=10).read().decode()
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)""", html) + re.findall(r"url: *'([^']+)'", html)
    assert urls and all(u.startswith("/") for u in urls), urls
    for u in urls:
        assert urllib.request.urlopen(served + u, timeout=10).status == 200


def test_the_overview_reads_a_sites_energy_at_most_every_few_seconds(tmp_path, monkeypatch):
    """Every open overview asks for every site's row every 5 s, and each row counted a day of
    each of the site's counters again (tens of ms of CPU a site, a request). The figures are
    now kept a few seconds, and never served older than that, nor across the site's midnight."""
    monkeypatch.setattr(app, "ENERGY_CACHE_S", 60.0)  # however slow this machine: the requests below are within it
    store = SqliteStore(tmp_path / "jcm.db")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    counter = [Reading(site=SITE.site, gateway=SITE.gateway, device="poc-meter",
                       ts=start + dt.timedelta(seconds=10 * i), values={"energy_export": 1000.0 + i}, seq=i + 1)
               for i in range(31)]
    store.write(counter[:25])
    view = LiveView([SITE], f"mqtt://127.0.0.1:{free_port()}", store, str(tmp_path / "alarms.sqlite"))
    reads = []
    figures = view.totals.figures
    view.totals.figures = lambda site, now: reads.append(now) or figures(site, now)
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    try:
        def energy():
            return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sites", timeout=10))["sites"][0][
                "energy_main"]["today"]

        first = energy()
        store.write(counter[25:])  # 6 kWh more
        assert [energy() for _ in range(3)] == [first] * 3 and len(reads) == 1
        monkeypatch.setattr(app, "ENERGY_CACHE_S", 0.5)
        time.sleep(0.5)
        assert energy() == pytest.approx(first + 6.0) and len(reads) == 2
        # the site's next day is read afresh, however soon
        view.energy(SITE, reads[-1] + dt.timedelta(days=1))
        assert len(reads) == 3
    finally:
        dash.stop()
        store.close()


def test_overview_rows_carry_every_figure(served):
    body = json.load(urllib.request.urlopen(served + "/api/sites", timeout=10))
    (row,) = body["sites"]
    assert row["capacity_kw"] == pytest.approx(8300.0) and row["attention"] == "gateway_down"  # nothing heard yet
    assert row["energy_main_key"] == "EG[PV-1]" and row["energy_main"]["unit"] in ("kWh", "MWh")
    assert set(row["devices"]) == {"online", "faulted", "stale", "offline", "unknown"}
    assert urllib.request.urlopen(served + "/static/messages/ja", timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(served + "/static/messages/..%2Fapp", timeout=10)
    assert exc.value.code == 404


def test_every_label_is_in_both_catalogues():
    en, ja = (json.loads((MESSAGES / f"{lang}.json").read_text()) for lang in ("en", "ja"))
    assert en.keys() == ja.keys()
    placeholders = re.compile(r"\{(\w+)\}")
    dates = {"chart_date", "chart_date_long"}  # uPlot date templates: each language picks its fields
    assert all(set(placeholders.findall(en[k])) == set(placeholders.findall(ja[k])) for k in en.keys() - dates)
    js = (STATIC / "app.js").read_text()
    used = set(re.findall(r"""\bt\("([a-z_]+)\"""", js)) - {"key"}  # "key" is the comment's example
    used |= {k for page in ("deployment.html", "site.html")
             for k in re.findall(r'data-i18n="([a-z_]+)"', (STATIC / page).read_text())}
    assert used - en.keys() == set()
    assert {f"alarm.{k}" for k in __import__("liveview.alarms", fromlist=["KINDS"]).KINDS} - en.keys() == set()


def test_fault_injection_for_an_unknown_device_is_a_404_listing_the_devices():
    """Before: 400 with the text "KeyError: 'inv-99'"."""
    from simulators.control import serve_control
    from simulators.modbus_server import SiteSimulator

    server = serve_control(SiteSimulator(SITE), port := free_port())
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/faults", method="POST",
                                     data=json.dumps({"device": "inv-99", "kind": "timeout"}).encode())
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        body = json.loads(exc.value.read())
        assert exc.value.code == 404 and "inv-99" in body["error"]
        assert body["devices"] == sorted(d.id for d in SITE.devices)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_site_page_lists_why_a_month_needs_review_and_a_zero_month_in_a_browser(tmp_path, store):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    ledger = Ledger(tmp_path / "ledger.sqlite")
    record(ledger, "2026-09", "needs_review", 0, 0.734, ["completeness 91.0 % below 95 %"],
           [{"check": "gap", "source": "poc-meter.energy_export", "severity": "review",
             "detail": "3.5 h without a valid reading"}])
    view = LiveView([SITE], f"mqtt://127.0.0.1:{free_port()}", store, str(tmp_path / "alarms.sqlite"), ledger=ledger)
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{port}/sites/mn-solar")
        row = WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-month='2026-09']"))[0]
        assert "rounds down to 0 t: the unrounded figure is 0.734 t" in row.text
        row.find_element(By.TAG_NAME, "summary").click()
        assert "completeness 91.0 % below 95 %" in row.text and "3.5 h without a valid reading" in row.text
    finally:
        driver.quit()
        dash.stop()


def test_sites_on_different_local_days_keep_each_others_month_before_today(store):
    """The part of the month before today is read once a day a site. Between the midnights of
    two sites' time zones (16:00 to 19:00 UTC for Ulaanbaatar and the Maldives) each site's
    figures threw the other's away: each read of either counted its whole month again."""
    west = SITE.model_copy(update={"site": "mv-solar", "timezone": "Indian/Maldives"})
    now = dt.datetime(2026, 11, 29, 17, 0, tzinfo=dt.UTC)  # 30 Nov 01:00 in Ulaanbaatar, 29 Nov 22:00 in Malé
    starts = []
    read = store.read
    store.read = lambda site, start, *a, **k: starts.append((site, start, *map(tuple, k.values()))) or read(
        site, start, *a, **k)
    totals = CounterTotals(store)
    for _ in range(3):
        for site in (SITE, west):
            totals.figures(site, now)
    months = [s for s in starts if s[1] < now - dt.timedelta(days=1, hours=1)]  # not today's own read
    assert len(months) == len(set(months)) > 0, months
