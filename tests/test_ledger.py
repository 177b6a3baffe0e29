"""The ledger: a revision per change of inputs, nothing new for a re-run, sign-off is
final, rows cannot be edited; the schedule's catch-up; the process command."""

import datetime as dt
import json
import sqlite3
import subprocess
import sys

import pytest

from contract.config import load_site
from processing.ledger import Ledger, SignedOff
from processing.monthly import RESULT_DEVICE, process_month
from processing.scheduler import Processor, months_to_catch_up
from simulators.history import history
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, fill_history

SITE = load_site(REPO / "config" / "sites" / "mn-solar.yaml")


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "jcm.db")
    fill_history(s, SITE, dt.date(2026, 9, 30), dt.date(2026, 10, 31))
    yield s
    s.close()


def test_rerun_on_unchanged_data_records_nothing_and_late_data_makes_a_revision(store, tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _, r1 = process_month(SITE, store, ledger, "2026-10")
    _, r2 = process_month(SITE, store, ledger, "2026-10")
    assert r1.new and not r2.new and r2.revision == 1
    assert r1.status == "verified" and r1.result["summary"]["input_hash"] == r2.input_hash
    late = [b for b in history(SITE, dt.date(2026, 10, 31), dt.date(2026, 10, 31), step_s=600)][5]
    store.write(late)  # late readings for Oct 31 arrive
    _, r3 = process_month(SITE, store, ledger, "2026-10")
    assert r3.new and r3.revision == 2 and r3.input_hash != r1.input_hash
    assert [r.revision for r in ledger.revisions(SITE.site, "2026-10")] == [1, 2]
    figures = store.latest(SITE.site)
    assert set(figures[figures.device == RESULT_DEVICE].channel) >= {"ER", "RE", "result_status", "revision"}


def test_signed_off_month_is_never_changed(store, tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    process_month(SITE, store, ledger, "2026-10")
    assert ledger.sign_off(SITE.site, "2026-10", "A. Verifier") == 1
    store.write(next(iter(history(SITE, dt.date(2026, 10, 15), dt.date(2026, 10, 15), step_s=7)))[:1])
    result, revision = process_month(SITE, store, ledger, "2026-10")
    assert revision is None and len(ledger.revisions(SITE.site, "2026-10")) == 1
    with pytest.raises(SignedOff):
        ledger.sign_off(SITE.site, "2026-10", "someone else")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger._db.execute("UPDATE revisions SET ER = ER + 1000")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger._db.execute("DELETE FROM revisions")


def test_catch_up_processes_every_past_month_without_a_result(store, tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    today = dt.date(2026, 11, 29)
    assert months_to_catch_up(SITE, store, ledger, today) == ["2026-09", "2026-10"]
    proc = Processor([SITE], store, ledger)
    assert proc.catch_up() == 2
    assert months_to_catch_up(SITE, store, ledger, today) == []
    assert ledger.latest(SITE.site, "2026-10").status == "verified"


def test_schedule_uses_site_time_zone_and_generous_misfire_grace(store, tmp_path):
    proc = Processor([SITE], store, Ledger(tmp_path / "ledger.sqlite"))
    proc.start()
    try:
        job = proc.scheduler.get_job("month-mn-solar")
        assert str(job.trigger.timezone) == "Asia/Ulaanbaatar"
        nxt = job.next_run_time
        assert (nxt.day, nxt.hour, nxt.minute) == (1, 3, 0)
        assert job.misfire_grace_time >= 86400 and job.coalesce and job.max_instances == 1
        assert proc.scheduler.get_job("mtd-mn-solar").next_run_time.hour == 2
    finally:
        proc.stop()


def test_process_and_signoff_commands(store, tmp_path):
    store.close()
    args = ["--store", f"sqlite:///{tmp_path}/jcm.db", "--ledger", str(tmp_path / "l.sqlite")]
    out = subprocess.run([sys.executable, "-m", "jcm.cli", "process", "--site", "mn-solar", "--month", "2026-10", *args,
                          "--create-ledger"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    res = json.loads(out)
    assert res["status"] == "verified" and res["revision"] == 1 and res["new_revision"] and res["ER"] > 0
    ok = subprocess.run([sys.executable, "-m", "jcm.cli", "signoff", "--site", "mn-solar", "--month", "2026-10",
                         "--by", "MRV Staff", "--ledger", str(tmp_path / "l.sqlite")], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "revision 1 signed off by MRV Staff" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "jcm.cli", "process", "--site", "nowhere", "--month", "2026-10", *args],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "no site 'nowhere'" in bad.stderr


def test_a_month_not_over_yet_is_not_a_ledger_revision(store, tmp_path):
    this_month = dt.datetime.now(SITE.zone).strftime("%Y-%m")
    with pytest.raises(ValueError, match="not over yet"):
        process_month(SITE, store, Ledger(tmp_path / "l.sqlite"), this_month)


def test_a_store_that_cannot_be_read_now_is_one_error_line_not_a_traceback(tmp_path, caplog):
    """The daemon's scheduled run meets a store it cannot use (down, or refusing a query):
    one ERROR naming the site, month and reason, nothing recorded, and it carries on."""
    import logging

    from jcm.broker import free_port
    from store import open_store

    store = open_store(f"influxdb://127.0.0.1:{free_port()}?api=v1&db=jcm&timeout=1")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with caplog.at_level(logging.ERROR):
        Processor([SITE], store, ledger).run_month(SITE, "2026-10")
        Processor([SITE], store, ledger).run_month_to_date(SITE)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info is None for r in errors), [r.getMessage() for r in errors]
    assert errors[0].getMessage().startswith("mn-solar 2026-10: not processed now: the store cannot be used")
    assert "InfluxDB" in errors[0].getMessage() and ledger.latest(SITE.site, "2026-10") is None
