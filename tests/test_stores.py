"""Both store implementations behind one interface: idempotent writes, reads as
DataFrames (chunked), latest values, devices seen, dead letters. SQLite on disk,
InfluxDB 1.6.7 (Debian) in api=v1 mode, and the /api/v2/write path through
influxdb-client against VictoriaMetrics, read back through its export API."""

import base64
import dataclasses
import datetime as dt
import json
import math
import sys

import pandas as pd
import pytest
import urllib3

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.config.custody import CustodyKey, fingerprint
from contract.custody import GENESIS, sign, verify
from contract.message import DeviceStatus, Quality, Reading
from contract.store import CustodyFinding, DeadLetter, Link, SignedMessage
from store import open_store, row_per_value

T0 = dt.datetime(2026, 10, 1, 0, 0, tzinfo=dt.UTC)


def reading(device="m1", minutes=0, seq=1, **values):
    values = values or {"energy": 100.0 + minutes, "power": 5.5}
    quality = {k: Quality.not_implemented for k, v in values.items() if v is None}
    return Reading(site="s1", gateway="gw1", device=device, ts=T0 + dt.timedelta(minutes=minutes),
                   values=values, quality=quality, units={}, status=DeviceStatus.ok, seq=seq)


@pytest.fixture(params=["sqlite", "influx_v1"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    else:
        server = request.getfixturevalue("influxdb")
        s = open_store(f"influxdb://127.0.0.1:{server.port}?api=v1&db=jcm&chunk_hours=1")
    yield s
    s.close()


def test_write_then_read_back_as_a_frame(store):
    store.write([reading(minutes=m, seq=m) for m in range(0, 180, 10)])  # 3 hours: three 1-hour chunks on Influx
    df = store.read("s1", T0, T0 + dt.timedelta(hours=3), channels=["energy"])
    assert list(df.columns) == ["ts", "site", "gateway", "device", "channel", "value", "quality"]
    assert len(df) == 18
    assert df["value"].tolist() == [100.0 + m for m in range(0, 180, 10)]
    assert df["ts"].iloc[1] == T0 + dt.timedelta(minutes=10)
    assert str(df["ts"].dt.tz) == "UTC"


def test_redelivery_and_replay_overwrite_the_same_point(store):
    store.write([reading(seq=1)])
    store.write([reading(seq=1)])  # QoS 1 redelivery
    store.write([reading(seq=1, energy=100.0, power=6.0)])  # replay with a corrected value
    df = store.read("s1", T0, T0 + dt.timedelta(minutes=1))
    assert len(df) == 2
    assert df.set_index("channel")["value"]["power"] == 6.0


def test_null_values_keep_their_quality(store):
    store.write([reading(energy=100.0, power=None)])
    df = store.read("s1", T0, T0 + dt.timedelta(minutes=1)).set_index("channel")
    assert math.isnan(df["value"]["power"]) and df["quality"]["power"] == "not_implemented"
    assert pd.isna(df["quality"]["energy"])


def test_read_filters_by_device_and_window(store):
    store.write([reading("m1", 0), reading("m2", 0), reading("m1", 60)])
    df = store.read("s1", T0, T0 + dt.timedelta(minutes=30), devices=["m2"])
    assert set(df["device"]) == {"m2"} and len(df) == 2


def test_latest_and_devices_seen(store):
    store.write([reading("m1", 0), reading("m1", 5, energy=105.0, serial="SN-1"), reading("m2", 3)])
    latest = store.latest("s1")
    m1 = latest[latest.device == "m1"].set_index("channel")["value"]
    assert m1["energy"] == 105.0 and m1["serial"] == "SN-1"
    seen = {d.device: d.last_seen for d in store.devices("s1")}
    assert seen == {"m1": T0 + dt.timedelta(minutes=5), "m2": T0 + dt.timedelta(minutes=3)}


def test_dead_letters_keep_payload_topic_reason(store):
    letter = DeadLetter(T0, "jcm/v1/s1/gw1/m1/reading", b'{"schema": 9}', "schema 9 is not 1")
    store.write([], [letter])
    (got,) = store.dead_letters()
    assert (got.topic, got.payload, got.reason) == (letter.topic, letter.payload, letter.reason)
    assert abs((got.received - T0).total_seconds()) < 0.001


def test_a_sites_dead_letters_of_a_window_are_exactly_those_oldest_first(store):
    """What an export lists: the letters on the site's own topics (not a site whose name it
    begins, nor a topic that is not a site's), received start <= t < end, to the microsecond."""
    at = [T0 - dt.timedelta(microseconds=1), T0, T0 + dt.timedelta(hours=5, microseconds=7),
          T0 + dt.timedelta(days=1) - dt.timedelta(microseconds=1), T0 + dt.timedelta(days=1)]
    letters = [DeadLetter(t, f"jcm/v1/{site}/gw1/m1/reading", f"{i}".encode(), f"why {i}")
               for i, t in enumerate(at) for site in ("s1", "s10")]
    letters += [DeadLetter(T0 + dt.timedelta(hours=1), "jcm/v1/s1", b"x", "no site's topic"),
                DeadLetter(T0 + dt.timedelta(hours=2), "jcm/v1/s1/gw1/batch", b"b" * 2000, "batch refused")]
    store.write([], letters[::-1])
    got = list(store.site_dead_letters("s1", T0, T0 + dt.timedelta(days=1)))
    assert [(d.received, d.topic, d.payload) for d in got] == [
        (T0, "jcm/v1/s1/gw1/m1/reading", b"1"),
        (T0 + dt.timedelta(hours=2), "jcm/v1/s1/gw1/batch", b"b" * 1024),
        (T0 + dt.timedelta(hours=5, microseconds=7), "jcm/v1/s1/gw1/m1/reading", b"2"),
        (T0 + dt.timedelta(days=1) - dt.timedelta(microseconds=1), "jcm/v1/s1/gw1/m1/reading", b"3")]
    assert got[1].size == 2000 and got[1].reason == "batch refused"
    assert list(store.site_dead_letters("s2", T0, T0 + dt.timedelta(days=1))) == []


def test_letters_of_one_instant_written_apart_are_all_kept(store):
    """A backlog batch is one message, received once: a line refused by validation and a line
    the store refused are written as letters in two writes. InfluxDB told a write's letters
    apart by their index in it, so the second write's first letter replaced the first one's."""
    letters = [DeadLetter(T0, "jcm/v1/s1/gw1/batch", f"line {i}".encode(), f"why {i}") for i in range(3)]
    store.write([], letters[:2])
    store.write([], letters[2:])
    got = store.site_dead_letters("s1", T0, T0 + dt.timedelta(seconds=1))
    assert sorted(d.payload for d in got) == [b"line 0", b"line 1", b"line 2"]


def small_letter_pages(monkeypatch, page: int) -> None:
    import store.influx_store
    import store.sqlite_store

    for module in (store.sqlite_store, store.influx_store):
        monkeypatch.setattr(module, "LETTER_PAGE", page, raising=False)


def test_a_sites_dead_letters_are_read_in_pages_each_letter_once_in_order(store, monkeypatch):
    """Pages of 3: instants with several letters (a batch's budget summaries, the same
    microsecond), one with more letters than a page, another site's letters between."""
    small_letter_pages(monkeypatch, 3)
    at = [T0 + dt.timedelta(seconds=s, microseconds=u) for s, u in
          [(0, 0), (0, 0), (1, 5), (1, 5), (1, 5), (1, 5), (1, 5), (2, 0), (3, 9), (3, 9), (3, 10), (4, 0)]]
    letters = [DeadLetter(t, f"jcm/v1/{site}/gw1/m1/reading", f"{site} {i}".encode(), "why")
               for i, t in enumerate(at) for site in ("s1", "s10")]
    for i in range(0, len(letters), 5):
        store.write([], letters[i:i + 5])
    want = sorted((d for d in letters if d.topic.startswith("jcm/v1/s1/")), key=lambda d: (d.received, d.sha256))
    got = list(store.site_dead_letters("s1", T0, T0 + dt.timedelta(seconds=4)))
    assert [(d.received, d.payload) for d in got] == [(d.received, d.payload) for d in want[:-1]]


def test_a_site_with_weeks_of_garbage_is_exported_in_bounded_memory(store, monkeypatch):
    """A gateway sending malformed messages at its site's dead-letter budget (120 a minute)
    for a month leaves 5 million letters of up to 1 KiB: reading them back at once took
    gigabytes. Here 6,000 letters of 1 KiB are read in pages of 300 (before: 10 MB held in
    SQLite, 29 MB from InfluxDB; now about 1 and 2 MB)."""
    import tracemalloc

    small_letter_pages(monkeypatch, 300)
    n = 6000
    for i in range(0, n, 1000):
        store.write([], [DeadLetter(T0 + dt.timedelta(seconds=j), "jcm/v1/s1/gw1/m1/reading",
                                    j.to_bytes(4, "big") * 256, "not JSON") for j in range(i, i + 1000)])
    tracemalloc.start()
    try:
        count = sum(1 for _ in store.site_dead_letters("s1", T0, T0 + dt.timedelta(days=1)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < n * 1024 / 2, f"{peak / 1e6:.1f} MB held to read {n * 1024 / 1e6:.1f} MB of letters"


def test_v2_write_path_lands_tags_fields_and_timestamps(victoriametrics):
    store = open_store(f"influxdb://127.0.0.1:{victoriametrics.port}?api=v2&bucket=jcm&org=jcm")
    store.write([reading(minutes=0, seq=1), reading(minutes=10, seq=2, energy=110.0, power=7.25)])
    base = f"http://127.0.0.1:{victoriametrics.port}"
    urllib3.request("GET", f"{base}/internal/force_flush")
    resp = urllib3.request("GET", f"{base}/api/v1/export", fields={"match[]": '{__name__=~"reading_.*"}'})
    series = {(s["metric"]["__name__"], s["metric"]["device"]): s for s in map(json.loads, resp.data.splitlines())}
    energy = series[("reading_energy", "m1")]
    assert energy["metric"]["site"] == "s1" and energy["metric"]["gateway"] == "gw1"
    assert energy["values"] == [100.0, 110.0]
    assert energy["timestamps"] == [int(T0.timestamp() * 1000), int(T0.timestamp() * 1000) + 600_000]
    assert series[("reading_power", "m1")]["values"] == [5.5, 7.25]
    store.close()


def test_unreachable_influx_is_a_retryable_error():
    from contract.store import StoreUnavailable
    from jcm.broker import free_port

    store = open_store(f"influxdb://127.0.0.1:{free_port()}?api=v1&timeout=1")
    with pytest.raises(StoreUnavailable, match="InfluxDB http://127.0.0.1"):
        store.write([reading()])


def test_store_urls_are_checked():
    with pytest.raises(ValueError, match="unknown scheme 'postgres'"):
        open_store("postgres://x")
    with pytest.raises(ValueError, match="unknown parameter"):
        open_store("influxdb://h:8086?bukket=x")
    with pytest.raises(ValueError, match="environment variable JCM_NO_SUCH_TOKEN"):
        open_store("influxdb://h:8086?token_env=JCM_NO_SUCH_TOKEN")


def test_readings_the_store_cannot_hold_are_refused_alone_and_the_rest_stored(store):
    good = [reading("m1", m, seq=m + 1) for m in range(4)]
    bad = [reading("m2", 0, seq=1, energy=10**400),  # beyond a float
           reading("m2", 1, seq=2, **{"\ud800": 1.0}),  # does not encode
           reading("m2", 2, seq=10**30)]  # beyond a 64-bit integer
    refused = store.write(good[:2] + bad + good[2:])
    assert [r for r, _ in refused] == bad
    assert all(why for _, why in refused)
    frame = store.read("s1", T0, T0 + dt.timedelta(hours=1))
    assert set(frame.device) == {"m1"} and len(frame) == 4 * 2
    assert not getattr(store, "_db", None) or not store._db.in_transaction
    assert store.write([reading("m1", 10, seq=11)]) == []  # and the store still takes the next batch
    assert len(store.read("s1", T0, T0 + dt.timedelta(hours=1))) == 5 * 2


def test_dead_letters_keep_head_size_and_hash_and_printable_text(store):
    import hashlib

    big = b'{"x": "' + b"\x1b[2J" * 2_500_000 + b'"}'  # 10 MB
    letter = DeadLetter(T0, "jcm/v1/s1/gw1/m\x1b[31m1/reading", big, "device '\ud800'\nFORGED log line")
    store.write([], [letter])
    (got,) = store.dead_letters()
    assert got.payload == big[:1024] and got.size == len(big) and got.sha256 == hashlib.sha256(big).hexdigest()
    assert got.reason == "device '\\ud800'\\x0aFORGED log line" and got.topic == "jcm/v1/s1/gw1/m\\x1b[31m1/reading"


def test_influx_refuses_a_channel_that_would_overwrite_its_metadata(influxdb):
    s = open_store(f"influxdb://127.0.0.1:{influxdb.port}?api=v1&db=jcm")
    spoofed = reading("m1", 0, seq=1, energy=1.0, status=5.0)
    refused = s.write([spoofed, reading("m1", 1, seq=2)])
    assert [r for r, _ in refused] == [spoofed]
    assert "status" in refused[0][1]
    assert [d.device for d in s.devices("s1")] == ["m1"]
    s.close()


def test_read_of_sources_takes_exactly_those_pairs_and_limit_stops_early(store):
    # m1 has energy and power, m2 energy and power: the product of {m1, m2} x {energy, power}
    # names four pairs, the plan below two
    store.write([reading("m1", m, seq=m) for m in range(0, 30, 10)] + [reading("m2", m, seq=m) for m in range(5, 30, 10)])
    end = T0 + dt.timedelta(hours=1)
    df = store.read("s1", T0, end, sources=["m1.energy", "m2.power"])
    assert list(zip(df["device"], df["channel"])) == [("m1", "energy"), ("m2", "power")] * 3
    assert df["ts"].is_monotonic_increasing and list(df.columns) == ["ts", "site", "gateway", "device", "channel",
                                                                     "value", "quality"]
    assert len(store.read("s1", T0, end, sources=["m1.energy", "m2.power"], devices=["m2"])) == 3
    assert store.read("s1", T0, end, sources=[]).empty
    first = store.read("s1", T0, end, channels=["power"], limit=1)
    assert len(first) == 1 and (first["device"].iloc[0], first["ts"].iloc[0]) == ("m1", T0)
    assert len(store.read("s1", T0, end, sources=["m2.power"], limit=2)) == 2
    assert store.read("s1", end, end + dt.timedelta(hours=1), channels=["power"], limit=1).empty

    by_source = store.read_sources("s1", T0, end, ["m2.power", "m1.energy", "m9.energy"])
    assert set(by_source) == {"m2.power", "m1.energy", "m9.energy"} and by_source["m9.energy"].empty
    assert list(by_source["m1.energy"].columns) == ["ts", "value", "quality"]
    for src, frame in by_source.items():
        dev, channel = src.split(".")
        long = df[(df["device"] == dev) & (df["channel"] == channel)]
        assert frame["ts"].tolist() == long["ts"].tolist() and frame["value"].tolist() == long["value"].tolist()


def test_read_sources_keeps_nulls_and_flags(store):
    store.write([reading(energy=100.0, power=None)])
    frame = store.read_sources("s1", T0, T0 + dt.timedelta(minutes=1), ["m1.power", "m1.energy"])
    assert math.isnan(frame["m1.power"]["value"].iloc[0]) and frame["m1.power"]["quality"].iloc[0] == "not_implemented"
    assert frame["m1.energy"]["value"].iloc[0] == 100.0 and pd.isna(frame["m1.energy"]["quality"].iloc[0])
    assert str(frame["m1.energy"]["ts"].dt.tz) == "UTC"


def test_gc_paused_nests_and_restores():
    import gc

    from contract.gc_paused import gc_paused

    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def signed_chain(n, key, device="m1", epoch="00000000000000a1", first=1, prev=GENESIS, minutes=0):
    """``n`` signed messages of one chain (seq ``first``..) as (reading, message, raw)."""
    raw_key = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys = {"s1": [CustodyKey(id="k1", public_key=base64.b64encode(raw_key).decode(), fingerprint=fingerprint(raw_key),
                              valid_from=T0)]}
    out = []
    for i in range(n):
        r = Reading(site="s1", gateway="gw1", device=device, ts=T0 + dt.timedelta(minutes=minutes + i),
                    values={"energy": 100.0 + i, "power": 5.5}, quality={}, units={}, status=DeviceStatus.ok,
                    seq=first + i, epoch=epoch)
        raw = sign(r.to_json(), prev, "k1", key)
        v = verify(raw, keys)
        out.append((r, SignedMessage.verified(raw, v), raw))
        prev = v.hash
    return out


def test_signed_messages_are_kept_byte_for_byte_and_read_back_by_period_in_chain_order(store, monkeypatch):
    monkeypatch.setattr(sys.modules[type(store).__module__], "MESSAGE_PAGE", 2)  # read in several pages
    key = Ed25519PrivateKey.generate()
    a = signed_chain(5, key)
    b = signed_chain(3, key, device="m2", epoch="00000000000000b2", minutes=1)
    # stored out of order, in two writes
    for part in (a[3:] + b, a[:3]):
        store.write([r for r, _, _ in part], messages=[m for _, m, _ in part])
    period = list(store.signed_messages("s1", T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=4)))
    assert period == [raw for _, _, raw in a[1:4]] + [raw for _, _, raw in b]
    assert list(store.signed_messages("s2", T0, T0 + dt.timedelta(days=1))) == []
    links = store.links("s1", "gw1", "00000000000000a1", [0, 2, 3, 9])
    assert links == {2: Link(a[1][1].hash, a[0][1].hash, a[1][1].ts), 3: Link(a[2][1].hash, a[1][1].hash, a[2][1].ts)}


def test_a_chains_witness_beyond_a_time_is_found_by_seq(store):
    """What an export's witnesses are: a chain's first message above a seq stamped at or after
    a time, or its last below a seq stamped before one, however far off (a chain silent for
    weeks, another chain and other epochs around it)."""
    key = Ed25519PrivateKey.generate()
    a = signed_chain(6, key)  # minutes 0..5
    later = signed_chain(2, key, first=7, prev=a[-1][1].hash, minutes=60 * 24 * 40)  # 40 days on
    other = signed_chain(3, key, device="m2", epoch="00000000000000b2", minutes=3)
    store.write([r for r, _, _ in a + later + other], messages=[m for _, m, _ in a + later + other])
    at, chain = T0 + dt.timedelta(minutes=3), ("s1", "gw1", "00000000000000a1")
    assert store.chain_witness(*chain, 2, at) == a[3][2]  # seq 4, at minute 3
    assert store.chain_witness(*chain, 4, at) == a[4][2]
    assert store.chain_witness(*chain, 6, at) == later[0][2]
    assert store.chain_witness(*chain, 1, T0 + dt.timedelta(days=39)) == later[0][2]
    assert store.chain_witness(*chain, 8, at) is None
    assert store.chain_witness(*chain, 1, T0 + dt.timedelta(days=41)) is None
    assert store.chain_witness(*chain, 8, T0 + dt.timedelta(days=39), later=False) == a[5][2]
    assert store.chain_witness(*chain, 5, at, later=False) == a[2][2]  # seq 3, at minute 2
    assert store.chain_witness(*chain, 3, at, later=False) == a[1][2]
    assert store.chain_witness(*chain, 1, at, later=False) is None
    assert store.chain_witness(*chain, 8, T0, later=False) is None
    assert store.chain_witness("s1", "gw1", "00000000000000b2", 0, at) == other[0][2]
    assert store.chain_witness("s1", "gw1", "00000000000000b2", 9, at, later=False) is None
    assert store.chain_witness("s1", "gw1", "00000000000000c3", 0, at) is None


def test_a_stored_signed_message_is_not_replaced_and_one_of_a_refused_reading_not_kept(store):
    key = Ed25519PrivateKey.generate()
    (r, m, raw), = signed_chain(1, key)
    store.write([r], messages=[m])
    store.write([r], messages=[m])  # redelivered: still one
    assert list(store.signed_messages("s1", T0, T0 + dt.timedelta(hours=1))) == [raw]
    (bad, bad_m, _), = signed_chain(1, key, first=2, prev=m.hash)
    bad = dataclasses.replace(bad, values={"energy": 10**400})  # beyond a float
    refused = store.write([bad], messages=[bad_m])
    assert [x for x, _ in refused] == [bad]
    assert store.links("s1", "gw1", m.epoch, [1, 2]) == {1: Link(m.hash, GENESIS, m.ts)}


def test_custody_findings_are_kept_one_per_identity(store):
    f = CustodyFinding("wrong_prev", "s1", "gw1", "00000000000000a1", 7, T0 + dt.timedelta(minutes=7), T0,
                       "prev is not seq 6's hash")
    store.record_custody_finding(f)
    store.record_custody_finding(f)
    store.record_custody_finding(CustodyFinding("conflict", "s2", "gw2", "00000000000000b2", 3, T0,
                                                T0 + dt.timedelta(seconds=1), "another message"))
    assert store.custody_findings("s1") == [f]
    assert [x.kind for x in store.custody_findings()] == ["wrong_prev", "conflict"]


def test_sqlite_keeps_no_index_besides_its_key_and_reads_a_device_by_its_key_range(tmp_path):
    """A second index (site, ts) cost every insert a sixth of its time; the reads it served
    (a site's window, of some channels or devices, or its first rows) go by key ranges, and
    a store made with the index (in the layout of a row per value) loses it when opened."""
    import sqlite3

    path = tmp_path / "jcm.db"
    old = sqlite3.connect(path)
    old.executescript(row_per_value.SCHEMA)
    old.execute("CREATE INDEX readings_site_ts ON readings (site, ts)")
    old.close()
    s = open_store(f"sqlite:///{path}")
    try:
        assert [row[1] for row in s._db.execute("PRAGMA index_list(readings)")] == ["sqlite_autoindex_readings_1"]
        other = Reading(site="s0", gateway="gw0", device="m1", ts=T0, values={"energy": 1.0}, seq=1)
        late = Reading(site="s2", gateway="gw2", device="m1", ts=T0, values={"energy": 2.0}, seq=1)
        s.write([other, late, reading("m2", 5, seq=9, energy=7.0, serial="X1", power=None),
                 *[reading(d, m, seq=m) for d in ("m1", "m3") for m in range(0, 40, 10)]])
        end = T0 + dt.timedelta(minutes=25)
        df = s.read("s1", T0, end)
        assert df["ts"].is_monotonic_increasing and set(df["site"]) == {"s1"} and "serial" not in set(df["channel"])
        assert list(zip(df["device"], df["channel"]))[:4] == [("m1", "energy"), ("m1", "power"), ("m3", "energy"),
                                                              ("m3", "power")]
        m2 = df[df["device"] == "m2"]["quality"]
        assert len(df) == 3 * 4 + 2 and pd.isna(m2.iloc[0]) and m2.iloc[1] == "not_implemented"
        assert s.read("s1", T0, end, channels=["power"])["channel"].tolist() == ["power"] * 7
        assert set(s.read("s1", T0, end, devices=["m3"])["device"]) == {"m3"}
        first = s.read("s1", T0 + dt.timedelta(minutes=1), end, channels=["energy"], limit=2)
        assert list(zip(first["device"], first["value"])) == [("m2", 7.0), ("m1", 110.0)]
        plan = " ".join(str(r) for r in s._db.execute(
            "EXPLAIN QUERY PLAN SELECT ts, gateway, layout, numbers, quality FROM readings WHERE site = ? AND "
            "device = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT 2", ("s1", "m1", 0, 1)))
        assert "USING PRIMARY KEY (site=? AND device=? AND ts>? AND ts<?)" in plan and "TEMP B-TREE" not in plan
    finally:
        s.close()


def test_an_influxdb_answer_cut_short_by_its_row_limit_is_an_error_not_fewer_rows(tmp_path):
    """A server with ``[http] max-row-limit`` below what a chunk reads answers with the first
    rows and ``"partial": true``: read as it is, readings would be missing from the figures
    in silence. The store refuses the answer, naming the setting."""
    import shutil

    from contract.store import StoreUnavailable
    from jcm.influxd import influxd_config
    from tests.conftest import ServerProcess, _http

    d = tmp_path / "influxdb"
    d.mkdir()
    conf, port = influxd_config(d)
    conf.write_text(conf.read_text().replace("  log-enabled = false\n", "  log-enabled = false\n  max-row-limit = 10\n"))
    server = ServerProcess([shutil.which("influxd"), "-config", str(conf)], port, d).start()
    try:
        _http("POST", f"http://127.0.0.1:{port}/query", {"q": "CREATE DATABASE jcm"})
        s = open_store(f"influxdb://127.0.0.1:{port}?api=v1&db=jcm")
        s.write([reading(minutes=m, seq=m + 1) for m in range(50)])
        assert len(s.read("s1", T0, T0 + dt.timedelta(minutes=5))) == 10  # within the limit: whole
        with pytest.raises(StoreUnavailable, match="max-row-limit"):
            s.read("s1", T0, T0 + dt.timedelta(hours=2))
        with pytest.raises(StoreUnavailable, match="max-row-limit"):
            s.read_sources("s1", T0, T0 + dt.timedelta(hours=2), ["m1.energy"])
        s.close()
    finally:
        server.stop()


def test_sequence_findings_of_one_gateway_epoch_and_kind(store):
    """The collector reads only the findings of the gateway, epoch and kind it is about (a site may
    hold thousands of another's): each choice of filters gives exactly those of the whole list,
    an epoch of ``""`` those with none."""
    from contract.store import SequenceFinding
    t = T0
    found = [SequenceFinding(kind, "s1", gw, epoch, first, first + 2, t + dt.timedelta(seconds=first), "why", 0, "")
             for first, (kind, gw, epoch) in enumerate(
                 [(k, g, e) for k in ("gap", "jump", "clock") for g in ("gw1", "gw2") for e in ("", "0123456789abcdef")],
                 start=1)]
    found.append(SequenceFinding("gap", "s2", "gw1", "", 99, 99, t, "other site", 0, ""))
    for f in found:
        store.record_finding(f)
    everything = store.sequence_findings("s1")
    assert len(everything) == 12
    for gateway in (None, "gw1", "gw2"):
        for epoch in (None, "", "0123456789abcdef"):
            for kind in (None, "gap", "jump", "clock"):
                expected = [f for f in everything if gateway in (None, f.gateway) and epoch in (None, f.epoch)
                            and kind in (None, f.kind)]
                assert store.sequence_findings("s1", gateway=gateway, epoch=epoch, kind=kind) == expected, \
                    (gateway, epoch, kind)


def test_two_messages_of_one_instant_merge_channel_by_channel_in_a_batch_and_across(tmp_path):
    """A row per message: a second message of a device's instant with other channels replaces
    the channels it has and keeps the others, as a row per value did, in one batch or two."""
    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        s.write([reading(seq=1, energy=1.0, power=2.0), reading(seq=2, power=3.0, serial="A")])
        s.write([reading(seq=3, energy=None, volts=230.0)])
        s.write([reading(seq=4, serial=5.0)])  # a text channel turned number
        df = s.read("s1", T0, T0 + dt.timedelta(minutes=1)).set_index("channel")
        assert sorted(df.index) == ["energy", "power", "serial", "volts"]
        assert math.isnan(df["value"]["energy"]) and df["quality"]["energy"] == "not_implemented"
        assert (df["value"]["power"], df["value"]["volts"], df["value"]["serial"]) == (3.0, 230.0, 5.0)
        s.write([reading(seq=5, serial="B")])  # and back to text: out of the reads, in latest
        assert "serial" not in set(s.read("s1", T0, T0 + dt.timedelta(minutes=1))["channel"])
        latest = s.latest("s1").set_index("channel")["value"]
        assert latest["serial"] == "B" and latest["power"] == 3.0 and s.count() == 4
    finally:
        s.close()


def test_a_refused_readings_new_layout_is_not_remembered(tmp_path):
    """A reading refused after its new layout was written (its text does not encode) rolls the
    layout back; the next new layout takes the freed id, so remembering the refused one's id
    would read later messages of its layout with another layout's channel names."""
    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        bad = reading("m2", 0, seq=1, a=1.0, serial="\ud800")
        refused = s.write([bad, reading("m3", 0, seq=2, b=2.0, c=3.0)])
        assert [r for r, _ in refused] == [bad]
        s.write([reading("m2", 1, seq=3, a=4.0, serial="ok")])  # the refused one's layout, now good
        df = s.read("s1", T0, T0 + dt.timedelta(minutes=5))
        assert list(zip(df["device"], df["channel"], df["value"])) == [("m3", "b", 2.0), ("m3", "c", 3.0),
                                                                       ("m2", "a", 4.0)]
        again = open_store(f"sqlite:///{tmp_path}/jcm.db")  # another process: the ids it reads agree
        assert again.latest("s1").set_index("channel")["value"].to_dict() == {"a": 4.0, "serial": "ok", "b": 2.0,
                                                                             "c": 3.0}
        again.close()
    finally:
        s.close()


def test_two_writers_of_one_file_agree_on_layouts(tmp_path):
    """Two collectors on one SQLite file each learn layouts the other made."""
    one, two = (open_store(f"sqlite:///{tmp_path}/jcm.db") for _ in range(2))
    try:
        one.write([reading("m1", 0, seq=1, a=1.0)])
        two.write([reading("m1", 1, seq=2, b=2.0), reading("m1", 2, seq=3, a=3.0)])
        one.write([reading("m1", 3, seq=4, b=4.0)])
        for s in (one, two):
            df = s.read("s1", T0, T0 + dt.timedelta(minutes=5))
            assert list(zip(df["channel"], df["value"])) == [("a", 1.0), ("b", 2.0), ("a", 3.0), ("b", 4.0)]
    finally:
        one.close()
        two.close()


def test_a_gateway_sending_ever_new_channel_sets_grows_neither_memory_nor_breaks_reads(tmp_path, monkeypatch):
    """Every subset and order of a device's channels is a layout of its own: a hostile gateway can
    make one a message. The store remembers a bounded number of them, and a device with more
    layouts than a query can name is still read exactly (``limit`` included)."""
    import itertools

    import store.sqlite_store as sqlite_store

    monkeypatch.setattr(sqlite_store, "LAYOUTS_KEPT", 4)
    monkeypatch.setattr(sqlite_store, "LAYOUTS_NAMED", 3)
    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        sets = [p for k in (1, 2, 3) for p in itertools.permutations("abcd", k)][:40]
        s.write([reading("m1", m, seq=m, **{c: float(m * 10 + i) for i, c in enumerate(cs)})
                 for m, cs in enumerate(sets)])
        assert len(s._ids) <= 4 and len(s._layouts) <= 4 and len(s._used) <= 4
        end = T0 + dt.timedelta(minutes=len(sets))
        expected = [(m, c, float(m * 10 + cs.index(c))) for m, cs in enumerate(sets) for c in sorted(cs)]
        df = s.read("s1", T0, end)
        assert list(zip((df["ts"] - pd.Timestamp(T0)) // pd.Timedelta(minutes=1), df["channel"], df["value"])) == expected
        only_d = s.read("s1", T0, end, channels=["d"], limit=2)  # more than 3 layouts hold d: filtered here
        assert list(only_d["value"]) == [v for _, c, v in expected if c == "d"][:2]
        assert s.count() == len(expected)
    finally:
        s.close()
