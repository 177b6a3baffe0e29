"""Long work shows progress and time left: a bar on a terminal, log lines otherwise
(`jcm process` over many months, `jcm export`, simulated history)."""

import datetime as dt
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from simulators.history import history
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, fill_history, reference_site

pytestmark = pytest.mark.slow

FIRST, LAST = dt.date(2025, 6, 1), dt.date(2025, 8, 31)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """Three months of mn-solar, hourly (enough to process; the figures do not matter here)."""
    path = tmp_path_factory.mktemp("progress") / "jcm.db"
    store = SqliteStore(path)
    fill_history(store, reference_site("mn-solar"), FIRST, LAST, step_s=3600)
    store.close()
    return f"sqlite:///{path}"


def jcm_args(tmp_path, store_url, *command):
    return [sys.executable, "-m", "jcm.cli", *command, "--site", "mn-solar", "--store", store_url,
            "--ledger", str(tmp_path / "ledger.sqlite")]


def test_process_over_months_logs_progress_and_time_left(tmp_path, store_url):
    res = subprocess.run(jcm_args(tmp_path, store_url, "process", "--month", "2025-06..2025-08") + ["--create-ledger"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert [m["month"] for m in json.loads(res.stdout)] == ["2025-06", "2025-07", "2025-08"]
    lines = [line.split(": ", 1)[1] for line in res.stderr.splitlines() if "jcm.progress" in line]
    assert lines[0].startswith("process mn-solar: 1/3 months (33%), 2025-06, ") and lines[0].endswith(" s left")
    assert lines[-1].startswith("process mn-solar: 3/3 months done in ")

    res = subprocess.run(jcm_args(tmp_path, store_url, "export", "--from", "2025-06-01", "--to", "2025-08-31", "--out",
                                  str(tmp_path / "out")), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [line.split(": ", 1)[1] for line in res.stderr.splitlines() if "jcm.progress" in line]
    assert lines[0].startswith("export mn-solar 2025-06-01..2025-08-31: 1/7 steps (14%), monthly figures, ")
    assert lines[-1].startswith("export mn-solar 2025-06-01..2025-08-31: 7/7 steps done in ")


def run_on_a_terminal(argv) -> str:
    """Run with stderr on a pseudo-terminal; what it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    proc.wait(60)
    os.close(master)
    assert proc.returncode == 0, out[-2000:]
    return out.decode("utf-8", "replace")


def test_process_on_a_terminal_shows_a_bar_with_time_left(tmp_path, store_url):
    out = run_on_a_terminal(jcm_args(tmp_path, store_url, "process", "--month", "2025-06..2025-08")
                            + ["--create-ledger"])
    assert "process mn-solar:  33%|" in out and "process mn-solar: 100%|" in out, out
    assert "3/3 months [" in out and " left" in out
    assert "jcm.progress" not in out  # a bar, not log lines


def test_history_reports_every_step():
    site = reference_site("mn-solar")
    seen = []
    batches = sum(1 for _ in history(site, FIRST, FIRST, step_s=3600, channels={"ac_energy"},
                                     progress=lambda done, total: seen.append((done, total))))
    assert batches == 24 and seen == [(i, 24) for i in range(1, 25)]


def test_the_processors_catch_up_reports_each_month(tmp_path):
    from processing.ledger import Ledger
    from processing.monthly import last_closed_day
    from processing.scheduler import Processor

    site = reference_site("mn-solar")
    this_month = (last_closed_day(site) + dt.timedelta(days=1)).replace(day=1)  # the month not yet closed
    first = (this_month - dt.timedelta(days=40)).replace(day=1)  # two whole past months
    store = SqliteStore(tmp_path / "jcm.db")
    fill_history(store, site, first, this_month - dt.timedelta(days=1), step_s=3600)
    seen = []
    processor = Processor([site], store, Ledger(tmp_path / "ledger.sqlite"),
                          progress=lambda done, total, label: seen.append((done, total, label)))
    assert processor.catch_up() == 2
    months = [first.strftime("%Y-%m"), (first + dt.timedelta(days=32)).strftime("%Y-%m")]
    assert seen == [(1, 2, f"mn-solar {months[0]}"), (2, 2, f"mn-solar {months[1]}")]
    store.close()


def test_a_bar_starts_no_thread(caplog):
    """tqdm's monitor thread would keep ``jcm export`` from forking its helpers on a terminal
    (it forks only where no other thread runs): the bar runs without it."""
    import io
    import logging
    import threading

    from jcm.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    import tqdm

    caplog.set_level(logging.INFO, "jcm.progress")
    before = set(threading.enumerate())  # another library's bar may have started the monitor already
    with Progress("export mn-solar", unit="step", stream=Terminal()) as progress:
        progress(1, 7, "monthly figures")
        assert progress.bar is not None
        assert set(threading.enumerate()) <= before and tqdm.tqdm.monitor_interval == 0
