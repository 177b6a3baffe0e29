"""The live view's trust boundaries: what MQTT messages may change (the topic is the
sender's identity, the clock bounds timestamps) and what the HTTP server accepts
(token bytes, query values, cookie flags, Host header), against the real server."""

import datetime as dt
import http.client
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from contract.config import load_site
from contract.message import Quality, Reading
from jcm.broker import free_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from liveview.state import LiveState
from processing.ledger import Ledger
from store.sqlite_store import SqliteStore
from tests.conftest import REPO

SOLAR = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
BIOGAS = load_site(REPO / "config" / "sites" / "ph-biogas.yaml")
NOW = dt.datetime.now(dt.UTC)


def status_topic(site, gateway):
    return f"jcm/v1/{site}/{gateway}/status"


def status(site, gateway, state):
    return json.dumps({"schema": 1, "site": site, "gateway": gateway, "state": state}).encode()


def reading(site=SOLAR, device="poc-meter", ts=None, gateway=None, seq=1, **values):
    return Reading(site=site.site, gateway=gateway or site.gateway, device=device, ts=ts or NOW,
                   values=values or {"active_power": -1500.0, "energy_export": 1000.0, "energy_import": 5.0}, seq=seq)


def on_topic(state, r, site=SOLAR, device="poc-meter"):
    return state.on_message(f"jcm/v1/{site.site}/{site.gateway}/{device}/reading", r.to_json().encode())


def gateway_state(state, site):
    return state.snapshot(site.site, NOW)["gateways"][site.gateway]["state"]


def poc(state):
    return next(d for d in state.snapshot(SOLAR.site, NOW)["devices"] if d["id"] == "poc-meter")


def test_a_status_is_believed_only_for_the_gateway_its_topic_names(caplog):
    state = LiveState([SOLAR, BIOGAS])
    state.on_message(status_topic(SOLAR.site, SOLAR.gateway), status(SOLAR.site, SOLAR.gateway, "online"))
    # ph-biogas (allowed by the ACL to write under its own site) claims mn-solar is offline
    with caplog.at_level(logging.WARNING, logger="liveview.state"):
        assert state.on_message(status_topic(BIOGAS.site, BIOGAS.gateway),
                                status(SOLAR.site, SOLAR.gateway, "offline")) is None
    assert gateway_state(state, SOLAR) == "online" and gateway_state(state, BIOGAS) == "unknown"
    assert "the payload says site 'mn-solar'" in caplog.text
    # nor can a site invent gateways, or states the page does not know
    state.on_message(status_topic(BIOGAS.site, "gw-fake"), status(BIOGAS.site, "gw-fake", "offline"))
    state.on_message(status_topic(BIOGAS.site, BIOGAS.gateway), status(BIOGAS.site, BIOGAS.gateway, "<b>"))
    assert state.snapshot(BIOGAS.site, NOW)["gateways"] == {BIOGAS.gateway: {"state": "unknown", "ts": None}}


def test_a_flood_of_one_status_is_one_event(caplog):
    """Each gateway event makes every open page of the site fetch it again: 10,000 repeats of
    a status a second would have every viewer's browser ask 10,000 times a second."""
    state = LiveState([SOLAR])
    topic = status_topic(SOLAR.site, SOLAR.gateway)
    events = [state.on_message(topic, status(SOLAR.site, SOLAR.gateway, s)) for s in ["online"] * 1000 + ["offline"]]
    assert [e["state"] for e in events if e is not None] == ["online", "offline"]
    assert gateway_state(state, SOLAR) == "offline"


@pytest.mark.parametrize("claim", [{"device": "inv-01"}, {"gateway": "gw-other"}, {"site": BIOGAS}])
def test_a_reading_whose_payload_disagrees_with_its_topic_is_ignored(claim, caplog):
    state = LiveState([SOLAR, BIOGAS])
    fields = {"site": SOLAR, "device": "poc-meter", **claim}
    with caplog.at_level(logging.WARNING, logger="liveview.state"):
        assert on_topic(state, reading(**fields)) is None
    assert "ignored reading" in caplog.text
    assert all(d["last_seen"] is None for d in state.snapshot(SOLAR.site, NOW)["devices"])


def test_a_spoofed_reading_on_a_topic_of_60_kb_logs_a_bounded_line(caplog):
    """The topic's device level is the sender's text, as long as the broker lets a packet be."""
    state = LiveState([SOLAR])
    with caplog.at_level(logging.DEBUG, logger="liveview.state"):
        assert on_topic(state, reading(), device="d" * 60_000) is None  # payload: poc-meter
        assert state.on_message(f"jcm/v1/{SOLAR.site}/{SOLAR.gateway}/{'d' * 60_000}/reading", b"{") is None
    assert len(caplog.records) == 2 and all(len(r.getMessage()) < 500 for r in caplog.records)


def test_a_reading_from_2099_does_not_freeze_the_device(caplog):
    state = LiveState([SOLAR])
    with caplog.at_level(logging.WARNING, logger="liveview.state"):
        assert on_topic(state, reading(ts=dt.datetime(2099, 1, 1, tzinfo=dt.UTC), active_power=1.0)) is None
    assert "ahead of this clock" in caplog.text
    assert on_topic(state, reading(active_power=-42.0, seq=2)) is not None
    assert poc(state)["values"]["active_power"] == -42.0
    # the collector's own limit is the shared one: a few seconds of drift are fine
    assert on_topic(state, reading(ts=NOW + dt.timedelta(seconds=60), active_power=-43.0, seq=3)) is not None


def test_a_counter_beyond_float_range_does_not_stop_later_readings():
    rated = SOLAR.model_copy(update={"monitoring": [
        m.model_copy(update={"max_rate_per_h": 1e6}) if "poc-meter.energy_export" in m.sources else m
        for m in SOLAR.monitoring]})
    state = LiveState([rated])
    on_topic(state, reading(energy_export=-(10 ** 310), energy_import=5.0, active_power=1.0))
    for i in (1, 2):
        on_topic(state, reading(ts=NOW + dt.timedelta(seconds=i), seq=i + 1, active_power=-7.0 - i,
                                energy_export=5.0, energy_import=6.0))
    assert poc(state)["values"]["active_power"] == -9.0


# -- the HTTP server -------------------------------------------------------------------
@pytest.fixture
def serve(tmp_path):
    """Start a live view (no broker needed for these requests); returns its port."""
    servers = []

    def start(**kwargs):
        view = LiveView([SOLAR], f"mqtt://127.0.0.1:{free_port()}", SqliteStore(tmp_path / "jcm.db"),
                        str(tmp_path / "alarms.sqlite"), **kwargs)
        port = free_port()
        dash = Dashboard(create_app(view), "127.0.0.1", port)
        dash.start()
        servers.append(dash)
        return port

    yield start
    for dash in servers:
        dash.stop()


def request(port, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_any_token_text_is_refused_with_401_not_500(serve):
    port = serve(token="s3cret")
    for headers, path in (({"Authorization": "Bearer s3crét"}, "/api/sites"),
                          ({"Authorization": "Bearer \u00ff\u00fe"}, "/api/sites"),
                          ({}, "/api/sites?token=%C3%A9%E2%82%AC"),
                          ({}, "/api/sites?token=%ED%A0%80"),  # an encoded lone surrogate
                          ({"Cookie": "jcm_token=s3cr\u00e9t"}, "/api/sites")):
        resp, _ = request(port, path, headers)
        assert resp.status == 401, (headers, path, resp.status)
    assert request(port, "/api/sites", {"Authorization": "Bearer s3cret"})[0].status == 200


@pytest.mark.parametrize("hours", ["nan", "inf", "-inf", "-1", "0", "1e308", "1e400", "73", "x"])
def test_history_hours_outside_0_to_72_is_a_422(serve, hours):
    port = serve(token="s3cret")
    resp, body = request(port, f"/api/sites/mn-solar/history?hours={hours}", {"Authorization": "Bearer s3cret"})
    assert resp.status == 422, (hours, resp.status, body)


def test_history_within_the_window_answers(serve):
    port = serve(token="s3cret")
    resp, body = request(port, "/api/sites/mn-solar/history?hours=72", {"Authorization": "Bearer s3cret"})
    assert resp.status == 200 and json.loads(body)["site"] == "mn-solar"


def test_the_token_cookie_is_httponly_strict_and_secure_over_https(serve):
    port = serve(token="s3cret")
    resp, _ = request(port, "/?token=s3cret", {"X-Forwarded-Proto": "https"})
    flags = {p.strip() for p in resp.getheader("set-cookie").lower().split(";")}
    assert resp.status == 303 and {"jcm_token=s3cret", "httponly", "samesite=strict", "secure"} <= flags
    plain = {p.strip() for p in request(port, "/?token=s3cret")[0].getheader("set-cookie").lower().split(";")}
    assert {"httponly", "samesite=strict"} <= plain and "secure" not in plain  # a browser on http would drop it


def test_a_page_opened_with_its_token_in_the_address_goes_to_the_address_without_it(serve):
    """The page was served at its ?token= address: the token stayed in the address bar, the
    history and any address copied from it. The cookie now carries it; API clients keep ?token=."""
    port = serve(token="s3cret")
    for path, location in (("/?token=s3cret", "/"), ("/sites/mn-solar?lang=ja&token=s3cret", "/sites/mn-solar?lang=ja"),
                           ("/api/docs?token=s3cret&token=s3cret", "/api/docs")):
        resp, _ = request(port, path)
        assert (resp.status, resp.getheader("location")) == (303, location), path
        assert resp.getheader("set-cookie").startswith("jcm_token=s3cret;"), path
    assert request(port, "/?token=wrong")[0].status == 401
    resp, body = request(port, "/api/sites?token=s3cret")
    assert resp.status == 200 and json.loads(body)["sites"][0]["site"] == "mn-solar"
    # a link followed from another site: a page that goes on by itself (no quote of the address breaks out)
    resp, body = request(port, "/sites/mn-solar?x='%22%3E%3Cb%3E&token=s3cret", {"Sec-Fetch-Site": "cross-site"})
    assert resp.status == 200 and resp.getheader("set-cookie").startswith("jcm_token=s3cret;")
    assert body.decode() == ("<!doctype html><meta http-equiv=\"refresh\" "
                             "content=\"0; url='/sites/mn-solar?x=%27%22%3E%3Cb%3E'\">")


@pytest.mark.slow
def test_a_browser_opening_a_page_with_its_token_keeps_it_nowhere_but_in_the_cookie(serve):
    """Typed or bookmarked, or followed from a link on another site (where a redirect would lose
    the SameSite=Strict cookie and the page answer 401): the page loads at its address without
    the token, and the token is in no entry of the history."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    port = serve(token="s3cret")
    page = f"http://127.0.0.1:{port}/sites/mn-solar"
    driver = chrome()
    try:
        driver.get(page + "?token=s3cret")
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", "#devices tbody tr"))
        assert driver.current_url == page
        cookie = driver.get_cookie("jcm_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == "s3cret"
        driver.delete_all_cookies()
        driver.get(f"data:text/html,<a id=go href='{page}?token=s3cret'>the live view</a>")
        driver.find_element("id", "go").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", "#devices tbody tr"))
        assert driver.current_url == page
        driver.back()
        assert driver.current_url.startswith("data:"), driver.current_url
    finally:
        driver.quit()


def test_the_pages_answer_head_as_get_without_the_body(serve):
    """A monitoring probe asks HEAD /: the live view answered 405."""
    port = serve(token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    for path in ("/", "/sites/mn-solar", "/api/docs"):
        got, body = request(port, path, auth)
        head, nothing = request(port, path, auth, method="HEAD")
        assert (head.status, nothing) == (200, b""), (path, head.status)
        assert head.getheader("content-type") == got.getheader("content-type") == "text/html; charset=utf-8", path
        assert int(head.getheader("content-length")) == len(body), path
    assert request(port, "/sites/nope", auth, method="HEAD")[0].status == 404
    assert request(port, "/", method="HEAD")[0].status == 401
    head, _ = request(port, "/sites/mn-solar?token=s3cret", method="HEAD")
    assert (head.status, head.getheader("location")) == (303, "/sites/mn-solar")


def test_without_a_token_only_the_bound_and_allowed_host_names_are_served(serve):
    port = serve(allowed_hosts=["liveview.example.org"])
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:8080", "LiveView.Example.org"):
        assert request(port, "/api/sites", {"Host": host})[0].status == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "",
                 "127.0.0.1@attacker.example", "[::1"):
        resp, body = request(port, "/api/sites", {"Host": host})
        assert resp.status == 400 and b"not served here" in body, host


@pytest.mark.parametrize("token", ["\u20acuro-s3cret", "two words", "tab\there"])
def test_a_token_a_browser_cannot_send_is_refused_at_start(tmp_path, token):
    """Headers and cookies carry Latin-1 at most: with a euro sign, every login was a 500."""
    SqliteStore(tmp_path / "jcm.db").close()
    Ledger(tmp_path / "ledger.sqlite").close()
    env = dict(os.environ, JCM_TEST_TOKEN=token)
    done = subprocess.run([sys.executable, "-m", "jcm.cli", "dashboard", "--port", str(free_port()),
                           "--store", f"sqlite:///{tmp_path}/jcm.db", "--ledger", str(tmp_path / "ledger.sqlite"),
                           "--alarms", str(tmp_path / "alarms.sqlite"), "--token-env", "JCM_TEST_TOKEN"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--token-env: the token in JCM_TEST_TOKEN must be visible ASCII" in done.stderr


@pytest.mark.slow
def test_text_from_a_gateway_cannot_reorder_or_mark_up_the_page(tmp_path):
    """An out-of-range flag on a text channel puts the gateway's text in the alarm's detail:
    a right-to-left override (U+202E) made the page show it reversed ("0051-" read "-1500"),
    invisibly. Every such character shows as an escape; markup stays text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    view = LiveView([SOLAR], f"mqtt://127.0.0.1:{free_port()}", SqliteStore(tmp_path / "jcm.db"),
                    str(tmp_path / "alarms.sqlite"))
    view.broker.connected.set()  # as if connected: alarms of what MQTT brings are judged only then
    view.state.on_message(status_topic(SOLAR.site, SOLAR.gateway), status(SOLAR.site, SOLAR.gateway, "online"))
    hostile = "\u202e0051-\u2066<img src=x onerror=window.pwned=1>\x1b[31m\u200b"
    r = Reading(site=SOLAR.site, gateway=SOLAR.gateway, device="inv-01", ts=dt.datetime.now(dt.UTC),
                values={"manufacturer": hostile, "ac_power": 1.0}, quality={"manufacturer": Quality.out_of_range},
                seq=1)
    assert on_topic(view.state, r, device="inv-01") is not None
    view.evaluate_alarms()
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{port}/sites/mn-solar")
        row = WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#alarms tr[data-kind='out_of_range']"))[0]
        detail = row.find_elements(By.TAG_NAME, "td")[-1].get_attribute("textContent")
        assert not re.search("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]", detail), detail
        assert "\\u202e0051-\\u2066<img src=x onerror=window.pwned=1>\\x1b[31m\\u200b" in detail
        assert driver.execute_script("return window.pwned === undefined && !document.querySelector('#alarms img')")
    finally:
        driver.quit()
        dash.stop()


def test_every_page_loads_from_this_server_only(serve, tmp_path):
    """FastAPI serves ReDoc at /redoc unless told not to, from a CDN (a blank page offline, and
    scripts from a third party on an operators' page)."""
    port = serve()
    view = LiveView([SOLAR], f"mqtt://127.0.0.1:{free_port()}", SqliteStore(tmp_path / "routes.db"),
                    str(tmp_path / "routes.sqlite"))
    paths = [r.path.replace("{site}", SOLAR.site) for r in create_app(view).routes
             if "GET" in getattr(r, "methods", ()) and "{" not in r.path.replace("{site}", "")
             and r.path != "/api/stream"]
    assert {"/", "/sites/mn-solar", "/api/docs"} <= set(paths)
    for path in paths + ["/redoc", "/docs"]:
        resp, body = request(port, path)
        if resp.status == 200 and resp.getheader("content-type", "").startswith("text/html"):
            html = body.decode()
            urls = re.findall(r"""(?:src|href)=['"]([^'"]+)""", html) + re.findall(r"url: *'([^']+)'", html)
            assert all(u.startswith("/") and not u.startswith("//") for u in urls), (path, urls)


def test_a_stream_of_a_site_that_is_not_here_is_a_404(serve):
    port = serve()
    resp, body = request(port, "/api/stream?site=nope")
    assert resp.status == 404 and b"no site 'nope'" in body


def test_every_answer_forbids_scripts_from_elsewhere_and_framing(serve):
    """Text from gateways is shown in the pages: were any of it ever to get past the escaping, an
    injected script should find nothing it may run. Before: no such header at all."""
    port = serve(token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    for path, headers in (("/", auth), ("/sites/mn-solar", auth), ("/api/sites", auth), ("/static/app.js", {}),
                          ("/api/sites/nope", auth), ("/api/sites", {}), ("/api/docs", auth)):
        resp, _ = request(port, path, headers)
        csp = resp.getheader("content-security-policy") or ""
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0], path
        assert resp.getheader("x-content-type-options") == "nosniff" and resp.getheader("x-frame-options") == "DENY"


@pytest.mark.slow
def test_the_pages_and_the_api_docs_run_under_their_policy(serve, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    port = serve()
    driver = chrome()
    try:
        for path, shown in (("/", "#fleet tbody tr"), ("/sites/mn-solar", "#devices tbody tr"),
                            ("/api/docs", ".swagger-ui .opblock")):
            driver.get(f"http://127.0.0.1:{port}{path}")
            WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", shown))
    finally:
        driver.quit()


def test_a_flood_of_ignored_messages_is_a_few_log_lines(caplog):
    """Each reading or status the live view ignores was a WARNING line: a gateway sending 5,000
    a second that no stage takes filled the live view's log at 1 MB/s."""
    state = LiveState([SOLAR, BIOGAS])
    topic = f"jcm/v1/{SOLAR.site}/{SOLAR.gateway}/poc-meter/reading"
    bad = json.loads(reading().to_json())
    bad["values"]["invented"] = 1.0
    with caplog.at_level(logging.WARNING, logger="liveview.state"):
        for _ in range(1000):
            assert state.on_message(topic, json.dumps(bad).encode()) is None
            assert state.on_message(status_topic(SOLAR.site, SOLAR.gateway), b"{") is None
        on_topic(state, reading(site=BIOGAS, device="genset-1", invented=1.0), BIOGAS, "genset-1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 11, len(lines)  # ten a minute of mn-solar's, and ph-biogas's own
    assert "in its register map" in lines[0] and any("ph-biogas" in line for line in lines)
    caplog.clear()
    state.log_budget[SOLAR.site] = (state.log_budget[SOLAR.site][0] - 61, state.log_budget[SOLAR.site][1])
    with caplog.at_level(logging.WARNING, logger="liveview.state"):
        state.on_message(topic, json.dumps(bad).encode())
    assert "1990 more messages of site 'mn-solar' ignored in the last minute" in caplog.text
