"""``jcm demo``: the five reference sites end to end on one machine.

For now: a private Mosquitto, each site's simulator, one gateway per site and a
subscriber printing what arrives. The collector, processor and live view join as
they are built.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt

from contract import topics
from contract.config import load_site
from contract.message import Reading
from gateway.service import Gateway
from jcm.broker import Mosquitto
from jcm.watch import format_reading
from simulators.modbus_server import SiteSimulator

log = logging.getLogger("jcm.demo")


def run_demo(config_dir: Path, duration: float | None, workdir: Path) -> int:
    sites = [load_site(f) for f in sorted(glob.glob(str(config_dir / "sites" / "*.yaml")))]
    if not sites:
        log.error("no site files in %s/sites", config_dir)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir / "mosquitto").start()
    log.info("broker: Mosquitto at %s", broker.url)
    for site in sites:  # the demo broker is anonymous; the gateways still want their variables set
        for var in (site.mqtt.username_env, site.mqtt.password_env):
            if var:
                os.environ.setdefault(var, "demo")

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="simulators").start()
    simulators = [SiteSimulator(s) for s in sites]
    for sim in simulators:
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)

    received: Counter[str] = Counter()

    def on_message(client, userdata, msg):
        try:
            reading = Reading.from_json(msg.payload)
        except ValueError as exc:
            print(f"{msg.topic}: malformed: {exc}", flush=True)
            return
        received[reading.site] += 1
        print(format_reading(reading), flush=True)

    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="jcm-demo-watch")
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.ALL_READINGS, qos=1)
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()

    gateways = [Gateway(s, broker_url=broker.url, outbox_path=str(workdir / f"outbox-{s.site}.sqlite")) for s in sites]
    for gw in gateways:
        gw.start()
    print(f"\njcm demo: {len(sites)} sites running; broker {broker.url}; "
          f"{'stopping after %.0f s' % duration if duration else 'Ctrl-C to stop'}\n", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(timeout=duration)

    for gw in gateways:
        gw.stop()
    time.sleep(0.5)
    watcher.disconnect()
    watcher.loop_stop()
    for sim in simulators:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    broker.stop()
    summary = ", ".join(f"{s.site}: {received[s.site]}" for s in sites)
    print(f"\nreadings received: {summary}", flush=True)
    return 0 if all(received[s.site] for s in sites) else 1
