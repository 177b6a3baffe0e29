"""MQTT topic names: ``jcm/v1/<site>/<gateway>/...``.

``.../<device>/reading``  one message per device poll (QoS 1, not retained)
``.../batch``             many readings of the backlog in one compressed message (QoS 1; contract/batch.py)
``.../status``            the gateway's retained online/offline status (birth and last will),
                          published again every ``STATUS_EVERY_S`` while it is connected
``.../ack/<collector>``   what the store holds of the gateway's readings (retained; contract/acknowledgement.py)
"""

from __future__ import annotations

ROOT = "jcm/v1"
#: a connected gateway publishes its status at least this often [s]: a retained "online" not
#: refreshed for a few periods is a gateway that died without its last will being sent
STATUS_EVERY_S = 30.0
#: at most this many ``outbox_unused`` ranges in a status (the latest): [first, last] seqs of its epoch the
#: gateway left unused after unclean stops, which explain a gap over them
MAX_UNUSED_RANGES = 16
#: at most this many seqs in one ``outbox_unused`` range: a power cut leaves one reservation unused (256 seqs and
#: the batch being numbered). The status is not signed: a longer range (a damaged or forged status) explains
#: nothing, its gap is taken for readings lost (a false alarm at worst, never a loss hidden by one range)
MAX_UNUSED_SEQS = 1024
#: a status longer than this is ignored by the collectors [bytes]. A gateway's stays under it by construction
#: (its lists are bounded, ``outbox_error`` cut to ``MAX_STATUS_ERROR_CHARS``): under 8 KiB with every list full
#: of the longest ids, which 4 KiB did not hold
MAX_STATUS_BYTES = 8192
#: ``outbox_error`` (why the outbox's disk refused a write) is cut to this many characters in a status: an OS
#: error names a path, up to 4,096 bytes long
MAX_STATUS_ERROR_CHARS = 300


def reading(site: str, gateway: str, device: str) -> str:
    return f"{ROOT}/{site}/{gateway}/{device}/reading"


def batch(site: str, gateway: str) -> str:
    return f"{ROOT}/{site}/{gateway}/batch"


def gateway_status(site: str, gateway: str) -> str:
    return f"{ROOT}/{site}/{gateway}/status"


def ack(site: str, gateway: str, collector: str) -> str:
    return f"{ROOT}/{site}/{gateway}/ack/{collector}"


def acks_of(site: str, gateway: str) -> str:
    """Every collector's acknowledgement of one gateway (what the gateway subscribes to)."""
    return f"{ROOT}/{site}/{gateway}/ack/+"


#: every reading of every site, for subscribers
ALL_READINGS = f"{ROOT}/+/+/+/reading"
ALL_BATCHES = f"{ROOT}/+/+/batch"
ALL_STATUS = f"{ROOT}/+/+/status"
ALL_ACKS = f"{ROOT}/+/+/ack/+"
#: the one collector id an acknowledgement may not name: ``.../ack/reading`` is also the reading
#: topic of a device named "ack", which the broker lets the site write (its ACL grants
#: ``.../+/reading``), so an acknowledgement there would be a site confirming its own readings
NOT_A_COLLECTOR = "reading"


def parse_reading(topic: str) -> tuple[str, str, str]:
    """Return (site, gateway, device) of a reading topic, or raise ValueError."""
    parts = topic[len(_READING_HEAD):-len(_READING_TAIL)].split("/")
    if len(parts) != 3 or not topic.startswith(_READING_HEAD) or not topic.endswith(_READING_TAIL):
        raise ValueError(f"not a reading topic: '{topic}'")
    return parts[0], parts[1], parts[2]


_READING_HEAD, _READING_TAIL = f"{ROOT}/", "/reading"


def parse_batch(topic: str) -> tuple[str, str]:
    """Return (site, gateway) of a batch topic, or raise ValueError."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] != "batch":
        raise ValueError(f"not a batch topic: '{topic}'")
    return parts[2], parts[3]


def sender(topic: str) -> tuple[str, str]:
    """Return (site, gateway) of a reading or batch topic, or raise ValueError."""
    try:
        return parse_reading(topic)[:2]
    except ValueError:
        return parse_batch(topic)


def parse_status(topic: str) -> tuple[str, str]:
    """Return (site, gateway) of a gateway status topic, or raise ValueError."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] != "status":
        raise ValueError(f"not a status topic: '{topic}'")
    return parts[2], parts[3]


def parse_ack(topic: str) -> tuple[str, str, str]:
    """Return (site, gateway, collector) of an acknowledgement topic, or raise ValueError."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != ROOT or parts[4] != "ack":
        raise ValueError(f"not an acknowledgement topic: '{topic}'")
    if parts[5] == NOT_A_COLLECTOR:
        raise ValueError(f"'{topic}' is the reading topic of a device named 'ack', which the site may write")
    return parts[2], parts[3], parts[5]
