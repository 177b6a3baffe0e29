"""`jcm simulate` + `jcm gateway` as a user runs them, for each reference site, with
`mosquitto_sub` as the independent witness that every device's readings arrive."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from jcm.broker import wait_for_port
from tests.conftest import REPO, load_site
from tests.test_reference_sites import SITES

#: the reference sites' fixed Modbus ports: one xdist process runs these one after another
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reference-ports")]


@pytest.mark.parametrize("site_file", SITES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_simulate_and_gateway_commands_deliver_every_device(site_file, mosquitto, tmp_path):
    site = load_site(site_file)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.update({v: "demo" for v in (site.mqtt.username_env, site.mqtt.password_env) if v})
    jcm = [sys.executable, "-m", "jcm.cli"]
    sim = subprocess.Popen(jcm + ["simulate", "--site", site_file], env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for device in site.devices:  # the gateway would rightly report 'disconnected' before this
        wait_for_port(device.connection.port)
    gw = subprocess.Popen(jcm + ["gateway", "--site", site_file, "--broker", mosquitto.url,
                                 "--outbox", str(tmp_path / "outbox.sqlite")],
                          env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sub = subprocess.Popen([shutil.which("mosquitto_sub"), "-p", str(mosquitto.port), "-q", "1",
                            "-t", f"jcm/v1/{site.site}/+/+/reading", "-W", "40"], stdout=subprocess.PIPE, text=True)
    messages, expected = [], {d.id for d in site.devices}
    try:
        for line in sub.stdout:  # until every device has been heard from
            messages.append(json.loads(line))
            if {m["device"] for m in messages} == expected:
                break
    finally:
        sub.terminate()
        for proc in (gw, sim):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    assert {m["device"] for m in messages} == expected, gw.stderr.read()[-2000:]
    assert [(m["device"], m["quality"]) for m in messages if m["status"] != "ok" or m["quality"]] == []
    assert all(m["gateway"] == site.gateway for m in messages)
    assert gw.returncode == 0 and sim.returncode == 0
