"""Collector throughput against the broker's in-flight window.

Mosquitto sends a client at most ``max_inflight_messages`` unacknowledged QoS 1
messages; a collector that acknowledges only after a batch is stored receives at
most that many per batch. This measures readings stored per second for a stream of
N readings with the window at Mosquitto's default (20) and raised (1000, as the
shipped broker config and the collector's Receive Maximum set it), with the batch
flushed on size or on its short timer.

    python bench/collector_throughput.py [--readings 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from collector.service import Collector  # noqa: E402
from contract import topics  # noqa: E402
from contract.config import CollectorConfig  # noqa: E402
from contract.message import Reading  # noqa: E402
from jcm.broker import Mosquitto  # noqa: E402

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def messages(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        device = f"m{i % 10}"
        r = Reading(site="bench", gateway="gw-bench", device=device, ts=T0 + dt.timedelta(seconds=i // 10),
                    values={f"ch{k}": float(i + k) for k in range(20)}, seq=i + 1)
        out.append((topics.reading("bench", "gw-bench", device), r.to_json().encode()))
    return out


def write_site(workdir: Path) -> Path:
    """The bench site: ten meters of twenty channels (the collector accepts known sites only)."""
    profile = {"profile": "bench_meter", "points": [{"channel": f"ch{k}", "address": k} for k in range(20)]}
    (workdir / "profiles").mkdir()
    (workdir / "profiles" / "bench_meter.yaml").write_text(yaml.safe_dump(profile))
    site = {"site": "bench", "name": "Bench", "country": "MN", "timezone": "UTC", "latitude": 0, "longitude": 0,
            "commissioned": "2026-01-01", "jcm_project": "bench", "methodology": "MN_AM003",
            "methodology_version": "2.0", "gateway": "gw-bench", "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "devices": [{"id": f"m{i}", "kind": "power_meter", "profile": "bench_meter",
                         "connection": {"type": "tcp", "host": "127.0.0.1", "port": 1502, "unit_id": i + 1}}
                        for i in range(10)]}
    (workdir / "sites").mkdir()
    (workdir / "sites" / "bench.yaml").write_text(yaml.safe_dump(site))
    return workdir / "sites"


def run(window: int, receive_maximum: int, batch_size: int, batch_timeout: float, n: int, workdir: Path) -> dict:
    broker = Mosquitto(workdir / f"mq-{window}-{batch_size}")
    broker.conf.write_text(broker.conf.read_text().replace("max_inflight_messages 1000", f"max_inflight_messages {window}"))
    broker.start()
    try:
        cfg = CollectorConfig(broker={"url": broker.url}, store=f"sqlite:///{workdir}/bench-{window}-{batch_size}.db",
                              sites_dir=str(workdir / "sites"), batch_size=batch_size, batch_timeout=batch_timeout,
                              receive_maximum=receive_maximum, client_id=f"bench-{window}")
        collector = Collector(cfg)
        collector.start()
        time.sleep(0.5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        msgs = messages(n)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for topic, body in msgs:
            pub.publish(topic, body, qos=1)
        while collector.stored < n and time.perf_counter() - t0 < 300:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        stored = collector.stored
        collector.stop()
        pub.disconnect()
        pub.loop_stop()
    finally:
        broker.stop()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"broker_window": window, "receive_maximum": receive_maximum, "batch_size": batch_size,
            "batch_timeout_s": batch_timeout, "readings": stored, "seconds": round(elapsed, 2),
            "readings_per_s": round(stored / elapsed), "cpu_s_per_1000": round(cpu / stored * 1000, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_site(workdir)
        cases = [(20, 20, 500, 0.2), (20, 20, 500, 0.02), (1000, 1000, 500, 0.2)]
        results = [run(*case, n=args.readings if case[0] > 20 else min(args.readings, 4000), workdir=workdir) for case in cases]
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"{'window':>7} {'recv max':>8} {'batch':>6} {'timer s':>8} {'readings/s':>11} {'CPU s/1000':>11}")
    for r in results:
        print(f"{r['broker_window']:>7} {r['receive_maximum']:>8} {r['batch_size']:>6} {r['batch_timeout_s']:>8} "
              f"{r['readings_per_s']:>11} {r['cpu_s_per_1000']:>11}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "collector.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
