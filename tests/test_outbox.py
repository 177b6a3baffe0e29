"""The durable outbox: sequence numbers that survive restarts, a cap that is loud."""

import logging

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
