"""Polling throughput: our gateway against a bare pymodbus loop and ThingsBoard IoT Gateway.

    python bench/polling_throughput.py [--devices 10 --points 20 --seconds 10]

N simulated devices, each serving ``--points`` float32 values in one contiguous block of
holding registers, are served by plain pymodbus TCP servers (one per device, static
data) in a separate process, the same servers for every contender. Each contender then
polls them as fast as it can for a fixed wall time, in its own process, so that its
CPU time and peak RSS are its own:

* ``ceiling``        a bare ``ModbusTcpClient`` loop, one thread per device, reading
                     the whole block and decoding each point with
                     ``convert_from_registers``: what pymodbus itself allows here.
* ``gateway-loop``   our gateway's poll path without the scheduler: one thread per
                     endpoint calling ``Gateway.poll_device`` (DevicePoller.poll +
                     Outbox.put; the outbox's committer numbers, renders and commits)
                     back to back, with the real Publisher delivering to Mosquitto.
* ``gateway-loop-signed``, ``gateway-0.1s-signed``  the same, the gateway signing
                     each reading (a key made for the run): the chain of custody's
                     cost, in the same run; only with ``--only`` (bench/custody_cost.py
                     asks for them).
* ``gateway-sched``  the real ``gateway.service.Gateway`` (its poll schedule), with the
                     poll interval forced to ``--interval`` below the config floor of 0.1 s.
* ``gateway-0.1s``   the real Gateway as a site file can configure it (0.1 s, the floor).
* ``thingsboard``    ThingsBoard IoT Gateway in its own virtualenv (bench/.tb-venv),
                     Modbus connector, one request per point (its config's way), MQTT to
                     the same Mosquitto, session limits answered by this script.

A reading is one channel value; a message is one device poll. Figures are taken over
``--seconds`` after ``--warmup`` seconds, from the contender's own counters and CPU
times (``os.times``; ``/proc`` for ThingsBoard), and, for the contenders that publish,
from an MQTT subscriber in this process that counts the values arriving at the broker.
A last, single-threaded pass times each stage of one poll alone (``role_breakdown``),
so that a gap to the ceiling can be pinned on a function; ``--profile`` adds py-spy
profiles of gateway-loop (read them with ``bench/profile_summary.py``).
Results: two tables on stdout and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from jcm.broker import Mosquitto, wait_for_port  # noqa: E402

BASE_ADDRESS = 100  # not 0: an off-by-one in server or client addressing shows as wrong values
TB_VENV = BENCH / ".tb-venv"
TB_VERSION = "3.8.5"
TB_EXTRA = ["pymodbus==3.9.2", "pyserial", "pyserial-asyncio"]  # what TB would pip-install at run time
CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("bench")


def expected_value(device: int, point: int) -> float:
    """The static value of ``point`` on ``device``: exact in float32, distinct per point."""
    return device * 1000 + point + 0.25


# --------------------------------------------------------------------------------------
# The Modbus servers (a separate process)
# --------------------------------------------------------------------------------------

def role_modbus_server(spec: dict) -> None:
    """Serve each of ``spec['ports']`` as one device on its own port from one asyncio loop, with static data.

    A plain pymodbus server with no action callback: the cheapest way pymodbus serves,
    so that the server costs each contender the same and as little as it can. With
    ``record_polls`` it also notes, per port, when a poll of the device began (a read
    starting at the first point's register: every contender's first request of a poll),
    so that the harness can see whether each device was polled on time.
    """
    import asyncio

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    requests = 0
    record = spec.get("poll_file")
    poll_starts: dict[int, list[float]] = {port: [] for port in spec["ports"]}

    def counter(port: int):
        starts = poll_starts[port]

        def count(sending: bool, pdu):
            """trace_pdu hook (pymodbus calls a no-op one anyway): counts the requests received."""
            nonlocal requests
            if not sending:
                requests += 1
                if record and getattr(pdu, "address", None) == BASE_ADDRESS:
                    starts.append(time.monotonic())  # CLOCK_MONOTONIC: the same clock in every process
            return pdu
        return count

    def report() -> None:
        """Requests so far; the poll starts since the last report (then forgotten) go to ``poll_file``.

        To a file, not the pipe: a report of hundreds of devices fills the pipe, and a
        server blocked on it stops answering until the harness reads it, which would show
        as a late poll of every device it serves.
        """
        if record:
            tmp = Path(record).with_suffix(".tmp")
            tmp.write_text(json.dumps({str(p): s for p, s in poll_starts.items()}))
            tmp.replace(record)
            for starts in poll_starts.values():
                starts.clear()
        print(json.dumps({"requests": requests}), flush=True)

    async def main() -> None:
        servers = []
        for d, port in enumerate(spec["ports"], start=spec.get("first_device", 0)):
            values = [expected_value(d, k) for k in range(spec["points"])]
            device = SimDevice(1, simdata=[SimData(BASE_ADDRESS, values=values, datatype=DataType.FLOAT32)])
            server = ModbusTcpServer(device, address=("127.0.0.1", port), trace_pdu=counter(port))
            await server.serve_forever(background=True)
            servers.append(server)
        print("READY", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, report)
        await stop.wait()
        for server in servers:
            await server.shutdown()

    asyncio.run(main())


# --------------------------------------------------------------------------------------
# Measurement helpers shared by the contender processes
# --------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """User + system CPU of this process, all threads."""
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def emit(event: dict) -> None:
    """One JSON line to the parent: ``start`` opens the measured window, ``end`` closes it."""
    print(json.dumps(event), flush=True)


def measure(spec: dict, counters) -> dict:
    """Warm up, then report ``counters()`` and CPU over ``spec['seconds']`` of wall time."""
    time.sleep(spec["warmup"])
    c0, cpu0, t0 = counters(), cpu_seconds(), time.monotonic()
    emit({"event": "start"})
    time.sleep(spec["seconds"])
    c1, cpu1, t1 = counters(), cpu_seconds(), time.monotonic()
    result = {k: c1[k] - c0[k] for k in c0}
    result.update(wall_s=t1 - t0, cpu_s=cpu1 - cpu0)
    return result


# --------------------------------------------------------------------------------------
# Contender: the bare pymodbus ceiling
# --------------------------------------------------------------------------------------

def role_ceiling(spec: dict) -> None:
    """The most a pymodbus client can do here: one whole-block read per device, no more.

    One thread and one ModbusTcpClient per device, reading all 2 x points registers in
    one request and decoding every point with ``convert_from_registers``, nothing
    stored or sent. This is the ceiling the gateway's poll path is held against.
    """
    from pymodbus.client import ModbusTcpClient

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    float32 = ModbusTcpClient.DATATYPE.FLOAT32
    n_regs = 2 * spec["points"]
    stop = threading.Event()
    counts = [0] * len(spec["ports"])
    errors = [0] * len(spec["ports"])

    def run(i: int, port: int) -> None:
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        client.connect()
        rr = client.read_holding_registers(BASE_ADDRESS, count=n_regs, device_id=1)
        got = [client.convert_from_registers(rr.registers[k:k + 2], float32) for k in range(0, n_regs, 2)]
        if got != [expected_value(i, k) for k in range(spec["points"])]:
            raise SystemExit(f"device {i}: read {got[:3]}..., expected other values: addressing is off")
        while not stop.is_set():
            rr = client.read_holding_registers(BASE_ADDRESS, count=n_regs, device_id=1)
            if rr.isError():
                errors[i] += 1
                continue
            regs = rr.registers
            values = [client.convert_from_registers(regs[k:k + 2], float32) for k in range(0, n_regs, 2)]
            counts[i] += len(values)
        client.close()

    threads = [threading.Thread(target=run, args=(i, p), daemon=True) for i, p in enumerate(spec["ports"])]
    for t in threads:
        t.start()
    result = measure(spec, lambda: {"readings": sum(counts), "polls": sum(counts) // spec["points"],
                                    "errors": sum(errors)})
    stop.set()
    for t in threads:
        t.join(5)
    result.update(requests_per_cycle=len(spec["ports"]), peak_rss_mb=peak_rss_mb(), publishes=False)
    emit({"event": "end", **result})


# --------------------------------------------------------------------------------------
# Contender: our gateway (scheduler, or the bare poll path)
# --------------------------------------------------------------------------------------

def _load_gateway(spec: dict):
    """The site as the loader validates it, then the poll interval forced if asked.

    Device.poll_interval has a floor of 0.1 s in the config model; to measure the
    scheduler at a faster rate the interval is replaced after validation (model_copy
    does not re-validate), which only a benchmark should do.
    """
    from contract.config import load_site
    from gateway.service import Gateway

    site = load_site(spec["site"])
    if spec.get("signed"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from contract.custody import key_files

        key_file = Path(spec["outbox"]).with_suffix(".key")
        key_file.write_bytes(key_files(Ed25519PrivateKey.generate())[0])
        key_file.chmod(0o600)
        site = site.model_copy(update={"custody": site.custody.model_copy(
            update={"private_key_file": str(key_file), "key_id": "bench-key"})})
    if spec.get("interval") is not None:
        site = site.model_copy(update={"devices": [d.model_copy(update={"poll_interval": spec["interval"]})
                                                   for d in site.devices]})
    return Gateway(site, broker_url=spec["broker_url"], outbox_path=spec["outbox"])


def _check_first_reading(gw) -> None:
    """One poll per device before timing: values must be the ones the server holds."""
    for i, poller in enumerate(gw.pollers):
        reading = poller.poll()
        want = {f"ch_{k:02d}": expected_value(i, k) for k in range(len(poller.profile.points))}
        if reading is None or reading.values != want or reading.quality:
            raise SystemExit(f"{poller.device.id}: first poll gave {reading}, expected {want}")


def _gateway_counters(gw, points: int):
    def counters() -> dict:
        return {"polls": gw.polls, "readings": gw.polls * points,
                "acked_messages": gw.publisher.acknowledged, "published_messages": gw.publisher.published}
    return counters


def role_gateway_scheduler(spec: dict) -> None:
    """The real Gateway: its poll schedule, DevicePoller, durable Outbox, Publisher to Mosquitto."""
    logging.basicConfig(level=logging.WARNING)
    for name in ("pymodbus", "gateway.poll_schedule"):  # skipped-poll warnings at this rate are expected
        logging.getLogger(name).setLevel(logging.CRITICAL)
    gw = _load_gateway(spec)
    _check_first_reading(gw)
    gw.start()
    result = measure(spec, _gateway_counters(gw, spec["points"]))
    result.update(requests_per_cycle=sum(p.requests_per_poll for p in gw.pollers),
                  points_per_cycle=sum(len(p.profile.points) for p in gw.pollers),
                  outbox_depth_at_end=gw.outbox.depth, peak_rss_mb=peak_rss_mb())
    emit({"event": "end", **result})
    gw.stop()


def role_gateway_loop(spec: dict) -> None:
    """The gateway's poll path without its schedule: what the code after the trigger costs.

    One thread per endpoint (as the gateway's thread pool gives each endpoint one
    client) calls ``Gateway.poll_device`` back to back for the devices behind it: the
    same DevicePoller.poll + Outbox.append + Publisher.notify as a scheduled job, with
    the real Publisher delivering to Mosquitto.
    """
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    gw = _load_gateway(spec)
    _check_first_reading(gw)
    by_endpoint: dict = {}
    for p in gw.pollers:
        by_endpoint.setdefault(p.device.connection.endpoint, []).append(p)
    stop = threading.Event()

    def run(pollers) -> None:
        while not stop.is_set():
            for p in pollers:
                gw.poll_device(p)

    gw.publisher.start()
    threads = [threading.Thread(target=run, args=(ps,), daemon=True) for ps in by_endpoint.values()]
    for t in threads:
        t.start()
    result = measure(spec, _gateway_counters(gw, spec["points"]))
    stop.set()
    for t in threads:
        t.join(5)
    result.update(requests_per_cycle=sum(p.requests_per_poll for p in gw.pollers),
                  points_per_cycle=sum(len(p.profile.points) for p in gw.pollers),
                  outbox_depth_at_end=gw.outbox.depth, peak_rss_mb=peak_rss_mb())
    emit({"event": "end", **result})
    gw.publisher.stop(timeout=2)
    for link in gw.links.values():
        link.close()
    gw.outbox.close()


# --------------------------------------------------------------------------------------
# Where one poll's time goes: each stage alone, one thread, no contention
# --------------------------------------------------------------------------------------

def role_breakdown(spec: dict) -> None:
    """Cost of each stage of one device poll, alone on one thread, gateway against ceiling.

    The throughput runs say how fast; this says why: per call, the CPU time
    (``time.thread_time``) and wall time of every stage a reading goes through, so that
    a gap to the ceiling can be pinned on a function. The outbox stages write a
    pre-rendered payload to a fresh file, durable (``synchronous=FULL``, the gateway's
    setting) and not, so that the cost of the disk is seen apart from SQLite's.
    """
    from dataclasses import replace

    from pymodbus.client import ModbusTcpClient

    from gateway.outbox import Outbox
    from gateway.register_map import decode_points

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    gw = _load_gateway(spec)
    poller = gw.pollers[0]
    request = poller.plan[0]
    unit = poller.device.connection.unit_id
    n, n_disk = spec["polls"], spec["disk_ops"]
    stages: dict[str, dict] = {}

    def stage(name: str, fn, reps: int, rounds: int = 5, clock=time.thread_time) -> None:
        """Median over ``rounds`` of the mean per call: a noisy neighbour spoils a round, not the figure."""
        for _ in range(min(20, reps)):
            fn()
        per_round = max(1, reps // rounds)
        cpu, wall = [], []
        for _ in range(rounds):
            c0, w0 = clock(), time.perf_counter()
            for _ in range(per_round):
                fn()
            cpu.append((clock() - c0) / per_round * 1e6)
            wall.append((time.perf_counter() - w0) / per_round * 1e6)
        stages[name] = {"cpu_us": statistics.median(cpu), "wall_us": statistics.median(wall),
                        "calls": per_round * rounds}

    # the gateway's path, stage by stage
    stage("gateway: ModbusLink.read (1 request, 40 registers)",
          lambda: poller.link.read(request.table, request.start, request.count, unit), n)
    block = poller.link.read(request.table, request.start, request.count, unit)
    stage(f"gateway: decode_points ({len(request.points)} points)",
          lambda: decode_points(request.points, poller.profile, request.start, block), n)
    stage("gateway: DevicePoller.poll (read + decode + Reading)", poller.poll, n)
    reading = poller.poll()
    stage("gateway: replace(reading, seq).to_json()", lambda: replace(reading, seq=1).to_json(), n)
    payload = replace(reading, seq=1).to_json()
    topic = "jcm/v1/bench/gw-bench/dev-00/reading"
    for durable in (True, False):
        label = "synchronous=FULL, the gateway's" if durable else "synchronous=NORMAL"
        box = Outbox(Path(spec["outbox"]).with_suffix(f".{durable}.sqlite"), 10_000_000, durable=durable)
        # process CPU: the outbox's committer thread does the work
        stage(f"gateway: Outbox.append ({label})", lambda: box.append(topic, lambda seq: payload), n_disk,
              clock=time.process_time)
        seqs = iter(range(1, 10**9))
        stage(f"gateway: Outbox.delete([seq]), one acked row ({label})", lambda: box.delete([next(seqs)]), n_disk,
              clock=time.process_time)
        box.close()
    # the ceiling's path
    client = ModbusTcpClient("127.0.0.1", port=spec["ports"][0], timeout=1, retries=0)
    client.connect()
    regs = client.read_holding_registers(request.start, count=request.count, device_id=unit).registers
    float32 = ModbusTcpClient.DATATYPE.FLOAT32
    stage("ceiling: read_holding_registers (1 request, 40 registers)",
          lambda: client.read_holding_registers(request.start, count=request.count, device_id=unit), n)
    stage(f"ceiling: convert_from_registers x{len(request.points)}",
          lambda: [client.convert_from_registers(regs[k:k + 2], float32) for k in range(0, len(regs), 2)], n)
    client.close()
    for link in gw.links.values():
        link.close()
    emit({"event": "end", "stages": stages})


ROLES = {"modbus-server": role_modbus_server, "ceiling": role_ceiling,
         "gateway-sched": role_gateway_scheduler, "gateway-loop": role_gateway_loop,
         "breakdown": role_breakdown}


# --------------------------------------------------------------------------------------
# The parent: files, servers, broker, subscriber, contenders, table
# --------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, from /proc."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += proc_cpu(int(child))
    return total


def proc_peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def device_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports below the kernel's ephemeral range.

    Ports taken from the ephemeral range (what binding port 0 gives) can be handed to
    another process's outgoing connection before the server binds them, and at
    hundreds of devices on a busy machine that happens; below the range only a
    listener can take them.
    """
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    start = random.randrange(10_000, low - 2 * n - 1)
    for port in range(start, low):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            ports.append(port)
        if len(ports) == n:
            return ports
    raise SystemExit(f"not {n} free ports between {start} and {low}")


def write_configs(workdir: Path, ports: list[int], points: int, broker_url: str, poll_interval: float = 0.1) -> Path:
    """Profile + site YAML for our gateway: one profile of ``points`` contiguous float32.

    ``poll_interval`` [s] is what the site file says (0.1, the config floor, unless
    told); faster runs override it in the child.
    """
    import yaml

    profiles, sites = workdir / "profiles", workdir / "sites"
    profiles.mkdir(parents=True)
    sites.mkdir(parents=True)
    profile = {
        "profile": "bench_float32", "description": "benchmark: contiguous float32 holding registers",
        "order": "ABCD", "max_gap": 16,
        "points": [{"channel": f"ch_{k:02d}", "table": "holding", "address": BASE_ADDRESS + 2 * k,
                    "type": "float32", "unit": "V"} for k in range(points)],
    }
    (profiles / "bench_float32.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    site = {
        "site": "bench", "name": "Benchmark site", "country": "MN", "timezone": "UTC",
        "latitude": 0.0, "longitude": 0.0, "commissioned": "2024-01-01",
        "jcm_project": "bench", "methodology": "bench", "methodology_version": "1",
        "gateway": "gw-bench", "mqtt": {"url": broker_url},
        "outbox": {"path": str(workdir / "outbox.sqlite"), "max_rows": 8_000_000},
        "devices": [{"id": f"dev-{i:02d}", "kind": "power_meter", "profile": "bench_float32",
                     "poll_interval": poll_interval,
                     "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                                    "timeout": 1.0}}
                    for i, port in enumerate(ports)],
    }
    path = sites / "bench.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


class BrokerCounter:
    """Counts what reaches the broker, for our gateway and for ThingsBoard alike.

    Subscribes (QoS 0, to stay cheap) to our reading topic and ThingsBoard's gateway
    telemetry topic, and answers ThingsBoard's ``getSessionLimits`` RPC with no limits:
    without that answer ThingsBoard publishes no telemetry. ``entries`` counts device
    polls as published (ours: one message each; ThingsBoard: one ``{ts, values}`` entry
    of one device, several of which share a message).
    """

    READINGS = "jcm/v1/+/+/+/reading"
    TB_TELEMETRY = "v1/gateway/telemetry"
    TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
    TB_RPC_RESPONSE = "v1/devices/me/rpc/response/"
    NO_LIMITS = {
        # tb_device_mqtt.TBDeviceMqttClient.on_service_configuration reads "rateLimits" (the gateway
        # itself) and tb_gateway_mqtt.TBGatewayMqttClient pops "gatewayRateLimits" (the devices behind
        # it); "0:0," is no limit. maxInflightMessages and maxPayloadSize are taken at 80 %.
        "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
        "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
        "maxInflightMessages": 10_000,
        "maxPayloadSize": 10_000_000,
    }

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.messages = self.entries = self.values = 0
        self.rpc_answered = 0
        self.bad = 0
        self.last: dict[str, dict] = {}  # the last body per topic kind, for a check of the values
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(self.READINGS, 0), (self.TB_TELEMETRY, 0), (self.TB_RPC_REQUEST + "+", 1)])

    def _on_message(self, client, userdata, msg):
        try:
            body = json.loads(msg.payload)
            if msg.topic.startswith(self.TB_RPC_REQUEST):
                if body.get("method") == "getSessionLimits":
                    request_id = msg.topic.rsplit("/", 1)[1]
                    client.publish(self.TB_RPC_RESPONSE + request_id, json.dumps(self.NO_LIMITS), qos=1)
                    self.rpc_answered += 1
                return
            self.last[msg.topic if msg.topic == self.TB_TELEMETRY else self.READINGS] = body
            if msg.topic == self.TB_TELEMETRY:  # {"device": [{"ts": ..., "values": {...}}, ...], ...}
                entries = [e for device_entries in body.values() for e in device_entries]
                n = sum(len(e["values"]) if "values" in e else len(e) for e in entries)
                e = len(entries)
            else:
                n, e = len(body["values"]), 1
            with self.lock:
                self.messages += 1
                self.entries += e
                self.values += n
        except Exception:  # never let a callback raise: it stops paho's network thread
            self.bad += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"broker_messages": self.messages, "broker_entries": self.entries, "broker_values": self.values}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Harness:
    """What every contender shares: the servers, the broker, the counter, the temp dir.

    The devices are served by processes of at most ``devices_per_server`` devices
    each (all in one by default), so that at hundreds of devices the servers are not
    what limits a contender; with ``record_polls`` they note when each device's polls
    began (``poll_starts``, refreshed by every ``sample``).
    """

    def __init__(self, args, workdir: Path, devices_per_server: int | None = None, record_polls: bool = False,
                 poll_interval: float = 0.1):
        self.args = args
        self.workdir = workdir
        self.ports = device_ports(args.devices)
        per = devices_per_server or len(self.ports)
        firsts = range(0, len(self.ports), per)
        self.poll_files = [workdir / f"poll-starts-{i}.json" if record_polls else None for i in firsts]
        self.servers = [subprocess.Popen(
            [sys.executable, __file__, "--role", "modbus-server", "--spec",
             json.dumps({"ports": self.ports[i:i + per], "first_device": i, "points": args.points,
                         "poll_file": str(poll_file) if poll_file else None})],
            stdout=subprocess.PIPE, text=True) for i, poll_file in zip(firsts, self.poll_files)]
        self.broker = self.counter = None
        try:
            for server in self.servers:
                if server.stdout.readline().strip() != "READY":
                    raise SystemExit("a Modbus server process did not start")
            for port in self.ports:
                wait_for_port(port)
            self.broker = Mosquitto(workdir / "mosquitto").start()
            self.counter = BrokerCounter(self.broker.port)
        except BaseException:
            self.close()
            raise
        self.poll_starts: dict[int, list[float]] = {}
        self.site = write_configs(workdir, self.ports, args.points, self.broker.url, poll_interval)

    def server_requests(self) -> int:
        """Modbus requests the servers have received so far (they answer SIGUSR1 with a count).

        Also replaces ``poll_starts`` with the poll starts recorded since the last call.
        """
        total = 0
        self.poll_starts = {}
        for server in self.servers:
            server.send_signal(signal.SIGUSR1)
        for server, poll_file in zip(self.servers, self.poll_files):
            total += json.loads(server.stdout.readline())["requests"]  # printed once poll_file is written
            if poll_file:
                self.poll_starts.update({int(p): s for p, s in json.loads(poll_file.read_text()).items()})
        return total

    def sample(self) -> dict:
        """Counters of everything around the contender, to difference over its window."""
        return {"server_cpu_s": sum(proc_cpu(s.pid) for s in self.servers),
                "broker_cpu_s": proc_cpu(self.broker.proc.pid),
                "harness_cpu_s": cpu_seconds(), "server_requests": self.server_requests(),
                **self.counter.snapshot()}

    def run_child(self, name: str, role: str, profile: Path | None = None, **extra) -> dict:
        """Run one of our contender roles in a child process and collect its window.

        With ``profile`` (a py-spy executable), the child is sampled over its window twice
        over: once where the GIL is held (where CPU goes) and once with idle threads
        included (where wall time goes, locks and fsync included).
        """
        spec = {"ports": self.ports, "points": self.args.points, "seconds": self.args.seconds,
                "warmup": self.args.warmup, "site": str(self.site), "broker_url": self.broker.url,
                "outbox": str(self.workdir / f"outbox-{name}.sqlite"), **extra}
        proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)],
                                stdout=subprocess.PIPE, text=True)
        before = after = None
        result: dict | None = None
        spies: list[subprocess.Popen] = []
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "start":
                before = self.sample()
                if profile:
                    spies = self._spy(profile, proc.pid, name)
            elif event["event"] == "end":
                after = self.sample() if before else None
                result = event
                break
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for spy in spies:
            spy.wait(timeout=60)
        if result is None:
            raise RuntimeError(f"{name}: the contender exited with {proc.returncode} before reporting")
        result.pop("event")
        if before and after:
            result.update({k: after[k] - before[k] for k in before})
        return result

    def _spy(self, py_spy: Path, pid: int, name: str) -> list[subprocess.Popen]:
        out = self.args.json.parent
        out.mkdir(parents=True, exist_ok=True)
        duration = str(max(1, int(self.args.seconds) - 1))
        common = [str(py_spy), "record", "--pid", str(pid), "--duration", duration, "--nonblocking",
                  "--format", "raw"]
        return [subprocess.Popen([*common, "--rate", "250", "--gil", "-o", str(out / f"profile-{name}-gil.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                subprocess.Popen([*common, "--rate", "100", "--idle", "-o", str(out / f"profile-{name}-wall.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

    def close(self) -> None:
        if self.counter:
            self.counter.close()
        if self.broker:
            self.broker.stop()
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


# --------------------------------------------------------------------------------------
# Contender: ThingsBoard IoT Gateway, in its own virtualenv
# --------------------------------------------------------------------------------------

def ensure_tb_venv() -> Path:
    """bench/.tb-venv with thingsboard-gateway and the pymodbus it pins (it would pip-install it at start)."""
    python = TB_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TB_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import thingsboard_gateway, pymodbus, serial_asyncio; "
                            "print(pymodbus.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != TB_EXTRA[0].split("==")[1]:
        print(f"installing thingsboard-gateway=={TB_VERSION} into {TB_VENV} ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"thingsboard-gateway=={TB_VERSION}", *TB_EXTRA],
                       check=True)
    return python


def write_tb_configs(tb_dir: Path, ports: list[int], points: int, broker_port: int, poll_ms: int,
                     form: str = "per-point") -> Path:
    """tb_gateway.json + modbus.json + logs.json, from the shipped defaults where they matter.

    ``form`` "per-point": the Modbus connector gets one timeseries entry per point, each
    its own read of two registers, the way its configuration usually describes points.
    "range": one timeseries entry whose address is the whole block ("100-139", its
    "wide range" form, ``maxRegistersPerRequest`` raised from 16 to the block), read in
    one request and decoded into one value per two registers, keys ``ch_<address>``: the
    same one request per device poll as our gateway. Storage (memory), packing
    (minPackSendDelayMS 50, maxPayloadSizeBytes 8196), QoS 1 and reportStrategy
    (ON_RECEIVED: every reading) stay as shipped; statistics and remote configuration
    are off, and the local rate limits are "0:0," (none).
    """
    config = tb_dir / "config"
    (tb_dir / "logs").mkdir(parents=True)
    config.mkdir(parents=True)
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1", "port": broker_port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 60, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1, "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False, "inactivityTimeoutSeconds": 300,
                                       "inactivityCheckPeriodSeconds": 10},
            "rateLimits": "0:0,", "dpRateLimits": "0:0,", "messagesRateLimits": "0:0,",
            "deviceMessagesRateLimits": "0:0,", "deviceRateLimits": "0:0,", "deviceDpRateLimits": "0:0,",
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "bench-modbus", "configuration": "modbus.json"}],
    }
    slaves = [{
        "host": "127.0.0.1", "port": port, "type": "tcp", "method": "socket", "unitId": 1,
        "deviceName": f"dev-{i:02d}", "deviceType": "default", "timeout": 1, "byteOrder": "BIG",
        "wordOrder": "BIG", "retries": 0, "pollPeriod": poll_ms, "connectAttemptTimeMs": 500,
        "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 30000,
        "attributes": [], "attributeUpdates": [], "rpc": [],
        "timeseries": [{"tag": f"ch_{k:02d}", "type": "32float", "functionCode": 3, "objectsCount": 2,
                        "address": BASE_ADDRESS + 2 * k} for k in range(points)] if form == "per-point" else
                      [{"tag": "ch_${address}", "type": "32float", "functionCode": 3, "objectsCount": 2,
                        "address": f"{BASE_ADDRESS}-{BASE_ADDRESS + 2 * points - 1}",
                        "maxRegistersPerRequest": 2 * points}],
    } for i, port in enumerate(ports)]
    logs = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(asctime)s %(levelname)s [%(name)s] %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f",
                              "filename": str(tb_dir / "logs" / "tb.log"), "level": "INFO"}},
        "loggers": {
            **{name: {"handlers": ["file"], "level": "INFO", "propagate": False}
               for name in ("service", "connector", "converter", "tb_connection", "storage", "extension")},
            # pymodbus 3.9.2 logs a BinaryPayloadDecoder deprecation warning on every decode (MBs a
            # second here): silenced so that ThingsBoard is measured, not its log file
            "pymodbus": {"handlers": ["file"], "level": "ERROR", "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
    }
    (config / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    (config / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    (config / "logs.json").write_text(json.dumps(logs, indent=2))
    return config


def run_thingsboard_once(h: Harness, python: Path, poll_ms: int) -> dict:
    """One ThingsBoard run at one pollPeriod, measured from outside: /proc and the broker."""
    tb_dir = h.workdir / f"tb-{poll_ms}ms"
    config = write_tb_configs(tb_dir, h.ports, h.args.points, h.broker.port, poll_ms)
    env = {**os.environ, "TB_GW_CONFIG_DIR": str(config) + "/"}
    out = open(tb_dir / "stdout.log", "wb")
    proc = subprocess.Popen([str(python), "-m", "thingsboard_gateway.tb_gateway"], cwd=tb_dir, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        first = h.counter.snapshot()["broker_values"]
        while h.counter.snapshot()["broker_values"] == first:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ThingsBoard published no telemetry within 60 s (exit {proc.poll()}); "
                                   f"getSessionLimits answered {h.counter.rpc_answered} times; see {tb_dir}")
            time.sleep(0.2)
        time.sleep(h.args.warmup)
        before, cpu0, t0 = h.sample(), proc_cpu(proc.pid), time.monotonic()
        time.sleep(h.args.seconds)
        after, cpu1, t1 = h.sample(), proc_cpu(proc.pid), time.monotonic()
        result = {k: after[k] - before[k] for k in before}
        result.update(wall_s=t1 - t0, cpu_s=cpu1 - cpu0, readings=result["broker_values"],
                      polls=result["broker_entries"], requests_per_cycle=h.args.devices * h.args.points,
                      peak_rss_mb=proc_peak_rss_mb(proc.pid), poll_period_ms=poll_ms,
                      rpc_answered=h.counter.rpc_answered)
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()


def run_thingsboard(h: Harness) -> dict:
    """ThingsBoard at each ``--tb-poll-ms``; its best run is its figure, the others are kept.

    Its Modbus connector takes queued polls every 0.1 s and converts a device's polls of
    one 0.1 s batch under one timestamp, so polling faster than that publishes less,
    not more: the sweep finds its best period instead of assuming one.
    """
    python = ensure_tb_venv()
    sweep = {}
    for poll_ms in h.args.tb_poll_ms:
        print(f"  thingsboard pollPeriod {poll_ms} ms ...", flush=True)
        r = run_thingsboard_once(h, python, poll_ms)
        r["derived"] = derive(r)
        sweep[poll_ms] = r
    best = max(sweep.values(), key=lambda r: r["readings"])
    return {**best, "sweep": {str(k): v["derived"] for k, v in sweep.items()}}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def derive(r: dict) -> dict:
    """Rates and costs from a raw window."""
    wall = r["wall_s"]
    polls = r.get("polls") or 0
    return {
        "readings_per_s": r["readings"] / wall,
        "messages_per_s": polls / wall,
        "delivered_readings_per_s": r["broker_values"] / wall if r.get("publishes", True) else None,
        "cpu_s_per_1000_readings": r["cpu_s"] / r["readings"] * 1000 if r["readings"] else None,
        "cpu_cores": r["cpu_s"] / wall,
        "modbus_requests_per_s": r["server_requests"] / wall,
        "modbus_requests_per_published_poll": r["server_requests"] / polls if polls else None,
        "server_cpu_cores": r["server_cpu_s"] / wall,
        "broker_cpu_cores": r["broker_cpu_s"] / wall,
        "harness_cpu_cores": r["harness_cpu_s"] / wall,
    }


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict, ceiling_rate: float | None) -> str:
    head = (f"{'contender':<20} {'readings/s':>10} {'x ceiling':>9} {'cap/s':>7} {'msgs/s':>7} "
            f"{'delivered/s':>11} {'req/cycle':>9} {'req/s':>7} {'CPU-s/1k':>8} {'cores':>5} "
            f"{'RSS MB':>6} {'server':>6} {'broker':>6}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<20} failed: {r['error']}")
            continue
        d = r["derived"]
        ratio = d["readings_per_s"] / ceiling_rate if ceiling_rate else None
        lines.append(
            f"{name:<20} {d['readings_per_s']:>10,.0f} {fmt(ratio, '>9.3f')} "
            f"{fmt(r.get('cap_readings_per_s'), '>7,.0f')} {d['messages_per_s']:>7,.0f} "
            f"{fmt(d['delivered_readings_per_s'], '>11,.0f')} {r['requests_per_cycle']:>9} "
            f"{d['modbus_requests_per_s']:>7,.0f} {fmt(d['cpu_s_per_1000_readings'], '>8.4f')} "
            f"{d['cpu_cores']:>5.2f} {r['peak_rss_mb']:>6.1f} {d['server_cpu_cores']:>6.2f} "
            f"{d['broker_cpu_cores']:>6.2f}")
    lines += ["", "readings/s: channel values read (ours, ceiling: counted in the process; thingsboard: "
              "values published)", "x ceiling: readings/s over the ceiling's; cap/s: the most the poll "
              "interval allows; msgs/s: device polls/s (published ones for thingsboard)",
              "delivered/s: values counted at the broker by a subscriber; req/cycle: Modbus requests per "
              "poll of all devices; req/s: requests the servers received",
              "CPU-s/1k: CPU seconds of the contender's process per 1,000 readings; cores, server, broker: "
              "CPU seconds per second of the contender, the Modbus servers, Mosquitto"]
    return "\n".join(lines)


def breakdown_table(stages: dict) -> str:
    lines = [f"{'stage (one call, one thread)':<72} {'CPU us':>8} {'wall us':>8}", "-" * 90]
    for name, s in stages.items():
        lines.append(f"{name:<72} {s['cpu_us']:>8.1f} {s['wall_us']:>8.1f}")
    return "\n".join(lines)


def find_py_spy() -> Path | None:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy")
    return Path(found) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--points", type=int, default=20, help="float32 points per device (2 registers each)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured wall time per contender")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds run before each measurement")
    ap.add_argument("--interval", type=float, default=0.01, help="poll interval of gateway-sched [s]")
    ap.add_argument("--tb-poll-ms", type=int, nargs="+", default=[10, 50, 100],
                    help="ThingsBoard pollPeriods to try [ms]; the best is reported")
    ap.add_argument("--only", nargs="*", help="run only these contenders")
    ap.add_argument("--skip-tb", action="store_true", help="leave ThingsBoard out")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-stage cost table")
    ap.add_argument("--profile", action="store_true",
                    help="also run gateway-loop under py-spy ($PY_SPY or on PATH); profiles go beside --json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json")
    ap.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        ROLES[args.role](json.loads(args.spec))
        return
    if 2 * args.points > 125:
        ap.error("--points above 62 does not fit one Modbus read")
    py_spy = find_py_spy() if args.profile else None
    if args.profile and py_spy is None:
        ap.error("--profile needs py-spy: pip install py-spy, or set PY_SPY to its path")

    n_points = args.devices * args.points
    contenders = {
        "ceiling": lambda h: h.run_child("ceiling", "ceiling"),
        "gateway-loop": lambda h: h.run_child("gateway-loop", "gateway-loop"),
        "gateway-loop-signed": lambda h: h.run_child("gateway-loop-signed", "gateway-loop", signed=True),
        "gateway-sched": lambda h: {**h.run_child("gateway-sched", "gateway-sched", interval=args.interval),
                                    "cap_readings_per_s": n_points / args.interval},
        "gateway-0.1s": lambda h: {**h.run_child("gateway-0.1s", "gateway-sched", interval=None),
                                   "cap_readings_per_s": n_points / 0.1},
        "gateway-0.1s-signed": lambda h: {**h.run_child("gateway-0.1s-signed", "gateway-sched", interval=None,
                                                        signed=True), "cap_readings_per_s": n_points / 0.1},
        "thingsboard": run_thingsboard,
    }
    # the signed ones only when asked (bench/custody_cost.py does)
    names = args.only or [n for n in contenders if not n.endswith("-signed")
                          and not (args.skip_tb and n == "thingsboard")]
    workdir = Path(tempfile.mkdtemp(prefix="jcm-bench-"))
    results: dict = {}
    stages: dict = {}
    profiles: dict = {}
    h = Harness(args, workdir)
    try:
        for name in names:
            print(f"running {name} for {args.seconds:g} s ...", flush=True)
            try:
                r = contenders[name](h)
            except Exception as exc:  # a contender that cannot run is reported, not fatal
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            r["derived"] = derive(r)
            if name == "thingsboard":
                r["cap_readings_per_s"] = n_points / (r["poll_period_ms"] / 1000)
            results[name] = r
        if not args.no_breakdown:
            print("running the per-stage breakdown ...", flush=True)
            stages = h.run_child("breakdown", "breakdown", polls=2000, disk_ops=300)["stages"]
        if py_spy:
            print(f"profiling gateway-loop for {args.seconds:g} s with {py_spy} ...", flush=True)
            r = h.run_child("gateway-loop-profiled", "gateway-loop", profile=py_spy)
            profiles = {"gateway-loop": {"readings_per_s_while_profiled": derive(r)["readings_per_s"],
                                         "files": [f"profile-gateway-loop-profiled-{k}.txt" for k in ("gil", "wall")]}}
    finally:
        h.close()
        if args.keep:
            print(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    ceiling = results.get("ceiling", {}).get("derived", {}).get("readings_per_s")
    print()
    print(table(results, ceiling))
    if stages:
        print()
        print(breakdown_table(stages))
    report = {"command": " ".join(["python", "bench/polling_throughput.py", *sys.argv[1:]]), "machine": machine(),
              "setup": {"devices": args.devices, "points": args.points, "seconds": args.seconds,
                        "warmup": args.warmup, "interval": args.interval, "tb_poll_ms": args.tb_poll_ms,
                        "registers_per_device": 2 * args.points, "base_address": BASE_ADDRESS},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": results, "breakdown": stages, "profiles": profiles}
    if ceiling:
        report["ratios_to_ceiling"] = {n: r["derived"]["readings_per_s"] / ceiling
                                       for n, r in results.items() if "derived" in r}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
