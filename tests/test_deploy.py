"""The production stack's files. Docker cannot run on these machines, so the compose file
and the Dockerfile are checked statically, the systemd unit with systemd-analyze; the
shipped Mosquitto config and ACL run for real in test_shipped_broker.py."""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_service_image_is_pinned_and_influxdb_is_2x():
    for name, svc in COMPOSE["services"].items():
        image = svc.get("image", "")
        if "build" in svc:
            assert (REPO / svc["build"] / "Dockerfile").exists() if isinstance(svc["build"], str) else True
            continue
        assert re.search(r":\d", image), f"{name}: image '{image}' is not pinned to a version"
    assert COMPOSE["services"]["influxdb"]["image"].startswith("influxdb:2.")
    assert set(COMPOSE["services"]) == {"mosquitto", "influxdb", "collector", "grafana"}


def test_every_mounted_file_and_named_volume_exists():
    for name, svc in COMPOSE["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./deploy/tls/out/"):
                continue  # made by deploy/tls/make-certs.sh (test_compose_mounts_the_certificates_the_script_makes)
            if source.startswith("./"):
                path = REPO / source
                example = path.with_name(path.name + ".example")
                assert path.exists() or example.exists(), f"{name}: {source} missing (nor {example.name})"
            else:
                assert source in COMPOSE["volumes"], f"{name}: volume {source} not declared"
        for dep in svc.get("depends_on", []):
            assert dep in COMPOSE["services"]
    collector_cfg = COMPOSE["services"]["collector"]["command"][-1]
    assert (REPO / collector_cfg).exists()


def test_collector_config_of_the_stack_loads_and_points_at_influxdb():
    from contract.config import load_collector

    cfg = load_collector(REPO / "config" / "collector.docker.yaml")
    assert cfg.store.startswith("influxdb://influxdb:8086") and "api=v2" in cfg.store
    assert cfg.broker.host == "mosquitto"


def test_grafana_provisioning_matches_its_dashboards():
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text())["datasources"][0]
    uids = set()
    for path in sorted((REPO / "deploy/grafana/dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["uid"]}, path.name
        for panel in dash["panels"]:
            assert '"reading"' in panel["targets"][0]["query"]  # the measurement the stores write
    assert uids == {"jcm-site-overview", "jcm-deployment"}
    assert ds["jsonData"]["version"] == "InfluxQL"


def test_systemd_unit_restarts_and_keeps_the_outbox_on_persistent_storage():
    unit = (REPO / "deploy/systemd/jcm-gateway@.service").read_text()
    assert "Restart=on-failure" in unit
    assert "--outbox /var/lib/jcm/" in unit and "StateDirectory=jcm" in unit


def unit_settings() -> dict[str, str]:
    lines = (REPO / "deploy/systemd/jcm-gateway@.service").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_systemd_unit_is_hardened():
    unit = unit_settings()
    assert unit["User"] == "jcm" and unit["NoNewPrivileges"] == "true"
    assert unit["ProtectSystem"] == "strict" and unit["ReadWritePaths"] == "/var/lib/jcm"  # the outbox only
    assert unit["ProtectHome"] == "true" and unit["PrivateTmp"] == "true"
    assert set(unit["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit["CapabilityBoundingSet"] == "" and unit["AmbientCapabilities"] == ""
    assert unit["SystemCallFilter"] == "@system-service"
    assert "PrivateDevices" not in unit  # it would hide the RS-485 ports


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed (apt package systemd)")
def test_systemd_unit_verifies_and_its_exposure_is_low(tmp_path):
    # an instance of the template, with a command that exists on this machine
    unit = tmp_path / "jcm-gateway@test.service"
    text = (REPO / "deploy/systemd/jcm-gateway@.service").read_text()
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true')}", text, flags=re.M))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    if security.returncode != 0 and "offline" in security.stderr:
        pytest.skip("this systemd-analyze has no offline security check")
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 2.5, security.stdout[-3000:]


def test_compose_publishes_only_the_tls_port_to_the_network():
    published = {}
    for name, svc in COMPOSE["services"].items():
        for spec in svc.get("ports", []):
            parts = str(spec).split(":")
            published[(name, parts[-1])] = parts[0] if len(parts) == 3 else "0.0.0.0"
    assert published[("mosquitto", "8883")] == "0.0.0.0"
    assert {k: v for k, v in published.items() if k != ("mosquitto", "8883")} == {
        ("mosquitto", "1883"): "127.0.0.1", ("influxdb", "8086"): "127.0.0.1", ("grafana", "3000"): "127.0.0.1"}
    collector = COMPOSE["services"]["collector"]
    assert collector["read_only"] is True and collector["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in collector["security_opt"]


def test_compose_mounts_the_certificates_the_script_makes():
    mounts = COMPOSE["services"]["mosquitto"]["volumes"]
    assert "./deploy/tls/out/broker:/mosquitto/certs:ro" in mounts
    script = (REPO / "deploy/tls/make-certs.sh").read_text()
    assert 'out=${JCM_TLS_DIR:-$(dirname "$0")/out}' in script and '"$out/broker/server.crt"' in script
    assert "deploy/tls/out/" in (REPO / ".gitignore").read_text().splitlines()


def test_image_runs_as_a_non_root_user():
    lines = [line.split(None, 1) for line in (REPO / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    users = [args.strip() for op, args in lines if op == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_run = max(i for i, (op, _) in enumerate(lines) if op == "RUN")
    assert [op for op, _ in lines].index("USER") > last_run  # nothing runs as root after the switch


def test_shipped_broker_config_keeps_messages_and_refuses_big_ones():
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#") and " " in line)
    assert settings["persistence"] == "true"
    assert int(settings["max_queued_messages"]) > 1000 * 100
    assert int(settings["max_inflight_messages"]) >= 100
    assert settings["allow_anonymous"] == "false"
    from contract.config import load_collector

    collector = load_collector(REPO / "config" / "collector.docker.yaml")
    assert int(settings["max_packet_size"]) <= collector.max_payload_bytes  # nothing the collector must refuse for size
    assert settings["require_certificate"] == "true"


def acl_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "deploy/mosquitto/acl").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        assert words[0] != "pattern", "a pattern applies to every user, the collector and the live view included"
        if words[0] == "user":
            current = words[1]
            sections[current] = []
        else:
            assert current is not None, f"'{line}' applies to anonymous clients"
            sections[current].append(" ".join(words))
    return sections


def test_acl_has_a_section_per_reference_site_writing_its_own_gateway_only():
    from contract.config import load_collector, load_site

    sections = acl_sections()
    sites = {s.site: s for s in (load_site(p) for p in sorted((REPO / "config" / "sites").glob("*.yaml")))}
    collectors = {load_collector(f).client_id for f in (REPO / "config").glob("collector*.yaml")}
    assert set(sections) == set(sites) | collectors | {"liveview"}
    assert all(site.outbox.acknowledged_by and set(site.outbox.acknowledged_by) <= collectors for site in sites.values())
    # the stack's collector logs in as the user whose section is its own
    assert COMPOSE["services"]["collector"]["environment"]["JCM_MQTT_USERNAME_COLLECTOR"] == \
        load_collector(REPO / "config" / "collector.docker.yaml").client_id
    for site_id, site in sites.items():
        assert sections[site_id] == [f"topic write jcm/v1/{site_id}/{site.gateway}/+/reading",
                                     f"topic write jcm/v1/{site_id}/{site.gateway}/batch",
                                     f"topic write jcm/v1/{site_id}/{site.gateway}/status",
                                     f"topic read jcm/v1/{site_id}/{site.gateway}/ack/+"]
    for collector in collectors:  # its own acknowledgement topic only: a gateway trusts collectors by it
        assert sections[collector] == ["topic read jcm/v1/+/+/+/reading", "topic read jcm/v1/+/+/batch",
                                       "topic read jcm/v1/+/+/ack/+", f"topic write jcm/v1/+/+/ack/{collector}",
                                       "topic read jcm/v1/+/+/status"]
    assert sections["liveview"] == ["topic read jcm/v1/#"]
