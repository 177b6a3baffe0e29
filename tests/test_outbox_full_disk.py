"""A full disk under the gateway's outbox: readings polled while nothing can be written
are kept in memory and committed once space returns, acknowledged rows whose delete
failed are not lost track of, and what must be dropped is counted and shown.

The disk is a real tmpfs with a size limit, mounted by the test (root only) and filled
with a file until the kernel says ENOSPC, then freed."""

import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from gateway.outbox import Outbox
from gateway.service import Gateway
from tests.conftest import free_port, load_site, tcp_device, write_site

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")


@contextlib.contextmanager
def tiny_disk(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
    return filler


@needs_root
def test_failed_commits_keep_their_readings_and_retry(tmp_path, caplog):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        box = Outbox(disk / "o.sqlite", max_rows=1000, memory_rows=50)
        assert box.append("t", lambda s: f"m{s}") == 1
        filler = fill(disk)
        with caplog.at_level(logging.ERROR):
            # rows of a few KiB so that the WAL must grow (the first page may still fit)
            seqs = [box.append("t", lambda s: f"m{s}" + "x" * 8000) for _ in range(10)]
        assert seqs == list(range(2, 12))
        assert box.unsaved == 10 and box.depth == 1 and box.dropped == 0
        assert any("not saved" in r.message for r in caplog.records)
        assert [r[0] for r in box.after(0, 100)] == [1]  # never handed out before they are durable
        filler.unlink()
        box.append("t", lambda s: f"m{s}")  # the next commit takes the held rows along
        assert box.unsaved == 0
        assert [r[0] for r in box.after(0, 100)] == list(range(1, 13))
        box.close()


@needs_root
def test_memory_bound_drops_the_oldest_counted_and_critical(tmp_path, caplog):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        box = Outbox(disk / "o.sqlite", max_rows=1000, memory_rows=5)
        box.append("t", str)
        filler = fill(disk)
        with caplog.at_level(logging.CRITICAL):
            for _ in range(8):
                box.append("t", lambda s: f"m{s}" + "x" * 8000)
        assert box.unsaved == 5
        assert box.dropped == 3  # known in memory before it can be written
        critical = [r.message for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and "dropped 1 more" in critical[0]  # once a minute, not once a reading
        filler.unlink()
        with caplog.at_level(logging.CRITICAL):
            box.append("t", str)
        assert "6 held reading(s) saved, 3 dropped meanwhile" in caplog.records[-1].message
        assert [r[0] for r in box.after(0, 100)] == [1, 5, 6, 7, 8, 9, 10]
        box.close()
        assert Outbox(disk / "o.sqlite", max_rows=1000).dropped == 3  # and then saved


@needs_root
def test_deletes_that_fail_are_kept_and_never_resent(tmp_path):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        box = Outbox(disk / "o.sqlite", max_rows=1000)
        for _ in range(40):
            box.append("t", lambda s: f"m{s}" + "x" * 2000)
        filler = fill(disk)
        box.delete(range(1, 41))  # the broker has them all
        assert box.depth == 0
        assert box.after(0, 100) == []  # acknowledged: not sent again
        filler.unlink()
        box.append("t", str)
        box.close()
        box = Outbox(disk / "o.sqlite", max_rows=1000)
        assert [r[0] for r in box.after(0, 100)] == [41]
        box.close()


@needs_root
@pytest.mark.slow
def test_gateway_on_a_disk_that_fills_and_frees_delivers_every_seq_once(tmp_path, mosquitto, subscriber, simulate):
    """The real gateway, simulator and Mosquitto; the disk fills twice: once with the broker up
    (inserts and the deletes on PUBACK fail), once with the broker down (the backlog cannot grow)."""
    with tiny_disk(tmp_path / "disk", "8m") as disk:
        port = free_port()
        devices = [tcp_device(f"m{i}", "power_meter_3ph", port, unit_id=i + 1, interval=0.1) for i in range(4)]
        site = load_site(write_site(tmp_path, devices, outbox={"path": str(disk / "outbox.sqlite"),
                                                                 "confirmed_by": "broker"}))  # no collector here
        simulate(site)
        gw = Gateway(site, broker_url=mosquitto.url)
        gw.start()
        try:
            assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= 20)
            filler = fill(disk)
            polls = gw.polls
            time.sleep(2.5)
            full_polls = gw.polls - polls
            filler.unlink()
            time.sleep(2)
            mosquitto.stop()
            time.sleep(0.5)
            filler = fill(disk)
            time.sleep(2)
            filler.unlink()
            mosquitto.start()
            assert subscriber.wait_for(lambda: gw.outbox.depth < 20, 30)
        finally:
            gw.stop()
        with sqlite3.connect(disk / "outbox.sqlite") as db:
            n = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
            dropped = db.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE name='dropped'").fetchone()[0]
    assert n > 250 and dropped == 0
    subscriber.wait_for(lambda: set(subscriber.seqs("gw-test")) >= set(range(1, n + 1)), 15)
    missing = sorted(set(range(1, n + 1)) - set(subscriber.seqs("gw-test")))
    assert not missing, f"{len(missing)} of {n} never delivered: {missing[:20]}"
    assert full_polls > 40  # polling went on, each poll stored
    # the retained status said that readings were held in memory while the disk was full
    assert any(s.get("outbox_unsaved") for s in subscriber.status)


@needs_root
@pytest.mark.slow
def test_gateway_that_must_drop_counts_it_in_its_retained_status(tmp_path, mosquitto, subscriber, simulate):
    """Memory for 10 readings only: what the full disk costs is exactly the count the status shows."""
    with tiny_disk(tmp_path / "disk", "8m") as disk:
        port = free_port()
        devices = [tcp_device(f"m{i}", "power_meter_3ph", port, unit_id=i + 1, interval=0.1) for i in range(4)]
        site = load_site(write_site(tmp_path, devices, outbox={"path": str(disk / "outbox.sqlite"), "memory_rows": 10,
                                                                 "confirmed_by": "broker"}))  # no collector here
        simulate(site)
        gw = Gateway(site, broker_url=mosquitto.url)
        gw.start()
        try:
            assert subscriber.wait_for(lambda: len(subscriber.seqs("gw-test")) >= 20)
            filler = fill(disk)
            assert subscriber.wait_for(lambda: any(s.get("outbox_dropped", 0) > 20 for s in subscriber.status), 10)
            assert any(s.get("outbox_unsaved") == 10 and "full" in (s.get("outbox_error") or "")
                       for s in subscriber.status)
            filler.unlink()
            assert subscriber.wait_for(lambda: gw.outbox.unsaved == 0 and gw.outbox.depth < 20, 20)
        finally:
            gw.stop()
        with sqlite3.connect(disk / "outbox.sqlite") as db:
            n = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
            dropped = db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()[0]
    subscriber.wait_for(lambda: len(set(subscriber.seqs("gw-test"))) >= n - dropped, 15)
    delivered = set(subscriber.seqs("gw-test"))
    assert dropped > 20 and delivered <= set(range(1, n + 1))
    assert len(delivered) == n - dropped  # every reading not counted as dropped arrived
    assert [s for s in subscriber.status if s["state"] == "online"][-1]["outbox_dropped"] == dropped


@needs_root
def test_a_full_disk_at_start_is_not_taken_for_a_damaged_outbox(tmp_path):
    """A gateway restarted while its disk is full cannot open its outbox: its first try left a
    -wal file, and the next try's check then read the disk's refusal as damage: 'damaged, run
    --new-outbox' (exit 2, which the unit does not restart). Done, that sets the undelivered
    backlog aside for good. A refusal of the disk is a failure a restart may cure (exit 1)."""
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        outbox = Outbox(disk / "outbox.sqlite", 1000)
        seqs = [outbox.append("t", lambda seq: f'{{"seq":{seq}}}') for _ in range(50)]
        epoch = outbox.epoch
        outbox.close()
        filler = fill(disk)
        for _ in range(2):  # a start, and the unit's restart after it
            with pytest.raises(sqlite3.OperationalError):
                Outbox(disk / "outbox.sqlite", 1000)
        filler.unlink()
        outbox = Outbox(disk / "outbox.sqlite", 1000)
        assert (outbox.epoch, [s for s, _, _ in outbox.after(0, 100)]) == (epoch, seqs)
        outbox.close()
