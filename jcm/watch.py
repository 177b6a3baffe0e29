"""Print what arrives at a broker: one line per reading, the status messages as they are."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sys
import threading
import time

from contract import batch, topics
from contract.config.site import Mqtt
from contract.message import Reading
from contract.mqtt_connection import BrokerConnection
from contract.text import printable


def _utc(ts: dt.datetime) -> str:
    """A reading's stamp with its day, in UTC and saying so (a backlog, or a clock a day off, is not now)."""
    return f"{ts.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z"


def format_reading(reading: Reading) -> str:
    shown = []
    for channel, value in list(reading.values.items())[:6]:
        q = reading.quality.get(channel)
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        shown.append(f"{channel}={text}{reading.units.get(channel, '')}" + (f"[{q.value}]" if q else ""))
    more = len(reading.values) - len(shown)
    return (f"{_utc(reading.ts)} {reading.site}/{reading.device} #{reading.seq} {reading.status.value}: "
            + " ".join(shown) + (f" (+{more} more)" if more > 0 else ""))


#: longest line printed [characters]: a status or acknowledgement holds what its sender wrote
MAX_LINE = 2000


def format_batch(topic: str, payload: bytes) -> str:
    """One line for a backlog batch (thousands of readings at most): its span, how many, their seqs."""
    site, gateway = topics.parse_batch(topic)
    readings, bad = [], 0
    for line in batch.unpack(payload):
        try:
            r = Reading.from_json(line)
        except (ValueError, RecursionError, OverflowError):
            bad += 1
            continue
        if (r.site, r.gateway) == (site, gateway):
            readings.append(r)
        else:  # the topic is the sender's identity (the broker's ACL): another site's name is a forgery
            bad += 1
    span = f"{_utc(min(r.ts for r in readings))}..{_utc(max(r.ts for r in readings))} " if readings else ""
    seqs = f", #{min(r.seq for r in readings)}..#{max(r.seq for r in readings)}" if readings else ""
    return (f"{span}{site}/{gateway} batch of {len(readings)} readings{seqs}"
            + (f", {bad} malformed or not of this gateway" if bad else ""))


def bounded(line: str) -> str:
    """``line`` cut to ``MAX_LINE`` characters, saying how much was left out."""
    if len(line) <= MAX_LINE:
        return line
    kept = MAX_LINE - 40  # room for the note
    return f"{line[:kept]}... ({len(line) - kept} more characters)"


def watch(broker: Mqtt | str, topic: str, count: int | None = None, duration: float | None = None,
          names: dict[str, str] | None = None, connect_timeout: float = 10.0) -> int:
    """Print until ``count`` messages or ``duration`` seconds; 2 if the broker refuses us or
    cannot be reached within ``connect_timeout`` seconds (reason logged)."""
    done = threading.Event()
    seen = 0

    def on_message(client, userdata, msg):
        # a callback that raises stops paho's network thread; what a sender wrote is escaped
        nonlocal seen
        topic = printable(msg._topic.decode("utf-8", "backslashreplace"))
        try:
            if topic.endswith("/reading"):
                reading = Reading.from_json(msg.payload)
                claimed = (reading.site, reading.gateway, reading.device)
                # the topic is the sender's identity (the broker's ACL), not what its payload says
                line = (format_reading(reading) if claimed == topics.parse_reading(topic)
                        else f"{topic}: the payload says {'/'.join(claimed)}: not this topic's reading")
            elif topic.endswith("/batch"):
                line = format_batch(topic, msg.payload)
            else:
                line = f"{topic} {json.loads(msg.payload)}"
        except (ValueError, RecursionError, OverflowError) as exc:
            line = f"{topic}: malformed message: {exc}"
        print(bounded(printable(line)), flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    connection = BrokerConnection(broker, f"jcm-watch-{secrets.token_hex(3)}", "jcm watch: broker", names=names,
                                  reconnect_delay=(1, 10), subscriptions=[(topic, 1)])
    connection.client.on_message = on_message
    connection.start()
    deadline = None if duration is None else time.monotonic() + duration
    give_up = time.monotonic() + connect_timeout  # a broker never reached is an error, not silence
    reached = refused = False
    try:
        while not done.wait(timeout=0.2):
            reached = reached or connection.connected.is_set()
            refused = connection.refusal is not None
            now = time.monotonic()
            if refused or (not reached and now >= give_up) or (deadline is not None and now >= deadline):
                break
    except KeyboardInterrupt:
        pass
    reached = reached or connection.connected.is_set()
    connection.stop()
    if refused:
        return 2
    if not reached:
        print(f"jcm watch: could not connect to {connection.url} (the log above says why)", file=sys.stderr)
        return 2
    return 0 if (count is None or seen >= count) else 1
