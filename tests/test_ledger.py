"""The ledger: a revision per change of inputs, nothing new for a re-run, sign-off is
final, rows cannot be edited; the schedule's catch-up; the process command."""

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import load_site
from processing import ledger as ledger_code
from processing.ledger import Ledger, SignedOff
from processing.monthly import RESULT_DEVICE, last_closed_day, process_month
from processing.scheduler import Processor, months_to_catch_up
from simulators.history import history
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, fill_history, rewrite_channel

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
    """The readings run from 30 September to 31 October 2026: those months, and every month
    closed since (today's clock: without readings, caught up as failed)."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert months_to_catch_up(SITE, store, ledger, dt.date(2026, 11, 29)) == ["2026-09", "2026-10"]
    today = last_closed_day(SITE) + dt.timedelta(days=1)
    due = months_to_catch_up(SITE, store, ledger, today)
    assert due[:2] == ["2026-09", "2026-10"] and len(due) == len(set(due))
    proc = Processor([SITE], store, ledger)
    assert proc.catch_up() == len(due)
    assert months_to_catch_up(SITE, store, ledger, today) == []
    assert ledger.latest(SITE.site, "2026-10").status == "verified"
    assert all(ledger.latest(SITE.site, m).status == "failed" for m in due[2:])


def test_a_month_is_recorded_only_once_the_readings_it_reads_of_the_next_are_in(store, tmp_path):
    """A month is read with EDGE (6 h) of the next: recorded at 03:00 on day 1, its revision lacked
    readings that an export made later held, and ``jcm verify`` found the export's input hash not
    the revision's (the demo's export failed so from 16:00 UTC on 30 November)."""
    zone = SITE.zone
    assert last_closed_day(SITE, dt.datetime(2026, 11, 1, 5, 59, tzinfo=zone)) == dt.date(2026, 10, 30)
    assert last_closed_day(SITE, dt.datetime(2026, 11, 1, 6, 0, tzinfo=zone)) == dt.date(2026, 10, 31)
    # the site's time (UTC+8), whatever the zone of the clock's reading
    assert last_closed_day(SITE, dt.datetime(2026, 10, 31, 21, 59, tzinfo=dt.UTC)) == dt.date(2026, 10, 30)
    assert last_closed_day(SITE, dt.datetime(2026, 10, 31, 22, 0, tzinfo=dt.UTC)) == dt.date(2026, 10, 31)
    this_month = (last_closed_day(SITE) + dt.timedelta(days=1)).replace(day=1)
    with pytest.raises(ValueError, match="is not over yet: its readings are read up to 6 h into the next month"):
        process_month(SITE, store, Ledger(tmp_path / "ledger.sqlite"), this_month.strftime("%Y-%m"))


def test_schedule_uses_site_time_zone_and_generous_misfire_grace(store, tmp_path):
    proc = Processor([SITE], store, Ledger(tmp_path / "ledger.sqlite"))
    proc.start()
    try:
        job = proc.scheduler.get_job("month-mn-solar")
        assert str(job.trigger.timezone) == "Asia/Ulaanbaatar"
        nxt = job.next_run_time
        assert (nxt.day, nxt.hour, nxt.minute) == (1, 7, 0)  # after EDGE of the new month
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
    # on the 1st there is no month to date (nothing is read)
    expected = 1 if dt.datetime.now(SITE.zone).day == 1 else 2
    assert len(errors) == expected and all(r.exc_info is None for r in errors), [r.getMessage() for r in errors]
    assert errors[0].getMessage().startswith("mn-solar 2026-10: not processed now: the store cannot be used")
    assert "InfluxDB" in errors[0].getMessage() and ledger.latest(SITE.site, "2026-10") is None


def october_readings(site) -> list:
    """Readings every 15 minutes of the site's monitored channels from 30 September to 1 November 2026
    (UTC), made by formula rather than by the simulator, so that a ledger file made from them by
    an earlier version of the code (tests/data/) stays reproducible: counters rising at steady
    rates (values with 17 significant digits among them), a power reading flagged out of range
    and one missing."""
    from contract.message import Quality, Reading

    start = dt.datetime(2026, 9, 30, tzinfo=dt.UTC)
    out = []
    for i in range(33 * 96):
        ts = start + dt.timedelta(minutes=15 * i)
        sources = {src.split(".")[0]: {} for src in site.monitoring_sources}
        for src in site.monitoring_sources:
            device, channel = src.split(".")
            sources[device][channel] = -1500.0 - (i % 7) / 3 if channel == "active_power" else 375.0 * i + 0.1 + i / 3
        quality = {}
        if i == 800:
            sources["poc-meter"]["active_power"], quality = -9e9, {"active_power": Quality.out_of_range}
        if i == 1200:
            sources["poc-meter"]["active_power"], quality = None, {"active_power": Quality.timeout}
        out += [Reading(site=site.site, gateway="gw-mn-01", device=d, ts=ts, values=v,
                        quality=quality if d == "poc-meter" else {}) for d, v in sources.items()]
    return out


#: a ledger made by the code before input hashes had versions (main at 89e9e32), holding revision 1
#: of mn-solar 2026-10 processed from ``october_readings``
LEDGER_BEFORE_VERSIONS = Path(__file__).parent / "data" / "ledger-before-hash-versions.sqlite"


def test_a_ledger_made_before_hash_versions_keeps_its_months_hash_and_gets_no_spurious_revision(tmp_path,
                                                                                                monkeypatch):
    """Its revisions are version 1 once opened; processing its month again on the same readings
    hashes them in version 1 and adds nothing, a changed reading adds a revision (version 1
    still), a month new to it is version 2. Before: a ledger had no versions, and a new hash form
    would have given every month a revision of changed inputs."""
    import shutil

    import processing.monthly

    path = shutil.copy(LEDGER_BEFORE_VERSIONS, tmp_path / "ledger.sqlite")
    before = sqlite3.connect(path).execute("SELECT * FROM revisions").fetchall()
    store = SqliteStore(tmp_path / "jcm.db")
    store.write(october_readings(SITE))
    ledger = Ledger(path)
    (r1,) = ledger.revisions(SITE.site)
    assert r1.input_hash_version == 1 and (r1.revision, r1.input_hash) == (1, before[0][6])
    assert [row[:19] for row in ledger._db.execute("SELECT * FROM revisions")] == before
    # a change of the processing code is a revision of its own (its code_version): held as recorded
    # here, so that the input hash alone decides
    recorded = {"defaults_hash": r1.defaults_hash, "config_hash": r1.config_hash, "code_version": r1.code_version}
    monkeypatch.setattr(processing.monthly, "versions", lambda site: recorded)
    result, again = process_month(SITE, store, ledger, "2026-10")
    assert not again.new and again.revision == 1
    assert (result.input_hash, result.input_hash_version) == (r1.input_hash, 1)

    rewrite_channel(store, SITE.site, "poc-meter", "energy_export", dt.datetime(2026, 10, 9, tzinfo=dt.UTC),
                    dt.datetime(2026, 10, 9, 0, 1, tzinfo=dt.UTC), lambda v, _: v + 1.0)
    _, r2 = process_month(SITE, store, ledger, "2026-10")
    assert r2.new and r2.revision == 2 and r2.input_hash_version == 1 and r2.input_hash != r1.input_hash
    _, september = process_month(SITE, store, ledger, "2026-09")
    assert september.new and september.input_hash_version == 2
    assert [(r.month, r.revision, r.input_hash_version) for r in Ledger(path).revisions(SITE.site)] == [
        ("2026-09", 1, 2), ("2026-10", 1, 1), ("2026-10", 2, 1)]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger._db.execute("UPDATE revisions SET result_json = json_set(result_json, '$.summary.input_hash_version', "
                           "2)")


def test_a_ledger_made_before_hash_versions_opened_by_several_processes_at_once_is_not_changed(tmp_path):
    """Three processes open it together (the processor, an export, a sign-off): none changes its
    layout (an added column had to be added by one of them only, else 'duplicate column name')."""
    import shutil

    path = shutil.copy(LEDGER_BEFORE_VERSIONS, tmp_path / "ledger.sqlite")
    code = f"from processing.ledger import Ledger; Ledger({str(path)!r}).latest('mn-solar', '2026-10')"
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    assert [(p.wait(), p.stderr.read()) for p in runs] == [(0, "")] * 3
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(revisions)")]
    assert "input_hash_version" not in columns and Ledger(path).latest("mn-solar", "2026-10").input_hash_version == 1


def test_a_month_whose_latest_revision_is_of_an_unknown_hash_version_is_refused(tmp_path):
    """A ledger written by a later version of the code, whose hash form this one cannot make: one
    error naming the revision and its version, nothing recorded."""
    store = SqliteStore(tmp_path / "jcm.db")
    store.write(october_readings(SITE))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    process_month(SITE, store, ledger, "2026-10")
    ledger._db.executescript("DROP TRIGGER revisions_no_update; UPDATE revisions "
                             "SET result_json = json_set(result_json, '$.summary.input_hash_version', 9)")
    with pytest.raises(ValueError, match="revision 1 in the ledger has an input hash of version 9, which this code "
                                         "does not know"):
        process_month(SITE, store, ledger, "2026-10")
    assert len(ledger.revisions(SITE.site)) == 1


def test_a_ledger_used_by_this_code_stays_readable_by_the_code_before_hash_versions(tmp_path):
    """The code before versions (an older processor still running on the ledger, or a roll-back)
    reads a revision as ``SELECT *`` unpacked into its 19 columns: a column added to ``revisions``
    made every read of it fail ("too many values to unpack"), and its own revision, written in
    version 1, fail as it was read back. The version is in the revision's recorded summary: the
    table keeps its layout, an old file is not written when opened, and a revision that code writes
    (no version in its summary) is version 1, which its hash is."""
    import shutil

    path = shutil.copy(LEDGER_BEFORE_VERSIONS, tmp_path / "ledger.sqlite")
    layout = [row[1:] for row in sqlite3.connect(path).execute("PRAGMA table_info(revisions)")]
    store = SqliteStore(tmp_path / "jcm.db")
    store.write(october_readings(SITE))
    ledger = Ledger(path)
    _, september = process_month(SITE, store, ledger, "2026-09")
    assert september.input_hash_version == 2
    fresh = Ledger(tmp_path / "fresh.sqlite")
    fresh.record(SITE.site, "2026-09", {**september.result["summary"], "input_hash": "0" * 64},
                 {}, {"defaults_hash": "", "config_hash": "", "code_version": ""})
    for file in (path, tmp_path / "fresh.sqlite"):
        db = sqlite3.connect(file)
        assert [row[1:] for row in db.execute("PRAGMA table_info(revisions)")] == layout
        assert {len(row) for row in db.execute("SELECT * FROM revisions")} == {19}
    # what the code before versions inserts: its summary names no version
    old = sqlite3.connect(path)
    row = list(old.execute("SELECT * FROM revisions WHERE month = '2026-10'").fetchone())
    old.execute(f"INSERT INTO revisions VALUES (NULL, {', '.join('?' * 18)})", [*row[1:3], 2, *row[4:]])
    old.commit()
    assert [(r.month, r.revision, r.input_hash_version) for r in Ledger(path).revisions(SITE.site)] == [
        ("2026-09", 1, 2), ("2026-10", 1, 1), ("2026-10", 2, 1)]
    # a ledger to which code of this change's first form added a column of versions reads the same
    with sqlite3.connect(tmp_path / "fresh.sqlite") as db:
        db.execute("ALTER TABLE revisions ADD COLUMN input_hash_version INTEGER NOT NULL DEFAULT 1")
    assert Ledger(tmp_path / "fresh.sqlite").latest(SITE.site, "2026-09").input_hash_version == 2


def test_the_code_version_is_the_code_loaded_not_what_is_on_disk_later(tmp_path, monkeypatch):
    """A long-running processor labels its revisions with the code it runs: an upgrade on disk
    after its first use does not change the label (and the files are not read each month)."""
    copy = tmp_path / "processing"
    shutil.copytree(Path(ledger_code.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    forget = getattr(ledger_code.code_version, "cache_clear", lambda: None)
    monkeypatch.setattr(ledger_code, "__file__", str(copy / "ledger.py"))
    forget()
    try:
        loaded = ledger_code.code_version()
        with (copy / "monthly.py").open("a") as f:
            f.write("# upgraded on disk\n")
        assert ledger_code.code_version() == loaded
        forget()  # a process started after the upgrade runs, and names, the new code
        assert ledger_code.code_version() != loaded
    finally:
        monkeypatch.undo()
        forget()
