"""Malformed configuration: one clear error naming the file, the key path and the problem."""

import subprocess
import sys

import pytest
import yaml

from contract.config import ConfigError, load_site
from tests.conftest import REPO, tcp_device, write_site


def site_with(tmp_path, mutate):
    path = write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 15999)])
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    return str(exc.value)


CASES = [
    ("bad port", lambda d: d["devices"][0]["connection"].update(port=70000),
     "devices.0.connection.port: Input should be less than or equal to 65535"),
    ("unknown connection type", lambda d: d["devices"][0]["connection"].update(type="udp"),
     "devices.0.connection: Input tag 'udp' found using 'type' does not match"),
    ("missing key", lambda d: d.pop("timezone"), "timezone: required key is missing"),
    ("bad time zone", lambda d: d.update(timezone="Asia/Nowhere"), "timezone: unknown time zone 'Asia/Nowhere'"),
    ("password in file", lambda d: d["mqtt"].update(password="hunter2"),
     "mqtt.password: unknown key 'password' (secrets are never stored in a file"),
    ("bad broker scheme", lambda d: d["mqtt"].update(url="http://broker:1883"),
     "mqtt.url: 'http://broker:1883': the scheme must be mqtt:// or mqtts://"),
    ("duplicate device", lambda d: d["devices"].append(dict(d["devices"][0], connection=dict(d["devices"][0]["connection"], unit_id=9))),
     "device ids must be unique: m1 repeated"),
    ("shared address", lambda d: d["devices"].append(dict(d["devices"][0], id="m2")),
     "devices 'm1' and 'm2' share tcp://127.0.0.1:15999 unit 1"),
    ("unknown profile", lambda d: d["devices"][0].update(profile="no_such_meter"),
     "devices.0.profile: no profile 'no_such_meter'"),
    ("override of a missing channel", lambda d: d["devices"][0].update(overrides={"nope": {"gain": 2}}),
     "devices.0.overrides.nope: profile 'power_meter_3ph' has no such channel"),
    ("override with a bad value", lambda d: d["devices"][0].update(overrides={"frequency": {"type": "float16"}}),
     "devices.0.overrides.frequency.type: Input should be 'bool'"),
    ("calibration due before done", lambda d: d["devices"][0].update(
        calibrations=[{"date": "2026-01-01", "next_due": "2025-01-01", "mpe_pct": 0.2}]),
     "devices.0.calibrations.0: next_due 2025-01-01 is not after date 2026-01-01"),
    ("monitoring names a missing channel", lambda d: d.update(
        monitoring=[{"parameter": "EG", "number": "(1)", "sources": ["m1.energy_exported"]}]),
     "monitoring EG: device 'm1' has no channel 'energy_exported'"),
    ("mismatched RS-485 line", lambda d: d["devices"].extend([
        {"id": "a", "kind": "power_meter", "profile": "power_meter_3ph", "connection": {"type": "rtu", "port": "/dev/ttyS1", "unit_id": 1}},
        {"id": "b", "kind": "power_meter", "profile": "power_meter_3ph", "connection": {"type": "rtu", "port": "/dev/ttyS1", "unit_id": 2, "baudrate": 19200}}]),
     "devices on serial port /dev/ttyS1 disagree on its line settings"),
]


@pytest.mark.parametrize("name,mutate,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_site_file_names_file_key_and_problem(tmp_path, name, mutate, expected):
    path = site_with(tmp_path, mutate)
    message = error_of(path)
    assert str(path) in message
    assert expected in message, message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 15999)])
    path.write_text(path.read_text() + "devices: [unclosed\n")
    message = error_of(path)
    assert str(path) in message and "line" in message and "not valid YAML" in message


def test_bad_profile_is_reported_in_the_profile_file(tmp_path):
    path = write_site(tmp_path, [tcp_device("m1", "broken", 15999)])
    (tmp_path / "profiles").unlink()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "broken.yaml").write_text(
        "profile: broken\npoints:\n  - {channel: p, address: 0, type: float32, order: ABDC}\n")
    message = error_of(path)
    assert "broken.yaml: points.0.order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'" in message


def test_check_config_command_says_the_same_without_running(tmp_path):
    good = REPO / "config" / "sites" / "mn-solar.yaml"
    bad = site_with(tmp_path, lambda d: d["devices"][0]["connection"].update(port=0))
    ok = subprocess.run([sys.executable, "-m", "jcm.cli", "check-config", str(good)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "OK (site mn-solar" in ok.stdout
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "check-config", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert f"{bad}: devices.0.connection.port: Input should be greater than or equal to 1" in res.stderr


def test_reserved_channel_name_is_refused(tmp_path):
    path = write_site(tmp_path, [tcp_device("m1", "odd", 15999)])
    (tmp_path / "profiles").unlink()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "odd.yaml").write_text("profile: odd\npoints:\n  - {channel: status, address: 0}\n")
    assert "channel name 'status' is reserved" in error_of(path)
