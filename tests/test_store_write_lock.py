"""Two writers of one SQLite store (two collectors on a shared subscription): the write lock is
handed over as soon as it is let go, and a writer still gives up after the busy timeout."""

import datetime as dt
import sqlite3
import threading
import time

import pytest

import store.sqlite_store as sqlite_store
from contract.message import Reading
from contract.store import StoreUnavailable
from store import open_store

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def reading(seq: int) -> Reading:
    return Reading(site="s1", gateway="gw1", device="m1", ts=T0 + dt.timedelta(seconds=seq), values={"p": 1.0},
                   seq=seq)


def test_a_writer_gets_the_write_lock_within_ms_of_another_letting_it_go(tmp_path):
    """SQLite's own wait sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries:
    let go 240 ms into the wait, the lock was taken again only at 328 ms (two collectors on one
    store each waited so for the other's batches, and two stored no faster than one)."""
    path = tmp_path / "jcm.db"
    store = open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another collector writing its batch
    done = {}

    def write():
        store.write([reading(1)])
        done["at"] = time.monotonic()

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.24)
    let_go = time.monotonic()
    other.execute("COMMIT")
    writer.join(10)
    other.close()
    assert "at" in done
    assert done["at"] - let_go < 0.05, f"stored {done['at'] - let_go:.3f} s after the lock was let go"
    assert store.count() == 1
    store.close()


def test_a_writer_still_gives_up_after_the_busy_timeout_and_waits_as_before_for_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.3)
    path = tmp_path / "jcm.db"
    store = open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="database is locked"):
        store.write([reading(1)])
    assert 0.3 <= time.monotonic() - started < 3
    # other statements keep SQLite's own wait
    assert store._db.execute("PRAGMA busy_timeout").fetchone() == (300,)
    other.execute("COMMIT")
    other.close()
    store.write([reading(1)])
    assert store.count() == 1
    store.close()


def test_a_batch_is_packed_before_the_write_lock_is_taken(tmp_path, monkeypatch):
    """Another collector waits while this one holds the write lock: the readings' values are
    packed (a float64 array and JSON a message) before it is taken, not while it is held."""
    store = open_store(f"sqlite:///{tmp_path}/jcm.db")
    held = []

    def packed(r):
        held.append(store._db.in_transaction)
        return pack(r)

    pack = sqlite_store.packed
    monkeypatch.setattr(sqlite_store, "packed", packed)
    store.write([reading(s) for s in range(1, 4)])
    assert held == [False] * 3
    assert len(store.read("s1", T0, T0 + dt.timedelta(minutes=1))) == 3
    store.close()
