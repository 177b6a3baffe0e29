"""One gateway per outbox: a second gateway (or ``--new-outbox``) on an outbox another has open
is refused at start, naming the file and the pid holding it, and touches nothing; the first
runs on. The lock is a flock on the outbox file itself, so it goes with its process however
it dies, and it follows the file the committer puts back at its path."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import load_site
from gateway import outbox as outbox_module
from gateway.outbox import Outbox, OutboxInUse
from gateway.service import Gateway
from tests.conftest import REPO, free_port, tcp_device, wait_until, write_site
from tests.test_data_files import jcm, one_line_naming
from tests.test_rtu import bus_site, serial_pair  # noqa: F401 -- fixtures


def _last_seq(path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:  # a new file, its tables not made yet
        return 0
    finally:
        db.close()


def _names(where):
    return sorted(p.name for p in where.iterdir())


@pytest.mark.slow
def test_a_second_gateway_on_one_outbox_is_refused_and_the_first_runs_on(tmp_path, mosquitto, simulate):
    site = write_site(tmp_path / "cfg", [tcp_device("m1", "power_meter_3ph", free_port(), interval=0.2)])
    simulate(load_site(site))
    data = tmp_path / "data"
    path = data / "outbox.sqlite"
    args = ["gateway", "--site", site, "--outbox", path, "--broker", mosquitto.url]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "-m", "jcm.cli", *map(str, [*args, "--duration", 60])], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: path.exists() and _last_seq(path) >= 2, 20)
        inode, names = path.stat().st_ino, _names(data)
        for extra in ([], ["--new-outbox"]):
            res = jcm(*args, "--duration", 1, *extra)
            one_line_naming(res, str(path), "in use by another gateway", f"pid {first.pid}")
            assert res.returncode == 1  # the unit tries again: the other may be one started by hand
            assert (path.stat().st_ino, _names(data)) == (inode, names), "the refused gateway touched the outbox"
        seq = _last_seq(path)
        assert wait_until(lambda: _last_seq(path) > seq + 2, 20)  # the first gateway polls and commits on
        assert (path.stat().st_ino, _names(data)) == (inode, names)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert "ERROR" not in err, err


def test_a_killed_gateways_lock_goes_with_it(tmp_path):
    """SIGKILL leaves no stale lock: the next gateway (a systemd restart) opens the outbox, rows kept."""
    path = tmp_path / "outbox.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom gateway.outbox import Outbox\n"
         f"box = Outbox({str(path)!r}, max_rows=100)\nbox.append('t', lambda s: f'm{{s}}')\n"
         "print('open', flush=True)\ntime.sleep(600)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(OutboxInUse, match=f"pid {holder.pid}"):
            Outbox(path, max_rows=100)
    finally:
        holder.kill()
        holder.wait(10)
    box = Outbox(path, max_rows=100)
    assert [r[2] for r in box.after(0, 10)] == ["m1"]
    box.close()
    Outbox(path, max_rows=100).close()  # and a clean stop lets go of it too


def test_the_lock_follows_the_outbox_put_back_at_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_module, "PATH_CHECK_EVERY", 0.05)
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_rows=100)
    box.append("t", lambda s: f"m{s}")
    inode = path.stat().st_ino
    os.unlink(path)
    assert wait_until(lambda: path.exists() and path.stat().st_ino != inode, 5)
    box.append("t", lambda s: f"m{s}")  # the committer has reopened it: the restore is complete
    with pytest.raises(OutboxInUse, match=str(path)):
        Outbox(path, max_rows=100)
    box.close()


def _gone_and_made_again(tmp_path, monkeypatch) -> tuple[Path, Outbox, Outbox]:
    """An open outbox holding "a1" deleted, and a second gateway's new outbox at its path; the first
    checks its path only when told."""
    monkeypatch.setattr(outbox_module, "PATH_CHECK_EVERY", 3600)
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path, max_rows=100)
    first.append("t", lambda s: f"a{s}")
    for end in ("", "-wal", "-shm"):
        os.unlink(f"{path}{end}")
    return path, first, Outbox(path, max_rows=100)


def test_a_gateway_started_while_the_file_was_gone_is_not_moved_aside(tmp_path, monkeypatch, caplog):
    """A deleted outbox, a second gateway started meanwhile on a new file at the path: the first must
    not move that live outbox aside (each would move the other's aside at every check, spreading one
    sequence over files and leaving rows unsent); it goes on in its own copy beside it, CRITICAL."""
    path, first, second = _gone_and_made_again(tmp_path, monkeypatch)
    second.append("t", lambda s: f"b{s}")
    inode = path.stat().st_ino
    with first._lock:
        first._check_path()
    assert path.stat().st_ino == inode and not list(tmp_path.glob("*.replaced-*"))
    assert first.path != str(path) and first.path.startswith(f"{path}.restore-")
    assert "in use by another gateway" in caplog.text
    first.append("t", lambda s: f"a{s}")
    assert [r[2] for r in first.after(0, 10)] == ["a1", "a2"]
    assert [r[2] for r in second.after(0, 10)] == ["b1"]
    with second._lock:
        second._check_path()  # the second's file is where it left it: nothing to do
    assert path.stat().st_ino == inode
    first.close()
    second.close()
    kept = Outbox(first.path, max_rows=100)
    assert [r[2] for r in kept.after(0, 10)] == ["a1", "a2"]
    kept.close()


def test_a_gateway_gone_on_in_its_copy_keeps_its_sequence_file_beside_the_copy(tmp_path, monkeypatch):
    """The sequence file beside the path is the other gateway's, whose outbox is there: written by
    both, it named the wrong epoch in turn, and neither could tell its outbox restored from a backup."""
    path, first, second = _gone_and_made_again(tmp_path, monkeypatch)
    with first._lock:
        first._check_path()
    assert first.path.startswith(f"{path}.restore-")
    second.close()
    first.close()
    epoch_at = {where: json.loads(open(f"{where}.sequence").read())["epoch"] for where in (path, first.path)}
    assert epoch_at == {path: second.epoch, first.path: first.epoch}


@pytest.mark.parametrize("existing, racer", [(True, "new-outbox"), (False, "new-outbox"), (False, "second gateway")])
def test_an_outbox_is_locked_before_sqlite_opens_it(tmp_path, monkeypatch, existing, racer):
    """`--new-outbox` run at the instant a gateway (restarted by its unit) has opened the file but not
    yet locked it moved the file aside under it: the gateway then locked whatever was at the path and
    wrote its readings to the file set aside (or stopped, exit 2). A missing outbox was made by SQLite
    and locked just after: `--new-outbox` or a second gateway run in between moved it aside or opened it
    too. The lock is taken before SQLite opens an existing outbox, and ``hold`` makes a missing one and
    locks it first, so the racer is refused."""
    path = tmp_path / "outbox.sqlite"
    if existing:
        box = Outbox(path, max_rows=100)
        box.append("t", lambda s: f"a{s}")
        box.close()
    real, refused = outbox_module.open_sqlite, []

    def opening(*args, **kwargs):
        db = real(*args, **kwargs)
        monkeypatch.setattr(outbox_module, "open_sqlite", real)  # the racer opens as any gateway does
        try:
            if racer == "new-outbox":
                outbox_module.move_aside(path)  # `jcm gateway --new-outbox`, now
            else:
                Outbox(path, max_rows=100).close()
        except OutboxInUse:
            refused.append(True)
        return db

    monkeypatch.setattr(outbox_module, "open_sqlite", opening)
    box = Outbox(path, max_rows=100)
    monkeypatch.undo()
    assert refused and not list(tmp_path.glob("*.corrupt-*"))
    box.append("t", lambda s: f"a{s}")
    box.close()
    if existing:
        box = Outbox(path, max_rows=100)
        assert [r[2] for r in box.after(0, 10)] == ["a1", "a2"]
        box.close()


_NO_FLOCK = """import errno, fcntl, os
def flock(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
fcntl.flock = flock
"""


@pytest.mark.parametrize("existing", [True, False])
def test_an_outbox_on_a_filesystem_without_flock_is_refused_in_one_line(tmp_path, existing):
    """Some NFS and FUSE mounts have no flock (ENOLCK): one gateway per outbox cannot be guaranteed,
    so the gateway says so in one line naming the outbox, exits non-zero, and changes nothing."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_NO_FLOCK)  # only the child process loses flock
    site = write_site(tmp_path / "cfg", [tcp_device("m1", "power_meter_3ph", free_port())])
    data = tmp_path / "data"
    data.mkdir()
    path = data / "outbox.sqlite"
    if existing:
        box = Outbox(path, max_rows=100)
        box.append("t", lambda s: f"a{s}")
        box.close()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in data.iterdir()}
    res = subprocess.run([sys.executable, "-m", "jcm.cli", "gateway", "--site", str(site), "--outbox", str(path),
                          "--broker", f"mqtt://127.0.0.1:{free_port()}", "--duration", "1"],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{REPO}"),
                         capture_output=True, text=True, timeout=60)
    one_line_naming(res, str(path), "cannot be locked", "one gateway per outbox cannot be guaranteed")
    assert res.returncode == 2
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in data.iterdir()} == before


def test_a_second_gateway_on_an_rtu_bus_is_refused_before_it_touches_the_bus(bus_site, simulate, tmp_path):
    """Two gateways on one RS-485 bus would take each other's answers: the second, refused by the
    outbox, never opens the serial port, and the first's devices keep answering."""
    site, ports = bus_site
    simulate(site, ports)
    path = str(tmp_path / "outbox.sqlite")
    first = Gateway(site, broker_url=f"mqtt://127.0.0.1:{free_port()}", outbox_path=path)
    first.start()
    try:
        assert wait_until(lambda: first.polls >= 4, 20)
        with pytest.raises(OutboxInUse, match=f"pid {os.getpid()}"):
            Gateway(site, outbox_path=path)
        polled = first.outbox.last_seq()
        assert wait_until(lambda: first.outbox.last_seq() >= polled + 6, 20)
        good = [json.loads(p) for _, _, p in first.outbox.after(polled, 100)]
        assert all(r["status"] == "ok" for r in good if r["device"] == "meter"), good
    finally:
        first.stop()


def test_a_refused_gateway_does_not_remove_the_new_outbox_the_other_gateway_locked(tmp_path, monkeypatch):
    """Two gateways started at once on a missing outbox: one makes the file, the other finds it made
    and locks it before the maker does. The maker, refused, removed the file it had made, though the
    other held it: that one went on in a file no longer at the path, unlocked there for a third."""
    path = tmp_path / "outbox.sqlite"
    real, other = outbox_module.fcntl, []

    class Racing:  # the other gateway locks the file between its making and the maker's flock
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def flock(fd, op):
            if not other:
                monkeypatch.setattr(outbox_module, "fcntl", real)
                other.append(outbox_module.hold(path, create=True))
            return real.flock(fd, op)

    monkeypatch.setattr(outbox_module, "fcntl", Racing())
    with pytest.raises(OutboxInUse, match=str(path)):
        outbox_module.hold(path, create=True)
    try:
        assert path.exists() and path.stat().st_ino == os.fstat(other[0]).st_ino, \
            "the refused gateway removed the outbox the other one holds"
        with pytest.raises(OutboxInUse, match=str(path)):
            Outbox(path, max_rows=100)  # a third gateway is refused too
    finally:
        os.close(other[0])
