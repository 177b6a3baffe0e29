"""`jcm doctor` against a real simulator and a real Mosquitto with passwords: what is fine,
what to fix, and the exit status."""

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import load_site
from contract.message import Reading
from gateway.outbox import RESERVE, Outbox
from jcm.broker import Mosquitto, free_port
from jcm.doctor import FIX, OK, WARN, Check, check_broker, check_clock, check_outbox
from tests.conftest import REPO, tcp_device, write_site
from tests.conftest import openssl
from tests.test_mqtt_security import tls_broker, tls_site  # noqa: F401 (fixtures)


@pytest.fixture
def broker(tmp_path):
    """Mosquitto that wants user gw-test with password s3cret."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw-test", "s3cret"], check=True)
    passwd.chmod(0o600)
    b = Mosquitto(tmp_path / "mq", extra_config=f"password_file {passwd}\nallow_anonymous false\n").start()
    yield b
    b.stop()


def doctor(site_path, password, outbox, *extra):
    env = dict(os.environ, DOC_USER="gw-test", DOC_PASS=password)
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "doctor", "--site", str(site_path), "--outbox", str(outbox),
                          "--timeout", "3", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    rows = {}
    for line in res.stdout.splitlines()[1:]:
        if not line.strip():
            break
        what, status, detail = re.split(r"\s{2,}", line, maxsplit=2)
        rows[what] = (status, detail)
    return res, rows


def test_doctor_names_the_unreachable_device_and_the_refused_login(tmp_path, broker, simulate):
    port, dead = free_port(), free_port()
    mqtt = {"url": broker.url, "username_env": "DOC_USER", "password_env": "DOC_PASS"}
    live = tcp_device("meter", "power_meter_3ph", port)
    simulate(load_site(write_site(tmp_path / "sim", [live], mqtt=mqtt)))
    site = write_site(tmp_path, [live, tcp_device("inverter", "sunspec_inverter_3ph", dead, kind="inverter")],
                      mqtt=mqtt)

    res, rows = doctor(site, "wrong", tmp_path / "var" / "outbox.sqlite")
    assert res.returncode == 1, res.stdout + res.stderr
    assert rows["config"][0] == OK
    assert rows["device meter"][0] == OK and "channels read" in rows["device meter"][1]
    assert rows["device inverter"] == (FIX, f"tcp://127.0.0.1:{dead} unit 1: cannot connect: is the device on, its "
                                            "host and port right, and the network up?")
    status, detail = rows["broker"]
    assert status == FIX and "refused the login of user 'gw-test'" in detail and "DOC_PASS" in detail, detail
    assert rows["outbox directory"][0] == OK and "does not exist yet" in rows["outbox directory"][1]
    assert rows["outbox disk space"][0] == OK
    assert "clock" in rows
    assert rows["acknowledgements"] == (WARN, "any collector's acknowledgement deletes readings from the outbox, a "
                                              "staging or test one's too: list yours in outbox.acknowledged_by")
    assert "\n2 to fix, " in res.stdout

    # put right, all is fine (the clock of a test machine may be unsynchronized: a warning, not a fault)
    res, rows = doctor(write_site(tmp_path / "fixed", [live], mqtt=mqtt), "s3cret", tmp_path / "var" / "outbox.sqlite")
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows["broker"] == (OK, f"{broker.url}: logged in as user 'gw-test'")
    assert not (tmp_path / "var").exists()  # the doctor only looks


def test_doctor_reports_a_bad_site_file_and_exits_non_zero(tmp_path):
    site = write_site(tmp_path, [tcp_device("m", "no_such_profile", free_port())])
    res, rows = doctor(site, "x", tmp_path / "outbox.sqlite")
    assert res.returncode == 1
    assert rows["config"][0] == FIX and "no profile 'no_such_profile'" in rows["config"][1]


def test_readings_stamped_after_now_mean_the_clock_was_set_back(tmp_path):
    site = load_site(write_site(tmp_path, [tcp_device("m", "power_meter_3ph", free_port())]))
    outbox = Outbox(tmp_path / "outbox.sqlite", 1000)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    outbox.append("t", lambda seq: Reading(site=site.site, gateway=site.gateway, device="m", ts=later,
                                           values={"p": 1.0}, seq=seq).to_json())
    outbox.close()
    res, rows = doctor(tmp_path / "sites" / "test-site.yaml", "x", tmp_path / "outbox.sqlite")
    assert rows["outbox file"][0] == OK and "1 readings waiting" in rows["outbox file"][1]
    status, detail = rows["clock"]
    assert status == FIX and f"stamped up to {later:%Y-%m-%d %H:%M:%S} UTC" in detail, detail
    assert check_clock(None).status in ("ok", "warn")


def test_doctor_reports_the_outbox_lock_and_its_sequence_file_in_one_line_each(tmp_path):
    """Each state of a real sequence file beside a real outbox, as the gateway's next start takes it.
    The outbox's filesystem here has flock; one without it (ENOLCK, some NFS mounts) cannot be made
    on this machine, so the FIX of ``outbox lock`` is not exercised."""
    site = load_site(write_site(tmp_path, [tcp_device("m", "power_meter_3ph", free_port())]))
    path, backup = tmp_path / "var" / "outbox.sqlite", tmp_path / "backup.sqlite"
    sequence = Path(f"{path}.sequence")

    def rows():
        checks = {c.what: c for c in check_outbox(site, path)[0]}
        assert checks["outbox lock"].status == OK and "has flock" in checks["outbox lock"].detail
        return checks["outbox sequence file"]

    assert (rows().status, rows().detail) == (OK, f"{sequence}: missing, none yet; the gateway writes it")
    assert not path.parent.exists()  # the doctor only looks
    box = Outbox(path, 1000)
    box.append("t", lambda s: f"m{s}")
    box.close()
    shutil.copyfile(path, backup)
    epoch = box.epoch
    check = rows()
    assert (check.status, check.detail) == (OK, f"{sequence}: epoch {epoch}, committed 1, reserved 1: stopped cleanly")
    box = Outbox(path, 1000)
    box.append("t", lambda s: f"m{s}")
    check = rows()  # running
    assert check.status == OK and f"epoch {epoch}, committed 2, reserved {1 + RESERVE}: {RESERVE - 1} seq(s) " \
        "reserved beyond the committed: the gateway is running or did not stop cleanly" in check.detail, check.detail
    box.close()
    shutil.copyfile(backup, path)  # an older copy put back
    check = rows()
    assert check.status == WARN and "the outbox (seq up to 1) is behind it" in check.detail and \
        "seqs after 2" in check.detail, check.detail
    sequence.write_bytes(b"\x00garbage")
    check = rows()
    assert check.status == WARN and check.detail.startswith(f"{sequence}: garbage: ")
    assert "cannot be read" in check.detail
    sequence.unlink()
    check = rows()
    assert check.status == WARN and check.detail.startswith(f"{sequence}: missing; ")
    for c in (check_outbox(site, path)[0]):  # one line each
        assert "\n" not in c.detail


def test_doctor_checks_tls_as_the_gateway_connects(tmp_path, pki, tls_broker, monkeypatch):
    _, tls_port = tls_broker
    monkeypatch.setenv("JCM_TEST_MQTT_USER", "gw-test")
    monkeypatch.setenv("JCM_TEST_MQTT_PASS", "s3cret")
    site = tls_site(tmp_path, pki, tls_port)
    assert check_broker(site, timeout=3) == Check(
        "broker", OK, f"mqtts://localhost:{tls_port}: logged in as user 'gw-test' over TLS (certificate verified)")

    other = tmp_path / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=another CA", cwd=other)
    wrong_ca = site.model_copy(update={"mqtt": site.mqtt.model_copy(update={"ca_file": str(other / "ca.crt")})})
    check = check_broker(wrong_ca, timeout=3)
    assert check.status == FIX and "TLS: the broker's certificate is not trusted" in check.detail, check

    monkeypatch.setenv("JCM_TEST_MQTT_PASS", "wrong")
    check = check_broker(site, timeout=3)
    assert check.status == FIX and "refused the login of user 'gw-test'" in check.detail, check


def test_a_missing_serial_port_is_named(tmp_path):
    from jcm.doctor import check_device

    port = tmp_path / "ttyUSB7"
    site = load_site(write_site(tmp_path, [{"id": "rtu-meter", "kind": "power_meter", "profile": "power_meter_3ph",
                                            "connection": {"type": "rtu", "port": str(port), "unit_id": 3}}]))
    check = check_device(site, site.devices[0])
    assert check == Check("device rtu-meter", FIX, f"rtu://{port} unit 3: serial port {port} does not exist (adapter "
                                                   "plugged in? its name under /dev/serial/by-id/ stays the same)")
