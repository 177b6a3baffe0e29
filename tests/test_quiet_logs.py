"""Routine operation logs nothing per poll (APScheduler said two lines a poll); `-v`
brings the detail back; the embedded broker starts without an ERROR."""

import logging
import subprocess
import sys

from contract.config import load_site
from jcm.broker import EmbeddedBroker, free_port
from tests.conftest import REPO, tcp_device, write_site


def run_gateway(tmp_path, mosquitto, simulate, *flags, seconds=4.0):
    path = write_site(tmp_path, [tcp_device(f"m{i}", "power_meter_3ph", free_port(), interval=0.25)
                                 for i in range(2)])
    simulate(load_site(path))
    res = subprocess.run([sys.executable, "-m", "jcm.cli", *flags, "gateway", "--site", str(path), "--broker",
                          mosquitto.url, "--outbox", str(tmp_path / "outbox.sqlite"), "--duration", str(seconds)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stderr.splitlines()


def test_a_gateway_polling_logs_nothing_per_poll(tmp_path, mosquitto, simulate, subscriber):
    lines = run_gateway(tmp_path, mosquitto, simulate)
    # 2 devices x 4 s / 0.25 s: about 32 polls, and the readings did arrive
    assert len(subscriber.readings) >= 20
    assert len(lines) <= 6, "\n".join(lines)  # start, connection, stop: a handful, none per poll
    assert not [line for line in lines if "apscheduler" in line or "Running job" in line]


def test_verbose_brings_every_poll_back(tmp_path, mosquitto, simulate):
    lines = run_gateway(tmp_path, mosquitto, simulate, "-v", seconds=2.0)
    assert sum(": polled, ok" in line for line in lines) >= 8


def test_quiet_says_only_warnings(tmp_path, mosquitto, simulate):
    assert run_gateway(tmp_path, mosquitto, simulate, "-q", seconds=1.0) == []


def test_the_embedded_broker_starts_and_stops_without_an_error(caplog):
    with caplog.at_level(logging.INFO, logger="amqtt"):
        broker = EmbeddedBroker().start()
        broker.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
