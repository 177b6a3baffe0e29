"""The outbox file deleted or replaced while the gateway runs: put back, no row lost, same epoch."""

import json
import logging
import os
import sqlite3
import threading
import time

import pytest

from gateway import outbox as outbox_module
from gateway.outbox import Outbox


def _rows_at(path):
    """What a restart would find at ``path`` (read by another connection, as a new process would)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return ([r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")],
                db.execute("SELECT epoch FROM sequence_epoch").fetchone()[0])
    finally:
        db.close()


def _wait_for(cond, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("gone", [("",), ("", "-wal", "-shm")], ids=["file", "file+wal+shm"])
def test_deleted_outbox_is_put_back_while_running(tmp_path, monkeypatch, caplog, gone):
    monkeypatch.setattr(outbox_module, "PATH_CHECK_EVERY", 0.05)
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    epoch = box.epoch
    for _ in range(5):
        box.append("t", lambda s: f"m{s}")
    box.delete([1])
    with caplog.at_level(logging.ERROR):
        for end in gone:
            os.unlink(f"{path}{end}")
        _wait_for(path.exists)
        _wait_for(lambda: any("deleted while the gateway runs" in r.message for r in caplog.records))
    # a SIGKILL now would find every row at the path, in the same epoch
    assert _rows_at(path) == ([2, 3, 4, 5], epoch)
    assert box.append("t", lambda s: f"m{s}") == 6  # and it goes on writing there
    box.delete([2])
    box.close()
    box = Outbox(path, max_rows=1000)
    assert box.epoch == epoch
    assert [r[0] for r in box.after(0, 10)] == [3, 4, 5, 6]
    box.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].message
    assert not list(tmp_path.glob("*.restore-*")) and not list(tmp_path.glob("*.replaced-*"))


def test_replaced_outbox_is_moved_aside_and_the_open_one_put_back(tmp_path, caplog):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    epoch = box.epoch
    for _ in range(3):
        box.append("t", lambda s: f"m{s}")
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT, payload TEXT)")
    db.execute("INSERT INTO outbox VALUES (99, 'x', 'theirs')")
    db.commit()
    db.close()
    os.rename(other, path)
    with caplog.at_level(logging.ERROR):
        box.close()  # stopping checks too: a restart right after the replacement loses nothing
    assert not os.path.exists(f"{path}-wal")  # closed: no stale -wal of the old file beside the new one
    assert _rows_at(path) == ([1, 2, 3], epoch)
    (aside,) = tmp_path.glob("o.sqlite.replaced-*")
    db = sqlite3.connect(aside)
    assert db.execute("SELECT payload FROM outbox").fetchall() == [("theirs",)]  # kept, not deleted
    db.close()
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "replaced by another" in error.message and str(aside) in error.message


def test_outbox_deleted_then_gateway_restarted_loses_no_row(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    epoch = box.epoch
    for _ in range(4):
        box.append("t", lambda s: f"m{s}")
    for end in ("", "-wal", "-shm"):
        os.unlink(f"{path}{end}")
    box.close()  # stopped before the next check
    box = Outbox(path, max_rows=1000)
    assert (box.epoch, [r[0] for r in box.after(0, 10)]) == (epoch, [1, 2, 3, 4])
    box.close()


def _foreign(path, marker):
    """Another SQLite file (a technician's copy of some other outbox) put at ``path`` by a rename."""
    tmp = f"{path}.incoming"
    db = sqlite3.connect(tmp)
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT, payload TEXT)")
    db.execute("INSERT INTO outbox VALUES (99, 'x', ?)", (marker,))
    db.commit()
    db.close()
    os.rename(tmp, path)


def test_two_replacements_in_one_second_are_both_kept(tmp_path, monkeypatch, caplog):
    """The name a replacement is moved aside to is never one already taken: a second file found
    within the same second (the committer's check, then the one at stop) must not overwrite the first."""
    monkeypatch.setattr(outbox_module, "PATH_CHECK_EVERY", 0.05)
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=1000)
    box.append("t", lambda s: f"m{s}")
    while time.time() % 1 > 0.3:  # both replacements in one UTC second, as a script replacing files would
        time.sleep(0.01)
    with caplog.at_level(logging.ERROR):
        _foreign(path, "first")
        _wait_for(lambda: any("moved aside" in r.message for r in caplog.records))
        _foreign(path, "second")
        box.close()
    kept = set()
    for aside in tmp_path.glob("o.sqlite.replaced-*"):
        if not aside.name.endswith(("-wal", "-shm", "-journal")):
            db = sqlite3.connect(aside)
            kept |= {p for (p,) in db.execute("SELECT payload FROM outbox")}
            db.close()
    assert kept == {"first", "second"}
    assert _rows_at(path)[0] == [1]


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_symlinked_outbox_leaves_no_wal_beside_its_target(tmp_path, caplog, how):
    """A symlinked outbox path: SQLite keeps -wal and -shm beside the file the link leads to. The
    open outbox's -wal left there when that file is replaced would be replayed onto the file kept
    (it would read as this outbox, its own rows gone); left there when it is deleted, onto whatever
    file is put there next."""
    (tmp_path / "data").mkdir()
    target, link = tmp_path / "data" / "o.sqlite", tmp_path / "o.sqlite"
    link.symlink_to(target)
    box = Outbox(link, max_rows=1000)
    epoch = box.epoch
    for _ in range(3):
        box.append("t", lambda s: f"m{s}")
    assert os.path.exists(f"{target}-wal")
    if how == "replaced":
        _foreign(target, "theirs")
    else:
        os.unlink(target)
    with caplog.at_level(logging.ERROR):
        box.close()
    assert _rows_at(link) == ([1, 2, 3], epoch)
    assert not os.path.exists(f"{target}-wal")
    # the copy put back replaced the link: its sequence file is beside it now, where the next start reads it
    sequence = json.loads(open(f"{link}.sequence").read())
    assert (sequence["epoch"], sequence["committed"]) == (epoch, 3)
    if how == "replaced":
        db = sqlite3.connect(target)
        assert db.execute("SELECT payload FROM outbox").fetchall() == [("theirs",)]
        db.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")
def test_outbox_put_back_but_not_reopened_on_a_full_disk_keeps_its_committer(tmp_path, monkeypatch, caplog):
    """The copy fits, the connection's -shm does not (the deleted file's space is held by another
    process): the committer must live on, hold readings in memory, reopen once there is room, and
    lose none."""
    from tests.test_outbox_full_disk import fill, tiny_disk
    monkeypatch.setattr(outbox_module, "PATH_CHECK_EVERY", 0.05)
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        path = disk / "o.sqlite"
        box = Outbox(path, max_rows=1000)
        epoch = box.epoch
        for _ in range(20):
            box.append("t", lambda s: f"m{s}" + "x" * 2000)
        size = box._db.execute("PRAGMA page_count").fetchone()[0] * 4096
        held = [os.open(f"{path}{end}", os.O_RDONLY) for end in ("", "-wal", "-shm")]  # a backup agent
        try:
            with caplog.at_level(logging.WARNING):
                os.unlink(path)
                filler = fill(disk)
                os.truncate(filler, filler.stat().st_size - size - 8192)  # room for the copy alone
                _wait_for(path.exists)  # put back (the copy renamed onto the path)
                seq = []
                writer = threading.Thread(target=lambda: seq.append(box.append("t", lambda s: f"m{s}")))
                writer.start()
                writer.join(5)
                assert seq == [21]  # held in memory: the committer lives on
                os.unlink(filler)
                _wait_for(lambda: any("reopened" in r.message for r in caplog.records))
                assert box.append("t", lambda s: f"m{s}") == 22 and box.error is None and box.unsaved == 0
        finally:
            for fd in held:
                os.close(fd)
        box.close()
        assert _rows_at(path) == (list(range(1, 23)), epoch)
