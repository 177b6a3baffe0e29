"""What the store's acknowledgement costs, and how fast a day's backlog replays.

1. **Cost at 1,000 messages/s.** The real outbox and publisher (gateway side) feed a
   private Mosquitto at 1,000 messages/s from ten threads (ten devices), and the real
   collector stores them in SQLite. Twice in one run: rows confirmed by the store's
   acknowledgement (``confirmed_by: store``) and by the broker's PUBACK (``broker``, the
   path before acknowledgements). Reported: CPU of the process (gateway and collector)
   and of Mosquitto per 1,000 messages, time from the last reading polled to the last
   row deleted, acknowledgements published and their size.
2. **A day's backlog of mn-solar.** An outbox holding one day of mn-solar's readings at
   its configured poll intervals (payloads shaped like its devices'), replayed by the
   real publisher to the collector, store acknowledgement on: seconds until the outbox is
   empty (goal: 60 s).
3. **A shared drain** (``--shared-drain N ...``). Two collectors on a shared subscription, N
   single messages put in the outbox at once while the publisher is connected (the live
   lane sends each alone, 100 in flight), the gateway's floor at 1 all along (its status
   comes every 30 s): readings sent again (``outbox.confirm_timeout_s`` 10 s) and the bytes
   of acknowledgements a gateway receives, per 1,000 readings.

    python bench/acknowledgement.py [--seconds 10] [--rounds 2] [--backlog-rate 2000]
    python bench/acknowledgement.py --skip-steady --skip-backlog --shared-drain 5000 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.service import Collector  # noqa: E402
from contract import topics  # noqa: E402
from contract.config import CollectorConfig, load_site  # noqa: E402
from contract.message import Reading  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.publisher import Publisher  # noqa: E402
from jcm.broker import Mosquitto  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MN_SOLAR = REPO / "config" / "sites" / "mn-solar.yaml"


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def site_copy(workdir: Path, confirmed_by: str, backlog_rate: float, **outbox) -> Path:
    """mn-solar's site file with the bench's outbox settings, in a sites dir of its own."""
    body = yaml.safe_load(MN_SOLAR.read_text())
    body["mqtt"] = {"url": "mqtt://127.0.0.1:1883"}  # the bench broker: anonymous, its URL given to the publisher
    body["outbox"] = {"path": str(workdir / "outbox.sqlite"), "confirmed_by": confirmed_by,
                      "backlog_rate": backlog_rate, **outbox}
    sites = workdir / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / "mn-solar.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    profiles = workdir / "profiles"
    if not profiles.exists():
        profiles.symlink_to(REPO / "config" / "profiles")
    return sites / "mn-solar.yaml"


def templates(site) -> list[Reading]:
    """One reading per device, every channel of its register map filled in."""
    return [Reading(site=site.site, gateway=site.gateway, device=d.id, ts=dt.datetime.now(dt.UTC),
                    values={p.channel: "SunS" if p.type == "string" else 1234.5 for p in d.register_map.points},
                    units={p.channel: p.unit for p in d.register_map.points if p.unit})
            for d in site.devices]


class Pipeline:
    """Mosquitto, the collector (SQLite store) and a gateway's outbox and publisher."""

    def __init__(self, workdir: Path, confirmed_by: str, backlog_rate: float = 2000.0):
        self.broker = Mosquitto(workdir / "mq").start()
        self.site = load_site(site_copy(workdir, confirmed_by, backlog_rate))
        self.collector = Collector(CollectorConfig(broker={"url": self.broker.url}, store=f"sqlite:///{workdir}/jcm.db",
                                                   sites_dir=str(workdir / "sites"), batch_timeout=0.05,
                                                   client_id="bench-collector"))
        if confirmed_by == "broker":  # the path before acknowledgements: the collector publishes none either
            self.collector.acknowledgements.kept = lambda readings, rejected: None
        self.collector.start()
        self.outbox = Outbox(self.site.outbox.path, self.site.outbox.max_rows)
        self.publisher = Publisher(self.site, self.outbox, broker_url=self.broker.url)

    def start_publisher(self) -> None:
        self.publisher.start()
        deadline = time.monotonic() + 10
        while not (self.publisher.connection.connected.is_set()
                   and self.collector.connection.connected.is_set()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # subscriptions in place

    def cpu(self) -> tuple[float, float]:
        return cpu_self(), cpu_of(self.broker.proc.pid)

    def drain(self, n: int, timeout: float) -> float:
        """Wait until the outbox is empty and the store has ``n`` readings; when it was."""
        deadline = time.monotonic() + timeout
        while (self.outbox.depth or self.collector.stored < n) and time.monotonic() < deadline:
            time.sleep(0.005)
        return time.perf_counter()

    def close(self) -> None:
        self.publisher.stop(timeout=0)
        self.collector.stop()
        self.outbox.close()
        self.broker.stop()


def steady(workdir: Path, confirmed_by: str, seconds: float, rate: float = 1000.0, threads: int = 10) -> dict:
    p = Pipeline(workdir, confirmed_by)
    try:
        p.start_publisher()
        shapes = templates(p.site)
        epoch = p.outbox.epoch
        per_thread = int(rate * seconds / threads)

        def device(i: int) -> None:
            reading = shapes[i % len(shapes)]  # two threads per device, at distinct timestamps
            start = time.perf_counter()
            for k in range(per_thread):
                ts = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=k * threads + i)
                r = dataclasses.replace(reading, ts=ts, epoch=epoch)
                p.outbox.append(topics.reading(r.site, r.gateway, r.device),
                                lambda seq, r=r: dataclasses.replace(r, seq=seq).to_json())
                p.publisher.notify()
                lag = start + (k + 1) * threads / rate - time.perf_counter()
                if lag > 0:
                    time.sleep(lag)

        cpu0, broker0 = p.cpu()
        t0 = time.perf_counter()
        workers = [threading.Thread(target=device, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        polled = time.perf_counter()
        n = per_thread * threads
        done = p.drain(n, 60)
        cpu1, broker1 = p.cpu()
        acks = p.collector.acknowledgements.published
        return {"confirmed_by": confirmed_by, "messages": n, "rate_offered": rate,
                "rate_polled": round(n / (polled - t0)), "stored": p.collector.stored, "left": p.outbox.depth,
                "drain_after_last_poll_s": round(done - polled, 3),
                "cpu_process_s_per_1000": round((cpu1 - cpu0) / n * 1000, 4),
                "cpu_broker_s_per_1000": round((broker1 - broker0) / n * 1000, 4),
                "acks_published": acks}
    finally:
        p.close()


def backlog(workdir: Path, backlog_rate: float) -> dict:
    p = Pipeline(workdir, "store", backlog_rate)
    try:
        shapes = templates(p.site)
        intervals = {d.id: d.poll_interval for d in p.site.devices}
        day = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        rows = []
        for r in shapes:
            for k in range(int(86400 / intervals[r.device])):
                rows.append((day + dt.timedelta(seconds=k * intervals[r.device]), r))
        rows.sort(key=lambda x: x[0])
        # written in one transaction (a day of polls would take a day); then the outbox is reopened as is
        epoch = p.outbox.epoch
        p.outbox.close()
        with sqlite3.connect(p.site.outbox.path) as db:
            db.executemany("INSERT INTO outbox (seq, topic, payload) VALUES (?, ?, ?)",
                           [(seq, topics.reading(r.site, r.gateway, r.device),
                             dataclasses.replace(r, ts=ts, seq=seq, epoch=epoch).to_json())
                            for seq, (ts, r) in enumerate(rows, 1)])
        p.outbox = Outbox(p.site.outbox.path, p.site.outbox.max_rows)
        p.publisher = Publisher(p.site, p.outbox, broker_url=p.broker.url)
        n = len(rows)
        cpu0, broker0 = p.cpu()
        t0 = time.perf_counter()
        p.start_publisher()
        done = p.drain(n, 900)
        cpu1, broker1 = p.cpu()
        return {"messages": n, "backlog_rate": backlog_rate, "seconds": round(done - t0, 1),
                "messages_per_s": round(n / (done - t0)), "stored": p.collector.stored, "left": p.outbox.depth,
                "cpu_process_s": round(cpu1 - cpu0, 1), "cpu_broker_s": round(broker1 - broker0, 1),
                "acks_published": p.collector.acknowledgements.published}
    finally:
        p.close()


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record):
        self.n += 1


def shared_drain(workdir: Path, n: int) -> dict:
    """Two collectors share the stream of ``n`` single messages; what is sent again, what the acks weigh."""
    broker = Mosquitto(workdir / "mq").start()
    site = load_site(site_copy(workdir, "store", 2000.0, confirm_timeout_s=10))
    collectors = [Collector(CollectorConfig(broker={"url": broker.url}, store=f"sqlite:///{workdir}/jcm.db",
                                            sites_dir=str(workdir / "sites"), batch_timeout=0.05,
                                            client_id=f"bench-collector-{c}", share_group="bench"))
                  for c in "ab"]
    outbox = Outbox(site.outbox.path, site.outbox.max_rows)
    publisher = Publisher(site, outbox, broker_url=broker.url)
    acks = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ack-watcher")
    watcher.on_message = lambda c, u, m: acks.append(len(m.payload))
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.acks_of(site.site, site.gateway), 1)
    warnings = _Count()
    logging.getLogger("collector.acknowledgement").addHandler(warnings)
    try:
        watcher.connect("127.0.0.1", broker.port)
        watcher.loop_start()
        for c in collectors:
            c.start()
        publisher.start()
        connections = [publisher.connection, *(x for c in collectors for x in (c.connection,
                                                                                c.acknowledgements.connection))]
        deadline = time.monotonic() + 10
        while not all(x.connected.is_set() for x in connections) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # subscriptions in place
        shapes = templates(site)
        day = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        epoch = outbox.epoch
        cpu0, broker0 = cpu_self(), cpu_of(broker.proc.pid)
        t0 = time.perf_counter()
        for k in range(n):
            r = shapes[k % len(shapes)]
            ts = day + dt.timedelta(seconds=k)
            outbox.put(topics.reading(r.site, r.gateway, r.device),
                       lambda seq, r=r, ts=ts: dataclasses.replace(r, ts=ts, seq=seq, epoch=epoch).to_json())
        publisher.notify()
        deadline = time.monotonic() + 600
        while (outbox.last_seq() < n or outbox.depth) and time.monotonic() < deadline:
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        cpu1, broker1 = cpu_self(), cpu_of(broker.proc.pid)
        time.sleep(0.3)  # the last acknowledgements reach the watcher
        return {"messages": n, "seconds_to_empty_outbox": round(seconds, 2), "left": outbox.depth,
                "stored_by": [c.stored for c in collectors], "dead_letters_by": [c.dead for c in collectors],
                "published": publisher.published,
                "resent": publisher.published - n, "resent_per_1000": round((publisher.published - n) * 1000 / n, 1),
                "acks": len(acks), "ack_bytes": sum(acks), "ack_bytes_per_1000": round(sum(acks) * 1000 / n),
                "largest_ack_bytes": max(acks, default=0), "ack_warnings": warnings.n,
                "cpu_process_s_per_1000": round((cpu1 - cpu0) * 1000 / n, 3),
                "cpu_broker_s_per_1000": round((broker1 - broker0) * 1000 / n, 3)}
    finally:
        logging.getLogger("collector.acknowledgement").removeHandler(warnings)
        publisher.stop(timeout=0)
        for c in collectors:
            c.stop()
        watcher.loop_stop()
        outbox.close()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backlog-rate", type=float, default=2000.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-backlog", action="store_true")
    ap.add_argument("--skip-steady", action="store_true")
    ap.add_argument("--shared-drain", type=int, nargs="*", default=[], metavar="N",
                    help="two collectors sharing a drain of N single messages (each N a run)")
    args = ap.parse_args()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(0 if args.skip_steady else args.rounds):  # alternated: a noisy moment hits both modes
            for mode in ("broker", "store"):
                result = steady(Path(tmp) / f"{mode}-{r}", mode, args.seconds)
                results.setdefault(f"steady_{mode}", []).append(result)
                print(json.dumps(result), flush=True)
        for key in () if args.skip_steady else ("cpu_process_s_per_1000", "cpu_broker_s_per_1000",
                                                "drain_after_last_poll_s"):
            a, b = (sum(x[key] for x in results[f"steady_{m}"]) for m in ("store", "broker"))
            results[f"ratio_{key}"] = round(a / b, 3)
            print(f"store/broker {key}: {results[f'ratio_{key}']}")
        if not args.skip_backlog:
            results["backlog"] = backlog(Path(tmp) / "backlog", args.backlog_rate)
            print(json.dumps(results["backlog"]), flush=True)
        for i, n in enumerate(args.shared_drain):
            results.setdefault("shared_drain", []).append(shared_drain(Path(tmp) / f"shared-{i}", n))
            print(json.dumps(results["shared_drain"][-1]), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "acknowledgement.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
