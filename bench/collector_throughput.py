"""Collector throughput against what a bare subscriber gets of the same stream, per back-end.

A private Mosquitto holds N QoS 1 reading messages (20 channels, ten meters) for each
contender's persistent session, put there by a publisher in its own process before the
contender connects; each contender then drains its queue, in its own process(es):

- ``mosquitto_sub``: the C client, acknowledging each message (the broker's own limit);
- ``paho``: a bare paho-mqtt subscriber that counts and acknowledges (Python's limit);
- ``paho5``: the same connected as the collector is (MQTT 5, ``manual_ack``, acknowledging
  each message in its callback): the like-for-like reference;
- ``paho x2``: two of them on a shared subscription (what two Python processes get);
- ``collector sqlite|influx1|vm`` x1 and x2: the real ``Collector`` (validation, store,
  acknowledgement after the store has the batch) into SQLite (``synchronous=FULL``),
  InfluxDB 1.6.7 (``api=v1``) and VictoriaMetrics (``api=v2``, influxdb-client); x2 is
  two collector processes on one shared subscription (``share_group``).

A drain (``--mode drain``, the default) keeps the publisher's CPU out of the window;
``--mode live`` publishes while the contenders run, so the publisher competes for the
same cores as it would on a one-box site. Rate = messages received or stored ÷ (last
one's time − the moment all of a contender's processes were told to go).

``--batch N`` sends the same readings as a gateway sends its backlog: in the batch form
(``contract/batch.py``: one zlib stream of up to N readings, as many as fit in the broker's
packet, per MQTT message, packed by the gateway's own ``batch.pack``) on the batch topic.
Rates and CPU are then per reading, and the bare subscribers unpack each batch into its
lines (``batch.unpack``), the least any subscriber of the batch form does.

``--collector-cpu F`` gives each contender process (a collector, a bare paho subscriber) a
CPU quota of F of one core, in a cgroup (v1 CPU controller) of its own: a deployment's
collectors on cores of their own, modelled on a machine whose two cores the broker, the
store server and the publisher share with them. x2 ÷ x1 is then what a second collector
adds when it has its own CPU (the groups, and one of the broker and store servers, are
weighted so that other work on the machine takes CPU from none of them first); the bench prints what the broker, the store servers, the
publisher and the machine used in each run's window, and flags a run whose non-collector
processes came near filling what the quotas leave (its ratio is then the machine's, not the
collectors').

    python bench/collector_throughput.py [--messages 30000] [--mode drain|live|both] [--batch N] [--only paho ...]
                                         [--collector-cpu F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
import urllib3  # noqa: E402

from contract import batch as batch_form, topics  # noqa: E402
from contract.message import Reading  # noqa: E402
from jcm.broker import Mosquitto, free_port, stop_process, wait_for_port  # noqa: E402
from jcm.influxd import influxd_config  # noqa: E402

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SITE = "bench"
TOPIC = topics.ALL_READINGS
#: the readings' sequence epoch: a gateway's readings carry one, and the store's acknowledgements
#: (collector/acknowledgement.py) are published for an epoch only
EPOCH = "0123456789abcdef"
#: a contender is done when nothing more arrived for this long [s]: longer than SQLite's
#: busy timeout (5 s), so that a collector waiting for another's lock is measured, not cut off
IDLE_S = 6.0


def messages(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        device = f"m{i % 10}"
        r = Reading(site=SITE, gateway="gw-bench", device=device, ts=T0 + dt.timedelta(seconds=i // 10),
                    values={f"ch{k}": float(i + k) + 0.25 for k in range(20)}, seq=i + 1, epoch=EPOCH)
        out.append((topics.reading(SITE, "gw-bench", device), r.to_json().encode()))
    return out


@functools.lru_cache(maxsize=1)
def batches(n: int, most: int) -> list[tuple[str, bytes, int]]:
    """The same readings as ``messages(n)`` in the batch form, as a gateway's backlog sends them:
    each batch the longest run of at most ``most`` readings that fits in one packet (topic,
    payload, readings)."""
    bodies = [body for _, body in messages(n)]
    out, i = [], 0
    while i < n:
        payload, count = batch_form.pack(bodies[i:i + most])
        out.append((topics.batch(SITE, "gw-bench"), payload, count))
        i += count
    return out


def write_site(workdir: Path) -> Path:
    """The bench site: ten meters of twenty channels (the collector accepts known sites only)."""
    profile = {"profile": "bench_meter", "points": [{"channel": f"ch{k}", "address": k} for k in range(20)]}
    (workdir / "profiles").mkdir(exist_ok=True)
    (workdir / "profiles" / "bench_meter.yaml").write_text(yaml.safe_dump(profile))
    site = {"site": SITE, "name": "Bench", "country": "MN", "timezone": "UTC", "latitude": 0, "longitude": 0,
            "commissioned": "2026-01-01", "jcm_project": "bench", "methodology": "MN_AM003",
            "methodology_version": "2.0", "gateway": "gw-bench", "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "devices": [{"id": f"m{i}", "kind": "power_meter", "profile": "bench_meter",
                         "connection": {"type": "tcp", "host": "127.0.0.1", "port": 1502, "unit_id": i + 1}}
                        for i in range(10)]}
    (workdir / "sites").mkdir(exist_ok=True)
    (workdir / "sites" / "bench.yaml").write_text(yaml.safe_dump(site))
    return workdir / "sites"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all the machine's cores have spent busy so far (/proc/stat; not idle, I/O wait or
    time the hypervisor took)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def proc_waited(pid: int) -> float:
    """Seconds a process's threads have so far been ready to run but waited for a core
    (/proc/<pid>/task/<tid>/schedstat, summed over its threads)."""
    return sum(int((task / "schedstat").read_text().split()[1]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


class Sampler:
    """CPU seconds of some processes and of the whole machine, and how long the processes waited
    for a core (``<name> waited``), sampled on a thread every ``INTERVAL`` s: what each used
    between two moments of a run (interpolated between samples), so that a run's window is
    measured without the publishing before it or the idle wait after. A process that has ended
    keeps its last figures."""

    INTERVAL = 0.05

    def __init__(self, pids: dict[str, int]):
        self.pids, self.samples, self._stop = pids, [], threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        row = {"t": time.time(), "machine": machine_busy()}
        for name, pid in self.pids.items():
            try:
                row[name], row[f"{name} waited"] = proc_cpu(pid), proc_waited(pid)
            except (OSError, IndexError):  # ended (a zombie's stat is empty of threads)
                row[name], row[f"{name} waited"] = self.samples[-1][name], self.samples[-1][f"{name} waited"]
        self.samples.append(row)

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _at(self, key: str, t: float) -> float:
        before = [s for s in self.samples if s["t"] <= t] or self.samples[:1]
        after = [s for s in self.samples if s["t"] >= t] or self.samples[-1:]
        a, b = before[-1], after[0]
        if b["t"] == a["t"]:
            return a[key]
        return a[key] + (b[key] - a[key]) * (t - a["t"]) / (b["t"] - a["t"])

    def cores(self, t0: float, t1: float) -> dict[str, float]:
        """Each process's and the machine's mean CPU use from ``t0`` to ``t1`` [cores], and the
        processes' mean wait for a core then [threads waiting]."""
        return {key: round((self._at(key, t1) - self._at(key, t0)) / (t1 - t0), 2)
                for key in self.samples[0] if key != "t"}


#: the CPU controller's hierarchy (cgroup v1)
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
#: the quota's period [µs]: short, so that a run of a few seconds is hundreds of periods and a
#: process that spent its quota stalls for milliseconds (the default period is 100 ms)
QUOTA_PERIOD_US = 10_000
#: the weight of the bench's groups against the root group's 1024 a process: other work on the
#: machine (other sessions' tests) then takes no CPU from a confined contender below its quota, or
#: from the broker and store servers, so that a run measures them and not that work
SHARES = 16 * 1024


class Cgroup:
    """A group of the CPU controller (cgroup v1) of weight ``SHARES``; with ``cores``, capped at
    that much of one core: its processes on a core (or part of one) of their own."""

    def __init__(self, name: str, cores: float | None = None):
        if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            raise SystemExit(f"--collector-cpu: no cgroup v1 CPU controller at {CGROUP_CPU}")
        self.path = CGROUP_CPU / f"jcm-bench-{os.getpid()}-{name}"
        self.path.mkdir()
        (self.path / "cpu.shares").write_text(str(SHARES))
        if cores:
            (self.path / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(round(cores * QUOTA_PERIOD_US)))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))  # the whole process: threads it starts stay in

    def throttling(self) -> dict:
        """So far: the share of the group's active periods in which it spent its quota and was
        stopped, and how long it was stopped [s] (cpu.stat)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        periods = int(stat["nr_periods"])
        return {"throttled": round(int(stat["nr_throttled"]) / periods, 2) if periods else 0.0,
                "throttled_s": round(int(stat["throttled_time"]) / 1e9, 2)}

    def remove(self) -> None:
        """Remove the group; a process still in it (all are the bench's: a child that failed half-way)
        is killed first."""
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:  # busy until a killed process is gone
                time.sleep(0.05)
        raise RuntimeError(f"could not remove the cgroup {self.path}")


# -- the children (one process each) ---------------------------------------------------
def _cpu() -> float:
    t = os.times()
    return t.user + t.system


#: the process's CPU time when told to go: start-up (imports, opening the store) is not counted
_CPU_AT_GO = [0.0]


def _report(**fields) -> None:
    print(json.dumps({**fields, "cpu_s": _cpu() - _CPU_AT_GO[0]}), flush=True)


def _wait_for_go() -> float:
    print("ready", flush=True)
    sys.stdin.readline()
    _CPU_AT_GO[0] = _cpu()
    return time.time()


def child_publish(port: int, n: int, most: int | None) -> None:
    """Publish the stream QoS 1 (in batches of at most ``most`` readings, if given) and wait
    until the broker has acknowledged all of it."""
    acked = 0

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        acked += 1

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    msgs = [(topic, body, 1) for topic, body in messages(n)] if most is None else batches(n, most)
    go = _wait_for_go()
    for topic, body, _ in msgs:
        pub.publish(topic, body, qos=1)
    while acked < len(msgs):
        time.sleep(0.005)
    _report(start=go, last=time.time(), count=sum(readings for _, _, readings in msgs), packets=acked)
    pub.disconnect()
    pub.loop_stop()


def child_paho(port: int, client_id: str, topic: str, prime: bool, mqtt5: bool = False,
               batched: bool = False) -> None:
    """A bare paho subscriber: counts and acknowledges (paho acknowledges on return). ``mqtt5``:
    as the collector connects (MQTT 5, a session that expires in a week, Receive Maximum
    1000, ``manual_ack``), acknowledging each message in the callback. ``batched``: each
    message is a batch, unpacked into its readings' lines, which are counted."""
    state = {"count": 0}

    def on_message(client, userdata, msg):
        state["count"] += len(batch_form.unpack(msg.payload)) if batched else 1
        if mqtt5:
            client.ack(msg.mid, msg.qos)

    if mqtt5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval, props.ReceiveMaximum = 7 * 86400, 1000
        options = {"clean_start": False, "properties": props}
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        options = {}
    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
    marks = {"last": 0.0}
    go = time.time() if prime else _wait_for_go()
    c.connect("127.0.0.1", port, **options)
    c.loop_start()
    if prime:
        time.sleep(1.0)  # connected and subscribed: the broker keeps the session from now on
    else:
        _drain(lambda: state["count"], marks)
    c.disconnect()
    c.loop_stop()
    _report(start=go, last=marks["last"], count=state["count"])


def child_collector(port: int, client_id: str, share: str | None, store: str, sites: str, prime: bool) -> None:
    from collector.service import Collector, settle_process
    from contract.config import CollectorConfig

    cfg = CollectorConfig(broker={"url": f"mqtt://127.0.0.1:{port}"}, store=store, sites_dir=sites,
                          client_id=client_id, share_group=share)
    collector = Collector(cfg)
    lock = _lock_timer(collector.store)
    settle_process()  # as `jcm collector` does
    marks = {"last": 0.0}
    go = time.time() if prime else _wait_for_go()
    collector.start()
    if prime:
        time.sleep(1.0)
    else:
        _drain(lambda: collector.stored + collector.dead, marks)
    threads, queued = _thread_cpu()  # before stop: a stopped thread's time is gone from /proc
    collector.stop()
    if collector.failure is not None:
        raise SystemExit(f"collector failed: {collector.failure}")
    _report(start=go, last=marks["last"], count=collector.stored, dead=collector.dead, threads=threads,
            queued_s=queued, **({"lock": lock} if lock is not None else {}))


def _lock_timer(store) -> dict | None:
    """Of a SQLite store: seconds its worker waited for the write lock (in ``BEGIN IMMEDIATE``)
    and held it (from getting it to the end of ``COMMIT``), and how many write transactions it
    made; ``None`` for another store. Wall time, on the worker thread: what two collectors on
    one file serialise on."""
    from store.sqlite_store import SqliteStore
    if not isinstance(store, SqliteStore):
        return None
    times = {"wait_s": 0.0, "hold_s": 0.0, "transactions": 0}
    got = [0.0]
    begin, db = store._begin_writing, store._db

    def timed_begin():
        t = time.perf_counter()
        try:
            begin()
        finally:
            got[0] = time.perf_counter()
            times["wait_s"] += got[0] - t

    class Timed:  # the connection, noting when a write transaction ends
        def execute(self, sql, *args):
            try:
                return db.execute(sql, *args)
            finally:
                if sql in ("COMMIT", "ROLLBACK") and got[0]:
                    times["hold_s"] += time.perf_counter() - got[0]
                    times["transactions"] += 1
                    got[0] = 0.0

        def __getattr__(self, name):
            return getattr(db, name)

    store._begin_writing, store._db = timed_begin, Timed()
    return times


def _thread_cpu() -> tuple[dict[str, float], float]:
    """CPU time [s] of each of the process's threads but the main one (started after go), by name
    (paho's network threads as ``paho`` and ``paho ack``); and how long [s] they were ready to run
    but waited for a core (the kernel's run queue, /proc/<tid>/schedstat): on a shared machine, the
    time another process's work took from them, as against waiting for each other or a lock."""
    import threading
    out, queued = {}, 0.0
    for t in threading.enumerate():
        if t is threading.main_thread():
            continue
        try:
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            queued += int(Path(f"/proc/self/task/{t.native_id}/schedstat").read_text().split()[1]) / 1e9
        except OSError:
            continue
        name = "paho ack" if t.name.endswith("-ack") else "paho" if t.name.startswith("paho-mqtt") else t.name
        out[name] = out.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return out, queued


def _drain(count, marks: dict) -> None:
    """Return once ``count()`` has moved and then stood still for ``IDLE_S``; ``marks['last']``
    gets when it last moved."""
    deadline = time.monotonic() + 120
    while (seen := count()) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    since, marks["last"] = time.monotonic(), time.time()
    while time.monotonic() - since < IDLE_S:
        time.sleep(0.005)
        now = count()
        if now != seen:
            seen, since, marks["last"] = now, time.monotonic(), time.time()


# -- the harness ------------------------------------------------------------------------
def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"a bench child failed ({proc.returncode}): {proc.args}")
    return json.loads(out.strip().splitlines()[-1])


def ready(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a bench child did not start: {p.args}: {line!r}")


def go(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


class Servers:
    """InfluxDB 1.6.7 and VictoriaMetrics on free loopback ports, for the bench's life."""

    def __init__(self, workdir: Path):
        self.workdir, self.procs, self.http = workdir, {}, urllib3.PoolManager()

    def influx(self) -> int:
        d = self.workdir / "influxdb"
        d.mkdir()
        conf, port = influxd_config(d)
        self._start("influx1", [shutil.which("influxd"), "-config", str(conf)], port)
        return port

    def vm(self) -> int:
        port = free_port()
        self._start("vm", [shutil.which("victoria-metrics"), f"-storageDataPath={self.workdir}/vm",
                           f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y", "-loggerLevel=ERROR"], port)
        return port

    def _start(self, name: str, argv: list[str], port: int) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log)
        wait_for_port(port, timeout=30)

    def create_db(self, port: int, db: str) -> None:
        self.http.request("POST", f"http://127.0.0.1:{port}/query", fields={"q": f"CREATE DATABASE {db}"},
                          encode_multipart=False)

    def stop(self) -> None:
        for p in self.procs.values():
            stop_process(p, timeout=15)


def run(name: str, kind: str, copies: int, n: int, mode: str, workdir: Path, servers: Servers,
        stores: dict[str, int], most: int | None = None, quota_cores: float | None = None,
        servers_group: Cgroup | None = None) -> dict:
    """One contender's run; ``most``: the stream in batches of at most that many readings;
    ``quota_cores``: each of the contender's processes confined to that much of one core, in a
    group of its own, and the broker put in ``servers_group``."""
    broker = Mosquitto(workdir / f"mq-{name}-{mode}".replace(" ", "_")).start()
    if servers_group:
        servers_group.add(broker.proc.pid)
    groups, throttling, contenders = [], [], []
    try:
        ids = [f"bench-{i}" for i in range(copies)]
        share = "bench" if copies > 1 else None
        stream = TOPIC if most is None else topics.ALL_BATCHES
        topic = f"$share/bench/{stream}" if share else stream
        store_url = ""
        if kind.startswith("collector"):
            backend = kind.split()[1]
            db = f"b{int(time.time() * 1000)}"
            if backend == "sqlite":
                store_url = f"sqlite:///{workdir}/{db}.db"
            elif backend == "influx1":
                servers.create_db(stores["influx1"], db)
                store_url = f"influxdb://127.0.0.1:{stores['influx1']}?api=v1&db={db}"
            else:
                store_url = f"influxdb://127.0.0.1:{stores['vm']}?api=v2&db={db}"

        def child_args(i: int, prime: bool) -> list[str]:
            base = ["--port", str(broker.port), "--client-id", ids[i]] + (["--prime"] if prime else [])
            if kind.startswith("paho"):
                return ["paho", *base, "--topic", topic] + (["--mqtt5"] if kind == "paho5" else []) + (
                    ["--batched"] if most else [])
            return ["collector", *base, "--store", store_url, "--sites", str(workdir / "sites")] + (
                ["--share", share] if share else [])

        def sub_cmd(count: int | None) -> list[str]:
            return ["mosquitto_sub", "-p", str(broker.port), "-i", ids[0], "-c", "-q", "1", "-t", topic] + (
                ["-C", str(count)] if count else ["-W", "1"])

        # persistent sessions first, so that the broker queues the stream for them
        if kind == "mosquitto_sub":
            subprocess.run(sub_cmd(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # "Timed out"
        else:
            for p in [spawn(*child_args(i, True)) for i in range(copies)]:
                finish(p)
        publisher = spawn("publish", "--port", str(broker.port), "--messages", str(n),
                          *(["--batch", str(most)] if most else []))
        packets = len(batches(n, most)) if most else n  # what mosquitto_sub counts
        ready([publisher])
        watched = {"broker": broker.proc.pid, **{k: p.pid for k, p in servers.procs.items()}}
        broker_cpu0 = proc_cpu(broker.proc.pid)
        store_cpu0 = {k: proc_cpu(p.pid) for k, p in servers.procs.items()}
        if mode == "drain":
            go([publisher])
            published = finish(publisher)
        if kind == "mosquitto_sub":
            sampler = Sampler(watched)
            t0 = time.time()
            sub = subprocess.Popen(sub_cmd(packets), stdout=subprocess.DEVNULL)
            if mode == "live":
                go([publisher])
            sub.wait(timeout=600)
            t1 = time.time()
            results = [{"start": t0, "last": t1, "count": n, "cpu_s": None}]
        else:
            procs = [spawn(*child_args(i, False)) for i in range(copies)]
            for p in procs if quota_cores else []:
                groups.append(Cgroup(f"contender-{p.pid}", quota_cores))
                groups[-1].add(p.pid)
            ready(procs)
            contenders = [f"contender {i}" for i in range(copies)]
            sampler = Sampler({**watched, **{c: p.pid for c, p in zip(contenders, procs)}})
            go(procs + ([publisher] if mode == "live" else []))
            results = [finish(p) for p in procs]
            throttling = [g.throttling() for g in groups]
        if mode == "live":
            published = finish(publisher)
        broker_cpu = proc_cpu(broker.proc.pid) - broker_cpu0
        store_cpu = {k: round(proc_cpu(p.pid) - store_cpu0[k], 2) for k, p in servers.procs.items()}
        sampler.stop()
    finally:
        broker.stop()
        for g in groups:
            g.remove()
    count = sum(r["count"] for r in results)
    start, last = min(r["start"] for r in results), max(r["last"] for r in results)
    seconds = last - start
    cpu = [r["cpu_s"] for r in results if r["cpu_s"] is not None]
    # each process's mean use of the window go → last message [cores]: the publisher's own CPU
    # while it published, if it did so in the window (live)
    used = sampler.cores(start, last)
    window = {"broker": used["broker"], "stores": {k: used[k] for k in servers.procs}, "machine": used["machine"],
              "publisher": round(published["cpu_s"] / seconds, 2) if mode == "live" else 0.0,
              "contender": [used[c] for c in contenders],
              "waited": {k: used[f"{k} waited"] for k in ["broker", *servers.procs, *contenders]}}
    return {"contender": name, "mode": mode, "batch": most, "packets": packets, "messages": n,
            "received_or_stored": count, "complete": count == n,
            "dead": sum(r.get("dead", 0) for r in results), "seconds": round(seconds, 2),
            "msgs_per_s": round(count / seconds), "per_process": [r["count"] for r in results],
            "cpu_s_contender": round(sum(cpu), 2) if cpu else None,
            "cpu_s_per_process": [round(c, 2) for c in cpu], "cpu_s_broker": round(broker_cpu, 2),
            "cpu_s_stores": store_cpu, "publisher_s": round(published["last"] - published["start"], 2),
            "threads_s": _summed([r.get("threads", {}) for r in results]),
            "lock_per_process": [r["lock"] for r in results if "lock" in r],
            "queued_s_per_process": [round(r["queued_s"], 2) for r in results if "queued_s" in r],
            "window_cores": window, "quota_cores": quota_cores,
            "quota_use_per_process": [round(c / quota_cores, 2) for c in window["contender"]] if quota_cores else [],
            "throttling_per_process": throttling, "loadavg": os.getloadavg()}


def _summed(parts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = round(out.get(k, 0.0) + v, 2)
    return out


CONTENDERS = {  # name: (kind, processes)
    "mosquitto_sub": ("mosquitto_sub", 1),
    "paho": ("paho", 1),
    "paho x2": ("paho", 2),
    "paho5": ("paho5", 1),
    "collector sqlite": ("collector sqlite", 1),
    "collector sqlite x2": ("collector sqlite", 2),
    "collector influx1": ("collector influx1", 1),
    "collector influx1 x2": ("collector influx1", 2),
    "collector vm": ("collector vm", 1),
    "collector vm x2": ("collector vm", 2),
}


#: a non-collector process (or all of them together) using this much of what it has is near its
#: limit, and so may be what held a run back
NEAR_FULL = 0.8
#: the broker ready to run but without a core for this share of a run: it was short of CPU
BROKER_WAITED = 0.1


def saturation(r: dict) -> list[str]:
    """What, in a run's window, came near its limit other than the contender: the broker or the
    publisher near one core (each is one thread's work), the broker waiting for a core, and the
    broker, publisher and store servers together near what the contender's quotas leave of the
    machine. (The machine's own use is not one: other sessions' work fills it, and a confined
    run's groups are weighted to take their CPU before that work.)"""
    w, cores = r["window_cores"], os.cpu_count()
    others = w["broker"] + w["publisher"] + sum(w["stores"].values())
    room = cores - len(r["per_process"]) * r["quota_cores"] if r["quota_cores"] else None
    out = [f"{k} {w[k]:.2f} of a core" for k in ("broker", "publisher") if w[k] >= NEAR_FULL]
    if room is not None and others >= NEAR_FULL * room:
        out.append(f"broker + publisher + store servers {others:.2f} of the {room:.2f} cores the quotas leave")
    if w["waited"]["broker"] >= BROKER_WAITED:
        out.append(f"the broker waited for a core {w['waited']['broker']:.0%} of the time")
    return out


def report(results: list[dict]) -> None:
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    if results and results[0]["batch"]:
        r = results[0]
        print(f"the batch form: {r['messages']} readings in {r['packets']} batches (at most {r['batch']} each); "
              "msgs/s and µs/msg are per reading")
    print(f"{'mode':<6} {'contender':<22} {'msgs/s':>8} {'÷ paho':>7} {'÷ paho5':>8} {'x2 ÷ x1':>8} "
          f"{'paho x2÷x1':>10} {'÷ paho x2÷x1':>12} {'s':>7} {'CPU s':>6} {'µs/msg':>7} "
          f"{'broker':>7} {'stores':>14} {'per process':>14}")
    for r in results:
        same = {x["contender"]: x for x in results if x["mode"] == r["mode"]}
        paho = same.get("paho")
        paho5 = same.get("paho5")
        one = same.get(r["contender"].removesuffix(" x2")) if r["contender"].endswith(" x2") else None
        stores = " ".join(f"{k} {v}" for k, v in r["cpu_s_stores"].items() if v >= 0.05)
        of_paho = f"{r['msgs_per_s'] / paho['msgs_per_s']:.2f}" if paho else ""
        of_paho5 = f"{r['msgs_per_s'] / paho5['msgs_per_s']:.2f}" if paho5 else ""
        per_msg = f"{r['cpu_s_contender'] / r['received_or_stored'] * 1e6:.0f}" if r["cpu_s_contender"] else ""
        of_one = f"{r['msgs_per_s'] / one['msgs_per_s']:.2f}" if one else ""
        # bare paho's own x2 ÷ x1 in the same run: how far two processes scale on this machine at all
        paho_x2 = same.get("paho x2")
        machine = paho_x2["msgs_per_s"] / paho["msgs_per_s"] if one and paho and paho_x2 else None
        # on the batch form bare paho drains in a tenth of a second: a ratio of two such runs is noise
        short = machine and min(paho["seconds"], paho_x2["seconds"]) < 0.5
        of_machine = f"{machine:.2f}{'*' if short else ''}" if machine else ""
        of_its = f"{r['msgs_per_s'] / one['msgs_per_s'] / machine:.2f}" if machine else ""
        cpu = r["cpu_s_contender"] if r["cpu_s_contender"] is not None else ""
        per = "/".join(map(str, r["per_process"]))
        print(f"{r['mode']:<6} {r['contender']:<22} {r['msgs_per_s']:>8} {of_paho:>7} {of_paho5:>8} {of_one:>8} "
              f"{of_machine:>10} {of_its:>12} {r['seconds']:>7} {cpu:>6} {per_msg:>7} {r['cpu_s_broker']:>7} "
              f"{stores:>14} {per:>14}"
              + ("" if r["complete"] else f"  INCOMPLETE: {r['received_or_stored']} of {r['messages']}"))
    print("x2 ÷ x1: two processes of a contender against one; paho x2÷x1: bare paho's own in this run (how far two "
          "Python processes scale on this machine at all); ÷ paho x2÷x1: the first ÷ the second (1 = the collector "
          "scales as far as the machine lets a bare subscriber; *: a bare paho run took under 0.5 s, so its ratio is "
          "noise). The goal is x2 ÷ x1 ≥ 1.7 as it stands.")
    for r in results:
        if len(r["cpu_s_per_process"]) > 1:
            each = " / ".join(f"{c / k * 1e6:.0f}" for c, k in zip(r["cpu_s_per_process"], r["per_process"]) if k)
            print(f"{r['mode']:<6} {r['contender']:<22} µs CPU / msg by process: {each}")
        if r["queued_s_per_process"]:
            each = " / ".join(f"{q:.2f}" for q in r["queued_s_per_process"])
            print(f"{r['mode']:<6} {r['contender']:<22} s its threads were ready but waited for a core (summed over "
                  f"them), by process: {each} (in {r['seconds']} s)")
        if r.get("lock_per_process"):
            each = " / ".join(f"wait {k['wait_s']:.2f} s, hold {k['hold_s']:.2f} s, {k['transactions']} transactions "
                              f"({k['wait_s'] / r['seconds']:.0%} / {k['hold_s'] / r['seconds']:.0%} of the run)"
                              for k in r["lock_per_process"])
            print(f"{r['mode']:<6} {r['contender']:<22} SQLite write lock (wall time, worker), by process: {each}")
        if r.get("threads_s"):
            each = ", ".join(f"{k} {v / r['received_or_stored'] * 1e6:.0f}" for k, v in r["threads_s"].items())
            print(f"{r['mode']:<6} {r['contender']:<22} µs CPU / msg by thread: {each}")
    quota = results[0]["quota_cores"] if results else None
    print("\nCores used in each run's window (go → last message), mean"
          + (f"; each contender process confined to {quota} of a core (cgroup CPU quota, period "
             f"{QUOTA_PERIOD_US // 1000} ms)" if quota else "") + ":")
    print(f"{'mode':<6} {'contender':<22} {'x2 ÷ x1':>8} {'broker':>7} {'stores':>7} {'publ.':>6} {'machine':>8} "
          f"{'contender':>10} {'quota use':>11} {'throttled':>11} {'waited':>9}  near a limit")
    for r in results:
        same = {x["contender"]: x for x in results if x["mode"] == r["mode"]}
        one = same.get(r["contender"].removesuffix(" x2")) if r["contender"].endswith(" x2") else None
        w = r["window_cores"]
        stores = sum(w["stores"].values())
        full = saturation(r)
        # a ratio is the collectors' only if neither of its runs had something else near its limit
        of_one = f"{r['msgs_per_s'] / one['msgs_per_s']:.2f}{'!' if full or saturation(one) else ''}" if one else ""
        mine = f"{sum(w['contender']):.2f}" if w["contender"] else "-"
        waited = f"{w['waited']['broker']:.2f}/{sum(w['waited'][k] for k in w['stores']):.2f}"
        use = "/".join(f"{u:.2f}" for u in r["quota_use_per_process"])
        throttled = "/".join(f"{t['throttled']:.2f}" for t in r["throttling_per_process"])
        print(f"{r['mode']:<6} {r['contender']:<22} {of_one:>8} {w['broker']:>7.2f} {stores:>7.2f} "
              f"{w['publisher']:>6.2f} {w['machine']:>8.2f} {mine:>10} {use:>11} {throttled:>11} {waited:>9}  "
              + ("; ".join(full) or "-"))
    print(f"contender: its processes' CPU ÷ the window [cores]; quota use: each process's CPU ÷ (its quota × the "
          f"window) (under about 0.9: something other than its quota held it back); throttled: the share of its "
          f"active periods in which it spent its quota and was stopped; waited: the broker's / store servers' threads "
          f"ready to run but waiting for a core, on average over the window. near a limit: the broker or publisher "
          f"≥ {NEAR_FULL} of a core, the broker waiting for a core ≥ {BROKER_WAITED:.0%} of the window, the three "
          f"together ≥ {NEAR_FULL} of what the quotas leave; !: a ratio one of whose runs had such a limit near, so it measures the "
          f"machine as much as the contender.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--mode", choices=["drain", "live", "both"], default="drain")
    ap.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="run these contenders only")
    ap.add_argument("--batch", type=int, metavar="N",
                    help="send the readings in the batch form, at most N a batch (a gateway's backlog: 2000 at its "
                         "default rate; about 1,300 of the bench's readings fill a packet)")
    ap.add_argument("--collector-cpu", type=float, metavar="F",
                    help="confine each collector / bare paho process to F of one core (a cgroup CPU quota of its "
                         "own): a deployment's collectors on cores of their own; mosquitto_sub is left out unless "
                         "named (it is not confined)")
    args = ap.parse_args()
    if args.collector_cpu is not None and not 0.05 <= args.collector_cpu <= os.cpu_count():
        ap.error(f"--collector-cpu: {args.collector_cpu} of a core: 0.05 to {os.cpu_count()}")
    if args.batch is not None and not 1 <= args.batch <= batch_form.MAX_MESSAGES:
        ap.error(f"--batch: {args.batch} readings a batch: 1 to {batch_form.MAX_MESSAGES}")
    names = args.only or [n for n in CONTENDERS if not (args.collector_cpu and n == "mosquitto_sub")]
    modes = ["drain", "live"] if args.mode == "both" else [args.mode]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_site(workdir)
        servers, servers_group = Servers(workdir), None
        try:
            stores = {"influx1": servers.influx(), "vm": servers.vm()}
            if args.collector_cpu:  # weighted as the contenders are, so that other work takes from none of them
                servers_group = Cgroup("servers")
                for p in servers.procs.values():
                    servers_group.add(p.pid)
            for mode in modes:
                for name in names:
                    kind, copies = CONTENDERS[name]
                    results.append(run(name, kind, copies, args.messages, mode, workdir, servers, stores, args.batch,
                                       args.collector_cpu, servers_group))
                    print(json.dumps(results[-1]), flush=True)
        finally:
            servers.stop()
            if servers_group:
                servers_group.remove()
    report(results)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "collector.json").write_text(json.dumps(
        {"cpu_model": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
         "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "results": results}, indent=2))


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["publish", "paho", "collector"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--messages", type=int)
    ap.add_argument("--client-id")
    ap.add_argument("--topic")
    ap.add_argument("--share")
    ap.add_argument("--store")
    ap.add_argument("--sites")
    ap.add_argument("--prime", action="store_true")
    ap.add_argument("--mqtt5", action="store_true")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--batched", action="store_true")
    a = ap.parse_args(argv)
    if a.role == "publish":
        child_publish(a.port, a.messages, a.batch)
    elif a.role == "paho":
        child_paho(a.port, a.client_id, a.topic, a.prime, a.mqtt5, a.batched)
    else:
        child_collector(a.port, a.client_id, a.share, a.store, a.sites, a.prime)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
