"""The reading message: one per device poll, from gateway to every later stage.

Version 1, JSON::

    {"schema": 1, "site": "mn-solar", "gateway": "gw-mn-01", "device": "inv-01",
     "seq": 1042, "ts": "2026-11-29T04:30:15.120Z",
     "values":  {"ac_power": 5120.0, "ac_energy": 123456700.0, "dc_voltage": null},
     "quality": {"dc_voltage": "not_implemented"},
     "units":   {"ac_power": "W", "ac_energy": "Wh", "dc_voltage": "V"},
     "status": "ok"}

``seq`` increases by one per message of a gateway and survives restarts, so a
subscriber drops redeliveries by (gateway, epoch, seq). ``epoch`` (16 lower-case hex
digits, optional for senders before it existed) names the gateway's sequence: a random
id made when its outbox is created, so a new or emptied outbox, which restarts ``seq``
at 1, starts a new epoch and its seqs are never confused with the old ones. ``ts`` is the gateway's UTC clock at
the poll. A channel absent from ``quality`` is good; any other value is listed there
and a null value always has a quality saying why.

``Reading.from_json`` is the contract's gate for every subscriber: a message outside
the bounds below is refused with one reason, whatever it contains, so one message can
never crash a stage or be stored in a form the stores cannot hold.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum

import orjson

SCHEMA_VERSION = 1

#: site, gateway and device ids (the same rule as the site files)
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: channel names (the same rule as the register-map profiles)
CHANNEL_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
#: names the stores use beside the channels: InfluxDB tags, per-point metadata fields and
#: InfluxQL's time column, and the mark of simulated history (never sent by a gateway)
RESERVED_CHANNELS = frozenset({"site", "gateway", "device", "time", "quality", "status", "seq", "epoch",
                               "simulated"})
#: a gateway's sequence epoch: 64 random bits
EPOCH_PATTERN = r"^[0-9a-f]{16}$"
#: largest ``seq``: the stores keep it as a signed 64-bit integer
MAX_SEQ = 2**63 - 1
#: seqs an epoch's highest may be beyond its floor and twice the seqs followed of it (8,388,608,
#: 2,048 blocks): a gateway's live lane overtakes its backlog by at most what its outbox holds
#: (``outbox.max_rows``, which the site config keeps at most this); beyond it the collector takes
#: a seq as broken or hostile and does not follow it (collector/sequence_gaps/far_seqs.py)
MAX_AHEAD = 1 << 23
#: largest integer value: values are stored as 64-bit floats, exact up to 2**53
MAX_INT = 2**53
#: channels per message (the largest profile has a few dozen)
MAX_CHANNELS = 512
#: characters of a text value (a string point is at most 125 registers) or a unit
MAX_TEXT = 256
#: nesting of arrays and objects; a reading needs 2, the margin is for later schemas
MAX_DEPTH = 8
#: readings are stamped within [TS_MIN, TS_MAX)
TS_MIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
TS_MAX = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

#: well-formed channel names and units remembered, so that a known one is not checked again;
#: bounded: they come from senders
MAX_REMEMBERED = 4096
#: floats from here on may be integers orjson read beyond 64 bits (it keeps up to 2**64 - 1 exact)
_WIDENED = 2.0**63

_CHANNEL_NAMES: set[str] = set()  # none of them reserved: a message of known names alone passes
_UNITS: set[str] = set()
_ID = re.compile(ID_PATTERN)
_CHANNEL = re.compile(CHANNEL_PATTERN)
_EPOCH = re.compile(EPOCH_PATTERN)
#: a JSON string; the closing quote is optional so that an unterminated string is one match
#: to the end of the text: required, every quote of '"\\"\\...' began a scan to the end (64 KB: 9 s)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Quality(str, Enum):
    """Why a channel's value is missing or suspect."""

    #: device returned its "not available" sentinel (the point's own, or SunSpec's; NaN only in SunSpec)
    not_implemented = "not_implemented"
    out_of_range = "out_of_range"  #: value kept, but outside the point's valid range
    illegal_address = "illegal_address"  #: device rejected the register (exception 2 or 3)
    device_error = "device_error"  #: any other Modbus exception response
    timeout = "timeout"  #: no answer in time
    disconnected = "disconnected"  #: the link to the device is down
    #: registers that do not decode (e.g. bad string, NaN scale, a float that is NaN or infinite
    #: outside SunSpec's not-implemented NaN: a meter that answers without a number)
    decode_error = "decode_error"


class DeviceStatus(str, Enum):
    ok = "ok"  #: every point read
    degraded = "degraded"  #: some points failed
    #: nothing read: timeout, disconnect or exception on every request, or no point gave a value
    offline = "offline"


#: the members by their text (an enum's call costs ten times a dict's lookup)
_QUALITIES = {q.value: q for q in Quality}
_STATUSES = {s.value: s for s in DeviceStatus}
#: (site, gateway, device, epoch) found to be ids and an epoch (or None), remembered as the
#: channel names are
_IDS: set[tuple[str, str, str, str | None]] = set()
_FLOAT = {float}


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
    epoch: str | None = None  # the outbox's sequence epoch

    def to_json(self) -> str:
        if self.seq is None:
            raise ValueError("a reading gets its seq from the outbox before it is published")
        body = {
            "schema": SCHEMA_VERSION,
            "site": self.site,
            "gateway": self.gateway,
            "device": self.device,
            "seq": self.seq,
            **({"epoch": self.epoch} if self.epoch is not None else {}),
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
            text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc}") from None
        if _too_deep(text):
            raise ValueError(f"arrays and objects nested deeper than {MAX_DEPTH}")
        body = _fast_body(text)
        if body is not None:
            try:
                return cls._from_body(body, exact=False)
            except ValueError:
                pass  # refused: the reason is given as the reference parser reads the text, below
        try:
            body = json.loads(text, object_pairs_hook=unique_members)
        except RepeatedMember as exc:
            raise ValueError(str(exc)) from None
        except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
            raise ValueError(f"not JSON: {exc}") from None
        return cls._from_body(body, exact=True)

    @classmethod
    def _from_body(cls, body, exact: bool) -> Reading:
        """The reading of a parsed message; ``exact``: parsed by ``json`` (see ``_fast_body``)."""
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        schema = body.get("schema")
        if type(schema) is not int or schema != SCHEMA_VERSION:
            raise ValueError(f"schema {_short(schema)} is not {SCHEMA_VERSION}")
        ids = body.get("site"), body.get("gateway"), body.get("device"), body.get("epoch")
        try:
            known = ids in _IDS
        except TypeError:  # an unhashable id, such as a list
            known = False
        if not known:
            for key in ("site", "gateway", "device"):
                if not isinstance(body.get(key), str) or not _ID.fullmatch(body[key]):
                    raise ValueError(f"'{key}' missing or not an id ({ID_PATTERN}): {_short(body.get(key))}")
        if not isinstance(body.get("ts"), str):
            raise ValueError("'ts' missing or not a string")
        seq = body.get("seq")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"'seq' missing or not an integer in 0..{MAX_SEQ}: {_short(seq)}")
        epoch = ids[3]
        if not known:
            if epoch is not None and (not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch)):
                raise ValueError(f"'epoch' is not 16 lower-case hex digits: {_short(epoch)}")
            if len(_IDS) < MAX_REMEMBERED:
                _IDS.add(ids)
        values, quality, units = body.get("values"), body.get("quality", {}), body.get("units", {})
        if not isinstance(values, dict) or not isinstance(quality, dict) or not isinstance(units, dict):
            raise ValueError("'values', 'quality' and 'units' must be objects")
        if not values:  # a poll reports every channel of its register map, null when unread: nothing to store
            raise ValueError("'values' is empty: a reading carries at least one channel")
        if len(values) > MAX_CHANNELS:
            raise ValueError(f"{len(values)} channels: at most {MAX_CHANNELS}")
        if not (_CHANNEL_NAMES.issuperset(values) and _CHANNEL_NAMES.issuperset(quality)
                and _CHANNEL_NAMES.issuperset(units)):  # else all well-formed and none reserved
            names = values.keys() | quality.keys() | units.keys()
            for k in sorted(names - _CHANNEL_NAMES):  # the least named, as below: not one in hash order
                if not _CHANNEL.fullmatch(k):
                    raise ValueError(f"channel name {_short(k)} is not a channel name ({CHANNEL_PATTERN})")
            reserved = sorted(names & RESERVED_CHANNELS)
            if reserved:
                raise ValueError(f"channel name '{reserved[0]}' is reserved (the stores use it for tags and metadata)")
            if len(_CHANNEL_NAMES) + len(names) <= MAX_REMEMBERED:
                _CHANNEL_NAMES.update(names)
        numbers = values.values()
        # floats of usual size, the usual reading, told in C: their Euclidean norm (hypot, within an
        # ulp) is at least each magnitude, and inf or NaN when one of them is; a norm of values each
        # below 2**63 that is not is sent to the check value by value
        if not (set(map(type, numbers)) == _FLOAT and math.hypot(*numbers) < _WIDENED):
            for k, v in values.items():
                if type(v) is not float or not -_WIDENED < v < _WIDENED:
                    _check_value(k, v)
                    if not exact and type(v) is float:
                        raise ValueError("a large number: orjson may have read an integer as a float")
        extra = sorted(quality.keys() - values.keys())
        if extra:  # a stored quality would show as a reading of a channel that was not read
            raise ValueError(f"'quality' names channel(s) with no value: {', '.join(extra)}")
        try:
            known = _UNITS.issuperset(units.values())
        except TypeError:  # an unhashable unit, such as a list
            known = False
        if not known:
            for k, u in units.items():
                if not isinstance(u, str) or len(u) > MAX_TEXT or not u.isprintable():
                    raise ValueError(f"unit of '{k}' is not printable text of at most {MAX_TEXT} characters")
            if len(_UNITS) + len(units) <= MAX_REMEMBERED:
                _UNITS.update(units.values())
        try:
            q = {k: _QUALITIES[v] for k, v in quality.items()}
            status = _STATUSES[body.get("status", "ok")]
        except (KeyError, TypeError):  # TypeError: an unhashable value such as a list
            raise ValueError("unknown quality or status") from None
        # the frozen dataclass's __init__ sets each field through object.__setattr__ (1.3 us):
        # what it makes is this instance dictionary, set at once (0.4 us)
        reading = object.__new__(cls)
        object.__setattr__(reading, "__dict__", {
            "site": body["site"], "gateway": body["gateway"], "device": body["device"], "ts": parse_ts(body["ts"]),
            "values": values, "quality": q, "units": units, "status": status, "seq": seq, "epoch": epoch})
        return reading


def _fast_body(text: str):
    """The message parsed by orjson (1 us, against 5 - 7 us for ``json`` with
    ``unique_members``), or ``None`` where it might not read the text as ``json`` does: text
    with a backslash escape, text orjson refuses, or an object naming a member twice.

    orjson keeps the last of a repeated member silently. Without escapes, a string's text is
    its value, so each ``:`` outside strings is a member and each inside is in a string;
    orjson's own rendering of what it parsed has as many only if no member was dropped.
    The other difference, an integer beyond 64 bits read as a float, concerns ``values`` alone
    (a float anywhere else is refused) and is checked there (``_WIDENED``). Whatever is
    refused is parsed again by ``json`` so that the reason is the same either way."""
    if "\\" in text:
        return None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return body if orjson.dumps(body).count(b":") == text.count(":") else None


class RepeatedMember(ValueError):
    """A JSON object names one member twice."""


def unique_members(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for ``json.loads`` that refuses a member given twice: parsers
    disagree on which one counts (Python keeps the last, others the first), so two
    readers of one text, a store and a verifier, would see two different messages."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        name = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RepeatedMember(f"member {_short(name)} is repeated (parsers disagree on which one counts)")
    return out


def _too_deep(text: str) -> bool:
    """Whether arrays and objects nest deeper than ``MAX_DEPTH`` in JSON text, found
    without recursing (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # too few brackets to matter: the common case costs two counts
    depth = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _check_value(name: str, v) -> None:
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, int):
        if abs(v) > MAX_INT:
            raise ValueError(f"value of '{name}' is an integer beyond +-2**53, "
                             "which a 64-bit float does not hold exactly")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"value of '{name}' is not finite")
    elif isinstance(v, str):
        if len(v) > MAX_TEXT or _SURROGATE.search(v):
            raise ValueError(f"value of '{name}' is not text of at most {MAX_TEXT} characters "
                             "(or holds a lone surrogate)")
    else:
        raise ValueError(f"value of '{name}' is a {type(v).__name__}")


def _short(v) -> str:
    """A bounded representation of a refused value for the reason text."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def format_ts(ts: dt.datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("timestamps are timezone-aware UTC")
    return ts.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(text: str) -> dt.datetime:
    try:
        ts = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'ts' is not an ISO 8601 time: {_short(text)}") from None
    if ts.tzinfo is None:
        raise ValueError(f"'ts' has no time zone: {_short(text)}")
    try:
        ts = ts.astimezone(dt.UTC)
    except OverflowError:  # e.g. year 1 at +14:00 falls before year 1 in UTC
        raise ValueError(f"'ts' is outside {TS_MIN.year}..{TS_MAX.year}: {_short(text)}") from None
    if not TS_MIN <= ts < TS_MAX:
        raise ValueError(f"'ts' is outside {TS_MIN.year}..{TS_MAX.year}: {_short(text)}")
    return ts


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
