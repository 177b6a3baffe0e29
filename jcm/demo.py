"""``jcm demo``: the five reference sites end to end on one machine.

A broker (Mosquitto, or the embedded amqtt when Mosquitto is missing), simulated
history written through the store interface (so the processor has whole past months),
the simulators carrying on from that history, one gateway per site, the collector
into the embedded SQLite store, the processor (catch-up now, then its schedule), a
monitoring-period export, and the live view. Everything here is simulated and says so.

Each gateway signs its readings with its own key (``jcm keygen``'s, made once under
``<workdir>/keys``): the demo runs on copies of the site files in ``<workdir>/sites``
that name the key and list its public key, with signatures required. The simulated
history is signed with the same key, as one chain of its own epoch, so that an export of
a past month carries its signed messages and ``jcm verify`` can check it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import dataclasses
import datetime as dt
import glob
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization

from collector.service import Collector
from contract.config import CollectorConfig, load_site
from contract.config.custody import fingerprint
from contract.config.site import Mqtt, Site, TcpConnection
from contract.custody import GENESIS, chain_hash, load_private_key, sign
from contract.message import Reading
from contract.store import SignedMessage
from gateway.service import Gateway
from gateway.signing_key import signing_key
from jcm.broker import Mosquitto, free_port, start_broker
from jcm.keygen import keygen
from jcm.progress import Progress
from liveview.main_channels import POWER_CHANNEL
from processing.ledger import Ledger
from processing.scheduler import Processor
from simulators.history import SIMULATED_CHANNEL, history
from simulators.modbus_server import SiteSimulator
from simulators.plants import plant_for
from store.sqlite_store import SqliteStore

log = logging.getLogger("jcm.demo")


def history_start(today: dt.date) -> dt.date:
    """The first day of the month two months back: two whole past months, then this one."""
    first = today.replace(day=1)
    for _ in range(2):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return first


def fill_history(site: Site, store: SqliteStore, now: dt.datetime):
    """Write simulated history up to ``now`` unless the store has it; return the plant to carry on with."""
    first = history_start(now.astimezone(site.zone).date())
    start = dt.datetime.combine(first, dt.time(), tzinfo=site.zone)
    plant = plant_for(site, start.astimezone(dt.UTC))
    have = not store.read(site.site, start, start + dt.timedelta(hours=1), channels=["simulated"]).empty
    # what the processor needs, what the live view charts, and the mark of simulated data
    channels = {*site.monitoring_channels, "simulated"}
    channels |= {POWER_CHANNEL[d.kind] for d in site.devices if d.kind in POWER_CHANNEL}
    chain = HistoryChain(site)
    pending: list = []
    with Progress(f"history {site.site}", unit="step") as progress:
        for batch in history(site, first, until=now, channels=channels, plant=plant,
                             progress=progress):
            if not have:
                pending += batch
            if len(pending) >= 2000:  # one transaction per chunk, not per time step
                store.write(*chain.signed(pending))
                pending = []
    if pending:
        store.write(*chain.signed(pending))
    return plant


class HistoryChain:
    """Signs simulated history as the site's gateway would have signed it when polled: one
    chain along ``seq`` of an epoch of its own (the live gateway's outbox has another)."""

    def __init__(self, site: Site):
        self.key = signing_key(site.custody)
        self.epoch = secrets.token_hex(8)
        self.seq, self.prev = 0, GENESIS

    def signed(self, readings: list[Reading]) -> tuple[list[Reading], list, list[SignedMessage]]:
        """``readings`` numbered in this chain and their signed messages (``store.write``'s arguments)."""
        if self.key is None:
            return readings, [], []
        numbered, messages = [], []
        for r in readings:
            self.seq += 1
            r = dataclasses.replace(r, seq=self.seq, epoch=self.epoch)
            # the mark of simulated data is the store's, not a channel a gateway may send
            sent = dataclasses.replace(r, values={k: v for k, v in r.values.items() if k != SIMULATED_CHANNEL})
            raw = sign(sent.to_json(), self.prev, self.key.id, self.key.key)
            h = chain_hash(raw)
            messages.append(SignedMessage(r.site, r.gateway, self.epoch, self.seq, r.ts, h, self.prev, self.key.id, raw))
            numbered.append(r)
            self.prev = h
        return numbered, [], messages


class Dashboard:
    """The live view's uvicorn server on a thread of its own."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        from liveview.app import SHUTDOWN_GRACE_S

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="liveview")

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def run_demo(config_dir: Path, duration: float | None, workdir: Path, only: list[str] | None = None,
             port: int = 8080, control_port: int = 8502, broker_choice: str = "auto") -> int:
    t_start = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    sites_dir = signing_site_files(config_dir, workdir, dt.datetime.now(dt.UTC))
    files = sorted(glob.glob(str(sites_dir / "*.yaml")))
    sites = [load_site(f) for f in files]
    sites = [s for s in sites if not only or s.site in only]
    if not sites:
        log.error("no sites to run in %s/sites", config_dir)
        return 2
    sites = _free_endpoints(sites)
    broker = start_broker(workdir, log, broker_choice)
    atexit.register(broker.stop)  # also when a step below fails: no broker left running
    for site in sites:  # the demo broker is anonymous; the gateways still want their variables set
        for var in (site.mqtt.username_env, site.mqtt.password_env):
            if var:
                os.environ.setdefault(var, "demo")
    store_url = f"sqlite:///{(workdir / 'jcm.db').resolve()}"
    store = SqliteStore(workdir / "jcm.db")
    now = dt.datetime.now(dt.UTC)
    log.info("writing simulated history from %s (marked simulated) ...", history_start(now.date()))
    plants = {s.site: fill_history(s, store, now) for s in sites}
    log.info("history ready in %.0f s", time.monotonic() - t_start)

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="simulators").start()
    simulators = [SiteSimulator(s, plant=plants[s.site]) for s in sites]
    from simulators.control import serve_control

    controls = []
    for i, sim in enumerate(simulators):
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
        try:
            controls.append(serve_control(sim, control_port + i))
        except OSError:  # taken (the broker may sit on it): any free port, printed below
            controls.append(serve_control(sim, 0))

    broker_settings = Mqtt(url=broker.url)  # what every client of the demo connects with
    collector = Collector(CollectorConfig(broker=broker_settings, store=store_url, sites_dir=str(sites_dir),
                                          client_id=DEMO_COLLECTOR,
                                          protocol="5" if isinstance(broker, Mosquitto) else "3.1.1"))
    collector.start()
    gateways = [Gateway(s, broker_url=broker.url, outbox_path=str(workdir / f"outbox-{s.site}.sqlite")) for s in sites]
    for gw in gateways:
        gw.start()

    ledger = Ledger(workdir / "ledger.sqlite")
    with Progress("processor catch-up", unit="month") as catch_up:
        processor = Processor(sites, store, ledger, progress=catch_up)
        processor.start()  # catches up every past month now
    t_verified = time.monotonic() - t_start
    verified = {s.site: [r.month for r in ledger.revisions(s.site) if r.status == "verified"] for s in sites}
    exports = export_last_months(sites, store, ledger, workdir / "exports", now)

    from liveview.app import LiveView, create_app

    if _port_busy(port):
        port = free_port()
    view = LiveView(sites, broker_settings, store, str(workdir / "alarms.sqlite"), ledger=ledger, simulated=True)
    dashboard = Dashboard(create_app(view), "127.0.0.1", port)
    dashboard.start()

    print(f"\n  jcm demo: {len(sites)} sites running (SIMULATED DATA)"
          f"\n  live view:      http://127.0.0.1:{port}/"
          f"\n  exports:        {(workdir / 'exports').resolve()}"
          f"\n  first results:  {t_verified:.0f} s after start; verified months: "
          + ", ".join(f"{k} {' '.join(v) or '-'}" for k, v in verified.items())
          + "\n  fault control:  " + ", ".join(f"{sim.site.site} http://127.0.0.1:{c.server_address[1]}/faults"
                                            for sim, c in zip(simulators, controls))
          + f"\n  {'stopping after %.0f s' % duration if duration else 'Ctrl-C to stop'}\n", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(timeout=duration)

    print("stopping ...", flush=True)
    dashboard.stop()
    processor.stop()
    for gw in gateways:
        gw.stop()
    time.sleep(0.5)
    collector.stop()
    for c in controls:
        c.shutdown()
    for sim in simulators:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    broker.stop()
    delivered = {s.site: sum(1 for d in store.devices(s.site) if d.last_seen > now) for s in sites}
    store.close()
    ledger.close()
    flowed = all(delivered.values()) and collector.stored > 0
    any_verified = any(verified.values())
    print(f"readings stored live: {collector.stored}; devices heard per site: {delivered}; "
          f"verified months: {sum(len(v) for v in verified.values())}; exports: {len(exports)}", flush=True)
    return 0 if flowed and any_verified else 1


#: the demo collector's client id, the one collector its sites' gateways take acknowledgements from
DEMO_COLLECTOR = "jcm-demo-collector"


def signing_site_files(config_dir: Path, workdir: Path, now: dt.datetime) -> Path:
    """Copies of the site files in ``<workdir>/sites``, each site's gateway signing with
    its key in ``<workdir>/keys`` (made by ``jcm keygen`` unless there) and its public key
    listed, signatures required, and acknowledgements taken from the demo's collector (the
    reference sites name the production one); config/sites is never edited. Returns the folder."""
    out, keys = workdir / "sites", workdir / "keys"
    out.mkdir(parents=True, exist_ok=True)
    profiles = config_dir / "profiles"
    if profiles.is_dir() and not (workdir / "profiles").exists():  # where the copies look up their profiles
        (workdir / "profiles").symlink_to(profiles.resolve())
    for f in sorted((config_dir / "sites").glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        site = data["site"]
        if not (keys / f"{site}.key").exists():
            keygen(site, keys, now)
        private = keys / f"{site}.key"
        raw = load_private_key(private).public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw)
        key_id = f"{site}-demo-{fingerprint(raw)[:8]}"
        data["custody"] = {
            "private_key_file": str(private.resolve()), "key_id": key_id, "require_signatures": True,
            "keys": [{"id": key_id, "public_key": base64.b64encode(raw).decode(), "fingerprint": fingerprint(raw),
                      "valid_from": (history_start(now.date()) - dt.timedelta(days=1)).isoformat()}],
        }
        if (data.get("outbox") or {}).get("acknowledged_by") is not None:
            data["outbox"]["acknowledged_by"] = [DEMO_COLLECTOR]
        (out / f.name).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return out


def export_last_months(sites, store, ledger, out: Path, now: dt.datetime) -> list[Path]:
    """A monitoring-period export of each site's last whole month."""
    try:
        from processing.export import export_period
        from processing.monthly import last_closed_day
    except ImportError:
        log.warning("monitoring-period export not available yet")
        return []
    folders = []
    for site in sites:
        last = (last_closed_day(site, now) + dt.timedelta(days=1)).replace(day=1) - dt.timedelta(days=1)
        try:
            folders.append(export_period(site, store, ledger, last.replace(day=1), last, out, force=True))
        except Exception:
            log.exception("%s: export failed", site.site)
    return folders


def _free_endpoints(sites: list[Site]) -> list[Site]:
    """The sites with each simulated Modbus TCP endpoint whose port is taken on this machine
    (by another program, or another demo) moved to a free port; devices sharing an
    endpoint stay together."""
    moved: dict[int, int] = {}
    out = []
    for site in sites:
        devices = []
        for d in site.devices:
            c = d.connection
            if isinstance(c, TcpConnection):
                if c.port not in moved:
                    moved[c.port] = c.port if _can_listen(c.port) else free_port()
                    if moved[c.port] != c.port:
                        log.info("%s: port %d is in use here: simulating %s on port %d instead",
                                 site.site, c.port, c.endpoint, moved[c.port])
                d = d.model_copy(update={"connection": c.model_copy(update={"port": moved[c.port]})})
            devices.append(d)
        out.append(site.model_copy(update={"devices": devices}))
    return out


def _can_listen(port: int) -> bool:
    """Whether a server can listen on the loopback ``port`` now (bound by another
    process, even if not listening yet, it cannot)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
