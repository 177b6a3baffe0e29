"""The production stack's files. Docker cannot run on these machines, so the compose
file is checked statically, and the shipped Mosquitto config and ACL run for real."""

import json
import re
import subprocess
import time

import yaml

from jcm.broker import Mosquitto
from tests.conftest import REPO, Subscriber

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


def test_shipped_broker_config_keeps_messages():
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#") and " " in line)
    assert settings["persistence"] == "true"
    assert int(settings["max_queued_messages"]) > 1000 * 100
    assert int(settings["max_inflight_messages"]) >= 100
    assert settings["allow_anonymous"] == "false"


def test_acl_lets_a_gateway_publish_only_under_its_own_site(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "mn-solar", "pw1"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "collector", "pw2"], check=True)
    broker = Mosquitto(tmp_path / "mq", extra_config=(
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {REPO / 'deploy/mosquitto/acl'}\n")).start()
    try:
        sub = Subscriber(broker, topic="jcm/v1/#", username="collector", password="pw2")
        assert sub.wait_for(lambda: sub.client.is_connected(), 10)
        time.sleep(0.3)
        import paho.mqtt.client as mqtt

        gw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-mn-01")
        gw.username_pw_set("mn-solar", "pw1")
        gw.connect("127.0.0.1", broker.port)
        gw.loop_start()
        from tests.test_collector import payload

        _, body = payload(0)
        own = gw.publish("jcm/v1/mn-solar/gw-mn-01/inv-01/reading", body.replace(b"test-site", b"mn-solar"), qos=1)
        other = gw.publish("jcm/v1/vn-transformers/gw-vn-01/tx-01/reading", body, qos=1)
        own.wait_for_publish(5)
        other.wait_for_publish(5)
        assert sub.wait_for(lambda: len(sub.readings) >= 1, 5)
        time.sleep(0.5)
        assert [r.site for r in sub.readings] == ["mn-solar"]  # the other site's message was dropped by the ACL
        gw.disconnect()
        gw.loop_stop()
        sub.close()
    finally:
        broker.stop()
