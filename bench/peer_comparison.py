"""Our gateway against ThingsBoard IoT Gateway like for like: the same devices, points, broker and poll interval.

    python bench/peer_comparison.py [--devices 10 100 500 --interval 1 --seconds 30 --rounds 2]

Both gateways run as they ship: ours as ``jcm gateway`` of this repository (APScheduler, durable outbox,
publisher) from a site file whose devices say ``poll_interval: 1``; ThingsBoard IoT
Gateway 3.8.5 (bench/.tb-venv, made by polling_throughput.py's ``ensure_tb_venv``)
with ``pollPeriod: 1000``. They poll the same N simulated devices (``--points`` float32
each, one per TCP port, served by the static servers of polling_throughput.py, at most
``--devices-per-server`` devices to a server process) and publish to the same private
Mosquitto, QoS 1. ThingsBoard reads each device's block in one request ("range" form),
as ours does; ``--tb-form per-point`` gives it one request per point instead.

Per run, over ``--seconds`` after the first delivery and ``--warmup``:

* the contender's CPU, its process and children (``/proc``), and that of the servers,
  the broker and this harness apart, and what the rest of the machine used meanwhile
  (``/proc/stat`` busy time less all of those: other people's work on a shared box);
* the readings that reached the broker (a subscriber counts them), so CPU per reading
  and per device-second, and ``devices_per_core`` = 1 CPU-s / (CPU-s per device-second);
* when each device's polls began, noted by the servers: polls per device and the
  lateness of each poll (its gap to the previous one less the interval). A run *keeps
  up* when every device was polled in every interval of the window (no gap above 1.5
  intervals, no device short of polls) and the broker got >= 97 % of the readings due.

Contenders alternate (round 0 ours first, round 1 ThingsBoard first, ...). With
``--check``, each contender is then run at the device count its largest run predicts
for one core, and 25 % higher while it fits or 20 % lower until it does
(``--check-steps`` runs at most): it *fits* one core when it keeps up using at most
1.0 core. ``--check-pin`` pins it to one core (``sched_setaffinity``; servers, broker
and harness on the other), which on a shared box measures the neighbours as much as
the contender: a pinned process gets what is left of its core. Results: a table on stdout and
``bench/results/peer.json``; the CPU model and load averages are in it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import polling_throughput as pt

KEEP_UP_GAP = 1.5  # a gap between two polls of a device above this many intervals is a missed poll
KEEP_UP_DELIVERED = 0.97  # share of the readings due that must reach the broker within the window


def busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / pt.CLK_TCK


def lateness(poll_starts: dict[int, list[float]], interval: float, wall: float) -> dict:
    """Whether every device was polled every ``interval`` [s] over a window of ``wall`` [s].

    Parameters
    ----------
    poll_starts : per device (port), the monotonic times [s] its polls began in the window
    interval : the poll interval asked for [s]
    wall : the window's length [s]

    Returns
    -------
    polls per device (least, median, due), lateness of each poll (gap to the previous
    poll less ``interval``; p50, p99, max) [s], and ``missed``: devices with a gap above
    ``KEEP_UP_GAP`` intervals or fewer polls than the window holds, less one for the
    window's edges.
    """
    due = wall / interval
    counts = [len(s) for s in poll_starts.values()]
    late = [b - a - interval for s in poll_starts.values() for a, b in zip(s, s[1:])]
    short = [len(s) < int(due) - 1 for s in poll_starts.values()]
    gapped = [any(b - a > KEEP_UP_GAP * interval for a, b in zip(s, s[1:])) for s in poll_starts.values()]
    q = statistics.quantiles(late, n=100) if len(late) >= 2 else [float("nan")] * 99
    return {"devices_seen": sum(1 for c in counts if c), "polls_total": sum(counts), "polls_min": min(counts, default=0),
            "polls_median": statistics.median(counts) if counts else 0, "polls_due": due,
            "late_p50_s": q[49], "late_p90_s": q[89], "late_p99_s": q[98],
            "late_max_s": max(late, default=float("nan")),
            "late_over_100ms_share": sum(x > 0.1 for x in late) / len(late) if late else float("nan"),
            "devices_short": sum(short), "devices_gapped": sum(gapped),
            "devices_missed": sum(a or b for a, b in zip(short, gapped))}


def run_contender(h: pt.Harness, name: str, cmd: list[str], env: dict, cwd: Path, args, core: int | None) -> dict:
    """Start one gateway, wait for its first delivery and the warm-up, measure a window, stop it."""
    log = open(cwd / f"{name}.log", "wb")
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=pin)
    try:
        deadline = time.monotonic() + args.start_timeout
        first = h.counter.snapshot()["broker_values"]
        while h.counter.snapshot()["broker_values"] == first:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} published nothing within {args.start_timeout:g} s "
                                   f"(exit {proc.poll()}); see {cwd / (name + '.log')}")
            time.sleep(0.2)
        time.sleep(args.warmup)
        load0 = os.getloadavg()
        before, cpu0, busy0, t0 = h.sample(), pt.proc_cpu(proc.pid), busy_cpu_s(), time.monotonic()
        time.sleep(args.seconds)
        after, cpu1, busy1, t1 = h.sample(), pt.proc_cpu(proc.pid), busy_cpu_s(), time.monotonic()
        load1 = os.getloadavg()
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} during the window; see {cwd / (name + '.log')}")
        r = {k: after[k] - before[k] for k in before}
        r.update(wall_s=t1 - t0, cpu_s=cpu1 - cpu0, busy_s=busy1 - busy0, peak_rss_mb=pt.proc_peak_rss_mb(proc.pid),
                 loadavg_before=load0, loadavg_after=load1, pinned_core=core,
                 timing=lateness(h.poll_starts, args.interval, t1 - t0), values_ok=check_values(h, name))
        return r
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def check_values(h: pt.Harness, name: str) -> bool:
    """The last message the broker got from this contender holds the served values of its device."""
    if name.startswith("ours"):
        body = h.counter.last.get(pt.BrokerCounter.READINGS, {})
        device = int(body.get("device", "dev--1").rsplit("-", 1)[1])
        got = sorted(body.get("values", {}).values())
    else:
        body = h.counter.last.get(pt.BrokerCounter.TB_TELEMETRY, {})
        name_, entries = next(iter(body.items()), ("dev--1", [{}]))
        device = int(name_.rsplit("-", 1)[1])
        got = sorted(entries[-1].get("values", {}).values())
    return got == [pt.expected_value(device, k) for k in range(h.args.points)]


def sign(site_file: Path, workdir: Path) -> None:
    """Make the site's gateway sign each reading, with a key made for the run (the chain of custody's cost)."""
    import yaml
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from contract.custody import key_files

    key_file = workdir / "gateway.key"
    key_file.write_bytes(key_files(Ed25519PrivateKey.generate())[0])
    key_file.chmod(0o600)
    site = yaml.safe_load(site_file.read_text())
    site["custody"] = {"private_key_file": str(key_file), "key_id": "bench-key"}
    site_file.write_text(yaml.safe_dump(site, sort_keys=False))


def derive(r: dict, devices: int, points: int, interval: float) -> dict:
    """Costs, rates and the keep-up verdict of one window."""
    wall = r["wall_s"]
    due = devices * points * wall / interval
    device_seconds = devices * wall / interval  # device polls due in the window
    cpu_per_device_s = r["cpu_s"] / device_seconds
    t = r["timing"]
    others = r["busy_s"] - r["cpu_s"] - r["server_cpu_s"] - r["broker_cpu_s"] - r["harness_cpu_s"]
    keeps_up = (t["devices_seen"] == devices and t["devices_missed"] == 0
                and r["broker_values"] >= KEEP_UP_DELIVERED * due)
    return {
        "readings_per_s": r["broker_values"] / wall, "readings_due_per_s": due / wall,
        "delivered_share": r["broker_values"] / due,
        "cpu_s_per_1000_readings": r["cpu_s"] / r["broker_values"] * 1000 if r["broker_values"] else None,
        "cpu_s_per_device_second": cpu_per_device_s,
        "devices_per_core": interval / cpu_per_device_s if r["cpu_s"] else None,
        "cpu_cores": r["cpu_s"] / wall, "server_cpu_cores": r["server_cpu_s"] / wall,
        "broker_cpu_cores": r["broker_cpu_s"] / wall, "harness_cpu_cores": r["harness_cpu_s"] / wall,
        "others_cpu_cores": others / wall, "modbus_requests_per_poll": r["server_requests"] / max(1, r["timing"]["polls_total"]),
        "keeps_up": keeps_up,
    }


class Peer:
    """Runs a contender at a device count: the servers, broker and configs made fresh each time."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.tb_python = pt.ensure_tb_venv() if "tb" in args.contenders else None
        self.runs = 0

    def run(self, name: str, devices: int, core: int | None = None) -> dict:
        a = self.args
        self.runs += 1
        wd = self.workdir / f"{self.runs:02d}-{name}-{devices}"
        wd.mkdir(parents=True)
        hargs = SimpleNamespace(devices=devices, points=a.points)
        if core is not None:  # everything but the contender on the other core
            os.sched_setaffinity(0, set(range(os.cpu_count())) - {core})
        try:
            h = pt.Harness(hargs, wd, devices_per_server=a.devices_per_server, record_polls=True,
                           poll_interval=a.interval)
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
        try:
            if name.startswith("ours"):
                if name == "ours-signed":
                    sign(h.site, wd)
                # `jcm gateway` of the repository this script is in, whatever the venv has installed
                cmd = [sys.executable, "-m", "jcm.cli", "gateway", "--site", str(h.site), "--broker", h.broker.url,
                       "--outbox", str(wd / "outbox.sqlite")]
                env = {**os.environ, "PYTHONPATH": str(pt.REPO)}
            else:
                config = pt.write_tb_configs(wd / "tb", h.ports, a.points, h.broker.port, round(a.interval * 1000),
                                             form=a.tb_form)
                cmd = [str(self.tb_python), "-m", "thingsboard_gateway.tb_gateway"]
                env = {**os.environ, "TB_GW_CONFIG_DIR": str(config) + "/"}
            print(f"  {name} at {devices} devices{'' if core is None else f', pinned to core {core}'} ...", flush=True)
            r = run_contender(h, name, cmd, env, wd, a, core)
        finally:
            h.close()
        r.update(contender=name, devices=devices, derived=derive(r, devices, a.points, a.interval))
        d = r["derived"]
        print(f"    {d['readings_per_s']:,.0f} readings/s of {d['readings_due_per_s']:,.0f} due, "
              f"{d['cpu_cores']:.3f} cores, {fmt(d['cpu_s_per_1000_readings'], '.4f')} CPU-s/1k, "
              f"late p99 {r['timing']['late_p99_s'] * 1000:.0f} ms, keeps up: {d['keeps_up']}, "
              f"values ok: {r['values_ok']}, others {d['others_cpu_cores']:.2f} cores", flush=True)
        return r


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def fits_one_core(r: dict) -> bool:
    return "derived" in r and r["derived"]["keeps_up"] and r["derived"]["cpu_cores"] <= 1.0


def check(peer: Peer, name: str, estimate: int, steps: int, pin: bool) -> list[dict]:
    """The largest device count that fits one core, searched from ``estimate``."""
    core = os.cpu_count() - 1 if pin else None
    tried: list[dict] = []
    n = max(1, estimate)
    for _ in range(steps):
        try:
            r = peer.run(name, n, core=core)
        except Exception as exc:  # e.g. no delivery within --start-timeout: it does not fit
            r = {"contender": name, "devices": n, "error": f"{type(exc).__name__}: {exc}"}
            print(f"    failed: {r['error']}", flush=True)
        tried.append(r)
        ok = [t["devices"] for t in tried if fits_one_core(t)]
        failed = [t["devices"] for t in tried if not fits_one_core(t)]
        if ok and failed and min(failed) <= max(ok) * 1.15:
            break
        n = round(n * 1.25) if fits_one_core(r) else round(n * 0.8)
        if ok and failed and not max(ok) < n < min(failed):
            n = round((max(ok) + min(failed)) / 2)
    return tried


def summary(runs: list[dict]) -> str:
    head = (f"{'contender':<9} {'devices':>7} {'pin':>3} {'readings/s':>10} {'due/s':>7} {'CPU-s/1k':>8} "
            f"{'dev/core':>8} {'cores':>6} {'late p50':>8} {'late p99':>8} {'late max':>8} {'missed':>6} "
            f"{'keeps up':>8} {'req/poll':>8} {'server':>6} {'broker':>6} {'others':>6} {'load1':>5}")
    lines = [head, "-" * len(head)]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['contender']:<9} {r['devices']:>7} failed: {r['error']}")
            continue
        d, t = r["derived"], r["timing"]
        lines.append(
            f"{r['contender']:<9} {r['devices']:>7} {'-' if r['pinned_core'] is None else r['pinned_core']:>3} "
            f"{d['readings_per_s']:>10,.0f} {d['readings_due_per_s']:>7,.0f} "
            f"{fmt(d['cpu_s_per_1000_readings'], '>8.4f')} {fmt(d['devices_per_core'], '>8,.0f')} "
            f"{d['cpu_cores']:>6.3f} {t['late_p50_s'] * 1000:>6.0f}ms {t['late_p99_s'] * 1000:>6.0f}ms "
            f"{t['late_max_s'] * 1000:>6.0f}ms {t['devices_missed']:>6} {str(d['keeps_up']):>8} "
            f"{d['modbus_requests_per_poll']:>8.1f} {d['server_cpu_cores']:>6.2f} {d['broker_cpu_cores']:>6.2f} "
            f"{d['others_cpu_cores']:>6.2f} {r['loadavg_before'][0]:>5.2f}")
    return "\n".join(lines)


def ratios(runs: list[dict]) -> dict:
    """ThingsBoard's CPU per reading over ours, per device count and round (each pair from the same round)."""
    out: dict = {}
    for r in runs:
        if r["contender"] == "tb" and "derived" in r and r.get("round") is not None:
            ours = next((o for o in runs if o["contender"] == "ours" and o.get("round") == r["round"]
                         and o["devices"] == r["devices"] and "derived" in o), None)
            if ours and ours["derived"]["cpu_s_per_1000_readings"] and r["derived"]["cpu_s_per_1000_readings"]:
                out.setdefault(str(r["devices"]), []).append(
                    r["derived"]["cpu_s_per_1000_readings"] / ours["derived"]["cpu_s_per_1000_readings"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--points", type=int, default=20, help="float32 points per device (2 registers each)")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval of both gateways [s]")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per run [s]")
    ap.add_argument("--warmup", type=float, default=5.0, help="run after the first delivery before the window [s]")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all device counts, contenders alternated")
    ap.add_argument("--contenders", nargs="+", choices=["ours", "ours-signed", "tb"], default=["ours", "tb"],
                    help="ours-signed: our gateway signing each reading (not like for like: ThingsBoard signs nothing)")
    ap.add_argument("--tb-form", choices=["range", "per-point"], default="range",
                    help="ThingsBoard reads a device's block in one request (range) or a request per point")
    ap.add_argument("--devices-per-server", type=int, default=100, help="devices per Modbus server process")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds a gateway may take to deliver")
    ap.add_argument("--check", action="store_true", help="then find the most devices that fit one core")
    ap.add_argument("--check-pin", action="store_true", help="pin the contender to one core in the check")
    ap.add_argument("--check-steps", type=int, default=3, help="pinned runs per contender at most")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, default=pt.BENCH / "results" / "peer.json")
    args = ap.parse_args()
    if 2 * args.points > 125:
        ap.error("--points above 62 does not fit one Modbus read")

    workdir = Path(tempfile.mkdtemp(prefix="jcm-peer-"))
    peer = Peer(args, workdir)
    runs: list[dict] = []
    checks: dict = {}
    try:
        for rnd in range(args.rounds):
            order = args.contenders if rnd % 2 == 0 else args.contenders[::-1]
            for devices in args.devices:
                for name in order:
                    try:
                        r = peer.run(name, devices)
                    except Exception as exc:  # a run that fails is reported, not fatal
                        r = {"contender": name, "devices": devices, "error": f"{type(exc).__name__}: {exc}"}
                        print(f"    failed: {r['error']}", flush=True)
                    r["round"] = rnd
                    runs.append(r)
        if args.check:
            for name in args.contenders:
                base = [r for r in runs if r["contender"] == name and "derived" in r
                        and r["devices"] == max(args.devices)]
                if not base:
                    continue
                estimate = round(statistics.median(r["derived"]["devices_per_core"] for r in base))
                print(f"checking {name}: {estimate} devices predicted for one core", flush=True)
                checks[name] = {"estimate": estimate, "pinned": args.check_pin,
                                "runs": check(peer, name, estimate, args.check_steps, args.check_pin)}
    finally:
        if args.keep:
            print(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(summary(runs + [r for c in checks.values() for r in c["runs"]]))
    cpu_ratio = ratios(runs)
    print("\nCPU per reading, ThingsBoard / ours, same round:",
          {k: [round(x, 2) for x in v] for k, v in cpu_ratio.items()})
    for name, c in checks.items():
        kept = [r["devices"] for r in c["runs"] if fits_one_core(r)]
        print(f"{name}: predicted {c['estimate']} devices for one core; largest that kept up on <= 1 core: "
              f"{max(kept, default='none')}")
    report = {"command": " ".join(["python", "bench/peer_comparison.py", *sys.argv[1:]]), "machine": pt.machine(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "setup": {
                  k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "cpu_per_reading_tb_over_ours": cpu_ratio, "checks": checks}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
