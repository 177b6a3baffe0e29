"""The processes an export forks beside its own (processing.export._apart) end with it:
killed (SIGKILL, as the OOM killer or ``timeout -s KILL`` do) or interrupted (Ctrl-C reaches
the whole process group), the export's process leaves no helper behind, waiting for work
forever with a copy of its memory and its open store, and no export folder; one stuck is
killed. A disk that fills under a helper fails ``jcm export`` in one line, and the hidden
half-made folder of an export killed goes with the next export of the period.

Most tests run a real ``export_period`` in its own process (a single thread, so it forks its
helpers), whose chart drawing is made to wait so that the helpers are busy and idle when it ends."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

EXPORT = """
import datetime as dt, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test runner ignores
from store.sqlite_store import SqliteStore
import processing.export as export
from processing.export import charts, export_period
from processing.ledger import Ledger
from tests.conftest import fill_history, reference_site

work, draws_s = sys.argv[1], float(sys.argv[2])
site, first, last = reference_site("mn-solar"), dt.date(2026, 9, 28), dt.date(2026, 9, 29)
store = SqliteStore(work + "/jcm.db")
fill_history(store, site, first, last, step_s=3600)


def stuck(figures, path):
    print("drawing", flush=True)
    time.sleep(draws_s)
    open(work + "/drawn", "w").close()


charts.completeness_chart = stuck
export.STUCK_S = 3.0  # a second or two to spare on a busy machine
export_period(site, store, Ledger(work + "/ledger.sqlite"), first, last, work + "/out")
"""


def _children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def drawing(tmp_path, request):
    """An export process (its own process group) whose helper is drawing (for ``request.param``
    seconds); its two helpers' pids."""
    proc = subprocess.Popen([sys.executable, "-c", EXPORT, str(tmp_path), str(request.param)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    helpers: set[int] = set()
    try:
        assert proc.stdout.readline() == "drawing\n", proc.stderr.read()
        assert wait_until(lambda: len(_children(proc.pid)) == 2, 10)
        helpers = _children(proc.pid)
        yield proc, helpers
    finally:
        for pid in helpers | {proc.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("drawing", [120], indirect=True)
def test_helpers_end_when_the_export_process_is_killed(drawing, tmp_path):
    proc, helpers = drawing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_until(lambda: not any(_alive(pid) for pid in helpers), 10), "helpers left running"
    # the half-made folder is hidden (a dot name, ``.partial-<pid>``): no export folder appears
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("drawing", [0.5, 120], indirect=True)
def test_ctrl_c_ends_the_export_and_its_helpers_with_one_traceback(drawing, tmp_path, request):
    """The helper drawing finishes (0.5 s) or, stuck (120 s), is killed once ``STUCK_S`` (3 s here)
    have passed; the weeks not begun are dropped."""
    proc, helpers = drawing
    drawing_s = request.node.callspec.params["drawing"]
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the foreground group
    _, err = proc.communicate(timeout=30)
    assert err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
    assert wait_until(lambda: not any(_alive(pid) for pid in helpers), 10), "helpers left running"
    assert list((tmp_path / "out").iterdir()) == []
    assert (tmp_path / "drawn").exists() == (drawing_s < 1)  # the one stuck was killed, not the other


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")
def test_a_disk_that_fills_while_a_helper_writes_fails_the_export_in_one_line_leaving_nothing(tmp_path, monkeypatch,
                                                                                             capsys):
    import datetime as dt

    import processing.export as export
    from jcm.cli import main
    from processing.export import charts
    from processing.ledger import Ledger
    from store.sqlite_store import SqliteStore
    from tests.conftest import fill_history, reference_site
    from tests.test_outbox_full_disk import fill, tiny_disk

    first, last = dt.date(2026, 9, 28), dt.date(2026, 9, 29)
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, reference_site("mn-solar"), first, last, step_s=3600)
    store.close()
    Ledger(tmp_path / "ledger.sqlite").close()
    real = charts.completeness_chart
    monkeypatch.setattr(export.threading, "active_count", lambda: 1)  # pytest's own threads aside: forked
    with tiny_disk(tmp_path / "disk", "2M") as disk:
        monkeypatch.setattr(charts, "completeness_chart", lambda figures, path: fill(disk) and real(figures, path))
        assert main(["export", "--site", "mn-solar", "--from", first.isoformat(), "--to", last.isoformat(),
                     "--out", str(disk / "out"), "--store", f"sqlite:///{tmp_path / 'jcm.db'}",
                     "--ledger", str(tmp_path / "ledger.sqlite")]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        said = [line for line in err.splitlines() if line.startswith("jcm export:")]
        assert len(said) == 1 and "No space left on device" in said[0] and "nothing was exported" in said[0], err
        assert list((disk / "out").iterdir()) == []


@pytest.mark.parametrize("drawing", [120], indirect=True)
def test_the_next_export_removes_the_half_made_folder_of_one_killed(drawing, tmp_path):
    """What a killed export left (hidden, never taken for an export) goes with the next export of
    the period; that of one still running is left to it."""
    import datetime as dt

    from processing.export import export_period
    from processing.ledger import Ledger
    from store.sqlite_store import SqliteStore
    from tests.conftest import reference_site

    proc, helpers = drawing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = tmp_path / "out"
    [killed] = out.iterdir()
    running = out / killed.name.replace(f"partial-{proc.pid}", f"partial-{os.getppid()}")
    running.mkdir()
    store = SqliteStore(tmp_path / "jcm.db")
    folder = export_period(reference_site("mn-solar"), store, Ledger(tmp_path / "ledger.sqlite"), dt.date(2026, 9, 28),
                           dt.date(2026, 9, 29), out)
    store.close()
    assert sorted(p.name for p in out.iterdir()) == sorted([folder.name, running.name])


STOPPED = """
import datetime as dt, sys
from store.sqlite_store import SqliteStore
import processing.export as export
from processing.export import charts, csv_files
from processing.ledger import Ledger
from jcm.cli import main
from tests.conftest import fill_history, reference_site

work = sys.argv[1]
first, last = dt.date(2026, 9, 28), dt.date(2026, 9, 29)
store = SqliteStore(work + "/jcm.db")
fill_history(store, reference_site("mn-solar"), first, last, step_s=3600)
store.close()
Ledger(work + "/ledger.sqlite").close()
real = charts.completeness_chart


def drawn_after_a_word(figures, path):
    print("drawing", flush=True)
    sys.stdin.readline()  # the test stops the helpers meanwhile
    return real(figures, path)


charts.completeness_chart = drawn_after_a_word
export.STUCK_S, csv_files.HUNG_S = 3.0, 3.0
sys.exit(main(["export", "--site", "mn-solar", "--from", first.isoformat(), "--to", last.isoformat(), "--out",
               work + "/out", "--store", f"sqlite:///{work}/jcm.db", "--ledger", work + "/ledger.sqlite"]))
"""


def test_a_helper_stopped_fails_the_export_in_one_line_within_a_bound(tmp_path):
    """A helper stopped (SIGSTOP), or hung, neither killed nor interrupted, held ``jcm export`` for
    ever, waiting for its result. The export now waits ``HUNG_S`` (3 s here) for a result at most,
    then kills its helpers, exits non-zero with one line, and leaves no export, not even a half-made one."""
    import time

    proc = subprocess.Popen([sys.executable, "-c", STOPPED, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    helpers: set[int] = set()
    try:
        assert proc.stdout.readline() == "drawing\n", proc.stderr.read()
        assert wait_until(lambda: len(_children(proc.pid)) == 2, 10)
        helpers = _children(proc.pid)
        for pid in helpers:
            os.kill(pid, signal.SIGSTOP)
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        stopped = time.monotonic()
        try:
            out, err = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail("jcm export waits for its stopped helpers for ever")
        assert time.monotonic() - stopped < 30
        lines = [line for line in err.splitlines() if line.startswith("jcm export:")]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("jcm export: mn-solar_2026-09-28_2026-09-29: a process making the charts")
        assert "gave no result for 3 s (stopped or hung)" in lines[0] and "nothing was exported" in lines[0]
        assert wait_until(lambda: not any(_alive(pid) for pid in helpers), 10), "helpers left stopped"
        assert list((tmp_path / "out").iterdir()) == []
    finally:
        for pid in helpers | {proc.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("frozen", [False, True])
def test_the_export_leaves_the_garbage_collector_frozen_as_it_found_it(monkeypatch, frozen):
    """The export freezes its heap before it forks its helpers, and unfroze it after: a caller that
    had frozen objects itself (a long-running process embedding the export) had them unfrozen."""
    import gc

    import processing.export as export

    monkeypatch.setattr(export.threading, "active_count", lambda: 1)  # pytest's own threads aside: forked
    mine = [["the caller's"]]
    if frozen:
        gc.freeze()
    try:
        with export._apart(None) as apart:
            assert apart.submit(os.getpid).result() != os.getpid()
        # the collector's generations hold every tracked object but the frozen ones
        assert any(o is mine for o in gc.get_objects()) != frozen
        assert (gc.get_freeze_count() > 0) == frozen
    finally:
        gc.unfreeze()


SLOW = STOPPED.replace("sys.stdin.readline()  # the test stops the helpers meanwhile", "time.sleep(2)").replace(
    "import datetime as dt, sys", "import datetime as dt, sys, time")


def test_an_export_stopped_with_its_helpers_longer_than_the_bound_goes_on_when_continued(tmp_path):
    """Ctrl-Z stops the whole process group, the export's process and its helpers with it; continued
    (fg, bg) after more than ``HUNG_S``, the export's wait for a result was past its deadline at once,
    the helper, just continued, had not given it yet: a healthy export failed as hung. Only the time
    the export's process runs counts now."""
    import time

    proc = subprocess.Popen([sys.executable, "-c", SLOW, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "drawing\n", proc.stderr.read()
        time.sleep(0.5)  # the export's process reaches its wait for the drawing (two days' readings)
        assert proc.poll() is None, proc.stderr.read()
        os.killpg(proc.pid, signal.SIGSTOP)  # as Ctrl-Z does
        time.sleep(5)  # past HUNG_S (3 s here)
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["mn-solar_2026-09-28_2026-09-29"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
