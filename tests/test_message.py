"""The reading message's bounds: ``Reading.from_json`` refuses, with one reason, every
message the stores could not hold or that could crash a stage, and accepts the extremes
inside the bounds."""

import dataclasses
import datetime as dt
import json
import time

import pytest

from contract.message import MAX_DEPTH, MAX_INT, MAX_SEQ, DeviceStatus, Quality, Reading
from contract.text import printable

VALID = {"schema": 1, "site": "s1", "gateway": "gw1", "device": "m1", "seq": 7, "ts": "2026-11-01T00:00:00.000Z",
         "values": {"energy": 1.5, "serial": "SN-1", "flag": True, "gone": None},
         "quality": {"gone": "timeout"}, "units": {"energy": "kWh"}, "status": "ok"}


def body(**fields) -> bytes:
    return json.dumps({**VALID, **fields}).encode()


def test_the_extremes_inside_the_bounds_are_accepted():
    r = Reading.from_json(body(seq=MAX_SEQ, values={"big": MAX_INT, "small": -MAX_INT, "text": "x" * 256},
                               quality={}, units={}))
    assert r.seq == MAX_SEQ and r.values["big"] == MAX_INT
    nested = '{"schema": 1, "extra": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    with pytest.raises(ValueError, match="'site' missing"):  # parsed: the depth was allowed
        Reading.from_json(nested)
    brackets_in_text = Reading.from_json(body(note='[[[[[[[[[[[[ \\" {{{{{{{{{{{{'))  # text is not nesting
    assert brackets_in_text.seq == 7


REFUSED = {
    "deep nesting": (b'{"schema": 1, "v": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
    "nesting between escaped quotes": (b'{"s": "\\"", "v": ' + b"[" * 5000 + b"]" * 5000 + b', "t": "\\""}',
                                       "nested deeper"),
    "not UTF-8": (b'{"schema": 1, "site": "\xff"}', "not UTF-8"),
    "integer of 5000 digits": (b'{"schema": 1, "v": ' + b"9" * 5000 + b"}", "not JSON"),
    "schema true": (body(schema=True), "schema True"),
    "ts year 1 at +14:00": (body(ts="0001-01-01T00:00:00+14:00"), "'ts' is outside"),
    "ts year 9999": (body(ts="9999-12-31T23:59:59Z"), "'ts' is outside"),
    "ts without zone": (body(ts="2026-11-01T00:00:00"), "no time zone"),
    "seq of 30 digits": (body(seq=10**30), "'seq'"),
    "seq negative": (body(seq=-1), "'seq'"),
    "seq true": (body(seq=True), "'seq'"),
    "integer value of 400 digits": (body(values={"energy": 10**400}), "beyond +-2**53"),
    "integer value just beyond 2**53": (body(values={"energy": MAX_INT + 1}), "beyond +-2**53"),
    "NaN": (body(values={"energy": 0.5}).replace(b"0.5", b"NaN"), "not finite"),
    "lone surrogate in a channel": (body(values={"\ud800": 1.0}, quality={}, units={}), "not a channel name"),
    "lone surrogate in device": (body(device="\ud800"), "'device' missing or not an id"),
    "lone surrogate in a text value": (body(values={"serial": "a\udc00"}, quality={}, units={}), "lone surrogate"),
    "newline at the end of an id": (body(site="s1\n"), "'site' missing or not an id"),
    "control character in a channel": (body(values={"e\x1b": 1.0}, quality={}, units={}), "not a channel name"),
    "channel name too long": (body(values={"e" * 65: 1.0}, quality={}, units={}), "not a channel name"),
    "reserved channel": (body(values={"quality": 1.0}, quality={}, units={}), "'quality' is reserved"),
    "simulated mark": (body(values={"simulated": 1.0}, quality={}, units={}), "'simulated' is reserved"),
    "too many channels": (body(values={f"c{i}": 1.0 for i in range(513)}, quality={}, units={}), "at most 512"),
    "text value too long": (body(values={"serial": "x" * 257}, quality={}, units={}), "at most 256"),
    "nested value": (body(values={"energy": [1]}, quality={}, units={}), "is a list"),
    "quality of a channel with no value": (body(quality={"other": "timeout"}), "with no value: other"),
    "unit with a newline": (body(units={"energy": "kWh\nFORGED"}), "unit of 'energy'"),
    "quality a list": (body(quality={"gone": ["timeout"]}), "unknown quality"),
    # a store (Python: the last wins) and another reader (often the first wins) must not see two messages
    "seq given twice": (body().replace(b'"seq": 7', b'"seq": 1, "seq": 2'), "member 'seq' is repeated"),
    "channel given twice": (body().replace(b'"energy": 1.5', b'"energy": 1.5, "energy": 9e9'),
                            "member 'energy' is repeated"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_messages_outside_the_bounds_are_refused_with_a_reason(case):
    payload, reason = REFUSED[case]
    with pytest.raises(ValueError) as caught:
        Reading.from_json(payload)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 300


def test_the_nesting_check_is_linear_in_the_size_of_the_text():
    """Brackets, then quote-backslash pairs to the end: each quote began a scan to the end of
    the text: 9 s of the collector's or the live view's time for one message of 64 KB."""
    text = b"[[[[" + b"[]" * 5 + b'"\\' * 32_000  # nine [ make the check scan; never deeper than 5
    start = time.perf_counter()
    with pytest.raises(ValueError, match="not JSON"):
        Reading.from_json(text)
    assert time.perf_counter() - start < 1.0


def test_printable_escapes_what_could_forge_a_line_or_drive_a_terminal():
    text = "ok \x1b[2J\r\nFORGED \x9b\u202e\u2028\ud800 日本 é"
    out = printable(text)
    assert out == "ok \\x1b[2J\\x0d\\x0aFORGED \\x9b\\u202e\\u2028\\ud800 日本 é"
    assert out.isprintable() and printable(out) == out
    out.encode("utf-8")


def test_epoch_round_trips_and_is_checked():
    r = Reading("s", "gw", "d", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), {"p": 1.0}, seq=7, epoch="0123456789abcdef")
    assert Reading.from_json(r.to_json()).epoch == "0123456789abcdef"
    assert Reading.from_json(dataclasses.replace(r, epoch=None).to_json()).epoch is None  # senders before epochs
    for bad in ("0123456789ABCDEF", "12", 5, ["x"]):
        body = json.loads(r.to_json()) | {"epoch": bad}
        with pytest.raises(ValueError, match="'epoch'"):
            Reading.from_json(json.dumps(body))


def test_a_parsed_reading_is_the_reading_that_was_sent():
    """``from_json`` builds its Reading without the dataclass's __init__: it must still be that
    Reading, field for field (a field added to the class and not to the parser fails here)."""
    r = Reading(site="s1", gateway="gw-1", device="m1", ts=dt.datetime(2026, 11, 1, 0, 0, 0, 125000, tzinfo=dt.UTC),
                values={"a": 1.5, "b": None, "c": "text", "d": True}, quality={"b": Quality.timeout},
                units={"a": "kWh"}, status=DeviceStatus.degraded, seq=42, epoch="0123456789abcdef")
    parsed = Reading.from_json(r.to_json())
    assert parsed == r and hash(repr(parsed)) == hash(repr(r))
    assert vars(parsed).keys() == {f.name for f in dataclasses.fields(Reading)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.seq = 1
