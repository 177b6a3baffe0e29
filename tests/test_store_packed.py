"""Adversarial checks of the embedded store's row per message (store/sqlite_store.py,
store/message_rows.py): what another writer, a crash or a hostile message can do to it."""

import datetime as dt
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.message import DeviceStatus, Quality, Reading
from contract.store import to_ms
from store import open_store, row_per_value
from tests.conftest import fuzz_examples

T0 = dt.datetime(2026, 10, 1, 0, 0, tzinfo=dt.UTC)


def reading(device="m1", minutes=0, seq=1, **values):
    return Reading(site="s1", gateway="gw1", device=device, ts=T0 + dt.timedelta(minutes=minutes),
                   values=values, quality={}, units={}, status=DeviceStatus.ok, seq=seq)


def test_a_read_decodes_no_row_with_a_layout_it_did_not_list(tmp_path):
    """A read lists a device's layouts, then reads its rows: another process (or thread) that
    commits a row of a new layout between the two must not have that row decoded with a layout
    it does not have (its channels' values swapped, or a reshape error out of the read)."""
    url = f"sqlite:///{tmp_path}/jcm.db"
    reader, writer = open_store(url), open_store(url)
    try:
        writer.write([reading(minutes=0, seq=1, a=1.0, b=2.0)])
        listed = reader._device_layouts

        def then_a_new_layout_lands(site, device):
            layouts = listed(site, device)
            writer.write([reading(minutes=1, seq=2, b=3.0, a=4.0),  # same channels, another order
                          reading(minutes=2, seq=3, a=5.0)])        # another width
            return layouts

        reader._device_layouts = then_a_new_layout_lands
        df = reader.read("s1", T0, T0 + dt.timedelta(minutes=5))
        del reader._device_layouts
        got = {(int((t - T0).total_seconds()) // 60, c): v for t, c, v in zip(df["ts"], df["channel"], df["value"])}
        assert got == {(0, "a"): 1.0, (0, "b"): 2.0}  # the state the layouts were listed in
        again = reader.read_sources("s1", T0, T0 + dt.timedelta(minutes=5), ["m1.a", "m1.b"])
        assert list(again["m1.a"]["value"]) == [1.0, 4.0, 5.0] and list(again["m1.b"]["value"]) == [2.0, 3.0]
    finally:
        reader.close()
        writer.close()


def test_messages_of_one_instant_cannot_grow_its_row_past_a_messages_channels(tmp_path):
    """Each merge at an instant makes a layout of the channels so far, kept for good: messages of
    new channels at one instant would grow the store with the square of their number (200 of
    512 channels: 216 MB, against 5 MB of values). A merge past MAX_CHANNELS is refused alone."""
    from contract.message import MAX_CHANNELS

    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        half = MAX_CHANNELS // 2 + 1
        first = reading(seq=1, **{f"a{i}": 1.0 for i in range(half)})
        again = reading(seq=2, **{f"a{i}": 2.0 for i in range(half)}, b=3.0)  # the same instant, one more
        wider = reading(seq=3, **{f"c{i}": 4.0 for i in range(half)})
        other = reading("m2", seq=4, x=5.0)
        assert s.write([first, again]) == []
        refused = s.write([wider, other])
        assert [r for r, _ in refused] == [wider] and f"at most {MAX_CHANNELS}" in refused[0][1]
        df = s.read("s1", T0, T0 + dt.timedelta(minutes=1))
        assert len(df) == half + 2 and set(df["value"]) == {2.0, 3.0, 5.0} and s.count() == half + 2
    finally:
        s.close()


def _old_store(path, rows):
    """A store in the layout of a row per channel value, with ``rows`` (site, device, channel, ts [ms],
    gateway, value, text_value, quality, seq)."""
    import sqlite3

    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(row_per_value.SCHEMA)
    old.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?)", rows)
    old.commit()
    old.close()


def test_an_old_store_converted_reads_as_it_did_and_gives_its_space_back(tmp_path):
    """Texts and numbers at one instant, nulls, qualities, a seq of NULL and two gateways at one
    instant come through the conversion as the old layout read them; the vacuumed pages are given
    back to the disk now, not left in the write-ahead log for as long as the store stays open."""
    import os

    ms = int(T0.timestamp() * 1000)
    path = tmp_path / "jcm.db"
    _old_store(path, [
        ("s1", "m1", "energy", ms, "gw1", 1.5, None, None, 3), ("s1", "m1", "serial", ms, "gw2", None, "A\"1", None, 4),
        ("s1", "m1", "power", ms, "gw1", None, None, "not_implemented", None),
        ("s1", "m1", "energy", ms + 60_000, "gw1", 2.5, None, "suspect", None),
        *[("s1", "m2", c, ms + 60_000 * i, "gw1", float(i), None, None, i) for i in range(3000) for c in "abcde"]])
    before = os.path.getsize(path)
    s = open_store(f"sqlite:///{path}")
    try:
        assert os.path.getsize(f"{path}-wal") == 0 and os.path.getsize(path) < before * 0.6
        m1 = s.read("s1", T0, T0 + dt.timedelta(minutes=5), devices=["m1"])
        assert [(c, None if v != v else v, q if isinstance(q, str) else None)
                for c, v, q in zip(m1["channel"], m1["value"], m1["quality"])] == [
            ("energy", 1.5, None), ("power", None, "not_implemented"), ("energy", 2.5, "suspect")]
        assert set(m1["gateway"][:2]) == {"gw2"}  # the instant's channel of the highest seq
        latest = s.latest("s1").set_index(["device", "channel"])["value"]
        assert latest["m1", "serial"] == "A\"1" and latest["m1", "power"] is None and latest["m2", "e"] == 2999.0
        assert s.count() == 4 + 5 * 3000
    finally:
        s.close()


def test_a_source_named_twice_is_read_once(tmp_path):
    """``read_sources`` reads a device's channels in one pass: a source named twice must not give
    each of its values twice (a sum over it would double)."""
    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        s.write([reading(minutes=m, seq=m + 1, a=float(m), b=1.0) for m in range(3)])
        got = s.read_sources("s1", T0, T0 + dt.timedelta(minutes=5), ["m1.a", "m1.b", "m1.a"])
        assert list(got["m1.a"]["value"]) == [0.0, 1.0, 2.0] and list(got["m1.b"]["value"]) == [1.0] * 3
    finally:
        s.close()


def test_a_device_with_a_layout_a_row_reads_in_time_linear_in_its_rows(tmp_path):
    """A gateway sending each message with another set of channels gives its device a layout a
    row; sorting its rows by layout one layout at a time took rows x layouts (20,000 rows: 7 s).
    Read against a device of as many values in one layout, in the same process and moment."""
    import random
    import time

    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        names, rnd, n = [f"c{i}" for i in range(30)], random.Random(1), 4000
        # m2's first row has a layout of its own, so that both are read row by row (a device of one
        # layout is read in one row that SQLite aggregates, ~3x faster: not what is compared here)
        s.write([reading(d, m, seq=m + 1, **{c: float(m) for c in (rnd.sample(names, 5) if d == "m1" else
                                                                      names[m == 0:5 + (m == 0)])})
                 for m in range(n) for d in ("m1", "m2")])

        def fastest(device):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                df = s.read("s1", T0, T0 + dt.timedelta(days=5), devices=[device])
                times.append(time.perf_counter() - t)
            assert len(df) == 5 * n
            return min(times)

        one, many = fastest("m2"), fastest("m1")
        assert many < 15 * one, (one, many)  # 5x with one sort, 32x with a pass per layout
    finally:
        s.close()


@pytest.mark.fuzz
@settings(max_examples=fuzz_examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 400),
                          st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=True)),
                                   min_size=3, max_size=3),
                          st.lists(st.one_of(st.none(), st.sampled_from(list(Quality))), min_size=3, max_size=3)),
                max_size=40),
       st.integers(-5, 200), st.integers(0, 450))
def test_a_device_of_one_layout_reads_in_one_row_as_it_does_row_by_row(tmp_path, messages, a, b):
    """``read_sources`` of a device with one layout has SQLite concatenate its rows' stamps, numbers
    and flags (``_one_layout_range``): the same frames as its rows read one by one (``_rows_range``),
    nulls, -0.0, infinities, flags and an empty range included."""
    import pandas as pd

    path = tmp_path / f"jcm-{abs(hash((tuple(map(str, messages)), a, b)))}.db"
    s = open_store(f"sqlite:///{path}")
    try:
        s.write([Reading(site="s1", gateway="gw1", device="m1", ts=T0 + dt.timedelta(seconds=t), seq=t + 1,
                         values=dict(zip("xyz", values)), quality={c: q for c, q in zip("xyz", flags) if q},
                         units={}, status=DeviceStatus.ok) for t, values, flags in messages])
        start, end = T0 + dt.timedelta(seconds=a), T0 + dt.timedelta(seconds=b)
        sources = ["m1.x", "m1.z", "m1.y"]
        one_row = s.read_sources("s1", start, end, sources)
        taken = s._one_layout_range("s1", "m1", to_ms(start), to_ms(end), 1, 3) is not None
        assert taken == (len(one_row["m1.x"]) > 0)  # not a fall back to the rows
        s._one_layout_range = lambda *args: None  # every row a Python row, as before
        by_rows = s.read_sources("s1", start, end, sources)
        for src in sources:
            pd.testing.assert_frame_equal(one_row[src], by_rows[src])
            assert (np.signbit(one_row[src]["value"]) == np.signbit(by_rows[src]["value"])).all()
    finally:
        s.close()
        path.unlink(missing_ok=True)


def test_a_range_too_long_for_one_sqlite_value_is_read_row_by_row(tmp_path):
    """SQLite's aggregate of a device's range is one value, at most SQLITE_MAX_LENGTH bytes (~1 GB
    by default; a few years of a wide device): past it the read takes the rows one by one rather
    than fail."""
    import sqlite3

    s = open_store(f"sqlite:///{tmp_path}/jcm.db")
    try:
        s.write([reading(minutes=m, seq=m + 1, a=float(m), b=-float(m)) for m in range(200)])
        s._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)  # 200 rows of 16 bytes do not fit
        assert s._one_layout_range("s1", "m1", 0, 2**62, 1, 2) is None
        got = s.read_sources("s1", T0, T0 + dt.timedelta(days=1), ["m1.a", "m1.b"])
        assert list(got["m1.a"]["value"]) == [float(m) for m in range(200)]
        assert list(got["m1.b"]["value"]) == [-float(m) for m in range(200)]
    finally:
        s.close()
@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
def test_a_utf16_store_reads_its_numbers_bit_for_bit(tmp_path, encoding):
    """SQLite's group_concat is a text function: in a UTF-16 database (a store file made by another
    tool) it converted the concatenated numbers' bytes, a lone surrogate to U+FFFD at the same length,
    so a read of a device of one layout gave other values than were written, and no check saw it."""
    import sqlite3
    import struct

    from store.sqlite_store import SCHEMA

    path = tmp_path / "jcm.db"
    made = sqlite3.connect(path)
    made.execute(f"PRAGMA encoding = '{encoding}'")
    made.executescript(SCHEMA)
    made.close()
    # float64s whose bytes hold lone UTF-16 surrogates, in either byte order
    values = [struct.unpack("<d", bytes.fromhex(h))[0] for h in ("00d8000000dc0040", "ffdf00d8ff00f03f",
                                                                  "d8000000dc000040", "fffec080eda0803f")]
    s = open_store(f"sqlite:///{path}")
    try:
        s.write([reading(minutes=m, seq=m + 1, a=v, b=1.0) for m, v in enumerate(values)])
        got = s.read_sources("s1", T0, T0 + dt.timedelta(days=1), ["m1.a"])["m1.a"]["value"]
        assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in values]
    finally:
        s.close()


@pytest.mark.parametrize("forged", ["CAST(numbers || zeroblob(8) AS BLOB)", "'sixteen letters!'", "NULL"])
def test_a_row_whose_numbers_do_not_fit_its_layout_is_refused_as_damage(tmp_path, forged):
    """A row's numbers are 8 bytes for each number of its layout. A damaged or forged store with one
    row 8 bytes short and the next 8 bytes long (or a text, or nothing, where the numbers should be)
    was read with the numbers shifted from row to row, silently, by both the aggregated and the row by
    row read, or failed with a reshape or type error. Refused now as damage, naming the row."""
    import sqlite3

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=m, seq=m + 1, a=float(m), b=100.0 + m) for m in range(3)])
    s.close()
    forger = sqlite3.connect(path)  # a file made by other means: numbers may be NULL
    forger.executescript("PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = replace(sql, "
                         "'numbers BLOB NOT NULL', 'numbers BLOB') WHERE name = 'readings';")
    forger.close()
    forger = sqlite3.connect(path)
    forger.executescript("UPDATE readings SET numbers = substr(numbers, 1, 8) "
                         "WHERE ts = (SELECT min(ts) FROM readings);"
                         f"UPDATE readings SET numbers = {forged} WHERE ts = (SELECT min(ts) FROM readings) + 60000;")
    forger.close()
    _both_reads_refuse(path, f"device m1's row at {T0.isoformat()}: it holds 8 bytes")


def test_a_row_that_does_not_fit_its_layout_is_neither_merged_nor_shown_as_latest(tmp_path):
    """``latest`` and the merge of two messages at one instant decode a single row: one whose numbers
    were short lost its channels there silently (``latest`` showed channel a alone, and a merge wrote
    the instant back without b). Refused as damage, naming the row; the row is left as it was."""
    import re
    import sqlite3

    from contract.store import StoreUnavailable

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=0, seq=1, a=1.0, b=2.0)])
    s.close()
    forger = sqlite3.connect(path)
    forger.executescript("UPDATE readings SET numbers = substr(numbers, 1, 8)")
    forger.close()
    damage = re.escape(f"store {path} is damaged: device m1's row at {T0.isoformat()}: it holds 8 bytes as its "
                       "numbers, where its layout has 2 of 8 bytes")
    s = open_store(f"sqlite:///{path}")
    try:
        with pytest.raises(sqlite3.DatabaseError, match=damage):
            s.latest("s1")
        with pytest.raises(StoreUnavailable, match=damage):
            s.write([reading(minutes=0, seq=2, c=3.0)])  # another layout at the instant: a merge
    finally:
        s.close()
    held = sqlite3.connect(path)
    assert held.execute("SELECT length(numbers), seq FROM readings").fetchall() == [(8, 1)]
    held.close()


@pytest.mark.parametrize("forged", [
    "UPDATE readings SET layout = 99 WHERE ts = {t1} AND device = 'm1'",  # a layout the store does not have
    "UPDATE readings SET layout = 0 WHERE ts = {t1} AND device = 'm1'",  # one below the device's one layout
    "UPDATE readings SET layout = 1 WHERE ts = {t1} AND device = 'm2'",  # m1's, in a device of two layouts
    "DELETE FROM layouts",  # the layouts the devices list are gone
])
def test_a_row_of_a_layout_the_device_does_not_list_is_refused_as_damage(tmp_path, forged):
    """A row is decoded by the layouts the store lists for its device. A damaged or foreign file with a
    row of another layout failed with a raw KeyError (aggregated read), or its numbers were read under
    the listed layout's channel names, silently (one as wide), or vanished with their layouts (the read
    found nothing to read). Refused now as damage, naming the store, device and row, by every read."""
    import re
    import sqlite3

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=m, seq=m + 1, a=float(m), b=100.0 + m) for m in range(3)])
    s.write([reading(device="m2", minutes=m, seq=m + 10, c=float(m), d=1.0, e=2.0) for m in range(3)])
    s.write([reading(device="m2", minutes=5, seq=20, c=5.0)])  # a second layout of m2
    s.close()
    forger = sqlite3.connect(path)
    forger.execute(forged.format(t1=to_ms(T0) + 60_000))
    forger.commit()
    forger.close()
    device = "m2" if "m2" in forged else "m1"
    at = "" if "DELETE" in forged else f"'s row at {(T0 + dt.timedelta(minutes=1)).isoformat()}"
    damage = f"store {re.escape(str(path))} is damaged: device {device}{re.escape(at)}.*: restore it from a backup$"
    s = open_store(f"sqlite:///{path}", create=False)
    try:
        end = T0 + dt.timedelta(days=1)
        for read in (lambda: s.read_sources("s1", T0, end, [f"{device}.a", f"{device}.b", f"{device}.c"]),
                     lambda: s.read("s1", T0, end), lambda: s.latest("s1")):
            with pytest.raises(sqlite3.DatabaseError, match=damage):
                read()
    finally:
        s.close()


def test_a_damaged_rows_device_is_named_escaped_in_its_one_line(tmp_path):
    """The damage message names the device as the file has it: a foreign file's device named with a
    newline and a terminal escape broke the line in two and coloured the terminal. Shown escaped."""
    import sqlite3

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=0, seq=1, a=1.0, b=2.0)])
    s.close()
    forger = sqlite3.connect(path)
    forger.executescript("UPDATE readings SET device = 'x' || char(10) || char(27) || '[31m', layout = 99;"
                         "UPDATE device_layouts SET device = 'x' || char(10) || char(27) || '[31m';")
    forger.close()
    s = open_store(f"sqlite:///{path}", create=False)
    try:
        with pytest.raises(sqlite3.DatabaseError) as damage:
            s.read("s1", T0, T0 + dt.timedelta(days=1))
    finally:
        s.close()
    assert "device x\\x0a\\x1b[31m's row at " in str(damage.value) and "\x1b" not in str(damage.value)


def _old_rows(n):
    ms = int(T0.timestamp() * 1000)
    return [("s1", "m1", c, ms + 60_000 * i, "gw1", float(i), None, None, i) for i in range(n) for c in "abcde"]


def test_an_opener_waits_for_another_process_converting_the_store(tmp_path, caplog):
    """A conversion holds the store's write lock for as long as it runs (about a minute a year of a
    site); any other process opening the store meanwhile failed after 5 s with "database is locked"
    (a collector starting then died). It waits, saying so once, and then finds the store converted."""
    import logging
    import sqlite3
    import threading
    import time

    path = tmp_path / "jcm.db"
    _old_store(path, _old_rows(100))
    converting = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    converting.execute("BEGIN IMMEDIATE")  # what a converting process holds, here for longer than SQLite waits
    ends = threading.Timer(6.0, lambda: converting.execute("ROLLBACK"))
    ends.start()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="store.sqlite_store"):
            s = open_store(f"sqlite:///{path}", create=False)
        try:
            assert time.monotonic() - started >= 5.9 and s.count() == 500
        finally:
            s.close()
    finally:
        ends.join()
        converting.close()
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and str(path) in waits[0] and "converting" in waits[0], waits


def test_an_opener_waits_for_a_conversion_for_a_bounded_time(tmp_path, caplog, monkeypatch):
    """An opener of a store in the old layout waited for the process holding its write lock (converting
    it) for ever: one stuck holding it (stopped, hung on a disk) held every collector and report so,
    silently after its first line. It waits ``CONVERSION_WAIT`` at most, then is refused in one line
    naming the store, what it waited for and how long; the old file is untouched."""
    import hashlib
    import logging
    import sqlite3
    import threading
    import time

    from contract.sqlite_file import UnusableFile
    from store import sqlite_store

    monkeypatch.setattr(sqlite_store, "CONVERSION_WAIT", 1.0, raising=False)
    path = tmp_path / "jcm.db"
    _old_store(path, _old_rows(10))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    stuck = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    stuck.execute("BEGIN IMMEDIATE")
    lock = threading.Lock()
    released = threading.Timer(30.0, lambda: lock.acquire(blocking=False) and stuck.execute("ROLLBACK"))
    released.start()  # ends an unbounded wait in this test
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="store.sqlite_store"), pytest.raises(UnusableFile) as refused:
            open_store(f"sqlite:///{path}", create=False).close()
    finally:
        released.cancel()
        if lock.acquire(blocking=False):
            stuck.execute("ROLLBACK")
        stuck.close()
    assert time.monotonic() - started < 15  # SQLite's own busy timeout (5 s) a try, past the bound
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "write lock" in message, message
    assert " s this one waited" in message and "nothing was changed" in message, message
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and "at most" in waits[0], waits
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_conversion_the_disk_has_no_room_for_is_refused_before_it_starts(tmp_path):
    """A conversion needs a few times the old file's size free (the new rows are written beside the old,
    then vacuumed): on a disk without it, it filled the disk (every other writer there with it), rolled
    back, and tried again at every start. Refused now, on a real size-limited tmpfs, in one line that
    names the store, what it needs and what is free; the old file is as it was and converts once there
    is room."""
    import hashlib

    from contract.sqlite_file import UnusableFile
    from tests.test_outbox_full_disk import needs_root, tiny_disk

    if needs_root.args[0]:
        pytest.skip(needs_root.kwargs["reason"])
    with tiny_disk(tmp_path / "disk", "3m") as disk:
        path = disk / "jcm.db"
        _old_store(path, _old_rows(6000))
        size = os.path.getsize(path)
        assert 1_000_000 < size < 2_000_000  # the 3 MB disk has room for it, not for converting it
        before, free = hashlib.sha256(path.read_bytes()).hexdigest(), shutil.disk_usage(disk).free
        with pytest.raises(UnusableFile) as refused:  # it converted, failed to vacuum and left the disk full
            open_store(f"sqlite:///{path}")
        assert shutil.disk_usage(disk).free >= free - 64 * 1024
        message = str(refused.value)
        assert str(path) in message and "MB free" in message and "nothing was changed" in message
        assert "\n" not in message, message
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        moved = tmp_path / "jcm.db"  # the operator's way out: a larger disk
        shutil.copyfile(path, moved)
    s = open_store(f"sqlite:///{moved}")
    try:
        assert s.count() == 5 * 6000
    finally:
        s.close()


def test_a_store_reached_through_a_symlink_is_read_while_its_collector_writes_it(tmp_path):
    """SQLite keeps a database's -wal and -shm beside the file a symlink leads to. The opening checks
    looked for the -wal beside the symlink, found none and read the file as immutable, without its
    log: a reading command on a symlinked store whose collector had not yet checkpointed called it
    "an empty SQLite database, not a store"."""
    (tmp_path / "data").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "jcm.db").symlink_to(tmp_path / "data" / "jcm.db")
    writer = open_store(f"sqlite:///{tmp_path}/var/jcm.db")
    try:
        writer.write([reading(minutes=m, seq=m + 1, a=float(m)) for m in range(10)])
        assert sorted(os.listdir(tmp_path / "data")) == ["jcm.db", "jcm.db-shm", "jcm.db-wal"]
        reader = open_store(f"sqlite:///{tmp_path}/var/jcm.db", create=False)
        try:
            assert reader.count() == 10
        finally:
            reader.close()
    finally:
        writer.close()


def test_the_space_for_a_conversion_is_that_of_the_disk_a_symlinked_store_is_on(tmp_path):
    """A store moved to another disk and reached through a symlink (the way out the space check
    suggests) had the free space of the symlink's disk checked: a conversion went ahead on a small
    disk without the room it needs, to fill it at worst."""
    from contract.sqlite_file import UnusableFile
    from tests.test_outbox_full_disk import needs_root, tiny_disk

    if needs_root.args[0]:
        pytest.skip(needs_root.kwargs["reason"])
    with tiny_disk(tmp_path / "disk", "3m") as disk:
        _old_store(disk / "jcm.db", _old_rows(6000))
        (tmp_path / "jcm.db").symlink_to(disk / "jcm.db")
        free = shutil.disk_usage(disk).free
        with pytest.raises(UnusableFile, match="MB free on its disk") as refused:
            open_store(f"sqlite:///{tmp_path}/jcm.db")
        assert str(disk) in str(refused.value) and shutil.disk_usage(disk).free >= free - 64 * 1024


def _as_nobody(*args):
    """Run ``jcm args`` as user nobody: root ignores file permissions. It may read any file (the venv's
    interpreter lives under /root) but writes by permissions alone."""
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("running a command as another user needs root and setpriv")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                           sys.executable, "-m", "jcm.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": "/tmp"})


def test_a_store_this_user_cannot_write_is_read_while_its_writer_has_it_open_else_refused():
    """A reading command of a user who cannot write the store (an auditor, the live view as its own
    user) was refused even while the collector had the store open, when SQLite can read it through
    the collector's -shm and -wal files. Without them SQLite would create them, read-only and this
    user's, and the collector could write the store no more: refused, one line, nothing created. An
    old-layout store, which only a writer can convert, is refused alike, untouched."""
    import tempfile
    from pathlib import Path

    # where nobody can reach it by permissions (tmp_path is in a folder of root's alone)
    folder = Path(tempfile.mkdtemp(prefix="jcm-read-only-"))
    folder.chmod(0o755)
    try:
        _read_as_nobody(folder, folder / "jcm.db")
    finally:
        shutil.rmtree(folder)


def _read_as_nobody(folder, path):
    import hashlib

    url = f"sqlite:///{path}"
    writer = open_store(url)
    try:
        writer.write([reading(a=1.0)], [])
        folder.chmod(0o555)
        path.chmod(0o444)
        done = _as_nobody("deadletters", "--store", url)
        assert done.returncode == 0 and "0 dead letter(s) shown" in done.stdout, done.stderr
    finally:
        writer.close()
    assert sorted(os.listdir(folder)) == ["jcm.db"]
    for layout in ("new", "old"):
        if layout == "old":
            folder.chmod(0o755)
            path.unlink()
            _old_store(path, _old_rows(10))  # closed: SQLite removed its -wal and -shm
            folder.chmod(0o555)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        done = _as_nobody("deadletters", "--store", url)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (layout, done.stderr)
        assert str(path) in lines[0] and "not writable by this user" in lines[0] and "nothing was changed" in lines[0]
        assert sorted(os.listdir(folder)) == ["jcm.db"] and hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("name", ['odd name', 'x); SELECT 1; --', 'a"b', "it's"])
def test_a_read_only_store_with_odd_table_names_is_checked_without_running_them_as_sql(name):
    """Opening a store read-only checks its tables' columns: each table's name was put into SQL as it
    is (``PRAGMA table_info(name)``), so a foreign file's table named with spaces, quotes or SQL failed
    with a raw error or was refused as unreadable, its name run as SQL. Names are bound now: the store
    is read."""
    import sqlite3
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="jcm-read-only-"))
    folder.chmod(0o755)
    path = folder / "jcm.db"
    url = f"sqlite:///{path}"
    try:
        writer = open_store(url)
        other = sqlite3.connect(path)
        other.execute(f'CREATE TABLE "{name.replace(chr(34), chr(34) * 2)}" (a)')
        other.commit()
        other.close()
        try:
            writer.write([reading(a=1.0)], [])
            folder.chmod(0o555)
            path.chmod(0o444)
            done = _as_nobody("deadletters", "--store", url)
            assert done.returncode == 0 and "0 dead letter(s) shown" in done.stdout, done.stderr
        finally:
            writer.close()
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_a_row_stamped_between_milliseconds_is_refused_as_damage(tmp_path):
    """The store stamps a row in whole milliseconds. A damaged or forged file with a stamp between
    two (SQLite keeps 1.5 as a REAL in an INTEGER column) failed the aggregated read with numpy's
    raw "string or file could not be read to its end", and the row-by-row read cut it to a whole
    millisecond silently. Refused as damage, naming the row, by both."""
    import sqlite3

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=m, seq=m + 1, a=float(m), b=100.0 + m) for m in range(3)])
    s.close()
    forger = sqlite3.connect(path)
    forger.executescript("UPDATE readings SET ts = ts + 0.5 WHERE ts = (SELECT min(ts) FROM readings) + 60000;")
    forger.close()
    _both_reads_refuse(path, f"device m1's row at {(T0 + dt.timedelta(minutes=1)).isoformat()}: its stamp")


def test_a_store_giving_one_layout_id_to_two_layouts_is_refused_as_damage(tmp_path):
    """A layout's id names the channels of every row of it. A damaged or foreign file whose layouts table
    does not keep ids unique (its id not the primary key) gave one id two layouts: its rows were read
    under whichever came first, channel "a"'s numbers as channel "x"'s, silently. Refused at opening."""
    import sqlite3

    from contract.sqlite_file import UnusableFile

    path = tmp_path / "jcm.db"
    s = open_store(f"sqlite:///{path}")
    s.write([reading(minutes=m, seq=m + 1, a=float(m), b=100.0 + m) for m in range(3)])
    s.close()
    forger = sqlite3.connect(path)
    forger.executescript("""CREATE TABLE forged (id INTEGER, channels TEXT NOT NULL);
        INSERT INTO forged SELECT id, replace(channels, '"a"', '"x"') FROM layouts;
        INSERT INTO forged SELECT * FROM layouts; DROP TABLE layouts; ALTER TABLE forged RENAME TO layouts;""")
    forger.close()
    with pytest.raises(UnusableFile, match=f"store {path} is damaged: its layouts table gives id 1 to 2 layouts"):
        open_store(f"sqlite:///{path}", create=False).close()


def _both_reads_refuse(path, damage: str) -> None:
    """The aggregated read and the row-by-row read of m1's day both refuse the store as damaged, naming ``damage``."""
    import re
    import sqlite3

    s = open_store(f"sqlite:///{path}", create=False)
    try:
        end = T0 + dt.timedelta(days=1)
        for read in (lambda: s.read_sources("s1", T0, end, ["m1.a", "m1.b"]),  # aggregated by SQLite
                     lambda: s.read("s1", T0, end, sources=["m1.a", "m1.b"])):  # row by row
            with pytest.raises(sqlite3.DatabaseError, match=re.escape(f"store {path} is damaged: {damage}")):
                read()
    finally:
        s.close()
