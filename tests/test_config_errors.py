"""Malformed configuration: one clear error naming the file, the key path and the problem."""

import math
import subprocess
import sys

import pytest
import yaml

from contract.config import ConfigError, load_collector, load_profile, load_site
from contract.config.loader import SHIPPED_PROFILES
from tests.conftest import REPO, tcp_device, write_site

NAN, INF = math.nan, math.inf


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
    ("empty host", lambda d: d["devices"][0]["connection"].update(host=""),
     "devices[m1].connection.host: String should match pattern"),
    ("host with a space", lambda d: d["devices"][0]["connection"].update(host="10.0.0.1 "),
     "devices[m1].connection.host: String should match pattern"),
    ("bad port", lambda d: d["devices"][0]["connection"].update(port=70000),
     "devices[m1].connection.port: Input should be less than or equal to 65535"),
    ("unknown connection type", lambda d: d["devices"][0]["connection"].update(type="udp"),
     "devices[m1].connection: Input tag 'udp' found using 'type' does not match"),
    ("missing key", lambda d: d.pop("timezone"), "timezone: required key is missing"),
    ("bad time zone", lambda d: d.update(timezone="Asia/Nowhere"), "timezone: unknown time zone 'Asia/Nowhere'"),
    ("password in file", lambda d: d["mqtt"].update(password="hunter2"),
     "mqtt.password: unknown key 'password' (secrets are never stored in a file"),
    ("bad broker scheme", lambda d: d["mqtt"].update(url="http://broker:1883"),
     "mqtt.url: 'http://broker:1883': the scheme must be mqtt:// or mqtts://"),
    ("duplicate device", lambda d: d["devices"].append(dict(d["devices"][0], connection=dict(d["devices"][0]["connection"], unit_id=9))),
     "devices[1].id: device ids must be unique: m1 repeated"),
    ("shared address", lambda d: d["devices"].append(dict(d["devices"][0], id="m2")),
     "devices[m2].connection: devices 'm1' and 'm2' share tcp://127.0.0.1:15999 unit 1"),
    ("unknown profile", lambda d: d["devices"][0].update(profile="no_such_meter"),
     "devices[m1].profile: no profile 'no_such_meter'"),
    ("override of a missing channel", lambda d: d["devices"][0].update(overrides={"nope": {"gain": 2}}),
     "devices[m1].overrides.nope: profile 'power_meter_3ph' has no such channel"),
    ("override with a bad value", lambda d: d["devices"][0].update(overrides={"frequency": {"type": "float16"}}),
     "devices[m1].overrides.frequency.type: Input should be 'bool'"),
    ("calibration due before done", lambda d: d["devices"][0].update(
        calibrations=[{"date": "2026-01-01", "next_due": "2025-01-01", "mpe_pct": 0.2}]),
     "devices[m1].calibrations[2026-01-01]: next_due 2025-01-01 is not after date 2026-01-01"),
    ("monitoring names a missing channel", lambda d: d.update(
        monitoring=[{"parameter": "EG", "number": "(1)", "sources": ["m1.energy_exported"]}]),
     "monitoring[EG]: monitoring EG: device 'm1' has no channel 'energy_exported'"),
    ("mismatched RS-485 line", lambda d: d["devices"].extend([
        {"id": "a", "kind": "power_meter", "profile": "power_meter_3ph", "connection": {"type": "rtu", "port": "/dev/ttyS1", "unit_id": 1}},
        {"id": "b", "kind": "power_meter", "profile": "power_meter_3ph", "connection": {"type": "rtu", "port": "/dev/ttyS1", "unit_id": 2, "baudrate": 19200}}]),
     "devices[b].connection: devices on serial port /dev/ttyS1 disagree on its line settings"),
]

# Accepted but wrong before (issue 8, section 5): each is now one error naming the key.
CAL = {"date": "2025-01-01", "next_due": "2026-01-01", "mpe_pct": 0.2}
EG = {"parameter": "EG", "number": "(1)", "sources": ["m1.energy_export"]}


def monitor(**fields):
    return lambda d: d.update(monitoring=[dict(EG, **fields)])


def device_field(**fields):
    return lambda d: d["devices"][0].update(fields)


def connection(**fields):
    return lambda d: d["devices"][0]["connection"].update(fields)


ACCEPTED_BUT_WRONG = [
    ("a device named ack", device_field(id="ack"), "devices[ack].id: 'ack': a device so named would publish on .../<gateway>/ack/reading"),
    ("error found NaN", device_field(calibrations=[dict(CAL, error_found_pct=NAN)]),
     "devices[m1].calibrations[2025-01-01].error_found_pct: Input should be a finite number"),
    ("error found inf", device_field(calibrations=[dict(CAL, error_found_pct=INF)]),
     "devices[m1].calibrations[2025-01-01].error_found_pct: Input should be a finite number"),
    ("error found -50 %", device_field(calibrations=[dict(CAL, error_found_pct=-50)]),
     "devices[m1].calibrations[2025-01-01].error_found_pct: Input should be greater than or equal to -20"),
    ("MPE 50 %", device_field(calibrations=[dict(CAL, mpe_pct=50)]),
     "devices[m1].calibrations[2025-01-01].mpe_pct: Input should be less than or equal to 20"),
    ("two calibrations on one day", device_field(calibrations=[CAL, dict(CAL, next_due="2027-01-01")]),
     "devices[m1].calibrations[1].date: a second calibration dated 2025-01-01"),
    ("offset NaN", device_field(overrides={"frequency": {"offset": NAN}}),
     "devices[m1].overrides.frequency.offset: Input should be a finite number"),
    ("range to infinity", device_field(overrides={"frequency": {"range": [0, INF]}}),
     "devices[m1].overrides.frequency.range[1]: Input should be a finite number"),
    ("float32 at 65535", device_field(overrides={"frequency": {"address": 65535}}),
     "devices[m1].overrides.frequency.address: a float32 at 65535 needs registers 65535-65536, past the table's last"),
    ("overlapping registers", device_field(overrides={"frequency": {"address": 3001}}),
     "devices[m1].overrides.frequency.address: holding registers 3001-3002 of 'frequency' overlap 'current_l1' (3000-3001)"),
    ("scale factor beyond one read", device_field(overrides={"frequency": {"scale_factor": {"address": 3300}}}),
     "devices[m1].overrides.frequency.scale_factor.address: register 3300 and 'frequency' (3110-3111) span 191 "
     "registers: a value and its scale factor are read in one request, at most 125"),
    ("rollover of an instantaneous value", device_field(overrides={"frequency": {"rollover": 100}}),
     "devices[m1].overrides.frequency.rollover: only a counter wraps: set kind: counter or remove rollover"),
    ("broker port 0", lambda d: d["mqtt"].update(url="mqtt://broker:0"), "mqtt.url: 'mqtt://broker:0': port 0 is not a port"),
    ("power_sign NaN", monitor(power_source="m1.active_power", power_sign=NAN),
     "monitoring[EG].power_sign: Input should be a finite number"),
    ("power_sign not a sign", monitor(power_source="m1.active_power", power_sign=0.5),
     "monitoring[EG].power_sign: 0.5 is not a sign: use 1 or -1"),
    ("parameter monitored twice", lambda d: d.update(monitoring=[EG, EG]),
     "monitoring[1].parameter: EG is monitored twice"),
    ("completeness_fail above review", lambda d: d.update(quality={"completeness_review": 0.8, "completeness_fail": 0.9}),
     "quality.completeness_fail: 0.9 is above completeness_review 0.8"),
    ("recording interval 1e-6", lambda d: d.update(quality={"recording_interval_s": 1e-6}),
     "quality.recording_interval_s: Input should be greater than or equal to 1"),
    ("recording interval shorter than polling", lambda d: (d.update(monitoring=[EG], quality={"recording_interval_s": 60}),
                                                           d["devices"][0].update(poll_interval=300)),
     "quality.recording_interval_s: 60 s is shorter than the poll interval of m1: completeness could never reach 100 %"),
    ("tolerance inf", lambda d: d.update(quality={"check_meter_tolerance": INF}),
     "quality.check_meter_tolerance: Input should be a finite number"),
    ("host with its port", connection(host="192.168.1.10:502"),
     "devices[m1].connection.host: '192.168.1.10:502': a host with a port; put the port in 'port'"),
    ("empty serial port", lambda d: d["devices"][0].update(connection={"type": "rtu", "port": ""}),
     "devices[m1].connection.port: String should match pattern"),
    ("serial port with a trailing space", lambda d: d["devices"][0].update(connection={"type": "rtu", "port": "/dev/ttyUSB0 "}),
     "devices[m1].connection.port: String should match pattern"),
    ("Modbus timeout 1e-6", connection(timeout=1e-6),
     "devices[m1].connection.timeout: Input should be greater than or equal to 0.05"),
    ("outbox that could overtake what the collector follows", lambda d: d.update(outbox={"max_rows": 8_388_609}),
     "outbox.max_rows: Input should be less than or equal to 8388608"),
    ("readings held in memory beyond any edge computer's", lambda d: d.update(outbox={"memory_rows": 10**9}),
     "outbox.memory_rows: Input should be less than or equal to 1000000"),
    ("backlog rate 1e-9", lambda d: d.update(outbox={"backlog_rate": 1e-9}),
     "outbox.backlog_rate: Input should be greater than or equal to 1"),
    ("no collector's acknowledgements taken", lambda d: d.update(outbox={"acknowledged_by": []}),
     "outbox.acknowledged_by: List should have at least 1 item"),
    ("a collector id no acknowledgement topic can carry", lambda d: d.update(outbox={"acknowledged_by": ["c/+"]}),
     "outbox.acknowledged_by[0]: String should match pattern"),
    ("a site's own reading topic as a collector", lambda d: d.update(outbox={"acknowledged_by": ["reading"]}),
     "outbox.acknowledged_by[0]: 'reading' cannot name a collector"),
    ("more collectors than a status carries", lambda d: d.update(outbox={"acknowledged_by": [f"c{i}" for i in range(9)]}),
     "outbox.acknowledged_by: List should have at most 8 items"),
    ("a collector listed twice", lambda d: d.update(outbox={"acknowledged_by": ["c1", "c2", "c1"]}),
     "outbox.acknowledged_by: listed twice: c1"),
    ("acknowledgements with the PUBACK deciding", lambda d: d.update(outbox={"confirmed_by": "broker",
                                                                            "acknowledged_by": ["c1"]}),
     "outbox: acknowledged_by is for confirmed_by: store"),
    ("fixed parameter twice", lambda d: d.update(fixed_parameters=[
        {"parameter": "EF", "value": 0.5, "unit": "t/MWh", "source": "x"}, {"parameter": "EF", "value": 0.6, "unit": "t/MWh", "source": "y"}]),
     "fixed_parameters[1].parameter: EF is fixed twice"),
    ("fixed value NaN", lambda d: d.update(fixed_parameters=[{"parameter": "EF", "value": NAN, "unit": "t/MWh", "source": "x"}]),
     "fixed_parameters[EF].value: Input should be a finite number"),
    ("certificates on a plaintext URL", lambda d: d["mqtt"].update(ca_file="/etc/jcm/ca.crt"),
     "mqtt.ca_file: ca_file is set but the URL is mqtt://, which does not use TLS: use mqtts://"),
    ("client certificate without key", lambda d: d["mqtt"].update(url="mqtts://broker", cert_file="/etc/jcm/site.crt"),
     "mqtt.key_file: a client certificate needs both cert_file and key_file"),
    ("secret where a variable name belongs", lambda d: d["mqtt"].update(username_env="U", password_env="hunter2!"),
     "mqtt.password_env: String should match pattern"),
    ("profile name as a path", device_field(profile="../sites/test-site"),
     "devices[m1].profile: String should match pattern"),
    ("register map given by hand", device_field(register_map={"profile": "x", "points": []}),
     "devices[m1].register_map: unknown key 'register_map' (it comes from the profile"),
    ("overrides not a mapping", device_field(overrides=["gain"]),
     "devices[m1].overrides: Input should be a valid dictionary"),
    ("devices not a list", lambda d: d.update(devices=5), "devices: Input should be a valid list"),
]


@pytest.mark.parametrize("name,mutate,expected", ACCEPTED_BUT_WRONG, ids=[c[0] for c in ACCEPTED_BUT_WRONG])
def test_config_that_was_accepted_but_wrong_is_refused(tmp_path, name, mutate, expected):
    path = site_with(tmp_path, mutate)
    message = error_of(path)
    assert message.startswith(f"{path}: ") and expected in message, message


def test_a_password_in_the_broker_url_is_refused_without_repeating_it(tmp_path):
    path = site_with(tmp_path, lambda d: d["mqtt"].update(url="mqtts://gw-test:hunter2@broker.example:8883"))
    message = error_of(path)
    assert f"{path}: mqtt.url: the URL holds a password: remove it and name environment variables in username_env and password_env" \
        in message
    assert "hunter2" not in message


def test_one_serial_port_named_two_ways_is_refused(tmp_path):
    """/dev/ttyUSB0 for one meter, its /dev/serial/by-id/ link for another: the gateway opened
    the port twice, the second open was refused (the port is held exclusively) and the
    devices named that way stayed disconnected, their meters blamed."""
    (tmp_path / "ttyUSB0").touch()
    (tmp_path / "usb-FTDI-port0").symlink_to(tmp_path / "ttyUSB0")
    path = site_with(tmp_path, lambda d: d["devices"].extend([
        {"id": "a", "kind": "power_meter", "profile": "power_meter_3ph",
         "connection": {"type": "rtu", "port": str(tmp_path / "ttyUSB0"), "unit_id": 1}},
        {"id": "b", "kind": "power_meter", "profile": "power_meter_3ph",
         "connection": {"type": "rtu", "port": str(tmp_path / "usb-FTDI-port0"), "unit_id": 2}}]))
    message = error_of(path)
    assert f"devices[b].connection.port: {tmp_path / 'usb-FTDI-port0'} and {tmp_path / 'ttyUSB0'} (device 'a') " \
           "are one serial port" in message, message


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path):
    path = write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", 15999), tcp_device("m2", "power_meter_3ph", 15998)])
    lines = path.read_text().splitlines()
    lines.insert(1, "timezone: Asia/Tokyo")
    i = lines.index("  poll_interval: 0.5", lines.index("- id: m2"))
    lines.insert(i + 1, "  poll_interval: 3600")
    path.write_text("\n".join(lines) + "\n")
    message = error_of(path)
    assert message.splitlines() == [
        f"{path}: timezone: key 'timezone' is given twice (lines 2 and 5)",
        f"{path}: devices[m2].poll_interval: key 'poll_interval' is given twice (lines {i + 1} and {i + 2})",
    ]


def test_a_problem_of_a_profile_shared_by_devices_is_reported_once(tmp_path):
    devices = [tcp_device(f"m{i}", "broken", 15990 + i) for i in range(3)]
    devices += [tcp_device(f"x{i}", "missing", 15980 + i) for i in range(3)]
    path = write_site(tmp_path, devices)
    (tmp_path / "profiles").unlink()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "broken.yaml").write_text(
        "profile: broken\npoints:\n  - {channel: a, address: 0, type: float32}\n  - {channel: b, address: 1}\n")
    assert error_of(path).splitlines() == [
        f"{tmp_path / 'profiles' / 'broken.yaml'}: points[b].address: holding registers 1-1 of 'b' overlap 'a' (0-1)",
        f"{path}: devices[x0].profile: no profile 'missing' (also used by devices[x1], devices[x2]); looked for "
        f"missing.yaml in {tmp_path / 'profiles'}, {SHIPPED_PROFILES} (a site's own profiles go in a directory named "
        "by --profiles or profiles_dir)",
    ]


def test_profile_file_point_past_the_last_register(tmp_path):
    profile = tmp_path / "profiles" / "edge.yaml"
    profile.parent.mkdir()
    profile.write_text("profile: edge\npoints:\n  - {channel: e, address: 65534, type: uint64}\n"
                       "  - {channel: s, address: 65530, type: string, length: 10}\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(profile)
    assert str(exc.value).splitlines() == [
        f"{profile}: points[e].address: a uint64 at 65534 needs registers 65534-65537, past the table's last address 65535",
        f"{profile}: points[s].address: a string at 65530 needs registers 65530-65539, past the table's last address 65535",
    ]


COLLECTOR = {"broker": {"url": "mqtt://mosquitto:1883"}, "store": "sqlite:///var/jcm.db"}
COLLECTOR_WRONG = [
    ({"session_expiry": 2 ** 40}, "session_expiry: Input should be less than or equal to 4294967295"),
    ({"max_future_s": 1e300}, "max_future_s: Input should be less than or equal to 86400"),
    ({"batch_timeout": 1e-9}, "batch_timeout: Input should be greater than or equal to 0.01"),
    ({"client_id": ""}, "client_id: String should match pattern"),
    ({"broker": {"url": "mqtt://collector:pw@mosquitto"}}, "broker.url: the URL holds a password"),
    ({"store": "influxdb://admin:s3cret@influxdb:8086?api=v2"}, "store: the store URL holds credentials"),
]


@pytest.mark.parametrize("fields,expected", COLLECTOR_WRONG, ids=[c[1].split(":")[0] for c in COLLECTOR_WRONG])
def test_collector_config_accepted_but_wrong_is_refused(tmp_path, fields, expected):
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(dict(COLLECTOR, **fields)))
    with pytest.raises(ConfigError) as exc:
        load_collector(path)
    assert f"{path}: {expected}" in str(exc.value)


@pytest.mark.parametrize("content,expected", [
    (b"site: \xff\xfe\n", "byte 6: not UTF-8 text"),
    (b"[" * 20000, "nested too deeply"),
], ids=["not UTF-8", "deep nesting"])
def test_unreadable_content_is_one_error(tmp_path, content, expected):
    path = tmp_path / "sites" / "s.yaml"
    path.parent.mkdir()
    path.write_bytes(content)
    assert f"{path}: " in error_of(path) and expected in error_of(path)


def test_a_file_too_large_to_be_configuration_is_refused_unread(tmp_path):
    """Read up to the limit only: a huge file (or /dev/zero named by mistake) would take
    minutes and gigabytes to parse, even if it is valid YAML."""
    path = site_with(tmp_path, lambda d: None)
    load_site(path)
    with path.open("a") as f:
        f.write(("#" + "x" * 99 + "\n") * 6000)  # 600 KB of comments
    assert error_of(path) == f"{path}: more than 512 KiB: not a configuration file " \
                             "(the largest site file shipped is a few KiB)"


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
    assert "broken.yaml: points[p].order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'" in message


def test_check_config_command_says_the_same_without_running(tmp_path):
    good = REPO / "config" / "sites" / "mn-solar.yaml"
    bad = site_with(tmp_path, lambda d: d["devices"][0]["connection"].update(port=0))
    ok = subprocess.run([sys.executable, "-m", "jcm.cli", "check-config", str(good)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "OK (site mn-solar" in ok.stdout
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "check-config", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert f"{bad}: devices[m1].connection.port: Input should be greater than or equal to 1" in res.stderr


def test_reserved_channel_name_is_refused(tmp_path):
    path = write_site(tmp_path, [tcp_device("m1", "odd", 15999)])
    (tmp_path / "profiles").unlink()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "odd.yaml").write_text("profile: odd\npoints:\n  - {channel: status, address: 0}\n")
    assert "channel name 'status' is reserved" in error_of(path)
