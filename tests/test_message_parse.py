"""``Reading.from_json`` parses with orjson where it reads a text as ``json`` does, and with
``json`` otherwise: both must give the same reading, or the same refusal, for any text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from contract import message
from contract.message import Reading
from tests.conftest import REPO, fuzz_examples

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


def _refusal(v) -> str | None:
    """What the contract says of one value (module docstring bounds), independent of how it is checked."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, float):
        return None if v == v and abs(v) != float("inf") else "is not finite"
    if isinstance(v, int):
        return None if abs(v) <= 2**53 else "is an integer beyond"
    if isinstance(v, str):
        return None if len(v) <= 256 else "is not text"
    return "is a"


_EDGES = [0.0, -0.0, 2.0**63, -2.0**63, 1e308, -1e308, 2.0**53 + 2, float("nan"), float("inf"), -float("inf")]


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(200), deadline=None)
@given(st.one_of(
    st.lists(st.floats() | st.sampled_from(_EDGES), min_size=1, max_size=25),  # floats only: the usual kind
    st.lists(st.one_of(st.floats(), st.sampled_from(_EDGES), st.integers(-2**60, 2**60), st.booleans(), st.none(),
                       st.text(max_size=3), st.just("x" * 300), st.lists(st.none(), max_size=1)),
             min_size=1, max_size=25)))
@example([1.0, float("nan")])  # nan compares false to all: min and max pass it by
@example([2.5, float("inf"), -float("inf")])
@example([2.0**62] * 20)  # each below 2**63, their Euclidean norm beyond: checked one by one, and good
@example([float("nan"), float("inf")])  # hypot is inf, not nan, when one of them is inf
def test_each_value_is_judged_as_the_contract_says(values):
    """Values are checked all at once in C for the usual reading (finite floats of usual size)
    and one by one otherwise: either way a message is refused exactly when one of its values
    breaks the contract, naming the first that does."""
    body = dict(BASE, values={f"ch{i}": v for i, v in enumerate(values)}, quality={}, units={})
    text = json.dumps(body)  # NaN and Infinity as Python writes them: json reads them back
    wrong = [(i, why) for i, v in enumerate(values) if (why := _refusal(v))]
    got = outcome(text)
    if not wrong:
        assert not got.startswith("refused"), got
    else:
        i, why = wrong[0]
        assert got.startswith(f"refused: value of 'ch{i}' {why}"), (got, wrong)


def test_ids_status_and_quality_are_checked_after_a_good_message_was_seen():
    """What was found good once is remembered (ids, channel names, units, the enums' texts):
    a message that differs from it in one place is still refused for that place."""
    assert not outcome(json.dumps(BASE)).startswith("refused")
    for key, value, why in [("gateway", "GW 1", "'gateway' missing or not an id"),
                            ("device", ["m1"], "'device' missing or not an id"),
                            ("site", None, "'site' missing or not an id"),
                            ("status", "fine", "unknown quality or status"),
                            ("status", None, "unknown quality or status"),
                            ("status", ["ok"], "unknown quality or status"),
                            ("quality", {"ch1": "late"}, "unknown quality or status"),
                            ("quality", {"ch1": ["timeout"]}, "unknown quality or status"),
                            ("epoch", "0123456789ABCDEF", "'epoch' is not 16 lower-case hex digits"),
                            ("epoch", 5, "'epoch' is not 16 lower-case hex digits"),
                            ("epoch", ["0123456789abcdef"], "'epoch' is not 16 lower-case hex digits"),
                            ("values", {"ch0": 1.0, "site": 2.0}, "channel name 'site' is reserved"),
                            ("units", {"ch0": "kWh", "seq": "x"}, "channel name 'seq' is reserved")]:
        assert outcome(json.dumps(dict(BASE, **{key: value}))).startswith(f"refused: {why}"), (key, value)
    assert not outcome(json.dumps(BASE)).startswith("refused")


def test_a_reserved_channel_name_is_refused_every_time():
    """Channel names found good are remembered, and a message of remembered names alone is
    taken without looking at them again: a reserved name, refused, is never remembered."""
    body = dict(BASE, values={"ch0": 1.0, "status": 2.0}, quality={}, units={})
    for _ in range(2):
        assert outcome(json.dumps(body)).startswith("refused: channel name 'status' is reserved")


#: each part of a message mostly good (so that later messages find it remembered), sometimes not
_GOOD_OR_NOT = st.integers(0, 4).map(bool)
_NAME = _GOOD_OR_NOT.flatmap(lambda good: st.sampled_from(["ch0", "ch1", "ch2", "ch3"] if good else
                                                         ["seq", "site", "quality", "simulated", "Ch0", "c h", "\u00e9"]))


@st.composite
def _message(draw) -> str:
    def part(good: list, bad: list):
        return draw(st.sampled_from(good if draw(_GOOD_OR_NOT) else bad))
    names = draw(st.lists(_NAME, min_size=1, max_size=3, unique=True))
    body = {"schema": 1, "site": part(["s1"], ["S1", "", 5, ["s1"]]), "gateway": "gw-1",
            "device": part(["m1", "m2"], ["m 1", None, {"m1": 1}]), "seq": part([7], [-1, 2**63, "7", 7.0]),
            "epoch": part([None, "0123456789abcdef", "fedcba9876543210"], ["0123456789ABCDEF", "0123456789abcde", 5]),
            "ts": "2026-11-01T00:00:00.000Z",
            "values": {n: part([1.5, -0.0, 2.0**62, None], [2.0**63, 2**60, float("nan"), "x" * 300]) for n in names},
            "units": {n: part(["kWh", "V"], ["", 5, "\n"]) for n in draw(st.lists(_NAME, max_size=2, unique=True))}}
    if body["epoch"] is None and draw(st.booleans()):
        del body["epoch"]
    return json.dumps(body, ensure_ascii=draw(st.booleans()))  # escapes: json's way, else orjson's


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(40), deadline=None)
@given(st.lists(_message(), min_size=2, max_size=8), st.sampled_from([message.MAX_REMEMBERED, 2]))
def test_a_message_is_judged_alike_whatever_came_before(texts, remembered):
    """Ids with their epoch, channel names and units found good are remembered so that a message
    of known ones skips their checks: a shortcut, never a verdict. Each message of a sequence
    (of good and hostile ones, the remembered sets also at their bound) gets the reading or
    the refusal that a parser which has seen nothing gives it."""
    sets = message._IDS, message._CHANNEL_NAMES, message._UNITS
    limit, kept = message.MAX_REMEMBERED, [set(s) for s in sets]
    try:
        message.MAX_REMEMBERED = remembered
        for s in sets:
            s.clear()
        seen = [outcome(t) for t in texts]
        assert not message._CHANNEL_NAMES & message.RESERVED_CHANNELS
        assert all(len(s) <= remembered for s in sets)
        for text, verdict in zip(texts, seen):
            for s in sets:
                s.clear()
            assert outcome(text) == verdict, text
    finally:
        message.MAX_REMEMBERED = limit
        for s, k in zip(sets, kept):
            s.clear()
            s.update(k)


def test_of_several_malformed_channel_names_the_same_one_is_named_in_every_process():
    """Before: the name a refusal gave was the first of a set in hash order, which differs from one
    process (hash seed) to the next and with the names remembered: one message was dead-lettered
    with one reason by one collector and another by the next. Now the least, as for a reserved name."""
    body = dict(BASE, values={"Ab": 1.0, "b c": 2.0, "Zz": 1.0, "9x": 1.0, "ch0": 1.0}, quality={}, units={})
    code = ("import sys\nfrom contract.message import Reading\ntry:\n    Reading.from_json(sys.argv[1])\n"
            "except ValueError as exc:\n    print(exc)")
    reasons = {subprocess.run([sys.executable, "-c", code, json.dumps(body)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}, timeout=60, check=True).stdout
               for seed in range(6)}
    assert reasons == {"channel name '9x' is not a channel name (^[a-z][a-z0-9_]{0,63}$)\n"}
