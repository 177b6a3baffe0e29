"""The live view's stream of server-sent events under a flood, through a real Mosquitto and
the real server: a gateway with a valid password may publish as fast as its link allows,
on its own site's topics only."""

import contextlib
import datetime as dt
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from contract.config import load_site
from contract.message import Reading
from jcm.broker import free_port, wait_for_port
from jcm.demo import Dashboard
from liveview.app import LiveView, create_app
from processing.ledger import Ledger
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, wait_until

SOLAR = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
BIOGAS = load_site(REPO / "config" / "sites" / "ph-biogas.yaml")


class Stream:
    """A client of /api/stream reading it as fast as it comes: the events, in order."""

    def __init__(self, port: int, query: str, source: str = "127.0.0.1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.sock.sendall(f"GET /api/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.events: list[tuple[str, dict]] = []
        self.received = b""
        threading.Thread(target=self._read, daemon=True).start()

    def connected(self) -> bool:
        """Whether the server has answered (its status line and the stream's first field)."""
        return b"retry:" in self.received

    def refusal(self) -> dict | None:
        """The JSON of a 503 answer once it is in; None while none (or another answer) came."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 503 ") or not body.rstrip().endswith(b"}"):
            return None
        return json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])

    def _read(self):
        buf = b""
        with contextlib.suppress(OSError):  # closed
            self._events(buf)

    def _events(self, buf: bytes):
        while chunk := self.sock.recv(65536):
            if len(self.received) < 4096:
                self.received += chunk
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
                if "event" in fields:
                    self.events.append((fields["event"], json.loads(fields["data"])))

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def vanish(self):
        """Gone without closing: a reset, as when the client's machine drops the connection."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.shutdown(socket.SHUT_RD)  # wakes the reading thread, which holds the socket open
        self.sock.close()


@pytest.fixture
def live(tmp_path, mosquitto):
    view = LiveView([SOLAR, BIOGAS], mosquitto.url, SqliteStore(tmp_path / "jcm.db"), str(tmp_path / "alarms.sqlite"))
    port = free_port()
    dash = Dashboard(create_app(view), "127.0.0.1", port)
    dash.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    status = {"schema": 1, "site": BIOGAS.site, "gateway": BIOGAS.gateway, "state": "online"}
    pub.publish(f"jcm/v1/{BIOGAS.site}/{BIOGAS.gateway}/status", json.dumps(status), qos=1, retain=True)
    assert wait_until(lambda: view.state.gateways[BIOGAS.site][BIOGAS.gateway]["state"] == "online", 15)
    yield view, port, pub
    pub.disconnect()
    pub.loop_stop()
    dash.stop()


def test_a_flood_on_one_site_does_not_cost_another_sites_page_its_events(live):
    """Every event was queued for every open page, whichever site it showed: one gateway's
    flood filled the queue (1000 events) of each page of the other sites, whose own readings
    were then dropped, silently. A page whose stream cannot keep up is told so."""
    view, port, pub = live
    solar, biogas = Stream(port, "site=mn-solar"), Stream(port, "site=ph-biogas")
    assert wait_until(lambda: len(view.clients) == 2, 10)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    for i in range(3000):
        r = Reading(site=BIOGAS.site, gateway=BIOGAS.gateway, device="genset-1",
                    ts=start + dt.timedelta(milliseconds=i), values={"active_power": float(i)}, seq=i + 1)
        pub.publish(f"jcm/v1/{BIOGAS.site}/{BIOGAS.gateway}/genset-1/reading", r.to_json(), qos=0)
    now = dt.datetime.now(dt.UTC)
    solar_readings = [("inv-01", "ac_power"), ("inv-02", "ac_power"), ("poc-meter", "active_power")]
    for n, (device, channel) in enumerate(solar_readings):
        r = Reading(site=SOLAR.site, gateway=SOLAR.gateway, device=device, ts=now, values={channel: 1.0}, seq=n + 1)
        pub.publish(f"jcm/v1/{SOLAR.site}/{SOLAR.gateway}/{device}/reading", r.to_json(), qos=1)
    assert wait_until(lambda: next(d for d in view.state.snapshot(SOLAR.site, now)["devices"]
                                   if d["id"] == "poc-meter")["last_seen"] is not None, 30)
    assert wait_until(lambda: len([e for e in solar.events if e[0] == "reading"]) >= 3, 5), solar.events[:5]
    assert [e[1]["device"] for e in solar.events] == ["inv-01", "inv-02", "poc-meter"]
    # the flooded site's own page: what it missed, it is told it missed (it then reloads the site)
    assert wait_until(lambda: any(e[0] == "missed" for e in biogas.events)
                      or len([e for e in biogas.events if e[0] == "reading"]) == 3000, 10)
    solar.close(), biogas.close()


def test_open_streams_are_capped_in_all_and_per_client_address(live):
    """Each stream holds a queue of up to 1,000 events: any client (with the token, or on
    loopback without one) could open streams without end and grow the server's memory and CPU.
    The next one is refused with a 503 naming its limit; a stream closed or reset gives its slot back."""
    view, port, pub = live
    view.max_streams = 10  # 8 a client address: the default

    def opened(streams):
        assert wait_until(lambda: all(s.connected() or s.refusal() for s in streams), 10)
        return [s for s in streams if s.connected()]

    first = opened([Stream(port, "site=mn-solar") for _ in range(8)])
    assert len(first) == 8 and len(view.clients) == 8
    ninth = Stream(port, "site=mn-solar")
    assert wait_until(ninth.refusal, 10), ninth.received
    assert ninth.refusal()["limit"] == "max_streams_per_address" and "127.0.0.1" in ninth.refusal()["error"]
    other = opened([Stream(port, "site=ph-biogas", source="127.0.0.2") for _ in range(2)])
    assert len(other) == 2 and len(view.clients) == 10
    third = Stream(port, "", source="127.0.0.3")
    assert wait_until(third.refusal, 10) and third.refusal() == {
        "error": "too many open streams: 10 at most (dashboard --max-streams)", "limit": "max_streams", "value": 10}
    assert len(view.clients) == 10  # the refused hold nothing
    first.pop().vanish()
    assert wait_until(lambda: len(view.clients) == 9, 10)
    assert opened([Stream(port, "", source="127.0.0.3")])
    first.pop().close()
    assert wait_until(lambda: len(view.clients) == 9, 10)
    assert opened([Stream(port, "site=mn-solar")])
    for s in first + other:
        s.close()
    assert wait_until(lambda: len(view.clients) == 2, 10)


@pytest.mark.slow
def test_a_page_refused_its_stream_says_so_and_follows_once_a_slot_is_free(live):
    """The browser gives up on a stream answered 503 for good: the page would have gone on
    looking live without its live values."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    view, port, pub = live
    view.max_streams_per_address = 1
    script = Stream(port, "")
    assert wait_until(script.connected, 10)
    driver = chrome()
    try:
        # the page asks again after 30 s: here after 0.3 s
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
            "const later = window.setTimeout.bind(window);"
            "window.setTimeout = (f, ms, ...a) => later(f, ms >= 30000 ? 300 : ms, ...a);")})
        driver.get(f"http://127.0.0.1:{port}/sites/{BIOGAS.site}")
        banner = "return !document.querySelector('#stream').hidden && document.querySelector('#stream').textContent"
        shown = WebDriverWait(driver, 20).until(lambda d: d.execute_script(banner))
        assert "refused this page its live values" in shown
        script.close()
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.querySelector('#stream').hidden"))
        assert wait_until(lambda: len(view.clients) == 1, 10)
    finally:
        driver.quit()


@pytest.mark.slow
def test_a_flood_of_status_changes_does_not_make_each_page_a_flood_of_requests(live):
    """Each gateway, alarm or missed event has the page read the whole site again (its energy
    from the store): a gateway flipping its status 400 times had every open page of the site
    send 400 requests."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    view, port, pub = live
    reads = []
    detail = view.site_detail
    view.site_detail = lambda site: reads.append(site) or detail(site)
    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{port}/sites/{BIOGAS.site}")
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", "#devices tbody tr"))
        assert wait_until(lambda: len(view.clients) == 1, 10)
        before = len(reads)
        topic = f"jcm/v1/{BIOGAS.site}/{BIOGAS.gateway}/status"
        for i in range(400):
            state = ("offline", "online")[i % 2]
            pub.publish(topic, json.dumps({"schema": 1, "site": BIOGAS.site, "gateway": BIOGAS.gateway,
                                           "state": state}), qos=1)
        time.sleep(3)
        assert len(reads) - before <= 5, len(reads) - before
    finally:
        driver.quit()


@pytest.mark.slow
def test_a_live_view_cut_off_from_its_broker_says_so_and_blames_no_device(live, mosquitto):
    """The live view's own link to the broker down: every device of every site went stale, a
    device_stale alarm opened for each (stored as evidence), and nothing on the page said that
    the fault was the live view's own."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    view, port, pub = live
    now = dt.datetime.now(dt.UTC)
    r = Reading(site=BIOGAS.site, gateway=BIOGAS.gateway, device="genset-1", ts=now, values={"active_power": 1.0},
                seq=1)
    pub.publish(f"jcm/v1/{BIOGAS.site}/{BIOGAS.gateway}/genset-1/reading", r.to_json(), qos=1)
    assert wait_until(lambda: view.state.devices[BIOGAS.site]["genset-1"].last_seen is not None, 10)
    assert get_json(port, "/api/sites")["broker_connected"] is True
    mosquitto.stop()
    assert wait_until(lambda: not view.broker.connected.is_set(), 10)
    assert get_json(port, f"/api/sites/{BIOGAS.site}")["broker_connected"] is False
    later = now + dt.timedelta(minutes=5)
    assert [c for c in view.evaluate_alarms(later) if c["kind"].startswith(("device_", "gateway_"))] == []
    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element("id", "broker").is_displayed())
        assert "not connected to the broker" in driver.find_element("id", "broker").text
    finally:
        driver.quit()


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.load(resp)


def test_the_live_view_stops_while_a_page_is_open(tmp_path):
    """Uvicorn waits for every response to end before it stops, and a page's stream never ends:
    with one page open, `jcm dashboard` did not stop on SIGTERM (systemd and docker then kill
    it, after 90 s and 10 s), nor on its first Ctrl-C."""
    SqliteStore(tmp_path / "jcm.db").close()
    Ledger(tmp_path / "ledger.sqlite").close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jcm.cli", "dashboard", "--port", str(port),
                             "--broker", f"mqtt://127.0.0.1:{free_port()}", "--store", f"sqlite:///{tmp_path}/jcm.db",
                             "--ledger", str(tmp_path / "ledger.sqlite"), "--alarms", str(tmp_path / "alarms.sqlite")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, timeout=30)
        page = Stream(port, "site=mn-solar")
        assert wait_until(page.connected, 10)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=30)
        # uvicorn ends by the signal it was stopped with, once stopped (systemd counts that a clean stop)
        assert time.monotonic() - t0 < 10 and proc.returncode in (0, -signal.SIGTERM), proc.stderr.read()
        page.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_jcm_dashboard_takes_its_stream_limits_from_its_options(tmp_path):
    SqliteStore(tmp_path / "jcm.db").close()
    Ledger(tmp_path / "ledger.sqlite").close()
    args = [sys.executable, "-m", "jcm.cli", "dashboard", "--broker", f"mqtt://127.0.0.1:{free_port()}",
            "--store", f"sqlite:///{tmp_path}/jcm.db", "--ledger", str(tmp_path / "ledger.sqlite"),
            "--alarms", str(tmp_path / "alarms.sqlite")]
    wrong = subprocess.run([*args, "--max-streams", "0"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "--max-streams: must be a whole number of at least 1, not '0'" in wrong.stderr
    port = free_port()
    proc = subprocess.Popen([*args, "--port", str(port), "--max-streams", "3", "--max-streams-per-address", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        one, two, three = Stream(port, ""), Stream(port, ""), Stream(port, "", source="127.0.0.2")
        assert wait_until(lambda: one.connected() and two.refusal() and three.connected(), 10)
        assert two.refusal()["limit"] == "max_streams_per_address" and two.refusal()["value"] == 1
        one.close(), three.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_page_whose_stream_comes_back_reads_the_site_again(tmp_path):
    """The browser opens a page's stream again by itself (the live view restarted, the network
    came back), but what happened meanwhile was not sent: the page showed it only at its next
    15 s refresh, or never if that refresh failed. It reads the site when its stream is back."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_liveview import chrome

    port = free_port()

    def serve(state):
        view = LiveView([SOLAR], f"mqtt://127.0.0.1:{free_port()}", SqliteStore(tmp_path / "jcm.db"),
                        str(tmp_path / "alarms.sqlite"))
        body = {"schema": 1, "site": SOLAR.site, "gateway": SOLAR.gateway, "state": state}
        view.state.on_message(f"jcm/v1/{SOLAR.site}/{SOLAR.gateway}/status", json.dumps(body).encode())
        dash = Dashboard(create_app(view), "127.0.0.1", port)
        dash.start()
        return dash

    dash = serve("offline")
    driver = chrome()
    try:
        # the page's periodic refresh off: what it shows comes from its stream and what that triggers
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "window.setInterval = () => 0;"})
        driver.get(f"http://127.0.0.1:{port}/sites/{SOLAR.site}")
        gateway = "return document.querySelector('#gw [data-state]')?.dataset.state"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(gateway) == "offline")
        dash.stop()
        dash = serve("online")  # the live view restarted; the gateway came back meanwhile
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(gateway) == "online")
    finally:
        driver.quit()
        dash.stop()
