"""How long ``jcm verify`` takes on one site's period of 1-minute signed data, per message,
with the code of another commit (``--before``) and of this checkout, in the same run.

It makes an export the normal way (``export_period`` of a SQLite store whose readings of
mn-solar, one a minute for each device, were signed in order with one key, as the
collector stores them), then runs ``jcm verify`` on it: the ``--before`` commit
(``git archive`` into a scratch folder) with one process, and this checkout with each
``--jobs`` given, ``--rounds`` times each, alternating, so that the machine's load falls
on all alike. Each run's output must be byte-identical to the first's (the verdict does
not depend on the code version nor on the number of processes). Besides the wall time it
gives the CPU time of ``jcm verify``'s own process and of its workers: on a shared machine
the wall time shows the load of others, the longer of the two (a worker's share) what it
would be on idle cores.

    python bench/verify_speed.py [--days 30] [--before main] [--jobs 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from contract.config import load_site  # noqa: E402
from contract.config.custody import Custody, CustodyKey, fingerprint  # noqa: E402
from contract.custody import GENESIS, chain_hash, sign, verify  # noqa: E402
from contract.store import SignedMessage  # noqa: E402
from processing.export import export_period  # noqa: E402
from processing.ledger import Ledger  # noqa: E402
from simulators.history import SIMULATED_CHANNEL, history  # noqa: E402
from store.sqlite_store import SqliteStore  # noqa: E402

BENCH = ROOT / "bench"
EPOCH = "00000000000000aa"


def make_export(tmp: Path, first: dt.date, last: dt.date) -> tuple[Path, int]:
    """An export of ``first..last`` of mn-solar's 1-minute readings, signed in order, with a
    day of readings either side (the witnesses); and how many signed messages it holds."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    listed = CustodyKey(id="k1", public_key=base64.b64encode(raw).decode(), fingerprint=fingerprint(raw),
                        valid_from=dt.date(2026, 1, 1))
    site = load_site(ROOT / "config" / "sites" / "mn-solar.yaml")
    site = site.model_copy(update={"custody": Custody(keys=[listed])})
    keys = {site.site: site.custody.keys}
    store = SqliteStore(tmp / "jcm.db")
    prev, seq = GENESIS, 0
    for batch in history(site, first - dt.timedelta(days=1), last + dt.timedelta(days=1), step_s=60.0,
                         channels=set(site.monitoring_channels)):
        readings, signed = [], []
        for r in batch:
            seq += 1
            r = type(r)(site=r.site, gateway=r.gateway, device=r.device, ts=r.ts, units=r.units, seq=seq, epoch=EPOCH,
                        values={k: v for k, v in r.values.items() if k != SIMULATED_CHANNEL})
            message = sign(r.to_json(), prev, "k1", key)
            prev = chain_hash(message)
            readings.append(r)
            signed.append(SignedMessage.verified(message, verify(message, keys)))
        store.write(readings, messages=signed)
    folder = export_period(site, store, Ledger(tmp / "ledger.sqlite", create=True), first, last, tmp / "out")
    store.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder, manifest["custody"]["signed_messages"] if isinstance(manifest.get("custody"), dict) else seq


def checkout(ref: str, into: Path) -> Path:
    """The tree of ``ref`` (a commit of this repository) in ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    found = subprocess.run([sys.executable, "-c", "import jcm.verify; print(jcm.verify.__file__)"], cwd=into,
                           env={**os.environ, "PYTHONPATH": str(into)}, check=True, capture_output=True, text=True)
    if not Path(found.stdout.strip()).is_relative_to(into):  # else "before" would time this checkout
        raise SystemExit(f"the code of {ref} does not come first on the path: {found.stdout}")
    return into


#: runs ``jcm verify`` and writes, as the last line of stderr, its own CPU seconds and its workers'
CHILD = """import json, resource, sys
from jcm.cli import main
rc = main(sys.argv[1:])
me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([me.ru_utime + me.ru_stime, workers.ru_utime + workers.ru_stime]), file=sys.stderr)
sys.exit(rc)
"""


def run_verify(code: Path, folder: Path, jobs: int | None) -> tuple[float, float, float, bytes]:
    """Wall seconds of ``jcm verify`` with the code in ``code``, the CPU seconds of its own
    process and of its workers, and its output."""
    args = [sys.executable, "-c", CHILD, "verify", str(folder)] + ([] if jobs is None else ["--jobs", str(jobs)])
    t = time.perf_counter()
    done = subprocess.run(args, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True)
    wall = time.perf_counter() - t
    if done.returncode not in (0, 3):
        raise SystemExit(f"jcm verify ({code}) exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    main_cpu, workers_cpu = json.loads(done.stderr.decode().splitlines()[-1])
    return wall, main_cpu, workers_cpu, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30, help="days of the period (default: a month)")
    ap.add_argument("--before", default="main", help="the commit to compare with, run with one process")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "verify_speed.json")
    args = ap.parse_args()
    first = dt.date(2026, 9, 1)
    last = first + dt.timedelta(days=args.days - 1)
    with tempfile.TemporaryDirectory(prefix="jcm-verify-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        folder, n = make_export(tmp, first, last)
        print(f"export of {first}..{last}: {n} signed messages, made in {time.perf_counter() - t:.0f} s", flush=True)
        before = checkout(args.before, tmp / "before")
        contenders = [(f"before ({args.before})", before, None)] + [(f"after, --jobs {j}", ROOT, j) for j in args.jobs]
        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in contenders}
        references: dict[Path, bytes] = {}  # each code's output: another version may say more
        for _ in range(args.rounds):
            for name, code, jobs in contenders:
                wall, main_cpu, workers_cpu, out = run_verify(code, folder, jobs)
                if out != references.setdefault(code, out):
                    raise SystemExit(f"{name}: output differs from the first run's of its code")
                times[name].append((wall, main_cpu, workers_cpu))
                print(f"  {name:24s} {wall:7.1f} s wall, CPU {main_cpu:7.1f} s its own, {workers_cpu:7.1f} s its "
                      "workers'", flush=True)
    results = {}
    for (name, _, jobs), runs in zip(contenders, times.values()):
        wall, main_cpu, workers_cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        # what the wall time would be on idle cores: the longer of the main process and a worker
        results[name] = {"wall_s": wall, "main_cpu_s": main_cpu, "workers_cpu_s": workers_cpu,
                         "idle_cores_s": max(main_cpu, workers_cpu / (jobs or 1)), "runs": runs}
    base = results[contenders[0][0]]
    print(f"median of {args.rounds} round(s), {n} messages ({args.days} days; output identical in every run of a "
          "code); "
          "µs a message; 'idle cores': the longer of the main process's CPU and a worker's (its share):")
    for name, r in results.items():
        print(f"  {name:24s} wall {r['wall_s'] / n * 1e6:4.0f} µs ({r['wall_s']:5.1f} s; before ÷ this "
              f"{base['wall_s'] / r['wall_s']:.2f} ×), CPU {(r['main_cpu_s'] + r['workers_cpu_s']) / n * 1e6:4.0f} µs "
              f"(own {r['main_cpu_s'] / n * 1e6:3.0f}, workers {r['workers_cpu_s'] / n * 1e6:3.0f}), idle cores "
              f"{r['idle_cores_s'] / n * 1e6:4.0f} µs (before ÷ this {base['idle_cores_s'] / r['idle_cores_s']:.2f} ×)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "days": args.days,
                                     "messages": n, "before": args.before, "results": results}, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
