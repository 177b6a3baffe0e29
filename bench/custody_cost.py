"""What the chain of custody costs per reading, against the unsigned path in the same run.

For one message of 20 float channels (the polling benchmark's device), CPU time per
message of: rendering it (``Reading.to_json``, the gateway's unsigned path), rendering
and signing it (``sign`` + ``chain_hash`` for the next message's ``prev``), parsing it
(``Reading.from_json``, the collector's unsigned path) and checking it (``verify``).
Unless ``--no-gateway``, it then runs ``polling_throughput.py`` for the real gateway's
CPU per message, unsigned and signing (gateway-loop, gateway-0.1s and their ``-signed``
twins, one after the other in the same run), and gives the signed gateway's CPU per
reading as a ratio to the unsigned one: the goal is at most 10 % more.

    python bench/custody_cost.py [--messages 5000] [--rounds 7] [--no-gateway]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from contract.config.custody import CustodyKey, fingerprint  # noqa: E402
from contract.custody import GENESIS, chain_hash, sign, verify  # noqa: E402
from contract.message import Reading  # noqa: E402

BENCH = Path(__file__).resolve().parent
CHANNELS = 20


def readings(n: int) -> list[Reading]:
    t0 = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    return [Reading(site="mn-solar", gateway="gw-mn-01", device="inv-01", ts=t0 + dt.timedelta(seconds=i),
                    values={f"p{j:02d}": 1000.0 + i * 0.37 + j / 7 for j in range(CHANNELS)},
                    units={f"p{j:02d}": "W" for j in range(CHANNELS)}, seq=i + 1, epoch="0123456789abcdef")
            for i in range(n)]


def cpu_per_message(fn, items: list, rounds: int) -> float:
    """Median over ``rounds`` of the process CPU time of ``fn`` over ``items``, per item [µs]."""
    out = []
    for _ in range(rounds):
        t = time.process_time()
        for x in items:
            fn(x)
        out.append((time.process_time() - t) / len(items) * 1e6)
    return statistics.median(out)


def micro(n: int, rounds: int) -> dict:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys = {"mn-solar": [CustodyKey(id="k1", public_key=base64.b64encode(raw).decode(), fingerprint=fingerprint(raw),
                                    valid_from=dt.date(2026, 1, 1))]}
    rs = readings(n)
    bodies = [r.to_json() for r in rs]
    signed, prev = [], GENESIS
    for b in bodies:
        signed.append(sign(b, prev, "k1", key))
        prev = chain_hash(signed[-1])
    assert all(verify(m, keys).ok for m in signed[:10])

    def signing(r: Reading) -> None:
        chain_hash(sign(r.to_json(), GENESIS, "k1", key))

    us = {
        "to_json": cpu_per_message(Reading.to_json, rs, rounds),
        "to_json_sign_hash": cpu_per_message(signing, rs, rounds),
        "from_json": cpu_per_message(Reading.from_json, bodies, rounds),
        "verify": cpu_per_message(lambda m: verify(m, keys), signed, rounds),
        "ed25519_sign_only": cpu_per_message(lambda b: key.sign(b.encode()), bodies, rounds),
    }
    us["signing_extra"] = us["to_json_sign_hash"] - us["to_json"]
    us["checking_extra"] = us["verify"] - us["from_json"]
    return {"us_per_message": us, "bytes_per_message": {"unsigned": statistics.mean(len(b) for b in bodies),
                                                         "signed": statistics.mean(len(m) for m in signed)}}


def gateway(seconds: float) -> dict:
    """The real gateway's CPU per message, from the polling benchmark run now."""
    out = Path(tempfile.mkdtemp(prefix="jcm-custody-bench-")) / "polling.json"
    subprocess.run([sys.executable, str(BENCH / "polling_throughput.py"), "--only", "gateway-loop",
                    "gateway-loop-signed", "gateway-0.1s", "gateway-0.1s-signed", "--no-breakdown", "--seconds", str(seconds), "--json", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    results = json.loads(out.read_text())["results"]
    return {name: r["derived"]["cpu_s_per_1000_readings"] * CHANNELS * 1000  # µs per 20-channel message
            for name, r in results.items() if "derived" in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=10.0, help="window of each gateway contender")
    ap.add_argument("--no-gateway", action="store_true", help="skip the real gateway's measurement")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "custody.json")
    args = ap.parse_args()
    r = micro(args.messages, args.rounds)
    us = r["us_per_message"]
    print(f"per message of {CHANNELS} channels, CPU µs (median of {args.rounds} rounds of {args.messages}):")
    for name, v in us.items():
        print(f"  {name:20s} {v:8.1f}   per reading {v / CHANNELS:6.2f}")
    print(f"  signing ÷ to_json: {us['to_json_sign_hash'] / us['to_json']:.2f} ×; "
          f"verify ÷ from_json: {us['verify'] / us['from_json']:.2f} ×")
    print(f"  bytes per message: {r['bytes_per_message']['unsigned']:.0f} unsigned, "
          f"{r['bytes_per_message']['signed']:.0f} signed")
    if not args.no_gateway:
        print(f"running the gateway (polling_throughput.py, {args.seconds:g} s per contender) ...", flush=True)
        r["gateway_us_per_message"] = g = gateway(args.seconds)
        r["gateway_signed_ratio"] = {}
        for name in ("gateway-loop", "gateway-0.1s"):
            if name in g and f"{name}-signed" in g:
                ratio = r["gateway_signed_ratio"][name] = g[f"{name}-signed"] / g[name]
                print(f"  {name}: {g[name]:.0f} µs CPU per message unsigned, {g[f'{name}-signed']:.0f} signed: "
                      f"{ratio:.3f} × ({(ratio - 1) * 100:+.1f} %); signing alone (above) is "
                      f"{us['signing_extra'] / g[name] * 100:.1f} % of the unsigned")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**r, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "messages": args.messages, "rounds": args.rounds}, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
