"""Real parts for the tests: a Mosquitto per test on a free port, simulators serving
real Modbus sockets in a background event loop, and an independent MQTT subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from contract import batch
from contract.config import load_site
from contract.message import Reading
from jcm.broker import Mosquitto, free_port, listens, stop_process, wait_for_port
from jcm.influxd import influxd_config
from simulators.modbus_server import SiteSimulator

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def write_site(tmp_path: Path, devices: list[dict], name: str = "test-site", **fields) -> Path:
    """Write a site config using the shipped profiles; returns its path."""
    site = {
        "site": name, "name": "Test site", "country": "MN", "timezone": "Asia/Ulaanbaatar",
        "latitude": 47.9, "longitude": 106.9, "commissioned": "2024-01-01",
        "jcm_project": "test", "methodology": "MN_AM003", "methodology_version": "2.0",
        "gateway": "gw-test", "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "devices": devices,
    }
    site.update(fields)
    sites = tmp_path / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    path = sites / f"{name}.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    profiles = tmp_path / "profiles"
    if not profiles.exists():
        profiles.symlink_to(PROFILES)
    return path


def tcp_device(device_id: str, profile: str, port: int, kind: str = "power_meter", unit_id: int = 1,
               interval: float = 0.5, **extra) -> dict:
    return {"id": device_id, "kind": kind, "profile": profile, "poll_interval": interval,
            "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "unit_id": unit_id, "timeout": 0.5},
            **extra}


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A test CA and, signed by it, a server certificate for localhost and a client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=jcm test CA", cwd=d)
    for name, cn in (("server", "localhost"), ("client", "gw-test")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext), cwd=d)
    return d


class RunningSimulator:
    """A SiteSimulator on its own event loop thread."""

    def __init__(self, site, serial_ports=None):
        self.sim = SiteSimulator(site, serial_ports=serial_ports)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SiteSimulator:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)
        return self.sim

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def simulate():
    with contextlib.ExitStack() as stack:
        yield lambda site, serial_ports=None: stack.enter_context(RunningSimulator(site, serial_ports))


class Subscriber:
    """An independent QoS 1 subscriber with a persistent session: survives broker restarts.
    The lines of a backlog's batches (contract/batch.py) count as readings received."""

    def __init__(self, broker: Mosquitto, topic: str = "jcm/v1/+/+/+/reading", username: str | None = None,
                 password: str | None = None):
        self.readings: list[Reading] = []
        self.status: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{broker.port}",
                                  clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), ("jcm/v1/+/+/batch", 1),
                                                                      ("jcm/v1/+/+/status", 1)])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            if msg.topic.endswith("/status"):
                self.status.append(json.loads(msg.payload))
            elif msg.topic.endswith("/batch"):
                self.readings += [Reading.from_json(line) for line in batch.unpack(msg.payload)]
            else:
                self.readings.append(Reading.from_json(msg.payload))

    def seqs(self, gateway: str) -> list[int]:
        with self.lock:
            return [r.seq for r in self.readings if r.gateway == gateway]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        return wait_until(predicate, timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto):
    sub = Subscriber(mosquitto)
    assert sub.wait_for(lambda: sub.client.is_connected(), 10)
    yield sub
    sub.close()


__all__ = ["write_site", "tcp_device", "free_port", "load_site", "Subscriber", "RunningSimulator"]


class ServerProcess:
    """A real database server started from a temporary config on free loopback ports."""

    def __init__(self, argv: list[str], port: int, workdir: Path):
        self.argv, self.port, self.workdir = argv, port, workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        wait_for_port(self.port, timeout=30)
        if listens(self.proc, self.port) is False:  # the port was taken after free_port: not our server answers
            stop_process(self.proc)
            raise RuntimeError(f"{Path(self.argv[0]).name} could not listen on 127.0.0.1:{self.port}: another "
                               f"process has the port (see {self.workdir / 'server.log'})")
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


@pytest.fixture
def influxdb(tmp_path):
    """Debian's InfluxDB 1.6.7: /write and /query (InfluxQL), the store's api=v1 mode."""
    exe = shutil.which("influxd")
    assert exe, "influxd is not installed (apt-get install -y influxdb)"
    d = tmp_path / "influxdb"
    d.mkdir()
    conf, port = influxd_config(d)
    server = ServerProcess([exe, "-config", str(conf)], port, d).start()
    _http("POST", f"http://127.0.0.1:{port}/query", {"q": "CREATE DATABASE jcm"})
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "influxdb"])
def store_url(request, tmp_path):
    """The URL of an empty store, once SQLite and once InfluxDB 1.6.7 (a test that takes it runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jcm.db"
    influx = request.getfixturevalue("influxdb")
    return f"influxdb://127.0.0.1:{influx.port}?api=v1&db=jcm&timeout=5"


@pytest.fixture
def victoriametrics(tmp_path):
    """VictoriaMetrics: a real server of InfluxDB's /api/v2/write endpoint."""
    exe = shutil.which("victoria-metrics")
    assert exe, "victoria-metrics is not installed (apt-get install -y victoria-metrics)"
    d = tmp_path / "vm"
    d.mkdir()
    port = free_port()
    server = ServerProcess([exe, f"-storageDataPath={d}/data", f"-httpListenAddr=127.0.0.1:{port}",
                            "-retentionPeriod=100y", "-loggerLevel=ERROR"], port, d).start()
    yield server
    server.stop()


def _http(method: str, url: str, fields: dict | None = None) -> bytes:
    import urllib3

    resp = urllib3.PoolManager().request(method, url, fields=fields, encode_multipart=False)
    assert resp.status < 300, resp.data
    return resp.data


def reference_site(name: str):
    """One of the five shipped site configs."""
    return load_site(REPO / "config" / "sites" / f"{name}.yaml")


def store_copy(db, tmp_path):
    """A test's own copy of a store prepared once per module (history is slow to write)."""
    from store.sqlite_store import SqliteStore

    path = tmp_path / "jcm.db"
    shutil.copy(db, path)
    return SqliteStore(path)


def rewrite_channel(store, site: str, device: str, channel: str, start, end, change) -> int:
    """Change the stored values of one channel with start <= ts < end to ``change(value, ts)``, as
    someone with write access to the store could: a message of that channel alone at each instant,
    which the store merges into the one there (the other channels stay). Returns how many changed."""
    from contract.message import Quality

    rows = store.read(site, start, end, devices=[device], channels=[channel])
    store.write([Reading(site=site, gateway=g, device=device, ts=t.to_pydatetime(), values={channel: change(v, t)},
                         quality={channel: Quality(q)} if q else {})
                 for t, g, v, q in zip(rows["ts"], rows["gateway"], rows["value"], rows["quality"])])
    return len(rows)


def fill_history(store, site, first, last, step_s: float = 900.0) -> None:
    """Simulated readings of the channels the site's monitoring plan reads, first..last."""
    from simulators.history import history

    for readings in history(site, first, last, step_s=step_s, channels=set(site.monitoring_channels)):
        store.write(readings)


def fuzz_examples(default: int) -> int:
    """How many examples a property-based or fuzz test runs: ``default`` in `make test`,
    ``JCM_FUZZ_EXAMPLES`` for a long run (e.g. ``JCM_FUZZ_EXAMPLES=5000 make test PYTEST_ARGS='-m fuzz'``)."""
    import os
    return int(os.environ.get("JCM_FUZZ_EXAMPLES", default))


def wait_until(predicate, timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
