"""The gateway signs every reading where it is numbered (issue 11 at the gateway), and
hands readings to one committer thread (issue 12): real Mosquitto, real Modbus sockets,
the real gateway."""

import base64
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import batch
from contract.config.custody import Custody, CustodyKey, fingerprint
from contract.custody import (GENESIS, chain_breaks, chain_hash, is_covered, key_files, open_batch, sign, signed_bytes,
                              verify, verify_chained)
from contract.message import Reading
from gateway.outbox import Outbox
from gateway.service import Gateway
from gateway.signing_key import SigningKey, signing_key
from jcm.cli import main
from tests.conftest import REPO, Subscriber, free_port, load_site, tcp_device, wait_until, write_site


class RawSubscriber(Subscriber):
    """The bytes of each reading message as they arrived, alone or in a batch."""

    def __init__(self, broker):
        self.raw: list[bytes] = []
        super().__init__(broker)

    def _on_message(self, client, userdata, msg):
        super()._on_message(client, userdata, msg)  # the contract's parser takes signed messages
        if msg.topic.endswith("/batch"):  # a backlog's batch: each line a message, rebuilt (check() verifies)
            with self.lock:
                self.raw += [m for m, _ in open_batch(batch.unpack(msg.payload), {})]
        elif not msg.topic.endswith("/status"):
            with self.lock:
                self.raw.append(msg.payload)


@pytest.fixture
def raw(mosquitto):
    sub = RawSubscriber(mosquitto)
    assert sub.wait_for(lambda: sub.client.is_connected(), 10)
    yield sub
    sub.close()


def make_key(folder, name):
    key = Ed25519PrivateKey.generate()
    path = folder / f"{name}.key"
    path.write_bytes(key_files(key)[0])
    path.chmod(0o600)
    return key, path


def public(key, key_id, valid_from, valid_to=None) -> CustodyKey:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return CustodyKey(id=key_id, public_key=base64.b64encode(raw).decode(), fingerprint=fingerprint(raw),
                      valid_from=valid_from, valid_to=valid_to)


def signed_site(tmp_path, port, key_path, key_id, **fields):
    devices = [tcp_device("m0", "power_meter_3ph", port, interval=0.1)]
    return load_site(write_site(tmp_path, devices, outbox={"path": str(tmp_path / "outbox.sqlite"),
                                                           "confirmed_by": "broker"},
                                custody={"private_key_file": str(key_path), "key_id": key_id}, **fields))


def run(site, broker_url, until):
    gw = Gateway(site, broker_url=broker_url)
    gw.start()
    try:
        assert wait_until(until, 20)
    finally:
        gw.stop()
    return gw


def check(messages, keys):
    # a QoS 1 repeat is no break; a live reading may overtake the backlog's batches, so the chain is
    # checked in seq order, as a verifier reads it from the store (covered lines before their cover)
    ordered = sorted(dict.fromkeys(messages), key=lambda m: json.loads(m)["seq"])
    verdicts = [v for _, v in verify_chained(ordered, {"test-site": keys})]
    assert [v.reason for v in verdicts if not v.ok] == []
    assert chain_breaks(verdicts) == []
    return verdicts


def test_signed_chain_is_whole_across_restarts_and_a_rotated_key(tmp_path, mosquitto, raw, simulate):
    port = free_port()
    key_a, path_a = make_key(tmp_path, "a")
    key_b, path_b = make_key(tmp_path, "b")
    site_a = signed_site(tmp_path, port, path_a, "gw-a")
    simulate(site_a)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)

    gw = run(site_a, mosquitto.url, lambda: len(raw.raw) >= 5)
    assert gw.outbox.depth == 0  # every row deleted on its PUBACK: the chain's hash outlives them
    n = len(raw.raw)
    run(site_a, mosquitto.url, lambda: len(raw.raw) >= n + 5)  # restarted mid-chain
    rotated = dt.datetime.now(dt.UTC)
    site_b = signed_site(tmp_path, port, path_b, "gw-b")
    n = len(raw.raw)
    run(site_b, mosquitto.url, lambda: len(raw.raw) >= n + 5)  # a new key file and id, restarted

    verdicts = check(raw.raw, [public(key_a, "gw-a", start, rotated), public(key_b, "gw-b", rotated)])
    seqs = [v.reading.seq for v in verdicts]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len({v.reading.epoch for v in verdicts}) == 1 and verdicts[0].prev == GENESIS
    assert {v.key_id for v in verdicts} == {"gw-a", "gw-b"}


def test_backlog_after_an_outage_carries_the_signatures_made_at_poll_time(tmp_path, mosquitto, raw, simulate):
    key, path = make_key(tmp_path, "a")
    site = signed_site(tmp_path, free_port(), path, "gw-a")
    simulate(site)
    mosquitto.stop()
    gw = Gateway(site, broker_url=mosquitto.url)
    gw.start()
    try:
        assert wait_until(lambda: gw.outbox.depth >= 10, 20)
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            stored = [p.encode() for (p,) in db.execute("SELECT payload FROM outbox ORDER BY seq")]
        time.sleep(0.3)  # stamped well before they can be delivered
        mosquitto.start()
        assert wait_until(lambda: signed_parts(stored) <= signed_parts(raw.raw), 30)
    finally:
        gw.stop()
    # byte for byte what the outbox stored at poll time: whole, or (covered) its signed bytes
    assert signed_parts(stored) <= signed_parts(raw.raw)
    check(raw.raw, [public(key, "gw-a", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))])


def signed_parts(messages) -> set[bytes]:
    return {m if is_covered(m) else signed_bytes(m) for m in messages}


def test_the_chain_survives_deleted_rows_and_an_emptied_outbox_starts_at_genesis(tmp_path):
    key = SigningKey("gw-a", Ed25519PrivateKey.generate())
    body = '{"schema":1,"seq":%d}'
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000, signing=key)
    for _ in range(3):
        box.append("t", lambda s: body % s)
    last = box.after(0, 10)[-1][2].encode()
    box.delete([1, 2, 3])  # acknowledged: the row the next prev is computed from is gone
    box.close()
    box = Outbox(path, max_rows=1000, signing=key)
    assert box.append("t", lambda s: body % s) == 4
    assert f'"prev":"{chain_hash(last)}"' in box.after(0, 10)[0][2]
    epoch = box.epoch
    box.close()
    with sqlite3.connect(path) as db:  # emptied by hand: rows and the sequence
        db.execute("DELETE FROM outbox")
        db.execute("DELETE FROM sqlite_sequence")
    box = Outbox(path, max_rows=1000, signing=key)
    assert box.epoch != epoch and box.append("t", lambda s: body % s) == 1
    assert f'"prev":"{GENESIS}"' in box.after(0, 10)[0][2]
    box.close()


def test_a_poll_thread_never_waits_on_the_outbox_disk(tmp_path, simulate):
    site = load_site(write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", free_port())],
                                outbox={"path": str(tmp_path / "outbox.sqlite")}))
    simulate(site)
    gw = Gateway(site)
    try:
        with gw.outbox._lock:  # a commit flushing to a slow disk holds this
            poll = threading.Thread(target=gw.poll_device, args=[gw.pollers[0]])
            poll.start()
            poll.join(2)
            assert not poll.is_alive()
        assert wait_until(lambda: gw.outbox.depth == 1, 5)
    finally:
        gw.outbox.close()


def bad_site(tmp_path, key_path, key_id="gw-a", **custody):
    return write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", free_port())],
                      outbox={"path": str(tmp_path / "outbox.sqlite")},
                      custody={"private_key_file": str(key_path), "key_id": key_id, **custody})


def rsa_key(path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def test_a_key_file_that_cannot_be_used_stops_the_gateway_naming_it(tmp_path, capsys):
    _, readable = make_key(tmp_path, "readable")
    readable.chmod(0o644)
    rsa_key(tmp_path / "rsa.key")
    other, other_path = make_key(tmp_path, "other")
    listed = public(Ed25519PrivateKey.generate(), "gw-a", "2026-01-01T00:00:00Z").model_dump(mode="json")
    cases = [(readable, {}, "readable by others"), (tmp_path / "missing.key", {}, "cannot read"),
             (tmp_path / "rsa.key", {}, "not an Ed25519 key"), (other_path, {"keys": [listed]}, "its public key")]
    for key_path, custody, why in cases:
        site = bad_site(tmp_path, key_path, **custody)
        assert main(["gateway", "--site", str(site), "--duration", "0.1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(key_path) in err and why in err, err
    assert not (tmp_path / "outbox.sqlite").exists()  # stopped before it touched anything
    site = write_site(tmp_path, [tcp_device("m0", "power_meter_3ph", free_port())],
                      custody={"private_key_file": str(other_path)})
    assert main(["gateway", "--site", str(site), "--duration", "0.1"]) == 2
    assert "custody.key_id: private_key_file and key_id go together" in capsys.readouterr().err
    site = bad_site(tmp_path, other_path, key_id="gw-x", keys=[listed])
    assert main(["gateway", "--site", str(site), "--duration", "0.1"]) == 2
    assert "custody.key_id: 'gw-x' is not one of the ids in keys" in capsys.readouterr().err


def test_put_returns_at_once_and_flush_waits_for_the_commit_in_sequence_order(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    with box._lock:  # the disk is busy: put does not wait for it
        for _ in range(50):
            box.put("t", lambda s: f"m{s}")
    box.flush()
    assert box.after(0, 100) == [(s, "t", f"m{s}") for s in range(1, 51)]
    box.close()


def test_doctor_checks_the_signing_key_as_the_gateway_loads_it(tmp_path):
    from jcm.doctor import FIX, OK, check_signing_key

    _, path = make_key(tmp_path, "a")
    assert check_signing_key(load_site(bad_site(tmp_path, path))).status == OK
    path.chmod(0o640)
    check = check_signing_key(load_site(bad_site(tmp_path, path)))
    assert check.status == FIX and str(path) in check.detail and "readable by others" in check.detail


def test_a_gateway_killed_mid_chain_continues_it_after_its_restart(tmp_path, mosquitto, raw, simulate):
    key, path = make_key(tmp_path, "a")
    site = signed_site(tmp_path, free_port(), path, "gw-a")
    simulate(site)

    def gateway():
        return subprocess.Popen([sys.executable, "-m", "jcm.cli", "gateway", "--site", str(tmp_path / "sites" /
                                 "test-site.yaml"), "--broker", mosquitto.url], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    gw = gateway()
    assert wait_until(lambda: len(raw.raw) >= 10, 20)
    gw.send_signal(signal.SIGKILL)  # between any two statements, commits included
    gw.wait()
    n = len(raw.raw)
    gw = gateway()
    assert wait_until(lambda: len(raw.raw) >= n + 10, 20)
    gw.send_signal(signal.SIGTERM)
    gw.wait(timeout=30)
    verdicts = check(raw.raw, [public(key, "gw-a", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))])
    seqs = sorted(v.reading.seq for v in verdicts)
    assert seqs == list(range(1, len(seqs) + 1)) and len({v.reading.epoch for v in verdicts}) == 1


def test_keygen_lines_give_an_edge_file_that_signs_as_the_listed_key(tmp_path, capsys):
    assert main(["keygen", "--site", "mn-solar", "--out", str(tmp_path / "keys")]) == 0
    edge, server = (yaml.safe_load(part)["custody"] for part in capsys.readouterr().out.split("\n\n"))
    custody = Custody(**edge, **server)  # one file naming the key and listing it: checked against each other
    key = signing_key(custody)
    assert key.id == edge["key_id"] == server["keys"][0]["id"]
    body = Reading(site="mn-solar", gateway="gw", device="m", ts=dt.datetime.now(dt.UTC), values={"p": 1.0},
                   seq=1, epoch="0123456789abcdef").to_json()
    assert verify(sign(body, GENESIS, key.id, key.key), {"mn-solar": custody.keys}).ok
