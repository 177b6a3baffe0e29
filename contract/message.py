"""The reading message: one per device poll, from gateway to every later stage.

Version 1, JSON::

    {"schema": 1, "site": "mn-solar", "gateway": "gw-mn-01", "device": "inv-01",
     "seq": 1042, "ts": "2026-11-29T04:30:15.120Z",
     "values":  {"ac_power": 5120.0, "ac_energy": 123456700.0, "dc_voltage": null},
     "quality": {"dc_voltage": "not_implemented"},
     "units":   {"ac_power": "W", "ac_energy": "Wh", "dc_voltage": "V"},
     "status": "ok"}

``seq`` increases by one per message of a gateway and survives restarts, so a
subscriber drops redeliveries by (gateway, seq). ``ts`` is the gateway's UTC clock at
the poll. A channel absent from ``quality`` is good; any other value is listed there
and a null value always has a quality saying why.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from enum import Enum

SCHEMA_VERSION = 1


class Quality(str, Enum):
    """Why a channel's value is missing or suspect."""

    not_implemented = "not_implemented"  #: device returned its "not available" sentinel
    out_of_range = "out_of_range"  #: value kept, but outside the point's valid range
    illegal_address = "illegal_address"  #: device rejected the register (exception 2 or 3)
    device_error = "device_error"  #: any other Modbus exception response
    timeout = "timeout"  #: no answer in time
    disconnected = "disconnected"  #: the link to the device is down
    decode_error = "decode_error"  #: registers that do not decode (e.g. bad string, NaN scale)


class DeviceStatus(str, Enum):
    ok = "ok"  #: every point read
    degraded = "degraded"  #: some points failed
    offline = "offline"  #: nothing read: timeout, disconnect or exception on every request


@dataclass(frozen=True)
class Reading:
    site: str
    gateway: str
    device: str
    ts: dt.datetime
    values: dict[str, float | str | bool | None]
    quality: dict[str, Quality] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    status: DeviceStatus = DeviceStatus.ok
    seq: int | None = None  # assigned by the gateway's outbox

    def to_json(self) -> str:
        if self.seq is None:
            raise ValueError("a reading gets its seq from the outbox before it is published")
        body = {
            "schema": SCHEMA_VERSION,
            "site": self.site,
            "gateway": self.gateway,
            "device": self.device,
            "seq": self.seq,
            "ts": format_ts(self.ts),
            "values": {k: _finite_or_none(v) for k, v in self.values.items()},
            "quality": {k: q.value for k, q in self.quality.items()},
            "units": self.units,
            "status": self.status.value,
        }
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, payload: bytes | str) -> Reading:
        """Parse a message; raise ``ValueError`` naming the first thing wrong."""
        try:
            body = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"schema {body.get('schema')!r} is not {SCHEMA_VERSION}")
        for key in ("site", "gateway", "device", "ts"):
            if not isinstance(body.get(key), str):
                raise ValueError(f"'{key}' missing or not a string")
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("'seq' missing or not a non-negative integer")
        values, quality, units = body.get("values"), body.get("quality", {}), body.get("units", {})
        if not isinstance(values, dict) or not isinstance(quality, dict) or not isinstance(units, dict):
            raise ValueError("'values', 'quality' and 'units' must be objects")
        for k, v in values.items():
            if not (v is None or isinstance(v, (int, float, str, bool))):
                raise ValueError(f"value of '{k}' is a {type(v).__name__}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"value of '{k}' is not finite")
        try:
            q = {k: Quality(v) for k, v in quality.items()}
            status = DeviceStatus(body.get("status", "ok"))
        except ValueError as exc:
            raise ValueError(f"unknown quality or status: {exc}") from None
        return cls(
            site=body["site"], gateway=body["gateway"], device=body["device"],
            ts=parse_ts(body["ts"]), values=values, quality=q, units=units,
            status=status, seq=seq,
        )


def format_ts(ts: dt.datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("timestamps are timezone-aware UTC")
    return ts.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(text: str) -> dt.datetime:
    try:
        ts = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'ts' is not an ISO 8601 time: {text!r}") from None
    if ts.tzinfo is None:
        raise ValueError(f"'ts' has no time zone: {text!r}")
    return ts.astimezone(dt.UTC)


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
