"""`jcm watch` against a real Mosquitto: what it prints of each kind of message on
``jcm/v1/#``, its default topic, is true and bounded."""

import datetime as dt
import json

import paho.mqtt.client as mqtt

from contract import batch
from contract.message import Reading
from jcm.watch import MAX_LINE, watch

T0 = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)


def publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for topic, payload in messages:
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def reading(site: str, seq: int = 1, ts: dt.datetime = T0) -> bytes:
    return Reading(site=site, gateway=f"gw-{site}", device="poc-meter", ts=ts, values={"active_power": -1500.0 - seq},
                   seq=seq).to_json().encode()


def test_a_batch_is_its_readings_and_a_long_status_is_cut(mosquitto, capsys):
    """Before: every backlog batch printed as "malformed message" (it is zlib, not JSON), and a
    status of 60 kB (any text a gateway puts in it) printed as one line of 60 kB."""
    readings = [reading("mn-solar", seq=101 + i, ts=T0 + dt.timedelta(seconds=10 * i)) for i in range(3)]
    payload, n = batch.pack(readings)
    assert n == 3
    status = {"schema": 1, "site": "mn-solar", "gateway": "gw-mn-solar", "state": "online", "note": "x" * 60_000}
    publish_retained(mosquitto.port, [("jcm/v1/mn-solar/gw-mn-solar/batch", payload),
                                      ("jcm/v1/mn-solar/gw-mn-solar/status", json.dumps(status).encode())])
    assert watch(mosquitto.url, "jcm/v1/#", count=2, duration=20) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) <= MAX_LINE for line in lines), [line[:200] for line in lines]
    (line,) = [line for line in lines if "batch" in line]
    assert "malformed" not in line
    span = "2026-11-30 03:00:00Z..2026-11-30 03:00:20Z"
    assert f"{span} mn-solar/gw-mn-solar batch of 3 readings, #101..#103" in line, line
    (cut,) = [line for line in lines if "status" in line]
    assert cut.endswith(" more characters)") and "'state': 'online'" in cut


def test_a_reading_is_the_topics_not_the_site_its_payload_names(mosquitto, capsys):
    """The broker's ACL lets a gateway write under its own site only, and the collector and the
    live view take identity from the topic. Before: a gateway of ph-biogas publishing a payload
    that names mn-solar was printed as a reading of mn-solar."""
    forged = [reading("mn-solar", seq=7), reading("ph-biogas", seq=8)]
    publish_retained(mosquitto.port, [("jcm/v1/ph-biogas/gw-ph-biogas/poc-meter/reading", forged[0]),
                                      ("jcm/v1/ph-biogas/gw-ph-biogas/batch", batch.pack(forged)[0])])
    assert watch(mosquitto.url, "jcm/v1/#", count=2, duration=20) == 0
    out = capsys.readouterr().out
    assert "mn-solar/poc-meter #7" not in out, out
    assert "the payload says mn-solar/gw-mn-solar/poc-meter: not this topic's reading" in out
    assert "ph-biogas/gw-ph-biogas batch of 1 readings, #8..#8, 1 malformed or not of this gateway" in out


def test_a_reading_from_another_day_shows_its_day(mosquitto, capsys):
    """Only the time of day was printed (UTC, unsaid): a reading of three days ago, or of a
    gateway whose clock is a day off, looked like one of now."""
    old = T0 - dt.timedelta(days=3)
    publish_retained(mosquitto.port, [("jcm/v1/mn-solar/gw-mn-solar/poc-meter/reading", reading("mn-solar", ts=old))])
    assert watch(mosquitto.url, "jcm/v1/+/+/+/reading", count=1, duration=20) == 0
    assert capsys.readouterr().out.startswith("2026-11-27 03:00:00Z mn-solar/poc-meter #1 ")
