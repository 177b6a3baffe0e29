"""`jcm demo --duration N`: all five sites end to end, exit 0 when readings flowed and
months were verified, and nothing left listening afterwards."""

import gzip
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys

import pytest

from jcm.broker import free_port
from tests.conftest import REPO

#: the reference sites' fixed Modbus ports: one xdist process runs these one after another
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reference-ports")]


def run_demo(tmp_path, *args, timeout=240):
    port, control = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "demo", "--workdir", str(tmp_path / "demo"),
                          "--port", str(port), "--control-port", str(control), *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return res, port, control


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_all_five_sites_and_exits_zero(tmp_path):
    res, port, _ = run_demo(tmp_path, "--duration", "60")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "5 sites running (SIMULATED DATA)" in out
    seen = re.search(r"devices heard per site: (\{.*?\})", out).group(1)
    for site in ("mn-solar", "mv-addu", "vn-transformers", "ph-biogas", "id-aceh-biomass"):
        assert f"'{site}': 0" not in seen and site in seen
    first = float(re.search(r"first results:\s+(\d+) s after start", out).group(1))
    assert first < 60  # verified monthly figures within a minute of starting
    assert re.search(r"verified months: .*mn-solar \d{4}-\d{2}", out)
    controls = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/faults", out)]
    assert len(controls) == 5
    assert not listening(port) and not any(listening(p) for p in controls)


def test_demo_without_mosquitto_uses_the_embedded_broker(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))  # the control port asked for is busy: the demo moves on
    busy = taken.getsockname()[1]
    try:
        res, port, _ = run_demo(tmp_path, "--broker", "embedded", "--sites", "mn-solar", "--duration", "15",
                                "--control-port", str(busy))
    finally:
        taken.close()
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "using the embedded Python broker (amqtt)" in out
    moved = re.search(r"mn-solar http://127\.0\.0\.1:(\d+)/faults", out).group(1)
    assert int(moved) != busy
    # the gateway signed what it stored: its chain's last hash is kept with the rows
    demo = tmp_path / "demo"
    assert "require_signatures: true" in (demo / "sites" / "mn-solar.yaml").read_text()
    assert (demo / "keys" / "mn-solar.key").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(demo / "outbox-mn-solar.sqlite") as db:
        assert db.execute("SELECT seq FROM chain").fetchone()[0] > 0
    # the history is signed too: its export verifies from the folder alone, and one value
    # changed in the exported messages is named
    [export] = [p for p in (demo / "exports").iterdir() if p.is_dir()]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    verify = [sys.executable, "-m", "jcm.cli", "verify", str(export)]
    ok = subprocess.run(verify, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0 and "PASSED" in ok.stdout, (ok.stdout + ok.stderr)[-3000:]
    [messages] = (export / "custody" / "messages").glob("*.jsonl.gz")
    lines = gzip.decompress(messages.read_bytes()).split(b"\n")
    i = next(i for i, line in enumerate(lines) if b'"energy_export":' in line)
    changed = re.sub(rb'"energy_export":([0-9.]+)', lambda m: b'"energy_export":' + m.group(1) + b"1", lines[i], count=1)
    messages.write_bytes(gzip.compress(b"\n".join(lines[:i] + [changed] + lines[i + 1:])))
    bad = subprocess.run(verify, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    seq = json.loads(lines[i])["seq"]
    assert bad.returncode == 1 and "FAILED" in bad.stdout, (bad.stdout + bad.stderr)[-3000:]
    assert re.search(rf"seq {seq}\b.*bad signature", bad.stdout), bad.stdout[-3000:]


def test_a_simulated_endpoint_whose_port_is_taken_moves_to_a_free_port():
    """Before: another program on 15021 (mn-solar's poc-meter) stopped the demo with a traceback."""
    from contract.config import load_site
    from jcm.demo import _free_endpoints

    site = load_site(REPO / "config" / "sites" / "mn-solar.yaml")
    taken = site.devices[0].connection.port
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", taken))
        except OSError:
            pass  # already taken by something else: the point of the test holds
        holder.listen()
        moved, = _free_endpoints([site])
    ports = {d.id: d.connection.port for d in moved.devices}
    assert ports[site.devices[0].id] != taken and not listening(ports[site.devices[0].id])
    sharing = [d.id for d in site.devices if d.connection.port == taken]
    assert len({ports[i] for i in sharing}) == 1  # devices of one endpoint stay together
    untouched = [d for d in site.devices if d.connection.port != taken and not listening(d.connection.port)]
    assert all(ports[d.id] == d.connection.port for d in untouched)
