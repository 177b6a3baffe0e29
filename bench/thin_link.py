"""A day's backlog over a thin link: mn-solar's gateway behind 1 Mbit/s.

Real parts: Mosquitto (``max_packet_size 65536`` as shipped), the collector (SQLite), the
gateway's outbox and publisher, and between the gateway and the broker :class:`ThinLink`,
a TCP proxy in its own process: a token bucket at ``--rate`` bit/s in each direction
(chunks of one TCP segment, 1,460 bytes; 16 KiB deep), counting the bytes each way (TCP
payload: MQTT's bytes, without TCP/IP or TLS headers).

The readings: one day of mn-solar at its poll intervals (4 inverters every 5 s, the
meter every 10 s: 77,760), every channel of each register map, values shaped like the
decoded registers (float32 channels at float32 precision, scaled integers with their
decimals, counters rising, power following the sun, noise in the last digits).

1. **Forms, same readings.** The first ``--sample`` readings of the day through the link
   (a plain paho client, QoS 1, 100 in flight), as today's single JSON messages (the live
   lane's form, and the backlog's before batches) and as ThingsBoard's gateway would
   send them: its telemetry JSON ``{"<device>": [{"ts": <ms>, "values": {...}}, ...]}``
   to ``v1/gateway/telemetry``, packed up to its default ``maxPayloadSizeBytes`` (8,196),
   the same channels and values (no units or quality: ThingsBoard sends none). Bytes per
   reading at the proxy, both directions (PUBLISH up, PUBACK down).
2. **The day.** The outbox holds the day; the gateway runs with the link down, polling
   live readings at mn-solar's intervals; the link returns (the proxy starts). Seconds
   until the store holds every reading of the day and the outbox has none of them;
   bytes per reading on the link; the live lane's latency, poll to store, during the
   drain.
3. **Live only.** ``--live-seconds`` after the drain: bytes per live reading (its
   PUBLISH and PUBACK, the store's acknowledgements and the gateway's status included).

Also computed, not measured: the whole day's bytes in each form (MQTT framing counted
exactly), to show the sample is representative, and the batch form with signed messages
(chain of custody: each signed with a real key, chained, the batch leaving out what the
chain covers: contract/batch.py).

With ``--signed``, phases 2 and 3 run with every reading signed (the day in the outbox
signed as the outbox signs, the live readings signed by the outbox) and the collector
requiring signatures.

    python bench/thin_link.py [--rate 1000000] [--sample 3240] [--live-seconds 30] [--signed]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.acknowledgement import MN_SOLAR, cpu_of, cpu_self, site_copy  # noqa: E402
from collector.service import Collector  # noqa: E402
from contract import batch, topics  # noqa: E402
from contract.custody import GENESIS, chain_hash, sign  # noqa: E402
from contract.config import CollectorConfig, load_site  # noqa: E402
from contract.config.site import Outbox as OutboxSettings  # noqa: E402
from contract.message import Reading  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.publisher import Publisher  # noqa: E402
from gateway.signing_key import SigningKey  # noqa: E402
from jcm.broker import Mosquitto, free_port, wait_for_port  # noqa: E402

DAY = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SEGMENT = 1460  # bytes the proxy forwards at a time: one TCP segment
#: the bucket's depth [bytes], about 0.13 s at 1 Mbit/s: the average rate is exact, and the
#: proxy's process being scheduled late on a busy machine does not cost the link capacity
BURST = 16 * 1024
KEY_ID = "gw-mn-01-2026"
TB_TOPIC = "v1/gateway/telemetry"
TB_MAX_PAYLOAD = 8196  # ThingsBoard gateway's maxPayloadSizeBytes in its shipped tb_gateway.json


# -- the link ---------------------------------------------------------------------------
class _Bucket:
    """Token bucket [bytes/s]: the link's rate, one way."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.last = rate, 0.0, time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(float(BURST), self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate)


def _serve(port: int, target: int, rate_bits: float, counters, ready) -> None:
    up, down = _Bucket(rate_bits / 8), _Bucket(rate_bits / 8)

    async def pipe(reader, writer, bucket, counter):
        try:
            while data := await reader.read(SEGMENT):
                await bucket.take(len(data))
                writer.write(data)
                await writer.drain()
                with counter.get_lock():
                    counter.value += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, broker_w, up, counters[0]), pipe(broker_r, client_w, down, counters[1]))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class ThinLink:
    """A rate-limited TCP link to the broker, in its own process; ``up`` is towards the broker."""

    def __init__(self, target: int, rate_bits: float):
        self.port, self.target, self.rate = free_port(), target, rate_bits
        self._counters = (mp.Value("q", 0), mp.Value("q", 0))
        self._proc: mp.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def up(self) -> None:
        ready = mp.Event()
        self._proc = mp.Process(target=_serve, args=(self.port, self.target, self.rate, self._counters, ready),
                                daemon=True)
        self._proc.start()
        ready.wait(10)
        wait_for_port(self.port)

    def down(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.join()
            self._proc = None

    def bytes(self) -> tuple[int, int]:
        return self._counters[0].value, self._counters[1].value


# -- the readings -----------------------------------------------------------------------
def _value(point, t: float, sun: float, rnd: random.Random, state: dict):
    """A value shaped like the decoded register: float32 precision, or an integer with the scale's decimals."""
    if point.type == "string":
        return {"sunspec_marker": "SunS"}.get(point.channel, f"{point.channel[:6].upper()}-2019-0815")
    if point.type == "bool":
        return False
    hi = point.range[1] if point.range else 1000.0
    unit = point.unit
    if unit in ("Wh", "kWh", "varh", "kvarh", "VAh"):  # a counter of years in service, rising with the sun
        kilo = unit.startswith("k")
        state[point.channel] = state.get(point.channel, 6.4e4 if kilo else 6.4e7) + sun * (1.0 if kilo else 1e3)
        x = state[point.channel]
    elif unit in ("W", "kW", "A", "var", "kvar", "VA", "kVA"):
        x = hi * 0.35 * sun * (1 + 0.01 * rnd.gauss(0, 1))
    elif unit == "Hz":
        x = 50 + 0.02 * rnd.gauss(0, 1)
    elif unit in ("V", "kV"):
        x = hi * 0.4 * (1 + 0.003 * rnd.gauss(0, 1))
    else:  # power factor, temperatures, states
        x = hi * 0.5 * (0.9 + 0.1 * sun) * (1 + 0.01 * rnd.gauss(0, 1))
    if point.type in ("float32", "float64"):
        return struct.unpack(">f", struct.pack(">f", x))[0] if point.type == "float32" else x
    if point.scale_factor is not None:
        return round(x, 1 if unit != "Hz" else 2)
    return int(x)


def day_of_readings(site, seconds: int = 86400) -> list[Reading]:
    """The first ``seconds`` of a day of the site's readings at its poll intervals, in time
    order (seq, epoch unset)."""
    rnd = random.Random(20261101)
    rows = []
    for d in site.devices:
        state: dict = {}
        for k in range(int(seconds / d.poll_interval)):
            t = k * d.poll_interval
            sun = max(0.0, math.sin(math.pi * ((t / 3600 + 8) % 24 - 6) / 12))  # daylight at UTC+8
            points = d.register_map.points
            rows.append(Reading(site=site.site, gateway=site.gateway, device=d.id, ts=DAY + dt.timedelta(seconds=t),
                                values={p.channel: _value(p, t, sun, rnd, state) for p in points},
                                units={p.channel: p.unit for p in points if p.unit}))
    rows.sort(key=lambda r: (r.ts, r.device))
    return rows


def thingsboard_packs(readings: list[Reading]) -> list[bytes]:
    """ThingsBoard gateway telemetry, packed up to its maxPayloadSizeBytes in time order."""
    packs, current, size = [], {}, 2
    for r in readings:
        entry = {"ts": int(r.ts.timestamp() * 1000), "values": r.values}
        text = len(json.dumps(entry, separators=(",", ":"))) + len(r.device) + 6
        if current and size + text > TB_MAX_PAYLOAD:
            packs.append(json.dumps(current, separators=(",", ":")).encode())
            current, size = {}, 2
        current.setdefault(r.device, []).append(entry)
        size += text
    if current:
        packs.append(json.dumps(current, separators=(",", ":")).encode())
    return packs


def publish_bytes(topic: str, payload: bytes) -> int:
    """Bytes of a QoS 1 PUBLISH (MQTT 3.1.1) and its PUBACK."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    length_bytes = 1 + (remaining >= 128) + (remaining >= 16384) + (remaining >= 2097152)
    return 1 + length_bytes + remaining + 4


def signed_chain(payloads: list[bytes], key: Ed25519PrivateKey) -> list[bytes]:
    """The messages signed in order as the gateway's outbox signs them: one chain (contract/custody.py)."""
    out, prev = [], GENESIS
    for p in payloads:
        out.append(sign(p, prev, KEY_ID, key))
        prev = chain_hash(out[-1])
    return out


def batches_of(payloads: list[bytes]) -> list[bytes]:
    out, i = [], 0
    while i < len(payloads):
        p, n = batch.pack(payloads[i:i + batch.MAX_MESSAGES])
        out.append(p)
        i += n
    return out


# -- the phases -------------------------------------------------------------------------
def send_plain(link: ThinLink, messages: list[tuple[str, bytes]]) -> tuple[int, int, float]:
    """Publish through the link at QoS 1, 100 in flight; bytes up, down and seconds, once connected."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"forms-{time.monotonic_ns()}")
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", link.port)
    c.loop_start()
    try:
        while not c.is_connected():
            time.sleep(0.01)
        up0, down0 = link.bytes()
        t0 = time.perf_counter()
        infos = [c.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=600)
        seconds = time.perf_counter() - t0
        time.sleep(0.2)  # the last PUBACK through the proxy's counter
        up1, down1 = link.bytes()
        return up1 - up0, down1 - down0, seconds
    finally:
        c.disconnect()
        c.loop_stop()


def forms(link: ThinLink, readings: list[Reading], epoch: str) -> dict:
    singles = [(topics.reading(r.site, r.gateway, r.device), _numbered(r, i, epoch).to_json().encode())
               for i, r in enumerate(readings, 1)]
    tb = [(TB_TOPIC, p) for p in thingsboard_packs(readings)]
    out = {"readings": len(readings)}
    for name, messages in (("json_single", singles), ("thingsboard_packed", tb)):
        up, down, seconds = send_plain(link, messages)
        out[name] = {"messages": len(messages), "bytes_up": up, "bytes_down": down, "seconds": round(seconds, 1),
                     "bytes_per_reading": round((up + down) / len(readings), 1)}
        print(name, json.dumps(out[name]), flush=True)
    return out


def _numbered(r: Reading, seq: int, epoch: str) -> Reading:
    return dataclasses.replace(r, seq=seq, epoch=epoch)


def _collect(broker_url: str, workdir: str, n: int, all_stored, connected, stop, out: str) -> None:
    """The collector in its own process (as deployed): when the day's last reading is stored
    (``all_stored``, CLOCK_MONOTONIC, the same clock in every process) and, written to ``out``
    at the end, when each later (live) reading was."""
    c = Collector(CollectorConfig(broker={"url": broker_url}, store=f"sqlite:///{workdir}/jcm.db",
                                  sites_dir=f"{workdir}/sites", batch_timeout=0.05, client_id="bench-collector"))
    day: set[int] = set()
    live: dict[int, float] = {}
    kept = c.acknowledgements.kept

    def timed(readings, rejected):
        now = time.monotonic()
        for r in readings:
            if r.seq <= n:
                day.add(r.seq)
            else:
                live.setdefault(r.seq, now)
        if len(day) == n and not all_stored.value:
            all_stored.value = now
        kept(readings, rejected)
    c.acknowledgements.kept = timed
    c.start()
    while not c.connection.connected.is_set():
        time.sleep(0.05)
    connected.set()
    stop.wait()
    c.stop()
    Path(out).write_text(json.dumps(live))


class Day:
    """The day's drain with live readings polled meanwhile."""

    def __init__(self, workdir: Path, broker: Mosquitto, link: ThinLink, readings: list[Reading],
                 key: Ed25519PrivateKey | None = None):
        self.workdir = workdir
        path = site_copy(workdir, "store", OutboxSettings.model_fields["backlog_rate"].default)
        if key is not None:  # every reading signed, and the collector's site file lists the key
            body = yaml.safe_load(path.read_text())
            body["custody"] = {"require_signatures": True, "keys": [_key_entry(key)]}
            path.write_text(yaml.safe_dump(body, sort_keys=False))
        self.site = load_site(path)
        self.n = len(readings)
        outbox = Outbox(self.site.outbox.path, self.site.outbox.max_rows)
        self.epoch = outbox.epoch
        outbox.close()
        payloads = [_numbered(r, seq, self.epoch).to_json().encode() for seq, r in enumerate(readings, 1)]
        if key is not None:
            payloads = signed_chain(payloads, key)
        with sqlite3.connect(self.site.outbox.path) as db:  # a day of polls written at once, then reopened
            db.executemany("INSERT INTO outbox (seq, topic, payload) VALUES (?, ?, ?)",
                           [(seq, topics.reading(r.site, r.gateway, r.device), p.decode())
                            for seq, (r, p) in enumerate(zip(readings, payloads), 1)])
            if key is not None:  # where the live readings' chain goes on
                db.execute("INSERT INTO chain VALUES (?, ?)", (self.n, chain_hash(payloads[-1])))
        self.outbox = Outbox(self.site.outbox.path, self.site.outbox.max_rows,
                             signing=None if key is None else SigningKey(KEY_ID, key))
        spawn = mp.get_context("spawn")
        self.all_stored, self.connected, self.stop_collector = spawn.Value("d", 0.0), spawn.Event(), spawn.Event()
        self.collector = spawn.Process(target=_collect, args=(broker.url, str(workdir), self.n, self.all_stored,
                                                              self.connected, self.stop_collector,
                                                              str(workdir / "live.json")))
        self.publisher = Publisher(self.site, self.outbox, broker_url=link.url)
        self.polled_at: dict[int, float] = {}
        self.shapes = {r.device: r for r in readings[:len(self.site.devices) * 2]}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        """Live readings at the site's poll intervals."""
        due = {d.id: time.monotonic() for d in self.site.devices}
        intervals = {d.id: d.poll_interval for d in self.site.devices}
        while not self._stop.is_set():
            now = time.monotonic()
            for device, t in due.items():
                if now >= t:
                    r = dataclasses.replace(self.shapes[device], ts=dt.datetime.now(dt.UTC))
                    seq = self.outbox.append(topics.reading(r.site, r.gateway, r.device),
                                             lambda seq, r=r: _numbered(r, seq, self.epoch).to_json())
                    self.polled_at[seq] = time.monotonic()
                    self.publisher.notify()
                    due[device] = t + intervals[device]
            time.sleep(0.05)

    def run(self, link: ThinLink, broker: Mosquitto, live_seconds: float) -> dict:
        self.collector.start()
        self.connected.wait(30)
        self._poller.start()
        self.publisher.start()  # the link is down: it retries
        time.sleep(3)  # a few live polls pile up with the day
        procs = (os.getpid(), self.collector.pid, broker.proc.pid)
        cpu0 = [cpu_self(), *(cpu_of(p) for p in procs[1:])]
        up0, down0 = link.bytes()
        t0 = time.monotonic()
        link.up()
        while not self.publisher.connection.connected.is_set():
            time.sleep(0.01)
        connected = time.monotonic() - t0
        while self.publisher._boundary == self.n and time.monotonic() - t0 < 10:
            time.sleep(0.01)  # its thread takes what was polled while the link was down into the backlog
        boundary = self.publisher._boundary
        sent = None
        while self.outbox.floor() <= boundary and time.monotonic() - t0 < 900:
            if sent is None and self.publisher._backlog_cursor >= boundary and not self.publisher._batches:
                sent = time.monotonic() - t0  # the broker has every batch
            time.sleep(0.1)
        confirmed = time.monotonic() - t0
        cpu1 = [cpu_self(), *(cpu_of(p) for p in procs[1:])]
        up1, down1 = link.bytes()
        drained = t0 + confirmed
        time.sleep(live_seconds)
        up2, down2 = link.bytes()
        self._stop.set()
        self._poller.join()
        last_polled = max(self.polled_at)
        self.stop_collector.set()
        self.collector.join(60)
        stored_at = {int(k): v for k, v in json.loads((self.workdir / "live.json").read_text()).items()}
        polled = dict(self.polled_at)
        during = [stored_at[s] - polled[s] for s in polled if s > boundary and s in stored_at and polled[s] < drained]
        after = [stored_at[s] - polled[s] for s in polled if polled[s] >= drained and s in stored_at]
        live_after = sum(1 for s in polled if polled[s] >= drained)
        drain = {"readings": self.n, "live_polled_while_down": boundary - self.n,
                 "reconnected_s": round(connected, 2), "all_at_broker_s": sent and round(sent, 1),
                 "all_stored_s": round(self.all_stored.value - t0, 1),
                 "outbox_confirmed_s": round(confirmed, 1), "bytes_up": up1 - up0, "bytes_down": down1 - down0,
                 "bytes_per_reading": round((up1 - up0 + down1 - down0) / self.n, 1),
                 "live_during_drain": _latency(during),
                 "cpu_s": dict(zip(("gateway_and_bench", "collector", "mosquitto"),
                                   (round(b - a, 1) for a, b in zip(cpu0, cpu1))))}
        live_only = {"readings": live_after, "seconds": live_seconds, "bytes_up": up2 - up1, "bytes_down": down2 - down1,
                     "bytes_per_reading": round((up2 - up1 + down2 - down1) / max(1, live_after), 1),
                     **_latency(after), "last_seq": last_polled}
        print("drain", json.dumps(drain), flush=True)
        print("live", json.dumps(live_only), flush=True)
        return {"drain": drain, "live_only": live_only}

    def close(self) -> None:
        self._stop.set()
        self.publisher.stop(timeout=0)
        self.stop_collector.set()
        self.collector.join(60)
        self.outbox.close()


def _key_entry(key: Ed25519PrivateKey) -> dict:
    """The site file's entry of the bench's public key."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"id": KEY_ID, "public_key": base64.b64encode(raw).decode(), "fingerprint": hashlib.sha256(raw).hexdigest(),
            "valid_from": "2026-01-01T00:00:00Z"}


def _latency(seconds: list[float]) -> dict:
    """Poll-to-store latency of live readings [s]."""
    if not seconds:
        return {"readings_stored": 0}
    seconds = sorted(seconds)
    return {"readings_stored": len(seconds), "latency_p50_s": round(statistics.median(seconds), 3),
            "latency_p95_s": round(seconds[int(0.95 * (len(seconds) - 1))], 3), "latency_max_s": round(seconds[-1], 3)}


def computed(readings: list[Reading], epoch: str) -> dict:
    """Bytes per reading of the whole day in each form, MQTT framing counted (PUBLISH + PUBACK)."""
    payloads = [_numbered(r, i, epoch).to_json().encode() for i, r in enumerate(readings, 1)]
    n = len(payloads)
    single = sum(publish_bytes(topics.reading(r.site, r.gateway, r.device), p) for r, p in zip(readings, payloads))
    tb = sum(publish_bytes(TB_TOPIC, p) for p in thingsboard_packs(readings))
    bt = topics.batch(readings[0].site, readings[0].gateway)
    ours = batches_of(payloads)
    signed_batches = batches_of(signed_chain(payloads, Ed25519PrivateKey.generate()))
    return {"json_single": round(single / n, 1), "thingsboard_packed": round(tb / n, 1),
            "batch": round(sum(publish_bytes(bt, p) for p in ours) / n, 1), "batches": len(ours),
            "batch_signed": round(sum(publish_bytes(bt, p) for p in signed_batches) / n, 1),
            "json_payload_mean": round(sum(map(len, payloads)) / n, 1)}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1_000_000, help="link rate each way [bit/s]")
    ap.add_argument("--sample", type=int, default=3240, help="readings sent in each form in phase 1 (an hour)")
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--skip-forms", action="store_true", help="phase 2 and 3 only (no ratios)")
    ap.add_argument("--signed", action="store_true",
                    help="phases 2 and 3 with every reading signed (chain of custody), the collector requiring it")
    args = ap.parse_args()
    results = {"machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
               "link_bits_per_s": args.rate, "signed": args.signed}
    site = load_site(MN_SOLAR)
    readings = day_of_readings(site)
    results["computed_bytes_per_reading"] = computed(readings, "0123456789abcdef")
    print("computed", json.dumps(results["computed_bytes_per_reading"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mq", extra_config="max_packet_size 65536\n").start()
        link = ThinLink(broker.port, args.rate)
        try:
            if not args.skip_forms:
                link.up()
                results["forms"] = forms(link, readings[:args.sample], "0123456789abcdef")
                link.down()
            day = Day(Path(tmp) / "day", broker, link, readings, Ed25519PrivateKey.generate() if args.signed else None)
            try:
                results.update(day.run(link, broker, args.live_seconds))
            finally:
                day.close()
        finally:
            link.down()
            broker.stop()
    if args.skip_forms:
        return
    f, d = results["forms"], results["drain"]
    results["ratios"] = {
        "backlog_vs_json_single": round(d["bytes_per_reading"] / f["json_single"]["bytes_per_reading"], 3),
        "backlog_vs_thingsboard_packed": round(d["bytes_per_reading"] / f["thingsboard_packed"]["bytes_per_reading"], 3),
        "live_vs_json_single": round(results["live_only"]["bytes_per_reading"] / f["json_single"]["bytes_per_reading"], 3),
    }
    print("ratios", json.dumps(results["ratios"]), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"thin_link{'_signed' if args.signed else ''}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
