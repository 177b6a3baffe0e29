"""``Reading.from_json`` parses with orjson where it reads a text as ``json`` does, and with
``json`` otherwise: both must give the same reading, or the same refusal, for any text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import message
from contract.message import Reading
from tests.conftest import fuzz_examples

BASE = {"schema": 1, "site": "s1", "gateway": "gw-1", "device": "m1", "seq": 7, "epoch": "0123456789abcdef",
        "ts": "2026-11-01T00:00:00.000Z", "values": {"ch0": 1.25, "ch1": None},
        "quality": {"ch1": "timeout"}, "units": {"ch0": "kWh"}, "status": "degraded"}


def reference(text: str) -> str:
    """What ``json`` alone makes of the text: the reading or the refusal."""
    fast = message._fast_body
    message._fast_body = lambda text: None
    try:
        return outcome(text)
    finally:
        message._fast_body = fast


def outcome(text: str) -> str:
    try:
        return repr(Reading.from_json(text.encode()))
    except ValueError as exc:
        return f"refused: {exc}"


def members(body: dict) -> list[str]:
    return [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in body.items()]


@pytest.mark.parametrize("text", [
    # a member twice, the second hidden behind a colon in a string that is dropped with the first
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":1.5,"ch0":2.5},"units":{"ch0":"a:b"}}',
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":1.5},"x":{"a":1},"x":"::","units":{}}',
    # an escaped colon to make up for a dropped member
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":1.5,"ch0":2.5},"units":{"ch0":"\\u003a"}}',
    # integers beyond 64 bits, which orjson reads as floats
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":123456789012345678901234567890}}',
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":-9223372036854775809}}',
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":18446744073709551616}}',
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":7,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":1e30, "ch1": NaN}}',
    '{"schema":1,"site":"s1","gateway":"gw-1","device":"m1","seq":99999999999999999999,"ts":"2026-11-01T00:00:00Z",'
    '"values":{"ch0":1e30}}',
])
def test_orjson_and_json_agree_on_hostile_texts(text):
    assert outcome(text) == reference(text)
    assert outcome(text).startswith("refused") or "123456789012345678901234567890" not in text


def test_a_repeated_member_is_refused_whatever_the_strings_hold():
    body = dict(BASE, units={"ch0": "k:W:h"})
    text = "{" + ",".join(members(body) + ['"seq":8']) + "}"
    assert outcome(text) == "refused: member 'seq' is repeated (parsers disagree on which one counts)"


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(60), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(BASE) + ["values", "units", "x"]),
                          st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                                    st.text(alphabet=':"\\a\u00e9\u2028', max_size=6),
                                    st.dictionaries(st.sampled_from(["ch0", "ch1", "a:b"]),
                                                    st.one_of(st.integers(-2**70, 2**70), st.floats(),
                                                              st.text(alphabet=':"a', max_size=3)), max_size=3))),
                max_size=4),
       st.booleans())
def test_orjson_and_json_agree(extra, spaced):
    """The base message with members added, repeated or replaced (with colons, quotes,
    backslashes, integers beyond 64 bits, non-finite floats): one outcome either way."""
    parts = members(BASE) + [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in extra]
    text = ("{ " + " , ".join(parts) + " }") if spaced else "{" + ",".join(parts) + "}"
    assert outcome(text) == reference(text)


@pytest.mark.parametrize("unit", [["kWh"], "k\x00Wh", "x" * 300, 5, None, {"a": 1}])
def test_a_malformed_unit_is_refused_after_well_formed_ones_were_remembered(unit):
    ok = json.dumps(dict(BASE, units={"ch0": "kWh", "ch1": "V"}))
    assert not outcome(ok).startswith("refused")
    bad = json.dumps(dict(BASE, units={"ch0": "kWh", "ch1": unit}))
    assert outcome(bad) == "refused: unit of 'ch1' is not printable text of at most 256 characters"


def test_a_reading_without_values_is_refused():
    """Before: accepted and acknowledged, and nothing was stored (found by the collector's fuzz
    test): a poll reports every channel of its register map, null when unread."""
    with pytest.raises(ValueError, match="'values' is empty"):
        Reading.from_json(json.dumps({**BASE, "values": {}, "quality": {}, "units": {}}).encode())
