"""Print what arrives at a broker: one line per reading, the status messages as they are."""

from __future__ import annotations

import json
import threading
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from contract.message import Reading


def format_reading(reading: Reading) -> str:
    shown = []
    for channel, value in list(reading.values.items())[:6]:
        q = reading.quality.get(channel)
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        shown.append(f"{channel}={text}{reading.units.get(channel, '')}" + (f"[{q.value}]" if q else ""))
    more = len(reading.values) - len(shown)
    return (f"{reading.ts:%H:%M:%S} {reading.site}/{reading.device} #{reading.seq} {reading.status.value}: "
            + " ".join(shown) + (f" (+{more} more)" if more > 0 else ""))


def watch(broker_url: str, topic: str, count: int | None = None, duration: float | None = None) -> int:
    url = urlsplit(broker_url)
    done = threading.Event()
    seen = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(topic, qos=1)

    def on_message(client, userdata, msg):
        nonlocal seen
        try:
            if msg.topic.endswith("/reading"):
                print(format_reading(Reading.from_json(msg.payload)), flush=True)
            else:
                print(f"{msg.topic} {json.loads(msg.payload)}", flush=True)
        except ValueError as exc:
            print(f"{msg.topic}: malformed message: {exc}", flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect, client.on_message = on_connect, on_message
    client.connect_async(url.hostname, url.port or 1883)
    client.loop_start()
    try:
        done.wait(timeout=duration)
    except KeyboardInterrupt:
        pass
    client.disconnect()
    client.loop_stop()
    return 0 if (count is None or seen >= count) else 1
