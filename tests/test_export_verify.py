"""``jcm verify EXPORT_DIR`` on a real export: the files, the custody folder and the figures
recomputed from the signed messages alone, and each kind of tampering named.

The export is made the normal way (a real SQLite store, the ledger, ``export_period``)
from five days (and 1 October) of simulated mn-solar readings that were signed, in order,
by a test key, and stored with their signed messages as the collector stores them."""

from __future__ import annotations

import base64
import contextlib
import csv as csv_module
import dataclasses
import datetime as dt
import gzip
import hashlib
import html
import importlib.util
import io
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import contract.custody
from contract.config import load_site
from contract.config.custody import Custody
from contract.custody import GENESIS, chain_hash, sign, signed_bytes, verify
from contract.store import DeadLetter, SignedMessage
from jcm.cli import main
from processing.export import custody_folder, export_period
from processing.export.period_figures import months_between
from processing.ledger import Ledger
from processing.monthly import details, month_bounds, versions
from processing.period import PeriodProcessor
from simulators.history import SIMULATED_CHANNEL, history
from store.sqlite_store import SqliteStore
from tests.conftest import REPO, reference_site, rewrite_channel
from tests.test_custody import forged, public_key

FIRST, LAST = dt.date(2026, 9, 10), dt.date(2026, 9, 12)
EPOCH = "00000000000000aa"
EPOCH2 = "00000000000000bb"
MESSAGES = "custody/messages/messages.jsonl.gz"
#: the readings of an export: the period with a day either side, and 1 October (local) so that
#: the chain goes on past the window of readings September's recomputation reads (its witness)
DAYS = [(FIRST - dt.timedelta(days=1), LAST + dt.timedelta(days=1)), (dt.date(2026, 10, 1),) * 2]
#: the start and end of the period FIRST..LAST at mn-solar (UTC+8)
PERIOD_START, PERIOD_END = dt.datetime(2026, 9, 9, 16, tzinfo=dt.UTC), dt.datetime(2026, 9, 12, 16, tzinfo=dt.UTC)
#: the start and end of its reading window: September (local), 6 h either side (its witnesses' bounds)
WINDOW_START, WINDOW_END = dt.datetime(2026, 8, 31, 10, tzinfo=dt.UTC), dt.datetime(2026, 9, 30, 22, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def signer():
    return Ed25519PrivateKey.generate()


def make_export(tmp, signer, days: list[tuple[dt.date, dt.date]], tamper=None, signature_every: int = 1,
                new_epoch_from: dt.datetime | None = None, late=None, rotated: tuple | None = None,
                site_name: str = "mn-solar", change=None, hash_version: int | None = None):
    """An export of FIRST..LAST from readings of ``days`` (first, last), signed in order;
    ``tamper(store)`` runs on the store before the export. With ``signature_every`` N, the
    store keeps only every Nth message whole, the others covered (their signed bytes), as
    from backlog batches. From ``new_epoch_from`` on, the readings are of the epoch EPOCH2
    (from seq 1: the chain of EPOCH ends there). Those whose time ``late(ts)`` holds for reach
    the store only after the period's months were processed (a backlog that arrived after
    the ledger's revisions). ``rotated`` (time, key): from then on the gateway signs with
    ``key`` (k2), k1 retired then. ``change(reading, values)``: the values the gateway reads
    instead (signed as such), from ``site_name``'s simulated readings. ``hash_version``: the
    months are recorded in the ledger first with their input hash in that version (as a month
    first processed by an earlier version of the code keeps its hash's)."""
    site = reference_site(site_name)
    listed = [public_key(signer, "k1")] if rotated is None else [
        public_key(signer, "k1", valid_to=rotated[0]), public_key(rotated[1], "k2", valid_from=rotated[0])]
    site = site.model_copy(update={"custody": Custody(keys=listed)})
    store = SqliteStore(tmp / "jcm.db")
    ledger = Ledger(tmp / "ledger.sqlite", create=True)
    keys = {site.site: site.custody.keys}
    prev, seq, epoch = GENESIS, 0, EPOCH
    batches = (batch for first, last in days
               for batch in history(site, first, last, channels=set(site.monitoring_channels)))
    backlog: tuple[list, list] = ([], [])
    for batch in batches:
        readings, signed = [], []
        for r in batch:
            if new_epoch_from is not None and r.ts >= new_epoch_from and epoch == EPOCH:
                prev, seq, epoch = GENESIS, 0, EPOCH2
            seq += 1
            values = {k: v for k, v in r.values.items() if k != SIMULATED_CHANNEL}
            values = change(r, values) if change else values
            r = type(r)(site=r.site, gateway=r.gateway, device=r.device, ts=r.ts, values=values, units=r.units,
                        seq=seq, epoch=epoch)
            message = (sign(r.to_json(), prev, "k1", signer) if rotated is None or r.ts < rotated[0] else
                       sign(r.to_json(), prev, "k2", rotated[1]))
            prev = chain_hash(message)
            kept = message if seq % signature_every == 0 else signed_bytes(message)
            now = backlog if late is not None and late(r.ts) else (readings, signed)
            now[1].append(SignedMessage.verified(kept, verify(message, keys)))
            now[0].append(r)
        store.write(readings, messages=signed)
    if hash_version is not None:
        for month in months_between(FIRST, LAST):
            result = PeriodProcessor(site).process(store, *month_bounds(month), (hash_version,))
            ledger.record(site.site, month, result.summary(), details(result), versions(site))
    if late is not None:
        export_period(site, store, ledger, FIRST, LAST, tmp / "before")  # records the months' revisions
        store.write(backlog[0], messages=backlog[1])
    if tamper:
        tamper(store)
    folder = export_period(site, store, ledger, FIRST, LAST, tmp / "out")
    store.close()
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory, signer):
    return make_export(tmp_path_factory.mktemp("verify"), signer, DAYS)


@pytest.fixture
def export(made, tmp_path):
    return shutil.copytree(made, tmp_path / made.name)


def run(folder, capsys) -> tuple[int, str]:
    """``jcm verify`` of ``folder`` in one process and with two workers checking the signatures
    (in chunks small enough that these exports use them): both say the same, byte for byte."""
    earlier = capsys.readouterr()  # what the test printed before (e.g. jcm export's lines)
    said = []
    for jobs in ("1", "2"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(contract.custody, "CHUNK", 64)
            patch.setattr(contract.custody, "PARALLEL_CHUNKS", 2)
            rc = main(["verify", str(folder), "--jobs", jobs])
        captured = capsys.readouterr()
        said.append((rc, captured.out + captured.err))
    assert said[0] == said[1]
    return said[0][0], earlier.out + earlier.err + said[0][1]


def not_fully_checked(rc: int, out: str) -> bool:
    """Whether ``out`` is the verdict of an export verify could not check whole (exit 4): it leads with
    what was not compared, and no line says PASSED, which a reader or a script would take for a pass."""
    verdict = out.splitlines()[-1]
    return (rc == 4 and verdict.startswith("VERDICT: NOT FULLY CHECKED: ")
            and " not " in verdict.split(";")[0] and not re.search(r"\bPASSED\b", out))


def test_a_signed_export_made_in_forked_processes_passes(made, tmp_path, signer, capsys, monkeypatch):
    """The workbook and charts are drawn in forked processes when the export's runs no other
    thread (under pytest-xdist it does, so the other exports here are made in-process): they
    are given the figures as they fork, a site with public keys too (those do not pickle)."""
    import processing.export

    monkeypatch.setattr(processing.export.threading, "active_count", lambda: 1)
    folder = make_export(tmp_path, signer, DAYS)
    rc, out = run(folder, capsys)
    assert rc == 0 and "VERDICT: PASSED" in out
    for f in made.rglob("*"):  # the same files (the revisions' creation times aside: a new ledger)
        if f.is_file() and f.suffix != ".xlsx" and f.name not in ("manifest.json", "SHA256SUMS"):
            assert (folder / f.relative_to(made)).read_bytes() == f.read_bytes(), f.name


def rehash(folder):
    """Rewrite the manifest's and SHA256SUMS' hashes, as someone covering a change would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    names = sorted([*manifest["files"], "manifest.json"])
    (folder / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                                               for n in names))


def messages(folder) -> list[bytes]:
    return gzip.decompress((folder / MESSAGES).read_bytes()).splitlines()


def put_messages(folder, lines: list[bytes]) -> None:
    (folder / MESSAGES).write_bytes(gzip.compress(b"".join(m + b"\n" for m in lines), mtime=0))
    rehash(folder)


def energy_line(lines: list[bytes]) -> int:
    """The index of a message of the main meter's energy counter in mid-period."""
    return next(i for i, m in enumerate(lines) if b'"ts":"2026-09-11T03:00' in m and b'"device":"inv-01"' in m
                and b"ac_energy" in m)


def test_an_untouched_export_passes_and_says_what_was_checked(made, export, signer, capsys):
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["custody"]["signed_messages"] == len(messages(export)) > 0
    assert {"custody/keys.json", "custody/keys/k1.pem", MESSAGES, "custody/findings.json",
            "site.json"} <= set(manifest["files"])
    n = manifest["custody"]["signed_messages"]
    assert f"Chain of custody: {n:,} messages signed by the gateway" in (export / "summary.html").read_text()
    assert f"ゲートウェイが署名したメッセージ {n:,} 件" in (export / "summary.ja.html").read_text()
    summary = html.unescape((export / "summary.html").read_text())
    assert ("<p>Witnesses: all 1 chain(s) witnessed at the start of the reading window (or begun in it) and at its "
            "end: "
            in summary and "not witnessed" not in summary)
    assert "全 1 チェーンが読み取り範囲の開始時" in (export / "summary.ja.html").read_text()
    # the tail's witness: the chain's first message stamped at the reading window's end (exclusive: not read)
    assert [json.loads(m)["ts"] for m in messages(export)[-2:]] == ["2026-09-30T21:45:00.000Z",
                                                                    "2026-09-30T22:00:00.000Z"]
    rc, out = run(export, capsys)
    assert rc == 0, out
    assert f"site mn-solar, period {FIRST}..{LAST}" in out
    assert f"k1 (mn-solar, fingerprint {public_key(signer, 'k1').fingerprint})" in out
    assert "refused: 0" in out and "daily values: " in out and ": all equal" in out
    assert f"ER: recomputed {manifest['figures']['ER']}, exported {manifest['figures']['ER']}" in out
    assert "2026-09: input hash equal to revision 1's" in out and "note:" not in out
    assert ("witnesses: 1 of 1 chain(s) witnessed before the reading window's start (2026-08-31T10:00:00+00:00; "
            "or begun in it), 1 after its end (2026-09-30T22:00:00+00:00): ") in out
    assert ("files made again from the recomputation: summary.html, summary.ja.html, "
            f"{made.name.replace('mn-solar', 'monitoring_mn-solar')}.xlsx, daily_values.csv, completeness.csv, "
            "manifest.json, raw_readings.csv.gz (its text): each byte for byte as exported (the raw readings: their "
            "text; the workbook: its zip's every byte but its members' compressed streams, their contents compared)") in out
    assert out.rstrip().endswith("VERDICT: PASSED: files whole, every signature verified, every chain whole and "
                                 "witnessed across the reading window, figures recomputed equal, summary.html, "
                                 "summary.ja.html, the workbook, daily_values.csv, completeness.csv, "
                                 "raw_readings.csv.gz, manifest.json made again from it byte for byte")


def test_a_changed_value_is_named_by_its_reading_and_resigned_by_its_key(export, capsys):
    lines = messages(export)
    i = energy_line(lines)
    seq = json.loads(lines[i])["seq"]
    body = json.loads(lines[i])
    changed = lines[i].replace(b'"ac_energy":', b'"ac_energy":1', 1)
    put_messages(export, lines[:i] + [changed] + lines[i + 1:])
    rc, out = run(export, capsys)
    assert rc == 1
    assert f"{MESSAGES}:{i + 1} mn-solar/{body['gateway']}/{EPOCH} seq {seq}: bad signature (key 'k1')" in out
    assert f"seq {seq}: gap: 1 message(s) missing (refused there: bad signature (key 'k1'))" in out
    assert "2026-09: the readings of the signed messages are not those revision 1 was computed from" in out
    # the hash the workbook and both summary pages show is not the readings' either, each a place named
    assert "workbook sheet Monthly: 2026-09: input hash " in out and "summary.ja.html: 2026-09: input hash " in out
    assert "VERDICT: FAILED: 1 message(s) refused, 1 chain break(s), 4 difference(s) from the recomputation" in out

    other = Ed25519PrivateKey.generate()
    reading = signed_bytes(changed)
    resigned = sign(reading[:reading.rindex(b',"prev":"')] + b"}", body["prev"], "k2", other)
    put_messages(export, lines[:i] + [resigned] + lines[i + 1:])
    rc, out = run(export, capsys)
    assert rc == 1 and f"seq {seq}: unknown key 'k2' (not a key of site mn-solar)" in out


def test_a_changed_figure_is_named(export, capsys):
    path = next(export.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    ws = wb["Monitoring report"]
    row = next(r for r in range(1, ws.max_row + 1) if ws.cell(row=r, column=1).value == "RE")
    ws.cell(row=row, column=5).value = ws.cell(row=row, column=5).value + 1
    wb.save(path)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["figures"]["ER_exact"] = manifest["figures"]["ER_exact"] + "1"
    (export / "manifest.json").write_text(json.dumps(manifest))
    csv = (export / "daily_values.csv").read_text().splitlines()
    day, parameter, unit_id, unit, value = csv[1].split(",")
    csv[1] = ",".join([day, parameter, unit_id, unit, repr(float(value) + 1)])
    (export / "daily_values.csv").write_text("\n".join(csv) + "\n")
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1
    assert "workbook Monitoring report RE: exported " in out
    assert "manifest.json figures.ER_exact: exported " in out
    key = parameter + (f"[{unit_id}]" if unit_id else "")
    assert f"daily_values.csv: {key} on {day}: exported {float(value) + 1!r}" in out
    assert "VERDICT: FAILED: 3 difference(s) from the recomputation" in out


def test_a_missing_an_extra_and_an_altered_file_are_named(export, capsys):
    (export / "completeness.png").unlink()
    (export / "custody" / "notes.txt").write_text("added")
    with (export / "summary.html").open("a") as f:
        f.write("<!-- -->")
    rc, out = run(export, capsys)
    assert rc == 1
    assert "completeness.png: missing (listed in manifest.json)" in out
    assert "custody/notes.txt: not listed in manifest.json nor SHA256SUMS" in out
    assert "summary.html: SHA-256 " in out and "is not the manifest's" in out
    assert "VERDICT: FAILED: 4 file problem(s)" in out


def test_a_forged_signature_in_the_last_chunk_is_found(export, capsys):
    lines = messages(export)
    put_messages(export, lines[:-1] + [forged(lines[-1])])
    rc, out = run(export, capsys)  # with workers too, the last of whose chunks holds it
    assert rc == 1 and f"{MESSAGES}:{len(lines)} mn-solar/gw-mn-01/{EPOCH} seq {len(lines)}: bad signature" in out
    assert "VERDICT: FAILED" in out and "1 message(s) refused" in out


def test_a_messages_file_cut_short_is_named_on_one_line_with_workers_too(export, capsys):
    data = (export / MESSAGES).read_bytes()
    (export / MESSAGES).write_bytes(data[:len(data) * 2 // 3])  # past the chunks the workers take first
    rc, out = run(export, capsys)
    assert (rc, out) == (2, f"jcm verify: {MESSAGES}: not a readable gzip file: Compressed file ended before the "
                            "end-of-stream marker was reached\n")


@pytest.mark.parametrize("jobs", ["0", "-1", "x", "2.5", "", "\u0663", "257", "9" * 30])
def test_a_bad_number_of_jobs_is_named_on_one_line(export, capsys, jobs):
    assert main(["verify", str(export), "--jobs", jobs]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"jcm verify: --jobs {jobs!r}: not a number of processes from 1 to 256\n"


def _worker_killed(messages):
    """A signature worker killed from outside (the OOM killer, say) while it checks a chunk."""
    os._exit(9)


def test_a_worker_killed_mid_check_is_named_on_one_line(export, capsys, monkeypatch):
    """Before: a raw traceback (``BrokenProcessPool``) and no verdict."""
    monkeypatch.setattr(contract.custody, "CHUNK", 4)
    monkeypatch.setattr(contract.custody, "PARALLEL_CHUNKS", 2)
    monkeypatch.setattr(contract.custody, "_signatures", _worker_killed)
    assert main(["verify", str(export), "--jobs", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("jcm verify: a process checking signatures ended before its work was done (killed, or "
                            "out of memory?): nothing was verified; run again, or with --jobs 1 (was 2)\n")


def test_a_deleted_message_is_a_gap_with_its_cause(export, capsys):
    lines = messages(export)
    i = energy_line(lines)
    seq, gateway, ts = json.loads(lines[i])["seq"], json.loads(lines[i])["gateway"], json.loads(lines[i])["ts"]
    put_messages(export, lines[:i] + lines[i + 1:])
    rc, out = run(export, capsys)
    assert rc == 1 and f"seq {seq}: gap: 1 message(s) missing (no cause recorded" in out
    finding = {"kind": "gap", "site": "mn-solar", "gateway": gateway, "epoch": EPOCH, "first": seq, "last": seq,
               "noticed": ts, "cause": "1 reading(s) lost; the outbox dropped 1 (outbox_dropped)", "explained": 1,
               "previous": "", "start": ts, "end": ts, "resolved": None}
    (export / "custody" / "findings.json").write_text(json.dumps({"sequence_findings": [finding],
                                                                  "custody_findings": []}))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1
    assert f"seq {seq}: gap: 1 message(s) missing (collector: seq {seq}..{seq}: 1 reading(s) lost; the outbox " in out


def test_an_unsigned_export_says_so_and_a_folder_without_manifest_is_unusable(made, tmp_path, capsys):
    site = reference_site("mn-solar")
    store = SqliteStore(tmp_path / "jcm.db")
    store.write([r for batch in history(site, FIRST, FIRST, channels=set(site.monitoring_channels)) for r in batch])
    folder = export_period(site, store, Ledger(tmp_path / "ledger.sqlite", create=True), FIRST, FIRST,
                           tmp_path / "out")
    store.close()
    assert main(["export", "--site", "mn-solar", "--from", str(FIRST), "--to", str(FIRST), "--out",
                 str(tmp_path / "out"), "--force", "--sites", str(REPO / "config" / "sites"),
                 "--store", f"sqlite:///{tmp_path / 'jcm.db'}", "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    assert "warning: the period's readings are not signed: the export has no custody folder" in capsys.readouterr().err
    assert json.loads((folder / "manifest.json").read_text())["custody"]["signed_messages"] == 0
    assert not (folder / "custody").exists()
    assert "<b>NOT SIGNED: these readings carry no gateway signatures" in (folder / "summary.html").read_text()
    rc, out = run(folder, capsys)
    assert rc == 1 and "custody: NOT SIGNED" in out and "VERDICT: FAILED: not signed" in out
    (folder / "manifest.json").unlink()
    rc, out = run(folder, capsys)
    assert rc == 2 and "manifest.json: cannot read" in out and len(out.splitlines()) == 1


@pytest.mark.parametrize("name, text, expected", [
    ("custody/findings.json", '{"sequence_findings": [{"kind": "gap", "first": "1"}], "custody_findings": []}',
     "findings.json: sequence_findings 1: first: not an integer"),
    ("custody/findings.json", '{"sequence_findings": [], "custody_findings": [{"noticed": null}]}',
     "findings.json: custody_findings 1: "),
    ("custody/findings.json", '[]', "findings.json: not lists 'sequence_findings' and 'custody_findings'"),
    ("custody/findings.json", "[" * 100_000, "findings.json: not JSON"),
    ("site.json", '{"site": "mn-solar"}', "site.json: name: Field required (11 more)"),
    ("site.json", "[" * 100_000, "site.json: nested too deeply"),
    ("manifest.json", '{"files": {}, "site": "mn-solar", "fixed_parameters": [{"x": 1}]}',
     "manifest.json: fixed_parameters: "),
    ("manifest.json", '{"files": {}, "site": "mn-solar", "period": {"first": "2026-09-10", "last": "2026-09-12"}, '
                      '"revisions": [{}, {"read_span": ["2026-09-01T00:00:00", "2026-10-01T00:00:00+00:00"]}]}',
     "manifest.json: revisions[1].read_span: not two ISO 8601 times with their zone"),
    ("manifest.json", '{"files": {}, "site": "mn-solar", "period": {"first": "2026-09-12", "last": "2026-09-10"}}',
     "manifest.json: period.last 2026-09-10 is before period.first 2026-09-12"),
])
def test_unusable_input_is_named_on_one_line(export, capsys, name, text, expected):
    (export / name).write_text(text)
    rc, out = run(export, capsys)
    assert rc == 2 and expected in out and len(out.splitlines()) == 1, out


def documented_export_check() -> str:
    """The README's shell block that checks a whole export with standard tools."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**Checking a whole export with standard tools**"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("tamper", [False, True])
def test_the_documented_standard_tool_check_works(export, tamper):
    lines = messages(export)[:12]  # openssl runs once a message: a few show the procedure
    if tamper:
        lines[4] = lines[4].replace(b'"values":{', b'"values":{"x":1.0,', 1)
    put_messages(export, lines)
    if tamper:
        with (export / "summary.html").open("a") as f:
            f.write("<!-- -->")
        (export / "custody" / "extra.txt").write_text("added")
    done = subprocess.run(["bash", "-c", documented_export_check()], cwd=export, capture_output=True, text=True,
                          timeout=60)
    if not tamper:
        assert done.stdout == "" and done.stderr == "", done.stdout + done.stderr
        return
    chain = f"mn-solar/gw-mn-01/{EPOCH}"
    seq = json.loads(lines[5])["seq"]
    assert done.stdout.splitlines() == [
        "summary.html: FAILED", "custody/extra.txt", "line 5: signature does not verify (key 'k1')",
        f"line 6: {chain} seq {seq}: prev is not the hash of seq {seq - 1}"], done.stdout + done.stderr


@pytest.mark.parametrize("broken", [False, True])
def test_the_documented_standard_tool_check_follows_covered_messages(export, broken):
    lines = messages(export)[:12]
    lines = [m if i in (5, 11) else signed_bytes(m) for i, m in enumerate(lines)]  # covered by lines 6 and 12
    if broken:  # line 3 altered; line 12 gone, so nothing covers lines 7..11
        lines[2] = lines[2].replace(b'"values":{', b'"values":{"x":1.0,', 1)
        lines.pop()
    put_messages(export, lines)
    done = subprocess.run(["bash", "-c", documented_export_check()], cwd=export, capture_output=True, text=True,
                          timeout=60)
    if not broken:
        assert done.stdout == "" and done.stderr == "" and len(lines) == 12, done.stdout + done.stderr
        return
    chain = f"mn-solar/gw-mn-01/{EPOCH}"
    seq = json.loads(lines[3])["seq"]
    assert done.stdout.splitlines() == [f"line 4: {chain} seq {seq}: prev is not the hash of seq {seq - 1}",
                                        f"line 7: {chain}: no signed message after it covers it"], done.stdout


def test_the_messages_cover_the_counter_readings_read_beyond_the_months(tmp_path, signer, capsys):
    """A counter without readings just before September is settled by its last reading of
    August: the export's messages must hold it, or the recomputation reads other readings."""
    folder = make_export(tmp_path, signer, [(dt.date(2026, 8, 29), dt.date(2026, 8, 30)),
                                            (FIRST, LAST + dt.timedelta(days=1)), DAYS[-1]])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["revisions"][0]["read_span"][0].startswith("2026-08-29")
    assert manifest["custody"]["from"].startswith("2026-08-29")
    rc, out = run(folder, capsys)
    assert rc == 0, out


def test_the_messages_covering_the_last_of_the_window_are_exported_too(tmp_path, signer, capsys, monkeypatch):
    """A backlog's run of covered messages across the end of the export's window: the
    signature that covers its last messages there is stamped after it."""
    days = [(FIRST - dt.timedelta(days=1), LAST + dt.timedelta(days=1)), (dt.date(2026, 9, 30), dt.date(2026, 10, 1))]
    folder = make_export(tmp_path, signer, days, signature_every=47)
    manifest = json.loads((folder / "manifest.json").read_text())
    end = manifest["custody"]["to"]
    stamps = [json.loads(m[:-98] + b"}" if m.endswith(b'=="}') else m)["ts"] for m in messages(folder)]
    after = [ts for ts in stamps if dt.datetime.fromisoformat(ts) >= dt.datetime.fromisoformat(end)]
    assert 0 < len(after) < 47 and messages(folder)[-1].endswith(b'=="}'), (end, after)
    rc, out = run(folder, capsys)
    assert rc == 0, out
    # without them (nor the tail's witness, whose covering run they are too), the window's last messages
    # are not covered
    monkeypatch.setattr(custody_folder, "with_covering", lambda store, site, messages: messages)
    monkeypatch.setattr(custody_folder, "with_witnesses", lambda store, site, messages, found: messages)
    (tmp_path / "without").mkdir()
    rc, out = run(make_export(tmp_path / "without", signer, days, signature_every=47), capsys)
    assert rc == 1 and "not covered: seq" in out and "has no signature and nothing after it" in out, out
    assert "VERDICT: FAILED: 39 message(s) refused" in out, out  # seqs 2962..3000, after 2961 = 47 × 63


def export_first_day(tmp_path, url: str, *more: str):
    """``jcm export`` of mn-solar's day FIRST from the store at ``url`` (sites in tmp_path/sites,
    the ledger tmp_path/ledger.sqlite, made if new; ``more`` arguments); the export folder."""
    Ledger(tmp_path / "ledger.sqlite", create=True).close()
    assert main(["export", "--site", "mn-solar", "--from", str(FIRST), "--to", str(FIRST), "--out",
                 str(tmp_path / "out"), "--sites", str(tmp_path / "sites"), "--store", url,
                 "--ledger", str(tmp_path / "ledger.sqlite"), *more]) == 0
    return tmp_path / "out" / f"mn-solar_{FIRST}_{FIRST}"


def test_messages_through_the_collector_are_exported_and_verified(tmp_path, mosquitto, signer, capsys):
    """The real path after the gateway: signed messages over a real Mosquitto into the real
    collector and store, one lost on the way; the export holds the stored bytes and the
    collector's gap finding and the wrong prev it found, and ``jcm verify`` recomputes equal
    figures and names both breaks with the collector's finding."""
    from collector.service import Collector
    from contract import topics
    from tests.conftest import wait_until
    from tests.test_collector import Publisher, config

    _, signed = signed_history(tmp_path, signer, {}, wrong_prev_at=200)
    sent = [(topics.reading(r.site, r.gateway, r.device), m) for r, m in signed]
    lost = len(sent) // 2
    url = f"sqlite:///{tmp_path}/jcm.db"
    c = Collector(config(mosquitto, url, tmp_path / "sites", gap_grace_s=0.5))
    c.start()
    pub = Publisher(mosquitto)
    try:
        assert wait_until(lambda: pub.send(sent[:1]) or c.stored >= 1, 20)
        pub.send(sent[1:lost] + sent[lost + 1:])
        assert wait_until(lambda: c.stored >= len(sent) - 1, 30), c.stored
        time.sleep(2.2)  # the gap check: grace 0.5 s, every second
    finally:
        pub.close()
        c.stop()
    folder = export_first_day(tmp_path, url)
    witness = next(i for i, (r, _) in enumerate(signed) if r.ts >= WINDOW_END)  # the first of October's
    assert f"with {witness} signed messages (check: jcm verify {folder})" in capsys.readouterr().out
    assert messages(folder) == [m for _, m in sent[:lost] + sent[lost + 1:witness + 1]]
    rc, out = run(folder, capsys)
    assert rc == 1, out
    gone = json.loads(sent[lost][1])["seq"]
    assert f"seq {gone}: gap: 1 message(s) missing (collector: seq {gone}..{gone}: " in out
    assert ": all equal" in out and "2026-09: input hash equal to revision 1's" in out
    assert "seq 200: wrong_prev: prev is not seq 199's hash (collector: seq 200: wrong_prev: " in out
    assert out.rstrip().endswith("VERDICT: FAILED: 2 chain break(s)")


def signed_history(tmp_path, signer, custody: dict, wrong_prev_at: int | None = None,
                   days: tuple[tuple[dt.date, dt.date], ...] = ((FIRST, FIRST + dt.timedelta(days=1)), DAYS[-1])):
    """mn-solar's site file with ``signer`` as key k1 (and ``custody``) in ``tmp_path/sites``,
    and the readings of ``days`` (first, last; by default its first day and the next, and
    1 October: the gateway went on after the reading window, its chain is witnessed) signed as one chain: (site,
    [(reading, signed message)]); ``wrong_prev_at``: that seq carries a wrong ``prev``."""
    data = yaml.safe_load((REPO / "config" / "sites" / "mn-solar.yaml").read_text())
    data["custody"] = {**custody, "keys": [public_key(signer, "k1").model_dump(mode="json")]}
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mn-solar.yaml").write_text(yaml.safe_dump(data))
    site = load_site(tmp_path / "sites" / "mn-solar.yaml")
    prev, seq, signed = GENESIS, 0, []
    for part in (part for first, last in days
                 for part in history(site, first, last, step_s=1800, channels=set(site.monitoring_channels))):
        for r in part:
            seq += 1
            values = {k: v for k, v in r.values.items() if k != SIMULATED_CHANNEL}
            r = type(r)(site=r.site, gateway=r.gateway, device=r.device, ts=r.ts, values=values, units=r.units,
                        seq=seq, epoch=EPOCH)
            signed.append((r, sign(r.to_json(), "ab" * 32 if seq == wrong_prev_at else prev, "k1", signer)))
            prev = chain_hash(signed[-1][1])
    return site, signed


def test_a_signed_backlog_in_batches_through_the_collector_is_exported_and_verified(tmp_path, mosquitto, signer,
                                                                                       capsys):
    """The gateway's backlog as it crosses a thin link: batches that leave out what each
    chain's last signature covers; the collector keeps those messages as their signed bytes,
    the export holds them, and ``jcm verify`` verifies each through the chain."""
    from collector.service import Collector
    from contract import batch, topics
    from tests.conftest import wait_until
    from tests.test_collector import Publisher, config

    site, signed = signed_history(tmp_path, signer, {"require_signatures": True})
    sent = [m for _, m in signed]
    packed, i, last = [], 0, set()
    while i < len(sent):
        payload, n = batch.pack(sent[i:], 1200)  # small batches: several chain runs
        packed.append((topics.batch(site.site, site.gateway), payload))
        i += n
        last.add(i - 1)
    url = f"sqlite:///{tmp_path}/jcm.db"
    c = Collector(config(mosquitto, url, tmp_path / "sites"))
    c.start()
    pub = Publisher(mosquitto)
    try:
        assert wait_until(lambda: pub.send(packed[:1]) or c.stored >= 1, 20)
        pub.send(packed[1:])
        def stored() -> int:  # c.stored counts the first batch each time it is sent until one is taken
            with contextlib.closing(sqlite3.connect(tmp_path / "jcm.db")) as db:
                return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        assert wait_until(lambda: stored() >= len(sent), 30), stored()
    finally:
        pub.close()
        c.stop()
    folder = export_first_day(tmp_path, url)
    kept = messages(folder)
    # up to the tail's witness, the first message stamped after the reading window, and its signature
    signature = min(i for i in last if signed[i][0].ts >= WINDOW_END)
    assert len(packed) > 3 and kept == [m if i in last else signed_bytes(m) for i, m in enumerate(sent[:signature + 1])]
    rc, out = run(folder, capsys)
    assert rc == 0, out
    covered = len(kept) - len(last & set(range(signature + 1)))
    assert f"({covered} by the signature of a later message of their chain)" in out


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.update(figures="x", parameters=[1]), "manifest.json figures.RE: exported None"),
    (lambda m: m.update(revisions=[{"month": "2026-09", "input_hash": "0" * 64, "revision": 1}]),
     "2026-09: the readings of the signed messages are not those revision 1 was computed from"),
])
def test_a_hostile_manifest_is_a_mismatch_not_a_crash(export, capsys, change, expected):
    manifest = json.loads((export / "manifest.json").read_text())
    change(manifest)
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and expected in out and "Traceback" not in out, out


def test_text_in_a_workbook_number_cell_is_a_mismatch(export, capsys):
    path = next(export.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    ws = wb["Daily"]
    ws.cell(row=3, column=2).value = "12.5"
    wb.save(path)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and "workbook sheet Daily: " in out and ": exported none, recomputed " in out, out


def test_a_reading_altered_in_the_store_is_found_by_the_recomputation(tmp_path, signer, capsys):
    """Someone with write access to the store raises one day's energy readings: the export
    is computed from them and is internally consistent, but not from what was signed."""
    def raise_a_day(store):
        day = dt.datetime(2026, 9, 11, tzinfo=dt.UTC)
        assert rewrite_channel(store, "mn-solar", "poc-meter", "energy_export", day, day + dt.timedelta(hours=6),
                               lambda v, _: v + 0.25)
    folder = make_export(tmp_path, signer, DAYS,
                         tamper=raise_a_day)
    rc, out = run(folder, capsys)
    assert rc == 1, out
    assert "every signature verified" in out or "signatures verified" in out
    assert re.search(r"input hash NOT", out), out
    assert "VERDICT: FAILED" in out


def test_a_gap_before_seqs_the_collector_did_not_follow_names_its_jump_finding(export, capsys):
    """Messages after a deleted one whose seqs the collector found implausible (a jump finding, see
    tests/test_hostile_seqs.py): the break names it, and the finding is listed (before: neither)."""
    lines = messages(export)
    i = energy_line(lines)
    seq, gateway, ts = json.loads(lines[i])["seq"], json.loads(lines[i])["gateway"], json.loads(lines[i])["ts"]
    put_messages(export, lines[:i] + lines[i + 1:])
    jump = {"kind": "jump", "site": "mn-solar", "gateway": gateway, "epoch": EPOCH, "first": seq + 1,
            "last": seq + 5, "noticed": ts, "cause": "5 reading(s) beyond the bound", "explained": 0, "previous": "",
            "start": ts, "end": ts, "resolved": None}
    (export / "custody" / "findings.json").write_text(json.dumps({"sequence_findings": [jump],
                                                                  "custody_findings": []}))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1
    assert f"seq {seq}: gap: 1 message(s) missing (collector: seqs {seq + 1}..{seq + 5} not followed: 5 " in out
    assert f"sequence finding mn-solar/{gateway}: jump at seq {seq + 1} of epoch {EPOCH}: 5 reading(s)" in out


def test_a_gap_with_no_start_noticed_after_the_window_is_in_the_export_findings(tmp_path, signer):
    """An epoch's first seqs lost (no start), noticed long after the window (the collector was
    down): the period's QA puts the gap in the month of its end, so the export must carry it
    in custody/findings.json, or ``jcm verify`` recomputes the month without it (another status)."""
    from contract.store import SequenceFinding

    end = dt.datetime.combine(FIRST, dt.time(12), dt.UTC)
    gap = SequenceFinding("gap", "mn-solar", "gw-late", "00000000000000e1", 1, 40, end + dt.timedelta(days=40),
                          "lost before the epoch's first stored reading", end=end)
    folder = make_export(tmp_path, signer, [(FIRST, LAST)], tamper=lambda store: store.record_finding(gap))
    listed = json.loads((folder / "custody" / "findings.json").read_text())["sequence_findings"]
    # without it, ``jcm verify`` of this untouched export said "2026-09: input hash NOT revision 1's"
    assert [f["gateway"] for f in listed] == ["gw-late"]


# -- input hash versions ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made_v1(tmp_path_factory, signer):
    """An export of months first processed by the code before input hash version 2 (version 1)."""
    return make_export(tmp_path_factory.mktemp("verify-v1"), signer, DAYS, hash_version=1)


def set_hash_version(folder, version=None, drop: bool = False) -> None:
    """Name ``version`` as the revisions' input hash version in the manifest (``drop``: name none,
    as an export made before versions, which named no exporter either), the hashes rewritten to cover it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for rev in manifest["revisions"]:
        rev.pop("input_hash_version") if drop else rev.update(input_hash_version=version)
    if drop:
        del manifest["exporter"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rehash(folder)


def test_an_export_of_months_hashed_in_version_1_verifies_also_as_made_before_versions(made_v1, tmp_path, capsys):
    export = shutil.copytree(made_v1, tmp_path / made_v1.name)
    manifest = json.loads((export / "manifest.json").read_text())
    assert [r["input_hash_version"] for r in manifest["revisions"]] == [1]
    rc, out = run(export, capsys)
    assert rc == 0 and "2026-09: input hash equal to revision 1's (version 1), status" in out, out
    set_hash_version(export, drop=True)  # the manifest an export made before versions wrote
    rc, out = run(export, capsys)
    assert rc == 4 and "2026-09: input hash equal to revision 1's (version 1), status" in out, out
    assert not_fully_checked(rc, out), out  # its files cannot be made again by this exporter


@pytest.mark.parametrize("made_in, claimed, expected", [
    (2, 1, "2026-09: revision 1's input hash is the readings' hash in version 2, but the manifest says version 1"),
    (2, "none", "2026-09: revision 1's input hash is the readings' hash in version 2, but the manifest says version 1"),
    (1, 2, "2026-09: revision 1's input hash is the readings' hash in version 1, but the manifest says version 2"),
    (2, 3, "2026-09: revision 1's input hash is said to be of version 3, which this code does not know (it knows 1, 2)"),
    (2, True, "revision 1's input hash is said to be of version True, which this code does not know"),
])
def test_an_input_hash_claimed_in_another_version_is_named(made, made_v1, tmp_path, capsys, made_in, claimed,
                                                          expected):
    source = made if made_in == 2 else made_v1
    export = shutil.copytree(source, tmp_path / source.name)
    set_hash_version(export, drop=True) if claimed == "none" else set_hash_version(export, claimed)
    rc, out = run(export, capsys)
    assert rc == 1 and expected in out and "VERDICT: FAILED: 1 difference(s) from the recomputation" in out, out


def monthly_hash_cells(folder):
    """The workbook, its sheet Monthly and the 2026-09 row's input hash and version cells."""
    path = next(folder.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    ws = wb["Monthly"]
    header = next(r for r in ws.iter_rows() if r[0].value == "Month")
    at = {c.value: c.column for c in header}
    row = next(r[0].row for r in ws.iter_rows() if r[0].value == "2026-09")
    return path, wb, ws.cell(row=row, column=at["Input hash"]), ws.cell(row=row, column=at["Input hash version"])


def test_the_workbook_and_summary_pages_show_the_input_hash_with_its_version(made):
    manifest = json.loads((made / "manifest.json").read_text())
    rev = manifest["revisions"][0]
    _, _, hash_cell, version_cell = monthly_hash_cells(made)
    assert (hash_cell.value, version_cell.value) == (rev["input_hash"], rev["input_hash_version"]) == \
        (rev["input_hash"], 2)
    for page in ("summary.html", "summary.ja.html"):
        assert f"<td><code>{rev['input_hash']}</code></td><td class=n>2</td></tr>" in (made / page).read_text()


@pytest.mark.parametrize("where, change, expected", [
    ("workbook", "version", "workbook sheet Monthly: 2026-09: input hash {h} of version 1, recomputed "),
    ("workbook", "hash", "workbook sheet Monthly: 2026-09: input hash {e} of version 2, recomputed {h}"),
    ("workbook", "unknown", "workbook sheet Monthly: 2026-09: input hash {h} of version 'two', recomputed none"),
    ("workbook", True, "workbook sheet Monthly: 2026-09: input hash {h} of version True, recomputed none"),
    ("summary.html", "version", "summary.html: 2026-09: input hash {h} of version 1, recomputed "),
    ("summary.ja.html", "hash", "summary.ja.html: 2026-09: input hash {e} of version 2, recomputed {h}"),
])
def test_an_input_hash_or_version_edited_in_the_workbook_or_a_summary_is_named(made, tmp_path, capsys, where,
                                                                                change, expected):
    export = shutil.copytree(made, tmp_path / made.name)
    h = json.loads((export / "manifest.json").read_text())["revisions"][0]["input_hash"]
    edited = h[:-1] + ("0" if h[-1] != "0" else "1")
    if where == "workbook":
        path, wb, hash_cell, version_cell = monthly_hash_cells(export)
        if change == "hash":
            hash_cell.value = edited
        else:
            version_cell.value = {"version": 1, "unknown": "two"}.get(change, change)
        wb.save(path)
    else:
        page = (export / where).read_text()
        shown = f"<td><code>{h}</code></td><td class=n>2</td>"
        assert shown in page
        page = page.replace(shown, f"<td><code>{edited}</code></td><td class=n>2</td>" if change == "hash" else
                            f"<td><code>{h}</code></td><td class=n>1</td>")
        (export / where).write_text(page)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and expected.format(h=h, e=edited) in out, out
    assert "VERDICT: FAILED: 1 difference(s) from the recomputation" in out, out


def _move_a_stamp(store):
    """An inverter's reading of 11 September 03:00 UTC moved 1 ms later in the store."""
    at = int(dt.datetime(2026, 9, 11, 3, tzinfo=dt.UTC).timestamp() * 1000)
    assert store._db.execute("UPDATE readings SET ts = ts + 1 WHERE site = 'mn-solar' AND device = 'inv-01' "
                             "AND ts = ?", (at,)).rowcount == 1
    store._db.commit()


def _flag_a_reading(store):
    """An inverter's reading of 11 September 03:00 UTC flagged in the store (its value kept)."""
    from contract.message import Quality, Reading

    at = dt.datetime(2026, 9, 11, 3, tzinfo=dt.UTC)
    row = store.read("mn-solar", at, at + dt.timedelta(seconds=1), devices=["inv-01"], channels=["ac_energy"])
    assert len(row) == 1
    store.write([Reading(site="mn-solar", gateway=row["gateway"].iloc[0], device="inv-01", ts=at,
                         values={"ac_energy": float(row["value"].iloc[0])}, quality={"ac_energy": Quality.timeout})])


@pytest.mark.parametrize("tamper", [_move_a_stamp, _flag_a_reading], ids=["stamp moved 1 ms", "flag added"])
def test_a_stamp_or_a_flag_changed_in_the_store_is_found_by_the_input_hash(tmp_path, signer, capsys, tamper):
    """The export is computed from readings that differ from the signed ones in a stamp by a
    millisecond (version 1 of the hash, whole seconds, did not see it: the figures are the same)
    or in a flag: the recomputation's input hash names the month."""
    folder = make_export(tmp_path, signer, DAYS, tamper=tamper)
    rc, out = run(folder, capsys)
    assert rc == 1 and "every signature verified" in out, out
    assert "2026-09: input hash NOT revision 1's (version 2)" in out
    assert "2026-09: the readings of the signed messages are not those revision 1 was computed from" in out


def test_the_raw_readings_file_holds_each_value_and_stamp_exactly(made, tmp_path):
    """Read back from its text, raw_readings.csv.gz gives the version-2 input hash of the store's
    readings of the period: every value (``repr``) and stamp (ms) written exactly, as the hash
    needs to be recomputed from an export."""
    import csv

    import pandas as pd

    from processing.export.period_figures import local_bounds
    from processing.period import input_hash

    site = reference_site("mn-solar")
    store = SqliteStore(shutil.copy(made.parent.parent / "jcm.db", tmp_path / "jcm.db"))  # the export's store
    stored = store.read_sources(site.site, *local_bounds(site, FIRST, LAST), site.monitoring_sources)
    store.close()
    rows: dict[str, list] = {src: [] for src in site.monitoring_sources}
    with gzip.open(made / "raw_readings.csv.gz", "rt", newline="") as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            rows[f"{r['device']}.{r['channel']}"].append(
                (r["ts"], float(r["value"]) if r["value"] else math.nan, r["quality"] or None))
    read_back = {src: pd.DataFrame({"ts": pd.to_datetime([t for t, _, _ in got], utc=True),
                                    "value": [v for _, v, _ in got],
                                    "quality": pd.Series([q for _, _, q in got], dtype=object)})
                 for src, got in rows.items()}
    assert sum(len(f) for f in read_back.values()) == sum(len(f) for f in stored.values()) > 0
    assert input_hash(read_back, version=2) == input_hash(stored, version=2)


# -- witnesses: no chain cut short before the reading window's end ------------------------------

CHAIN = f"mn-solar/gw-mn-01/{EPOCH}"


def cut(at: dt.datetime, before: bool = False):
    """A tamper deleting every reading and signed message stamped from ``at`` on (or before it)."""
    def tamper(store):
        for table in ("readings", "messages"):
            store._db.execute(f"DELETE FROM {table} WHERE ts {'<' if before else '>='} ?", (int(at.timestamp() * 1000),))
        store._db.commit()
    return tamper


def test_a_chain_cut_short_before_the_periods_end_is_named_not_witnessed(tmp_path, signer, capsys):
    """The hole: the chain's last messages of the period and everything after taken out of
    the store (or of the export, its figures recomputed): every signature, link and figure
    holds, and ``jcm verify`` PASSED it (before: exit 0). Now the chain is named, with its
    last seq and time and how long before the reading window's end; the manifest's reason (the
    exporter's, or a forger's) is shown as what it is, and so is its absence."""
    folder = make_export(tmp_path, signer, DAYS,
                         tamper=cut(dt.datetime(2026, 9, 12, tzinfo=dt.UTC)))
    seq = json.loads(messages(folder)[-1])["seq"]
    rc, out = run(folder, capsys)
    assert rc == 3, out
    assert (f"  tail not witnessed: its last message, seq {seq}, is stamped 2026-09-11T23:45:00+00:00, 18 d 22:15 "
            "before the reading window's end, and no later message of the chain is in the export: its readings after "
            "that time cannot be shown complete") in out
    assert ("  the manifest's reason (unsigned: it explains, it proves nothing): the store holds no later message of "
            "this chain stamped at or after the reading window's end") in out
    assert ("witnesses: 1 of 1 chain(s) witnessed before the reading window's start" in out
            and ", 0 after its end" in out)
    assert out.count("not witnessed") == 1 and "; 1 tail(s) not (longest 18 d 22:15 before the end)" in out
    summary = html.unescape((folder / "summary.html").read_text())
    assert ("<p><b>Witnesses: 1 of 1 chain(s) witnessed at the start of the reading window (or begun in it), 0 of 1 "
            "at its end. NOT WITNESSED") in summary
    assert (f"<tr><td>end: its last message</td><td>mn-solar / gw-mn-01 / <code>{EPOCH}</code></td>"
            f"<td class=n>{seq}</td><td>2026-09-11T23:45:00+00:00</td>"
            "<td>18 d 22:15 before the reading window's end</td><td>the store holds no later message of this chain "
            "stamped at or after the reading window's end") in summary
    assert "Reason given by the export (unsigned: it explains, it proves nothing)" in summary
    assert "jcm verify <folder> checks each chain end" in summary
    assert "読み取り範囲の終了の 18 d 22:15 前" in (folder / "summary.ja.html").read_text()
    assert ": all equal" in out and "custody: every signature verified, every chain whole" in out
    assert out.rstrip().endswith(
        f"VERDICT: NOT WITNESSED: {CHAIN} after seq {seq}, 18 d 22:15 before the reading window's end: the readings "
        "of the reading window beyond each cannot be shown complete; otherwise files whole, every signature verified, "
        "every chain whole, figures recomputed equal"), out
    # a forger who also takes the chain out of the manifest's list
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = manifest["custody"]["witnesses"]["not_witnessed"]
    assert [(t["end"], t["epoch"], t["seq"]) for t in listed] == [("tail", EPOCH, seq)]
    manifest["custody"]["witnesses"]["not_witnessed"] = []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rehash(folder)
    rc, out = run(folder, capsys)  # the pages, made again from that manifest, say witnessed: not what they show
    assert rc == 1 and "  the manifest does not list it as not witnessed, as the export would have" in out, out
    assert "  summary.html line 24: exported '<p><b>Witnesses: 1 of 1 chain(s)" in out, out
    manifest["custody"]["witnesses"] = {"not_witnessed": [1, {"end": ["tail"], "gateway": {}}]}  # not a crash
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rehash(folder)
    rc, out = run(folder, capsys)
    assert rc == 1 and "  the manifest does not list it as not witnessed, as the export would have" in out, out
    assert "files made again: cannot: manifest.json: its revisions, config_changes or custody are not" in out, out


def test_the_last_messages_taken_out_of_an_export_are_named_with_its_other_failures(export, capsys):
    lines = messages(export)
    cut = next(i for i, m in enumerate(lines) if b'"ts":"2026-09-12T' in m)
    put_messages(export, lines[:cut - 3])
    rc, out = run(export, capsys)
    seq = json.loads(lines[cut - 4])["seq"]
    assert rc == 1 and f"  tail not witnessed: its last message, seq {seq}, is stamped 2026-09-11T23:45" in out, out
    assert "  the manifest does not list it as not witnessed" in out
    assert out.rstrip().endswith("difference(s) from the recomputation, 7 file(s) not as the recomputation makes "
                                 "them, 1 chain end(s) not witnessed"), out


def test_a_chain_that_ends_in_the_period_is_named_with_what_the_export_knows(tmp_path, signer, capsys):
    """A new epoch (the gateway's outbox was emptied) ends the chain before the period's end:
    nothing signed can witness the old chain's tail, so it is named, with the collector's
    finding as the manifest's reason; the new epoch's chain is witnessed."""
    from contract.store import SequenceFinding

    new = dt.datetime(2026, 9, 11, 4, tzinfo=dt.UTC)

    def epoch_finding(store):
        last = store._db.execute("SELECT MAX(seq) FROM messages WHERE epoch = ?", (EPOCH,)).fetchone()[0]
        store.record_finding(SequenceFinding("epoch", "mn-solar", "gw-mn-01", EPOCH2, last, last, new,
                                             "the gateway's outbox was new", previous=EPOCH))
    folder = make_export(tmp_path, signer, DAYS,
                         new_epoch_from=new, tamper=epoch_finding)
    witnesses = json.loads((folder / "manifest.json").read_text())["custody"]["witnesses"]
    [old] = witnesses["not_witnessed"]
    why = f"the collector found the gateway's new epoch {EPOCH2} after seq {old['seq']} of this one: the " \
          "gateway's outbox was new"
    assert witnesses == {"start": WINDOW_START.isoformat(), "end": WINDOW_END.isoformat(), "chains": 2,
                         "not_witnessed": [{"end": "tail", "gateway": "gw-mn-01", "epoch": EPOCH, "seq": old["seq"],
                                            "ts": "2026-09-11T03:45:00+00:00", "why": why}]}
    rc, out = run(folder, capsys)
    assert rc == 3, out
    assert (f"chain {CHAIN}: seq 1..{old['seq']}, {old['seq']} verified message(s)\n  tail not witnessed: "
            f"its last message, seq {old['seq']}, is stamped 2026-09-11T03:45:00+00:00, 19 d 18:15 before") in out
    assert f"  the manifest's reason (unsigned: it explains, it proves nothing): {why}" in out
    assert ("witnesses: 2 of 2 chain(s) witnessed before the reading window's start" in out
            and ", 1 after its end" in out)
    assert out.count("not witnessed: ") == 1  # the new epoch's chain begins in the period: its head needs none


def test_a_hostile_reason_is_shown_on_the_summary_as_text(tmp_path, signer):
    """The manifest's reason may quote what the collector found (a finding's cause): on the
    summary it is text, never markup, and cannot reorder the line it is on."""
    from contract.store import SequenceFinding

    new = dt.datetime(2026, 9, 11, 4, tzinfo=dt.UTC)
    cause = "</td><script>alert(1)</script><img src=x onerror=alert(2)> \u202egnp.exe {span}"

    def epoch_finding(store):
        last = store._db.execute("SELECT MAX(seq) FROM messages WHERE epoch = ?", (EPOCH,)).fetchone()[0]
        store.record_finding(SequenceFinding("epoch", "mn-solar", "gw-mn-01", EPOCH2, last, last, new, cause,
                                             previous=EPOCH))
    folder = make_export(tmp_path, signer, DAYS,
                         new_epoch_from=new, tamper=epoch_finding)
    [old] = json.loads((folder / "manifest.json").read_text())["custody"]["witnesses"]["not_witnessed"]
    assert old["why"].endswith(cause)
    for name in ("summary.html", "summary.ja.html"):
        page = (folder / name).read_text()
        assert "<script" not in page and "<img src=x" not in page and "\u202e" not in page, name
        assert ("&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; \\u202egnp.exe "
                "{span}</td></tr>") in page, name
        assert "19 d 18:15" in page, name


def test_a_witness_after_the_window_is_exported_but_is_no_reading_of_the_figures(tmp_path, signer, capsys,
                                                                                   monkeypatch):
    """The gateway was cut off from the period's last day to 2 October, and its backlog
    arrived after September's revision: the chain's witness, found by seq, is stamped after
    the window of readings the figures were computed from. ``jcm verify`` checks it and
    leaves its reading out of the recomputation, which would otherwise settle the counters'
    gap across the month's end with it (the revision could not: another input hash)."""
    october = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    k2 = Ed25519PrivateKey.generate()  # and the gateway's key was rotated on 1 October
    folder = make_export(tmp_path, signer, [(FIRST - dt.timedelta(days=1), LAST - dt.timedelta(days=1)),
                                            (dt.date(2026, 10, 2), dt.date(2026, 10, 2))],
                         late=lambda ts: ts >= october, rotated=(october, k2))
    manifest = json.loads((folder / "manifest.json").read_text())
    # the witness's key, valid only after the window, is in the folder (before: "unknown key 'k2'")
    assert [k["id"] for k in manifest["custody"]["keys"]] == ["k1", "k2"]
    assert (folder / "custody/keys/k2.pem").exists()
    assert manifest["custody"]["witnesses"] == {"start": WINDOW_START.isoformat(), "end": WINDOW_END.isoformat(),
                                                "chains": 1, "not_witnessed": []}
    lines = messages(folder)
    witness = json.loads(lines[-1])
    assert witness["ts"].startswith("2026-10-01T16:00") and witness["seq"] == json.loads(lines[-2])["seq"] + 1
    assert witness["key"] == "k2"
    assert b"2026-10-0" not in gzip.decompress((folder / "raw_readings.csv.gz").read_bytes())
    rc, out = run(folder, capsys)
    assert rc == 0, out
    assert "witnesses: 1 of 1 chain(s) witnessed" in out and ", 1 after its end" in out
    assert "readings: 1 verified message(s) stamped outside" in out
    assert "2026-09: input hash equal to revision 1's" in out
    # with the witness's reading recomputed too
    import jcm.verify
    far = dt.timedelta(days=99)
    monkeypatch.setattr(jcm.verify, "reading_window", lambda *a: (october - far, october + far))
    rc, out = run(folder, capsys)
    assert rc == 1 and "2026-09: input hash NOT revision 1's" in out, out


def test_either_store_gives_the_witness_after_the_window_or_the_export_names_the_chain(tmp_path, signer, store_url,
                                                                                        capsys):
    """The witness query on SQLite and on InfluxDB: the period FIRST, its gateway silent
    from its end to 2 October. Exported before October's messages are stored, the chain is
    named; after, its first message of October witnesses it."""
    from store import open_store

    site, signed = signed_history(tmp_path, signer, {}, days=((FIRST, FIRST), (dt.date(2026, 10, 2),) * 2))
    keys = {site.site: site.custody.keys}
    later = next(i for i, (r, _) in enumerate(signed) if r.ts.month == 10)
    store = open_store(store_url)
    try:
        for part in (signed[:later], signed[later:]):
            store.write([r for r, _ in part], messages=[SignedMessage.verified(m, verify(m, keys)) for _, m in part])
            folder = export_first_day(tmp_path, store_url, "--force")
            told = capsys.readouterr().err
            rc, out = run(folder, capsys)
            if part[0][0].ts.month == 9:
                assert rc == 3 and f"{CHAIN} after seq {later}, 20 d 06:30 before the reading window's end" in out, out
                assert (f"warning: the tail of chain gw-mn-01/{EPOCH} (seq {later}, 2026-09-10T15:30:00+00:00) is not "
                        "witnessed: the store holds no later message") in told, told
            else:
                assert "witnessed" not in told, told
    finally:
        store.close()
    assert messages(folder) == [m for _, m in signed[:later + 1]]
    assert rc == 0 and ", 1 after its end" in out and "readings: 1 verified message(s)" in out, out


def test_a_chain_whose_first_messages_of_the_period_were_cut_is_named(tmp_path, signer, capsys):
    """The same at the period's start: the chain's messages before 10 September 00:00 UTC
    taken out of the store (before: exit 0, PASSED). Its first message there does not begin
    its chain, and nothing before it is left to witness that nothing was taken."""
    folder = make_export(tmp_path, signer, DAYS,
                         tamper=cut(dt.datetime(2026, 9, 10, tzinfo=dt.UTC), before=True))
    seq = json.loads(messages(folder)[0])["seq"]
    rc, out = run(folder, capsys)
    assert rc == 3, out
    assert (f"  head not witnessed: its first message, seq {seq}, is stamped 2026-09-10T00:00:00+00:00, 9 d 14:00 "
            "after the reading window's start, does not begin its chain") in out
    assert ("  the manifest's reason (unsigned: it explains, it proves nothing): the store holds no earlier message "
            "of this chain stamped before the reading window's start") in out
    assert ("witnesses: 0 of 1 chain(s) witnessed before the reading window's start" in out
            and ", 1 after its end" in out)
    summary = html.unescape((folder / "summary.html").read_text())
    assert ("Witnesses: 0 of 1 chain(s) witnessed at the start of the reading window (or begun in it), 1 of 1 at its "
            "end.") in summary
    assert (f"<tr><td>start: its first message</td><td>mn-solar / gw-mn-01 / <code>{EPOCH}</code></td>"
            f"<td class=n>{seq}</td><td>2026-09-10T00:00:00+00:00</td>"
            "<td>9 d 14:00 after the reading window's start</td>"
            "<td>the store holds no earlier message") in summary
    assert f"VERDICT: NOT WITNESSED: {CHAIN} before seq {seq}, 9 d 14:00 after the reading window's start: " in out


def test_a_witness_before_the_window_is_found_by_seq(tmp_path, signer, capsys):
    """A chain silent from 20 August to 11 September (local), its August messages arriving
    after September's revision: its last message of August precedes the export's first and
    witnesses its head; the reading is checked, not recomputed."""
    folder = make_export(tmp_path, signer, [(dt.date(2026, 8, 20),) * 2, (FIRST + dt.timedelta(days=1),
                                                                          LAST + dt.timedelta(days=1)), DAYS[-1]],
                         late=lambda ts: ts.month == 8)
    lines = messages(folder)
    witness, first = json.loads(lines[0]), json.loads(lines[1])
    assert witness["ts"] == "2026-08-20T15:45:00.000Z" and witness["seq"] == first["seq"] - 1 > 0
    assert json.loads((folder / "manifest.json").read_text())["custody"]["witnesses"]["not_witnessed"] == []
    rc, out = run(folder, capsys)
    assert rc == 0, out
    assert ("witnesses: 1 of 1 chain(s) witnessed before the reading window's start" in out
            and ", 1 after its end" in out)
    assert "readings: 2 verified message(s) stamped outside" in out


def test_a_message_stamped_at_the_periods_end_is_no_witness(tmp_path, signer, capsys):
    """A reading stamped exactly at the period's end closes its last day (``interval_day``):
    it is one of the period's readings, not a witness that none of them was left out. Cut
    right after the first message stamped at the end, the other meters' readings there
    (their last intervals of the period) were gone and ``jcm verify`` PASSED (before: exit 0,
    and an export of id-aceh-biomass cut so had its last day's EG_gross 1 % short). Now
    the witness must be stamped at or after the reading window's end, and the chain is named."""
    def after_first_at_end(store):
        seq = store._db.execute("SELECT MIN(seq) FROM messages WHERE ts >= ?",
                                (int(PERIOD_END.timestamp() * 1000),)).fetchone()[0]
        for table in ("readings", "messages"):
            store._db.execute(f"DELETE FROM {table} WHERE seq > ?", (seq,))
        store._db.commit()
    folder = make_export(tmp_path, signer, DAYS,
                         tamper=after_first_at_end)
    last = json.loads(messages(folder)[-1])
    assert last["ts"] == "2026-09-12T16:00:00.000Z" and last["device"] == "inv-01"
    rc, out = run(folder, capsys)
    assert rc == 3, out
    assert (f"  tail not witnessed: its last message, seq {last['seq']}, is stamped 2026-09-12T16:00:00+00:00, "
            "18 d 06:00 before the reading window's end") in out
    [listed] = json.loads((folder / "manifest.json").read_text())["custody"]["witnesses"]["not_witnessed"]
    assert (listed["end"], listed["seq"]) == ("tail", last["seq"])


def _inv_02_unread_around(instant: dt.datetime, monkeypatch) -> None:
    """The export's history with inv-02 unread for two hours either side of ``instant``."""
    import tests.test_export_verify as this

    made = this.history

    def unread(*args, **kwargs):
        for batch in made(*args, **kwargs):
            yield [r for r in batch if not (r.device == "inv-02" and abs(r.ts - instant) < dt.timedelta(hours=2))]
    monkeypatch.setattr(this, "history", unread)


def _cut_beyond_the_period_witness(side: str):
    """A forger's cut of the store: every message ``before`` the chain's last one stamped before the
    period's start, or ``after`` its first one stamped after the period's end (the witnesses once
    taken at the period's edges)."""
    def cut(store):
        pick, at, op = (("MAX", PERIOD_START, "<") if side == "before" else ("MIN", PERIOD_END, ">"))
        seq = store._db.execute(f"SELECT {pick}(seq) FROM messages WHERE ts {op} ?",
                                (int(at.timestamp() * 1000),)).fetchone()[0]
        for table in ("readings", "messages"):
            store._db.execute(f"DELETE FROM {table} WHERE seq {op} ?", (seq,))
        store._db.commit()
    return cut


def test_a_meters_last_reading_before_the_start_cut_with_the_chain_before_its_witness_is_named(
        tmp_path, signer, capsys, monkeypatch):
    """One gateway's chain carries every meter's readings, and its head witness is its last
    message before the period's start, one meter's. inv-02 could not be read for two hours
    across the start (a gap: its total over it counts on the day it ends, from its last
    reading before the start). Cut before the witness, that reading was gone and its gap's
    total with it, and ``jcm verify`` PASSED (exit 0: the chain's first message is stamped
    before the start). An export of id-aceh-biomass so cut (its ic-meter unread 15:00-19:00
    UTC across the start) had ER 570 t for the full data's 604 t, both PASSED."""
    _inv_02_unread_around(PERIOD_START, monkeypatch)
    folder = make_export(tmp_path, signer, DAYS, tamper=_cut_beyond_the_period_witness("before"))
    first = [json.loads(m) for m in messages(folder) if b'"device":"inv-02"' in m][0]
    assert first["ts"] == "2026-09-09T18:00:00.000Z"  # its last reading before the start is not in the export
    rc, out = run(folder, capsys)
    assert rc == 3 and "head not witnessed" in out, out


def test_a_meters_first_reading_after_the_end_cut_with_the_chain_after_its_witness_is_named(
        tmp_path, signer, capsys, monkeypatch):
    """The same at the period's end: inv-02 unread for two hours across the end (its gap's
    total counts from its first reading after the end, within the reading window), and the
    chain cut after its first message stamped after the period's end, another meter's: that
    reading was gone, and ``jcm verify`` PASSED (exit 0: the chain's last message is
    stamped after the period's end). The tail witness is taken at the reading window's end."""
    _inv_02_unread_around(PERIOD_END, monkeypatch)
    folder = make_export(tmp_path, signer, DAYS, tamper=_cut_beyond_the_period_witness("after"))
    last = [json.loads(m) for m in messages(folder) if b'"device":"inv-02"' in m][-1]
    assert last["ts"] == "2026-09-12T14:00:00.000Z"  # its first reading after the end is not in the export
    rc, out = run(folder, capsys)
    assert rc == 3 and "tail not witnessed" in out, out


def test_verify_does_not_load_the_chart_library():
    """matplotlib took 0.35 s of every `jcm verify` (half its start-up) and verify draws nothing."""
    code = "import sys, jcm.verify; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


# -- a failed period and non-finite numbers ---------------------------------------------

#: the gas train's CH4 fraction on a day of the period, read (and signed) far beyond any meter's range
HUGE_CH4 = {"float": 1e308, "figure": 1e300}


def huge_ch4(value: float):
    def change(r, values):
        if r.device == "gas-train" and "ch4_fraction" in values and r.ts.date() == FIRST + dt.timedelta(days=1):
            return {**values, "ch4_fraction": value}
        return values
    return change


@pytest.fixture(scope="module", params=list(HUGE_CH4))
def failed(request, tmp_path_factory, signer):
    """A signed ph-biogas export whose period's figures cannot be computed: that day's PE_flare is
    beyond any float (the period's total is infinite) or beyond LARGEST_FIGURE (2**53 t)."""
    return make_export(tmp_path_factory.mktemp(f"failed-{request.param}"), signer, DAYS, site_name="ph-biogas",
                       change=huge_ch4(HUGE_CH4[request.param]))


def strict_json(path):
    """``path`` parsed as strict JSON (RFC 8259: no NaN, no Infinity), as jq or JSON.parse would."""
    def refuse(constant):
        raise ValueError(f"{path.name}: {constant} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_a_failed_period_verifies_with_its_reason_and_a_claimed_figure_is_named(failed, tmp_path, capsys):
    """`jcm verify` of an export whose period cannot be computed stopped with one line and exit 2
    (the recomputation raised the reason the export gives). It recomputes that outcome: no
    figures, the same reason; an export claiming figures (or another reason) is a difference."""
    folder = shutil.copytree(failed, tmp_path / failed.name)
    rc, out = run(folder, capsys)
    assert rc == 0, out
    manifest = strict_json(folder / "manifest.json")
    assert manifest["status"] == "failed" and set(manifest["figures"].values()) == {None, "tCO2"}
    beyond_any_float = manifest["parameters"]["PE_flare"] == "Infinity"
    reason = "the period: cannot compute: " + (
        "parameters.PE_flare: expected a finite number, got Infinity" if beyond_any_float else "RE ")
    assert f"figures: none: {reason}" in out and "ER: recomputed none, exported none" in out, out
    assert f"figures recomputed equal: none, the period is failed ({reason}" in out, out
    # the same export claiming figures: a status and figures of its own, and a workbook with another reason
    manifest.update(status="verified")
    manifest["figures"].update(RE=12.5, ER=12, ER_exact="12.5")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    path = next(folder.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    ws = wb["Monitoring report"]
    cell = next(c for row in ws.iter_rows() for c in row if str(c.value).startswith("the period: cannot compute"))
    cell.value = "the period: cannot compute: something else"
    wb.save(path)
    rehash(folder)
    rc, out = run(folder, capsys)
    assert rc == 1, out
    assert f"manifest.json status: exported 'verified', recomputed 'failed': {reason}" in out, out
    assert f"manifest.json figures.ER: exported 12, recomputed none ({reason}" in out, out
    assert "manifest.json figures.ER_exact: exported '12.5', recomputed none" in out, out
    assert ("workbook Monitoring report reason: exported the period: cannot compute: something else, "
            f"recomputed {reason}") in out, out
    assert "VERDICT: FAILED: 5 difference(s) from the recomputation" in out, out


@pytest.mark.parametrize("failed", ["figure"], indirect=True)
def test_a_summary_stating_another_status_or_reason_than_the_recomputation_is_named(failed, tmp_path, capsys):
    """`jcm verify` compared a failed period's status and reason in the manifest and the workbook
    with the recomputation, not those the summary pages state (what a reader sees first): a summary
    edited to say "verified", or another reason, and its hash rewritten, passed. Each is a difference."""
    folder = shutil.copytree(failed, tmp_path / failed.name)
    reason = next(line for line in (folder / "summary.html").read_text().splitlines()
                  if line.startswith("<li>the period: cannot compute: "))[4:-5]
    en, ja = folder / "summary.html", folder / "summary.ja.html"
    en.write_text(en.read_text().replace("<td>failed</td>", "<td>verified</td>", 1))
    ja.write_text(ja.read_text().replace(f"<li>{reason}</li>", "<li>the period: cannot compute: a typo</li>"))
    rehash(folder)
    rc, out = run(folder, capsys)
    assert rc == 1, out
    said = html.unescape(reason)
    assert f"summary.html status: exported 'verified', recomputed 'failed': {said}" in out, out
    assert (f"summary.ja.html reason: exported the period: cannot compute: a typo, recomputed {said}") in out, out
    assert "VERDICT: FAILED: 2 difference(s) from the recomputation" in out, out


def test_a_summary_showing_other_figures_than_the_recomputation_is_named(export, capsys):
    """The summary pages' RE, PE and ER were compared with nothing: a summary.ja.html edited to show
    another ER, and its hash rewritten, passed. Each figure a page shows is compared as it shows it."""
    import re as regex

    ja = export / "summary.ja.html"
    page = ja.read_text()
    er = regex.search(r"<td class=n><b>(.*?) tCO2</b></td>", page)[1]
    ja.write_text(page.replace(f"<b>{er} tCO2</b>", "<b>999,999 tCO2</b>"))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and f"summary.ja.html ER: exported 999,999, recomputed {er}" in out, out
    assert "VERDICT: FAILED: 1 difference(s) from the recomputation" in out, out


def test_an_export_claiming_no_figures_where_they_are_recomputed_is_named(export, capsys):
    """The reverse: figures null and a reason (as a failed period's) where the recomputation has them."""
    manifest = json.loads((export / "manifest.json").read_text())
    manifest.update(status="failed")
    manifest["figures"].update(RE=None, ER=None)
    (export / "manifest.json").write_text(json.dumps(manifest))
    path = next(export.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    wb["Monitoring report"].append(["the period: cannot compute: made up"])
    wb.save(path)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and "manifest.json figures.RE: exported None, recomputed " in out, out
    assert ("workbook Monitoring report reason: exported the period: cannot compute: made up, recomputed none "
            "(the figures are computed)") in out, out
    assert "manifest.json status: exported 'failed', recomputed 'needs_review'" in out, out
    assert "VERDICT: FAILED: 4 difference(s) from the recomputation" in out, out


@pytest.mark.parametrize("failed", ["float"], indirect=True)
def test_every_json_file_of_an_export_is_strict_json_and_verifies_exactly(failed, tmp_path, capsys):
    """manifest.json was written with json.dumps' NaN and Infinity, which are not JSON (jq and
    JavaScript's JSON.parse refuse them): an infinite parameter total is written "Infinity"
    (and a NaN null). `jcm verify` compares them exactly, and still reads an export written
    with the literals before."""
    folder = shutil.copytree(failed, tmp_path / failed.name)
    for path in folder.rglob("*.json"):
        strict_json(path)
    manifest = strict_json(folder / "manifest.json")
    assert manifest["parameters"]["PE_flare"] == "Infinity"
    # written by the code before (which named no exporter): the literal Infinity (Python's json reads it)
    old = {**manifest, "parameters": {**manifest["parameters"], "PE_flare": math.inf}}
    del old["exporter"]
    (folder / "manifest.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    rehash(folder)
    assert '"PE_flare": Infinity' in (folder / "manifest.json").read_text()
    rc, out = run(folder, capsys)
    assert not_fully_checked(rc, out), out
    # null (NaN, no value) where the recomputation has an infinite total, or a finite one: each a difference
    changed = {**manifest, "parameters": {**manifest["parameters"], "PE_flare": None, "EC_aux": None}}
    (folder / "manifest.json").write_text(json.dumps(changed))
    rehash(folder)
    rc, out = run(folder, capsys)
    assert rc == 1, out
    assert "manifest.json parameters.PE_flare: exported None, recomputed inf" in out, out
    assert "manifest.json parameters.EC_aux: exported None, recomputed " in out, out
    assert "VERDICT: FAILED: 2 difference(s) from the recomputation" in out, out


def test_a_parameter_without_a_number_is_null_in_the_manifest(tmp_path):
    """A month's recorded daily value of a monitored parameter that is NaN (a ledger revision of
    earlier code) made the period's total NaN, written `NaN` in manifest.json: not JSON. It is
    null; the period cannot be computed (failed, with its reason)."""
    from processing.monthly import month_bounds
    from tests.test_export import methodology_keys, seeded

    s = reference_site("ph-biogas")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first, last = month_bounds("2026-09")
    value = seeded(s)
    daily = [{"day": (day := first + dt.timedelta(days=d)).isoformat(), "parameter": k, "unit": "u",
              "value": math.nan if (k, d) == ("EG_BG", 2) else value(k, day)}
             for k in methodology_keys(s) for d in range((last - first).days + 1)]
    summary = {"site": s.site, "first": first.isoformat(), "last": last.isoformat(), "methodology": s.methodology,
               "version": s.methodology_version, "status": "verified", "reasons": [], "RE": 1.0, "PE": 0.5,
               "ER_unrounded": 0.5, "ER": 0, "provisional": False, "parameters": {}, "input_hash": "h",
               "completeness": {}, "simulated": False}
    details = {"reasons": [], "calculation": None, "explanation": [], "findings": [], "adjustments": [], "daily": [],
               "daily_parameters": daily}
    ledger.record(s.site, "2026-09", summary, details, {"defaults_hash": "d", "config_hash": "c", "code_version": "t"})
    folder = export_period(s, SqliteStore(tmp_path / "empty.db"), ledger, first, last, tmp_path / "out")
    for path in folder.rglob("*.json"):
        strict_json(path)
    manifest = strict_json(folder / "manifest.json")
    assert manifest["parameters"]["EG_BG"] is None and manifest["status"] == "failed"
    assert manifest["figures"]["ER"] is None


@pytest.mark.parametrize("value, written", [(math.nan, "null"), (math.inf, '"Infinity"'),
                                            (-math.inf, '"-Infinity"'), (1.5, "1.5"), (-0.0, "-0.0")])
def test_a_non_finite_number_is_written_as_json_and_read_back_as_itself(tmp_path, value, written):
    from processing.export.json_file import number, write_json

    text = write_json(tmp_path / "x.json", {"a": [value], "b": {"c": value}}, indent=None).read_text()
    assert text == f'{{"a": [{written}], "b": {{"c": {written}}}}}\n'
    back = strict_json(tmp_path / "x.json")["b"]["c"]
    assert repr(number(back)) == repr(value)
    assert number(True) is None and number("inf") is None and number(10 ** 400) is None


@pytest.mark.parametrize("edit", ["<!--{row}-->{other}", "{row}{other}"])
def test_a_summary_showing_another_figure_beside_the_right_one_is_named(export, capsys, edit):
    """Each figure was read from the first row that matched on a summary page: a page edited to show
    another ER, the right one kept before it in an HTML comment (which no reader sees) or shown too,
    and its hash rewritten, passed. What comments hold is not read, and a page shows each figure once,
    or it is a difference."""
    page = (export / "summary.html").read_text()
    [row] = [line for line in page.splitlines() if "<td class=n><b>" in line]
    (export / "summary.html").write_text(page.replace(row, edit.format(row=row, other=row.replace("<b>", "<b>9"))))
    rehash(export)
    rc, out = run(export, capsys)
    er = row.split("<b>")[1].split(" tCO2")[0]
    shown = f"9{er}" if edit.startswith("<!--") else f"{er}; 9{er}"
    assert rc == 1 and f"summary.html ER: exported {shown}, recomputed {er}" in out, out
    assert "VERDICT: FAILED: 1 difference(s) from the recomputation" in out, out


def test_an_export_stating_a_better_status_than_its_months_is_named(export, capsys):
    """A computed period's status (the manifest's, the summary pages') is its months' worst (provisional
    where a fixed value is unconfirmed): it was compared with nothing. An export whose months need review
    edited to say 'verified' in the manifest and on the summary pages, its hashes rewritten, passed."""
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["status"] == "needs_review"
    manifest["status"] = "verified"
    (export / "manifest.json").write_text(json.dumps(manifest))
    for page in ("summary.html", "summary.ja.html"):
        text = (export / page).read_text()
        for word in ("needs review", "要確認"):
            text = text.replace(f"</th><td>{word}</td></tr>", "</th><td>verified</td></tr>", 1)
        (export / page).write_text(text)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and "manifest.json status: exported 'verified', recomputed 'needs_review'" in out, out
    assert "summary.html status: exported 'verified', recomputed 'needs_review'" in out, out
    assert "summary.ja.html status: exported 'verified', recomputed 'needs_review'" in out, out
    assert "VERDICT: FAILED: 3 difference(s) from the recomputation" in out, out


def test_an_export_without_a_summary_page_in_each_language_is_named(export, capsys):
    """Every export has its summary in each language. One with summary.ja.html removed, and from the
    manifest and SHA256SUMS, passed: the pages were compared only where found. Each missing is a difference."""
    (export / "summary.ja.html").unlink()
    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["files"]["summary.ja.html"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and "summary.ja.html: not in the export (it has its summary in each language)" in out, out


# -- what a reader of a page, the workbook or another file sees ----------------------------

def _style(page: str) -> str:  # a figure shown by CSS alone: every ER read "…0 tCO2" on screen
    return page.replace("</style>", "td.n b::after { content: '0' }</style>", 1)


def _no_reason(page: str) -> str:  # a QA reason of the month taken off the list, the rest kept
    return re.sub(r"<li>[^<]*</li>", "", page, count=1)


def _added(page: str) -> str:  # a line no field check reads
    return page.replace("</body>", "<p>Verified by the DOE, no findings</p></body>", 1)


@pytest.mark.parametrize("page, edit", [("summary.html", _style), ("summary.ja.html", _no_reason),
                                        ("summary.html", _added)])
def test_a_summary_page_showing_what_verify_does_not_read_is_named(export, capsys, page, edit):
    """verify read chosen parts of the summary pages: a figure shown by CSS, a reason taken off
    the list or a sentence added, the hashes rewritten, passed. The pages are made again from the
    recomputation and compared byte for byte."""
    text = (export / page).read_text()
    assert edit(text) != text
    (export / page).write_text(edit(text))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and f"  {page} line " in out and "made again from the recomputation" in out, out
    assert out.rstrip().endswith("1 file(s) not as the recomputation makes them"), out


def _number_format(ws) -> None:  # the ER cell shows 1,234 whatever it holds
    row = next(r for r in ws.iter_rows() if r[0].value == "ER")
    row[4].number_format = '"1,234"'


def _hidden_sheet(ws) -> None:  # a sheet a reader of the sheet list does not see
    ws.parent.create_sheet("Notes").sheet_state = "hidden"


def _comment(ws) -> None:  # openpyxl writes it beside the sheet (its rels and drawing)
    ws["A1"].comment = openpyxl.comments.Comment("ER confirmed by the DOE", "x")


@pytest.mark.parametrize("edit", [_number_format, _hidden_sheet, _comment])
def test_a_workbook_showing_what_verify_does_not_read_is_named(export, capsys, edit):
    """verify read the workbook's cell values: a number format showing another ER, a hidden sheet or a
    comment, the hashes rewritten, passed. The workbook is made again and compared byte for byte."""
    path = next(export.glob("*.xlsx"))
    wb = openpyxl.load_workbook(path)
    edit(wb["Monitoring report"])
    wb.save(path)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and f"  {path.name}: xl/worksheets/" in out and "1 file(s) not as the recomputation makes them" \
        in out, out


def test_a_comment_line_in_the_daily_values_is_named(export, capsys):
    """daily_values.csv's '#' lines were skipped, so one added ('# ER 9,999 t, verified') passed."""
    path = export / "daily_values.csv"
    path.write_text("# ER 9,999 tCO2, verified by the DOE\n" + path.read_text())
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and "  daily_values.csv line 1: exported '# ER 9,999" in out, out


@pytest.mark.parametrize("name", ["statement.txt", "custody/keys/k9.pem", "custody/notes.json"])
def test_a_file_added_and_listed_in_the_manifest_is_named(export, capsys, name):
    """A file added by hand and listed in the manifest and SHA256SUMS with its right hash passed, though
    nothing checks what it says. A file no export writes is named."""
    (export / name).write_text("The DOE verified this period: ER 9,999 tCO2\n")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"][name] = {}
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and f"  {name}: not a file an export writes: nothing checks what it says" in out, out
    assert "VERDICT: FAILED: 1 file problem(s)" in out, out


def test_an_export_by_another_exporter_is_not_fully_checked_saying_so(export, capsys):
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["exporter"] = "export-0000000000000000 openpyxl-3.0.0"
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 4 and "files made again: NOT DONE: the export names exporter 'export-0000000000000000" in out, out
    assert not_fully_checked(rc, out), out
    assert out.splitlines()[-1].startswith("VERDICT: NOT FULLY CHECKED: summary.html, "), out
    assert "were not made again and compared whole" in out, out


def test_each_month_is_compared_with_the_ledgers_latest_revision(made, export, capsys):
    """The manifest is not signed: its revisions (number, hash and version, sign-off) edited together
    were caught only against the ledger, and no command compared them. --ledger does, read-only."""
    ledger = made.parent.parent / "ledger.sqlite"
    before = ledger.read_bytes()
    rc = main(["verify", str(export), "--ledger", str(ledger)])
    out = capsys.readouterr().out
    assert rc == 0 and "  2026-09: revision 1, the ledger's latest, equal in every field" in out, out
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["revisions"][0].update(signed_off=True, signed_by="mrv-lead", signed_at="2026-10-02T00:00:00+00:00")
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc = main(["verify", str(export), "--ledger", str(ledger)])
    out = capsys.readouterr().out
    assert rc == 1 and ("2026-09: the export's revision 1 is not the ledger's latest (revision 1) as recorded: "
                        "signed_off True, the ledger's False; signed_by 'mrv-lead', the ledger's None") in out, out
    assert "1 difference(s) from the ledger" in out, out
    assert ledger.read_bytes() == before  # opened read-only (SQLite keeps its -shm and -wal beside it)
    missing = ledger.parent / "no-ledger.sqlite"
    assert main(["verify", str(export), "--ledger", str(missing)]) == 2 and not missing.exists()
    assert "no-ledger.sqlite does not exist" in capsys.readouterr().err


def test_a_default_value_raised_in_the_export_is_named(tmp_path, signer, capsys, monkeypatch):
    """The recomputation takes the manifest's fixed values as given: an export made with the grid's
    emission factor raised by half (still called the methodology's default, with its source) verified,
    every figure consistent with it. They are compared with what site.json and the defaults give."""
    import processing.export.period_figures
    import processing.fixed_values
    import processing.period

    real = processing.fixed_values.from_config

    def raised(site, spec):
        return [dataclasses.replace(f, value=f.value * 1.5) if f.parameter == "EF_RE" else f for f in real(site, spec)]

    for module in (processing.period, processing.export.period_figures):
        monkeypatch.setattr(module, "from_config", raised)
    folder = make_export(tmp_path, signer, DAYS)
    monkeypatch.undo()
    [fixed] = json.loads((folder / "manifest.json").read_text())["fixed_parameters"]
    assert fixed["parameter"] == "EF_RE" and fixed["value"] == pytest.approx(0.797 * 1.5)
    rc, out = run(folder, capsys)
    assert rc == 1 and "  manifest.json fixed_parameters EF_RE[PV-1]: exported {" in out, out
    assert "'value': 1.1955" in out and "site.json and the methodology's defaults give {" in out, out
    assert "1 fixed value(s) not those of site.json and the methodology's defaults" in out, out


def _manifest_text(folder, edit) -> None:
    """``edit`` the manifest's text, then its line of SHA256SUMS (the manifest lists no hash of itself)."""
    path = folder / "manifest.json"
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(edit(path.read_text()))
    sums = folder / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(old, hashlib.sha256(path.read_bytes()).hexdigest()))


def test_a_months_figure_or_a_flag_edited_in_the_manifest_alone_is_named(export, capsys):
    """A month's revision figures (RE, PE, ER) and flags in the manifest were compared with nothing: edited,
    with SHA256SUMS, they passed. The manifest is made again from the recomputation and compared."""
    manifest = json.loads((export / "manifest.json").read_text())
    er = manifest["revisions"][0]["ER"]
    manifest["revisions"][0]["ER"] = er + 100
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and (f"  manifest.json.revisions[0].ER: exported {er + 100}, made again from the recomputation "
                        f"{er}") in out, out


def test_a_figure_given_twice_in_the_manifest_is_named(export, capsys):
    """JSON readers differ on a key given twice (Python's json takes the last): a reader of the text saw
    the first, another ER, and verify read the last, the right one. The manifest's bytes are compared."""
    er = json.loads((export / "manifest.json").read_text())["figures"]["ER"]
    _manifest_text(export, lambda text: text.replace('"figures": {', f'"figures": {{\n    "ER": {er + 900},', 1))
    rc, out = run(export, capsys)
    assert rc == 1 and f"  manifest.json line 27: exported '    \"ER\": {er + 900}," in out, out


@pytest.mark.parametrize("key, value, shown", [
    ("signed_messages", 99_999, "Chain of custody: 99,999 messages signed"),
    ("witnesses", {"chains": 3}, "Witnesses: all 3 chain(s) witnessed"),
])
def test_a_custody_count_edited_in_the_manifest_and_the_pages_is_named(export, capsys, key, value, shown):
    """The manifest's custody entry (how many signed messages, chains) was the pages' source and compared
    with nothing: edited there and on both pages alike, it passed. It is counted from the folder."""
    manifest = json.loads((export / "manifest.json").read_text())
    custody = manifest["custody"]
    before = custody[key] if key == "signed_messages" else custody[key]["chains"]
    custody.update({key: value} if key == "signed_messages" else {key: {**custody[key], **value}})
    (export / "manifest.json").write_text(json.dumps(manifest))
    page = export / "summary.html"
    text = html.unescape(page.read_text())
    old = shown.replace("99,999", f"{before:,}").replace("all 3", f"all {before}")
    assert old in text
    page.write_text(text.replace(old, shown))
    now = 99_999 if key == "signed_messages" else 3
    (export / "summary.ja.html").write_text((export / "summary.ja.html").read_text()
                                            .replace(f" {before:,} ", f" {now:,} "))
    rehash(export)
    rc, out = run(export, capsys)
    member = "signed_messages" if key == "signed_messages" else "witnesses.chains"
    assert rc == 1 and f"  manifest.json.custody.{member}: exported {value if key == 'signed_messages' else 3}, " \
        f"made again from the recomputation {before}" in out, out


def test_a_files_size_edited_in_the_manifest_is_named(export, capsys):
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"]["site.json"]["bytes"] += 1
    _manifest_text(export, lambda text: json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    rc, out = run(export, capsys)
    assert rc == 1 and "  site.json: " in out and "bytes, the manifest says " in out, out


def test_a_number_format_edited_inside_the_workbooks_zip_is_named(export, capsys):
    """The workbook's cell values were compared, not their formats: a number format edited inside the zip
    (the rest byte for byte, as no spreadsheet program would leave it) passed. Named by its member."""
    import zipfile

    path = next(export.glob("*.xlsx"))
    with zipfile.ZipFile(path) as z:
        members = {i: z.read(i) for i in z.infolist()}
    styles = next(i for i in members if i.filename == "xl/styles.xml")
    # a number format shown instead of the value, given to every cell of style 0 (the figures' among them)
    members[styles] = members[styles].replace(b'numFmtId="0"', b'numFmtId="3"', 1)
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members.items():
            z.writestr(info, data)
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and f"  {path.name}: xl/styles.xml line " in out, out


def test_a_months_hash_and_version_edited_together_are_named_against_the_ledger(made, made_v1, tmp_path, capsys):
    """A month's input hash and its version edited together (to the same readings' hash in version 1)
    are consistent with the signed messages: only the ledger, which recorded version 2, can tell."""
    export = shutil.copytree(made, tmp_path / made.name)
    v1 = json.loads((made_v1 / "manifest.json").read_text())["revisions"][0]["input_hash"]
    v2 = json.loads((made / "manifest.json").read_text())["revisions"][0]["input_hash"]
    set_hash_version(export, 1)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["revisions"][0]["input_hash"] = v1
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc = main(["verify", str(export), "--ledger", str(made.parent.parent / "ledger.sqlite")])
    out = capsys.readouterr().out
    assert "2026-09: input hash equal to revision 1's (version 1)" in out, out  # the readings' hash in version 1
    assert rc == 1 and (f"input_hash '{v1}', the ledger's '{v2}'; input_hash_version 1, the ledger's 2") in out, out


def test_a_reading_edited_in_the_raw_readings_is_named(export, capsys):
    """raw_readings.csv.gz was checked by its hash alone: a value edited in it, the hashes rewritten, passed.
    Its text is made again from the verified readings."""
    path = export / "raw_readings.csv.gz"
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    i = next(i for i, line in enumerate(lines) if b",inv-01,ac_energy," in line)
    ts, device, channel, value, quality = lines[i].split(b",")
    lines[i] = b",".join([ts, device, channel, value + b"9", quality])
    path.write_bytes(gzip.compress(b"\n".join(lines), mtime=0))
    rehash(export)
    rc, out = run(export, capsys)
    assert rc == 1 and (f"  raw_readings.csv.gz (its text) line {i + 1}: exported "
                        f"{lines[i].decode()!r}") in out, out


def test_fixed_values_of_revisions_computed_with_other_settings_are_not_fully_checked(export, capsys):
    """Where a revision was computed with other settings than site.json's, its fixed values cannot be
    compared with site.json: not a silent pass, and --ledger compares them with what it recorded."""
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["revisions"][0]["config_hash"] = "0" * 64
    (export / "manifest.json").write_text(json.dumps(manifest))
    rehash(export)
    rc, out = run(export, capsys)
    assert "fixed values: NOT compared with site.json and the methodology's defaults: revision(s) 1 " in out, out
    assert not_fully_checked(rc, out), out
    assert out.splitlines()[-1].startswith("VERDICT: NOT FULLY CHECKED: the fixed values were not compared with "
                                           "site.json"), out


def test_a_month_signed_off_at_an_earlier_revision_is_compared_with_that_revision(tmp_path, signer, capsys):
    """``jcm signoff --revision N`` signs off a revision before the latest; the export then holds that one
    (``collect``), and --ledger compared it with the latest: an honest export FAILED against its ledger."""
    def later_revision_then_signoff(store):
        site = reference_site("mn-solar")
        ledger = Ledger(tmp_path / "ledger.sqlite", create=False)
        for month in months_between(FIRST, LAST):  # revision 2: the same readings hashed in version 2
            result = PeriodProcessor(site).process(store, *month_bounds(month), (2,))
            assert ledger.record(site.site, month, result.summary(), details(result), versions(site)).revision == 2
            ledger.sign_off(site.site, month, "mrv-lead", revision=1)
        ledger.close()

    folder = make_export(tmp_path, signer, DAYS, hash_version=1, tamper=later_revision_then_signoff)
    assert [(r["revision"], r["signed_off"]) for r in json.loads((folder / "manifest.json").read_text())["revisions"]
            ] == [(1, True)]
    rc = main(["verify", str(folder), "--ledger", str(tmp_path / "ledger.sqlite")])
    out = capsys.readouterr().out
    assert rc == 0 and "  2026-09: revision 1, the ledger's signed-off revision, equal in every field" in out, out


def test_verify_ledger_leaves_nothing_beside_the_ledger_and_reads_a_running_processors_commits(made, export,
                                                                                              tmp_path, capsys):
    """Read in place, a ledger in WAL mode got -wal and -shm files of the verifier's user beside it: the
    processor, another user, then failed to write it ('attempt to write a readonly database'), and a verifier
    who cannot write its directory could not read it. A ledger nothing holds open is read as a copy in memory;
    one held open (its commits in the -wal) in place, its files there already."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    ledger = folder / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(made.parent.parent / "ledger.sqlite")) as source, \
            contextlib.closing(sqlite3.connect(ledger)) as copy:
        source.backup(copy)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert main(["verify", str(export), "--ledger", str(ledger)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.sqlite"], capsys.readouterr().out
    processor = Ledger(ledger, create=False)  # running: the sign-off is in its -wal until it closes
    processor.sign_off("mn-solar", "2026-09", "mrv-lead")
    assert os.path.getsize(f"{ledger}-wal") > 0
    capsys.readouterr()
    assert main(["verify", str(export), "--ledger", str(ledger)]) == 1
    assert "signed_off False, the ledger's True" in capsys.readouterr().out
    processor.close()
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.sqlite"]
    assert main(["verify", str(export), "--ledger", str(ledger)]) == 1
    assert "signed_off False, the ledger's True" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.sqlite"]


def test_a_workbook_compressed_by_another_zlib_passes_and_its_hidden_bytes_are_named(tmp_path, signer, capsys,
                                                                                    monkeypatch):
    """The workbook is a zip: its members' deflate streams depend on the zlib Python is linked with (zlib-ng
    on some systems), not on what it holds. An honest export made with another one (here: deflate level 1)
    FAILED ('differs in its zip layout (members equal)'). Its entries are compared, their compression aside;
    bytes that no entry of its directory accounts for (a second copy of a sheet) are not."""
    import zipfile

    real = zipfile._get_compressor
    monkeypatch.setattr(zipfile, "_get_compressor", lambda kind, level=None: real(kind, 1))
    folder = make_export(tmp_path, signer, DAYS)
    monkeypatch.undo()
    rc, out = run(folder, capsys)
    assert rc == 0 and "VERDICT: PASSED: " in out, out
    path = next(folder.glob("*.xlsx"))
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        first = z.infolist()[0]
        contents = [z.read(info) for info in z.infolist()]
    # its first local entry given again before the rest: a reader of the directory sees the same members,
    # one of the stream of local entries sees that one twice
    path.write_bytes(data[:first.header_offset + 30 + len(first.filename) + len(first.extra) + first.compress_size]
                     + data)
    with zipfile.ZipFile(path) as z:
        assert [z.read(info) for info in z.infolist()] == contents
    rehash(folder)
    rc, out = run(folder, capsys)
    assert rc == 1 and f"  {path.name}: differs in its zip layout (members equal)" in out, out


#: a revision "number" that, put on the summary pages as it is, hides the ER shown and shows another
INJECTED = ('1</td></tr></table><style>td.n b{font-size:0}td.n b::before{content:"6,300 tCO2";font-size:1rem}'
            '</style><table><tr><td>')


@pytest.mark.parametrize("key, value", [("revision", INJECTED), ("revision", True), ("revision", "1"),
                                        ("created", "2026-10-01: ER 6,300 tCO2 confirmed by the Joint Committee"),
                                        ("input_hash_version", INJECTED)])
def test_a_revisions_number_or_time_that_is_not_one_is_named(tmp_path, signer, capsys, monkeypatch, key, value):
    """The files are made again with each revision's number and time as the manifest gives them (the ledger
    is not in the export): an exporter that wrote markup there, which the pages show as it is, or any text,
    had it made again alike, and the export PASSED showing another ER. They must be what a ledger records."""
    import processing.export.period_figures as period_figures

    real = period_figures._month_revision

    def doctored(*args):
        revision, signed = real(*args)
        return dataclasses.replace(revision, **{key: value}), signed

    monkeypatch.setattr(period_figures, "_month_revision", doctored)
    folder = make_export(tmp_path, signer, DAYS)
    monkeypatch.undo()
    for page in ("summary.html", "summary.ja.html"):  # the exporter escapes every value it writes there
        text = (folder / page).read_text()
        assert value != INJECTED or ("<style>td.n b" not in text and html.escape(INJECTED) in text), page
    rc, out = run(folder, capsys)
    named = (f"2026-09: revision 1's input hash is said to be of version {value!r}, which this code does not know"
             if key == "input_hash_version" else
             "files made again: cannot: manifest.json: its revisions, config_changes or custody are not as an export "
             f"writes them (ValueError: the revision of 2026-09: {key} {value!r} is not a ")
    assert rc == 1 and named in out, out


def test_the_exporter_names_lxml_when_the_workbook_library_writes_its_xml_with_it(monkeypatch):
    """openpyxl writes its XML with lxml when lxml is installed, and other bytes than with the standard library
    (the members of a workbook differ but docProps/app.xml and the theme): an honest export made where lxml was
    installed FAILED where it was not, under the same exporter name. The name says so: NOT FULLY CHECKED; and
    without lxml it names et_xmlfile, which then writes the XML."""
    from importlib.metadata import version

    import processing.export.manifest as manifest

    names = []
    for lxml in (False, True):
        monkeypatch.setattr(manifest, "LXML", lxml)
        monkeypatch.setattr(manifest, "version", lambda name: "6.1.3" if name == "lxml" else version(name))
        manifest.exporter_version.cache_clear()
        names.append(manifest.exporter_version())
    monkeypatch.undo()
    manifest.exporter_version.cache_clear()
    assert names[1] == names[0].replace(f" et_xmlfile-{version('et_xmlfile')}", " lxml-6.1.3"), names
    assert names[0].endswith(f" et_xmlfile-{version('et_xmlfile')}"), names


def exporter_of(tree) -> str:
    """The exporter version that the code in ``tree`` (a copy of contract/ and processing/) names."""
    spec = importlib.util.spec_from_file_location(f"manifest_of_{tree.name}_{time.monotonic_ns()}",
                                                  tree / "processing" / "export" / "manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.exporter_version()


def test_the_exporter_version_changes_with_the_code_the_exporter_imports_alone(tmp_path):
    """An edit anywhere in contract/ (the MQTT connection, say) made every earlier export verify only in part:
    the version covers the modules the exporter imports (directly, inside a function, or through the rest of
    processing/), found from the code, not a list."""
    tree = tmp_path / "tree"
    for package in ("contract", "processing"):
        shutil.copytree(REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = exporter_of(tree)

    def edit(path: str, text: str = "\n# an edit\n") -> str:
        with (tree / path).open("a", encoding="utf-8") as f:
            f.write(text)
        return exporter_of(tree)

    assert edit("contract/mqtt_connection.py") == before  # no exporter module imports it
    assert edit("contract/register_codec.py") == before
    assert edit("processing/ledger.py") == before  # the revisions' code_version
    after = edit("contract/float_text.py")  # the text of every value in the raw readings
    assert after != before
    assert edit("contract/counter.py") != after  # imported through processing/ alone
    assert edit("processing/export/messages/ja.json", "\n") != after  # the pages' labels
    after = exporter_of(tree)
    # a module the exporter comes to import, inside a function, counts from then on
    imported = edit("processing/export/charts.py", "\n\ndef _f():\n    import contract.mqtt_connection\n")
    assert imported != after and edit("contract/mqtt_connection.py") != imported


def test_every_module_an_export_runs_is_in_the_exporter_version(tmp_path, signer, monkeypatch):
    """The exporter version is found from import statements; this checks it against what runs: every file of
    contract/ and processing/export/ whose code ran while an export was made (and verified, which makes its files
    again) is among those it hashes, so that no module shaping the export's bytes is left out of it."""
    import threading

    from processing.export.manifest import exporter_files
    ran: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            ran.add(frame.f_code.co_filename)

    def traced(call):
        def run(*args, **kwargs):
            sys.setprofile(profile)
            threading.setprofile(profile)
            try:
                return call(*args, **kwargs)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)
        return run

    monkeypatch.setattr(sys.modules[__name__], "export_period", traced(export_period))
    folder = make_export(tmp_path, signer, DAYS[:1])
    traced(main)(["verify", str(folder)])  # makes the files again (NOT WITNESSED: the window runs on)
    roots = (REPO / "contract", REPO / "processing" / "export")
    used = {Path(f) for f in ran if any(Path(f).is_relative_to(r) for r in roots)}
    assert used, "the profile saw no module of the exporter"
    assert not used - set(exporter_files(REPO)), sorted(str(p.relative_to(REPO)) for p in used - set(exporter_files(REPO)))


#: the dead letters of ``letters_made``'s store: three of the period (a payload kept whole, one of which the
#: store keeps the first KiB, a budget's summary with none) and two the export leaves out (after the period's
#: end, and of another site)
LETTERS = [DeadLetter(PERIOD_START + dt.timedelta(hours=5), "jcm/v1/mn-solar/gw-mn-01/inv-01/reading",
                      b'{"site": "mn-solar", "ts": ', "not JSON: Expecting value: line 1 column 28 (char 27)"),
           DeadLetter(PERIOD_START + dt.timedelta(days=1), "jcm/v1/mn-solar/gw-mn-01/batch", bytes(range(256)) * 8,
                      "batch: not a gzip stream"),
           DeadLetter(PERIOD_END - dt.timedelta(seconds=1), "jcm/v1/mn-solar/", b"",
                      "7 more dead letter(s) of site 'mn-solar' were counted, not kept one by one"),
           DeadLetter(PERIOD_END, "jcm/v1/mn-solar/gw-mn-01/batch", b"late", "batch: not a gzip stream"),
           DeadLetter(PERIOD_START + dt.timedelta(hours=6), "jcm/v1/mn-wind/gw-w-01/batch", b"x", "another site's")]


@pytest.fixture(scope="module")
def letters_made(tmp_path_factory, signer):
    return make_export(tmp_path_factory.mktemp("letters"), signer, DAYS,
                       tamper=lambda store: store.write([], dead_letters=LETTERS))


def verify_once(folder, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", str(folder), *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def letter_rows(folder) -> list[list[str]]:
    return list(csv_module.reader(gzip.decompress((folder / "dead_letters.csv.gz").read_bytes()).decode().splitlines()))


def put_letter_rows(folder, rows: list[list[str]]) -> None:
    """Write the dead letters' rows back and cover the change (the manifest's count kept)."""
    text = io.StringIO()
    csv_module.writer(text, lineterminator="\n").writerows(rows)
    (folder / "dead_letters.csv.gz").write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
    rehash(folder)


def edited(rows, i, column, value):
    at = rows[0].index(column)
    return [row if n != i else [*row[:at], value, *row[at + 1:]] for n, row in enumerate(rows)]


def test_dead_letters_are_checked_row_by_row_and_an_edited_one_is_named(letters_made, tmp_path, capsys):
    """Each dead letter is read back and checked as far as the export holds it: written as the export writes
    it, received in the period on a topic of the site, in order, its payload's start of its size and SHA-256;
    an edit covered by new hashes (the manifest's count kept) is named by its file and line."""
    rc, out = verify_once(letters_made, capsys)
    assert rc == 0, out
    assert ("dead letters: 3 message(s) on the site's topics refused by the collector in the period, each with why in "
            "dead_letters.csv.gz: each row as the export writes it, received in the period on a topic of the site, "
            "oldest first, its payload's start of its size (2 whole, of their SHA-256); why each was refused is the "
            "collector's word") in out
    assert "dead_letters.csv.gz (" not in out  # no longer named as checked by its hash alone
    rows = letter_rows(letters_made)
    assert [row[4] for row in rows[1:]] == [d.reason for d in LETTERS[:3]]
    payload = base64.b64decode(rows[1][5])
    big = base64.b64decode(rows[2][5])
    wrong = {  # line 2 is the first letter's, 3 the second's (the header is line 1)
        "line 2: the payload's SHA-256 is ": edited(
            rows, 1, "payload_start_base64", base64.b64encode(payload.replace(b"mn-solar", b"mn-sola_")).decode()),
        "line 3: payload_start_base64 holds 1000 byte(s): the store keeps the first 1024 of a payload of 2048":
            edited(rows, 2, "payload_start_base64", base64.b64encode(big[:1000]).decode()),
        "line 2: received 2026-09-09T15:00:00.000000Z, outside the period (2026-09-09T16:00:00+00:00 to "
        "2026-09-12T16:00:00+00:00, exclusive)": edited(rows, 1, "received", "2026-09-09T15:00:00.000000Z"),
        "line 3: topic 'jcm/v1/mn-wind/gw-mn-01/batch', not one of the site's (jcm/v1/mn-solar/...)":
            edited(rows, 2, "topic", "jcm/v1/mn-wind/gw-mn-01/batch"),
        "line 3: not in order: before the row above": [rows[0], rows[2], rows[1], rows[3]],
        "line 2: received '2026-09-10T05:00:00.000000+08:00', the export writes that letter's "
        "'2026-09-09T21:00:00.000000Z'": edited(rows, 1, "received", "2026-09-10T05:00:00.000000+08:00"),
        "line 4: size '-1' and sha256": edited(rows, 3, "size", "-1"),
        "line 4: payload_start_base64 holds 0 byte(s): the store keeps the first 1 of a payload of 1":
            edited(rows, 3, "size", "1"),
        "line 2: not a dead letter: ": edited(rows, 1, "payload_start_base64", "not base64!"),
        "line 1: header ": [["received", "topic"], *rows[1:]],
    }
    for said, changed in wrong.items():
        folder = tmp_path / str(len(said))
        shutil.copytree(letters_made, folder)
        put_letter_rows(folder, changed)
        rc, out = verify_once(folder, capsys)
        assert rc == 1 and f"  dead_letters.csv.gz {said}" in out, out
        assert "VERDICT: FAILED: 1 dead letter problem(s)" in out, out


def test_which_messages_were_refused_is_named_the_exporters_word(letters_made, tmp_path, capsys):
    """No key signs the list of dead letters: one taken out of the file with the manifest's count lowered (the
    hashes covered) leaves every check whole, so the verdict names the list and its count as the exporter's
    word (it said only why each was refused was the collector's, and "as many as the manifest says")."""
    folder = shutil.copytree(letters_made, tmp_path / letters_made.name)
    put_letter_rows(folder, [row for n, row in enumerate(letter_rows(folder)) if n != 2])
    _manifest_text(folder, lambda text: text.replace('"count": 3', '"count": 2'))
    rc, out = verify_once(folder, capsys)
    assert rc == 0 and "dead letters: 2 message(s) on the site's topics" in out, out
    assert ("the devices' connections); which messages the collector refused, and how many (the rows of "
            "dead_letters.csv.gz and the manifest's count: no key signs the list, so a letter taken out with the "
            "count lowered is not seen); config_changes") in out, out


def test_the_charts_are_each_a_whole_png_of_the_size_the_export_draws(made, tmp_path, capsys):
    """The charts are not drawn again (their bytes depend on matplotlib's release and the fonts), but the
    manifest must list each the export draws, and each must be a whole PNG of the size it draws it."""
    rc, out = verify_once(made, capsys)
    assert rc == 0, out
    assert ("charts: daily_values.png, completeness.png: each listed, a whole PNG of the size the export draws it "
            "(daily_values.png 1000 x 290; completeness.png 1000 x 430 pixels)") in out
    assert ("not checked beyond their SHA-256 (what the exporter wrote, not recomputed): daily_values.png (a chart of "
            "the daily values: what it shows)") in out

    def changed(name, change):
        folder = shutil.copytree(made, tmp_path / name)
        change(folder)
        rehash(folder)
        return verify_once(folder, capsys)

    def unlisted(folder):
        (folder / "completeness.png").unlink()
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["files"]["completeness.png"]
        (folder / "manifest.json").write_text(json.dumps(manifest))

    rc, out = changed("unlisted", unlisted)
    assert rc == 1 and "  completeness.png: a chart the export draws, not listed in manifest.json" in out, out
    assert "VERDICT: FAILED: 1 chart(s) not as the export draws them" in out
    rc, out = changed("other", lambda f: shutil.copy(f / "completeness.png", f / "daily_values.png"))
    assert rc == 1 and "  daily_values.png: 1000 x 430 pixels, the export draws it 1000 x 290" in out, out
    cut = (made / "daily_values.png").read_bytes()[:-20]
    rc, out = changed("cut", lambda f: (f / "daily_values.png").write_bytes(cut))
    assert rc == 1 and "  daily_values.png: not a whole PNG: its chunk b'IDAT' at byte " in out, out
    rc, out = changed("text", lambda f: (f / "completeness.png").write_text("<svg/>"))
    assert rc == 1 and "  completeness.png: not a PNG (no PNG signature)" in out, out


def test_a_chart_whose_height_is_a_float_tick_below_a_whole_pixel_passes_as_either_matplotlib_draws_it(
        tmp_path, signer, capsys):
    """mv-addu's daily chart has 3 panels: 1.0 + 1.9 * 3 [in] at 100 dpi is 669.9999999999999 px, which
    matplotlib before 3.11 truncates to 669 and 3.11 on rounds up to 670. verify expected 669 alone: an honest
    export of two of the five reference sites (mv-addu, id-aceh-biomass) drawn here FAILED. Either is its size
    now, and no other."""
    from matplotlib.figure import Figure

    made_here = make_export(tmp_path, signer, DAYS, site_name="mv-addu")
    rc, out = verify_once(made_here, capsys)
    assert rc == 0 and "charts: daily_values.png, completeness.png: each listed, a whole PNG of the size the export " \
                       "draws it (daily_values.png 1000 x 669 or 1000 x 670; " in out, out
    for height, passes in ((669, True), (671, False)):  # as the older release draws it; a pixel too many
        folder = shutil.copytree(made_here, tmp_path / str(height))
        Figure(figsize=(10, (height + 0.5) / 100), dpi=100).savefig(folder / "daily_values.png", format="png", dpi=100)
        rehash(folder)
        rc, out = verify_once(folder, capsys)
        assert (rc == 0) if passes else (
            rc == 1 and f"  daily_values.png: 1000 x {height} pixels, the export draws it 1000 x 669 or 1000 x 670"
            in out), out


def test_charts_drawn_under_a_matplotlibrc_cropping_them_are_of_the_size_verify_checks(tmp_path, signer, capsys,
                                                                                        monkeypatch):
    """An operator's matplotlibrc saying ``savefig.bbox: tight`` cropped the charts to what is drawn (1011 x 301
    pixels here: a size that depends on the fonts), and verify FAILED the honest export; the export draws the
    whole figure whatever it says."""
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "savefig.bbox", "tight")  # as a matplotlibrc sets it
    folder = make_export(tmp_path, signer, DAYS)
    assert matplotlib.rcParams["savefig.bbox"] == "tight"  # the operator's setting left as it was
    rc, out = verify_once(folder, capsys)
    assert rc == 0 and "(daily_values.png 1000 x 290; completeness.png 1000 x 430 pixels)" in out, out


def test_the_simulated_flag_is_the_exporters_word_but_compared_with_the_ledger(made, tmp_path, signer, capsys,
                                                                                 monkeypatch):
    """Simulated readings are marked in the store, not signed: without the ledger the manifest's flag is the
    exporter's word, and the verdict names it so with the other things it says that nothing checks; with
    --ledger, an export of real readings marked simulated (set aside by a verifier) is a difference, as is
    one of simulated readings not marked."""
    import processing.export

    rc, out = verify_once(made, capsys)
    assert rc == 0, out
    assert ("not checked (the exporter's word: in no signed message, not recomputed): the settings of site.json that "
            "no figure depends on") in out
    assert ("config_changes (the settings, default values and code of the day of the export against each "
            "revision's: that day's are not in the export); the simulated flag (simulated readings are marked in "
            "the store, not signed: --ledger compares it with the revisions')") in out
    rc, out = verify_once(made, capsys, "--ledger", str(made.parent.parent / "ledger.sqlite"))
    assert rc == 0 and "  simulated False: as the ledger's revisions" in out, out
    assert "; the simulated flag" not in out

    collect = processing.export.collect
    monkeypatch.setattr(processing.export, "collect", lambda *a: dataclasses.replace(collect(*a), simulated=True))
    folder = make_export(tmp_path, signer, DAYS)
    monkeypatch.undo()
    assert json.loads((folder / "manifest.json").read_text())["simulated"] is True
    rc, out = verify_once(folder, capsys)
    assert rc == 0, out  # every file as the flag makes it
    rc, out = verify_once(folder, capsys, "--ledger", str(tmp_path / "ledger.sqlite"))
    assert rc == 1 and ("  manifest.json simulated True: no revision of its months in the ledger was computed from "
                        "simulated readings") in out, out
    assert "VERDICT: FAILED: 1 difference(s) from the ledger" in out


def test_the_completeness_charted_is_written_beside_and_made_again(made, tmp_path, capsys):
    """What the completeness chart draws, each source channel's completeness in each month, is in no other
    file: it is written beside it (``completeness.csv``), and verify makes it again from its recomputation."""
    text = (made / "completeness.csv").read_text().splitlines()
    assert text[0] == "month,source,completeness" and len(text) == 7 and all(r.startswith("2026-09,") for r in text[1:])
    month, source, value = text[1].split(",")
    text[1] = f"{month},{source},{float(value) + 0.01!r}"
    folder = shutil.copytree(made, tmp_path / made.name)
    (folder / "completeness.csv").write_text("\n".join(text) + "\n")
    rehash(folder)
    rc, out = verify_once(folder, capsys)
    assert rc == 1 and f"  completeness.csv line 2: exported '{month},{source},{float(value) + 0.01!r}'" in out, out
