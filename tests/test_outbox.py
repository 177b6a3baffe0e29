"""The durable outbox: sequence numbers that survive restarts, a cap that is loud."""

import logging
import time

from gateway.outbox import Outbox


def test_sequence_survives_restart_and_deletion(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    seqs = [box.append("t", lambda s: f"m{s}") for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    box.delete([1, 2, 3, 4, 5])
    box.close()
    box = Outbox(path, max_rows=1000)
    assert box.depth == 0
    assert box.append("t", lambda s: f"m{s}") == 6  # never reused
    assert box.after(0, 10) == [(6, "t", "m6")]


def test_unacknowledged_rows_survive_reopen(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    for _ in range(3):
        box.append("t", str)
    box.delete([2])
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    assert [r[0] for r in box.after(0, 10)] == [1, 3]
    assert box.depth == 2
    assert [r[0] for r in box.after(0, 10, upto=2)] == [1]


def test_cap_drops_oldest_loudly_and_counts(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite", max_rows=100)
    with caplog.at_level(logging.CRITICAL):
        for _ in range(103):
            box.append("t", str)
    assert box.depth == 100
    assert box.dropped == 3
    assert [r[0] for r in box.after(0, 1)] == [4]
    assert sum("OUTBOX FULL" in r.message for r in caplog.records) == 3


def test_concurrent_appends_share_commits_and_keep_sequence_order(tmp_path):
    import threading

    box = Outbox(tmp_path / "o.sqlite", max_rows=100_000)
    seen_max = []

    def writer():
        for _ in range(200):
            seq = box.append("t", lambda s: f"m{s}")
            # once append returns, every lower sequence number is committed too
            rows = box.after(0, 100_000)
            assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
            assert rows[-1][0] >= seq
            seen_max.append(seq)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen_max) == list(range(1, 1601))
    assert box.depth == 1600 and box.last_seq() == 1600


def test_epoch_is_kept_and_a_restarted_sequence_gets_a_new_one(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    epoch = box.epoch
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    box.append("t", str)
    box.close()
    box = Outbox(path, max_rows=1000)
    assert box.epoch == epoch  # restarts keep it
    box.close()
    import sqlite3
    with sqlite3.connect(path) as db:  # emptied by hand: rows and the sequence
        db.execute("DELETE FROM outbox")
        db.execute("DELETE FROM sqlite_sequence")
    box = Outbox(path, max_rows=1000)
    assert box.epoch != epoch and box.append("t", str) == 1
    box.close()


def test_rows_of_an_outbox_from_before_epochs_get_the_new_epoch(tmp_path):
    import sqlite3
    path = tmp_path / "o.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
                         "payload TEXT NOT NULL); CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                         "INSERT INTO outbox (topic, payload) VALUES ('t', '{\"seq\":1}'), ('t', 'not json');")
    box = Outbox(path, max_rows=1000)
    assert box.after(0, 10) == [(1, "t", f'{{"seq":1,"epoch":"{box.epoch}"}}'), (2, "t", "not json")]
    assert box.append("t", str) == 3


def test_confirmed_ranges_are_deleted_and_the_floor_rises(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    for _ in range(10):
        box.append("t", str)
    assert box.floor() == 1
    box.sent(range(1, 8))
    assert box.confirm([(1, 3), (5, 5), (9, 400)]) == 6
    assert [r[0] for r in box.after(0, 100)] == [4, 6, 7, 8]
    assert box.floor() == 4 and box.awaiting(4) and not box.awaiting(5)
    assert box.confirm([(1, 3)]) == 0  # again: nothing more
    box.confirm([(4, 4), (6, 8)])
    assert box.depth == 0 and box.floor() == 11


def test_rows_awaiting_the_store_are_dropped_last_and_counted(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=100)
    for _ in range(100):
        box.append("t", str)
    box.sent(range(1, 51))  # the broker has the oldest half
    for _ in range(60):
        box.append("t", str)
    left = [r[0] for r in box.after(0, 1000)]
    assert left[:50] == list(range(1, 51))  # awaiting: kept
    assert left[50:] == list(range(111, 161)) and box.dropped == 60
    box.sent(range(111, 161))
    for _ in range(10):
        box.append("t", str)  # every older row awaits the store: the new one is the one unsent to drop
    assert [r[0] for r in box.after(0, 1000)] == [*range(1, 51), *range(111, 161)] and box.dropped == 70


def test_rows_awaiting_too_long_are_handed_back_once(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=100)
    for _ in range(3):
        box.append("t", str)
    box.sent([1, 2])
    assert box.expired(60) == []
    time.sleep(0.05)
    assert sorted(box.expired(0.01)) == [1, 2] and box.expired(0.01) == []
    box.sent([3])
    assert box.forget_sent() == 1 and not box.awaiting(3)
