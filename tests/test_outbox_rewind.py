"""An outbox gone back in time (a backup restored while the gateway was stopped): its sequence
file beside it says so, no seq of the epoch is used twice, and one ERROR names the rewind.
End to end (a real broker, collector and store): the older copy's rows, which the collectors
had let go below the floor, end up acknowledged, and the readings lost with the newer file
are a gap the collector names."""

import datetime as dt
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from contract.message import MAX_SEQ
from gateway.outbox import RESERVE, Outbox
from gateway.service import Gateway
from jcm.doctor import check_sequence_file
from processing.period import sequence_findings
from tests.conftest import REPO, load_site, wait_until
from tests.test_outbox_full_disk import fill, needs_root, tiny_disk
from tests.test_end_to_end_ack import GATEWAY, collector, e2e_site, finish, stored


def _last_seq(path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
    finally:
        db.close()


def _append(box, n):
    return [box.append("t", lambda s: f"m{s}") for _ in range(n)]


def _restore(backup: Path, path: Path) -> None:
    for end in ("-wal", "-shm"):
        Path(f"{path}{end}").unlink(missing_ok=True)
    shutil.copyfile(backup, path)


def test_an_older_copy_of_the_outbox_never_reuses_a_seq_and_says_so(tmp_path, caplog):
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=100)
    _append(box, 2)
    epoch = box.epoch
    box.close()
    shutil.copyfile(path, backup)  # the night's backup: seq 2
    box = Outbox(path, max_rows=100)
    _append(box, 3)
    box.delete([1, 2, 3])  # delivered and confirmed
    box.close()
    _restore(backup, path)
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, max_rows=100)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WENT BACK from seq 5 to seq 2" in errors[0], errors
    assert box.epoch == epoch  # the same epoch: its seqs 1..5 keep their meaning
    assert _append(box, 1) == [6]  # not 3, which a collector holds with another reading
    assert [r[0] for r in box.after(0, 10)] == [1, 2, 6]  # the older copy's rows are sent again
    box.close()
    caplog.clear()
    box = Outbox(path, max_rows=100)  # a restart after that is no rewind
    assert _append(box, 1) == [7] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    box.close()


def test_a_rewind_is_seen_through_another_link_to_the_outbox(tmp_path, caplog):
    """A symlinked outbox path: the sequence file lives beside the file the link leads to, so a
    gateway started through another link to the same outbox (a site file edited, a mount moved)
    reads the same one and sees a backup restored meanwhile."""
    (tmp_path / "disk").mkdir()
    target, backup = tmp_path / "disk" / "outbox.sqlite", tmp_path / "backup.sqlite"
    one, other = tmp_path / "one.sqlite", tmp_path / "other.sqlite"
    one.symlink_to(target)
    other.symlink_to(target)
    box = Outbox(one, max_rows=100)
    _append(box, 2)
    box.close()
    shutil.copyfile(target, backup)
    box = Outbox(one, max_rows=100)
    _append(box, 3)
    box.close()
    _restore(backup, target)
    with caplog.at_level(logging.WARNING):
        box = Outbox(other, max_rows=100)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WENT BACK from seq 5 to seq 2" in errors[0], errors
    assert _append(box, 1) == [6]
    box.close()
    assert sorted(p.name for p in tmp_path.rglob("*.sequence")) == ["outbox.sqlite.sequence"]


def test_a_rewind_is_seen_at_the_first_run_after_the_sequence_file_followed_the_link(tmp_path, caplog):
    """A gateway from before kept the sequence file beside the symlink itself: the first run of this
    one, finding none beside the file the link leads to, vouched for nothing, so an older copy of
    the outbox restored meanwhile reused seqs the collectors hold. It reads the one beside the link."""
    (tmp_path / "disk").mkdir()
    target, backup, link = tmp_path / "disk" / "outbox.sqlite", tmp_path / "backup.sqlite", tmp_path / "link.sqlite"
    link.symlink_to(target)
    box = Outbox(link, max_rows=100)
    _append(box, 2)
    box.close()
    shutil.copyfile(target, backup)
    box = Outbox(link, max_rows=100)
    _append(box, 3)
    box.close()
    os.rename(f"{target}.sequence", f"{link}.sequence")  # where the gateway from before kept it
    _restore(backup, target)
    with caplog.at_level(logging.WARNING):
        box = Outbox(link, max_rows=100)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WENT BACK from seq 5 to seq 2" in errors[0], errors
    assert _append(box, 1) == [6]
    box.close()
    # read once and superseded by the one beside the file: removed, so that no one takes it for the outbox's
    assert sorted(p.name for p in tmp_path.rglob("*.sequence")) == ["outbox.sqlite.sequence"]
    assert json.loads((tmp_path / "disk" / "outbox.sqlite.sequence").read_bytes())["committed"] == 6


def test_a_sequence_file_beside_the_link_is_removed_once_the_one_beside_the_file_is_written(tmp_path, caplog):
    """No rewind: the one beside the link is read (the one beside the file is missing), then superseded."""
    (tmp_path / "disk").mkdir()
    target, link = tmp_path / "disk" / "outbox.sqlite", tmp_path / "link.sqlite"
    link.symlink_to(target)
    box = Outbox(link, max_rows=100)
    _append(box, 2)
    box.close()
    os.rename(f"{target}.sequence", f"{link}.sequence")
    with caplog.at_level(logging.WARNING):
        box = Outbox(link, max_rows=100)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # vouched for by the one beside the link
    assert not Path(f"{link}.sequence").exists() and Path(f"{target}.sequence").exists()
    assert _append(box, 1) == [3]
    box.close()


def test_after_a_sigkill_the_reserved_seqs_are_skipped(tmp_path, caplog):
    """Killed, its last seqs were never written as committed to the sequence file: the reservation
    written before they were assigned covers them."""
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=1000)
    _append(box, 2)
    box.close()
    shutil.copyfile(path, backup)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom gateway.outbox import Outbox\n"
         f"box = Outbox({str(path)!r}, max_rows=1000)\n"
         f"for _ in range({RESERVE + 10}): box.append('t', lambda s: f'm{{s}}')\n"
         "print(box.last_seq(), flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        last = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert last == RESERVE + 12
    _restore(backup, path)
    with caplog.at_level(logging.ERROR):
        box = Outbox(path, max_rows=1000)
    assert "WENT BACK" in caplog.text
    assert _append(box, 1)[0] > last
    box.close()


def test_a_backup_taken_within_the_last_reservation_is_told_after_a_crash(tmp_path, caplog, monkeypatch):
    """The usual restore: a backup of the running outbox (the night's), then a crash (a power cut
    that damaged the file) before the gateway reserved more seqs, and the backup put back. The
    sequence file learns the committed seq after a commit at least every ``SEQUENCE_EVERY``
    seconds (0 here), so the rows committed after the backup are told and their seqs not reused."""
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=1000)
    _append(box, 3)
    box.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nimport gateway.outbox as o\no.SEQUENCE_EVERY = 0\n"
         f"box = o.Outbox({str(path)!r}, max_rows=1000)\n"
         "for _ in range(2): box.append('t', lambda s: f'm{s}')\n"
         "print(box.last_seq(), flush=True)\nsys.stdin.readline()\n"
         "for _ in range(5): box.append('t', lambda s: f'm{s}')\n"
         "print(box.last_seq(), flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert int(proc.stdout.readline()) == 5
        live, dst = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(backup)
        live.backup(dst)  # the night's backup of the running outbox
        live.close()
        dst.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        last = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert last == 10
    _restore(backup, path)
    with caplog.at_level(logging.ERROR):
        box = Outbox(path, max_rows=1000)
    assert "WENT BACK from seq 10 to seq 5" in caplog.text
    assert _append(box, 1)[0] > last
    box.close()


@pytest.mark.parametrize("lost", ["missing", "garbage", "huge"])
def test_a_missing_sequence_file_is_no_rewind_and_is_said(tmp_path, caplog, lost):
    """Huge: a file of this epoch edited (or damaged) to a seq near 2**63 is not believed: believed,
    it left no seq to number readings with (each lost, and the stop failed on an overflow)."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_rows=100)
    _append(box, 3)
    box.close()
    sequence = Path(f"{path}.sequence")
    assert sequence.exists()
    if lost == "missing":  # the first run after the upgrade, or an operator cleaning up
        sequence.unlink()
    elif lost == "garbage":
        sequence.write_bytes(b"\x00garbage")
    else:
        body = json.loads(sequence.read_bytes())
        sequence.write_text(json.dumps({**body, "committed": MAX_SEQ, "reserved": MAX_SEQ}))
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, max_rows=100)
    assert _append(box, 1) == [4]  # no seq skipped: nothing says one was used
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "cannot be vouched" in lines[0].getMessage()
    box.close()
    caplog.clear()
    Outbox(path, max_rows=100).close()  # written anew: said once
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_skip_an_acknowledgement_showed_outlives_a_stop_before_the_next_reading(tmp_path, caplog):
    """The seqs a collector holds beyond those assigned stay used when the gateway stops (or is
    killed) before numbering another reading: the next run does not give them again."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_rows=100)
    _append(box, 5)
    with caplog.at_level(logging.ERROR):
        box.claimed(20)
    assert "WENT BACK from seq 20 (at least) to seq 5" in caplog.text
    box.close()
    box = Outbox(path, max_rows=100)
    assert _append(box, 1) == [21]
    box.close()


def test_a_backup_restored_after_a_skip_an_acknowledgement_showed_reuses_none_of_its_seqs(tmp_path):
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=100)
    _append(box, 3)
    box.close()
    shutil.copyfile(path, backup)
    box = Outbox(path, max_rows=100)
    _append(box, 2)
    box.claimed(20)  # seqs up to 20 are held by a collector
    box.close()
    _restore(backup, path)
    box = Outbox(path, max_rows=100)
    assert _append(box, 1)[0] > 20
    box.close()


@pytest.mark.slow
def test_a_restored_outbox_end_to_end(tmp_path, mosquitto, simulate, caplog):
    """Collector away, rows pile up; backup; delivered and confirmed (the collectors' floor passes
    the backup's rows); more readings the store never gets; gateway stopped, the backup restored,
    started again. The backup's rows are acknowledged (not sent for ever), no seq means two
    readings, and the readings lost with the newer file are a gap of the collector's."""
    site = load_site(e2e_site(tmp_path))
    simulate(site)
    path = Path(site.outbox.path)
    backup = tmp_path / "backup.sqlite"
    c = collector(mosquitto, tmp_path, gap_grace_s=0.5)
    gw = Gateway(site, broker_url=mosquitto.url)
    gw.start()
    try:
        assert wait_until(lambda: c.stored >= 20)
        c.stop()
        assert wait_until(lambda: gw.outbox.depth >= 20)
        gw.stop()
        shutil.copyfile(path, backup)
        backed_up = _last_seq(path)
        c = collector(mosquitto, tmp_path, gap_grace_s=0.5)
        gw = Gateway(site, broker_url=mosquitto.url)
        gw.publisher.status_every = 0.3  # the collector hears the floor pass the backup's rows soon
        gw.start()
        assert wait_until(lambda: gw.outbox.floor() > backed_up + 20)
        time.sleep(1)
        mosquitto.stop()  # what follows never leaves the outbox: lost with the newer file
        assert wait_until(lambda: gw.outbox.depth >= 10)
        gw.stop()
        went_to = _last_seq(path)
        lost = set(range(1, went_to + 1)) - set(stored(tmp_path))
        assert lost
        _restore(backup, path)
        mosquitto.start()  # the collector, running on, holds the claim it had: its floor above the backup's rows
        restart = dt.datetime.now(dt.UTC)
        with caplog.at_level(logging.ERROR):
            gw = Gateway(site, broker_url=mosquitto.url)
        assert f"WENT BACK from seq {went_to} to seq {backed_up}" in caplog.text
        gw.start()
        assert wait_until(lambda: gw.outbox.last_seq() > went_to + 20)
        finish(gw)  # every row confirmed, the older copy's too
        assert wait_until(lambda: any(f.kind == "gap" for f in c.store.sequence_findings(gateway=GATEWAY)), 10)
        gaps = [f for f in c.store.sequence_findings(gateway=GATEWAY) if f.kind == "gap"]
    finally:
        c.stop()
    assert set(stored(tmp_path).values()) == {1}, "a seq names two readings"
    assert min(stored(tmp_path, since=restart)) > went_to  # new readings reuse no seq
    named = set().union(*(range(f.first, f.last + 1) for f in gaps))
    assert lost <= named, f"lost {sorted(lost)[:5]}... not named in {gaps}"


def test_an_acknowledgement_beyond_every_seq_assigned_is_a_rewind_once_and_bounded(tmp_path, caplog):
    """An older copy restored with its sequence file (a VM snapshot rolled back) is known only from
    the collectors: their acknowledgement of its epoch claims seqs it never assigned. New readings
    start after them, once a run and at most ``max_rows`` ahead; nothing is deleted for it."""
    from contract.acknowledgement import Ack
    from gateway.publisher import Publisher

    site = load_site(e2e_site(tmp_path))
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    _append(box, 5)
    pub = Publisher(site, box, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5

    def take(*ranges):
        pub._store_acks.put((b"jcm/v1/test-site/gw-test/ack/c", Ack(box.epoch, ranges).to_json().encode(), False))
        pub._take_store_acks()

    with caplog.at_level(logging.ERROR):
        take((1, 2), (40, 50))
    assert [r[0] for r in box.after(0, 10)] == [3, 4, 5]  # only what was sent and claimed is deleted
    assert "WENT BACK from seq 50 (at least) to seq 5" in caplog.text
    assert _append(box, 1) == [51]
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        take((1, 2), (60, 70))  # a second one in this run is not believed
    assert _append(box, 1) == [52] and "not believed (once a run)" in caplog.text
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)  # the next run believes one, but not 1000 seqs ahead
    pub.outbox = box
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        take((1, 2), (52 + 1001, 52 + 1001))
    assert _append(box, 1) == [53] and "not believed (more than outbox.max_rows=1000 ahead)" in caplog.text
    box.close()


def test_an_acknowledgement_with_an_empty_bitmap_claims_nothing_and_stops_no_other(tmp_path, caplog):
    """Well formed, no ranges and a bitmap of zeros claims no seq: it is no rewind, and it neither
    raises in the ack intake (which dropped the other collectors' acknowledgements taken with it,
    and the delivery round, every time one came) nor stops another collector's being taken."""
    import base64

    from contract.acknowledgement import Ack
    from gateway.publisher import Publisher

    site = load_site(e2e_site(tmp_path))
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000)
    _append(box, 5)
    pub = Publisher(site, box, broker_url="mqtt://127.0.0.1:1")  # never started: fed by hand
    pub._live_cursor = 5
    empty = {"schema": 1, "epoch": box.epoch, "ranges": [], "bits_from": 3, "bits": base64.b64encode(b"\0\0").decode()}
    pub._store_acks.put((b"jcm/v1/test-site/gw-test/ack/a", json.dumps(empty).encode(), False))
    pub._store_acks.put((b"jcm/v1/test-site/gw-test/ack/b", Ack(box.epoch, ((1, 2),)).to_json().encode(), False))
    with caplog.at_level(logging.ERROR):
        pub._take_store_acks()
    assert [r[0] for r in box.after(0, 10)] == [3, 4, 5] and "WENT BACK" not in caplog.text
    assert _append(box, 1) == [6]
    box.close()


def _signing_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.signing_key import SigningKey

    return SigningKey("gw-a", Ed25519PrivateKey.generate())


def _append_signed(box, n):
    return [box.append("t", lambda s: '{"schema":1,"seq":%d}' % s) for _ in range(n)]


def _no_wrong_link(held: dict[int, str], first: tuple[int, str]) -> bool:
    """Whether the first new row (seq, payload) passes the custody check a collector holding
    ``held`` (seq -> payload) makes: it follows a held seq only carrying that one's hash
    (``contract.custody.chain_breaks``: ``wrong_prev``)."""
    from contract.custody import chain_hash

    seq, payload = first
    return seq - 1 not in held or f'"prev":"{chain_hash(held[seq - 1].encode())}"' in payload


def test_a_signed_row_after_a_skip_an_acknowledgement_showed_makes_no_wrong_link(tmp_path):
    """The collector holds the seq its acknowledgement claims last, signed in the outbox's life this
    copy does not know: the first new row must not come right after it carrying another hash (a
    wrong_prev break, read as a forged link), so one seq more is left unused: a gap, as the others."""
    key = _signing_key()
    path, snapshot = tmp_path / "outbox.sqlite", tmp_path / "snapshot"
    box = Outbox(path, max_rows=100, signing=key)
    _append_signed(box, 2)
    box.close()
    snapshot.mkdir()
    for f in (path, Path(f"{path}.sequence")):  # a VM snapshot: the outbox with its sequence file
        shutil.copy(f, snapshot)
    box = Outbox(path, max_rows=100, signing=key)
    _append_signed(box, 3)
    held = {s: p for s, _, p in box.after(0, 10)}  # what the collector stored: seqs 1..5
    box.close()
    for f in snapshot.iterdir():
        shutil.copy(f, tmp_path)
    box = Outbox(path, max_rows=100, signing=key)
    box.claimed(5)
    seq = _append_signed(box, 1)[0]
    assert seq > 5 and _no_wrong_link(held, box.after(seq - 1, 1)[0][::2])
    box.close()


def test_a_signed_row_after_a_restore_follows_no_reserved_seq_the_store_may_hold(tmp_path):
    """Killed having assigned every seq of its reservation (the store holds the last), the older copy
    restored skips to the reservation: its first new row, GENESIS, must not come right after it."""
    key = _signing_key()
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=1000, signing=key)
    _append_signed(box, 2)
    box.close()
    shutil.copyfile(path, backup)
    proc = subprocess.Popen(  # seqs 3..RESERVE + 2, the reservation made at open, all of it; then SIGKILL
        [sys.executable, "-c", "import time\n"
         "from tests.test_outbox_rewind import Outbox, _append_signed, _signing_key\n"
         f"box = Outbox({str(path)!r}, max_rows=1000, durable=False, signing=_signing_key())\n"
         f"_append_signed(box, {RESERVE})\nprint(box.last_seq(), flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert int(proc.stdout.readline()) == RESERVE + 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    db = sqlite3.connect(path)
    held = dict(db.execute("SELECT seq, payload FROM outbox"))  # what the collector stored
    db.close()
    assert max(held) == json.loads(Path(f"{path}.sequence").read_text())["reserved"]
    _restore(backup, path)
    box = Outbox(path, max_rows=1000, signing=key)
    seq = _append_signed(box, 1)[0]
    assert seq > max(held) and _no_wrong_link(held, box.after(seq - 1, 1)[0][::2])
    box.close()


def test_a_signed_chain_goes_on_across_a_restore_after_a_clean_stop(tmp_path):
    """Stopped cleanly, the sequence file holds the last row's chain hash: the first new row links
    to it, so a collector holding that row finds no broken link where the outbox went back."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from contract.custody import chain_hash
    from gateway.signing_key import SigningKey

    key = SigningKey("gw-a", Ed25519PrivateKey.generate())
    body = '{"schema":1,"seq":%d}'
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=100, signing=key)
    box.append("t", lambda s: body % s)
    box.close()
    shutil.copyfile(path, backup)
    box = Outbox(path, max_rows=100, signing=key)
    box.append("t", lambda s: body % s)
    last = box.after(0, 10)[-1][2].encode()
    box.close()
    _restore(backup, path)
    box = Outbox(path, max_rows=100, signing=key)
    assert box.append("t", lambda s: body % s) == 3
    assert f'"prev":"{chain_hash(last)}"' in box.after(2, 10)[0][2]
    box.close()


def _killed_after(path: Path, first: int, then: int, backup: Path | None = None) -> int:
    """Run an outbox at ``path`` in a child with the real ``SEQUENCE_EVERY``: ``first`` appends, a backup
    of the running outbox to ``backup`` (if given), ``then`` appends more, SIGKILL. Its last seq."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom gateway.outbox import Outbox\n"
         f"box = Outbox({str(path)!r}, max_rows=1000)\n"
         f"for _ in range({first}): box.append('t', lambda s: f'm{{s}}')\n"
         "print(box.last_seq(), flush=True)\nsys.stdin.readline()\n"
         f"for _ in range({then}): box.append('t', lambda s: f'm{{s}}')\n"
         "print(box.last_seq(), flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        proc.stdout.readline()
        if backup is not None:
            live, dst = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(backup)
            live.backup(dst)
            live.close()
            dst.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_a_backup_taken_seconds_before_a_crash_reuses_no_seq(tmp_path, caplog):
    """The backup is taken within ``SEQUENCE_EVERY`` of the crash (no fsynced write of the sequence file
    since): each commit's seqs are written to the file before the commit, so the file still knows them."""
    path, backup = tmp_path / "outbox.sqlite", tmp_path / "backup.sqlite"
    box = Outbox(path, max_rows=1000)
    _append(box, 3)
    box.close()
    last = _killed_after(path, 2, 5, backup)
    assert last == 10 and _last_seq(backup) == 5
    _restore(backup, path)
    with caplog.at_level(logging.ERROR):
        box = Outbox(path, max_rows=1000)
    assert "WENT BACK from seq 10 to seq 5" in caplog.text
    assert _append(box, 1)[0] > last
    box.close()


def _other_boot(path: Path) -> None:
    """The sequence file as written before the machine restarted."""
    sequence = Path(f"{path}.sequence")
    sequence.write_text(json.dumps({**json.loads(sequence.read_bytes()), "boot": "an-earlier-boot"}))


def test_an_unclean_stop_skips_the_reservation_only_when_the_machine_restarted_since(tmp_path, caplog):
    """Killed, the machine running on: the sequence file holds every commit's seqs (written, if not
    fsynced), so the next run goes on at the next seq, no gap. Killed and the machine restarted (a
    power cut): the writes since the last fsync may be gone, and a backup of the last seconds looks like
    the outbox, so the next run starts after the reservation, one WARNING naming the seqs left unused.
    A clean stop reserves nothing beyond its last seq: no skip after a restart."""
    path = tmp_path / "outbox.sqlite"
    assert _killed_after(path, 2, 3) == 5
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, max_rows=1000)
    assert _append(box, 1) == [6] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    box.close()
    _other_boot(path)
    box = Outbox(path, max_rows=1000)
    assert _append(box, 1) == [7]  # stopped cleanly
    box.close()
    last = _killed_after(path, 1, 1)
    assert last == 9
    reserved = json.loads(Path(f"{path}.sequence").read_bytes())["reserved"]
    assert reserved == 7 + RESERVE
    _other_boot(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        box = Outbox(path, max_rows=1000)
    assert _append(box, 1) == [reserved + 1]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "did not stop cleanly" in lines[0] and f"seqs 10..{reserved} are left unused" in lines[0]
    assert box.unused == [[10, reserved]]  # for the status to name
    box.close()
    box = Outbox(path, max_rows=1000)
    assert box.unused == [[10, reserved]]  # named as long as the epoch lasts
    box.close()


def _killed_holding(path: Path, disk: Path, committed: int, held: int) -> None:
    """Run an outbox at ``path`` on the size-limited ``disk`` in a child: ``committed`` rows, the disk
    filled, ``held`` rows it holds in memory unsaved, SIGKILL; the disk freed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom gateway.outbox import Outbox\n"
         f"box = Outbox({str(path)!r}, max_rows=1000)\n"
         f"for _ in range({committed}): box.append('t', lambda s: f'm{{s}}')\n"
         "print(box.last_seq(), flush=True)\nsys.stdin.readline()\n"
         f"for _ in range({held}): box.append('t', lambda s: f'm{{s}}' + 'x' * 8000)\n"
         "print(box.unsaved, flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    filler = None
    try:
        proc.stdout.readline()
        filler = fill(disk)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) == held
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if filler is not None:
            filler.unlink()


@needs_root
def test_readings_held_unsaved_at_a_power_cut_are_not_said_left_unused(tmp_path, caplog):
    """The disk refused commits and the gateway held readings in memory (seqs given, not saved) when
    the power was cut (modelled: SIGKILL, then the boot id the sequence file records changed). Before,
    their seqs were named left unused (no reading given them: info in the month's QA) with the rest of
    the reservation: a loss explained away. Now the sequence file knows (fsynced, in place: the one write
    a full disk allows) which seqs rows held have, and those are a gap of readings lost, said once as an
    ERROR; only the others of the reservation are left unused."""
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        path = disk / "outbox.sqlite"
        box = Outbox(path, max_rows=1000)
        _append(box, 2)
        box.close()
        _killed_holding(path, disk, 1, 5)  # seqs 4..8 held
        reserved = json.loads(Path(f"{path}.sequence").read_bytes())["reserved"]
        assert "seqs 4..8 were held in memory unsaved" in check_sequence_file(path, None).detail  # jcm doctor
        _other_boot(path)
        with caplog.at_level(logging.WARNING):
            box = Outbox(path, max_rows=1000)
        assert _append(box, 1) == [reserved + 1]
        assert box.unused == [[9, reserved]]  # the status does not name 4..8: the collectors' gap says lost
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
        assert [level for level, _ in said] == [logging.WARNING, logging.ERROR], said
        assert f"seqs 9..{reserved} are left unused" in said[0][1]
        assert "seqs 4..8, held in memory unsaved, are lost" in said[1][1]
        box.close()


@needs_root
def test_the_seqs_of_readings_held_unsaved_when_the_gateway_stopped_are_not_given_again(tmp_path, caplog):
    """Killed (the machine running on), or stopped while the disk still refused commits, the gateway lost
    the readings it held in memory. Before, the next run gave their seqs to new readings: the loss left no
    gap, only a log line. Now they are a gap (one ERROR), and no seq is named left unused."""
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        path = disk / "outbox.sqlite"
        _killed_holding(path, disk, 2, 3)  # seqs 3..5 held
        with caplog.at_level(logging.WARNING):
            box = Outbox(path, max_rows=1000)
        assert _append(box, 1) == [6]
        assert box.unused == []
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(said) == 1 and said[0][0] == logging.ERROR and "killed" in said[0][1]
        assert "seqs 3..5, held in memory unsaved, are lost" in said[0][1]
        filler = fill(disk)
        for _ in range(2):
            box.append("t", lambda s: f"m{s}" + "x" * 8000)  # 7..8 held
        box.close()  # the disk still full: they are lost
        filler.unlink()
        box = Outbox(path, max_rows=1000)
        assert _append(box, 1) == [9] and box.unused == []
        box.close()


@needs_root
@pytest.mark.slow
def test_readings_held_unsaved_at_a_power_cut_are_a_gap_for_review_end_to_end(tmp_path, mosquitto, simulate):
    """End to end: the gateway's readings confirmed; then its disk full, 5 readings held in memory, the power
    cut. The next run's gap over the reservation says the 5 lost and the rest left unused, and the month's
    QA sends it for review (before: all "left unused", for information only)."""
    with tiny_disk(tmp_path / "disk", "4m") as disk:
        site = load_site(e2e_site(tmp_path, path=str(disk / "outbox.sqlite")))
        simulate(site)
        path = Path(site.outbox.path)
        c = collector(mosquitto, tmp_path, gap_grace_s=0.5)
        try:
            gw = Gateway(site, broker_url=mosquitto.url)
            gw.start()
            assert wait_until(lambda: c.stored >= 20)
            last = finish(gw)
            _killed_holding(path, disk, 0, 5)  # seqs last+1..last+5 held
            reserved = json.loads(Path(f"{path}.sequence").read_bytes())["reserved"]
            _other_boot(path)
            gw = Gateway(site, broker_url=mosquitto.url)
            assert gw.outbox.unused == [[last + 6, reserved]]
            gw.start()
            assert wait_until(lambda: gw.outbox.last_seq() > reserved + 20)
            finish(gw)
            assert wait_until(lambda: any(f.kind == "gap" for f in c.store.sequence_findings(gateway=GATEWAY)), 10)
            [gap] = [f for f in c.store.sequence_findings(gateway=GATEWAY) if f.kind == "gap"]
        finally:
            c.stop()
    assert [gap.first, gap.last, gap.explained] == [last + 1, reserved, reserved - last - 5], gap
    assert "left unused by the gateway" in gap.cause and "lost" in gap.cause, gap.cause
    noticed = pd.Timestamp(gap.noticed)
    [qa] = sequence_findings([gap], noticed - pd.Timedelta(days=1), noticed + pd.Timedelta(days=1))
    assert qa.severity == "review"


@pytest.mark.slow
def test_seqs_left_unused_after_a_power_cut_are_a_gap_the_collector_names_as_unused(tmp_path, mosquitto, simulate):
    """End to end: the gateway killed (its outbox opened, nothing committed since), the machine restarted;
    the next run skips the reservation, its status names the range, and the collector's gap over it is
    explained by it (for information, not review), not taken for readings lost on the way."""
    site = load_site(e2e_site(tmp_path))
    simulate(site)
    path = Path(site.outbox.path)
    c = collector(mosquitto, tmp_path, gap_grace_s=0.5)
    try:
        gw = Gateway(site, broker_url=mosquitto.url)
        gw.start()
        assert wait_until(lambda: c.stored >= 20)
        last = finish(gw)
        assert _killed_after(path, 0, 0) == last
        _other_boot(path)
        gw = Gateway(site, broker_url=mosquitto.url)
        skipped = [last + 1, last + RESERVE]
        assert gw.outbox.unused == [skipped]
        gw.start()
        assert wait_until(lambda: gw.outbox.last_seq() > last + RESERVE + 20)
        finish(gw)
        assert wait_until(lambda: any(f.kind == "gap" for f in c.store.sequence_findings(gateway=GATEWAY)), 10)
        [gap] = [f for f in c.store.sequence_findings(gateway=GATEWAY) if f.kind == "gap"]
    finally:
        c.stop()
    assert [gap.first, gap.last] == skipped and gap.explained == RESERVE
    assert "left unused by the gateway" in gap.cause and "lost" not in gap.cause, gap.cause
    assert set(stored(tmp_path).values()) == {1}
    noticed = pd.Timestamp(gap.noticed)
    [qa] = sequence_findings([gap], noticed - pd.Timedelta(days=1), noticed + pd.Timedelta(days=1))
    assert qa.severity == "info"  # the month is not sent for review over seqs no reading had
