"""The monitoring-period export: every file written, the workbook's live formulas give
the processor's figures for all five methodologies (evaluated by the ``formulas``
package, an independent Excel formula engine), the CSVs agree with the daily values,
the period's ER comes from the period's summed parameters, and the same inputs give
byte-identical files that the manifest vouches for.

Two sites run on simulated history in a real SQLite store; all five also run on
hand-made ledger revisions (an empty store), which pins the figures exactly."""

import base64
import datetime as dt
import gzip
import hashlib
import json
import math
import random
import shutil

import formulas
import openpyxl
import pytest

from processing.export import export_period
from processing.export.period_figures import months_between
from processing.ledger import Ledger
from processing.methodologies import calculate, load_spec
from processing.monthly import month_bounds
from store.sqlite_store import SqliteStore
from tests.conftest import fill_history, reference_site, store_copy

FIRST, LAST = dt.date(2026, 9, 25), dt.date(2026, 10, 4)
SITES = ["mn-solar", "mv-addu", "vn-transformers", "ph-biogas", "id-aceh-biomass"]
FILES = {"daily_values.csv", "completeness.csv", "raw_readings.csv.gz", "dead_letters.csv.gz", "daily_values.png", "completeness.png", "summary.html", "site.json",
         "summary.ja.html", "manifest.json", "SHA256SUMS"}
SIMULATED_NOTE = "# SIMULATED DATA: readings from the simulator, not from the plant's meters; not for verification"


site = reference_site


@pytest.fixture(scope="module")
def history_db(tmp_path_factory):
    """mn-solar and ph-biogas readings for the period, every 900 s."""
    path = tmp_path_factory.mktemp("export") / "jcm.db"
    store = SqliteStore(path)
    for name in ("mn-solar", "ph-biogas"):
        fill_history(store, site(name), FIRST, LAST)
    store.close()
    return path


@pytest.fixture
def store(history_db, tmp_path):
    s = store_copy(history_db, tmp_path)
    yield s
    s.close()


def evaluate(path) -> dict[str, float]:
    """Evaluate the Monitoring report's calculation cells with the ``formulas`` engine:
    ``{symbol: value}`` for RE, PE, ER_unrounded and ER."""
    ws = openpyxl.load_workbook(path)["Monitoring report"]
    rows = {ws.cell(row=r, column=1).value: r for r in range(1, ws.max_row + 1)}
    solution = formulas.ExcelModel().loads(str(path)).finish().calculate()
    by_cell = {k.rsplit("]", 1)[1].upper(): v for k, v in solution.items()}
    out = {}
    for symbol in ("RE", "PE", "ER_unrounded", "ER"):
        assert str(ws.cell(row=rows[symbol], column=3).value).startswith("="), f"{symbol} is not a formula"
        out[symbol] = float(by_cell[f"MONITORING REPORT'!C{rows[symbol]}"].value[0][0])
    return out


def expected_calculation(s, sums: dict[str, float]):
    """``calculate`` on the period sums, inputs built here from the site config."""
    spec = load_spec(s.methodology)
    period, units = {}, {}
    for key, value in sums.items():
        name, _, uid = key.partition("[")
        if spec.parameters[name].per_unit:
            units.setdefault(uid[:-1], {"id": uid[:-1]})[name] = value
        else:
            period[name] = value
    for p in s.fixed_parameters:
        if spec.parameters[p.parameter].per_unit:
            units.setdefault(p.unit_id, {"id": p.unit_id})[p.parameter] = p.value
        else:
            period[p.parameter] = p.value
    return calculate(s.methodology, period, list(units.values()))


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


# -- hand-made ledger revisions ------------------------------------------------------

def methodology_keys(s) -> list[str]:
    spec = load_spec(s.methodology)
    keys = [m.parameter if m.unit_id is None else f"{m.parameter}[{m.unit_id}]" for m in s.monitoring
            if m.parameter in spec.parameters]
    keys += [n for n, p in spec.parameters.items() if p.kind == "monitored" and n not in {m.parameter for m in s.monitoring}]
    return sorted(keys)


def record_months(ledger, s, months, daily_value, status="provisional"):
    """Record one revision per month whose daily parameters are ``daily_value(key, day)``,
    with its own whole-month figures, a QA-only key holding a missing day, a finding and
    an adjustment; returns ``{key: {day: value}}``."""
    values = {}
    for i, month in enumerate(months):
        first, last = month_bounds(month)
        days = [first + dt.timedelta(days=d) for d in range((last - first).days + 1)]
        daily = {k: {d: daily_value(k, d) for d in days} for k in methodology_keys(s)}
        for k, by_day in daily.items():
            values.setdefault(k, {}).update(by_day)
        calc = expected_calculation(s, {k: math.fsum(v.values()) for k, v in daily.items()})
        qa = {d: (float("nan") if d.day == 2 else 1.5) for d in days}
        summary = {"site": s.site, "first": first.isoformat(), "last": last.isoformat(), "methodology": s.methodology,
                   "version": s.methodology_version, "status": status if i else "verified", "reasons": [],
                   "RE": calc.RE, "PE": calc.PE, "ER_unrounded": calc.ER_unrounded, "ER": calc.ER,
                   "provisional": calc.provisional, "parameters": {}, "input_hash": f"{s.site}-{month}",
                   "completeness": {"dev.a": 1.0 - 0.1 * i, "dev.b": 0.97}, "simulated": False}
        details = {
            "reasons": [f"made by hand for {month}"], "calculation": calc.to_dict(), "explanation": [],
            "findings": [{"check": "gap", "source": "dev.a", "severity": "info", "detail": "1.00 h without a valid reading",
                          "start": f"{month}-03 00:00:00+00:00", "end": f"{month}-03 01:00:00+00:00", "amount": 1.0}],
            "adjustments": [{"kind": "missing_data", "parameter": methodology_keys(s)[0], "source": "", "meter": "",
                             "days": f"{month}-02", "before": None, "factor": None, "after": 0.0, "reason": "by hand"}],
            "daily": [],
            "daily_parameters": [{"day": d.isoformat(), "parameter": k, "value": v, "unit": "u"}
                                 for k, by_day in [*daily.items(), ("QA_only", qa)] for d, v in by_day.items()],
        }
        ledger.record(s.site, month, summary, details, {"defaults_hash": "d", "config_hash": "c", "code_version": "t"})
    return values


def seeded(s):
    """Reproducible daily values: larger for what raises ER than for what lowers it, so
    that every site's ER is positive."""
    spec = load_spec(s.methodology)

    def value(key, day):
        low, high = (5.0, 50.0) if spec.parameters[key.split("[")[0]].effect == "raises" else (0.01, 1.0)
        return random.Random(f"{key}{day}").uniform(low, high)
    return value


@pytest.mark.parametrize("name", SITES)
def test_formulas_give_the_calculated_figures_for_every_methodology(name, tmp_path):
    s = site(name)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    values = record_months(ledger, s, months_between(FIRST, LAST), seeded(s), status="needs_review")
    store = SqliteStore(tmp_path / "empty.db")
    folder = export_period(s, store, ledger, FIRST, LAST, tmp_path / "out")

    sums = {k: math.fsum(v for d, v in by_day.items() if FIRST <= d <= LAST) for k, by_day in values.items()}
    expected = expected_calculation(s, sums)
    m = manifest_of(folder)
    assert m["figures"]["ER"] == expected.ER and m["figures"]["ER_unrounded"] == pytest.approx(expected.ER_unrounded)
    assert m["status"] == "needs_review" and m["simulated"] is False
    got = evaluate(folder / f"monitoring_{folder.name}.xlsx")
    assert got["ER"] == expected.ER
    assert got["RE"] == pytest.approx(expected.RE, rel=1e-12)
    assert got["PE"] == pytest.approx(expected.PE, rel=1e-12, abs=1e-12)
    assert got["ER_unrounded"] == pytest.approx(expected.ER_unrounded, rel=1e-12)
    assert "SIMULATED DATA" not in (folder / "summary.html").read_text()


def test_period_er_comes_from_summed_parameters_not_from_monthly_rounded_ers(tmp_path):
    """Each month's ER ends in .6: added up, the months give 200; the period gives 201."""
    s = site("mn-solar")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    months = ["2026-09", "2026-10"]
    per_day = {m: 100.6 / 0.797 / (month_bounds(m)[1].day) for m in months}
    values = record_months(ledger, s, months, lambda k, d: per_day[d.strftime("%Y-%m")])
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, dt.date(2026, 9, 1), dt.date(2026, 10, 31),
                           tmp_path / "out")
    m = manifest_of(folder)
    assert sum(r["ER"] for r in m["revisions"]) == 200
    total_eg = math.fsum(values["EG[PV-1]"].values())
    assert m["parameters"]["EG[PV-1]"] == pytest.approx(total_eg, rel=1e-15)
    assert m["figures"]["ER"] == math.floor(total_eg * 0.797) == 201
    assert evaluate(folder / f"monitoring_{folder.name}.xlsx")["ER"] == 201


def test_signed_off_revision_is_used_and_reported(tmp_path):
    s = site("vn-transformers")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record_months(ledger, s, ["2026-09", "2026-10"], seeded(s))
    ledger.sign_off(s.site, "2026-09", "A. Verifier")
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, FIRST, LAST, tmp_path / "out")
    revisions = {r["month"]: r for r in manifest_of(folder)["revisions"]}
    assert revisions["2026-09"]["signed_off"] and revisions["2026-09"]["signed_by"] == "A. Verifier"
    assert not revisions["2026-10"]["signed_off"]
    assert "by A. Verifier" in (folder / "summary.html").read_text()
    ja = (folder / "summary.ja.html").read_text()  # the same page in Japanese, each linking to the other
    assert '<html lang="ja">' in ja and "A. Verifier" in ja
    assert "モニタリング期間 2026年9月25日～2026年10月4日" in ja
    assert 'href="summary.html"' in ja and 'href="summary.ja.html"' in (folder / "summary.html").read_text()
    # each link names its language in that language
    assert '<a href="summary.html" hreflang="en">English</a>' in ja
    assert '<a href="summary.ja.html" hreflang="ja">日本語</a>' in (folder / "summary.html").read_text()


# -- simulated history in a real store ----------------------------------------------

@pytest.mark.parametrize("name", ["mn-solar", "ph-biogas"])
def test_export_of_simulated_history(name, store, tmp_path):
    s = site(name)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, tmp_path / "out")

    assert folder.name == f"{name}_2026-09-25_2026-10-04"
    workbook = folder / f"monitoring_{folder.name}.xlsx"
    assert {p.name for p in folder.iterdir()} == FILES | {workbook.name}
    # months without a revision were processed and recorded first
    assert [r.month for r in ledger.revisions(s.site)] == ["2026-09", "2026-10"]
    m = manifest_of(folder)
    assert [(r["month"], r["revision"]) for r in m["revisions"]] == [("2026-09", 1), ("2026-10", 1)]

    # the figures: summed daily parameters of the period's days, one calculation
    daily = [r for rev in ledger.revisions(s.site) for r in rev.result["daily_parameters"]
             if FIRST.isoformat() <= r["day"] <= LAST.isoformat()]
    keys = set(methodology_keys(s))
    sums = {}
    for r in daily:
        if r["parameter"] in keys:
            sums[r["parameter"]] = sums.get(r["parameter"], 0.0) + r["value"]
    assert set(sums) == keys
    expected = expected_calculation(s, sums)
    assert m["figures"]["ER"] == expected.ER > 0
    assert evaluate(workbook)["ER"] == expected.ER
    statuses = [r["status"] for r in m["revisions"]]
    order = ["verified", "provisional", "needs_review", "failed"]
    assert m["status"] == max(statuses, key=order.index)

    # daily_values.csv holds exactly the revisions' daily values of the period's days
    lines = (folder / "daily_values.csv").read_bytes().decode().split("\n")
    assert lines.pop(0) == SIMULATED_NOTE
    assert lines[0] == "day,parameter,unit_id,unit,value" and lines[-1] == "" and "\r" not in "".join(lines)
    rows = [line.split(",") for line in lines[1:-1]]
    assert len(rows) == len(daily) and rows == sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    by_key = {(r["day"], r["parameter"]): r["value"] for r in daily}
    for day, parameter, unit_id, unit, value in rows:
        key = f"{parameter}[{unit_id}]" if unit_id else parameter
        assert (float(value) if value else float("nan")) == pytest.approx(by_key[(day, key)], nan_ok=True)
    for key, total in m["parameters"].items():
        assert math.fsum(float(r[4]) for r in rows if (f"{r[1]}[{r[2]}]" if r[2] else r[1]) == key) == pytest.approx(total)

    # raw_readings.csv.gz: the monitoring plan's sources' readings between the local-day bounds
    packed = (folder / "raw_readings.csv.gz").read_bytes()
    assert packed[:2] == b"\x1f\x8b" and packed[4:8] == b"\0\0\0\0"  # gzip, no time in its header
    raw = gzip.decompress(packed).decode().splitlines()
    assert raw.pop(0) == SIMULATED_NOTE
    assert raw[0] == "ts,device,channel,value,quality"
    sources = set(s.monitoring_sources)
    body = [r.split(",") for r in raw[1:]]
    assert {f"{r[1]}.{r[2]}" for r in body} == sources
    assert body == sorted(body, key=lambda r: (r[0], r[1], r[2]))  # time order
    start = dt.datetime.combine(FIRST, dt.time(), tzinfo=s.zone).astimezone(dt.UTC)
    assert min(r[0] for r in body) == start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert len(body) == len(sources) * 10 * 96

    # simulated history says so, in every file that can hold text and on every sheet
    assert "SIMULATED DATA" in (folder / "summary.html").read_text()
    assert (folder / "SHA256SUMS").read_text().startswith(SIMULATED_NOTE)
    wb = openpyxl.load_workbook(workbook)
    assert "SIMULATED DATA" in wb["Monitoring report"]["A2"].value
    for ws in wb.worksheets:
        assert any("SIMULATED DATA" in str(ws.cell(row=r, column=1).value) for r in (1, 2)), ws.title
    assert m["simulated"] is True


def test_same_inputs_give_byte_identical_files_and_the_manifest_vouches_for_them(store, tmp_path):
    s = site("mn-solar")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    a = export_period(s, store, ledger, FIRST, LAST, tmp_path / "a")  # processes the months
    b = export_period(s, store, ledger, FIRST, LAST, tmp_path / "b")  # reads them from the ledger
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    files = manifest_of(a)["files"]
    assert set(files) == {n for n in names if n not in ("manifest.json", "SHA256SUMS")}
    for n, entry in files.items():
        data = (a / n).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_the_messages_refused_in_the_period_are_exported_and_verify_counts_them(store, tmp_path):
    """A verifier sees what the collector refused of the site during the period, with why:
    the letters on its topics received between the period's local-day bounds, no others."""
    import csv

    from contract.store import DeadLetter
    from jcm.verify import verify_export

    s = site("mn-solar")
    start = dt.datetime.combine(FIRST, dt.time(), tzinfo=s.zone).astimezone(dt.UTC)
    end = dt.datetime.combine(LAST + dt.timedelta(days=1), dt.time(), tzinfo=s.zone).astimezone(dt.UTC)
    topic = f"jcm/v1/{s.site}/{s.gateway}/m1/reading"
    store.write([], [DeadLetter(start - dt.timedelta(seconds=1), topic, b"before", "too early"),
                     DeadLetter(start, topic, b'{"a": 1, "b": "x,\\"y\\""}', "custody: bad signature"),
                     DeadLetter(start + dt.timedelta(days=3), "jcm/v1/ph-biogas/gw/m1/reading", b"other", "no"),
                     DeadLetter(end - dt.timedelta(microseconds=1), topic, b"\xff\x00", "not UTF-8, line 1\nforged"),
                     DeadLetter(end, topic, b"after", "too late")])
    folder = export_period(s, store, Ledger(tmp_path / "ledger.sqlite"), FIRST, LAST, tmp_path / "out")
    lines = gzip.decompress((folder / "dead_letters.csv.gz").read_bytes()).decode().splitlines(keepends=True)
    assert lines.pop(0) == SIMULATED_NOTE + "\n"
    rows = list(csv.reader(lines))
    assert rows[0] == ["received", "topic", "size", "sha256", "reason", "payload_start_base64"]
    assert [(r[0], r[1], r[4], base64.b64decode(r[5])) for r in rows[1:]] == [
        (start.isoformat(timespec="microseconds").replace("+00:00", "Z"), topic, "custody: bad signature",
         b'{"a": 1, "b": "x,\\"y\\""}'),
        ((end - dt.timedelta(microseconds=1)).isoformat(timespec="microseconds").replace("+00:00", "Z"), topic,
         "not UTF-8, line 1\\x0aforged", b"\xff\x00")]
    assert rows[2][2:4] == ["2", hashlib.sha256(b"\xff\x00").hexdigest()]
    assert manifest_of(folder)["dead_letters"] == {"file": "dead_letters.csv.gz", "count": 2}
    code, verdict = verify_export(folder)
    assert code == 1  # unsigned history: the verdict fails for that, and still lists the letters
    assert any(line.startswith("dead letters: 2 message(s)") for line in verdict), verdict
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["dead_letters"]["count"] = 1  # a manifest that hides one
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _, verdict = verify_export(folder)
    assert any("dead_letters.csv.gz lists 2 dead letter(s), the manifest 1" in line for line in verdict), verdict
    manifest["dead_letters"]["file"] = "../elsewhere.csv.gz"  # a file outside the export is never read
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _, verdict = verify_export(folder)
    assert any("the manifest names '../elsewhere.csv.gz', not dead_letters.csv.gz" in line for line in verdict)


# -- export hygiene -------------------------------------------------------------------

def test_sha256sums_checks_with_the_real_sha256sum(store, tmp_path):
    import subprocess

    folder = export_period(site("mn-solar"), store, Ledger(tmp_path / "ledger.sqlite"), FIRST, LAST, tmp_path / "out")
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums if not line.startswith("#")) == sorted(FILES - {"SHA256SUMS"}
                                                                                            | {f"monitoring_{folder.name}.xlsx"})
    done = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder / "daily_values.csv").write_text("tampered\n")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode == 1


def test_an_existing_export_is_refused_unless_forced_and_replaced_byte_identical(store, tmp_path, capsys):
    from jcm.cli import main

    s = site("mn-solar")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "notes.txt").write_text("a verifier's notes")
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently .use --force"):
        export_period(s, store, ledger, FIRST, LAST, tmp_path / "out")
    assert (folder / "notes.txt").exists()
    argv = ["export", "--site", "mn-solar", "--from", FIRST.isoformat(), "--to", LAST.isoformat(),
            "--out", str(tmp_path / "out"), "--store", f"sqlite:///{store.path}", "--ledger", str(tmp_path / "ledger.sqlite")]
    assert main(argv) == 2 and "use --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # replaced whole, same bytes
    assert [p.name for p in (tmp_path / "out").iterdir()] == [folder.name]  # nothing half-written left


KILLED_REPLACING = """
import contextlib, datetime as dt, os, pathlib, signal, sys
import processing.export as export
from processing.export import export_period
from processing.ledger import Ledger
from store.sqlite_store import SqliteStore
from tests.conftest import reference_site

work, when, first, last = sys.argv[1], sys.argv[2], *map(dt.date.fromisoformat, sys.argv[3:5])
rename = pathlib.Path.rename


def then_killed(path, target):
    done = rename(path, target)
    if (".replaced-" in str(target)) if when == "aside" else (".partial-" in path.name):
        os.kill(os.getpid(), signal.SIGKILL)
    return done


pathlib.Path.rename = then_killed
export._apart = lambda figures: contextlib.nullcontext()
export_period(reference_site("mn-solar"), SqliteStore(work + "/jcm.db"), Ledger(work + "/ledger.sqlite"), first, last,
              pathlib.Path(work) / "out", force=True)
"""


@pytest.mark.parametrize("when", ["aside", "in place"])
def test_an_export_killed_while_replacing_one_leaves_the_old_for_the_next_to_put_back_or_remove(store, tmp_path, when):
    """``--force`` moves the old export aside (``.<name>.replaced-<pid>``), puts the new one in its
    place and removes the old. Killed after the first rename, the old export was left hidden for good,
    the only copy, and none in its place; killed after the second, the old one stayed beside the new
    for good. The next export of the period puts the old one back (then refuses to overwrite it
    without --force) or removes it; ``jcm verify`` of the missing folder names where it is."""
    import os
    import subprocess
    import sys

    from jcm.verify import verify_export
    from tests.conftest import REPO

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, out)
    (folder / "notes.txt").write_text("the old export")
    killed = subprocess.run([sys.executable, "-c", KILLED_REPLACING, str(tmp_path), when, FIRST.isoformat(),
                             LAST.isoformat()], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    [aside] = out.glob(f".{folder.name}.replaced-*")
    assert folder.exists() == (when == "in place") and (aside / "notes.txt").exists()
    if when == "aside":
        with pytest.raises(ValueError, match=f"{folder} does not exist: {aside.name} beside it is the export"):
            verify_export(folder)
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently"):
        export_period(s, store, ledger, FIRST, LAST, out)
    assert (folder / "notes.txt").exists() == (when == "aside")  # the old one put back, or the new one left
    assert os.listdir(out) == [folder.name]  # the killed export's half-made folder gone too


def test_an_export_aside_under_a_number_another_process_took_is_not_replaced_unasked(store, tmp_path):
    """An export --force killed between its renames (a power cut, say) leaves the old export aside,
    ``.<name>.replaced-<pid>``, the only copy; after a restart another process may run under that
    number. The aside was then left alone as if its export still ran, and an export of the period
    without --force, finding no export in place, made a new one: the old one, never asked to be
    replaced, was removed by the next export once that process ended. Refused now, naming it."""
    import os
    import subprocess

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, out)
    (folder / "notes.txt").write_text("the old export")
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        aside = folder.rename(out / f".{folder.name}.replaced-{unrelated.pid}")
        with pytest.raises(ValueError, match=f"{folder} is aside, at {aside.name}: process {unrelated.pid}"):
            export_period(s, store, ledger, FIRST, LAST, out)
    finally:
        unrelated.kill()
        unrelated.wait()
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently"):
        export_period(s, store, ledger, FIRST, LAST, out)  # put back, once that process ended
    assert (folder / "notes.txt").exists() and os.listdir(out) == [folder.name]


@pytest.mark.parametrize("in_place", ["an empty folder", "a copy cut short"])
def test_an_export_aside_is_removed_only_when_a_whole_export_took_its_place(store, tmp_path, in_place):
    """The export a killed --force left aside (the only copy) was removed by the next export as soon as
    anything had its name: an empty folder, or a copy of it cut short (``cp -r`` interrupted while
    putting it back by hand). It is removed only when an export with every file its manifest lists,
    of the listed size, holds its place; else it stays aside."""
    import shutil
    import subprocess

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, out)
    ended = subprocess.Popen(["true"])  # a process that ran and ended: its number is no one's
    ended.wait()
    aside = folder.rename(out / f".{folder.name}.replaced-{ended.pid}")
    if in_place == "an empty folder":
        folder.mkdir()
    else:
        shutil.copytree(aside, folder)
        (folder / "daily_values.csv").write_text("cut short")
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently"):
        export_period(s, store, ledger, FIRST, LAST, out)
    assert (aside / "manifest.json").exists()
    export_period(s, store, ledger, FIRST, LAST, out, force=True)  # asked: the new export replaces both
    export_period(s, store, ledger, FIRST, LAST, out, force=True)
    assert [p.name for p in out.iterdir()] == [folder.name]


def test_an_export_made_meanwhile_by_another_is_not_replaced_unasked(store, tmp_path, monkeypatch):
    """Two exports of a period at once, neither forced: the one that ended second found the other's in
    place as it was done and replaced it, though only --force replaces an export. Refused now."""
    import processing.export as export

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    other = export_period(s, store, ledger, FIRST, LAST, tmp_path / "other")
    (other / "notes.txt").write_text("the other export")
    write = export._write

    def meanwhile(figures, store, folder, tell, steps):
        write(figures, store, folder, tell, steps)
        shutil.copytree(other, out / other.name)  # the other export ends first

    monkeypatch.setattr(export, "_write", meanwhile)
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently"):
        export_period(s, store, ledger, FIRST, LAST, out)
    assert (out / other.name / "notes.txt").exists() and [p.name for p in out.iterdir()] == [other.name]


def test_of_two_exports_aside_the_whole_one_is_put_back(store, tmp_path):
    """Two exports --force of a period at once, one killed while removing the export it replaced (its
    folder aside half removed, the latest changed), the other between its renames (the only whole copy
    aside): the latest aside was put back, half removed, and the whole one then removed as replaced.
    Only a whole export is put back; the half removed one goes once a whole one is in place."""
    import subprocess

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    folder = export_period(s, store, ledger, FIRST, LAST, out)
    (folder / "notes.txt").write_text("the whole export")
    ended = [subprocess.Popen(["true"]) for _ in range(2)]  # processes that ran and ended: their numbers are no one's
    for proc in ended:
        proc.wait()
    whole = folder.rename(out / f".{folder.name}.replaced-{ended[0].pid}")
    half = shutil.copytree(whole, out / f".{folder.name}.replaced-{ended[1].pid}")
    (half / "manifest.json").unlink()  # rmtree was removing it
    with pytest.raises(ValueError, match="exists: an export is never overwritten silently"):
        export_period(s, store, ledger, FIRST, LAST, out)
    assert (folder / "notes.txt").exists() and (folder / "manifest.json").exists()
    export_period(s, store, ledger, FIRST, LAST, out, force=True)
    assert [p.name for p in out.iterdir()] == [folder.name]


def test_forcing_an_export_over_a_link_replaces_the_link_and_says_it_succeeded(store, tmp_path):
    """An export folder that is a symbolic link (to a copy kept elsewhere) replaced by --force: the
    link moved aside was removed with rmtree, which refuses links, after the new export had taken its
    place: the export failed ("Cannot call rmtree on a symbolic link") though it was done, and left
    the link aside. The link goes now; what it leads to stays."""
    import os

    s, out = site("mn-solar"), tmp_path / "out"
    ledger = Ledger(tmp_path / "ledger.sqlite")
    kept = export_period(s, store, ledger, FIRST, LAST, tmp_path / "kept")
    out.mkdir()
    (out / kept.name).symlink_to(kept)
    folder = export_period(s, store, ledger, FIRST, LAST, out, force=True)
    assert os.listdir(out) == [folder.name] and folder.is_dir() and not folder.is_symlink()
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in folder.iterdir())


def test_period_totals_are_live_sums_of_the_daily_sheet_and_columns_fit(tmp_path):
    s = site("mv-addu")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record_months(ledger, s, months_between(FIRST, LAST), seeded(s))
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, FIRST, LAST, tmp_path / "out")
    path = folder / f"monitoring_{folder.name}.xlsx"
    wb = openpyxl.load_workbook(path)
    ws = wb["Monitoring report"]
    rows = {ws.cell(row=r, column=1).value: r for r in range(1, ws.max_row + 1)}
    solution = formulas.ExcelModel().loads(str(path)).finish().calculate()
    by_cell = {k.rsplit("]", 1)[1].upper(): v for k, v in solution.items()}
    daily_header = [c.value for c in wb["Daily"][1]]
    for symbol in ("EG_PV", "EC_BESS", "EG_BESS"):
        r = rows[symbol]
        col = openpyxl.utils.get_column_letter(daily_header.index(symbol) + 1)
        assert ws.cell(row=r, column=3).value == f"=SUM(Daily!{col}3:{col}12)"
        got = float(by_cell[f"MONITORING REPORT'!C{r}"].value[0][0])
        assert got == pytest.approx(manifest_of(folder)["parameters"][symbol], rel=1e-12)
        assert ws.cell(row=r, column=5).value == pytest.approx(got, rel=1e-12)
    for sheet in wb.worksheets:  # every column as wide as its widest cell in a table row
        for cells in sheet.iter_rows():
            filled = [c for c in cells if c.value is not None]
            for c in filled if len(filled) > 1 else []:
                text = c.value if isinstance(c.value, str) and not c.value.startswith("=") else ""
                width = sheet.column_dimensions[c.column_letter].width
                assert width >= min(80, len(text)), (sheet.title, c.coordinate, width, text)


def test_pe_flare_is_shown_with_its_inputs(store, tmp_path):
    folder = export_period(site("ph-biogas"), store, Ledger(tmp_path / "ledger.sqlite"), FIRST, LAST, tmp_path / "out")
    path = folder / f"monitoring_{folder.name}.xlsx"
    ws = openpyxl.load_workbook(path)["Monitoring report"]
    rows = {ws.cell(row=r, column=1).value: r for r in range(1, ws.max_row + 1)}
    assert {"CH4_flare", "CH4_flare_burning", "rho_CH4", "eta_flare", "GWP_CH4", "PE_flare (from inputs)"} <= set(rows)
    solution = formulas.ExcelModel().loads(str(path)).finish().calculate()
    by_cell = {k.rsplit("]", 1)[1].upper(): v for k, v in solution.items()}
    r = rows["PE_flare (from inputs)"]
    got = float(by_cell[f"MONITORING REPORT'!C{r}"].value[0][0])
    assert got == pytest.approx(ws.cell(row=r, column=5).value, rel=1e-9) and got > 0
    # no day was filled, so the PE_flare the calculation used is the one its inputs give
    assert got == pytest.approx(manifest_of(folder)["parameters"]["PE_flare"], rel=1e-9)


# -- exact period totals and rounding: the workbook gives the processor's whole tonnes --

def ef_site(ef: float):
    """mn-solar with its one unit's EF_RE fixed at ``ef`` (ER = EG × EF_RE)."""
    from contract.config.site import FixedParameter
    return site("mn-solar").model_copy(update={"fixed_parameters": [FixedParameter(
        parameter="EF_RE", unit_id="PV-1", value=ef, unit="tCO2/MWh", source="test")]})


def export_days(tmp_path, s, days: list[float]):
    """Export the period of ``days`` (from 2026-10-01) recorded as EG's daily values (1.0 on
    the other days of the month); returns the manifest's ER, the workbook's evaluated ER
    and the exact ER."""
    first = dt.date(2026, 10, 1)
    last = first + dt.timedelta(days=len(days) - 1)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    record_months(ledger, s, ["2026-10"], lambda k, d: days[d.day - 1] if d <= last else 1.0)
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, first, last, tmp_path / "out")
    m = manifest_of(folder)
    return m["figures"]["ER"], evaluate(folder / f"monitoring_{folder.name}.xlsx")["ER"], m


@pytest.mark.parametrize("ef, days, er", [
    # decimal sum 909, float sum 908.9999999999999: before, the period's ER was 908
    (1.0, [636.454587, 272.2, 0.345413], 909),
    # ER 999.9999999995: before, the workbook's ROUNDDOWN(ER+1E-9) made it 1,000
    (0.5, [200.0] * 9 + [199.999999999], 999),
])
def test_period_totals_are_exact_and_the_workbook_rounds_as_the_processor(tmp_path, ef, days, er):
    python, sheet, m = export_days(tmp_path, ef_site(ef), days)
    assert (python, sheet) == (er, er)


@pytest.mark.fuzz
def test_the_workbook_gives_the_exact_whole_tonnes_next_to_a_boundary(tmp_path_factory):
    """Daily values whose exact sum lies on or just below a whole tonne (or half of one):
    the workbook's binary arithmetic rounds to the exact figure's tonnes."""
    from decimal import Decimal

    from hypothesis import HealthCheck, Phase, assume, given, settings
    from hypothesis import strategies as st

    from tests.conftest import fuzz_examples

    ran = []

    @settings(max_examples=fuzz_examples(3), deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])  # an example takes seconds: report it unshrunk
    @given(st.lists(st.decimals(0, 1000, places=6), min_size=1, max_size=5), st.sampled_from([0.5, 1.0]),
           st.sampled_from(["0", "5E-10", "1E-9", "3E-7"]))
    def check(head, ef, below):
        total = sum(head) + 1
        last = Decimal(int(total) + 1) / Decimal(repr(ef)) - total + 1 - Decimal(below)
        assume(0 < last and Decimal(repr(float(last))) == last)
        days = [float(x) for x in head] + [float(last)]
        python, sheet, m = export_days(tmp_path_factory.mktemp("e"), ef_site(ef), days)
        assert sheet == python
        exact = sum(Decimal(repr(d)) for d in days) * Decimal(repr(ef))
        assert python == int(exact)
        ran.append(python)

    check()
    assert ran


def test_raw_csv_text_is_what_csv_writer_writes():
    """The raw CSV is assembled column by column: it must be the bytes ``csv.writer`` gives
    for the readings in (ts, device, channel) order, quoting and missing values included."""
    import csv
    import io

    import numpy as np
    import pandas as pd

    from processing.export.csv_files import _raw_text, _week

    t0 = pd.Timestamp("2026-10-01", tz="UTC")

    def frame(minutes, values, quality):
        return pd.DataFrame({"ts": pd.to_datetime([t0.value // 1000 + m * 60_000_000 + 7_000 for m in minutes],
                                                   unit="us", utc=True),
                             "value": np.array(values, dtype=float), "quality": np.array(quality, dtype=object)})

    frames = {  # equal timestamps across sources; "a" sorts before "a-b" as a device, after it as text (".")
        "a.x": frame([0, 1, 2], [1.5, float("nan"), 1e16], [None, "timeout", None]),
        "a-b.x": frame([0, 2], [0.1 + 0.2, -0.0], [None, 'odd, "quoted"\nflag']),
        "b.y": frame([], [], []),
        "a.w": frame([1], [float("inf")], ["out_of_range"]),
    }
    rows = []
    for src, f in frames.items():
        dev, ch = src.split(".")
        for ts, v, q in zip(f["ts"], f["value"], f["quality"]):
            rows.append((ts, dev, ch, "" if np.isnan(v) else repr(float(v)), "" if pd.isna(q) else q))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [(ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", *rest) for ts, *rest in rows])
    assert _raw_text(_week(frames)) == buf.getvalue()
    assert _raw_text(_week({"b.y": frames["b.y"]})) == ""


def test_daily_chart_is_the_png_bar_draws(tmp_path, monkeypatch):
    """The daily bars are drawn as one collection: the PNG must be byte for byte the one
    ``ax.bar`` gives, with missing days, negative values and a panel with no value at all."""
    import types

    import numpy as np
    import pandas as pd

    from processing.export import charts

    rng = np.random.default_rng(3)
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    rows = []
    for key, unit, scale in [("EG[PV-1]", "MWh", 10.0), ("EC_aux", "MWh", -2.0), ("Q_gas[D1]", "Nm3", 1e4)]:
        values = rng.normal(scale, abs(scale) / 3, len(days))
        values[[0, 7, 39]] = np.nan
        if key == "EC_aux":
            values[:] = np.nan
        rows += [{"day": d, "key": key, "unit": unit, "value": v} for d, v in zip(days, values)]
    figures = types.SimpleNamespace(parameters={"EG[PV-1]": 1.0, "EC_aux": 0.0, "Q_gas[D1]": 3.0},
                                    daily=pd.DataFrame(rows), site=types.SimpleNamespace(site="x"), first=days[0],
                                    last=days[-1], simulated=True)
    fast = charts.daily_values_chart(figures, tmp_path / "fast.png").read_bytes()
    monkeypatch.setattr(charts, "_bars", lambda ax, days, values: ax.bar(list(days), values, width=0.8,
                                                                          color=charts.BAR))
    assert fast == charts.daily_values_chart(figures, tmp_path / "bar.png").read_bytes()


def test_the_export_made_beside_in_forked_processes_is_the_one_made_here(store, tmp_path, monkeypatch):
    """The workbook, charts and raw readings' text are made in forked processes when the
    process runs no other thread, else in it: the same bytes either way, however many weeks
    are in flight; the raw readings are a gzip member a week, read as one text."""
    import contextlib

    import processing.export as export
    from processing.export import csv_files

    s = site("ph-biogas")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    monkeypatch.setattr(csv_files, "CHUNK", dt.timedelta(days=1))  # ten members, most in flight at once
    monkeypatch.setattr(csv_files, "PENDING_WEEKS", 3)
    monkeypatch.setattr(export.threading, "active_count", lambda: 1)  # pytest's own threads aside
    here_too = []  # the days formatted in this process
    monkeypatch.setattr(csv_files, "_raw_text", lambda week, text=csv_files._raw_text: here_too.append(1) or text(week))
    apart = export_period(s, store, ledger, FIRST, LAST, tmp_path / "apart")
    assert not here_too
    monkeypatch.setattr(export, "_apart", lambda figures: contextlib.nullcontext())
    here = export_period(s, store, ledger, FIRST, LAST, tmp_path / "here")
    assert len(here_too) == 10
    names = sorted(p.name for p in apart.iterdir())
    assert names == sorted(p.name for p in here.iterdir())
    for n in names:
        assert (apart / n).read_bytes() == (here / n).read_bytes(), n
    raw = (apart / "raw_readings.csv.gz").read_bytes()
    assert raw.count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") == 11  # a header member, then a day each
    lines = gzip.decompress(raw).decode().splitlines()
    assert lines[:2] == [SIMULATED_NOTE, "ts,device,channel,value,quality"] and lines[2] < lines[-1]


def test_a_failure_in_a_forked_process_fails_the_export_and_leaves_nothing(store, tmp_path, monkeypatch):
    import processing.export as export
    from processing.export import charts

    def broken(figures, path):
        raise ValueError("no room for the chart")

    monkeypatch.setattr(export.threading, "active_count", lambda: 1)
    monkeypatch.setattr(charts, "completeness_chart", broken)
    with pytest.raises(ValueError, match="no room for the chart"):
        export_period(site("mn-solar"), store, Ledger(tmp_path / "ledger.sqlite"), FIRST, LAST, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_forked_process_killed_fails_the_export_with_one_line_and_leaves_nothing(store, tmp_path, monkeypatch):
    import os
    import signal

    import processing.export as export
    from processing.export import charts

    monkeypatch.setattr(export.threading, "active_count", lambda: 1)
    monkeypatch.setattr(charts, "completeness_chart", lambda figures, path: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(ValueError, match="mn-solar_2026-09-25_2026-10-04: a process making the charts or the raw "
                                         "readings' text ended before its work was done .killed, or out of memory"):
        export_period(site("mn-solar"), store, Ledger(tmp_path / "ledger.sqlite"), FIRST, LAST, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.fuzz
def test_a_total_past_any_meter_is_charted_without_a_layout_warning(tmp_path):
    """A period total of 3e299 (a failed period's, from readings no meter gives) was written in full in
    its panel's title: 300 digits, wider than the chart, which matplotlib could not lay out ("axes sizes
    collapsed to zero", a UserWarning on the operator's terminal). Written in 6 significant digits now."""
    import warnings

    from processing.export import charts
    from processing.export.period_figures import collect

    s = site("ph-biogas")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first, last = month_bounds("2026-09")
    days = [first + dt.timedelta(days=d) for d in range((last - first).days + 1)]
    value = seeded(s)
    daily = [{"day": d.isoformat(), "parameter": k, "unit": "u", "value": 1e298 if k == "PE_flare" else value(k, d)}
             for k in methodology_keys(s) for d in days]
    reason = "cannot compute: PE beyond 9,007,199,254,740,992 t"
    summary = {"site": s.site, "first": first.isoformat(), "last": last.isoformat(), "methodology": s.methodology,
               "version": s.methodology_version, "status": "failed", "reasons": [reason], "RE": None, "PE": None,
               "ER_unrounded": None, "ER": None, "provisional": True, "parameters": {},
               "input_hash": f"{s.site}-2026-09", "completeness": {}, "simulated": False}
    details = {"reasons": [reason], "calculation": None, "explanation": [], "findings": [], "adjustments": [],
               "daily": [], "daily_parameters": daily}
    ledger.record(s.site, "2026-09", summary, details, {"defaults_hash": "d", "config_hash": "c", "code_version": "t"})
    figures = collect(s, SqliteStore(tmp_path / "empty.db"), ledger, first, last)
    assert figures.parameters["PE_flare"] > 1e299
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as -W error
        charts.daily_values_chart(figures, tmp_path / "daily_values.png")
    assert charts._total(figures.parameters["PE_flare"]) == "3e+299" and charts._total(1234.5) == "1,234.500"


def test_raw_csv_text_is_what_csv_writer_writes_for_any_readings():
    """``_raw_text(_week(...))`` against its definition, ``csv.writer`` on the readings sorted
    by (ts, device, channel), for sources with odd names, shared and sub-millisecond times,
    any float and flags that need quoting."""
    import csv
    import io

    import numpy as np
    import pandas as pd
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from processing.export.csv_files import _raw_text, _week
    from tests.conftest import fuzz_examples

    names = st.sampled_from(["a", "a-b", "b", "m,1", 'q"x', "z"])
    channels = st.sampled_from(["x", "y.z", "w,1", "energy"])
    readings = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 1, 999, 1000]),
                                  st.floats(allow_nan=True, allow_infinity=True),
                                  st.one_of(st.none(), st.text("ab, \"\n", min_size=1, max_size=5))), max_size=12)

    @settings(max_examples=fuzz_examples(30), deadline=None)
    @given(st.dictionaries(st.tuples(names, channels).map(".".join), readings, max_size=5))
    def check(sources):
        t0 = pd.Timestamp("2026-10-01", tz="UTC").value // 1000  # [us]
        frames, rows = {}, []
        for src, got in sources.items():
            got = sorted({(m, us): (v, q) for m, us, v, q in got}.items())  # a source's times are distinct
            ts = pd.to_datetime([t0 + m * 1000 + us for (m, us), _ in got], unit="us", utc=True)
            frames[src] = pd.DataFrame({"ts": ts, "value": np.array([v for _, (v, _) in got], dtype=float),
                                        "quality": np.array([q for _, (_, q) in got], dtype=object)})
            dev, ch = src.split(".", 1)
            rows += [(t, dev, ch, "" if np.isnan(v) else repr(float(v)), q or "") for t, (_, (v, q)) in zip(ts, got)]
        rows.sort(key=lambda r: r[:3])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [(t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", *rest) for t, *rest in rows])
        assert _raw_text(_week(frames)) == buf.getvalue()

    check()


def test_a_period_whose_months_add_up_beyond_any_float_is_exported_failed_with_its_reason(tmp_path):
    """Two months each with a huge but finite PE_flare (each month failed: beyond 2**53 t) add up to
    more than a float holds: the export stopped with "parameters.PE_flare: expected a finite number,
    got Infinity". The period is failed, exported as such, with its reason, as such a month is."""
    s = site("ph-biogas")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for month in ("2026-09", "2026-10"):
        first, last = month_bounds(month)
        days = [first + dt.timedelta(days=d) for d in range((last - first).days + 1)]
        value = seeded(s)
        daily = [{"day": d.isoformat(), "parameter": k, "unit": "u",
                  "value": 3e306 if k == "PE_flare" else value(k, d)} for k in methodology_keys(s) for d in days]
        reason = "cannot compute: PE beyond 9,007,199,254,740,992 t"
        summary = {"site": s.site, "first": first.isoformat(), "last": last.isoformat(), "methodology": s.methodology,
                   "version": s.methodology_version, "status": "failed", "reasons": [reason], "RE": None, "PE": None,
                   "ER_unrounded": None, "ER": None, "provisional": True, "parameters": {},
                   "input_hash": f"{s.site}-{month}", "completeness": {}, "simulated": False}
        details = {"reasons": [reason], "calculation": None, "explanation": [], "findings": [], "adjustments": [],
                   "daily": [], "daily_parameters": daily}
        ledger.record(s.site, month, summary, details, {"defaults_hash": "d", "config_hash": "c", "code_version": "t"})
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, dt.date(2026, 9, 1), dt.date(2026, 10, 31),
                           tmp_path / "out")
    m = manifest_of(folder)
    assert m["status"] == "failed" and m["figures"]["ER"] is None and m["figures"]["RE"] is None
    html = (folder / "summary.html").read_text()
    assert "the period: cannot compute: parameters.PE_flare: expected a finite number" in html
    report = openpyxl.load_workbook(folder / f"monitoring_{folder.name}.xlsx")["Monitoring report"]
    assert any("cannot compute" in str(c.value) for row in report.iter_rows() for c in row)
