"""The gateway over mqtts:// with a CA, a client certificate and a password from the
environment, against a real Mosquitto TLS listener that requires all three."""

import subprocess
import time

import pytest

from contract.config import ConfigError
from gateway.service import Gateway
from jcm.broker import Mosquitto, free_port
from tests.conftest import Subscriber, load_site, tcp_device, write_site


@pytest.fixture
def tls_broker(tmp_path, pki):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw-test", "s3cret"], check=True)
    passwd.chmod(0o600)
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "mq", extra_config=(
        f"password_file {passwd}\nallow_anonymous false\n"
        f"listener {tls_port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
        "require_certificate true\n"
    )).start()
    yield broker, tls_port
    broker.stop()


def tls_site(tmp_path, pki, tls_port):
    return load_site(write_site(tmp_path, [tcp_device("m1", "power_meter_3ph", free_port())], mqtt={
        "url": f"mqtts://localhost:{tls_port}", "username_env": "JCM_TEST_MQTT_USER", "password_env": "JCM_TEST_MQTT_PASS",
        "ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"), "key_file": str(pki / "client.key")}))


def test_readings_flow_over_tls_with_client_certificate_and_password(tmp_path, pki, tls_broker, simulate, monkeypatch):
    broker, tls_port = tls_broker
    monkeypatch.setenv("JCM_TEST_MQTT_USER", "gw-test")
    monkeypatch.setenv("JCM_TEST_MQTT_PASS", "s3cret")
    site = tls_site(tmp_path, pki, tls_port)
    simulate(site)
    sub = Subscriber(broker, username="gw-test", password="s3cret")
    gw = Gateway(site, outbox_path=str(tmp_path / "outbox.sqlite"))
    gw.start()
    try:
        assert sub.wait_for(lambda: len(sub.seqs("gw-test")) >= 3, 15)
        assert any(s["state"] == "online" for s in sub.status)
    finally:
        gw.stop()
        sub.close()


def test_wrong_password_delivers_nothing_and_keeps_the_outbox(tmp_path, pki, tls_broker, simulate, monkeypatch):
    broker, tls_port = tls_broker
    monkeypatch.setenv("JCM_TEST_MQTT_USER", "gw-test")
    monkeypatch.setenv("JCM_TEST_MQTT_PASS", "wrong")
    site = tls_site(tmp_path, pki, tls_port)
    simulate(site)
    gw = Gateway(site, outbox_path=str(tmp_path / "outbox.sqlite"))
    gw.start()
    time.sleep(2)
    gw.stop()
    assert gw.publisher.acknowledged == 0
    assert gw.outbox.depth == gw.polls > 0  # every reading kept for when the credentials are fixed


def test_missing_credential_variable_is_a_clear_error(tmp_path, pki, monkeypatch):
    monkeypatch.delenv("JCM_TEST_MQTT_USER", raising=False)
    site = tls_site(tmp_path, pki, 8883)
    with pytest.raises(ConfigError, match="environment variable JCM_TEST_MQTT_USER is not set"):
        Gateway(site, outbox_path=str(tmp_path / "outbox.sqlite"))
